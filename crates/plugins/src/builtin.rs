//! The built-in plugins: the crates in `plugins/`, compiled to wasm32-wasip2 by `build.rs` and embedded
//! in the binary. They are ordinary components, loaded exactly like a user's `wasm = "…"` plugin. Which
//! names exist is the config's business (`config::builtins`); the build script embeds exactly those.

include!(concat!(env!("OUT_DIR"), "/embedded.rs"));

#[cfg(test)]
mod tests {
    #[test]
    fn every_name_a_config_accepts_has_bytes() {
        for name in wasmgate_config::builtins::NAMES {
            let bytes =
                super::bytes(name).unwrap_or_else(|| panic!("built-in `{name}` has no bytes"));
            assert!(bytes.starts_with(b"\0asm"), "built-in `{name}` is not wasm");
        }
        assert!(super::bytes("no-such-plugin").is_none());
    }
}

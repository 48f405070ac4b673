//! The built-in plugins: the crates in `plugins/`, compiled to wasm32-wasip2 by `build.rs` and embedded
//! in the binary. They are ordinary components, loaded exactly like a user's `wasm = "…"` plugin. Which
//! names exist is the config's business (`config::builtins`).

macro_rules! embedded {
    ($($name:literal => $file:literal),* $(,)?) => {
        /// The component bytes of a built-in plugin.
        pub fn bytes(name: &str) -> Option<&'static [u8]> {
            match name {
                $($name => Some(include_bytes!(concat!(env!("WASMGATE_BUILTIN_DIR"), "/", $file))),)*
                _ => None,
            }
        }
    };
}

embedded! {
    "redirect" => "redirect.wasm",
    "headers" => "headers.wasm",
    "token-auth" => "token_auth.wasm",
    "ip-allow" => "ip_allow.wasm",
    "basic-auth" => "basic_auth.wasm",
    "require-header" => "require_header.wasm",
}

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

//! The built-in plugins: the crates in `plugins/`, compiled to wasm32-wasip2 by `build.rs` and embedded
//! in the binary. They are ordinary components, loaded exactly like a user's `wasm = "…"` plugin.

macro_rules! builtins {
    ($($name:literal => $file:literal),* $(,)?) => {
        pub const NAMES: &[&str] = &[$($name),*];

        /// The component bytes of a built-in plugin.
        pub fn bytes(name: &str) -> Option<&'static [u8]> {
            match name {
                $($name => Some(include_bytes!(concat!(env!("WASMGATE_BUILTIN_DIR"), "/", $file))),)*
                _ => None,
            }
        }
    };
}

builtins! {
    "redirect" => "redirect.wasm",
    "headers" => "headers.wasm",
    "token-auth" => "token_auth.wasm",
    "ip-allow" => "ip_allow.wasm",
    "basic-auth" => "basic_auth.wasm",
    "require-header" => "require_header.wasm",
}

/// The built-ins that decide who gets in. Skipping one (`on_error = "allow"`) admits every request it
/// would have refused, so that needs an explicit opt-in (`i_understand_this_disables_auth`).
pub const ACCESS_CONTROL: &[&str] = &["token-auth", "basic-auth", "ip-allow", "require-header"];

pub fn exists(name: &str) -> bool {
    NAMES.contains(&name)
}

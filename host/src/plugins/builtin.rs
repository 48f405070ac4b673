//! The built-in plugins, compiled from `plugins/` into the binary.

pub const NAMES: &[&str] = &["redirect", "headers", "token-auth", "ip-allow", "basic-auth", "require-header"];

pub fn exists(name: &str) -> bool {
    NAMES.contains(&name)
}

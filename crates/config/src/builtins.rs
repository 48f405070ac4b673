//! The names of the built-in plugins a config may use (`builtin = "…"`). Their bytes are embedded by
//! the plugins layer (`plugins::builtin::bytes`), whose test checks that every name here has them.

pub const NAMES: &[&str] = &[
    "redirect",
    "headers",
    "token-auth",
    "ip-allow",
    "basic-auth",
    "require-header",
];

/// The built-ins that decide who gets in. Skipping one (`on_error = "allow"`) admits every request it
/// would have refused, so that needs an explicit opt-in (`i_understand_this_disables_auth`).
pub const ACCESS_CONTROL: &[&str] = &["token-auth", "basic-auth", "ip-allow", "require-header"];

pub fn exists(name: &str) -> bool {
    NAMES.contains(&name)
}

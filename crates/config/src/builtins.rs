// No inner doc comment here: the plugins crate's build script `include!`s this file, so that this list
// is the only one (it builds and embeds exactly these). The module's doc is on its declaration.

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

//! What the host offers a plugin (`wit/host.wit`). In the wasm build these call the host; natively
//! they go to the test double in `testing`, so plugin code runs unchanged under `cargo test`.

use std::fmt;

#[cfg(target_arch = "wasm32")]
use crate::guest::host_imports as imp;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::double as imp;

/// Log severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Write one line to wasmgate's log; the host tags it with the plugin, site and request id.
pub fn log(level: Level, message: impl AsRef<str>) {
    imp::log(level, message.as_ref());
}

/// Nanoseconds on a monotonic clock: only differences between two readings mean anything.
pub fn now_monotonic_ns() -> u64 {
    imp::monotonic_now()
}

/// Wall-clock time in milliseconds since the Unix epoch (for expiry checks).
pub fn wall_now_ms() -> u64 {
    imp::wall_now()
}

/// Read a file named by the plugin's config (tokens, htpasswd, …). Only works inside
/// [`crate::Plugin::new`]; the path is relative to the config file's directory and must stay inside
/// it. wasmgate reloads the plugin when a file it read changes.
pub fn read_config_file(path: &str) -> Result<Vec<u8>, ConfigFileError> {
    imp::read_config_file(path).map_err(|reason| ConfigFileError {
        path: path.to_owned(),
        reason,
    })
}

/// [`read_config_file`] for text files: the bytes must be UTF-8.
pub fn read_config_text(path: &str) -> Result<String, ConfigFileError> {
    let bytes = read_config_file(path)?;
    String::from_utf8(bytes).map_err(|e| ConfigFileError {
        path: path.to_owned(),
        reason: format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
    })
}

/// A config file that could not be read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigFileError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot read config file `{}`: {}",
            self.path, self.reason
        )
    }
}

impl std::error::Error for ConfigFileError {}

/// Report a line of a file read with [`read_config_file`] that the plugin refused (it grants
/// nothing) while the rest of the file applies: a bad entry in a credential file must not keep a
/// whole edit — and the removals in it — from taking effect. wasmgate logs it with the file's path
/// and `line` (1-based; 0 for the whole file) and lists it in `/status`. Only works inside
/// [`crate::Plugin::new`].
pub fn report_config_problem(path: &str, line: u32, message: impl AsRef<str>) {
    imp::report_config_problem(path, line, message.as_ref());
}

/// Limit how long the answer of the current `on_request` call may be reused from the decision
/// cache ([`crate::Plugin::decision_cache`]): `Duration::ZERO` for not at all. For answers that
/// expire by themselves, such as accepting a signed token until its expiry. The shortest limit
/// given during a call wins; the registration's `ttl` still caps it.
pub fn limit_decision_cache(max_age: std::time::Duration) {
    imp::limit_decision_cache(u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX));
}

/// The outcome of [`verify_password`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PasswordVerdict {
    Match,
    Mismatch,
    /// Not checked: the client's address failed too often lately; retry after this many seconds.
    Throttled {
        retry_after_secs: u32,
    },
}

/// Check a password against an htpasswd-style hash — bcrypt (`$2y$`/`$2b$`/`$2a$`), Apache MD5
/// (`$apr1$`), `{SHA}`, crypt(3)'s `$1$`/`$5$`/`$6$` and DES — in the host, natively, outside the
/// plugin's time limit, with the host's cache of successful checks and its per-address throttle of
/// failures. `Err` names a hash the host cannot check. Natively (unit tests) the check runs in the
/// test double, without cache or throttle unless [`crate::testing::TestHost::throttle_passwords`].
pub fn verify_password(hash: &str, password: &[u8]) -> Result<PasswordVerdict, String> {
    imp::verify_password(hash, password)
}

/// A hash's kind as wasmgate's `verify_password` reads it, without checking any password: for
/// refusing a bad line at start-up rather than on a request. `Err` says what is wrong.
pub fn password_hash_kind(hash: &str) -> Result<&'static str, String> {
    crate::hash_kind::kind(hash)
}

/// Run `f` as the body of `init`. The real host enforces that files are read only there; natively the
/// double does the same, so a plugin that reads files in a hook fails its unit tests too.
pub(crate) fn during_init<R>(f: impl FnOnce() -> R) -> R {
    imp::during_init(f)
}

/// Tell the host the identity headers (see [`crate::Plugin::identity_headers`]); `init` only.
pub(crate) fn identity_headers(names: Vec<String>) {
    if !names.is_empty() {
        imp::identity_headers(names);
    }
}

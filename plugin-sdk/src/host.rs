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

/// Run `f` as the body of `init`. The real host enforces that files are read only there; natively the
/// double does the same, so a plugin that reads files in a hook fails its unit tests too.
pub(crate) fn during_init<R>(f: impl FnOnce() -> R) -> R {
    imp::during_init(f)
}

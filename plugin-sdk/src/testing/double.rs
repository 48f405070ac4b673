//! The native stand-in for the host imports. State is per thread (cargo runs each test on its own
//! thread) and is installed by `TestPlugin` around every call, so tests never see each other's files,
//! clocks or logs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::host::{Level, PasswordVerdict};

/// What one test host holds; shared between a `TestHost` and the plugins it instantiated.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub files: RefCell<HashMap<String, Vec<u8>>>,
    pub wall_ms: Cell<Option<u64>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    pub files_read: RefCell<Vec<String>>,
    /// `report_config_problem` calls: (path, line, message).
    pub problems: RefCell<Vec<(String, u32, String)>>,
    /// `limit_decision_cache` during the current hook call (reset by `TestPlugin` before each).
    pub max_age_ms: Cell<Option<u64>>,
    /// Answer every `verify_password` with `Throttled` for this many seconds.
    pub throttle: Cell<Option<u32>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Rc<State>>> = const { RefCell::new(None) };
    static IN_INIT: Cell<bool> = const { Cell::new(false) };
}

/// Run `f` with `state` as the current host, restoring the previous one afterwards (even on panic,
/// so a `#[should_panic]` test leaves nothing behind).
pub(crate) fn with_host<R>(state: &Rc<State>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Rc<State>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let prev = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = prev);
        }
    }
    let prev = CURRENT.with(|c| c.borrow_mut().replace(state.clone()));
    let _restore = Restore(prev);
    f()
}

fn current() -> Option<Rc<State>> {
    CURRENT.with(|c| c.borrow().clone())
}

pub fn log(level: Level, message: &str) {
    // Also print: cargo shows it for failing tests, which is when it matters.
    eprintln!("[plugin {level:?}] {message}");
    if let Some(s) = current() {
        s.logs.borrow_mut().push((level, message.to_owned()));
    }
}

pub fn monotonic_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = *START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

pub fn wall_now() -> u64 {
    if let Some(ms) = current().and_then(|s| s.wall_ms.get()) {
        return ms;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

pub fn read_config_file(path: &str) -> Result<Vec<u8>, String> {
    // Same rule as the real host: files belong to start-up, hooks must not do I/O.
    if !IN_INIT.with(Cell::get) {
        return Err("read-config-file is only available during init".into());
    }
    let Some(state) = current() else {
        return Err(
            "no test host: instantiate the plugin with wasmgate_plugin_sdk::testing".into(),
        );
    };
    state.files_read.borrow_mut().push(path.to_owned());
    let found = state.files.borrow().get(path).cloned();
    found.ok_or_else(|| "no such file".to_owned())
}

pub fn identity_headers(_names: Vec<String>) {
    // Recorded in the `Registration` by the start-up path; nothing else to do natively.
}

pub fn report_config_problem(path: &str, line: u32, message: &str) {
    if !IN_INIT.with(Cell::get) {
        log(
            Level::Warn,
            "report-config-problem is only available during init; call ignored",
        );
        return;
    }
    if let Some(s) = current() {
        s.problems
            .borrow_mut()
            .push((path.to_owned(), line, message.to_owned()));
    }
}

pub fn limit_decision_cache(max_age_ms: u64) {
    if let Some(s) = current() {
        let m = s.max_age_ms.get().map_or(max_age_ms, |m| m.min(max_age_ms));
        s.max_age_ms.set(Some(m));
    }
}

/// The same hashes as the host's `verify-password` (`host/src/plugins/password.rs`), checked with the
/// same crates; no success cache and no throttle unless the test asks for it.
pub fn verify_password(hash: &str, password: &[u8]) -> Result<PasswordVerdict, String> {
    use base64::Engine;
    use sha1::Digest;
    if let Some(secs) = current().and_then(|s| s.throttle.get()) {
        return Ok(PasswordVerdict::Throttled {
            retry_after_secs: secs,
        });
    }
    crate::hash_kind::kind(hash)?;
    let ok = if let Some(b64) = hash.strip_prefix("{SHA}") {
        let expected = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| "`{SHA}` hash is not valid base64".to_owned())?;
        sha1::Sha1::digest(password).as_slice() == expected.as_slice()
    } else if hash.starts_with("$2") {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else {
        // By prefix, as the host does (crypt3_rs's own recogniser wants `rounds=` in `$5$`/`$6$`).
        use crypt3_rs::crypt as m;
        #[allow(deprecated)]
        let computed = if hash.starts_with("$apr1$") {
            m::apr1::hash_with(hash, password)
        } else if hash.starts_with("$1$") {
            m::md5::hash_with(hash, password)
        } else if hash.starts_with("$5$") {
            m::sha256::hash_with(hash, password)
        } else if hash.starts_with("$6$") {
            m::sha512::hash_with(hash, password)
        } else {
            m::unix::hash_with(hash, password)
        };
        computed.is_ok_and(|c| c.as_str() == hash)
    };
    Ok(if ok {
        PasswordVerdict::Match
    } else {
        PasswordVerdict::Mismatch
    })
}

pub fn during_init<R>(f: impl FnOnce() -> R) -> R {
    struct Reset(bool);
    impl Drop for Reset {
        fn drop(&mut self) {
            IN_INIT.with(|c| c.set(self.0));
        }
    }
    let _reset = Reset(IN_INIT.with(|c| c.replace(true)));
    f()
}

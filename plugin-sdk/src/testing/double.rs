//! The native stand-in for the host imports. State is per thread (cargo runs each test on its own
//! thread) and is installed by `TestPlugin` around every call, so tests never see each other's files,
//! clocks or logs.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::host::Level;

/// What one test host holds; shared between a `TestHost` and the plugins it instantiated.
#[derive(Debug, Default)]
pub(crate) struct State {
    pub files: RefCell<HashMap<String, Vec<u8>>>,
    pub wall_ms: Cell<Option<u64>>,
    pub logs: RefCell<Vec<(Level, String)>>,
    pub files_read: RefCell<Vec<String>>,
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

//! The wasmtime engine, the epoch ticker that enforces per-call deadlines, and compiled components
//! cached in memory and on disk (keyed by content digest and engine compatibility), so a restart or a
//! reload of an unchanged plugin costs a file read, not a compilation.
//!
//! Measured on this kind of machine (FACTS.md, wasmtime 48, release): a warm call ≈ 2.5–3 µs with a few
//! headers; fresh store + instantiate + first call ≈ 27 µs with the pooling allocator, ≈ 50 µs without;
//! compiling a 44 KB guest ≈ 49 ms, loading its precompiled form 0.04–0.35 ms. Hence: compile once,
//! pre-instantiate once, and keep warm instances (see `instance.rs`).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

use wasmgate_config::limits::{stack_class, MAX_MEMORY, POOL_INSTANCES};

/// One epoch tick. Deadlines are whole ticks, so a 5 ms limit traps between 5 and 6 ms.
pub const TICK: Duration = Duration::from_millis(1);

/// Ticks without a call in flight after which the ticker goes to sleep until the next call: an idle
/// proxy (or one whose plugins answer from their decision caches) should not wake 1,000 times a second.
const IDLE_TICKS: u32 = 100;

/// Bounds of the on-disk cache: beyond them the least recently used files are deleted.
const CACHE_DIR_MAX_FILES: usize = 256;
const CACHE_DIR_MAX_BYTES: u64 = 1 << 30;

type WeakEngine = (wasmtime::EngineWeak, Arc<Ticker>);

type EngineAndTicker = (Engine, Arc<Ticker>);

/// One server's wasmtime engines and compiled components, owned by its plugin host (so two servers
/// in one process share neither, and nothing outlives the server that made it).
///
/// Engines are kept by stack class and held weakly: an engine lives as long as some plugin of its
/// class does, and its ticker thread ends with it. Components are kept by (stack class, content
/// digest), also weakly: a component stays in memory while a runtime's plugin uses it — so a reload
/// of an unchanged plugin reuses it while the old runtime still serves — and is gone once none does
/// (the disk cache makes the next load of it a file read, not a compilation).
#[derive(Default)]
pub struct Engines {
    engines: Mutex<HashMap<u64, WeakEngine>>,
    components: Mutex<HashMap<(u64, String), Weak<Component>>>,
}

impl Engines {
    /// The engine for plugins of this stack class, and the ticker that drives its epochs.
    pub fn engine(&self, stack: u64) -> Result<EngineAndTicker, String> {
        let stack = stack_class(stack);
        let mut engines = self.engines.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((weak, ticker)) = engines.get(&stack) {
            if let Some(e) = weak.upgrade() {
                return Ok((e, ticker.clone()));
            }
        }
        let engine = new_engine(stack)?;
        let ticker = Ticker::start(&engine);
        engines.retain(|_, (weak, _)| weak.upgrade().is_some());
        engines.insert(stack, (engine.weak(), ticker.clone()));
        Ok((engine, ticker))
    }

    /// Compile `bytes` (or fetch them compiled from memory or the disk cache). The caller keeps the
    /// component alive for as long as it uses it.
    pub fn component(
        &self,
        engine: &Engine,
        stack: u64,
        digest: &str,
        bytes: &[u8],
        cache_dir: Option<&Path>,
    ) -> Result<Arc<Component>, String> {
        let key = (stack_class(stack), digest.to_string());
        let live = |map: &HashMap<_, Weak<Component>>| map.get(&key).and_then(Weak::upgrade);
        if let Some(c) = live(&self.components.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(c);
        }
        let c = Arc::new(load_component(engine, digest, bytes, cache_dir)?);
        let mut map = self.components.lock().unwrap_or_else(|p| p.into_inner());
        // Two loads of one plugin raced: keep the first, so both plugins share it.
        if let Some(first) = live(&map) {
            return Ok(first);
        }
        map.retain(|_, w| w.strong_count() > 0);
        map.insert(key, Arc::downgrade(&c));
        Ok(c)
    }

    /// Components in memory (for tests).
    pub fn components_in_memory(&self) -> usize {
        let map = self.components.lock().unwrap_or_else(|p| p.into_inner());
        map.values().filter(|w| w.strong_count() > 0).count()
    }
}

fn new_engine(stack: u64) -> Result<Engine, String> {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(POOL_INSTANCES)
        .total_core_instances(4 * POOL_INSTANCES)
        .total_memories(POOL_INSTANCES)
        .total_tables(4 * POOL_INSTANCES)
        .total_stacks(POOL_INSTANCES)
        .max_memory_size(MAX_MEMORY as usize);
    let mut cfg = Config::new();
    cfg.epoch_interruption(true)
        // Hooks are plain calls, never `call_concurrent`: without the component-model-async machinery
        // a warm call costs ≈0.6 µs less (FACTS.md).
        .concurrency_support(false)
        .max_wasm_stack(stack as usize)
        // Calls run on fibers; the fiber stack must hold the wasm stack plus host frames.
        .async_stack_size(stack as usize + (1 << 20))
        .memory_reservation(MAX_MEMORY)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    Engine::new(&cfg).map_err(|e| format!("cannot create the wasm engine: {e}"))
}

/// Advances an engine's epoch every tick while any call into its plugins is in flight (and for
/// `IDLE_TICKS` after the last one), then sleeps until the next call starts.
pub struct Ticker {
    /// Calls in flight (see [`Ticker::running`]).
    active: AtomicUsize,
    asleep: AtomicBool,
    /// Epochs advanced so far (for tests and curiosity; the engine keeps the real one).
    ticks: AtomicU64,
    thread: OnceLock<Thread>,
}

/// Held for the duration of one call into a plugin: keeps the ticker awake.
pub struct Running<'a>(&'a Ticker);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, SeqCst);
    }
}

impl Ticker {
    fn start(engine: &Engine) -> Arc<Ticker> {
        let ticker = Arc::new(Ticker {
            active: AtomicUsize::new(0),
            asleep: AtomicBool::new(false),
            ticks: AtomicU64::new(0),
            thread: OnceLock::new(),
        });
        let weak = engine.weak();
        let t = ticker.clone();
        let handle = std::thread::Builder::new()
            .name("wasmgate-epoch".into())
            .spawn(move || t.run(weak))
            .expect("spawn the epoch thread");
        let _ = ticker.thread.set(handle.thread().clone());
        ticker
    }

    /// Mark a call as in flight until the guard drops, waking the ticker if it sleeps.
    pub fn running(&self) -> Running<'_> {
        // SeqCst pairs with `run`: either the ticker sees `active > 0` before it parks, or this
        // sees `asleep` and unparks it (an unpark before the park makes the park return at once).
        self.active.fetch_add(1, SeqCst);
        if self.asleep.load(SeqCst) {
            if let Some(t) = self.thread.get() {
                t.unpark();
            }
        }
        Running(self)
    }

    fn run(&self, weak: wasmtime::EngineWeak) {
        let mut idle = 0;
        while let Some(engine) = weak.upgrade() {
            engine.increment_epoch();
            drop(engine);
            self.ticks.fetch_add(1, SeqCst);
            std::thread::sleep(TICK);
            idle = if self.active.load(SeqCst) == 0 {
                idle + 1
            } else {
                0
            };
            if idle < IDLE_TICKS {
                continue;
            }
            self.asleep.store(true, SeqCst);
            while self.active.load(SeqCst) == 0 {
                // The timeout only lets a thread whose engine is gone notice and end.
                std::thread::park_timeout(Duration::from_secs(1));
                if weak.upgrade().is_none() {
                    return;
                }
            }
            self.asleep.store(false, SeqCst);
            idle = 0;
        }
    }
}

/// Compile `bytes`, or load them compiled from the disk cache.
fn load_component(
    engine: &Engine,
    digest: &str,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Component, String> {
    let cached = cache_dir.map(|d| d.join(format!("{digest}-{:016x}.cwasm", compat_hash(engine))));
    if let Some(path) = &cached {
        if path.is_file() {
            // SAFETY: the file is one this process family wrote with `precompile_component` for an engine
            // with the same compatibility hash (it is in the name); a corrupt or foreign file is rejected
            // by wasmtime's header checks, and then we fall back to compiling.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => {
                    touch(path);
                    return Ok(c);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), "ignoring unusable cached plugin: {e}")
                }
            }
        }
    }
    let compiled = engine
        .precompile_component(bytes)
        .map_err(|e| format!("does not compile: {e:#}"))?;
    if let Some(path) = &cached {
        write_atomically(path, &compiled);
        prune_cache_dir(path.parent().unwrap_or(Path::new(".")));
    }
    // SAFETY: `compiled` was produced by `precompile_component` on this very engine just now.
    unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|e| format!("does not load: {e:#}"))
}

fn compat_hash(engine: &Engine) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    h.finish()
}

fn write_atomically(path: &Path, bytes: &[u8]) {
    let Some(dir) = path.parent() else { return };
    if std::fs::create_dir_all(dir).is_err() {
        return;
    }
    let tmp = dir.join(format!(
        ".{}.{}",
        std::process::id(),
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    if std::fs::write(&tmp, bytes).is_ok() && std::fs::rename(&tmp, path).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// Mark a cache file as just used (its mtime orders eviction).
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

/// Delete the least recently used compiled plugins beyond [`CACHE_DIR_MAX_FILES`] files or
/// [`CACHE_DIR_MAX_BYTES`] in all. Only our own `*.cwasm` files are considered.
fn prune_cache_dir(dir: &Path) {
    let mut files: Vec<(std::time::SystemTime, u64, PathBuf)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cwasm"))
        .filter_map(|e| {
            let m = e.metadata().ok()?;
            m.is_file().then(|| {
                (
                    m.modified().unwrap_or(std::time::UNIX_EPOCH),
                    m.len(),
                    e.path(),
                )
            })
        })
        .collect();
    files.sort();
    let mut total: u64 = files.iter().map(|f| f.1).sum();
    let mut count = files.len();
    for (_, len, path) in files {
        if count <= CACHE_DIR_MAX_FILES && total <= CACHE_DIR_MAX_BYTES {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            count -= 1;
            total -= len;
        }
    }
}

/// `$XDG_CACHE_HOME/wasmgate` or `~/.cache/wasmgate`, unless the config names one.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("wasmgate"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wait_for(what: &str, cond: impl Fn() -> bool) {
        let until = std::time::Instant::now() + Duration::from_secs(5);
        while !cond() {
            assert!(
                std::time::Instant::now() < until,
                "timed out waiting: {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    #[test]
    fn one_engine_per_stack_class_and_unused_engines_go() {
        let engines = Engines::default();
        let (e, _) = engines.engine(3 << 20).unwrap();
        let again = engines.engine(4 << 20).unwrap().0;
        assert!(Engine::same(&e, &again), "one engine per class");
        let other = Engines::default().engine(3 << 20).unwrap().0;
        assert!(!Engine::same(&e, &other), "another host has its own");
        let weak = e.weak();
        drop((e, again));
        assert!(weak.upgrade().is_none(), "an engine nobody uses is freed");
    }

    /// The in-memory cache holds what plugins use, shares it between loads, and lets go of what
    /// no plugin (no runtime) uses any more.
    #[test]
    fn a_component_stays_while_a_plugin_uses_it_and_goes_after() {
        let engines = Engines::default();
        let bytes = crate::builtin::bytes("headers").unwrap();
        let (e, _) = engines.engine(1 << 20).unwrap();
        let a = engines.component(&e, 1 << 20, "d1", bytes, None).unwrap();
        let b = engines.component(&e, 1 << 20, "d1", bytes, None).unwrap();
        assert!(Arc::ptr_eq(&a, &b), "a second load shares the first");
        assert_eq!(engines.components_in_memory(), 1);
        drop((a, b));
        assert_eq!(engines.components_in_memory(), 0, "unused: evicted");
    }

    #[test]
    fn the_cache_dir_keeps_the_most_recently_used_files_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..CACHE_DIR_MAX_FILES + 5 {
            let p = dir.path().join(format!("{i:04}.cwasm"));
            std::fs::write(&p, b"x").unwrap();
            let t = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000 + i as u64);
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(t)
                .unwrap();
        }
        std::fs::write(dir.path().join("notes.txt"), b"kept").unwrap();
        prune_cache_dir(dir.path());
        let left = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(left, CACHE_DIR_MAX_FILES + 1);
        assert!(!dir.path().join("0000.cwasm").exists(), "the oldest went");
        assert!(dir
            .path()
            .join(format!("{:04}.cwasm", CACHE_DIR_MAX_FILES + 4))
            .exists());
    }

    #[test]
    fn the_ticker_sleeps_when_idle_and_ticks_while_a_call_runs() {
        let engine = Engine::new(Config::new().epoch_interruption(true)).unwrap();
        let ticker = Ticker::start(&engine);
        wait_for("the ticker to fall asleep", || ticker.asleep.load(SeqCst));
        let before = ticker.ticks.load(SeqCst);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(ticker.ticks.load(SeqCst), before, "an idle ticker ticked");

        let call = ticker.running();
        wait_for("ticks while a call is in flight", || {
            ticker.ticks.load(SeqCst) >= before + 20
        });
        assert!(!ticker.asleep.load(SeqCst));
        drop(call);
        wait_for("the ticker to fall asleep again", || {
            ticker.asleep.load(SeqCst)
        });
    }
}

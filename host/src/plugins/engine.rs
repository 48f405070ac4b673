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
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::component::Component;
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// One epoch tick. Deadlines are whole ticks, so a 5 ms limit traps between 5 and 6 ms.
pub const TICK: Duration = Duration::from_millis(1);

/// Ticks without a call in flight after which the ticker goes to sleep until the next call: an idle
/// proxy (or one whose plugins answer from their decision caches) should not wake 1,000 times a second.
const IDLE_TICKS: u32 = 100;

/// The largest linear memory any plugin may have; `limits.memory` is checked against it.
pub const MAX_MEMORY: u64 = 256 << 20;

/// Engines by maximum wasm stack size: wasmtime fixes the stack limit per engine, so each distinct
/// `limits.stack` gets its own (almost always there is exactly one).
static ENGINES: OnceLock<Mutex<HashMap<u64, EngineAndTicker>>> = OnceLock::new();

type EngineAndTicker = (Engine, Arc<Ticker>);

/// Compiled components by (stack size, content digest), shared by every server in the process.
static COMPONENTS: OnceLock<Mutex<HashMap<(u64, String), Component>>> = OnceLock::new();

/// The engine for plugins with this stack limit, and the ticker that drives its epochs.
pub fn engine(stack: u64) -> Result<EngineAndTicker, String> {
    let mut engines = ENGINES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(e) = engines.get(&stack) {
        return Ok(e.clone());
    }
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(1000)
        .total_core_instances(4000)
        .total_memories(1000)
        .total_tables(4000)
        .total_stacks(1000)
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
    let engine = Engine::new(&cfg).map_err(|e| format!("cannot create the wasm engine: {e}"))?;
    let ticker = Ticker::start(&engine);
    engines.insert(stack, (engine.clone(), ticker.clone()));
    Ok((engine, ticker))
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

/// Compile `bytes` (or fetch them compiled from memory or the disk cache).
pub fn component(
    engine: &Engine,
    stack: u64,
    digest: &str,
    bytes: &[u8],
    cache_dir: Option<&Path>,
) -> Result<Component, String> {
    let key = (stack, digest.to_string());
    let memory = COMPONENTS.get_or_init(Default::default);
    if let Some(c) = memory.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(c.clone());
    }
    let cached = cache_dir.map(|d| d.join(format!("{digest}-{:016x}.cwasm", compat_hash(engine))));
    if let Some(path) = &cached {
        if path.is_file() {
            // SAFETY: the file is one this process family wrote with `precompile_component` for an engine
            // with the same compatibility hash (it is in the name); a corrupt or foreign file is rejected
            // by wasmtime's header checks, and then we fall back to compiling.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => {
                    memory
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(key, c.clone());
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
    }
    // SAFETY: `compiled` was produced by `precompile_component` on this very engine just now.
    let c = unsafe { Component::deserialize(engine, &compiled) }
        .map_err(|e| format!("does not load: {e:#}"))?;
    memory
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(key, c.clone());
    Ok(c)
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

//! Warm instances: one pool per worker thread, checked out for a call and back in after it.

use std::sync::Mutex;

use super::call::arm;
use super::{Failure, LoadedPlugin, Warm, MAX_USES};

impl LoadedPlugin {
    /// Take a warm instance (or make one) and arm its deadline.
    pub(super) async fn checkout(&self, request_id: &str) -> Result<Warm, Failure> {
        let pooled = self.shard().lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut warm = match pooled {
            Some(w) => w,
            // Boxed: rare, and its future is large.
            None => Box::pin(self.instantiate()).await?.0,
        };
        arm(&mut warm.store, self.limits.time);
        warm.store.data_mut().request_id = Some(request_id.to_string());
        Ok(warm)
    }

    /// Return an instance after a successful call; after a failure it is simply dropped, because a
    /// trapped instance's state cannot be trusted (and wasmtime refuses further calls into it).
    pub(super) fn checkin(&self, mut warm: Warm) {
        warm.store.data_mut().request_id = None;
        warm.store.data_mut().client = None;
        warm.uses += 1;
        if warm.uses < MAX_USES {
            let mut pool = self.shard().lock().unwrap_or_else(|p| p.into_inner());
            if pool.len() < self.limits.instances.div_ceil(self.pool.len()) {
                pool.push(warm);
            }
        }
    }

    /// Warm instances right now (for tests and metrics).
    pub fn warm_instances(&self) -> usize {
        self.pool
            .iter()
            .map(|p| p.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }

    pub(super) fn shard(&self) -> &Mutex<Vec<Warm>> {
        &self.pool[WORKER.get() % self.pool.len()]
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// This thread's worker index (for per-worker pools and caches).
pub fn worker() -> usize {
    WORKER.get()
}

/// Tell the plugin pools which worker this thread is (the server calls it once per worker thread;
/// other threads share pool 0).
pub fn set_worker(i: usize) {
    WORKER.set(i);
}

/// The most warm instances a plugin with `limits.instances = n` keeps: each worker's pool keeps its
/// share, rounded up.
pub fn warm_bound(n: usize) -> usize {
    n.div_ceil(shards()) * shards()
}

/// Pools per plugin: one per core, the default number of workers (more workers share them).
pub(crate) fn shards() -> usize {
    // Asked once: `available_parallelism` reads cgroup files, and every plugin load needs it.
    static SHARDS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *SHARDS.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(16)))
}

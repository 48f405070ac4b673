//! The background lane: where a *heavy* tenant's guest calls run, so they never hold a worker that
//! other tenants' requests are queued on.
//!
//! The CPU budget (`cpu.rs`) bounds how much a tenant's guests run, but on the request workers each
//! of its stretches still runs for up to a tick (1 ms) before it yields, and every request queued on
//! that worker waits it out: measured with a neighbour spinning to its 10 ms deadline on every
//! request, B's p99 was 1.8–3.5× its p99 alone and its requests/s 0.68–0.79× (bench
//! `tenant-isolation`), although A was charged exactly its 25 % of one core. So a tenant whose guest
//! ran a stretch of half a tick or more is *heavy* for the next [`HEAVY_FOR`]: its calls are sent to
//! this lane, a few threads at `SCHED_IDLE`, the kernel's lowest priority. There they only get CPU
//! that no worker wants, and the kernel preempts them the moment a worker wakes; the request worker
//! awaits the call like any other future. Cheap calls (microseconds, the normal case) never make a
//! tenant heavy and never pay the hand-off (≈ 10–20 µs) — which is why this is not where every
//! tenant's calls run.
//!
//! On the lane a stretch is charged by the thread's CPU time, not the worker time charged on the
//! request workers (see `cpu.rs`): a lane thread the kernel preempts stalls no one but its tenant,
//! and being preempted is queueing, which the budget never charges. The `clock_gettime` it costs is
//! paid once per stretch by heavy tenants only, whose stretches run for a millisecond.

use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

/// How long a tenant stays heavy after its last long stretch.
pub const HEAVY_FOR: Duration = Duration::from_secs(1);

/// A stretch at least this long makes its tenant heavy. Half a tick: a microsecond call that
/// happens to straddle an epoch tick is not one.
pub const HEAVY_STRETCH: Duration = Duration::from_micros(500);

thread_local! {
    static ON_LANE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is one of the lane's (its stretches are charged by thread CPU time).
pub fn on_lane() -> bool {
    ON_LANE.get()
}

/// One plugin host's lane. Its threads start at the first heavy call and end with the host.
#[derive(Default)]
pub struct Lane {
    rt: OnceLock<tokio::runtime::Runtime>,
}

impl Drop for Lane {
    fn drop(&mut self) {
        // A host may be dropped on an async worker, where dropping a runtime would panic.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// The lane's runtime is gone (the host is shutting down) or the call panicked.
#[derive(Debug)]
pub struct LaneGone;

impl Lane {
    /// Run `job` on the lane and wait for it. Dropping the returned future aborts the job at its
    /// next yield, as dropping a call on a worker would.
    pub async fn run<F>(&self, job: F) -> Result<F::Output, LaneGone>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        AbortOnDrop(self.runtime().spawn(OnLane(job)))
            .await
            .map_err(|_| LaneGone)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.rt.get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(crate::instance::shards())
                .thread_name("wasmgate-lane")
                // A thread inherits its creator's policy: a blocking thread spawned from an idle
                // worker starts idle. Back to normal for every thread; jobs lower their workers.
                .on_thread_start(normal_priority)
                .enable_all()
                .build()
                .expect("start the plugin lane")
        })
    }
}

/// A job, which lowers the priority of each lane thread that polls it. Not in `on_thread_start`:
/// that also runs on the runtime's blocking threads, where `verify-password` hashes while it holds one
/// of the host's hashing slots, shared by every tenant — at idle priority, a starved hash would
/// keep the slot from everyone else.
struct OnLane<F>(F);

impl<F: Future> Future for OnLane<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        if !ON_LANE.get() {
            ON_LANE.set(true);
            lowest_priority();
        }
        // SAFETY: structural pinning of the only field; `OnLane` never moves it.
        unsafe { self.map_unchecked_mut(|s| &mut s.0) }.poll(cx)
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `SCHED_IDLE` for the calling thread (lowering one's own priority needs no privilege); where the
/// kernel refuses it, the weakest nice level.
fn lowest_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscalls on the calling thread (pid 0) with a valid parameter block.
    unsafe {
        if libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) != 0 {
            libc::setpriority(libc::PRIO_PROCESS, 0, 19);
        }
    }
}

fn normal_priority() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: as in `lowest_priority`. Best effort: a thread that stays low only slows its tenant.
    unsafe {
        libc::sched_setscheduler(0, libc::SCHED_OTHER, &param);
        libc::setpriority(libc::PRIO_PROCESS, 0, 0);
    }
}

/// This thread's CPU time in nanoseconds (a syscall: `CLOCK_THREAD_CPUTIME_ID` has no vDSO path).
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn jobs_run_on_idle_priority_threads_and_are_aborted_when_dropped() {
        let lane = Lane::default();
        // Blocking work a job starts (a password hash) keeps its normal priority.
        let blocking = lane
            .run(async {
                tokio::task::spawn_blocking(|| unsafe { libc::sched_getscheduler(0) })
                    .await
                    .unwrap()
            })
            .await
            .unwrap();
        assert_eq!(blocking, libc::SCHED_OTHER);
        let (on, policy) = lane
            .run(async { (on_lane(), unsafe { libc::sched_getscheduler(0) }) })
            .await
            .unwrap();
        assert!(on, "the job ran off the lane");
        assert!(!on_lane());
        assert!(policy == libc::SCHED_IDLE || policy == libc::SCHED_OTHER);
        // A dropped run aborts its job: the flag it would set after a sleep stays unset.
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        let run = lane.run(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            f.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        let _ = tokio::time::timeout(Duration::from_millis(5), run).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!flag.load(std::sync::atomic::Ordering::SeqCst));
        let t0 = thread_cpu_ns();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(std::hint::black_box(i));
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns() > t0);
    }
}

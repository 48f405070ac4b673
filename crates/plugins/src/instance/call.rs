//! Call supervision: admission under the tenant's CPU budget, the wall-clock and epoch deadlines,
//! host waits, and turning a trap into a typed [`Failure`].

use std::sync::atomic::Ordering::Relaxed;

use wasmtime::{Store, Trap, WasmBacktrace};

use super::{Failure, LoadedPlugin, Warm};
use crate::bindings::{self, RequestAction};
use crate::engine;
use crate::state::State;
use wasmgate_core::error::FailureKind;

impl LoadedPlugin {
    /// The wall-clock bound of a call. The epoch deadline stops busy guests by running time; this
    /// only stops one parked in an (async) host call, so it is generous: queueing on a busy worker
    /// must not fail a well-behaved plugin.
    pub(super) fn wall_limit(&self) -> std::time::Duration {
        let parked = if self.cpu.is_some() {
            // A call of a tenant over its CPU budget is parked at its yields; that is not a hang.
            crate::cpu::MAX_WAIT
        } else {
            std::time::Duration::ZERO
        };
        self.limits.time * 4 + std::time::Duration::from_millis(250) + parked
    }

    /// Call `on-request` for a request from `client`. Besides the plugin's answer, how long the
    /// answer may be reused at most, if the plugin said so (`limit-decision-cache`).
    pub async fn on_request(
        &self,
        request_id: &str,
        client: std::net::IpAddr,
        req: &bindings::Request,
    ) -> Result<(RequestAction, Option<std::time::Duration>), Failure> {
        let started = std::time::Instant::now();
        self.admit().await?;
        let mut warm = self.checkout(request_id).await?;
        let data = warm.store.data_mut();
        data.client = Some(client);
        data.max_age = None;
        let job = self.job();
        let (warm, result) = match self.lane_now() {
            Some(lane) => lane.run(request_job(job, warm, req.clone())).await?,
            None => request_job(job, warm, req).await,
        };
        let max_age = warm.store.data().max_age;
        self.finish(warm, result, started).map(|a| (a, max_age))
    }

    pub async fn on_response(
        &self,
        request_id: &str,
        info: &bindings::RequestInfo,
        head: &bindings::ResponseHead,
    ) -> Result<Vec<bindings::HeaderOp>, Failure> {
        let started = std::time::Instant::now();
        self.admit().await?;
        let warm = self.checkout(request_id).await?;
        let job = self.job();
        let (warm, result) = match self.lane_now() {
            Some(lane) => {
                let parts = (info.clone(), head.clone());
                lane.run(response_job(job, warm, parts)).await?
            }
            None => response_job(job, warm, (info, head)).await,
        };
        self.finish(warm, result, started)
    }

    /// What a call needs besides its instance, owned, so that it can run on the lane.
    fn job(&self) -> Job {
        Job {
            ticker: self.ticker.clone(),
            limit: self.wall_limit(),
            cpu: self.cpu.clone(),
        }
    }

    /// The background lane, if the tenant is heavy right now (see `lane.rs`).
    fn lane_now(&self) -> Option<&crate::lane::Lane> {
        let heavy = self.cpu.as_ref().is_some_and(|c| c.heavy());
        self.lane.as_deref().filter(|_| heavy)
    }

    /// Wait for the tenant's CPU budget, or refuse the call (kind `throttled`, answered 503 whatever
    /// `on_error` says: skipping an auth plugin because its tenant is busy would open the door).
    pub(super) async fn admit(&self) -> Result<(), Failure> {
        let Some(cpu) = &self.cpu else { return Ok(()) };
        cpu.admit().await.map_err(|o| Failure {
            kind: FailureKind::Throttled,
            detail: format!(
                "tenant over its plugin CPU budget ({} ms of debt)",
                o.debt.as_millis()
            ),
        })
    }

    pub(super) fn finish<R>(
        &self,
        warm: Warm,
        result: Option<wasmtime::Result<R>>,
        started: std::time::Instant,
    ) -> Result<R, Failure> {
        self.calls.inc();
        self.latency.observe(started.elapsed().as_secs_f64());
        let result = match result {
            Some(Ok(v)) => {
                self.checkin(warm);
                Ok(v)
            }
            Some(Err(e)) => Err(failure(e, FailureKind::Trap)),
            None => Err(Failure {
                kind: FailureKind::Deadline,
                detail: format!("still running after {:?}", self.wall_limit()),
            }),
        };
        if let Err(f) = &result {
            let labels = wasmgate_observe::metrics::PluginErrorLabels {
                plugin: self.name.clone(),
                site: self.who.site.to_string(),
                tenant: self.who.tenant.as_deref().unwrap_or("-").to_string(),
                kind: f.kind.as_str(),
            };
            self.errors.get_or_create(&labels).inc();
        }
        result
    }
}

/// A call's supervision, owned (see [`LoadedPlugin::job`]).
struct Job {
    ticker: std::sync::Arc<engine::Ticker>,
    limit: std::time::Duration,
    cpu: Option<std::sync::Arc<crate::cpu::CpuBudget>>,
}

type Outcome<R> = (Warm, Option<wasmtime::Result<R>>);

impl Job {
    fn begin_stretch(&self, warm: &Warm) {
        if self.cpu.is_some() {
            let now = crate::cpu::stretch_now();
            warm.store.data().stretch.store(now, Relaxed);
        }
    }

    /// Charge the last stretch of a call (most calls end before their first tick, so this is the
    /// only charge they get).
    fn end_stretch(&self, warm: &Warm) {
        if let Some(cpu) = &self.cpu {
            cpu.end_stretch(warm.store.data().stretch.load(Relaxed), true);
        }
    }
}

// A stretch begins and ends within one poll of the job (no await between `begin_stretch` and the
// call's first poll, nor between its last poll and `end_stretch`), so on one thread: what
// `stretch_now` needs on the lane.
async fn request_job(
    job: Job,
    mut warm: Warm,
    req: impl std::borrow::Borrow<bindings::Request>,
) -> Outcome<RequestAction> {
    let wait = warm.store.data().host_wait.clone();
    let _running = job.ticker.running();
    job.begin_stretch(&warm);
    let call = warm
        .plugin
        .wasmgate_plugin_hooks()
        .call_on_request(&mut warm.store, req.borrow());
    let result = within(job.limit, &wait, call).await;
    job.end_stretch(&warm);
    (warm, result)
}

async fn response_job<I, H>(
    job: Job,
    mut warm: Warm,
    (info, head): (I, H),
) -> Outcome<Vec<bindings::HeaderOp>>
where
    I: std::borrow::Borrow<bindings::RequestInfo>,
    H: std::borrow::Borrow<bindings::ResponseHead>,
{
    let wait = warm.store.data().host_wait.clone();
    let _running = job.ticker.running();
    job.begin_stretch(&warm);
    let call = warm.plugin.wasmgate_plugin_hooks().call_on_response(
        &mut warm.store,
        info.borrow(),
        head.borrow(),
    );
    let result = within(job.limit, &wait, call).await;
    job.end_stretch(&warm);
    (warm, result)
}

impl From<crate::lane::LaneGone> for Failure {
    fn from(_: crate::lane::LaneGone) -> Failure {
        Failure {
            kind: FailureKind::Trap,
            detail: "the call was lost on the background lane (the host is shutting down)".into(),
        }
    }
}

/// Host work done for one call (password hashing) may take this long beyond the call's own bound.
const HOST_WAIT_MAX: std::time::Duration = std::time::Duration::from_secs(10);

/// Run `call` within `limit` of wall-clock time, not counting time spent in host work done on its
/// behalf (`verify-password`: the point of hashing in the host is that it is off the plugin's budget),
/// up to `HOST_WAIT_MAX` of it. `None` when the bound passed.
pub(super) async fn within<F: std::future::Future>(
    limit: std::time::Duration,
    wait: &crate::state::HostWait,
    call: F,
) -> Option<F::Output> {
    use std::sync::atomic::Ordering::SeqCst;
    let start = tokio::time::Instant::now();
    let cap = start + limit + HOST_WAIT_MAX;
    wait.done_ns.store(0, SeqCst);
    tokio::pin!(call);
    loop {
        let done = std::time::Duration::from_nanos(wait.done_ns.load(SeqCst));
        let mut deadline = (start + limit + done).min(cap);
        if wait.busy.load(SeqCst) {
            // Host work under way: look again shortly (its time is added when it ends).
            deadline = deadline
                .max(tokio::time::Instant::now() + std::time::Duration::from_millis(20))
                .min(cap);
        }
        match tokio::time::timeout_at(deadline, &mut call).await {
            Ok(v) => return Some(v),
            Err(_) => {
                let now = tokio::time::Instant::now();
                let moved = std::time::Duration::from_nanos(wait.done_ns.load(SeqCst)) != done;
                if now >= cap || !(moved || wait.busy.load(SeqCst)) {
                    return None;
                }
            }
        }
    }
}

/// Start the clock for one call of at most `limit` (in whole ticks, plus one for the partial tick the
/// call starts in).
pub(super) fn arm(store: &mut Store<State>, limit: std::time::Duration) {
    let data = store.data_mut();
    data.ticks_used = 0;
    data.ticks_allowed = (limit.as_micros() / engine::TICK.as_micros()).max(1) as u64 + 1;
    data.ran_ns = 0;
    data.limit_ns = limit.as_nanos() as u64;
    store.set_epoch_deadline(1);
}

/// Classify a wasmtime error and render it with its wasm backtrace.
pub(super) fn failure(e: wasmtime::Error, default: FailureKind) -> Failure {
    let kind = match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => FailureKind::Deadline,
        Some(Trap::StackOverflow) => FailureKind::Stack,
        _ if e.downcast_ref::<crate::memory::MemoryLimit>().is_some() => FailureKind::Memory,
        _ => default,
    };
    let mut detail = format!("{e}");
    if let Some(bt) = e.downcast_ref::<WasmBacktrace>() {
        detail.push_str(&format!("\nwasm backtrace:\n{bt}"));
    } else {
        let full = format!("{e:?}");
        if full != detail {
            detail = full;
        }
    }
    Failure { kind, detail }
}

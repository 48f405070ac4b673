//! Per-tenant CPU budgets for plugin execution: a tenant's guests may run `plugin_cpu` of one core
//! (say 25 %), measured as the time its guests actually ran. Beyond it, the tenant's new calls wait
//! (or, past [`MAX_WAIT`] of debt, get a fast 503) and its running calls are parked at their next epoch
//! yield, so other tenants' calls get the workers first; a tenant spinning to its deadline on every
//! request slows itself down, not its neighbours.
//!
//! Accounting is a GCRA (virtual scheduling) clock per tenant: running `c` ns of guest code moves the
//! tenant's clock `c / share` ns ahead; the tenant is in debt while its clock is ahead of now. A
//! stretch of guest execution is measured with the monotonic clock (vDSO, no syscall) from the call's
//! entry or its last resumption to its next epoch yield or its return — time parked in a yield, queued
//! for a worker, or waiting for the budget is never charged. What is charged is the worker's time, not
//! the thread's CPU time: a worker the kernel descheduled mid-guest stalls its other connections just
//! the same, and the monotonic clock costs no syscall per call. (A heavy tenant's calls run on the
//! background lane instead, where a stretch is the thread's CPU time: see `lane.rs`.) The allowance
//! of an idle tenant is capped at one `plugin_time` of guest CPU, so a burst after a quiet spell
//! cannot exceed one full call.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

/// Debt beyond which a tenant's new call is refused (503) rather than made to wait.
pub const MAX_WAIT: Duration = Duration::from_secs(1);

/// The longest a running call is parked at one yield (it is parked again at the next one if the debt
/// remains), so a change in the debt is noticed.
const MAX_PARK: Duration = Duration::from_millis(50);

/// A stretch start that means "parked at a yield, not running".
pub const PARKED: u64 = u64::MAX;

/// Nanoseconds since the first use in this process, from the monotonic clock. A process-wide
/// origin on purpose, like `Instant`'s own: it is a representation of the clock (so a stretch's
/// start fits an atomic), not state, and every budget's readings must be comparable.
pub fn now_ns() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Where the current stretch is measured from: the monotonic clock on a request worker, the
/// thread's CPU time on the background lane (see `lane.rs`). A stretch starts and ends within one
/// poll of its call, so on one thread.
pub fn stretch_now() -> u64 {
    if crate::lane::on_lane() {
        crate::lane::thread_cpu_ns()
    } else {
        now_ns()
    }
}

/// A tenant's virtual clock, and until when it is heavy (`now_ns`); lives as long as the tenant's
/// counters, across reloads.
#[derive(Debug, Default)]
pub struct CpuClock {
    clock: AtomicU64,
    heavy_until: AtomicU64,
}

/// The budget of one tenant's plugins, as the operator set it when the tenant was loaded.
#[derive(Debug)]
pub struct CpuBudget {
    clock: Arc<CpuClock>,
    /// Share of one core.
    share: f64,
    /// Credit an idle tenant keeps, in wall-clock ns of its clock.
    credit_ns: u64,
    cpu: Counter<f64, AtomicU64>,
    delayed: Counter,
    /// Stretches of a running call parked at an epoch yield because the tenant ran out of budget.
    parked: Counter,
    refused: Counter,
    /// Calls run on the background lane because the tenant is heavy.
    background: Counter,
}

/// The tenant is too far over its budget to wait.
#[derive(Debug)]
pub struct OverBudget {
    pub debt: Duration,
}

impl CpuBudget {
    /// The same budget: the same tenant clock, share and credit (a plugin built against one can
    /// keep serving under the other).
    pub fn same_terms(&self, other: &CpuBudget) -> bool {
        Arc::ptr_eq(&self.clock, &other.clock)
            && self.share == other.share
            && self.credit_ns == other.credit_ns
    }

    pub fn new(
        tenant: &str,
        share: f64,
        burst: Duration,
        clock: Arc<CpuClock>,
        m: &wasmgate_observe::metrics::Metrics,
    ) -> CpuBudget {
        let throttled = |what| {
            m.tenant_plugin_throttled
                .get_or_create(&wasmgate_observe::metrics::TenantLabels {
                    tenant: tenant.to_string(),
                    what,
                })
                .clone()
        };
        CpuBudget {
            clock,
            share,
            credit_ns: (burst.as_nanos() as f64 / share) as u64,
            cpu: m
                .tenant_plugin_cpu
                .get_or_create(&wasmgate_observe::metrics::TenantOnlyLabels {
                    tenant: tenant.to_string(),
                })
                .clone(),
            delayed: throttled("delayed"),
            parked: throttled("parked"),
            refused: throttled("refused"),
            background: throttled("background"),
        }
    }

    /// Charge `ran_ns` of guest execution that ended at `now`.
    pub fn charge(&self, ran_ns: u64, now: u64) {
        let cost = (ran_ns as f64 / self.share) as u64;
        let floor = now.saturating_sub(self.credit_ns);
        let _ = self
            .clock
            .clock
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
                Some(t.max(floor) + cost)
            });
        self.cpu.inc_by(ran_ns as f64 / 1e9);
    }

    /// How long until the tenant is out of debt (`None`: it is not in debt).
    pub fn debt(&self, now: u64) -> Option<Duration> {
        let t = self.clock.clock.load(Ordering::Acquire);
        (t > now).then(|| Duration::from_nanos(t - now))
    }

    /// Before a call: go on at once if the tenant is within its budget, else wait until it is (the
    /// call is counted as delayed), or refuse when the debt is beyond [`MAX_WAIT`].
    pub async fn admit(&self) -> Result<(), OverBudget> {
        let Some(debt) = self.debt(now_ns()) else {
            return Ok(());
        };
        if debt > MAX_WAIT {
            self.refused.inc();
            return Err(OverBudget { debt });
        }
        self.delayed.inc();
        let until = tokio::time::Instant::now() + MAX_WAIT;
        let mut wait = debt;
        loop {
            tokio::time::sleep(wait).await;
            match self.debt(now_ns()) {
                None => return Ok(()),
                // Other calls of the tenant ran meanwhile: wait on, within the same bound.
                Some(d) if tokio::time::Instant::now() + d <= until => wait = d,
                Some(d) => {
                    self.refused.inc();
                    return Err(OverBudget { debt: d });
                }
            }
        }
    }

    /// End the stretch that began at `since` (`stretch_now`; [`PARKED`]: none was running):
    /// charge it, and mark the tenant heavy if it ran long enough to hold up a worker (`serving`: it
    /// is a hook's, for a request; instantiation and `init` run at load or before a call, and their
    /// stretch includes the host's own instantiation work). Returns the nanoseconds it ran.
    pub fn end_stretch(&self, since: u64, serving: bool) -> u64 {
        if since == PARKED {
            return 0;
        }
        let now = now_ns();
        let ran = stretch_now().saturating_sub(since);
        self.charge(ran, now);
        if serving && ran >= crate::lane::HEAVY_STRETCH.as_nanos() as u64 {
            let until = now + crate::lane::HEAVY_FOR.as_nanos() as u64;
            self.clock.heavy_until.fetch_max(until, Ordering::Relaxed);
        }
        ran
    }

    /// Whether the tenant's calls go to the background lane now (counted when they do).
    pub fn heavy(&self) -> bool {
        let heavy = self.clock.heavy_until.load(Ordering::Relaxed) > now_ns();
        if heavy {
            self.background.inc();
        }
        heavy
    }

    /// At an epoch yield of a running call (its stretch ended): how long to park it before it
    /// resumes (`None`: just yield).
    pub fn park(&self) -> Option<Duration> {
        let park = self.debt(now_ns()).map(|d| d.min(MAX_PARK));
        if park.is_some() {
            self.parked.inc();
        }
        park
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(share: f64, burst_ms: u64) -> CpuBudget {
        CpuBudget::new(
            "cpu-unit",
            share,
            Duration::from_millis(burst_ms),
            Arc::default(),
            &Default::default(),
        )
    }

    #[test]
    fn debt_is_guest_time_divided_by_the_share_minus_the_idle_credit() {
        let b = budget(0.25, 10);
        let t0 = 10_000_000_000; // 10 s into the process
        assert!(b.debt(t0).is_none());
        // 10 ms of credit at 25 % = 40 ms of clock; 10 ms of guest time costs 40 ms: no debt yet.
        b.charge(10_000_000, t0);
        assert!(b.debt(t0).is_none());
        b.charge(10_000_000, t0);
        assert_eq!(b.debt(t0), Some(Duration::from_millis(40)));
        assert_eq!(b.debt(t0 + 40_000_000), None);
        // Idle for a long time: the credit does not grow past one burst.
        let later = t0 + 60_000_000_000;
        b.charge(20_000_000, later);
        assert_eq!(b.debt(later), Some(Duration::from_millis(40)));
    }

    #[tokio::test]
    async fn a_tenant_in_debt_waits_and_one_far_beyond_is_refused() {
        let b = budget(0.5, 1);
        let now = now_ns();
        b.charge(100_000_000, now); // 100 ms of guest time at 50 %: ≈ 198 ms of debt
        let started = tokio::time::Instant::now();
        b.admit().await.unwrap();
        assert!(started.elapsed() >= Duration::from_millis(150));
        b.charge(2_000_000_000, now_ns());
        assert!(b.admit().await.is_err());
        assert_eq!(b.delayed.get(), 1);
        assert_eq!(b.refused.get(), 1);
    }
}

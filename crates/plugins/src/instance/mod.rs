//! A loaded plugin: its pre-instantiated component and a pool of warm instances.
//!
//! Why a pool: a fresh store + instantiate + call costs ≈ 27 µs (pooling allocator), a call into a warm
//! instance ≈ 3 µs. An instance serves one call at a time (calls are synchronous and short, so a few
//! instances per plugin cover every worker thread), is discarded after any trap or limit hit — wasmtime
//! refuses further calls into it anyway — and is recycled after `MAX_USES` calls so a slow leak in a
//! guest cannot grow forever. Instances belong to one chain entry of one site: tenants never share.
//!
//! Deadlines: every epoch tick (1 ms) that a call is still running, the store's epoch callback either
//! yields to the tokio scheduler (so a busy plugin cannot monopolise a worker thread and starve other
//! sites' requests) or, once the plugin's time limit has passed, interrupts it with a trap. Short calls
//! (the normal case, microseconds) never reach a tick and pay nothing for this; the ticker itself
//! sleeps while no call is in flight (`engine::Ticker`).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use wasmtime::component::{HasSelf, Linker};
use wasmtime::{Engine, Store, UpdateDeadline};

use super::bindings::{self, HookSet, PluginPre, Registration};
use super::convert::{self, FixedEdits};
use super::engine;
use super::password::Passwords;
use super::state::{ConfigFiles, ConfigProblem, Declared, Identity, State};
use wasmgate_config::{OnError, PluginConfig, PluginLimits, PluginSource};
use wasmgate_core::error::FailureKind;

mod call;
mod pool;

use call::{arm, failure};
pub(crate) use pool::shards;
pub use pool::{set_worker, warm_bound, worker};

/// Calls after which a warm instance is replaced by a fresh one.
const MAX_USES: u32 = 10_000;

/// `init` runs at load time, off the request path: it may take longer than a hook (parsing a large
/// tokens file, say), but not forever.
const INIT_TIME: std::time::Duration = std::time::Duration::from_secs(2);

struct Warm {
    store: Store<State>,
    plugin: bindings::Plugin,
    uses: u32,
    /// The tenant's slot this instance takes (see `quota.rs`); `None` for the operator's.
    _slot: Option<super::quota::Slot>,
}

/// Why a call into a plugin failed.
#[derive(Debug)]
pub struct Failure {
    pub kind: FailureKind,
    /// The error with its wasm backtrace (function names when the guest kept its name section).
    pub detail: String,
}

pub struct LoadedPlugin {
    pub name: String,
    pub who: Identity,
    /// The entry's `file:line`, for logs and `/status`; moved when a reload keeps the plugin for an
    /// entry that now sits elsewhere in its file (see [`LoadedPlugin::relocate`]).
    location: Mutex<Arc<str>>,
    pub source: PluginSource,
    /// SHA-256 (hex) of the component (`who.digest` is its first 12 digits, for logs).
    wasm_digest: String,
    pub on_error: OnError,
    pub limits: PluginLimits,
    /// From the plugin's `registration` (see the WIT): hooks to call, the headers they read (`None`
    /// = all), response edits applied without a call.
    pub hooks: HookSet,
    pub request_headers: Option<Vec<http::HeaderName>>,
    pub response_headers: Option<Vec<http::HeaderName>>,
    pub fixed_response: FixedEdits,
    pub cache: Option<super::cache::DecisionCache>,
    /// Request headers the plugin declared as identity claims (WIT `identity-headers`): removed by
    /// the host when the plugin is skipped after a failure.
    pub identity_headers: Vec<http::HeaderName>,
    /// Lines of its files the plugin refused (WIT `report-config-problem`), for `/status`.
    pub problems: Vec<ConfigProblem>,
    /// Problems beyond those kept.
    pub more_problems: usize,
    pub files: Arc<ConfigFiles>,
    passwords: Arc<Passwords>,
    /// The owning tenant's plugin CPU budget (`None`: the operator's, or unlimited).
    cpu: Option<Arc<super::cpu::CpuBudget>>,
    /// Where its calls run while its tenant is heavy (tenants' plugins only; see `lane.rs`).
    lane: Option<Arc<super::lane::Lane>>,
    quota: Option<Arc<super::quota::InstanceQuota>>,
    /// What this entry was granted (clock, store, outbound calls); each instance gets a copy.
    caps: super::caps::Capabilities,
    engine: Engine,
    /// Held so the plugin host keeps it in memory while this plugin lives (see `engine::Engines`).
    _component: Arc<wasmtime::component::Component>,
    ticker: Arc<engine::Ticker>,
    pre: PluginPre<State>,
    config_json: String,
    /// One pool per worker thread (see [`set_worker`]): an instance keeps being used on the core whose
    /// cache holds it, and workers never contend for a lock. Two workers sharing one pool made each
    /// call 1.7× slower (bench `hook-cost --threads 2`).
    pool: Box<[Mutex<Vec<Warm>>]>,
    calls: prometheus_client::metrics::counter::Counter,
    pub cache_hits: prometheus_client::metrics::counter::Counter,
    latency: prometheus_client::metrics::histogram::Histogram,
    /// `wasmgate_plugin_errors_total`, labelled per failure kind when one happens.
    errors: prometheus_client::metrics::family::Family<
        wasmgate_observe::metrics::PluginErrorLabels,
        prometheus_client::metrics::counter::Counter,
    >,
}

/// A plugin's component bytes: embedded (a built-in) or read from its file.
pub type Wasm = std::borrow::Cow<'static, [u8]>;

/// The bytes of `cfg`'s component and their SHA-256 (hex): what a plugin is, before it is loaded.
pub fn read_wasm(cfg: &PluginConfig) -> Result<(Wasm, String), String> {
    let bytes: Wasm = match &cfg.source {
        PluginSource::Builtin(name) => super::builtin::bytes(name)
            .ok_or_else(|| format!("no built-in plugin `{name}`"))?
            .into(),
        // A tenant's wasm is opened beneath its directory (see `tenant_fs`).
        PluginSource::Wasm(path) => match &cfg.confined {
            Some(c) => c.read(path)?.into(),
            None => std::fs::read(path)
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?
                .into(),
        },
    };
    let digest = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok((bytes, digest))
}

/// A component compiled (or fetched from the cache) for its stack class, linked against WASI and
/// the host interface, and checked to be a `plugin` world.
struct Linked {
    engine: Engine,
    ticker: Arc<engine::Ticker>,
    component: Arc<wasmtime::component::Component>,
    pre: PluginPre<State>,
}

fn link(
    cfg: &PluginConfig,
    host: &super::PluginHost,
    digest: &str,
    bytes: &[u8],
) -> Result<Linked, String> {
    let (engine, ticker) = host.engines.engine(cfg.limits.stack)?;
    let component = host.engines.component(
        &engine,
        cfg.limits.stack,
        digest,
        bytes,
        host.cache_dir.as_deref(),
    )?;
    let mut linker: Linker<State> = Linker::new(&engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker)
        .map_err(|e| format!("linking WASI: {e}"))?;
    bindings::Plugin::add_to_linker::<State, HasSelf<State>>(&mut linker, |s| s)
        .map_err(|e| format!("linking the host interface: {e}"))?;
    let pre = linker
        .instantiate_pre(&component)
        .map_err(|e| format!("does not link against wasmgate:plugin@0.2: {e:#}"))?;
    let pre = PluginPre::new(pre)
        .map_err(|e| format!("is not a wasmgate plugin (world `plugin`): {e:#}"))?;
    Ok(Linked {
        engine,
        ticker,
        component,
        pre,
    })
}

impl LoadedPlugin {
    /// Compile (or fetch from cache), link, instantiate once and `init` — so a plugin that cannot start
    /// is refused at load time, never on a request.
    pub async fn load(
        cfg: &PluginConfig,
        owner: super::PluginOwner<'_>,
        host: &super::PluginHost,
        (bytes, digest): (Wasm, String),
        caps: super::caps::Capabilities,
    ) -> Result<LoadedPlugin, String> {
        let metrics = &host.metrics;
        let Linked {
            engine,
            ticker,
            component,
            pre,
        } = link(cfg, host, &digest, &bytes)?;
        let labels = wasmgate_observe::metrics::PluginLabels {
            plugin: cfg.name.clone(),
            site: owner.site.to_string(),
            tenant: owner.tenant.unwrap_or("-").to_string(),
        };
        let who = Identity {
            name: cfg.name.as_str().into(),
            site: owner.site.into(),
            tenant: owner.tenant.map(Into::into),
            digest: digest[..12].into(),
        };
        let mut plugin = LoadedPlugin {
            name: cfg.name.clone(),
            who,
            location: Mutex::new(cfg.location.as_str().into()),
            source: cfg.source.clone(),
            wasm_digest: digest.clone(),
            on_error: cfg.on_error,
            limits: cfg.limits,
            hooks: HookSet::empty(),
            request_headers: None,
            response_headers: None,
            fixed_response: FixedEdits::default(),
            cache: None,
            identity_headers: Vec::new(),
            problems: Vec::new(),
            more_problems: 0,
            passwords: Arc::new(Passwords::new(host.hashing.clone())),
            files: Arc::new(ConfigFiles {
                scope: cfg.files.clone(),
                confined: cfg.confined.clone(),
                read: Default::default(),
            }),
            cpu: owner.cpu.cloned(),
            lane: owner.cpu.map(|_| host.lane.clone()),
            quota: owner.quota.cloned(),
            caps,
            engine,
            _component: component,
            ticker,
            pre,
            config_json: cfg.config.to_string(),
            pool: (0..shards()).map(|_| Mutex::default()).collect(),
            calls: metrics.plugin_calls.get_or_create(&labels).clone(),
            cache_hits: metrics.plugin_cache_hits.get_or_create(&labels).clone(),
            latency: metrics.plugin_latency.get_or_create(&labels).clone(),
            errors: metrics.plugin_errors.clone(),
        };
        let (warm, reg, declared) = plugin.instantiate().await.map_err(|f| f.detail)?;
        plugin.adopt(reg, declared, owner.site)?;
        plugin.pool[0]
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .push(warm);
        Ok(plugin)
    }

    /// Take in what the first instance's `registration` and `init` said: hooks, header lists,
    /// fixed edits, the decision cache, identity headers and refused lines.
    fn adopt(&mut self, reg: Registration, declared: Declared, site: &str) -> Result<(), String> {
        if let Some(bad) = declared.bad_identity_headers.first() {
            return Err(format!(
                "declares identity header `{bad}`, which is not a header name a plugin may change"
            ));
        }
        for p in &declared.problems {
            tracing::warn!(target: "wasmgate::plugin", plugin = %self.name, site = site, config = %self.location(), "line refused, the rest applies: {p}");
        }
        if declared.more_problems > 0 {
            tracing::warn!(target: "wasmgate::plugin", plugin = %self.name, site = site, "{} more refused lines not listed", declared.more_problems);
        }
        self.identity_headers = declared.identity_headers;
        self.problems = declared.problems;
        self.more_problems = declared.more_problems;
        self.hooks = reg.hooks;
        self.request_headers = convert::declared_names(reg.request_headers)?;
        self.response_headers = convert::declared_names(reg.response_headers)?;
        self.fixed_response = FixedEdits::new(reg.fixed_response_edits)?;
        self.cache = reg
            .decision_cache
            .map(|c| super::cache::DecisionCache::new(c, shards()))
            .transpose()?;
        Ok(())
    }

    /// Can this plugin, warm instances and decision cache included, stand for `cfg` of `owner`
    /// (whose wasm has `digest`) in a new runtime? Only if nothing that went into it changed: the
    /// entry (apart from where it sits in the file), the wasm, the owner and its budgets, what it
    /// was granted (`terms`, see [`super::caps::Capabilities`]), and every file it read through
    /// `read-config-file`.
    pub fn serves_as(
        &self,
        cfg: &PluginConfig,
        owner: super::PluginOwner<'_>,
        digest: &str,
        terms: &[u8; 32],
    ) -> bool {
        // As `load` renders it for `init` (serde_json's output is canonical for equal values).
        let config_json = cfg.config.to_string();
        let same_budget = match (&self.cpu, owner.cpu) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_terms(b),
            _ => false,
        };
        let same_quota = match (&self.quota, owner.quota) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same_terms(b),
            _ => false,
        };
        self.name == cfg.name
            && self.source == cfg.source
            && self.on_error == cfg.on_error
            && self.limits == cfg.limits
            && self.config_json == config_json
            && self.files.scope == cfg.files
            && self.files.confined == cfg.confined
            && *self.who.site == *owner.site
            && self.who.tenant.as_deref() == owner.tenant
            && self.wasm_digest == digest
            && same_budget
            && same_quota
            && self.caps.terms == *terms
            && self.files.unchanged()
    }

    pub fn location(&self) -> Arc<str> {
        self.location
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Kept for an entry now at `location` (a line added above it, say): logs and `/status` cite
    /// where it is, not where it was when it was loaded.
    pub fn relocate(&self, location: &str) {
        let mut at = self.location.lock().unwrap_or_else(|p| p.into_inner());
        if **at != *location {
            *at = location.into();
        }
    }

    /// The tenant's live instance quota (0 for the operator's plugins, which have none).
    pub fn quota_cap(&self) -> usize {
        self.quota.as_ref().map_or(0, |q| q.cap)
    }

    pub fn digest(&self) -> &str {
        &self.who.digest
    }

    async fn instantiate(&self) -> Result<(Warm, Registration, Declared), Failure> {
        let slot = match &self.quota {
            Some(q) => Some(q.take().ok_or_else(|| Failure {
                kind: FailureKind::Capacity,
                detail: format!("the tenant holds its {} live plugin instances", q.cap),
            })?),
            None => None,
        };
        let _running = self.ticker.running();
        let mut store = Store::new(
            &self.engine,
            State::new(
                self.who.clone(),
                self.files.clone(),
                self.passwords.clone(),
                self.limits.memory,
                self.cpu.clone(),
                self.caps.clone(),
            ),
        );
        store.limiter(|s| &mut s.limits);
        store.epoch_deadline_callback(|mut ctx| {
            // Called once per tick the call is found running (ticks that pass while it is parked
            // arrive as one when it resumes), so this counts running time, not queueing.
            let s = ctx.data_mut();
            s.ticks_used += 1;
            let Some(cpu) = &s.cpu else {
                if s.ticks_used >= s.ticks_allowed {
                    return Ok(UpdateDeadline::Interrupt);
                }
                return Ok(UpdateDeadline::Yield(1));
            };
            // A tenant's guest: charge the stretch that ends here, and hold the call to its time
            // limit by the stretches it ran (on the lane, CPU time: ticks that found a preempted
            // lane thread running would cut it short). Then park it while the tenant is over
            // budget, and restart the stretch when it resumes (the wait is not charged; a call
            // dropped before it resumes is not charged for it either).
            let serving = s.request_id.is_some();
            s.ran_ns += cpu.end_stretch(s.stretch.swap(super::cpu::PARKED, Relaxed), serving);
            if s.ran_ns >= s.limit_ns {
                return Ok(UpdateDeadline::Interrupt);
            }
            let park = cpu.park();
            let stretch = s.stretch.clone();
            Ok(UpdateDeadline::YieldCustom(
                1,
                Box::pin(async move {
                    match park {
                        Some(d) => tokio::time::sleep(d).await,
                        None => tokio::task::yield_now().await,
                    }
                    stretch.store(super::cpu::stretch_now(), Relaxed);
                }),
            ))
        });
        arm(&mut store, INIT_TIME);
        let plugin = self
            .pre
            .instantiate_async(&mut store)
            .await
            .map_err(|e| failure(e, FailureKind::Instantiate))?;
        store.data_mut().in_init = true;
        let init = plugin
            .wasmgate_plugin_hooks()
            .call_init(&mut store, &self.config_json, &self.who.site)
            .await;
        store.data_mut().in_init = false;
        let declared = std::mem::take(&mut store.data_mut().declared);
        match init {
            Ok(Ok(reg)) => Ok((
                Warm {
                    store,
                    plugin,
                    uses: 0,
                    _slot: slot,
                },
                reg,
                declared,
            )),
            Ok(Err(msg)) => Err(Failure {
                kind: FailureKind::Init,
                detail: format!("init refused: {msg}"),
            }),
            Err(e) => Err(failure(e, FailureKind::Init)),
        }
    }
}

//! Plugins: WebAssembly components, typed by the WIT package in `/wit`, that decide about requests.
//!
//! - `bindings`: the generated types (the only `bindgen!`).
//! - `engine`: the wasmtime engine, epoch ticker, compile cache.
//! - `state`: what a store holds; the host functions a plugin may call.
//! - `instance`: a loaded plugin and its pool of warm instances.
//! - `convert`: HTTP ↔ WIT, and the header guard.
//!
//! Per request, the site's chain runs, then the route's; `on-response` runs in reverse for each plugin
//! whose `on-request` ran. A failing plugin (trap, deadline, memory, stack) fails the request closed
//! (500) unless its `on_error = "allow"` — and then the identity headers it declared are removed
//! before the request goes on, so a skipped auth plugin never passes on a client's own claim; either
//! way it is logged with the plugin's name, digest and wasm backtrace, and its instance is discarded.
//! - `password`: the host's `verify-password` (native hashing on a bounded pool, cache, throttle).

mod bindings;
pub mod builtin;
mod cache;
#[cfg(test)]
mod cache_oracle;
mod convert;
pub mod cpu;
mod engine;
mod instance;
mod memory;
mod password;
pub mod quota;
mod state;

use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderMap, Response};

use bindings::HookSet;
use convert::Decision;
pub use instance::{set_worker, LoadedPlugin};
pub use state::ConfigProblem;
use wasmgate_config::{ConfigError, OnError, PluginConfig, PluginSource};
use wasmgate_core::body::ProxyBody;
use wasmgate_core::error::{FailureKind, ProxyError};
use wasmgate_core::request::RequestState;

/// What a chain decided.
pub enum Flow {
    Continue,
    Respond {
        response: Response<ProxyBody>,
        plugin: String,
    },
}

/// The plugins of one site or one route, in order.
#[derive(Default, Clone)]
pub struct Chain {
    plugins: Vec<Arc<LoadedPlugin>>,
}

impl Chain {
    pub fn plugins(&self) -> &[Arc<LoadedPlugin>] {
        &self.plugins
    }

    /// Files the plugins of this chain were loaded from or read.
    pub fn inputs(&self, out: &mut Vec<PathBuf>) {
        for p in &self.plugins {
            if let PluginSource::Wasm(path) = &p.source {
                out.push(path.clone());
            }
            out.extend(
                p.files
                    .read
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .keys()
                    .cloned(),
            );
        }
    }

    /// Run every plugin's `on-request`. `ran` collects the plugins whose `on-response` is owed.
    pub async fn on_request(
        &self,
        state: &mut RequestState,
        headers: &mut HeaderMap,
        ran: &mut Vec<Arc<LoadedPlugin>>,
    ) -> Result<Flow, ProxyError> {
        for p in &self.plugins {
            if !p.hooks.contains(HookSet::ON_REQUEST) {
                ran.push(p.clone());
                continue;
            }
            // A plugin with a decision cache is called only for a request whose key it has not
            // answered within the TTL (on this worker).
            let cached = p.cache.as_ref().map(|c| (c, c.key(state, headers)));
            let hit = cached
                .as_ref()
                .and_then(|(c, key)| c.get(instance::worker(), key, state.at));
            let decision = match hit {
                Some(decision) => {
                    p.cache_hits.inc();
                    decision
                }
                None => {
                    let req = convert::request(state, headers, p.request_headers.as_deref());
                    // Boxed: the call's future (wasmtime's fiber call, maybe an instantiation)
                    // is kilobytes, and inline every request with a plugin — cache hit or not —
                    // would allocate and move it.
                    match Box::pin(p.on_request(&state.id, state.client, &req)).await {
                        Ok((action, max_age)) => {
                            let decision = Arc::new(Decision::check(action));
                            if let Some((c, key)) = cached {
                                let w = instance::worker();
                                c.put(w, key, decision.clone(), state.at, max_age);
                            }
                            decision
                        }
                        Err(f) if f.kind == FailureKind::Throttled => return Err(throttled(p)),
                        Err(f) if f.kind == FailureKind::Capacity => return Err(at_quota(p)),
                        Err(f) => {
                            log_failure(p, &state.id, "on-request", &f);
                            if p.on_error == OnError::Deny {
                                return Err(ProxyError::Plugin {
                                    plugin: p.name.clone(),
                                    cause: f.kind,
                                });
                            }
                            // Skipped: what it would have said about the client's identity, it
                            // did not say — and neither may the client, in its stead.
                            for h in &p.identity_headers {
                                headers.remove(h);
                            }
                            continue;
                        }
                    }
                }
            };
            complain(p, &state.id, decision.refused());
            ran.push(p.clone());
            match &*decision {
                Decision::Continue { edits, path, .. } => {
                    for edit in edits {
                        edit.apply(headers);
                    }
                    if let Some(target) = path {
                        rewrite_path(p, state, target)?;
                    }
                }
                Decision::Respond {
                    status,
                    headers: own,
                    body,
                    ..
                } => {
                    return Ok(Flow::Respond {
                        response: convert::response(*status, own, body),
                        plugin: p.name.clone(),
                    });
                }
            }
        }
        Ok(Flow::Continue)
    }
}

/// Run `on-response` of the plugins in `ran`, last first; each plugin's fixed response edits follow
/// its own call (or stand in for it, when it asked for none). A chain without `on-response` hooks
/// (fixed edits only, like the seed's `headers`) is done inline, with no call and no boxed future.
/// An error (a failed call under `on_error = "deny"`, a tenant limit) takes the response's place.
pub async fn on_response(
    ran: &[Arc<LoadedPlugin>],
    state: &RequestState,
    mut response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    if !ran.iter().any(|p| p.hooks.contains(HookSet::ON_RESPONSE)) {
        for p in ran.iter().rev() {
            p.fixed_response.apply(response.headers_mut());
        }
        return Ok(response);
    }
    // Boxed: the calls' futures (wasmtime's call state) are kilobytes; inline, every request's
    // future would carry them.
    Box::pin(call_on_response(ran, state, response)).await
}

async fn call_on_response(
    ran: &[Arc<LoadedPlugin>],
    state: &RequestState,
    mut response: Response<ProxyBody>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let mut info = None;
    for p in ran.iter().rev() {
        if p.hooks.contains(HookSet::ON_RESPONSE) {
            let info = info.get_or_insert_with(|| convert::info(state));
            let head = bindings::ResponseHead {
                status: response.status().as_u16(),
                headers: convert::headers(response.headers(), p.response_headers.as_deref()),
            };
            match p.on_response(&state.id, info, &head).await {
                Ok(ops) => complain(p, &state.id, &convert::apply(ops, response.headers_mut())),
                Err(f) if f.kind == FailureKind::Throttled => return Err(throttled(p)),
                Err(f) if f.kind == FailureKind::Capacity => return Err(at_quota(p)),
                Err(f) => {
                    log_failure(p, &state.id, "on-response", &f);
                    if p.on_error == OnError::Deny {
                        return Err(ProxyError::Plugin {
                            plugin: p.name.clone(),
                            cause: f.kind,
                        });
                    }
                }
            }
        }
        p.fixed_response.apply(response.headers_mut());
    }
    Ok(response)
}

/// A call refused because its tenant is over its plugin CPU budget: counted in
/// `wasmgate_tenant_plugin_throttled`, not logged per request (an attacker would flood the log).
fn throttled(p: &LoadedPlugin) -> ProxyError {
    ProxyError::TenantCpu {
        tenant: p.who.tenant.as_deref().unwrap_or("-").to_string(),
    }
}

/// A call that needed a new instance while its tenant holds its whole quota: 503, like any other
/// tenant limit, whatever `on_error` says.
fn at_quota(p: &LoadedPlugin) -> ProxyError {
    ProxyError::TenantLimit {
        tenant: p.who.tenant.as_deref().unwrap_or("-").to_string(),
        what: "plugin instances",
        max: p.quota_cap(),
    }
}

fn rewrite_path(
    p: &LoadedPlugin,
    state: &mut RequestState,
    target: &str,
) -> Result<(), ProxyError> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_string())),
        None => (target, None),
    };
    match wasmgate_core::path::normalize_path(path) {
        Ok(n) => {
            state.path = n;
            state.query = query;
            Ok(())
        }
        Err(_) => {
            tracing::warn!(plugin = %p.name, id = %state.id, "plugin asked for an invalid path `{}`", wasmgate_core::text::escaped(target));
            Err(ProxyError::Plugin {
                plugin: p.name.clone(),
                cause: FailureKind::BadRewrite,
            })
        }
    }
}

fn complain(p: &LoadedPlugin, id: &str, refused: &[String]) {
    for r in refused {
        tracing::warn!(target: "wasmgate::plugin", plugin = %p.name, digest = %p.digest(), id, "edit refused: {}", wasmgate_core::text::escaped(r));
    }
}

fn log_failure(p: &LoadedPlugin, id: &str, hook: &str, f: &instance::Failure) {
    tracing::error!(
        target: "wasmgate::plugin",
        plugin = %p.name,
        site = %p.who.site,
        tenant = %p.who.tenant.as_deref().unwrap_or("-"),
        digest = %p.digest(),
        config = %p.location,
        id = %id,
        hook = %hook,
        kind = %f.kind,
        on_error = if p.on_error == OnError::Deny { "deny" } else { "allow" },
        // Trap messages carry the guest's backtrace, whose symbol names the guest chose.
        detail = wasmgate_core::text::field(&f.detail),
        "plugin failed"
    );
}

/// Whose chain a plugin belongs to (for its log lines and its isolation).
#[derive(Clone, Copy)]
pub struct PluginOwner<'a> {
    pub site: &'a str,
    pub tenant: Option<&'a str>,
    /// The tenant's plugin CPU budget, shared by all of its plugins.
    pub cpu: Option<&'a Arc<cpu::CpuBudget>>,
    /// The tenant's live instance quota, shared by all of its plugins.
    pub quota: Option<&'a Arc<quota::InstanceQuota>>,
}

/// Loads plugin chains. Lives as long as the server.
pub struct PluginHost {
    cache_dir: Option<PathBuf>,
    /// Where plugins' calls, latencies and failures are counted.
    metrics: Arc<wasmgate_observe::metrics::Metrics>,
    engines: engine::Engines,
}

impl PluginHost {
    pub fn new(
        cache_dir: Option<PathBuf>,
        metrics: Arc<wasmgate_observe::metrics::Metrics>,
    ) -> Self {
        PluginHost {
            cache_dir: cache_dir.or_else(engine::default_cache_dir),
            metrics,
            engines: engine::Engines::default(),
        }
    }

    /// Compiled components held in memory right now (each is used by some live plugin).
    pub fn components_in_memory(&self) -> usize {
        self.engines.components_in_memory()
    }

    /// Load every plugin of a chain; errors name the config entry and the reason.
    pub fn chain(
        &self,
        configs: &[PluginConfig],
        owner: PluginOwner<'_>,
    ) -> Result<Chain, Vec<ConfigError>> {
        let mut plugins = Vec::new();
        let mut errors = Vec::new();
        for c in configs {
            match load_blocking(c, owner, self) {
                Ok(p) => {
                    tracing::info!(plugin = %p.name, site = owner.site, tenant = owner.tenant.unwrap_or("-"), digest = %p.digest(), "plugin loaded");
                    plugins.push(Arc::new(p));
                }
                Err(message) => errors.push(ConfigError {
                    file: PathBuf::from(&c.location),
                    position: None,
                    field: format!("plugin `{}` ({})", c.name, describe(&c.source)),
                    message,
                }),
            }
        }
        if errors.is_empty() {
            Ok(Chain { plugins })
        } else {
            Err(errors)
        }
    }
}

/// Loading is called from synchronous config code (often on a blocking thread); it runs the async
/// instantiate + init on a small runtime of its own, never nested in the caller's.
fn load_blocking(
    c: &PluginConfig,
    owner: PluginOwner<'_>,
    host: &PluginHost,
) -> Result<LoadedPlugin, String> {
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| format!("cannot start a loader runtime: {e}"))?
            .block_on(LoadedPlugin::load(c, owner, host))
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        // Inside a runtime (e.g. `Server::start` in an async fn): load on a plain thread.
        std::thread::scope(|s| {
            s.spawn(run)
                .join()
                .unwrap_or_else(|_| Err("plugin loader panicked".into()))
        })
    } else {
        run()
    }
}

fn describe(source: &PluginSource) -> String {
    match source {
        PluginSource::Builtin(n) => format!("builtin {n}"),
        PluginSource::Wasm(p) => p.display().to_string(),
    }
}

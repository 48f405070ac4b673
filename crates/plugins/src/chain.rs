//! A chain: the plugins of one site or route, run in order on a request (`on-request`), and in
//! reverse on its response (`on-response`), with decision caches, header edits, path rewrites and
//! the fail-closed / fail-open rules.

use std::path::PathBuf;
use std::sync::Arc;

use http::{HeaderMap, Response};

use crate::bindings::{self, HookSet};
use crate::convert::{self, Decision};
use crate::instance::{self, LoadedPlugin};
use wasmgate_config::{OnError, PluginSource};
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
    pub(crate) plugins: Vec<Arc<LoadedPlugin>>,
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
            let Some(decision) = ask(p, state, headers).await? else {
                continue;
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

/// `p`'s decision about this request: from its decision cache, or from a call. `None`: the plugin
/// failed and is skipped (`on_error = "allow"`), its identity headers removed.
async fn ask(
    p: &Arc<LoadedPlugin>,
    state: &RequestState,
    headers: &mut HeaderMap,
) -> Result<Option<Arc<Decision>>, ProxyError> {
    // A plugin with a decision cache is called only for a request whose key it has not answered
    // within the TTL (on this worker).
    let cached = p.cache.as_ref().map(|c| (c, c.key(state, headers)));
    let hit = cached
        .as_ref()
        .and_then(|(c, key)| c.get(instance::worker(), key, state.at));
    if let Some(decision) = hit {
        p.cache_hits.inc();
        return Ok(Some(decision));
    }
    let req = convert::request(state, headers, p.request_headers.as_deref());
    // Boxed: the call's future (wasmtime's fiber call, maybe an instantiation) is kilobytes, and
    // inline every request with a plugin — cache hit or not — would allocate and move it.
    match Box::pin(p.on_request(&state.id, state.client, &req)).await {
        Ok((action, max_age)) => {
            let decision = Arc::new(Decision::check(action));
            if let Some((c, key)) = cached {
                c.put(instance::worker(), key, decision.clone(), state.at, max_age);
            }
            Ok(Some(decision))
        }
        Err(f) if f.kind == FailureKind::Throttled => Err(throttled(p)),
        Err(f) if f.kind == FailureKind::Capacity => Err(at_quota(p)),
        Err(f) => {
            log_failure(p, &state.id, "on-request", &f);
            if p.on_error == OnError::Deny {
                return Err(ProxyError::Plugin {
                    plugin: p.name.clone(),
                    cause: f.kind,
                });
            }
            // Skipped: what it would have said about the client's identity, it did not say —
            // and neither may the client, in its stead.
            for h in &p.identity_headers {
                headers.remove(h);
            }
            Ok(None)
        }
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

pub(crate) fn rewrite_path(
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
        config = %p.location(),
        id = %id,
        hook = %hook,
        kind = %f.kind,
        on_error = if p.on_error == OnError::Deny { "deny" } else { "allow" },
        // Trap messages carry the guest's backtrace, whose symbol names the guest chose.
        detail = wasmgate_core::text::field(&f.detail),
        "plugin failed"
    );
}

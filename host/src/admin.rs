//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is up), `/readyz` (a config is
//! loaded and we are not draining: load balancers and Kubernetes stop sending traffic on 503), and
//! `/status` (JSON: live config digest, plugin versions, tenants, the last reload error).
//!
//! Off unless `[admin] bind = "127.0.0.1:9901"` is configured, loopback unless `allow_public = true`,
//! and never one of the proxy's own listeners.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::server::Shared;

pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| answer(req, shared.clone()));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn answer(
    req: Request<Incoming>,
    shared: Arc<Shared>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match req.uri().path() {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if shared.draining.is_cancelled() => {
            reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        "/readyz" => reply(StatusCode::OK, "text/plain", "ready\n"),
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            crate::metrics::get().encode(),
        ),
        "/status" => reply(
            StatusCode::OK,
            "application/json",
            status(&shared).to_string(),
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz, /readyz, /status\n",
        ),
    })
}

/// The `/status` document.
pub fn status(shared: &Shared) -> serde_json::Value {
    let rt = shared.runtime.load();
    let st = shared
        .status
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut plugins = Vec::new();
    for site in &rt.sites {
        let chains = std::iter::once(&site.plugins).chain(site.routes.iter().map(|r| &r.plugins));
        for chain in chains {
            for p in chain.plugins() {
                plugins.push(serde_json::json!({
                    "plugin": p.name,
                    "site": &*site.name,
                    "tenant": site.tenant.as_ref().map(|t| t.name.to_string()),
                    "digest": p.digest(),
                    "config": p.location,
                    "warm_instances": p.warm_instances(),
                    // Lines of its files the plugin refused; the rest of each file applies.
                    "config_problems": p.problems.iter().map(|c| serde_json::json!({
                        "file": c.file, "line": c.line, "message": c.message,
                    })).collect::<Vec<_>>(),
                    "config_problems_not_listed": p.more_problems,
                }));
            }
        }
    }
    let tenants: Vec<_> = rt
        .tenants
        .iter()
        .map(|t| {
            use std::sync::atomic::Ordering::Relaxed;
            serde_json::json!({
                "name": &*t.name,
                "digest": t.fingerprint,
                "sites": t.sites.iter().map(|s| s.cfg.name.clone()).collect::<Vec<_>>(),
                "requests_in_flight": t.shared.requests.load(Relaxed),
                "tunnels_open": t.shared.tunnels.load(Relaxed),
                "refused_requests": t.shared.refused_requests.load(Relaxed),
                "refused_tunnels": t.shared.refused_tunnels.load(Relaxed),
                "error": rt.tenant_errors.get(&*t.name),
            })
        })
        .collect();
    let refused: Vec<_> = rt
        .tenant_errors
        .iter()
        .filter(|(name, _)| rt.tenant(name).is_none())
        .map(|(name, why)| serde_json::json!({ "name": name, "error": why }))
        .collect();
    serde_json::json!({
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
        "draining": shared.draining.is_cancelled(),
        "config": { "path": rt.config.path.display().to_string(), "digest": st.digest },
        "reloads": { "ok": st.reloads_ok, "failed": st.reloads_failed, "last_error": st.last_error },
        "listeners": rt.config.listeners.iter().map(|l| serde_json::json!({"name": l.name, "bind": l.bind.to_string(), "tls": l.tls})).collect::<Vec<_>>(),
        "sites": rt.sites.iter().map(|s| serde_json::json!({"name": &*s.name, "tenant": s.tenant.as_ref().map(|t| t.name.to_string())})).collect::<Vec<_>>(),
        "plugins": plugins,
        "tenants": tenants,
        "tenants_not_served": refused,
    })
}

//! The admin listener: `/metrics` (Prometheus), `/healthz` (the process is up), `/readyz` (a config is
//! loaded and we are not draining: load balancers and Kubernetes stop sending traffic on 503), and
//! `/status` (JSON: live config digest, plugin versions, tenants, the last reload error).
//!
//! Off unless `[admin] bind = "127.0.0.1:9901"` (or `socket = "/run/wasmgate/admin.sock"`) is
//! configured; beyond loopback only with `token_file` (a bearer token `/metrics` and `/status` then
//! require); never one of the proxy's own listeners. Bounded like the proxy's listeners: header-read
//! and idle timeouts, a connection cap, a lifetime per connection, and accept backoff.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;

use crate::reload::Shared;
use wasmgate_config::{AdminConfig, AdminListen};
use wasmgate_server::conn_limits::AcceptBackoff;

/// The bound admin socket.
pub enum AdminListener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl AdminListener {
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            AdminListener::Tcp(l) => l.local_addr().ok(),
            AdminListener::Unix(..) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            AdminListener::Tcp(l) => l
                .local_addr()
                .map_or_else(|_| "tcp".into(), |a| a.to_string()),
            AdminListener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

pub async fn bind(listen: &AdminListen) -> std::io::Result<AdminListener> {
    match listen {
        AdminListen::Tcp(addr) => TcpListener::bind(addr).await.map(AdminListener::Tcp),
        AdminListen::Unix(path) => {
            // A socket left by a predecessor (a handover, a crash) is replaced; anything else is not
            // ours to delete.
            use std::os::unix::fs::FileTypeExt;
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                if meta.file_type().is_socket() {
                    std::fs::remove_file(path)?;
                }
            }
            let l = UnixListener::bind(path)?;
            // Owner and group: whoever may scrape is put in the group.
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
            Ok(AdminListener::Unix(l, path.clone()))
        }
    }
}

/// Serve the admin endpoint. Bounded as `config` says: the connection cap (scrapers and probes need a
/// handful; the cap keeps a flood from using the process's descriptors), the header-read timeout
/// (hyper's timer covers the idle keep-alive wait too), and a lifetime per connection (every answer
/// is small, so it only ends slow readers).
pub async fn serve(listener: AdminListener, config: AdminConfig, shared: Arc<Shared>) {
    let max = config.max_connections;
    let cap = Arc::new(Semaphore::new(max));
    let (header_timeout, lifetime) = (config.header_timeout, config.lifetime);
    let token_file: Option<Arc<Path>> = config.token_file.map(Into::into);
    let mut backoff = AcceptBackoff::default();
    let mut at_cap = false;
    loop {
        let accepted: std::io::Result<Box<dyn Io>> = match &listener {
            AdminListener::Tcp(l) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Io>),
            AdminListener::Unix(l, _) => l.accept().await.map(|(s, _)| Box::new(s) as Box<dyn Io>),
        };
        let stream = match accepted {
            Ok(s) => {
                backoff.success();
                s
            }
            Err(e) => {
                // Out of descriptors, accept fails at once, every time: spinning on it would take a core.
                tokio::time::sleep(backoff.failure("admin", &e)).await;
                continue;
            }
        };
        let Ok(permit) = cap.clone().try_acquire_owned() else {
            // The first of a run is worth a warning; a flood must not flood the log as well.
            if !at_cap {
                tracing::warn!("admin endpoint: {max} connections open; closing new ones");
            }
            at_cap = true;
            continue;
        };
        at_cap = false;
        let shared = shared.clone();
        let token_file = token_file.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc = service_fn(move |req| answer(req, shared.clone(), token_file.clone()));
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(stream), svc);
            let _ = tokio::time::timeout(lifetime, conn).await;
        });
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Does the request carry the token in `token_file`? Read on every request, so a rotated token
/// takes effect at once; compared as SHA-256 digests in constant time (no timing tells how much of
/// a guess was right, nor its length).
fn authorized(req: &Request<Incoming>, token_file: &Path) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    let Ok(expected) = std::fs::read_to_string(token_file) else {
        tracing::warn!(file = %token_file.display(), "admin endpoint: cannot read the token file; refusing");
        return false;
    };
    let expected = expected.trim();
    if expected.is_empty() {
        return false;
    }
    let Some(given) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.trim().split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
    else {
        return false;
    };
    let a = Sha256::digest(expected.as_bytes());
    let b = Sha256::digest(given.as_bytes());
    a.ct_eq(&b).into()
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
    token_file: Option<Arc<Path>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path();
    // Probes (health, readiness) say nothing a load balancer may not know; metrics and status do.
    let open = matches!(path, "/healthz" | "/readyz");
    if let Some(file) = token_file.as_deref() {
        if !open && !authorized(&req, file) {
            let mut r = reply(
                StatusCode::UNAUTHORIZED,
                "text/plain",
                "401 Unauthorized: send Authorization: Bearer <token>\n",
            );
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"wasmgate admin\""),
            );
            return Ok(r);
        }
    }
    Ok(match path {
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n"),
        "/readyz" if shared.serve.draining.is_cancelled() => {
            reply(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "draining\n")
        }
        "/readyz" => reply(StatusCode::OK, "text/plain", "ready\n"),
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            shared.serve.metrics.encode(),
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
    let rt = shared.serve.runtime.load();
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
                    "config": &*p.location(),
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
        "draining": shared.serve.draining.is_cancelled(),
        "config": { "path": rt.config.path.display().to_string(), "digest": st.digest },
        "reloads": { "ok": st.reloads_ok, "failed": st.reloads_failed, "last_error": st.last_error, "restart_pending": st.restart_pending },
        "listeners": rt.config.listeners.iter().map(|l| serde_json::json!({"name": l.name, "bind": l.bind.to_string(), "tls": l.tls})).collect::<Vec<_>>(),
        "sites": rt.sites.iter().map(|s| serde_json::json!({"name": &*s.name, "tenant": s.tenant.as_ref().map(|t| t.name.to_string())})).collect::<Vec<_>>(),
        "plugins": plugins,
        "tenants": tenants,
        "tenants_not_served": refused,
    })
}

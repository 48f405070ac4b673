//! The request pipeline: pick site and route, run plugins, forward (or tunnel), and log.
//!
//! ```text
//! client ─► host/SNI → site ─► normalise path → route ─► site plugins ─► route plugins
//!        ─► WebSocket? tunnel : forward to backend ─► reverse-map headers ─► plugins' on-response ─► client
//! ```
//! Every failure is a [`ProxyError`], turned into a response in one place ([`ProxyError::to_response`]).

pub mod body;
pub mod ctx;
mod forward;
pub mod headers;
pub mod reverse;
mod routing;
pub mod websocket;

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::header;
use http::{Method, Request, Response, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;

pub use ctx::{RequestCtx, ServeCtx};
use forward::{backend_uri, downstream_response, is_websocket_request, upstream_headers};
use wasmgate_core::body::{Ended, Metered, OnDone, ProxyBody};
use wasmgate_core::conn::ConnInfo;
use wasmgate_core::error::ProxyError;
use wasmgate_core::request::RequestState;
use wasmgate_observe::log::AccessRecord;
use wasmgate_plugins::Flow;
use wasmgate_runtime::{Route, Runtime, Site};

/// What the rest of the pipeline knows about the request once site and route are chosen.
pub struct Routed {
    pub site: Arc<Site>,
    pub route: Option<Arc<Route>>,
    pub state: RequestState,
    pub websocket: bool,
}

/// hyper's entry point. Never fails: errors become responses here. The phases, in order: route
/// ([`route_request`]), the plugins' `on-request` and the backend or a WebSocket handshake
/// ([`serve`]), the plugins' `on-response`, then the access line ([`finish`]) or the tunnel.
pub async fn handle(
    ctx: Arc<ServeCtx>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, Infallible> {
    let rt = ctx.runtime.load_full();
    let mut cx = RequestCtx::new(&ctx, &rt, conn, &req);
    let mut routed = match route_request(&rt, &mut cx, &req) {
        Ok(Routing::Serve(r)) => r,
        Ok(Routing::Answer(resp)) => return Ok(finish(resp, cx.access, None)),
        Err(err) => return Ok(fail(&ctx, err, cx, None)),
    };
    // A tenant's request counts against its limit until the response body is done.
    let slot = match routed
        .site
        .tenant
        .as_ref()
        .map(|t| t.begin_request())
        .transpose()
    {
        Ok(slot) => slot,
        Err(err) => return Ok(fail(&ctx, err, cx, None)),
    };
    // Every response from here on — backend, plugin or error — passes the plugins' on-response.
    let (response, tunnel) = match serve(&ctx, &mut cx, &mut routed, req).await {
        Ok(Served::Response(resp)) => (resp, None),
        Ok(Served::Tunnel(resp, pending)) => (resp, Some(pending)),
        Err(err) => (error_response(&ctx, err, &mut cx.access), None),
    };
    match wasmgate_plugins::on_response(&cx.ran, &routed.state, response).await {
        Ok(response) => match tunnel {
            // The client is told of the tunnel only now, and the tunnel writes its own line.
            Some(pending) => {
                cx.access.status = response.status().as_u16();
                pending.start(&ctx, cx.access);
                Ok(response)
            }
            None => Ok(finish(response, cx.access, slot)),
        },
        // A tunnel the plugins refused is never opened: dropping it closes the backend's side.
        Err(err) => {
            drop(tunnel);
            Ok(fail(&ctx, err, cx, slot))
        }
    }
}

/// hyper refused a request head itself — malformed (400) or larger than `max_header_bytes` (431,
/// which config keeps under hyper's URI limit, so never its 414) — and wrote that answer on its
/// own. The request still gets an access line and its count, like every refusal; its method and
/// path are `-`, since they were never read. An HTTP/2 preface on an HTTP/1 listener gets no
/// answer from hyper, and no line.
pub fn refused_by_codec(ctx: &ServeCtx, conn: &ConnInfo, err: &hyper::Error) {
    if !err.is_parse() || err.is_parse_version_h2() {
        return;
    }
    let (status, kind) = if err.is_parse_too_large() {
        (431, "header_too_large")
    } else {
        (400, "bad_request")
    };
    let unread = Method::from_bytes(b"-").expect("`-` is a token");
    let mut access = AccessRecord::new(
        ctx.ids.next(),
        conn.peer.ip(),
        conn.listener_name.clone(),
        &unread,
        "-",
        Version::HTTP_11,
        ctx.unrouted.clone(),
    );
    access.status = status;
    access.error = Some(kind.to_string());
    tracing::debug!(id = %access.request_id, kind, "refused by the HTTP/1 parser: {err}");
    access.emit(0, true);
}

/// An error as the request's whole answer: its response and access line.
fn fail(
    ctx: &ServeCtx,
    err: ProxyError,
    mut cx: RequestCtx,
    slot: Option<wasmgate_runtime::TenantSlot>,
) -> Response<ProxyBody> {
    let response = error_response(ctx, err, &mut cx.access);
    finish(response, cx.access, slot)
}

/// What serving produced: a response, or the answer to an upgrade the backend agreed to.
enum Served {
    Response(Response<ProxyBody>),
    Tunnel(Response<ProxyBody>, websocket::PendingTunnel),
}

/// The one place an error becomes a response (and a log line, and a field of the access log).
fn error_response(
    ctx: &ServeCtx,
    err: ProxyError,
    access: &mut AccessRecord,
) -> Response<ProxyBody> {
    log_error(&err, access);
    if err.side() == wasmgate_core::error::Side::Upstream {
        ctx.metrics
            .upstream_errors
            .get_or_create(&wasmgate_observe::metrics::KindLabels { kind: err.kind() })
            .inc();
    }
    access.error = Some(err.kind().to_string());
    err.to_response()
}

/// Attach the access-log line (and the tenant's request slot) to the end of the response body.
fn finish(
    response: Response<ProxyBody>,
    mut access: AccessRecord,
    slot: Option<wasmgate_runtime::TenantSlot>,
) -> Response<ProxyBody> {
    access.status = response.status().as_u16();
    let (parts, body) = response.into_parts();
    let out = Arc::new(AtomicU64::new(0));
    let counted = Metered::new(body, out.clone(), None);
    let logged = OnDone::new(counted, move |ended: Ended| {
        if let Some(why) = ended.error {
            // A response cut in the middle: the line says why (a silent backend, …).
            access.error = Some(why.to_string());
        }
        access.emit(out.load(Ordering::Relaxed), ended.complete);
        drop(slot);
    });
    Response::from_parts(parts, logged.boxed_unsync())
}

fn log_error(err: &ProxyError, access: &AccessRecord) {
    match err.side() {
        // A path that reads as another route's is a probe for a bypass: worth the operator's eyes.
        wasmgate_core::error::Side::Downstream
            if matches!(err, ProxyError::AmbiguousPath { .. }) =>
        {
            tracing::info!(id = %access.request_id, site = access.site.as_deref().unwrap_or("-"), kind = err.kind(), "refused: {err}")
        }
        wasmgate_core::error::Side::Downstream => {
            tracing::debug!(id = %access.request_id, kind = err.kind(), "{}", wasmgate_core::text::escaped(&wasmgate_core::error::Chain(err).to_string()))
        }
        _ => tracing::warn!(
            id = %access.request_id,
            site = access.site.as_deref().unwrap_or("-"),
            route = access.route.as_deref().unwrap_or("-"),
            kind = err.kind(),
            // A plugin's failure or a backend's answer may be part of the message; the whole
            // cause chain (an io error under a TLS error under hyper's) is.
            "{}", wasmgate_core::text::escaped(&wasmgate_core::error::Chain(err).to_string())
        ),
    }
}

/// What routing decided: serve the request, or answer it at once (nginx's trailing-slash redirect).
enum Routing {
    Serve(Routed),
    Answer(Response<ProxyBody>),
}

/// Host, path and route: everything decided before any plugin runs.
fn route_request(
    rt: &Runtime,
    cx: &mut RequestCtx,
    req: &Request<Incoming>,
) -> Result<Routing, ProxyError> {
    let authority = request_authority(req)?;
    let path =
        wasmgate_core::path::normalize_path(req.uri().path()).map_err(ProxyError::BadPath)?;
    let (site, pick) = routing::select(rt, &cx.conn, &authority, &path)?;
    let route = site.route(pick).cloned();
    let access = &mut cx.access;
    access.site = Some(site.name.clone());
    access.tenant = site.tenant.as_ref().map(|t| t.name.clone());
    access.metrics = route.as_ref().map_or(&site.metrics, |r| &r.metrics).clone();
    access.route = route.as_ref().map(|r| r.name.clone());
    routing::ensure_unambiguous_route(&site, pick, &path)?;
    if let wasmgate_runtime::router::Pick::AddSlash(_) = pick {
        return routing::add_slash(&path, req.uri().query()).map(Routing::Answer);
    }
    let websocket = is_websocket_request(req);
    if req.method() == Method::CONNECT && !websocket {
        return Err(ProxyError::BadRequest(
            "CONNECT is only accepted for WebSockets (RFC 8441)",
        ));
    }
    Ok(Routing::Serve(Routed {
        state: RequestState {
            id: access.request_id.clone(),
            method: req.method().clone(),
            scheme: cx.conn.scheme(),
            authority,
            path,
            query: req.uri().query().map(str::to_string),
            client: cx.client.ip,
            site: site.name.clone(),
            route: route
                .as_ref()
                .map(|r| r.name.clone())
                .unwrap_or_else(|| "".into()),
            websocket,
            version: req.version(),
            tls: cx.conn.tls.clone(),
            at: access.start,
        },
        site,
        route,
        websocket,
    }))
}

/// Plugins' on-request (site chain, then route chain), then the backend or a tunnel.
async fn serve(
    ctx: &ServeCtx,
    cx: &mut RequestCtx,
    routed: &mut Routed,
    mut req: Request<Incoming>,
) -> Result<Served, ProxyError> {
    let site = routed.site.clone();
    let chains = [
        Some(&site.plugins),
        routed.route.as_ref().map(|r| &r.plugins),
    ];
    // Plugin calls box themselves (see `Chain::on_request`), and the WebSocket path is boxed below:
    // their futures (wasmtime's call state, the upgrade) are large, and inline they would make every
    // request's future that large.
    for chain in chains.into_iter().flatten() {
        match chain
            .on_request(&mut routed.state, req.headers_mut(), &mut cx.ran)
            .await?
        {
            Flow::Continue => {}
            Flow::Respond { response, plugin } => {
                cx.access.answered_by = Some(plugin);
                return Ok(Served::Response(response));
            }
        }
    }

    let route = routed.route.clone().ok_or(ProxyError::NoRoute)?;
    cx.access.upstream = Some(route.cfg.backend.authority.clone());
    if routed.websocket {
        if route.cfg.websocket {
            let handshake = Box::pin(websocket::handshake(ctx, cx, routed, &route, req)).await?;
            return Ok(match handshake {
                websocket::Handshake::Answered(resp) => Served::Response(resp),
                websocket::Handshake::Agreed(resp, pending) => Served::Tunnel(resp, pending),
            });
        }
        tracing::info!(id = %cx.access.request_id, route = %route.name, "WebSocket upgrade refused: websocket = false on this route");
        if req.method() == Method::CONNECT {
            return Err(ProxyError::BadRequest(
                "WebSockets are switched off on this route",
            ));
        }
    }
    let io = {
        let rt = ctx.runtime.load();
        (rt.config.io_timeout, rt.config.limits.min_rate)
    };
    forward(cx, &route, &routed.state, req, io)
        .await
        .map(Served::Response)
}

/// The authority the client addressed: `:authority` on h2, the absolute-form target or `Host` on h1.
fn request_authority(req: &Request<Incoming>) -> Result<String, ProxyError> {
    let hosts = req.headers().get_all(header::HOST);
    let mut iter = hosts.iter();
    let host = iter.next();
    if iter.next().is_some() {
        return Err(ProxyError::BadRequest("more than one Host header"));
    }
    if let Some(a) = req.uri().authority() {
        // RFC 9112 §3.2.2: the absolute-form target wins; a disagreeing Host is a smuggling attempt.
        if let Some(h) = host.and_then(|h| h.to_str().ok()) {
            if req.version() != Version::HTTP_2 && !h.eq_ignore_ascii_case(a.as_str()) {
                return Err(ProxyError::BadRequest(
                    "Host header disagrees with the request target",
                ));
            }
        }
        return Ok(a.as_str().to_string());
    }
    match host {
        Some(h) => {
            let h = h
                .to_str()
                .map_err(|_| ProxyError::BadRequest("Host header is not ASCII"))?;
            // RFC 9112 §3.2: an invalid Host is a 400. `host[:port]` as an authority, without userinfo
            // (the router's host normalisation assumes that shape: `[[` used to become `[`).
            // `Authority` accepts any text after the last `:`; the port must be digits (or empty).
            let port = match h.strip_prefix('[') {
                Some(rest) => rest.split_once(']').map(|(_, p)| p),
                None => Some(h.rsplit_once(':').map_or("", |(_, p)| p)),
            };
            let port_ok = port.is_some_and(|p| {
                let digits = p.strip_prefix(':').unwrap_or(p);
                (p.is_empty() || p.starts_with(':') || !h.starts_with('['))
                    && (digits.is_empty() || digits.parse::<u16>().is_ok())
            });
            let authority_ok = port_ok && h.parse::<http::uri::Authority>().is_ok();
            if h.is_empty() || h.contains(['/', ' ', '@']) || !authority_ok {
                return Err(ProxyError::BadRequest("invalid Host header"));
            }
            Ok(h.to_string())
        }
        None if req.version() == Version::HTTP_10 => Ok(String::new()),
        None => Err(ProxyError::BadRequest("missing Host header")),
    }
}

/// Forward a plain HTTP request through the pooled client and stream the answer back.
async fn forward(
    cx: &RequestCtx,
    route: &Route,
    state: &RequestState,
    req: Request<Incoming>,
    (io, min_rate): (std::time::Duration, Option<wasmgate_config::MinRate>),
) -> Result<Response<ProxyBody>, ProxyError> {
    let limit = route.cfg.max_body_bytes;
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ProxyError::BodyTooLarge { limit });
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = backend_uri(route, state)?;
    parts.version = Version::HTTP_11;
    parts.extensions = http::Extensions::new();
    upstream_headers(&mut parts.headers, cx, route, state);
    let body = body::ClientBody::new(body, io, min_rate);
    let body = Metered::new(body, cx.access.bytes_in.clone(), Some(limit)).boxed_unsync();
    let upstream_req = Request::from_parts(parts, body);

    let timeout = route.cfg.timeouts.response;
    let backend = &route.cfg.backend;
    let resp = match tokio::time::timeout(
        timeout,
        route.upstream.send(backend, &route.connector, upstream_req),
    )
    .await
    {
        Err(_) => {
            return Err(ProxyError::UpstreamTimeout {
                backend: backend.authority.clone(),
                after_ms: timeout.as_millis(),
            })
        }
        Ok(r) => r?.map(|b| b.idle_timeout(route.cfg.timeouts.idle)),
    };
    // A 101 to a request that asked for no upgrade (WebSockets take the other path) would switch the
    // client's connection to a protocol nobody agreed on: the backend is broken (RFC 9110 §15.2.2).
    if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        return Err(ProxyError::upstream_protocol(
            &backend.authority,
            wasmgate_core::error::Violation(
                "101 Switching Protocols to a request without an upgrade",
            ),
        ));
    }
    Ok(downstream_response(resp, route, state))
}

//! WebSocket tunnelling: `wss://` (or `ws://`) outside, `ws://` (or `wss://`) inside.
//!
//! The client's upgrade request goes to the backend on a dedicated connection; only when the backend
//! answers `101` with `Upgrade: websocket` does the tunnel open, and from then on bytes are copied
//! both ways without parsing frames. HTTP/2 clients (RFC 8441 extended CONNECT) are bridged to an
//! HTTP/1.1 upgrade towards the backend.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_util::sync::CancellationToken;

use super::ctx::{RequestCtx, ServeCtx};
use super::forward::{backend_uri, downstream_response, upstream_headers};
use super::headers::{has_token, strip_hop_by_hop};
use super::Routed;
use wasmgate_core::body::{empty, ProxyBody};
use wasmgate_core::error::{ProxyError, Violation};
use wasmgate_core::request::RequestState;
use wasmgate_observe::log::AccessRecord;
use wasmgate_runtime::{Route, TenantHandle, TenantSlot, TunnelSlot};

static SEC_WEBSOCKET_KEY: header::HeaderName = header::SEC_WEBSOCKET_KEY;

/// What the backend said to the upgrade.
pub enum Handshake {
    /// Anything but a valid `101` (a 403, a redirect…): passed on as any response.
    Answered(Response<ProxyBody>),
    /// The backend switched; the client has not been told. The pipeline runs the plugins'
    /// `on-response` over the response, then starts the tunnel, or drops it if they failed.
    Agreed(Response<ProxyBody>, PendingTunnel),
}

/// A tunnel the backend agreed to and the client has not been told of yet. Dropping it closes the
/// backend's connection and frees the tunnel slots; nothing is spawned, counted or logged before
/// [`PendingTunnel::start`].
pub struct PendingTunnel {
    client: hyper::upgrade::OnUpgrade,
    backend: hyper::upgrade::OnUpgrade,
    slots: (TunnelSlot, Option<TenantSlot>),
    idle: Duration,
}

impl PendingTunnel {
    /// Copy bytes once hyper hands both sockets over (after it has written the `101` or the h2
    /// `200`); the tunnel's line is written when it ends. `record.status` is what the client got.
    pub fn start(self, ctx: &ServeCtx, record: AccessRecord) {
        let cancel = ctx.tunnels_cancel.clone();
        ctx.tasks.spawn(async move {
            let _slots = self.slots;
            let (client_io, backend_io) = match tokio::try_join!(self.client, self.backend) {
                Ok(pair) => pair,
                Err(e) => {
                    record.emit_tunnel(0, 0, &format!("upgrade failed: {e}"));
                    return;
                }
            };
            record.tunnel_gauge(1);
            let stats = tunnel(
                TokioIo::new(client_io),
                TokioIo::new(backend_io),
                self.idle,
                cancel,
            )
            .await;
            record.tunnel_gauge(-1);
            record.emit_tunnel(stats.up, stats.down, stats.end.as_str());
        });
    }
}

/// Ask the backend to switch, on a connection of its own. Nothing reaches the client from here:
/// the pipeline answers it with what this returns.
pub async fn handshake(
    ctx: &ServeCtx,
    cx: &RequestCtx,
    routed: &Routed,
    route: &Route,
    mut req: Request<Incoming>,
) -> Result<Handshake, ProxyError> {
    let state = &routed.state;
    let slots = admit(ctx, routed, route, &req)?;
    let h2 = req.version() == Version::HTTP_2;
    let client_upgrade = hyper::upgrade::on(&mut req);
    let (breq, key) = backend_request(cx, route, state, std::mem::take(req.headers_mut()), h2)?;

    let backend = &route.cfg.backend;
    let io = route.upstream.connect(backend, &route.connector).await?;
    let protocol_err = |e: hyper::Error| ProxyError::upstream_protocol(&backend.authority, e);
    let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(protocol_err)?;
    // Drives the backend connection through the handshake; the upgrade hands the socket over (or,
    // the PendingTunnel dropped, the connection closes). Tracked: shutdown waits for it too.
    ctx.tasks.spawn(async move {
        let _ = connection.with_upgrades().await;
    });
    let timeout = route.cfg.timeouts.response;
    let mut resp = match tokio::time::timeout(timeout, sender.send_request(breq)).await {
        Err(_) => {
            return Err(ProxyError::UpstreamTimeout {
                backend: backend.authority.clone(),
                after_ms: timeout.as_millis(),
            })
        }
        Ok(r) => r.map_err(protocol_err)?,
    };

    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        tracing::info!(id = %state.id, status = resp.status().as_u16(), "WebSocket upgrade refused by the backend; its answer is passed on");
        return Ok(Handshake::Answered(downstream_response(resp, route, state)));
    }
    agreed(&resp, &backend.authority, key.as_deref())?;
    let pending = PendingTunnel {
        client: client_upgrade,
        backend: hyper::upgrade::on(&mut resp),
        slots,
        idle: route.cfg.timeouts.idle,
    };
    Ok(Handshake::Agreed(client_answer(resp, h2), pending))
}

/// May this upgrade go ahead: an allowed origin, not draining, a tunnel slot of the route and of
/// the tenant (held from here: the tunnel gives them back when it ends).
fn admit(
    ctx: &ServeCtx,
    routed: &Routed,
    route: &Route,
    req: &Request<Incoming>,
) -> Result<(TunnelSlot, Option<TenantSlot>), ProxyError> {
    if let Some(allowed) = &route.cfg.allowed_origins {
        let origin = req
            .headers()
            .get(header::ORIGIN)
            .and_then(|o| o.to_str().ok())
            .unwrap_or("")
            .trim_end_matches('/')
            .to_ascii_lowercase();
        if !allowed.iter().any(|a| a == &origin) {
            return Err(ProxyError::OriginRefused(origin));
        }
    }
    if ctx.draining.is_cancelled() {
        return Err(ProxyError::ShuttingDown);
    }
    let tenant_slot = (routed.site.tenant.as_ref())
        .map(TenantHandle::begin_tunnel)
        .transpose()?;
    let slot = route.try_open_tunnel().ok_or(ProxyError::TooManyTunnels(
        route.cfg.max_tunnels.unwrap_or(0),
    ))?;
    Ok((slot, tenant_slot))
}

/// The backend always gets an RFC 6455 upgrade request; for a client's HTTP/2 extended CONNECT,
/// with a key of ours, whose answer [`agreed`] checks.
fn backend_request(
    cx: &RequestCtx,
    route: &Route,
    state: &RequestState,
    mut headers: http::HeaderMap,
    h2: bool,
) -> Result<(Request<Empty<bytes::Bytes>>, Option<String>), ProxyError> {
    upstream_headers(&mut headers, cx, route, state);
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    let key = if h2 {
        let key = tokio_tungstenite::tungstenite::handshake::client::generate_key();
        headers.insert(
            &SEC_WEBSOCKET_KEY,
            HeaderValue::from_str(&key).expect("base64 is a valid header"),
        );
        headers
            .entry(header::SEC_WEBSOCKET_VERSION)
            .or_insert(HeaderValue::from_static("13"));
        Some(key)
    } else {
        None
    };
    let mut breq = Request::new(Empty::<bytes::Bytes>::new());
    *breq.method_mut() = Method::GET;
    *breq.uri_mut() = backend_uri(route, state)?;
    *breq.headers_mut() = headers;
    Ok((breq, key))
}

/// A 101 is a WebSocket agreement only with `Upgrade: websocket` and, for our own key, the
/// accept value derived from it.
fn agreed<B>(resp: &Response<B>, authority: &str, key: Option<&str>) -> Result<(), ProxyError> {
    if !has_token(resp.headers(), &header::UPGRADE, "websocket") {
        return Err(ProxyError::upstream_protocol(
            authority,
            Violation("101 Switching Protocols without Upgrade: websocket"),
        ));
    }
    if let Some(key) = key {
        let expected = derive_accept_key(key.as_bytes());
        let got = resp
            .headers()
            .get(header::SEC_WEBSOCKET_ACCEPT)
            .and_then(|v| v.to_str().ok());
        if got != Some(expected.as_str()) {
            return Err(ProxyError::upstream_protocol(
                authority,
                Violation("101 with a wrong Sec-WebSocket-Accept"),
            ));
        }
    }
    Ok(())
}

/// The client's side of the agreement: a 101 over HTTP/1.1, a 200 to an HTTP/2 CONNECT.
fn client_answer<B>(mut resp: Response<B>, h2: bool) -> Response<ProxyBody> {
    let mut out_headers = std::mem::take(resp.headers_mut());
    strip_hop_by_hop(&mut out_headers);
    let mut client_resp = Response::new(empty());
    if h2 {
        out_headers.remove(header::SEC_WEBSOCKET_ACCEPT);
        *client_resp.status_mut() = StatusCode::OK;
    } else {
        out_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        out_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        *client_resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    }
    *client_resp.headers_mut() = out_headers;
    client_resp
}

/// How a tunnel ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    ClientClosed,
    BackendClosed,
    IdleTimeout,
    ClientError,
    BackendError,
    Shutdown,
}

impl End {
    pub fn as_str(self) -> &'static str {
        match self {
            End::ClientClosed => "client_close",
            End::BackendClosed => "backend_close",
            End::IdleTimeout => "idle_timeout",
            End::ClientError => "client_error",
            End::BackendError => "backend_error",
            End::Shutdown => "shutdown",
        }
    }
}

pub struct TunnelStats {
    /// Bytes client → backend.
    pub up: u64,
    /// Bytes backend → client.
    pub down: u64,
    pub end: End,
}

const BUF: usize = 8 * 1024;

/// Once one side has closed, the other gets this long (or `idle`, if shorter) to finish: a peer that
/// never closes its half must not pin a tunnel for the whole (often hour-long) idle timeout.
const FIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Copy bytes both ways until both sides have closed, one fails, the tunnel has been silent for
/// `idle`, or `cancel` fires. A side's EOF is passed on as a write shutdown (half-close).
pub async fn tunnel<C, B>(
    client: C,
    backend: B,
    idle: Duration,
    cancel: CancellationToken,
) -> TunnelStats
where
    C: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = AtomicU64::new(0);
    let up = AtomicU64::new(0);
    let down = AtomicU64::new(0);
    let first_close: std::sync::Mutex<Option<End>> = std::sync::Mutex::new(None);
    let half_closed = tokio::sync::Notify::new();
    let (mut cr, mut cw) = tokio::io::split(client);
    let (mut br, mut bw) = tokio::io::split(backend);

    let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    let closed = |e: End| {
        first_close
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert(e);
        half_closed.notify_one();
    };
    let upstream = async {
        copy(&mut cr, &mut bw, &up, &touch)
            .await
            .map_err(|side| match side {
                Fail::Read => End::ClientError,
                Fail::Write => End::BackendError,
            })?;
        closed(End::ClientClosed);
        Ok::<(), End>(())
    };
    let downstream = async {
        copy(&mut br, &mut cw, &down, &touch)
            .await
            .map_err(|side| match side {
                Fail::Read => End::BackendError,
                Fail::Write => End::ClientError,
            })?;
        closed(End::BackendClosed);
        Ok::<(), End>(())
    };
    let watchdog = async {
        let mut limit = idle;
        loop {
            let seen = last.load(Ordering::Relaxed);
            let deadline = start + Duration::from_millis(seen) + limit;
            tokio::select! {
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if last.load(Ordering::Relaxed) == seen {
                        return;
                    }
                }
                _ = half_closed.notified(), if limit == idle && idle > FIN_TIMEOUT => limit = FIN_TIMEOUT,
            }
        }
    };
    let end = tokio::select! {
        r = async { tokio::try_join!(upstream, downstream) } => match r {
            Ok(_) => first_close.lock().unwrap_or_else(|p| p.into_inner()).unwrap_or(End::ClientClosed),
            Err(e) => e,
        },
        _ = watchdog => End::IdleTimeout,
        _ = cancel.cancelled() => End::Shutdown,
    };
    TunnelStats {
        up: up.load(Ordering::Relaxed),
        down: down.load(Ordering::Relaxed),
        end,
    }
}

enum Fail {
    Read,
    Write,
}

thread_local! {
    /// Where a tunnel's bytes are read to, shared by every tunnel on the worker: a read and the
    /// write that passes it on happen in one poll, so no tunnel holds a buffer between messages.
    /// An idle tunnel costs no buffer at all (two 8 KiB buffers each, before: 16 of its 18 KiB).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> = std::cell::RefCell::new(vec![0u8; BUF].into_boxed_slice());
}

/// Copy `r` to `w` until `r` ends (then shut `w`'s write side). What `w` does not take at once is
/// kept (in a buffer of its own, until written) and waited for before the next read.
async fn copy<R, W>(r: &mut R, w: &mut W, count: &AtomicU64, touch: &impl Fn()) -> Result<(), Fail>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rest: Vec<u8> = Vec::new();
    loop {
        let read = std::future::poll_fn(|cx| {
            SCRATCH.with_borrow_mut(|scratch| {
                let mut rb = tokio::io::ReadBuf::new(scratch);
                match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(_)) => Poll::Ready(Err(Fail::Read)),
                    Poll::Ready(Ok(())) => {
                        let data = rb.filled();
                        let mut sent = 0;
                        while sent < data.len() {
                            match Pin::new(&mut *w).poll_write(cx, &data[sent..]) {
                                Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                                    return Poll::Ready(Err(Fail::Write));
                                }
                                Poll::Ready(Ok(k)) => sent += k,
                                Poll::Pending => break,
                            }
                        }
                        rest.extend_from_slice(&data[sent..]);
                        Poll::Ready(Ok(data.len()))
                    }
                }
            })
        })
        .await?;
        if read == 0 {
            let _ = w.shutdown().await;
            return Ok(());
        }
        touch();
        if !rest.is_empty() {
            w.write_all(&rest).await.map_err(|_| Fail::Write)?;
            rest = Vec::new();
        }
        w.flush().await.map_err(|_| Fail::Write)?;
        count.fetch_add(read as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A writer that takes little at a time (a 64-byte pipe) keeps what it has not taken yet: every
    /// byte arrives, in order, and the end is passed on as a shutdown.
    #[tokio::test]
    async fn a_slow_writer_gets_every_byte_in_order() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let (mut src, mut r) = tokio::io::duplex(1 << 20);
        let (mut w, mut dst) = tokio::io::duplex(64);
        let count = AtomicU64::new(0);
        let sent = payload.clone();
        let feed = async move {
            src.write_all(&sent).await.unwrap();
            drop(src);
        };
        let drain = async move {
            let mut got = Vec::new();
            dst.read_to_end(&mut got).await.unwrap();
            got
        };
        let (copied, (), got) = tokio::join!(copy(&mut r, &mut w, &count, &|| {}), feed, drain);
        assert!(copied.is_ok());
        assert_eq!(got, payload);
        assert_eq!(count.load(Ordering::Relaxed), payload.len() as u64);
    }
}

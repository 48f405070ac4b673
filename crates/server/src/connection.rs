//! One accepted connection: PROXY protocol, TLS, then HTTP/1.1 or HTTP/2 with hyper under the
//! watchdog, handing each request to the pipeline, and closing gracefully when draining.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use super::listen::ListenerCtx;
use crate::proxy_protocol::Rewind;
use crate::watchdog::{Activity, InFlight, Paced, Watched};
use wasmgate_core::conn::{ConnInfo, TlsConn};

/// Keeps `connections_open` right however a connection ends.
struct OpenConnection(prometheus_client::metrics::gauge::Gauge);

impl OpenConnection {
    fn new(m: &wasmgate_observe::metrics::Metrics) -> Self {
        m.connections_open.inc();
        m.connections_total.inc();
        OpenConnection(m.connections_open.clone())
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub(super) async fn serve_connection(stream: TcpStream, tcp_peer: SocketAddr, ctx: &ListenerCtx) {
    let _open = OpenConnection::new(&ctx.serve.metrics);
    let _ = stream.set_nodelay(true);
    let Some((stream, peer)) = proxy_header(stream, tcp_peer, ctx).await else {
        return;
    };
    let _per_ip = match &ctx.per_ip {
        None => None,
        Some(table) => match table.acquire(peer.ip()) {
            Some(slot) => Some(slot),
            None => {
                tracing::warn!(listener = %ctx.name, client = %peer.ip(), "max_connections_per_ip reached; connection closed");
                return;
            }
        },
    };
    let peer_text = ConnInfo::peer_text(peer);
    let info = |tls| ConnInfo {
        peer,
        tcp_peer,
        peer_text,
        listener: ctx.idx,
        listener_name: ctx.name.clone(),
        tls,
    };
    let Some(acceptor) = &ctx.tls else {
        return serve_http(stream, info(None), false, ctx).await;
    };
    let tls = match tokio::time::timeout(ctx.limits.header_read, acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "TLS handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let session = tls.get_ref().1;
    let alpn = session
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    let h2 = alpn.as_deref() == Some("h2");
    let tls_info = TlsConn {
        sni: session.server_name().map(str::to_string),
        alpn,
        version: match session.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            _ => "TLSv1.2",
        },
    };
    serve_http(tls, info(Some(tls_info)), h2, ctx).await;
}

/// The PROXY protocol header comes first, before TLS; its address is the client's from here on.
/// `None`: the connection is closed (a bad or late header).
async fn proxy_header(
    stream: TcpStream,
    tcp_peer: SocketAddr,
    ctx: &ListenerCtx,
) -> Option<(Rewind<TcpStream>, SocketAddr)> {
    let proxy_from = ctx.serve.runtime.load().config.listeners[ctx.idx]
        .proxy_protocol
        .clone();
    let Some(from) = proxy_from else {
        return Some((Rewind::plain(stream), tcp_peer));
    };
    let read = crate::proxy_protocol::accept(stream, tcp_peer, &from);
    match tokio::time::timeout(ctx.limits.header_read, read).await {
        Ok(Ok(pair)) => Some(pair),
        Ok(Err(e)) => {
            tracing::info!(listener = %ctx.name, peer = %tcp_peer, "connection closed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %tcp_peer, "PROXY header timed out");
            None
        }
    }
}

/// After an idle timeout, how long an HTTP/2 connection gets to close gracefully (GOAWAY) before it is
/// dropped. An HTTP/1 connection has nothing in flight when the watchdog fires, so it is dropped at once
/// (hyper's graceful close would wait for a head or a request body that is still trickling in).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// While draining, how long an HTTP/1 connection may stay idle before it is closed. Until then it
/// stays open, and its next request is answered with `Connection: close` (HAProxy before 2.4, and
/// its `idle-close-on-response`; Envoy's drain): closing an idle keep-alive connection at once races
/// with a request the client is sending on it, which then fails.
const DRAIN_IDLE: Duration = Duration::from_secs(1);

/// Drive one hyper connection until it ends, the idle watchdog fires, or the server drains.
macro_rules! drive {
    ($conn:expr, $watchdog:expr, $ctx:expr, $h2:expr, $activity:expr, $info:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let watchdog = $watchdog;
        tokio::pin!(watchdog);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended with an error: {e}");
                    wasmgate_proxy::refused_by_codec(&$ctx.serve, &$info, &e);
                }
            }
            why = &mut watchdog => {
                tracing::debug!("closing the connection: {}", why.describe());
                if $h2 {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                }
            }
            _ = $ctx.serve.draining.cancelled() => {
                // HTTP/1: responses from now on carry `Connection: close` (see `serve_http`), so a
                // busy connection ends after its next response; one that stays idle for DRAIN_IDLE
                // is closed. HTTP/2: GOAWAY, once a fresh connection had a moment for its first
                // request (hyper would close it unanswered).
                let wait = if $h2 { Duration::ZERO } else { DRAIN_IDLE };
                let grace = tokio::time::Instant::now() + DRAIN_IDLE;
                let mut done = false;
                loop {
                    let idle = $activity.idle_for();
                    let quiet = if $h2 {
                        $activity.started() || tokio::time::Instant::now() >= grace
                    } else {
                        idle.is_some_and(|d| d >= wait) && tokio::time::Instant::now() >= grace
                    };
                    if quiet {
                        break;
                    }
                    tokio::select! {
                        r = conn.as_mut() => {
                            if let Err(e) = r {
                                wasmgate_proxy::refused_by_codec(&$ctx.serve, &$info, &e);
                            }
                            done = true;
                            break;
                        }
                        why = &mut watchdog => {
                            tracing::debug!("closing the draining connection: {}", why.describe());
                            done = !$h2;
                            break;
                        }
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                    }
                }
                if !done {
                    conn.as_mut().graceful_shutdown();
                    if let Err(e) = conn.await {
                        wasmgate_proxy::refused_by_codec(&$ctx.serve, &$info, &e);
                    }
                }
            }
        }
    }};
}

async fn serve_http<S>(stream: S, info: ConnInfo, h2: bool, ctx: &ListenerCtx)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        activity: activity.clone(),
    });
    let conn_info = Arc::new(info);
    let info = conn_info.clone();
    let serve = ctx.serve.clone();
    let tracked = activity.clone();
    let service = service_fn(move |req| {
        // Counted from the parsed head until the response body is sent or dropped.
        let in_flight = InFlight::start(tracked.clone());
        // Boxed: the pipeline's future is large (kilobytes of state across its awaits); hyper moves
        // the service future around, and a box makes each move a pointer copy.
        let handled = Box::pin(wasmgate_proxy::handle(
            serve.clone(),
            conn_info.clone(),
            req,
        ));
        let serve = serve.clone();
        async move {
            let mut resp = handled.await?;
            if !h2
                && serve.draining.is_cancelled()
                && resp.status() != http::StatusCode::SWITCHING_PROTOCOLS
            {
                // Draining: this is the connection's last response; hyper closes after it.
                resp.headers_mut().insert(
                    http::header::CONNECTION,
                    http::HeaderValue::from_static("close"),
                );
            }
            Ok::<_, Infallible>(resp.map(|body| Paced::new(body, in_flight).boxed_unsync()))
        }
    });
    let watchdog = crate::watchdog::watch(activity.clone(), ctx.limits, h2);
    // Each connection gets exactly one protocol: plain listeners HTTP/1.1 only (no h2c, neither by
    // `Upgrade: h2c` nor by prior knowledge), TLS listeners what ALPN chose. hyper-util's
    // `auto::Builder::serve_connection_with_upgrades` sniffs the preface and ignores `http1_only()`,
    // so the version-specific hyper builders are used directly.
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder
            .timer(TokioTimer::new())
            .enable_connect_protocol()
            .max_header_list_size(ctx.max_header_bytes as u32);
        drive!(
            builder.serve_connection(io, service),
            watchdog,
            ctx,
            true,
            activity,
            info
        );
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            // The watchdog enforces header_read and keepalive. hyper's own header timer would arm a
            // timer per request (and start when the connection goes idle, capping keepalive).
            .header_read_timeout(None)
            // `max_buf_size` alone is no header limit: a head that arrives in few large reads can
            // outgrow it before the check runs. `max_header_size` counts the parsed head exactly.
            .max_header_size(ctx.max_header_bytes)
            .max_buf_size(ctx.max_header_bytes)
            .keep_alive(true);
        drive!(
            builder.serve_connection(io, service).with_upgrades(),
            watchdog,
            ctx,
            false,
            activity,
            info
        );
    }
}

//! Connections to backends: per-worker pools of keep-alive HTTP/1.1 connections (wasmgate's own
//! codec, `h1`, polled in the request's task — checkout and checkin are a `Vec` pop and push on the
//! worker's thread), shared across reloads so a config change does not throw away warm connections;
//! and one-off connections for WebSocket upgrades, which leave the pool for good once upgraded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::hash::BuildHasherDefault;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::upstream::egress::{Connector, EgressError};
use crate::upstream::h1::{self, H1Error};
use wasmgate_config::Backend;
use wasmgate_core::body::ProxyBody;
use wasmgate_core::error::ProxyError;

/// How to reach the backends of one route: connect timeout and TLS settings. Requests go out on
/// keep-alive connections from the pool of the worker thread they run on (see [`Upstream::send`]).
pub struct Upstream {
    pub connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    /// Names this client's idle connections in the worker pools. Never reused (an address would
    /// be: a client dropped after a reload and a new one allocated in its place, with another CA,
    /// would inherit connections its TLS settings never vetted).
    id: u64,
    /// A draining process pools nothing.
    life: crate::Lifecycle,
}

/// Upstream ids, process-wide so that two servers in one process never share one either.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// (connect timeout, SHA-256 of the CA bundle's bytes): a bundle rotated in place is a new key.
type Key = (Duration, Option<[u8; 32]>);

/// An idle keep-alive connection, and the reaper generation it came back in.
struct Idle {
    conn: h1::Conn,
    generation: u64,
}

/// Idle connections are closed after this long unused, give or take one reaper round (nginx's
/// `keepalive_timeout` default is 60 s). The reaper looks every `IDLE_TIMEOUT / 2` and counts
/// rounds, so the request path never reads the clock for the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Reaper rounds after which an idle connection goes: 3 rounds of 30 s, so 60–90 s unused.
const IDLE_ROUNDS: u64 = 3;
/// Idle connections kept per backend and worker; more are closed when they come back.
const MAX_IDLE: usize = 256;

/// Which pool: the upstream (by address, it lives as long as the server), plain/TLS, and the egress
/// scope (a connection a tenant's policy allowed is never handed to the operator's routes or another
/// tenant, and the reverse); then the backend's `host:port`.
/// (upstream id, TLS to the backend, egress scope).
type PoolKey = (u64, bool, u128);

thread_local! {
    /// This worker thread's idle connections. A connection's socket is registered with the reactor of
    /// the runtime that opened it, so sharing a pool between workers would make every request wake
    /// another thread; like nginx's workers, each keeps its own. No lock: one thread, and
    /// checkout/checkin never `.await`.
    static IDLE: RefCell<FastMap<PoolKey, FastMap<String, Vec<Idle>>>> = Default::default();
    static REAPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Reaper rounds so far on this worker.
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// The pools' maps, looked up twice per request: keyed by what the config and the process chose
/// (upstream ids, backend authorities), never by what a client sends, so a fast unkeyed hash is
/// safe where SipHash's flooding resistance would only cost time.
type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<FxHasher>>;

/// The Fx hash (rustc's): a multiply and a rotate per word.
#[derive(Default)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            self.write_u64(u64::from_le_bytes(c.try_into().unwrap_or([0; 8])));
        }
        for &b in chunks.remainder() {
            self.write_u64(u64::from(b));
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

fn checkout(key: PoolKey, authority: &str) -> Option<h1::Conn> {
    IDLE.with(|pools| {
        let mut pools = pools.borrow_mut();
        let list = pools.get_mut(&key)?.get_mut(authority)?;
        // Most recently used first: its socket is warm, and stale ones sink to the front. One the
        // backend closed (or wrote to) while it was idle is dropped here.
        while let Some(mut c) = list.pop() {
            if c.conn.is_reusable() {
                return Some(c.conn);
            }
        }
        None
    })
}

fn checkin(key: PoolKey, authority: &str, conn: h1::Conn, life: &crate::Lifecycle) {
    // Shutdown closes the task set: a draining process keeps no connection.
    if life.tasks.is_closed() {
        return;
    }
    start_reaper();
    IDLE.with(|pools| {
        let mut pools = pools.borrow_mut();
        let by_host = pools.entry(key).or_default();
        let list = match by_host.get_mut(authority) {
            Some(list) => list,
            None => by_host.entry(authority.to_owned()).or_default(),
        };
        if list.len() < MAX_IDLE {
            list.push(Idle {
                conn,
                generation: GENERATION.get(),
            });
        }
    });
}

/// Close idle connections past [`IDLE_TIMEOUT`] (and ones the backend closed). One task per worker
/// thread, started with its first pooled connection.
fn start_reaper() {
    if REAPER.get() || tokio::runtime::Handle::try_current().is_err() {
        return;
    }
    REAPER.set(true);
    tokio::spawn(async {
        loop {
            tokio::time::sleep(IDLE_TIMEOUT / 2).await;
            let now = GENERATION.get() + 1;
            GENERATION.set(now);
            IDLE.with(|pools| {
                // Emptied lists and pools go too: clients come and go with reloads (a rotated CA
                // is a new one), and their keys must not pile up on every worker.
                pools.borrow_mut().retain(|_, by_host| {
                    by_host.retain(|_, list| {
                        list.retain_mut(|c| {
                            now - c.generation < IDLE_ROUNDS && c.conn.is_reusable()
                        });
                        !list.is_empty()
                    });
                    !by_host.is_empty()
                });
            });
        }
    });
}

impl Upstream {
    /// Send `req` (origin-form target, `Host` set) to `backend` on an idle keep-alive connection of
    /// this worker, or on a new one. The connection goes back to the pool when the response body has
    /// been read to its end. A request that a reused connection failed before any answer is sent
    /// again on another connection when that is safe (see `h1::SendError`): nothing of it went out,
    /// or it has no body and an idempotent method.
    pub async fn send(
        self: &Arc<Self>,
        backend: &Backend,
        via: &Connector,
        req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let key = (self.id, backend.tls, via.scope());
        let mut out = h1::Outgoing::new(req);
        loop {
            let pooled = checkout(key, &backend.authority);
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(conn) => conn,
                // Boxed: rare, and connecting (TCP, maybe TLS) makes a large future; inline, every
                // request's future would carry (and move) it.
                None => h1::Conn::new(Box::pin(self.open(backend, via)).await?),
            };
            match conn.send(&mut out).await {
                Ok((parsed, whole)) => {
                    if let Some((rest, _)) = out.body.take() {
                        // The backend answered before the upload ended. The rest of the client's
                        // body is read and dropped (bounded by its own timeouts and size limit), not
                        // dropped unread: the client's connection would close at once, and a close
                        // with unread bytes is a reset that can destroy the answer before the client
                        // reads it.
                        self.life.tasks.spawn(async move {
                            let mut rest = rest;
                            while let Some(Ok(_)) = rest.frame().await {}
                        });
                    }
                    let body =
                        h1::ResponseBody::new(conn, parsed.framing, parsed.keep_alive && whole);
                    return Ok(h1::response(
                        parsed,
                        PooledBody {
                            body,
                            back: Some(Back {
                                key,
                                authority: backend.authority.clone(),
                                upstream: self.clone(),
                            }),
                            idle: None,
                            timer: None,
                            armed: false,
                        },
                    ));
                }
                Err(e) if reused && e.replayable => {
                    tracing::debug!(backend = %backend.authority, "pooled connection failed before an answer, sending again: {}", e.error);
                }
                Err(e) => return Err(classify(e.error, backend)),
            }
        }
    }
}

/// Where a connection goes back to once its response is read.
struct Back {
    key: PoolKey,
    authority: String,
    upstream: Arc<Upstream>,
}

/// A backend response body that returns its connection to the pool once read to the end (when it is
/// dropped; hyper drops it after the last byte went out, or never polls it when it is empty).
pub struct PooledBody {
    body: h1::ResponseBody,
    back: Option<Back>,
    /// See [`PooledBody::idle_timeout`].
    idle: Option<Duration>,
    /// Armed while the backend owes us bytes (allocated at the first wait only).
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The timer is set for the current wait.
    armed: bool,
}

impl PooledBody {
    /// Fail the body (cutting the client's response) when the backend sends nothing for `idle`.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = Some(idle);
        self
    }
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = wasmgate_core::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.body).poll_frame(cx) {
            Poll::Pending => {}
            Poll::Ready(polled) => {
                this.armed = false;
                return Poll::Ready(polled.map(|r| r.map_err(Into::into)));
            }
        }
        let Some(idle) = this.idle else {
            return Poll::Pending;
        };
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        if !this.armed {
            timer.as_mut().reset(tokio::time::Instant::now() + idle);
            this.armed = true;
        }
        match timer.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            // The connection is dropped with the body (it did not end): it goes, not back to the pool.
            Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(
                wasmgate_core::body::BackendBodyIdle(idle),
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // A body abandoned mid-way (or broken) keeps its connection, which closes with it.
        if let (Some(conn), Some(b)) = (self.body.take_reusable(), self.back.take()) {
            checkin(b.key, &b.authority, conn, &b.upstream.life);
        }
    }
}

/// Upstreams by key; lives as long as the server, across reloads. Held weakly: a client lives
/// while a runtime's route (or a response in flight) uses it, so the bundles of past reloads, each
/// a key of its own, do not pile up.
pub struct UpstreamCache {
    map: Mutex<HashMap<Key, std::sync::Weak<Upstream>>>,
    life: crate::Lifecycle,
}

impl UpstreamCache {
    pub fn new(life: crate::Lifecycle) -> UpstreamCache {
        UpstreamCache {
            map: Default::default(),
            life,
        }
    }

    /// The client for `connect_timeout` and a CA bundle, as its path (for errors) and the bytes
    /// read from it (`None`: the web PKI roots). Keyed by the bytes: a bundle rotated in place takes
    /// effect at the next reload, and the clients that trusted the old one keep their own
    /// connections.
    pub fn get(
        &self,
        connect_timeout: Duration,
        ca: Option<(&Path, &[u8])>,
    ) -> Result<Arc<Upstream>, crate::certs::CertError> {
        let key = (
            connect_timeout,
            ca.map(|(_, pem)| Sha256::digest(pem).into()),
        );
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.retain(|_, u| u.strong_count() > 0);
        if let Some(u) = map.get(&key).and_then(std::sync::Weak::upgrade) {
            return Ok(u);
        }
        let tls = crate::certs::client_config(ca, true)?;
        let up = Arc::new(Upstream {
            connect_timeout,
            tls,
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            life: self.life.clone(),
        });
        map.insert(key, Arc::downgrade(&up));
        Ok(up)
    }
}

/// A byte stream to a backend, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

impl Upstream {
    /// Open a dedicated connection (for a WebSocket upgrade) within the connect timeout, through
    /// `via` (a tenant's egress policy, or directly for the operator's routes).
    pub async fn connect(
        &self,
        backend: &Backend,
        via: &Connector,
    ) -> Result<TokioIo<Box<dyn Stream>>, ProxyError> {
        let io = self.open(backend, via).await?;
        Ok(TokioIo::new(Box::new(io) as Box<dyn Stream>))
    }

    /// A new connection to `backend` (TCP, then TLS if it wants it) within the connect timeout.
    async fn open(&self, backend: &Backend, via: &Connector) -> Result<h1::Io, ProxyError> {
        let attempt = async {
            let tcp = via
                .connect(&backend.authority, &backend.host)
                .await
                .map_err(|e| match e {
                    EgressError::Refused { tenant, reason } => ProxyError::EgressRefused {
                        tenant: tenant.to_string(),
                        reason,
                    },
                    EgressError::Resolve(e) | EgressError::Connect(e) => {
                        ProxyError::upstream_connect(&backend.authority, e)
                    }
                })?;
            let _ = tcp.set_nodelay(true);
            if !backend.tls {
                return Ok(h1::Io::Plain(tcp));
            }
            let name = rustls::pki_types::ServerName::try_from(backend.host.clone())
                .map_err(|e| ProxyError::upstream_connect(&backend.authority, e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| ProxyError::upstream_connect(&backend.authority, e))?;
            Ok(h1::Io::Tls(Box::new(tls)))
        };
        match tokio::time::timeout(self.connect_timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(ProxyError::UpstreamConnectTimeout {
                backend: backend.authority.clone(),
                after_ms: self.connect_timeout.as_millis(),
            }),
        }
    }
}

/// Classify a failed exchange: the request body's own failure is the client's (413, 400, 408),
/// anything else the backend's (502).
fn classify(err: H1Error, backend: &Backend) -> ProxyError {
    let H1Error::Body(cause) = err else {
        return ProxyError::upstream_protocol(&backend.authority, err);
    };
    if let Some(t) = cause.downcast_ref::<wasmgate_core::body::TooLarge>() {
        return ProxyError::BodyTooLarge { limit: t.0 };
    }
    match cause.downcast_ref::<wasmgate_core::body::ClientBodyError>() {
        Some(wasmgate_core::body::ClientBodyError::Broken(_)) | None => {
            ProxyError::BadRequestBody(cause)
        }
        Some(c) => ProxyError::ClientTimeout {
            kind: c.kind(),
            cause,
        },
    }
}

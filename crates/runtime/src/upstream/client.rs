//! Connections to backends: per-worker pools of keep-alive HTTP/1.1 connections (hyper's connection
//! API with a pool of our own — checkout and checkin are a `Vec` pop and push on the worker's
//! thread), shared across reloads so a config change does not throw away warm connections; and
//! one-off connections for WebSocket upgrades, which leave the pool for good once upgraded.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::upstream::egress::{Connector, EgressError};
use wasmgate_config::Backend;
use wasmgate_core::body::ProxyBody;
use wasmgate_core::error::{ProxyError, Violation};

/// How to reach the backends of one route: connect timeout and TLS settings. Requests go out on
/// keep-alive connections from the pool of the worker thread they run on (see [`Upstream::send`]).
pub struct Upstream {
    pub connect_timeout: Duration,
    tls: Arc<rustls::ClientConfig>,
    /// Names this client's idle connections in the worker pools. Never reused (an address would
    /// be: a client dropped after a reload and a new one allocated in its place, with another CA,
    /// would inherit connections its TLS settings never vetted).
    id: u64,
    /// Connection drivers join the process's task set; a draining process pools nothing.
    life: crate::Lifecycle,
}

/// Upstream ids, process-wide so that two servers in one process never share one either.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// (connect timeout, SHA-256 of the CA bundle's bytes): a bundle rotated in place is a new key.
type Key = (Duration, Option<[u8; 32]>);

/// An idle keep-alive connection: hyper's handle to it (the connection itself is driven by a task),
/// and the reaper generation it came back in.
struct Idle {
    tx: SendRequest<ProxyBody>,
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
    /// This worker thread's idle connections. A connection's task runs on the runtime that opened it,
    /// so sharing a pool between workers would make every request wake another thread; like nginx's
    /// workers, each keeps its own. No lock: one thread, and checkout/checkin never `.await`.
    static IDLE: RefCell<HashMap<PoolKey, HashMap<String, Vec<Idle>>>> = Default::default();
    static REAPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Reaper rounds so far on this worker.
    static GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

fn checkout(key: PoolKey, authority: &str) -> Option<SendRequest<ProxyBody>> {
    IDLE.with(|pools| {
        let mut pools = pools.borrow_mut();
        let list = pools.get_mut(&key)?.get_mut(authority)?;
        // Most recently used first: its socket is warm, and stale ones sink to the front.
        while let Some(c) = list.pop() {
            if !c.tx.is_closed() {
                return Some(c.tx);
            }
        }
        None
    })
}

fn checkin(key: PoolKey, authority: &str, tx: SendRequest<ProxyBody>, life: &crate::Lifecycle) {
    // Shutdown closes the task set before it signals draining, so a connection coming back after
    // its driver cleared this worker's idle ones (see `handshake`) sees the set closed.
    if tx.is_closed() || life.tasks.is_closed() {
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
        // Amortised pruning: the oldest entry goes if it is dead.
        if list.first().is_some_and(|c| c.tx.is_closed()) {
            list.remove(0);
        }
        if list.len() < MAX_IDLE {
            list.push(Idle {
                tx,
                generation: GENERATION.get(),
            });
        }
    });
}

/// Drop this worker's idle connections of upstream `id`: their drivers see the handle go and end.
fn forget_idle(id: u64) {
    IDLE.with(|pools| pools.borrow_mut().retain(|key, _| key.0 != id));
}

/// Close idle connections past [`IDLE_TIMEOUT`] (and dead ones). One task per worker thread, started
/// with its first pooled connection.
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
                        list.retain(|c| !c.tx.is_closed() && now - c.generation < IDLE_ROUNDS);
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
    /// been read to its end; a request that a reused connection could not take (it closed meanwhile)
    /// is retried once on a fresh connection — it was never sent, so this is safe for any method.
    pub async fn send(
        self: &Arc<Self>,
        backend: &Backend,
        via: &Connector,
        req: Request<ProxyBody>,
    ) -> Result<Response<PooledBody>, ProxyError> {
        let key = (self.id, backend.tls, via.scope());
        let mut req = req;
        let mut pooled = checkout(key, &backend.authority);
        loop {
            let reused = pooled.is_some();
            let mut tx = match pooled.take() {
                Some(tx) => tx,
                // Boxed: rare, and connecting (TCP, maybe TLS) makes a large future; inline, every
                // request's future would carry (and move) it.
                None => Box::pin(self.handshake(backend, via)).await?,
            };
            // A pooled connection may still be finishing the previous exchange for a moment.
            let ready = tokio::time::timeout(self.connect_timeout, tx.ready()).await;
            if !matches!(ready, Ok(Ok(()))) {
                if reused {
                    continue;
                }
                return Err(ProxyError::upstream_connect(
                    &backend.authority,
                    Violation("the new connection was closed before it could take the request"),
                ));
            }
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    return Ok(resp.map(|body| PooledBody {
                        body,
                        ended: false,
                        back: Some(Back {
                            key,
                            authority: backend.authority.clone(),
                            tx,
                            upstream: self.clone(),
                        }),
                        idle: None,
                        timer: None,
                        armed: false,
                    }))
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(classify(e.into_error(), backend)),
                },
            }
        }
    }

    async fn handshake(
        &self,
        backend: &Backend,
        via: &Connector,
    ) -> Result<SendRequest<ProxyBody>, ProxyError> {
        let io = self.connect(backend, via).await?;
        let (tx, conn) = hyper::client::conn::http1::Builder::new()
            .handshake(io)
            .await
            .map_err(|e| classify(e, backend))?;
        let authority = backend.authority.clone();
        let (id, draining) = (self.id, self.life.draining.clone());
        // Tracked like every other task: shutdown waits for the exchange under way to finish.
        self.life.tasks.spawn(async move {
            let mut conn = conn;
            let ended = tokio::select! {
                biased;
                ended = &mut conn => ended,
                () = draining.cancelled() => {
                    // Idle connections close now, so they do not hold the shutdown for their idle
                    // timeout; one with an exchange under way finishes it and is not pooled again.
                    forget_idle(id);
                    conn.await
                }
            };
            if let Err(e) = ended {
                tracing::debug!(backend = %authority, "backend connection ended: {}", wasmgate_core::error::Chain(&e));
            }
        });
        Ok(tx)
    }
}

/// Where a connection goes back to once its response is read.
struct Back {
    key: PoolKey,
    authority: String,
    tx: SendRequest<ProxyBody>,
    upstream: Arc<Upstream>,
}

/// A backend response body that returns its connection to the pool once read to the end (when it is
/// dropped; hyper drops it after the last byte went out, or never polls it when it is empty).
pub struct PooledBody {
    body: Incoming,
    ended: bool,
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
                if polled.is_none() {
                    this.ended = true;
                }
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
            // The connection is dropped with the body (not `ended`): it goes, not back to the pool.
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
        if self.ended || self.body.is_end_stream() {
            if let Some(b) = self.back.take() {
                checkin(b.key, &b.authority, b.tx, &b.upstream.life);
            }
        }
        // Otherwise the body was abandoned mid-way: dropping the handle closes the connection.
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
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Stream>));
            }
            let name = rustls::pki_types::ServerName::try_from(backend.host.clone())
                .map_err(|e| ProxyError::upstream_connect(&backend.authority, e))?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| ProxyError::upstream_connect(&backend.authority, e))?;
            Ok(TokioIo::new(Box::new(tls) as Box<dyn Stream>))
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

/// Classify a backend exchange error: our body limit → 413, anything else → 502.
fn classify(err: hyper::Error, backend: &Backend) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = src {
        if let Some(t) = e.downcast_ref::<wasmgate_core::body::TooLarge>() {
            return ProxyError::BodyTooLarge { limit: t.0 };
        }
        // The request body failed on the client's side: its fault, not the backend's.
        if let Some(c) = e.downcast_ref::<wasmgate_core::body::ClientBodyError>() {
            let timeout = match c {
                wasmgate_core::body::ClientBodyError::Broken(_) => None,
                _ => Some(c.kind()),
            };
            let cause = Box::new(err);
            return match timeout {
                None => ProxyError::BadRequestBody(cause),
                Some(kind) => ProxyError::ClientTimeout { kind, cause },
            };
        }
        src = e.source();
    }
    ProxyError::upstream_protocol(&backend.authority, err)
}

//! Listeners and connections: bind once, accept, terminate TLS, serve HTTP/1.1 and HTTP/2 with hyper,
//! and drain gracefully. The live [`Runtime`] is swapped underneath without touching sockets.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http_body_util::BodyExt;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigErrors};
use crate::proxy::{ConnInfo, TlsConn};
use crate::runtime::{Builders, Runtime, SharedRuntime};

/// State shared by every connection for the life of the process.
pub struct Shared {
    pub runtime: SharedRuntime,
    pub builders: Builders,
    pub ids: RequestIds,
    /// Fires when shutdown starts: stop accepting, finish in-flight requests, refuse new tunnels.
    pub draining: CancellationToken,
    /// Fires when the grace period is over: open tunnels are closed.
    pub tunnels_cancel: CancellationToken,
    /// Connections and tunnels, so shutdown can wait for them.
    pub tasks: TaskTracker,
    /// What `/status` reports about the configuration and reloads.
    pub status: std::sync::Mutex<ReloadStatus>,
    /// Fires when the server is gone: worker threads end their event loops.
    pub stopped: CancellationToken,
}

#[derive(Debug, Clone, Default)]
pub struct ReloadStatus {
    /// Digest of the live config file and every file it references.
    pub digest: String,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub last_error: Option<String>,
}

impl Shared {
    /// Record the live plugin versions, and the config digest when a new config went live, for
    /// `/status` and `/metrics`.
    pub(crate) fn publish(&self, digest: Option<String>) {
        let rt = self.runtime.load();
        let m = crate::metrics::get();
        if let Some(digest) = digest {
            m.config_info.clear();
            m.config_info
                .get_or_create(&crate::metrics::DigestLabels {
                    digest: digest.clone(),
                })
                .set(1);
            self.status.lock().unwrap_or_else(|p| p.into_inner()).digest = digest;
        }
        m.plugin_info.clear();
        for site in &rt.sites {
            for chain in
                std::iter::once(&site.plugins).chain(site.routes.iter().map(|r| &r.plugins))
            {
                for p in chain.plugins() {
                    let labels = crate::metrics::PluginInfoLabels {
                        plugin: p.name.clone(),
                        site: site.name.to_string(),
                        tenant: site
                            .tenant
                            .as_ref()
                            .map_or("-".to_string(), |t| t.name.to_string()),
                        digest: p.digest().to_string(),
                    };
                    m.plugin_info.get_or_create(&labels).set(1);
                }
            }
        }
    }

    /// Reload tenants against the running operator config (used when the operator's file is broken:
    /// tenants keep reloading on their own).
    pub(crate) fn reload_tenants(&self) -> Result<(), ConfigErrors> {
        let current = self.runtime.load();
        let config = (*current.config).clone();
        let next = Runtime::build(config, &self.builders, Some(&current))?;
        self.builders.remember_owners(&next);
        self.runtime.store(Arc::new(next));
        Ok(())
    }

    pub(crate) fn reload(&self, config: Config) -> Result<(), ConfigErrors> {
        let current = self.runtime.load();
        if config.listeners != current.config.listeners {
            return Err(ConfigErrors::single(
                &config.path,
                "listener",
                "listeners changed (name, bind or tls): that needs a restart",
            ));
        }
        let next = Runtime::build(config, &self.builders, Some(&current))?;
        self.builders.remember_owners(&next);
        self.runtime.store(Arc::new(next));
        Ok(())
    }
}

/// Request ids: a per-process random prefix and a counter — unique, cheap, sortable within a process.
pub struct RequestIds {
    prefix: u32,
    next: AtomicU64,
}

impl RequestIds {
    fn new() -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
            .unwrap_or(0);
        RequestIds {
            prefix: nanos ^ std::process::id().rotate_left(16),
            next: AtomicU64::new(1),
        }
    }

    /// `{prefix:08x}{counter:08x}` (the counter's low 32 bits), hex by hand: `format!` was 2% of
    /// the proxy's user time per request.
    pub fn next(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let word = (u64::from(self.prefix) << 32) | (n & 0xffff_ffff);
        let digits: Vec<u8> = (0..16)
            .rev()
            .map(|i| b"0123456789abcdef"[(word >> (i * 4)) as usize & 0xf])
            .collect();
        String::from_utf8(digits).unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("cannot listen on {addr} (listener `{name}`): {source}")]
    Bind {
        name: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running wasmgate.
pub struct Server {
    shared: Arc<Shared>,
    addrs: Vec<(String, SocketAddr)>,
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    /// Serves until the very end: `/readyz` must be able to say "draining".
    admin_task: Option<tokio::task::JoinHandle<()>>,
    /// The listening sockets, for a handover to a successor.
    fds: Vec<(String, std::os::fd::RawFd)>,
    /// Worker threads, each running an event loop of its own.
    threads: Vec<std::thread::JoinHandle<()>>,
    /// The listening sockets the workers accept on clones of.
    held: Vec<std::net::TcpListener>,
}

impl Drop for Server {
    fn drop(&mut self) {
        // Dropped without `shutdown`: stop at once (tests, errors); nothing is waited for.
        self.shared.draining.cancel();
        self.shared.tunnels_cancel.cancel();
        self.shared.stopped.cancel();
    }
}

/// One worker: a single-threaded event loop accepting on every listener (the sockets are shared, so
/// the kernel hands each new connection to one worker). A connection, its requests, its backend
/// connections and its tunnel all stay on that thread: no cross-thread wake-ups on the hot path.
fn spawn_worker(
    i: usize,
    sockets: Vec<(std::net::TcpListener, Arc<ListenerCtx>)>,
    stopped: CancellationToken,
) -> std::thread::JoinHandle<()> {
    std::thread::Builder::new()
        .name(format!("wasmgate-worker-{i}"))
        .spawn(move || {
            crate::plugins::set_worker(i);
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!("worker {i} cannot start its event loop: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                for (socket, ctx) in sockets {
                    match TcpListener::from_std(socket) {
                        Ok(l) => {
                            tokio::spawn(accept_loop(l, ctx));
                        }
                        Err(e) => tracing::error!("worker {i}: {e}"),
                    }
                }
                stopped.cancelled().await;
            });
        })
        .expect("spawn a worker thread")
}

impl Server {
    /// Validate and build `config`, bind every listener and start serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let builders = Builders::new(config.cache_dir.clone());
        let runtime = Runtime::build(config, &builders, None)?;
        builders.remember_owners(&runtime);
        let listeners = runtime.config.listeners.clone();
        let admin = runtime.config.admin;
        let limits = runtime.config.limits.clone();
        let timeouts = (
            runtime.config.header_read_timeout,
            runtime.config.keepalive_timeout,
        );
        let shared = Arc::new(Shared {
            runtime: Arc::new(ArcSwap::from_pointee(runtime)),
            builders,
            ids: RequestIds::new(),
            draining: CancellationToken::new(),
            tunnels_cancel: CancellationToken::new(),
            tasks: TaskTracker::new(),
            status: Default::default(),
            stopped: CancellationToken::new(),
        });
        let digest = {
            let rt = shared.runtime.load();
            crate::reload::fingerprint(&rt.config.path, &rt)
        };
        shared.publish(Some(digest));
        let mut addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        let mut fds = Vec::new();
        let mut sockets = Vec::new();
        for (idx, l) in listeners.iter().enumerate() {
            let socket = match crate::handover::take_inherited(&l.name) {
                // A predecessor passed this listener's socket (see `handover.rs`).
                Some(inherited) => TcpListener::from_std(inherited),
                None => bind(l.bind),
            }
            .map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            fds.push((l.name.clone(), std::os::fd::AsRawFd::as_raw_fd(&socket)));
            let local = socket.local_addr().map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
            tracing::info!(listener = %l.name, addr = %local, tls = l.tls, "listening");
            addrs.push((l.name.clone(), local));
            let tls = l
                .tls
                .then(|| TlsAcceptor::from(crate::tls::server_config(shared.runtime.clone(), idx)));
            let ctx = ListenerCtx {
                idx,
                name: l.name.as_str().into(),
                tls,
                shared: shared.clone(),
                header_read_timeout: timeouts.0,
                keepalive_timeout: timeouts.1,
                max_header_bytes: limits.max_header_bytes,
                connections: Arc::new(Semaphore::new(limits.max_connections)),
            };
            sockets.push((socket, Arc::new(ctx)));
        }
        let workers = shared.runtime.load().config.workers;
        let mut threads = Vec::new();
        let mut held = Vec::new();
        if workers == 0 {
            for (socket, ctx) in sockets {
                accept_tasks.push(tokio::spawn(accept_loop(socket, ctx)));
            }
        } else {
            let std_sockets: Vec<(std::net::TcpListener, Arc<ListenerCtx>)> = sockets
                .into_iter()
                .map(|(s, ctx)| s.into_std().map(|s| (s, ctx)))
                .collect::<std::io::Result<_>>()
                .map_err(|source| StartError::Bind {
                    name: "listener".into(),
                    addr: listeners[0].bind,
                    source,
                })?;
            for i in 0..workers {
                let mine = std_sockets
                    .iter()
                    .map(|(s, ctx)| s.try_clone().map(|s| (s, ctx.clone())))
                    .collect::<std::io::Result<Vec<_>>>()
                    .map_err(|source| StartError::Bind {
                        name: "listener".into(),
                        addr: listeners[0].bind,
                        source,
                    })?;
                threads.push(spawn_worker(i, mine, shared.stopped.clone()));
            }
            // The originals keep the descriptors recorded in `fds` open, for a handover.
            held = std_sockets.into_iter().map(|(s, _)| s).collect();
        }
        let mut admin_task = None;
        if let Some(addr) = admin {
            let socket = crate::admin::bind(addr)
                .await
                .map_err(|source| StartError::Bind {
                    name: "admin".into(),
                    addr,
                    source,
                })?;
            let local = socket.local_addr().map_err(|source| StartError::Bind {
                name: "admin".into(),
                addr,
                source,
            })?;
            tracing::info!(addr = %local, "admin endpoint listening (/metrics /healthz /readyz /status)");
            addrs.push(("admin".to_string(), local));
            admin_task = Some(tokio::spawn(crate::admin::serve(socket, shared.clone())));
        }
        Ok(Server {
            shared,
            addrs,
            accept_tasks,
            admin_task,
            fds,
            threads,
            held,
        })
    }

    /// The address a listener is bound to (useful with port 0).
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.addrs
            .iter()
            .find(|(n, _)| n == listener)
            .map(|(_, a)| *a)
    }

    pub fn addrs(&self) -> &[(String, SocketAddr)] {
        &self.addrs
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.shared.runtime.load_full()
    }

    /// Build a runtime from `config` and swap it in. On any error the running one stays.
    /// Compiling plugins can take a while: call this from a blocking-friendly context.
    pub fn reload(&self, config: Config) -> Result<(), ConfigErrors> {
        self.shared.reload(config)
    }

    /// Start a successor process that inherits the listening sockets (zero-downtime restart); it
    /// will tell this process to drain once it serves. Returns the successor's pid.
    pub fn spawn_successor(&self) -> std::io::Result<u32> {
        crate::handover::spawn_successor(&self.fds)
    }

    /// A handle that reloads this server from its config file (SIGHUP, file watcher).
    pub fn reloader(&self, path: &std::path::Path) -> crate::reload::Reloader {
        crate::reload::Reloader {
            shared: self.shared.clone(),
            path: path.to_path_buf(),
        }
    }

    /// Stop accepting, let requests and tunnels finish for up to the grace period, then close the rest.
    pub async fn shutdown(self) {
        let grace = self.shared.runtime.load().config.shutdown_grace;
        self.shutdown_with_grace(grace).await
    }

    pub async fn shutdown_with_grace(mut self, grace: Duration) {
        self.shared.draining.cancel();
        for t in &self.accept_tasks {
            t.abort();
        }
        // Let go of the listening sockets now: new connections go to a successor, or are refused.
        self.held.clear();
        self.shared.tasks.close();
        if tokio::time::timeout(grace, self.shared.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.shared.tasks.len(),
                "grace period over; closing what is left"
            );
            self.shared.tunnels_cancel.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(1), self.shared.tasks.wait()).await;
        }
        if let Some(t) = &self.admin_task {
            t.abort();
        }
        self.shared.stopped.cancel();
        let threads = std::mem::take(&mut self.threads);
        let _ =
            tokio::task::spawn_blocking(move || threads.into_iter().for_each(|t| drop(t.join())))
                .await;
        tracing::info!("shut down");
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

struct ListenerCtx {
    idx: usize,
    name: Arc<str>,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
    header_read_timeout: Duration,
    keepalive_timeout: Duration,
    max_header_bytes: usize,
    connections: Arc<Semaphore>,
}

async fn accept_loop(socket: TcpListener, ctx: Arc<ListenerCtx>) {
    loop {
        let (stream, peer) = tokio::select! {
            r = socket.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(listener = %ctx.name, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
            _ = ctx.shared.draining.cancelled() => return,
        };
        let Ok(permit) = ctx.connections.clone().try_acquire_owned() else {
            tracing::warn!(listener = %ctx.name, %peer, "max_connections reached; connection closed");
            continue;
        };
        let ctx = ctx.clone();
        ctx.shared.tasks.clone().spawn(async move {
            let _permit = permit;
            serve_connection(stream, peer, &ctx).await;
        });
    }
}

/// Keeps `connections_open` right however a connection ends.
struct OpenConnection;

impl OpenConnection {
    fn new() -> Self {
        let m = crate::metrics::get();
        m.connections_open.inc();
        m.connections_total.inc();
        OpenConnection
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        crate::metrics::get().connections_open.dec();
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, ctx: &ListenerCtx) {
    let _open = OpenConnection::new();
    let _ = stream.set_nodelay(true);
    match &ctx.tls {
        None => {
            let info = ConnInfo {
                peer,
                listener: ctx.idx,
                listener_name: ctx.name.clone(),
                tls: None,
            };
            serve_http(stream, info, false, ctx).await;
        }
        Some(acceptor) => {
            let tls = match tokio::time::timeout(ctx.header_read_timeout, acceptor.accept(stream))
                .await
            {
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
            let info = ConnInfo {
                peer,
                listener: ctx.idx,
                listener_name: ctx.name.clone(),
                tls: Some(tls_info),
            };
            serve_http(tls, info, h2, ctx).await;
        }
    }
}

/// After an idle timeout, how long an HTTP/2 connection gets to close gracefully (GOAWAY) before it is
/// dropped. An HTTP/1 connection has nothing in flight when the watchdog fires, so it is dropped at once
/// (hyper's graceful close would wait for a head or a request body that is still trickling in).
const CLOSE_GRACE: Duration = Duration::from_millis(500);

/// Drive one hyper connection until it ends, the idle watchdog fires, or the server drains.
macro_rules! drive {
    ($conn:expr, $watchdog:expr, $ctx:expr, $graceful:expr, $activity:expr) => {{
        let conn = $conn;
        tokio::pin!(conn);
        let watchdog = $watchdog;
        tokio::pin!(watchdog);
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!("connection ended with an error: {e}");
                }
            }
            _ = &mut watchdog => {
                tracing::debug!("idle or header-read timeout: closing the connection");
                if $graceful {
                    conn.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(CLOSE_GRACE, conn.as_mut()).await;
                }
            }
            _ = $ctx.shared.draining.cancelled() => {
                // A connection accepted just before the drain may not have sent its request yet:
                // hyper would close it as idle, unanswered. Give it a moment to start one.
                let deadline = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
                let mut done = false;
                while !$activity.started() && tokio::time::Instant::now() < deadline {
                    tokio::select! {
                        _ = conn.as_mut() => { done = true; break; }
                        _ = tokio::time::sleep(Duration::from_millis(5)) => {}
                    }
                }
                if !done {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        }
    }};
}

/// How long a draining server waits for a fresh connection's first request before closing it.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

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
    let shared = ctx.shared.clone();
    let tracked = activity.clone();
    let service = service_fn(move |req| {
        // Counted from the parsed head until the response body is sent or dropped.
        let in_flight = InFlight::start(tracked.clone());
        // Boxed: the pipeline's future is large (kilobytes of state across its awaits); hyper moves
        // the service future around, and a box makes each move a pointer copy.
        let handled = Box::pin(crate::proxy::handle(shared.clone(), conn_info.clone(), req));
        async move {
            let resp = handled.await?;
            Ok::<_, Infallible>(resp.map(|body| {
                crate::proxy::body::OnDone::new(body, move |_| drop(in_flight)).boxed_unsync()
            }))
        }
    });
    let watchdog = idle_watchdog(
        activity.clone(),
        ctx.header_read_timeout,
        ctx.keepalive_timeout,
        h2,
    );
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
            activity
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
            activity
        );
    }
}

/// What one connection's idle watchdog knows. Times are milliseconds since `start`.
struct Activity {
    start: Instant,
    /// Requests whose response has not been sent completely (or dropped).
    in_flight: AtomicUsize,
    /// When the connection last had nothing in flight.
    idle_since: AtomicU64,
    /// When the first byte arrived while idle (a request head being read), or `NOTHING`.
    first_byte: AtomicU64,
    /// A request has been answered: later idle periods are keep-alive waits.
    served: AtomicBool,
}

const NOTHING: u64 = u64::MAX;

impl Activity {
    fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(NOTHING),
            served: AtomicBool::new(false),
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Has a request arrived on this connection (answered or in flight)?
    fn started(&self) -> bool {
        self.served.load(Ordering::SeqCst) || self.in_flight.load(Ordering::SeqCst) > 0
    }
}

/// One request in flight on a connection.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Reset the idle clock before the count drops, so a byte read right after is not lost.
        a.idle_since.store(a.now(), Ordering::SeqCst);
        a.first_byte.store(NOTHING, Ordering::SeqCst);
        a.served.store(true, Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Resolves when the connection must be closed:
/// - the first request's head is not complete `header_read` after accept (slowloris);
/// - after a response, no byte of a next request within `keepalive` (idle keep-alive);
/// - a next request's head (or a request body still trickling in after its response was sent) is not
///   complete `header_read` after its first byte.
///
/// While a request is in flight nothing here applies: the route's `timeouts.response` bounds the wait
/// for the backend, and with it a request body the backend is still waiting for. HTTP/2 connections
/// only get the idle rule (their bytes include PINGs and SETTINGS, not just request heads).
async fn idle_watchdog(a: Arc<Activity>, header_read: Duration, keepalive: Duration, h2: bool) {
    let (header_read, keepalive) = (header_read.as_millis() as u64, keepalive.as_millis() as u64);
    // Nothing on the request path wakes the watchdog (three wake-ups and a timer per request, before):
    // it looks again at least every `period`, and every deadline lies at least `period` after the
    // event that starts it (accept, first byte, end of a response), so none is missed or seen late.
    let period = header_read.min(keepalive).max(1);
    loop {
        let now = a.now();
        let deadline = if a.in_flight.load(Ordering::SeqCst) > 0 {
            None
        } else if !a.served.load(Ordering::SeqCst) {
            Some(header_read)
        } else {
            let first = a.first_byte.load(Ordering::SeqCst);
            if first != NOTHING && !h2 {
                Some(first.saturating_add(header_read))
            } else {
                Some(
                    a.idle_since
                        .load(Ordering::SeqCst)
                        .saturating_add(keepalive),
                )
            }
        };
        if deadline.is_some_and(|at| now >= at) {
            return;
        }
        let next = deadline.map_or(now + period, |at| at.min(now + period));
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            a.start + Duration::from_millis(next),
        ))
        .await;
    }
}

/// The client stream, noting the first byte that arrives while nothing is in flight.
struct Watched<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let a = &self.activity;
            if a.in_flight.load(Ordering::SeqCst) == 0
                && a.first_byte.load(Ordering::SeqCst) == NOTHING
            {
                let _ = a.first_byte.compare_exchange(
                    NOTHING,
                    a.now(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
        }
        res
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_ids_are_the_prefix_and_a_counter_in_hex() {
        let ids = super::RequestIds {
            prefix: 0xdead_beef,
            next: 0x0fff_fffe.into(),
        };
        assert_eq!(ids.next(), "deadbeef0ffffffe");
        assert_eq!(ids.next(), "deadbeef0fffffff");
        assert_eq!(ids.next(), "deadbeef10000000");
    }
}

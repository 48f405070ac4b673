//! Listeners and connections: bind once, accept, terminate TLS, serve HTTP/1.1 and HTTP/2 with hyper,
//! and drain gracefully. The live [`Runtime`] is swapped underneath without touching sockets.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, ConfigErrors};
use crate::plugins::PluginHost;
use crate::proxy::client::UpstreamCache;
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
}

impl Shared {
    pub(crate) fn reload(&self, config: Config) -> Result<(), ConfigErrors> {
        let current = self.runtime.load();
        if config.listeners != current.config.listeners {
            return Err(ConfigErrors::single(
                &config.path,
                "listener",
                "listeners changed (name, bind or tls): that needs a restart",
            ));
        }
        let next = Runtime::build(config, &self.builders)?;
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

    pub fn next(&self) -> String {
        format!(
            "{:08x}{:08x}",
            self.prefix,
            self.next.fetch_add(1, Ordering::Relaxed)
        )
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
}

impl Server {
    /// Validate and build `config`, bind every listener and start serving.
    pub async fn start(config: Config) -> Result<Server, StartError> {
        let builders = Builders {
            upstreams: UpstreamCache::default(),
            plugins: PluginHost::new(config.cache_dir.clone()),
        };
        let runtime = Runtime::build(config, &builders)?;
        let listeners = runtime.config.listeners.clone();
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
        });
        let mut addrs = Vec::new();
        let mut accept_tasks = Vec::new();
        for (idx, l) in listeners.iter().enumerate() {
            let socket = bind(l.bind).map_err(|source| StartError::Bind {
                name: l.name.clone(),
                addr: l.bind,
                source,
            })?;
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
                max_header_bytes: limits.max_header_bytes,
                connections: Arc::new(Semaphore::new(limits.max_connections)),
            };
            accept_tasks.push(tokio::spawn(accept_loop(socket, Arc::new(ctx))));
        }
        Ok(Server {
            shared,
            addrs,
            accept_tasks,
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

    pub async fn shutdown_with_grace(self, grace: Duration) {
        self.shared.draining.cancel();
        for t in &self.accept_tasks {
            t.abort();
        }
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

async fn serve_connection(stream: TcpStream, peer: SocketAddr, ctx: &ListenerCtx) {
    let _ = stream.set_nodelay(true);
    match &ctx.tls {
        None => {
            let info = ConnInfo {
                peer,
                listener: ctx.idx,
                listener_name: ctx.name.clone(),
                tls: None,
            };
            serve_http(TokioIo::new(stream), info, false, ctx).await;
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
            serve_http(TokioIo::new(tls), info, h2, ctx).await;
        }
    }
}

async fn serve_http<I>(io: I, info: ConnInfo, h2: bool, ctx: &ListenerCtx)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let conn_info = Arc::new(info);
    let shared = ctx.shared.clone();
    let service =
        service_fn(move |req| crate::proxy::handle(shared.clone(), conn_info.clone(), req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(ctx.header_read_timeout)
        .max_buf_size(ctx.max_header_bytes)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        .max_header_list_size(ctx.max_header_bytes as u32);
    // Plain listeners speak HTTP/1.1 only (no h2c: an `Upgrade: h2c` is not honoured); TLS listeners
    // speak what ALPN chose.
    let builder = if h2 {
        builder.http2_only()
    } else {
        builder.http1_only()
    };
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!("connection ended with an error: {e}");
            }
        }
        _ = ctx.shared.draining.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

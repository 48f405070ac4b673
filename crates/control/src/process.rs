//! The process: build the first runtime, bind (or inherit) every listener, start the workers and
//! the admin endpoint, and stop — the orchestration above the serving layer. `Server` is what the
//! binary runs and the end-to-end tests start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::reload::Shared;
use wasmgate_config::{Config, ConfigErrors};
use wasmgate_proxy::ctx::ServeCtx;
use wasmgate_runtime::{Builders, Runtime};
use wasmgate_server::{accept_loop, bind, ListenerCtx};

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
    #[error("cannot listen on the admin socket {}: {source}", path.display())]
    AdminSocket {
        path: std::path::PathBuf,
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
        self.shared.serve.draining.cancel();
        self.shared.serve.tunnels_cancel.cancel();
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
            wasmgate_plugins::set_worker(i);
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
        let metrics = Arc::new(wasmgate_observe::metrics::Metrics::new());
        let builders = Builders::new(config.cache_dir.clone(), metrics.clone());
        // Building reads files and compiles plugins: off the async workers, like a reload.
        let (built, builders) = tokio::task::spawn_blocking(move || {
            let built = Runtime::build(config, &builders, None);
            (built, builders)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let runtime = built?;
        builders.remember_owners(&runtime);
        let started = runtime.config.clone();
        let shared = Arc::new(Shared {
            serve: Arc::new(ServeCtx::new(
                Arc::new(ArcSwap::from_pointee(runtime)),
                metrics,
                &builders.life,
            )),
            started,
            builders,
            status: Default::default(),
            stopped: CancellationToken::new(),
            building: Default::default(),
        });
        let digest = {
            // The inputs are read off the async workers.
            let rt = shared.serve.runtime.load_full();
            tokio::task::spawn_blocking(move || crate::reload::fingerprint(&rt.config.path, &rt))
                .await
                .unwrap_or_default()
        };
        shared.publish(Some(digest));
        let Bound {
            mut addrs,
            fds,
            sockets,
        } = bind_listeners(&shared)?;
        let Serving {
            accept_tasks,
            threads,
            held,
        } = serve_on_workers(&shared, sockets)?;
        let admin_task = start_admin(&shared, &mut addrs).await?;
        // Now that every socket is bound (ports chosen by the kernel included), tenant egress knows
        // which addresses are the proxy's own.
        shared.builders.own.set(addrs.iter().cloned());
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

    /// This server's metrics (what `/metrics` renders).
    pub fn metrics(&self) -> &wasmgate_observe::metrics::Metrics {
        &self.shared.serve.metrics
    }

    pub fn runtime(&self) -> Arc<Runtime> {
        self.shared.serve.runtime.load_full()
    }

    /// Build a runtime from `config` and swap it in. On any error the running one stays. Returns
    /// the restart-only settings it changes, which the process keeps as it started them.
    /// Compiling plugins can take a while: call this from a blocking-friendly context.
    pub fn reload(&self, config: Config) -> Result<Vec<&'static str>, ConfigErrors> {
        let pending = self.shared.reload(config)?;
        // The live plugins changed: their versions and refused lines go to `/metrics`.
        self.shared.publish(None);
        Ok(pending)
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
        let grace = self.shared.serve.runtime.load().config.shutdown_grace;
        self.shutdown_with_grace(grace).await
    }

    pub async fn shutdown_with_grace(mut self, grace: Duration) {
        // Closed before draining is signalled: a backend connection that comes back once its
        // driver saw the signal must see the set closed, and not be pooled (`upstream::client`).
        self.shared.serve.tasks.close();
        self.shared.serve.draining.cancel();
        for t in &self.accept_tasks {
            t.abort();
        }
        // Let go of the listening sockets now: new connections go to a successor, or are refused.
        self.held.clear();
        if tokio::time::timeout(grace, self.shared.serve.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.shared.serve.tasks.len(),
                "grace period over; closing what is left"
            );
            self.shared.serve.tunnels_cancel.cancel();
            let _ =
                tokio::time::timeout(Duration::from_secs(1), self.shared.serve.tasks.wait()).await;
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

/// The listening sockets, bound (or inherited from a predecessor), each with its serving context.
struct Bound {
    addrs: Vec<(String, std::net::SocketAddr)>,
    fds: Vec<(String, std::os::fd::RawFd)>,
    sockets: Vec<(TcpListener, Arc<ListenerCtx>)>,
}

fn bind_listeners(shared: &Arc<Shared>) -> Result<Bound, StartError> {
    let rt = shared.serve.runtime.load();
    let config = &rt.config;
    let limits = &config.limits;
    let per_ip = limits
        .max_connections_per_ip
        .map(wasmgate_server::conn_limits::PerIp::new);
    let mut bound = Bound {
        addrs: Vec::new(),
        fds: Vec::new(),
        sockets: Vec::new(),
    };
    for (idx, l) in config.listeners.iter().enumerate() {
        let failed = |source| StartError::Bind {
            name: l.name.clone(),
            addr: l.bind,
            source,
        };
        let socket = match crate::handover::take_inherited(&l.name) {
            // A predecessor passed this listener's socket (see `handover.rs`).
            Some(inherited) => TcpListener::from_std(inherited),
            None => bind(l.bind),
        }
        .map_err(failed)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&socket);
        bound.fds.push((l.name.clone(), fd));
        let local = socket.local_addr().map_err(failed)?;
        tracing::info!(listener = %l.name, addr = %local, tls = l.tls, "listening");
        bound.addrs.push((l.name.clone(), local));
        let tls = l.tls.then(|| {
            TlsAcceptor::from(wasmgate_server::tls::server_config(
                shared.serve.runtime.clone(),
                idx,
            ))
        });
        let ctx = ListenerCtx {
            idx,
            name: l.name.as_str().into(),
            tls,
            serve: shared.serve.clone(),
            limits: wasmgate_server::watchdog::Limits {
                header_read: config.header_read_timeout,
                keepalive: config.keepalive_timeout,
                io: config.io_timeout,
                min_rate: limits.min_rate,
            },
            max_header_bytes: limits.max_header_bytes,
            connections: Arc::new(Semaphore::new(limits.max_connections)),
            per_ip: per_ip.clone(),
        };
        bound.sockets.push((socket, Arc::new(ctx)));
    }
    Ok(bound)
}

/// What accepts: tasks on the caller's runtime (`workers = 0`), or worker threads with their own
/// copies of the sockets (whose originals stay open in `held`, for a handover).
struct Serving {
    accept_tasks: Vec<tokio::task::JoinHandle<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    held: Vec<std::net::TcpListener>,
}

fn serve_on_workers(
    shared: &Arc<Shared>,
    sockets: Vec<(TcpListener, Arc<ListenerCtx>)>,
) -> Result<Serving, StartError> {
    let (workers, first_bind) = {
        let rt = shared.serve.runtime.load();
        let first = rt.config.listeners.first().map(|l| l.bind);
        (rt.config.workers, first.unwrap_or(([0, 0, 0, 0], 0).into()))
    };
    let failed = |source| StartError::Bind {
        name: "listener".into(),
        addr: first_bind,
        source,
    };
    let mut serving = Serving {
        accept_tasks: Vec::new(),
        threads: Vec::new(),
        held: Vec::new(),
    };
    if workers == 0 {
        for (socket, ctx) in sockets {
            serving
                .accept_tasks
                .push(tokio::spawn(accept_loop(socket, ctx)));
        }
        return Ok(serving);
    }
    let std_sockets: Vec<(std::net::TcpListener, Arc<ListenerCtx>)> = sockets
        .into_iter()
        .map(|(s, ctx)| s.into_std().map(|s| (s, ctx)))
        .collect::<std::io::Result<_>>()
        .map_err(failed)?;
    for i in 0..workers {
        let mine = std_sockets
            .iter()
            .map(|(s, ctx)| s.try_clone().map(|s| (s, ctx.clone())))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(failed)?;
        serving
            .threads
            .push(spawn_worker(i, mine, shared.stopped.clone()));
    }
    // The originals keep the descriptors recorded in `fds` open, for a handover.
    serving.held = std_sockets.into_iter().map(|(s, _)| s).collect();
    Ok(serving)
}

/// The admin endpoint, if configured; its TCP address joins `addrs`.
async fn start_admin(
    shared: &Arc<Shared>,
    addrs: &mut Vec<(String, std::net::SocketAddr)>,
) -> Result<Option<tokio::task::JoinHandle<()>>, StartError> {
    let Some(admin) = shared.serve.runtime.load().config.admin.clone() else {
        return Ok(None);
    };
    let listener =
        crate::admin::bind(&admin.listen)
            .await
            .map_err(|source| match &admin.listen {
                wasmgate_config::AdminListen::Tcp(addr) => StartError::Bind {
                    name: "admin".into(),
                    addr: *addr,
                    source,
                },
                wasmgate_config::AdminListen::Unix(path) => StartError::AdminSocket {
                    path: path.clone(),
                    source,
                },
            })?;
    tracing::info!(at = %listener.describe(), auth = admin.token_file.is_some(), "admin endpoint listening (/metrics /healthz /readyz /status)");
    if let Some(local) = listener.tcp_addr() {
        addrs.push(("admin".to_string(), local));
    }
    Ok(Some(tokio::spawn(crate::admin::serve(
        listener,
        admin,
        shared.clone(),
    ))))
}

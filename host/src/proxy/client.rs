//! Connections to backends: a pooled keep-alive client per (connect timeout, CA) pair, shared across
//! reloads so a config change does not throw away warm connections; and one-off connections for
//! WebSocket upgrades, which leave the pool for good once upgraded.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

use crate::config::Backend;
use crate::error::ProxyError;
use crate::proxy::body::ProxyBody;

pub type HttpClient = Client<HttpsConnector<HttpConnector>, ProxyBody>;

/// How to reach the backends of one route.
///
/// The pooled client is per worker thread: a pooled connection is driven by a task on the runtime that
/// opened it, so sharing one pool between workers would make every request wake another thread. Each
/// worker (one per core, see `server.rs`) keeps its own pools, like nginx's workers do.
pub struct Upstream {
    pub connect_timeout: Duration,
    ca: Option<PathBuf>,
    tls: Arc<rustls::ClientConfig>,
}

type Key = (Duration, Option<PathBuf>);

thread_local! {
    static CLIENTS: std::cell::RefCell<HashMap<Key, HttpClient>> = Default::default();
}

impl Upstream {
    /// This thread's pooled client for this upstream.
    pub fn client(&self) -> HttpClient {
        let key = (self.connect_timeout, self.ca.clone());
        CLIENTS.with(|c| {
            c.borrow_mut()
                .entry(key)
                .or_insert_with(|| self.new_client())
                .clone()
        })
    }

    fn new_client(&self) -> HttpClient {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(self.connect_timeout));
        // hyper-rustls sets ALPN itself from the enabled protocols.
        let mut pool_tls = (*self.tls).clone();
        pool_tls.alpn_protocols.clear();
        let https = HttpsConnectorBuilder::new()
            .with_tls_config(pool_tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .build(https)
    }
}

/// Upstreams by key; lives as long as the server, across reloads.
#[derive(Default)]
pub struct UpstreamCache {
    map: Mutex<HashMap<Key, Arc<Upstream>>>,
}

impl UpstreamCache {
    pub fn get(
        &self,
        connect_timeout: Duration,
        ca: Option<&PathBuf>,
    ) -> Result<Arc<Upstream>, String> {
        let key = (connect_timeout, ca.cloned());
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(u) = map.get(&key) {
            return Ok(u.clone());
        }
        let tls = crate::tls::client_config(ca.map(PathBuf::as_path), true)?;
        let up = Arc::new(Upstream {
            connect_timeout,
            ca: ca.cloned(),
            tls,
        });
        map.insert(key, up.clone());
        Ok(up)
    }
}

/// A byte stream to a backend, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

impl Upstream {
    /// Open a dedicated connection (for a WebSocket upgrade) within the connect timeout.
    pub async fn connect(&self, backend: &Backend) -> Result<TokioIo<Box<dyn Stream>>, ProxyError> {
        let attempt = async {
            let tcp = TcpStream::connect(&backend.authority).await.map_err(|e| {
                ProxyError::UpstreamConnect {
                    backend: backend.authority.clone(),
                    cause: e.to_string(),
                }
            })?;
            let _ = tcp.set_nodelay(true);
            if !backend.tls {
                return Ok(TokioIo::new(Box::new(tcp) as Box<dyn Stream>));
            }
            let name =
                rustls::pki_types::ServerName::try_from(backend.host.clone()).map_err(|e| {
                    ProxyError::UpstreamConnect {
                        backend: backend.authority.clone(),
                        cause: e.to_string(),
                    }
                })?;
            let tls = tokio_rustls::TlsConnector::from(self.tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|e| ProxyError::UpstreamConnect {
                    backend: backend.authority.clone(),
                    cause: format!("TLS: {e}"),
                })?;
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

/// Classify a pooled-client error: refused/reset → 502, connect timeout → 504, our body limit → 413.
pub fn classify(
    err: hyper_util::client::legacy::Error,
    backend: &Backend,
    connect_timeout: Duration,
) -> ProxyError {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = src {
        if let Some(t) = e.downcast_ref::<crate::proxy::body::TooLarge>() {
            return ProxyError::BodyTooLarge { limit: t.0 };
        }
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return ProxyError::UpstreamConnectTimeout {
                    backend: backend.authority.clone(),
                    after_ms: connect_timeout.as_millis(),
                };
            }
        }
        src = e.source();
    }
    let cause = crate::error::Chain(&err).to_string();
    if err.is_connect() {
        ProxyError::UpstreamConnect {
            backend: backend.authority.clone(),
            cause,
        }
    } else {
        ProxyError::UpstreamProtocol {
            backend: backend.authority.clone(),
            cause,
        }
    }
}

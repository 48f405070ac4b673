//! Shared pieces of the benchmark tools: WebSocket clients (ws/wss), process-tree RSS from /proc,
//! percentiles.

use std::path::Path;
use std::sync::Arc;

use anyhow::{anyhow, Context};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::WebSocketStream;

/// A byte stream to the server under test, plain or TLS.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type Ws = WebSocketStream<Box<dyn Stream>>;

/// How to open WebSocket connections to one URL (`ws://host:port/path` or `wss://…`).
#[derive(Clone)]
pub struct WsTarget {
    pub url: String,
    host: String,
    addr: String,
    tls: Option<tokio_rustls::TlsConnector>,
    headers: Vec<(String, String)>,
}

impl WsTarget {
    /// `ca`: PEM file of the CA the server's certificate chains to (required for `wss://`).
    /// `sni`: the name to send and verify (defaults to the URL's host).
    pub fn new(
        url: &str,
        ca: Option<&Path>,
        sni: Option<&str>,
        headers: &[String],
    ) -> anyhow::Result<WsTarget> {
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| anyhow!("not a URL: {url}"))?;
        let authority = rest.split('/').next().unwrap_or(rest);
        let host = authority
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(authority);
        let tls = match scheme {
            "ws" => None,
            "wss" => {
                let ca = ca.ok_or_else(|| anyhow!("wss:// needs --ca"))?;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_file_iter(ca)
                    .with_context(|| format!("{}", ca.display()))?
                {
                    roots.add(c?)?;
                }
                let provider = Arc::new(rustls::crypto::ring::default_provider());
                let cfg = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()?
                    .with_root_certificates(roots)
                    .with_no_client_auth();
                Some(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
            }
            s => return Err(anyhow!("unsupported scheme {s}")),
        };
        let headers = headers
            .iter()
            .map(|h| {
                let (n, v) = h
                    .split_once(':')
                    .ok_or_else(|| anyhow!("header must be `name: value`: {h}"))?;
                Ok((n.trim().to_string(), v.trim().to_string()))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(WsTarget {
            url: url.to_string(),
            host: sni.unwrap_or(host).to_string(),
            addr: authority.to_string(),
            tls,
            headers,
        })
    }

    /// TCP (+ TLS) connect and the WebSocket handshake.
    pub async fn connect(&self) -> anyhow::Result<Ws> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .with_context(|| format!("connect {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Stream> = match &self.tls {
            None => Box::new(tcp),
            Some(c) => {
                let name = ServerName::try_from(self.host.clone())?;
                Box::new(c.connect(name, tcp).await.context("TLS handshake")?)
            }
        };
        let mut req = self.url.as_str().into_client_request()?;
        for (n, v) in &self.headers {
            req.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(n.as_bytes())?,
                HeaderValue::from_str(v)?,
            );
        }
        let (ws, resp) = tokio_tungstenite::client_async(req, io)
            .await
            .context("WebSocket handshake")?;
        if resp.status().as_u16() != 101 {
            return Err(anyhow!("handshake answered {}", resp.status()));
        }
        Ok(ws)
    }
}

/// Resident set size (KiB) of `pid` and all its descendants (nginx/apache workers), from /proc.
pub fn tree_rss_kib(root: u32) -> u64 {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                // `pid (comm) state ppid …`; comm may contain spaces and parentheses.
                if let Some(after) = stat.rfind(')').map(|i| &stat[i + 1..]) {
                    if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok())
                    {
                        parent_of.push((pid, ppid));
                    }
                }
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        let p = tree[i];
        tree.extend(parent_of.iter().filter(|(_, pp)| *pp == p).map(|(c, _)| *c));
        i += 1;
    }
    tree.iter().map(|p| rss_kib(*p)).sum()
}

/// Resident set size (KiB) of one process; 0 if it is gone.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The `q` quantile (0..=1) of sorted values.
pub fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

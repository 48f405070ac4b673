//! Outbound HTTP for plugins: through the same upstream client and egress connector as the owner's
//! routes, so a tenant's plugin reaches only what its tenant's backends may (the address checked
//! after DNS resolution), and only the origins its entry was granted — everything else is denied
//! with the URL named, before anything is resolved.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{header, Request, Uri};
use http_body_util::{BodyExt, Limited};
use wasmgate_config::Backend;
use wasmgate_core::error::ProxyError;
use wasmgate_plugins::caps::{
    BoxFuture, OutboundError, OutboundHttp, OutboundRequest, OutboundResponse,
};

use crate::upstream::client::Upstream;
use crate::upstream::egress::Connector;

/// The most of an answer a plugin's call reads, unless its grant says less.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// Scheme, host and port: what a grant allows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub tls: bool,
    /// Lower-case, as `http::uri::Authority::host` gives it (IPv6 in brackets).
    pub host: String,
    pub port: u16,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}:{}", self.host, self.port)
    }
}

impl Origin {
    /// The origin of an absolute `http://` or `https://` URL; why not, else.
    pub fn of(url: &Uri) -> Result<Origin, &'static str> {
        let tls = match url.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(_) => return Err("only http:// and https:// URLs may be called"),
            None => return Err("the URL is not absolute"),
        };
        let auth = url.authority().ok_or("the URL has no host")?;
        if auth.as_str().contains('@') {
            return Err("credentials in the URL are not supported");
        }
        Ok(Origin {
            tls,
            host: auth.host().to_ascii_lowercase(),
            port: auth.port_u16().unwrap_or(default_port(tls)),
        })
    }
}

fn default_port(tls: bool) -> u16 {
    if tls {
        443
    } else {
        80
    }
}

pub struct HttpOutbound {
    client: Arc<Upstream>,
    via: Connector,
    allowed: Vec<Origin>,
    max_response: usize,
}

impl HttpOutbound {
    pub fn new(
        client: Arc<Upstream>,
        via: Connector,
        allowed: Vec<Origin>,
        max_response: usize,
    ) -> HttpOutbound {
        HttpOutbound {
            client,
            via,
            allowed,
            max_response,
        }
    }

    async fn call(
        &self,
        req: OutboundRequest,
        timeout: Duration,
    ) -> Result<OutboundResponse, OutboundError> {
        let url = req.url.to_string();
        let denied = |reason: String| OutboundError::Denied {
            url: url.clone(),
            reason,
        };
        let origin = Origin::of(&req.url).map_err(|r| denied(r.to_string()))?;
        if !self.allowed.contains(&origin) {
            return Err(denied(format!(
                "{origin} is not an origin this plugin may call"
            )));
        }
        let backend = backend_for(&origin, &url);
        let target = req
            .url
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let mut headers = req.headers;
        hop_by_hop(&mut headers);
        let mut builder = Request::builder().method(req.method).uri(target);
        if let Some(h) = builder.headers_mut() {
            *h = headers;
            // The port is named only when it is not the scheme's own (RFC 9110 §7.2).
            let host = if origin.port == default_port(origin.tls) {
                &origin.host
            } else {
                &backend.authority
            };
            if let Ok(v) = http::HeaderValue::from_str(host) {
                h.insert(header::HOST, v);
            }
        }
        let request = builder
            .body(wasmgate_core::body::full(req.body))
            .map_err(|e| denied(format!("not a request that can be sent: {e}")))?;
        let exchange = async {
            let resp = self
                .client
                .send(&backend, &self.via, request)
                .await
                .map_err(|e| from_proxy(e, &url))?;
            let (parts, body) = resp.into_parts();
            let body = Limited::new(body, self.max_response)
                .collect()
                .await
                .map_err(|e| {
                    if e.is::<http_body_util::LengthLimitError>() {
                        OutboundError::TooLarge {
                            url: url.clone(),
                            max: self.max_response,
                        }
                    } else {
                        OutboundError::Protocol {
                            url: url.clone(),
                            source: e,
                        }
                    }
                })?
                .to_bytes();
            Ok(OutboundResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(r) => r,
            Err(_) => Err(OutboundError::Timeout {
                url: url.clone(),
                after: timeout,
            }),
        }
    }
}

impl OutboundHttp for HttpOutbound {
    fn send(
        &self,
        req: OutboundRequest,
        timeout: Duration,
    ) -> BoxFuture<'_, Result<OutboundResponse, OutboundError>> {
        Box::pin(self.call(req, timeout))
    }
}

/// The host frames and routes the call itself: a plugin names neither the connection's headers
/// (RFC 9110 §7.6.1, and those `Connection` lists) nor the body's length nor the `Host`.
fn hop_by_hop(headers: &mut http::HeaderMap) {
    let listed: Vec<http::HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| http::HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for h in listed {
        headers.remove(h);
    }
    for h in [
        header::HOST,
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::CONTENT_LENGTH,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
        header::PROXY_AUTHENTICATE,
    ] {
        headers.remove(h);
    }
    for h in ["keep-alive", "proxy-connection"] {
        headers.remove(h);
    }
}

fn backend_for(origin: &Origin, url: &str) -> Backend {
    // As `config::validate` writes a backend: the host as the URL has it (IPv6 in brackets).
    let authority = format!("{}:{}", origin.host, origin.port);
    let host = &origin.host;
    Backend {
        url: url.to_string(),
        tls: origin.tls,
        websocket_scheme: false,
        authority,
        host: host.to_string(),
        port: origin.port,
        path: "/".into(),
        ca: None,
    }
}

/// The client's errors in the plugin's terms: a refusal by the egress policy is a denial like an
/// origin outside the grant; the rest keep their cause.
fn from_proxy(e: ProxyError, url: &str) -> OutboundError {
    let url = url.to_string();
    match e {
        ProxyError::EgressRefused { reason, .. } => OutboundError::Denied {
            url,
            reason: format!("the tenant egress policy refuses it: {reason}"),
        },
        ProxyError::UpstreamConnect { cause, .. } => OutboundError::Connect { url, source: cause },
        ProxyError::UpstreamConnectTimeout { after_ms, .. }
        | ProxyError::UpstreamTimeout { after_ms, .. } => OutboundError::Timeout {
            url,
            after: Duration::from_millis(after_ms as u64),
        },
        ProxyError::UpstreamProtocol { cause, .. } => {
            OutboundError::Protocol { url, source: cause }
        }
        other => OutboundError::Protocol {
            url,
            source: Box::new(other),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Request heads a test backend received, lower-cased.
    type Heads = Arc<std::sync::Mutex<Vec<String>>>;

    /// A loopback backend answering every request with `body` after `delay`; counts connections.
    async fn backend(body: Vec<u8>, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>) {
        let (addr, conns, _) = recording(body, delay).await;
        (addr, conns)
    }

    async fn recording(body: Vec<u8>, delay: Duration) -> (SocketAddr, Arc<AtomicUsize>, Heads) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let conns = Arc::new(AtomicUsize::new(0));
        let heads: Heads = Arc::default();
        let (seen, record) = (conns.clone(), heads.clone());
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                seen.fetch_add(1, Ordering::SeqCst);
                let (body, record) = (body.clone(), record.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = String::from_utf8_lossy(&got).to_ascii_lowercase();
                    record.lock().unwrap().push(head);
                    tokio::time::sleep(delay).await;
                    let first = String::from_utf8_lossy(&got)
                        .lines()
                        .next()
                        .unwrap_or("")
                        .to_string();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-saw: {first}\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(head.as_bytes()).await;
                    let _ = s.write_all(&body).await;
                });
            }
        });
        (addr, conns, heads)
    }

    fn client() -> Arc<Upstream> {
        crate::upstream::client::UpstreamCache::new(crate::Lifecycle::default())
            .get(Duration::from_secs(2), None)
            .unwrap()
    }

    fn origin(addr: SocketAddr) -> Origin {
        Origin::of(&format!("http://{addr}").parse().unwrap()).unwrap()
    }

    fn get(url: &str) -> OutboundRequest {
        OutboundRequest {
            method: http::Method::GET,
            url: url.parse().unwrap(),
            headers: http::HeaderMap::new(),
            body: Bytes::new(),
        }
    }

    #[tokio::test]
    async fn a_granted_origin_answers() {
        let (addr, _) = backend(b"hello".to_vec(), Duration::ZERO).await;
        let out = HttpOutbound::new(client(), Connector::Operator, vec![origin(addr)], 1024);
        let resp = out
            .send(
                get(&format!("http://{addr}/check?u=1")),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(&resp.body[..], b"hello");
        assert_eq!(
            resp.headers["x-saw"], "GET /check?u=1 HTTP/1.1",
            "origin-form target"
        );
    }

    /// The host frames the call: a plugin's `Host`, length and connection headers (and those its
    /// `Connection` names) never reach the far side; its own headers do.
    #[tokio::test]
    async fn the_plugin_names_no_connection_level_header() {
        let (addr, _, heads) = recording(b"ok".to_vec(), Duration::ZERO).await;
        let out = HttpOutbound::new(client(), Connector::Operator, vec![origin(addr)], 1024);
        let mut req = get(&format!("http://{addr}/h"));
        for (k, v) in [
            ("host", "victim.internal"),
            ("connection", "x-secret, close"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=999"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("content-length", "999"),
            ("proxy-authorization", "Basic Zm9vOmJhcg=="),
            ("x-ok", "yes"),
        ] {
            req.headers.insert(k, v.parse().unwrap());
        }
        req.body = Bytes::from_static(b"abc");
        let resp = out.send(req, Duration::from_secs(5)).await.unwrap();
        assert_eq!(&resp.body[..], b"ok");
        let head = heads.lock().unwrap()[0].clone();
        assert!(head.contains("x-ok: yes"), "{head}");
        assert!(head.contains(&format!("host: {addr}")), "{head}");
        assert!(
            head.contains("content-length: 3"),
            "the body's own length: {head}"
        );
        for gone in [
            "victim",
            "x-secret",
            "keep-alive",
            "te:",
            "upgrade",
            "999",
            "proxy-auth",
        ] {
            assert!(!head.contains(gone), "{gone} passed: {head}");
        }
    }

    #[tokio::test]
    async fn an_origin_outside_the_grant_is_denied_before_any_connection() {
        let (addr, conns) = backend(b"x".to_vec(), Duration::ZERO).await;
        let (other, _) = backend(b"x".to_vec(), Duration::ZERO).await;
        let out = HttpOutbound::new(client(), Connector::Operator, vec![origin(other)], 1024);
        for url in [
            format!("http://{addr}/"),
            // Same host and port, another scheme: another origin.
            format!("https://{other}/"),
            format!("http://user:pw@{other}/"),
            format!("ftp://{other}/"),
            "/relative".to_string(),
        ] {
            let e = out
                .send(get(&url), Duration::from_secs(5))
                .await
                .unwrap_err();
            assert!(
                matches!(&e, OutboundError::Denied { url: u, .. } if *u == url),
                "{url}: {e}"
            );
        }
        assert_eq!(conns.load(Ordering::SeqCst), 0, "nothing was connected");
        // And the empty grant, the default, denies everything.
        let none = HttpOutbound::new(client(), Connector::Operator, vec![], 1024);
        let e = none
            .send(get(&format!("http://{other}/")), Duration::from_secs(5))
            .await;
        assert!(matches!(e, Err(OutboundError::Denied { .. })));
    }

    #[tokio::test]
    async fn a_tenant_grant_is_still_bounded_by_its_egress_policy() {
        let (addr, conns) = backend(b"admin".to_vec(), Duration::ZERO).await;
        let metrics = wasmgate_observe::metrics::Metrics::new();
        let policy =
            crate::upstream::egress::EgressPolicy::new("evil", &[], Arc::default(), &metrics);
        // Granted the origin by (say) a careless entry, but loopback is not the tenant's.
        let out = HttpOutbound::new(
            client(),
            Connector::Tenant(Arc::new(policy)),
            vec![origin(addr)],
            1024,
        );
        let e = out
            .send(get(&format!("http://{addr}/")), Duration::from_secs(5))
            .await
            .unwrap_err();
        match e {
            OutboundError::Denied { reason, .. } => assert!(reason.contains("egress"), "{reason}"),
            e => panic!("expected a denial, got {e}"),
        }
        assert_eq!(conns.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn answers_are_bounded_in_size_and_time() {
        let (big, _) = backend(vec![b'x'; 2048], Duration::ZERO).await;
        let out = HttpOutbound::new(client(), Connector::Operator, vec![origin(big)], 1024);
        let e = out
            .send(get(&format!("http://{big}/")), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(e, OutboundError::TooLarge { max: 1024, .. }),
            "{e}"
        );

        let (slow, _) = backend(b"late".to_vec(), Duration::from_secs(30)).await;
        let out = HttpOutbound::new(client(), Connector::Operator, vec![origin(slow)], 1024);
        let started = std::time::Instant::now();
        let e = out
            .send(get(&format!("http://{slow}/")), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(e, OutboundError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error_naming_the_url() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let out = HttpOutbound::new(client(), Connector::Operator, vec![origin(addr)], 1024);
        let url = format!("http://{addr}/");
        let e = out
            .send(get(&url), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, OutboundError::Connect { url: u, .. } if *u == url),
            "{e}"
        );
    }
}

//! A real HTTP/1.1 backend on `127.0.0.1:0` that records what it receives and answers by path:
//!
//! | path contains | answer |
//! |---|---|
//! | WebSocket upgrade | 101 and a tokio-tungstenite echo (`refuse` in the path: 403; `bad101`: 101 without `Upgrade`) |
//! | `/redirect?to=URL` | 302 with `Location: URL` |
//! | `/slow?ms=N` | waits N ms, then 200 |
//! | `/status/N` | status N |
//! | `/cookie?path=P` | 200 with `Set-Cookie: sid=1; Path=P` |
//! | `/big?n=N` | N bytes of `x` |
//! | anything else | 200 with a JSON echo of method, URI, headers and body length |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;

/// One request as the backend received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub uri: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Backend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    accepted: Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Backend {
    pub async fn start() -> Backend {
        Backend::serve(None).await
    }

    /// The same backend behind TLS with `leaf` (for `https://` and `wss://` routes).
    pub async fn start_tls(leaf: &crate::certs::Leaf) -> Backend {
        use rustls::pki_types::pem::PemObject;
        let certs = vec![leaf.der.clone()];
        let key =
            rustls::pki_types::PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Backend::serve(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn serve(tls: Option<tokio_rustls::TlsAcceptor>) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let log = seen.clone();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (log, tls) = (log.clone(), tls.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, log.clone()));
                    let http = hyper::server::conn::http1::Builder::new();
                    let _ = match tls {
                        None => {
                            http.serve_connection(TokioIo::new(stream), svc)
                                .with_upgrades()
                                .await
                        }
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(stream).await else {
                                return;
                            };
                            http.serve_connection(TokioIo::new(tls), svc)
                                .with_upgrades()
                                .await
                        }
                    };
                });
            }
        });
        Backend {
            addr,
            seen,
            accepted,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn last(&self) -> Seen {
        self.seen()
            .last()
            .cloned()
            .expect("the backend saw no request")
    }

    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.accepted.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn query_param(uri: &http::Uri, key: &str) -> Option<String> {
    uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| {
            v.replace("%3A", ":")
                .replace("%2F", "/")
                .replace("%3F", "?")
                .replace("%3D", "=")
                .replace("%26", "&")
        })
    })
}

async fn answer(
    req: Request<Incoming>,
    log: Arc<Mutex<Vec<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if is_ws {
        log.lock().unwrap().push(Seen {
            method: req.method().to_string(),
            uri: req.uri().to_string(),
            headers: req.headers().clone(),
            body: Bytes::new(),
        });
        return Ok(websocket(req));
    }
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    log.lock().unwrap().push(Seen {
        method: parts.method.to_string(),
        uri: parts.uri.to_string(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    let path = parts.uri.path();
    let mut resp = Response::new(Full::new(Bytes::new()));
    if path.contains("/redirect") {
        *resp.status_mut() = StatusCode::FOUND;
        let to = query_param(&parts.uri, "to").unwrap_or_else(|| "/".into());
        resp.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_str(&to).unwrap());
    } else if path.contains("/slow") {
        let ms = query_param(&parts.uri, "ms")
            .and_then(|m| m.parse().ok())
            .unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        *resp.body_mut() = Full::new(Bytes::from_static(b"slow"));
    } else if let Some(code) = path.split("/status/").nth(1) {
        *resp.status_mut() = StatusCode::from_u16(code.parse().unwrap_or(500)).unwrap();
    } else if path.contains("/cookie") {
        let p = query_param(&parts.uri, "path").unwrap_or_else(|| "/".into());
        resp.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_str(&format!("sid=1; Path={p}; HttpOnly")).unwrap(),
        );
    } else if path.contains("/big") {
        let n: usize = query_param(&parts.uri, "n")
            .and_then(|m| m.parse().ok())
            .unwrap_or(1 << 20);
        *resp.body_mut() = Full::new(Bytes::from(vec![b'x'; n]));
    } else {
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (k, v) in &parts.headers {
            headers
                .entry(k.to_string())
                .or_default()
                .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
        }
        let echo = serde_json::json!({
            "method": parts.method.as_str(),
            "uri": parts.uri.to_string(),
            "headers": headers,
            "body_len": body.len(),
        });
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        *resp.body_mut() = Full::new(Bytes::from(echo.to_string()));
    }
    resp.headers_mut()
        .insert("x-backend", HeaderValue::from_static("test"));
    Ok(resp)
}

fn websocket(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_string();
    let mut resp = Response::new(Full::new(Bytes::new()));
    if path.contains("refuse") {
        *resp.status_mut() = StatusCode::FORBIDDEN;
        *resp.body_mut() = Full::new(Bytes::from_static(b"no websocket for you"));
        return resp;
    }
    let key = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
        .unwrap_or_default();
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    if !path.contains("bad101") {
        resp.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    resp.headers_mut().insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&key).unwrap(),
    );
    // Subprotocols: pick the first offered one that is not a credential carrier.
    let offered = req
        .headers()
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    if let Some(p) = offered.and_then(|o| {
        o.split(',')
            .map(str::trim)
            .find(|p| !p.starts_with("bearer"))
            .map(str::to_string)
    }) {
        resp.headers_mut().insert(
            header::SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_str(&p).unwrap(),
        );
    }
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = upgrade.await else { return };
        let mut cfg = WebSocketConfig::default();
        cfg.max_message_size = Some(64 << 20);
        cfg.max_frame_size = Some(64 << 20);
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(cfg)).await;
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() || msg.is_binary() {
                if ws.send(msg).await.is_err() {
                    break;
                }
            } else if msg.is_close() {
                // tungstenite already answered the close; flush it out.
                let _ = ws.flush().await;
            }
        }
    });
    resp
}

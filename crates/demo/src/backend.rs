//! The demo's chat backend: the "Node.js on port 3000" of the seed. It serves a chat page, a small
//! JSON API and a WebSocket broadcast room on `/socket`, on loopback only.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::broadcast;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const PAGE: &str = include_str!("page.html");

/// A running chat backend.
pub struct ChatBackend {
    pub addr: SocketAddr,
    /// Messages the page confirmed it saw echoed (`/api/ack?msg=…`), for the browser test.
    pub acks: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ChatBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Room {
    page: String,
    addr: SocketAddr,
    tx: broadcast::Sender<String>,
    acks: Arc<Mutex<Vec<String>>>,
}

impl ChatBackend {
    /// Listen on `127.0.0.1:0`; the page connects with `token`.
    pub async fn start(token: &str) -> std::io::Result<ChatBackend> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acks: Arc<Mutex<Vec<String>>> = Arc::default();
        let room = Arc::new(Room {
            page: PAGE.replace("__TOKEN__", token),
            addr,
            tx: broadcast::channel(256).0,
            acks: acks.clone(),
        });
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let room = room.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(req, room.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(ChatBackend { addr, acks, task })
    }
}

fn text(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
    r
}

async fn answer(
    req: Request<Incoming>,
    room: Arc<Room>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path().to_string();
    let header = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    Ok(match path.as_str() {
        "/" => text(
            StatusCode::OK,
            "text/html; charset=utf-8",
            room.page.clone(),
        ),
        "/api/hello" => {
            let body = serde_json::json!({
                "hello": "from the chat backend",
                "host_seen_by_backend": header("host"),
                "x_forwarded_for": header("x-forwarded-for"),
                "x_forwarded_proto": header("x-forwarded-proto"),
            });
            text(StatusCode::OK, "application/json", body.to_string())
        }
        // The backend redirects to its own address; ProxyPassReverse turns it into the public URL.
        "/login" => {
            let mut r = text(StatusCode::FOUND, "text/plain", "see the page\n");
            let loc = format!("http://{}/", room.addr);
            r.headers_mut().insert(
                header::LOCATION,
                HeaderValue::from_str(&loc).expect("address is ASCII"),
            );
            r
        }
        "/api/ack" => {
            let msg = req
                .uri()
                .query()
                .and_then(|q| q.strip_prefix("msg="))
                .unwrap_or("")
                .to_string();
            room.acks
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(msg);
            text(StatusCode::NO_CONTENT, "text/plain", "")
        }
        "/socket" => upgrade(req, room),
        _ => text(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    })
}

fn upgrade(mut req: Request<Incoming>, room: Arc<Room>) -> Response<Full<Bytes>> {
    let Some(key) = req
        .headers()
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()))
    else {
        return text(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "this is a WebSocket endpoint\n",
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(io) = on_upgrade.await else { return };
        let cfg = WebSocketConfig::default().max_message_size(Some(64 << 10));
        let ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Server, Some(cfg)).await;
        let (mut tx, mut rx) = ws.split();
        let mut feed = room.tx.subscribe();
        loop {
            tokio::select! {
                m = rx.next() => match m {
                    Some(Ok(Message::Text(t))) => { let _ = room.tx.send(t.to_string()); }
                    Some(Ok(_)) => {}
                    _ => break,
                },
                m = feed.recv() => match m {
                    Ok(t) => if tx.send(Message::text(t)).await.is_err() { break },
                    Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(_) => break,
                },
            }
        }
    });
    let mut r = text(StatusCode::SWITCHING_PROTOCOLS, "text/plain", "");
    r.headers_mut().remove(header::CONTENT_TYPE);
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&key).expect("base64 is ASCII"),
    );
    r
}

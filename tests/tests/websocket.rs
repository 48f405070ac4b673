//! WebSocket tunnelling end to end: wss outside, ws inside; RFC 8441 over HTTP/2; refusals; timeouts.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Request;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::certs::TestCa;
use wasmgate_tests::client::{get, tls_config, tls_connect, ws_connect, wss_connect};
use wasmgate_tests::proxy::Proxy;

struct Setup {
    ca: TestCa,
    backend: Backend,
    proxy: Proxy,
}

async fn setup(route_extra: &str) -> Setup {
    setup_with(route_extra, &[]).await
}

/// `setup`, with `files` (path relative to the config, bytes) written beside the config.
async fn setup_with(route_extra: &str, files: &[(&str, Vec<u8>)]) -> Setup {
    let ca = TestCa::new("ws test CA");
    let dir = tempfile::tempdir().unwrap();
    for (path, bytes) in files {
        wasmgate_tests::proxy::write(dir.path(), path, bytes);
    }
    ca.leaf(&["chat.example.org"])
        .write(&dir.path().join("certs"), "chat");
    let backend = Backend::start().await;
    let config = format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "chat"
listeners = ["tls", "web"]
hosts = ["chat.example.org"]
tls = {{ cert = "certs/chat.crt", key = "certs/chat.key" }}
preserve_host = true
timeout = "3600s"

[[site.route]]
path = "/"
backend = "{b}/"

[[site.route]]
path = "/socket"
backend = "ws://{a}/socket"
{route_extra}

[[site.route]]
path = "/nows"
backend = "{b}/nows"
websocket = false
"#,
        b = backend.url(),
        a = backend.addr
    );
    let proxy = Proxy::start_in(dir, &config).await;
    Setup { ca, backend, proxy }
}

#[tokio::test]
async fn wss_to_ws_echoes_text_binary_large_and_ping() {
    let s = setup("").await;
    let (mut ws, resp) = wss_connect(
        s.proxy.addr("tls"),
        "chat.example.org",
        "/socket/room1",
        s.ca.roots(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    assert_eq!(s.backend.last().uri, "/socket/room1");
    assert_eq!(s.backend.last().header("host"), Some("chat.example.org"));

    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::binary(vec![0u8, 1, 2, 255])
    );
    let big: Vec<u8> = (0..(1 << 20)).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap().into_data(),
        Bytes::from(big)
    );
    ws.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::Pong(Bytes::from_static(b"p"))
    );

    ws.send(Message::Close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    })))
    .await
    .unwrap();
    match ws.next().await.unwrap().unwrap() {
        Message::Close(Some(f)) => assert_eq!(f.code, CloseCode::Away, "close code passed through"),
        other => panic!("expected close, got {other:?}"),
    }
}

#[tokio::test]
async fn subprotocols_and_origin_reach_the_backend() {
    let s = setup("").await;
    let (_ws, resp) = ws_connect(
        s.proxy.addr("web"),
        "chat.example.org",
        "/socket",
        &[
            ("sec-websocket-protocol", "chat, superchat"),
            ("origin", "https://chat.example.org"),
            ("cookie", "sid=1"),
        ],
    )
    .await
    .unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "chat");
    let seen = s.backend.last();
    assert_eq!(
        seen.header("sec-websocket-protocol"),
        Some("chat, superchat")
    );
    assert_eq!(seen.header("origin"), Some("https://chat.example.org"));
    assert_eq!(seen.header("cookie"), Some("sid=1"));
    assert_eq!(seen.header("upgrade"), Some("websocket"));
}

#[tokio::test]
async fn refusals_pass_through_and_broken_backends_are_502() {
    let s = setup("").await;
    let addr = s.proxy.addr("web");
    match ws_connect(addr, "chat.example.org", "/socket/refuse", &[]).await {
        Err(WsError::Http(resp)) => {
            assert_eq!(resp.status(), 403);
            assert_eq!(resp.body().as_deref(), Some(&b"no websocket for you"[..]));
        }
        other => panic!("expected the backend's 403, got {other:?}"),
    }
    match ws_connect(addr, "chat.example.org", "/socket/bad101", &[]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("a 101 without Upgrade must be 502, got {other:?}"),
    }
    // Plain HTTP on a ws:// route is proxied as HTTP.
    let r = get(addr, "chat.example.org", "/socket/plain").await;
    assert_eq!(r.status, 200);
    assert_eq!(s.backend.last().uri, "/socket/plain");
    // websocket = false: the upgrade is not tunnelled; the backend sees a plain request.
    let r = match ws_connect(addr, "chat.example.org", "/nows", &[]).await {
        Err(WsError::Http(resp)) => resp.status(),
        other => panic!("expected a plain HTTP answer, got {other:?}"),
    };
    assert_eq!(r, 200);
    assert!(s.backend.last().header("upgrade").is_none());
}

#[tokio::test]
async fn backend_down_is_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let s = setup("").await;
    let cfg = std::fs::read_to_string(s.proxy.path("wasmgate.toml"))
        .unwrap()
        .replace(
            &format!("ws://{}/socket", s.backend.addr),
            &format!("ws://{dead}/socket"),
        );
    s.proxy.reload(&cfg).unwrap();
    match ws_connect(s.proxy.addr("web"), "chat.example.org", "/socket", &[]).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 502),
        other => panic!("expected 502, got {other:?}"),
    }
}

#[tokio::test]
async fn idle_tunnels_close_and_traffic_keeps_them_open() {
    let s = setup(r#"timeouts = { idle = "400ms" }"#).await;
    let addr = s.proxy.addr("web");
    let (mut busy, _) = ws_connect(addr, "chat.example.org", "/socket", &[])
        .await
        .unwrap();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(150)).await;
        busy.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(
            busy.next().await.unwrap().unwrap(),
            Message::text(format!("{i}")),
            "activity must keep the tunnel open"
        );
    }
    let (mut quiet, _) = ws_connect(addr, "chat.example.org", "/socket", &[])
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let end = tokio::time::timeout(Duration::from_secs(3), quiet.next())
        .await
        .expect("idle tunnel was not closed");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(350),
        "closed too early"
    );
}

#[tokio::test]
async fn origin_allow_list_and_tunnel_cap() {
    let s = setup(
        r#"allowed_origins = ["https://chat.example.org"]
max_tunnels = 2"#,
    )
    .await;
    let addr = s.proxy.addr("web");
    match ws_connect(
        addr,
        "chat.example.org",
        "/socket",
        &[("origin", "https://evil.example")],
    )
    .await
    {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let ok = [("origin", "https://chat.example.org")];
    let (a, _) = ws_connect(addr, "chat.example.org", "/socket", &ok)
        .await
        .unwrap();
    let (b, _) = ws_connect(addr, "chat.example.org", "/socket", &ok)
        .await
        .unwrap();
    match ws_connect(addr, "chat.example.org", "/socket", &ok).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503 past max_tunnels, got {other:?}"),
    }
    drop((a, b));
    // Slots are freed when the tunnels end (polled: how soon depends on the machine).
    wasmgate_tests::eventually("slots are freed when tunnels end", || async {
        ws_connect(addr, "chat.example.org", "/socket", &ok)
            .await
            .is_ok()
    })
    .await;
}

/// The backend agrees to the upgrade, then an `on-response` plugin fails: the client gets the
/// plugin's error, no tunnel is opened behind it (no tunnel line, the route's one tunnel slot
/// free), and the request has exactly one access line, which names the error.
#[tokio::test]
async fn a_failing_on_response_plugin_opens_no_tunnel() {
    let (_g, logs) = wasmgate_tests::capture_logs();
    let trap = std::fs::read(wasmgate_tests::fixture("trap")).unwrap();
    let s = setup_with(
        "max_tunnels = 1\n[[site.route.plugin]]\nwasm = \"plugins/trap.wasm\"\n",
        &[("plugins/trap.wasm", trap)],
    )
    .await;
    let addr = s.proxy.addr("web");
    for _ in 0..3 {
        match ws_connect(addr, "chat.example.org", "/socket/trap-response", &[]).await {
            Err(WsError::Http(resp)) => assert_eq!(resp.status(), 500),
            other => panic!("expected the plugin's 500, got {other:?}"),
        }
    }
    // The one slot is free at once: a refused tunnel never held it.
    let (mut ws, _) = ws_connect(addr, "chat.example.org", "/socket", &[])
        .await
        .expect("the tunnel slot is free");
    ws.send(Message::text("after")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("after"));
    drop(ws);

    let deadline = std::time::Instant::now() + wasmgate_tests::STATE_CHANGE;
    let lines = loop {
        let text = logs.text();
        let lines: Vec<String> = text
            .lines()
            .filter(|l| l.contains("/socket/trap-response") && l.contains("status="))
            .map(str::to_string)
            .collect();
        if lines.len() >= 3 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        lines.len(),
        3,
        "one access line per refused upgrade:\n{lines:#?}"
    );
    for l in &lines {
        assert!(l.contains("status=500"), "{l}");
        assert!(l.contains("error=") && l.contains("plugin"), "{l}");
        assert!(!l.contains("websocket"), "no tunnel line: {l}");
    }
}

#[tokio::test]
async fn rfc8441_websocket_over_http2() {
    let s = setup("").await;
    let tls = tls_connect(
        s.proxy.addr("tls"),
        "chat.example.org",
        tls_config(s.ca.roots(), &[b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    // A first request makes sure the server's SETTINGS (ENABLE_CONNECT_PROTOCOL) have arrived.
    let warm = sender
        .send_request(
            Request::get("https://chat.example.org/")
                .body(Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(warm.status(), 200);
    let mut req = Request::connect("https://chat.example.org/socket/h2")
        .header("sec-websocket-version", "13")
        .body(Empty::<Bytes>::new())
        .unwrap();
    req.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(s.backend.last().uri, "/socket/h2");
    let io = hyper::upgrade::on(resp).await.unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(io), Role::Client, None).await;
    ws.send(Message::text("over h2")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("over h2"));
}

#[tokio::test]
async fn five_hundred_concurrent_tunnels_echo() {
    let s = setup("").await;
    let addr = s.proxy.addr("web");
    let mut tasks = Vec::new();
    for i in 0..500 {
        tasks.push(tokio::spawn(async move {
            let (mut ws, _) = ws_connect(addr, "chat.example.org", "/socket", &[])
                .await
                .unwrap();
            for j in 0..3 {
                let m = format!("{i}-{j}");
                ws.send(Message::text(m.clone())).await.unwrap();
                assert_eq!(ws.next().await.unwrap().unwrap(), Message::text(m));
            }
            ws
        }));
    }
    let mut open = Vec::new();
    for t in tasks {
        open.push(t.await.unwrap());
    }
    assert_eq!(open.len(), 500);
}

#[tokio::test]
async fn shutdown_gives_open_tunnels_the_grace_period_then_closes_them() {
    let mut s = setup("").await;
    let addr = s.proxy.addr("web");
    let (mut ws, _) = ws_connect(addr, "chat.example.org", "/socket", &[])
        .await
        .unwrap();
    let server = s.proxy.server.take().unwrap();
    let started = std::time::Instant::now();
    let shutdown = tokio::spawn(server.shutdown_with_grace(Duration::from_millis(600)));
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Within the grace period the tunnel still works, but no new connection is accepted.
    ws.send(Message::text("during grace")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("during grace")
    );
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    let end = tokio::time::timeout(Duration::from_secs(3), ws.next())
        .await
        .expect("tunnel outlived the grace period");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
    tokio::time::timeout(Duration::from_secs(3), shutdown)
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(550),
        "closed before the grace period ended"
    );
}

//! Every row of the seed table (`shared/seed/README.md`), end to end against `examples/seed/`.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use wasmgate_demo::{seed_config, DemoOptions};
use wasmgate_tests::backend::Backend;
use wasmgate_tests::certs::TestCa;
use wasmgate_tests::client::{get, https_get, tls_config, tls_connect, wss_connect};
use wasmgate_tests::proxy::{on_free_ports, Proxy};
use wasmgate_tests::{capture_logs, LogBuffer};

struct Seed {
    ca: TestCa,
    leaf: wasmgate_tests::certs::Leaf,
    backend: Backend,
    proxy: Proxy,
    https: u16,
}

/// `examples/seed/wasmgate.toml` on test ports, in front of a test backend, with `edit` applied.
async fn seed(edit: impl Fn(String) -> String) -> Seed {
    let ca = TestCa::new("seed CA");
    let leaf = ca.leaf(&["chat.example.org", "localhost"]);
    let backend = Backend::start().await;
    let (proxy, https) = on_free_ports(|http, https| {
        let (leaf, edit, backend) = (&leaf, &edit, &backend);
        async move {
            let dir = tempfile::tempdir().unwrap();
            leaf.write(&dir.path().join("certs"), "chat");
            std::fs::copy(
                concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/seed/tokens.txt"),
                dir.path().join("tokens.txt"),
            )
            .unwrap();
            let opts = DemoOptions {
                data_dir: dir.path().to_path_buf(),
                bind: "127.0.0.1".parse().unwrap(),
                http_port: http,
                https_port: https,
            };
            let config = edit(seed_config(&opts, backend.addr));
            Proxy::try_start_in(dir, &config)
                .await
                .map(|proxy| (proxy, https))
                .map_err(|(_, e)| e)
        }
    })
    .await;
    Seed {
        ca,
        leaf,
        backend,
        proxy,
        https,
    }
}

impl Seed {
    async fn https(&self, path: &str) -> wasmgate_tests::client::Reply {
        https_get(
            self.proxy.addr("https"),
            "chat.example.org",
            &format!("chat.example.org:{}", self.https),
            path,
            self.ca.roots(),
            false,
        )
        .await
    }
}

#[tokio::test]
async fn s8_plain_http_is_redirected_permanently_with_path_and_query() {
    let s = seed(|c| c).await;
    let r = get(s.proxy.addr("http"), "chat.example.org", "/socket?a=1").await;
    assert_eq!(r.status, 301);
    assert_eq!(
        r.header("location").unwrap(),
        format!("https://chat.example.org:{}/socket?a=1", s.https)
    );
    assert_eq!(s.backend.count(), 0);
}

#[tokio::test]
async fn s2_s3_tls_site_by_sni_with_its_certificate() {
    let s = seed(|c| c).await;
    let tls = tls_connect(
        s.proxy.addr("https"),
        "chat.example.org",
        tls_config(s.ca.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.peer_certificates().unwrap()[0], s.leaf.der);
    let r = s.https("/").await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn s4_s5_s6_preserve_host_prefix_route_and_reverse_redirects() {
    let s = seed(|c| c).await;
    let r = s.https("/app/page?x=1").await;
    assert_eq!(r.status, 200);
    let seen = s.backend.last();
    assert_eq!(
        seen.uri, "/app/page?x=1",
        "ProxyPass / http://127.0.0.1:3000/"
    );
    assert_eq!(
        seen.header("host").unwrap(),
        format!("chat.example.org:{}", s.https),
        "ProxyPreserveHost On"
    );
    let r = s
        .https(&format!("/redirect?to=http://{}/login", s.backend.addr))
        .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location").unwrap(),
        format!("https://chat.example.org:{}/login", s.https),
        "ProxyPassReverse"
    );
}

#[tokio::test]
async fn s7_s10_s11_websocket_needs_the_token_gets_101_and_is_logged() {
    let s = seed(|c| c).await;
    let (_guard, logs) = capture_logs();
    let addr = s.proxy.addr("https");
    match wss_connect(addr, "chat.example.org", "/socket", s.ca.roots(), &[]).await {
        Err(WsError::Http(r)) => {
            assert_eq!(r.status(), 401);
            assert!(r.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
        }
        other => panic!("expected 401 without a token, got {other:?}"),
    }
    let (mut ws, resp) = wss_connect(
        addr,
        "chat.example.org",
        "/socket?token=demo-token",
        s.ca.roots(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    assert!(
        s.backend.last().uri.starts_with("/socket"),
        "ws://127.0.0.1:3000/socket"
    );
    ws.send(Message::text("hallo")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hallo"));
    drop(ws);
    wait_for(&logs, "websocket closed").await;
    let text = logs.text();
    assert!(text.contains("GET /socket 401"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.contains("status=101") && l.contains("route=/socket")),
        "{text}"
    );
}

#[tokio::test]
async fn s9_proxy_timeout_is_honoured_both_ways() {
    // The seed's 3600s: a slow backend and a quiet tunnel both survive.
    let s = seed(|c| c).await;
    assert_eq!(s.https("/slow?ms=1200").await.status, 200);
    let (mut ws, _) = wss_connect(
        s.proxy.addr("https"),
        "chat.example.org",
        "/socket?token=demo-token",
        s.ca.roots(),
        &[],
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("still here")
    );

    // The same config with ProxyTimeout 1: the slow answer is a 504 and the quiet tunnel is closed.
    let s = seed(|c| c.replace("timeout = \"3600s\"", "timeout = \"1s\"")).await;
    assert_eq!(s.https("/slow?ms=2500").await.status, 504);
    let (mut ws, _) = wss_connect(
        s.proxy.addr("https"),
        "chat.example.org",
        "/socket?token=demo-token",
        s.ca.roots(),
        &[],
    )
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(4), ws.next())
        .await
        .expect("idle tunnel stayed open");
    assert!(!matches!(end, Some(Ok(Message::Text(_)))), "{end:?}");
}

#[tokio::test]
async fn s1_token_file_changes_reload_the_plugin_live() {
    let s = seed(|c| c).await;
    let (_guard, logs) = capture_logs();
    let path = s.proxy.path("wasmgate.toml");
    s.proxy.server().reloader(&path).watch().await.unwrap();
    let addr = s.proxy.addr("https");
    assert!(wss_connect(
        addr,
        "chat.example.org",
        "/socket?token=new-token",
        s.ca.roots(),
        &[]
    )
    .await
    .is_err());
    std::fs::write(s.proxy.path("tokens.txt"), "new-token\n").unwrap();
    wait_for(&logs, "configuration reloaded").await;
    let (_ws, resp) = wss_connect(
        addr,
        "chat.example.org",
        "/socket?token=new-token",
        s.ca.roots(),
        &[],
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 101);
    match wss_connect(
        addr,
        "chat.example.org",
        "/socket?token=demo-token",
        s.ca.roots(),
        &[],
    )
    .await
    {
        Err(WsError::Http(r)) => assert_eq!(r.status(), 403, "the old token is gone"),
        other => panic!("expected 403, got {other:?}"),
    }
}

async fn wait_for(logs: &LogBuffer, needle: &str) {
    let deadline = std::time::Instant::now() + wasmgate_tests::STATE_CHANGE;
    while !logs.text().contains(needle) {
        assert!(
            std::time::Instant::now() < deadline,
            "no `{needle}` in:\n{}",
            logs.text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

//! TLS termination end to end: the seed's vhost, SNI with two certificates, HTTP/2, 421.

use std::time::Duration;

use wasmgate_tests::backend::Backend;
use wasmgate_tests::certs::TestCa;
use wasmgate_tests::client::{https_get, tls_config, tls_connect};
use wasmgate_tests::proxy::Proxy;

struct Setup {
    ca: TestCa,
    chat: wasmgate_tests::certs::Leaf,
    api: wasmgate_tests::certs::Leaf,
    backend: Backend,
    proxy: Proxy,
}

async fn setup() -> Setup {
    let ca = TestCa::new("wasmgate test CA");
    let chat = ca.leaf(&["chat.example.org"]);
    let api = ca.leaf(&["api.example.org"]);
    let dir = tempfile::tempdir().unwrap();
    chat.write(&dir.path().join("certs"), "chat");
    api.write(&dir.path().join("certs"), "api");
    let backend = Backend::start().await;
    // The seed's vhost, as the issue writes it, plus a second site on the same listener.
    let config = format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[site]]
name = "chat"
listeners = ["tls"]
hosts = ["chat.example.org"]
tls = {{ cert = "certs/chat.crt", key = "certs/chat.key" }}
preserve_host = true
timeout = "3600s"

[[site.route]]
path = "/"
backend = "{b}/"
reverse = true

[[site]]
name = "api"
listeners = ["tls"]
hosts = ["api.example.org"]
tls = {{ cert = "certs/api.crt", key = "certs/api.key" }}

[[site.route]]
path = "/"
backend = "{b}/api/"
"#,
        b = backend.url()
    );
    let proxy = Proxy::start_in(dir, &config).await;
    Setup {
        ca,
        chat,
        api,
        backend,
        proxy,
    }
}

#[tokio::test]
async fn the_seed_vhost_terminates_tls_preserves_host_and_rewrites_redirects() {
    let s = setup().await;
    let addr = s.proxy.addr("tls");
    let r = https_get(
        addr,
        "chat.example.org",
        "chat.example.org",
        "/hello?x=1",
        s.ca.roots(),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = s.backend.last();
    assert_eq!(seen.uri, "/hello?x=1");
    assert_eq!(
        seen.header("host"),
        Some("chat.example.org"),
        "ProxyPreserveHost On"
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));

    let to = format!("{}/login", s.backend.url());
    let r = https_get(
        addr,
        "chat.example.org",
        "chat.example.org",
        &format!("/redirect?to={to}"),
        s.ca.roots(),
        false,
    )
    .await;
    assert_eq!(r.status, 302);
    assert_eq!(
        r.header("location"),
        Some("https://chat.example.org/login"),
        "ProxyPassReverse"
    );
}

#[tokio::test]
async fn sni_picks_the_certificate_of_each_site() {
    let s = setup().await;
    let addr = s.proxy.addr("tls");
    for (name, leaf) in [("chat.example.org", &s.chat), ("api.example.org", &s.api)] {
        let tls = tls_connect(addr, name, tls_config(s.ca.roots(), &[b"http/1.1"]))
            .await
            .unwrap();
        let served = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(served, leaf.der, "wrong certificate for {name}");
    }
    let r = https_get(
        addr,
        "api.example.org",
        "api.example.org",
        "/x",
        s.ca.roots(),
        false,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(s.backend.last().uri, "/api/x");
    assert_eq!(
        s.backend.last().header("host").unwrap(),
        s.backend.addr.to_string(),
        "preserve_host is off by default"
    );
}

#[tokio::test]
async fn http2_over_tls_works_and_reports_via_2() {
    let s = setup().await;
    let r = https_get(
        s.proxy.addr("tls"),
        "chat.example.org",
        "chat.example.org",
        "/h2",
        s.ca.roots(),
        true,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed("via").as_deref(), Some("2 wasmgate"));
    assert_eq!(s.backend.last().header("host"), Some("chat.example.org"));
}

#[tokio::test]
async fn sni_and_host_of_different_sites_get_421() {
    let s = setup().await;
    let r = https_get(
        s.proxy.addr("tls"),
        "api.example.org",
        "chat.example.org",
        "/",
        s.ca.roots(),
        false,
    )
    .await;
    assert_eq!(r.status, 421);
    assert_eq!(s.backend.count(), 0);
}

#[tokio::test]
async fn unknown_server_names_fail_the_handshake_and_old_tls_is_refused() {
    let s = setup().await;
    let addr = s.proxy.addr("tls");
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        tls_connect(
            addr,
            "unknown.example.org",
            tls_config(s.ca.roots(), &[b"http/1.1"]),
        ),
    )
    .await
    .unwrap();
    assert!(
        r.is_err(),
        "a handshake for a name no site serves must fail"
    );
    // TLS 1.2 is the floor: a 1.2-only client still gets in.
    let mut cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(s.ca.roots())
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tls_connect(addr, "chat.example.org", std::sync::Arc::new(cfg))
        .await
        .unwrap();
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
}

#[tokio::test]
async fn https_and_wss_backends_are_verified_against_the_configured_ca() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let ca = TestCa::new("backend CA");
    let backend = Backend::start_tls(&ca.leaf(&["localhost"])).await;
    let dir = tempfile::tempdir().unwrap();
    ca.write(&dir.path().join("backend-ca.pem"));
    let other = TestCa::new("someone else");
    other.write(&dir.path().join("wrong-ca.pem"));
    let port = backend.addr.port();
    let config = format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "a"
listeners = ["web"]
hosts = ["a.test"]

[[site.route]]
path = "/"
backend = "https://localhost:{port}/"
ca = "backend-ca.pem"

[[site.route]]
path = "/ws"
backend = "wss://localhost:{port}/ws"
ca = "backend-ca.pem"

[[site.route]]
path = "/untrusted"
backend = "https://localhost:{port}/"
ca = "wrong-ca.pem"
"#
    );
    let proxy = Proxy::start_in(dir, &config).await;
    let addr = proxy.addr("web");
    let r = wasmgate_tests::client::get(addr, "a.test", "/over-tls").await;
    assert_eq!(r.status, 200);
    assert_eq!(backend.last().uri, "/over-tls");
    let (mut ws, _) = wasmgate_tests::client::ws_connect(addr, "a.test", "/ws", &[])
        .await
        .unwrap();
    ws.send(Message::text("through wss")).await.unwrap();
    assert_eq!(
        ws.next().await.unwrap().unwrap(),
        Message::text("through wss")
    );
    let r = wasmgate_tests::client::get(addr, "a.test", "/untrusted").await;
    assert_eq!(
        r.status, 502,
        "a backend certificate from another CA is refused"
    );
}

/// A CA bundle is judged by its bytes, not its path: rotated in place, it takes effect at the next
/// reload though the config text did not change. A bundle that is not a regular file (a symlink to
/// `/dev/zero`, which would never end) is refused with its route, and the last good one serves.
#[tokio::test]
async fn a_ca_bundle_rotated_in_place_takes_effect_at_the_next_reload() {
    let old_ca = TestCa::new("retiring CA");
    let new_ca = TestCa::new("new CA");
    let backend = Backend::start_tls(&new_ca.leaf(&["localhost"])).await;
    let dir = tempfile::tempdir().unwrap();
    old_ca.write(&dir.path().join("backend-ca.pem"));
    let port = backend.addr.port();
    let config = format!(
        r#"
[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "a"
listeners = ["web"]
hosts = ["a.test"]

[[site.route]]
path = "/"
backend = "https://localhost:{port}/"
ca = "backend-ca.pem"
"#
    );
    let proxy = Proxy::start_in(dir, &config).await;
    let addr = proxy.addr("web");
    let r = wasmgate_tests::client::get(addr, "a.test", "/before").await;
    assert_eq!(
        r.status, 502,
        "the backend's certificate is from the new CA"
    );

    new_ca.write(&proxy.path("backend-ca.pem"));
    proxy.reload(&config).unwrap();
    let r = wasmgate_tests::client::get(addr, "a.test", "/after").await;
    assert_eq!(
        r.status, 200,
        "the rotated bundle is trusted after the reload"
    );
    assert_eq!(backend.last().uri, "/after");

    std::fs::remove_file(proxy.path("backend-ca.pem")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", proxy.path("backend-ca.pem")).unwrap();
    let err = proxy.reload(&config).unwrap_err().to_string();
    assert!(
        err.contains("route[0].ca") && err.contains("regular file"),
        "{err}"
    );
    let r = wasmgate_tests::client::get(addr, "a.test", "/still").await;
    assert_eq!(r.status, 200, "the last good bundle serves");
}

#[tokio::test]
async fn certificates_rotate_on_reload_without_touching_open_connections() {
    let s = setup().await;
    let addr = s.proxy.addr("tls");
    let before = tls_connect(
        addr,
        "chat.example.org",
        tls_config(s.ca.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    let renewed = s.ca.leaf(&["chat.example.org"]);
    renewed.write(&s.proxy.path("certs"), "chat");
    let cfg = std::fs::read_to_string(s.proxy.path("wasmgate.toml")).unwrap();
    s.proxy.reload(&cfg).unwrap();
    let after = tls_connect(
        addr,
        "chat.example.org",
        tls_config(s.ca.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(
        after.get_ref().1.peer_certificates().unwrap()[0],
        renewed.der,
        "new handshakes get the new certificate"
    );
    assert_eq!(
        before.get_ref().1.peer_certificates().unwrap()[0],
        s.chat.der
    );
    // The connection opened before the rotation still works.
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(before))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("/still")
        .header("host", "chat.example.org")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    assert_eq!(sender.send_request(req).await.unwrap().status(), 200);

    // A key that does not match its certificate is refused; the renewed pair keeps serving.
    std::fs::write(
        s.proxy.path("certs/chat.key"),
        s.ca.leaf(&["chat.example.org"]).key_pem,
    )
    .unwrap();
    let err = s.proxy.reload(&cfg).unwrap_err().to_string();
    assert!(
        err.contains("do not belong together") || err.contains("chat.key"),
        "{err}"
    );
    let again = tls_connect(
        addr,
        "chat.example.org",
        tls_config(s.ca.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(
        again.get_ref().1.peer_certificates().unwrap()[0],
        renewed.der
    );
}

/// Draining over HTTP/2: a connection that has served a request gets GOAWAY at once (the client
/// opens no new stream on it, and nothing it sent is lost); a request in flight completes; a
/// connection opened just before the drain still gets its first request answered.
#[tokio::test]
async fn draining_sends_goaway_and_finishes_what_is_in_flight() {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let mut s = setup().await;
    let addr = s.proxy.addr("tls");
    let h2 = || async {
        let tls = tls_connect(addr, "chat.example.org", tls_config(s.ca.roots(), &[b"h2"]))
            .await
            .unwrap();
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        let ended = tokio::spawn(conn);
        (sender, ended)
    };
    let get = |path: &str| {
        http::Request::get(format!("https://chat.example.org{path}"))
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    // Used: one request answered before the drain.
    let (mut used, used_ended) = h2().await;
    let r = used.send_request(get("/before")).await.unwrap();
    assert_eq!(r.status(), 200);
    // In flight when the drain begins.
    let (mut busy, _busy_ended) = h2().await;
    let slow = tokio::spawn(async move {
        let r = busy.send_request(get("/slow?ms=1200")).await.unwrap();
        let status = r.status();
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, body)
    });
    // Fresh: handshaken, nothing asked yet.
    let (mut fresh, _fresh_ended) = h2().await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    let server = s.proxy.server.take().unwrap();
    let drain = tokio::spawn(server.shutdown_with_grace(Duration::from_secs(10)));
    // GOAWAY ends the used connection promptly (hyper's client ends its connection task on it).
    tokio::time::timeout(Duration::from_secs(2), used_ended)
        .await
        .expect("GOAWAY on a used connection")
        .unwrap()
        .unwrap();
    assert!(
        used.send_request(get("/after")).await.is_err(),
        "no new stream on a connection that got GOAWAY"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let r = fresh
        .send_request(get("/first"))
        .await
        .expect("the first request on a fresh connection during the drain");
    assert_eq!(r.status(), 200);
    let (status, body) = slow.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(&body[..], b"slow");
    tokio::time::timeout(Duration::from_secs(5), drain)
        .await
        .expect("the drain ends once nothing is in flight")
        .unwrap();
    // The backend saw each answered request once, and none of the refused one.
    let paths: Vec<String> = s.backend.seen().into_iter().map(|r| r.uri).collect();
    assert!(!paths.iter().any(|p| p.contains("/after")), "{paths:?}");
    assert_eq!(paths.iter().filter(|p| p.contains("/first")).count(), 1);
}

//! The PROXY protocol (v1 text, v2 binary) per listener, over plain TCP and before TLS: the header's
//! address is the client everywhere (X-Forwarded-For, trust, per-IP limits, the access log, which also
//! names the balancer as `proxy_peer`); only the configured sources may send one, and they must.
//!
//! 127.0.0.1 plays the balancer (`proxy_protocol_from = ["127.0.0.1/32"]`); 127.0.0.2 is another
//! source (a client socket bound to it).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wasmgate_tests::backend::Backend;
use wasmgate_tests::capture_logs;
use wasmgate_tests::certs::TestCa;
use wasmgate_tests::proxy::Proxy;
use wasmgate_tests::wire::{read_responses, Closed, Wait};

fn config(backend: &Backend, top: &str) -> String {
    format!(
        r#"{top}
[[listener]]
name = "web"
bind = "127.0.0.1:0"
proxy_protocol = true
proxy_protocol_from = ["127.0.0.1/32"]

[[site]]
name = "app"
listeners = ["web"]
hosts = ["app.test"]

[[site.route]]
path = "/"
backend = "{}/"
"#,
        backend.url()
    )
}

async fn connect_from(from: &str, addr: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))
        .unwrap();
    s.connect(addr).await.unwrap()
}

/// Send `prefix` then one GET for `path` (with `extra` header lines); the statuses and how it ended.
async fn exchange(
    from: &str,
    addr: SocketAddr,
    prefix: &[u8],
    path: &str,
    extra: &str,
) -> (Vec<u16>, Closed) {
    let mut s = connect_from(from, addr).await;
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(
        format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    );
    let _ = s.write_all(&bytes).await;
    let ex = read_responses(
        &mut s,
        Wait {
            first: Duration::from_secs(3),
            more: Duration::from_millis(100),
        },
        Instant::now(),
    )
    .await;
    (ex.statuses(), ex.closed)
}

fn v2(command: u8, family: u8, addresses: &[u8], tlvs: &[u8]) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x20 | command);
    h.push(family);
    h.extend_from_slice(&((addresses.len() + tlvs.len()) as u16).to_be_bytes());
    h.extend_from_slice(addresses);
    h.extend_from_slice(tlvs);
    h
}

fn v2_inet(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut a = src.to_vec();
    a.extend_from_slice(&[127, 0, 0, 1]);
    a.extend_from_slice(&sport.to_be_bytes());
    a.extend_from_slice(&80u16.to_be_bytes());
    // PP2_TYPE_AUTHORITY and PP2_TYPE_NOOP: skipped.
    v2(
        1,
        0x11,
        &a,
        &[
            0x02, 0, 8, b'a', b'p', b'p', b'.', b't', b'e', b's', b't', 0x04, 0, 2, 0, 0,
        ],
    )
}

#[tokio::test]
async fn the_header_from_the_balancer_names_the_client() {
    let b = Backend::start().await;
    let (_g, logs) = capture_logs();
    let p = Proxy::start(&config(&b, ""), &[]).await;
    let addr = p.addr("web");

    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 80\r\n";
    assert_eq!(exchange("127.0.0.1", addr, v1, "/pp-v1", "").await.0, [200]);
    assert_eq!(b.last().header("x-forwarded-for"), Some("203.0.113.7"));

    let inet = v2_inet([198, 51, 100, 9], 40000);
    assert_eq!(
        exchange("127.0.0.1", addr, &inet, "/pp-v2", "").await.0,
        [200]
    );
    assert_eq!(b.last().header("x-forwarded-for"), Some("198.51.100.9"));

    let six = b"PROXY TCP6 2001:db8::5 ::1 1234 80\r\n";
    assert_eq!(
        exchange("127.0.0.1", addr, six, "/pp-v6", "").await.0,
        [200]
    );
    assert_eq!(b.last().header("x-forwarded-for"), Some("2001:db8::5"));

    // LOCAL (the balancer's health check) and UNKNOWN keep the TCP peer.
    let local = v2(0, 0x00, &[], &[]);
    assert_eq!(
        exchange("127.0.0.1", addr, &local, "/pp-local", "").await.0,
        [200]
    );
    assert_eq!(b.last().header("x-forwarded-for"), Some("127.0.0.1"));
    let unknown = b"PROXY UNKNOWN\r\n";
    assert_eq!(
        exchange("127.0.0.1", addr, unknown, "/pp-unknown", "")
            .await
            .0,
        [200]
    );
    assert_eq!(b.last().header("x-forwarded-for"), Some("127.0.0.1"));

    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("GET /pp-v1 200"))
        .unwrap_or_else(|| panic!("no access line:\n{text}"));
    assert!(
        line.contains("client=203.0.113.7") && line.contains("proxy_peer=127.0.0.1"),
        "{line}"
    );
    let line = text
        .lines()
        .find(|l| l.contains("GET /pp-local 200"))
        .unwrap();
    assert!(
        line.contains("client=127.0.0.1") && !line.contains("proxy_peer"),
        "{line}"
    );
}

#[tokio::test]
async fn only_the_configured_sources_may_send_a_header_and_they_must() {
    let b = Backend::start().await;
    let p = Proxy::start(&config(&b, ""), &[]).await;
    let addr = p.addr("web");
    let v1 = b"PROXY TCP4 203.0.113.7 127.0.0.1 56324 80\r\n";

    // Another source with a header: it would pick its own address. Closed, unanswered.
    let (statuses, closed) = exchange("127.0.0.2", addr, v1, "/spoof", "").await;
    assert!(statuses.is_empty(), "{statuses:?}");
    assert_ne!(closed, Closed::Open);
    let v2 = v2_inet([203, 0, 113, 7], 1);
    let (statuses, _) = exchange("127.0.0.2", addr, &v2, "/spoof2", "").await;
    assert!(statuses.is_empty(), "{statuses:?}");
    // Without one it is an ordinary client.
    assert_eq!(
        exchange("127.0.0.2", addr, b"", "/direct", "").await.0,
        [200]
    );
    assert_eq!(b.last().header("x-forwarded-for"), Some("127.0.0.2"));

    // The balancer without a header: refused, as HAProxy's accept-proxy does (it would be served under
    // the balancer's own address).
    let (statuses, _) = exchange("127.0.0.1", addr, b"", "/no-header", "").await;
    assert!(statuses.is_empty(), "{statuses:?}");
    // Malformed headers from the balancer: closed.
    for bad in [
        &b"PROXY TCP4 203.0.113.7 127.0.0.1 99999 80\r\n"[..],
        b"PROXY TCP4 2001:db8::1 127.0.0.1 1 80\r\n",
        b"PROXY TCP9 x y 1 2\r\n",
    ] {
        let (statuses, _) = exchange("127.0.0.1", addr, bad, "/bad", "").await;
        assert!(statuses.is_empty(), "{:?}", String::from_utf8_lossy(bad));
    }
    // An endless v1 line is cut at 107 bytes, not buffered.
    let mut s = connect_from("127.0.0.1", addr).await;
    let _ = s.write_all(b"PROXY TCP4 ").await;
    let _ = s.write_all(&[b'1'; 200]).await;
    let mut buf = [0u8; 64];
    let r = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
    assert!(matches!(r, Ok(Ok(0)) | Ok(Err(_))), "{r:?}");
    let spoofed = b
        .seen()
        .iter()
        .any(|s| s.uri.contains("spoof") || s.uri == "/no-header" || s.uri == "/bad");
    assert!(!spoofed, "a refused connection reached the backend");
}

/// `trusted_proxies` is judged on the PROXY-given address: the balancer (an L4 hop) vouches only for
/// the address; the client's own X-Forwarded-For is believed only if that address is a trusted proxy.
#[tokio::test]
async fn forwarded_headers_are_trusted_by_the_proxied_address() {
    let b = Backend::start().await;
    let p = Proxy::start(&config(&b, "trusted_proxies = [\"203.0.113.0/24\"]"), &[]).await;
    let addr = p.addr("web");
    // The PROXY client is a trusted HTTP proxy (a CDN behind the L4 balancer): its XFF chain is kept.
    let cdn = b"PROXY TCP4 203.0.113.7 127.0.0.1 1 80\r\n";
    let xff = "X-Forwarded-For: 192.0.2.55\r\n";
    assert_eq!(exchange("127.0.0.1", addr, cdn, "/cdn", xff).await.0, [200]);
    assert_eq!(
        b.last().header("x-forwarded-for"),
        Some("192.0.2.55, 203.0.113.7")
    );
    // An ordinary client behind the balancer cannot claim an address.
    let client = b"PROXY TCP4 198.51.100.9 127.0.0.1 1 80\r\n";
    assert_eq!(
        exchange(
            "127.0.0.1",
            addr,
            client,
            "/claim",
            "X-Forwarded-For: 6.6.6.6\r\n"
        )
        .await
        .0,
        [200]
    );
    assert_eq!(b.last().header("x-forwarded-for"), Some("198.51.100.9"));
}

/// Per-IP limits count the PROXY-given address: two clients behind one balancer are two addresses.
#[tokio::test]
async fn per_ip_limits_count_the_proxied_address() {
    let b = Backend::start().await;
    let p = Proxy::start(&config(&b, "limits = { max_connections_per_ip = 1 }"), &[]).await;
    let addr = p.addr("web");
    let held = |ip: &str| {
        format!("PROXY TCP4 {ip} 127.0.0.1 1 80\r\nGET /held HTTP/1.1\r\nHost: app.test\r\n\r\n")
    };
    let mut a = connect_from("127.0.0.1", addr).await;
    a.write_all(held("198.51.100.1").as_bytes()).await.unwrap();
    let wait = Wait {
        first: Duration::from_secs(3),
        more: Duration::from_millis(100),
    };
    assert_eq!(
        read_responses(&mut a, wait, Instant::now())
            .await
            .statuses(),
        [200]
    );
    let mut c = connect_from("127.0.0.1", addr).await;
    c.write_all(held("198.51.100.2").as_bytes()).await.unwrap();
    assert_eq!(
        read_responses(&mut c, wait, Instant::now())
            .await
            .statuses(),
        [200],
        "another client behind the same balancer"
    );
    let mut again = connect_from("127.0.0.1", addr).await;
    let _ = again.write_all(held("198.51.100.1").as_bytes()).await;
    let ex = read_responses(&mut again, wait, Instant::now()).await;
    assert!(
        ex.responses.is_empty(),
        "a second connection of 198.51.100.1 was served"
    );
}

#[tokio::test]
async fn the_header_comes_before_tls() {
    let b = Backend::start().await;
    let ca = TestCa::new("pp CA");
    let dir = tempfile::tempdir().unwrap();
    ca.leaf(&["app.test"]).write(dir.path(), "app");
    let cfg = format!(
        r#"
[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true
proxy_protocol = true
proxy_protocol_from = ["127.0.0.1"]

[[site]]
name = "app"
listeners = ["tls"]
hosts = ["app.test"]
tls = {{ cert = "app.crt", key = "app.key" }}

[[site.route]]
path = "/"
backend = "{}/"
"#,
        b.url()
    );
    let p = Proxy::start_in(dir, &cfg).await;
    let addr = p.addr("tls");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der.clone()).unwrap();
    let tls_cfg = wasmgate_tests::client::tls_config(roots, &[b"http/1.1"]);

    let over_tls = |from: &'static str, header: Vec<u8>| {
        let tls_cfg = tls_cfg.clone();
        async move {
            let mut tcp = connect_from(from, addr).await;
            tcp.write_all(&header).await.ok()?;
            let name = rustls::pki_types::ServerName::try_from("app.test").unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(tls_cfg)
                .connect(name, tcp)
                .await
                .ok()?;
            tls.write_all(b"GET /tls HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
                .await
                .ok()?;
            let mut out = Vec::new();
            let _ = tls.read_to_end(&mut out).await;
            Some(String::from_utf8_lossy(&out).into_owned())
        }
    };
    let v1 = b"PROXY TCP4 203.0.113.77 127.0.0.1 5555 443\r\n".to_vec();
    let got = over_tls("127.0.0.1", v1.clone())
        .await
        .expect("TLS after a v1 header");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(b.last().header("x-forwarded-for"), Some("203.0.113.77"));
    let got = over_tls("127.0.0.1", v2_inet([192, 0, 2, 44], 9))
        .await
        .expect("TLS after v2");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(b.last().header("x-forwarded-for"), Some("192.0.2.44"));
    // From another source the header ends the connection before any handshake.
    assert!(over_tls("127.0.0.2", v1).await.is_none());
    let got = over_tls("127.0.0.2", Vec::new())
        .await
        .expect("a direct TLS client");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert_eq!(b.last().header("x-forwarded-for"), Some("127.0.0.2"));
}

#[tokio::test]
async fn proxy_protocol_needs_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("w.toml");
    let cases = [
        ("proxy_protocol = true", "proxy_protocol_from"),
        (
            "proxy_protocol_from = [\"10.0.0.0/8\"]",
            "without proxy_protocol",
        ),
        (
            "proxy_protocol = true\nproxy_protocol_from = [\"10.0.0.0/33\"]",
            "not an IP address or CIDR",
        ),
    ];
    for (lines, want) in cases {
        let text = format!("[[listener]]\nname = \"web\"\nbind = \"127.0.0.1:0\"\n{lines}\n");
        std::fs::write(&path, text).unwrap();
        let err = wasmgate_config::Config::load(&path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("listener[0].proxy_protocol") && err.contains(want),
            "{lines}: {err}"
        );
    }
}

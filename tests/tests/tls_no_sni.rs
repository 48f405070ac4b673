//! TLS clients that send no SNI (old clients, health checks by IP, `openssl s_client` without
//! `-servername`) get the listener's default site's certificate, else its first operator site's
//! (Apache's rule), and may reach only that site: another Host is 421 Misdirected. The same rule keeps
//! an HTTP/2 connection coalesced for another name on its own site. `tls_reject_unknown_sni = true`
//! refuses such handshakes instead (nginx's `ssl_reject_handshake`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::certs::{Leaf, TestCa};
use wasmgate_tests::client::{read, tls_config, tls_connect, Reply};
use wasmgate_tests::proxy::{write, Proxy};

/// A client that sends no SNI (it still verifies the certificate against the name it connects to).
fn no_sni(roots: rustls::RootCertStore, alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    let mut cfg = Arc::unwrap_or_clone(tls_config(roots, &[alpn]));
    cfg.enable_sni = false;
    Arc::new(cfg)
}

async fn connect(
    addr: SocketAddr,
    name: ServerName<'static>,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    tokio::time::timeout(
        Duration::from_secs(5),
        tokio_rustls::TlsConnector::from(cfg).connect(name, tcp),
    )
    .await
    .expect("handshake hangs")
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_string()).unwrap()
}

fn served(tls: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    tls.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// One GET per host on the connection: h2 (`:authority`) or h1 (`Host`), per the ALPN it agreed.
async fn get_each(tls: TlsStream<TcpStream>, hosts: &[&str]) -> Vec<Reply> {
    let mut out = Vec::new();
    if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .unwrap();
        tokio::spawn(conn);
        for h in hosts {
            let req = http::Request::get(format!("https://{h}/who"))
                .body(Empty::<Bytes>::new())
                .unwrap();
            out.push(read(sender.send_request(req).await.unwrap()).await);
        }
    } else {
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .unwrap();
        tokio::spawn(conn);
        for h in hosts {
            let req = http::Request::get("/who")
                .header("host", *h)
                .body(Empty::<Bytes>::new())
                .unwrap();
            out.push(read(sender.send_request(req).await.unwrap()).await);
        }
    }
    out
}

fn statuses(replies: &[Reply]) -> Vec<u16> {
    replies.iter().map(|r| r.status.as_u16()).collect()
}

struct Setup {
    ca: TestCa,
    leaves: Vec<Leaf>,
    backends: Vec<Backend>,
    proxy: Proxy,
}

/// One TLS listener (`listener_extra` added to it) and a site per `(name, hosts, extra)`, each with its
/// own certificate for its hosts and its own backend.
async fn setup(listener_extra: &str, sites: &[(&str, &[&str], &str)]) -> Setup {
    let ca = TestCa::new("no-SNI CA");
    let dir = tempfile::tempdir().unwrap();
    let mut config = format!(
        "[[listener]]\nname = \"tls\"\nbind = \"127.0.0.1:0\"\ntls = true\n{listener_extra}\n"
    );
    let (mut leaves, mut backends) = (Vec::new(), Vec::new());
    for (name, hosts, extra) in sites {
        let leaf = ca.leaf(hosts);
        leaf.write(&dir.path().join("certs"), name);
        let b = Backend::start().await;
        let list: Vec<String> = hosts.iter().map(|h| format!("{h:?}")).collect();
        config.push_str(&format!(
            r#"
[[site]]
name = "{name}"
listeners = ["tls"]
hosts = [{hosts}]
tls = {{ cert = "certs/{name}.crt", key = "certs/{name}.key" }}
{extra}

[[site.route]]
path = "/"
backend = "{url}/{name}"
"#,
            hosts = list.join(", "),
            url = b.url()
        ));
        leaves.push(leaf);
        backends.push(b);
    }
    let proxy = Proxy::start_in(dir, &config).await;
    Setup {
        ca,
        leaves,
        backends,
        proxy,
    }
}

#[tokio::test]
async fn without_sni_the_first_operator_site_answers_and_only_it() {
    let s = setup(
        "",
        &[
            ("first", &["first.test", "127.0.0.1"], ""),
            ("second", &["second.test"], ""),
        ],
    )
    .await;
    let addr = s.proxy.addr("tls");
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let tls = connect(addr, dns("first.test"), no_sni(s.ca.roots(), alpn))
            .await
            .expect("a handshake without SNI is served");
        assert_eq!(
            served(&tls),
            s.leaves[0].der,
            "the first site's certificate"
        );
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(alpn));
        let replies = get_each(tls, &["first.test", "second.test", "127.0.0.1"]).await;
        assert_eq!(
            statuses(&replies),
            [200, 421, 200],
            "{alpn:?}: only the site whose certificate it got"
        );
        assert!(replies[1].text().contains("cannot serve that host"));
    }
    assert_eq!(s.backends[0].last().uri, "/first/who");
    assert_eq!(s.backends[1].count(), 0, "second was never reached");

    // A health check by IP address: rustls sends no SNI for an IP, and the certificate names the IP.
    let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into());
    let tls = connect(addr, ip, tls_config(s.ca.roots(), &[b"http/1.1"]))
        .await
        .expect("a client connecting by IP gets a certificate");
    assert_eq!(served(&tls), s.leaves[0].der);
    assert_eq!(statuses(&get_each(tls, &["127.0.0.1"]).await), [200]);

    // With SNI nothing changes: each name gets its own site.
    let tls = tls_connect(
        addr,
        "second.test",
        tls_config(s.ca.roots(), &[b"http/1.1"]),
    )
    .await
    .unwrap();
    assert_eq!(served(&tls), s.leaves[1].der);
    assert_eq!(
        statuses(&get_each(tls, &["second.test", "first.test"]).await),
        [200, 421]
    );
    assert_eq!(s.backends[1].count(), 1);
}

#[tokio::test]
async fn the_default_site_answers_handshakes_without_sni() {
    let s = setup(
        "",
        &[
            ("first", &["first.test"], ""),
            ("fallback", &["fallback.test"], "default = true"),
        ],
    )
    .await;
    let addr = s.proxy.addr("tls");
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let tls = connect(addr, dns("fallback.test"), no_sni(s.ca.roots(), alpn))
            .await
            .unwrap();
        assert_eq!(
            served(&tls),
            s.leaves[1].der,
            "the default site's certificate"
        );
        // Any host the default site answers for passes; a host of another site does not.
        let replies = get_each(tls, &["fallback.test", "unknown.test", "first.test"]).await;
        assert_eq!(statuses(&replies), [200, 200, 421], "{alpn:?}");
    }
    assert_eq!(s.backends[0].count(), 0);
    assert_eq!(s.backends[1].count(), 4);
}

#[tokio::test]
async fn tls_reject_unknown_sni_refuses_those_handshakes() {
    let s = setup(
        "tls_reject_unknown_sni = true",
        &[
            ("first", &["first.test"], ""),
            ("fallback", &["fallback.test"], "default = true"),
        ],
    )
    .await;
    let addr = s.proxy.addr("tls");
    for alpn in [&b"http/1.1"[..], b"h2"] {
        let r = connect(addr, dns("first.test"), no_sni(s.ca.roots(), alpn)).await;
        assert!(r.is_err(), "no SNI must fail the handshake");
    }
    // Even with a default site, a name no site lists is refused...
    let r = tls_connect(
        addr,
        "unknown.test",
        tls_config(s.ca.roots(), &[b"http/1.1"]),
    )
    .await;
    assert!(r.is_err(), "an unknown SNI must fail the handshake");
    // ...and the names sites list are served.
    let tls = tls_connect(addr, "first.test", tls_config(s.ca.roots(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(served(&tls), s.leaves[0].der);
    assert_eq!(statuses(&get_each(tls, &["first.test"]).await), [200]);
}

/// Browsers reuse an HTTP/2 connection for another name its certificate covers (RFC 9113 §9.1.1).
/// Sites choose by SNI, so such a request is answered 421 and the browser retries on a new connection.
#[tokio::test]
async fn an_h2_connection_coalesced_for_another_site_gets_421() {
    let s = setup(
        "",
        &[("one", &["one.test"], ""), ("two", &["two.test"], "")],
    )
    .await;
    // Replace both sites' certificates with one that covers both names.
    let both = s.ca.leaf(&["one.test", "two.test"]);
    both.write(&s.proxy.path("certs"), "one");
    both.write(&s.proxy.path("certs"), "two");
    let cfg = std::fs::read_to_string(s.proxy.path("wasmgate.toml")).unwrap();
    s.proxy.reload(&cfg).unwrap();
    let addr = s.proxy.addr("tls");
    let tls = tls_connect(addr, "one.test", tls_config(s.ca.roots(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(served(&tls), both.der);
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let replies = get_each(tls, &["one.test", "two.test", "one.test"]).await;
    assert_eq!(statuses(&replies), [200, 421, 200]);
    assert_eq!(
        s.backends[1].count(),
        0,
        "two's site is never reached through one's connection"
    );
    // Its own connection reaches it.
    let tls = tls_connect(addr, "two.test", tls_config(s.ca.roots(), &[b"h2"]))
        .await
        .unwrap();
    assert_eq!(statuses(&get_each(tls, &["two.test"]).await), [200]);
    assert_eq!(s.backends[1].count(), 1);
}

/// Tenants may not answer for a connection that named no site: with no operator site on the
/// listener, a handshake without SNI fails; the tenant's own name still works.
#[tokio::test]
async fn a_tenant_site_never_answers_without_sni() {
    let ca = TestCa::new("tenant CA");
    let dir = tempfile::tempdir().unwrap();
    let leaf = ca.leaf(&["shop.test"]);
    leaf.write(&dir.path().join("tenants/acme"), "shop");
    let b = Backend::start().await;
    write(
        dir.path(),
        "tenants/acme/tenant.toml",
        format!(
            r#"
[[site]]
name = "shop"
listeners = ["tls"]
hosts = ["shop.test"]
tls = {{ cert = "shop.crt", key = "shop.key" }}

[[site.route]]
path = "/"
backend = "{}/"
"#,
            b.url()
        )
        .as_bytes(),
    );
    // Tenant backends on loopback need the operator's allowance (issue 14, egress).
    let config = r#"
tenants_dir = "tenants"

[tenant_limits.default]
backends = ["127.0.0.1/32"]

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "operator"
listeners = ["web"]
hosts = ["ops.test"]

[[site.route]]
path = "/"
backend = "http://127.0.0.1:9/"
"#;
    let proxy = Proxy::start_in(dir, config).await;
    let addr = proxy.addr("tls");
    let r = connect(addr, dns("shop.test"), no_sni(ca.roots(), b"http/1.1")).await;
    assert!(r.is_err(), "no operator TLS site: the handshake fails");
    let tls = tls_connect(addr, "shop.test", tls_config(ca.roots(), &[b"http/1.1"]))
        .await
        .unwrap();
    assert_eq!(served(&tls), leaf.der);
    assert_eq!(statuses(&get_each(tls, &["shop.test"]).await), [200]);
    assert_eq!(b.count(), 1);
}

#[test]
fn tls_reject_unknown_sni_needs_a_tls_listener() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wasmgate.toml");
    let text = wasmgate_tests::proxy::app_config(
        "",
        "[[site.route]]\npath = \"/\"\nbackend = \"http://127.0.0.1:9/\"\n",
    )
    .replace(
        "bind = \"127.0.0.1:0\"",
        "bind = \"127.0.0.1:0\"\ntls_reject_unknown_sni = true",
    );
    std::fs::write(&path, text).unwrap();
    let err = wasmgate_config::Config::load(&path)
        .unwrap_err()
        .to_string();
    assert!(err.contains("tls_reject_unknown_sni"), "{err}");
    assert!(err.contains("tls = true"), "{err}");
    assert!(err.contains("wasmgate.toml:"), "{err}");
}

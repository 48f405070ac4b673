//! The proxy core end to end over plain HTTP: routing, mapping, header hygiene, errors, shutdown.

use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::{get, raw, send};
use wasmgate_tests::proxy::Proxy;

fn config(root: &Backend, api: &Backend, extra_site: &str) -> String {
    format!(
        r#"
timeouts = {{ header_read = "2s" }}
limits = {{ max_body_bytes = "64KiB" }}

[[listener]]
name = "web"
bind = "127.0.0.1:0"

[[site]]
name = "app"
listeners = ["web"]
hosts = ["app.test", "*.app.test"]
{extra_site}

[[site.route]]
path = "/"
backend = "{root}/"
reverse = true
reverse_cookie_path = true

[[site.route]]
path = "/api/"
backend = "{api}/v1/"
reverse = true
reverse_cookie_path = true
timeouts = {{ response = "300ms" }}

[[site.route]]
path = "/kept"
backend = "{root}/kept"
preserve_host = true
"#,
        root = root.url(),
        api = api.url()
    )
}

#[tokio::test]
async fn longest_prefix_maps_path_and_query_like_proxypass() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let p = Proxy::start(&config(&root, &api, ""), &[]).await;
    let addr = p.addr("web");

    let r = get(addr, "app.test", "/api/users/7?q=1&x=%20").await;
    assert_eq!(r.status, 200);
    assert_eq!(api.last().uri, "/v1/users/7?q=1&x=%20");
    assert_eq!(root.count(), 0, "the / route must not swallow /api/");

    get(addr, "app.test", "/apix").await;
    assert_eq!(
        root.last().uri,
        "/apix",
        "/api/ matches on segment boundaries only"
    );

    get(addr, "APP.test:80", "/a/../b/./c").await;
    assert_eq!(
        root.last().uri,
        "/b/c",
        "paths are normalised before routing"
    );

    get(addr, "x.app.test", "/wild").await;
    assert_eq!(root.last().uri, "/wild");
}

#[tokio::test]
async fn backend_connections_are_kept_alive_and_reused() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    // One worker: one pool, so sequential requests must all share one backend connection.
    let cfg = format!("workers = 1\n{}", config(&root, &api, ""));
    let p = Proxy::start(&cfg, &[]).await;
    let addr = p.addr("web");
    for i in 0..30 {
        let r = get(addr, "app.test", &format!("/seq/{i}")).await;
        assert_eq!(r.status, 200);
    }
    assert_eq!(root.count(), 30);
    assert_eq!(
        root.connections(),
        1,
        "sequential requests reuse one connection"
    );

    // Concurrent clients need a connection each at most, and keep reusing them.
    let rounds = (0..8).map(|c| async move {
        for i in 0..10 {
            let r = get(addr, "app.test", &format!("/par/{c}/{i}")).await;
            assert_eq!(r.status, 200);
        }
    });
    futures_util::future::join_all(rounds).await;
    assert_eq!(root.count(), 110);
    assert!(
        root.connections() <= 1 + 8,
        "{} backend connections for 8 concurrent clients",
        root.connections()
    );
}

#[tokio::test]
async fn host_header_follows_preserve_host() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let p = Proxy::start(&config(&root, &api, ""), &[]).await;
    let addr = p.addr("web");
    get(addr, "app.test", "/plain").await;
    assert_eq!(root.last().header("host").unwrap(), root.addr.to_string());
    get(addr, "app.test", "/kept/x").await;
    assert_eq!(root.last().header("host"), Some("app.test"));
    assert_eq!(root.last().uri, "/kept/x");
}

#[tokio::test]
async fn forwarding_headers_are_set_and_spoofs_dropped() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let p = Proxy::start(&config(&root, &api, ""), &[]).await;
    let req = Request::get("/h")
        .header("host", "app.test")
        .header("x-forwarded-for", "6.6.6.6")
        .header("forwarded", "for=6.6.6.6")
        .header("x-request-id", "spoofed")
        .header("connection", "keep-alive, x-hop")
        .header("x-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("x-end", "kept")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(p.addr("web"), req).await;
    let seen = root.last();
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-forwarded-host"), Some("app.test"));
    assert_eq!(seen.header("via"), Some("1.1 wasmgate"));
    assert!(seen.header("forwarded").is_none());
    assert_ne!(seen.header("x-request-id"), Some("spoofed"));
    assert_eq!(seen.header("x-request-id").unwrap().len(), 16);
    for hop in ["x-hop", "keep-alive", "te"] {
        assert!(seen.header(hop).is_none(), "{hop} crossed the proxy");
    }
    assert_eq!(seen.header("x-end"), Some("kept"));
}

#[tokio::test]
async fn trusted_proxies_may_extend_the_chain() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let cfg = format!(
        "trusted_proxies = [\"127.0.0.1/32\"]\n{}",
        config(&root, &api, "")
    );
    let p = Proxy::start(&cfg, &[]).await;
    let req = Request::get("/h")
        .header("host", "app.test")
        .header("x-forwarded-for", "203.0.113.9")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "from-the-edge")
        .body(Full::new(Bytes::new()))
        .unwrap();
    send(p.addr("web"), req).await;
    let seen = root.last();
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
    assert_eq!(seen.header("x-request-id"), Some("from-the-edge"));
}

#[tokio::test]
async fn backend_redirects_and_cookies_are_mapped_back() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let p = Proxy::start(&config(&root, &api, ""), &[]).await;
    let addr = p.addr("web");
    let to = format!("{}/v1/done?ok=1", api.url());
    let r = get(addr, "app.test", &format!("/api/redirect?to={to}")).await;
    assert_eq!(r.status, 302);
    assert_eq!(r.header("location"), Some("http://app.test/api/done?ok=1"));

    let r = get(addr, "app.test", "/redirect?to=http://elsewhere.test/x").await;
    assert_eq!(
        r.header("location"),
        Some("http://elsewhere.test/x"),
        "foreign URLs stay"
    );

    let r = get(addr, "app.test", "/api/cookie?path=/v1/").await;
    assert_eq!(r.header("set-cookie"), Some("sid=1; Path=/api/; HttpOnly"));
    let r = get(addr, "app.test", "/api/cookie?path=/other/").await;
    assert_eq!(
        r.header("set-cookie"),
        Some("sid=1; Path=/other/; HttpOnly"),
        "paths outside the backend stay"
    );
}

#[tokio::test]
async fn unknown_hosts_get_404_or_the_default_site() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let p = Proxy::start(&config(&root, &api, ""), &[]).await;
    let r = get(p.addr("web"), "nobody.test", "/").await;
    assert_eq!(r.status, 404);
    assert!(r.text().contains("no site"), "{}", r.text());
    drop(p);

    let p = Proxy::start(&config(&root, &api, "default = true"), &[]).await;
    let r = get(p.addr("web"), "nobody.test", "/fallback").await;
    assert_eq!(r.status, 200);
    assert_eq!(root.last().uri, "/fallback");
}

#[tokio::test]
async fn backend_refused_is_502_and_slow_is_504() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let cfg = config(&root, &api, "").replace(&root.url(), &format!("http://{dead}"));
    let p = Proxy::start(&cfg, &[]).await;
    let r = get(p.addr("web"), "app.test", "/x").await;
    assert_eq!(r.status, 502, "{}", r.text());

    let started = std::time::Instant::now();
    let r = get(p.addr("web"), "app.test", "/api/slow?ms=3000").await;
    assert_eq!(r.status, 504);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the 300ms response timeout was not applied"
    );
}

#[tokio::test]
async fn bodies_stream_both_ways_and_are_limited() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let p = Proxy::start(&config(&root, &api, ""), &[]).await;
    let addr = p.addr("web");

    let body = Bytes::from(vec![b'a'; 60 * 1024]);
    let req = Request::post("/upload")
        .header("host", "app.test")
        .body(Full::new(body.clone()))
        .unwrap();
    let r = send(addr, req).await;
    assert_eq!(r.json()["body_len"], 60 * 1024);
    assert_eq!(root.last().body, body);

    let r = get(addr, "app.test", "/big?n=4194304").await;
    assert_eq!(r.body.len(), 4 << 20);

    let req = Request::post("/upload")
        .header("host", "app.test")
        .body(Full::new(Bytes::from(vec![b'a'; 65 * 1024])))
        .unwrap();
    let r = send(addr, req).await;
    assert_eq!(r.status, 413);

    // Chunked, no Content-Length: the limit still holds while streaming.
    let mut raw_req =
        b"POST /chunked HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..70 {
        raw_req.extend_from_slice(b"400\r\n");
        raw_req.extend_from_slice(&[b'b'; 1024]);
        raw_req.extend_from_slice(b"\r\n");
    }
    raw_req.extend_from_slice(b"0\r\n\r\n");
    let out = raw(addr, &raw_req, Duration::from_secs(3)).await;
    assert!(out.starts_with("HTTP/1.1 413"), "{out}");
    assert!(root.seen().iter().all(|s| s.body.len() <= 64 * 1024));
}

#[tokio::test]
async fn malformed_and_oversized_requests_get_400_and_431() {
    let (_g, logs) = wasmgate_tests::capture_logs();
    let (root, api) = (Backend::start().await, Backend::start().await);
    let p = Proxy::start(&config(&root, &api, ""), &[]).await;
    let addr = p.addr("web");
    let out = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nBad Header\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: app.test\r\nX-Big: {}\r\n\r\n",
        "y".repeat(40 * 1024)
    );
    let out = raw(addr, big.as_bytes(), Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 431"), "{out}");
    let out = raw(addr, b"GET / HTTP/1.1\r\n\r\n", Duration::from_secs(2)).await;
    assert!(out.starts_with("HTTP/1.1 400"), "missing Host: {out}");
    let out = raw(
        addr,
        b"GET /../etc/passwd HTTP/1.1\r\nHost: app.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    let out = raw(
        addr,
        b"GET / HTTP/1.1\r\nHost: app.test\r\nHost: other.test\r\n\r\n",
        Duration::from_secs(2),
    )
    .await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(root.count(), 0, "nothing malformed reached the backend");
    // The two hyper answered on its own (the bad header line, the 40 KiB head) have access lines
    // too, with the kind of refusal; method and path were never read.
    let codec = |text: &str, kind: &str, status: &str| {
        text.lines().any(|l| {
            l.contains("wasmgate::access: - - ")
                && l.contains(&format!("status={status}"))
                && l.contains(&format!("error={kind}"))
        })
    };
    wasmgate_tests::eventually("access lines for the parser's refusals", || async {
        let text = logs.text();
        codec(&text, "bad_request", "400") && codec(&text, "header_too_large", "431")
    })
    .await;
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let (root, api) = (Backend::start().await, Backend::start().await);
    let mut p = Proxy::start(&config(&root, &api, ""), &[]).await;
    let addr = p.addr("web");
    // Backend connections left idle in the pool: their drivers are in the task set shutdown waits
    // for, so they must close when draining starts rather than hold it for the whole grace period.
    let warm: Vec<_> = (0..4)
        .map(|_| tokio::spawn(async move { get(addr, "app.test", "/slow?ms=50").await }))
        .collect();
    for w in warm {
        assert_eq!(w.await.unwrap().status, 200);
    }
    let inflight = tokio::spawn(async move { get(addr, "app.test", "/slow?ms=400").await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = p.server.take().unwrap();
    let started = std::time::Instant::now();
    server.shutdown_with_grace(Duration::from_secs(10)).await;
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "slow");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited {:?}: something idle held it",
        started.elapsed()
    );
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting after shutdown"
    );
}

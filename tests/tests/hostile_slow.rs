//! Slow and idle clients: slowloris heads, idle keep-alive connections, stalled and trickling request
//! bodies. Each must be closed by a timeout while ordinary clients keep being served.
//!
//! The timeouts (see `host/src/server.rs`, `idle_watchdog`):
//! - `timeouts.header_read`: a request head must be complete this long after the connection was
//!   accepted (first request) or after its first byte (later requests); a TLS handshake too.
//! - `timeouts.keepalive`: after a response, the next request must start within this long.
//! - request bodies: while the backend waits for the body, the route's `timeouts.response` bounds it
//!   (504, connection closed); once the response is sent, a body still trickling in is held to
//!   `header_read` from its next byte (or `keepalive` if nothing comes), then the connection is closed.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use wasmgate_tests::backend::Backend;
use wasmgate_tests::client::get;
use wasmgate_tests::proxy::{app_config, Proxy};
use wasmgate_tests::raw_backend::{Fault, RawBackend};
use wasmgate_tests::wire::{read_responses, Wait};

fn config(backend: &str, header_read: &str, keepalive: &str) -> String {
    app_config(
        &format!(r#"timeouts = {{ header_read = "{header_read}", keepalive = "{keepalive}" }}"#),
        &format!(
            r#"
[[site.route]]
path = "/"
backend = "{backend}/"
timeouts = {{ response = "1s" }}"#
        ),
    )
}

/// Wait until the peer closes the connection (or `limit` passes); returns when, from `since`.
async fn closed_after(s: &mut TcpStream, since: Instant, limit: Duration) -> Option<Duration> {
    let mut b = [0u8; 4096];
    let end = Instant::now() + limit;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(since.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// A slowloris client: an endless head, one header line every `every`, until the proxy closes it
/// (at most `max` lines). Returns when the proxy closed the connection, from connect.
async fn slowloris(addr: SocketAddr, every: Duration, max: usize) -> Option<Duration> {
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).await.ok()?;
    if s.write_all(b"GET / HTTP/1.1\r\nHost: app.test\r\n")
        .await
        .is_err()
    {
        return Some(start.elapsed());
    }
    let mut b = [0u8; 1024];
    for i in 0..max {
        tokio::select! {
            r = s.read(&mut b) => match r {
                Ok(0) | Err(_) => return Some(start.elapsed()),
                Ok(_) => {}
            },
            _ = tokio::time::sleep(every) => {
                if s.write_all(format!("X-Slow-{i}: x\r\n").as_bytes()).await.is_err() {
                    return Some(start.elapsed());
                }
            }
        }
    }
    None
}

fn in_range(what: &str, got: Option<Duration>, lo_ms: u64, hi_ms: u64) {
    let got = got.unwrap_or_else(|| panic!("{what}: the connection was never closed"));
    assert!(
        got >= Duration::from_millis(lo_ms) && got <= Duration::from_millis(hi_ms),
        "{what}: closed after {got:?}, want {lo_ms}..{hi_ms} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_sockets_are_closed_while_others_are_served() {
    let be = Backend::start().await;
    let p = Proxy::start(&config(&be.url(), "1s", "5s"), &[]).await;
    let addr = p.addr("web");
    let slow: Vec<_> = (0..50)
        .map(|_| tokio::spawn(slowloris(addr, Duration::from_millis(150), 40)))
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let start = Instant::now();
    let mut ok = 0;
    for i in 0..100 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            get(addr, "app.test", &format!("/ok/{i}")),
        )
        .await
        .expect("a normal client hung behind the slow ones");
        if r.status == 200 {
            ok += 1;
        }
    }
    assert_eq!(ok, 100, "normal clients must all be served");
    assert!(start.elapsed() < Duration::from_secs(10));
    for (i, t) in slow.into_iter().enumerate() {
        in_range(
            &format!("slowloris socket {i}"),
            t.await.unwrap(),
            900,
            2600,
        );
    }
    assert_eq!(be.count(), 100, "no slow head reached the backend");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_header_read() {
    let be = Backend::start().await;
    let p = Proxy::start(&config(&be.url(), "1s", "5s"), &[]).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    in_range(
        "silent connection",
        closed_after(&mut s, start, Duration::from_secs(5)).await,
        900,
        2000,
    );
}

/// Send one request on `s` and read its response.
async fn request(s: &mut TcpStream, path: &str) -> u16 {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: app.test\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let ex = read_responses(
        s,
        Wait {
            first: Duration::from_secs(3),
            more: Duration::from_millis(1),
        },
        Instant::now(),
    )
    .await;
    ex.statuses().first().copied().unwrap_or(0)
}

#[tokio::test]
async fn idle_keepalive_is_its_own_timeout_longer_than_header_read() {
    let be = Backend::start().await;
    let p = Proxy::start(&config(&be.url(), "700ms", "2s"), &[]).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    assert_eq!(request(&mut s, "/1").await, 200);
    // Idle for longer than header_read but less than keepalive: still open, still served.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        request(&mut s, "/2").await,
        200,
        "keepalive (2s), not header_read (700ms), governs idle time"
    );
    let idle = Instant::now();
    in_range(
        "idle keep-alive connection",
        closed_after(&mut s, idle, Duration::from_secs(5)).await,
        1900,
        3000,
    );
}

#[tokio::test]
async fn idle_keepalive_shorter_than_header_read() {
    let be = Backend::start().await;
    let p = Proxy::start(&config(&be.url(), "5s", "500ms"), &[]).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    assert_eq!(request(&mut s, "/1").await, 200);
    let idle = Instant::now();
    in_range(
        "idle keep-alive connection",
        closed_after(&mut s, idle, Duration::from_secs(5)).await,
        450,
        1500,
    );
}

#[tokio::test]
async fn a_slow_second_head_gets_header_read_from_its_first_byte() {
    let be = Backend::start().await;
    let p = Proxy::start(&config(&be.url(), "1s", "5s"), &[]).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    assert_eq!(request(&mut s, "/1").await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let first_byte = Instant::now();
    s.write_all(b"GET /2 HTTP/1.1\r\n").await.unwrap();
    in_range(
        "slow second head",
        closed_after(&mut s, first_byte, Duration::from_secs(5)).await,
        900,
        2000,
    );
    assert_eq!(be.count(), 1);
}

#[tokio::test]
async fn a_stalled_body_the_backend_waits_for_ends_in_504_and_a_close() {
    let be = Backend::start().await;
    let p = Proxy::start(&config(&be.url(), "1s", "5s"), &[]).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    // Trickle a byte now and then; the backend waits for all 100.
    let mut got = Vec::new();
    let mut b = [0u8; 4096];
    let mut closed = None;
    for _ in 0..30 {
        tokio::select! {
            r = s.read(&mut b) => match r {
                Ok(0) | Err(_) => { closed = Some(start.elapsed()); break; }
                Ok(n) => got.extend_from_slice(&b[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => { let _ = s.write_all(b"x").await; }
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 504"), "want a 504, got {text:?}");
    in_range("stalled-body connection", closed, 900, 2500);
}

#[tokio::test]
async fn a_stalled_body_after_an_early_response_is_closed() {
    let be = RawBackend::start(Fault::AnswerBeforeBody).await;
    let p = Proxy::start(&config(&be.url(), "1s", "2s"), &[]).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 1000\r\n\r\n0123456789")
        .await
        .unwrap();
    let ex = read_responses(
        &mut s,
        Wait {
            first: Duration::from_secs(3),
            more: Duration::from_millis(1),
        },
        Instant::now(),
    )
    .await;
    assert_eq!(
        ex.statuses(),
        [200],
        "the backend's early answer is passed on"
    );
    // Then nothing more comes: the rest of the body never does. Closed after keepalive (+ close grace).
    let idle = Instant::now();
    in_range(
        "stalled body after the response",
        closed_after(&mut s, idle, Duration::from_secs(6)).await,
        1900,
        3200,
    );
    // The backend connection the body was streaming to is released too.
    let t = Instant::now();
    while be.open() > 0 && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(be.open(), 0, "the upstream connection was left open");
}

#[tokio::test]
async fn a_trickling_body_after_an_early_response_is_closed() {
    let be = RawBackend::start(Fault::AnswerBeforeBody).await;
    let p = Proxy::start(&config(&be.url(), "1s", "5s"), &[]).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\n0123456789")
        .await
        .unwrap();
    let ex = read_responses(
        &mut s,
        Wait {
            first: Duration::from_secs(3),
            more: Duration::from_millis(1),
        },
        Instant::now(),
    )
    .await;
    assert_eq!(ex.statuses(), [200]);
    // One byte every 100 ms forever: held to header_read from the first of them (+ close grace).
    let start = Instant::now();
    let mut b = [0u8; 64];
    let mut closed = None;
    for _ in 0..60 {
        tokio::select! {
            r = s.read(&mut b) => if matches!(r, Ok(0) | Err(_)) { closed = Some(start.elapsed()); break; },
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                if s.write_all(b"x").await.is_err() { closed = Some(start.elapsed()); break; }
            }
        }
    }
    in_range("trickling body after the response", closed, 900, 2500);
}

#[tokio::test]
async fn a_tls_handshake_that_never_comes_is_closed_after_header_read() {
    let be = Backend::start().await;
    let ca = wasmgate_tests::certs::TestCa::new("hostile test CA");
    let leaf = ca.leaf(&["app.test"]);
    let dir = tempfile::tempdir().unwrap();
    leaf.write(dir.path(), "app");
    let cfg = format!(
        r#"
timeouts = {{ header_read = "1s", keepalive = "5s" }}

[[listener]]
name = "tls"
bind = "127.0.0.1:0"
tls = true

[[site]]
name = "app"
listeners = ["tls"]
hosts = ["app.test"]
tls = {{ cert = "app.crt", key = "app.key" }}

[[site.route]]
path = "/"
backend = "{}/"
"#,
        be.url()
    );
    let p = Proxy::start_in(dir, &cfg).await;
    let start = Instant::now();
    let mut s = TcpStream::connect(p.addr("tls")).await.unwrap();
    // Half a ClientHello record header, then silence.
    s.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    in_range(
        "stalled TLS handshake",
        closed_after(&mut s, start, Duration::from_secs(5)).await,
        900,
        2000,
    );
}

// ── the long run: 1,000 slow clients (scripts/hostile-long) ──

/// A normal client making requests for `dur`; returns (successes, failures).
async fn steady_client(addr: SocketAddr, dur: Duration) -> (usize, usize) {
    let end = Instant::now() + dur;
    let (mut ok, mut bad) = (0, 0);
    let mut i = 0;
    while Instant::now() < end && i < 100_000 {
        i += 1;
        match tokio::time::timeout(
            Duration::from_secs(5),
            get(addr, "app.test", &format!("/steady/{i}")),
        )
        .await
        {
            Ok(r) if r.status == 200 => ok += 1,
            _ => bad += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (ok, bad)
}

fn slow_count() -> usize {
    std::env::var("HOSTILE_SLOW")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: scripts/hostile-long"]
async fn a_thousand_slowloris_heads() {
    let n = slow_count();
    let be = Backend::start().await;
    let p = Proxy::start(&config(&be.url(), "3s", "5s"), &[]).await;
    let addr = p.addr("web");
    let slow: Vec<_> = (0..n)
        .map(|_| tokio::spawn(slowloris(addr, Duration::from_millis(500), 40)))
        .collect();
    let (ok, bad) = steady_client(addr, Duration::from_secs(6)).await;
    let mut closed = Vec::new();
    for t in slow {
        closed.push(t.await.unwrap());
    }
    let never = closed.iter().filter(|c| c.is_none()).count();
    let mut times: Vec<Duration> = closed.into_iter().flatten().collect();
    times.sort();
    let pct = |q: f64| {
        times
            .get(((times.len() as f64 - 1.0) * q) as usize)
            .copied()
            .unwrap_or_default()
    };
    eprintln!(
        "HOSTILE-RESULT slowloris heads: {n} sockets, steady client {ok} ok / {bad} failed, closed after p0 {:?} p50 {:?} p100 {:?}, never closed {never}",
        pct(0.0),
        pct(0.5),
        pct(1.0)
    );
    assert_eq!(bad, 0);
    assert!(ok > 50);
    assert_eq!(never, 0);
    assert!(pct(0.0) >= Duration::from_millis(2900) && pct(1.0) <= Duration::from_secs(6));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long run: scripts/hostile-long"]
async fn a_thousand_slow_bodies() {
    let n = slow_count();
    let be = Backend::start().await;
    let p = Proxy::start(&config(&be.url(), "3s", "5s"), &[]).await;
    let addr = p.addr("web");
    // Half trickle a byte every 200 ms, half stall after two bytes, into a backend that waits for the
    // whole body: the route's 1 s response timeout answers 504 and closes each; none may starve the
    // steady client.
    let slow: Vec<_> = (0..n)
        .map(|i| {
            tokio::spawn(async move {
                let start = Instant::now();
                let mut s = TcpStream::connect(addr).await.ok()?;
                s.write_all(format!("POST /upload/{i} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\nxx").as_bytes()).await.ok()?;
                let mut b = [0u8; 1024];
                for _ in 0..60 {
                    tokio::select! {
                        r = s.read(&mut b) => if matches!(r, Ok(0) | Err(_)) { return Some(start.elapsed()) },
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {
                            if i % 2 == 0 && s.write_all(b"y").await.is_err() { return Some(start.elapsed()) }
                        }
                    }
                }
                None
            })
        })
        .collect();
    let (ok, bad) = steady_client(addr, Duration::from_secs(5)).await;
    let mut closed = Vec::new();
    for t in slow {
        closed.push(t.await.unwrap());
    }
    let never = closed.iter().filter(|c| c.is_none()).count();
    let worst = closed.iter().flatten().max().copied().unwrap_or_default();
    eprintln!("HOSTILE-RESULT slow bodies: {n} sockets, steady client {ok} ok / {bad} failed, all closed by {worst:?}, never closed {never}");
    assert_eq!(bad, 0);
    assert_eq!(never, 0);
    assert!(worst <= Duration::from_secs(8));
}

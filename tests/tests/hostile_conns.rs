//! Hostile connections while a request is in flight: a client that stops reading its response, a
//! request body that stalls or trickles, a malformed chunked body, a backend that goes silent in the
//! middle of its body; the per-client-address connection limit; and the gradual drain of idle
//! keep-alive connections on shutdown.
//!
//! The timeouts (see `host/src/watchdog.rs` and `proxy::body::ClientBody`):
//! - `timeouts.io`: a response the client stopped taking, or a request body the client stopped
//!   sending, for this long → the connection is closed (response) or answered 408 (body);
//! - `limits.min_rate` over `limits.min_rate_window`: the least rate while we wait on the client;
//! - the route's `timeouts.idle`: silence from the backend in the middle of its body → cut.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use wasmgate_tests::backend::Backend;
use wasmgate_tests::capture_logs;
use wasmgate_tests::client::get;
use wasmgate_tests::proxy::{app_config, write, Proxy};
use wasmgate_tests::raw_backend::{End, Fault, RawBackend};
use wasmgate_tests::wire::{read_responses, Wait};

fn config(backend: &str, top: &str, route: &str) -> String {
    app_config(
        top,
        &format!(
            r#"
[[site.route]]
path = "/"
backend = "{backend}/"
{route}"#
        ),
    )
}

/// Connect to `addr` from the loopback address `from` (127.0.0.2 is a second client on Linux).
async fn connect_from(from: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from.parse::<IpAddr>().unwrap(), 0))?;
    s.connect(addr).await
}

/// Wait until the peer closes (EOF or reset), reading and discarding; `None` if `limit` passes.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<(Duration, usize)> {
    let start = Instant::now();
    let mut b = vec![0u8; 64 * 1024];
    let mut total = 0;
    loop {
        let left = limit.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, s.read(&mut b)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some((start.elapsed(), total)),
            Ok(Ok(n)) => total += n,
        }
    }
}

async fn one_request(s: &mut TcpStream, head: &str) -> Vec<u16> {
    s.write_all(head.as_bytes()).await.unwrap();
    read_responses(
        s,
        Wait {
            first: Duration::from_secs(5),
            more: Duration::from_millis(50),
        },
        Instant::now(),
    )
    .await
    .statuses()
}

fn tenant_operator(top: &str) -> String {
    format!(
        r#"
tenants_dir = "tenants"
{top}

[tenant_limits.acme]
max_requests = 1
# The backend is on loopback, which tenant egress refuses unless allowed.
backends = ["127.0.0.0/8"]

[[listener]]
name = "web"
bind = "127.0.0.1:0"
"#
    )
}

/// The reproduction: a client asks for a large response and stops reading. Before, it held its
/// connection and its tenant's `max_requests` slot forever; now it is cut after `timeouts.io` and the
/// slot is free again.
#[tokio::test]
async fn a_client_that_stops_reading_is_cut_and_its_tenant_slot_freed() {
    let b = Backend::start().await;
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        "tenants/acme/tenant.toml",
        format!(
            "[[site]]\nname = \"shop\"\nlisteners = [\"web\"]\nhosts = [\"acme.test\"]\n\n[[site.route]]\npath = \"/\"\nbackend = \"{}/\"\n",
            b.url()
        )
        .as_bytes(),
    );
    let (_g, logs) = capture_logs();
    let p = Proxy::start_in(dir, &tenant_operator("timeouts = { io = \"1s\" }")).await;
    let addr = p.addr("web");

    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /big?n=33554432 HTTP/1.1\r\nHost: acme.test\r\n\r\n")
        .await
        .unwrap();
    let mut head = [0u8; 512];
    let n = stalled.read(&mut head).await.unwrap();
    assert!(head[..n].starts_with(b"HTTP/1.1 200"), "{:?}", &head[..n]);
    let stopped = Instant::now();
    // The stalled response holds the tenant's only slot...
    assert_eq!(get(addr, "acme.test", "/other").await.status, 503);
    // ...until timeouts.io of no progress cuts it.
    let freed = loop {
        let r = get(addr, "acme.test", "/other").await;
        if r.status == 200 {
            break stopped.elapsed();
        }
        assert_eq!(r.status, 503);
        assert!(
            stopped.elapsed() < Duration::from_secs(6),
            "the slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        freed >= Duration::from_millis(900) && freed < Duration::from_millis(3500),
        "slot freed after {freed:?}, want about timeouts.io (1s) .. 2 × it"
    );
    // The stalled connection itself was closed: what was buffered, then EOF — far from 32 MiB.
    let (_, got) = closed_within(&mut stalled, Duration::from_secs(10))
        .await
        .expect("the stalled connection was not closed");
    assert!(got < 30 << 20, "read {got} bytes: the response was not cut");
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("GET /big 200"))
        .unwrap_or_else(|| panic!("no access line for the cut response:\n{text}"));
    assert!(line.contains("complete=false"), "{line}");
}

/// A fast client of a large response is not touched by `timeouts.io`, however long it takes.
#[tokio::test]
async fn a_reading_client_is_never_cut_by_the_io_timeout() {
    let b = Backend::start().await;
    let p = Proxy::start(&config(&b.url(), "timeouts = { io = \"1s\" }", ""), &[]).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"GET /big?n=16777216 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    // Read slowly but steadily: 64 KiB every 10 ms (~6 MiB/s, so ~3 s in all). The socket buffers
    // (MiBs on loopback) make the proxy's writes bursty, but no gap comes near 1 s.
    let mut total = 0;
    let mut b = vec![0u8; 64 * 1024];
    loop {
        match s.read(&mut b).await {
            Ok(0) => break,
            Ok(n) => total += n,
            Err(e) => panic!("cut after {total} bytes: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(total > 16 << 20, "got {total} bytes of 16 MiB");
}

#[tokio::test]
async fn a_stalled_request_body_gets_408_after_timeouts_io() {
    let b = Backend::start().await;
    let (_g, logs) = capture_logs();
    let p = Proxy::start(
        &config(
            &b.url(),
            "timeouts = { io = \"1s\" }",
            "timeouts = { response = \"30s\" }",
        ),
        &[],
    )
    .await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    let start = Instant::now();
    s.write_all(
        b"POST /stalled-body HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100\r\n\r\n0123456789",
    )
    .await
    .unwrap();
    let ex = read_responses(
        &mut s,
        Wait {
            first: Duration::from_secs(5),
            more: Duration::from_millis(200),
        },
        start,
    )
    .await;
    assert_eq!(ex.statuses(), [408], "{ex:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        closed_within(&mut s, Duration::from_secs(3))
            .await
            .is_some(),
        "the connection stays open after a 408 for a body that never came"
    );
    let text = logs.text();
    assert!(
        text.lines().any(
            |l| l.contains("POST /stalled-body 408") && l.contains("error=client_body_timeout")
        ),
        "{text}"
    );
    assert!(
        b.seen().iter().all(|r| r.body.len() < 100),
        "the backend never got a whole request"
    );
}

/// A slowloris body: a byte every 200 ms never trips the 5 s io timeout, but is below
/// `min_rate = "1KiB/s"`, judged over a 2 s window.
#[tokio::test]
async fn a_trickling_request_body_below_min_rate_gets_408() {
    let b = Backend::start().await;
    let (_g, logs) = capture_logs();
    let p = Proxy::start(
        &config(
            &b.url(),
            "timeouts = { io = \"5s\" }\nlimits = { min_rate = \"1KiB/s\", min_rate_window = \"2s\" }",
            "timeouts = { response = \"30s\" }",
        ),
        &[],
    )
    .await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    let start = Instant::now();
    s.write_all(b"POST /trickle HTTP/1.1\r\nHost: app.test\r\nContent-Length: 100000\r\n\r\nxx")
        .await
        .unwrap();
    let mut got = Vec::new();
    let mut b2 = [0u8; 4096];
    for _ in 0..50 {
        tokio::select! {
            r = s.read(&mut b2) => match r {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b2[..n]),
            },
            _ = tokio::time::sleep(Duration::from_millis(200)) => {
                if s.write_all(b"y").await.is_err() { break; }
            }
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    let logs = logs.text();
    assert!(
        logs.lines()
            .any(|l| l.contains("POST /trickle 408") && l.contains("error=client_body_too_slow")),
        "{logs}"
    );
}

/// A body that keeps up with `min_rate` passes, and so does one the backend is slow to read.
#[tokio::test]
async fn a_body_at_the_minimum_rate_passes() {
    let b = Backend::start().await;
    let p = Proxy::start(
        &config(
            &b.url(),
            "timeouts = { io = \"1s\" }\nlimits = { min_rate = \"1KiB/s\", min_rate_window = \"1s\" }",
            "",
        ),
        &[],
    )
    .await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    s.write_all(b"POST /steady HTTP/1.1\r\nHost: app.test\r\nContent-Length: 6144\r\n\r\n")
        .await
        .unwrap();
    // 2 KiB every 500 ms: 4 KiB/s for 1.5 s.
    for _ in 0..3 {
        s.write_all(&[b'z'; 2048]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let ex = read_responses(
        &mut s,
        Wait {
            first: Duration::from_secs(5),
            more: Duration::from_millis(50),
        },
        Instant::now(),
    )
    .await;
    assert_eq!(ex.statuses(), [200]);
    assert_eq!(b.last().body.len(), 6144);
}

/// Bad chunked framing is the client's fault: 400, not the 502 it used to be.
#[tokio::test]
async fn a_malformed_chunked_body_is_a_400() {
    let b = Backend::start().await;
    let (_g, logs) = capture_logs();
    let p = Proxy::start(&config(&b.url(), "", ""), &[]).await;
    for (i, body) in [
        "zz\r\nhello\r\n0\r\n\r\n",             // not a hex size
        "5\r\nhelloXX0\r\n\r\n",                // no CRLF after the chunk
        "ffffffffffffffffff\r\nx\r\n0\r\n\r\n", // size overflows
    ]
    .iter()
    .enumerate()
    {
        let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
        let statuses = one_request(
            &mut s,
            &format!(
                "POST /chunked-{i} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n{body}"
            ),
        )
        .await;
        assert_eq!(statuses, [400], "case {i}: {body:?}");
    }
    let text = logs.text();
    assert!(
        text.lines()
            .any(|l| l.contains("POST /chunked-0 400") && l.contains("error=bad_request_body")),
        "{text}"
    );
    // A good chunked body still passes.
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    let ok = one_request(
        &mut s,
        "POST /chunked-ok HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(ok, [200]);
}

/// A backend that sends its head and part of its body, then nothing: cut after the route's
/// `timeouts.idle`, and the access line says why.
#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_after_idle() {
    let be = RawBackend::start(Fault::Raw(
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789".to_vec(),
        End::Hold,
    ))
    .await;
    let (_g, logs) = capture_logs();
    let p = Proxy::start(&config(&be.url(), "", "timeouts = { idle = \"1s\" }"), &[]).await;
    let mut s = TcpStream::connect(p.addr("web")).await.unwrap();
    let start = Instant::now();
    s.write_all(b"GET /stalls HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let (took, got) = closed_within(&mut s, Duration::from_secs(6))
        .await
        .expect("the client's connection was never closed");
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(got < 200, "the head and 10 bytes, then the cut: {got}");
    let _ = start;
    let text = logs.text();
    let line = text
        .lines()
        .find(|l| l.contains("GET /stalls 200"))
        .unwrap_or_else(|| panic!("no access line:\n{text}"));
    assert!(
        line.contains("error=upstream_body_idle") && line.contains("complete=false"),
        "{line}"
    );
    // The backend's connection is not kept for reuse.
    let t = Instant::now();
    while be.open() > 0 && t.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(be.open(), 0);
}

/// `limits.max_connections_per_ip`: the N+1th connection from 127.0.0.1 is closed unanswered while
/// 127.0.0.2 is served; closing one frees a place.
#[tokio::test]
async fn connections_per_client_address_are_capped() {
    let b = Backend::start().await;
    let p = Proxy::start(
        &config(&b.url(), "limits = { max_connections_per_ip = 2 }", ""),
        &[],
    )
    .await;
    let addr = p.addr("web");
    let head = "GET /kept HTTP/1.1\r\nHost: app.test\r\n\r\n";
    let mut first = connect_from("127.0.0.1", addr).await.unwrap();
    let mut second = connect_from("127.0.0.1", addr).await.unwrap();
    assert_eq!(one_request(&mut first, head).await, [200]);
    assert_eq!(one_request(&mut second, head).await, [200]);

    let mut third = connect_from("127.0.0.1", addr).await.unwrap();
    let _ = third.write_all(head.as_bytes()).await;
    let ex = read_responses(
        &mut third,
        Wait {
            first: Duration::from_secs(2),
            more: Duration::from_millis(50),
        },
        Instant::now(),
    )
    .await;
    assert!(ex.responses.is_empty(), "the third connection was served");
    assert_ne!(ex.closed, wasmgate_tests::wire::Closed::Open);

    let mut other = connect_from("127.0.0.2", addr).await.unwrap();
    assert_eq!(
        one_request(&mut other, head).await,
        [200],
        "another address is not limited"
    );

    // The kept ones still work; closing one lets a new one in.
    assert_eq!(one_request(&mut first, head).await, [200]);
    drop(second);
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let mut again = connect_from("127.0.0.1", addr).await.unwrap();
        if one_request(&mut again, head).await == [200] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection's place was not freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Shutdown (SIGTERM, or the predecessor in a handover) keeps an idle keep-alive connection open
/// for a moment: a request sent on it then is answered, with `Connection: close`; a connection that
/// stays idle is closed after about a second.
#[tokio::test]
async fn draining_answers_the_next_request_on_an_idle_connection_with_close() {
    let b = Backend::start().await;
    let mut p = Proxy::start(&config(&b.url(), "", ""), &[]).await;
    let addr = p.addr("web");
    let mut busy = TcpStream::connect(addr).await.unwrap();
    let mut idle = TcpStream::connect(addr).await.unwrap();
    let head = "GET /before HTTP/1.1\r\nHost: app.test\r\n\r\n";
    assert_eq!(one_request(&mut busy, head).await, [200]);
    assert_eq!(one_request(&mut idle, head).await, [200]);

    let server = p.server.take().unwrap();
    let drained = Instant::now();
    let drain = tokio::spawn(server.shutdown_with_grace(Duration::from_secs(10)));
    tokio::time::sleep(Duration::from_millis(300)).await;
    busy.write_all(b"GET /during HTTP/1.1\r\nHost: app.test\r\n\r\n")
        .await
        .unwrap();
    let ex = read_responses(
        &mut busy,
        Wait {
            first: Duration::from_secs(3),
            more: Duration::from_millis(300),
        },
        Instant::now(),
    )
    .await;
    assert_eq!(
        ex.statuses(),
        [200],
        "a request on an idle connection during the drain"
    );
    assert_eq!(
        ex.responses[0].header("connection"),
        Some("close"),
        "{:?}",
        ex.responses[0].headers
    );
    assert_eq!(ex.closed, wasmgate_tests::wire::Closed::Fin);

    let (_, _) = closed_within(&mut idle, Duration::from_secs(5))
        .await
        .expect("an idle connection was kept open through the drain");
    let closed = drained.elapsed();
    assert!(
        closed >= Duration::from_millis(900) && closed < Duration::from_secs(3),
        "idle connection closed {closed:?} into the drain"
    );
    drain.await.unwrap();
}

//! The derivation, table by table: nodes, X-Forwarded-For walks, Forwarded walks.

use super::*;
use http::HeaderValue;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn nodes_parse_with_and_without_ports() {
    let v6 = Hop::Addr(ip("2001:db8::1"));
    for (text, want) in [
        ("192.0.2.1", Hop::Addr(ip("192.0.2.1"))),
        (" 192.0.2.1 ", Hop::Addr(ip("192.0.2.1"))),
        ("192.0.2.1:5678", Hop::Addr(ip("192.0.2.1"))),
        ("192.0.2.1:_port", Hop::Addr(ip("192.0.2.1"))),
        ("2001:db8::1", v6),
        ("[2001:db8::1]", v6),
        ("[2001:db8::1]:443", v6),
        ("unknown", Hop::Unknown),
        ("UNKNOWN:80", Hop::Unknown),
        ("_hidden", Hop::Obfuscated),
        ("_SEVKISEK:_port", Hop::Obfuscated),
        ("192.0.2.1:99999", Hop::Invalid),
        ("192.0.2.1:", Hop::Invalid),
        ("192.0.2.1:80:80", Hop::Invalid),
        ("[2001:db8::1", Hop::Invalid),
        ("[2001:db8::1]x", Hop::Invalid),
        ("[192.0.2.1]", Hop::Invalid),
        ("fe80::1%eth0", Hop::Invalid),
        ("example.com", Hop::Invalid),
        ("_", Hop::Invalid),
        ("_a b", Hop::Invalid),
        ("", Hop::Invalid),
    ] {
        assert_eq!(parse_node(text), want, "{text:?}");
    }
}

fn headers(name: &str, lines: &[&str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for l in lines {
        h.append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(l).unwrap(),
        );
    }
    h
}

/// (trusted, peer, lines, client, chain forwarded to the backend)
type Case<'a> = (&'a [&'a str], &'a str, &'a [&'a str], &'a str, &'a str);

fn check(header: ClientAddressHeader, name: &str, cases: &[Case<'_>]) {
    for (nets, peer, lines, want, chain) in cases {
        let t = TrustedProxies::new(nets.iter().map(|n| n.parse().unwrap()).collect(), header);
        let c = t.client(ip(peer), &headers(name, lines));
        assert_eq!(c.ip, ip(want), "{lines:?} from {peer}");
        assert_eq!(&c.x_forwarded_for(), chain, "{lines:?} from {peer}");
    }
}

#[test]
fn x_forwarded_for_is_walked_from_the_right_over_trusted_proxies() {
    let lb: &[&str] = &["10.0.0.0/8"];
    check(
        ClientAddressHeader::XForwardedFor,
        "x-forwarded-for",
        &[
            // An untrusted peer is the client, whatever it says.
            (lb, "192.0.2.7", &["10.1.2.3"], "192.0.2.7", "192.0.2.7"),
            (lb, "10.0.0.1", &[], "10.0.0.1", "10.0.0.1"),
            (
                lb,
                "10.0.0.1",
                &["192.0.2.1"],
                "192.0.2.1",
                "192.0.2.1, 10.0.0.1",
            ),
            // A client's own left-hand entry is neither believed nor passed on.
            (
                lb,
                "10.0.0.1",
                &["6.6.6.6, 192.0.2.1"],
                "192.0.2.1",
                "192.0.2.1, 10.0.0.1",
            ),
            // Several lines are one list, in order.
            (
                lb,
                "10.0.0.1",
                &["6.6.6.6", "192.0.2.1, 10.0.0.9"],
                "192.0.2.1",
                "192.0.2.1, 10.0.0.9, 10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["192.0.2.1", "6.6.6.6"],
                "6.6.6.6",
                "6.6.6.6, 10.0.0.1",
            ),
            // Ports are dropped.
            (
                lb,
                "10.0.0.1",
                &["6.6.6.6, 192.0.2.1:5678"],
                "192.0.2.1",
                "192.0.2.1, 10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["[2001:db8::1]:443, 10.0.0.9:80"],
                "2001:db8::1",
                "2001:db8::1, 10.0.0.9, 10.0.0.1",
            ),
            // `unknown`, obfuscated and garbage stop the walk at the last trusted hop.
            (
                lb,
                "10.0.0.1",
                &["6.6.6.6, unknown, 10.0.0.9"],
                "10.0.0.9",
                "10.0.0.9, 10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["6.6.6.6, unknown"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["6.6.6.6, _hidden"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["6.6.6.6, not-an-ip"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["6.6.6.6", "1.2.3"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            // Empty list elements are nothing (RFC 9110 §5.6.1).
            (
                lb,
                "10.0.0.1",
                &["192.0.2.1, , 10.0.0.9,"],
                "192.0.2.1",
                "192.0.2.1, 10.0.0.9, 10.0.0.1",
            ),
            // Every hop trusted: the left-most is the client (nginx's real_ip_recursive).
            (
                lb,
                "10.0.0.1",
                &["10.0.0.8, 10.0.0.9"],
                "10.0.0.8",
                "10.0.0.8, 10.0.0.9, 10.0.0.1",
            ),
            // Mapped IPv6 is IPv4, for the trust check and the client alike.
            (
                lb,
                "::ffff:10.0.0.1",
                &["::ffff:192.0.2.1"],
                "192.0.2.1",
                "192.0.2.1, 10.0.0.1",
            ),
        ],
    );
}

#[test]
fn a_stopped_walk_is_logged_at_debug_with_the_client_it_settled_on() {
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let out = buf.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || out.clone())
        .finish();
    let t = TrustedProxies::new(
        vec!["10.0.0.0/8".parse().unwrap()],
        ClientAddressHeader::XForwardedFor,
    );
    let h = headers("x-forwarded-for", &["6.6.6.6, unknown, 10.0.0.9"]);
    // Tracing caches each callsite's interest process-wide. A test thread meeting this callsite
    // with no subscriber while it registers can leave "never" cached past our rebuild (seen twice
    // in full runs): ask again, a few times, until the event reaches this subscriber.
    let c = tracing::subscriber::with_default(subscriber, || {
        for _ in 0..50 {
            tracing::callsite::rebuild_interest_cache();
            let c = t.client(ip("10.0.0.1"), &h);
            if !buf.0.lock().unwrap().is_empty() {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        t.client(ip("10.0.0.1"), &h)
    });
    assert_eq!(c.ip, ip("10.0.0.9"));
    let text = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.contains("DEBUG")
            && text.contains("client=10.0.0.9")
            && text.contains("entry=unknown")
            && text.contains("last trusted hop"),
        "{text}"
    );
}

#[test]
fn a_line_that_is_not_text_stops_the_walk() {
    let t = TrustedProxies::new(
        vec!["10.0.0.0/8".parse().unwrap()],
        ClientAddressHeader::XForwardedFor,
    );
    let mut h = headers("x-forwarded-for", &["6.6.6.6"]);
    h.append(
        &X_FORWARDED_FOR,
        HeaderValue::from_bytes(b"192.0.2.1\xff").unwrap(),
    );
    assert_eq!(t.client(ip("10.0.0.1"), &h).ip, ip("10.0.0.1"));
}

#[test]
fn forwarded_is_walked_the_same_way() {
    let lb: &[&str] = &["10.0.0.0/8"];
    check(
        ClientAddressHeader::Forwarded,
        "forwarded",
        &[
            (lb, "192.0.2.7", &["for=10.1.2.3"], "192.0.2.7", "192.0.2.7"),
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6, for=192.0.2.60;proto=http;by=203.0.113.43"],
                "192.0.2.60",
                "192.0.2.60, 10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6", "For=\"[2001:db8:cafe::17]:4711\""],
                "2001:db8:cafe::17",
                "2001:db8:cafe::17, 10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["for=192.0.2.1, for=\"10.0.0.9:80\";host=\"a,b\""],
                "192.0.2.1",
                "192.0.2.1, 10.0.0.9, 10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6, for=unknown, for=10.0.0.9"],
                "10.0.0.9",
                "10.0.0.9, 10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6, for=_hidden"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            // An element that does not say whom it forwarded for hides it.
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6, proto=https"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            // Malformed: unclosed quote, two `for`, a pair without `=`.
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6, for=\"192.0.2.1"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6, for=192.0.2.1;for=192.0.2.2"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6, garbage"],
                "10.0.0.1",
                "10.0.0.1",
            ),
            (
                lb,
                "10.0.0.1",
                &["for=6.6.6.6, for=\"\\[2001:db8::2\\]\""],
                "2001:db8::2",
                "2001:db8::2, 10.0.0.1",
            ),
        ],
    );
    // The header not chosen is not read at all.
    let t = TrustedProxies::new(
        vec!["10.0.0.0/8".parse().unwrap()],
        ClientAddressHeader::Forwarded,
    );
    let h = headers("x-forwarded-for", &["192.0.2.1"]);
    assert_eq!(t.client(ip("10.0.0.1"), &h).ip, ip("10.0.0.1"));
}

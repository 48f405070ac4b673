//! Header hygiene between client and backend: hop-by-hop removal (RFC 9110 §7.6.1), the
//! `X-Forwarded-*`/`Via` family (which client address to believe is [`super::forwarded`]'s).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use wasmgate_config::ClientAddressHeader;
use wasmgate_core::conn::Scheme;
use wasmgate_runtime::forwarded::{ClientAddr, FORWARDED, X_FORWARDED_FOR};

static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Headers that describe one connection, never the message: they must not cross the proxy.
/// `HTTP2-Settings` belongs to an `Upgrade: h2c` (RFC 7540 §3.2.1) and is connection-specific even when
/// the client forgot to list it in `Connection`; a backend must never see half of an h2c upgrade.
const HOP_BY_HOP: [&HeaderName; 8] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &HTTP2_SETTINGS,
    &header::TE,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
];

/// Remove hop-by-hop headers, including every header the `Connection` header names.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // RFC 9112 §6.3: with Transfer-Encoding present, Content-Length is wrong and an intermediary must
    // drop it before forwarding. hyper's client keeps a backend's `Content-Length` next to
    // `Transfer-Encoding: chunked`; passed on, the client would be told 50 bytes and get a chunked body's
    // worth, a truncated (or, behind another hop, desynchronised) response.
    if headers.contains_key(header::TRANSFER_ENCODING) {
        headers.remove(header::CONTENT_LENGTH);
    }
    // All `Connection` values, comma-separated, may name further hop-by-hop headers.
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|list| list.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .filter(|n| !is_end_to_end_essential(n))
        .collect();
    for name in named {
        headers.remove(name);
    }
    // One pass over the (few) headers instead of a hash lookup per hop-by-hop name: the usual
    // message has none of them.
    if headers.keys().any(|n| HOP_BY_HOP.contains(&n)) {
        for name in HOP_BY_HOP {
            headers.remove(name);
        }
    }
}

/// `Connection: host` must not let a client delete the Host header the proxy relies on.
fn is_end_to_end_essential(name: &HeaderName) -> bool {
    name == header::HOST
}

/// Does a comma-separated header contain `token` (case-insensitive)?
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .map(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

/// What the proxy knows about the client side of one request.
pub struct Forwarding<'a> {
    /// Who the client is, and the chain that says so.
    pub client: &'a ClientAddr,
    /// `http` or `https`.
    pub scheme: Scheme,
    /// The Host/`:authority` the client used.
    pub authority: &'a str,
    pub request_id: &'a str,
    /// "1.1" or "2" for `Via` (anything else counts as "1.1").
    pub via_version: &'a str,
    /// The client's peer address as a header value, when the connection made it already.
    pub peer_text: Option<&'a HeaderValue>,
}

/// Add `X-Forwarded-For/-Host/-Proto`, `X-Request-Id` and `Via`. `X-Forwarded-For` is the chain the
/// client address was derived from (see [`super::forwarded`]) plus the peer, so a backend reading any
/// entry of it agrees with the proxy's plugins. From an untrusted peer, any incoming `X-Forwarded-*`
/// and `Forwarded` are dropped first: a client must not be able to claim another address.
pub fn add_forwarding(headers: &mut HeaderMap, f: &Forwarding<'_>) {
    let c = f.client;
    if c.chain.is_empty() {
        match f.peer_text {
            Some(v) => {
                headers.insert(&X_FORWARDED_FOR, v.clone());
            }
            None => {
                let mut buf = [0u8; 64];
                set(
                    headers,
                    &X_FORWARDED_FOR,
                    wasmgate_core::text::ip(c.peer, &mut buf),
                );
            }
        }
    } else {
        set(headers, &X_FORWARDED_FOR, &c.x_forwarded_for());
    }
    if c.header == ClientAddressHeader::Forwarded {
        let proto = f.scheme.as_str();
        set(headers, &FORWARDED, &c.forwarded(proto));
    }
    if c.peer_trusted {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            forwarded_host(headers, f.authority);
        }
        if !headers.contains_key(&X_FORWARDED_PROTO) {
            headers.insert(&X_FORWARDED_PROTO, scheme_value(f.scheme));
        }
    } else {
        if c.header != ClientAddressHeader::Forwarded {
            headers.remove(&FORWARDED);
        }
        forwarded_host(headers, f.authority);
        headers.insert(&X_FORWARDED_PROTO, scheme_value(f.scheme));
    }
    set(headers, &X_REQUEST_ID, f.request_id);
    let via = if f.via_version == "2" {
        "2 wasmgate"
    } else {
        "1.1 wasmgate"
    };
    match headers.get(header::VIA).and_then(|v| v.to_str().ok()) {
        Some(prev) => {
            let v = format!("{prev}, {via}");
            set(headers, &header::VIA, &v)
        }
        None => {
            headers.insert(header::VIA, HeaderValue::from_static(via));
        }
    }
}

/// The request id: kept from a trusted proxy, else ours.
pub fn incoming_request_id(headers: &HeaderMap, peer_trusted: bool) -> Option<String> {
    if !peer_trusted {
        return None;
    }
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_string)
}

/// HTTP/2 may split `cookie` into several fields; an HTTP/1.1 backend wants one (RFC 9113 §8.2.3).
pub fn join_cookies(headers: &mut HeaderMap) {
    if headers.get_all(header::COOKIE).iter().nth(1).is_none() {
        return;
    }
    let joined: Vec<&[u8]> = headers
        .get_all(header::COOKIE)
        .iter()
        .map(|v| v.as_bytes())
        .collect();
    let joined = joined.join(&b"; "[..]);
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// `X-Forwarded-Host`: a copy of the `Host` value when that is the authority (the usual case, with
/// `preserve_host`: a reference count, no validation or allocation), else the authority as given.
fn forwarded_host(headers: &mut HeaderMap, authority: &str) {
    match headers.get(header::HOST) {
        Some(h) if h.as_bytes() == authority.as_bytes() => {
            let h = h.clone();
            headers.insert(&X_FORWARDED_HOST, h);
        }
        _ => set(headers, &X_FORWARDED_HOST, authority),
    }
}

fn scheme_value(scheme: Scheme) -> HeaderValue {
    HeaderValue::from_static(scheme.as_str())
}

fn set(headers: &mut HeaderMap, name: &HeaderName, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name.clone(), v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;
    use wasmgate_runtime::forwarded::TrustedProxies;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("x-keep", "yes"),
            ("host", "a"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        assert!(h.contains_key("x-keep") && h.contains_key("host"));

        let mut h = map(&[
            ("transfer-encoding", "chunked"),
            ("content-length", "50"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(
            h.len(),
            1,
            "Content-Length goes with Transfer-Encoding: {h:?}"
        );
        assert!(h.contains_key("x-keep"));
    }

    fn forwarding<'a>(client: &'a ClientAddr, scheme: Scheme, via: &'a str) -> Forwarding<'a> {
        Forwarding {
            client,
            scheme,
            authority: "chat.example.org",
            request_id: "r1",
            via_version: via,
            peer_text: None,
        }
    }

    fn trusted(nets: &[&str]) -> TrustedProxies {
        TrustedProxies::new(
            nets.iter().map(|n| n.parse().unwrap()).collect(),
            ClientAddressHeader::XForwardedFor,
        )
    }

    #[test]
    fn untrusted_peers_cannot_spoof_forwarding() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = map(&[
            ("x-forwarded-for", "1.2.3.4"),
            ("forwarded", "for=1.2.3.4"),
            ("x-forwarded-proto", "http"),
        ]);
        let peer: IpAddr = "192.0.2.7".parse().unwrap();
        let client = t.client(peer, &h);
        assert_eq!(client.ip, peer);
        add_forwarding(&mut h, &forwarding(&client, Scheme::Https, "1.1"));
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "chat.example.org");
        assert!(!h.contains_key("forwarded"));
        assert_eq!(h["via"], "1.1 wasmgate");
    }

    #[test]
    fn trusted_peers_extend_the_chain() {
        let t = trusted(&["10.0.0.0/8"]);
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.9, 198.51.100.1:4711"),
            ("x-forwarded-for", "10.1.1.1"),
            ("x-forwarded-proto", "https"),
        ]);
        let peer: IpAddr = "10.0.0.2".parse().unwrap();
        let client = t.client(peer, &h);
        assert_eq!(client.ip, "198.51.100.1".parse::<IpAddr>().unwrap());
        add_forwarding(&mut h, &forwarding(&client, Scheme::Http, "2"));
        // What the client wrote left of its own address is not passed on as if it were vouched for.
        assert_eq!(h["x-forwarded-for"], "198.51.100.1, 10.1.1.1, 10.0.0.2");
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["via"], "2 wasmgate");
    }

    #[test]
    fn the_forwarded_header_is_rewritten_when_it_is_the_one_read() {
        let t = TrustedProxies::new(
            vec!["10.0.0.0/8".parse().unwrap()],
            ClientAddressHeader::Forwarded,
        );
        let mut h = map(&[
            (
                "forwarded",
                "for=192.0.2.1, for=\"[2001:db8::7]:443\";proto=https",
            ),
            ("x-forwarded-for", "10.9.9.9"),
        ]);
        let client = t.client("10.0.0.2".parse().unwrap(), &h);
        assert_eq!(client.ip, "2001:db8::7".parse::<IpAddr>().unwrap());
        add_forwarding(&mut h, &forwarding(&client, Scheme::Https, "1.1"));
        assert_eq!(h["x-forwarded-for"], "2001:db8::7, 10.0.0.2");
        assert_eq!(
            h["forwarded"],
            "for=\"[2001:db8::7]\", for=10.0.0.2;proto=https"
        );
    }

    #[test]
    fn mapped_v6_is_v4() {
        let t = trusted(&["127.0.0.0/8"]);
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn h2_cookies_join() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2")]);
        join_cookies(&mut h);
        assert_eq!(h["cookie"], "a=1; b=2");
    }
}

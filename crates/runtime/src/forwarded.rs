//! Who the client is: one derivation from the peer and, when the peer is a trusted proxy, the chain
//! it reports, feeding everything that needs "the client address" — plugins (`ip-allow`), the
//! access log, and the `X-Forwarded-For` the backend is told. Policy and backend see the same chain.
//!
//! The chain is read from one header, `X-Forwarded-For` (the default, as nginx's `real_ip_header`,
//! Envoy and HAProxy read it) or RFC 7239 `Forwarded` (`client_address_header = "forwarded"`), never
//! both: the other header is not a second opinion a client could add to. All lines of the header
//! are joined in order (RFC 9110 §5.3) and walked from the right, the way nginx's
//! `real_ip_recursive on` does:
//! - a trusted proxy's address: it forwarded for someone further left; go on;
//! - any other address: that is the client;
//! - `unknown`, an obfuscated node (`_hidden`), or anything unparsable: whoever wrote the entries
//!   further left is not vouched for, so the walk stops and the client is the last trusted hop
//!   (logged at debug) — never the left-hand entry, which the client may have written itself;
//! - out of entries: the left-most (trusted) hop is the client.
//!
//! Entries may carry a port (`1.2.3.4:5678`, `[2001:db8::1]:443`, as Azure and RFC 7239 `for=`
//! send); it is dropped. Empty list elements are skipped (RFC 9110 §5.6.1).

use std::net::{IpAddr, Ipv6Addr};

use http::header::{HeaderMap, HeaderName};
use ipnet::IpNet;

use wasmgate_config::ClientAddressHeader;

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Stands for a header line that is not visible ASCII.
const NOT_TEXT: &str = "<not text>";

/// The trusted-proxy list: only these peers may tell us who the client is, in `header`.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    pub nets: Vec<IpNet>,
    pub header: ClientAddressHeader,
}

/// The client side of one request, derived once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientAddr {
    /// The client address: what plugins get, what is logged.
    pub ip: IpAddr,
    /// The connection's peer.
    pub peer: IpAddr,
    pub peer_trusted: bool,
    /// The hops believed, client first, up to (not including) the peer; empty from an untrusted peer.
    /// The backend is told these plus the peer.
    pub chain: Vec<IpAddr>,
    /// The header the chain is read from; the backend gets it rewritten to the chain too.
    pub header: ClientAddressHeader,
}

/// One entry of `X-Forwarded-For`, or the `for=` of one `Forwarded` element.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hop {
    Addr(IpAddr),
    /// `unknown` (RFC 7239 §6.2; Squid writes it too).
    Unknown,
    /// An obfuscated identifier such as `_hidden` (RFC 7239 §6.3).
    Obfuscated,
    Invalid,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>, header: ClientAddressHeader) -> TrustedProxies {
        TrustedProxies { nets, header }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client address for a request from `peer` with `headers`.
    pub fn client(&self, peer: IpAddr, headers: &HeaderMap) -> ClientAddr {
        let peer = peer.to_canonical();
        let mut c = ClientAddr {
            ip: peer,
            peer,
            peer_trusted: self.contains(peer),
            chain: Vec::new(),
            header: self.header,
        };
        if !c.peer_trusted {
            return c;
        }
        let stopped = match self.header {
            ClientAddressHeader::XForwardedFor => {
                // From the right: the last line's last entry first.
                // A line that is not text is one unparsable entry.
                let hops = headers
                    .get_all(&X_FORWARDED_FOR)
                    .iter()
                    .rev()
                    .flat_map(|v| v.to_str().unwrap_or(NOT_TEXT).rsplit(','));
                self.walk(&mut c, hops.map(|e| (e, parse_node(e))))
            }
            ClientAddressHeader::Forwarded => {
                let elements = forwarded_for(headers);
                self.walk(&mut c, elements.iter().rev().map(|(raw, hop)| (*raw, *hop)))
            }
        };
        c.chain.reverse();
        if let Some((entry, hop)) = stopped {
            tracing::debug!(
                peer = %peer,
                client = %c.ip,
                entry = %entry.trim(),
                kind = ?hop,
                "the forwarded chain stops at an entry that names no address; the client is the last trusted hop"
            );
        }
        c
    }

    /// Walk `hops` (right to left) into `c`; the entry the walk stopped at, if it stopped early.
    fn walk<'a>(
        &self,
        c: &mut ClientAddr,
        hops: impl Iterator<Item = (&'a str, Hop)>,
    ) -> Option<(&'a str, Hop)> {
        for (raw, hop) in hops {
            if raw.trim().is_empty() {
                continue;
            }
            match hop {
                Hop::Addr(ip) => {
                    let ip = ip.to_canonical();
                    c.ip = ip;
                    c.chain.push(ip);
                    if !self.contains(ip) {
                        return None;
                    }
                }
                other => return Some((raw, other)),
            }
        }
        None
    }
}

/// One node as XFF or `for=` writes it: an address with or without a port, bracketed or not for
/// IPv6, `unknown`, or `_obfuscated`.
pub fn parse_node(s: &str) -> Hop {
    let s = s.trim();
    if let Some(rest) = s.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Hop::Invalid;
        };
        let port_ok = after.is_empty() || after.strip_prefix(':').is_some_and(valid_port);
        return match inside.parse::<Ipv6Addr>() {
            Ok(v6) if port_ok => Hop::Addr(IpAddr::V6(v6)),
            _ => Hop::Invalid,
        };
    }
    // Bare IPv6, as X-Forwarded-For usually carries it (several colons, no port possible).
    if let Ok(v6) = s.parse::<Ipv6Addr>() {
        return Hop::Addr(IpAddr::V6(v6));
    }
    let (name, port_ok) = match s.split_once(':') {
        Some((name, port)) => (name, valid_port(port)),
        None => (s, true),
    };
    if !port_ok {
        return Hop::Invalid;
    }
    if let Ok(v4) = name.parse() {
        Hop::Addr(IpAddr::V4(v4))
    } else if name.eq_ignore_ascii_case("unknown") {
        Hop::Unknown
    } else if is_obfuscated(name) {
        Hop::Obfuscated
    } else {
        Hop::Invalid
    }
}

/// RFC 7239 §6: `node-port = port / obfport`.
fn valid_port(p: &str) -> bool {
    (!p.is_empty()
        && p.len() <= 5
        && p.bytes().all(|b| b.is_ascii_digit())
        && p.parse::<u16>().is_ok())
        || is_obfuscated(p)
}

/// RFC 7239 §6.3: `"_" 1*( ALPHA / DIGIT / "." / "_" / "-")`.
fn is_obfuscated(s: &str) -> bool {
    s.len() > 1
        && s.starts_with('_')
        && s[1..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The `for=` of every `Forwarded` element, in order, each with its raw element text. An element
/// without `for=` hides who it forwarded for: it reads as `unknown`. A value that is not valid text
/// or a malformed element is [`Hop::Invalid`].
pub fn forwarded_for(headers: &HeaderMap) -> Vec<(&str, Hop)> {
    let mut out = Vec::new();
    for line in headers.get_all(&FORWARDED) {
        let Ok(line) = line.to_str() else {
            out.push((NOT_TEXT, Hop::Invalid));
            continue;
        };
        for element in split_outside_quotes(line, b',') {
            if element.trim().is_empty() {
                continue;
            }
            out.push((element, element_for(element)));
        }
    }
    out
}

fn element_for(element: &str) -> Hop {
    let mut found = None;
    for pair in split_outside_quotes(element, b';') {
        let pair = pair.trim();
        if pair.is_empty() {
            continue;
        }
        let Some((name, value)) = pair.split_once('=') else {
            return Hop::Invalid;
        };
        if !name.trim().eq_ignore_ascii_case("for") {
            continue;
        }
        if found.is_some() {
            // Two `for=` in one element: which one is meant? Neither.
            return Hop::Invalid;
        }
        found = Some(match unquote(value.trim()) {
            Some(v) => parse_node(&v),
            None => Hop::Invalid,
        });
    }
    found.unwrap_or(Hop::Unknown)
}

/// `token` or `"quoted-string"` (with `\` escapes); `None` if the quotes do not close.
fn unquote(v: &str) -> Option<String> {
    let Some(inner) = v.strip_prefix('"') else {
        return (!v.contains('"')).then(|| v.to_string());
    };
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '\\' => out.push(chars.next()?),
            '"' => return chars.as_str().is_empty().then_some(out),
            c => out.push(c),
        }
    }
    None
}

/// Split at `sep` bytes that are not inside a quoted string.
fn split_outside_quotes(s: &str, sep: u8) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

impl ClientAddr {
    /// `X-Forwarded-For` for the backend: the believed chain, then the peer.
    pub fn x_forwarded_for(&self) -> String {
        let mut out = String::with_capacity(16 * (self.chain.len() + 1));
        for ip in self.chain.iter().chain([&self.peer]) {
            if !out.is_empty() {
                out.push_str(", ");
            }
            out.push_str(&ip.to_string());
        }
        out
    }

    /// `Forwarded` for the backend: one `for=` element per believed hop, then ours for the peer.
    pub fn forwarded(&self, scheme: &str) -> String {
        let node = |ip: &IpAddr| match ip {
            IpAddr::V4(v4) => format!("for={v4}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\""),
        };
        let mut parts: Vec<String> = self.chain.iter().map(node).collect();
        parts.push(format!("{};proto={scheme}", node(&self.peer)));
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests;

//! Facts about one client connection, shared by every request on it.

use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct ConnInfo {
    /// The client: the TCP peer, or the address a trusted PROXY protocol header gave. Everything —
    /// `trusted_proxies`, X-Forwarded-For, ip-allow, limits, logs — judges this one.
    pub peer: SocketAddr,
    /// The TCP peer (the balancer, when PROXY protocol named another client), for logs.
    pub tcp_peer: SocketAddr,
    pub listener: usize,
    pub listener_name: Arc<str>,
    pub tls: Option<TlsConn>,
    /// `peer`'s address as a header value, made once per connection: what `X-Forwarded-For` says
    /// when no trusted proxy came before (every request on a keep-alive connection shares it).
    pub peer_text: http::HeaderValue,
}

/// What the handshake settled, as plugins and logs see it.
#[derive(Debug, Clone)]
pub struct TlsConn {
    pub sni: Option<String>,
    pub alpn: Option<String>,
    pub version: &'static str,
}

/// How the client reached us: the scheme of the URL it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }
}

impl ConnInfo {
    /// `peer`'s address as [`ConnInfo::peer_text`] holds it: canonical (an IPv4-mapped IPv6 peer
    /// as IPv4), as the client address is judged and logged.
    pub fn peer_text(peer: SocketAddr) -> http::HeaderValue {
        let mut buf = [0u8; 64];
        http::HeaderValue::from_str(crate::text::ip(peer.ip().to_canonical(), &mut buf))
            .unwrap_or(http::HeaderValue::from_static("-"))
    }

    pub fn scheme(&self) -> Scheme {
        if self.tls.is_some() {
            Scheme::Https
        } else {
            Scheme::Http
        }
    }
}

//! The PROXY protocol (HAProxy's, v1 text and v2 binary): an L4 load balancer in front tells us the
//! client's address in a header before the connection's first byte of HTTP or TLS.
//!
//! Per listener, `proxy_protocol = true` with `proxy_protocol_from = [CIDRs]`:
//! - from a listed source the header is required (as HAProxy's `accept-proxy`): a connection without
//!   one is closed, since it did not come through the balancer and would be served under the
//!   balancer's own address;
//! - from any other source a header is a protocol error (the connection is closed: a client may not
//!   pick its own address); without one the connection is served as usual, under its TCP peer;
//! - `LOCAL` (v2, the balancer's own health checks) and `UNKNOWN` (v1) keep the TCP peer.
//!
//! The header is read with a bound (v1: 107 bytes; v2: 16 bytes + at most [`V2_MAX_BODY`]), TLVs are
//! skipped, and whatever arrived after it is replayed to the HTTP or TLS layer by [`Rewind`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use ipnet::IpNet;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line, `\r\n` included (the spec's figure).
const V1_MAX: usize = 107;
/// Addresses plus TLVs. Balancers send tens of bytes of TLVs (AWS: the VPC endpoint id); 4 KiB
/// leaves room for certificates' names without letting a peer make us buffer 64 KiB.
const V2_MAX_BODY: usize = 4096;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyHeaderError {
    #[error("a PROXY header from {0}, which is not in proxy_protocol_from")]
    Untrusted(IpAddr),
    #[error("no PROXY header from {0}, which is in proxy_protocol_from")]
    Missing(IpAddr),
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("the connection closed before its PROXY header was complete")]
    Truncated,
}

/// The result of reading a PROXY header: the client's address (or `None` for LOCAL/UNKNOWN).
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet.
    Incomplete,
    /// The header was `len` bytes long.
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// The bytes are not a PROXY header at all.
    NotProxy,
}

/// Parse the start of a connection.
pub fn parse(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    if buf.is_empty() {
        return Ok(Parsed::Incomplete);
    }
    let sig_len = buf.len().min(V2_SIGNATURE.len());
    if buf[..sig_len] == V2_SIGNATURE[..sig_len] {
        if buf.len() < 16 {
            return Ok(Parsed::Incomplete);
        }
        return parse_v2(buf);
    }
    let v1_len = buf.len().min(6);
    if buf[..v1_len] == b"PROXY "[..v1_len] {
        if buf.len() < 6 {
            return Ok(Parsed::Incomplete);
        }
        return parse_v1(buf);
    }
    Ok(Parsed::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let window = &buf[..buf.len().min(V1_MAX)];
    let Some(end) = window.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() >= V1_MAX {
            Err(bad("v1 line longer than 107 bytes"))
        } else {
            Ok(Parsed::Incomplete)
        };
    };
    let line = std::str::from_utf8(&buf[6..end]).map_err(|_| bad("v1 line is not text"))?;
    let len = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Ok(Parsed::Header { len, source: None }),
        [proto @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src.parse().map_err(|_| bad("v1 source address"))?;
            if ip.is_ipv4() != (*proto == "TCP4") {
                return Err(bad("v1 address family disagrees with TCP4/TCP6"));
            }
            _dst.parse::<IpAddr>()
                .map_err(|_| bad("v1 destination address"))?;
            let port = v1_port(sport).ok_or(bad("v1 source port"))?;
            v1_port(_dport).ok_or(bad("v1 destination port"))?;
            Ok(Parsed::Header {
                len,
                source: Some(SocketAddr::new(ip, port)),
            })
        }
        _ => Err(bad("v1 line is not `PROXY TCP4|TCP6 src dst sport dport`")),
    }
}

/// Decimal, 0–65535, no sign and no leading zero (the spec's form).
fn v1_port(text: &str) -> Option<u16> {
    let ok = !text.is_empty()
        && text.len() <= 5
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'));
    ok.then(|| text.parse().ok()).flatten()
}

fn parse_v2(buf: &[u8]) -> Result<Parsed, ProxyHeaderError> {
    let bad = ProxyHeaderError::Malformed;
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(bad("v2 version is not 2"));
    }
    let body_len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if body_len > V2_MAX_BODY {
        return Err(bad("v2 header longer than 4 KiB"));
    }
    let len = 16 + body_len;
    if buf.len() < len {
        return Ok(Parsed::Incomplete);
    }
    let body = &buf[16..len];
    let local = match ver_cmd & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(bad("v2 command is neither LOCAL nor PROXY")),
    };
    let family = buf[13] >> 4;
    let transport = buf[13] & 0x0f;
    if local {
        // The balancer's own connection (health checks): the address block means nothing.
        return Ok(Parsed::Header { len, source: None });
    }
    if transport == 2 {
        return Err(bad("v2 DGRAM on a stream listener"));
    }
    let source = match family {
        // INET: src, dst (4 bytes each), sport, dport. TLVs after the block are skipped.
        1 => {
            if body.len() < 12 {
                return Err(bad("v2 INET block shorter than 12 bytes"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            Some(SocketAddr::new(IpAddr::V4(ip), port))
        }
        2 => {
            if body.len() < 36 {
                return Err(bad("v2 INET6 block shorter than 36 bytes"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port))
        }
        // UNSPEC, UNIX: the spec says to accept the connection and use the real peer.
        0 | 3 => None,
        _ => return Err(bad("v2 address family unknown")),
    };
    Ok(Parsed::Header { len, source })
}

/// Read what starts the connection from `peer` and decide by `from` (the listener's trusted sources).
/// Returns the stream (replaying what followed the header) and the client address to use.
pub async fn accept<S>(
    mut stream: S,
    peer: SocketAddr,
    from: &[IpNet],
) -> Result<(Rewind<S>, SocketAddr), ProxyHeaderError>
where
    S: AsyncRead + Unpin,
{
    let trusted = from.iter().any(|n| n.contains(&peer.ip()));
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match parse(&buf)? {
            Parsed::Incomplete => {}
            Parsed::NotProxy if trusted => return Err(ProxyHeaderError::Missing(peer.ip())),
            Parsed::NotProxy => return Ok((Rewind::new(stream, buf.freeze()), peer)),
            Parsed::Header { .. } if !trusted => {
                return Err(ProxyHeaderError::Untrusted(peer.ip()))
            }
            Parsed::Header { len, source } => {
                buf.advance(len);
                return Ok((Rewind::new(stream, buf.freeze()), source.unwrap_or(peer)));
            }
        }
        // Read no more than the longest header can still need: the rest belongs to HTTP or TLS,
        // and is replayed anyway, but there is no reason to take more than a header's worth.
        if buf.capacity() - buf.len() < 64 {
            buf.reserve(1024);
        }
        let n = stream
            .read_buf(&mut buf)
            .await
            .map_err(|_| ProxyHeaderError::Truncated)?;
        if n == 0 {
            return Err(ProxyHeaderError::Truncated);
        }
        if buf.len() > 16 + V2_MAX_BODY + 64 * 1024 {
            return Err(ProxyHeaderError::Malformed("header does not end"));
        }
    }
}

/// A stream that first gives back bytes already read from it.
pub struct Rewind<S> {
    prefix: Bytes,
    inner: S,
}

impl<S> Rewind<S> {
    pub fn new(inner: S, prefix: Bytes) -> Self {
        Rewind { prefix, inner }
    }

    /// A stream with nothing to replay (listeners without PROXY protocol).
    pub fn plain(inner: S) -> Self {
        Rewind::new(inner, Bytes::new())
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Rewind<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Rewind<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(len: usize, source: Option<&str>) -> Result<Parsed, ProxyHeaderError> {
        Ok(Parsed::Header {
            len,
            source: source.map(|s| s.parse().unwrap()),
        })
    }

    #[test]
    fn v1_lines() {
        let line = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET /";
        assert_eq!(parse(line), header(43, Some("203.0.113.7:56324")));
        let line = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert_eq!(parse(line), header(40, Some("[2001:db8::1]:1")));
        assert_eq!(parse(b"PROXY UNKNOWN\r\n"), header(15, None));
        assert_eq!(
            parse(b"PROXY UNKNOWN ffff::1 ::1 1 2\r\n"),
            header(31, None)
        );
        assert_eq!(parse(b"PROXY TCP4 1.2.3.4"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parsed::Incomplete));
        assert_eq!(parse(b"GET / HTTP/1.1\r\n"), Ok(Parsed::NotProxy));
        assert_eq!(parse(&[0x16, 3, 1]), Ok(Parsed::NotProxy));
        for bad in [
            &b"PROXY TCP4 2001:db8::1 1.2.3.4 1 2\r\n"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
            b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
            b"PROXY UDP4 1.2.3.4 5.6.7.8 1 2\r\n",
        ] {
            assert!(
                matches!(parse(bad), Err(ProxyHeaderError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = format!("PROXY TCP4 {}\r\n", "1".repeat(120));
        assert!(parse(long.as_bytes()).is_err());
        assert!(parse(&[b'P', b'R', b'O', b'X', b'Y', b' ', b'x'].repeat(20)).is_err());
    }

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.push(0x20 | cmd);
        h.push(fam);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v2_headers() {
        let mut body = vec![203, 0, 113, 7, 10, 0, 0, 1];
        body.extend_from_slice(&56324u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        // A TLV (PP2_TYPE_AUTHORITY) after the addresses is skipped.
        body.extend_from_slice(&[0x02, 0, 4, b'a', b'.', b'b', b'c']);
        let h = v2(1, 0x11, &body);
        assert_eq!(parse(&h), header(h.len(), Some("203.0.113.7:56324")));
        assert_eq!(parse(&h[..20]), Ok(Parsed::Incomplete));
        assert_eq!(parse(&h[..5]), Ok(Parsed::Incomplete));
        let mut six = vec![0u8; 36];
        six[15] = 1;
        six[32..34].copy_from_slice(&8080u16.to_be_bytes());
        let h = v2(1, 0x21, &six);
        assert_eq!(parse(&h), header(52, Some("[::1]:8080")));
        // LOCAL: the balancer's health check keeps the TCP peer.
        assert_eq!(parse(&v2(0, 0x00, &[])), header(16, None));
        assert_eq!(parse(&v2(1, 0x00, &[])), header(16, None));
        for bad in [
            v2(1, 0x11, &[1, 2, 3]),
            v2(1, 0x21, &[0; 12]),
            v2(2, 0x11, &[0; 12]),
            v2(1, 0x12, &[0; 12]),
            v2(1, 0x51, &[0; 12]),
        ] {
            assert!(
                matches!(parse(&bad), Err(ProxyHeaderError::Malformed(_))),
                "{bad:?}"
            );
        }
        let mut wrong_version = v2(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(parse(&wrong_version).is_err());
        let mut huge = V2_SIGNATURE.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(parse(&huge).is_err());
    }

    #[tokio::test]
    async fn accept_replays_what_follows_and_judges_the_source() {
        let from: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let lb: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let other: SocketAddr = "192.0.2.9:5000".parse().unwrap();
        let data = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\nGET / HTTP/1.1\r\n".to_vec();
        let (mut s, addr) = accept(&data[..], lb, &from).await.unwrap();
        assert_eq!(addr, "203.0.113.7:56324".parse().unwrap());
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "GET / HTTP/1.1\r\n");
        assert_eq!(
            accept(&data[..], other, &from).await.err(),
            Some(ProxyHeaderError::Untrusted(other.ip()))
        );
        let plain = b"GET / HTTP/1.1\r\n".to_vec();
        assert_eq!(
            accept(&plain[..], lb, &from).await.err(),
            Some(ProxyHeaderError::Missing(lb.ip()))
        );
        let (mut s, addr) = accept(&plain[..], other, &from).await.unwrap();
        assert_eq!(addr, other);
        let mut rest = String::new();
        s.read_to_string(&mut rest).await.unwrap();
        assert_eq!(rest, "GET / HTTP/1.1\r\n");
        assert_eq!(
            accept(&b"PROXY TCP4 1.2"[..], lb, &from).await.err(),
            Some(ProxyHeaderError::Truncated)
        );
    }
}

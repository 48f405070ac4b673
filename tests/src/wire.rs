//! A raw-socket HTTP/1.1 client for hostile tests: send exactly these bytes, then read and parse
//! whatever responses come back, noting whether (and how) the proxy closed the connection.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How the connection ended from the client's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Closed {
    /// The proxy closed (FIN).
    Fin,
    /// The proxy reset the connection.
    Reset,
    /// Still open when we stopped waiting.
    Open,
}

#[derive(Debug)]
pub struct Exchange {
    pub responses: Vec<RawResponse>,
    pub closed: Closed,
    /// Bytes after the last complete response that did not parse (must be empty for a sane proxy).
    pub trailing: Vec<u8>,
    pub elapsed: Duration,
}

impl Exchange {
    pub fn statuses(&self) -> Vec<u16> {
        self.responses.iter().map(|r| r.status).collect()
    }
}

/// When to stop reading.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Give up waiting for the first byte of a response after this long.
    pub first: Duration,
    /// After a complete response, wait this long for more before deciding the connection stays open.
    pub more: Duration,
}

impl Default for Wait {
    fn default() -> Self {
        Wait {
            first: Duration::from_secs(3),
            more: Duration::from_millis(250),
        }
    }
}

/// Connect, write `bytes`, read responses (see [`Wait`]).
pub async fn exchange(addr: SocketAddr, bytes: &[u8], wait: Wait) -> Exchange {
    let mut s = TcpStream::connect(addr)
        .await
        .expect("connect to the proxy");
    let start = Instant::now();
    // The proxy may close before reading everything (e.g. an oversized head): a failed write is fine.
    let _ = s.write_all(bytes).await;
    read_responses(&mut s, wait, start).await
}

/// Read responses from an already-used stream.
pub async fn read_responses(s: &mut TcpStream, wait: Wait, start: Instant) -> Exchange {
    let mut buf = Vec::new();
    let mut responses = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let closed = loop {
        while let Some((resp, used)) = parse_response(&buf) {
            buf.drain(..used);
            if !(100..200).contains(&resp.status) || resp.status == 101 {
                responses.push(resp);
            }
        }
        let limit = if responses.is_empty() {
            wait.first
        } else {
            wait.more
        };
        match tokio::time::timeout(limit, s.read(&mut chunk)).await {
            Err(_) => break Closed::Open,
            Ok(Ok(0)) => break Closed::Fin,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => break Closed::Reset,
            Ok(Err(_)) => break Closed::Reset,
        }
    };
    while let Some((resp, used)) = parse_response(&buf) {
        buf.drain(..used);
        responses.push(resp);
    }
    // A close-delimited response is complete once the peer has closed.
    if closed == Closed::Fin {
        if let Some(head_end) = find(&buf, b"\r\n\r\n", 0) {
            let mut with_len = buf[..head_end].to_vec();
            with_len.extend_from_slice(
                format!("\r\ncontent-length: {}\r\n\r\n", buf.len() - head_end - 4).as_bytes(),
            );
            with_len.extend_from_slice(&buf[head_end + 4..]);
            if let Some((resp, _)) = parse_response(&with_len) {
                responses.push(resp);
                buf.clear();
            }
        }
    }
    Exchange {
        responses,
        closed,
        trailing: buf,
        elapsed: start.elapsed(),
    }
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// One complete response at the start of `buf` and the bytes it used.
pub fn parse_response(buf: &[u8]) -> Option<(RawResponse, usize)> {
    let head_end = find(buf, b"\r\n\r\n", 0)? + 4;
    let text = std::str::from_utf8(&buf[..head_end - 4]).ok()?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next()?;
    let status: u16 = status_line
        .strip_prefix("HTTP/1.")?
        .get(2..5)?
        .parse()
        .ok()?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_string(), v.trim().to_string()))
        .collect();
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    let no_body = status == 204 || status == 304 || (100..200).contains(&status);
    let (body, used) = if no_body {
        (Vec::new(), head_end)
    } else if get("transfer-encoding").is_some_and(|t| t.eq_ignore_ascii_case("chunked")) {
        let mut pos = head_end;
        let mut body = Vec::new();
        loop {
            let e = find(buf, b"\r\n", pos)?;
            let size = usize::from_str_radix(
                std::str::from_utf8(&buf[pos..e])
                    .ok()?
                    .split(';')
                    .next()?
                    .trim(),
                16,
            )
            .ok()?;
            pos = e + 2;
            if size == 0 {
                loop {
                    let e = find(buf, b"\r\n", pos)?;
                    let empty = e == pos;
                    pos = e + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            if buf.len() < pos + size + 2 {
                return None;
            }
            body.extend_from_slice(&buf[pos..pos + size]);
            pos += size + 2;
        }
        (body, pos)
    } else if let Some(cl) = get("content-length") {
        let n: usize = cl.parse().ok()?;
        if buf.len() < head_end + n {
            return None;
        }
        (buf[head_end..head_end + n].to_vec(), head_end + n)
    } else {
        // Close-delimited: only complete once the peer has closed; callers parse the rest at the end.
        return None;
    };
    Some((
        RawResponse {
            status,
            headers,
            body,
        },
        used,
    ))
}

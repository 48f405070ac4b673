//! A backend that speaks HTTP/1.1 by hand, for the hostile-input suite: it records exactly the bytes the
//! proxy sends (so a test can see smuggled or unnormalised requests that a real HTTP parser would hide)
//! and it can misbehave on purpose (reset, truncate, stall, send garbage).
//!
//! The parser is deliberately minimal and strict: CRLF line ends, `name: value` headers, bodies framed by
//! `Transfer-Encoding: chunked` or `Content-Length`. Anything it cannot parse is kept as
//! [`RawBackend::junk`] — for a proxy that normalises, that must stay empty.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// How the backend answers each request it has read.
#[derive(Debug, Clone)]
pub enum Fault {
    /// `200 OK` with `Content-Length: 2` and body `ok`, keep-alive.
    None,
    /// Write these bytes, then end the connection as `end` says (malformed status lines, truncated
    /// bodies, half-written heads).
    Raw(Vec<u8>, End),
    /// Read the request, never answer; the connection is held until the peer goes or 60 s pass.
    Stall,
    /// Close (FIN) as soon as the connection is accepted, before reading anything.
    CloseOnAccept,
    /// Reset (RST) as soon as the connection is accepted.
    ResetOnAccept,
    /// A correct `101 Switching Protocols` for the WebSocket key it got, then these bytes, then FIN.
    Garbage101(Vec<u8>),
    /// Answer `200 OK` as soon as the head is read, without waiting for the body (as servers that refuse
    /// early do), then read and discard whatever comes.
    AnswerBeforeBody,
}

/// How a [`Fault::Raw`] answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Keep reading requests on the connection.
    KeepAlive,
    /// Orderly close.
    Fin,
    /// Abortive close (SO_LINGER 0).
    Rst,
    /// Keep the connection open without answering anything else (until 60 s or the peer goes).
    Hold,
}

/// One request as received.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// Request line and header lines exactly as received, including the final empty line.
    pub head: Vec<u8>,
    /// The body as framed on the wire (chunk framing included, if any).
    pub wire_body: Vec<u8>,
    /// The decoded body.
    pub body: Vec<u8>,
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
}

impl RawRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    /// Everything about this request that a normalising proxy must never send: an empty list is a pass.
    pub fn violations(&self) -> Vec<String> {
        let mut v = Vec::new();
        for (i, &b) in self.head.iter().enumerate() {
            let ok_crlf = (b == b'\r' && self.head.get(i + 1) == Some(&b'\n'))
                || (b == b'\n' && i > 0 && self.head[i - 1] == b'\r');
            if (b < 0x20 && b != b'\t' && !ok_crlf) || b == 0x7f {
                v.push(format!("control byte {b:#04x} at {i} of the head"));
            }
        }
        if self.version != "HTTP/1.1" {
            v.push(format!("version {}", self.version));
        }
        if !self.target.starts_with('/') {
            v.push(format!("target not in origin-form: {}", self.target));
        }
        match wasmgate_core::path::normalize_path(self.path()) {
            Ok(n) if n == self.path() => {}
            Ok(n) => v.push(format!("path `{}` is not normalised (`{n}`)", self.path())),
            Err(e) => v.push(format!("path `{}` is invalid: {e:?}", self.path())),
        }
        if self.all("host").len() != 1 {
            v.push(format!("{} Host headers", self.all("host").len()));
        }
        let cl = self.all("content-length");
        let te = self.all("transfer-encoding");
        if cl.len() > 1 {
            v.push(format!("{} Content-Length headers", cl.len()));
        }
        if !cl.is_empty() && !te.is_empty() {
            v.push("both Content-Length and Transfer-Encoding".into());
        }
        if !te.is_empty() && te != ["chunked"] {
            v.push(format!("Transfer-Encoding {te:?}"));
        }
        for hop in [
            "upgrade",
            "http2-settings",
            "te",
            "trailer",
            "keep-alive",
            "proxy-connection",
        ] {
            if self.header(hop).is_some() {
                v.push(format!("hop-by-hop header `{hop}` crossed the proxy"));
            }
        }
        for (n, _) in &self.headers {
            if n.is_empty() || !n.bytes().all(is_tchar) {
                v.push(format!("header name {n:?} is not a token"));
            }
        }
        v
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

struct Log {
    /// Off for long runs: then requests are only counted, so the log does not grow.
    keep: bool,
    seen: usize,
    requests: Vec<RawRequest>,
    /// Bytes that did not parse as a request (smuggled remains, garbage).
    junk: Vec<Vec<u8>>,
}

impl Log {
    fn push(&mut self, req: RawRequest) {
        self.seen += 1;
        if self.keep {
            self.requests.push(req);
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Log {
            keep: true,
            seen: 0,
            requests: Vec::new(),
            junk: Vec::new(),
        }
    }
}

pub struct RawBackend {
    pub addr: SocketAddr,
    log: Arc<Mutex<Log>>,
    accepted: Arc<AtomicUsize>,
    open: Arc<AtomicUsize>,
    fault: Arc<Mutex<Fault>>,
    task: tokio::task::JoinHandle<()>,
}

impl RawBackend {
    pub async fn start(fault: Fault) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log: Arc<Mutex<Log>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open = Arc::new(AtomicUsize::new(0));
        let fault = Arc::new(Mutex::new(fault));
        let (l, a, o, f) = (log.clone(), accepted.clone(), open.clone(), fault.clone());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let fault = f.lock().unwrap().clone();
                let (log, open) = (l.clone(), o.clone());
                open.fetch_add(1, Ordering::SeqCst);
                // Connection tasks live in the set, so dropping the backend ends them too.
                conns.spawn(async move {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(60), serve(stream, fault, log))
                            .await;
                    open.fetch_sub(1, Ordering::SeqCst);
                });
                while conns.try_join_next().is_some() {}
            }
        });
        RawBackend {
            addr,
            log,
            accepted,
            open,
            fault,
            task,
        }
    }

    /// An address where nothing listens (bound, then closed): connections are refused.
    pub async fn refused_addr() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Change how later connections are answered.
    pub fn set_fault(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn requests(&self) -> Vec<RawRequest> {
        self.log.lock().unwrap().requests.clone()
    }

    /// Requests received (also while not recording).
    pub fn count(&self) -> usize {
        self.log.lock().unwrap().seen
    }

    /// Stop keeping requests (and junk) — for long runs whose memory is measured; `count` still counts.
    pub fn stop_recording(&self) {
        let mut log = self.log.lock().unwrap();
        log.keep = false;
        log.requests = Vec::new();
        log.junk = Vec::new();
    }

    pub fn junk(&self) -> Vec<Vec<u8>> {
        self.log.lock().unwrap().junk.clone()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Connections open right now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::SeqCst)
    }
}

impl Drop for RawBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const MAX_HEAD: usize = 256 * 1024;

async fn serve(mut s: TcpStream, fault: Fault, log: Arc<Mutex<Log>>) {
    match fault {
        Fault::CloseOnAccept => return,
        Fault::ResetOnAccept => {
            rst(s);
            return;
        }
        _ => {}
    }
    let mut buf: Vec<u8> = Vec::new();
    if matches!(fault, Fault::AnswerBeforeBody) {
        if let Ok(Some(req)) = read_head(&mut s, &mut buf).await {
            log.lock().unwrap().push(req);
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Raw-Backend: 1\r\n\r\nearly")
                .await;
            drain(&mut s).await;
        }
        return;
    }
    loop {
        let req = match read_request(&mut s, &mut buf).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(bytes) => {
                if !bytes.is_empty() {
                    let mut log = log.lock().unwrap();
                    if log.keep {
                        log.junk.push(bytes);
                    }
                }
                return;
            }
        };
        let key = req.header("sec-websocket-key").map(str::to_string);
        log.lock().unwrap().push(req);
        match &fault {
            Fault::None => {
                if s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Raw-Backend: 1\r\n\r\nok",
                )
                .await
                .is_err()
                {
                    return;
                }
            }
            Fault::Raw(bytes, end) => {
                if s.write_all(bytes).await.is_err() {
                    return;
                }
                match end {
                    End::KeepAlive => {}
                    End::Fin => {
                        let _ = s.shutdown().await;
                        drain(&mut s).await;
                        return;
                    }
                    End::Rst => {
                        rst(s);
                        return;
                    }
                    End::Hold => {
                        drain(&mut s).await;
                        return;
                    }
                }
            }
            Fault::Stall => {
                drain(&mut s).await;
                return;
            }
            Fault::Garbage101(garbage) => {
                let accept = derive_accept_key(key.unwrap_or_default().as_bytes());
                let head = format!(
                    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                );
                let _ = s.write_all(head.as_bytes()).await;
                let _ = s.write_all(garbage).await;
                let _ = s.shutdown().await;
                drain(&mut s).await;
                return;
            }
            Fault::CloseOnAccept | Fault::ResetOnAccept | Fault::AnswerBeforeBody => unreachable!(),
        }
    }
}

/// Read until the peer closes (bounded by the 60 s per-connection cap).
async fn drain(s: &mut TcpStream) {
    let mut b = [0u8; 4096];
    while let Ok(n) = s.read(&mut b).await {
        if n == 0 {
            break;
        }
    }
}

/// Abortive close: SO_LINGER {on, 0} makes `close` send RST instead of FIN.
fn rst(s: TcpStream) {
    let _ = s.set_zero_linger();
    drop(s);
}

/// Fill `buf` until it holds `n` bytes more than `from`, or the peer closes.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>, want: usize) -> bool {
    let mut chunk = [0u8; 16 * 1024];
    while buf.len() < want {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    true
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// Read one request. `Ok(None)`: clean close between requests. `Err(bytes)`: unparseable bytes.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<RawRequest>, Vec<u8>> {
    let Some(mut req) = read_head(s, buf).await? else {
        return Ok(None);
    };
    read_body(s, buf, &mut req).await?;
    Ok(Some(req))
}

/// Read one request head (request line and headers).
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<RawRequest>, Vec<u8>> {
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n", 0) {
            break p + 4;
        }
        if buf.len() > MAX_HEAD {
            return Err(std::mem::take(buf));
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => {
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Err(std::mem::take(buf))
                }
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head: Vec<u8> = buf.drain(..head_end).collect();
    let text = String::from_utf8_lossy(&head[..head.len() - 4]).into_owned();
    let mut lines = text.split("\r\n");
    let line = lines.next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(head);
    };
    let mut headers = Vec::new();
    for l in lines {
        match l.split_once(':') {
            Some((n, v)) => headers.push((n.to_string(), v.trim_matches([' ', '\t']).to_string())),
            None => headers.push((l.to_string(), String::new())),
        }
    }
    let req = RawRequest {
        head,
        wire_body: Vec::new(),
        body: Vec::new(),
        method: method.into(),
        target: target.into(),
        version: version.into(),
        headers,
    };
    Ok(Some(req))
}

/// Read the body the head announces, into `req`.
async fn read_body(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    req: &mut RawRequest,
) -> Result<(), Vec<u8>> {
    let chunked = req
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    if chunked {
        // size line, data, CRLF … `0` line, trailers, empty line.
        let mut pos = 0;
        loop {
            let line_end = loop {
                if let Some(p) = find(buf, b"\r\n", pos) {
                    break p;
                }
                if buf.len() > MAX_HEAD + pos || !fill(s, buf, buf.len() + 1).await {
                    return Err(std::mem::take(buf));
                }
            };
            let size_text = String::from_utf8_lossy(&buf[pos..line_end]).into_owned();
            let size_hex = size_text.split(';').next().unwrap_or("").trim();
            let Ok(size) = usize::from_str_radix(size_hex, 16) else {
                return Err(std::mem::take(buf));
            };
            pos = line_end + 2;
            if size == 0 {
                // Trailers until an empty line.
                loop {
                    let e = loop {
                        if let Some(p) = find(buf, b"\r\n", pos) {
                            break p;
                        }
                        if !fill(s, buf, buf.len() + 1).await {
                            return Err(std::mem::take(buf));
                        }
                    };
                    let empty = e == pos;
                    pos = e + 2;
                    if empty {
                        break;
                    }
                }
                break;
            }
            if !fill(s, buf, pos + size + 2).await {
                return Err(std::mem::take(buf));
            }
            req.body.extend_from_slice(&buf[pos..pos + size]);
            if &buf[pos + size..pos + size + 2] != b"\r\n" {
                return Err(std::mem::take(buf));
            }
            pos += size + 2;
        }
        req.wire_body = buf.drain(..pos).collect();
    } else if let Some(cl) = req.header("content-length") {
        let Ok(n) = cl.parse::<usize>() else {
            return Err(std::mem::take(buf));
        };
        if !fill(s, buf, n).await {
            return Err(std::mem::take(buf));
        }
        req.wire_body = buf.drain(..n).collect();
        req.body = req.wire_body.clone();
    }
    Ok(())
}

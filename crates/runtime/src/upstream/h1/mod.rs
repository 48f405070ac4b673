//! wasmgate's own HTTP/1.1 client codec for backend connections, polled in the request's own task.
//!
//! hyper's client runs each connection as a task of its own and talks to it through channels: per
//! proxied request, a send over an mpsc queue, a wake-up of the connection task, a oneshot back with
//! the response head and a body channel for the bytes — a quarter of wasmgate's user CPU per request
//! (callgrind: 13k of 48k instructions, session 12). Here the request's task writes the head, reads
//! the answer and decodes the body itself, as Pingora does; nothing is spawned, and the connection
//! is owned by whoever is using it (the exchange, then the response body, then the worker's pool).
//!
//! HTTP/2 backends (issue 21) will use hyper's h2 client; WebSocket upgrades still go through
//! hyper's handshake on a dedicated connection (`websocket.rs`).

mod decode;
mod head;
mod io;

use std::future::poll_fn;
use std::io::IoSlice;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Response};
use http_body::{Body, Frame, SizeHint};
use tokio::io::AsyncWrite;

pub use decode::Decoder;
pub use head::{encode_request, BodyFraming, Framing, Parsed, MAX_HEAD};
pub use io::Io;

use wasmgate_core::body::{BoxError, ProxyBody};

/// What went wrong on a backend connection.
#[derive(Debug, thiserror::Error)]
pub enum H1Error {
    #[error("backend connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the backend closed the connection before a complete response head")]
    Closed,
    #[error("the backend's response head is larger than {} KiB", MAX_HEAD / 1024)]
    HeadTooLarge,
    #[error("malformed response head: {0}")]
    Parse(httparse::Error),
    #[error("invalid response: {0}")]
    Invalid(&'static str),
    #[error("the backend closed the connection before the end of the body")]
    Truncated,
    /// The request body failed (the client's side: too large, too slow, broken).
    #[error("request body: {0}")]
    Body(BoxError),
}

/// A failed exchange, and whether it can be tried again on another connection: nothing of the
/// response arrived and the backend cannot have acted on the request (see [`Conn::send`]).
#[derive(Debug)]
pub struct SendError {
    pub error: H1Error,
    pub replayable: bool,
}

/// One keep-alive connection to a backend, with the bytes read from it and not yet consumed.
pub struct Conn {
    io: Io,
    buf: BytesMut,
    /// Room a read gets when the buffer runs low (see `io::MIN_READ`).
    want: usize,
}

/// A request, as it goes out: the head (encoded once, so a retry re-sends the same bytes) and the
/// body, unless it is empty.
pub struct Outgoing {
    pub head: Bytes,
    pub body: Option<(ProxyBody, bool)>,
    pub method: Method,
}

impl Outgoing {
    /// Encode `req`'s head; a body of unknown length goes out chunked.
    pub fn new(req: http::Request<ProxyBody>) -> Outgoing {
        let (parts, body) = req.into_parts();
        let framing =
            if body.is_end_stream() || parts.headers.contains_key(http::header::CONTENT_LENGTH) {
                BodyFraming::AsIs
            } else {
                body.size_hint()
                    .exact()
                    .map_or(BodyFraming::Chunked, BodyFraming::Length)
            };
        let body = (!body.is_end_stream()).then_some((body, framing == BodyFraming::Chunked));
        let mut head = Vec::new();
        encode_request(&mut head, &parts, framing);
        Outgoing {
            head: head.into(),
            body,
            method: parts.method,
        }
    }

    /// Safe to send again after a reused connection failed before any answer: no body to replay,
    /// and a method the backend may see twice (RFC 9110 §9.2.2; Go's transport and nginx decide
    /// the same way).
    fn idempotent(&self) -> bool {
        self.body.is_none()
            && matches!(
                self.method,
                Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
            )
    }
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            want: io::MIN_READ,
        }
    }

    /// The underlying stream, for a connection that leaves HTTP (nothing is buffered on it yet).
    pub fn into_io(self) -> Io {
        self.io
    }

    /// Whether a pooled connection can take a request: nothing left over from the last
    /// exchange, and the backend has neither closed it nor sent anything since.
    pub fn is_reusable(&mut self) -> bool {
        self.buf.is_empty() && self.io.is_quiet()
    }

    /// Write `req` and read the response head (the body is left in `req` until its first frame is
    /// taken, so a request nothing of which was written can be sent again). The request body is sent while the response is
    /// awaited, so a backend that answers early (a 413 before the upload ends) is heard; the body
    /// that was not sent then is dropped and the connection is not reused. Returns the head and
    /// whether the request went out whole.
    pub async fn send(&mut self, req: &mut Outgoing) -> Result<(Parsed, bool), SendError> {
        let mut written = 0usize;
        let mut queued: Vec<Bytes> = Vec::new();
        let mut flushed = false;
        let idempotent = req.idempotent();
        let fail = |error: H1Error, written: usize, received: bool| SendError {
            replayable: !received
                && (written == 0 || idempotent)
                && !matches!(error, H1Error::Body(_)),
            error,
        };
        // A write that failed once the head was out: the backend may have answered and closed
        // (a 413 to an upload), so its answer is read before the failure is reported.
        let mut write_failed: Option<std::io::Error> = None;
        poll_fn(|cx| {
            // Write as far as the socket takes it.
            while write_failed.is_none() {
                let head_left = written < req.head.len();
                if head_left || !queued.is_empty() {
                    let mut slices = [IoSlice::new(&[]); 8];
                    let mut n = 0;
                    if head_left {
                        slices[0] = IoSlice::new(&req.head[written..]);
                        n = 1;
                    }
                    for b in &queued {
                        if n == slices.len() {
                            break;
                        }
                        slices[n] = IoSlice::new(b);
                        n += 1;
                    }
                    match Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n]) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Err(fail(H1Error::Closed, written, false)));
                        }
                        Poll::Ready(Ok(mut k)) => {
                            flushed = false;
                            let from_head = k.min(req.head.len() - written);
                            written += from_head;
                            k -= from_head;
                            while k > 0 {
                                let first = &mut queued[0];
                                if k >= first.len() {
                                    k -= first.len();
                                    queued.remove(0);
                                } else {
                                    first.advance(k);
                                    k = 0;
                                }
                            }
                            continue;
                        }
                        Poll::Ready(Err(e)) if head_left => {
                            return Poll::Ready(Err(fail(e.into(), written, false)));
                        }
                        Poll::Ready(Err(e)) => {
                            write_failed = Some(e);
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
                if let Some((b, chunked)) = req.body.as_mut() {
                    let chunked = *chunked;
                    match Pin::new(b).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                if data.is_empty() {
                                    continue;
                                }
                                if chunked {
                                    queued.push(Bytes::from(format!("{:x}\r\n", data.len())));
                                    queued.push(data);
                                    queued.push(Bytes::from_static(b"\r\n"));
                                } else {
                                    queued.push(data);
                                }
                            }
                            // Request trailers are not forwarded.
                            continue;
                        }
                        Poll::Ready(None) => {
                            if chunked {
                                queued.push(Bytes::from_static(b"0\r\n\r\n"));
                            }
                            req.body = None;
                            continue;
                        }
                        Poll::Ready(Some(Err(e))) => {
                            return Poll::Ready(Err(fail(H1Error::Body(e), written, false)));
                        }
                        // Waiting for the client: what TLS holds back is flushed meanwhile.
                        Poll::Pending => {}
                    }
                }
                // Everything is written; TLS may still hold records back.
                if !flushed {
                    match Pin::new(&mut self.io).poll_flush(cx) {
                        Poll::Ready(Ok(())) => flushed = true,
                        Poll::Ready(Err(e)) => write_failed = Some(e),
                        Poll::Pending => {}
                    }
                }
                break;
            }
            // Only once the head is out: a socket that has not been read since its last short read
            // is not read again (no syscall) until the reactor says it is readable.
            if written < req.head.len() {
                return Poll::Pending;
            }
            loop {
                if !self.buf.is_empty() {
                    match head::parse_response(&mut self.buf, &req.method) {
                        Ok(Some(parsed)) => {
                            let whole =
                                write_failed.is_none() && req.body.is_none() && queued.is_empty();
                            return Poll::Ready(Ok((parsed, whole)));
                        }
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Err(fail(e, written, true))),
                    }
                }
                let received = !self.buf.is_empty();
                match self.io.poll_read_buf(cx, &mut self.buf, &mut self.want) {
                    Poll::Ready(Ok(0)) => {
                        let error = write_failed.take().map_or(H1Error::Closed, H1Error::from);
                        return Poll::Ready(Err(fail(error, written, received)));
                    }
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => {
                        let error = write_failed.take().unwrap_or(e);
                        return Poll::Ready(Err(fail(error.into(), written, received)));
                    }
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await
    }
}

/// A backend response's body, read off its connection by the client's task as the client's
/// connection wants it. `done` is called with the connection once the body has ended cleanly and
/// the connection can carry another request (see [`ResponseBody::take_reusable`]).
pub struct ResponseBody {
    conn: Option<Conn>,
    decoder: Decoder,
    /// The connection survives this exchange (keep-alive, and the request went out whole).
    keep_alive: bool,
    /// An error found (while looking ahead, or reading), returned after the data before it has
    /// had a chance to go out: see `poll_frame`.
    failed: Option<H1Error>,
    /// A poll returned `Pending` since the last data frame.
    yielded: bool,
}

impl ResponseBody {
    pub fn new(conn: Conn, framing: Framing, keep_alive: bool) -> ResponseBody {
        ResponseBody {
            conn: Some(conn),
            decoder: Decoder::new(framing),
            keep_alive,
            failed: None,
            yielded: true,
        }
    }

    /// The connection, if the body ended and the connection can be pooled again.
    pub fn take_reusable(&mut self) -> Option<Conn> {
        if !(self.keep_alive && self.decoder.is_done()) {
            return None;
        }
        let mut conn = self.conn.take().filter(|c| c.buf.is_empty())?;
        // An idle connection keeps no more than a small response's room. (`capacity` counts only
        // the room left in the buffer's view, not the allocation it pins: a connection whose
        // reads grew lets its buffer go.)
        if conn.want > io::MIN_READ {
            conn.buf = BytesMut::new();
            conn.want = io::MIN_READ;
        }
        Some(conn)
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = H1Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, H1Error>>> {
        let this = &mut *self;
        loop {
            if let Some(e) = this.failed.take() {
                this.keep_alive = false;
                // The client's side buffers a frame and polls for the next before it writes: an
                // error returned at once would discard the head and bytes before it, and the client
                // would see a bare close instead of a truncated response. Yield once first.
                if !this.yielded {
                    this.failed = Some(e);
                    this.yielded = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                // The connection is out of step now: it goes, and nothing more is read from it.
                this.conn = None;
                return Poll::Ready(Some(Err(e)));
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match this.decoder.step(&mut conn.buf) {
                Ok(decode::Step::Data(data)) => {
                    // Look ahead in what is buffered, so the end of the body is known with its
                    // last bytes (`is_end_stream`) and the connection goes back to the pool as
                    // soon as the client's side has them.
                    if let Err(e) = this.decoder.settle(&mut conn.buf) {
                        this.failed = Some(e);
                    }
                    this.yielded = false;
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(decode::Step::End) => return Poll::Ready(None),
                Ok(decode::Step::NeedMore) => {}
                Err(e) => {
                    this.failed = Some(e);
                    continue;
                }
            }
            match conn.io.poll_read_buf(cx, &mut conn.buf, &mut conn.want) {
                Poll::Ready(Ok(0)) => {
                    this.keep_alive = false;
                    match this.decoder.at_eof() {
                        Ok(()) => return Poll::Ready(None),
                        Err(e) => this.failed = Some(e),
                    }
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => this.failed = Some(e.into()),
                Poll::Pending => {
                    this.yielded = true;
                    return Poll::Pending;
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.decoder.is_done() && self.failed.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// The response as the proxy handles it: the parsed head over `body`.
pub fn response<B>(parsed: Parsed, body: B) -> Response<B> {
    let mut resp = Response::new(body);
    *resp.status_mut() = parsed.status;
    *resp.version_mut() = parsed.version;
    *resp.headers_mut() = parsed.headers;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A body of unknown length, frame by frame.
    struct Frames(VecDeque<&'static str>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front().map(|s| Ok(Frame::data(Bytes::from(s)))))
        }
    }

    #[tokio::test]
    async fn an_exchange_streams_both_bodies_and_the_connection_is_kept_until_the_backend_closes() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let (mut got, mut b) = (Vec::new(), [0u8; 1024]);
            while !got.ends_with(b"0\r\n\r\n") {
                let n = s.read(&mut b).await.unwrap();
                assert!(
                    n > 0,
                    "closed mid-request: {:?}",
                    String::from_utf8_lossy(&got)
                );
                got.extend_from_slice(&b[..n]);
            }
            s.write_all(
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            )
            .await
            .unwrap();
            let n = s.read(&mut b).await.unwrap();
            s.write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .unwrap();
            (
                String::from_utf8(got).unwrap(),
                String::from_utf8_lossy(&b[..n]).into_owned(),
            )
        });
        let mut conn = Conn::new(Io::Plain(TcpStream::connect(addr).await.unwrap()));
        let req = http::Request::post("/up")
            .header("host", "b")
            .body(Frames(VecDeque::from(["he", "llo"])).boxed_unsync())
            .unwrap();
        let mut out = Outgoing::new(req);
        let (parsed, whole) = conn.send(&mut out).await.unwrap();
        assert!(whole && parsed.keep_alive);
        assert_eq!(
            (parsed.status, parsed.framing),
            (StatusCode::OK, Framing::Chunked)
        );
        let mut body = ResponseBody::new(conn, parsed.framing, true);
        let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(&data[..], b"abc");
        assert!(
            body.is_end_stream(),
            "the last chunk came with the data: known at once"
        );
        let mut conn = body
            .take_reusable()
            .expect("a clean end keeps the connection");
        assert!(conn.is_reusable());
        let get = http::Request::get("/again")
            .header("host", "b")
            .body(wasmgate_core::body::full(Bytes::new()))
            .unwrap();
        let (parsed, _) = conn.send(&mut Outgoing::new(get)).await.unwrap();
        assert_eq!(
            (parsed.status, parsed.framing),
            (StatusCode::NO_CONTENT, Framing::Empty)
        );
        let (first, second) = server.await.unwrap();
        assert_eq!(
            first,
            "POST /up HTTP/1.1\r\nhost: b\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"
        );
        assert_eq!(second, "GET /again HTTP/1.1\r\nhost: b\r\n\r\n");
        // The backend has closed its end: once the reactor has seen it, the idle connection is not
        // handed out again.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        assert!(!conn.is_reusable());
    }
}

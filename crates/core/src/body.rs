//! Body plumbing: one boxed body type for everything the proxy sends, a size limit that fails the
//! stream (never buffers), and byte counters for the access log.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// The error a [`Metered`] body yields when the client sends more than the limit.
#[derive(Debug, thiserror::Error)]
#[error("request body exceeds the limit of {0} bytes")]
pub struct TooLarge(pub u64);

/// Counts data bytes into a shared counter and, with a limit, fails once it is passed.
pub struct Metered<B> {
    inner: B,
    counter: Arc<AtomicU64>,
    seen: u64,
    limit: Option<u64>,
}

impl<B> Metered<B> {
    pub fn new(inner: B, counter: Arc<AtomicU64>, limit: Option<u64>) -> Self {
        Metered {
            inner,
            counter,
            seen: 0,
            limit,
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let n = data.len() as u64;
                    this.seen += n;
                    this.counter.fetch_add(n, Ordering::Relaxed);
                    if let Some(limit) = this.limit {
                        if this.seen > limit {
                            return Poll::Ready(Some(Err(Box::new(TooLarge(limit)))));
                        }
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// How a response body ended, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ended {
    /// Sent to its end (else the client went away, or the body failed).
    pub complete: bool,
    /// Why the body failed, when it did and the error is one of ours.
    pub error: Option<&'static str>,
}

/// Runs `on_done` once, when the body has been sent completely, failed, or was dropped (client gone):
/// that moment, not the response head, is when a request is over and its access-log line is written.
pub struct OnDone<B: Body, F: FnOnce(Ended)> {
    inner: B,
    on_done: Option<F>,
}

impl<B: Body, F: FnOnce(Ended)> OnDone<B, F> {
    pub fn new(inner: B, on_done: F) -> Self {
        OnDone {
            inner,
            on_done: Some(on_done),
        }
    }
}

impl<B, F> Body for OnDone<B, F>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
    F: FnOnce(Ended) + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(None) => {
                if let Some(f) = this.on_done.take() {
                    f(Ended {
                        complete: true,
                        error: None,
                    });
                }
            }
            Poll::Ready(Some(Err(e))) => {
                if let Some(f) = this.on_done.take() {
                    f(Ended {
                        complete: false,
                        error: Some(error_kind(e.as_ref())),
                    });
                }
            }
            _ => {}
        }
        res
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, F: FnOnce(Ended)> Drop for OnDone<B, F> {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            // An empty body is never polled; any other body dropped early means the client went away.
            f(Ended {
                complete: self.inner.is_end_stream(),
                error: None,
            });
        }
    }
}

/// The access log's name for a body error: ours by type, anything else by side.
pub fn error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    let mut src = Some(e);
    while let Some(e) = src {
        if e.is::<BackendBodyIdle>() {
            return "upstream_body_idle";
        }
        if e.is::<TooLarge>() {
            return "body_too_large";
        }
        if let Some(c) = e.downcast_ref::<ClientBodyError>() {
            return c.kind();
        }
        src = e.source();
    }
    "upstream_body"
}

/// Why a request body could not be read from the client.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// Bad chunked framing, a connection reset mid-body: the client's fault, a 400.
    #[error("the request body is malformed or was cut: {0}")]
    Broken(hyper::Error),
    #[error("no request body bytes for {0:?} (timeouts.io)")]
    Stalled(Duration),
    #[error("the request body came slower than limits.min_rate ({0} bytes/s)")]
    TooSlow(u64),
}

impl ClientBodyError {
    pub fn kind(&self) -> &'static str {
        match self {
            ClientBodyError::Broken(_) => "bad_request_body",
            ClientBodyError::Stalled(_) => "client_body_timeout",
            ClientBodyError::TooSlow(_) => "client_body_too_slow",
        }
    }
}

/// A backend that went silent in the middle of its response body for the route's `timeouts.idle`
/// (nginx's `proxy_read_timeout` between two reads). The client's response is cut.
#[derive(Debug, thiserror::Error)]
#[error("the backend sent nothing of its response body for {0:?} (timeouts.idle)")]
pub struct BackendBodyIdle(pub Duration);

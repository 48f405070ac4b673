//! Body plumbing: one boxed body type for everything the proxy sends, a size limit that fails the
//! stream (never buffers), and byte counters for the access log.

use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

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

/// Runs `on_done` once, when the body has been sent completely or dropped (client gone): that moment,
/// not the response head, is when a request is over and its access-log line is written.
pub struct OnDone<B: Body, F: FnOnce(bool)> {
    inner: B,
    on_done: Option<F>,
}

impl<B: Body, F: FnOnce(bool)> OnDone<B, F> {
    pub fn new(inner: B, on_done: F) -> Self {
        OnDone {
            inner,
            on_done: Some(on_done),
        }
    }
}

impl<B, F> Body for OnDone<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnOnce(bool) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(None) => {
                if let Some(f) = this.on_done.take() {
                    f(true);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(f) = this.on_done.take() {
                    f(false);
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

impl<B: Body, F: FnOnce(bool)> Drop for OnDone<B, F> {
    fn drop(&mut self) {
        if let Some(f) = self.on_done.take() {
            // An empty body is never polled; any other body dropped early means the client went away.
            f(self.inner.is_end_stream());
        }
    }
}

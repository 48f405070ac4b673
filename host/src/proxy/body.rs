//! Body plumbing: one boxed body type for everything the proxy sends, a size limit that fails the
//! stream (never buffers), and byte counters for the access log.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;

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
        if e.is::<crate::proxy::client::BackendBodyIdle>() {
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

/// The request body as the client sends it, held to `timeouts.io` between bytes and, with
/// `limits.min_rate`, to that rate over each window of waiting. Only time spent waiting on the client
/// counts: while the backend does not read, this body is not polled and no clock runs (as Apache's
/// `mod_reqtimeout` counts only reads). Errors are typed, so the backend exchange's failure is mapped
/// to the client's fault (400/408), not the backend's (502).
pub struct ClientBody {
    inner: Incoming,
    io: Duration,
    min_rate: Option<crate::config::MinRate>,
    /// Armed while the client owes us bytes.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pending_since: Option<tokio::time::Instant>,
    /// Waiting time and bytes in the current `min_rate` window.
    waited: Duration,
    window_bytes: u64,
}

impl ClientBody {
    pub fn new(inner: Incoming, io: Duration, min_rate: Option<crate::config::MinRate>) -> Self {
        ClientBody {
            inner,
            io,
            min_rate,
            timer: None,
            pending_since: None,
            waited: Duration::ZERO,
            window_bytes: 0,
        }
    }

    /// Close the waiting period that began at `pending_since`; a window judged too slow is an error.
    fn account(&mut self, now: tokio::time::Instant) -> Result<(), ClientBodyError> {
        if let Some(since) = self.pending_since.take() {
            self.waited += now - since;
        }
        if let Some(rate) = self.min_rate {
            if self.waited >= rate.window {
                let want = rate.bytes_per_sec * rate.window.as_secs();
                if self.window_bytes < want {
                    return Err(ClientBodyError::TooSlow(rate.bytes_per_sec));
                }
                self.waited = Duration::ZERO;
                self.window_bytes = 0;
            }
        }
        Ok(())
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    let now = tokio::time::Instant::now();
                    if let Some(d) = frame.data_ref() {
                        this.window_bytes += d.len() as u64;
                    }
                    if let Err(e) = this.account(now) {
                        return Poll::Ready(Some(Err(Box::new(e))));
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(Box::new(ClientBodyError::Broken(e)))))
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => {}
            }
            let now = tokio::time::Instant::now();
            let since = *this.pending_since.get_or_insert(now);
            // Wake at the io deadline, or when the rate window fills, whichever is first.
            let mut wake = since + this.io;
            if let Some(rate) = this.min_rate {
                wake = wake.min(since + rate.window.saturating_sub(this.waited));
            }
            let timer = this
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(wake)));
            if timer.deadline() != wake {
                timer.as_mut().reset(wake);
            }
            if timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let now = tokio::time::Instant::now();
            if now - since >= this.io {
                return Poll::Ready(Some(Err(Box::new(ClientBodyError::Stalled(this.io)))));
            }
            if let Err(e) = this.account(now) {
                return Poll::Ready(Some(Err(Box::new(e))));
            }
            // A window passed at an acceptable rate: wait on, with a fresh window.
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

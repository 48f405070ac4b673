//! The client's request body, held to the route's timeouts (see [`ClientBody`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use wasmgate_core::body::{BoxError, ClientBodyError};

/// The request body as the client sends it, held to `timeouts.io` between bytes and, with
/// `limits.min_rate`, to that rate over each window of waiting. Only time spent waiting on the client
/// counts: while the backend does not read, this body is not polled and no clock runs (as Apache's
/// `mod_reqtimeout` counts only reads). Errors are typed, so the backend exchange's failure is mapped
/// to the client's fault (400/408), not the backend's (502).
pub struct ClientBody {
    inner: Incoming,
    io: Duration,
    min_rate: Option<wasmgate_config::MinRate>,
    /// Armed while the client owes us bytes.
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    pending_since: Option<tokio::time::Instant>,
    /// Waiting time and bytes in the current `min_rate` window.
    waited: Duration,
    window_bytes: u64,
}

impl ClientBody {
    pub fn new(inner: Incoming, io: Duration, min_rate: Option<wasmgate_config::MinRate>) -> Self {
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

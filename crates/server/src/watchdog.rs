//! One connection's clock: what it is doing (reading a head, idle, a request in flight, a response
//! waiting on the client) and when it must be closed for it.
//!
//! - the first request's head must be complete `header_read` after accept (slowloris);
//! - after a response, a next request must start within `keepalive` (idle keep-alive);
//! - a next request's head (or a request body still trickling in after its response was sent) must
//!   be complete `header_read` after its first byte;
//! - while a request is in flight, a response that waits on the client (it stopped reading) gets
//!   `io` of no progress, and with `min_rate` must be taken at that rate, judged over the window.
//!
//! Waiting on the backend is not the client's fault: the route's `timeouts.response` bounds the head,
//! `timeouts.idle` the silences inside its body. The request body's own timeouts are in
//! [`wasmgate_proxy::body::ClientBody`]. HTTP/2 connections only get the idle and send rules (their
//! bytes include PINGs and SETTINGS, not just request heads).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use wasmgate_config::MinRate;

/// What one connection's watchdog knows. Times are milliseconds since `start`.
pub struct Activity {
    start: Instant,
    /// Requests whose response has not been sent completely (or dropped).
    in_flight: AtomicUsize,
    /// When the connection last had nothing in flight.
    idle_since: AtomicU64,
    /// When the first byte arrived while idle (a request head being read), or `NOTHING`.
    first_byte: AtomicU64,
    /// A request has been answered: later idle periods are keep-alive waits.
    served: AtomicBool,
    /// Response bodies that handed the connection a frame and have not been asked for the next one
    /// yet: they wait on the client to take what was sent.
    send_waiting: AtomicUsize,
    /// When a response body was last asked for more, or bytes last went out to the client.
    send_progress: AtomicU64,
    /// Bytes written to the client, for `min_rate`.
    sent: AtomicU64,
}

const NOTHING: u64 = u64::MAX;

impl Activity {
    pub fn new() -> Self {
        Activity {
            start: Instant::now(),
            in_flight: AtomicUsize::new(0),
            idle_since: AtomicU64::new(0),
            first_byte: AtomicU64::new(NOTHING),
            served: AtomicBool::new(false),
            send_waiting: AtomicUsize::new(0),
            send_progress: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    pub fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Has a request arrived on this connection (answered or in flight)?
    pub fn started(&self) -> bool {
        self.served.load(Ordering::SeqCst) || self.in_flight.load(Ordering::SeqCst) > 0
    }

    /// Nothing in flight and no byte of a next request: closing now loses nothing but the race
    /// with a request the client is sending this very moment.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.in_flight.load(Ordering::SeqCst) > 0
            || self.first_byte.load(Ordering::SeqCst) != NOTHING
        {
            return None;
        }
        let since = self.idle_since.load(Ordering::SeqCst);
        Some(Duration::from_millis(self.now().saturating_sub(since)))
    }
}

impl Default for Activity {
    fn default() -> Self {
        Activity::new()
    }
}

/// One request in flight on a connection.
pub struct InFlight(Arc<Activity>);

impl InFlight {
    pub fn start(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // Reset the idle clock before the count drops, so a byte read right after is not lost.
        a.idle_since.store(a.now(), Ordering::SeqCst);
        a.first_byte.store(NOTHING, Ordering::SeqCst);
        a.served.store(true, Ordering::SeqCst);
        a.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A response body on its way to the client: notes when it waits on the client (for the send rules)
/// and ends its request's [`InFlight`] when it is done or dropped.
pub struct Paced<B> {
    inner: B,
    activity: Arc<Activity>,
    waiting: bool,
    in_flight: Option<InFlight>,
}

impl<B> Paced<B> {
    pub fn new(inner: B, in_flight: InFlight) -> Self {
        Paced {
            inner,
            activity: in_flight.0.clone(),
            waiting: false,
            in_flight: Some(in_flight),
        }
    }

    fn stop_waiting(&mut self) {
        if self.waiting {
            self.waiting = false;
            self.activity.send_waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl<B> Body for Paced<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = &mut *self;
        if this.waiting {
            // Asked for more: the client took the last frame.
            this.stop_waiting();
            let a = &this.activity;
            a.send_progress.store(a.now(), Ordering::SeqCst);
        }
        let res = Pin::new(&mut this.inner).poll_frame(cx);
        match &res {
            Poll::Ready(Some(Ok(frame))) => {
                if frame.is_data() {
                    let a = &this.activity;
                    if !this.waiting {
                        this.waiting = true;
                        a.send_waiting.fetch_add(1, Ordering::SeqCst);
                        a.send_progress.store(a.now(), Ordering::SeqCst);
                    }
                }
            }
            Poll::Ready(_) => {
                this.in_flight = None;
            }
            Poll::Pending => {}
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

impl<B> Drop for Paced<B> {
    fn drop(&mut self) {
        self.stop_waiting();
    }
}

/// Why the watchdog closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// A request head did not arrive (or finish) in time.
    HeaderRead,
    /// An idle keep-alive connection.
    Keepalive,
    /// The client stopped taking a response for `timeouts.io`.
    SendStalled,
    /// The client took a response slower than `limits.min_rate`.
    SendTooSlow,
}

impl Cut {
    pub fn describe(self) -> &'static str {
        match self {
            Cut::HeaderRead => "request head not complete within timeouts.header_read",
            Cut::Keepalive => "idle for timeouts.keepalive",
            Cut::SendStalled => "the client stopped reading the response for timeouts.io",
            Cut::SendTooSlow => "the client read the response slower than limits.min_rate",
        }
    }
}

/// The connection's timeouts.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub header_read: Duration,
    pub keepalive: Duration,
    pub io: Duration,
    pub min_rate: Option<MinRate>,
}

/// Resolves when the connection must be closed, saying why (see the module docs).
pub async fn watch(a: Arc<Activity>, limits: Limits, h2: bool) -> Cut {
    let ms = |d: Duration| d.as_millis() as u64;
    let (header_read, keepalive, io) =
        (ms(limits.header_read), ms(limits.keepalive), ms(limits.io));
    let window = limits.min_rate.map(|r| ms(r.window));
    // Nothing on the request path wakes the watchdog (three wake-ups and a timer per request, before):
    // it looks again at least every `period`, and every deadline lies at least `period` after the
    // event that starts it (accept, first byte, end of a response, the last progress of a send), so
    // none is missed or seen more than a period late. `min_rate` is sampled four times a window.
    let period = header_read
        .min(keepalive)
        .min(io)
        .min(window.map_or(u64::MAX, |w| w / 4))
        .max(1);
    // `min_rate` on sends: time spent waiting on the client in this window, and bytes sent by its start.
    let (mut waited, mut sent_mark, mut last) = (0u64, a.sent.load(Ordering::Relaxed), a.now());
    loop {
        let now = a.now();
        let (deadline, why) = if a.in_flight.load(Ordering::SeqCst) > 0 {
            if a.send_waiting.load(Ordering::SeqCst) > 0 {
                if let (Some(rate), Some(window)) = (limits.min_rate, window) {
                    waited += now - last;
                    if waited >= window {
                        let sent = a.sent.load(Ordering::Relaxed);
                        if sent - sent_mark < rate.bytes_per_sec * window / 1000 {
                            return Cut::SendTooSlow;
                        }
                        (waited, sent_mark) = (0, sent);
                    }
                }
                let progress = a.send_progress.load(Ordering::SeqCst);
                (Some(progress.saturating_add(io)), Cut::SendStalled)
            } else {
                (None, Cut::SendStalled)
            }
        } else if !a.served.load(Ordering::SeqCst) {
            (Some(header_read), Cut::HeaderRead)
        } else {
            let first = a.first_byte.load(Ordering::SeqCst);
            if first != NOTHING && !h2 {
                (Some(first.saturating_add(header_read)), Cut::HeaderRead)
            } else {
                let idle = a.idle_since.load(Ordering::SeqCst);
                (Some(idle.saturating_add(keepalive)), Cut::Keepalive)
            }
        };
        if a.in_flight.load(Ordering::SeqCst) == 0 {
            // A new response starts a new window.
            (waited, sent_mark) = (0, a.sent.load(Ordering::Relaxed));
        }
        last = now;
        if deadline.is_some_and(|at| now >= at) {
            return why;
        }
        let next = deadline.map_or(now + period, |at| at.min(now + period));
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            a.start + Duration::from_millis(next),
        ))
        .await;
    }
}

/// The client stream, noting the first byte that arrives while nothing is in flight, and every write
/// that makes progress (one frame of a large body can take long to go out: each write is progress).
pub struct Watched<S> {
    pub inner: S,
    pub activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            let a = &self.activity;
            if a.in_flight.load(Ordering::SeqCst) == 0
                && a.first_byte.load(Ordering::SeqCst) == NOTHING
            {
                let _ = a.first_byte.compare_exchange(
                    NOTHING,
                    a.now(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                );
            }
        }
        res
    }
}

impl<S> Watched<S> {
    fn wrote(&self, res: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = res {
            if *n > 0 {
                let a = &self.activity;
                a.sent.fetch_add(*n as u64, Ordering::Relaxed);
                a.send_progress.store(a.now(), Ordering::Relaxed);
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(&res);
        res
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(&res);
        res
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
    //! Each rule on its own, in real time with short limits. The assertions bound the cut from below
    //! (never early) and only loosely from above, so a busy machine cannot fail them.

    use super::*;
    use http_body_util::{BodyExt, Full};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SHORT: Duration = Duration::from_millis(80);
    const LONG: Duration = Duration::from_secs(30);
    const LATE: Duration = Duration::from_secs(10);

    fn limits(header_read: Duration, keepalive: Duration, io: Duration) -> Limits {
        Limits {
            header_read,
            keepalive,
            io,
            min_rate: None,
        }
    }

    /// The cut and how long it took; panics if none came within [`LATE`].
    async fn cut(a: &Arc<Activity>, limits: Limits, h2: bool) -> (Cut, Duration) {
        let t = Instant::now();
        let why = tokio::time::timeout(LATE, watch(a.clone(), limits, h2))
            .await
            .expect("the watchdog never cut");
        (why, t.elapsed())
    }

    fn served(a: &Arc<Activity>) {
        drop(InFlight::start(a.clone()));
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_cut_at_header_read() {
        let a = Arc::new(Activity::new());
        let (why, after) = cut(&a, limits(SHORT, LONG, LONG), false).await;
        assert_eq!(why, Cut::HeaderRead);
        assert!(after >= SHORT, "cut early: {after:?}");
    }

    #[tokio::test]
    async fn an_idle_keepalive_connection_is_cut_at_keepalive() {
        let a = Arc::new(Activity::new());
        served(&a);
        let (why, after) = cut(&a, limits(LONG, SHORT, LONG), false).await;
        assert_eq!(why, Cut::Keepalive);
        assert!(after >= SHORT, "cut early: {after:?}");
    }

    /// A next request's first byte starts its header_read clock on HTTP/1 (a slowloris on a
    /// kept-alive connection); on HTTP/2 bytes are PINGs and SETTINGS too, so only idleness counts.
    #[tokio::test]
    async fn a_next_heads_first_byte_starts_header_read_on_http1_only() {
        for h2 in [false, true] {
            let a = Arc::new(Activity::new());
            served(&a);
            let (mut client, server) = tokio::io::duplex(64);
            let mut watched = Watched {
                inner: server,
                activity: a.clone(),
            };
            client.write_all(b"G").await.unwrap();
            let mut byte = [0u8; 1];
            watched.read_exact(&mut byte).await.unwrap();
            let (why, _) = cut(&a, limits(SHORT, SHORT * 3, LONG), h2).await;
            let want = if h2 { Cut::Keepalive } else { Cut::HeaderRead };
            assert_eq!(why, want, "h2 = {h2}");
        }
    }

    /// Waiting on the backend is not the client's fault: a request in flight whose response has not
    /// started is never cut, however short the client's limits.
    #[tokio::test]
    async fn a_request_waiting_on_its_backend_is_not_cut() {
        let a = Arc::new(Activity::new());
        let _in_flight = InFlight::start(a.clone());
        let watched = watch(a.clone(), limits(SHORT, SHORT, SHORT), false);
        assert!(
            tokio::time::timeout(SHORT * 5, watched).await.is_err(),
            "cut a request that waits on its backend"
        );
    }

    /// A response the client stops reading: cut `io` after the last progress.
    #[tokio::test]
    async fn a_response_the_client_stops_taking_is_cut_at_io() {
        let a = Arc::new(Activity::new());
        let mut body = Paced::new(
            Full::new(Bytes::from_static(b"a frame the client never takes")),
            InFlight::start(a.clone()),
        );
        body.frame().await.unwrap().unwrap();
        let (why, after) = cut(&a, limits(LONG, LONG, SHORT), false).await;
        assert_eq!(why, Cut::SendStalled);
        assert!(after >= SHORT, "cut early: {after:?}");
        drop(body);
    }

    /// With `min_rate`, a client that takes nothing in a window of waiting is cut even though `io`
    /// has not run out.
    #[tokio::test]
    async fn a_client_reading_below_min_rate_is_cut() {
        let a = Arc::new(Activity::new());
        let mut body = Paced::new(
            Full::new(Bytes::from_static(b"slow")),
            InFlight::start(a.clone()),
        );
        body.frame().await.unwrap().unwrap();
        let mut l = limits(LONG, LONG, LONG);
        l.min_rate = Some(MinRate {
            bytes_per_sec: 1 << 20,
            window: SHORT,
        });
        let (why, after) = cut(&a, l, false).await;
        assert_eq!(why, Cut::SendTooSlow);
        assert!(after >= SHORT, "cut early: {after:?}");
    }
}

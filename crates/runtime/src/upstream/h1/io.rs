//! The byte stream under a backend connection (plain TCP or TLS over it), and reading into the
//! connection's buffer.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A connection to a backend. An enum, not a boxed trait object: the request path polls it
/// directly, and the pool can ask the socket whether an idle connection went away.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

/// How much the read buffer grows by when it runs low: a small response fits whole. A read that
/// fills what it was given doubles the next one's room, up to [`MAX_READ`], so a large body is not
/// read 8 KiB per syscall.
pub const MIN_READ: usize = 8 * 1024;
const MAX_READ: usize = 128 * 1024;

impl Io {
    /// Read what the socket has into the spare capacity of `buf`, which gets at least `*want`
    /// bytes of room when it runs low; `Ready(Ok(0))` is the end of the stream.
    pub fn poll_read_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut BytesMut,
        want: &mut usize,
    ) -> Poll<io::Result<usize>> {
        if buf.capacity() - buf.len() < MIN_READ / 4 {
            buf.reserve(*want);
        }
        let spare = buf.spare_capacity_mut();
        let room = spare.len();
        let mut rb = ReadBuf::uninit(spare);
        match Pin::new(&mut *self).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) => {
                let n = rb.filled().len();
                // SAFETY: `poll_read` initialised the first `n` bytes of the spare capacity.
                unsafe { buf.set_len(buf.len() + n) };
                if n == room {
                    *want = (*want * 2).min(MAX_READ);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Whether an idle connection is still quiet: the backend has neither closed it nor sent
    /// anything (bytes nobody asked for mean it is out of step). No syscall while the reactor saw
    /// nothing on the socket: tokio's readiness is polled, not the socket.
    pub fn is_quiet(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut probe = [std::mem::MaybeUninit::<u8>::uninit(); 1];
        let mut rb = ReadBuf::uninit(&mut probe);
        matches!(Pin::new(self).poll_read(&mut cx, &mut rb), Poll::Pending)
    }
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

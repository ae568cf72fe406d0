//! `--client-idle-timeout`: a connection whose client takes no bytes for that
//! long while the relay has bytes for it is cut.
//!
//! Watched where the bytes leave, on the connection's socket: a write that
//! stays pending (the client's receive window and the kernel's buffer are full)
//! arms a timer, and any progress disarms it. When it fires the write fails,
//! hyper drops the connection, and with it the answer: a streamed request is
//! then cancelled at its worker as when a client leaves.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::rt::{Read, ReadBufCursor, Write};
use prometheus_client::metrics::counter::Counter;
use tokio::time::Sleep;
use tracing::warn;

/// A connection's I/O, cut when its writes make no progress for `timeout`.
pub(crate) struct WriteProgress<T> {
    inner: T,
    /// `None`: never cut.
    timeout: Option<Duration>,
    /// Armed while a write is pending.
    stalled: Option<Pin<Box<Sleep>>>,
    peer: SocketAddr,
    /// Counts the connections cut.
    cuts: Counter,
}

impl<T> WriteProgress<T> {
    /// `inner`, cut after `timeout` without write progress (`None`: never).
    pub(crate) fn new(
        inner: T,
        timeout: Option<Duration>,
        peer: SocketAddr,
        cuts: Counter,
    ) -> Self {
        Self {
            inner,
            timeout,
            stalled: None,
            peer,
            cuts,
        }
    }

    /// Passes a write's result on, arming the timer while it is pending and
    /// failing it once the timer has fired.
    fn watch<R>(
        &mut self,
        cx: &mut Context<'_>,
        result: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if result.is_ready() {
            self.stalled = None;
            return result;
        }
        let Some(timeout) = self.timeout else {
            return result;
        };
        let stalled = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if stalled.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.cuts.inc();
        // Once: the connection ends with this error.
        self.timeout = None;
        warn!(peer = %self.peer, timeout_secs = timeout.as_secs_f64(),
            "client took no bytes for --client-idle-timeout; closing its connection");
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "client made no write progress",
        )))
    }
}

impl<T: Read + Unpin> Read for WriteProgress<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for WriteProgress<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.watch(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.watch(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_flush(cx);
        this.watch(cx, result)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.watch(cx, result)
    }
}

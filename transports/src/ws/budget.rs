//! A byte budget for a WebSocket link until its worker registers.
//!
//! tungstenite's message limit is fixed when the socket is made, at the
//! configured frame limit; the link's reader refuses a larger-than-register
//! frame only once tungstenite has received it whole. This budget, under
//! tungstenite, bounds what is read at all before register: a frame far over
//! the before-register limit ends the link after a few hundred kilobytes,
//! never after the configured limit's worth of bytes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::ReadLimit;

/// Bytes allowed before register beyond twice the before-register frame
/// limit: room for WebSocket frame headers and a few pings.
const SLACK: usize = 64 * 1024;

/// A byte stream that, until `reads` is raised, lets through at most twice its
/// limit plus a little; past that, reading fails with [`BudgetExceeded`].
pub struct PreRegisterBudget<S> {
    inner: S,
    reads: ReadLimit,
    left: usize,
}

/// The error a [`PreRegisterBudget`] fails with, inside an `io::Error`.
#[derive(Debug, thiserror::Error)]
#[error("before register: over {budget} bytes read (a register takes at most {limit})")]
pub struct BudgetExceeded {
    /// The bytes allowed before register.
    pub budget: usize,
    /// The before-register frame limit.
    pub limit: usize,
}

impl<S> PreRegisterBudget<S> {
    /// `inner`, with a budget from the limit `reads` has now.
    pub fn new(inner: S, reads: ReadLimit) -> Self {
        let left = reads
            .get()
            .max_frame_bytes
            .saturating_mul(2)
            .saturating_add(SLACK);
        Self { inner, reads, left }
    }

    fn exceeded(&self) -> io::Error {
        let limit = self.reads.get().max_frame_bytes;
        io::Error::new(
            io::ErrorKind::InvalidData,
            BudgetExceeded {
                budget: limit.saturating_mul(2).saturating_add(SLACK),
                limit,
            },
        )
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for PreRegisterBudget<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.reads.is_raised() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        if self.left == 0 {
            return Poll::Ready(Err(self.exceeded()));
        }
        if buf.remaining() <= self.left {
            let before = buf.filled().len();
            ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
            self.left -= buf.filled().len() - before;
            return Poll::Ready(Ok(()));
        }
        // Near the end of the budget: read no more than is left.
        let mut chunk = vec![0u8; self.left.min(8192)];
        let mut small = ReadBuf::new(&mut chunk);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut small))?;
        let got = small.filled().len();
        buf.put_slice(&chunk[..got]);
        self.left -= got;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for PreRegisterBudget<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// The budget error inside a WebSocket error, if that is what it is.
pub(crate) fn budget_exceeded(
    error: &tokio_tungstenite::tungstenite::Error,
) -> Option<&BudgetExceeded> {
    match error {
        tokio_tungstenite::tungstenite::Error::Io(io) => io.get_ref()?.downcast_ref(),
        _ => None,
    }
}

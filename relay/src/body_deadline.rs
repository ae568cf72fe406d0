//! `--body-read-timeout`: every request body must have arrived within that
//! long of its request head, on every route, or reading it fails.
//!
//! The inference routes turn that failure into 408 `body_read_timeout`; any
//! other route's read fails as a body that broke off. Either way the answer
//! says `Connection: close`, and the connection ends with it.

use std::error::Error;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// The error a body gives once its deadline has passed.
#[derive(Debug)]
pub(crate) struct BodyDeadlinePassed;

impl fmt::Display for BodyDeadlinePassed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request body did not arrive within --body-read-timeout")
    }
}

impl Error for BodyDeadlinePassed {}

/// Whether `error`, or anything it wraps, is a passed body deadline.
pub(crate) fn is_deadline(error: &(dyn Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(error) = next {
        if error.is::<BodyDeadlinePassed>() {
            return true;
        }
        next = error.source();
    }
    false
}

/// A request body that fails once its deadline passes before its end.
pub(crate) struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    /// Made at the first read that has to wait, so a body nobody reads costs no timer.
    timer: Option<Pin<Box<Sleep>>>,
    failed: bool,
    /// Set when the deadline passed, for the connection to close after its answer.
    passed: Arc<AtomicBool>,
}

impl DeadlineBody {
    /// `inner`, which must have arrived `timeout` from now, and the flag it
    /// sets if it has not: the rest of such a body is never read, so the
    /// connection cannot serve another request and must close after its answer.
    pub(crate) fn new(inner: Incoming, timeout: Duration) -> (Self, Arc<AtomicBool>) {
        let passed = Arc::new(AtomicBool::new(false));
        let body = Self {
            inner,
            deadline: Instant::now() + timeout,
            timer: None,
            failed: false,
            passed: Arc::clone(&passed),
        };
        (body, passed)
    }
}

impl Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut this.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        let deadline = this.deadline;
        let timer = this
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        this.failed = true;
        this.passed.store(true, Ordering::Release);
        Poll::Ready(Some(Err(Box::new(BodyDeadlinePassed))))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! Reading a request body within its limits: its size (`--max-body-bytes`), the
//! time it may take to arrive (`--body-read-timeout`, enforced by
//! [`crate::body_deadline`] and answered here with 408), and the bytes all bodies
//! may hold at once (`--max-buffered-request-bytes`).
//!
//! A body is read into one buffer, sized from its `Content-Length` up front (or
//! grown by doubling when it has none), so it costs its own size once and is
//! never copied again: the same bytes go to the worker.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use bytes::{Bytes, BytesMut};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body_deadline::is_deadline;
use crate::codes;
use crate::error::ApiError;

/// The budget is counted in KiB, so a permit count fits in a `u32`.
const UNIT: usize = 1024;

/// How long a body may wait for room in the budget before it is refused with 503.
pub(crate) const BUDGET_WAIT: Duration = Duration::from_secs(5);

/// The bytes all request bodies held in memory may take together.
#[derive(Clone, Debug)]
pub(crate) struct BodyBudget {
    /// `None`: no budget.
    units: Option<Arc<Semaphore>>,
    total_units: usize,
}

/// Room a body holds in the [`BodyBudget`], given back when dropped (when its request ends).
#[derive(Debug, Default)]
pub(crate) struct HeldBytes {
    permit: Option<OwnedSemaphorePermit>,
}

impl HeldBytes {
    /// Bytes held.
    fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits() * UNIT)
    }
}

impl BodyBudget {
    /// A budget of `bytes` (0: no budget).
    pub(crate) fn new(bytes: usize) -> Self {
        let total_units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        Self {
            units: (bytes != 0).then(|| Arc::new(Semaphore::new(total_units))),
            total_units,
        }
    }

    /// Whether a body of `bytes` fits the whole budget at all.
    fn could_ever_hold(&self, bytes: usize) -> bool {
        self.units.is_none() || bytes.div_ceil(UNIT) <= self.total_units
    }

    /// Adds room for `bytes` more to `held`, waiting up to [`BUDGET_WAIT`] for it.
    async fn take(&self, bytes: usize, held: &mut HeldBytes) -> Result<(), ApiError> {
        let Some(units) = &self.units else {
            return Ok(());
        };
        let wanted = bytes.div_ceil(UNIT);
        if wanted == 0 {
            return Ok(());
        }
        let already = held.permit.as_ref().map_or(0, |p| p.num_permits());
        let Ok(count) = u32::try_from(wanted) else {
            return Err(busy());
        };
        if already + wanted > self.total_units {
            return Err(busy());
        }
        let permit = tokio::time::timeout(BUDGET_WAIT, Arc::clone(units).acquire_many_owned(count))
            .await
            .map_err(|_| busy())?
            .map_err(|_| busy())?;
        match &mut held.permit {
            Some(mine) => mine.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }
}

/// The room in the budget a body takes with its first bytes; it doubles from there.
const FIRST_BUDGET_STEP: usize = 64 * 1024;

/// What bounds the reading of one body.
#[derive(Clone, Copy, Debug)]
pub(super) struct BodyLimits<'a> {
    /// Largest body.
    pub(super) max_bytes: usize,
    /// The bytes all bodies may hold at once.
    pub(super) budget: &'a BodyBudget,
}

/// Reads `body` within `limits`: its bytes, and the room they hold in the budget.
pub(super) async fn read_body(
    body: Body,
    limits: BodyLimits<'_>,
) -> Result<(Bytes, HeldBytes), ApiError> {
    collect(body, limits).await
}

async fn collect(mut body: Body, limits: BodyLimits<'_>) -> Result<(Bytes, HeldBytes), ApiError> {
    let max = limits.max_bytes;
    let declared = body.size_hint().exact();
    let declared = match declared.map(usize::try_from) {
        Some(Ok(len)) if len <= max => len,
        Some(_) => return Err(too_large(max)),
        None => 0,
    };
    if !limits.budget.could_ever_hold(declared) {
        return Err(busy());
    }
    let mut held = HeldBytes::default();
    // Address space for the declared length, but no room in the budget yet:
    // room is taken as bytes arrive, so a client that declares 32 MiB and
    // sends nothing holds nothing others could have used.
    let mut buffer = BytesMut::with_capacity(declared);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            if is_deadline(&error) {
                return too_slow();
            }
            ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_BODY,
                format!("Cannot read the request body: {error}"),
            )
        })?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let needed = buffer.len() + data.len();
        if needed > max {
            return Err(too_large(max));
        }
        if needed > held.bytes() {
            // Room grows by doubling from a first step, never past the declared
            // length (or the limit, for a body without one).
            let ceiling = if declared > 0 { declared } else { max };
            let target = (held.bytes() * 2)
                .max(FIRST_BUDGET_STEP)
                .min(ceiling)
                .max(needed);
            limits.budget.take(target - held.bytes(), &mut held).await?;
        }
        if needed > buffer.capacity() {
            // A body without a length (or longer than it said): grown by doubling, within the limit.
            let target = needed.max(buffer.capacity() * 2).min(max);
            buffer.reserve(target - buffer.len());
        }
        buffer.extend_from_slice(&data);
    }
    Ok((buffer.freeze(), held))
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        codes::REQUEST_TOO_LARGE,
        format!("The request body exceeds the limit of {limit} bytes."),
    )
}

/// The 408 for a body that did not arrive within `--body-read-timeout` (see [`crate::body_deadline`]).
fn too_slow() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        codes::BODY_READ_TIMEOUT,
        "The request body did not arrive in time.",
    )
}

/// The 503 when the bodies held in memory leave no room for this one.
fn busy() -> ApiError {
    let mut error = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::SERVER_BUSY,
        "The relay holds as many request bytes as it allows; try again shortly.",
    );
    error.retry_after_secs = Some(1);
    error
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(budget: &BodyBudget) -> BodyLimits<'_> {
        BodyLimits {
            max_bytes: 1 << 20,
            budget,
        }
    }

    #[tokio::test]
    async fn a_body_takes_its_size_from_the_budget_until_dropped() {
        let budget = BodyBudget::new(64 * 1024);
        let (body, held) = read_body(Body::from(vec![b'x'; 40 * 1024]), limits(&budget))
            .await
            .unwrap();
        assert_eq!(body.len(), 40 * 1024);
        assert_eq!(held.bytes(), 40 * 1024);
        // A second one does not fit beside it; a body larger than the whole
        // budget never fits and is refused without waiting.
        let error = read_body(Body::from(vec![b'x'; 128 * 1024]), limits(&budget))
            .await
            .unwrap_err();
        assert_eq!(
            (error.status, error.code),
            (StatusCode::SERVICE_UNAVAILABLE, "server_busy")
        );
        drop(held);
        let (_, held) = read_body(Body::from(vec![b'x'; 64 * 1024]), limits(&budget))
            .await
            .unwrap();
        assert_eq!(held.bytes(), 64 * 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waits_briefly_for_room_then_gets_503() {
        let budget = BodyBudget::new(64 * 1024);
        let (_, _held) = read_body(Body::from(vec![b'x'; 60 * 1024]), limits(&budget))
            .await
            .unwrap();
        let started = tokio::time::Instant::now();
        let error = read_body(Body::from(vec![b'x'; 8 * 1024]), limits(&budget))
            .await
            .unwrap_err();
        assert_eq!(error.code, "server_busy");
        assert_eq!(error.retry_after_secs, Some(1));
        assert_eq!(started.elapsed(), BUDGET_WAIT);
    }

    #[tokio::test]
    async fn a_body_with_a_length_is_read_into_one_buffer_of_that_size() {
        let budget = BodyBudget::new(0);
        let (body, _) = read_body(Body::from(vec![7u8; 100_000]), limits(&budget))
            .await
            .unwrap();
        assert_eq!(body.len(), 100_000);
        let error = read_body(Body::from(vec![7u8; (1 << 20) + 1]), limits(&budget))
            .await
            .unwrap_err();
        assert_eq!(error.status, StatusCode::PAYLOAD_TOO_LARGE);
    }

    /// A body that says it is `declared` bytes long, sends `sent` of them, then stalls.
    struct Stalled {
        declared: u64,
        sent: Option<Bytes>,
    }

    impl http_body::Body for Stalled {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            match self.sent.take() {
                Some(data) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                None => std::task::Poll::Pending,
            }
        }

        fn size_hint(&self) -> http_body::SizeHint {
            http_body::SizeHint::with_exact(self.declared)
        }
    }

    #[tokio::test]
    async fn a_body_that_declares_much_and_sends_little_holds_only_what_it_sent() {
        let budget = BodyBudget::new(256 * 1024);
        let mut stalled = Vec::new();
        for _ in 0..3 {
            let body = Body::new(Stalled {
                declared: 200 * 1024,
                sent: Some(Bytes::from_static(b"{\"model\":")),
            });
            let reading = tokio::spawn({
                let budget = budget.clone();
                async move { read_body(body, limits(&budget)).await.map(|_| ()) }
            });
            stalled.push(reading);
        }
        tokio::task::yield_now().await;
        // Three stalled bodies declaring 600 KiB in all hold one first step
        // each, so an ordinary body still finds room at once.
        let (body, held) = read_body(Body::from(vec![b'x'; 40 * 1024]), limits(&budget))
            .await
            .unwrap();
        assert_eq!(body.len(), 40 * 1024);
        assert_eq!(held.bytes(), 40 * 1024);
        for reading in stalled {
            assert!(!reading.is_finished());
            reading.abort();
        }
    }
}

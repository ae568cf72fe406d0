//! A streamed answer: the worker's chunks passed on byte for byte as they come.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use futures_util::stream;
use modelrelay_core::relay::Outcome;

use crate::error::{ApiError, ApiFlavor};
use crate::hub::response_queue::{ResponseEvent, ResponseReceiver};

use super::body::HeldBytes;
use super::guard::ClientGuard;
use super::respond::Asked;

/// Where a streamed answer is: what it still has to hand over.
struct Streaming {
    first: Option<Bytes>,
    events: ResponseReceiver,
    guard: ClientGuard,
    model: String,
    flavor: ApiFlavor,
    done: bool,
    /// The request body's room in the budget, given back when the stream ends.
    _held: HeldBytes,
}

/// A streaming answer: the chunks as they come, byte for byte; a failure becomes one error event.
pub(super) fn event_stream(
    first: Bytes,
    events: ResponseReceiver,
    guard: ClientGuard,
    asked: Asked,
) -> Response {
    let state = Streaming {
        first: Some(first),
        events,
        guard,
        model: asked.model,
        flavor: asked.flavor,
        done: false,
        _held: asked.held,
    };
    let chunks = stream::unfold(state, |mut state| async move {
        let chunk = state.next_chunk().await?;
        Some((Ok::<_, Infallible>(chunk), state))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(chunks))
        .expect("static headers are valid")
}

impl Streaming {
    /// The next bytes for the client, or `None` once the stream is over.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if let Some(first) = self.first.take() {
            self.guard.handing_over(&first);
            return Some(first);
        }
        if self.done {
            return None;
        }
        match self.events.recv().await {
            Some(ResponseEvent::Chunk(chunk)) => {
                self.guard.handing_over(&chunk);
                Some(chunk)
            }
            Some(ResponseEvent::Ended(Outcome::Completed(completion)))
                if !completion.body.is_empty() =>
            {
                // A worker may put the stream's last bytes in the completion.
                self.guard.disarm();
                self.done = true;
                Some(completion.body)
            }
            Some(ResponseEvent::Ended(Outcome::Failed { failure, .. })) => {
                self.guard.disarm();
                self.done = true;
                Some(ApiError::from_failure(&failure, &self.model).sse_event(self.flavor))
            }
            Some(ResponseEvent::Ended(_)) | None => {
                self.guard.disarm();
                None
            }
        }
    }
}

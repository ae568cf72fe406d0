//! Answering an inference request from its response queue: an error, the backend's answer whole, or a stream.

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use modelrelay_core::relay::{Completion, Outcome};

use crate::error::{ApiError, ApiFlavor};
use crate::hub::response_queue::{ResponseEvent, ResponseReceiver};

use super::body::HeldBytes;
use super::guard::ClientGuard;
use super::headers::passed_headers;
use super::stream::event_stream;

/// What the client asked for, as far as answering it goes.
pub(super) struct Asked {
    /// The model it named.
    pub(super) model: String,
    /// Whether it asked for a stream.
    pub(super) streaming: bool,
    /// The API it speaks.
    pub(super) flavor: ApiFlavor,
    /// The room its body holds in the budget, kept until the answer is over.
    pub(super) held: HeldBytes,
}

/// The answer from what its queue brings: a stream once a
/// streaming request's first chunk comes, else the whole answer at its end.
pub(super) async fn answer(mut events: ResponseReceiver, asked: Asked) -> Response {
    let mut guard = ClientGuard::new(events.exit());
    let flavor = asked.flavor;
    let model = asked.model.as_str();
    match events.recv().await {
        None => {
            guard.disarm();
            shutting_down(flavor)
        }
        Some(ResponseEvent::Ended(outcome)) => {
            guard.disarm();
            finish(outcome, Vec::new(), model, flavor)
        }
        Some(ResponseEvent::Chunk(first)) if asked.streaming => {
            event_stream(first, events, guard, asked)
        }
        Some(ResponseEvent::Chunk(first)) => gather(first, events, guard, model, flavor).await,
    }
}

/// A non-streaming request answered in pieces: gathered into one answer.
async fn gather(
    first: Bytes,
    mut events: ResponseReceiver,
    mut guard: ClientGuard,
    model: &str,
    flavor: ApiFlavor,
) -> Response {
    let mut pieces = vec![first];
    loop {
        match events.recv().await {
            Some(ResponseEvent::Chunk(piece)) => pieces.push(piece),
            Some(ResponseEvent::Ended(outcome)) => {
                guard.disarm();
                break finish(outcome, pieces, model, flavor);
            }
            None => {
                guard.disarm();
                break shutting_down(flavor);
            }
        }
    }
}

fn shutting_down(flavor: ApiFlavor) -> Response {
    ApiError::shutting_down().into_response(flavor)
}

/// The answer once the request ended before any stream started.
fn finish(outcome: Outcome, pieces: Vec<Bytes>, model: &str, flavor: ApiFlavor) -> Response {
    match outcome {
        Outcome::Completed(completion) => passthrough(completion, pieces),
        Outcome::Failed { failure, .. } => {
            ApiError::from_failure(&failure, model).into_response(flavor)
        }
        Outcome::Cancelled => StatusCode::REQUEST_TIMEOUT.into_response(),
    }
}

/// The backend's status and body unchanged, with the headers of the allow-list
/// ([`super::headers`]) and a content type a browser will not run.
fn passthrough(completion: Completion, pieces: Vec<Bytes>) -> Response {
    let Completion {
        status_code,
        headers,
        body,
        ..
    } = completion;
    let body = if pieces.is_empty() {
        body
    } else {
        let mut all = BytesMut::new();
        for piece in pieces.iter().chain(std::iter::once(&body)) {
            all.extend_from_slice(piece);
        }
        all.freeze()
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = served_status(status_code);
    *response.headers_mut() = passed_headers(&headers);
    response
}

/// The backend's status if it is a success or an error; an informational or
/// redirect status (whose headers were not passed on) is a bad gateway.
fn served_status(code: u16) -> StatusCode {
    match StatusCode::from_u16(code) {
        Ok(status)
            if status.is_success() || status.is_client_error() || status.is_server_error() =>
        {
            status
        }
        _ => StatusCode::BAD_GATEWAY,
    }
}

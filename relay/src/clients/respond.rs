//! Answering an inference request from its response queue: an error, the backend's answer whole, or a stream.

use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use modelrelay_core::RequestId;
use modelrelay_core::relay::{Completion, Outcome};
use modelrelay_core::wire::HOP_BY_HOP_HEADERS;

use crate::error::{ApiError, ApiFlavor};
use crate::hub::Hub;
use crate::hub::response_queue::{ResponseEvent, ResponseReceiver};

use super::guard::ClientGuard;
use super::stream::event_stream;

/// The answer to request `id` from what its queue brings: a stream once a
/// streaming request's first chunk comes, else the whole answer at its end.
pub(super) async fn answer(
    hub: Hub,
    id: RequestId,
    mut events: ResponseReceiver,
    model: String,
    streaming: bool,
    flavor: ApiFlavor,
) -> Response {
    let mut guard = ClientGuard::new(hub, id);
    match events.recv().await {
        None => {
            guard.disarm();
            shutting_down(flavor)
        }
        Some(ResponseEvent::Ended(outcome)) => {
            guard.disarm();
            finish(outcome, Vec::new(), &model, flavor)
        }
        Some(ResponseEvent::Chunk(first)) if streaming => {
            event_stream(first, events, guard, model, flavor)
        }
        Some(ResponseEvent::Chunk(first)) => gather(first, events, guard, &model, flavor).await,
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

/// The backend's status, headers and body, unchanged (4xx and 5xx included).
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
    *response.status_mut() = StatusCode::from_u16(status_code).unwrap_or(StatusCode::BAD_GATEWAY);
    let out = response.headers_mut();
    for (name, value) in headers.iter() {
        let lower = name.to_ascii_lowercase();
        if HOP_BY_HOP_HEADERS.contains(&lower.as_str()) || lower == "content-length" {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(lower.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            out.append(name, value);
        }
    }
    if !out.contains_key(header::CONTENT_TYPE) {
        out.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
    }
    response
}

//! The client API: inference routes, `/v1/models`, `/health`.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::stream;
use modelrelay_core::relay::{Completion, NewRequest, Outcome};
use modelrelay_core::wire::{FORWARDED_REQUEST_HEADERS, HOP_BY_HOP_HEADERS, Headers};
use modelrelay_core::{ModelName, RequestId};
use serde::Deserialize;
use serde_json::json;

use crate::app::AppState;
use crate::codes;
use crate::error::{ApiError, ApiFlavor};
use crate::hub::{Command, Hub, ResponseEvent};
use crate::response_queue::{ResponseReceiver, response_queue};

/// The header naming the relay's id for a request, for logs on both sides.
pub const REQUEST_ID_HEADER: &str = "x-modelrelay-request-id";

/// The two fields the relay reads from a request body; the rest passes through untouched.
#[derive(Deserialize)]
struct Probe {
    model: Option<serde_json::Value>,
    stream: Option<serde_json::Value>,
}

/// Tells the hub when a client leaves before its request ended.
struct ClientGuard {
    hub: Hub,
    request: RequestId,
    armed: bool,
    /// The last chunk handed to the client was its stream's final event.
    answered: bool,
}

impl ClientGuard {
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// Notes a chunk on its way to the client.
    fn handing_over(&mut self, chunk: &[u8]) {
        self.answered = crate::sse::ends_stream(chunk);
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.armed {
            let request = self.request;
            self.hub.send(if self.answered {
                Command::ClientDone { request }
            } else {
                Command::ClientGone { request }
            });
        }
    }
}

/// Handles one inference request on `path`.
pub(crate) async fn inference(
    State(app): State<Arc<AppState>>,
    flavor: ApiFlavor,
    path: &'static str,
    request: Request,
) -> Response {
    if let Err(refused) = crate::admin::check_api_key(&app, flavor, request.headers()).await {
        return refused;
    }
    let (parts, body) = request.into_parts();
    let limit = app.config.max_body_bytes;
    let body = match axum::body::to_bytes(body, limit).await {
        // A copy of its own: the body lives as long as the request (for requeues),
        // and a slice would pin the connection's whole read buffer all that time.
        Ok(body) => Bytes::copy_from_slice(&body),
        Err(error) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            return if too_large {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    codes::REQUEST_TOO_LARGE,
                    format!("The request body exceeds the limit of {limit} bytes."),
                )
            } else {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    codes::INVALID_BODY,
                    format!("Cannot read the request body: {error}"),
                )
            }
            .into_response(flavor);
        }
    };
    // The body travels to the worker as text on v1 links, and JSON must be UTF-8
    // anyway; serde_json does not check the strings it skips, so check here.
    if std::str::from_utf8(&body).is_err() {
        return ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_BODY,
            "The request body is not UTF-8.",
        )
        .into_response(flavor);
    }
    let probe: Probe = match serde_json::from_slice(&body) {
        Ok(probe) => probe,
        Err(error) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_JSON,
                format!("The request body is not a JSON object: {error}"),
            )
            .into_response(flavor);
        }
    };
    let model = match probe.model {
        Some(serde_json::Value::String(model))
            if !model.trim().is_empty() && !model.chars().any(char::is_control) =>
        {
            model
        }
        Some(_) => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::INVALID_MODEL,
                "`model` must be a non-empty string without control characters.",
            )
            .into_response(flavor);
        }
        None => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                codes::MISSING_MODEL,
                "The request has no `model`.",
            )
            .into_response(flavor);
        }
    };
    let streaming = path != "/v1/embeddings" && probe.stream == Some(serde_json::Value::Bool(true));
    let id = RequestId::new(app.next_request.fetch_add(1, Ordering::Relaxed));
    let (responder, mut events) = response_queue();
    let sent = app.hub.send(Command::Request {
        request: NewRequest {
            id,
            provider: app.config.provider.clone(),
            model: ModelName::new(&model),
            endpoint_path: path.to_owned(),
            streaming,
            body,
            headers: forwarded_headers(&parts.headers, app.config.require_api_keys),
        },
        route: path,
        responder,
    });
    if !sent {
        return shutting_down(flavor);
    }
    let mut guard = ClientGuard {
        hub: app.hub.clone(),
        request: id,
        armed: true,
        answered: false,
    };
    let mut response = match events.recv().await {
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
        Some(ResponseEvent::Chunk(first)) => {
            // A non-streaming request answered in pieces: gather them.
            let mut pieces = vec![first];
            loop {
                match events.recv().await {
                    Some(ResponseEvent::Chunk(piece)) => pieces.push(piece),
                    Some(ResponseEvent::Ended(outcome)) => {
                        guard.disarm();
                        break finish(outcome, pieces, &model, flavor);
                    }
                    None => {
                        guard.disarm();
                        break shutting_down(flavor);
                    }
                }
            }
        }
    };
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(REQUEST_ID_HEADER), value);
    }
    response
}

/// The client headers the backend gets. With `strip_relay_keys` (the relay
/// checks API keys), no header carrying one of the relay's keys is passed on,
/// whichever header it came in: the relay's keys are not the backend's business.
fn forwarded_headers(headers: &HeaderMap, strip_relay_keys: bool) -> Headers {
    FORWARDED_REQUEST_HEADERS
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (*name, v))
        })
        .filter(|(_, value)| !(strip_relay_keys && crate::admin::carries_relay_key(value)))
        .collect()
}

fn shutting_down(flavor: ApiFlavor) -> Response {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        codes::SHUTTING_DOWN,
        "The relay is shutting down.",
    )
    .into_response(flavor)
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

/// A streaming answer: the chunks as they come, byte for byte; a failure becomes one error event.
fn event_stream(
    first: Bytes,
    events: ResponseReceiver,
    guard: ClientGuard,
    model: String,
    flavor: ApiFlavor,
) -> Response {
    struct Streaming {
        first: Option<Bytes>,
        events: ResponseReceiver,
        guard: ClientGuard,
        model: String,
        done: bool,
    }
    let state = Streaming {
        first: Some(first),
        events,
        guard,
        model,
        done: false,
    };
    let chunks = stream::unfold(state, move |mut state| async move {
        if let Some(first) = state.first.take() {
            state.guard.handing_over(&first);
            return Some((Ok::<_, std::convert::Infallible>(first), state));
        }
        if state.done {
            return None;
        }
        match state.events.recv().await {
            Some(ResponseEvent::Chunk(chunk)) => {
                state.guard.handing_over(&chunk);
                Some((Ok(chunk), state))
            }
            Some(ResponseEvent::Ended(Outcome::Completed(completion)))
                if !completion.body.is_empty() =>
            {
                // A worker may put the stream's last bytes in the completion.
                state.guard.disarm();
                state.done = true;
                Some((Ok(completion.body), state))
            }
            Some(ResponseEvent::Ended(Outcome::Failed { failure, .. })) => {
                state.guard.disarm();
                state.done = true;
                let event = ApiError::from_failure(&failure, &state.model).sse_event(flavor);
                Some((Ok(event), state))
            }
            Some(ResponseEvent::Ended(_)) | None => {
                state.guard.disarm();
                None
            }
        }
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no")
        .body(Body::from_stream(chunks))
        .expect("static headers are valid")
}

/// `GET /v1/models`: the models connected workers serve, in the OpenAI list format.
pub(crate) async fn models(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    if let Err(refused) = crate::admin::check_api_key(&app, ApiFlavor::OpenAi, &headers).await {
        return refused;
    }
    let Some(snapshot) = app.hub.snapshot().await else {
        return shutting_down(ApiFlavor::OpenAi);
    };
    let data: Vec<serde_json::Value> = snapshot
        .models
        .iter()
        .map(|model| json!({"id": model.as_str(), "object": "model", "created": 0, "owned_by": "modelrelay"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

/// `GET /health`: status, version, workers, queue depth, uptime.
pub(crate) async fn health(State(app): State<Arc<AppState>>) -> Response {
    let uptime_secs = app.started.elapsed().as_secs();
    match app.hub.snapshot().await {
        Some(snapshot) => axum::Json(json!({
            "status": if snapshot.shutting_down { "draining" } else { "ok" },
            "version": env!("CARGO_PKG_VERSION"),
            "workers_connected": snapshot.workers,
            "queue_depth": snapshot.queue_depth,
            "requests_in_progress": snapshot.open_requests,
            "uptime_secs": uptime_secs,
        }))
        .into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(json!({"status": "stopped", "version": env!("CARGO_PKG_VERSION"), "uptime_secs": uptime_secs})),
        )
            .into_response(),
    }
}

/// Any other route: a 404 in the OpenAI shape.
pub(crate) async fn not_found(request: Request) -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        codes::NOT_FOUND,
        format!(
            "No route for {} {}.",
            request.method(),
            request.uri().path()
        ),
    )
    .into_response(ApiFlavor::OpenAi)
}

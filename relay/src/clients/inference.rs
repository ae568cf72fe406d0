//! The inference handler: parse the request, hand it to the hub, answer with what comes back.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse as _, Response};
use modelrelay_core::relay::NewRequest;
use modelrelay_core::wire::{FORWARDED_REQUEST_HEADERS, Headers, forwards_request_header};
use modelrelay_core::{ModelName, RequestId, WorkerId};

use crate::app::AppState;
use crate::error::{ApiError, ClientError};
use crate::hub::Command;
use crate::hub::response_queue::ResponseReceiver;
use crate::keys::ApiKeyId;
use crate::request_id::{self, RequestIds};

use super::api_key::{carries_relay_key, require_api_key};
use super::body::BodyLimits;
use super::parse::{ParsedRequest, parse};
use super::{InferenceRoute, respond};

/// Handles one inference request on `route` (its answer's request-id headers are set by
/// [`request_id::stamp`]).
pub(super) async fn inference(
    State(app): State<Arc<AppState>>,
    route: InferenceRoute,
    request: Request,
) -> Result<Response, ClientError> {
    let key = require_api_key(&app, route.flavor, request.headers()).await?;
    let target = Target {
        route,
        pinned_to: None,
        key,
    };
    serve(&app, target, request).await
}

/// Serves an inference request the operator sent to one worker (the caller
/// checked the operator's credentials): it runs there or fails, never elsewhere.
pub(crate) async fn inference_on(
    app: &AppState,
    route: InferenceRoute,
    request: Request,
    worker: WorkerId,
) -> Response {
    let target = Target {
        route,
        pinned_to: Some(worker),
        key: None,
    };
    let answer = serve(app, target, request).await;
    super::headers::harden(answer.into_response())
}

/// Reads the request, hands it to the hub for `target`, and answers with what comes back.
async fn serve(app: &AppState, target: Target, request: Request) -> Result<Response, ClientError> {
    let flavor = target.route.flavor;
    let route = target.route;
    let ids = RequestIds {
        relay: request_id::of(&request),
        client: request_id::from_client(request.headers()),
    };
    let (parts, body) = request.into_parts();
    let limits = BodyLimits {
        max_bytes: app.config.max_body_bytes,
        budget: &app.body_budget,
    };
    let parsed = parse(body, limits, route)
        .await
        .map_err(|error| error.for_api(flavor))?;
    let events = dispatch(app, target, ids, &parsed, &parts.headers)
        .await
        .ok_or_else(|| ApiError::shutting_down().for_api(flavor))?;
    let ParsedRequest {
        model,
        streaming,
        held,
        ..
    } = parsed;
    let asked = respond::Asked {
        model,
        streaming,
        flavor,
        held,
    };
    Ok(respond::answer(events, asked).await)
}

/// Where a request goes: its route, the one worker it is pinned to if any,
/// and the API key it came with (to count its usage).
#[derive(Clone, Copy)]
struct Target {
    route: InferenceRoute,
    pinned_to: Option<WorkerId>,
    key: Option<ApiKeyId>,
}

/// Hands the request to the hub, with its ids: the queue its answer comes
/// on, or `None` if the hub stopped.
async fn dispatch(
    app: &AppState,
    Target {
        route,
        pinned_to,
        key,
    }: Target,
    ids: RequestIds,
    parsed: &ParsedRequest,
    headers: &HeaderMap,
) -> Option<ResponseReceiver> {
    let id = RequestId::new(app.next_request.fetch_add(1, Ordering::Relaxed));
    let (responder, events) = app.hub.response_queue(id);
    let sent = app.hub.send(Command::Request {
        request: NewRequest {
            id,
            provider: app.config.provider.clone(),
            model: ModelName::new(&parsed.model),
            endpoint_path: route.path.to_owned(),
            streaming: parsed.streaming,
            // A reference count, not a copy.
            body: parsed.body.clone(),
            headers: forwarded_headers(headers, app.config.require_api_keys),
            pinned_to,
        },
        route,
        ids,
        key,
        responder,
    });
    sent.await.then_some(events)
}

/// The client headers the backend gets: those on the shared list, a request id
/// only when well formed. With `strip_relay_keys` (the relay checks API keys),
/// no header carrying one of the relay's keys is passed on, whichever header it
/// came in: the relay's keys are not the backend's business.
fn forwarded_headers(headers: &HeaderMap, strip_relay_keys: bool) -> Headers {
    FORWARDED_REQUEST_HEADERS
        .iter()
        .filter_map(|name| {
            headers
                .get(*name)
                .and_then(|v| v.to_str().ok())
                .map(|v| (*name, v))
        })
        .filter(|(name, value)| forwards_request_header(name, value))
        .filter(|(_, value)| !(strip_relay_keys && carries_relay_key(value)))
        .collect()
}

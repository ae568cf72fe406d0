//! The inference handler: parse the request, hand it to the hub, answer with what comes back.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use modelrelay_core::relay::NewRequest;
use modelrelay_core::wire::{FORWARDED_REQUEST_HEADERS, Headers};
use modelrelay_core::{ModelName, RequestId};

use crate::app::AppState;
use crate::error::{ApiError, ClientError};
use crate::hub::Command;
use crate::hub::response_queue::ResponseReceiver;

use super::api_key::{carries_relay_key, require_api_key};
use super::body::BodyLimits;
use super::parse::{ParsedRequest, parse};
use super::{InferenceRoute, respond};

/// The header naming the relay's id for a request, for logs on both sides.
pub const REQUEST_ID_HEADER: &str = "x-modelrelay-request-id";

/// The common request-id header, also carrying the relay's id.
const GENERIC_REQUEST_ID_HEADER: &str = "x-request-id";

/// Handles one inference request on `route`.
pub(super) async fn inference(
    State(app): State<Arc<AppState>>,
    route: InferenceRoute,
    request: Request,
) -> Result<Response, ClientError> {
    let flavor = route.flavor;
    require_api_key(&app, flavor, request.headers()).await?;
    let (parts, body) = request.into_parts();
    let limits = BodyLimits {
        max_bytes: app.config.max_body_bytes,
        budget: &app.body_budget,
    };
    let parsed = parse(body, limits, route)
        .await
        .map_err(|error| error.for_api(flavor))?;
    let (id, events) = dispatch(&app, route, &parsed, &parts.headers)
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
    let mut response = respond::answer(events, asked).await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        let headers = response.headers_mut();
        headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), value.clone());
        // The relay's id owns the common name; the backend's goes out as `x-backend-request-id`.
        headers.insert(HeaderName::from_static(GENERIC_REQUEST_ID_HEADER), value);
    }
    Ok(response)
}

/// Hands the request to the hub: its id and the queue its answer comes on, or `None` if the hub stopped.
async fn dispatch(
    app: &AppState,
    route: InferenceRoute,
    parsed: &ParsedRequest,
    headers: &HeaderMap,
) -> Option<(RequestId, ResponseReceiver)> {
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
        },
        route,
        responder,
    });
    sent.await.then_some((id, events))
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
        .filter(|(_, value)| !(strip_relay_keys && carries_relay_key(value)))
        .collect()
}

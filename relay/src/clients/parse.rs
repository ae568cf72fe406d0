//! Reading an inference request: its body, and the two fields the relay needs from it.

use axum::body::Body;
use axum::http::StatusCode;
use bytes::Bytes;
use serde::Deserialize;

use crate::codes;
use crate::error::ApiError;

use super::InferenceRoute;

/// An inference request the relay can route.
pub(super) struct ParsedRequest {
    /// The body, passed to the worker untouched.
    pub(super) body: Bytes,
    /// The model it asks for.
    pub(super) model: String,
    /// Whether it asks for a streamed answer (on a route that can stream).
    pub(super) streaming: bool,
}

/// The two fields the relay reads from a request body; the rest passes through untouched.
#[derive(Deserialize)]
struct Probe {
    model: Option<serde_json::Value>,
    stream: Option<serde_json::Value>,
}

/// Reads a request body of at most `limit` bytes sent to `route`, and checks it.
pub(super) async fn parse(
    body: Body,
    limit: usize,
    route: InferenceRoute,
) -> Result<ParsedRequest, ApiError> {
    let body = read_body(body, limit).await?;
    // The body travels to the worker as text on v1 links, and JSON must be UTF-8
    // anyway; serde_json does not check the strings it skips, so check here.
    if std::str::from_utf8(&body).is_err() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_BODY,
            "The request body is not UTF-8.",
        ));
    }
    let probe: Probe = serde_json::from_slice(&body).map_err(|error| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_JSON,
            format!("The request body is not a JSON object: {error}"),
        )
    })?;
    let model = model(probe.model)?;
    let streaming = route.streams && probe.stream == Some(serde_json::Value::Bool(true));
    Ok(ParsedRequest {
        body,
        model,
        streaming,
    })
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match axum::body::to_bytes(body, limit).await {
        // A copy of its own: the body lives as long as the request (for requeues),
        // and a slice would pin the connection's whole read buffer all that time.
        Ok(body) => Ok(Bytes::copy_from_slice(&body)),
        Err(error) => {
            let too_large = std::error::Error::source(&error)
                .is_some_and(|source| source.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
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
            })
        }
    }
}

/// The `model` field, if it is a usable model name.
fn model(field: Option<serde_json::Value>) -> Result<String, ApiError> {
    match field {
        Some(serde_json::Value::String(model))
            if !model.trim().is_empty() && !model.chars().any(char::is_control) =>
        {
            Ok(model)
        }
        Some(_) => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::INVALID_MODEL,
            "`model` must be a non-empty string without control characters.",
        )),
        None => Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            codes::MISSING_MODEL,
            "The request has no `model`.",
        )),
    }
}

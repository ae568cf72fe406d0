//! How a v1 link carries what v2 says with `error`: as a `response_complete`.
//!
//! ModelRelay's server takes no `error` from a worker: it closes the link with
//! 1002 and requeues everything on it. So on v1 a request that fails ends as
//! ModelRelay's own worker ends one whose backend failed, with a
//! `response_complete` carrying an error status and a JSON error body; and a
//! refusal (draining, at capacity), always sent before any chunk, ends as a 503
//! marked with [`REFUSAL_HEADER`]. This relay turns a marked 503 back into a
//! refusal (the request is requeued, the worker rests); any other relay passes it
//! to its client as the 503 it is.

use bytes::Bytes;

use super::{Headers, REFUSED_AT_CAPACITY, REFUSED_DRAINING, ResponseComplete};
use crate::ids::WireRequestId;

/// The header that marks a v1 `response_complete` as a refusal; its value is the refusal code.
pub const REFUSAL_HEADER: &str = "x-modelrelay-refused";
/// HTTP status of a refusal on v1 (service unavailable: try another worker).
pub const REFUSAL_STATUS: u16 = 503;
/// HTTP status of a failed request on v1 (bad gateway: the backend call failed).
pub const FAILURE_STATUS: u16 = 502;

/// The v1 `response_complete` that ends a failed request: 502 and a JSON error
/// body whose message reads as this relay's own answer to such a failure.
pub fn failure_complete(request_id: WireRequestId, code: &str, message: &str) -> ResponseComplete {
    let message = format!("The backend failed ({code}): {message}");
    error_complete(request_id, FAILURE_STATUS, code, &message, None)
}

/// The v1 `response_complete` that refuses a request: 503, a JSON error body, and
/// [`REFUSAL_HEADER`] naming `code`.
pub fn refusal_complete(request_id: WireRequestId, code: &str, message: &str) -> ResponseComplete {
    error_complete(request_id, REFUSAL_STATUS, code, message, Some(code))
}

/// The refusal code a `response_complete` is marked with: a 503 whose
/// [`REFUSAL_HEADER`] names one of the refusal codes. Anything else is an answer.
pub fn marked_refusal(complete: &ResponseComplete) -> Option<&'static str> {
    if complete.status_code != REFUSAL_STATUS {
        return None;
    }
    match complete.headers.get(REFUSAL_HEADER)?.trim() {
        REFUSED_DRAINING => Some(REFUSED_DRAINING),
        REFUSED_AT_CAPACITY => Some(REFUSED_AT_CAPACITY),
        _ => None,
    }
}

/// A `response_complete` with an OpenAI-shaped error body (`{"error":{"message","type","code"}}`).
fn error_complete(
    request_id: WireRequestId,
    status_code: u16,
    code: &str,
    message: &str,
    refusal: Option<&str>,
) -> ResponseComplete {
    let body = serde_json::json!({"error": {
        "message": message,
        "type": "server_error",
        "code": code,
    }});
    let mut headers = Headers::new();
    headers.push("content-type", "application/json");
    if let Some(code) = refusal {
        headers.push(REFUSAL_HEADER, code);
    }
    ResponseComplete {
        request_id,
        status_code,
        headers,
        body: Bytes::from(body.to_string()),
        token_counts: None,
    }
}

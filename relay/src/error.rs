//! Errors in each client API's own shape, so the official SDKs raise their proper exceptions.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use modelrelay_core::relay::Failure;
use serde_json::json;

use crate::codes;

/// Which API a route speaks, and so how its errors look.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiFlavor {
    /// `{"error":{"message","type","code"}}`
    OpenAi,
    /// `{"type":"error","error":{"type","message"}}`
    Anthropic,
}

/// An error answer: status, machine-readable code, message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Machine-readable code (OpenAI `code`).
    pub code: &'static str,
    /// Human-readable message.
    pub message: String,
    /// Seconds for `Retry-After`, if the client should come back.
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    /// The answer to a request the relay failed.
    pub fn from_failure(failure: &Failure, model: &str) -> Self {
        let (status, code) = match failure {
            Failure::UnknownModel => (StatusCode::NOT_FOUND, codes::MODEL_NOT_FOUND),
            Failure::QueueFull => (StatusCode::TOO_MANY_REQUESTS, codes::QUEUE_FULL),
            Failure::QueueTimeout => (StatusCode::GATEWAY_TIMEOUT, codes::QUEUE_TIMEOUT),
            Failure::RequestTimeout => (StatusCode::GATEWAY_TIMEOUT, codes::REQUEST_TIMEOUT),
            Failure::RequeueExhausted => {
                (StatusCode::SERVICE_UNAVAILABLE, codes::REQUEUE_EXHAUSTED)
            }
            Failure::NoCapacity => (StatusCode::SERVICE_UNAVAILABLE, codes::NO_CAPACITY),
            Failure::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, codes::SHUTTING_DOWN),
            Failure::WorkerLost => (StatusCode::BAD_GATEWAY, codes::WORKER_LOST),
            Failure::WorkerError { .. } => (StatusCode::BAD_GATEWAY, codes::WORKER_ERROR),
            Failure::StreamTooLarge => (StatusCode::BAD_GATEWAY, codes::STREAM_TOO_LARGE),
            Failure::ClientTooSlow => (StatusCode::SERVICE_UNAVAILABLE, codes::CLIENT_TOO_SLOW),
            Failure::WorkerUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, codes::WORKER_UNAVAILABLE)
            }
        };
        let message = match failure {
            Failure::UnknownModel => {
                format!("The model `{model}` does not exist: no worker serves it.")
            }
            Failure::WorkerError { code, message } => {
                format!("The backend failed ({code}): {message}")
            }
            Failure::WorkerUnavailable => format!(
                "The worker this request is sent to cannot take it now: it is gone, \
                 draining, full, resting after a refusal, or does not serve `{model}`."
            ),
            other => format!("{}.", capitalize(&other.to_string())),
        };
        let mut error = Self::new(status, code, message);
        if matches!(failure, Failure::QueueFull) {
            error.retry_after_secs = Some(1);
        }
        error
    }

    /// The error type name each API uses for this status.
    fn type_name(&self, flavor: ApiFlavor) -> &'static str {
        let status = self.status.as_u16();
        match flavor {
            ApiFlavor::OpenAi => match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "invalid_request_error",
                413 => "invalid_request_error",
                429 => "rate_limit_error",
                504 => "timeout",
                400..=499 => "invalid_request_error",
                _ => "server_error",
            },
            ApiFlavor::Anthropic => match status {
                401 => "authentication_error",
                403 => "permission_error",
                404 => "not_found_error",
                413 => "request_too_large",
                429 => "rate_limit_error",
                504 => "timeout_error",
                529 => "overloaded_error",
                400..=499 => "invalid_request_error",
                _ => "api_error",
            },
        }
    }

    /// The JSON body.
    pub fn body(&self, flavor: ApiFlavor) -> serde_json::Value {
        match flavor {
            ApiFlavor::OpenAi => json!({"error": {
                "message": self.message,
                "type": self.type_name(flavor),
                "code": self.code,
            }}),
            ApiFlavor::Anthropic => json!({"type": "error", "error": {
                "type": self.type_name(flavor),
                "message": self.message,
            }}),
        }
    }

    /// The error as one SSE event, for a stream that already started.
    pub fn sse_event(&self, flavor: ApiFlavor) -> Bytes {
        let body = self.body(flavor);
        Bytes::from(match flavor {
            ApiFlavor::OpenAi => format!("data: {body}\n\n"),
            ApiFlavor::Anthropic => format!("event: error\ndata: {body}\n\n"),
        })
    }

    /// The full HTTP answer.
    pub fn into_response(self, flavor: ApiFlavor) -> Response {
        let mut response = (self.status, axum::Json(self.body(flavor))).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// An [`ApiError`] bound to the API that answers with it: what client handlers return with `?`.
#[derive(Clone, Debug)]
pub(crate) struct ClientError {
    error: ApiError,
    flavor: ApiFlavor,
    /// The `WWW-Authenticate` challenge, for a 401.
    challenge: Option<&'static str>,
}

impl ApiError {
    /// This error answered in `flavor`'s shape.
    pub(crate) fn for_api(self, flavor: ApiFlavor) -> ClientError {
        ClientError {
            error: self,
            flavor,
            challenge: None,
        }
    }

    /// The 429 for an address shut out after failed authentications, welcome again after `retry`.
    pub(crate) fn auth_cooldown(message: &'static str, retry: std::time::Duration) -> Self {
        let mut error = Self::new(StatusCode::TOO_MANY_REQUESTS, codes::AUTH_COOLDOWN, message);
        error.retry_after_secs = Some(retry.as_secs().max(1));
        error
    }

    /// The 503 once the hub has stopped: the relay is shutting down.
    pub(crate) fn shutting_down() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::SHUTTING_DOWN,
            "The relay is shutting down.",
        )
    }
}

impl ClientError {
    /// The same answer with a `WWW-Authenticate: {challenge}` header.
    pub(crate) fn challenging(mut self, challenge: &'static str) -> Self {
        self.challenge = Some(challenge);
        self
    }
}

impl IntoResponse for ClientError {
    fn into_response(self) -> Response {
        let mut response = self.error.into_response(self.flavor);
        if let Some(challenge) = self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openai_errors_have_message_type_and_code() {
        let error = ApiError::from_failure(&Failure::QueueTimeout, "m");
        assert_eq!(error.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            error.body(ApiFlavor::OpenAi),
            json!({"error": {"message": "No worker became available within the queue timeout.",
                             "type": "timeout", "code": "queue_timeout"}})
        );
    }

    #[test]
    fn anthropic_errors_have_the_error_envelope() {
        let error = ApiError::from_failure(&Failure::UnknownModel, "claude-x");
        assert_eq!(error.status, StatusCode::NOT_FOUND);
        assert_eq!(
            error.body(ApiFlavor::Anthropic),
            json!({"type": "error", "error": {"type": "not_found_error",
                   "message": "The model `claude-x` does not exist: no worker serves it."}})
        );
        assert_eq!(
            error.sse_event(ApiFlavor::Anthropic),
            Bytes::from(format!(
                "event: error\ndata: {}\n\n",
                error.body(ApiFlavor::Anthropic)
            ))
        );
    }

    #[test]
    fn every_failure_maps_to_the_documented_status() {
        let cases = [
            (Failure::UnknownModel, 404),
            (Failure::QueueFull, 429),
            (Failure::QueueTimeout, 504),
            (Failure::RequestTimeout, 504),
            (Failure::RequeueExhausted, 503),
            (Failure::NoCapacity, 503),
            (Failure::ShuttingDown, 503),
            (Failure::WorkerLost, 502),
            (Failure::StreamTooLarge, 502),
            (Failure::ClientTooSlow, 503),
            (
                Failure::WorkerError {
                    code: "x".into(),
                    message: "y".into(),
                },
                502,
            ),
        ];
        for (failure, status) in cases {
            assert_eq!(
                ApiError::from_failure(&failure, "m").status.as_u16(),
                status,
                "{failure:?}"
            );
        }
        let full =
            ApiError::from_failure(&Failure::QueueFull, "m").into_response(ApiFlavor::OpenAi);
        assert_eq!(full.headers()[header::RETRY_AFTER], "1");
    }
}

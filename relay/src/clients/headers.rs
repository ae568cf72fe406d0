//! Which backend response headers reach a client, and the headers every inference answer carries.
//!
//! A backend (or whoever controls a worker) must not be able to speak for the
//! relay's origin: no cookies, redirects, CORS grants or HTML. So only headers a
//! client of the OpenAI and Anthropic APIs reads are passed on, named here, and
//! every answer tells browsers neither to sniff nor to run it.

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use axum::response::Response;
use modelrelay_core::wire::Headers;

/// Backend response headers passed on by exact name: content description and the retry hints the SDKs read.
pub(crate) const PASSED_RESPONSE_HEADERS: [&str; 6] = [
    // Set separately: one of the content types below, or plain text.
    "content-type",
    "content-encoding",
    // Anthropic's request id, which its SDKs report.
    "request-id",
    "retry-after",
    // The OpenAI SDKs read these two to decide whether and when to retry.
    "retry-after-ms",
    "x-should-retry",
];

/// Backend response headers passed on by prefix: the APIs' own metadata and rate limits.
pub(crate) const PASSED_RESPONSE_HEADER_PREFIXES: [&str; 3] =
    ["openai-", "anthropic-", "x-ratelimit-"];

/// The backend's request id, renamed on the way out (Anthropic's `request-id` keeps its name).
const BACKEND_REQUEST_ID: &str = "x-request-id";

/// The name the backend's `x-request-id` goes out under: the relay's own id owns `x-request-id`.
pub(crate) const BACKEND_REQUEST_ID_OUT: &str = "x-backend-request-id";

/// Content types served as the backend named them; any other is served as [`PLAIN_TEXT`].
const SERVED_CONTENT_TYPES: [&str; 3] = ["application/json", "text/event-stream", "text/plain"];

/// What a body of any other content type is served as.
pub(crate) const PLAIN_TEXT: &str = "text/plain; charset=utf-8";

/// The backend's headers a client gets, under the names it gets them (content type handled apart).
pub(super) fn passed_headers(backend: &Headers) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (name, value) in backend.iter() {
        let lower = name.to_ascii_lowercase();
        let out_name = if lower == BACKEND_REQUEST_ID {
            BACKEND_REQUEST_ID_OUT
        } else if lower == "content-type" || !is_passed(&lower) {
            continue;
        } else {
            lower.as_str()
        };
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(out_name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            out.append(name, value);
        }
    }
    out.insert(
        header::CONTENT_TYPE,
        served_content_type(backend.get("content-type")),
    );
    out
}

/// Whether a backend header (lower case) is on the allow-list.
fn is_passed(name: &str) -> bool {
    PASSED_RESPONSE_HEADERS.contains(&name)
        || PASSED_RESPONSE_HEADER_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// The content type a client gets: JSON when the backend named none, the
/// backend's own if it is JSON, SSE or plain text, else plain text.
fn served_content_type(backend: Option<&str>) -> HeaderValue {
    let Some(value) = backend else {
        return HeaderValue::from_static("application/json");
    };
    let media = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if SERVED_CONTENT_TYPES.contains(&media.as_str())
        && let Ok(value) = HeaderValue::from_str(value)
    {
        return value;
    }
    HeaderValue::from_static(PLAIN_TEXT)
}

/// Marks an inference answer (any status, streamed or not) as content that a
/// browser must neither sniff into another type nor run on the relay's origin.
pub(super) fn harden(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("sandbox"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Headers {
        pairs.iter().map(|(n, v)| (*n, *v)).collect()
    }

    #[test]
    fn only_allowed_backend_headers_pass_and_the_backend_request_id_is_renamed() {
        let out = passed_headers(&headers(&[
            ("Content-Type", "application/json"),
            ("Set-Cookie", "x=1"),
            ("Location", "https://evil.example/"),
            ("Access-Control-Allow-Origin", "*"),
            ("Content-Security-Policy", "default-src *"),
            ("Refresh", "0; url=https://evil.example/"),
            ("Link", "<https://evil.example/>; rel=preload"),
            ("X-Request-Id", "backend-7"),
            ("request-id", "req_1"),
            ("openai-processing-ms", "12"),
            ("anthropic-ratelimit-requests-remaining", "9"),
            ("x-ratelimit-remaining-tokens", "100"),
            ("retry-after", "3"),
            ("retry-after-ms", "3000"),
            ("x-should-retry", "true"),
        ]));
        let names: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
        for dropped in [
            "set-cookie",
            "location",
            "access-control-allow-origin",
            "content-security-policy",
            "refresh",
            "link",
            "x-request-id",
        ] {
            assert!(!names.contains(&dropped), "{dropped} passed: {names:?}");
        }
        assert_eq!(out[BACKEND_REQUEST_ID_OUT], "backend-7");
        for kept in [
            "request-id",
            "openai-processing-ms",
            "anthropic-ratelimit-requests-remaining",
            "x-ratelimit-remaining-tokens",
            "retry-after",
            "retry-after-ms",
            "x-should-retry",
        ] {
            assert!(names.contains(&kept), "{kept} dropped: {names:?}");
        }
    }

    #[test]
    fn content_types_other_than_json_sse_and_plain_text_are_served_as_plain_text() {
        let served = |value: Option<&str>| served_content_type(value).to_str().unwrap().to_owned();
        assert_eq!(served(None), "application/json");
        assert_eq!(
            served(Some("application/json; charset=utf-8")),
            "application/json; charset=utf-8"
        );
        assert_eq!(served(Some("Text/Event-Stream")), "Text/Event-Stream");
        assert_eq!(served(Some("text/plain")), "text/plain");
        for other in [
            "text/html",
            "image/svg+xml",
            "application/xhtml+xml",
            "text/xml",
            "",
        ] {
            assert_eq!(served(Some(other)), PLAIN_TEXT, "{other}");
        }
    }
}

//! Which web pages may call the client API from a browser: CORS on the client
//! routes (`/v1/*` and `/health`), and on nothing else.
//!
//! The client API authenticates with keys a caller sends in headers, never
//! with cookies, so letting any origin read its answers (the default, as
//! ModelRelay does) gives a page nothing its own code could not do with the
//! same key; `--cors-allow-origins` narrows it to a list. The operator's routes
//! (`/admin/*`, `/dashboard`, `/setup`, `/metrics`) sit on another router and
//! never carry CORS headers. Preflights are answered here, before the API-key
//! gate and the handlers, so they need no key and cost no body budget.
//!
//! tower-http's `CorsLayer` does the work: it is what ModelRelay uses, it keeps
//! the spec's details (`Vary`, preflight-only headers, origin lists) in one
//! well-tested place, and with only its `cors` feature it adds no crate but itself.

use std::time::Duration;

use axum::http::{HeaderName, HeaderValue, Method};
use tower_http::cors::{AllowHeaders, AllowOrigin, CorsLayer};

/// What `--cors-allow-origins` means by "any origin".
pub const ANY_ORIGIN: &str = "*";

/// How long a browser may reuse a preflight's answer: the longest Chromium keeps one.
const PREFLIGHT_MAX_AGE: Duration = Duration::from_secs(2 * 3600);

/// The client API's methods.
const ALLOWED_METHODS: [Method; 2] = [Method::GET, Method::POST];

/// Answer headers a page's script may read: the request ids, the retry hints
/// and the rate limits the OpenAI and Anthropic SDKs read.
const EXPOSED_HEADERS: [&str; 14] = [
    "x-request-id",
    "x-modelrelay-request-id",
    "x-backend-request-id",
    "request-id",
    "retry-after",
    "retry-after-ms",
    "x-should-retry",
    "openai-processing-ms",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
];

/// Which origins may read the client API's answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Any page (`Access-Control-Allow-Origin: *`).
    Any,
    /// Only pages from these origins (`https://app.example.com`, …), each named back to itself.
    List(Vec<HeaderValue>),
}

/// Why a `--cors-allow-origins` value was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CorsError {
    /// `*` among named origins.
    #[error("`*` (any origin) cannot be listed beside named origins")]
    WildcardInList,
    /// An item that is not `scheme://host[:port]`.
    #[error(
        "{0:?} is not an origin: write scheme://host[:port], without a path (for example https://app.example.com)"
    )]
    NotAnOrigin(String),
}

impl CorsOrigins {
    /// Reads the items of `--cors-allow-origins`: `*` alone, or origins. An
    /// origin is compared as browsers send it, so it is lower-cased and loses a
    /// trailing `/`.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, CorsError> {
        let items: Vec<&str> = items.into_iter().map(str::trim).collect();
        if items == [ANY_ORIGIN] {
            return Ok(Self::Any);
        }
        let mut origins = Vec::with_capacity(items.len());
        for item in items {
            if item == ANY_ORIGIN {
                return Err(CorsError::WildcardInList);
            }
            origins.push(origin(item).ok_or_else(|| CorsError::NotAnOrigin(item.to_owned()))?);
        }
        Ok(Self::List(origins))
    }
}

/// `text` as the `Origin` header a browser would send for it, if it is an origin.
fn origin(text: &str) -> Option<HeaderValue> {
    let text = text.strip_suffix('/').unwrap_or(text).to_ascii_lowercase();
    let (scheme, host) = text.split_once("://")?;
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    let host_ok = !host.is_empty()
        && !host.contains(['/', '?', '#', '@'])
        && host.chars().all(|c| c.is_ascii_graphic());
    (scheme_ok && host_ok)
        .then(|| HeaderValue::from_str(&text).ok())
        .flatten()
}

/// The layer that puts CORS on the client routes.
pub(crate) fn layer(origins: &CorsOrigins) -> CorsLayer {
    let allow_origin = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => AllowOrigin::list(list.iter().cloned()),
    };
    CorsLayer::new()
        .allow_origin(allow_origin)
        .allow_methods(ALLOWED_METHODS)
        // The SDKs send many headers (authorization, x-api-key, anthropic-*,
        // openai-*, a growing family of x-stainless-*): whatever a preflight
        // asks for is allowed, rather than a list that an SDK update outgrows.
        .allow_headers(AllowHeaders::mirror_request())
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(PREFLIGHT_MAX_AGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_read_as_browsers_send_them() {
        assert_eq!(CorsOrigins::parse(["*"]), Ok(CorsOrigins::Any));
        assert_eq!(CorsOrigins::parse([" * "]), Ok(CorsOrigins::Any));
        assert_eq!(
            CorsOrigins::parse(["https://App.example.com/", "http://localhost:3000"]),
            Ok(CorsOrigins::List(vec![
                HeaderValue::from_static("https://app.example.com"),
                HeaderValue::from_static("http://localhost:3000"),
            ]))
        );
        assert_eq!(
            CorsOrigins::parse(["https://a.example", "*"]),
            Err(CorsError::WildcardInList)
        );
        for bad in [
            "",
            "app.example.com",
            "https://",
            "https://a.example/path",
            "https://a.example?x",
            "https://user@a.example",
            "https://a b.example",
            "://a.example",
        ] {
            assert!(
                matches!(CorsOrigins::parse([bad]), Err(CorsError::NotAnOrigin(_))),
                "{bad:?}"
            );
        }
    }
}

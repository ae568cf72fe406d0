//! Every answer's request id: one per HTTP request, unique across relays and restarts.
//!
//! The core keys a request by a small number ([`modelrelay_core::RequestId`], a
//! counter of this process that also names the request on its worker link).
//! That number starts again at 1 on every restart and on every relay behind a
//! load balancer, so it is no name to quote in a bug report or to search logs
//! by. Each HTTP request therefore also gets a UUIDv7 here, in the driver (the
//! core stays free of clocks and randomness): the time it arrived to the
//! millisecond and 74 random bits, so ids sort by arrival and two relays never
//! hand out the same one. Every answer, errors of every kind included, carries
//! it as `x-request-id` and `x-modelrelay-request-id`; the request's log line
//! names it as `request`.
//!
//! A client's own `x-request-id` is never a key for anything: when well
//! formed it is passed to the backend and logged beside ours, else dropped.

use std::fmt;

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use modelrelay_core::wire::{CLIENT_REQUEST_ID_HEADER, is_well_formed_request_id};
use uuid::Uuid;

/// The header naming the relay's id for a request (ModelRelay's name; `x-request-id` carries the same).
pub const REQUEST_ID_HEADER: &str = "x-modelrelay-request-id";

/// A request's public id: a UUIDv7, shown hyphenated in lower case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct PublicRequestId(Uuid);

impl PublicRequestId {
    /// A fresh id, from the wall clock and the operating system's randomness.
    pub(crate) fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    /// The id as a header value.
    fn header_value(self) -> HeaderValue {
        let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
        HeaderValue::from_str(self.0.hyphenated().encode_lower(&mut text))
            .expect("a hyphenated UUID is a valid header value")
    }
}

impl fmt::Display for PublicRequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.hyphenated(), f)
    }
}

/// What a request is called outside the relay: our id, and its client's own if well formed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RequestIds {
    /// The relay's id, in the answer's headers.
    pub(crate) relay: PublicRequestId,
    /// The client's `x-request-id`, logged beside ours (see [`from_client`]).
    pub(crate) client: Option<String>,
}

/// Middleware: gives `request` a fresh id (in its extensions, for the
/// handlers) and its answer, whatever it is, the id's headers.
pub(crate) async fn stamp(mut request: Request, next: Next) -> Response {
    let id = PublicRequestId::generate();
    request.extensions_mut().insert(id);
    let mut response = next.run(request).await;
    set_headers(response.headers_mut(), id);
    response
}

/// The id a request was given by [`stamp`] (a fresh one if it went around it).
pub(crate) fn of(request: &Request) -> PublicRequestId {
    request
        .extensions()
        .get::<PublicRequestId>()
        .copied()
        .unwrap_or_else(PublicRequestId::generate)
}

/// Names `id` in `headers` under both request-id headers (replacing any already there).
pub(crate) fn set_headers(headers: &mut HeaderMap, id: PublicRequestId) {
    let value = id.header_value();
    headers.insert(HeaderName::from_static(REQUEST_ID_HEADER), value.clone());
    headers.insert(HeaderName::from_static(CLIENT_REQUEST_ID_HEADER), value);
}

/// The request id a client sent, if it is well formed (1 to 128 printable
/// ASCII characters): for the log line, never for a lookup.
pub(crate) fn from_client(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(CLIENT_REQUEST_ID_HEADER)?.to_str().ok()?;
    is_well_formed_request_id(value).then(|| value.to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_are_version_7_uuids_that_never_repeat_and_sort_by_arrival() {
        let ids: Vec<PublicRequestId> = (0..10_000).map(|_| PublicRequestId::generate()).collect();
        let distinct: HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), ids.len());
        assert!(ids.windows(2).all(|pair| pair[0].0 < pair[1].0));
        let text = ids[0].to_string();
        assert_eq!(text.len(), 36);
        assert_eq!(text.as_bytes()[14], b'7', "{text}");
        assert_eq!(ids[0].header_value(), text.as_str());
    }

    #[test]
    fn a_client_request_id_is_kept_only_when_well_formed() {
        let mut headers = HeaderMap::new();
        assert_eq!(from_client(&headers), None);
        headers.insert("x-request-id", HeaderValue::from_static("trace-1 a"));
        assert_eq!(from_client(&headers).as_deref(), Some("trace-1 a"));
        for bad in ["r".repeat(129), "a\tb".to_owned(), "café".to_owned()] {
            headers.insert("x-request-id", HeaderValue::from_str(&bad).unwrap());
            assert_eq!(from_client(&headers), None, "{bad:?}");
        }
    }
}

//! Which client request headers travel to the backend, and which values of them.
//!
//! One list for both ends: the relay picks these from a client's request, and
//! the worker passes on only these from a `request` frame, whatever a relay
//! (ours, or a ModelRelay server, which forwards nearly every header) put in it.

/// Client headers that travel with a request to the backend; all others stay at the relay.
///
/// The first six are ModelRelay v1's list; a worker built before the other
/// five joined it drops them (the request itself is served as before).
pub const FORWARDED_REQUEST_HEADERS: [&str; 11] = [
    "authorization",
    "content-type",
    "openai-organization",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    // Per-project accounting and beta features of the OpenAI API.
    "openai-project",
    "openai-beta",
    // The client's own request id, and W3C trace context, so tracing goes on past the relay.
    CLIENT_REQUEST_ID_HEADER,
    "traceparent",
    "tracestate",
];

/// The header a client names its own request id in (and the relay its id in the answer).
pub const CLIENT_REQUEST_ID_HEADER: &str = "x-request-id";

/// Longest client request id passed on, in bytes.
pub const MAX_CLIENT_REQUEST_ID_BYTES: usize = 128;

/// Whether `value` is a request id worth passing on and logging: 1 to
/// [`MAX_CLIENT_REQUEST_ID_BYTES`] printable ASCII characters (space to `~`).
pub fn is_well_formed_request_id(value: &str) -> bool {
    (1..=MAX_CLIENT_REQUEST_ID_BYTES).contains(&value.len())
        && value.bytes().all(|byte| matches!(byte, b' '..=b'~'))
}

/// Whether the header `name: value` of a client's request travels to the
/// backend: its name is on [`FORWARDED_REQUEST_HEADERS`] (any case), and a
/// client request id is well formed (a malformed one is dropped, not refused).
pub fn forwards_request_header(name: &str, value: &str) -> bool {
    let Some(listed) = FORWARDED_REQUEST_HEADERS
        .iter()
        .find(|listed| listed.eq_ignore_ascii_case(name))
    else {
        return false;
    };
    *listed != CLIENT_REQUEST_ID_HEADER || is_well_formed_request_id(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listed_headers_pass_in_any_case_and_others_do_not() {
        for name in FORWARDED_REQUEST_HEADERS {
            assert!(forwards_request_header(name, "v"), "{name}");
            assert!(
                forwards_request_header(&name.to_ascii_uppercase(), "v"),
                "{name}"
            );
        }
        for name in ["cookie", "host", "x-forwarded-for", "x-custom", "openai-"] {
            assert!(!forwards_request_header(name, "v"), "{name}");
        }
    }

    #[test]
    fn a_client_request_id_passes_only_when_well_formed() {
        let longest = "r".repeat(MAX_CLIENT_REQUEST_ID_BYTES);
        for good in ["a", "req_01J5 x-~!", longest.as_str()] {
            assert!(is_well_formed_request_id(good), "{good:?}");
            assert!(forwards_request_header("X-Request-Id", good), "{good:?}");
        }
        let too_long = "r".repeat(MAX_CLIENT_REQUEST_ID_BYTES + 1);
        for bad in ["", too_long.as_str(), "a\tb", "a\u{7f}", "café", "a\r\nb"] {
            assert!(!is_well_formed_request_id(bad), "{bad:?}");
            assert!(!forwards_request_header("x-request-id", bad), "{bad:?}");
        }
        // Other headers are not held to the request id's shape.
        assert!(forwards_request_header("traceparent", &too_long));
    }
}

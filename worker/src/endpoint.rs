//! Which backend paths the worker calls, and how their URLs are built.
//!
//! A relay names the backend path of every request (`endpoint_path`). The
//! worker trusts the relay with the request's body, never with where on the
//! backend it goes: a compromised relay, or anyone on a plain `ws://` link,
//! could otherwise make the worker call `/api/delete` on Ollama, or move the
//! call to another host with a path such as `@evil.example/x`. So a request's
//! path must be one of [`INFERENCE_PATHS`], and every backend URL is built by
//! [`backend_uri`], which cannot change the backend's scheme, host, port or
//! userinfo whatever the path says.

use std::fmt;

use http::Uri;
use url::Url;

/// The backend paths a relay may ask for: the inference endpoints of the
/// protocol (`/work/shared/PROTOCOL.md`), the ones our relay routes by model
/// (`relay/src/clients/routes.rs`: the token counters of the Anthropic and
/// Responses APIs among them), and so every path a ModelRelay v1 server sends.
/// A worker built before the token counters joined refuses them
/// (`endpoint_not_allowed`), as it refuses any path not on its list.
///
/// v1 servers (`ericflo/modelrelay`, every version of `modelrelay-server` and
/// the older `proxy-server`) send only `/v1/chat/completions`,
/// `/v1/messages` and `/v1/responses`, each a `&'static str` route constant
/// passed to the worker unchanged. None ever sends a query string or a
/// trailing slash, so matching is exact: `/v1/chat/completions/` or
/// `/v1/chat/completions?x=1` is refused rather than guessed at, which would
/// only widen what a relay can ask for.
///
/// `GET /v1/models` is not here: the worker asks for it itself (model
/// discovery); a relay never does.
pub const INFERENCE_PATHS: [&str; 7] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/embeddings",
    "/v1/messages/count_tokens",
    "/v1/responses/input_tokens",
];

/// The protocol's error code for a request whose path the worker will not call.
pub const REFUSED_CODE: &str = "endpoint_not_allowed";

/// How much of a refused path an error message or log line repeats.
const SHOWN_CHARS: usize = 96;

/// A path the worker will not call, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusedPath {
    /// The path, escaped (no raw control characters) and shortened.
    shown: String,
    why: Why,
}

/// Why a path was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Why {
    /// The relay asked for a path that is not an inference endpoint.
    NotAnInferencePath,
    /// The path is not a plain `/segment/segment` path of URL-safe characters.
    NotAPlainPath,
    /// The backend URL cannot take a path (`mailto:`-like), or the built URL
    /// would not be the backend's; cannot happen with a plain path, checked anyway.
    WouldLeaveTheBackend,
}

impl RefusedPath {
    fn new(path: &str, why: Why) -> Self {
        Self {
            shown: escaped(path),
            why,
        }
    }

    /// Why the path was refused.
    pub fn why(&self) -> Why {
        self.why
    }
}

impl fmt::Display for RefusedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "endpoint path {} refused: ", self.shown)?;
        match self.why {
            Why::NotAnInferencePath => write!(
                f,
                "this worker forwards only {}",
                INFERENCE_PATHS.join(", ")
            ),
            Why::NotAPlainPath => {
                f.write_str("not a plain path of letters, digits, '-', '.', '_', '~' and '/'")
            }
            Why::WouldLeaveTheBackend => f.write_str("the URL would not be the backend's"),
        }
    }
}

impl std::error::Error for RefusedPath {}

/// `path` quoted and escaped as Rust's `{:?}` does (control characters as
/// `\n`, `\u{1b}`, ...), cut after [`SHOWN_CHARS`] characters: safe to put
/// in a log line or an error message.
pub fn escaped(path: &str) -> String {
    match path.char_indices().nth(SHOWN_CHARS) {
        None => format!("{path:?}"),
        Some((cut, _)) => format!("{:?}…", &path[..cut]),
    }
}

/// Whether a relay may ask for `path`: exactly one of [`INFERENCE_PATHS`].
pub fn check_inference_path(path: &str) -> Result<(), RefusedPath> {
    if INFERENCE_PATHS.contains(&path) {
        Ok(())
    } else {
        Err(RefusedPath::new(path, Why::NotAnInferencePath))
    }
}

/// Whether `segment` may be one segment of a backend path: non-empty, not
/// `.` or `..`, and only unreserved URL characters (RFC 3986: letters,
/// digits, `-`, `.`, `_`, `~`). That leaves out `%` (so `%2e%2e` and every
/// other escape), `@`, `:`, `\`, `?`, `#`, spaces, control and non-ASCII
/// characters.
fn plain_segment(segment: &str) -> bool {
    !segment.is_empty()
        && segment != "."
        && segment != ".."
        && segment
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// The backend URL for `path`: `base` with `path`'s segments appended to
/// its own path (`http://host:8000/api` + `/v1/chat/completions` is
/// `http://host:8000/api/v1/chat/completions`). A base ending in `/v1` does
/// not get a second one (`--backend-url http://host:8000/v1` is a common
/// spelling). The base's query and fragment are dropped.
///
/// Why the `url` crate and not `format!("{base}{path}")`: a string is parsed
/// again as a whole, so whatever the path holds can be read as part of the
/// authority (`@evil` turns the base's host into userinfo), a new host
/// (`//evil`), a query or fragment (`?`, `#`), or a climb out of the base's
/// prefix (`/..`, which parsers resolve). [`Url::path_segments_mut`] adds
/// segments to the path alone and percent-encodes each one, so nothing in
/// them can reach the scheme, host, port, userinfo, query or fragment. We
/// still refuse anything but plain segments first: `..` is resolved by the
/// `url` crate too, and a path that needs escaping is not an API path. The
/// result is then checked against the base once more.
pub fn join(base: &Url, path: &str) -> Result<Url, RefusedPath> {
    let refuse = |why| RefusedPath::new(path, why);
    let rest = path
        .strip_prefix('/')
        .ok_or_else(|| refuse(Why::NotAPlainPath))?;
    let segments: Vec<&str> = rest.split('/').collect();
    if !segments.iter().all(|s| plain_segment(s)) {
        return Err(refuse(Why::NotAPlainPath));
    }
    let base_ends_in_v1 = base
        .path_segments()
        .and_then(|mut s| s.rfind(|s| !s.is_empty()))
        == Some("v1");
    let skip = usize::from(base_ends_in_v1 && segments.first() == Some(&"v1"));
    let mut url = base.clone();
    url.set_query(None);
    url.set_fragment(None);
    url.path_segments_mut()
        .map_err(|()| refuse(Why::WouldLeaveTheBackend))?
        .pop_if_empty()
        .extend(&segments[skip..]);
    let prefix = base.path().trim_end_matches('/');
    let same_backend = url.scheme() == base.scheme()
        && url.username() == base.username()
        && url.password() == base.password()
        && url.host() == base.host()
        && url.port() == base.port()
        && url.path().starts_with(prefix)
        && url.query().is_none()
        && url.fragment().is_none();
    if same_backend {
        Ok(url)
    } else {
        Err(refuse(Why::WouldLeaveTheBackend))
    }
}

/// [`join`], as the URI the HTTP client is given, its scheme, host and port
/// checked once more after the text is parsed again.
pub fn backend_uri(base: &Url, path: &str) -> Result<Uri, RefusedPath> {
    let url = join(base, path)?;
    let uri: Uri = url
        .as_str()
        .parse()
        .map_err(|_| RefusedPath::new(path, Why::WouldLeaveTheBackend))?;
    let same_backend = uri.scheme_str() == Some(base.scheme())
        && uri.host() == base.host_str()
        && uri.port_u16() == base.port();
    if same_backend {
        Ok(uri)
    } else {
        Err(RefusedPath::new(path, Why::WouldLeaveTheBackend))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn url(text: &str) -> Url {
        Url::parse(text).unwrap()
    }

    fn joined(base: &str, path: &str) -> Result<String, Why> {
        join(&url(base), path)
            .map(String::from)
            .map_err(|refused| refused.why())
    }

    #[test]
    fn every_inference_path_is_allowed_exactly_as_written() {
        for path in INFERENCE_PATHS {
            assert_eq!(check_inference_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn the_token_counting_paths_are_allowed_and_their_neighbours_are_not() {
        for path in ["/v1/messages/count_tokens", "/v1/responses/input_tokens"] {
            assert_eq!(check_inference_path(path), Ok(()), "{path}");
        }
        for path in [
            "/v1/messages/batches",
            "/v1/responses/resp_1",
            "/v1/responses/input_tokens/",
            "/v1/messages/count_tokens?beta=true",
        ] {
            let refused = check_inference_path(path).unwrap_err();
            assert_eq!(refused.why(), Why::NotAnInferencePath, "{path:?}");
        }
    }

    #[test]
    fn the_paths_a_v1_server_sends_are_allowed() {
        for path in ["/v1/chat/completions", "/v1/messages", "/v1/responses"] {
            assert_eq!(check_inference_path(path), Ok(()), "{path}");
        }
    }

    #[test]
    fn a_path_that_is_not_an_inference_endpoint_is_refused() {
        for path in [
            "/api/delete",
            "/api/pull",
            "/v1/models",
            "/",
            "",
            "/v1/chat/completions/",
            "/v1/chat/completions?stream=true",
            "/v1/chat/completions#x",
            "/V1/chat/completions",
            "/v1//chat/completions",
            "/v1/chat/completions/../../api/delete",
            " /v1/chat/completions",
        ] {
            let refused = check_inference_path(path).unwrap_err();
            assert_eq!(refused.why(), Why::NotAnInferencePath, "{path:?}");
        }
    }

    #[test]
    fn the_refusal_names_the_path_escaped_and_the_allowed_ones() {
        let refused = check_inference_path("/api/delete\r\nX-Evil: 1\u{1b}[2J").unwrap_err();
        let text = refused.to_string();
        assert!(
            text.contains(r#""/api/delete\r\nX-Evil: 1\u{1b}[2J""#),
            "{text}"
        );
        assert!(!text.chars().any(char::is_control), "{text}");
        for path in INFERENCE_PATHS {
            assert!(text.contains(path), "{text}");
        }
    }

    #[test]
    fn a_long_refused_path_is_shortened_in_messages() {
        let path = format!("/{}", "a".repeat(10_000));
        let text = check_inference_path(&path).unwrap_err().to_string();
        assert!(text.len() < 500, "{} bytes", text.len());
        assert!(text.contains('…'));
    }

    #[test]
    fn a_path_is_appended_to_the_base_path_prefix() {
        let cases = [
            ("http://h:8000", "http://h:8000/v1/chat/completions"),
            ("http://h:8000/", "http://h:8000/v1/chat/completions"),
            ("http://h:8000/api", "http://h:8000/api/v1/chat/completions"),
            (
                "http://h:8000/api/",
                "http://h:8000/api/v1/chat/completions",
            ),
            ("https://u:p@h/a/b", "https://u:p@h/a/b/v1/chat/completions"),
            ("http://[::1]:9/x", "http://[::1]:9/x/v1/chat/completions"),
        ];
        for (base, want) in cases {
            assert_eq!(
                joined(base, "/v1/chat/completions"),
                Ok(want.into()),
                "{base}"
            );
        }
    }

    #[test]
    fn a_base_ending_in_v1_does_not_get_a_second_one() {
        for base in ["http://h:8000/v1", "http://h:8000/v1/"] {
            assert_eq!(
                joined(base, "/v1/messages"),
                Ok("http://h:8000/v1/messages".into())
            );
        }
        assert_eq!(
            joined("http://h/x/v1", "/v1/models"),
            Ok("http://h/x/v1/models".into())
        );
    }

    #[test]
    fn the_base_query_and_fragment_are_not_kept() {
        assert_eq!(
            joined("http://h/api?key=1#top", "/v1/embeddings"),
            Ok("http://h/api/v1/embeddings".into())
        );
    }

    #[test]
    fn a_path_that_would_change_the_backend_host_is_refused() {
        for path in [
            "@evil.example/v1/chat/completions",
            "/@evil.example/v1/chat/completions",
            "//evil.example/v1/chat/completions",
            "@evil.example:80",
            ":9999/v1/chat/completions",
            ".evil.example/v1/chat/completions",
            "http://evil.example/v1/chat/completions",
            "/http://evil.example/",
            "\\\\evil.example\\v1",
            "/\\evil.example",
            "evil.example",
        ] {
            assert_eq!(
                joined("http://127.0.0.1:8000", path),
                Err(Why::NotAPlainPath),
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_path_that_would_climb_out_of_the_base_prefix_is_refused() {
        for path in [
            "/..",
            "/../api/delete",
            "/v1/../../api/delete",
            "/v1/./chat",
            "/%2e%2e/api/delete",
            "/%2E%2E/api/delete",
            "/.%2e/api/delete",
            "/v1/chat%2fcompletions",
            "/v1/chat/completions/",
            "/v1//chat",
        ] {
            assert_eq!(
                joined("http://h:8000/api", path),
                Err(Why::NotAPlainPath),
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_path_that_would_add_a_query_fragment_or_control_characters_is_refused() {
        for path in [
            "/v1/chat/completions?admin=1",
            "/v1/chat/completions#frag",
            "/v1/chat/completions\r\nHost: evil",
            "/v1/chat/completions\0",
            "/v1/chat\tcompletions",
            "/v1/chat completions",
            "/v1/chät",
            "",
        ] {
            assert_eq!(
                joined("http://h:8000", path),
                Err(Why::NotAPlainPath),
                "{path:?}"
            );
        }
    }

    #[test]
    fn a_base_that_cannot_take_a_path_is_refused_not_a_panic() {
        assert_eq!(
            joined("mailto:someone@example.com", "/v1/chat/completions"),
            Err(Why::WouldLeaveTheBackend)
        );
    }

    #[test]
    fn the_uri_the_client_gets_names_the_backend() {
        let uri = backend_uri(&url("http://u:p@10.0.0.1:8000/api"), "/v1/responses").unwrap();
        assert_eq!(uri, "http://u:p@10.0.0.1:8000/api/v1/responses");
        assert!(backend_uri(&url("http://10.0.0.1:8000"), "@evil/").is_err());
    }

    fn bases() -> impl Strategy<Value = Url> {
        prop::sample::select(vec![
            "http://127.0.0.1:8000",
            "http://127.0.0.1:8000/",
            "http://localhost:11434/api",
            "https://user:secret@backend.internal/prefix/v1/",
            "http://[::1]:8080/v1",
            "https://backend.example",
        ])
        .prop_map(url)
    }

    /// Paths built from the pieces attacks are made of, so the interesting
    /// cases come up far more often than in uniformly random text.
    fn hostile_paths() -> impl Strategy<Value = String> {
        let piece = prop::sample::select(vec![
            "/",
            "//",
            "\\",
            "@",
            ":",
            "?",
            "#",
            "%",
            "%2e",
            "%2E",
            "%2f",
            "%40",
            ".",
            "..",
            "v1",
            "chat",
            "completions",
            "api",
            "delete",
            "evil.example",
            "127.0.0.1",
            "80",
            "http:",
            "https:",
            "\r\n",
            "\t",
            " ",
            "\0",
            "\u{1b}",
            "[::1]",
            "~",
            "-",
            "_",
            "ä",
            "\u{ff0e}",
            "\u{2215}",
        ]);
        prop::collection::vec(piece, 0..10).prop_map(|pieces| pieces.concat())
    }

    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![hostile_paths(), any::<String>(), "[ -~]{0,40}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2048))]

        #[test]
        fn any_path_keeps_the_backends_scheme_host_port_and_userinfo_or_is_refused(
            base in bases(),
            path in any_path(),
        ) {
            if let Ok(built) = join(&base, &path) {
                prop_assert_eq!(built.scheme(), base.scheme());
                prop_assert_eq!(built.username(), base.username());
                prop_assert_eq!(built.password(), base.password());
                prop_assert_eq!(built.host(), base.host());
                prop_assert_eq!(built.port(), base.port());
                prop_assert!(built.path().starts_with(base.path().trim_end_matches('/')));
                prop_assert_eq!(built.query(), None);
                prop_assert_eq!(built.fragment(), None);
            }
            if let Ok(uri) = backend_uri(&base, &path) {
                prop_assert_eq!(uri.scheme_str(), Some(base.scheme()));
                prop_assert_eq!(uri.host(), base.host_str());
                prop_assert_eq!(uri.port_u16(), base.port());
                prop_assert_eq!(uri.query(), None);
            }
        }

        #[test]
        fn every_refusal_message_is_free_of_control_characters(path in any_path()) {
            if let Err(refused) = check_inference_path(&path) {
                prop_assert!(!refused.to_string().chars().any(char::is_control));
            }
            if let Err(refused) = join(&url("http://h:1"), &path) {
                prop_assert!(!refused.to_string().chars().any(char::is_control));
            }
        }
    }
}

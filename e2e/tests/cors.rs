//! Browsers calling the client API: CORS preflights and answers on `/v1/*` and
//! `/health`, an origin list, and none of it on the operator's routes.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use common::*;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use modelrelay_relay::keys::{KeyStore, KeyStoreLocation};
use modelrelay_relay::{AdminToken, CorsOrigins, RunningServer};
use serde_json::json;

const PAGE: &str = "https://chat.example.com";
const ADMIN: &str = "cors-admin-token";

/// The headers the OpenAI and Anthropic SDKs send from a browser (and
/// `anthropic-dangerous-direct-browser-access`, which Anthropic's needs there).
const SDK_HEADERS: [&str; 18] = [
    "authorization",
    "content-type",
    "x-api-key",
    "anthropic-version",
    "anthropic-beta",
    "anthropic-dangerous-direct-browser-access",
    "openai-organization",
    "openai-project",
    "openai-beta",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-os",
    "x-stainless-arch",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "x-stainless-retry-count",
    "x-stainless-timeout",
    "x-request-id",
];

/// The client routes a page may call, with the method it calls them with.
const CLIENT_ROUTES: [(&str, &str); 7] = [
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/responses"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
    ("GET", "/health"),
];

/// A key store of its own, so that API keys can be required.
async fn keys(name: &str) -> Arc<KeyStore> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("cors-keys-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(
        KeyStore::open(&KeyStoreLocation::Sqlite(dir))
            .await
            .unwrap(),
    )
}

async fn exchange(
    http: &Http,
    relay: &RunningServer,
    method: Method,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap) {
    let body = if method == Method::POST { "{}" } else { "" };
    let answer = http
        .send(method, &format!("{}{path}", relay.url()), body, headers)
        .await;
    let head = (answer.status, answer.headers.clone());
    answer.rest().await;
    head
}

async fn preflight(
    http: &Http,
    relay: &RunningServer,
    path: &str,
    origin: &str,
    method: &str,
) -> (StatusCode, HeaderMap) {
    let asked = SDK_HEADERS.join(", ");
    exchange(
        http,
        relay,
        Method::OPTIONS,
        path,
        &[
            ("origin", origin),
            ("access-control-request-method", method),
            ("access-control-request-headers", &asked),
        ],
    )
    .await
}

/// The comma list of a header, lower-cased, as a set of items.
fn items(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .flat_map(|value| value.to_str().unwrap().split(','))
        .map(|item| item.trim().to_ascii_lowercase())
        .filter(|item| !item.is_empty())
        .collect()
}

fn has_cors_headers(headers: &HeaderMap) -> bool {
    headers
        .keys()
        .any(|name| name.as_str().starts_with("access-control-"))
}

#[tokio::test]
async fn preflights_on_client_routes_are_answered_without_a_key_and_allow_what_the_sdks_send() {
    let keys = keys("preflight").await;
    let relay = relay(|config| {
        config.require_api_keys = true;
        config.keys = Some(keys);
    })
    .await;
    let http = Http::new();
    for (method, path) in CLIENT_ROUTES {
        let (status, headers) = preflight(&http, &relay, path, PAGE, method).await;
        assert!(status.is_success(), "{path}: {status}");
        assert_eq!(headers["access-control-allow-origin"], "*", "{path}");
        let methods = items(&headers, "access-control-allow-methods");
        assert!(
            methods.contains(&"get".into()) && methods.contains(&"post".into()),
            "{path}: {methods:?}"
        );
        let allowed = items(&headers, "access-control-allow-headers");
        for header in SDK_HEADERS {
            assert!(
                allowed.contains(&header.into()),
                "{path}: {header} not in {allowed:?}"
            );
        }
        assert_eq!(headers["access-control-max-age"], "7200", "{path}");
    }
    // A page preflights every call it makes: many in a row are all answered.
    for _ in 0..50 {
        let (status, headers) =
            preflight(&http, &relay, "/v1/chat/completions", PAGE, "POST").await;
        assert!(status.is_success(), "{status}");
        assert!(headers.contains_key("access-control-allow-origin"));
    }
}

#[tokio::test]
async fn answers_on_client_routes_name_the_origin_and_expose_the_request_ids() {
    let backend = backend(&["m"]).await;
    let relay = relay(|_| {}).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let answer = http
        .post_with(
            &format!("{}/v1/chat/completions", relay.url()),
            &chat,
            &[("content-type", "application/json"), ("origin", PAGE)],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    assert_eq!(answer.headers["access-control-allow-origin"], "*");
    let exposed = items(&answer.headers, "access-control-expose-headers");
    for header in ["x-request-id", "x-modelrelay-request-id", "retry-after"] {
        assert!(
            exposed.contains(&header.into()),
            "{header} not in {exposed:?}"
        );
    }
    assert!(answer.headers.contains_key("x-request-id"));
    for path in ["/health", "/v1/models"] {
        let (status, headers) =
            exchange(&http, &relay, Method::GET, path, &[("origin", PAGE)]).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert_eq!(headers["access-control-allow-origin"], "*", "{path}");
    }
}

#[tokio::test]
async fn a_refusal_on_a_client_route_is_readable_by_the_page() {
    let keys = keys("refusal").await;
    let relay = relay(|config| {
        config.require_api_keys = true;
        config.keys = Some(keys);
    })
    .await;
    let http = Http::new();
    let (status, headers) = exchange(
        &http,
        &relay,
        Method::POST,
        "/v1/chat/completions",
        &[("origin", PAGE), ("content-type", "application/json")],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn with_an_origin_list_only_those_pages_are_answered_with_cors_headers() {
    let relay = relay(|config| {
        config.cors_allow_origins = CorsOrigins::parse([PAGE, "http://localhost:3000"]).unwrap();
    })
    .await;
    let http = Http::new();
    let (status, headers) = preflight(&http, &relay, "/v1/chat/completions", PAGE, "POST").await;
    assert!(status.is_success());
    assert_eq!(headers["access-control-allow-origin"], PAGE);
    assert!(items(&headers, "vary").contains(&"origin".into()));
    let (_, headers) = exchange(&http, &relay, Method::GET, "/health", &[("origin", PAGE)]).await;
    assert_eq!(headers["access-control-allow-origin"], PAGE);
    let (_, headers) = exchange(
        &http,
        &relay,
        Method::GET,
        "/health",
        &[("origin", "http://localhost:3000")],
    )
    .await;
    assert_eq!(
        headers["access-control-allow-origin"],
        HeaderValue::from_static("http://localhost:3000")
    );

    let stranger = "https://elsewhere.example";
    let (_, headers) = preflight(&http, &relay, "/v1/chat/completions", stranger, "POST").await;
    assert!(!headers.contains_key("access-control-allow-origin"));
    let (status, headers) = exchange(
        &http,
        &relay,
        Method::GET,
        "/health",
        &[("origin", stranger)],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "the answer itself is not refused");
    assert!(!headers.contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn operator_routes_carry_no_cors_headers_at_all() {
    let keys = keys("operator").await;
    let relay = relay(|config| {
        config.admin_token = Some(AdminToken::new(ADMIN));
        config.keys = Some(keys);
    })
    .await;
    let http = Http::new();
    let bearer = format!("Bearer {ADMIN}");
    for path in [
        "/admin/workers",
        "/admin/stats",
        "/admin/keys",
        "/dashboard",
        "/dashboard/login",
        "/setup",
        "/metrics",
    ] {
        let (status, headers) = exchange(
            &http,
            &relay,
            Method::GET,
            path,
            &[("origin", PAGE), ("authorization", &bearer)],
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!has_cors_headers(&headers), "{path}: {headers:?}");
        let (_, headers) = preflight(&http, &relay, path, PAGE, "POST").await;
        assert!(!has_cors_headers(&headers), "preflight {path}: {headers:?}");
    }
    let (_, headers) = preflight(&http, &relay, "/admin/keys/1", PAGE, "DELETE").await;
    assert!(!has_cors_headers(&headers), "{headers:?}");
}

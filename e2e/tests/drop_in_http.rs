//! What clients written for other servers expect of the relay's HTTP face:
//! unprefixed paths, the token counters, `GET /v1/models/{id}`, 405s in the
//! API's own shape, the request headers they send for tracing and accounting,
//! and a request id on every answer that no other relay or restart repeats.

mod common;

use std::collections::HashSet;
use std::time::SystemTime;

use common::*;
use http::{HeaderMap, Method, StatusCode};
use modelrelay_relay::{REQUEST_ID_HEADER, RunningServer};
use modelrelay_testkit::simulated_backend::BackendEvent;
use modelrelay_worker::link::ProtocolChoice;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The paths each inference route is also called by, without `/v1`.
const UNPREFIXED: [(&str, &str); 5] = [
    ("/chat/completions", "/v1/chat/completions"),
    ("/completions", "/v1/completions"),
    ("/responses", "/v1/responses"),
    ("/messages", "/v1/messages"),
    ("/embeddings", "/v1/embeddings"),
];

/// The token counters, each with and without `/v1`, and the path the backend gets.
const COUNTERS: [(&str, &str); 4] = [
    ("/v1/messages/count_tokens", "/v1/messages/count_tokens"),
    ("/messages/count_tokens", "/v1/messages/count_tokens"),
    ("/v1/responses/input_tokens", "/v1/responses/input_tokens"),
    ("/responses/input_tokens", "/v1/responses/input_tokens"),
];

/// The paths and headers of the requests `backend` received, in order.
fn received(backend: &Backend) -> Vec<(String, Vec<(String, String)>)> {
    backend
        .sim
        .events()
        .into_iter()
        .filter_map(|event| match event {
            BackendEvent::Received { path, headers, .. } => Some((path, headers)),
            _ => None,
        })
        .collect()
}

/// The value of header `name` among `headers`, if present.
fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The relay's request id of an answer: both headers carry it, and it is a UUIDv7.
fn request_id(headers: &HeaderMap, what: &str) -> String {
    let ours = headers
        .get("x-request-id")
        .unwrap_or_else(|| panic!("{what}: no x-request-id"))
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        headers.get(REQUEST_ID_HEADER).map(|v| v.to_str().unwrap()),
        Some(ours.as_str()),
        "{what}: both headers name the same id"
    );
    let shape_ok = ours.len() == 36
        && ours.char_indices().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => c == '-',
            14 => c == '7',
            _ => c.is_ascii_hexdigit() && !c.is_ascii_uppercase(),
        });
    assert!(shape_ok, "{what}: {ours:?} is not a lower-case UUIDv7");
    ours
}

/// The request id of a raw HTTP answer's head.
fn raw_request_id(answer: &str) -> String {
    let head = answer.split("\r\n\r\n").next().unwrap();
    let mut headers = HeaderMap::new();
    for line in head.lines().skip(1) {
        let (name, value) = line.split_once(':').unwrap();
        headers.insert(
            http::HeaderName::from_bytes(name.trim().as_bytes()).unwrap(),
            value.trim().parse().unwrap(),
        );
    }
    request_id(&headers, answer.lines().next().unwrap())
}

#[tokio::test]
async fn unprefixed_paths_reach_workers_and_backends_as_their_v1_paths() {
    let (relay, backend, _worker, http) = world_over(Link::WebSocket).await;
    for (path, v1) in UNPREFIXED {
        let body = json!({"model": "m", "input": "x"}).to_string();
        let reply = http.post(&format!("{}{path}", relay.url()), &body).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        assert_eq!(received(&backend).last().unwrap().0, v1, "{path}");
    }
    let streamed = http
        .post(
            &format!("{}/chat/completions", relay.url()),
            r#"{"model":"m","stream":true}"#,
        )
        .await;
    assert_eq!(streamed.headers["content-type"], "text/event-stream");
    assert_eq!(sse_data(&streamed.body).last().unwrap(), "[DONE]");
    let paths: HashSet<String> = received(&backend).into_iter().map(|(p, _)| p).collect();
    assert!(paths.iter().all(|p| p.starts_with("/v1/")), "{paths:?}");
    let listed = http.get(&format!("{}/models", relay.url())).await;
    assert_eq!(listed.status, StatusCode::OK);
    assert_eq!(listed.json()["data"][0]["id"], "m");
}

#[tokio::test]
async fn the_token_counters_are_routed_by_model_to_the_backend() {
    let (relay, backend, _worker, http) = world_over(Link::WebSocket).await;
    for (path, v1) in COUNTERS {
        let url = format!("{}{path}", relay.url());
        // `stream` means nothing here: the count comes back whole.
        let body =
            json!({"model": "m", "stream": true, "messages": [{"role": "user", "content": "hi"}]});
        let reply = http.post(&url, &body.to_string()).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        assert_eq!(reply.headers["content-type"], "application/json", "{path}");
        assert!(reply.json()["input_tokens"].as_u64().unwrap() > 0, "{path}");
        assert_eq!(received(&backend).last().unwrap().0, v1, "{path}");
        // A model no worker serves: 404 in the route's API's shape, as on every inference route.
        let unknown = http.post(&url, r#"{"model":"nobody-serves-this"}"#).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{path}");
        let error = unknown.json();
        if v1.starts_with("/v1/messages") {
            assert_eq!(error["type"], "error", "{path}: {error}");
            assert_eq!(error["error"]["type"], "not_found_error", "{path}: {error}");
        } else {
            assert_eq!(error["error"]["code"], "model_not_found", "{path}: {error}");
        }
    }
    assert_eq!(received(&backend).len(), COUNTERS.len());
}

#[tokio::test]
async fn a_model_is_answered_by_id_when_a_worker_serves_it_and_404_otherwise() {
    let backend = backend(&["m", "org/model-2"]).await;
    let relay = relay(|_| {}).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m", "org/model-2"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    for (path, id) in [
        ("/v1/models/m", "m"),
        ("/models/m", "m"),
        ("/v1/models/org/model-2", "org/model-2"),
    ] {
        let reply = http.get(&format!("{}{path}", relay.url())).await;
        assert_eq!(reply.status, StatusCode::OK, "{path}: {}", reply.text());
        assert_eq!(
            reply.json(),
            json!({"id": id, "object": "model", "created": 0, "owned_by": "modelrelay"}),
            "{path}"
        );
        request_id(&reply.headers, path);
    }
    let missing = http
        .get(&format!("{}/v1/models/gpt-none", relay.url()))
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let error = missing.json();
    assert_eq!(error["error"]["code"], "model_not_found", "{error}");
    assert_eq!(error["error"]["type"], "invalid_request_error", "{error}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("gpt-none")
    );
    request_id(&missing.headers, "404");
}

#[tokio::test]
async fn a_wrong_method_answers_405_in_the_routes_api_shape_with_allow() {
    let (relay, _backend, _worker, http) = world_over(Link::WebSocket).await;
    let cases = [
        (Method::GET, "/v1/chat/completions", "POST", false),
        (Method::PUT, "/chat/completions", "POST", false),
        (Method::GET, "/v1/embeddings", "POST", false),
        (Method::DELETE, "/v1/responses/input_tokens", "POST", false),
        (Method::GET, "/v1/messages", "POST", true),
        (Method::GET, "/messages/count_tokens", "POST", true),
        (Method::POST, "/v1/models", "GET,HEAD", false),
        (Method::DELETE, "/v1/models/m", "GET,HEAD", false),
    ];
    for (method, path, allow, anthropic) in cases {
        let what = format!("{method} {path}");
        let streaming = http
            .send(method, &format!("{}{path}", relay.url()), "", &[])
            .await;
        let (status, headers) = (streaming.status, streaming.headers.clone());
        let body: serde_json::Value = serde_json::from_slice(&streaming.rest().await).unwrap();
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
        assert_eq!(headers["allow"], allow, "{what}");
        assert_eq!(headers["content-type"], "application/json", "{what}");
        if anthropic {
            assert_eq!(body["type"], "error", "{what}: {body}");
            assert_eq!(body["error"]["type"], "invalid_request_error", "{what}");
        } else {
            assert_eq!(
                body["error"]["code"], "method_not_allowed",
                "{what}: {body}"
            );
            assert_eq!(body["error"]["type"], "invalid_request_error", "{what}");
        }
        request_id(&headers, &what);
    }
    // An unknown path under `/v1/messages` is a 404 in Anthropic's shape.
    let missing = http
        .post(&format!("{}/v1/messages/batches", relay.url()), "{}")
        .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(missing.json()["error"]["type"], "not_found_error");
}

#[tokio::test]
async fn the_listed_client_headers_reach_the_backend_over_v1_and_v2_links() {
    for protocol in [ProtocolChoice::V1, ProtocolChoice::V2] {
        let backend = backend(&["m"]).await;
        let relay = relay(|_| {}).await;
        let mut spec = WorkerSpec::new(&relay, &backend, &["m"]);
        spec.protocol = protocol;
        let _worker = spec.start();
        let http = Http::new();
        wait_for_workers(&http, &relay, 1).await;
        let url = format!("{}/v1/chat/completions", relay.url());
        let sent = [
            ("content-type", "application/json"),
            ("authorization", "Bearer backend-key"),
            ("openai-organization", "org_1"),
            ("openai-project", "proj_1"),
            ("openai-beta", "assistants=v2"),
            ("x-request-id", "client-trace-42"),
            (
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            ),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-custom", "stays"),
            ("cookie", "session=1"),
        ];
        let reply = http.post_with(&url, r#"{"model":"m"}"#, &sent).await;
        assert_eq!(reply.status, StatusCode::OK, "{protocol:?}");
        // The answer names the relay's id, not the client's.
        assert_ne!(request_id(&reply.headers, "answer"), "client-trace-42");
        let (_, got) = received(&backend).pop().unwrap();
        for (name, value) in &sent[..8] {
            assert_eq!(header(&got, name), Some(*value), "{protocol:?}: {name}");
        }
        for name in ["x-custom", "cookie"] {
            assert_eq!(header(&got, name), None, "{protocol:?}: {name} passed");
        }
        // A malformed request id is dropped, and the request served all the same.
        let too_long = "r".repeat(129);
        for bad in [too_long.as_str(), "tab\there", "caf\u{e9}"] {
            let reply = http
                .post_with(
                    &url,
                    r#"{"model":"m"}"#,
                    &[("content-type", "application/json"), ("x-request-id", bad)],
                )
                .await;
            assert_eq!(reply.status, StatusCode::OK, "{protocol:?}: {bad:?}");
            let (_, got) = received(&backend).pop().unwrap();
            assert_eq!(header(&got, "x-request-id"), None, "{protocol:?}: {bad:?}");
        }
    }
}

/// A request to make (method, path, body, headers) and the status it must get.
type Call<'a> = (Method, &'a str, &'a str, &'a [(&'a str, &'a str)], u16);

/// One relay with a key store and a small body limit, a worker and a backend.
async fn keyed_relay() -> (RunningServer, Backend, Worker, String) {
    let keys = common::keys::sqlite_keys().await;
    let key = keys.create("client", SystemTime::now()).await.unwrap().key;
    let backend = backend(&["m"]).await;
    let relay = relay(|config| {
        config.keys = Some(keys);
        config.require_api_keys = true;
        config.max_body_bytes = 1024;
    })
    .await;
    let worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    wait_for_workers(&Http::new(), &relay, 1).await;
    (relay, backend, worker, key)
}

#[tokio::test]
async fn every_answer_carries_a_request_id_that_no_other_relay_repeats() {
    let http = Http::new();
    let mut ids = HashSet::new();
    let mut answers = 0;
    // Two relays, as behind a load balancer or across a restart: the same
    // requests in the same order once gave both the same ids.
    for _ in 0..2 {
        let (relay, _backend, _worker, key) = keyed_relay().await;
        let bearer = format!("Bearer {key}");
        let json = ("content-type", "application/json");
        let keyed = [json, ("authorization", bearer.as_str())];
        let big = format!(r#"{{"model":"m","pad":"{}"}}"#, "x".repeat(2048));
        let cases: [Call<'_>; 11] = [
            (
                Method::POST,
                "/v1/chat/completions",
                r#"{"model":"m"}"#,
                &keyed,
                200,
            ),
            (
                Method::POST,
                "/chat/completions",
                r#"{"model":"m","stream":true}"#,
                &keyed,
                200,
            ),
            (
                Method::POST,
                "/v1/messages",
                r#"{"model":"m"}"#,
                &[json],
                401,
            ),
            (Method::GET, "/v1/models", "", &[], 401),
            (
                Method::POST,
                "/v1/chat/completions",
                r#"{"model":"gone"}"#,
                &keyed,
                404,
            ),
            (Method::GET, "/no/such/path", "", &[], 404),
            (Method::GET, "/v1/chat/completions", "", &keyed, 405),
            (Method::POST, "/v1/chat/completions", &big, &keyed, 413),
            (Method::POST, "/v1/chat/completions", "[1]", &keyed, 400),
            (Method::GET, "/health", "", &[], 200),
            (Method::GET, "/metrics", "", &[], 200),
        ];
        for (method, path, body, headers, status) in cases {
            let what = format!("{method} {path}");
            let streaming = http
                .send(method, &format!("{}{path}", relay.url()), body, headers)
                .await;
            assert_eq!(streaming.status.as_u16(), status, "{what}");
            assert!(
                ids.insert(request_id(&streaming.headers, &what)),
                "{what}: id repeated"
            );
            answers += 1;
            streaming.rest().await;
        }
    }
    assert_eq!(ids.len(), answers);
}

#[tokio::test]
async fn a_full_queue_and_the_connection_cap_answer_429_with_a_request_id_too() {
    let backend = backend(&["m"]).await;
    let queued = relay(|config| config.relay.max_queue_len = 1).await;
    let mut spec = WorkerSpec::new(&queued, &backend, &["m"]);
    spec.max_concurrent = 1;
    let _worker = spec.start();
    let http = Http::new();
    wait_for_workers(&http, &queued, 1).await;
    let url = format!("{}/v1/chat/completions", queued.url());
    let slow = json!({"model": "m", "mock": {"tokens": 20, "delay_ms": 50}}).to_string();
    // One running, one waiting, the third refused.
    let (running, waiting) =
        common::queue::run_one_and_queue_one(&http, &queued, &backend, &url, &slow).await;
    let full = http.post(&url, &slow).await;
    assert_eq!(
        full.status,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        full.text()
    );
    request_id(&full.headers, "queue full");
    assert_eq!(waiting.await.unwrap().status, StatusCode::OK);
    assert_eq!(running.await.unwrap().status, StatusCode::OK);

    // A connection past the per-address cap is refused before any request is
    // read; that answer carries an id as well.
    let capped = relay(|config| config.max_connections_per_address = 1).await;
    let _held = TcpStream::connect(capped.addr()).await.unwrap();
    let mut extra = TcpStream::connect(capped.addr()).await.unwrap();
    extra
        .write_all(b"GET /health HTTP/1.1\r\nhost: relay\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    extra.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    raw_request_id(&answer);
}

//! The relay end to end over real loopback sockets: server, workers, simulated backends.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use modelrelay_testkit::simulated_backend::{BackendEvent, SimulatedBackendConfig};
use modelrelay_worker::ModelSource;
use modelrelay_worker::link::ProtocolChoice;
use serde_json::json;

const ROUTES: [&str; 4] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
];

/// A relay with one WebSocket worker in front of one backend serving `m`.
async fn world() -> (modelrelay_relay::RunningServer, Backend, Worker, Http) {
    world_over(Link::WebSocket).await
}

#[tokio::test]
async fn streams_on_every_route_are_byte_for_byte_what_the_backend_sends() {
    let (relay, backend, _worker, http) = world().await;
    for route in ROUTES {
        let body = json!({"model": "m", "stream": true, "stream_options": {"include_usage": true}})
            .to_string();
        let direct = http.post(&format!("{}{route}", backend.url), &body).await;
        let relayed = http.post(&format!("{}{route}", relay.url()), &body).await;
        assert_eq!(
            relayed.status,
            StatusCode::OK,
            "{route}: {}",
            relayed.text()
        );
        assert_eq!(
            relayed.headers["content-type"], "text/event-stream",
            "{route}"
        );
        assert!(!relayed.body.is_empty());
        assert_eq!(
            relayed.text(),
            direct.text(),
            "{route}: stream differs from the backend's"
        );
    }
}

#[tokio::test]
async fn non_streaming_answers_on_every_route_pass_through_unchanged() {
    let (relay, backend, _worker, http) = world().await;
    for route in ROUTES.iter().chain(&["/v1/embeddings"]) {
        let body = json!({"model": "m", "input": "x"}).to_string();
        let direct = http.post(&format!("{}{route}", backend.url), &body).await;
        let relayed = http.post(&format!("{}{route}", relay.url()), &body).await;
        assert_eq!(relayed.status, direct.status, "{route}");
        assert_eq!(
            relayed.headers["content-type"], direct.headers["content-type"],
            "{route}"
        );
        assert_eq!(relayed.body, direct.body, "{route}");
        assert!(
            relayed
                .headers
                .contains_key(modelrelay_relay::REQUEST_ID_HEADER)
        );
    }
}

/// A backend (or a worker's owner) trying to speak for the relay's origin:
/// HTML with a script, a cookie, a redirect and a CORS grant, plus headers a
/// client does want.
async fn hostile_backend() -> String {
    use axum::routing::post;
    let answer = || async {
        axum::response::Response::builder()
            .status(200)
            .header("content-type", "text/html; charset=utf-8")
            .header("set-cookie", "x=1; Path=/")
            .header("location", "https://elsewhere.example/")
            .header("access-control-allow-origin", "https://evil.example")
            .header("access-control-allow-credentials", "true")
            .header("x-request-id", "backend-id-7")
            .header("x-ratelimit-remaining-requests", "41")
            .header("openai-processing-ms", "5")
            .body(axum::body::Body::from(
                "<script>alert(document.cookie)</script>",
            ))
            .unwrap()
    };
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(answer))
        .route("/v1/messages", post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

#[tokio::test]
async fn a_backend_answering_html_with_a_cookie_reaches_the_client_as_inert_plain_text() {
    let relay = relay(|_| {}).await;
    let backend = hostile_backend().await;
    let relay_url = relay.url();
    let _worker = WorkerSpec::to(&relay_url, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    for route in ["/v1/chat/completions", "/v1/messages"] {
        // As a cross-site `<form enctype="text/plain">` would post it.
        let reply = http
            .post_with(
                &format!("{relay_url}{route}"),
                r#"{"model":"m"}"#,
                &[("content-type", "text/plain")],
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{route}");
        let h = &reply.headers;
        assert_eq!(h["content-type"], "text/plain; charset=utf-8", "{route}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{route}");
        assert_eq!(h["content-security-policy"], "sandbox", "{route}");
        for dropped in ["set-cookie", "location", "access-control-allow-credentials"] {
            assert!(!h.contains_key(dropped), "{route}: {dropped} passed");
        }
        // The relay's own CORS grant (clause 126's default), not the backend's.
        assert_eq!(h["access-control-allow-origin"], "*", "{route}");
        assert_eq!(h["x-backend-request-id"], "backend-id-7", "{route}");
        assert_eq!(
            h["x-request-id"],
            h[modelrelay_relay::REQUEST_ID_HEADER],
            "{route}: x-request-id is the relay's own id"
        );
        assert_eq!(h["x-ratelimit-remaining-requests"], "41", "{route}");
        assert_eq!(h["openai-processing-ms"], "5", "{route}");
        assert_eq!(reply.text(), "<script>alert(document.cookie)</script>");
    }
}

#[tokio::test]
async fn every_inference_answer_streamed_or_not_and_errors_too_says_nosniff_and_sandbox() {
    let (relay, _backend, _worker, http) = world().await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let streamed = http.post(&url, r#"{"model":"m","stream":true}"#).await;
    let whole = http.post(&url, r#"{"model":"m"}"#).await;
    let unknown = http.post(&url, r#"{"model":"nobody-serves-this"}"#).await;
    let invalid = http.post(&url, r#"{"model":[1]}"#).await;
    for (what, reply, status) in [
        ("streamed", &streamed, 200),
        ("whole", &whole, 200),
        ("unknown model", &unknown, 404),
        ("invalid model", &invalid, 400),
    ] {
        assert_eq!(reply.status.as_u16(), status, "{what}");
        assert_eq!(reply.headers["x-content-type-options"], "nosniff", "{what}");
        assert_eq!(
            reply.headers["content-security-policy"], "sandbox",
            "{what}"
        );
    }
}

#[tokio::test]
async fn chunks_arrive_in_order_and_complete_while_the_backend_is_still_generating() {
    let (relay, _backend, _worker, http) = world().await;
    let body =
        json!({"model": "m", "stream": true, "mock": {"tokens": 50, "delay_ms": 5}}).to_string();
    let mut stream = http
        .send(
            http::Method::POST,
            &format!("{}/v1/chat/completions", relay.url()),
            &body,
            &[],
        )
        .await;
    assert_eq!(stream.status, StatusCode::OK);
    // The first chunk comes long before the last token is generated.
    let first = stream.next_chunk().await.expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).contains("\"role\":\"assistant\""));
    let rest = stream.rest().await;
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let events = sse_data(&all);
    assert_eq!(
        events.len(),
        1 + 50 + 1 + 1,
        "role, 50 tokens, stop, [DONE]"
    );
    assert_eq!(events.last().unwrap(), "[DONE]");
    let text: String = events[1..51]
        .iter()
        .map(|e| {
            serde_json::from_str::<serde_json::Value>(e).unwrap()["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(
        text.starts_with("Hello from ModelRelay! This reply streams"),
        "{text}"
    );
}

#[tokio::test]
async fn upstream_4xx_and_5xx_pass_through_with_their_bodies() {
    let (relay, backend, _worker, http) = world().await;
    for (status, route) in [
        (400, "/v1/chat/completions"),
        (429, "/v1/messages"),
        (500, "/v1/chat/completions"),
        (503, "/v1/completions"),
    ] {
        for stream in [false, true] {
            let body =
                json!({"model": "m", "stream": stream, "mock": {"status": status}}).to_string();
            let direct = http.post(&format!("{}{route}", backend.url), &body).await;
            let relayed = http.post(&format!("{}{route}", relay.url()), &body).await;
            assert_eq!(relayed.status.as_u16(), status, "{route} stream={stream}");
            assert_eq!(relayed.body, direct.body, "{route} stream={stream}");
            assert_eq!(relayed.headers["content-type"], "application/json");
        }
    }
}

#[tokio::test]
async fn a_model_that_is_no_routable_name_or_a_stream_flag_that_is_no_boolean_gets_400_without_echo()
 {
    let (relay, backend, _worker, http) = world().await;
    let url = |route: &str| format!("{}{route}", relay.url());

    // An array where the name belongs: refused at its first byte, in each API's shape.
    let zeros = format!(r#"{{"model":[{}0]}}"#, "0,".repeat(100_000));
    let reply = http.post(&url("/v1/chat/completions"), &zeros).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["code"], "invalid_model");
    let reply = http
        .post(&url("/v1/messages"), r#"{"model":{"a":1}}"#)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    // A name longer than any worker may advertise is not echoed back.
    let long = "m".repeat(257);
    let reply = http
        .post(
            &url("/v1/chat/completions"),
            &format!(r#"{{"model":"{long}"}}"#),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["code"], "invalid_model");
    assert!(!reply.text().contains(&long), "{}", reply.text());

    // `stream` other than true, false or null: lenient backends stream on these.
    for stream in ["1", r#""true""#, "[true]"] {
        let body = format!(r#"{{"model":"m","stream":{stream}}}"#);
        let reply = http.post(&url("/v1/chat/completions"), &body).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{stream}");
        assert_eq!(reply.json()["error"]["code"], "invalid_stream", "{stream}");
    }
    let reply = http
        .post(
            &url("/v1/chat/completions"),
            r#"{"model":"m","stream":null}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // None of the refused requests reached the backend: only the last one did.
    let received = backend
        .sim
        .events()
        .into_iter()
        .filter(|e| matches!(e, BackendEvent::Received { .. }))
        .count();
    assert_eq!(received, 1, "{:?}", backend.sim.events());
}

#[tokio::test]
async fn bad_requests_get_errors_in_each_apis_own_shape() {
    let (relay, _backend, _worker, http) = world().await;
    let url = |route: &str| format!("{}{route}", relay.url());

    let reply = http.post(&url("/v1/chat/completions"), "{not json").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");
    assert_eq!(reply.json()["error"]["code"], "invalid_json");

    let reply = http
        .post(&url("/v1/messages"), r#"{"max_tokens": 5}"#)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["type"], "error");
    assert_eq!(reply.json()["error"]["type"], "invalid_request_error");

    let reply = http
        .post(&url("/v1/chat/completions"), r#"{"model": 7}"#)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // A model name with control characters (it could forge log lines).
    let reply = http
        .post(
            &url("/v1/chat/completions"),
            r#"{"model": "m\n2026-12-03T00:00:00Z INFO forged"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["code"], "invalid_model");

    let reply = http
        .post(
            &url("/v1/chat/completions"),
            r#"{"model": "never-advertised"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "model_not_found");
    let reply = http
        .post(&url("/v1/messages"), r#"{"model": "never-advertised"}"#)
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["type"], "not_found_error");

    let reply = http
        .post(
            &url("/v1/chat/completions"),
            "{\"model\":\"m\",\"x\":\"\u{FFFD}\"}",
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "valid UTF-8 passes the check");
    let reply = http.get(&url("/v1/nothing-here")).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("/v1/nothing-here")
    );
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_with_413() {
    let backend = backend(&["m"]).await;
    let relay = relay(|c| c.max_body_bytes = 1024).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    let big = json!({"model": "m", "padding": "x".repeat(2000)}).to_string();
    let reply = http
        .post(&format!("{}/v1/chat/completions", relay.url()), &big)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"]["code"], "request_too_large");
    let reply = http
        .post(&format!("{}/v1/messages", relay.url()), &big)
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.json()["error"]["type"], "request_too_large");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_cancels_the_backend_call() {
    let (relay, backend, _worker, http) = world().await;
    let body = json!({"model": "m", "stream": true, "mock": {"tokens": 1000, "delay_ms": 10, "tag": "gone"}}).to_string();
    let url = format!("{}/v1/chat/completions", relay.url());
    leave_after(&http, &url, &body, 2).await;
    let cancelled = backend.saw_cancelled("gone", Duration::from_secs(5)).await;
    assert!(
        cancelled,
        "the backend never saw the cancellation: {:?}",
        backend.sim.events()
    );
}

#[tokio::test]
async fn a_client_that_leaves_right_after_the_final_event_completes_its_request() {
    // As the OpenAI SDK does: read up to `data: [DONE]` (or the route's final
    // event) and close at once, before the backend has ended its body.
    let (relay, backend, _worker, http) = world().await;
    for route in ROUTES {
        let tag = format!("done{route}");
        let body = json!({"model": "m", "stream": true,
            "mock": {"tokens": 3, "linger_ms": 300, "tag": tag}})
        .to_string();
        let mut stream = http
            .send(
                http::Method::POST,
                &format!("{}{route}", relay.url()),
                &body,
                &[],
            )
            .await;
        assert_eq!(stream.status, StatusCode::OK, "{route}");
        let mut seen = Vec::new();
        while !["[DONE]", "message_stop", "response.completed"]
            .iter()
            .any(|end| String::from_utf8_lossy(&seen).contains(end))
        {
            let chunk = stream.next_chunk().await.expect("the stream goes on");
            seen.extend_from_slice(&chunk);
        }
        drop(stream);
        let finished = backend
            .sim
            .wait_for(Duration::from_secs(5), |events| {
                events
                    .iter()
                    .any(|e| matches!(e, BackendEvent::Finished { tag: Some(t) } if *t == tag))
            })
            .await;
        assert!(
            finished && !backend.saw_cancelled(&tag, Duration::ZERO).await,
            "{route}: the backend call was cut short: {:?}",
            backend.sim.events()
        );
    }
    // Counted as four completed requests, not as cancellations.
    let metrics_url = format!("{}/metrics", relay.url());
    let outcome = |text: &str, outcome: &str| -> u64 {
        text.lines()
            .filter(|l| {
                l.starts_with("modelrelay_requests_total{")
                    && l.contains(&format!("outcome=\"{outcome}\""))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = http.get(&metrics_url).await.text();
        if outcome(&text, "ok") == 4 || tokio::time::Instant::now() > deadline {
            assert_eq!(outcome(&text, "ok"), 4, "{text}");
            assert_eq!(outcome(&text, "cancelled"), 0, "{text}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_client_that_leaves_before_the_answer_cancels_the_backend_call() {
    let (relay, backend, _worker, http) = world().await;
    let body = json!({"model": "m", "mock": {"tokens": 100, "delay_ms": 50, "tag": "impatient"}})
        .to_string();
    let url = format!("{}/v1/chat/completions", relay.url());
    let request = tokio::spawn(async move { http.post(&url, &body).await });
    assert!(
        backend
            .sim
            .wait_for(Duration::from_secs(5), |e| e
                .iter()
                .any(|e| matches!(e, BackendEvent::Received { .. })))
            .await
    );
    request.abort();
    let cancelled = backend
        .saw_cancelled("impatient", Duration::from_secs(5))
        .await;
    assert!(
        cancelled,
        "the backend never saw the cancellation: {:?}",
        backend.sim.events()
    );
}

#[tokio::test]
async fn the_request_timeout_answers_504_and_cancels_the_backend_call() {
    let backend = backend(&["m"]).await;
    let relay = relay(|c| c.relay.request_timeout = Some(Duration::from_millis(300))).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let body =
        json!({"model": "m", "mock": {"tokens": 100, "delay_ms": 100, "tag": "slow"}}).to_string();
    let reply = http
        .post(&format!("{}/v1/chat/completions", relay.url()), &body)
        .await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.json()["error"]["code"], "request_timeout");
    assert!(backend.saw_cancelled("slow", Duration::from_secs(5)).await);
}

#[tokio::test]
async fn a_full_queue_answers_429_with_retry_after_and_a_long_wait_504() {
    let backend = backend(&["m"]).await;
    let relay = relay(|c| {
        c.relay.max_queue_len = 1;
        c.relay.queue_timeout = Some(Duration::from_millis(500));
    })
    .await;
    let mut spec = WorkerSpec::new(&relay, &backend, &["m"]);
    spec.max_concurrent = 1;
    let _worker = spec.start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let slow = json!({"model": "m", "mock": {"tokens": 20, "delay_ms": 100}}).to_string();
    // One running, one waiting, the third refused.
    let (running, waiting) =
        common::queue::run_one_and_queue_one(&http, &relay, &backend, &url, &slow).await;
    let refused = http.post(&url, &slow).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers["retry-after"], "1");
    assert_eq!(refused.json()["error"]["code"], "queue_full");
    let waited = waiting.await.unwrap();
    assert_eq!(waited.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(waited.json()["error"]["code"], "queue_timeout");
    assert_eq!(running.await.unwrap().status, StatusCode::OK);
}

#[tokio::test]
async fn a_worker_killed_before_the_first_byte_has_its_request_requeued_to_another() {
    scenarios::a_worker_killed_before_the_first_byte_has_its_request_requeued(Link::WebSocket)
        .await;
}

#[tokio::test]
async fn a_worker_killed_mid_stream_ends_the_stream_with_one_error_event() {
    let (relay, backend, worker, http) = world().await;
    let body =
        json!({"model": "m", "stream": true, "mock": {"tokens": 1000, "delay_ms": 10}}).to_string();
    let mut stream = http
        .send(
            http::Method::POST,
            &format!("{}/v1/chat/completions", relay.url()),
            &body,
            &[],
        )
        .await;
    let first = stream.next_chunk().await.unwrap();
    assert!(
        backend
            .sim
            .wait_for(Duration::from_secs(5), |e| !e.is_empty())
            .await
    );
    worker.kill();
    let rest = stream.rest().await;
    let mut all = first.to_vec();
    all.extend_from_slice(&rest);
    let events = sse_data(&all);
    let last: serde_json::Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "worker_lost", "{last}");
    let errors = events.iter().filter(|e| e.contains("\"error\"")).count();
    assert_eq!(errors, 1, "exactly one error event");
}

#[tokio::test]
async fn a_backend_failure_mid_stream_reaches_the_client_as_an_error_event_in_its_api_shape() {
    let (relay, _backend, _worker, http) = world().await;
    let body =
        json!({"model": "m", "stream": true, "mock": {"tokens": 10, "fail_after": 3}}).to_string();
    let reply = http
        .post(&format!("{}/v1/messages", relay.url()), &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let text = reply.text();
    assert!(text.ends_with("\n\n"), "{text}");
    let last_event = text.trim_end().rsplit("\n\n").next().unwrap();
    assert!(
        last_event.starts_with("event: error\ndata: "),
        "{last_event}"
    );
    let error: serde_json::Value = serde_json::from_str(
        last_event
            .lines()
            .nth(1)
            .unwrap()
            .strip_prefix("data: ")
            .unwrap(),
    )
    .unwrap();
    assert_eq!(error["type"], "error");
    assert_eq!(error["error"]["type"], "api_error");
}

#[tokio::test]
async fn an_unreachable_backend_is_reported_per_request_as_502_with_the_reason() {
    let relay = relay(|_| {}).await;
    let http = Http::new();
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead_url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let relay_url = relay.url();
    let _worker = WorkerSpec::to(&relay_url, &dead_url, &["m"]).start();
    wait_for_workers(&http, &relay, 1).await;
    let reply = http
        .post(
            &format!("{relay_url}/v1/chat/completions"),
            r#"{"model":"m"}"#,
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.json()["error"]["code"], "worker_error");
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("backend_unreachable")
    );
}

#[tokio::test]
async fn a_worker_that_stops_finishes_its_work_while_a_replacement_takes_the_new_requests() {
    scenarios::a_stopping_worker_finishes_while_a_replacement_takes_new_work(Link::WebSocket).await;
}

#[tokio::test]
async fn server_shutdown_lets_running_streams_finish_and_refuses_new_work() {
    let (relay, backend, _worker, http) = world().await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let body =
        json!({"model": "m", "stream": true, "mock": {"tokens": 20, "delay_ms": 20}}).to_string();
    let in_flight = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { http.post(&url, &body).await }
    });
    assert!(
        backend
            .sim
            .wait_for(Duration::from_secs(5), |e| !e.is_empty())
            .await
    );
    relay.begin_shutdown();
    let finished = in_flight.await.unwrap();
    assert_eq!(finished.status, StatusCode::OK);
    assert_eq!(sse_data(&finished.body).last().unwrap(), "[DONE]");
    tokio::time::timeout(Duration::from_secs(10), relay.stopped())
        .await
        .expect("the server stops once drained");
}

#[tokio::test]
async fn models_follow_the_backend_with_wildcard_discovery_and_polling() {
    let backend = backend_with(SimulatedBackendConfig {
        models: vec!["alpha".into(), "beta".into()],
        ..SimulatedBackendConfig::default()
    })
    .await;
    let relay = relay(|_| {}).await;
    let http = Http::new();
    let mut spec = WorkerSpec::new(&relay, &backend, &[]);
    spec.models = ModelSource::Discover;
    spec.models_poll_interval = Some(Duration::from_millis(100));
    let _worker = spec.start();
    wait_for_model(&http, &relay, "alpha").await;
    let models = http.get(&format!("{}/v1/models", relay.url())).await.json();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["alpha", "beta"]);
    let url = format!("{}/v1/chat/completions", relay.url());
    assert_eq!(
        http.post(&url, r#"{"model":"gamma"}"#).await.status,
        StatusCode::NOT_FOUND
    );
    backend.sim.set_models(vec!["alpha".into(), "gamma".into()]);
    wait_for_model(&http, &relay, "gamma").await;
    assert_eq!(
        http.post(&url, r#"{"model":"gamma"}"#).await.status,
        StatusCode::OK
    );
    let models = http.get(&format!("{}/v1/models", relay.url())).await.json();
    assert!(
        !models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "beta")
    );
}

#[tokio::test]
async fn health_reports_workers_queue_and_uptime() {
    let (relay, _backend, _worker, http) = world().await;
    let health = http.get(&format!("{}/health", relay.url())).await;
    assert_eq!(health.status, StatusCode::OK);
    let health = health.json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["workers_connected"], 1);
    assert_eq!(health["queue_depth"], 0);
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    assert!(health["uptime_secs"].is_u64());
}

#[tokio::test]
async fn our_worker_speaks_v2_by_default_and_v1_to_a_relay_without_v2() {
    for (enable_v2, protocol) in [
        (true, ProtocolChoice::Auto),
        (false, ProtocolChoice::Auto),
        (true, ProtocolChoice::V1),
    ] {
        let backend = backend(&["m"]).await;
        let relay = relay(|c| c.enable_v2 = enable_v2).await;
        let mut spec = WorkerSpec::new(&relay, &backend, &["m"]);
        spec.protocol = protocol;
        let _worker = spec.start();
        let http = Http::new();
        wait_for_workers(&http, &relay, 1).await;
        let body = json!({"model": "m", "stream": true}).to_string();
        let direct = http
            .post(&format!("{}/v1/chat/completions", backend.url), &body)
            .await;
        let relayed = http
            .post(&format!("{}/v1/chat/completions", relay.url()), &body)
            .await;
        assert_eq!(
            relayed.body, direct.body,
            "v2 enabled: {enable_v2}, {protocol:?}"
        );
    }
}

#[tokio::test]
async fn forwarded_headers_reach_the_backend_and_others_do_not() {
    let (relay, backend, _worker, http) = world().await;
    let reply = http
        .post_with(
            &format!("{}/v1/messages", relay.url()),
            r#"{"model":"m","mock":{"tag":"h"}}"#,
            &[
                ("content-type", "application/json"),
                ("x-api-key", "sk-ant-123"),
                ("anthropic-version", "2023-06-01"),
                ("cookie", "session=secret"),
                ("x-forwarded-for", "10.1.1.1"),
            ],
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let headers = backend
        .sim
        .events()
        .into_iter()
        .find_map(|e| match e {
            BackendEvent::Received {
                tag: Some(t),
                headers,
                ..
            } if t == "h" => Some(headers),
            _ => None,
        })
        .unwrap();
    let has = |name: &str| headers.iter().any(|(n, _)| n == name);
    assert!(has("x-api-key") && has("anthropic-version") && has("content-type"));
    assert!(!has("cookie") && !has("x-forwarded-for"));
}

#[tokio::test]
async fn a_body_that_is_not_utf8_is_refused_with_400() {
    let (relay, _backend, _worker, http) = world().await;
    // Raw bytes: a JSON object whose skipped string holds an invalid byte.
    let body = b"{\"model\":\"m\",\"messages\":[{\"content\":\"\xff\"}]}";
    let reply = http
        .post_bytes(&format!("{}/v1/chat/completions", relay.url()), body)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"]["code"], "invalid_body");
}

#[tokio::test]
async fn a_response_too_large_for_the_link_fails_only_its_request() {
    let backend = backend(&["m"]).await;
    let relay = relay(|_| {}).await;
    let mut spec = WorkerSpec::new(&relay, &backend, &["m"]);
    spec.frame_limit = Some(16 * 1024);
    spec.protocol = ProtocolChoice::V1;
    let _worker = spec.start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let big = json!({"model": "m", "mock": {"tokens": 5000}}).to_string();
    let reply = http.post(&url, &big).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("response_undeliverable")
    );
    // The link survived: the next request goes through on it.
    let reply = http.post(&url, r#"{"model":"m"}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
    wait_for_workers(&http, &relay, 1).await;
}

#[tokio::test]
async fn a_request_too_large_for_the_link_fails_only_itself() {
    let backend = backend(&["m"]).await;
    let relay = relay(|c| {
        c.frame_limits = modelrelay_core::wire::FrameLimits {
            max_frame_bytes: 16 * 1024,
        }
    })
    .await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let big = json!({"model": "m", "padding": "x".repeat(20_000)}).to_string();
    let reply = http.post(&url, &big).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(
        reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("request_undeliverable")
    );
    let reply = http.post(&url, r#"{"model":"m"}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test]
async fn a_client_that_does_not_read_is_stopped_before_the_relay_buffers_without_bound() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = backend(&["m"]).await;
    let relay = relay(|c| c.max_client_buffer_bytes = 64 * 1024).await;
    // A worker without windows: nothing paces it, so the relay's cap must.
    let mut spec = WorkerSpec::new(&relay, &backend, &["m"]);
    spec.protocol = ProtocolChoice::V2WithoutWindows;
    let _worker = spec.start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let body =
        json!({"model": "m", "stream": true, "mock": {"tokens": 150_000, "tag": "slow-reader"}})
            .to_string();
    let mut client = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    client.write_all(head.as_bytes()).await.unwrap();
    client.write_all(body.as_bytes()).await.unwrap();
    // The client reads nothing: kernel buffers fill, then the relay's.
    let stopped = backend
        .saw_cancelled("slow-reader", Duration::from_secs(20))
        .await;
    assert!(stopped, "the backend call was never stopped");
    // Read up to the end of the chunked body (the connection itself stays open).
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    while !received.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(20), client.read(&mut buffer))
            .await
            .expect("the response ends")
            .unwrap();
        assert!(n > 0, "the connection closed before the body ended");
        received.extend_from_slice(&buffer[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    assert!(
        text.starts_with("HTTP/1.1 200"),
        "{}",
        &text[..100.min(text.len())]
    );
    assert!(
        text.contains("\"code\":\"client_too_slow\""),
        "no error event at the end"
    );
}

#[tokio::test(start_paused = true)]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let relay = relay(|_| {}).await;
    let mut client = tokio::net::TcpStream::connect(relay.addr()).await.unwrap();
    client
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\nhost: relay\r\n")
        .await
        .unwrap();
    // Simulated time: the 30 s the relay allows pass at once while nothing happens.
    let mut rest = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(60), client.read_to_end(&mut rest)).await;
    assert!(
        ended.is_ok(),
        "the half-sent request still holds its connection after a minute"
    );
}

/// Polls `/health` until its queue depth is `depth` (up to 5 s).
async fn wait_for_queue_depth(http: &Http, relay: &modelrelay_relay::RunningServer, depth: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let health = http.get(&format!("{}/health", relay.url())).await.json();
        if health["queue_depth"] == depth {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "queue depth never {depth}: {health}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A ModelRelay worker whose backend would not list its models advertises
/// `*`; here one is written frame by frame (v1), beside our worker for `m`.
#[tokio::test]
async fn a_wildcard_worker_serves_the_models_no_worker_names_and_is_never_listed() {
    use common::raw_worker::{next, raw_connect, send};
    let (relay, backend, _worker, http) = world().await;
    let mut wild = raw_connect(
        &relay.addr().to_string(),
        "",
        &[("x-worker-secret", SECRET)],
    )
    .await
    .unwrap();
    let register = json!({
        "type": "register", "worker_name": "modelrelay-wildcard", "models": ["*"],
        "max_concurrent": 1, "protocol_version": "2026-04-bridge-v1", "current_load": 0,
    });
    send(&mut wild, &register.to_string()).await;
    assert_eq!(next(&mut wild).await.unwrap()["type"], "register_ack");
    wait_for_workers(&http, &relay, 2).await;

    let listed = http.get(&format!("{}/v1/models", relay.url())).await.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["data"][0]["id"], "m", "{listed}");

    // A model our worker names goes to it, not to the wildcard.
    let url = format!("{}/v1/chat/completions", relay.url());
    let body = json!({"model": "m"}).to_string();
    let named = http.post(&url, &body).await;
    assert_eq!(named.status, StatusCode::OK, "{}", named.text());
    let direct = http
        .post(&format!("{}/v1/chat/completions", backend.url), &body)
        .await;
    assert_eq!(named.body, direct.body, "m was not answered by its backend");

    // Any other name goes to the wildcard worker; a second one waits its turn.
    let ask = |model: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move { http.post(&url, &json!({"model": model}).to_string()).await })
    };
    let first = ask("llama3.2:3b");
    let request = next(&mut wild).await.unwrap();
    assert_eq!(request["type"], "request");
    assert_eq!(request["model"], "llama3.2:3b");
    let second = ask("qwen-anything");
    wait_for_queue_depth(&http, &relay, 1).await;
    let complete = |id: &serde_json::Value| {
        json!({"type": "response_complete", "request_id": id, "status_code": 200,
               "headers": {"content-type": "application/json"}, "body": "{\"ok\":true}"})
        .to_string()
    };
    send(&mut wild, &complete(&request["request_id"])).await;
    let answered = first.await.unwrap();
    assert_eq!(answered.status, StatusCode::OK);
    assert_eq!(answered.json(), json!({"ok": true}));
    let request = next(&mut wild).await.unwrap();
    assert_eq!(request["model"], "qwen-anything");
    send(&mut wild, &complete(&request["request_id"])).await;
    assert_eq!(second.await.unwrap().status, StatusCode::OK);

    // Once no wildcard worker is connected, a name nobody advertised is unknown.
    drop(wild);
    wait_for_workers(&http, &relay, 1).await;
    let unknown = http
        .post(&url, &json!({"model": "llama3.2:3b"}).to_string())
        .await;
    assert_eq!(unknown.status, StatusCode::NOT_FOUND, "{}", unknown.text());
}

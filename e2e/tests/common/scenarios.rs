//! Stories that must hold over every worker link, run by each link's test file.

use std::time::Duration;

use http::StatusCode;
use modelrelay_testkit::simulated_backend::BackendEvent;
use serde_json::json;

use super::*;

/// Whether backend `backend` finished the request tagged `tag`.
fn finished(backend: &Backend, tag: &str) -> bool {
    backend
        .sim
        .events()
        .iter()
        .any(|e| matches!(e, BackendEvent::Finished { tag: Some(t) } if t == tag))
}

/// A worker killed before the first byte: its request is served by another.
pub async fn a_worker_killed_before_the_first_byte_has_its_request_requeued(link: Link) {
    let backend_a = backend(&["m"]).await;
    let backend_b = backend(&["m"]).await;
    let relay = relay_over(link).await;
    let http = Http::new();
    let mut spec = WorkerSpec::over(link, &relay, &backend_a, &["m"]);
    spec.name = "a";
    let worker_a = spec.start();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let body =
        json!({"model": "m", "mock": {"tokens": 10, "delay_ms": 30, "tag": "moved"}}).to_string();
    let request = tokio::spawn({
        let http = http.clone();
        async move { http.post(&url, &body).await }
    });
    assert!(
        backend_a
            .sim
            .wait_for(Duration::from_secs(5), |e| !e.is_empty())
            .await
    );
    let mut spec = WorkerSpec::over(link, &relay, &backend_b, &["m"]);
    spec.name = "b";
    let _worker_b = spec.start();
    wait_for_workers(&http, &relay, 2).await;
    worker_a.kill();
    let reply = request.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(
        reply.json()["choices"][0]["message"]["content"]
            .as_str()
            .unwrap()
            .starts_with("Hello")
    );
    assert!(finished(&backend_b, "moved"), "backend b served it");
}

/// A worker that stops finishes its stream; work that arrives meanwhile goes to a
/// replacement, never to the draining worker; then it exits.
pub async fn a_stopping_worker_finishes_while_a_replacement_takes_new_work(link: Link) {
    let backend_a = backend(&["m"]).await;
    let backend_b = backend(&["m"]).await;
    let relay = relay_over(link).await;
    let http = Http::new();
    let worker_a = WorkerSpec::over(link, &relay, &backend_a, &["m"]).start();
    wait_for_workers(&http, &relay, 1).await;
    let url = format!("{}/v1/chat/completions", relay.url());
    let long = json!({"model": "m", "stream": true, "mock": {"tokens": 30, "delay_ms": 20, "tag": "long"}}).to_string();
    let in_flight = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { http.post(&url, &long).await }
    });
    assert!(
        backend_a
            .sim
            .wait_for(Duration::from_secs(5), |e| !e.is_empty())
            .await
    );
    worker_a.begin_stop();
    // While it drains, new work waits for someone else.
    let next = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.post(
                &url,
                &json!({"model": "m", "mock": {"tag": "next"}}).to_string(),
            )
            .await
        }
    });
    let _worker_b = WorkerSpec::over(link, &relay, &backend_b, &["m"]).start();
    let finished_stream = in_flight.await.unwrap();
    assert_eq!(finished_stream.status, StatusCode::OK);
    assert_eq!(sse_data(&finished_stream.body).last().unwrap(), "[DONE]");
    assert_eq!(next.await.unwrap().status, StatusCode::OK);
    assert!(finished(&backend_b, "next"));
    assert!(
        !backend_a
            .sim
            .events()
            .iter()
            .any(|e| matches!(e, BackendEvent::Received { tag: Some(t), .. } if t == "next"))
    );
    worker_a.exited().await;
}

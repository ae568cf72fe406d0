//! The three binaries as separate processes, wired together only by their
//! flags: the simulated backend, `modelrelay-server` and `modelrelay-worker`.

mod common;

use std::time::Duration;

use common::*;
use e2e::{Binary, Process};
use http::StatusCode;
use modelrelay_testkit::simulated_backend::expected_text;
use serde_json::json;

/// Tokens the simulated backend streams per answer.
const TOKENS: usize = 7;

#[tokio::test]
async fn a_stream_crosses_server_worker_and_backend_processes_and_the_worker_leaves_on_sigterm() {
    let mut backend = Process::start(
        Binary::SimulatedBackend,
        &["--models", "m", "--tokens", &TOKENS.to_string()],
    );
    let backend_url = format!("http://{}", backend.announced().await);
    let mut server = Process::start(
        Binary::Server,
        &[
            "--listen",
            "127.0.0.1:0",
            "--worker-secret",
            SECRET,
            "--log-format",
            "json",
        ],
    );
    let listening = server.logged("relay listening").await;
    let relay = format!("http://{}", listening["addr"].as_str().expect("an address"));
    let mut worker = Process::start(
        Binary::Worker,
        &[
            "--proxy-url",
            &relay,
            "--backend-url",
            &backend_url,
            "--worker-secret",
            SECRET,
            "--models",
            "m",
        ],
    );
    let http = Http::new();
    wait_for_workers_at(&http, &relay, 1).await;

    let body = json!({"model": "m", "stream": true}).to_string();
    let reply = http
        .post(&format!("{relay}/v1/chat/completions"), &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let text: String = sse_data(&reply.body)
        .iter()
        .filter(|data| *data != "[DONE]")
        .map(|data| {
            let event: serde_json::Value = serde_json::from_str(data).expect("a JSON event");
            event["choices"][0]["delta"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(text, expected_text(TOKENS));

    let status = worker
        .terminate(Duration::from_secs(20))
        .await
        .expect("the worker exits within 20 s of SIGTERM");
    assert!(status.success(), "the worker exits cleanly: {status}");
    wait_for_workers_at(&http, &relay, 0).await;
    server.stop().await;
    backend.stop().await;
}

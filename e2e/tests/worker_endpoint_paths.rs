//! Our worker against a relay that asks for backend paths it must not call.
//!
//! The relay chooses each request's `endpoint_path`; the worker calls only the
//! inference endpoints, on its own backend. A fake v1 relay (a raw WebSocket
//! server speaking JSON, as in `foreign_relay.rs`) asks for Ollama's
//! `/api/delete` and for a path that would move the call to another host.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::fake_v1_relay::{FakeV1Relay, next_frame, send_frame};
use common::*;
use modelrelay_testkit::simulated_backend::BackendEvent;
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, RelayEndpoint};
use modelrelay_worker::{ModelSource, WorkerOptions};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};

/// Accepts connections on a loopback port and counts them; with `to`, passes
/// each one on to that address, so the count is every connection the backend got.
async fn counting_listener(to: Option<String>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&count);
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            if let Some(to) = to.clone() {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }
    });
    (addr, count)
}

#[tokio::test]
async fn a_relay_asking_for_a_path_outside_the_inference_endpoints_gets_an_error_and_the_backend_is_never_called()
 {
    let backend = backend(&["m"]).await;
    let backend_addr = backend.url.trim_start_matches("http://").to_owned();
    // What the worker is told is its backend: a counting front of the simulated one.
    let (front, backend_connections) = counting_listener(Some(backend_addr)).await;
    // Where an authority-changing path would send the call.
    let (elsewhere, elsewhere_connections) = counting_listener(None).await;

    let relay = FakeV1Relay::bind().await;
    let mut options = WorkerOptions::new(
        RelayEndpoint::parse(&relay.url, "local").unwrap(),
        "secret".into(),
        ModelSource::List(vec!["m".into()]),
    );
    options.session.worker_name = "ours".into();
    let http = HttpBackend::new(url::Url::parse(&format!("http://{front}")).unwrap()).unwrap();
    let worker = tokio::spawn(modelrelay_worker::run(
        options,
        NetDialer::new(None),
        Arc::new(http),
        std::future::pending(),
    ));

    let (mut socket, register) = relay.accept_register(|_| {}).await;
    assert_eq!(register["type"], "register", "{register}");
    send_frame(
        &mut socket,
        json!({"type": "register_ack", "worker_id": "w-1", "models": ["m"]}),
    )
    .await;

    let refused = [
        ("req-delete", "/api/delete".to_owned()),
        ("req-elsewhere", format!("@{elsewhere}/v1/chat/completions")),
        (
            "req-control",
            "/v1/chat/completions\r\nHost: evil\u{1b}[2J".to_owned(),
        ),
    ];
    for (id, path) in &refused {
        send_frame(
            &mut socket,
            json!({"type": "request", "request_id": id, "model": "m",
                "endpoint_path": path, "is_streaming": false,
                "body": r#"{"model":"m","name":"m"}"#}),
        )
        .await;
        // A v1 relay takes no `error` frame: the failure is a 502 answer.
        let answer = next_frame(&mut socket).await;
        assert_eq!(answer["type"], "response_complete", "{answer}");
        assert_eq!(answer["request_id"], *id, "{answer}");
        assert_eq!(answer["status_code"], 502, "{answer}");
        let body: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(body["error"]["code"], "endpoint_not_allowed", "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("/v1/chat/completions"), "{message}");
        assert!(!message.chars().any(char::is_control), "{message}");
    }
    assert_eq!(backend_connections.load(Ordering::SeqCst), 0);
    assert_eq!(elsewhere_connections.load(Ordering::SeqCst), 0);
    assert_eq!(backend.sim.events(), []);

    // The link is still up: the next valid request on it is served.
    send_frame(
        &mut socket,
        json!({"type": "request", "request_id": "req-ok", "model": "m",
            "endpoint_path": "/v1/chat/completions", "is_streaming": true,
            "body": r#"{"model":"m","stream":true}"#}),
    )
    .await;
    let mut chunks = 0;
    loop {
        let frame = next_frame(&mut socket).await;
        assert_eq!(frame["request_id"], "req-ok", "{frame}");
        match frame["type"].as_str().unwrap() {
            "response_chunk" => chunks += 1,
            "response_complete" => {
                assert_eq!(frame["status_code"], 200, "{frame}");
                break;
            }
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    assert!(chunks >= 1);
    let paths: Vec<String> = backend
        .sim
        .events()
        .into_iter()
        .filter_map(|event| match event {
            BackendEvent::Received { path, .. } => Some(path),
            _ => None,
        })
        .collect();
    assert_eq!(paths, ["/v1/chat/completions"]);
    assert_eq!(elsewhere_connections.load(Ordering::SeqCst), 0);
    worker.abort();
}

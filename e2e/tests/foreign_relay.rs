//! Our worker against a relay that speaks only v1 and issues its own kind of ids.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_v1_relay::{FakeV1Relay, next_frame, send_frame};
use modelrelay_testkit::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, RelayEndpoint};
use modelrelay_worker::{ModelSource, WorkerOptions};
use serde_json::json;
use tokio::net::TcpListener;

#[tokio::test]
async fn our_worker_serves_a_v1_only_relay_that_uses_text_ids() {
    let backend = SimulatedBackend::new(SimulatedBackendConfig {
        models: vec!["m".into()],
        tokens: 3,
        token_delay: Duration::ZERO,
    });
    let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_url = format!("http://{}", backend_listener.local_addr().unwrap());
    tokio::spawn(backend.serve(backend_listener, std::future::pending()));

    // The foreign relay: knows no subprotocol, checks the secret header, speaks JSON text.
    let relay = FakeV1Relay::bind().await;
    let endpoint = RelayEndpoint::parse(&relay.url, "local").unwrap();
    let mut options = WorkerOptions::new(
        endpoint,
        "secret".into(),
        ModelSource::List(vec!["m".into()]),
    );
    options.session.worker_name = "ours".into();
    let http = HttpBackend::new(url::Url::parse(&backend_url).unwrap()).unwrap();
    let worker = tokio::spawn(modelrelay_worker::run(
        options,
        NetDialer::new(None),
        Arc::new(http),
        std::future::pending(),
    ));

    let (mut socket, register) = relay
        .accept_register(|request| {
            assert_eq!(request.headers()["x-worker-secret"], "secret");
            assert!(request.uri().query().unwrap().contains("provider=local"));
        })
        .await;
    assert_eq!(register["type"], "register", "{register}");
    assert_eq!(register["protocol_version"], "2026-04-bridge-v1");
    let ack = json!({"type": "register_ack", "worker_id": "worker-123", "models": ["m"]});
    send_frame(&mut socket, ack).await;
    let request = json!({"type": "request", "request_id": "req-42", "model": "m",
        "endpoint_path": "/v1/chat/completions", "is_streaming": true,
        "body": r#"{"model":"m","stream":true}"#});
    send_frame(&mut socket, request).await;
    let mut chunks = 0;
    loop {
        let frame = next_frame(&mut socket).await;
        assert_eq!(frame["request_id"], "req-42", "{frame}");
        match frame["type"].as_str().unwrap() {
            "response_chunk" => chunks += 1,
            "response_complete" => {
                assert_eq!(frame["status_code"], 200);
                break;
            }
            other => panic!("unexpected {other}: {frame}"),
        }
    }
    assert!(chunks >= 1);
    worker.abort();
}

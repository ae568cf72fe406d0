//! Our worker against a relay that speaks only v1 and issues its own kind of ids.

// tungstenite's handshake callback fixes the (large) error type of the closure.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use modelrelay_testkit::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, RelayEndpoint};
use modelrelay_worker::{ModelSource, WorkerOptions};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

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
    let relay = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let relay_url = format!("http://{}", relay.local_addr().unwrap());
    let endpoint = RelayEndpoint::parse(&relay_url, "local").unwrap();
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

    // Our worker offers v2 first; a relay that ignores the offer makes it dial again
    // without it. Take connections until one brings a register frame.
    let (mut socket, register) = loop {
        let (stream, _) = relay.accept().await.unwrap();
        let mut socket =
            tokio_tungstenite::accept_hdr_async(stream, |request: &Request, response: Response| {
                assert_eq!(request.headers()["x-worker-secret"], "secret");
                assert!(request.uri().query().unwrap().contains("provider=local"));
                Ok(response)
            })
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(text))) => {
                break (socket, serde_json::from_str::<Value>(&text).unwrap());
            }
            _ => continue,
        }
    };
    let next =
        async |socket: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>| -> Value {
            loop {
                match tokio::time::timeout(Duration::from_secs(10), socket.next())
                    .await
                    .unwrap()
                {
                    Some(Ok(Message::Text(text))) => return serde_json::from_str(&text).unwrap(),
                    Some(Ok(_)) => continue,
                    other => panic!("link ended: {other:?}"),
                }
            }
        };
    assert_eq!(register["type"], "register", "{register}");
    assert_eq!(register["protocol_version"], "2026-04-bridge-v1");
    let ack = json!({"type": "register_ack", "worker_id": "worker-123", "models": ["m"]});
    socket
        .send(Message::Text(ack.to_string().into()))
        .await
        .unwrap();
    let request = json!({"type": "request", "request_id": "req-42", "model": "m",
        "endpoint_path": "/v1/chat/completions", "is_streaming": true,
        "body": r#"{"model":"m","stream":true}"#});
    socket
        .send(Message::Text(request.to_string().into()))
        .await
        .unwrap();
    let mut chunks = 0;
    loop {
        let frame = next(&mut socket).await;
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

//! Worker links at the protocol level: authentication, refusals, and an existing v1 worker's raw frames.

mod common;

use std::time::Duration;

use common::raw_worker::{self, Socket, next, send};
use common::*;
use futures_util::StreamExt;
use http::StatusCode;
use modelrelay_core::wire::FrameLimits;
use modelrelay_transports::ws::client::HandshakeError;
use serde_json::json;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Opens a raw WebSocket to the relay's worker endpoint, as any worker would.
async fn raw_connect(
    relay: &modelrelay_relay::RunningServer,
    query: &str,
    headers: &[(&str, &str)],
) -> Result<Socket, HandshakeError> {
    raw_worker::raw_connect(&relay.addr().to_string(), query, headers).await
}

#[tokio::test]
async fn an_existing_v1_worker_registers_and_serves_a_request_with_raw_json_frames() {
    let relay = relay(|_| {}).await;
    let mut socket = raw_connect(&relay, "?provider=local", &[("x-worker-secret", SECRET)])
        .await
        .unwrap();
    // Exactly what an existing ModelRelay worker sends.
    send(
        &mut socket,
        r#"{"type":"register","worker_name":"legacy-box","models":["llama-3"," llama-3 ",""],"max_concurrent":2,"protocol_version":"2026-04-bridge-v1","current_load":0}"#,
    )
    .await;
    let ack = next(&mut socket).await.unwrap();
    assert_eq!(ack["type"], "register_ack");
    assert_eq!(ack["models"], json!(["llama-3"]));
    assert_eq!(ack["protocol_version"], "2026-04-bridge-v1");
    assert!(ack["worker_id"].is_string());
    assert_eq!(ack["warnings"].as_array().unwrap().len(), 2);

    let http = Http::new();
    let url = format!("{}/v1/chat/completions", relay.url());
    let client = tokio::spawn({
        let http = http.clone();
        async move {
            http.post_with(
                &url,
                r#"{"model":"llama-3","stream":true,"messages":[]}"#,
                &[
                    ("content-type", "application/json"),
                    ("authorization", "Bearer sk-user"),
                ],
            )
            .await
        }
    });
    let request = next(&mut socket).await.unwrap();
    assert_eq!(request["type"], "request");
    assert_eq!(request["model"], "llama-3");
    assert_eq!(request["endpoint_path"], "/v1/chat/completions");
    assert_eq!(request["is_streaming"], true);
    assert_eq!(
        request["body"],
        r#"{"model":"llama-3","stream":true,"messages":[]}"#
    );
    assert_eq!(request["headers"]["authorization"], "Bearer sk-user");
    let id = request["request_id"].as_str().unwrap().to_owned();
    for piece in [
        "data: {\"a\":1}\n\n",
        "data: {\"a\":2}\n\n",
        "data: [DONE]\n\n",
    ] {
        let frame = json!({"type": "response_chunk", "request_id": id, "chunk": piece});
        send(&mut socket, &frame.to_string()).await;
    }
    let complete = json!({"type": "response_complete", "request_id": id, "status_code": 200,
                          "token_counts": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}});
    send(&mut socket, &complete.to_string()).await;
    let reply = client.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.text(),
        "data: {\"a\":1}\n\ndata: {\"a\":2}\n\ndata: [DONE]\n\n"
    );
}

/// What a v1 worker sends to refuse a request: ModelRelay's server takes no
/// `error`, so it is a 503 `response_complete` marked with `x-modelrelay-refused`.
fn marked_refusal(id: &str) -> String {
    json!({"type": "response_complete", "request_id": id, "status_code": 503,
        "headers": {"content-type": "application/json", "x-modelrelay-refused": "worker_at_capacity"},
        "body": r#"{"error":{"message":"busy","type":"server_error","code":"worker_at_capacity"}}"#})
    .to_string()
}

#[tokio::test]
async fn a_v1_worker_refusing_with_a_marked_503_has_its_request_answered_by_another_worker() {
    let relay = relay(|_| {}).await;
    let addr = relay.addr().to_string();
    let mut refuser = raw_worker::registered(&addr, SECRET, &["m"]).await;
    let http = Http::new();
    let url = format!("{}/v1/chat/completions", relay.url());
    let client = tokio::spawn(async move { http.post(&url, r#"{"model":"m"}"#).await });
    let request = next(&mut refuser).await.unwrap();
    assert_eq!(request["type"], "request", "{request}");
    let id = request["request_id"].as_str().unwrap().to_owned();
    send(&mut refuser, &marked_refusal(&id)).await;

    // Requeued, not answered: the next worker gets the same request and answers it.
    let mut server = raw_worker::registered(&addr, SECRET, &["m"]).await;
    let again = next(&mut server).await.unwrap();
    assert_eq!(again["type"], "request", "{again}");
    assert_eq!(again["body"], request["body"]);
    let id = again["request_id"].as_str().unwrap();
    let answer = json!({"type": "response_complete", "request_id": id, "status_code": 200,
        "headers": {"content-type": "application/json"}, "body": r#"{"answer":"from the second"}"#});
    send(&mut server, &answer.to_string()).await;
    let reply = client.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), r#"{"answer":"from the second"}"#);
}

#[tokio::test]
async fn a_v1_worker_answers_pings_and_gets_cancels_for_clients_that_leave() {
    let relay = relay(|c| {
        c.relay.heartbeat_interval = Duration::from_millis(200);
        c.allow_secret_in_query = true;
    })
    .await;
    let mut socket = raw_connect(&relay, "?provider=local&worker_secret=test-secret", &[])
        .await
        .expect("the old query-parameter secret is accepted with --allow-secret-in-query");
    send(
        &mut socket,
        r#"{"type":"register","worker_name":"w","models":["m"],"max_concurrent":1}"#,
    )
    .await;
    assert_eq!(next(&mut socket).await.unwrap()["type"], "register_ack");
    let ping = next(&mut socket).await.unwrap();
    assert_eq!(ping["type"], "ping");
    send(&mut socket, r#"{"type":"pong","current_load":0}"#).await;

    let http = Http::new();
    let url = format!("{}/v1/chat/completions", relay.url());
    let client =
        tokio::spawn(async move { http.post(&url, r#"{"model":"m","stream":true}"#).await });
    let request = loop {
        let frame = next(&mut socket).await.unwrap();
        if frame["type"] == "request" {
            break frame;
        }
        send(&mut socket, r#"{"type":"pong","current_load":0}"#).await;
    };
    client.abort();
    let cancel = loop {
        let frame = next(&mut socket).await.unwrap();
        if frame["type"] == "cancel" {
            break frame;
        }
        send(&mut socket, r#"{"type":"pong","current_load":1}"#).await;
    };
    assert_eq!(cancel["request_id"], request["request_id"]);
    assert_eq!(cancel["reason"], "client_disconnect");
}

/// A worker's upgrade request sent as plain HTTP, to see the relay's answer in full.
async fn upgrade_request(
    relay: &modelrelay_relay::RunningServer,
    query: &str,
    secret: Option<&str>,
) -> Reply {
    let mut headers = vec![
        ("connection", "upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    headers.extend(secret.map(|secret| ("x-worker-secret", secret)));
    let url = format!("{}/v1/worker/connect{query}", relay.url());
    let streaming = Http::new()
        .send(http::Method::GET, &url, "", &headers)
        .await;
    let (status, headers) = (streaming.status, streaming.headers.clone());
    Reply {
        status,
        headers,
        body: streaming.rest().await,
    }
}

/// The status a refused handshake got.
fn refused_with(result: Result<Socket, HandshakeError>) -> StatusCode {
    match result {
        Err(HandshakeError::Refused { status, .. }) => status,
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_refused_with_401_before_any_upgrade() {
    let relay = relay(|_| {}).await;
    for secret in [Some("wrong"), None] {
        let reply = upgrade_request(&relay, "?provider=local", secret).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        assert!(reply.headers.get("upgrade").is_none());
        assert_eq!(reply.json()["error"]["code"], "invalid_worker_secret");
    }
    let refused = raw_connect(&relay, "", &[("x-worker-secret", "wrong")]).await;
    assert_eq!(refused_with(refused), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_unknown_provider_is_refused_with_403_before_any_upgrade() {
    let relay = relay(|_| {}).await;
    let reply = upgrade_request(&relay, "?provider=elsewhere", Some(SECRET)).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.json()["error"]["code"], "unknown_provider");
    // With a wrong secret the provider is not even looked at.
    let reply = upgrade_request(&relay, "?provider=elsewhere", Some("wrong")).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn repeated_failures_from_one_address_are_refused_for_a_cooldown() {
    let relay = relay(|_| {}).await;
    for _ in 0..5 {
        let refused = raw_connect(&relay, "", &[("x-worker-secret", "guess")]).await;
        assert_eq!(refused_with(refused), StatusCode::UNAUTHORIZED);
    }
    // Now even the right secret waits out the cooldown.
    match raw_connect(&relay, "", &[("x-worker-secret", SECRET)]).await {
        Err(HandshakeError::Refused {
            status,
            retry_after_secs,
        }) => {
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
            assert!(retry_after_secs.is_some_and(|s| s > 0 && s <= 60));
        }
        other => panic!("expected a 429, got {:?}", other.map(|_| ())),
    }
    let reply = upgrade_request(&relay, "", Some(SECRET)).await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(reply.json()["error"]["code"], "auth_cooldown");
}

#[tokio::test]
async fn a_first_frame_other_than_register_is_closed_as_a_protocol_error() {
    let relay = relay(|_| {}).await;
    let mut socket = raw_connect(&relay, "", &[("x-worker-secret", SECRET)])
        .await
        .unwrap();
    send(&mut socket, r#"{"type":"pong","current_load":0}"#).await;
    assert_eq!(next(&mut socket).await, Err(Some(1002)));
    let mut socket = raw_connect(&relay, "", &[("x-worker-secret", SECRET)])
        .await
        .unwrap();
    send(&mut socket, "this is not json").await;
    assert_eq!(next(&mut socket).await, Err(Some(1002)));
}

#[tokio::test]
async fn a_plain_http_request_to_the_worker_endpoint_is_told_to_upgrade() {
    let relay = relay(|_| {}).await;
    let reply = Http::new()
        .get(&format!("{}/v1/worker/connect", relay.url()))
        .await;
    assert_eq!(reply.status, StatusCode::UPGRADE_REQUIRED);
}

/// The close code and reason the relay ends a link with.
async fn close_of(socket: &mut Socket) -> Option<(u16, String)> {
    loop {
        let message = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame in time");
        match message {
            Some(Ok(Message::Close(frame))) => {
                return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return None,
        }
    }
}

/// A v1 register padded with trailing white space (valid JSON) to exactly `size` bytes.
fn register_of_size(size: usize) -> String {
    let mut frame =
        r#"{"type":"register","worker_name":"w","models":["m"],"max_concurrent":1}"#.to_owned();
    assert!(frame.len() <= size);
    frame.extend(std::iter::repeat_n(' ', size - frame.len()));
    frame
}

#[tokio::test]
async fn a_register_one_byte_over_the_before_register_limit_closes_the_link_saying_so() {
    let relay = relay(|_| {}).await;
    let limit = FrameLimits::before_register_on(modelrelay_core::wire::WireVersion::V1);
    let mut socket = raw_connect(&relay, "", &[("x-worker-secret", SECRET)])
        .await
        .unwrap();
    send(&mut socket, &register_of_size(limit.max_frame_bytes + 1)).await;
    let (code, reason) = close_of(&mut socket).await.expect("a close frame");
    assert_eq!(code, 1002);
    assert!(
        reason.contains("before register") && reason.contains(&limit.max_frame_bytes.to_string()),
        "the close says which limit: {reason}"
    );
    // At the limit exactly, the register is accepted.
    let mut socket = raw_connect(&relay, "", &[("x-worker-secret", SECRET)])
        .await
        .unwrap();
    send(&mut socket, &register_of_size(limit.max_frame_bytes)).await;
    assert_eq!(next(&mut socket).await.unwrap()["type"], "register_ack");
}

#[tokio::test]
async fn once_registered_a_worker_sends_frames_larger_than_the_before_register_limit() {
    let relay = relay(|_| {}).await;
    let mut socket = raw_connect(&relay, "", &[("x-worker-secret", SECRET)])
        .await
        .unwrap();
    send(&mut socket, &register_of_size(100)).await;
    assert_eq!(next(&mut socket).await.unwrap()["type"], "register_ack");
    let http = Http::new();
    let url = format!("{}/v1/chat/completions", relay.url());
    let client = tokio::spawn(async move { http.post(&url, r#"{"model":"m"}"#).await });
    let request = next(&mut socket).await.unwrap();
    assert_eq!(request["type"], "request");
    // Over the byte budget before register too (twice the limit and a little).
    let body = "x".repeat(FrameLimits::before_register().max_frame_bytes * 4);
    let complete = json!({"type": "response_complete", "request_id": request["request_id"],
                          "status_code": 200, "body": body});
    send(&mut socket, &complete.to_string()).await;
    let reply = client.await.unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), body.len());
}

#[tokio::test]
async fn a_secret_in_the_query_is_refused_unless_allowed_and_the_refusal_names_the_flag() {
    let relay = relay(|_| {}).await;
    // More refusals than the failure limit: the query secret is not compared, so not counted.
    for _ in 0..6 {
        let reply =
            upgrade_request(&relay, "?provider=local&worker_secret=test-secret", None).await;
        assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(message.contains("--allow-secret-in-query"), "{message}");
    }
    let mut socket = raw_connect(&relay, "", &[("x-worker-secret", SECRET)])
        .await
        .expect("the header secret still gets in");
    send(
        &mut socket,
        r#"{"type":"register","worker_name":"w","models":["m"],"max_concurrent":1}"#,
    )
    .await;
    assert_eq!(next(&mut socket).await.unwrap()["type"], "register_ack");
}

#[tokio::test]
async fn during_a_rotation_workers_with_either_secret_get_in() {
    let relay = relay(|c| {
        c.worker_secret = modelrelay_relay::WorkerSecrets::new([SECRET, "next-secret"]);
    })
    .await;
    for secret in [SECRET, "next-secret"] {
        raw_connect(&relay, "", &[("x-worker-secret", secret)])
            .await
            .unwrap_or_else(|e| panic!("{secret} refused: {e}"));
    }
    let refused = raw_connect(
        &relay,
        "",
        &[("x-worker-secret", "next-secret,test-secret")],
    )
    .await;
    assert_eq!(refused_with(refused), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_frame_far_over_the_limit_before_register_ends_the_link_before_it_is_all_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let relay = relay(|_| {}).await;
    let mut tcp = TcpStream::connect(relay.addr()).await.unwrap();
    let request = format!(
        "GET /v1/worker/connect HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-worker-secret: {SECRET}\r\n\r\n",
        relay.addr()
    );
    tcp.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        head.push(tcp.read_u8().await.unwrap());
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // One text frame announcing 16 MiB (within the configured limit), masked
    // with a zero key as a client's must be; then only its first MiB.
    let mut frame = vec![0x81, 0x80 | 127];
    frame.extend((16u64 << 20).to_be_bytes());
    frame.extend([0u8; 4]);
    tcp.write_all(&frame).await.unwrap();
    let _ = tcp.write_all(&vec![b' '; 1 << 20]).await;
    // The relay does not wait for the other 15 MiB: it closes with 1002, saying why.
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        let mut close = [0u8; 2];
        tcp.read_exact(&mut close).await.unwrap();
        let mut rest = vec![0u8; usize::from(close[1] & 0x7f)];
        tcp.read_exact(&mut rest).await.unwrap();
        (close[0], rest)
    })
    .await
    .expect("closed before the frame was all sent");
    assert_eq!(close.0, 0x88, "a close frame");
    assert_eq!(u16::from_be_bytes([close.1[0], close.1[1]]), 1002);
    let reason = String::from_utf8_lossy(&close.1[2..]);
    assert!(reason.contains("before register"), "{reason}");
}

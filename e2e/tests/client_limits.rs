//! The relay's limits on client connections, end to end over loopback: how
//! long a body may take, how long a client may stall its answer, and how many
//! connections it may hold.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Everything the relay sends on `client` until it closes the connection.
async fn read_until_closed(client: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(60), client.read_to_end(&mut received))
        .await
        .expect("the relay closes the connection");
    String::from_utf8_lossy(&received).into_owned()
}

/// The JSON body of a raw HTTP answer.
/// What the relay answers `GET /health` on a new connection, read until it closes.
async fn health_on_a_new_connection(relay: &modelrelay_relay::RunningServer) -> String {
    let mut client = TcpStream::connect(relay.addr()).await.unwrap();
    client
        .write_all(b"GET /health HTTP/1.1\r\nhost: relay\r\n\r\n")
        .await
        .unwrap();
    read_until_closed(&mut client).await
}

fn json_body(answer: &str) -> serde_json::Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// Asserts that a plain request for `m` is answered 200.
async fn assert_served(http: &Http, relay: &modelrelay_relay::RunningServer) {
    let url = format!("{}/v1/chat/completions", relay.url());
    let reply = http.post(&url, r#"{"model":"m"}"#).await;
    assert_eq!(reply.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn a_body_that_does_not_arrive_in_time_gets_408_in_the_apis_error_shape() {
    // The default timeout; simulated time lets it pass at once while nothing arrives.
    let relay = relay(|_| {}).await;
    for (route, shape) in [
        ("/v1/chat/completions", "/error/code"),
        ("/v1/messages", "/error/type"),
    ] {
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        let head = format!(
            "POST {route} HTTP/1.1\r\nhost: relay\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"model\":"
        );
        client.write_all(head.as_bytes()).await.unwrap();
        let mut answer = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(120), client.read(&mut answer))
            .await
            .expect("an answer while the body is still missing")
            .unwrap();
        let answer = String::from_utf8_lossy(&answer[..n]).into_owned();
        assert!(answer.starts_with("HTTP/1.1 408"), "{route}: {answer}");
        let expected = if route == "/v1/messages" {
            "invalid_request_error"
        } else {
            "body_read_timeout"
        };
        assert_eq!(
            json_body(&answer).pointer(shape).unwrap(),
            expected,
            "{route}"
        );
    }
}

/// Sends `body` on a raw connection that then reads nothing (its small receive
/// window keeps the kernel from taking the whole answer for it).
async fn post_and_never_read(relay: &modelrelay_relay::RunningServer, body: &str) -> TcpStream {
    post_raw_chat(relay.addr(), body).await
}

#[tokio::test]
async fn a_client_that_takes_no_bytes_for_the_idle_timeout_is_cut_and_its_stream_cancelled() {
    let backend = backend(&["m"]).await;
    let relay = relay(|c| {
        c.client_idle_timeout = Some(Duration::from_millis(500));
        // Only the idle timeout may stop it, not the buffer bound.
        c.max_client_buffer_bytes = 1 << 30;
    })
    .await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let body = json!({"model": "m", "stream": true, "mock": {"tokens": 150_000, "tag": "stalled"}})
        .to_string();
    let mut client = post_and_never_read(&relay, &body).await;
    assert!(
        backend
            .saw_cancelled("stalled", Duration::from_secs(30))
            .await,
        "the stalled stream was never cancelled at the backend"
    );
    let received = read_until_closed(&mut client).await;
    assert!(received.starts_with("HTTP/1.1 200"));
    // What came last says why, should the stream ever end cleanly here.
    let last = &received[received.floor_char_boundary(received.len().saturating_sub(600))..];
    assert!(
        !received.ends_with("0\r\n\r\n"),
        "the stream was not cut; it ended with {last:?}"
    );
    // The relay serves on.
    assert_served(&http, &relay).await;
}

#[tokio::test]
async fn a_whole_answer_the_client_does_not_take_is_cut_at_the_idle_timeout() {
    let backend = backend(&["m"]).await;
    let relay = relay(|c| c.client_idle_timeout = Some(Duration::from_millis(500))).await;
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    let body = json!({"model": "m", "mock": {"tokens": 1_500_000}}).to_string();
    let mut client = post_and_never_read(&relay, &body).await;
    // Nothing read until the relay gives up, as its metrics say; then the answer stops short.
    let metrics_url = format!("{}/metrics", relay.url());
    let cut = "modelrelay_idle_client_connections_cut_total 1";
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !http.get(&metrics_url).await.text().contains(cut) {
        assert!(tokio::time::Instant::now() < deadline, "never cut");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let received = read_until_closed(&mut client).await;
    let length: usize = received
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .and_then(|l| l.trim().parse().ok())
        .expect("a content length");
    let body_len = received.split_once("\r\n\r\n").map_or(0, |(_, b)| b.len());
    assert!(
        body_len < length,
        "the whole answer ({length} bytes) went out"
    );
}

#[tokio::test]
async fn past_max_connections_a_new_connection_gets_503_and_is_closed() {
    let relay = relay(|c| c.max_connections = 2).await;
    let held = [
        TcpStream::connect(relay.addr()).await.unwrap(),
        TcpStream::connect(relay.addr()).await.unwrap(),
    ];
    let answer = health_on_a_new_connection(&relay).await;
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert_eq!(json_body(&answer)["error"]["code"], "too_many_connections");
    drop(held);
    // Once one is closed, a new connection is served.
    let mut served = false;
    for _ in 0..1000 {
        let mut next = TcpStream::connect(relay.addr()).await.unwrap();
        next.write_all(b"GET /health HTTP/1.1\r\nhost: relay\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        if read_until_closed(&mut next)
            .await
            .starts_with("HTTP/1.1 200")
        {
            served = true;
            break;
        }
    }
    assert!(served, "no connection was served after others closed");
}

#[tokio::test]
async fn the_per_address_cap_refuses_with_429_and_never_counts_worker_links() {
    let backend = backend(&["m"]).await;
    let relay = relay(|c| c.max_connections_per_address = 2).await;
    // The worker's link comes from 127.0.0.1 too, and holds its connection.
    let _worker = WorkerSpec::new(&relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    assert_served(&http, &relay).await;
    // The client's pooled connection and this one hold the address's two
    // places; the worker's link from the same address is not counted.
    let _second = TcpStream::connect(relay.addr()).await.unwrap();
    let answer = health_on_a_new_connection(&relay).await;
    assert!(answer.starts_with("HTTP/1.1 429"), "{answer}");
    assert_eq!(
        json_body(&answer)["error"]["code"],
        "too_many_connections_from_address"
    );
}

#[tokio::test]
async fn a_login_body_that_does_not_arrive_in_time_frees_its_connection() {
    let relay = relay(|c| {
        c.admin_token = Some(modelrelay_relay::AdminToken::new("admin-token"));
        c.body_read_timeout = Some(Duration::from_millis(300));
    })
    .await;
    let mut client = TcpStream::connect(relay.addr()).await.unwrap();
    client
        .write_all(b"POST /dashboard/login HTTP/1.1\r\nhost: relay\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 100\r\n\r\ntoken=")
        .await
        .unwrap();
    // The rest never comes: the relay answers and closes the connection.
    let answer = read_until_closed(&mut client).await;
    assert!(answer.contains("connection: close"), "{answer}");
    assert!(!answer.starts_with("HTTP/1.1 2"), "{answer}");
    assert!(!answer.starts_with("HTTP/1.1 3"), "{answer}");
}

//! Clients that read slowly, or never, against the real `modelrelay-server`
//! and `modelrelay-worker` binaries and a backend as fast as it can go (issue
//! 13): what the server holds for them (its peak memory, `VmHWM`, and its
//! answer-budget gauges), and that a client reading at its own pace gets its
//! whole answer.
//!
//! The relay paces each request's answer with windows only on links that
//! negotiated v2.1 and only as far as the worker honours them: the tests that
//! need a pacing worker say so.

mod common;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use common::*;
use e2e::{Binary, Process};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// A generous bound for steps that take seconds when the relay is sound (64
/// streams each push a few MB until their sockets fill, and only then does the
/// idle timeout start; on a loaded 2-core machine that took over a minute); not
/// a timing assertion.
const SOUND_WITHIN: Duration = Duration::from_secs(180);

/// What never-reading clients may add to the server's peak memory beyond
/// the answer budget.
const GROWTH_BOUND: u64 = 64 * 1024 * 1024;

/// Text bytes in each event of the fast backend's answers.
const EVENT_TEXT_BYTES: usize = 16 * 1024;

/// Events of a long answer: about 9 MiB, more than a loopback socket's send
/// buffer takes for a client that does not read (4 MiB at most with Linux's
/// default `tcp_wmem`).
const LONG_ANSWER_EVENTS: usize = 576;

/// The text of event `n`: its number, then one letter repeated.
fn event_text(n: usize) -> String {
    let letter = char::from(b'a' + u8::try_from(n % 26).unwrap());
    let number = format!("{n:08}");
    let padding = letter.to_string().repeat(EVENT_TEXT_BYTES - number.len());
    number + &padding
}

/// The whole text of an answer of `events` events.
fn expected_text(events: usize) -> String {
    (0..events).map(event_text).collect()
}

/// Serves, in this test process, a backend that answers every chat completion
/// with `events` OpenAI stream events of [`EVENT_TEXT_BYTES`] text each, made
/// as they are read (the simulated backend makes its whole answer first, which
/// in a debug build takes longer than the tests); its URL.
async fn fast_backend(events: usize) -> String {
    let answer = move || async move {
        let chunks = futures_util::stream::iter(0..events)
            .map(|n| {
                let event = json!({"choices": [{"index": 0, "delta": {"content": event_text(n)}}]});
                Bytes::from(format!("data: {event}\n\n"))
            })
            .chain(futures_util::stream::once(async {
                Bytes::from_static(b"data: [DONE]\n\n")
            }))
            .map(Ok::<_, Infallible>);
        Response::builder()
            .header(http::header::CONTENT_TYPE, "text/event-stream")
            .body(Body::from_stream(chunks))
            .unwrap()
    };
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

/// The server and a worker as processes, the worker registered for `m` in
/// front of a fast backend answering `events` events.
struct Stack {
    server: Process,
    /// The server's `host:port`.
    addr: String,
    /// The server's base URL.
    relay: String,
    _worker: Process,
}

/// Starts a stack: the server with `server_flags`, the worker with `worker_flags`.
async fn stack(events: usize, server_flags: &[&str], worker_flags: &[&str]) -> Stack {
    let backend_url = fast_backend(events).await;
    let mut args = vec!["--listen", "127.0.0.1:0", "--worker-secret", SECRET];
    args.extend(["--log-format", "json", "--max-queue-len", "1000"]);
    args.extend(server_flags);
    let mut server = Process::start(Binary::Server, &args);
    let listening = server.logged("relay listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let relay = format!("http://{addr}");
    let mut args = vec!["--proxy-url", &relay, "--backend-url", &backend_url];
    args.extend(["--worker-secret", SECRET, "--models", "m"]);
    args.extend(["--max-concurrency", "512"]);
    args.extend(worker_flags);
    let worker = Process::start(Binary::Worker, &args);
    wait_for_workers_at(&Http::new(), &relay, 1).await;
    Stack {
        server,
        addr,
        relay,
        _worker: worker,
    }
}

/// The body of a streaming request.
const STREAMING: &str = r#"{"model":"m","stream":true}"#;

/// Sends `body` as a chat completion on a new connection with a small receive buffer.
async fn post_raw(addr: &str, body: &str) -> TcpStream {
    post_raw_chat(addr.parse().unwrap(), body).await
}

/// Reads `client`'s answer to its end (the chunked body's last chunk), taking
/// `piece` bytes at most every `pause`; the answer's bytes as received.
async fn read_answer(client: &mut TcpStream, piece: usize, pause: Duration) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; piece];
    while !received.ends_with(b"0\r\n\r\n") {
        let n = tokio::time::timeout(SOUND_WITHIN, client.read(&mut buffer))
            .await
            .expect("the answer goes on")
            .unwrap();
        assert!(n > 0, "the connection closed before the answer ended");
        received.extend_from_slice(&buffer[..n]);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    received
}

/// The status line and the de-chunked body of a raw HTTP/1.1 answer.
fn parse_answer(raw: &[u8]) -> (String, Vec<u8>) {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole head");
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let status = head.lines().next().unwrap_or_default().to_owned();
    let mut rest = &raw[end + 4..];
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("a chunk size line");
        let size_text = std::str::from_utf8(&rest[..line_end]).unwrap();
        let size = usize::from_str_radix(size_text.trim(), 16).expect("a hex chunk size");
        rest = &rest[line_end + 2..];
        if size == 0 {
            break;
        }
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
    (status, body)
}

/// The text of an OpenAI stream, in order; an error event fails with its text.
fn streamed_text(body: &[u8]) -> Result<String, String> {
    let mut text = String::new();
    for data in sse_data(body) {
        if data == "[DONE]" {
            continue;
        }
        let event: Value = serde_json::from_str(&data).map_err(|e| e.to_string())?;
        if event.get("error").is_some() {
            return Err(data);
        }
        if let Some(piece) = event["choices"][0]["delta"]["content"].as_str() {
            text.push_str(piece);
        }
    }
    Ok(text)
}

/// The value of the `/metrics` sample named exactly `sample` (with its labels),
/// 0 if absent; asked on a new connection (a pooled one may be closing).
async fn metric(relay: &str, sample: &str) -> f64 {
    let text = Http::new().get(&format!("{relay}/metrics")).await.text();
    text.lines()
        .find_map(|line| line.strip_prefix(sample)?.strip_prefix(' '))
        .map_or(0.0, |value| value.trim().parse().unwrap())
}

/// Waits until the `/metrics` sample `sample` reaches `at_least`.
async fn wait_for_metric(relay: &str, sample: &str, at_least: f64) {
    let waited = tokio::time::timeout(SOUND_WITHIN, async {
        while metric(relay, sample).await < at_least {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(waited.is_ok(), "{sample} never reached {at_least}");
}

/// A line for whoever runs the suite with `--nocapture`; never asserted on.
#[allow(clippy::print_stderr)]
fn note(line: &str) {
    eprintln!("{line}");
}

/// Issue 13: 64 clients ask for a long stream and never read. The server's
/// peak grows by less than 64 MB (it once held 16 MiB for each, 974 MB in
/// all), and `--client-idle-timeout` cuts them and cancels their calls.
/// Needs a worker that honours windows.
#[tokio::test]
async fn never_reading_clients_cost_the_server_little() {
    const CLIENTS: usize = 64;
    let stack = stack(LONG_ANSWER_EVENTS, &["--client-idle-timeout", "3"], &[]).await;
    let before = stack.server.peak_memory_bytes().expect("the server runs");
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(post_raw(&stack.addr, STREAMING).await);
    }
    let cuts = "modelrelay_idle_client_connections_cut_total";
    wait_for_metric(&stack.relay, cuts, CLIENTS as f64).await;
    let after = stack.server.peak_memory_bytes().expect("the server runs");
    let growth = after.saturating_sub(before);
    note(&format!(
        "server peak {before} -> {after} bytes with {CLIENTS} never-reading clients"
    ));
    assert!(
        growth <= GROWTH_BOUND,
        "the server's peak grew by {growth} bytes"
    );
    let cancelled = r#"modelrelay_cancellations_total{reason="client_disconnected"}"#;
    wait_for_metric(&stack.relay, cancelled, CLIENTS as f64).await;
    drop(clients);
    let mut reader = post_raw(&stack.addr, STREAMING).await;
    let (status, body) = parse_answer(&read_answer(&mut reader, 1 << 16, Duration::ZERO).await);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert!(
        streamed_text(&body) == Ok(expected_text(LONG_ANSWER_EVENTS)),
        "a reading client is served whole after"
    );
}

/// Issue 13: a few clients read 16 KiB every 5 ms from a backend many times
/// faster, while a stream without windows may hold only 1 MiB for its client:
/// every stream is whole and in order, and none ends with `client_too_slow`.
/// Needs a worker that honours windows.
#[tokio::test]
async fn slow_clients_get_their_whole_stream_at_their_own_pace() {
    const CLIENTS: usize = 4;
    let stack = stack(
        LONG_ANSWER_EVENTS,
        &["--max-client-buffer-bytes", "1048576"],
        &[],
    )
    .await;
    let readers: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let addr = stack.addr.clone();
            tokio::spawn(async move {
                let mut client = post_raw(&addr, STREAMING).await;
                read_answer(&mut client, 16 * 1024, Duration::from_millis(5)).await
            })
        })
        .collect();
    let expected = expected_text(LONG_ANSWER_EVENTS);
    for reader in readers {
        let raw = reader.await.unwrap();
        let (status, body) = parse_answer(&raw);
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let text =
            streamed_text(&body).unwrap_or_else(|error| panic!("the stream failed: {error}"));
        assert!(text == expected, "the stream is not whole and in order");
    }
    let too_slow = r#"modelrelay_cancellations_total{reason="client_too_slow"}"#;
    assert_eq!(metric(&stack.relay, too_slow).await, 0.0);
}

/// Issue 13: with `--max-buffered-bytes` at 16 MiB, 300 clients ask for a
/// stream and never read. The bytes the server holds never pass the budget
/// plus one window per stream (grants made before it filled may still arrive),
/// its peak grows by at most the budget plus 64 MB, and once they are cut a
/// reading client is served. Needs a worker that honours windows.
#[tokio::test]
async fn never_reading_clients_stay_within_max_buffered_bytes() {
    const CLIENTS: usize = 300;
    const BUDGET: u64 = 16 * 1024 * 1024;
    /// The budget, and a window (256 KiB) per stream granted before it filled.
    const HELD_AT_MOST: u64 = BUDGET + CLIENTS as u64 * 256 * 1024;
    /// 1.5 MiB each: with 300 clients, far more than the budget.
    const EVENTS: usize = 96;
    let budget = BUDGET.to_string();
    let flags = [
        "--max-buffered-bytes",
        &budget,
        "--client-idle-timeout",
        "5",
    ];
    let stack = stack(EVENTS, &flags, &[]).await;
    let before = stack.server.peak_memory_bytes().expect("the server runs");
    let sampling = {
        let relay = stack.relay.clone();
        tokio::spawn(async move {
            let mut highest = 0.0f64;
            loop {
                let held = metric(&relay, "modelrelay_buffered_answer_bytes").await;
                highest = highest.max(held);
                if highest > HELD_AT_MOST as f64 {
                    return highest;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    };
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        clients.push(post_raw(&stack.addr, STREAMING).await);
    }
    // Every request ends: cut at the idle timeout, or stopped if its worker ignores windows.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let waited = tokio::time::timeout(SOUND_WITHIN * 2, async {
        while metric(&stack.relay, "modelrelay_requests_in_flight").await > 0.0 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "the never-reading clients' requests never ended"
    );
    if sampling.is_finished() {
        let highest = sampling.await.unwrap();
        panic!("{highest} bytes held, past the budget of {BUDGET} and a window per stream");
    }
    sampling.abort();
    let after = stack.server.peak_memory_bytes().expect("the server runs");
    let growth = after.saturating_sub(before);
    note(&format!(
        "server peak {before} -> {after} bytes with {CLIENTS} never-reading clients, budget {BUDGET}"
    ));
    assert!(
        growth <= BUDGET + GROWTH_BOUND,
        "the server's peak grew by {growth} bytes"
    );
    drop(clients);
    let mut reader = post_raw(&stack.addr, STREAMING).await;
    let (status, body) = parse_answer(&read_answer(&mut reader, 1 << 16, Duration::ZERO).await);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    assert_eq!(
        streamed_text(&body).as_deref(),
        Ok(expected_text(EVENTS).as_str())
    );
}

/// Issue 13: a worker that does not offer windows (as before v2.1), a relay
/// that may hold 1 MiB for a lagging client, and a client that never reads:
/// the stream ends with the `client_too_slow` event rather than growing.
#[tokio::test]
async fn an_unwindowed_worker_gets_a_bounded_buffer_and_the_clear_error() {
    let stack = stack(
        LONG_ANSWER_EVENTS,
        &["--max-client-buffer-bytes", "1048576"],
        &["--protocol", "v2-without-windows"],
    )
    .await;
    let mut client = post_raw(&stack.addr, STREAMING).await;
    let too_slow = r#"modelrelay_cancellations_total{reason="client_too_slow"}"#;
    wait_for_metric(&stack.relay, too_slow, 1.0).await;
    let (status, body) = parse_answer(&read_answer(&mut client, 1 << 16, Duration::ZERO).await);
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let error = streamed_text(&body).expect_err("the stream ends with an error event");
    assert!(error.contains("\"code\":\"client_too_slow\""), "{error}");
}

//! Attacks on the real `modelrelay-server` binary, replayed: what it answers,
//! that an ordinary client is served during and after, and what the attack
//! may cost the process (its peak memory, `VmHWM`). Each test names the
//! attack it replays from issue 12 and the bound it holds the relay to.

mod common;

use std::time::Duration;

use common::raw_worker::{next, raw_connect, registered, send};
use common::*;
use e2e::{Binary, Process};
use http::StatusCode;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A generous bound for steps that take milliseconds when the relay is sound
/// and minutes or hours when it is not; not a timing assertion.
const SOUND_WITHIN: Duration = Duration::from_secs(60);

/// The server binary with `extra` flags, logging at `format` and level debug;
/// its base URL.
async fn server(format: &str, extra: &[&str]) -> (Process, String) {
    let mut args = vec!["--listen", "127.0.0.1:0", "--worker-secret", SECRET];
    args.extend(["--log-format", format, "--log-level", "debug"]);
    args.extend(extra);
    let mut server = Process::start(Binary::Server, &args);
    let addr = match format {
        "json" => {
            let listening = server.logged("relay listening").await;
            listening["addr"].as_str().unwrap().to_owned()
        }
        _ => {
            let line = server.wrote("relay listening").await;
            let at = line.find("addr=").expect("the address is logged") + "addr=".len();
            line[at..].split_whitespace().next().unwrap().to_owned()
        }
    };
    (server, addr)
}

/// Whether `/health` answers 200 within [`SOUND_WITHIN`].
async fn healthy(http: &Http, addr: &str) -> bool {
    let url = format!("http://{addr}/health");
    let health = tokio::time::timeout(SOUND_WITHIN, http.get(&url)).await;
    matches!(health, Ok(reply) if reply.status == StatusCode::OK)
}

/// Issue 12, "one chunk freezes everyone": a worker answers a stream with one
/// 5 MB chunk of `"usage":{` repeated. The relay scans it in one pass, the
/// client gets every byte, and `/health` answers meanwhile (once this took
/// most of an hour inside the task that serves everyone).
#[tokio::test]
async fn a_chunk_of_repeated_usage_keys_is_relayed_without_stalling_the_relay() {
    let (_server, addr) = server("json", &[]).await;
    let mut worker = registered(&addr, SECRET, &["m"]).await;
    let http = Http::new();
    let client = tokio::spawn({
        let (http, url) = (http.clone(), format!("http://{addr}/v1/chat/completions"));
        async move { http.post(&url, r#"{"model":"m","stream":true}"#).await }
    });
    let request = next(&mut worker).await.unwrap();
    assert_eq!(request["type"], "request");
    let id = request["request_id"].as_str().unwrap().to_owned();
    let hostile = "\"usage\":{".repeat(5 * 1024 * 1024 / 9);
    let chunk = json!({"type": "response_chunk", "request_id": id, "chunk": hostile});
    send(&mut worker, &chunk.to_string()).await;
    assert!(
        healthy(&http, &addr).await,
        "the relay stalled on one chunk"
    );
    let complete = json!({"type": "response_complete", "request_id": id, "status_code": 200});
    send(&mut worker, &complete.to_string()).await;
    let reply = tokio::time::timeout(SOUND_WITHIN, client)
        .await
        .expect("the stream ends")
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.body.len(), hostile.len());
}

/// Issue 12, "log forging without a secret": a provider name and a v1 frame
/// type carrying newlines and terminal escapes, and secrets in query strings.
/// Text logs keep every value on its line with control characters escaped,
/// and no query string reaches a log line.
#[tokio::test]
async fn network_values_are_escaped_in_text_logs_and_query_strings_are_never_logged() {
    let (mut server, addr) = server("text", &[]).await;
    // A provider name with a forged log line in it, on an upgrade request.
    let forged_provider = "evil%0AINFO%20forged%20line%1B%5B31m";
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let upgrade = format!(
        "GET /v1/worker/connect?provider={forged_provider}&token=QUERYSECRET HTTP/1.1\r\n\
         Host: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         x-worker-secret: {SECRET}\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    let mut answer = [0u8; 512];
    let _ = tokio::time::timeout(SOUND_WITHIN, stream.read(&mut answer)).await;
    drop(stream);
    let escaped_provider = server.wrote("unknown provider").await;
    assert!(
        escaped_provider.contains("evil\\nINFO forged line\\u{1b}[31m"),
        "{escaped_provider}"
    );
    // A v1 frame whose type is a forged line: serde's error text quotes it.
    let mut socket = raw_connect(
        &addr,
        "?worker_secret=QUERYSECRET",
        &[("x-worker-secret", SECRET)],
    )
    .await
    .unwrap();
    send(&mut socket, r#"{"type":"x\nINFO forged frame\u001b[2J"}"#).await;
    let _ = next(&mut socket).await;
    let escaped_frame = server.wrote("forged frame").await;
    assert!(
        escaped_frame.contains("x\\nINFO forged frame"),
        "{escaped_frame}"
    );
    // A query string on a route that does not exist.
    let http = Http::new();
    let reply = http
        .get(&format!("http://{addr}/nowhere?api_key=QUERYSECRET"))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert!(healthy(&http, &addr).await);
    server.terminate(SOUND_WITHIN).await;
    let lines = server.lines.lock().unwrap().clone();
    for line in &lines {
        assert!(
            !line.trim_start().starts_with("INFO forged"),
            "a forged line: {line}"
        );
        assert!(
            !line.contains("QUERYSECRET"),
            "a query string was logged: {line}"
        );
    }
}

/// Bytes of one large body in the memory tests (under the 32 MiB default limit).
const LARGE_BODY_BYTES: usize = 32_000_000;
/// How many large bodies are in flight at once.
const BODIES_IN_FLIGHT: usize = 8;

/// The backend, the server (with `extra` flags) and a worker as three
/// processes, the worker registered for model `m`; the server and its URL.
async fn three_processes(extra: &[&str]) -> (Process, Process, Process, String) {
    let mut backend = Process::start(
        Binary::SimulatedBackend,
        &["--models", "m", "--tokens", "3"],
    );
    let backend_url = format!("http://{}", backend.announced().await);
    let (server, addr) = server("json", extra).await;
    let relay = format!("http://{addr}");
    let mut args = vec!["--proxy-url", &relay, "--backend-url", &backend_url];
    args.extend([
        "--worker-secret",
        SECRET,
        "--models",
        "m",
        "--max-concurrency",
        "16",
    ]);
    let worker = Process::start(Binary::Worker, &args);
    wait_for_workers_at(&Http::new(), &relay, 1).await;
    (backend, server, worker, relay)
}

/// A relay that took [`BODIES_IN_FLIGHT`] large bodies at once, with what it cost.
struct BodyAttack {
    /// How much the server's peak memory grew, in bytes.
    growth: u64,
    /// The bytes that were in flight at once.
    in_flight: u64,
    /// The relay's base URL.
    relay: String,
    /// The backend, server and worker, kept running.
    _processes: (Process, Process, Process),
}

/// Sends [`BODIES_IN_FLIGHT`] copies of `body` at once to a fresh relay of
/// three processes; each must be answered `expected`.
async fn bodies_at_once(body: String, expected: StatusCode) -> BodyAttack {
    let (backend, server, worker, relay) = three_processes(&[]).await;
    let in_flight = (body.len() * BODIES_IN_FLIGHT) as u64;
    let url = format!("{relay}/v1/chat/completions");
    let http = Http::new();
    let before = server.peak_memory_bytes().expect("the server runs");
    let posts: Vec<_> = (0..BODIES_IN_FLIGHT)
        .map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move { http.post(&url, &body).await.status })
        })
        .collect();
    for post in posts {
        let status = tokio::time::timeout(SOUND_WITHIN, post)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status, expected);
    }
    let after = server.peak_memory_bytes().expect("the server runs");
    note(&format!(
        "server peak {before} -> {after} bytes for {in_flight} bytes in flight"
    ));
    BodyAttack {
        growth: after.saturating_sub(before),
        in_flight,
        relay,
        _processes: (backend, server, worker),
    }
}

/// A line for whoever runs the suite with `--nocapture`; never asserted on.
#[allow(clippy::print_stderr)]
fn note(line: &str) {
    eprintln!("{line}");
}

/// Issue 12, "no key needed, 280 MB per request": eight 32 MB bodies at once
/// whose `model` is an array of zeros. Each gets 400 `invalid_model` and the
/// server's peak grows by at most 1.5× the bytes in flight (a value tree
/// once cost 9×).
#[tokio::test]
async fn large_bodies_whose_model_is_not_a_string_cost_at_most_one_and_a_half_times_their_size() {
    let zeros = "0,".repeat((LARGE_BODY_BYTES - 16) / 2);
    let body = format!("{{\"model\":[{zeros}0]}}");
    let attack = bodies_at_once(body, StatusCode::BAD_REQUEST).await;
    let (growth, in_flight) = (attack.growth, attack.in_flight);
    assert!(
        growth * 2 <= in_flight * 3,
        "peak grew by {growth} bytes for {in_flight} bytes in flight"
    );
    let ok = Http::new()
        .post(
            &format!("{}/v1/chat/completions", attack.relay),
            r#"{"model":"m"}"#,
        )
        .await;
    assert_eq!(
        ok.status,
        StatusCode::OK,
        "an ordinary client is served after"
    );
}

/// Issue 12: eight valid 32 MB bodies at once are relayed to the worker and
/// answered, and the server's peak grows by at most 3× the bytes in flight.
#[tokio::test]
async fn large_valid_bodies_cost_at_most_three_times_their_size() {
    let content = "x".repeat(LARGE_BODY_BYTES - 64);
    let body =
        json!({"model": "m", "messages": [{"role": "user", "content": content}]}).to_string();
    let attack = bodies_at_once(body, StatusCode::OK).await;
    let (growth, in_flight) = (attack.growth, attack.in_flight);
    assert!(
        growth <= in_flight * 3,
        "peak grew by {growth} bytes for {in_flight} bytes in flight"
    );
}

/// Bytes of the oversized frames in the worker-link attacks.
const HUGE_FRAME_BYTES: usize = 60 * 1024 * 1024;
/// The most the server may grow while it refuses one [`HUGE_FRAME_BYTES`] frame.
const HUGE_FRAME_GROWTH_BOUND: u64 = 64 * 1024 * 1024;

/// A v1 `register` of `HUGE_FRAME_BYTES` whose model list is empty names.
fn huge_register() -> String {
    let names = "\"\",".repeat(HUGE_FRAME_BYTES / 3);
    format!(r#"{{"type":"register","worker_name":"w","max_concurrent":1,"models":[{names}""]}}"#)
}

/// Issue 12, "no secret needed, 1.4 GB per frame": a worker connect with a
/// wrong secret is answered 401 in the JSON error shape before any upgrade,
/// so the 60 MB `register` it goes on to send is never read as a frame; the
/// server grows by less than 64 MB and serves ordinary clients throughout.
#[tokio::test]
async fn a_worker_connect_with_a_wrong_secret_is_refused_before_any_frame_is_read() {
    let (server, addr) = server("json", &[]).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let upgrade = format!(
        "GET /v1/worker/connect HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nx-worker-secret: wrong\r\n\r\n"
    );
    stream.write_all(upgrade.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(SOUND_WITHIN, stream.read(&mut answer))
        .await
        .unwrap()
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]).into_owned();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    assert!(
        answer.contains("\"error\""),
        "the JSON error shape: {answer}"
    );
    let before = server.peak_memory_bytes().unwrap();
    // The frame a stranger would send next: the relay is not listening for it.
    let _ = stream.write_all(huge_register().as_bytes()).await;
    drop(stream);
    let http = Http::new();
    assert!(healthy(&http, &addr).await);
    let growth = server.peak_memory_bytes().unwrap().saturating_sub(before);
    assert!(growth < HUGE_FRAME_GROWTH_BOUND, "grew by {growth} bytes");
}

/// Issue 12, item 2: until its `register` is accepted, a link's frame limit is
/// just large enough for the largest acceptable register, so even a holder of
/// the secret cannot make the relay read a 60 MB first frame: the link is
/// closed, the server grows by less than 64 MB, and a proper worker still
/// registers afterwards.
#[tokio::test]
async fn a_huge_first_frame_from_a_holder_of_the_secret_is_refused_at_the_before_register_limit() {
    let (server, addr) = server("json", &[]).await;
    let before = server.peak_memory_bytes().unwrap();
    let mut socket = raw_connect(&addr, "", &[("x-worker-secret", SECRET)])
        .await
        .unwrap();
    let sent = futures_util::SinkExt::send(
        &mut socket,
        tokio_tungstenite::tungstenite::Message::Text(huge_register().into()),
    )
    .await;
    if sent.is_ok() {
        assert!(next(&mut socket).await.is_err(), "the link is closed");
    }
    let growth = server.peak_memory_bytes().unwrap().saturating_sub(before);
    assert!(growth < HUGE_FRAME_GROWTH_BOUND, "grew by {growth} bytes");
    let _worker = registered(&addr, SECRET, &["m"]).await;
    assert!(healthy(&Http::new(), &addr).await);
}

/// Issue 12, "script on the relay's origin": a worker answers a request posted
/// as `text/plain` (as a cross-site form would) with HTML, a cookie and a
/// redirect. The client gets inert plain text marked `nosniff` and `sandbox`,
/// and none of the authority-bearing headers.
#[tokio::test]
async fn a_worker_answering_html_with_a_cookie_reaches_the_client_as_inert_plain_text() {
    let (_server, addr) = server("json", &[]).await;
    let mut worker = registered(&addr, SECRET, &["m"]).await;
    let client = tokio::spawn({
        let (http, url) = (Http::new(), format!("http://{addr}/v1/chat/completions"));
        async move {
            http.post_with(&url, r#"{"model":"m"}"#, &[("content-type", "text/plain")])
                .await
        }
    });
    let request = next(&mut worker).await.unwrap();
    let complete = json!({
        "type": "response_complete", "request_id": request["request_id"], "status_code": 200,
        "headers": {"content-type": "text/html", "set-cookie": "modelrelay_session=x",
                    "location": "https://evil.example/",
                    "access-control-allow-origin": "https://evil.example",
                    "access-control-allow-credentials": "true"},
        "body": "<script>alert(document.cookie)</script>",
    });
    send(&mut worker, &complete.to_string()).await;
    let reply = tokio::time::timeout(SOUND_WITHIN, client)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(reply.status, StatusCode::OK);
    let headers = &reply.headers;
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["content-security-policy"], "sandbox");
    for dropped in ["set-cookie", "location", "access-control-allow-credentials"] {
        assert!(!headers.contains_key(dropped), "{dropped} passed");
    }
    // The relay's own CORS grant (clause 126's default), not the worker's.
    assert_eq!(headers["access-control-allow-origin"], "*");
}

/// Issue 12, "slow connections hold resources forever": a client that sends
/// half a body and stops gets 408 in the API's error shape once the body read
/// timeout passes, and its connection is closed; a client that connects and
/// sends nothing is closed once the head timeout passes. Ordinary clients are
/// served meanwhile.
#[tokio::test]
async fn a_client_that_stops_sending_its_body_gets_408_and_its_connection_back() {
    let (_server, addr) = server("json", &["--body-read-timeout", "1"]).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"model\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let http = Http::new();
    assert!(healthy(&http, &addr).await, "others are served meanwhile");
    let mut answer = Vec::new();
    tokio::time::timeout(SOUND_WITHIN, stream.read_to_end(&mut answer))
        .await
        .expect("the relay closes the connection")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("body_read_timeout"), "{answer}");
}

/// A request head may not fill a connection's buffer past 64 KiB (hyper's
/// default, about 400 KiB, on each of 16,384 connections would be 6.4 GiB).
#[tokio::test]
async fn a_request_head_larger_than_64_kib_is_refused_with_431() {
    let (_server, addr) = server("json", &[]).await;
    let mut stream = TcpStream::connect(&addr).await.unwrap();
    let padding = "a".repeat(100 * 1024);
    let head = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nx-padding: {padding}\r\n\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(SOUND_WITHIN, stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(healthy(&Http::new(), &addr).await);
}

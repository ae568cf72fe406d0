//! Flow control against the real binaries: a relay that stops reading its
//! worker link must not make the worker queue what its backend sends (issue 13:
//! 32 long streams and a relay stopped for 8 s once grew the worker by 922 MB).
//! The worker reads its backend only as fast as its link writer writes, so
//! while the relay is stopped (SIGSTOP) the worker stops reading, and TCP holds
//! the backend back. Every stream then completes, whole and in order.

mod common;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::routing::post;
use common::*;
use e2e::{Binary, Process};
use http::{Method, StatusCode};

/// Streams at once, each on a slot of the worker.
const STREAMS: usize = 32;
/// Payload bytes of each event's `content`.
const EVENT_CONTENT_BYTES: usize = 16 * 1024;
/// Events in each answer: 24 MiB of content per stream.
const EVENTS: usize = 1536;
/// What every stream must have received before the relay is stopped: streaming at full speed.
const FLOWING_BYTES: u64 = 2 * 1024 * 1024;
/// How long the relay stays stopped.
const PAUSE: Duration = Duration::from_secs(2);
/// How much the worker's peak memory may grow over its peak before the pause.
const GROWTH_BOUND: u64 = 64 * 1024 * 1024;
/// How much the worker's peak memory may grow, in all, over its peak when idle:
/// the streams' windows (32 × 256 KiB of chunks) and their buffers, with room to
/// spare; a worker that reads ahead of its link holds whole answers instead.
const STREAMING_BOUND: u64 = 128 * 1024 * 1024;
/// A bound for steps that take seconds when flow control is sound; not a timing assertion.
const SOUND_WITHIN: Duration = Duration::from_secs(180);

/// Event `n` of every answer, as the backend sends it: an OpenAI chunk whose
/// content is the event's number and [`EVENT_CONTENT_BYTES`] of one letter in
/// all; event [`EVENTS`] is `[DONE]`.
fn event(n: usize) -> Vec<u8> {
    if n == EVENTS {
        return b"data: [DONE]\n\n".to_vec();
    }
    let number = format!("{n:08}:");
    let letter = b'a' + u8::try_from(n % 26).expect("under 26");
    let mut event = Vec::with_capacity(EVENT_CONTENT_BYTES + 128);
    event.extend_from_slice(
        br#"data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":""#,
    );
    event.extend_from_slice(number.as_bytes());
    event.resize(event.len() + EVENT_CONTENT_BYTES - number.len(), letter);
    event.extend_from_slice(b"\"}}]}\n\n");
    event
}

/// A model server that streams [`EVENTS`] large OpenAI chunks per request as fast as
/// its client reads them (each event made when the socket has room for it).
async fn fast_backend() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    async fn stream() -> axum::response::Response {
        let events = (0..=EVENTS).map(|n| Ok::<_, std::io::Error>(Bytes::from(event(n))));
        axum::response::Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(futures_util::stream::iter(events)))
            .expect("a valid response")
    }
    let app = Router::new().route("/v1/chat/completions", post(stream));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let serving = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, serving)
}

/// Checks a stream piece by piece: its bytes are the backend's events, each
/// whole, in order, none lost and none twice, then nothing more.
struct Check {
    pending: Vec<u8>,
    next: usize,
}

impl Check {
    fn new() -> Self {
        Self {
            pending: Vec::new(),
            next: 0,
        }
    }

    fn feed(&mut self, piece: &[u8]) -> Result<(), String> {
        self.pending.extend_from_slice(piece);
        let mut start = 0;
        while self.next <= EVENTS {
            let expected = event(self.next);
            let Some(got) = self.pending.get(start..start + expected.len()) else {
                break;
            };
            if got != expected.as_slice() {
                let head = String::from_utf8_lossy(&got[..got.len().min(120)]).into_owned();
                return Err(format!(
                    "event {} is not what was sent: {head:?}",
                    self.next
                ));
            }
            start += expected.len();
            self.next += 1;
        }
        self.pending.drain(..start);
        if self.next > EVENTS && !self.pending.is_empty() {
            return Err("bytes after [DONE]".into());
        }
        Ok(())
    }

    fn finish(self) -> Result<(), String> {
        if self.next > EVENTS && self.pending.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "the stream ended after {} of {} events",
                self.next,
                EVENTS + 1
            ))
        }
    }
}

/// How the worker reaches the relay.
#[derive(Clone, Copy, Debug)]
enum Link {
    /// A WebSocket, with `--protocol` this value.
    WebSocket(&'static str),
    /// QUIC, pinning the relay's printed fingerprint.
    Quic,
}

/// The server binary; its base URL once it listens, and the worker's arguments
/// to reach it over `link`.
async fn server(link: Link) -> (Process, String, Vec<String>) {
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("flow-control-{}-{link:?}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut args = vec!["--listen", "127.0.0.1:0", "--worker-secret", SECRET];
    args.extend(["--log-format", "json", "--log-level", "info"]);
    let data_dir = data_dir.to_string_lossy().into_owned();
    if let Link::Quic = link {
        args.extend(["--quic-listen", "127.0.0.1:0", "--data-dir", &data_dir]);
    }
    let mut server = Process::start(Binary::Server, &args);
    // The server says where QUIC listens before it says where HTTP does.
    let quic = match link {
        Link::Quic => Some(server.logged("QUIC worker links on").await),
        Link::WebSocket(_) => None,
    };
    let listening = server.logged("relay listening").await;
    let addr = listening["addr"].as_str().unwrap().to_owned();
    let worker_args = match (link, quic) {
        (Link::WebSocket(protocol), _) => vec![
            "--protocol".to_owned(),
            protocol.to_owned(),
            "--proxy-url".to_owned(),
            format!("http://{addr}"),
        ],
        (Link::Quic, quic) => {
            let quic = quic.expect("logged above");
            vec![
                "--server-cert-sha256".to_owned(),
                quic["fingerprint"].as_str().unwrap().to_owned(),
                "--proxy-url".to_owned(),
                format!("quic://{}", quic["addr"].as_str().unwrap()),
            ]
        }
    };
    (server, format!("http://{addr}"), worker_args)
}

/// Sends `signal` (`STOP`, `CONT`) to `process`.
fn signal(process: &Process, signal: &str) {
    let pid = process.id().expect("the process runs").to_string();
    let sent = Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .is_ok_and(|status| status.success());
    assert!(sent, "SIG{signal} could not be sent to {pid}");
}

/// A line for whoever runs the suite with `--nocapture`; never asserted on.
#[allow(clippy::print_stderr)]
fn note(line: &str) {
    eprintln!("{line}");
}

/// Runs [`STREAMS`] long streams through a worker on `link`, stops the relay
/// for [`PAUSE`] once they flow, and checks the worker's peak memory and every
/// stream.
async fn a_paused_relay_leaves_the_worker_flat(link: Link) {
    let (backend, _serving) = fast_backend().await;
    let (server, relay, link_args) = server(link).await;
    let backend_url = format!("http://{backend}");
    let slots = STREAMS.to_string();
    let mut args = vec!["--backend-url", &backend_url];
    args.extend(["--worker-secret", SECRET, "--models", "m"]);
    args.extend(["--max-concurrency", &slots]);
    args.extend(link_args.iter().map(String::as_str));
    let worker = Process::start(Binary::Worker, &args);
    let http = Http::new();
    wait_for_workers_at(&http, &relay, 1).await;
    let idle = worker.peak_memory_bytes().expect("the worker runs");
    let url = format!("{relay}/v1/chat/completions");
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..STREAMS).map(|_| AtomicU64::new(0)).collect());
    let streams: Vec<_> = (0..STREAMS)
        .map(|n| {
            let (http, url, received) = (http.clone(), url.clone(), Arc::clone(&received));
            tokio::spawn(async move {
                let body =
                    r#"{"model":"m","stream":true,"messages":[{"role":"user","content":"hi"}]}"#;
                let headers = [("content-type", "application/json")];
                let mut reply = http.send(Method::POST, &url, body, &headers).await;
                assert_eq!(reply.status, StatusCode::OK);
                let mut check = Check::new();
                while let Some(piece) = reply.next_chunk().await {
                    received[n].fetch_add(piece.len() as u64, Ordering::Relaxed);
                    check.feed(&piece).map_err(|e| format!("stream {n}: {e}"))?;
                }
                check.finish().map_err(|e| format!("stream {n}: {e}"))
            })
        })
        .collect();
    let flowing = async {
        while received
            .iter()
            .any(|bytes| bytes.load(Ordering::Relaxed) < FLOWING_BYTES)
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(SOUND_WITHIN, flowing)
        .await
        .expect("every stream flows");
    let before = worker.peak_memory_bytes().expect("the worker runs");
    signal(&server, "STOP");
    tokio::time::sleep(PAUSE).await;
    let paused = worker.peak_memory_bytes().expect("the worker runs");
    signal(&server, "CONT");
    let mut results = Vec::new();
    for stream in streams {
        let result = tokio::time::timeout(SOUND_WITHIN, stream)
            .await
            .expect("every stream ends")
            .expect("the client task runs to its end");
        results.push(result);
    }
    let after = worker.peak_memory_bytes().expect("the worker runs");
    let growth = after.saturating_sub(before);
    note(&format!(
        "{link:?}: worker peak {idle} idle, {before} before the pause, {paused} after it, {after} at the end: +{growth} bytes"
    ));
    assert!(
        growth <= GROWTH_BOUND,
        "the worker's peak memory grew by {growth} bytes while the relay was stopped"
    );
    let streaming = after.saturating_sub(idle);
    assert!(
        streaming <= STREAMING_BOUND,
        "the worker's peak memory grew by {streaming} bytes over its idle peak"
    );
    for result in results {
        assert_eq!(result, Ok(()));
    }
}

/// Issue 13 over the default link (v2 on a WebSocket). Clause 99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_relay_does_not_make_the_worker_balloon() {
    a_paused_relay_leaves_the_worker_flat(Link::WebSocket("auto")).await;
}

/// Issue 13 over a v1 (JSON) WebSocket link. Clause 99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_relay_does_not_make_a_v1_worker_balloon() {
    a_paused_relay_leaves_the_worker_flat(Link::WebSocket("v1")).await;
}

/// Issue 13 over QUIC: the relay's streams stop being read, and QUIC's windows
/// hold the worker's writes. Clause 99.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_relay_does_not_make_a_quic_worker_balloon() {
    a_paused_relay_leaves_the_worker_flat(Link::Quic).await;
}

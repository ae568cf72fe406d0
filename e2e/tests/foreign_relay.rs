//! Our worker against a relay that speaks only v1, as ModelRelay's server does:
//! its own kind of ids, its heartbeat, and only the frames it takes.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::fake_v1_relay::{FakeV1Relay, ModelRelayHeartbeat, next_frame, send_frame};
use common::memory_link::PacedBackend;
use modelrelay_testkit::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, RelayEndpoint};
use modelrelay_worker::{ModelSource, WorkerOptions};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Starts a simulated backend serving model `m` and our worker in front of it,
/// with `max_concurrent` slots, dialling the relay at `relay_url`.
async fn our_worker(
    relay_url: &str,
    backend: SimulatedBackendConfig,
    max_concurrent: u32,
) -> JoinHandle<()> {
    let backend = SimulatedBackend::new(backend);
    let backend_listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_url = format!("http://{}", backend_listener.local_addr().unwrap());
    tokio::spawn(backend.serve(backend_listener, std::future::pending()));
    let endpoint = RelayEndpoint::parse(relay_url, "local").unwrap();
    let mut options = WorkerOptions::new(
        endpoint,
        "secret".into(),
        ModelSource::List(vec!["m".into()]),
    );
    options.session.worker_name = "ours".into();
    options.session.max_concurrent = max_concurrent;
    let http = HttpBackend::new(url::Url::parse(&backend_url).unwrap()).unwrap();
    tokio::spawn(modelrelay_worker::run(
        options,
        NetDialer::new(None),
        Arc::new(http),
        std::future::pending(),
    ))
}

/// `tokens` tokens, `token_delay` apart, for model `m`.
fn backend(tokens: usize, token_delay: Duration) -> SimulatedBackendConfig {
    SimulatedBackendConfig {
        models: vec!["m".into()],
        tokens,
        token_delay,
    }
}

/// The v1 `request` frame for a streamed chat completion with id `id`, to `path`.
fn request(id: &str, path: &str) -> Value {
    json!({"type": "request", "request_id": id, "model": "m",
        "endpoint_path": path, "is_streaming": true,
        "body": r#"{"model":"m","stream":true}"#})
}

/// The `register_ack` a v1 relay sends.
fn ack() -> Value {
    json!({"type": "register_ack", "worker_id": "worker-123", "models": ["m"]})
}

#[tokio::test]
async fn our_worker_serves_a_v1_only_relay_that_uses_text_ids() {
    // The foreign relay: knows no subprotocol, checks the secret header, speaks JSON text.
    let relay = FakeV1Relay::bind().await;
    let worker = our_worker(&relay.url, backend(3, Duration::ZERO), 1).await;
    let (mut socket, register) = relay
        .accept_register(|request| {
            assert_eq!(request.headers()["x-worker-secret"], "secret");
            assert!(request.uri().query().unwrap().contains("provider=local"));
        })
        .await;
    assert_eq!(register["type"], "register", "{register}");
    assert_eq!(register["protocol_version"], "2026-04-bridge-v1");
    send_frame(&mut socket, ack()).await;
    send_frame(&mut socket, request("req-42", "/v1/chat/completions")).await;
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

/// 70 tokens a second apart, through a relay that (as ModelRelay's server)
/// pings only after 30 s in which the worker sent nothing: it never pings a
/// streaming worker. Our worker once took 45 s without a frame from the relay
/// for a dead link and cut such a stream there; it now probes the link itself.
/// Paused time, with the link and the backend in memory: the 70 s pass at once.
#[tokio::test(start_paused = true)]
async fn a_stream_longer_than_45_s_completes_through_a_relay_that_pings_only_after_30_s_of_worker_silence()
 {
    let (relay, dialer) = FakeV1Relay::in_memory();
    let endpoint = RelayEndpoint::parse(&relay.url, "local").unwrap();
    let models = ModelSource::List(vec!["m".into()]);
    let options = WorkerOptions::new(endpoint, "secret".into(), models);
    let backend = PacedBackend {
        tokens: 70,
        every: Duration::from_secs(1),
    };
    let worker = tokio::spawn(modelrelay_worker::run(
        options,
        dialer,
        Arc::new(backend),
        std::future::pending(),
    ));
    let (link, _register) = relay.accept_register(|_| {}).await;
    let mut link = ModelRelayHeartbeat::new(link);
    link.send(ack()).await;
    let started = tokio::time::Instant::now();
    link.send(request("req-long", "/v1/chat/completions")).await;
    let mut chunks = 0;
    let complete = loop {
        let frame = link.next_frame().await.unwrap_or_else(|ended| {
            panic!(
                "the link ended {:?} into the stream, after {chunks} chunks: {}",
                ended.at - started,
                ended.why
            )
        });
        match frame["type"].as_str().unwrap() {
            "response_chunk" => chunks += 1,
            "response_complete" => break frame,
            other => panic!("unexpected {other}: {frame}"),
        }
    };
    assert_eq!(complete["status_code"], 200, "{complete}");
    assert_eq!(chunks, 71, "70 tokens and [DONE]");
    assert_eq!(started.elapsed(), Duration::from_secs(71));
    assert_eq!(link.pings_sent, 0, "a streaming worker is never silent");
    assert_eq!(
        link.probes_heard, 4,
        "the worker asked for signs of life itself, every 15 s"
    );
    // Idle, the link stays up too: the worker's probes are all either side needs.
    let idle = tokio::time::timeout(Duration::from_secs(300), link.next_frame()).await;
    assert!(idle.is_err(), "the idle link ended: {:?}", idle.unwrap());
    worker.abort();
}

/// Frames until `id`'s `response_complete`, which comes last; every other frame
/// must be a chunk of `id`, or the `response_complete` of another request.
async fn frames_until_complete(socket: &mut common::fake_v1_relay::V1Link, id: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = next_frame(socket).await;
        assert_ne!(
            frame["type"], "error",
            "a v1 server takes no error: {frame}"
        );
        let last = frame["type"] == "response_complete" && frame["request_id"] == id;
        frames.push(frame);
        if last {
            return frames;
        }
    }
}

#[tokio::test]
async fn on_a_v1_relay_failed_and_refused_requests_end_with_response_complete_never_error() {
    let relay = FakeV1Relay::bind().await;
    let worker = our_worker(&relay.url, backend(3, Duration::from_millis(50)), 1).await;
    let (mut socket, _register) = relay.accept_register(|_| {}).await;
    send_frame(&mut socket, ack()).await;

    // A request the worker fails (a path it does not call): an error status and body.
    send_frame(&mut socket, request("req-bad", "/v1/models")).await;
    let frames = frames_until_complete(&mut socket, "req-bad").await;
    let [failure] = &frames[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(failure["status_code"], 502, "{failure}");
    let body: Value = serde_json::from_str(failure["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "endpoint_not_allowed", "{body}");
    assert!(failure["headers"].get("x-modelrelay-refused").is_none());

    // Its one slot busy, the worker refuses the next: a marked 503 before any chunk.
    send_frame(&mut socket, request("req-1", "/v1/chat/completions")).await;
    send_frame(&mut socket, request("req-2", "/v1/chat/completions")).await;
    let frames = frames_until_complete(&mut socket, "req-1").await;
    let refusals: Vec<&Value> = frames
        .iter()
        .filter(|f| f["request_id"] == "req-2")
        .collect();
    let [refusal] = &refusals[..] else {
        panic!("{frames:?}")
    };
    assert_eq!(refusal["type"], "response_complete", "{refusal}");
    assert_eq!(refusal["status_code"], 503, "{refusal}");
    assert_eq!(
        refusal["headers"]["x-modelrelay-refused"],
        "worker_at_capacity"
    );
    assert_eq!(frames.last().unwrap()["status_code"], 200);
    worker.abort();
}

//! A world for end-to-end tests: simulated backends, the real server, real workers, an HTTP client.
//! Everything binds 127.0.0.1 on ports the OS picks.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelrelay_core::session::SessionConfig;
use modelrelay_server::quic::QuicSettings;
use modelrelay_server::{RunningServer, ServerConfig};
use modelrelay_transports::tls::{Trust, parse_fingerprint};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, ProtocolChoice, RelayEndpoint};
use modelrelay_worker::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};
use modelrelay_worker::{ModelSource, WorkerOptions};
use tokio_util::sync::CancellationToken;

pub mod postgres;
pub mod scenarios;

pub const SECRET: &str = "test-secret";

/// How a test's workers reach the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// WebSocket on the relay's HTTP port.
    WebSocket,
    /// QUIC on the relay's UDP port, trusting its certificate by fingerprint.
    Quic,
}

/// A relay with one worker over `link` in front of one backend serving `m`.
pub async fn world_over(link: Link) -> (RunningServer, Backend, Worker, Http) {
    let backend = backend(&["m"]).await;
    let relay = relay_over(link).await;
    let worker = WorkerSpec::over(link, &relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    (relay, backend, worker, http)
}

/// The real server with the test defaults, taking workers over `link`.
pub async fn relay_over(link: Link) -> RunningServer {
    match link {
        Link::WebSocket => relay(|_| {}).await,
        Link::Quic => relay_with_quic(|_| {}).await,
    }
}

/// A simulated backend served on loopback.
pub struct Backend {
    pub sim: SimulatedBackend,
    pub url: String,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    /// Waits up to `within` for this backend to see the call tagged `tag` cancelled.
    pub async fn saw_cancelled(&self, tag: &str, within: Duration) -> bool {
        self.sim
            .wait_for(within, |events| {
                events.iter().any(|e| {
                    matches!(e, modelrelay_worker::simulated_backend::BackendEvent::Cancelled { tag: Some(t), .. } if t == tag)
                })
            })
            .await
    }
}

/// Opens the stream `body` asks for at `url`, reads `chunks` pieces of it, and leaves.
pub async fn leave_after(http: &Http, url: &str, body: &str, chunks: usize) {
    let mut stream = http.send(Method::POST, url, body, &[]).await;
    assert_eq!(stream.status, StatusCode::OK);
    for _ in 0..chunks {
        stream.next_chunk().await.expect("a chunk before leaving");
    }
}

pub async fn backend(models: &[&str]) -> Backend {
    backend_with(SimulatedBackendConfig {
        models: models.iter().map(|m| m.to_string()).collect(),
        tokens: 12,
        token_delay: Duration::ZERO,
    })
    .await
}

pub async fn backend_with(config: SimulatedBackendConfig) -> Backend {
    let sim = SimulatedBackend::new(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(sim.clone().serve(listener, stop.clone().cancelled_owned()));
    Backend { sim, url, stop }
}

/// The real server, with the test secret and short timeouts unless changed.
pub async fn relay(tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig::new(SECRET);
    config.relay.queue_timeout = Duration::from_secs(5);
    config.relay.request_timeout = Duration::from_secs(20);
    config.drain_timeout = Duration::from_secs(5);
    tweak(&mut config);
    RunningServer::start(config, "127.0.0.1:0").await.unwrap()
}

/// A real worker running in this process.
pub struct Worker {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Worker {
    /// Drops the worker and every connection it holds at once, as a crash would.
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts its graceful stop (as SIGTERM does).
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Waits for it to exit.
    pub async fn exited(mut self) {
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(20), task)
                .await
                .expect("worker exits")
                .unwrap();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

pub struct WorkerSpec<'a> {
    pub relay: &'a str,
    pub backend: &'a str,
    pub models: ModelSource,
    pub max_concurrent: u32,
    pub secret: &'a str,
    pub protocol: ProtocolChoice,
    pub name: &'a str,
    pub models_poll_interval: Option<Duration>,
    pub frame_limit: Option<usize>,
    /// For a `quic://` relay: what the worker trusts.
    pub trust: Option<Trust>,
    /// For a `quic://` relay: how many request streams may be open at once.
    pub quic_streams: Option<u32>,
}

impl<'a> WorkerSpec<'a> {
    pub fn new(relay: &'a RunningServer, backend: &'a Backend, models: &[&str]) -> WorkerSpec<'a> {
        Self::to(relay_url_leak(relay), &backend.url, models)
    }

    pub fn to(relay: &'a str, backend: &'a str, models: &[&str]) -> WorkerSpec<'a> {
        WorkerSpec {
            relay,
            backend,
            models: ModelSource::List(models.iter().map(|m| m.to_string()).collect()),
            max_concurrent: 4,
            secret: SECRET,
            protocol: ProtocolChoice::Auto,
            name: "test-worker",
            models_poll_interval: None,
            frame_limit: None,
            trust: None,
            quic_streams: None,
        }
    }

    pub fn start(self) -> Worker {
        let endpoint = RelayEndpoint::parse(self.relay, "local").unwrap();
        let mut options = WorkerOptions::new(endpoint, self.secret.to_owned(), self.models);
        options.session = SessionConfig {
            worker_name: self.name.to_owned(),
            max_concurrent: self.max_concurrent,
            jitter_seed: 7,
            shutdown_timeout: Duration::from_secs(10),
            ..SessionConfig::default()
        };
        options.protocol = self.protocol;
        options.models_poll_interval = self.models_poll_interval;
        if let Some(max_frame_bytes) = self.frame_limit {
            options.limits = modelrelay_core::wire::FrameLimits { max_frame_bytes };
        }
        if let Some(trust) = &self.trust {
            let mut config = modelrelay_transports::quic::client_config(trust).unwrap();
            if let Some(streams) = self.quic_streams {
                let mut transport = modelrelay_transports::quic::worker_transport();
                transport.max_concurrent_bidi_streams(streams.into());
                config.transport_config(Arc::new(transport));
            }
            options.quic = Some(config);
        }
        let backend = HttpBackend::new(url::Url::parse(self.backend).unwrap()).unwrap();
        let stop = CancellationToken::new();
        let task = tokio::spawn(modelrelay_worker::run(
            options,
            NetDialer::new(None),
            Arc::new(backend),
            stop.clone().cancelled_owned(),
        ));
        Worker {
            task: Some(task),
            stop,
        }
    }
}

impl<'a> WorkerSpec<'a> {
    /// A worker that reaches `relay` over `link`.
    pub fn over(
        link: Link,
        relay: &'a RunningServer,
        backend: &'a Backend,
        models: &[&str],
    ) -> WorkerSpec<'a> {
        match link {
            Link::WebSocket => Self::new(relay, backend, models),
            Link::Quic => Self::quic(relay, backend, models),
        }
    }

    /// A worker that reaches `relay` over QUIC, trusting its certificate by fingerprint.
    pub fn quic(relay: &'a RunningServer, backend: &'a Backend, models: &[&str]) -> WorkerSpec<'a> {
        let (addr, fingerprint) = relay.quic().expect("the relay has QUIC on");
        let url: &'static str = Box::leak(format!("quic://{addr}").into_boxed_str());
        let mut spec = Self::to(url, &backend.url, models);
        spec.trust = Some(Trust::Pinned(parse_fingerprint(fingerprint).unwrap()));
        spec
    }
}

/// A relay with QUIC worker links on a loopback UDP port and a certificate of its own.
pub async fn relay_with_quic(tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let data_dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "quic-{}-{}",
        std::process::id(),
        QUIC_DIRS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    ));
    relay(|config| {
        config.quic = Some(QuicSettings {
            listen: "127.0.0.1:0".parse().unwrap(),
            cert: None,
            key: None,
            data_dir,
        });
        tweak(config);
    })
    .await
}

static QUIC_DIRS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn relay_url_leak(relay: &RunningServer) -> &'static str {
    Box::leak(relay.url().into_boxed_str())
}

/// An HTTP/1 client.
#[derive(Clone)]
pub struct Http(HyperClient<HttpConnector, Full<Bytes>>);

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A response whose body is read piece by piece.
pub struct Streaming {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
}

impl Streaming {
    /// The next piece of the body, or `None` at its end.
    pub async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(20), self.body.frame())
                .await
                .expect("a chunk in time")?
                .ok()?;
            if let Ok(data) = frame.into_data() {
                return Some(data);
            }
        }
    }

    /// The rest of the body.
    pub async fn rest(mut self) -> Bytes {
        let mut all = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            all.extend_from_slice(&chunk);
        }
        Bytes::from(all)
    }
}

impl Http {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self(HyperClient::builder(TokioExecutor::new()).build(connector))
    }

    fn request(
        &self,
        method: Method,
        url: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Request<Full<Bytes>> {
        let mut builder = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder
            .body(Full::new(Bytes::copy_from_slice(body.as_bytes())))
            .unwrap()
    }

    pub async fn send(
        &self,
        method: Method,
        url: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Streaming {
        let response = tokio::time::timeout(
            Duration::from_secs(30),
            self.0.request(self.request(method, url, body, headers)),
        )
        .await
        .expect("an answer in time")
        .expect("the request goes through");
        let (parts, body) = response.into_parts();
        Streaming {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn post(&self, url: &str, body: &str) -> Reply {
        self.post_with(url, body, &[("content-type", "application/json")])
            .await
    }

    pub async fn post_with(&self, url: &str, body: &str, headers: &[(&str, &str)]) -> Reply {
        let streaming = self.send(Method::POST, url, body, headers).await;
        let (status, headers) = (streaming.status, streaming.headers.clone());
        Reply {
            status,
            headers,
            body: streaming.rest().await,
        }
    }

    pub async fn post_bytes(&self, url: &str, body: &'static [u8]) -> Reply {
        let request = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body)))
            .unwrap();
        let response = self.0.request(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let streaming = Streaming {
            status: parts.status,
            headers: parts.headers.clone(),
            body,
        };
        Reply {
            status: parts.status,
            headers: parts.headers,
            body: streaming.rest().await,
        }
    }

    pub async fn get(&self, url: &str) -> Reply {
        let streaming = self.send(Method::GET, url, "", &[]).await;
        let (status, headers) = (streaming.status, streaming.headers.clone());
        Reply {
            status,
            headers,
            body: streaming.rest().await,
        }
    }
}

/// Waits until `/health` shows `n` registered workers.
pub async fn wait_for_workers(http: &Http, relay: &RunningServer, n: u64) {
    wait_for_workers_at(http, &relay.url(), n).await;
}

/// Waits until `/health` of the relay at `base_url` shows `n` registered workers.
pub async fn wait_for_workers_at(http: &Http, base_url: &str, n: u64) {
    let url = format!("{base_url}/health");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let health = http.get(&url).await.json();
        if health["workers_connected"].as_u64() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} workers, health says {health}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `/v1/models` lists `model`.
pub async fn wait_for_model(http: &Http, relay: &RunningServer, model: &str) {
    let url = format!("{}/v1/models", relay.url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let models = http.get(&url).await.json();
        let listed = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == model);
        if listed {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "model {model} never listed: {models}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The SSE `data:` payloads of a stream body.
pub fn sse_data(body: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(body)
        .split("\n\n")
        .filter(|event| !event.is_empty())
        .filter_map(|event| {
            event
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .map(str::to_owned)
        })
        .collect()
}

//! The `modelrelay-worker` binary against a relay over QUIC, trusting it by fingerprint.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelrelay_relay::quic::QuicSettings;
use modelrelay_relay::{RunningServer, ServerConfig};
use modelrelay_testkit::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::process::{Child, Command};

const SECRET: &str = "binary-secret";

type Http = Client<HttpConnector, Full<Bytes>>;

async fn request(http: &Http, method: &str, url: &str, body: &str) -> (u16, Bytes) {
    let request = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = http.request(request).await.unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.into_body().collect().await.unwrap().to_bytes(),
    )
}

async fn workers_connected(http: &Http, relay: &RunningServer) -> u64 {
    let (_, body) = request(http, "GET", &format!("{}/health", relay.url()), "").await;
    let health: Value = serde_json::from_slice(&body).unwrap();
    health["workers_connected"].as_u64().unwrap()
}

async fn quic_relay(name: &str) -> RunningServer {
    let mut config = ServerConfig::new(SECRET);
    config.quic = Some(QuicSettings {
        listen: "127.0.0.1:0".parse().unwrap(),
        cert: None,
        key: None,
        data_dir: std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("worker-binary-{name}-{}", std::process::id())),
    });
    RunningServer::start(config, "127.0.0.1:0").await.unwrap()
}

async fn simulated_backend() -> (SimulatedBackend, String) {
    let backend = SimulatedBackend::new(SimulatedBackendConfig {
        models: vec!["m".into()],
        tokens: 12,
        token_delay: Duration::ZERO,
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(backend.clone().serve(listener, std::future::pending()));
    (backend, url)
}

/// The worker binary, its standard error collected as it runs.
fn start_worker(
    proxy_url: &str,
    backend_url: &str,
    fingerprint: &str,
) -> (Child, Arc<Mutex<String>>) {
    let mut command = Command::new(e2e::binary(e2e::Binary::Worker));
    command
        .args(["--proxy-url", proxy_url, "--backend-url", backend_url])
        .args(["--worker-secret", SECRET, "--models", "m"])
        .args(["--server-cert-sha256", fingerprint])
        .args(["--worker-name", "binary", "--max-concurrency", "4"])
        .env_remove("RUST_LOG");
    spawn_collecting(command)
}

/// The worker binary with `args` and nothing in its environment but `env`.
fn start_worker_with(args: &[&str], env: &[(&str, &str)]) -> (Child, Arc<Mutex<String>>) {
    let mut command = Command::new(e2e::binary(e2e::Binary::Worker));
    command.args(args).env_clear().envs(env.iter().copied());
    spawn_collecting(command)
}

/// Starts `command`, its standard error collected as it runs.
fn spawn_collecting(mut command: Command) -> (Child, Arc<Mutex<String>>) {
    let mut child = command
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the worker binary starts");
    let mut stderr = child.stderr.take().unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    tokio::spawn({
        let log = Arc::clone(&log);
        async move {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buffer).await {
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        }
    });
    (child, log)
}

/// Polls `check` every 20 ms for up to 15 s.
async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A stream of `tokens` for `m` through the relay is byte for byte the backend's own.
async fn streams_as_the_backend_does(
    http: &Http,
    relay: &RunningServer,
    backend_url: &str,
    tokens: usize,
) {
    let body = json!({"model": "m", "stream": true, "mock": {"tokens": tokens}}).to_string();
    let direct = request(
        http,
        "POST",
        &format!("{backend_url}/v1/chat/completions"),
        &body,
    )
    .await;
    let relayed = request(
        http,
        "POST",
        &format!("{}/v1/chat/completions", relay.url()),
        &body,
    )
    .await;
    assert_eq!(relayed.0, 200, "{:?}", relayed.1);
    assert_eq!(relayed.1, direct.1);
}

#[tokio::test]
async fn the_worker_binary_streams_over_quic_and_leaves_on_sigterm() {
    let relay = quic_relay("streams").await;
    let (addr, fingerprint) = relay.quic().unwrap();
    let (_backend, backend_url) = simulated_backend().await;
    let (mut worker, log) = start_worker(&format!("quic://{addr}"), &backend_url, fingerprint);
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    eventually("the worker registers", async || {
        workers_connected(&http, &relay).await == 1
    })
    .await;

    streams_as_the_backend_does(&http, &relay, &backend_url, 25).await;

    // SIGTERM: the worker drains, says goodbye and exits cleanly.
    let pid = worker.id().unwrap().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(Duration::from_secs(15), worker.wait())
        .await
        .expect("the worker exits")
        .unwrap();
    assert!(status.success(), "{status}: {}", log.lock().unwrap());
    eventually("the relay forgets the worker", async || {
        workers_connected(&http, &relay).await == 0
    })
    .await;
}

#[tokio::test]
async fn a_worker_pinning_another_certificate_says_what_to_do() {
    let relay = quic_relay("pinned").await;
    let (addr, _) = relay.quic().unwrap();
    let (_backend, backend_url) = simulated_backend().await;
    let other = ["AB"; 32].join(":");
    let (_worker, log) = start_worker(&format!("quic://{addr}"), &backend_url, &other);
    eventually("the worker explains the refused certificate", async || {
        let log = log.lock().unwrap();
        log.contains("not the pinned one") && log.contains("--server-cert-sha256")
    })
    .await;
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    assert_eq!(workers_connected(&http, &relay).await, 0);
}

#[tokio::test]
async fn a_worker_with_a_wrong_secret_is_told_to_check_it_at_the_upgrade() {
    let relay = modelrelay_testkit::relay(|config| {
        config.worker_secret = modelrelay_relay::WorkerSecrets::new(["another-secret"]);
    })
    .await;
    let (_backend, backend_url) = simulated_backend().await;
    let any = ["AB"; 32].join(":");
    let (_worker, log) = start_worker(&relay.url(), &backend_url, &any);
    eventually("the worker says the relay refused it", async || {
        let log = log.lock().unwrap();
        log.contains("the relay refused this worker: check --worker-secret")
            && log.contains("HTTP 401")
    })
    .await;
}

const ADMIN_TOKEN: &str = "worker-binary-admin";

/// A relay with the test kit's worker secret and an admin token.
async fn admin_relay() -> RunningServer {
    modelrelay_testkit::relay(|config| {
        config.admin_token = Some(modelrelay_relay::AdminToken::new(ADMIN_TOKEN));
    })
    .await
}

/// The relay's `/admin/workers` list.
async fn admin_workers(relay: &RunningServer) -> Vec<Value> {
    let http = modelrelay_testkit::Http::new();
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let reply = http
        .send(
            http::Method::GET,
            &format!("{}/admin/workers", relay.url()),
            "",
            &[("authorization", &bearer)],
        )
        .await;
    let body: Value = serde_json::from_slice(&reply.rest().await).unwrap();
    body["workers"].as_array().unwrap().clone()
}

/// Writes `text` to a config file of its own for test `name`; its path.
fn config_file(name: &str, text: &str) -> String {
    let folder = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("worker-config-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&folder).unwrap();
    let path = folder.join("config.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_owned()
}

/// As ModelRelay's `/setup` page and its launchd instructions have it:
/// `modelrelay-worker --config config.toml`, nothing in the environment.
#[tokio::test]
async fn a_worker_started_with_only_a_modelrelay_config_file_serves() {
    let relay = admin_relay().await;
    let (_backend, backend_url) = simulated_backend().await;
    let config = config_file(
        "only",
        &format!(
            r#"proxy_url = "{}"
provider = "local"
worker_secret = "{}"
worker_name = "from-the-file"
backend_url = "{backend_url}"
models = ["m"]
max_concurrency = 2
log_level = "info"
"#,
            relay.url(),
            modelrelay_testkit::SECRET,
        ),
    );
    let (_worker, log) = start_worker_with(&["--config", &config], &[]);
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    eventually("the worker registers", async || {
        workers_connected(&http, &relay).await == 1
    })
    .await;
    let workers = admin_workers(&relay).await;
    assert_eq!(
        workers[0]["name"],
        "from-the-file",
        "{}",
        log.lock().unwrap()
    );
    assert_eq!(workers[0]["models"], json!(["m"]));
    assert_eq!(workers[0]["capacity"], 2);

    streams_as_the_backend_does(&http, &relay, &backend_url, 5).await;
}

#[tokio::test]
async fn flags_beat_the_environment_and_the_environment_beats_the_config_file() {
    let relay = admin_relay().await;
    let (_backend, backend_url) = simulated_backend().await;
    let config = config_file(
        "layers",
        &format!(
            r#"proxy_url = "{}"
worker_secret = "{}"
backend_url = "{backend_url}"
worker_name = "file-name"
models = "file-a, file-b"
max_concurrency = 3
max_concurrent = 9
"#,
            relay.url(),
            modelrelay_testkit::SECRET,
        ),
    );
    let (_worker, log) = start_worker_with(
        &["--config", &config, "--models", "flag-model"],
        &[("WORKER_NAME", "env-name"), ("MODELS", "env-model")],
    );
    let http: Http = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    eventually("the worker registers", async || {
        workers_connected(&http, &relay).await == 1
    })
    .await;
    let workers = admin_workers(&relay).await;
    assert_eq!(workers[0]["name"], "env-name", "{}", log.lock().unwrap());
    assert_eq!(workers[0]["models"], json!(["flag-model"]));
    assert_eq!(workers[0]["capacity"], 3);
    // The misspelt key is named, with its line, and ignored.
    let log = log.lock().unwrap();
    assert!(
        log.contains("unknown key in the config file")
            && log.contains("max_concurrent")
            && log.contains("line=7"),
        "{log}"
    );
}

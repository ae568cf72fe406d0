//! The `modelrelay-server` binary itself: flags, what it prints, what it keeps across restarts.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::*;
use http::StatusCode;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// A running `modelrelay-server` process and its log lines (JSON).
struct ServerProcess {
    child: Child,
    logs: mpsc::UnboundedReceiver<Value>,
}

impl ServerProcess {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_modelrelay-server"))
            .args(args)
            .args(["--log-format", "json", "--log-level", "info"])
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("the server binary starts");
        let stderr = child.stderr.take().unwrap();
        let (tx, logs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let entry = serde_json::from_str(&line).unwrap_or(Value::String(line));
                if tx.send(entry).is_err() {
                    break;
                }
            }
        });
        Self { child, logs }
    }

    /// The fields of the first log line whose message starts with `message`.
    async fn logged(&mut self, message: &str) -> Value {
        let wait = async {
            while let Some(entry) = self.logs.recv().await {
                let text = entry["fields"]["message"].as_str().unwrap_or_default();
                if text.starts_with(message) {
                    return entry["fields"].clone();
                }
            }
            panic!("the server exited before logging {message:?}");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("the server never logged {message:?}"))
    }

    async fn stop(mut self) {
        self.child.kill().await.unwrap();
    }
}

fn server_args<'a>(listen: &'a str, quic: &'a str, data_dir: &'a Path) -> Vec<&'a str> {
    vec![
        "--listen",
        listen,
        "--quic-listen",
        quic,
        "--worker-secret",
        SECRET,
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]
}

#[tokio::test]
async fn a_quic_worker_pins_the_printed_fingerprint_which_survives_a_restart() {
    let data_dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("binary-quic-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let mut server = ServerProcess::start(&server_args("127.0.0.1:0", "127.0.0.1:0", &data_dir));
    let quic = server.logged("QUIC worker links on").await;
    let listening = server.logged("relay listening").await;
    let quic_addr = quic["addr"].as_str().unwrap().to_owned();
    let fingerprint = quic["fingerprint"].as_str().unwrap().to_owned();
    let http_addr = listening["addr"].as_str().unwrap().to_owned();
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "{fingerprint}");

    let backend = backend(&["m"]).await;
    let relay_url = format!("quic://{quic_addr}");
    let mut spec = WorkerSpec::to(&relay_url, &backend.url, &["m"]);
    spec.trust = Some(modelrelay_transports::tls::Trust::Pinned(
        modelrelay_transports::tls::parse_fingerprint(&fingerprint).unwrap(),
    ));
    let _worker = spec.start();
    let http = Http::new();
    let base = format!("http://{http_addr}");
    wait_for_workers_at(&http, &base, 1).await;
    let body = json!({"model": "m", "stream": true, "mock": {"tokens": 20}}).to_string();
    let direct = http
        .post(&format!("{}/v1/chat/completions", backend.url), &body)
        .await;
    let streams_as_the_backend_does = async || {
        let relayed = http
            .post(&format!("{base}/v1/chat/completions"), &body)
            .await;
        assert_eq!(relayed.status, StatusCode::OK, "{}", relayed.text());
        assert_eq!(relayed.body, direct.body);
    };
    streams_as_the_backend_does().await;

    // Restarted on the same ports and data directory, the relay keeps its
    // certificate: the worker, still pinning it, reconnects on its own.
    server.stop().await;
    let mut server = ServerProcess::start(&server_args(&http_addr, &quic_addr, &data_dir));
    let again = server.logged("QUIC worker links on").await;
    assert_eq!(again["fingerprint"].as_str().unwrap(), fingerprint);
    server.logged("relay listening").await;
    wait_for_workers_at(&http, &base, 1).await;
    streams_as_the_backend_does().await;
    server.stop().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn half_a_certificate_is_refused_with_a_clear_message() {
    let output = Command::new(env!("CARGO_BIN_EXE_modelrelay-server"))
        .args(["--worker-secret", "s", "--quic-listen", "127.0.0.1:0"])
        .args(["--tls-cert", "/nonexistent/cert.pem"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

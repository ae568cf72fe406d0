//! The `modelrelay-server` binary itself: flags, what it prints, what it keeps across restarts.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use e2e::{Binary, Process};
use http::StatusCode;
use serde_json::json;
use tokio::process::Command;

/// A running `modelrelay-server` with `args`, logging JSON at level info.
fn start_server(args: &[&str]) -> Process {
    let mut all = args.to_vec();
    all.extend(["--log-format", "json", "--log-level", "info"]);
    Process::start(Binary::Server, &all)
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
    let mut server = start_server(&server_args("127.0.0.1:0", "127.0.0.1:0", &data_dir));
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
    let mut server = start_server(&server_args(&http_addr, &quic_addr, &data_dir));
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
    let output = Command::new(e2e::binary(e2e::Binary::Server))
        .args(["--worker-secret", "s", "--quic-listen", "127.0.0.1:0"])
        .args(["--tls-cert", "/nonexistent/cert.pem"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--tls-key"), "{stderr}");
}

#[tokio::test]
async fn the_server_binary_runs_admin_and_api_keys_and_logs_each_request_end_as_json() {
    let data_dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("binary-admin-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let admin = "binary-admin-token";
    let mut server = start_server(&[
        "--listen",
        "127.0.0.1:0",
        "--demo",
        "--admin-token",
        admin,
        "--require-api-keys",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let listening = server.logged("relay listening").await;
    let base = format!("http://{}", listening["addr"].as_str().unwrap());
    let http = Http::new();
    wait_for_workers_at(&http, &base, 1).await;
    assert!(
        data_dir.join("modelrelay.sqlite3").exists(),
        "keys live in --data-dir"
    );

    let bearer = format!("Bearer {admin}");
    let created = http
        .post_with(
            &format!("{base}/admin/keys"),
            r#"{"name":"cli"}"#,
            &[
                ("authorization", &bearer),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let key = created.json()["key"].as_str().unwrap().to_owned();
    let chat =
        json!({"model": "demo", "stream": true, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let url = format!("{base}/v1/chat/completions");
    let refused = http.post(&url, &chat).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let key_header = format!("Bearer {key}");
    let answer = http
        .post_with(
            &url,
            &chat,
            &[
                ("authorization", &key_header),
                ("content-type", "application/json"),
                ("x-request-id", "client-trace-9"),
            ],
        )
        .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    let request_id = answer.headers["x-modelrelay-request-id"]
        .to_str()
        .unwrap()
        .to_owned();

    let ended = server.logged("request completed").await;
    assert_eq!(ended["request"].as_str().unwrap(), request_id);
    // The client's own id is logged beside ours; the link's id names it in the worker's log.
    assert_eq!(ended["client_request_id"], "client-trace-9");
    assert!(ended["link_request"].as_u64().is_some(), "{ended}");
    assert_eq!(ended["route"], "/v1/chat/completions");
    assert_eq!(ended["model"], "demo");
    assert_eq!(ended["status"], 200);
    assert_eq!(ended["outcome"], "ok");
    assert!(ended["worker"].as_u64().is_some(), "{ended}");
    for timing in ["queue_ms", "first_chunk_ms", "elapsed_ms"] {
        assert!(
            ended[timing].as_f64().is_some_and(|ms| ms >= 0.0),
            "{timing}: {ended}"
        );
    }
    let refused_line = http.post(&url, &chat).await;
    assert_eq!(refused_line.status, StatusCode::UNAUTHORIZED);
    let lines = Arc::clone(&server.lines);
    server.stop().await;
    let lines = lines.lock().unwrap();
    assert!(lines.len() > 3);
    for line in lines.iter() {
        assert!(
            !line.contains(&key) && !line.contains(admin),
            "a secret in the log: {line}"
        );
    }
    drop(lines);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn bad_operator_settings_are_refused_with_a_clear_message() {
    let cases: [(&[&str], &str); 3] = [
        (&["--admin-token", " "], "--admin-token must not be empty"),
        (&["--database-url", "mysql://db/keys"], "postgres://"),
        (
            &["--public-url", "https://relay.example.com/it's"],
            "--public-url",
        ),
    ];
    for (args, expected) in cases {
        let output = Command::new(e2e::binary(e2e::Binary::Server))
            .args(["--worker-secret", "s", "--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("MODELRELAY_ADMIN_TOKEN")
            .output()
            .await
            .unwrap();
        assert!(!output.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
}

/// `/health` until it answers `status`, on a new connection each time (a
/// draining relay closes every connection after one answer); 10 s at most.
async fn health_until(base: &str, status: StatusCode) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let health = Http::new().get(&format!("{base}/health")).await;
        if health.status == status {
            return health.json();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "/health still answers {} {}",
            health.status,
            health.text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_draining_server_answers_health_with_503_and_new_requests_with_503_while_streams_finish()
{
    let data_dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("binary-drain-{}", std::process::id()));
    let mut server = start_server(&[
        "--listen",
        "127.0.0.1:0",
        "--worker-secret",
        SECRET,
        "--drain-timeout",
        "30",
        "--data-dir",
        data_dir.to_str().unwrap(),
    ]);
    let listening = server.logged("relay listening").await;
    let base = format!("http://{}", listening["addr"].as_str().unwrap());
    let backend = backend(&["m"]).await;
    let _worker = WorkerSpec::to(&base, &backend.url, &["m"]).start();
    let http = Http::new();
    wait_for_workers_at(&http, &base, 1).await;
    assert_eq!(health_until(&base, StatusCode::OK).await["status"], "ok");

    // A stream long enough to keep the relay draining while we look.
    let url = format!("{base}/v1/chat/completions");
    let long = json!({"model": "m", "stream": true, "mock": {"tokens": 400, "delay_ms": 25}});
    let mut stream = http
        .send(
            http::Method::POST,
            &url,
            &long.to_string(),
            &[("content-type", "application/json")],
        )
        .await;
    assert_eq!(stream.status, StatusCode::OK);
    let mut streamed = stream
        .next_chunk()
        .await
        .expect("the stream has begun")
        .to_vec();

    server.sigterm();
    server.logged("shutting down").await;
    let draining = health_until(&base, StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(draining["status"], "draining", "{draining}");
    assert_eq!(draining["requests_in_progress"], 1, "{draining}");
    let refused = Http::new()
        .post(&url, &json!({"model": "m"}).to_string())
        .await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["error"]["code"], "shutting_down");

    while let Some(chunk) = stream.next_chunk().await {
        streamed.extend_from_slice(&chunk);
    }
    assert_eq!(
        sse_data(&streamed).last().unwrap(),
        "[DONE]",
        "the stream finished"
    );
    let status = server
        .exited(std::time::Duration::from_secs(20))
        .await
        .expect("the relay exits once drained");
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// `GET /admin/relays` at `base` until `done` holds for its list; 20 s at most.
async fn relays_until(
    base: &str,
    token: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) -> Vec<serde_json::Value> {
    let bearer = format!("Bearer {token}");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let answer = Http::new()
            .send(
                http::Method::GET,
                &format!("{base}/admin/relays"),
                "",
                &[("authorization", &bearer)],
            )
            .await;
        assert_eq!(answer.status, StatusCode::OK);
        let body: serde_json::Value = serde_json::from_slice(&answer.rest().await).unwrap();
        let relays = body["relays"].as_array().unwrap().clone();
        if done(&relays) {
            return relays;
        }
        assert!(tokio::time::Instant::now() < deadline, "{relays:#?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The state `name` is listed in, if it is listed.
fn state_of(relays: &[serde_json::Value], name: &str) -> Option<String> {
    relays
        .iter()
        .find(|r| r["name"] == name)
        .map(|r| r["state"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn two_relay_processes_on_one_postgres_database_list_each_other_and_a_drain() {
    let Some(database) = common::postgres::fresh_database().await else {
        return;
    };
    let token = "relays-admin-token";
    let dir = |name: &str| {
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("binary-{name}-{}", std::process::id()))
    };
    let start = |name: &str| {
        let data_dir = dir(name);
        Process::start_with_env(
            Binary::Server,
            &[
                "--listen",
                "127.0.0.1:0",
                "--worker-secret",
                SECRET,
                "--admin-token",
                token,
                "--relay-name",
                name,
                "--data-dir",
                data_dir.to_str().unwrap(),
                "--log-format",
                "json",
            ],
            &[("MODELRELAY_DATABASE_URL", &database)],
        )
    };
    let mut a = start("relay-a");
    let mut b = start("relay-b");
    let a_base = format!(
        "http://{}",
        a.logged("relay listening").await["addr"].as_str().unwrap()
    );
    let b_base = format!(
        "http://{}",
        b.logged("relay listening").await["addr"].as_str().unwrap()
    );
    let backend = backend(&["m"]).await;
    let _worker = WorkerSpec::to(&b_base, &backend.url, &["m"]).start();
    wait_for_workers_at(&Http::new(), &b_base, 1).await;

    for (base, this) in [(&a_base, "relay-a"), (&b_base, "relay-b")] {
        let relays = relays_until(base, token, |r| {
            r.iter().filter(|r| r["state"] == "serving").count() == 2
        })
        .await;
        let names: Vec<_> = relays.iter().map(|r| r["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["relay-a", "relay-b"]);
        for relay in &relays {
            assert_eq!(relay["this"], relay["name"] == this, "{relay}");
        }
    }
    // B's numbers reach A through the database (refreshed every 10 s).
    relays_until(&a_base, token, |r| {
        r.iter()
            .any(|r| r["name"] == "relay-b" && r["workers"] == 1)
    })
    .await;

    // B drains while a stream keeps it busy: A sees it draining, then gone.
    let http = Http::new();
    let long = json!({"model": "m", "stream": true, "mock": {"tokens": 200, "delay_ms": 25}});
    let mut stream = http
        .send(
            http::Method::POST,
            &format!("{b_base}/v1/chat/completions"),
            &long.to_string(),
            &[("content-type", "application/json")],
        )
        .await;
    stream.next_chunk().await.expect("the stream has begun");
    b.sigterm();
    relays_until(&a_base, token, |r| {
        state_of(r, "relay-b").as_deref() == Some("draining")
    })
    .await;
    let rest = stream.rest().await;
    assert_eq!(sse_data(&rest).last().unwrap(), "[DONE]");
    let status = b
        .exited(std::time::Duration::from_secs(20))
        .await
        .expect("B exits");
    assert!(status.success(), "{status:?}");
    let relays = relays_until(&a_base, token, |r| state_of(r, "relay-b").is_none()).await;
    assert_eq!(relays.len(), 1, "{relays:#?}");
    a.stop().await;
    for name in ["relay-a", "relay-b"] {
        let _ = std::fs::remove_dir_all(dir(name));
    }
}

#[tokio::test]
async fn the_readme_documents_every_server_flag_as_help_prints_it() {
    let output = Command::new(e2e::binary(e2e::Binary::Server))
        .arg("--help")
        .output()
        .await
        .unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .unwrap();
    let mut flag: Option<String> = None;
    let mut checked = 0;
    let mut check = |flag: &str, env: Option<&str>| {
        if matches!(flag, "--help" | "--version") {
            return;
        }
        let row = match env {
            Some(env) => format!("| `{flag}` | `{env}` |"),
            None => format!("| `{flag}` | |"),
        };
        assert!(readme.contains(&row), "README has no row starting {row}");
        checked += 1;
    };
    for line in help.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("--").or_else(|| {
            line.strip_prefix("-h, --")
                .or_else(|| line.strip_prefix("-V, --"))
        }) {
            if let Some(previous) = flag.take() {
                check(&previous, None);
            }
            flag = Some(format!("--{}", rest.split_whitespace().next().unwrap()));
        } else if let Some(env) = line.strip_prefix("[env: ") {
            let env = env.trim_end_matches(']').split('=').next().unwrap();
            if let Some(previous) = flag.take() {
                check(&previous, Some(env));
            }
        }
    }
    if let Some(previous) = flag.take() {
        check(&previous, None);
    }
    assert!(
        checked >= 20,
        "only {checked} flags read from --help:\n{help}"
    );
}

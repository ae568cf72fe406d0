//! What a new operator meets in the first hour: the server binary's log
//! through a pipe, its warnings and error messages at start-up, `/metrics` as
//! a scraper reads it, and the login page during its cooldown.

mod common;

use std::path::PathBuf;

use e2e::{Binary, Process};
use modelrelay_transports::tls::RelayIdentity;
use tokio::process::Command;

/// The escape that starts an ANSI colour sequence.
const ANSI_ESCAPE: &str = "\u{1b}[";

/// A server on a free loopback port with `args`, logging text (the default).
fn start_text_server(args: &[&str], env: &[(&str, &str)]) -> Process {
    let mut all = vec!["--listen", "127.0.0.1:0", "--worker-secret", "s"];
    all.extend(args);
    Process::start_with_env(Binary::Server, &all, env)
}

#[tokio::test]
async fn logs_through_a_pipe_carry_no_colour_codes() {
    // NO_COLOR empty counts as unset: only the pipe may turn colour off.
    let mut server = start_text_server(&["--log-level", "debug"], &[("NO_COLOR", "")]);
    server.wrote("relay listening").await;
    let lines = server.lines.lock().unwrap().clone();
    for line in &lines {
        assert!(!line.contains(ANSI_ESCAPE), "a colour code in {line:?}");
    }
    assert!(
        lines.iter().any(|line| line.contains(" INFO ")),
        "{lines:?}"
    );
    server.stop().await;
}

/// What the server binary wrote on standard error when it refused to start
/// with `args` (errors only in its log).
async fn refused_start(args: &[&str]) -> String {
    let output = Command::new(e2e::binary(Binary::Server))
        .args(["--listen", "127.0.0.1:0", "--worker-secret", "s"])
        .args(["--log-level", "error"])
        .args(args)
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        !output.status.success(),
        "it started with {args:?}: {stderr}"
    );
    stderr
}

/// The one `error: …` line of `stderr`, whatever else it holds.
fn the_error_line(stderr: &str) -> &str {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    errors[0]
}

/// A folder of its own for `test` under cargo's temporary folder, empty.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("first-hour-{test}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn a_key_that_is_not_the_certificates_is_reported_once_naming_both_files() {
    let dir = scratch("tls");
    let names = ["localhost".to_owned()];
    RelayIdentity::self_signed_in(&dir.join("a"), &names).unwrap();
    RelayIdentity::self_signed_in(&dir.join("b"), &names).unwrap();
    let cert = dir.join("a/quic-cert.pem");
    let key = dir.join("b/quic-key.pem");
    let data = dir.join("data");
    let stderr = refused_start(&[
        "--quic-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
    ])
    .await;
    let line = the_error_line(&stderr);
    for named in [&cert, &key] {
        assert!(line.contains(named.to_str().unwrap()), "{line}");
    }
    assert!(line.contains("does not hold the private key"), "{line}");
    assert_eq!(stderr.matches("private key").count(), 1, "{stderr}");
    assert!(!stderr.contains("Caused by"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unreachable_database_is_named_with_its_cause_and_never_its_password() {
    let dir = scratch("database");
    let stderr = refused_start(&[
        "--database-url",
        "postgres://relay:pw-never-shown@127.0.0.1:1/keys",
        "--data-dir",
        dir.to_str().unwrap(),
    ])
    .await;
    let line = the_error_line(&stderr);
    assert!(line.contains("127.0.0.1:1"), "{line}");
    assert!(line.contains("database keys"), "{line}");
    assert!(line.to_lowercase().contains("connection refused"), "{line}");
    assert!(!line.contains("pool timed out"), "{line}");
    assert!(!stderr.contains("pw-never-shown"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn settings_that_cannot_work_are_warned_about_at_start_naming_the_flags() {
    let dir = scratch("warnings");
    let mut server = Process::start(
        Binary::Server,
        &[
            "--listen",
            "127.0.0.1:0",
            "--worker-secret",
            "s",
            "--log-format",
            "json",
            "--require-api-keys",
            "--tls-cert",
            "/nonexistent/cert.pem",
            "--tls-key",
            "/nonexistent/key.pem",
            "--data-dir",
            dir.to_str().unwrap(),
        ],
    );
    let warnings = [
        "--require-api-keys without --admin-token",
        "--tls-cert and --tls-key are for QUIC worker links only",
    ];
    for warning in warnings {
        server.logged(warning).await;
    }
    server.logged("relay listening").await;
    let lines = server.lines.lock().unwrap().clone();
    for warning in warnings {
        let said: Vec<&String> = lines.iter().filter(|l| l.contains(warning)).collect();
        assert_eq!(said.len(), 1, "said once: {lines:?}");
        assert!(said[0].contains(r#""level":"WARN""#), "{}", said[0]);
    }
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn a_public_url_that_is_not_http_or_https_is_refused() {
    // A URL parser reads `relay.example:8080` as scheme `relay.example`.
    for url in ["relay.example:8080", "ftp://relay.example"] {
        let stderr = refused_start(&["--public-url", url]).await;
        let line = the_error_line(&stderr);
        assert!(
            line.contains("--public-url must be an http:// or https:// URL"),
            "{line}"
        );
        assert!(line.contains(url), "{line}");
    }
}

/// The metric names in the runbook's `/metrics` table, each with whether its
/// row lists labels (a family with labels is exported once it has a sample).
fn runbook_metric_names() -> Vec<(String, bool)> {
    let runbook = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/runbook.md"),
    )
    .unwrap();
    let table = runbook
        .split("| metric | type, labels | what it counts |")
        .nth(1)
        .expect("the runbook has its /metrics table");
    let rows = table
        .lines()
        .skip(2)
        .take_while(|line| line.starts_with('|'));
    let mut names = Vec::new();
    for row in rows {
        let cells: Vec<&str> = row.split('|').collect();
        let labelled = cells[2].contains(';');
        for name in cells[1]
            .split('`')
            .filter(|part| part.starts_with("modelrelay_"))
        {
            names.push((name.to_owned(), labelled));
        }
    }
    names
}

#[tokio::test]
async fn metrics_are_prometheus_text_unless_the_scraper_asks_for_openmetrics() {
    let relay = common::relay(|_| {}).await;
    let http = common::Http::new();
    // One request, for a model nobody serves, so that the requests counter has a sample.
    let chat = format!("{}/v1/chat/completions", relay.url());
    let unknown = http.post(&chat, r#"{"model":"nobody-serves-it"}"#).await;
    assert_eq!(unknown.status, http::StatusCode::NOT_FOUND);
    let url = format!("{}/metrics", relay.url());
    let scrape = |accept: &'static str| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let headers: &[(&str, &str)] = if accept.is_empty() {
                &[]
            } else {
                &[("accept", accept)]
            };
            let streaming = http.send(http::Method::GET, &url, "", headers).await;
            let content_type = streaming.headers["content-type"]
                .to_str()
                .unwrap()
                .to_owned();
            let vary = streaming.headers["vary"].to_str().unwrap().to_owned();
            let body = streaming.rest().await;
            (
                content_type,
                vary,
                String::from_utf8_lossy(&body).into_owned(),
            )
        }
    };

    for accept in ["", "*/*", "text/plain;version=0.0.4"] {
        let (content_type, vary, text) = scrape(accept).await;
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{accept:?}: {content_type}"
        );
        assert_eq!(vary, "accept");
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE modelrelay_requests_total counter\n"),
            "{text}"
        );
        assert!(text.contains("# HELP modelrelay_requeues_total "), "{text}");
        assert!(text.contains("\nmodelrelay_requeues_total 0\n"), "{text}");
        // Every family the relay exports is in the runbook's table, and the
        // other way round, under the names `# HELP` gives.
        let exported: Vec<&str> = text
            .lines()
            .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
            .collect();
        let documented = runbook_metric_names();
        for name in &exported {
            assert!(
                documented.iter().any(|(d, _)| d == name),
                "{name} is not in the runbook"
            );
        }
        for (name, labelled) in &documented {
            assert!(
                *labelled || exported.contains(&name.as_str()),
                "the runbook's {name} is not exported"
            );
        }
    }

    // Prometheus asks for OpenMetrics first (text 0.0.4 as its fallback).
    let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
    let (content_type, _, text) = scrape(prometheus).await;
    assert!(
        content_type.starts_with("application/openmetrics-text; version=1.0.0"),
        "{content_type}"
    );
    assert!(text.ends_with("# EOF\n"), "{text}");
    assert!(
        text.contains("# TYPE modelrelay_requests counter\n"),
        "{text}"
    );
    assert!(text.contains("\nmodelrelay_requeues_total 0\n"), "{text}");
}

/// The admin token of the in-process relays here.
const ADMIN: &str = "first-hour-admin-token";

/// An in-process relay with the admin token [`ADMIN`].
async fn relay_with_admin_token() -> modelrelay_relay::RunningServer {
    common::relay(|config| {
        config.admin_token = Some(modelrelay_relay::AdminToken::new(ADMIN));
    })
    .await
}

#[tokio::test]
async fn a_login_during_the_cooldown_gets_the_login_page_with_the_wait_and_a_429() {
    let relay = relay_with_admin_token().await;
    let http = common::Http::new();
    let login = format!("{}/dashboard/login", relay.url());
    let form = [("content-type", "application/x-www-form-urlencoded")];
    let mut wrong = 0;
    let cooled = loop {
        let answer = http.post_with(&login, "token=wrong", &form).await;
        if answer.status != http::StatusCode::SEE_OTHER {
            break answer;
        }
        wrong += 1;
        assert!(wrong <= 10, "no cooldown after {wrong} wrong tokens");
    };
    assert_eq!(cooled.status, http::StatusCode::TOO_MANY_REQUESTS);
    let content_type = cooled.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/html"), "{content_type}");
    let wait: u64 = cooled.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&wait), "{wait}");
    let page = cooled.text();
    assert!(page.contains("<form"), "the form again: {page}");
    assert!(
        page.contains(&format!(
            "Too many failed logins from this address. Try again in {wait} seconds."
        )),
        "{page}"
    );
    assert!(!page.contains("auth_cooldown"), "no JSON error: {page}");

    // The right token waits out the cooldown too, on the same page.
    let right = http
        .post_with(&login, &format!("token={ADMIN}"), &form)
        .await;
    assert_eq!(right.status, http::StatusCode::TOO_MANY_REQUESTS);
    assert!(right.text().contains("Too many failed logins"));
    assert!(!right.headers.contains_key("set-cookie"));
}

#[tokio::test]
async fn the_dashboard_shows_uptime_in_its_own_tile_not_in_requeues() {
    let relay = relay_with_admin_token().await;
    let http = common::Http::new();
    let bearer = format!("Bearer {ADMIN}");
    let page = http
        .send(
            http::Method::GET,
            &format!("{}/dashboard", relay.url()),
            "",
            &[("authorization", &bearer)],
        )
        .await;
    assert_eq!(page.status, http::StatusCode::OK);
    let html = String::from_utf8_lossy(&page.rest().await).into_owned();
    let card = |label: &str| -> String {
        let start = html
            .find(&format!(r#"<span class="label">{label}</span>"#))
            .unwrap_or_else(|| panic!("no {label} tile"));
        let end = start + html[start..].find("</li>").unwrap();
        html[start..end].to_owned()
    };
    let requeues = card("Requeues");
    assert!(requeues.contains(r#"id="stat-requeues""#), "{requeues}");
    assert!(!requeues.contains("uptime"), "{requeues}");
    assert!(card("Uptime").contains(r#"id="stat-uptime""#));
}

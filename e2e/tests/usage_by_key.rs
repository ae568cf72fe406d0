//! Usage by API key: requests and tokens per key per UTC day, counted as
//! requests end, written to the key database, listed by `/admin/usage`, kept
//! across restarts.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use modelrelay_relay::keys::{KeyStore, KeyStoreLocation, READER_LEVEL, Schema};
use modelrelay_relay::{AdminToken, RunningServer};
use serde_json::{Value, json};

const ADMIN: &str = "admin-token-for-usage";

/// A key database folder of this test's own.
fn data_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("usage-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// A relay requiring API keys from its key store, adding their usage to it
/// every `flush`; with a worker in front of a backend serving `m` once
/// [`Keyed::with_worker`] started one.
struct Keyed {
    relay: RunningServer,
    http: Http,
    served: Option<(Backend, Worker)>,
}

impl Keyed {
    /// The relay alone.
    async fn start(keys: KeyStore, flush: Duration) -> Self {
        Self::start_with(keys, flush, true).await
    }

    /// The relay alone, checking API keys on client routes or not.
    async fn start_with(keys: KeyStore, flush: Duration, require_api_keys: bool) -> Self {
        let relay = relay(|config| {
            config.admin_token = Some(AdminToken::new(ADMIN));
            config.keys = Some(Arc::new(keys));
            config.require_api_keys = require_api_keys;
            config.usage_flush_every = flush;
        })
        .await;
        Self {
            relay,
            http: Http::new(),
            served: None,
        }
    }

    /// The relay with a worker registered.
    async fn with_worker(keys: KeyStore, flush: Duration) -> Self {
        Self::served(Self::start(keys, flush).await).await
    }

    /// `world` with a worker registered.
    async fn served(mut world: Self) -> Self {
        let backend = backend(&["m"]).await;
        let worker = WorkerSpec::new(&world.relay, &backend, &["m"]).start();
        wait_for_workers(&world.http, &world.relay, 1).await;
        world.served = Some((backend, worker));
        world
    }

    /// An admin request.
    async fn admin(&self, method: Method, path: &str, body: &str) -> Reply {
        let bearer = format!("Bearer {ADMIN}");
        let headers = [
            ("authorization", bearer.as_str()),
            ("content-type", "application/json"),
        ];
        let url = format!("{}{path}", self.relay.url());
        self.http.call(method, &url, body, &headers).await
    }

    /// Makes a key named `name`: its id and the key.
    async fn create_key(&self, name: &str) -> (i64, String) {
        let body = json!({"name": name}).to_string();
        let created = self.admin(Method::POST, "/admin/keys", &body).await;
        assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
        let created = created.json();
        (
            created["id"].as_i64().unwrap(),
            created["key"].as_str().unwrap().to_owned(),
        )
    }

    /// Sends each body as a chat completion with `key`; their statuses.
    async fn chat(&self, key: &str, bodies: &[Value]) -> Vec<StatusCode> {
        let bearer = format!("Bearer {key}");
        let headers = [
            ("content-type", "application/json"),
            ("authorization", bearer.as_str()),
        ];
        let url = format!("{}/v1/chat/completions", self.relay.url());
        let mut statuses = Vec::new();
        for body in bodies {
            let answer = self.http.post_with(&url, &body.to_string(), &headers).await;
            statuses.push(answer.status);
        }
        statuses
    }

    /// `/admin/usage`'s rows, by key id (one day: these tests run within one).
    async fn usage(&self) -> Vec<Value> {
        let answer = self.admin(Method::GET, "/admin/usage", "").await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
        let mut rows = answer.json()["usage"].as_array().unwrap().clone();
        rows.sort_by_key(|row| row["key_id"].as_i64());
        rows
    }

    /// Polls `/admin/usage` until its rows' request counts are `want` (key id, requests).
    async fn usage_until(&self, want: &[(i64, u64)]) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let rows = self.usage().await;
            let seen: Vec<_> = rows
                .iter()
                .map(|row| {
                    (
                        row["key_id"].as_i64().unwrap(),
                        row["requests"].as_u64().unwrap(),
                    )
                })
                .collect();
            if seen == want {
                return rows;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "usage never reached {want:?}: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Stops the relay gracefully.
    async fn shutdown(self) {
        self.relay.shutdown().await;
    }
}

/// A chat body asking the simulated backend for 5 tokens (it reports a 5-token prompt).
fn asking(stream: bool, usage_in_stream: bool) -> Value {
    let mut body = json!({"model": "m", "stream": stream, "messages": [{"role": "user", "content": "hi"}], "mock": {"tokens": 5}});
    if usage_in_stream {
        body["stream_options"] = json!({"include_usage": true});
    }
    body
}

/// `(key id, requests, prompt tokens, completion tokens)` of a row.
fn counts(row: &Value) -> (Option<i64>, Option<u64>, Option<u64>, Option<u64>) {
    (
        row["key_id"].as_i64(),
        row["requests"].as_u64(),
        row["prompt_tokens"].as_u64(),
        row["completion_tokens"].as_u64(),
    )
}

const OK: StatusCode = StatusCode::OK;

#[tokio::test]
async fn usage_per_key_is_counted_with_tokens_written_to_the_database_and_kept_across_a_restart() {
    let dir = data_dir("counted");
    let location = KeyStoreLocation::Sqlite(dir.clone());
    let store = KeyStore::open(&location).await.unwrap();
    let world = Keyed::with_worker(store, Duration::from_millis(50)).await;
    let (alice, alice_key) = world.create_key("alice").await;
    let (bob, bob_key) = world.create_key("bob").await;

    // Alice: a whole answer (5 prompt, 5 completion tokens), a stream with its
    // usage chunk (the same), a stream without (no tokens), and a model no
    // worker serves: every outcome is a request.
    let unknown = json!({"model": "no-such-model", "messages": []});
    let asked = [
        asking(false, false),
        asking(true, true),
        asking(true, false),
        unknown,
    ];
    let statuses = world.chat(&alice_key, &asked).await;
    assert_eq!(statuses, [OK, OK, OK, StatusCode::NOT_FOUND]);
    // Bob: one request, then revoked; his key, a made-up one and none are
    // refused and not counted.
    assert_eq!(world.chat(&bob_key, &[asking(false, false)]).await, [OK]);
    let revoke = world
        .admin(Method::DELETE, &format!("/admin/keys/{bob}"), "")
        .await;
    assert_eq!(revoke.status, StatusCode::NO_CONTENT);
    let made_up = format!("mr-{}", "a".repeat(43));
    for key in [bob_key.as_str(), made_up.as_str(), ""] {
        let refused = world.chat(key, &[asking(false, false)]).await;
        assert_eq!(refused, [StatusCode::UNAUTHORIZED], "{key:?}");
    }

    let rows = world.usage_until(&[(alice, 4), (bob, 1)]).await;
    let today = rows[0]["day"].as_str().unwrap().to_owned();
    assert_eq!(counts(&rows[0]), (Some(alice), Some(4), Some(10), Some(10)));
    assert_eq!(rows[0]["name"], "alice");
    assert_eq!(rows[0]["prefix"].as_str().unwrap(), &alice_key[..11]);
    assert_eq!(rows[0]["revoked"], false);
    assert_eq!(counts(&rows[1]), (Some(bob), Some(1), Some(5), Some(5)));
    assert_eq!(rows[1]["revoked"], true, "{}", rows[1]);
    assert_eq!(
        rows[1]["name"],
        Value::Null,
        "revocation deleted the key's row, and its name"
    );
    assert_eq!(rows[1]["day"], today.as_str());

    // The range: 7 days by default, read as 1 to 90; a value that is not a number is refused.
    let listing = world.admin(Method::GET, "/admin/usage", "").await.json();
    assert_eq!(listing["days"], 7);
    assert_eq!(listing["to"], today.as_str());
    let one = world
        .admin(Method::GET, "/admin/usage?days=0", "")
        .await
        .json();
    assert_eq!(
        (one["days"].as_i64(), one["from"].as_str()),
        (Some(1), Some(today.as_str()))
    );
    let many = world
        .admin(Method::GET, "/admin/usage?days=1000", "")
        .await
        .json();
    assert_eq!(many["days"], 90);
    let bad = world.admin(Method::GET, "/admin/usage?days=week", "").await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(bad.json()["error"]["code"], "invalid_days");

    // A restart on the same database file finds it all.
    world.shutdown().await;
    let store = KeyStore::open(&location).await.unwrap();
    let again = Keyed::start(store, Duration::from_secs(3600)).await;
    let kept: Vec<_> = again.usage().await.iter().map(counts).collect();
    assert_eq!(
        kept,
        [
            (Some(alice), Some(4), Some(10), Some(10)),
            (Some(bob), Some(1), Some(5), Some(5))
        ]
    );
    again.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn usage_counted_since_the_last_write_is_written_at_a_graceful_shutdown() {
    let dir = data_dir("at-exit");
    let location = KeyStoreLocation::Sqlite(dir.clone());
    // Written at start (nothing yet), then not for an hour: only the exit writes it.
    let hour = Duration::from_secs(3600);
    let world = Keyed::with_worker(KeyStore::open(&location).await.unwrap(), hour).await;
    let (id, key) = world.create_key("ci").await;
    assert_eq!(world.chat(&key, &[asking(true, true)]).await, [OK]);
    assert_eq!(world.usage().await, Vec::<Value>::new(), "not written yet");
    world.shutdown().await;

    let again = Keyed::start(KeyStore::open(&location).await.unwrap(), hour).await;
    let rows: Vec<_> = again.usage().await.iter().map(counts).collect();
    assert_eq!(rows, [(Some(id), Some(1), Some(5), Some(5))]);
    again.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn usage_the_database_cannot_take_is_kept_and_written_once_it_can() {
    let dir = data_dir("retried");
    let location = KeyStoreLocation::Sqlite(dir.clone());
    // A store that knows only the migrations before usage: its database has no usage table.
    let before_usage = Schema::of_build(1, READER_LEVEL);
    let keys = KeyStore::open_with(&location, &before_usage).await.unwrap();
    let world = Keyed::with_worker(keys, Duration::from_millis(50)).await;
    let (id, key) = world.create_key("kept").await;
    let twice = [asking(false, false), asking(false, false)];
    assert_eq!(world.chat(&key, &twice).await, [OK, OK]);
    let failing = world.admin(Method::GET, "/admin/usage", "").await;
    assert_eq!(failing.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failing.json()["error"]["code"], "key_store_unavailable");

    // Another relay migrates the database: the counts kept in memory are written.
    KeyStore::open(&location).await.unwrap().close().await;
    let rows = world.usage_until(&[(id, 2)]).await;
    assert_eq!(counts(&rows[0]), (Some(id), Some(2), Some(10), Some(10)));
    world.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn the_dashboard_has_a_usage_table_read_from_the_admin_api_with_the_other_key_panels() {
    let dir = data_dir("page");
    let location = KeyStoreLocation::Sqlite(dir.clone());
    let world = Keyed::start(
        KeyStore::open(&location).await.unwrap(),
        Duration::from_secs(10),
    )
    .await;
    let page = world.admin(Method::GET, "/dashboard", "").await;
    assert_eq!(page.status, StatusCode::OK);
    let html = page.text();
    let start = html
        .find(r#"<section aria-labelledby="usage-heading""#)
        .expect("a usage section");
    let section = &html[start..];
    let section = &section[..section.find("</section>").unwrap()];
    assert!(
        section.contains("Usage by API key (last 7 days)"),
        "{section}"
    );
    assert!(section.contains(r#"<table id="usage-table">"#), "{section}");
    assert!(html.contains(r#"api("GET", "/admin/usage?days=" + USAGE_DAYS)"#));
    assert!(html.contains("var USAGE_DAYS = 7;"));
    assert!(
        html.contains("jobs.push(loadKeys(), loadRelays(), loadHistory(), loadUsage())"),
        "refreshed with the keys, relays and charts"
    );
    world.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn nothing_is_counted_while_keys_are_not_required() {
    let dir = data_dir("not-required");
    let location = KeyStoreLocation::Sqlite(dir.clone());
    let hour = Duration::from_secs(3600);
    let open = Keyed::start_with(KeyStore::open(&location).await.unwrap(), hour, false).await;
    let world = Keyed::served(open).await;
    let (_, key) = world.create_key("unchecked").await;
    let asked = [asking(false, false), asking(true, true)];
    assert_eq!(world.chat(&key, &asked).await, [OK, OK]);
    assert_eq!(world.chat("", &asked).await, [OK, OK]);
    world.shutdown().await; // writes whatever was counted

    let again = Keyed::start(KeyStore::open(&location).await.unwrap(), hour).await;
    assert_eq!(again.usage().await, Vec::<Value>::new());
    again.shutdown().await;
    let _ = std::fs::remove_dir_all(&dir);
}

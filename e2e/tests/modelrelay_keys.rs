//! A ModelRelay server's database, keys and all, under our server: the binary
//! started on it with ModelRelay's `DATABASE_URL` accepts the `mr_live_` keys
//! in its `server_api_keys` table, refuses revoked ones, lists them and
//! revokes them as ModelRelay does. Over SQLite and PostgreSQL.

mod common;

use std::path::PathBuf;

use common::*;
use e2e::{Binary, Process};
use http::{Method, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection as _;

const ADMIN: &str = "modelrelay-keys-admin";

/// ModelRelay's migration `20260405120000_create_server_api_keys.sql`, as
/// PostgreSQL runs it.
const MODELRELAY_SCHEMA: [&str; 3] = [
    "CREATE TABLE IF NOT EXISTS server_api_keys (
        id UUID PRIMARY KEY,
        name TEXT NOT NULL,
        prefix TEXT NOT NULL,
        hash BYTEA NOT NULL,
        created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
        last_used_at TIMESTAMPTZ,
        revoked_at TIMESTAMPTZ
    )",
    "CREATE INDEX IF NOT EXISTS idx_server_api_keys_prefix
        ON server_api_keys(prefix) WHERE revoked_at IS NULL",
    "CREATE INDEX IF NOT EXISTS idx_server_api_keys_hash
        ON server_api_keys(hash) WHERE revoked_at IS NULL",
];

/// Runs `$body` with `$conn` bound to the connection, whichever its dialect.
macro_rules! on_conn {
    ($db:expr, |$conn:ident| $body:expr) => {
        match $db {
            Db::Sqlite($conn) => $body,
            Db::Postgres($conn) => $body,
        }
    };
}

/// A connection to the database under test, in its dialect.
enum Db {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}

impl Db {
    async fn open(url: &str) -> Self {
        if url.starts_with("sqlite:") {
            let options: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
            Self::Sqlite(
                sqlx::SqliteConnection::connect_with(&options.create_if_missing(true))
                    .await
                    .unwrap(),
            )
        } else {
            Self::Postgres(sqlx::PgConnection::connect(url).await.unwrap())
        }
    }

    /// Creates ModelRelay's table (SQLite has no `now()`: the same default by its standard name).
    async fn create_modelrelay_table(&mut self) {
        for statement in MODELRELAY_SCHEMA {
            match self {
                Self::Sqlite(conn) => {
                    let statement = statement.replace("now()", "CURRENT_TIMESTAMP");
                    sqlx::raw_sql(sqlx::AssertSqlSafe(statement))
                        .execute(&mut *conn)
                        .await
                        .unwrap();
                }
                Self::Postgres(conn) => {
                    sqlx::raw_sql(statement).execute(&mut *conn).await.unwrap();
                }
            };
        }
    }

    /// Writes a key as ModelRelay's server does: the raw SHA-256 of the whole
    /// key, its first 16 characters as the prefix, a UUID id.
    async fn insert(&mut self, key: &TheirKey, revoked: bool) {
        let hash = ring::digest::digest(&ring::digest::SHA256, key.key.as_bytes());
        let hash = hash.as_ref().to_vec();
        let prefix = &key.key[..16];
        let sql = match (&self, revoked) {
            (Self::Sqlite(_), false) => {
                "INSERT INTO server_api_keys (id, name, prefix, hash) VALUES ($1, $2, $3, $4)"
            }
            (Self::Sqlite(_), true) => {
                "INSERT INTO server_api_keys (id, name, prefix, hash, revoked_at) \
                 VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)"
            }
            (Self::Postgres(_), false) => {
                "INSERT INTO server_api_keys (id, name, prefix, hash) \
                 VALUES (CAST($1 AS UUID), $2, $3, $4)"
            }
            (Self::Postgres(_), true) => {
                "INSERT INTO server_api_keys (id, name, prefix, hash, revoked_at) \
                 VALUES (CAST($1 AS UUID), $2, $3, $4, now())"
            }
        };
        on_conn!(self, |conn| sqlx::query(sql)
            .bind(&key.id)
            .bind(&key.name)
            .bind(prefix)
            .bind(&hash)
            .execute(conn)
            .await
            .map(drop))
        .unwrap();
    }

    /// Whether ModelRelay would see the key with this id as revoked.
    async fn revoked(&mut self, id: &str) -> bool {
        let sql = "SELECT COUNT(*) AS n FROM server_api_keys \
                   WHERE CAST(id AS TEXT) = $1 AND revoked_at IS NOT NULL";
        let count: i64 = on_conn!(self, |conn| sqlx::query_scalar(sql)
            .bind(id)
            .fetch_one(conn)
            .await)
        .unwrap();
        count == 1
    }
}

/// A key as a ModelRelay server made it.
struct TheirKey {
    id: String,
    name: String,
    key: String,
}

impl TheirKey {
    /// `mr_live_` and 32 letters and digits, unique to this run.
    fn new(name: &str, n: u8) -> Self {
        let seed = format!(
            "{name}-{}-{:?}",
            std::process::id(),
            std::time::Instant::now()
        );
        let random = ring::digest::digest(&ring::digest::SHA256, seed.as_bytes());
        let hex: String = random.as_ref().iter().map(|b| format!("{b:02x}")).collect();
        Self {
            id: format!("0000{n:04x}-1111-4222-8333-{}", &hex[..12]),
            name: name.to_owned(),
            key: format!("mr_live_{}", &hex[..32]),
        }
    }
}

fn data_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("modelrelay-keys-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Our server on the demo model, keys required, with `env` (its database URL).
fn start_server(data_dir: &std::path::Path, env: &[(&str, &str)]) -> Process {
    Process::start_with_env(
        Binary::Server,
        &[
            "--listen",
            "127.0.0.1:0",
            "--demo",
            "--require-api-keys",
            "--admin-token",
            ADMIN,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--log-format",
            "json",
            "--log-level",
            "info",
        ],
        env,
    )
}

/// A chat completion to the demo model with `headers`: its status.
async fn chat(http: &Http, base: &str, headers: &[(&str, &str)]) -> StatusCode {
    let body =
        json!({"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let answer = http
        .post_with(&format!("{base}/v1/chat/completions"), &body, &all)
        .await;
    answer.status
}

/// What an admin call answers, its body as JSON when it has one.
async fn admin(http: &Http, method: Method, url: &str) -> (StatusCode, Value) {
    // ModelRelay's admin scripts may send the token without `Bearer `.
    let answer = http
        .send(method, url, "", &[("authorization", ADMIN)])
        .await;
    let status = answer.status;
    let body = answer.rest().await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// The whole story, on the database at `url`.
async fn modelrelay_keys_keep_working(url: &str, name: &str) {
    let mut db = Db::open(url).await;
    db.create_modelrelay_table().await;
    let live = TheirKey::new("laptop", 1);
    let revoked = TheirKey::new("old", 2);
    let later = TheirKey::new("ci", 3);
    db.insert(&live, false).await;
    db.insert(&revoked, true).await;
    db.insert(&later, false).await;

    let dir = data_dir(name);
    let mut server = start_server(&dir, &[("DATABASE_URL", url)]);
    let open = server.logged("API-key database open").await;
    assert_eq!(open["url_from"], "DATABASE_URL", "{open}");
    let table = server.logged("ModelRelay's key table").await;
    assert_eq!(table["live_keys"], 2, "{table}");
    let listening = server.logged("relay listening").await;
    let base = format!("http://{}", listening["addr"].as_str().unwrap());
    let http = Http::new();
    wait_for_workers_at(&http, &base, 1).await;

    let bearer = |key: &TheirKey| format!("Bearer {}", key.key);
    assert_eq!(
        chat(&http, &base, &[("authorization", &bearer(&live))]).await,
        StatusCode::OK
    );
    // ModelRelay's clients may leave out the scheme, as its server allowed.
    assert_eq!(
        chat(&http, &base, &[("authorization", &live.key)]).await,
        StatusCode::OK
    );
    assert_eq!(
        chat(&http, &base, &[("authorization", &bearer(&revoked))]).await,
        StatusCode::UNAUTHORIZED
    );
    let anthropic =
        json!({"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
            .to_string();
    let messages = http
        .post_with(
            &format!("{base}/v1/messages"),
            &anthropic,
            &[
                ("content-type", "application/json"),
                ("x-api-key", &live.key),
            ],
        )
        .await;
    assert_eq!(messages.status, StatusCode::OK, "{}", messages.text());

    // Listed with the relay's own keys, by their UUIDs; the revoked one is not.
    let (status, listed) = admin(&http, Method::GET, &format!("{base}/admin/keys")).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|key| key["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [live.id.as_str(), later.id.as_str()], "{listed}");
    assert_eq!(listed["keys"][0]["prefix"], live.key[..16]);
    assert_eq!(listed["keys"][0]["name"], "laptop");
    assert!(listed["keys"][0]["last_used_at"].is_string(), "{listed}");

    // Revoked here by its UUID: refused at once, and revoked for ModelRelay too.
    assert_eq!(
        chat(&http, &base, &[("authorization", &bearer(&later))]).await,
        StatusCode::OK
    );
    let revoke = format!("{base}/admin/keys/{}", later.id.to_uppercase());
    assert_eq!(
        admin(&http, Method::DELETE, &revoke).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        chat(&http, &base, &[("authorization", &bearer(&later))]).await,
        StatusCode::UNAUTHORIZED
    );
    assert!(db.revoked(&later.id).await);
    assert_eq!(
        admin(&http, Method::DELETE, &revoke).await.0,
        StatusCode::NOT_FOUND
    );

    // The relay's own keys live beside them.
    let created = http
        .post_with(
            &format!("{base}/admin/keys"),
            r#"{"name":"new"}"#,
            &[
                ("authorization", ADMIN),
                ("content-type", "application/json"),
            ],
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let own = format!("Bearer {}", created.json()["key"].as_str().unwrap());
    assert_eq!(
        chat(&http, &base, &[("authorization", &own)]).await,
        StatusCode::OK
    );

    let lines = std::sync::Arc::clone(&server.lines);
    server.stop().await;
    for line in lines.lock().unwrap().iter() {
        assert!(!line.contains(url), "the database URL in the log: {line}");
        assert!(!line.contains(&live.key), "a key in the log: {line}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn sqlite_modelrelay_keys_work_under_our_server_started_with_database_url() {
    let dir = data_dir("sqlite-db");
    let url = format!("sqlite://{}", dir.join("modelrelay.db").display());
    modelrelay_keys_keep_working(&url, "sqlite").await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_modelrelay_keys_work_under_our_server_started_with_database_url() {
    let Some(url) = postgres::fresh_database().await else {
        return;
    };
    modelrelay_keys_keep_working(&url, "postgres").await;
}

#[tokio::test]
async fn our_database_url_wins_over_modelrelays() {
    let dir = data_dir("both");
    let theirs = format!("sqlite://{}", dir.join("theirs.db").display());
    let ours = format!("sqlite://{}", dir.join("ours.db").display());
    let mut db = Db::open(&theirs).await;
    db.create_modelrelay_table().await;
    let key = TheirKey::new("theirs", 4);
    db.insert(&key, false).await;

    let mut server = start_server(
        &dir,
        &[
            ("DATABASE_URL", &theirs),
            ("MODELRELAY_DATABASE_URL", &ours),
        ],
    );
    let open = server.logged("API-key database open").await;
    assert_eq!(open["url_from"], "MODELRELAY_DATABASE_URL", "{open}");
    let listening = server.logged("relay listening").await;
    let base = format!("http://{}", listening["addr"].as_str().unwrap());
    let http = Http::new();
    wait_for_workers_at(&http, &base, 1).await;
    let bearer = format!("Bearer {}", key.key);
    assert_eq!(
        chat(&http, &base, &[("authorization", &bearer)]).await,
        StatusCode::UNAUTHORIZED,
        "the key is in the database ours does not name"
    );
    assert!(dir.join("ours.db").exists());
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

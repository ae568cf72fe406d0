//! A PostgreSQL database of its own for each test that needs one.
//!
//! The server comes from `MODELRELAY_TEST_DATABASE_URL` (CI sets it), or else
//! `.ci/postgres.sh` starts a throwaway one on loopback. Tests skip PostgreSQL
//! only when `MODELRELAY_SKIP_POSTGRES=1` says so; otherwise a missing server fails.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection as _;

static DATABASES: AtomicU64 = AtomicU64::new(0);

/// The URL of the test PostgreSQL server, or `None` when told to skip.
fn server_url() -> Option<String> {
    if std::env::var("MODELRELAY_SKIP_POSTGRES").is_ok_and(|v| v == "1") {
        crate::skip::skipped(
            "the API-key store on PostgreSQL",
            "MODELRELAY_SKIP_POSTGRES=1 (unset it; scripts/test starts a PostgreSQL)",
        );
        return None;
    }
    if let Ok(url) = std::env::var("MODELRELAY_TEST_DATABASE_URL")
        && !url.is_empty()
    {
        return Some(url);
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.ci/postgres.sh");
    let output = std::process::Command::new("bash")
        .arg(&script)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "no PostgreSQL for the tests: {}\nInstall it (apt-get install -y postgresql), set \
         MODELRELAY_TEST_DATABASE_URL=postgres://…, or set MODELRELAY_SKIP_POSTGRES=1 to skip on purpose.",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Some(String::from_utf8(output.stdout).unwrap().trim().to_owned())
}

/// A new, empty database on the test server, as a URL; `None` when told to skip.
pub async fn fresh_database() -> Option<String> {
    let server = server_url()?;
    let name = format!(
        "mr_test_{}_{}_{}",
        std::process::id(),
        DATABASES.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let mut admin = sqlx::PgConnection::connect(&server)
        .await
        .unwrap_or_else(|e| panic!("cannot reach the test PostgreSQL server: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .unwrap();
    admin.close().await.unwrap();
    let mut url = url::Url::parse(&server).unwrap();
    url.set_path(&name);
    Some(url.to_string())
}

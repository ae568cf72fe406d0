//! The API-key store, the same checks against SQLite and PostgreSQL.

mod common;

use std::path::PathBuf;
use std::time::SystemTime;

use modelrelay_relay::keys::{ApiKeyId, KeyStore, KeyStoreError, KeyStoreLocation};

fn sqlite_dir(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("keys-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

async fn postgres() -> Option<KeyStoreLocation> {
    common::postgres::fresh_database()
        .await
        .map(KeyStoreLocation::Postgres)
}

/// Everything a store must do, whatever holds it.
async fn keys_are_made_checked_listed_and_revoked(location: &KeyStoreLocation) {
    let store = KeyStore::open(location).await.unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 1);
    let now = SystemTime::now();
    let laptop = store.create("  laptop ", now).await.unwrap();
    let ci = store.create("ci", now).await.unwrap();
    assert!(
        laptop.key.starts_with("mr-") && laptop.key.len() == 46,
        "{}",
        laptop.key
    );
    assert_ne!(laptop.key, ci.key);
    assert_eq!(laptop.record.name, "laptop");
    assert_eq!(laptop.record.prefix, laptop.key[..11]);
    assert!(
        !format!("{laptop:?}").contains(&laptop.key),
        "Debug hides the key"
    );

    assert_eq!(
        store.authenticate(&laptop.key, now).await.unwrap(),
        Some(laptop.record.id)
    );
    assert_eq!(
        store.authenticate(&ci.key, now).await.unwrap(),
        Some(ci.record.id)
    );
    let mut wrong = laptop.key.clone();
    wrong.replace_range(20..21, if &wrong[20..21] == "A" { "B" } else { "A" });
    assert_eq!(store.authenticate(&wrong, now).await.unwrap(), None);
    assert_eq!(store.authenticate("mr-nope", now).await.unwrap(), None);
    assert_eq!(store.authenticate("", now).await.unwrap(), None);

    let listed = store.list().await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].id, laptop.record.id);
    assert_eq!(listed[0].name, "laptop");
    assert!(listed[0].last_used_at.is_some(), "use is noted");
    assert_eq!(
        listed[0]
            .created_at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
        now.duration_since(SystemTime::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );

    for bad in ["", "   ", "tab\there", &"x".repeat(101)] {
        assert!(
            matches!(
                store.create(bad, now).await,
                Err(KeyStoreError::InvalidName)
            ),
            "{bad:?}"
        );
    }

    assert!(store.revoke(laptop.record.id).await.unwrap());
    assert_eq!(store.authenticate(&laptop.key, now).await.unwrap(), None);
    assert!(!store.revoke(laptop.record.id).await.unwrap());
    assert!(!store.revoke(ApiKeyId::new(9_999)).await.unwrap());
    assert_eq!(
        store.authenticate(&ci.key, now).await.unwrap(),
        Some(ci.record.id)
    );
    store.close().await;

    // Opened again (a restart): the schema is not applied twice, the keys are kept.
    let again = KeyStore::open(location).await.unwrap();
    assert_eq!(again.schema_version().await.unwrap(), 1);
    assert_eq!(again.list().await.unwrap().len(), 1);
    assert_eq!(
        again.authenticate(&ci.key, now).await.unwrap(),
        Some(ci.record.id)
    );
    again.close().await;
}

#[tokio::test]
async fn sqlite_keys_are_made_checked_listed_and_revoked() {
    let dir = sqlite_dir("suite");
    keys_are_made_checked_listed_and_revoked(&KeyStoreLocation::Sqlite(dir.clone())).await;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "the data folder is private");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_keys_are_made_checked_listed_and_revoked() {
    let Some(location) = postgres().await else {
        return;
    };
    keys_are_made_checked_listed_and_revoked(&location).await;
}

#[tokio::test]
async fn relays_sharing_a_postgres_database_see_each_others_keys_and_revocations_at_once() {
    let Some(location) = postgres().await else {
        return;
    };
    // Two relay instances starting together both migrate without tripping over each other.
    let (a, b) = tokio::join!(KeyStore::open(&location), KeyStore::open(&location));
    let (a, b) = (a.unwrap(), b.unwrap());
    let now = SystemTime::now();
    let key = a.create("shared", now).await.unwrap();
    assert_eq!(
        b.authenticate(&key.key, now).await.unwrap(),
        Some(key.record.id)
    );
    assert!(a.revoke(key.record.id).await.unwrap());
    assert_eq!(b.authenticate(&key.key, now).await.unwrap(), None);
}

/// A database written by a newer relay is refused rather than misread.
async fn a_newer_schema_is_refused(location: &KeyStoreLocation, insert: &'static str) {
    let store = KeyStore::open(location).await.unwrap();
    store.close().await;
    match location {
        KeyStoreLocation::Sqlite(dir) => {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
                "sqlite://{}",
                dir.join("modelrelay.sqlite3").display()
            ))
            .await
            .unwrap();
            sqlx::query(insert).execute(&mut conn).await.unwrap();
        }
        KeyStoreLocation::SqliteUrl(url) => {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            sqlx::query(insert).execute(&mut conn).await.unwrap();
        }
        KeyStoreLocation::Postgres(url) => {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            sqlx::query(insert).execute(&mut conn).await.unwrap();
        }
    }
    match KeyStore::open(location).await {
        Err(KeyStoreError::SchemaTooNew {
            found: 99,
            known: 1,
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

#[tokio::test]
async fn sqlite_refuses_a_newer_schema() {
    let dir = sqlite_dir("newer");
    a_newer_schema_is_refused(
        &KeyStoreLocation::Sqlite(dir.clone()),
        "INSERT INTO modelrelay_schema (version, applied_at_ms) VALUES (99, 0)",
    )
    .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_refuses_a_newer_schema() {
    let Some(location) = postgres().await else {
        return;
    };
    a_newer_schema_is_refused(
        &location,
        "INSERT INTO modelrelay_schema (version, applied_at_ms) VALUES (99, 0)",
    )
    .await;
}

#[tokio::test]
async fn a_database_url_that_is_not_postgres_is_refused() {
    assert!(matches!(
        KeyStoreLocation::from_settings(std::path::Path::new("x"), Some("mysql://h/db")),
        Err(KeyStoreError::UnsupportedUrl)
    ));
    let location =
        KeyStoreLocation::from_settings(std::path::Path::new("x"), Some("postgres://u:pw@h/db"))
            .unwrap();
    assert!(
        !format!("{location:?}").contains("pw"),
        "Debug hides the URL"
    );
}

#[tokio::test]
async fn a_key_is_not_refused_when_its_last_use_cannot_be_written() {
    use sqlx::{Connection as _, Executor as _};
    let dir = sqlite_dir("busy");
    let store = KeyStore::open(&KeyStoreLocation::Sqlite(dir.clone()))
        .await
        .unwrap();
    let created = store.create("busy", SystemTime::now()).await.unwrap();
    // Another writer holds the database for longer than the store waits.
    let mut other = sqlx::SqliteConnection::connect(&format!(
        "sqlite://{}",
        dir.join("modelrelay.sqlite3").display()
    ))
    .await
    .unwrap();
    other.execute("BEGIN IMMEDIATE").await.unwrap();
    assert_eq!(
        store
            .authenticate(&created.key, SystemTime::now())
            .await
            .unwrap(),
        Some(created.record.id),
        "checked out although its last use could not be written"
    );
    other.execute("ROLLBACK").await.unwrap();
    assert_eq!(store.list().await.unwrap()[0].last_used_at, None);
    store.close().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn an_unknown_key_is_answered_from_memory_while_new_and_revoked_keys_hold_at_once() {
    let store = KeyStore::open(&KeyStoreLocation::Sqlite(sqlite_dir("misses")))
        .await
        .unwrap();
    let now = SystemTime::now();
    let unknown = format!("mr-{}", "x".repeat(43));
    for _ in 0..5 {
        assert_eq!(store.authenticate(&unknown, now).await.unwrap(), None);
    }
    assert_eq!(store.lookups(), 1, "repeats of a miss cost no query");
    // A key made now works at once, and its revocation holds at once.
    let made = store.create("new", now).await.unwrap();
    assert_eq!(
        store.authenticate(&made.key, now).await.unwrap(),
        Some(made.record.id)
    );
    assert!(store.revoke(made.record.id).await.unwrap());
    assert_eq!(store.authenticate(&made.key, now).await.unwrap(), None);
    assert_eq!(store.authenticate(&unknown, now).await.unwrap(), None);
    assert_eq!(store.lookups(), 3);
}

//! The API-key store, the same checks against SQLite and PostgreSQL.

mod common;

use std::path::PathBuf;
use std::time::SystemTime;

use modelrelay_relay::keys::{
    ApiKeyId, KeyStore, KeyStoreError, KeyStoreLocation, READER_LEVEL, RelayRow, Schema, UsageDay,
    UsageRow, UsageTally,
};

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

/// Runs `sql` on the database behind the store's back (as another program would).
async fn run_sql(location: &KeyStoreLocation, sql: &'static str) {
    match location {
        KeyStoreLocation::Sqlite(dir) => {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(&format!(
                "sqlite://{}",
                dir.join("modelrelay.sqlite3").display()
            ))
            .await
            .unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        KeyStoreLocation::SqliteUrl(url) => {
            let mut conn = <sqlx::SqliteConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
        KeyStoreLocation::Postgres(url) => {
            let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(url)
                .await
                .unwrap();
            sqlx::query(sql).execute(&mut conn).await.unwrap();
        }
    }
}

/// A database written by a newer relay is refused rather than misread.
async fn a_newer_schema_is_refused(location: &KeyStoreLocation, insert: &'static str) {
    let store = KeyStore::open(location).await.unwrap();
    store.close().await;
    run_sql(location, insert).await;
    match KeyStore::open(location).await {
        Err(KeyStoreError::SchemaTooNew {
            found: 99,
            known: 1,
        }) => {}
        other => panic!("expected SchemaTooNew, got {other:?}"),
    }
}

/// A rolling upgrade: a newer relay migrates the database; an older one
/// (knowing none of the migrations after the base) still opens it and serves
/// keys, and neither undoes the other's work.
async fn an_older_relay_opens_a_database_a_newer_one_migrated(location: &KeyStoreLocation) {
    let older = Schema::of_build(0, READER_LEVEL);
    // The older relay came first.
    let old = KeyStore::open_with(location, &older).await.unwrap();
    let before = old
        .create("before the upgrade", SystemTime::now())
        .await
        .unwrap();
    assert!(old.applied_migrations().await.unwrap().is_empty());
    old.close().await;

    let new = KeyStore::open(location).await.unwrap();
    let every: Vec<String> = Schema::current()
        .migration_names()
        .map(String::from)
        .collect();
    assert!(!every.is_empty());
    assert_eq!(new.applied_migrations().await.unwrap(), every);
    assert_eq!(
        new.schema_version().await.unwrap(),
        1,
        "the base stays at 1: relays built before named migrations start too"
    );
    let during = new
        .create("during the upgrade", SystemTime::now())
        .await
        .unwrap();
    new.close().await;

    // The older relay restarts on the migrated database and serves every key.
    let old = KeyStore::open_with(location, &older).await.unwrap();
    let now = SystemTime::now();
    assert_eq!(
        old.authenticate(&before.key, now).await.unwrap(),
        Some(before.record.id)
    );
    assert_eq!(
        old.authenticate(&during.key, now).await.unwrap(),
        Some(during.record.id)
    );
    let after = old.create("made by the older relay", now).await.unwrap();
    assert_eq!(old.list().await.unwrap().len(), 3);
    assert!(old.revoke(before.record.id).await.unwrap());
    assert_eq!(
        old.applied_migrations().await.unwrap(),
        every,
        "left as they were"
    );
    old.close().await;

    let new = KeyStore::open(location).await.unwrap();
    assert_eq!(
        new.authenticate(&after.key, now).await.unwrap(),
        Some(after.record.id)
    );
    assert_eq!(new.authenticate(&before.key, now).await.unwrap(), None);
    new.close().await;
}

/// A migration marked as breaking relays below a reader level refuses them, naming both.
async fn a_breaking_migration_refuses_older_readers(location: &KeyStoreLocation) {
    KeyStore::open(location).await.unwrap().close().await;
    run_sql(
        location,
        "INSERT INTO modelrelay_migrations (name, applied_at_ms, readers_from) \
         VALUES ('2099-01-drop-something', 0, 99)",
    )
    .await;
    match KeyStore::open(location).await {
        Err(error @ KeyStoreError::NeedsNewerRelay { .. }) => {
            let text = error.to_string();
            assert!(
                text.contains("2099-01-drop-something")
                    && text.contains("level 99")
                    && text.contains(&format!("level {READER_LEVEL}")),
                "{text}"
            );
        }
        other => panic!("expected NeedsNewerRelay, got {other:?}"),
    }
    // A relay of that level works with it.
    KeyStore::open_with(location, &Schema::of_build(usize::MAX, 99))
        .await
        .unwrap()
        .close()
        .await;
}

#[tokio::test]
async fn sqlite_an_older_relay_opens_a_database_a_newer_one_migrated() {
    let dir = sqlite_dir("rolling");
    an_older_relay_opens_a_database_a_newer_one_migrated(&KeyStoreLocation::Sqlite(dir.clone()))
        .await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_an_older_relay_opens_a_database_a_newer_one_migrated() {
    let Some(location) = postgres().await else {
        return;
    };
    an_older_relay_opens_a_database_a_newer_one_migrated(&location).await;
}

#[tokio::test]
async fn sqlite_a_breaking_migration_refuses_older_readers() {
    let dir = sqlite_dir("breaking");
    a_breaking_migration_refuses_older_readers(&KeyStoreLocation::Sqlite(dir.clone())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_a_breaking_migration_refuses_older_readers() {
    let Some(location) = postgres().await else {
        return;
    };
    a_breaking_migration_refuses_older_readers(&location).await;
}

/// The relay list's table: rows written and replaced by id, listed by name,
/// pruned by age, removed one by one.
async fn the_relay_list_keeps_one_row_per_relay(location: &KeyStoreLocation) {
    let store = KeyStore::open(location).await.unwrap();
    let now = SystemTime::now();
    let row = |id: &str, name: &str, secs_ago: u64| RelayRow {
        id: id.to_owned(),
        name: name.to_owned(),
        version: "1.2.3".to_owned(),
        started_at: now - std::time::Duration::from_secs(secs_ago + 5),
        last_seen: now - std::time::Duration::from_secs(secs_ago),
        draining: false,
        workers: 0,
        open_requests: 0,
        queue_depth: 0,
    };
    store.write_relay(&row("b", "beta", 0)).await.unwrap();
    store.write_relay(&row("a", "alpha", 0)).await.unwrap();
    store
        .write_relay(&row("old", "gamma", 90_000))
        .await
        .unwrap();
    let mut beta = row("b", "beta", 0);
    beta.draining = true;
    beta.workers = 3;
    beta.open_requests = 7;
    beta.queue_depth = 2;
    store.write_relay(&beta).await.unwrap();
    let listed = store.relays().await.unwrap();
    let ids: Vec<_> = listed.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a", "b", "old"]);
    let stored = &listed[1];
    assert_eq!(
        (
            stored.draining,
            stored.workers,
            stored.open_requests,
            stored.queue_depth
        ),
        (true, 3, 7, 2)
    );
    assert_eq!(stored.version, "1.2.3");
    let cutoff = now - std::time::Duration::from_secs(86_400);
    assert_eq!(store.forget_relays_seen_before(cutoff).await.unwrap(), 1);
    assert!(store.remove_relay("a").await.unwrap());
    assert!(!store.remove_relay("a").await.unwrap());
    let ids: Vec<_> = store
        .relays()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(ids, ["b"]);
    store.close().await;
}

#[tokio::test]
async fn sqlite_the_relay_list_keeps_one_row_per_relay() {
    let dir = sqlite_dir("relays");
    the_relay_list_keeps_one_row_per_relay(&KeyStoreLocation::Sqlite(dir.clone())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn postgres_the_relay_list_keeps_one_row_per_relay() {
    let Some(location) = postgres().await else {
        return;
    };
    the_relay_list_keeps_one_row_per_relay(&location).await;
}

/// Usage rows: two stores on one database (two relays) add to the same rows,
/// per key and day; a listing starts at the day asked for, newest first.
async fn usage_from_two_relays_adds_up(location: &KeyStoreLocation) {
    let (a, b) = tokio::join!(KeyStore::open(location), KeyStore::open(location));
    let (a, b) = (a.unwrap(), b.unwrap());
    let today = UsageDay::of(SystemTime::now());
    let (laptop, ci) = (
        ApiKeyId::new(1),
        ApiKeyId::parse("0a1b2c3d-4e5f-6789-abcd-ef0123456789").unwrap(),
    );
    let row = |key, day, requests, prompt_tokens, completion_tokens| UsageRow {
        key,
        day,
        tally: UsageTally {
            requests,
            prompt_tokens,
            completion_tokens,
        },
    };
    let from_a = [row(laptop, today, 2, 10, 20), row(ci, today, 1, 1, 1)];
    let from_b = [
        row(laptop, today, 3, 5, 5),
        row(laptop, today.minus(1), 1, 0, 0),
    ];
    let (first, second) = tokio::join!(a.add_usage(&from_a), b.add_usage(&from_b));
    first.unwrap();
    second.unwrap();
    b.add_usage(&[row(laptop, today.minus(9), 7, 7, 7)])
        .await
        .unwrap();
    let listed = a.usage_since(today.minus(1)).await.unwrap();
    assert!(!listed.truncated);
    let mut today_rows = listed.rows[..2].to_vec();
    today_rows.sort_by_key(|r| r.key);
    assert_eq!(
        today_rows,
        [row(laptop, today, 5, 15, 25), row(ci, today, 1, 1, 1)]
    );
    assert_eq!(listed.rows[2..], [row(laptop, today.minus(1), 1, 0, 0)]);
    assert_eq!(b.usage_since(today.minus(30)).await.unwrap().rows.len(), 4);
    a.close().await;
    b.close().await;
}

#[tokio::test]
async fn sqlite_usage_from_two_relays_adds_up() {
    let dir = sqlite_dir("usage");
    usage_from_two_relays_adds_up(&KeyStoreLocation::Sqlite(dir.clone())).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Relays started together on a SQLite file that does not exist yet all open
/// it: making the file WAL takes a lock SQLite does not wait for, so the ones
/// that lose the race try again. Several rounds, each on a new file, since one
/// race is lost only now and then.
#[tokio::test]
async fn sqlite_relays_opening_one_new_file_at_once_all_open() {
    const ROUNDS: usize = 24;
    for round in 0..ROUNDS {
        let dir = sqlite_dir(&format!("race-{round}"));
        let location = KeyStoreLocation::Sqlite(dir.clone());
        let (a, b, c) = tokio::join!(
            KeyStore::open(&location),
            KeyStore::open(&location),
            KeyStore::open(&location)
        );
        for store in [a, b, c] {
            let store = store.unwrap_or_else(|e| panic!("round {round}: {e}"));
            store.close().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test]
async fn postgres_usage_from_two_relays_adds_up() {
    let Some(location) = postgres().await else {
        return;
    };
    usage_from_two_relays_adds_up(&location).await;
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

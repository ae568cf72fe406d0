//! The list of relays sharing the database, `modelrelay_relays`: each relay
//! process writes its own row and reads everyone's. Nothing else is
//! coordinated through it; it is for the operator to see.

use std::time::SystemTime;

use sqlx::Row as _;

use super::{Database, KeyStore, KeyStoreError, from_unix_ms, unix_ms};

/// Most rows one listing reads (the most recently seen first); the table is
/// pruned of rows not seen for a day, so it holds one row per relay start in
/// that day.
const MAX_LISTED: i64 = 1000;

/// One relay process's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayRow {
    /// The process's id: a UUIDv7 drawn when it started.
    pub id: String,
    /// Its name (`--relay-name`, default the host name).
    pub name: String,
    /// Its version.
    pub version: String,
    /// When it started.
    pub started_at: SystemTime,
    /// When it last wrote its row.
    pub last_seen: SystemTime,
    /// Whether it is draining (shutting down).
    pub draining: bool,
    /// Workers registered with it.
    pub workers: u64,
    /// Requests it has not ended.
    pub open_requests: u64,
    /// Requests waiting in its queue.
    pub queue_depth: u64,
}

impl KeyStore {
    /// Writes (or replaces) `row`, by its id.
    pub async fn write_relay(&self, row: &RelayRow) -> Result<(), KeyStoreError> {
        let sql = "INSERT INTO modelrelay_relays \
            (id, name, version, started_at_ms, last_seen_ms, draining, workers, open_requests, queue_depth) \
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
            ON CONFLICT (id) DO UPDATE SET name = excluded.name, version = excluded.version, \
            last_seen_ms = excluded.last_seen_ms, draining = excluded.draining, \
            workers = excluded.workers, open_requests = excluded.open_requests, \
            queue_depth = excluded.queue_depth";
        on_pool!(&self.db, |pool| sqlx::query(sql)
            .bind(&row.id)
            .bind(&row.name)
            .bind(&row.version)
            .bind(unix_ms(row.started_at))
            .bind(unix_ms(row.last_seen))
            .bind(i64::from(row.draining))
            .bind(count(row.workers))
            .bind(count(row.open_requests))
            .bind(count(row.queue_depth))
            .execute(pool)
            .await?
            .rows_affected());
        Ok(())
    }

    /// Deletes the rows last seen before `cutoff`; how many went.
    pub async fn forget_relays_seen_before(
        &self,
        cutoff: SystemTime,
    ) -> Result<u64, KeyStoreError> {
        Ok(on_pool!(&self.db, |pool| sqlx::query(
            "DELETE FROM modelrelay_relays WHERE last_seen_ms < $1"
        )
        .bind(unix_ms(cutoff))
        .execute(pool)
        .await?
        .rows_affected()))
    }

    /// Deletes one relay's row (a relay stopping); whether there was one.
    pub async fn remove_relay(&self, id: &str) -> Result<bool, KeyStoreError> {
        Ok(on_pool!(&self.db, |pool| sqlx::query(
            "DELETE FROM modelrelay_relays WHERE id = $1"
        )
        .bind(id)
        .execute(pool)
        .await?
        .rows_affected())
            > 0)
    }

    /// The relays' rows, by name then start (at most [`MAX_LISTED`], the most recently seen).
    pub async fn relays(&self) -> Result<Vec<RelayRow>, KeyStoreError> {
        let sql = "SELECT id, name, version, started_at_ms, last_seen_ms, draining, workers, \
                   open_requests, queue_depth FROM modelrelay_relays \
                   ORDER BY last_seen_ms DESC LIMIT $1";
        let mut rows = on_pool!(&self.db, |pool| sqlx::query(sql)
            .bind(MAX_LISTED)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(RelayRow {
                    id: row.try_get("id")?,
                    name: row.try_get("name")?,
                    version: row.try_get("version")?,
                    started_at: from_unix_ms(row.try_get("started_at_ms")?),
                    last_seen: from_unix_ms(row.try_get("last_seen_ms")?),
                    draining: row.try_get::<i64, _>("draining")? != 0,
                    workers: row.try_get::<i64, _>("workers")?.max(0).unsigned_abs(),
                    open_requests: row
                        .try_get::<i64, _>("open_requests")?
                        .max(0)
                        .unsigned_abs(),
                    queue_depth: row.try_get::<i64, _>("queue_depth")?.max(0).unsigned_abs(),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?);
        rows.sort_by(|a, b| (&a.name, a.started_at, &a.id).cmp(&(&b.name, b.started_at, &b.id)));
        Ok(rows)
    }
}

/// A count as the database's signed integer.
fn count(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

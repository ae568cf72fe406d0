//! Requests and tokens per API key per UTC day, `api_key_usage`.
//!
//! Every relay adds what it counted to the rows (an additive upsert, never a
//! write of totals), so several relays sharing one PostgreSQL database add
//! up, and a restart loses nothing already written. A day is a number, days
//! since 1970-01-01 in UTC: the same integer type in both dialects, compared
//! and ranged without parsing, with no time zone to get wrong; the admin API
//! shows it as `YYYY-MM-DD`. A key is named as the admin API names it (a
//! number, or a ModelRelay key's UUID), so one text column holds both kinds.
//! Rows stay after their key is revoked (a revoked key of the relay's own
//! loses its name, which lived in its deleted row).

use std::time::{SystemTime, UNIX_EPOCH};

use sqlx::{Connection as _, Row as _};

use super::{ApiKeyId, Database, KeyStore, KeyStoreError, civil_date};

/// Most rows one listing returns (the newest days first).
pub const MAX_USAGE_ROWS: usize = 10_000;

/// Seconds in a day.
const DAY_SECS: u64 = 86_400;

/// Adds one batch row to what the table holds (or inserts it).
const UPSERT: &str = "INSERT INTO api_key_usage \
    (key_id, day, requests, prompt_tokens, completion_tokens) VALUES ($1, $2, $3, $4, $5) \
    ON CONFLICT (key_id, day) DO UPDATE SET \
    requests = api_key_usage.requests + excluded.requests, \
    prompt_tokens = api_key_usage.prompt_tokens + excluded.prompt_tokens, \
    completion_tokens = api_key_usage.completion_tokens + excluded.completion_tokens";

/// A UTC day, as days since 1970-01-01.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UsageDay(i64);

impl UsageDay {
    /// The UTC day `at` falls on (a clock before 1970 reads as its first day).
    pub fn of(at: SystemTime) -> Self {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Self(i64::try_from(secs / DAY_SECS).unwrap_or(i64::MAX))
    }

    /// The day `days` after 1970-01-01.
    pub fn from_days(days: i64) -> Self {
        Self(days)
    }

    /// Days since 1970-01-01.
    pub fn days(self) -> i64 {
        self.0
    }

    /// The day `n` days before this one.
    pub fn minus(self, n: i64) -> Self {
        Self(self.0.saturating_sub(n))
    }

    /// As `YYYY-MM-DD`.
    pub fn date(self) -> String {
        let (year, month, day) = civil_date(self.0);
        format!("{year:04}-{month:02}-{day:02}")
    }
}

/// Requests and tokens counted for one key on one day.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UsageTally {
    /// Requests that ended, whatever their outcome.
    pub requests: u64,
    /// Prompt tokens the backends reported.
    pub prompt_tokens: u64,
    /// Completion tokens the backends reported.
    pub completion_tokens: u64,
}

impl UsageTally {
    /// Adds `other` to this tally (saturating: a counter never wraps).
    pub fn add(&mut self, other: UsageTally) {
        self.requests = self.requests.saturating_add(other.requests);
        self.prompt_tokens = self.prompt_tokens.saturating_add(other.prompt_tokens);
        self.completion_tokens = self
            .completion_tokens
            .saturating_add(other.completion_tokens);
    }
}

/// One key's tally on one day.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UsageRow {
    /// The key.
    pub key: ApiKeyId,
    /// The UTC day.
    pub day: UsageDay,
    /// What was counted.
    pub tally: UsageTally,
}

/// The rows from one day on, and whether [`MAX_USAGE_ROWS`] cut the list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UsageListing {
    /// Newest day first, then by key.
    pub rows: Vec<UsageRow>,
    /// Older rows were left out.
    pub truncated: bool,
}

impl KeyStore {
    /// Adds `rows` to the table in one transaction: all of them or none.
    pub async fn add_usage(&self, rows: &[UsageRow]) -> Result<(), KeyStoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let begin = self.db.begin_writing();
        on_pool!(&self.db, |pool| {
            let mut conn = pool.acquire().await?;
            let mut tx = conn.begin_with(begin).await?;
            for row in rows {
                sqlx::query(UPSERT)
                    .bind(row.key.to_string())
                    .bind(row.day.days())
                    .bind(signed(row.tally.requests))
                    .bind(signed(row.tally.prompt_tokens))
                    .bind(signed(row.tally.completion_tokens))
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The rows of `first` and later days, newest first (at most [`MAX_USAGE_ROWS`]).
    pub async fn usage_since(&self, first: UsageDay) -> Result<UsageListing, KeyStoreError> {
        let sql = "SELECT key_id, day, requests, prompt_tokens, completion_tokens \
                   FROM api_key_usage WHERE day >= $1 ORDER BY day DESC, key_id LIMIT $2";
        let limit = i64::try_from(MAX_USAGE_ROWS + 1).unwrap_or(i64::MAX);
        let mut rows = on_pool!(&self.db, |pool| sqlx::query(sql)
            .bind(first.days())
            .bind(limit)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                let key: String = row.try_get("key_id")?;
                let day = UsageDay(row.try_get("day")?);
                let tally = UsageTally {
                    requests: unsigned(row.try_get("requests")?),
                    prompt_tokens: unsigned(row.try_get("prompt_tokens")?),
                    completion_tokens: unsigned(row.try_get("completion_tokens")?),
                };
                Ok(ApiKeyId::parse(&key).map(|key| UsageRow { key, day, tally }))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?);
        let truncated = rows.len() > MAX_USAGE_ROWS;
        rows.truncate(MAX_USAGE_ROWS);
        // A key id written by hand that is neither a number nor a UUID is skipped.
        let rows = rows.into_iter().flatten().collect();
        Ok(UsageListing { rows, truncated })
    }
}

/// A count as the database's signed integer.
fn signed(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A stored count as a count (a negative one, written by hand, as 0).
fn unsigned(n: i64) -> u64 {
    n.max(0).unsigned_abs()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_day_is_the_utc_date_and_turns_at_midnight() {
        let midnight = UNIX_EPOCH + Duration::from_secs(1_796_083_200); // 2026-12-01T00:00:00Z
        let before = UsageDay::of(midnight - Duration::from_secs(1));
        let after = UsageDay::of(midnight);
        assert_eq!(before.date(), "2026-11-30");
        assert_eq!(after.date(), "2026-12-01");
        assert_eq!(after.days() - before.days(), 1);
        assert_eq!(after.minus(30).date(), "2026-11-01");
        assert_eq!(UsageDay::of(UNIX_EPOCH).date(), "1970-01-01");
        assert_eq!(UsageDay::from_days(11_016).date(), "2000-02-29");
    }
}

//! ModelRelay's own key table, `server_api_keys`, read in place.
//!
//! A ModelRelay server keeps its keys (`mr_live_` and 32 letters or digits)
//! in that table as the raw SHA-256 of the whole key, with a UUID id and a
//! `revoked_at` time. When the relay's database holds the table, such keys are
//! checked against it on every request, listed with ours, and revoked by
//! setting `revoked_at` as ModelRelay does. Reading in place rather than
//! copying at start keeps one truth for those keys: a revocation made by a
//! ModelRelay server still running on the same database holds here at once,
//! one made here holds there, and going back to ModelRelay finds its table as
//! it left it. The table's schema is never changed.

use std::fmt;
use std::time::SystemTime;

use sqlx::Row as _;

use super::{ApiKeyId, ApiKeyRecord, Database, from_unix_ms};

/// What every ModelRelay key starts with.
pub(crate) const KEY_PREFIX: &str = "mr_live_";

/// Letters and digits after the prefix, as ModelRelay makes them.
const RANDOM_CHARS: usize = 32;

/// The table, by name (in PostgreSQL, found along the connection's search path).
const TABLE: &str = "server_api_keys";

/// Whether `text` has the shape of a key ModelRelay made.
pub(crate) fn is_key_shaped(text: &str) -> bool {
    text.len() == KEY_PREFIX.len() + RANDOM_CHARS
        && text.starts_with(KEY_PREFIX)
        && text[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// The id of a key in ModelRelay's table: a UUID, shown in its usual form.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelRelayKeyId([u8; 16]);

impl ModelRelayKeyId {
    /// Reads `8-4-4-4-12` hexadecimal digits (either case); `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        const DASHES: [usize; 4] = [8, 13, 18, 23];
        let bytes = text.as_bytes();
        if bytes.len() != 36 || DASHES.iter().any(|&at| bytes[at] != b'-') {
            return None;
        }
        let mut digits = bytes.iter().filter(|&&b| b != b'-');
        let mut id = [0u8; 16];
        for byte in &mut id {
            let high = hex_value(*digits.next()?)?;
            let low = hex_value(*digits.next()?)?;
            *byte = high << 4 | low;
        }
        Some(Self(id))
    }
}

fn hex_value(digit: u8) -> Option<u8> {
    char::from(digit)
        .to_digit(16)
        .and_then(|value| u8::try_from(value).ok())
}

impl fmt::Display for ModelRelayKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, byte) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// Whether the database holds ModelRelay's table.
pub(super) async fn table_present(db: &Database) -> Result<bool, sqlx::Error> {
    Ok(match db {
        Database::Sqlite(pool) => {
            sqlx::query(
                "SELECT COUNT(*) AS n FROM sqlite_master WHERE type = 'table' AND name = $1",
            )
            .bind(TABLE)
            .fetch_one(pool)
            .await?
            .try_get::<i64, _>("n")?
                > 0
        }
        Database::Postgres(pool) => sqlx::query("SELECT to_regclass($1) IS NOT NULL AS present")
            .bind(TABLE)
            .fetch_one(pool)
            .await?
            .try_get::<bool, _>("present")?,
    })
}

/// Keys in the table that are not revoked.
pub(super) async fn live_count(db: &Database) -> Result<i64, sqlx::Error> {
    Ok(on_pool!(db, |pool| sqlx::query(
        "SELECT COUNT(*) AS n FROM server_api_keys WHERE revoked_at IS NULL"
    )
    .fetch_one(pool)
    .await?
    .try_get::<i64, _>("n")?))
}

/// The live key whose SHA-256 is `digest`, if there is one.
pub(super) async fn find(db: &Database, digest: &[u8]) -> Result<Option<ApiKeyId>, sqlx::Error> {
    let sql = "SELECT CAST(id AS TEXT) AS id FROM server_api_keys \
               WHERE hash = $1 AND revoked_at IS NULL";
    let id: Option<String> = on_pool!(db, |pool| sqlx::query(sql)
        .bind(digest)
        .fetch_optional(pool)
        .await?
        .map(|row| row.try_get("id"))
        .transpose()?);
    Ok(id.as_deref().and_then(parsed_id).map(ApiKeyId::ModelRelay))
}

/// Notes a use of the live key whose SHA-256 is `digest`, as ModelRelay does.
pub(super) async fn touch(db: &Database, digest: &[u8]) -> Result<(), sqlx::Error> {
    let sql = "UPDATE server_api_keys SET last_used_at = CURRENT_TIMESTAMP \
               WHERE hash = $1 AND revoked_at IS NULL";
    on_pool!(db, |pool| sqlx::query(sql)
        .bind(digest)
        .execute(pool)
        .await?
        .rows_affected());
    Ok(())
}

/// Sets `revoked_at` on a live key; `false` if there was none with this id.
pub(super) async fn revoke(db: &Database, id: ModelRelayKeyId) -> Result<bool, sqlx::Error> {
    let sql = "UPDATE server_api_keys SET revoked_at = CURRENT_TIMESTAMP \
               WHERE LOWER(CAST(id AS TEXT)) = $1 AND revoked_at IS NULL";
    let revoked = on_pool!(db, |pool| sqlx::query(sql)
        .bind(id.to_string())
        .execute(pool)
        .await?
        .rows_affected());
    Ok(revoked > 0)
}

/// The live keys, oldest first, as the admin API lists keys.
pub(super) async fn list(db: &Database) -> Result<Vec<ApiKeyRecord>, sqlx::Error> {
    // Times as milliseconds since the epoch, each dialect its own way.
    const SQLITE: &str = "SELECT CAST(id AS TEXT) AS id, name, prefix, \
        CAST(ROUND((julianday(created_at) - 2440587.5) * 86400000) AS INTEGER) AS created_ms, \
        CAST(ROUND((julianday(last_used_at) - 2440587.5) * 86400000) AS INTEGER) AS last_used_ms \
        FROM server_api_keys WHERE revoked_at IS NULL ORDER BY created_ms, id";
    const POSTGRES: &str = "SELECT CAST(id AS TEXT) AS id, name, prefix, \
        CAST(EXTRACT(EPOCH FROM created_at) * 1000 AS BIGINT) AS created_ms, \
        CAST(EXTRACT(EPOCH FROM last_used_at) * 1000 AS BIGINT) AS last_used_ms \
        FROM server_api_keys WHERE revoked_at IS NULL ORDER BY created_ms, id";
    let sql = match db {
        Database::Sqlite(_) => SQLITE,
        Database::Postgres(_) => POSTGRES,
    };
    let rows: Vec<ListedRow> = on_pool!(db, |pool| sqlx::query(sql)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| {
            Ok((
                row.try_get("id")?,
                row.try_get("name")?,
                row.try_get("prefix")?,
                row.try_get("created_ms")?,
                row.try_get("last_used_ms")?,
            ))
        })
        .collect::<Result<_, sqlx::Error>>()?);
    Ok(rows
        .into_iter()
        .filter_map(|(id, name, prefix, created_ms, last_used_ms)| {
            Some(ApiKeyRecord {
                id: ApiKeyId::ModelRelay(parsed_id(&id)?),
                name,
                prefix,
                created_at: created_ms.map_or(SystemTime::UNIX_EPOCH, from_unix_ms),
                last_used_at: last_used_ms.map(from_unix_ms),
            })
        })
        .collect())
}

/// A listed row: id, name, prefix, and the two times in milliseconds.
type ListedRow = (String, String, String, Option<i64>, Option<i64>);

/// A row's id, or a warning when it is not a UUID (a table written by hand).
fn parsed_id(text: &str) -> Option<ModelRelayKeyId> {
    let id = ModelRelayKeyId::parse(text);
    if id.is_none() {
        tracing::warn!(
            "a row of ModelRelay's server_api_keys has an id that is not a UUID; its key is ignored"
        );
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modelrelay_keys_have_their_own_shape() {
        assert!(is_key_shaped(&format!("mr_live_{}", "aZ09".repeat(8))));
        assert!(!is_key_shaped(&format!("mr_live_{}", "a".repeat(31))));
        assert!(!is_key_shaped(&format!("mr_live_{}", "a".repeat(33))));
        assert!(!is_key_shaped(&format!("mr_live_{}", "a-".repeat(16))));
        assert!(!is_key_shaped(&format!("mr_test_{}", "a".repeat(32))));
    }

    #[test]
    fn uuids_are_read_in_either_case_and_shown_in_lower_case() {
        let id = ModelRelayKeyId::parse("0A1B2C3D-4e5f-6789-abcd-ef0123456789").unwrap();
        assert_eq!(id.to_string(), "0a1b2c3d-4e5f-6789-abcd-ef0123456789");
        for bad in [
            "",
            "0a1b2c3d4e5f6789abcdef0123456789",
            "0a1b2c3d-4e5f-6789-abcd-ef012345678g",
            "0a1b2c3d-4e5f-6789-abcd+ef0123456789",
            "0a1b2c3d-4e5f-6789-abcd-ef01234567890",
            "+a1b2c3d-4e5f-6789-abcd-ef0123456789",
        ] {
            assert_eq!(ModelRelayKeyId::parse(bad), None, "{bad:?}");
        }
    }
}

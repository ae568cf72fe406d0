//! `GET /admin/usage?days=N`: requests and tokens per API key per UTC day,
//! as the key database holds them.
//!
//! That is what every relay sharing the database has written; this relay's
//! own counts of the last flush interval (`usage_flush_every`, 10 s by
//! default) are not in it yet, and are not merged in: each relay would merge
//! only its own, so the answer would differ by the relay asked.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::app::AppState;
use crate::codes;
use crate::keys::{ApiKeyId, ApiKeyRecord, UsageDay, UsageRow};

use super::admin_api::{admin_error, no_key_store, store_failed};
use super::session::Admin;

/// Days listed when the query names none: today and the six before.
const DEFAULT_DAYS: i64 = 7;

/// Most days one listing covers; more are read as this many.
const MAX_DAYS: i64 = 90;

/// `GET /admin/usage?days=N` (1 to 90, default 7): one row per key per day
/// with any use, newest day first, each with its key's name and prefix
/// (`null` once a key of the relay's own is revoked) and whether it is revoked.
pub(crate) async fn usage(
    State(app): State<Arc<AppState>>,
    _admin: Admin,
    RawQuery(query): RawQuery,
) -> Response {
    let days = match days_asked(query.as_deref()) {
        Ok(days) => days,
        Err(given) => {
            return admin_error(
                StatusCode::BAD_REQUEST,
                codes::INVALID_DAYS,
                format!("days must be a whole number of days (1 to {MAX_DAYS}), not {given:?}."),
            );
        }
    };
    let Some(keys) = &app.config.keys else {
        return no_key_store();
    };
    let today = UsageDay::of(SystemTime::now());
    let first = today.minus(days - 1);
    let listing = match keys.usage_since(first).await {
        Ok(listing) => listing,
        Err(error) => return store_failed(&error),
    };
    let live = match keys.list().await {
        Ok(live) => live,
        Err(error) => return store_failed(&error),
    };
    let live: HashMap<ApiKeyId, &ApiKeyRecord> = live.iter().map(|key| (key.id, key)).collect();
    let rows: Vec<_> = listing
        .rows
        .iter()
        .map(|row| row_json(row, live.get(&row.key).copied()))
        .collect();
    axum::Json(json!({
        "days": days,
        "from": first.date(),
        "to": today.date(),
        "flush_secs": app.config.usage_flush_every.as_secs_f64(),
        "truncated": listing.truncated,
        "usage": rows,
    }))
    .into_response()
}

/// One row as listed; `live` is its key's record if the key is not revoked.
fn row_json(row: &UsageRow, live: Option<&ApiKeyRecord>) -> serde_json::Value {
    json!({
        "key_id": row.key,
        "name": live.map(|key| key.name.as_str()),
        "prefix": live.map(|key| key.prefix.as_str()),
        "revoked": live.is_none(),
        "day": row.day.date(),
        "requests": row.tally.requests,
        "prompt_tokens": row.tally.prompt_tokens,
        "completion_tokens": row.tally.completion_tokens,
    })
}

/// The days a query asks for: [`DEFAULT_DAYS`] without `days`, a whole number
/// clamped to 1..=[`MAX_DAYS`], or the text given when it is not one.
fn days_asked(query: Option<&str>) -> Result<i64, String> {
    let given = query.and_then(|query| {
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(name, _)| name == "days")
            .map(|(_, value)| value.into_owned())
    });
    match given {
        None => Ok(DEFAULT_DAYS),
        Some(text) => match text.trim().parse::<i64>() {
            Ok(days) => Ok(days.clamp(1, MAX_DAYS)),
            Err(_) => Err(text),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_default_to_seven_are_clamped_to_ninety_and_must_be_whole_numbers() {
        assert_eq!(days_asked(None), Ok(7));
        assert_eq!(days_asked(Some("")), Ok(7));
        assert_eq!(days_asked(Some("other=1")), Ok(7));
        assert_eq!(days_asked(Some("days=30")), Ok(30));
        assert_eq!(days_asked(Some("x=y&days=1")), Ok(1));
        assert_eq!(days_asked(Some("days=0")), Ok(1));
        assert_eq!(days_asked(Some("days=-4")), Ok(1));
        assert_eq!(days_asked(Some("days=365")), Ok(90));
        assert_eq!(days_asked(Some("days=week")), Err("week".into()));
        assert_eq!(days_asked(Some("days=1.5")), Err("1.5".into()));
        assert_eq!(days_asked(Some("days=")), Err(String::new()));
        assert!(days_asked(Some("days=99999999999999999999")).is_err());
    }
}

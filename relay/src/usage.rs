//! Requests and tokens per API key, counted in memory as requests end and
//! added to the key database every few seconds.
//!
//! The hub counts each request whose client presented a key when it ends
//! (whatever the outcome): one short lock and one map update, no database
//! work on the request's path. The [`flush`] task takes what was counted every
//! `usage_flush_every` (10 s by default) and once more at shutdown, and adds
//! it to the database's rows (see `keys::usage`).
//!
//! Bounded: the ledger holds one entry per (key, UTC day) counted since the
//! last write that succeeded: normally the keys used in the last flush
//! interval, twice over around midnight. While the database fails, the
//! entries are kept and tried again at each flush, and at [`MAX_ENTRIES`] a
//! request for a (key, day) not yet held is not counted but counted as
//! dropped, which the flusher logs. An entry takes under 100 bytes, so the
//! ledger stays under ~6 MiB whatever happens.

pub(crate) mod flush;

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use modelrelay_core::wire::TokenCounts;

use crate::keys::{ApiKeyId, UsageDay, UsageRow, UsageTally};

/// Most (key, day) entries the ledger holds.
pub(crate) const MAX_ENTRIES: usize = 65_536;

/// Most tokens one request counts for, on each side: far above any model's
/// context, and small enough that sums of them never overflow the database's
/// 64-bit columns.
pub(crate) const MAX_TOKENS_PER_REQUEST: u64 = u32::MAX as u64;

/// Usage counted and not yet written to the database.
#[derive(Debug)]
pub(crate) struct UsageLedger {
    pending: Mutex<Pending>,
    max_entries: usize,
}

#[derive(Debug, Default)]
struct Pending {
    counts: HashMap<(ApiKeyId, UsageDay), UsageTally>,
    /// Requests not counted because the ledger was full.
    dropped: u64,
}

/// What one flush takes from the ledger.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Taken {
    /// One row per (key, day).
    pub(crate) rows: Vec<UsageRow>,
    /// Requests not counted since the last take, because the ledger was full.
    pub(crate) dropped: u64,
}

impl Default for UsageLedger {
    fn default() -> Self {
        Self::with_capacity(MAX_ENTRIES)
    }
}

impl UsageLedger {
    /// An empty ledger of at most `max_entries` (key, day) entries.
    pub(crate) fn with_capacity(max_entries: usize) -> Self {
        Self {
            pending: Mutex::default(),
            max_entries,
        }
    }

    /// Counts one request of `key` that ended on `day`, with the tokens its backend reported.
    /// A count above [`MAX_TOKENS_PER_REQUEST`] (a backend's own number) counts
    /// as that, so no sum in the database can overflow.
    pub(crate) fn record(&self, key: ApiKeyId, day: UsageDay, tokens: Option<&TokenCounts>) {
        let count = |n: Option<u64>| n.unwrap_or(0).min(MAX_TOKENS_PER_REQUEST);
        let tally = UsageTally {
            requests: 1,
            prompt_tokens: count(tokens.and_then(|t| t.prompt_tokens)),
            completion_tokens: count(tokens.and_then(|t| t.completion_tokens)),
        };
        let mut pending = self.lock();
        pending.add(key, day, tally, self.max_entries);
    }

    /// Takes everything counted so far, leaving the ledger empty.
    pub(crate) fn take(&self) -> Taken {
        let mut pending = self.lock();
        let counts = std::mem::take(&mut pending.counts);
        let dropped = std::mem::take(&mut pending.dropped);
        drop(pending);
        let mut rows: Vec<UsageRow> = counts
            .into_iter()
            .map(|((key, day), tally)| UsageRow { key, day, tally })
            .collect();
        // One order on every relay: two relays' transactions then lock shared
        // rows in the same order, so they cannot deadlock on PostgreSQL.
        rows.sort_unstable_by_key(|row| (row.key, row.day));
        Taken { rows, dropped }
    }

    /// Puts back rows a flush could not write, adding them to what was counted since.
    pub(crate) fn put_back(&self, rows: Vec<UsageRow>) {
        let mut pending = self.lock();
        for row in rows {
            pending.add(row.key, row.day, row.tally, self.max_entries);
        }
    }

    /// The (key, day) entries held.
    pub(crate) fn len(&self) -> usize {
        self.lock().counts.len()
    }

    /// The pending counts (a panic elsewhere while holding the lock leaves them usable).
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Pending {
    /// Adds `tally` to its entry; a new entry past `max_entries` is dropped and counted.
    fn add(&mut self, key: ApiKeyId, day: UsageDay, tally: UsageTally, max_entries: usize) {
        let full = self.counts.len() >= max_entries;
        match self.counts.get_mut(&(key, day)) {
            Some(held) => held.add(tally),
            None if full => self.dropped = self.dropped.saturating_add(tally.requests),
            None => {
                self.counts.insert((key, day), tally);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;

    fn tokens(prompt: u64, completion: u64) -> TokenCounts {
        TokenCounts {
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            total_tokens: None,
        }
    }

    fn sorted(mut rows: Vec<UsageRow>) -> Vec<UsageRow> {
        rows.sort_by_key(|row| (row.day, row.key));
        rows
    }

    #[test]
    fn requests_and_tokens_add_up_per_key_and_utc_day_turning_at_midnight() {
        let ledger = UsageLedger::default();
        let midnight = UNIX_EPOCH + Duration::from_secs(1_796_083_200); // 2026-12-01T00:00:00Z
        let late = UsageDay::of(midnight - Duration::from_secs(1));
        let early = UsageDay::of(midnight);
        let (a, b) = (ApiKeyId::new(1), ApiKeyId::new(2));
        ledger.record(a, late, Some(&tokens(5, 7)));
        ledger.record(a, late, None); // a failure: a request, no tokens
        ledger.record(a, early, Some(&tokens(1, 2)));
        ledger.record(b, early, Some(&tokens(3, 0)));
        let taken = ledger.take();
        assert_eq!(taken.dropped, 0);
        let row = |key, day, requests, prompt_tokens, completion_tokens| UsageRow {
            key,
            day,
            tally: UsageTally {
                requests,
                prompt_tokens,
                completion_tokens,
            },
        };
        assert_eq!(
            sorted(taken.rows),
            vec![
                row(a, late, 2, 5, 7),
                row(a, early, 1, 1, 2),
                row(b, early, 1, 3, 0)
            ]
        );
        assert_eq!(ledger.take(), Taken::default(), "taking empties it");
    }

    #[test]
    fn a_backends_huge_token_count_counts_as_the_cap_and_rows_come_out_in_one_order() {
        let ledger = UsageLedger::default();
        let day = UsageDay::from_days(20_000);
        let (a, b) = (ApiKeyId::new(1), ApiKeyId::new(2));
        ledger.record(b, day, Some(&tokens(u64::MAX, 3)));
        ledger.record(a, day, None);
        let rows = ledger.take().rows;
        assert_eq!(
            rows.iter().map(|row| row.key).collect::<Vec<_>>(),
            [a, b],
            "sorted by key and day, as every relay writes them"
        );
        assert_eq!(rows[1].tally.prompt_tokens, MAX_TOKENS_PER_REQUEST);
        assert_eq!(rows[1].tally.completion_tokens, 3);
    }

    #[test]
    fn a_full_ledger_keeps_counting_what_it_holds_and_counts_what_it_drops() {
        let ledger = UsageLedger::with_capacity(2);
        let day = UsageDay::from_days(20_000);
        let (a, b, c) = (ApiKeyId::new(1), ApiKeyId::new(2), ApiKeyId::new(3));
        ledger.record(a, day, None);
        ledger.record(b, day, None);
        ledger.record(c, day, None); // a third entry: no room
        ledger.record(c, day.minus(1), None); // nor for another day
        ledger.record(a, day, None); // an entry it holds still counts
        assert_eq!(ledger.len(), 2);
        let taken = ledger.take();
        assert_eq!(taken.dropped, 2);
        let requests: Vec<_> = sorted(taken.rows.clone())
            .iter()
            .map(|row| (row.key, row.tally.requests))
            .collect();
        assert_eq!(requests, vec![(a, 2), (b, 1)]);

        // A failed write puts its rows back, added to what came since, within the same bound.
        ledger.record(a, day, None);
        ledger.record(c, day, None);
        ledger.put_back(taken.rows);
        assert_eq!(ledger.len(), 2);
        let again = ledger.take();
        assert_eq!(again.dropped, 1, "b's row found no room");
        let requests: Vec<_> = sorted(again.rows)
            .iter()
            .map(|row| (row.key, row.tally.requests))
            .collect();
        assert_eq!(requests, vec![(a, 3), (c, 1)]);
    }
}

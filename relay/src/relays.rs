//! This relay in the list of relays sharing its database: the row it keeps
//! there, and the state each listed relay is shown in.
//!
//! Each relay process with a key store writes its own row when it starts and
//! every [`REFRESH_EVERY`] after (its name, version, and live numbers from the
//! hub), marks it draining when shutdown begins, and deletes it at exit. Each
//! refresh also deletes the rows nobody refreshed for [`FORGET_AFTER`], so the
//! table stays bounded by relay starts. A database error is a warning: the
//! list is for the operator, and serving never waits on it. No relay
//! coordinates anything else through it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use uuid::Uuid;

use crate::exit_writer::ExitWriter;
use crate::hub::Hub;
use crate::keys::{KeyStore, RelayRow};

/// How often a relay rewrites its row.
pub const REFRESH_EVERY: Duration = Duration::from_secs(10);

/// A row not refreshed for this long is shown as `stale`.
pub const STALE_AFTER: Duration = Duration::from_secs(60);

/// A row not refreshed for this long is deleted by whichever relay refreshes next.
pub const FORGET_AFTER: Duration = Duration::from_secs(24 * 60 * 60);

/// Longest relay name.
pub const MAX_RELAY_NAME_CHARS: usize = 100;

/// Who this relay process is in the list.
#[derive(Clone, Debug)]
pub(crate) struct RelayIdentity {
    /// A UUIDv7 drawn at start: a restart is a new relay.
    pub(crate) id: String,
    /// Its name.
    pub(crate) name: String,
    /// When it started.
    pub(crate) started_at: SystemTime,
}

impl RelayIdentity {
    /// A fresh identity named `name`.
    pub(crate) fn new(name: &str) -> Self {
        Self {
            id: Uuid::now_v7().hyphenated().to_string(),
            name: name.to_owned(),
            started_at: SystemTime::now(),
        }
    }

    /// Its row with these live numbers, seen `now`.
    pub(crate) fn row(&self, live: Live, now: SystemTime) -> RelayRow {
        RelayRow {
            id: self.id.clone(),
            name: self.name.clone(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started_at: self.started_at,
            last_seen: now,
            draining: live.draining,
            workers: live.workers,
            open_requests: live.open_requests,
            queue_depth: live.queue_depth,
        }
    }
}

/// A relay's live numbers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Live {
    /// Whether it drains.
    pub(crate) draining: bool,
    /// Registered workers.
    pub(crate) workers: u64,
    /// Requests not ended.
    pub(crate) open_requests: u64,
    /// Requests waiting.
    pub(crate) queue_depth: u64,
}

impl Live {
    /// This relay's numbers now (a stopped hub: draining, nothing open).
    pub(crate) async fn of(hub: &Hub) -> Self {
        match hub.counts().await {
            Some(counts) => Self {
                draining: counts.shutting_down,
                workers: counts.workers as u64,
                open_requests: counts.open_requests as u64,
                queue_depth: counts.queue_depth as u64,
            },
            None => Self {
                draining: true,
                ..Self::default()
            },
        }
    }
}

/// How a listed relay is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RelayState {
    /// Refreshed lately and serving.
    Serving,
    /// Refreshed lately and shutting down.
    Draining,
    /// Not refreshed for [`STALE_AFTER`]: crashed, cut off from the database, or frozen.
    Stale,
}

impl RelayState {
    /// The state of `row` as seen `now`.
    pub(crate) fn of(row: &RelayRow, now: SystemTime) -> Self {
        let unseen = now.duration_since(row.last_seen).unwrap_or_default();
        if unseen > STALE_AFTER {
            Self::Stale
        } else if row.draining {
            Self::Draining
        } else {
            Self::Serving
        }
    }

    /// Its name in the admin API.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Serving => "serving",
            Self::Draining => "draining",
            Self::Stale => "stale",
        }
    }
}

/// The task that keeps this relay's row: started with the server, finished at its exit.
pub(crate) struct Presence(ExitWriter);

impl Presence {
    /// Starts keeping `identity`'s row in `keys`, marked draining once `draining` is cancelled.
    pub(crate) fn start(
        identity: RelayIdentity,
        keys: Arc<KeyStore>,
        hub: Hub,
        draining: CancellationToken,
    ) -> Self {
        Self(ExitWriter::spawn(|done| {
            keep_row(identity, keys, hub, draining, done)
        }))
    }

    /// Deletes the row and ends the task (waiting at most a few seconds).
    pub(crate) async fn finish(self) {
        self.0
            .finish("the relay list's row stays, shown as stale")
            .await;
    }
}

/// Writes the row at once, every [`REFRESH_EVERY`] and when the drain begins; deletes it when `done`.
async fn keep_row(
    identity: RelayIdentity,
    keys: Arc<KeyStore>,
    hub: Hub,
    draining: CancellationToken,
    done: CancellationToken,
) {
    let mut tick = tokio::time::interval(REFRESH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_noted = false;
    loop {
        tokio::select! {
            biased;
            () = done.cancelled() => break,
            () = draining.cancelled(), if !drain_noted => drain_noted = true,
            _ = tick.tick() => {}
        }
        let live = Live::of(&hub).await;
        // A stuck database must not hold up the exit: the write gives way to it.
        tokio::select! {
            biased;
            () = done.cancelled() => break,
            () = refresh(&keys, &identity, live) => {}
        }
    }
    match keys.remove_relay(&identity.id).await {
        Ok(_) => debug!(relay = %identity.id, "removed from the relay list"),
        Err(error) => warn!(%error, "could not remove this relay from the relay list"),
    }
}

/// Writes this relay's row and deletes the rows forgotten; a failure is a warning.
async fn refresh(keys: &KeyStore, identity: &RelayIdentity, live: Live) {
    let now = SystemTime::now();
    if let Err(error) = keys.write_relay(&identity.row(live, now)).await {
        warn!(%error, "could not refresh this relay's row in the relay list");
        return;
    }
    let cutoff = now
        .checked_sub(FORGET_AFTER)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    match keys.forget_relays_seen_before(cutoff).await {
        Ok(0) => {}
        Ok(gone) => debug!(gone, "forgot relays not seen for a day"),
        Err(error) => warn!(%error, "could not prune the relay list"),
    }
}

/// Whether `name` may name a relay: 1 to [`MAX_RELAY_NAME_CHARS`] characters, no control characters.
pub fn is_valid_relay_name(name: &str) -> bool {
    !name.trim().is_empty()
        && name.chars().count() <= MAX_RELAY_NAME_CHARS
        && !name.chars().any(char::is_control)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(last_seen: SystemTime, draining: bool) -> RelayRow {
        RelayIdentity::new("r").row(
            Live {
                draining,
                ..Live::default()
            },
            last_seen,
        )
    }

    #[test]
    fn a_row_is_stale_after_a_minute_unseen_whatever_else_it_says() {
        let now = SystemTime::now();
        let recent = now - Duration::from_secs(59);
        let old = now - Duration::from_secs(61);
        assert_eq!(
            RelayState::of(&row(recent, false), now),
            RelayState::Serving
        );
        assert_eq!(
            RelayState::of(&row(recent, true), now),
            RelayState::Draining
        );
        assert_eq!(RelayState::of(&row(old, false), now), RelayState::Stale);
        assert_eq!(RelayState::of(&row(old, true), now), RelayState::Stale);
        // A clock a little ahead on another machine reads as seen just now.
        let ahead = now + Duration::from_secs(5);
        assert_eq!(RelayState::of(&row(ahead, false), now), RelayState::Serving);
    }

    #[test]
    fn relay_names_are_bounded_printable_text() {
        assert!(is_valid_relay_name("relay-a.example"));
        assert!(!is_valid_relay_name(""));
        assert!(!is_valid_relay_name("  "));
        assert!(!is_valid_relay_name("a\nb"));
        assert!(!is_valid_relay_name(&"x".repeat(101)));
        assert!(is_valid_relay_name(&"x".repeat(100)));
    }
}

//! The task that adds the counted usage to the key database: every flush
//! interval, and once more when the relay stops, after its last request ended.
//!
//! A failed write puts its rows back in the ledger, to be tried again at the
//! next tick; the first failure of a streak is a warning and its end a line
//! of its own, so a database down for an hour costs two lines, not 360.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::exit_writer::ExitWriter;
use crate::keys::KeyStore;

use super::{MAX_ENTRIES, UsageLedger};

/// The running task: started with the server, finished once its hub has stopped.
pub(crate) struct UsageFlusher(ExitWriter);

impl UsageFlusher {
    /// Starts adding what `ledger` counts to `keys`, every `every`.
    pub(crate) fn start(ledger: Arc<UsageLedger>, keys: Arc<KeyStore>, every: Duration) -> Self {
        let writer = Writer {
            ledger,
            keys,
            every,
            failing: 0,
            dropped: 0,
        };
        Self(ExitWriter::spawn(|done| writer.run(done)))
    }

    /// Writes what is left and ends the task (waiting at most a few seconds).
    pub(crate) async fn finish(self) {
        self.0
            .finish("the last seconds of API-key usage are lost")
            .await;
    }
}

/// The flushing loop's state.
struct Writer {
    ledger: Arc<UsageLedger>,
    keys: Arc<KeyStore>,
    every: Duration,
    /// Writes failed in a row.
    failing: u64,
    /// Requests the full ledger could not count, not yet reported.
    dropped: u64,
}

impl Writer {
    /// Writes every `every` until `done`, then once more.
    async fn run(mut self, done: CancellationToken) {
        // `interval` panics on zero; the config field is public.
        let mut tick = tokio::time::interval(self.every.max(Duration::from_millis(1)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = done.cancelled() => break,
                _ = tick.tick() => self.write().await,
            }
        }
        self.write().await;
        let left = self.ledger.len();
        if self.failing > 0 && left > 0 {
            warn!(
                entries = left,
                "API-key usage could not be written at exit; what was counted since the last write is lost"
            );
        }
    }

    /// Adds what was counted to the database, or puts it back.
    async fn write(&mut self) {
        let taken = self.ledger.take();
        self.dropped = self.dropped.saturating_add(taken.dropped);
        if taken.rows.is_empty() {
            return;
        }
        match self.keys.add_usage(&taken.rows).await {
            Ok(()) => {
                if self.failing > 0 {
                    info!(
                        failed_writes = self.failing,
                        "API-key usage is written to the key database again"
                    );
                    self.failing = 0;
                }
                if self.dropped > 0 {
                    warn!(
                        requests = self.dropped,
                        max_entries = MAX_ENTRIES,
                        "some requests' API-key usage was not counted: too many key-days waited to be written"
                    );
                    self.dropped = 0;
                }
            }
            Err(error) => {
                let entries = taken.rows.len();
                self.ledger.put_back(taken.rows);
                if self.failing == 0 {
                    warn!(
                        %error,
                        entries,
                        every_secs = self.every.as_secs_f64(),
                        "could not write API-key usage to the key database; it is kept in memory and tried again"
                    );
                }
                self.failing = self.failing.saturating_add(1);
            }
        }
    }
}

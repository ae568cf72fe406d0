//! The hub: the one task that owns the relay core and carries out what it decides.
//!
//! HTTP handlers and worker links send [`Command`]s; the hub feeds them to the
//! [`Relay`], then routes its outputs: frames to
//! worker links, chunks and ends to waiting responses (through each one's
//! [`response_queue`]), closes to links. Deadlines come from `Relay::poll_timeout`.

mod coalesce;
mod commands;
mod links;
mod request;
pub(crate) mod response_queue;
mod task;
mod views;

use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use modelrelay_core::relay::{Relay, RelayConfig};
use modelrelay_core::{ModelName, ProviderId, WorkerId};
use tokio::sync::{mpsc, oneshot};

use crate::operator::Metrics;

pub(crate) use commands::{Command, LinkCommand, Transport};
pub(crate) use views::{Counts, Snapshot, WorkerView};

use coalesce::Coalesced;
use task::HubTask;

/// A handle to send commands to the hub.
#[derive(Clone)]
pub(crate) struct Hub {
    commands: mpsc::UnboundedSender<Command>,
    /// `/health` and `/metrics` callers share the counts query in flight.
    counts: Arc<Coalesced<Counts>>,
    /// `/v1/models` callers share the models query in flight.
    models: Arc<Coalesced<Arc<Vec<ModelName>>>>,
}

impl Hub {
    /// Starts the hub task.
    pub(crate) fn spawn(
        config: RelayConfig,
        provider: ProviderId,
        max_client_buffer: usize,
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        // Not bounded yet: link readers push worker frames as fast as workers
        // send them; bounding it with per-request windows is issue 13.
        let (commands, inbox) = mpsc::unbounded_channel();
        let task = HubTask::new(Relay::new(config), provider, max_client_buffer, metrics);
        let hub = Self {
            commands,
            counts: Arc::new(Coalesced::new()),
            models: Arc::new(Coalesced::new()),
        };
        (hub, tokio::spawn(task.run(inbox)))
    }

    /// Sends a command; `false` if the hub has stopped.
    pub(crate) fn send(&self, command: Command) -> bool {
        self.commands.send(command).is_ok()
    }

    /// The relay's current numbers, if the hub still runs.
    pub(crate) async fn snapshot(&self) -> Option<Snapshot> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Snapshot(reply));
        answer.await.ok()
    }

    /// The relay's numbers without lists, if the hub still runs (shared with
    /// the callers of a query already in flight).
    pub(crate) async fn counts(&self) -> Option<Counts> {
        self.counts
            .get(|| {
                let (reply, answer) = oneshot::channel();
                self.send(Command::Counts(reply));
                async move { answer.await.ok() }.boxed()
            })
            .await
    }

    /// The models served now, if the hub still runs (shared with the callers
    /// of a query already in flight).
    pub(crate) async fn models(&self) -> Option<Arc<Vec<ModelName>>> {
        self.models
            .get(|| {
                let (reply, answer) = oneshot::channel();
                self.send(Command::Models(reply));
                async move { answer.await.ok().map(Arc::new) }.boxed()
            })
            .await
    }

    /// The connected workers, if the hub still runs.
    pub(crate) async fn workers(&self) -> Option<Vec<WorkerView>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Workers(reply));
        answer.await.ok()
    }

    /// Drains one worker; `Some(false)` if no such worker is connected, `None` if the hub stopped.
    pub(crate) async fn drain_worker(&self, worker: WorkerId, timeout: Duration) -> Option<bool> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::DrainWorker {
            worker,
            timeout,
            reply,
        });
        answer.await.ok()
    }
}

//! The hub: the one task that owns the relay core and carries out what it decides.
//!
//! HTTP handlers and worker links send [`Command`]s; the hub feeds them to the
//! [`Relay`], then routes its outputs: frames to
//! worker links, chunks and ends to waiting responses (through each one's
//! [`response_queue`]), closes to links. Deadlines come from `Relay::poll_timeout`.
//!
//! Three ways in, each bounded, and the hub waits on none of them:
//! - the inbox, a channel of [`INBOX_CAPACITY`] commands; handlers and link
//!   read loops wait for room (a link's `WorkerGone` goes the same way, behind
//!   its frames, so it cannot overtake them);
//! - the [client board](client_board), a set with one place per open request,
//!   for bytes clients took and clients leaving: posting never waits or fails;
//! - the undeliverable channel, for request frames a link writer could not
//!   send, from a callback that cannot wait: at most one per request frame the
//!   hub put on a link, so bounded by the requests dispatched and not ended.

mod client_board;
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
use modelrelay_core::{ModelName, ProviderId, RequestId, WireRequestId, WorkerId};
use tokio::sync::{mpsc, oneshot};

use crate::operator::Metrics;

pub(crate) use commands::{Command, LinkCommand, Transport};
pub(crate) use views::{Counts, Snapshot, WorkerView};

use client_board::ClientBoard;
use coalesce::Coalesced;
use response_queue::{ResponseReceiver, ResponseSender};
use task::{HubTask, Inlets};

/// Commands the hub's inbox holds before senders wait.
const INBOX_CAPACITY: usize = 1024;

/// A request frame a link's writer could not send (too large for the link).
pub(crate) struct Undeliverable {
    /// The link.
    pub(crate) worker: WorkerId,
    /// The request whose frame it was.
    pub(crate) request: WireRequestId,
    /// Why.
    pub(crate) detail: String,
}

/// A handle to send commands to the hub.
#[derive(Clone)]
pub(crate) struct Hub {
    commands: mpsc::Sender<Command>,
    /// Bounded by construction: see the module's notes.
    undeliverable: mpsc::UnboundedSender<Undeliverable>,
    board: Arc<ClientBoard>,
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
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, inbox) = mpsc::channel(INBOX_CAPACITY);
        // Unbounded by type, bounded by use: only a link writer's callback about a
        // request frame the hub put on its link sends here, at most once per
        // frame, so it never holds more than the requests dispatched and not ended.
        let (undeliverable, undelivered) = mpsc::unbounded_channel();
        let board = Arc::new(ClientBoard::default());
        let task = HubTask::new(Relay::new(config), provider, metrics);
        let inlets = Inlets {
            inbox,
            undelivered,
            board: Arc::clone(&board),
        };
        let hub = Self {
            commands,
            undeliverable,
            board,
            counts: Arc::new(Coalesced::new()),
            models: Arc::new(Coalesced::new()),
        };
        (hub, tokio::spawn(task.run(inlets)))
    }

    /// Sends a command, waiting while the inbox is full; `false` if the hub has stopped.
    pub(crate) async fn send(&self, command: Command) -> bool {
        modelrelay_transports::send_or_wait(&self.commands, command)
            .await
            .is_ok()
    }

    /// Tells the hub a request frame could not be sent; never waits.
    pub(crate) fn undeliverable(&self, undeliverable: Undeliverable) {
        let _ = self.undeliverable.send(undeliverable);
    }

    /// A new response queue for `request`, whose client's news goes on the hub's board.
    pub(crate) fn response_queue(&self, request: RequestId) -> (ResponseSender, ResponseReceiver) {
        response_queue::response_queue(request, Arc::clone(&self.board))
    }

    /// The relay's current numbers, if the hub still runs.
    pub(crate) async fn snapshot(&self) -> Option<Snapshot> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Snapshot(reply)).await;
        answer.await.ok()
    }

    /// The relay's numbers without lists, if the hub still runs (shared with
    /// the callers of a query already in flight).
    pub(crate) async fn counts(&self) -> Option<Counts> {
        self.counts
            .get(|| {
                let commands = self.commands.clone();
                async move {
                    let (reply, answer) = oneshot::channel();
                    commands.send(Command::Counts(reply)).await.ok()?;
                    answer.await.ok()
                }
                .boxed()
            })
            .await
    }

    /// The models served now, if the hub still runs (shared with the callers
    /// of a query already in flight).
    pub(crate) async fn models(&self) -> Option<Arc<Vec<ModelName>>> {
        self.models
            .get(|| {
                let commands = self.commands.clone();
                async move {
                    let (reply, answer) = oneshot::channel();
                    commands.send(Command::Models(reply)).await.ok()?;
                    answer.await.ok().map(Arc::new)
                }
                .boxed()
            })
            .await
    }

    /// The connected workers, if the hub still runs.
    pub(crate) async fn workers(&self) -> Option<Vec<WorkerView>> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Workers(reply)).await;
        answer.await.ok()
    }

    /// Drains one worker; `Some(false)` if no such worker is connected, `None` if the hub stopped.
    pub(crate) async fn drain_worker(&self, worker: WorkerId, timeout: Duration) -> Option<bool> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::DrainWorker {
            worker,
            timeout,
            reply,
        })
        .await;
        answer.await.ok()
    }
}

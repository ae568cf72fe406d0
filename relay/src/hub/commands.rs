//! What the hub is asked to do: the commands handlers and worker links send it.

use std::time::Duration;

use modelrelay_core::relay::{AuthOutcome, NewRequest};
use modelrelay_core::wire::{LinkFlow, ServerMessage, WireVersion, WorkerMessage};
use modelrelay_core::{ModelName, WorkerId};
use modelrelay_transports::{Outgoing, ReadLimit};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::clients::InferenceRoute;
use crate::keys::ApiKeyId;
use crate::request_id::RequestIds;

use super::response_queue::ResponseSender;
use super::views::{Counts, Snapshot, WorkerView};

/// How a worker's link reaches the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// A WebSocket on the HTTP port.
    WebSocket,
    /// A QUIC connection.
    Quic,
}

impl Transport {
    /// Its name in the admin API.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::WebSocket => "websocket",
            Self::Quic => "quic",
        }
    }
}

/// Something for the hub to do.
pub(crate) enum Command {
    /// A worker link is open.
    WorkerConnected {
        worker: WorkerId,
        wire: WireVersion,
        /// Whether the link carries `window_update`s.
        flow: LinkFlow,
        auth: AuthOutcome,
        name_hint: String,
        transport: Transport,
        /// The link's outbound queue, of `workers::link::LINK_QUEUE` items, which
        /// a healthy link never fills (see there). The hub never waits for room: a
        /// full queue closes the link (`HubTask::link_queue_full`).
        outbound: mpsc::Sender<LinkCommand>,
        /// Cancelled when the hub closes the link; the link task then ends within a bound.
        closing: CancellationToken,
        /// The link reader's frame limit, raised once the worker's `register` is accepted.
        reads: ReadLimit,
    },
    /// A frame from a worker.
    WorkerFrame {
        worker: WorkerId,
        message: WorkerMessage,
    },
    /// A frame from a worker that did not decode.
    WorkerInvalid { worker: WorkerId, detail: String },
    /// A worker link closed; sent after its last frame, on the same inbox.
    WorkerGone { worker: WorkerId },
    /// A client request.
    Request {
        request: NewRequest,
        /// The route it came in on.
        route: InferenceRoute,
        /// What it is called outside the relay, for its log line.
        ids: RequestIds,
        /// The API key it came with, whose usage it counts (with `--require-api-keys`).
        key: Option<ApiKeyId>,
        responder: ResponseSender,
    },
    /// Numbers and models for `/admin/stats`.
    Snapshot(oneshot::Sender<Snapshot>),
    /// Numbers alone, for `/health` and `/metrics`.
    Counts(oneshot::Sender<Counts>),
    /// The models served now, for `/v1/models`.
    Models(oneshot::Sender<Vec<ModelName>>),
    /// The connected workers, for `/admin/workers`.
    Workers(oneshot::Sender<Vec<WorkerView>>),
    /// Drain one worker; answers whether it was connected.
    DrainWorker {
        worker: WorkerId,
        timeout: Duration,
        reply: oneshot::Sender<bool>,
    },
    /// Stop taking work and drain every worker.
    Shutdown { drain: Duration },
}

/// What a worker link's writer is asked to do.
pub(crate) type LinkCommand = Outgoing<ServerMessage>;

//! What drivers exchange with the relay: its inputs, outputs, errors and read-only views.

use std::time::{Duration, Instant};

use bytes::Bytes;

#[cfg(doc)]
use super::{CLIENT_REPORT_EVERY, Relay, RelayConfig};
use super::{CloseReason, Outcome};
use crate::ids::{ModelName, ProviderId, RequestId, WorkerId};
use crate::wire::{Headers, LinkFlow, ServerMessage, WireVersion, WorkerMessage};

/// Whether a worker presented the right secret; the driver checks it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The secret matched.
    Accepted,
    /// The secret was missing or wrong.
    Rejected,
}

/// A client request as the relay needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewRequest {
    /// Id the driver chose; unique among live requests.
    pub id: RequestId,
    /// The pool of workers that may serve it.
    pub provider: ProviderId,
    /// The model the client asked for.
    pub model: ModelName,
    /// Backend path, for instance `/v1/chat/completions`.
    pub endpoint_path: String,
    /// Whether the client asked for a stream.
    pub streaming: bool,
    /// The client's JSON body, unchanged.
    pub body: Bytes,
    /// Client headers to forward to the backend.
    pub headers: Headers,
    /// The one worker that may serve it (an operator's test of that worker):
    /// it is never queued and never moved to another worker.
    pub pinned_to: Option<WorkerId>,
}

/// Something that happened, for [`Relay::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Input {
    /// A worker link opened; the driver checked its secret.
    WorkerConnected {
        /// Id the driver chose for the link; unique among live links.
        worker: WorkerId,
        /// The pool it joins.
        provider: ProviderId,
        /// The encoding the link speaks.
        wire: WireVersion,
        /// Whether the link carries `window_update`s.
        flow: LinkFlow,
        /// Whether its secret was right.
        auth: AuthOutcome,
    },
    /// A frame from a worker, decoded.
    WorkerFrame {
        /// The link it came on.
        worker: WorkerId,
        /// The message.
        message: WorkerMessage,
    },
    /// A frame from a worker that could not be decoded.
    WorkerFrameInvalid {
        /// The link it came on.
        worker: WorkerId,
        /// What was wrong with it.
        detail: String,
    },
    /// A worker link closed (peer gone, I/O error).
    WorkerDisconnected {
        /// The link that closed.
        worker: WorkerId,
    },
    /// A client request arrived.
    RequestArrived(NewRequest),
    /// The client of a request went away.
    ClientGone {
        /// The request whose client left.
        request: RequestId,
    },
    /// The client of a request went away after its stream's final event reached
    /// it: the answer is whole, so the worker's completion is awaited (for
    /// [`RelayConfig::finished_stream_grace`]) rather than the call cancelled.
    ClientDone {
        /// The request whose client left.
        request: RequestId,
    },
    /// The client's connection of a request has taken `total` answer bytes in
    /// all (cumulative; reported every [`CLIENT_REPORT_EVERY`] bytes taken).
    ClientTook {
        /// The request whose client took bytes.
        request: RequestId,
        /// Answer bytes taken since the request arrived.
        total: u64,
    },
    /// The client of a request reads its stream too slowly: stop it rather than buffer without end.
    ClientTooSlow {
        /// The request whose client lags.
        request: RequestId,
    },
    /// Stop giving a worker new work; close its link once it is idle or at the deadline.
    DrainWorker {
        /// The worker to drain.
        worker: WorkerId,
        /// How long its running requests may take.
        timeout: Duration,
        /// Why, as told to the worker.
        reason: Option<String>,
    },
    /// Ask a worker to re-read its backend's models.
    RefreshModels {
        /// The worker to ask.
        worker: WorkerId,
    },
    /// Take no new requests, fail the queued ones, drain every worker.
    Shutdown {
        /// How long running requests may take.
        drain_timeout: Duration,
    },
}

/// Something for the driver to do, from [`Relay::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a frame on a worker's link.
    SendToWorker {
        /// The link.
        worker: WorkerId,
        /// The frame.
        message: ServerMessage,
    },
    /// Close a worker's link; nothing more is sent on it, and its later frames are ignored.
    CloseWorker {
        /// The link.
        worker: WorkerId,
        /// Why.
        reason: CloseReason,
    },
    /// Bytes for a request's client, in order, to be written unchanged.
    StreamChunk {
        /// The request.
        request: RequestId,
        /// Already-framed SSE bytes.
        chunk: Bytes,
    },
    /// A request ended; nothing more about it follows.
    RequestEnded {
        /// The request.
        request: RequestId,
        /// How it ended.
        outcome: Outcome,
    },
}

/// A mistake by the driver: an input that names ids in a way the relay cannot accept.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InputError {
    /// A request id that is still live was used again.
    #[error("request id {0} is already in use")]
    DuplicateRequest(RequestId),
    /// A worker id that is still live was used again.
    #[error("worker id {0} is already in use")]
    DuplicateWorker(WorkerId),
}

/// Counters of things that happened, for metrics and tests.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStats {
    /// Requests handed to a worker (a requeued request counts each time).
    pub dispatched: u64,
    /// Requests put back in the queue after losing their worker.
    pub requeues: u64,
    /// Chunks or completions that arrived after their request ended, dropped.
    pub late_frames: u64,
    /// Frames about requests the worker was never given.
    pub protocol_violations: u64,
    /// Requests that ended with a response.
    pub completed: u64,
    /// Requests that ended with a failure.
    pub failed: u64,
    /// Requests that ended because the client left.
    pub cancelled: u64,
    /// `window_update`s sent to windowed workers.
    pub window_updates: u64,
}

/// Where a live request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestStatus {
    /// Waiting for a worker.
    Queued,
    /// Running on a worker.
    Assigned {
        /// The worker.
        worker: WorkerId,
        /// Whether chunks went to the client already.
        streamed: bool,
    },
}

/// A read-only look at one connected worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerInfo<'a> {
    /// Link id.
    pub id: WorkerId,
    /// The pool it serves.
    pub provider: &'a ProviderId,
    /// Name it registered with (empty before registration).
    pub name: &'a str,
    /// Models it serves, after sanitizing.
    pub models: &'a [ModelName],
    /// Requests this relay has running on it.
    pub in_flight: usize,
    /// Its `max_concurrent`.
    pub max_concurrent: u32,
    /// Load it reported beyond this relay's requests.
    pub external_load: u32,
    /// Whether it has registered.
    pub registered: bool,
    /// Whether it is draining.
    pub draining: bool,
    /// When the link opened.
    pub connected_at: Instant,
    /// The encoding of its link.
    pub wire: WireVersion,
    /// Whether its link carries `window_update`s.
    pub flow: LinkFlow,
}

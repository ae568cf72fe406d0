//! What drivers exchange with the worker session: its inputs and outputs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::Liveness;
#[cfg(doc)]
use super::WorkerSession;
use crate::ids::{LinkId, ModelName, WireRequestId};
use crate::wire::{
    CancelReason, Headers, LinkFlow, RequestFrame, ServerMessage, TokenCounts, WireVersion,
    WorkerMessage,
};

/// A request as the worker knows it: the link it came on and the id that
/// link's relay gave it (two relays may give the same id).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkRequest {
    /// The link it came on.
    pub link: LinkId,
    /// Its id on that link.
    pub id: WireRequestId,
}

impl LinkRequest {
    /// Request `id` of link `link`.
    pub fn new(link: LinkId, id: WireRequestId) -> Self {
        Self { link, id }
    }
}

impl std::fmt::Display for LinkRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (link {})", self.id, self.link)
    }
}

/// Something that happened, for [`WorkerSession::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionInput {
    /// The link asked for by [`SessionOutput::Connect`] is open.
    LinkUp {
        /// Which link.
        link: LinkId,
        /// The encoding it speaks.
        wire: WireVersion,
        /// Whether the relay paces each answer with `window_update`s (a v2.1 link).
        flow: LinkFlow,
        /// Who judges whether it is alive: the session (WebSocket) or the transport (QUIC).
        liveness: Liveness,
    },
    /// The link brought a sign of life that is no frame (a WebSocket pong or ping).
    SignOfLife {
        /// Which link.
        link: LinkId,
    },
    /// The link closed, or could not be opened.
    LinkDown {
        /// Which link.
        link: LinkId,
    },
    /// The server refused the worker (a wrong secret or an unknown provider:
    /// HTTP 401, 403 or 429 at the upgrade, or a close with 1008); with
    /// `retry_after` (its `Retry-After`) the next attempt waits that long
    /// instead of the backoff's delay.
    LinkRefused {
        /// Which link.
        link: LinkId,
        /// How long the server asked the worker to wait, if it said.
        retry_after: Option<Duration>,
    },
    /// A frame from a relay.
    Frame {
        /// The link it came on.
        link: LinkId,
        /// The frame.
        message: ServerMessage,
    },
    /// Response bytes from the backend for a request.
    BackendChunk {
        /// The request.
        request: LinkRequest,
        /// The bytes, unchanged.
        chunk: Bytes,
    },
    /// The backend finished a request.
    BackendComplete {
        /// The request.
        request: LinkRequest,
        /// HTTP status.
        status_code: u16,
        /// Response headers to pass on.
        headers: Headers,
        /// Body of a non-streaming response.
        body: Bytes,
        /// Token usage, if the backend said.
        token_counts: Option<TokenCounts>,
    },
    /// The backend call failed (unreachable, broken stream).
    BackendFailed {
        /// The request.
        request: LinkRequest,
        /// Machine-readable code.
        code: String,
        /// Explanation.
        message: String,
    },
    /// The link writer has handed on `total` cost (see [`chunk_cost`](super::chunk_cost)),
    /// in all, of a request's `response_chunk`s.
    LinkWrote {
        /// The request.
        request: LinkRequest,
        /// Cumulative cost written since the request started.
        total: u64,
    },
    /// The backend's model list changed (discovery or a refresh).
    ModelsChanged(Vec<String>),
    /// Local shutdown (SIGTERM): finish running requests, then exit.
    Shutdown,
}

/// Something for the driver to do, from [`WorkerSession::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutput {
    /// Open a link to a relay.
    Connect {
        /// Which link.
        link: LinkId,
    },
    /// Send a frame to a relay.
    Send {
        /// The link to send it on.
        link: LinkId,
        /// The frame.
        message: WorkerMessage,
    },
    /// Close a link; report [`SessionInput::LinkDown`] once it is closed.
    CloseLink {
        /// Which link.
        link: LinkId,
    },
    /// Ask a relay for a sign of life (a WebSocket ping, which any peer answers
    /// with a pong); report what arrives with [`SessionInput::SignOfLife`].
    ProbeLink {
        /// Which link.
        link: LinkId,
    },
    /// Call the backend for a request.
    StartRequest {
        /// The request.
        request: LinkRequest,
        /// What the relay asked for.
        frame: Arc<RequestFrame>,
    },
    /// Stop the backend call of a request; its results are no longer wanted.
    AbortRequest {
        /// The request.
        request: LinkRequest,
        /// Why.
        reason: CancelReason,
    },
    /// The backend call of a request may keep reading while the cost it has read
    /// (see [`chunk_cost`](super::chunk_cost)) is below `up_to`.
    AllowBackendRead {
        /// The request.
        request: LinkRequest,
        /// Cumulative cost the call may read up to (never lower than an earlier one).
        up_to: u64,
    },
    /// Re-read the backend's models and report them with [`SessionInput::ModelsChanged`].
    RefreshModels,
    /// A relay accepted the registration.
    Registered {
        /// Which link.
        link: LinkId,
        /// The id the server gave the link (opaque text).
        worker_id: String,
        /// The models it routes here.
        models: Vec<ModelName>,
        /// What it changed in the list.
        warnings: Vec<String>,
    },
    /// A link's next connection attempt is scheduled.
    Reconnecting {
        /// Which link.
        link: LinkId,
        /// Delay before it.
        after: Duration,
    },
    /// Local shutdown is complete: the process may exit.
    Exit,
}

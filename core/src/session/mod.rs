//! The worker-side state machine: link lifecycle, registration, admission, cancel routing, drain.
//!
//! The driver dials when asked ([`SessionOutput::Connect`]), reports the link
//! going up or down, passes server frames and backend results in, and carries
//! out the outputs: frames to send, backend calls to start or abort.

mod backend_side;
mod config;
mod failure;
mod liveness;
mod local_side;
mod read_window;
mod server_side;
mod text_carry;
mod types;

use std::collections::VecDeque;
use std::time::Instant;

use rustc_hash::FxHashMap;

pub use backend_side::BACKEND_OUTPUT_NOT_UTF8;
pub use config::SessionConfig;
pub use failure::failure_message;
pub use liveness::{LINK_PROBE_AFTER, LINK_PROBE_TIMEOUT, Liveness};
pub use read_window::{CHUNK_COST_OVERHEAD, DEFAULT_LINK_WRITE_WINDOW, chunk_cost};
pub use types::{SessionInput, SessionOutput};

use liveness::{LinkWatch, Verdict};
use read_window::ReadWindow;
use text_carry::TextCarry;

use crate::backoff::Backoff;
use crate::ids::WireRequestId;
use crate::wire::{CancelReason, LinkFlow, ResponseComplete, WireVersion, WorkerMessage};

/// Where the session's link to the server is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// No link; dial at the instant, if any.
    Down { reconnect_at: Option<Instant> },
    /// Asked the driver to dial.
    Connecting,
    /// Link open, `register` sent, waiting for the ack (until the deadline, if any).
    Registering { deadline: Option<Instant> },
    /// Registered: serving.
    Ready,
    /// Asked the driver to close the link.
    Closing,
}

/// The worker's side of the protocol. Pure: no I/O, no clock, no global randomness.
#[derive(Debug)]
pub struct WorkerSession {
    config: SessionConfig,
    backoff: Backoff,
    link: LinkState,
    models: Vec<String>,
    /// The server has the current `models` (else a `models_update` is owed once registered).
    models_sent: bool,
    /// The requests running on the backend, each with its read window.
    running: FxHashMap<WireRequestId, ReadWindow>,
    /// The encoding of the current link, once it is up.
    wire: Option<WireVersion>,
    /// Whether the current link's relay grants answer windows.
    flow: LinkFlow,
    /// On a v1 link, the start of a UTF-8 character a backend chunk split, per request.
    text_carry: TextCarry,
    /// The server asked this worker to drain; drop the link ourselves at this instant.
    server_drain_deadline: Option<Instant>,
    /// The server asked this worker to drain (until the link ends).
    server_draining: bool,
    /// When to probe the link, and when to give it up (a WebSocket link only).
    watch: LinkWatch,
    /// Local shutdown in progress; abort what still runs at this instant.
    stop_deadline: Option<Instant>,
    stopping: bool,
    exited: bool,
    /// What to do next. Bounded: the driver drains it after every input, and
    /// one input yields at most one output per running request plus a few
    /// (a shutdown, the largest, aborts each of at most `max_concurrent`).
    outputs: VecDeque<SessionOutput>,
}

impl WorkerSession {
    /// A session that asks to connect at once.
    pub fn new(config: SessionConfig) -> Self {
        let mut outputs = VecDeque::new();
        outputs.push_back(SessionOutput::Connect);
        Self {
            backoff: Backoff::new(config.backoff, config.jitter_seed),
            models: local_side::advertisable(config.models.clone()),
            config,
            link: LinkState::Connecting,
            models_sent: false,
            running: FxHashMap::default(),
            wire: None,
            flow: LinkFlow::Unwindowed,
            text_carry: TextCarry::default(),
            server_drain_deadline: None,
            server_draining: false,
            watch: LinkWatch::default(),
            stop_deadline: None,
            stopping: false,
            exited: false,
            outputs,
        }
    }

    /// Feeds one event in.
    pub fn handle(&mut self, now: Instant, input: SessionInput) {
        if self.exited {
            return;
        }
        match input {
            SessionInput::LinkUp {
                wire,
                flow,
                liveness,
            } => self.on_link_up(now, (wire, flow), liveness),
            SessionInput::SignOfLife => self.on_sign_of_life(now),
            SessionInput::LinkDown => self.on_link_down(now, None),
            SessionInput::LinkRefused { retry_after } => self.on_link_down(now, retry_after),
            SessionInput::Frame(message) => self.on_frame(now, message),
            SessionInput::BackendChunk { request, chunk } => self.on_backend_chunk(request, chunk),
            SessionInput::BackendComplete {
                request,
                status_code,
                headers,
                body,
                token_counts,
            } => self.on_backend_complete(ResponseComplete {
                request_id: request,
                status_code,
                headers,
                body,
                token_counts,
            }),
            SessionInput::BackendFailed {
                request,
                code,
                message,
            } => self.on_backend_failed(request, code, message),
            SessionInput::LinkWrote { request, total } => self.on_link_wrote(request, total),
            SessionInput::ModelsChanged(models) => self.on_models_changed(models),
            SessionInput::Shutdown => self.on_shutdown(now),
        }
    }

    /// The next thing for the driver to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.outputs.pop_front()
    }

    /// When [`WorkerSession::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link_deadline = match self.link {
            LinkState::Down { reconnect_at } => reconnect_at,
            LinkState::Registering { deadline } => deadline,
            _ => None,
        };
        [
            link_deadline,
            self.server_drain_deadline,
            self.watch.deadline(),
            self.stop_deadline,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Lets time pass: reconnects, registration and drain deadlines.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        if self.stop_deadline.is_some_and(|at| at <= now) {
            self.stop_deadline = None;
            self.abort_all(CancelReason::ServerShutdown);
            self.close_link();
        }
        if self.server_drain_deadline.is_some_and(|at| at <= now) {
            self.server_drain_deadline = None;
            self.close_link();
        }
        match self.watch.on_timeout(now) {
            Verdict::Alive => {}
            Verdict::Probe => self.outputs.push_back(SessionOutput::ProbeLink),
            // A half-open link (a partition, a dropped NAT entry) never reports itself.
            Verdict::Dead => self.close_link(),
        }
        match self.link {
            LinkState::Down {
                reconnect_at: Some(at),
            } if at <= now => {
                self.link = LinkState::Connecting;
                self.outputs.push_back(SessionOutput::Connect);
            }
            LinkState::Registering {
                deadline: Some(deadline),
            } if deadline <= now => self.close_link(),
            _ => {}
        }
    }

    /// Requests running on the backend now.
    pub fn current_load(&self) -> u32 {
        u32::try_from(self.running.len()).unwrap_or(u32::MAX)
    }

    /// Whether the session is registered and taking work.
    pub fn is_serving(&self) -> bool {
        self.link == LinkState::Ready && !self.server_draining && !self.stopping
    }

    /// Whether local shutdown has completed.
    pub fn has_exited(&self) -> bool {
        self.exited
    }

    /// Whether a link is up (registering or registered).
    fn linked(&self) -> bool {
        matches!(self.link, LinkState::Registering { .. } | LinkState::Ready)
    }

    /// Queues a frame for the server.
    fn send(&mut self, message: WorkerMessage) {
        self.outputs.push_back(SessionOutput::Send(message));
    }

    /// Asks the driver to close the link, if one is up or being opened.
    fn close_link(&mut self) {
        if matches!(
            self.link,
            LinkState::Connecting | LinkState::Registering { .. } | LinkState::Ready
        ) {
            // Nothing sent from now on would arrive: stop the backend calls at once.
            self.abort_all(CancelReason::WorkerDisconnect);
            self.watch = LinkWatch::default();
            self.link = LinkState::Closing;
            self.outputs.push_back(SessionOutput::CloseLink);
        }
    }

    /// Closes the link once a local shutdown has nothing left running.
    fn after_request_ended(&mut self) {
        if self.stopping && self.running.is_empty() {
            self.close_link();
        }
    }

    /// Stops every backend call, in request id order.
    fn abort_all(&mut self, reason: CancelReason) {
        self.text_carry.clear();
        let mut running: Vec<WireRequestId> = self.running.drain().map(|(id, _)| id).collect();
        running.sort();
        for request in running {
            self.outputs.push_back(SessionOutput::AbortRequest {
                request,
                reason: reason.clone(),
            });
        }
    }

    /// Local shutdown is complete.
    fn exit(&mut self) {
        self.exited = true;
        self.stop_deadline = None;
        self.outputs.push_back(SessionOutput::Exit);
    }
}

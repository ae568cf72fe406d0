//! The worker-side state machine: link lifecycle, registration, admission, cancel routing, drain.
//!
//! The driver dials when asked ([`SessionOutput::Connect`]), reports the link
//! going up or down, passes server frames and backend results in, and carries
//! out the outputs: frames to send, backend calls to start or abort.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};

use crate::backoff::{Backoff, BackoffConfig};
use crate::ids::{ModelName, WireRequestId};
use crate::wire::{
    CancelReason, Headers, ModelsUpdate, Pong, REFUSED_AT_CAPACITY, REFUSED_DRAINING, Register,
    RequestFrame, ResponseChunk, ResponseComplete, ServerMessage, TokenCounts, WireVersion,
    WorkerError, WorkerMessage,
};

/// `error` code for a request whose backend output is not UTF-8 on a v1 link.
pub const BACKEND_OUTPUT_NOT_UTF8: &str = "backend_output_not_utf8";

/// Who the worker is and how it behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Name sent in `register`.
    pub worker_name: String,
    /// Models advertised at start.
    pub models: Vec<String>,
    /// Requests run at once.
    pub max_concurrent: u32,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// Seed of the reconnect jitter.
    pub jitter_seed: u64,
    /// How long to wait for `register_ack` before dropping the link.
    pub register_timeout: Duration,
    /// How long running requests may take after a local shutdown.
    pub shutdown_timeout: Duration,
    /// Extra time past the server's drain timeout before the worker drops the link itself.
    pub drain_grace: Duration,
    /// How long the link may stay silent (the relay pings every 15 s) before it counts as dead.
    pub link_silence_timeout: Duration,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            worker_name: "worker".into(),
            models: Vec::new(),
            max_concurrent: 1,
            backoff: BackoffConfig::default(),
            jitter_seed: 0,
            register_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_secs(5),
            link_silence_timeout: Duration::from_secs(45),
        }
    }
}

/// Something that happened, for [`WorkerSession::handle`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionInput {
    /// The link asked for by [`SessionOutput::Connect`] is open.
    LinkUp {
        /// The encoding it speaks.
        wire: WireVersion,
    },
    /// The link closed, or could not be opened.
    LinkDown,
    /// A frame from the server.
    Frame(ServerMessage),
    /// Response bytes from the backend for a request.
    BackendChunk {
        /// The request.
        request: WireRequestId,
        /// The bytes, unchanged.
        chunk: Bytes,
    },
    /// The backend finished a request.
    BackendComplete {
        /// The request.
        request: WireRequestId,
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
        request: WireRequestId,
        /// Machine-readable code.
        code: String,
        /// Explanation.
        message: String,
    },
    /// The backend's model list changed (discovery or a refresh).
    ModelsChanged(Vec<String>),
    /// Local shutdown (SIGTERM): finish running requests, then exit.
    Shutdown,
}

/// Something for the driver to do, from [`WorkerSession::poll_output`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionOutput {
    /// Open a link to the server.
    Connect,
    /// Send a frame to the server.
    Send(WorkerMessage),
    /// Close the link; report [`SessionInput::LinkDown`] once it is closed.
    CloseLink,
    /// Call the backend for a request.
    StartRequest(Arc<RequestFrame>),
    /// Stop the backend call of a request; its results are no longer wanted.
    AbortRequest {
        /// The request.
        request: WireRequestId,
        /// Why.
        reason: CancelReason,
    },
    /// Re-read the backend's models and report them with [`SessionInput::ModelsChanged`].
    RefreshModels,
    /// The server accepted the registration.
    Registered {
        /// The id the server gave the link (opaque text).
        worker_id: String,
        /// The models it routes here.
        models: Vec<ModelName>,
        /// What it changed in the list.
        warnings: Vec<String>,
    },
    /// The next connection attempt is scheduled.
    Reconnecting {
        /// Delay before it.
        after: Duration,
    },
    /// Local shutdown is complete: the process may exit.
    Exit,
}

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
    running: FxHashSet<WireRequestId>,
    /// The encoding of the current link, once it is up.
    wire: Option<WireVersion>,
    /// On a v1 link, the start of a UTF-8 character a backend chunk split, per request.
    text_carry: FxHashMap<WireRequestId, Vec<u8>>,
    /// The server asked this worker to drain; drop the link ourselves at this instant.
    server_drain_deadline: Option<Instant>,
    /// The server asked this worker to drain (until the link ends).
    server_draining: bool,
    /// The link counts as dead unless a frame arrives by then.
    silence_deadline: Option<Instant>,
    /// Local shutdown in progress; abort what still runs at this instant.
    stop_deadline: Option<Instant>,
    stopping: bool,
    exited: bool,
    outputs: VecDeque<SessionOutput>,
}

impl WorkerSession {
    /// A session that asks to connect at once.
    pub fn new(config: SessionConfig) -> Self {
        let mut outputs = VecDeque::new();
        outputs.push_back(SessionOutput::Connect);
        Self {
            backoff: Backoff::new(config.backoff, config.jitter_seed),
            models: config.models.clone(),
            config,
            link: LinkState::Connecting,
            models_sent: false,
            running: FxHashSet::default(),
            wire: None,
            text_carry: FxHashMap::default(),
            server_drain_deadline: None,
            server_draining: false,
            silence_deadline: None,
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
            SessionInput::LinkUp { wire } => self.on_link_up(now, wire),
            SessionInput::LinkDown => self.on_link_down(now),
            SessionInput::Frame(message) => self.on_frame(now, message),
            SessionInput::BackendChunk { request, chunk } => {
                if self.running.contains(&request) && self.linked() {
                    match self.sendable_chunk(&request, chunk) {
                        Ok(Some(chunk)) => self.send(WorkerMessage::ResponseChunk(ResponseChunk {
                            request_id: request,
                            chunk,
                        })),
                        Ok(None) => {}
                        Err(()) => self.fail_not_utf8(request),
                    }
                }
            }
            SessionInput::BackendComplete {
                request,
                status_code,
                headers,
                body,
                token_counts,
            } => {
                if self.running.contains(&request) {
                    let leftover = self.text_carry.remove(&request).is_some();
                    let v1 = self.wire == Some(WireVersion::V1);
                    if v1 && (leftover || std::str::from_utf8(&body).is_err()) {
                        self.fail_not_utf8(request);
                        return;
                    }
                    self.running.remove(&request);
                    self.send(WorkerMessage::ResponseComplete(ResponseComplete {
                        request_id: request,
                        status_code,
                        headers,
                        body,
                        token_counts,
                    }));
                    self.after_request_ended();
                }
            }
            SessionInput::BackendFailed {
                request,
                code,
                message,
            } => {
                if self.running.remove(&request) {
                    self.text_carry.remove(&request);
                    self.send(WorkerMessage::Error(WorkerError {
                        request_id: Some(request),
                        code,
                        message,
                    }));
                    self.after_request_ended();
                }
            }
            SessionInput::ModelsChanged(models) => self.on_models_changed(models),
            SessionInput::Shutdown => self.on_shutdown(now),
        }
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        self.outputs.pop_front()
    }

    /// When [`WorkerSession::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let link_deadline = match self.link {
            LinkState::Down { reconnect_at } => reconnect_at,
            LinkState::Registering { deadline } => deadline,
            _ => None,
        };
        [
            link_deadline,
            self.server_drain_deadline,
            self.silence_deadline,
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
        if self.silence_deadline.is_some_and(|at| at <= now) {
            // A half-open link (a partition, a dropped NAT entry) never reports itself.
            self.silence_deadline = None;
            self.close_link();
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

    fn linked(&self) -> bool {
        matches!(self.link, LinkState::Registering { .. } | LinkState::Ready)
    }

    fn send(&mut self, message: WorkerMessage) {
        self.outputs.push_back(SessionOutput::Send(message));
    }

    fn close_link(&mut self) {
        if matches!(
            self.link,
            LinkState::Connecting | LinkState::Registering { .. } | LinkState::Ready
        ) {
            // Nothing sent from now on would arrive: stop the backend calls at once.
            self.abort_all(CancelReason::WorkerDisconnect);
            self.link = LinkState::Closing;
            self.outputs.push_back(SessionOutput::CloseLink);
        }
    }

    fn on_link_up(&mut self, now: Instant, wire: WireVersion) {
        if self.link != LinkState::Connecting {
            return;
        }
        if self.stopping && self.running.is_empty() {
            self.close_link();
            return;
        }
        self.wire = Some(wire);
        self.link = LinkState::Registering {
            deadline: now.checked_add(self.config.register_timeout),
        };
        self.silence_deadline = now.checked_add(self.config.link_silence_timeout);
        self.models_sent = true;
        let models = if self.stopping {
            Vec::new()
        } else {
            self.models.clone()
        };
        self.send(WorkerMessage::Register(Register {
            worker_name: self.config.worker_name.clone(),
            models,
            max_concurrent: self.config.max_concurrent,
            protocol_version: Some(wire.protocol_version().to_owned()),
            current_load: Some(self.current_load()),
        }));
    }

    fn on_link_down(&mut self, now: Instant) {
        if matches!(self.link, LinkState::Down { .. }) {
            return;
        }
        // Results can no longer be delivered; the relay requeues or fails these.
        self.abort_all(CancelReason::WorkerDisconnect);
        self.wire = None;
        self.server_drain_deadline = None;
        self.server_draining = false;
        self.silence_deadline = None;
        if self.stopping {
            self.link = LinkState::Down { reconnect_at: None };
            self.exit();
            return;
        }
        let after = self.backoff.next_delay();
        self.link = LinkState::Down {
            reconnect_at: now.checked_add(after),
        };
        self.outputs
            .push_back(SessionOutput::Reconnecting { after });
    }

    fn on_frame(&mut self, now: Instant, message: ServerMessage) {
        if !self.linked() {
            return;
        }
        self.silence_deadline = now.checked_add(self.config.link_silence_timeout);
        match message {
            ServerMessage::RegisterAck(ack) => {
                if !matches!(self.link, LinkState::Registering { .. }) {
                    return;
                }
                self.link = LinkState::Ready;
                self.backoff.reset();
                self.outputs.push_back(SessionOutput::Registered {
                    worker_id: ack.worker_id,
                    models: ack.models,
                    warnings: ack.warnings,
                });
                if !self.models_sent {
                    self.send_models();
                }
            }
            ServerMessage::Request(frame) => self.on_request(frame),
            ServerMessage::Cancel(cancel) => {
                if self.running.remove(&cancel.request_id) {
                    self.text_carry.remove(&cancel.request_id);
                    self.outputs.push_back(SessionOutput::AbortRequest {
                        request: cancel.request_id,
                        reason: cancel.reason,
                    });
                    self.after_request_ended();
                }
            }
            ServerMessage::Ping(ping) => self.send(WorkerMessage::Pong(Pong {
                current_load: self.current_load(),
                timestamp_unix_ms: ping.timestamp_unix_ms,
            })),
            ServerMessage::GracefulShutdown(drain) => {
                let timeout = Duration::from_secs(drain.drain_timeout_secs.unwrap_or(30));
                // The timeout comes from the peer: no value of it may overflow.
                self.server_draining = true;
                self.server_drain_deadline = now
                    .checked_add(timeout)
                    .and_then(|at| at.checked_add(self.config.drain_grace));
            }
            ServerMessage::ModelsRefresh(_) => self.outputs.push_back(SessionOutput::RefreshModels),
        }
    }

    fn on_request(&mut self, frame: Arc<RequestFrame>) {
        let request_id = frame.request_id.clone();
        if self.running.contains(&request_id) {
            return; // a repeat; the first copy is already running
        }
        let refusal = if self.stopping || self.server_draining {
            Some((
                REFUSED_DRAINING,
                "worker is draining and takes no new requests",
            ))
        } else if self.current_load() >= self.config.max_concurrent {
            Some((REFUSED_AT_CAPACITY, "all of the worker's slots are busy"))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            self.send(WorkerMessage::Error(WorkerError {
                request_id: Some(request_id),
                code: code.into(),
                message: message.into(),
            }));
            return;
        }
        self.running.insert(request_id);
        self.outputs.push_back(SessionOutput::StartRequest(frame));
    }

    fn on_models_changed(&mut self, models: Vec<String>) {
        if models == self.models {
            return;
        }
        self.models = models;
        self.models_sent = false;
        if self.link == LinkState::Ready && !self.stopping {
            self.send_models();
        }
    }

    fn send_models(&mut self) {
        self.models_sent = true;
        self.send(WorkerMessage::ModelsUpdate(ModelsUpdate {
            models: self.models.clone(),
            current_load: self.current_load(),
        }));
    }

    fn on_shutdown(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.stop_deadline = now.checked_add(self.config.shutdown_timeout);
        match self.link {
            LinkState::Down { .. } => self.exit(),
            LinkState::Registering { .. } | LinkState::Ready if !self.running.is_empty() => {
                // Advertise nothing, so the relay routes no new work here.
                self.send(WorkerMessage::ModelsUpdate(ModelsUpdate {
                    models: Vec::new(),
                    current_load: self.current_load(),
                }));
            }
            LinkState::Registering { .. } | LinkState::Ready | LinkState::Connecting => {
                self.close_link();
            }
            LinkState::Closing => {}
        }
    }

    /// The part of `chunk` that can go out now. v2 carries any bytes. On v1 a chunk
    /// must be UTF-8 text, and a backend may split a character across chunks: the
    /// incomplete end waits for the next chunk. `Err` if the bytes are not UTF-8 at all.
    fn sendable_chunk(
        &mut self,
        request: &WireRequestId,
        chunk: Bytes,
    ) -> Result<Option<Bytes>, ()> {
        if self.wire != Some(WireVersion::V1) {
            return Ok(Some(chunk));
        }
        let mut text = match self.text_carry.remove(request) {
            // Only a split character costs a copy.
            Some(mut carried) => {
                carried.extend_from_slice(&chunk);
                Bytes::from(carried)
            }
            None => chunk,
        };
        match std::str::from_utf8(&text) {
            Ok(_) => Ok(Some(text)),
            Err(error) if error.error_len().is_none() => {
                let tail = text.split_off(error.valid_up_to());
                self.text_carry.insert(request.clone(), tail.to_vec());
                Ok((!text.is_empty()).then_some(text))
            }
            Err(_) => Err(()),
        }
    }

    /// Ends a request whose backend output cannot travel in a v1 text frame.
    fn fail_not_utf8(&mut self, request: WireRequestId) {
        self.running.remove(&request);
        self.text_carry.remove(&request);
        self.outputs.push_back(SessionOutput::AbortRequest {
            request: request.clone(),
            reason: CancelReason::Other("backend_output_not_utf8".into()),
        });
        self.send(WorkerMessage::Error(WorkerError {
            request_id: Some(request),
            code: BACKEND_OUTPUT_NOT_UTF8.into(),
            message: "the backend's output is not UTF-8 text, which a v1 link cannot carry".into(),
        }));
        self.after_request_ended();
    }

    fn after_request_ended(&mut self) {
        if self.stopping && self.running.is_empty() {
            self.close_link();
        }
    }

    fn abort_all(&mut self, reason: CancelReason) {
        self.text_carry.clear();
        let mut running: Vec<WireRequestId> = self.running.drain().collect();
        running.sort();
        for request in running {
            self.outputs.push_back(SessionOutput::AbortRequest {
                request,
                reason: reason.clone(),
            });
        }
    }

    fn exit(&mut self) {
        self.exited = true;
        self.stop_deadline = None;
        self.outputs.push_back(SessionOutput::Exit);
    }
}

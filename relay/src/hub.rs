//! The hub: the one task that owns the relay core and carries out what it decides.
//!
//! HTTP handlers and worker links send [`Command`]s; the hub feeds them to the
//! [`Relay`], then routes its outputs: frames to worker links, chunks and ends
//! to waiting responses, closes to links. Deadlines come from
//! [`Relay::poll_timeout`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use modelrelay_core::relay::RelayStats;
use modelrelay_core::relay::{
    AuthOutcome, CloseReason, Input, NewRequest, Outcome, Output, Relay, RelayConfig,
};
use modelrelay_core::wire::{ServerMessage, TokenCounts, WireVersion, WorkerError, WorkerMessage};
use modelrelay_core::{ModelName, ProviderId, RequestId, WireRequestId, WorkerId};
use modelrelay_transports::Outgoing;
use modelrelay_transports::close_code;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::codes;
use crate::error::ApiError;
use crate::metrics::{Metrics, WorkerStates, outcome_label, stream_usage};
use crate::response_queue::ResponseSender;
use prometheus_client::metrics::counter::Counter;

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

/// One connected worker, for the admin API.
#[derive(Clone, Debug)]
pub(crate) struct WorkerView {
    pub(crate) id: WorkerId,
    pub(crate) name: String,
    pub(crate) provider: String,
    pub(crate) models: Vec<ModelName>,
    pub(crate) in_flight: usize,
    pub(crate) load: u64,
    pub(crate) capacity: u32,
    pub(crate) registered: bool,
    pub(crate) draining: bool,
    pub(crate) connected_since: SystemTime,
    pub(crate) connected_for: Duration,
    pub(crate) transport: Transport,
    pub(crate) wire: WireVersion,
}

/// Something for the hub to do.
pub(crate) enum Command {
    /// A worker link is open.
    WorkerConnected {
        worker: WorkerId,
        wire: WireVersion,
        auth: AuthOutcome,
        name_hint: String,
        transport: Transport,
        outbound: mpsc::UnboundedSender<LinkCommand>,
        /// Cancelled when the hub closes the link; the link task then ends within a bound.
        closing: CancellationToken,
    },
    /// A frame from a worker.
    WorkerFrame {
        worker: WorkerId,
        message: WorkerMessage,
    },
    /// A frame from a worker that did not decode.
    WorkerInvalid { worker: WorkerId, detail: String },
    /// A worker link closed.
    WorkerGone { worker: WorkerId },
    /// A request frame could not be sent on its worker's link (too large for it).
    Undeliverable {
        worker: WorkerId,
        request: WireRequestId,
        detail: String,
    },
    /// A client request.
    Request {
        request: NewRequest,
        /// The route it came in on (one of the fixed inference paths).
        route: &'static str,
        responder: ResponseSender,
    },
    /// A client went away.
    ClientGone { request: RequestId },
    /// A client went away after its stream's final event reached it.
    ClientDone { request: RequestId },
    /// Numbers for `/health`, `/v1/models`, `/metrics` and `/admin/stats`.
    Snapshot(oneshot::Sender<Snapshot>),
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

/// What a waiting response hears.
#[derive(Debug)]
pub(crate) enum ResponseEvent {
    /// Stream bytes, in order.
    Chunk(Bytes),
    /// The end; nothing follows.
    Ended(Outcome),
}

/// What a worker link's writer is asked to do.
pub(crate) type LinkCommand = Outgoing<ServerMessage>;

/// The relay's state, for status endpoints.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Registered workers.
    pub(crate) workers: usize,
    /// Requests waiting.
    pub(crate) queue_depth: usize,
    /// Requests not ended.
    pub(crate) open_requests: usize,
    /// Models served now.
    pub(crate) models: Vec<ModelName>,
    /// Whether shutdown began.
    pub(crate) shutting_down: bool,
    /// Workers by state.
    pub(crate) worker_states: WorkerStates,
    /// What the relay has counted.
    pub(crate) stats: RelayStats,
}

/// A handle to send commands to the hub.
#[derive(Clone)]
pub(crate) struct Hub {
    commands: mpsc::UnboundedSender<Command>,
}

impl Hub {
    /// Starts the hub task.
    pub(crate) fn spawn(
        config: RelayConfig,
        provider: ProviderId,
        max_client_buffer: usize,
        metrics: Arc<Metrics>,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, inbox) = mpsc::unbounded_channel();
        let task = HubTask {
            relay: Relay::new(config),
            provider,
            links: HashMap::new(),
            waiting: HashMap::new(),
            max_client_buffer,
            metrics,
        };
        (Self { commands }, tokio::spawn(task.run(inbox)))
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

/// What the hub holds of a worker link.
struct LinkHandle {
    outbound: mpsc::UnboundedSender<LinkCommand>,
    closing: CancellationToken,
    transport: Transport,
}

/// A request waiting for its answer.
struct Waiting {
    responder: ResponseSender,
    model: ModelName,
    route: &'static str,
    streaming: bool,
    arrived: Instant,
    worker: Option<WorkerId>,
    chunks: u64,
    too_slow: bool,
    /// Time spent queued before the first worker took it.
    queue_wait: Option<Duration>,
    /// Time to the first chunk.
    first_chunk: Option<Duration>,
    /// Stream bytes of its model, counted for `/metrics`.
    bytes: Option<Counter>,
    /// Token usage seen in the stream, if the backend reported any there.
    stream_usage: Option<TokenCounts>,
}

struct HubTask {
    relay: Relay,
    provider: ProviderId,
    links: HashMap<WorkerId, LinkHandle>,
    waiting: HashMap<RequestId, Waiting>,
    /// Most bytes a response may hold for a client that does not read them.
    max_client_buffer: usize,
    metrics: Arc<Metrics>,
}

fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Commands handled per wake-up before outputs are flushed.
const BATCH: usize = 64;

impl HubTask {
    async fn run(mut self, mut inbox: mpsc::UnboundedReceiver<Command>) {
        loop {
            let deadline = self
                .relay
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                command = inbox.recv() => {
                    let Some(command) = command else { break };
                    self.apply(command);
                    // Outputs go out after each command: a later command in the same
                    // batch (a link closing) must not overtake them.
                    self.flush();
                    for _ in 1..BATCH {
                        match inbox.try_recv() {
                            Ok(command) => {
                                self.apply(command);
                                self.flush();
                            }
                            Err(_) => break,
                        }
                    }
                }
                () = sleep_until(deadline) => {
                    self.relay.handle_timeout(now());
                    self.flush();
                }
            }
            if self.relay.is_shutting_down() && self.relay.is_idle() {
                info!("relay drained");
                break;
            }
        }
    }

    fn feed(&mut self, input: Input) {
        if let Err(error) = self.relay.handle(now(), input) {
            // Ids come from counters in this process; a clash is a bug worth a loud line.
            error!(%error, "relay refused an input");
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::WorkerConnected {
                worker,
                wire,
                auth,
                name_hint,
                transport,
                outbound,
                closing,
            } => {
                debug!(%worker, ?wire, peer = %name_hint, transport = transport.name(), "worker link open");
                self.links.insert(
                    worker,
                    LinkHandle {
                        outbound,
                        closing,
                        transport,
                    },
                );
                self.feed(Input::WorkerConnected {
                    worker,
                    provider: self.provider.clone(),
                    wire,
                    auth,
                });
            }
            Command::WorkerFrame { worker, message } => {
                self.feed(Input::WorkerFrame { worker, message })
            }
            Command::WorkerInvalid { worker, detail } => {
                warn!(%worker, %detail, "worker sent a frame that does not decode");
                self.feed(Input::WorkerFrameInvalid { worker, detail });
            }
            Command::WorkerGone { worker } => {
                if self.links.remove(&worker).is_some() {
                    info!(%worker, "worker link closed");
                }
                self.feed(Input::WorkerDisconnected { worker });
            }
            Command::Request {
                request,
                route,
                responder,
            } => {
                self.waiting.insert(
                    request.id,
                    Waiting {
                        responder,
                        model: request.model.clone(),
                        route,
                        streaming: request.streaming,
                        arrived: now(),
                        worker: None,
                        chunks: 0,
                        too_slow: false,
                        queue_wait: None,
                        first_chunk: None,
                        bytes: None,
                        stream_usage: None,
                    },
                );
                self.feed(Input::RequestArrived(request));
            }
            Command::ClientGone { request } => self.feed(Input::ClientGone { request }),
            Command::ClientDone { request } => self.feed(Input::ClientDone { request }),
            Command::Undeliverable {
                worker,
                request,
                detail,
            } => {
                // To the relay this is the worker failing the request: it ends with a 502.
                self.feed(Input::WorkerFrame {
                    worker,
                    message: WorkerMessage::Error(WorkerError {
                        request_id: Some(request),
                        code: codes::REQUEST_UNDELIVERABLE.into(),
                        message: detail,
                    }),
                });
            }
            Command::Snapshot(reply) => {
                let mut worker_states = WorkerStates::default();
                for worker in self.relay.workers() {
                    match (worker.registered, worker.draining) {
                        (_, true) => worker_states.draining += 1,
                        (false, false) => worker_states.registering += 1,
                        (true, false) => worker_states.active += 1,
                    }
                }
                let _ = reply.send(Snapshot {
                    workers: self.relay.workers().filter(|w| w.registered).count(),
                    queue_depth: self.relay.queue_len(&self.provider),
                    open_requests: self.relay.open_requests(),
                    models: self.relay.models(&self.provider),
                    shutting_down: self.relay.is_shutting_down(),
                    worker_states,
                    stats: self.relay.stats().clone(),
                });
            }
            Command::Workers(reply) => {
                let (mono, wall) = (now(), SystemTime::now());
                let workers = self
                    .relay
                    .workers()
                    .map(|w| {
                        let connected_for = mono.saturating_duration_since(w.connected_at);
                        WorkerView {
                            id: w.id,
                            name: w.name.to_owned(),
                            provider: w.provider.to_string(),
                            models: w.models.to_vec(),
                            in_flight: w.in_flight,
                            load: w.in_flight as u64 + u64::from(w.external_load),
                            capacity: w.max_concurrent,
                            registered: w.registered,
                            draining: w.draining,
                            connected_since: wall.checked_sub(connected_for).unwrap_or(wall),
                            connected_for,
                            transport: self
                                .links
                                .get(&w.id)
                                .map_or(Transport::WebSocket, |l| l.transport),
                            wire: w.wire,
                        }
                    })
                    .collect();
                let _ = reply.send(workers);
            }
            Command::DrainWorker {
                worker,
                timeout,
                reply,
            } => {
                let known = self.relay.workers().any(|w| w.id == worker);
                if known {
                    info!(%worker, timeout_secs = timeout.as_secs(), "draining a worker (admin request)");
                    self.feed(Input::DrainWorker {
                        worker,
                        timeout,
                        reason: Some("drained by an administrator".into()),
                    });
                }
                let _ = reply.send(known);
            }
            Command::Shutdown { drain } => {
                info!(
                    drain_secs = drain.as_secs(),
                    "draining workers for shutdown"
                );
                self.feed(Input::Shutdown {
                    drain_timeout: drain,
                });
            }
        }
    }

    fn flush(&mut self) {
        while let Some(output) = self.relay.poll_output() {
            match output {
                Output::SendToWorker { worker, message } => {
                    match &message {
                        ServerMessage::Request(frame) => {
                            let id = frame.request_id.as_request_id();
                            if let Some(waiting) = id.and_then(|id| self.waiting.get_mut(&id)) {
                                waiting.worker = Some(worker);
                                if waiting.queue_wait.is_none() {
                                    let waited = now().saturating_duration_since(waiting.arrived);
                                    waiting.queue_wait = Some(waited);
                                    self.metrics.dispatched(waited);
                                }
                            }
                        }
                        ServerMessage::RegisterAck(ack) => self.log_registration(worker, ack),
                        _ => {}
                    }
                    if let Some(link) = self.links.get(&worker) {
                        let _ = link.outbound.send(Outgoing::Message(message));
                    }
                }
                Output::CloseWorker { worker, reason } => {
                    log_close(worker, &reason);
                    if let Some(link) = self.links.remove(&worker) {
                        let _ = link.outbound.send(Outgoing::Close {
                            code: close_code_for(&reason),
                            reason: reason.to_string(),
                        });
                        link.closing.cancel();
                    }
                }
                Output::StreamChunk { request, chunk } => {
                    if let Some(waiting) = self.waiting.get_mut(&request) {
                        if waiting.chunks == 0 {
                            let after = now().saturating_duration_since(waiting.arrived);
                            waiting.first_chunk = Some(after);
                            if waiting.streaming {
                                self.metrics.first_chunk(waiting.route, after);
                            }
                        }
                        waiting.chunks += 1;
                        waiting
                            .bytes
                            .get_or_insert_with(|| {
                                self.metrics.streamed_bytes(waiting.model.as_str())
                            })
                            .inc_by(chunk.len() as u64);
                        if let Some(usage) = stream_usage(&chunk) {
                            waiting
                                .stream_usage
                                .get_or_insert_default()
                                .merge_max(usage);
                        }
                        // Bytes the client has not taken yet (none if it is gone).
                        let held = waiting
                            .responder
                            .send(ResponseEvent::Chunk(chunk))
                            .unwrap_or(0);
                        if held > self.max_client_buffer && !waiting.too_slow {
                            waiting.too_slow = true;
                            warn!(%request, held, "client reads too slowly; stopping its stream");
                            self.feed(Input::ClientTooSlow { request });
                        }
                    }
                }
                Output::RequestEnded {
                    request,
                    mut outcome,
                } => {
                    if let Some(mut waiting) = self.waiting.remove(&request) {
                        if let Outcome::Completed(completion) = &mut outcome
                            && completion.token_counts.is_none()
                        {
                            completion.token_counts = waiting.stream_usage.take();
                        }
                        let took = now().saturating_duration_since(waiting.arrived);
                        self.metrics
                            .ended(waiting.route, waiting.model.as_str(), &outcome, took);
                        log_end(request, &waiting, &outcome, took);
                        let _ = waiting.responder.send(ResponseEvent::Ended(outcome));
                    }
                }
            }
        }
        self.metrics.sync_relay_stats(self.relay.stats());
    }

    fn log_registration(&self, worker: WorkerId, ack: &modelrelay_core::wire::RegisterAck) {
        let name = self
            .relay
            .workers()
            .find(|w| w.id == worker)
            .map(|w| w.name.to_owned())
            .unwrap_or_default();
        info!(%worker, %name, models = ?ack.models, "worker registered");
        for warning in &ack.warnings {
            warn!(%worker, %name, %warning, "worker model list sanitized");
        }
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The WebSocket close code for each reason the relay closes a link.
fn close_code_for(reason: &CloseReason) -> u16 {
    match reason {
        CloseReason::Unauthorized => close_code::POLICY_VIOLATION,
        CloseReason::ProtocolError(_)
        | CloseReason::TooManyViolations
        | CloseReason::RegisterTimeout => close_code::PROTOCOL_ERROR,
        CloseReason::Drained => close_code::NORMAL,
        CloseReason::HeartbeatTimeout | CloseReason::DrainTimeout | CloseReason::Shutdown => {
            close_code::GOING_AWAY
        }
    }
}

fn log_close(worker: WorkerId, reason: &CloseReason) {
    match reason {
        CloseReason::Drained => info!(%worker, "worker drained"),
        reason if reason.is_violation() => warn!(%worker, %reason, "closing worker link"),
        reason => info!(%worker, %reason, "closing worker link"),
    }
}

fn millis(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| d.as_secs_f64() * 1000.0)
}

/// One line per request end: id, route, model, worker, status, outcome, timings.
fn log_end(request: RequestId, waiting: &Waiting, outcome: &Outcome, took: Duration) {
    let elapsed_ms = took.as_secs_f64() * 1000.0;
    let queue_ms = millis(waiting.queue_wait);
    let first_chunk_ms = millis(waiting.first_chunk);
    let worker = waiting.worker.map(|w| w.get());
    let route = waiting.route;
    let result = outcome_label(outcome);
    match outcome {
        Outcome::Completed(completion) => info!(
            %request, route, model = %waiting.model, worker, status = completion.status_code,
            outcome = result, chunks = waiting.chunks, queue_ms, first_chunk_ms, elapsed_ms,
            "request completed"
        ),
        Outcome::Failed { failure, streamed } => info!(
            %request, route, model = %waiting.model, worker,
            status = ApiError::from_failure(failure, "").status.as_u16(),
            outcome = result, %failure, streamed, chunks = waiting.chunks, queue_ms,
            first_chunk_ms, elapsed_ms, "request failed"
        ),
        Outcome::Cancelled => info!(
            %request, route, model = %waiting.model, worker, outcome = result,
            chunks = waiting.chunks, queue_ms, first_chunk_ms, elapsed_ms,
            "request cancelled by the client"
        ),
    }
}

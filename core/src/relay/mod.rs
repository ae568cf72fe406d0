//! The server-side state machine: worker registry, queues, dispatch, requeue, drain, heartbeats.
//!
//! Drive it like this (the driver owns sockets and the clock):
//!
//! ```
//! # use std::time::Instant;
//! # use modelrelay_core::relay::{Relay, RelayConfig, Input, Output};
//! # fn drive(now: Instant) {
//! let mut relay = Relay::new(RelayConfig::default());
//! // ... relay.handle(now, input) for each event ...
//! while let Some(output) = relay.poll_output() {
//!     match output {
//!         Output::SendToWorker { .. } => { /* encode and write the frame */ }
//!         Output::CloseWorker { .. } => { /* close the link */ }
//!         Output::StreamChunk { .. } => { /* write the bytes to the client */ }
//!         Output::RequestEnded { .. } => { /* answer or finish the client's response */ }
//!     }
//! }
//! if let Some(at) = relay.poll_timeout() {
//!     // sleep until `at`, then:
//!     relay.handle_timeout(at);
//! }
//! # }
//! ```

mod config;
mod ended;
mod outcome;
mod routes;
mod sanitize;
mod selection;
mod timers;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustc_hash::{FxHashMap, FxHashSet};

pub use config::RelayConfig;
pub use outcome::{CloseReason, Completion, Failure, Outcome};
pub use sanitize::{MAX_WORKER_NAME_BYTES, SanitizedModels, sanitize_models, sanitize_worker_name};
pub use selection::{LeastLoaded, SelectionPolicy, SelectionRank, WorkerLoad};

use ended::EndedRequests;
use routes::{Provider, QueueEnd, QueueSeq};
use timers::{TimerOwner, Timers};

use crate::ids::{ModelName, ProviderId, RequestId, WireRequestId, WorkerId};
use crate::wire::{
    Cancel, CancelReason, GracefulShutdown, Headers, ModelsRefresh, ModelsUpdate, Ping, Pong,
    REFUSED_AT_CAPACITY, REFUSED_DRAINING, Register, RegisterAck, RequestFrame, ResponseChunk,
    ResponseComplete, ServerMessage, WireVersion, WorkerError, WorkerMessage,
};

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
}

/// Where a live request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    AwaitingRegister { deadline: Option<Instant> },
    Active,
    Draining { deadline: Option<Instant> },
}

#[derive(Debug)]
struct WorkerEntry {
    provider: ProviderId,
    wire: WireVersion,
    connected_at: Instant,
    phase: Phase,
    name: String,
    models: Vec<ModelName>,
    max_concurrent: u32,
    in_flight: FxHashSet<RequestId>,
    external_load: u32,
    last_assigned: u64,
    /// The rank under which it sits in its models' ready sets, if it does.
    ranked: Option<SelectionRank>,
    /// It refused a request; no new work until its next pong or model update.
    refusing: bool,
    next_ping: Option<Instant>,
    /// Lost unless some frame arrives by then; set when a ping goes out unanswered.
    silent_deadline: Option<Instant>,
    violations: u32,
    timer: Option<Instant>,
}

impl WorkerEntry {
    fn in_flight_count(&self) -> u32 {
        u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let phase_deadline = match self.phase {
            Phase::AwaitingRegister { deadline } => deadline,
            Phase::Draining { deadline } => deadline,
            Phase::Active => None,
        };
        [phase_deadline, self.next_ping, self.silent_deadline]
            .into_iter()
            .flatten()
            .min()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum RequestState {
    Queued {
        seq: QueueSeq,
    },
    Assigned {
        worker: WorkerId,
        streamed_bytes: u64,
        streamed: bool,
    },
    /// Off its worker and not yet back in a queue (during a requeue).
    Detached,
}

#[derive(Debug)]
struct RequestEntry {
    provider: ProviderId,
    frame: Arc<RequestFrame>,
    arrival: u64,
    queue_deadline: Option<Instant>,
    deadline: Option<Instant>,
    /// Its client left with the whole answer: the completion must come by then.
    client_done_deadline: Option<Instant>,
    requeues: u8,
    state: RequestState,
    timer: Option<Instant>,
}

impl RequestEntry {
    fn next_deadline(&self) -> Option<Instant> {
        match self.state {
            RequestState::Queued { .. } => [self.queue_deadline, self.deadline]
                .into_iter()
                .flatten()
                .min(),
            RequestState::Assigned { .. } => [self.deadline, self.client_done_deadline]
                .into_iter()
                .flatten()
                .min(),
            RequestState::Detached => self.deadline,
        }
    }
}

/// The relay: decides where every request goes and when it ends. Pure: no I/O, no clock.
pub struct Relay {
    config: RelayConfig,
    policy: Box<dyn SelectionPolicy>,
    providers: FxHashMap<ProviderId, Provider>,
    workers: FxHashMap<WorkerId, WorkerEntry>,
    requests: FxHashMap<RequestId, RequestEntry>,
    ended: EndedRequests,
    timers: Timers,
    outputs: VecDeque<Output>,
    assignments: u64,
    arrivals: u64,
    shutting_down: bool,
    stats: RelayStats,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("workers", &self.workers.len())
            .field("requests", &self.requests.len())
            .field("shutting_down", &self.shutting_down)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Relay {
    /// A relay with the default selection policy ([`LeastLoaded`]).
    pub fn new(config: RelayConfig) -> Self {
        Self::with_policy(config, Box::new(LeastLoaded))
    }

    /// A relay with a custom selection policy.
    pub fn with_policy(config: RelayConfig, policy: Box<dyn SelectionPolicy>) -> Self {
        Self {
            ended: EndedRequests::new(config.ended_request_memory),
            config,
            policy,
            providers: FxHashMap::default(),
            workers: FxHashMap::default(),
            requests: FxHashMap::default(),
            timers: Timers::default(),
            outputs: VecDeque::new(),
            assignments: 0,
            arrivals: 0,
            shutting_down: false,
            stats: RelayStats::default(),
        }
    }

    /// Feeds one event in.
    pub fn handle(&mut self, now: Instant, input: Input) -> Result<(), InputError> {
        match input {
            Input::WorkerConnected {
                worker,
                provider,
                wire,
                auth,
            } => return self.on_worker_connected(now, worker, provider, wire, auth),
            Input::WorkerFrame { worker, message } => self.on_worker_frame(now, worker, message),
            Input::WorkerFrameInvalid { worker, detail } => {
                self.lose_worker(now, worker, Some(CloseReason::ProtocolError(detail)));
            }
            Input::WorkerDisconnected { worker } => self.lose_worker(now, worker, None),
            Input::RequestArrived(request) => return self.on_request(now, request),
            Input::ClientGone { request } => self.stop_for_client(request, None),
            Input::ClientDone { request } => self.client_done(now, request),
            Input::ClientTooSlow { request } => {
                self.stop_for_client(request, Some(Failure::ClientTooSlow))
            }
            Input::DrainWorker {
                worker,
                timeout,
                reason,
            } => self.drain_worker(now, worker, timeout, reason),
            Input::RefreshModels { worker } => {
                let registered = self
                    .workers
                    .get(&worker)
                    .is_some_and(|w| !matches!(w.phase, Phase::AwaitingRegister { .. }));
                if registered {
                    self.send(
                        worker,
                        ServerMessage::ModelsRefresh(ModelsRefresh { reason: None }),
                    );
                }
            }
            Input::Shutdown { drain_timeout } => self.shutdown(now, drain_timeout),
        }
        Ok(())
    }

    /// The next thing for the driver to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Relay::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Lets time pass: expires queue and request deadlines, pings, heartbeats and drains due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(owner) = self.timers.pop_due(now) {
            match owner {
                TimerOwner::Request(id) => self.on_request_timer(now, id),
                TimerOwner::Worker(id) => self.on_worker_timer(now, id),
            }
        }
    }

    // ---- read-only views ----

    /// Counters since start.
    pub fn stats(&self) -> &RelayStats {
        &self.stats
    }

    /// Connected worker links, registered or not.
    pub fn workers(&self) -> impl Iterator<Item = WorkerInfo<'_>> {
        self.workers.iter().map(|(id, w)| WorkerInfo {
            id: *id,
            provider: &w.provider,
            name: &w.name,
            models: &w.models,
            in_flight: w.in_flight.len(),
            max_concurrent: w.max_concurrent,
            external_load: w.external_load,
            registered: !matches!(w.phase, Phase::AwaitingRegister { .. }),
            draining: matches!(w.phase, Phase::Draining { .. }),
            connected_at: w.connected_at,
            wire: w.wire,
        })
    }

    /// Number of connected worker links.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The models registered workers of `provider` serve now, sorted, without repeats.
    pub fn models(&self, provider: &ProviderId) -> Vec<ModelName> {
        let mut models: Vec<ModelName> = self
            .workers
            .values()
            .filter(|w| &w.provider == provider)
            .flat_map(|w| w.models.iter().cloned())
            .collect();
        models.sort();
        models.dedup();
        models
    }

    /// Whether any worker of `provider` has ever advertised `model`.
    pub fn knows_model(&self, provider: &ProviderId, model: &str) -> bool {
        self.providers
            .get(provider)
            .is_some_and(|p| p.route(model).is_some())
    }

    /// Requests waiting in `provider`'s queue.
    pub fn queue_len(&self, provider: &ProviderId) -> usize {
        self.providers.get(provider).map_or(0, Provider::queued)
    }

    /// Requests waiting across all providers.
    pub fn queued_total(&self) -> usize {
        self.providers.values().map(Provider::queued).sum()
    }

    /// Requests that have not ended.
    pub fn open_requests(&self) -> usize {
        self.requests.len()
    }

    /// Where a live request is, or `None` once it ended.
    pub fn request_status(&self, request: RequestId) -> Option<RequestStatus> {
        self.requests.get(&request).map(|r| match r.state {
            RequestState::Queued { .. } | RequestState::Detached => RequestStatus::Queued,
            RequestState::Assigned {
                worker, streamed, ..
            } => RequestStatus::Assigned { worker, streamed },
        })
    }

    /// How many times a live request went back to the queue.
    pub fn requeue_count(&self, request: RequestId) -> Option<u8> {
        self.requests.get(&request).map(|r| r.requeues)
    }

    /// Whether shutdown has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// Whether nothing is left: no requests and no worker links.
    pub fn is_idle(&self) -> bool {
        self.requests.is_empty() && self.workers.is_empty()
    }

    /// The configuration in use.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    // ---- workers ----

    fn on_worker_connected(
        &mut self,
        now: Instant,
        worker: WorkerId,
        provider: ProviderId,
        wire: WireVersion,
        auth: AuthOutcome,
    ) -> Result<(), InputError> {
        if self.workers.contains_key(&worker) {
            return Err(InputError::DuplicateWorker(worker));
        }
        let refuse = match auth {
            AuthOutcome::Rejected => Some(CloseReason::Unauthorized),
            AuthOutcome::Accepted if self.shutting_down => Some(CloseReason::Shutdown),
            AuthOutcome::Accepted => None,
        };
        if let Some(reason) = refuse {
            self.outputs
                .push_back(Output::CloseWorker { worker, reason });
            return Ok(());
        }
        self.providers.entry(provider.clone()).or_default();
        self.workers.insert(
            worker,
            WorkerEntry {
                provider,
                wire,
                connected_at: now,
                phase: Phase::AwaitingRegister {
                    deadline: now.checked_add(self.config.register_timeout),
                },
                name: String::new(),
                models: Vec::new(),
                max_concurrent: 0,
                in_flight: FxHashSet::default(),
                external_load: 0,
                last_assigned: 0,
                ranked: None,
                refusing: false,
                next_ping: None,
                silent_deadline: None,
                violations: 0,
                timer: None,
            },
        );
        self.rearm_worker(worker);
        Ok(())
    }

    fn on_worker_frame(&mut self, now: Instant, worker_id: WorkerId, message: WorkerMessage) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return; // closed already; its last frames are of no interest
        };
        let awaiting_register = matches!(worker.phase, Phase::AwaitingRegister { .. });
        if worker.silent_deadline.take().is_some() {
            self.rearm_worker(worker_id);
        }
        match message {
            WorkerMessage::Register(register) if awaiting_register => {
                self.on_register(now, worker_id, register);
            }
            _ if awaiting_register => self.lose_worker(
                now,
                worker_id,
                Some(CloseReason::ProtocolError(
                    "the first frame must be register".into(),
                )),
            ),
            WorkerMessage::Register(_) => self.lose_worker(
                now,
                worker_id,
                Some(CloseReason::ProtocolError("register sent twice".into())),
            ),
            WorkerMessage::ModelsUpdate(update) => self.on_models_update(worker_id, update),
            WorkerMessage::ResponseChunk(chunk) => self.on_chunk(now, worker_id, chunk),
            WorkerMessage::ResponseComplete(complete) => self.on_complete(now, worker_id, complete),
            WorkerMessage::Pong(pong) => self.on_pong(worker_id, pong),
            WorkerMessage::Error(error) => self.on_worker_error(now, worker_id, error),
        }
    }

    fn on_register(&mut self, now: Instant, worker_id: WorkerId, register: Register) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if !worker
            .wire
            .accepts_announced_version(register.protocol_version.as_deref())
        {
            let detail = format!(
                "incompatible protocol version {:?}",
                register.protocol_version.unwrap_or_default()
            );
            self.lose_worker(now, worker_id, Some(CloseReason::ProtocolError(detail)));
            return;
        }
        let SanitizedModels {
            models,
            mut warnings,
        } = sanitize_models(
            &register.models,
            self.config.max_models_per_worker,
            self.config.max_model_name_bytes,
        );
        if register.max_concurrent == 0 {
            warnings.push("max_concurrent 0 treated as 1".into());
        }
        let (name, name_warning) = sanitize_worker_name(&register.worker_name);
        warnings.extend(name_warning);
        worker.name = name;
        worker.models = models.clone();
        worker.max_concurrent = register.max_concurrent.max(1);
        worker.external_load = register.current_load.unwrap_or(0);
        worker.phase = Phase::Active;
        worker.next_ping = now.checked_add(self.config.heartbeat_interval);
        let ack = RegisterAck {
            worker_id: worker_id.to_string(),
            models,
            warnings,
            protocol_version: Some(worker.wire.protocol_version().to_owned()),
        };
        let provider = self
            .providers
            .get_mut(&worker.provider)
            .expect("a worker's provider exists");
        provider.advertise(&worker.models);
        self.send(worker_id, ServerMessage::RegisterAck(ack));
        self.rearm_worker(worker_id);
        self.rerank(worker_id);
        self.fill_worker(worker_id);
    }

    fn on_models_update(&mut self, worker_id: WorkerId, update: ModelsUpdate) {
        let sanitized = sanitize_models(
            &update.models,
            self.config.max_models_per_worker,
            self.config.max_model_name_bytes,
        );
        self.unrank(worker_id);
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let provider = self
            .providers
            .get_mut(&worker.provider)
            .expect("a worker's provider exists");
        provider.advertise(&sanitized.models);
        provider.withdraw(&worker.models);
        worker.models = sanitized.models;
        worker.external_load = update.current_load.saturating_sub(worker.in_flight_count());
        worker.refusing = false;
        self.rerank(worker_id);
        self.fill_worker(worker_id);
    }

    fn on_pong(&mut self, worker_id: WorkerId, pong: Pong) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.external_load = pong.current_load.saturating_sub(worker.in_flight_count());
            worker.refusing = false;
            self.rerank(worker_id);
            self.fill_worker(worker_id); // it may have been resting after a refusal
        }
    }

    fn drain_worker(
        &mut self,
        now: Instant,
        worker_id: WorkerId,
        timeout: Duration,
        reason: Option<String>,
    ) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        match worker.phase {
            Phase::AwaitingRegister { .. } => {
                self.remove_worker(worker_id);
                self.outputs.push_back(Output::CloseWorker {
                    worker: worker_id,
                    reason: CloseReason::Drained,
                });
            }
            Phase::Draining { .. } => {}
            Phase::Active => {
                worker.phase = Phase::Draining {
                    deadline: now.checked_add(timeout),
                };
                self.unrank(worker_id);
                self.send(
                    worker_id,
                    ServerMessage::GracefulShutdown(GracefulShutdown {
                        reason,
                        drain_timeout_secs: Some(timeout.as_secs()),
                    }),
                );
                self.rearm_worker(worker_id);
                self.close_if_drained(worker_id);
            }
        }
    }

    fn close_if_drained(&mut self, worker_id: WorkerId) {
        let drained = self
            .workers
            .get(&worker_id)
            .is_some_and(|w| matches!(w.phase, Phase::Draining { .. }) && w.in_flight.is_empty());
        if drained {
            self.remove_worker(worker_id);
            self.outputs.push_back(Output::CloseWorker {
                worker: worker_id,
                reason: CloseReason::Drained,
            });
        }
    }

    fn on_worker_timer(&mut self, now: Instant, worker_id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        worker.timer = None; // popped by handle_timeout
        match worker.phase {
            Phase::AwaitingRegister {
                deadline: Some(deadline),
            } if deadline <= now => {
                self.lose_worker(now, worker_id, Some(CloseReason::RegisterTimeout));
                return;
            }
            Phase::Draining {
                deadline: Some(deadline),
            } if deadline <= now => {
                self.lose_worker(now, worker_id, Some(CloseReason::DrainTimeout));
                return;
            }
            _ => {}
        }
        if worker.silent_deadline.is_some_and(|at| at <= now) {
            self.lose_worker(now, worker_id, Some(CloseReason::HeartbeatTimeout));
            return;
        }
        if worker.next_ping.is_some_and(|at| at <= now) {
            worker.next_ping = now.checked_add(self.config.heartbeat_interval);
            if worker.silent_deadline.is_none() {
                worker.silent_deadline = now.checked_add(self.config.heartbeat_timeout);
            }
            self.send(
                worker_id,
                ServerMessage::Ping(Ping {
                    timestamp_unix_ms: None,
                }),
            );
        }
        self.rearm_worker(worker_id);
    }

    /// Removes a worker whose link is gone or being closed: its requests go back
    /// to the queue (if nothing was streamed yet and requeues remain) or fail.
    fn lose_worker(&mut self, now: Instant, worker_id: WorkerId, close: Option<CloseReason>) {
        let Some(worker) = self.remove_worker(worker_id) else {
            return;
        };
        let mut orphans: Vec<RequestId> = worker.in_flight.into_iter().collect();
        orphans.sort_by_key(|id| self.requests.get(id).map_or(0, |r| r.arrival));
        if let Some(reason) = close {
            // The link is still up: tell the worker to stop before closing it.
            let cancel_reason = match reason {
                CloseReason::DrainTimeout => CancelReason::GracefulShutdown,
                CloseReason::Shutdown => CancelReason::ServerShutdown,
                _ => CancelReason::WorkerDisconnect,
            };
            for request_id in &orphans {
                self.send(
                    worker_id,
                    ServerMessage::Cancel(Cancel {
                        request_id: (*request_id).into(),
                        reason: cancel_reason.clone(),
                    }),
                );
            }
            self.outputs.push_back(Output::CloseWorker {
                worker: worker_id,
                reason,
            });
        }
        let mut to_front = Vec::new();
        for request_id in orphans {
            let Some(request) = self.requests.get_mut(&request_id) else {
                continue;
            };
            let RequestState::Assigned { streamed, .. } = request.state else {
                continue;
            };
            request.state = RequestState::Detached;
            if streamed {
                self.fail(request_id, Failure::WorkerLost, true);
            } else if self.count_requeue(request_id) && !self.try_assign(request_id) {
                to_front.push(request_id);
            }
        }
        // Oldest first at the front: enqueue the youngest first.
        for request_id in to_front.into_iter().rev() {
            self.enqueue(now, request_id, QueueEnd::Front);
        }
    }

    /// Counts one more requeue of a detached request, or fails it when none are left.
    fn count_requeue(&mut self, request_id: RequestId) -> bool {
        let Some(request) = self.requests.get_mut(&request_id) else {
            return false;
        };
        if request.requeues >= self.config.max_requeues {
            self.fail(request_id, Failure::RequeueExhausted, false);
            return false;
        }
        request.requeues += 1;
        self.stats.requeues += 1;
        true
    }

    /// Takes a worker out of every table; returns what it was.
    fn remove_worker(&mut self, worker_id: WorkerId) -> Option<WorkerEntry> {
        self.unrank(worker_id);
        let mut worker = self.workers.remove(&worker_id)?;
        self.timers
            .rearm(TimerOwner::Worker(worker_id), &mut worker.timer, None);
        if let Some(provider) = self.providers.get_mut(&worker.provider) {
            provider.withdraw(&worker.models);
        }
        Some(worker)
    }

    fn rearm_worker(&mut self, worker_id: WorkerId) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            let next = worker.next_deadline();
            self.timers
                .rearm(TimerOwner::Worker(worker_id), &mut worker.timer, next);
        }
    }

    /// Takes a worker out of its models' ready sets.
    fn unrank(&mut self, worker_id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if let Some(rank) = worker.ranked.take()
            && let Some(provider) = self.providers.get_mut(&worker.provider)
        {
            provider.unmark_ready(&worker.models, (rank, worker_id));
        }
    }

    /// Puts a worker in its models' ready sets under its current rank, or takes it out if it is not eligible.
    fn rerank(&mut self, worker_id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let eligible = worker.phase == Phase::Active
            && !worker.refusing
            && !self.shutting_down
            && worker.in_flight_count() < worker.max_concurrent;
        let desired = eligible.then(|| {
            self.policy.rank(&WorkerLoad {
                worker: worker_id,
                in_flight: worker.in_flight_count(),
                external_load: worker.external_load,
                max_concurrent: worker.max_concurrent,
                last_assigned: worker.last_assigned,
            })
        });
        if desired == worker.ranked {
            return;
        }
        let provider = self
            .providers
            .get_mut(&worker.provider)
            .expect("a worker's provider exists");
        if let Some(old) = worker.ranked {
            provider.unmark_ready(&worker.models, (old, worker_id));
        }
        if let Some(new) = desired {
            provider.mark_ready(&worker.models, (new, worker_id));
        }
        worker.ranked = desired;
    }

    fn send(&mut self, worker: WorkerId, message: ServerMessage) {
        self.outputs
            .push_back(Output::SendToWorker { worker, message });
    }

    // ---- requests ----

    fn on_request(&mut self, now: Instant, new: NewRequest) -> Result<(), InputError> {
        if self.requests.contains_key(&new.id) {
            return Err(InputError::DuplicateRequest(new.id));
        }
        let id = new.id;
        let failure = if self.shutting_down {
            Some(Failure::ShuttingDown)
        } else if !self.knows_model(&new.provider, new.model.as_str()) {
            Some(Failure::UnknownModel)
        } else {
            None
        };
        if let Some(failure) = failure {
            self.end_unregistered(id, failure);
            return Ok(());
        }
        self.arrivals += 1;
        let entry = RequestEntry {
            provider: new.provider,
            frame: Arc::new(RequestFrame {
                request_id: id.into(),
                model: new.model,
                endpoint_path: new.endpoint_path,
                is_streaming: new.streaming,
                body: new.body,
                headers: new.headers,
            }),
            arrival: self.arrivals,
            queue_deadline: now.checked_add(self.config.queue_timeout),
            deadline: now.checked_add(self.config.request_timeout),
            client_done_deadline: None,
            requeues: 0,
            state: RequestState::Queued { seq: 0 },
            timer: None,
        };
        self.requests.insert(id, entry);
        if !self.try_assign(id) {
            self.enqueue(now, id, QueueEnd::Back);
        }
        Ok(())
    }

    /// Ends a request that never entered the tables.
    fn end_unregistered(&mut self, request: RequestId, failure: Failure) {
        self.stats.failed += 1;
        self.outputs.push_back(Output::RequestEnded {
            request,
            outcome: Outcome::Failed {
                failure,
                streamed: false,
            },
        });
    }

    /// Hands the request to the best ready worker of its model, if there is one.
    fn try_assign(&mut self, request_id: RequestId) -> bool {
        let Some(request) = self.requests.get(&request_id) else {
            return false;
        };
        let best = self
            .providers
            .get(&request.provider)
            .and_then(|p| p.route(request.frame.model.as_str()))
            .and_then(|route| route.ready.first())
            .map(|(_, worker)| *worker);
        match best {
            Some(worker) => {
                self.assign(request_id, worker);
                true
            }
            None => false,
        }
    }

    /// Puts a request that no worker can take now in its queue, or fails it.
    fn enqueue(&mut self, now: Instant, request_id: RequestId, end: QueueEnd) {
        let Some(request) = self.requests.get(&request_id) else {
            return;
        };
        let provider = self
            .providers
            .get(&request.provider)
            .expect("a known model's provider exists");
        let bound = self.config.max_queue_len;
        let failure = if self.shutting_down {
            Some(Failure::ShuttingDown)
        } else if request.queue_deadline.is_some_and(|at| at <= now) {
            Some(Failure::QueueTimeout)
        } else if bound != 0 && provider.queued() >= bound {
            Some(match end {
                QueueEnd::Back => Failure::QueueFull,
                QueueEnd::Front => Failure::NoCapacity,
            })
        } else {
            None
        };
        if let Some(failure) = failure {
            self.fail(request_id, failure, false);
            return;
        }
        let request = self.requests.get_mut(&request_id).expect("checked above");
        let seq = self
            .providers
            .get_mut(&request.provider)
            .expect("checked above")
            .enqueue(&request.frame.model, request_id, end);
        request.state = RequestState::Queued { seq };
        let next = request.next_deadline();
        self.timers
            .rearm(TimerOwner::Request(request_id), &mut request.timer, next);
    }

    fn assign(&mut self, request_id: RequestId, worker_id: WorkerId) {
        let (Some(request), Some(worker)) = (
            self.requests.get_mut(&request_id),
            self.workers.get_mut(&worker_id),
        ) else {
            return;
        };
        request.state = RequestState::Assigned {
            worker: worker_id,
            streamed_bytes: 0,
            streamed: false,
        };
        let next = request.next_deadline();
        self.timers
            .rearm(TimerOwner::Request(request_id), &mut request.timer, next);
        worker.in_flight.insert(request_id);
        self.assignments += 1;
        worker.last_assigned = self.assignments;
        self.stats.dispatched += 1;
        let frame = Arc::clone(&request.frame);
        self.rerank(worker_id);
        self.send(worker_id, ServerMessage::Request(frame));
    }

    /// Gives a worker with free capacity the oldest waiting requests it can serve.
    fn fill_worker(&mut self, worker_id: WorkerId) {
        loop {
            let Some(worker) = self.workers.get(&worker_id) else {
                return;
            };
            if worker.ranked.is_none() {
                return; // not eligible: draining, full, or shutting down
            }
            let Some((seq, request_id)) = self
                .providers
                .get(&worker.provider)
                .and_then(|p| p.oldest_for(&worker.models))
            else {
                return;
            };
            let model = self.requests[&request_id].frame.model.clone();
            self.providers
                .get_mut(&worker.provider)
                .expect("checked above")
                .dequeue(model.as_str(), seq);
            self.assign(request_id, worker_id);
        }
    }

    /// Ends a request on its client's account: removed from the queue, or cancelled at
    /// its worker (for the worker, the client went away either way). With a failure,
    /// the client is still there and hears of it; without, it left.
    fn stop_for_client(&mut self, request_id: RequestId, failure: Option<Failure>) {
        let Some(request) = self.requests.get(&request_id) else {
            return; // ended already
        };
        let mut streamed = false;
        if let RequestState::Assigned {
            worker,
            streamed: s,
            ..
        } = request.state
        {
            streamed = s;
            self.send(
                worker,
                ServerMessage::Cancel(Cancel {
                    request_id: request_id.into(),
                    reason: CancelReason::ClientDisconnect,
                }),
            );
        }
        let outcome = match failure {
            Some(failure) => Outcome::Failed { failure, streamed },
            None => Outcome::Cancelled,
        };
        self.finish(request_id, outcome);
    }

    /// The client left with its whole answer: a request that streamed waits briefly
    /// for its completion (the first such deadline holds); any other is stopped as
    /// if the client had simply gone (so it can never be requeued without a client).
    fn client_done(&mut self, now: Instant, request_id: RequestId) {
        let grace = self.config.finished_stream_grace;
        let Some(request) = self.requests.get_mut(&request_id) else {
            return; // ended already
        };
        if !matches!(request.state, RequestState::Assigned { streamed: true, .. }) {
            self.stop_for_client(request_id, None);
            return;
        }
        if request.client_done_deadline.is_none() {
            request.client_done_deadline = Some(now.checked_add(grace).unwrap_or(now));
            let next = request.next_deadline();
            self.timers
                .rearm(TimerOwner::Request(request_id), &mut request.timer, next);
        }
    }

    fn on_request_timer(&mut self, now: Instant, request_id: RequestId) {
        let Some(request) = self.requests.get_mut(&request_id) else {
            return;
        };
        request.timer = None; // popped by handle_timeout
        let timed_out = request.deadline.is_some_and(|at| at <= now);
        match request.state {
            RequestState::Queued { .. } => {
                let queue_expired = request.queue_deadline.is_some_and(|at| at <= now);
                if queue_expired || timed_out {
                    // Both may have passed: name the one that came first.
                    let request_first = match (request.deadline, request.queue_deadline) {
                        (Some(deadline), Some(queue_deadline)) => deadline < queue_deadline,
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                    let failure = if timed_out && request_first {
                        Failure::RequestTimeout
                    } else {
                        Failure::QueueTimeout
                    };
                    self.fail(request_id, failure, false);
                    return;
                }
            }
            RequestState::Assigned { .. }
                if request.client_done_deadline.is_some_and(|at| {
                    at <= now && request.deadline.is_none_or(|deadline| at <= deadline)
                }) =>
            {
                // The client has its answer but the worker never said it was done.
                self.stop_for_client(request_id, None);
                return;
            }
            RequestState::Assigned {
                worker, streamed, ..
            } if timed_out => {
                self.send(
                    worker,
                    ServerMessage::Cancel(Cancel {
                        request_id: request_id.into(),
                        reason: CancelReason::Timeout,
                    }),
                );
                self.fail(request_id, Failure::RequestTimeout, streamed);
                return;
            }
            RequestState::Detached if timed_out => {
                self.fail(request_id, Failure::RequestTimeout, false);
                return;
            }
            RequestState::Assigned { .. } | RequestState::Detached => {}
        }
        let next = request.next_deadline();
        self.timers
            .rearm(TimerOwner::Request(request_id), &mut request.timer, next);
    }

    /// Ends a live request with a failure.
    fn fail(&mut self, request_id: RequestId, failure: Failure, streamed: bool) {
        self.finish(request_id, Outcome::Failed { failure, streamed });
    }

    /// Ends a live request: one `RequestEnded`, then its worker slot goes to the next waiting request.
    fn finish(&mut self, request_id: RequestId, outcome: Outcome) {
        let Some(mut request) = self.requests.remove(&request_id) else {
            return;
        };
        self.timers
            .rearm(TimerOwner::Request(request_id), &mut request.timer, None);
        match &outcome {
            Outcome::Completed(_) => self.stats.completed += 1,
            Outcome::Failed { .. } => self.stats.failed += 1,
            Outcome::Cancelled => self.stats.cancelled += 1,
        }
        self.outputs.push_back(Output::RequestEnded {
            request: request_id,
            outcome,
        });
        match request.state {
            RequestState::Queued { seq } => {
                if let Some(provider) = self.providers.get_mut(&request.provider) {
                    provider.dequeue(request.frame.model.as_str(), seq);
                }
            }
            RequestState::Detached => {}
            RequestState::Assigned { worker, .. } => {
                let Some(entry) = self.workers.get_mut(&worker) else {
                    return; // the worker is being removed
                };
                entry.in_flight.remove(&request_id);
                self.ended.insert(request_id, worker);
                self.rerank(worker);
                self.close_if_drained(worker);
                self.fill_worker(worker);
            }
        }
    }

    /// Checks that `worker` may speak about `request`: it must be running there.
    /// Late frames for requests that ended there are dropped quietly; anything
    /// else (including an id this relay never issues) is a protocol violation,
    /// and too many close the link. Returns the request when it is running there.
    fn owned_request(
        &mut self,
        now: Instant,
        worker: WorkerId,
        request: &WireRequestId,
    ) -> Option<RequestId> {
        if let Some(id) = request.as_request_id() {
            if let Some(entry) = self.requests.get(&id)
                && matches!(entry.state, RequestState::Assigned { worker: w, .. } if w == worker)
            {
                return Some(id);
            }
            if self.ended.ended_on(id, worker) {
                self.stats.late_frames += 1;
                return None;
            }
        }
        self.stats.protocol_violations += 1;
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.violations += 1;
            if entry.violations >= self.config.max_protocol_violations {
                self.lose_worker(now, worker, Some(CloseReason::TooManyViolations));
            }
        }
        None
    }

    fn on_chunk(&mut self, now: Instant, worker: WorkerId, chunk: ResponseChunk) {
        let ResponseChunk { request_id, chunk } = chunk;
        let Some(request_id) = self.owned_request(now, worker, &request_id) else {
            return;
        };
        if chunk.is_empty() {
            return;
        }
        let limit = self.config.max_stream_bytes;
        let request = self.requests.get_mut(&request_id).expect("owned");
        let RequestState::Assigned {
            streamed_bytes,
            streamed,
            ..
        } = &mut request.state
        else {
            return;
        };
        *streamed_bytes += chunk.len() as u64;
        if *streamed_bytes > limit {
            let streamed = *streamed;
            self.send(
                worker,
                ServerMessage::Cancel(Cancel {
                    request_id: request_id.into(),
                    // Only the documented reasons go out (existing workers know no others);
                    // for the worker, the stream's reader went away.
                    reason: CancelReason::ClientDisconnect,
                }),
            );
            self.fail(request_id, Failure::StreamTooLarge, streamed);
            return;
        }
        *streamed = true;
        self.outputs.push_back(Output::StreamChunk {
            request: request_id,
            chunk,
        });
    }

    fn on_complete(&mut self, now: Instant, worker: WorkerId, complete: ResponseComplete) {
        let Some(request_id) = self.owned_request(now, worker, &complete.request_id) else {
            return;
        };
        self.finish(
            request_id,
            Outcome::Completed(Completion {
                status_code: complete.status_code,
                headers: complete.headers,
                body: complete.body,
                token_counts: complete.token_counts,
            }),
        );
    }

    fn on_worker_error(&mut self, now: Instant, worker: WorkerId, error: WorkerError) {
        let Some(request_id) = &error.request_id else {
            return; // about the link as a whole: for the driver's logs, not for routing
        };
        let Some(request_id) = self.owned_request(now, worker, request_id) else {
            return;
        };
        let streamed = matches!(
            self.requests[&request_id].state,
            RequestState::Assigned { streamed: true, .. }
        );
        let refused = matches!(error.code.as_str(), REFUSED_DRAINING | REFUSED_AT_CAPACITY);
        if refused && !streamed {
            self.requeue_refused(now, worker, request_id);
            return;
        }
        self.finish(
            request_id,
            Outcome::Failed {
                failure: Failure::WorkerError {
                    code: error.code,
                    message: error.message,
                },
                streamed,
            },
        );
    }

    /// A worker refused a request before starting it: rest the worker, requeue the request.
    fn requeue_refused(&mut self, now: Instant, worker_id: WorkerId, request_id: RequestId) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.in_flight.remove(&request_id);
            worker.refusing = true;
            self.ended.insert(request_id, worker_id);
            self.rerank(worker_id);
        }
        if let Some(request) = self.requests.get_mut(&request_id) {
            request.state = RequestState::Detached;
        }
        if self.count_requeue(request_id) && !self.try_assign(request_id) {
            self.enqueue(now, request_id, QueueEnd::Front);
        }
        self.close_if_drained(worker_id);
    }

    // ---- shutdown ----

    fn shutdown(&mut self, now: Instant, drain_timeout: Duration) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let mut queued: Vec<RequestId> = self
            .providers
            .values()
            .flat_map(Provider::all_queued)
            .collect();
        queued.sort_by_key(|id| self.requests[id].arrival);
        for request_id in queued {
            self.fail(request_id, Failure::ShuttingDown, false);
        }
        let mut workers: Vec<WorkerId> = self.workers.keys().copied().collect();
        workers.sort();
        for worker in workers {
            self.drain_worker(now, worker, drain_timeout, Some("server_shutdown".into()));
        }
    }
}

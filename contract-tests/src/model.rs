//! The reference model: the relay's behavior contract restated as simply as possible.
//!
//! Plain ordered maps and a single queue vector; every choice (which worker,
//! which waiting request, which failure) is made here by scanning, so it can be
//! read against `docs/behavior-contract.md` line by line. Each applied
//! [`Transition`] resolves into the concrete relay inputs of the step
//! ([`Step::stimuli`]) and the effects the relay must produce ([`Step::expect`]).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use modelrelay_core::relay::{
    AuthOutcome, CloseReason, Completion, Failure, Input, NewRequest, Outcome, RelayConfig,
};
use modelrelay_core::wire::{
    CancelReason, Headers, LinkFlow, ModelsUpdate, Pong, REFUSED_AT_CAPACITY, REFUSED_DRAINING,
    Register, ResponseChunk, ResponseComplete, WILDCARD_MODEL, WireVersion, WorkerError,
    WorkerMessage, refusal_complete,
};
use modelrelay_core::{ModelName, ProviderId, RequestId, WireRequestId, WorkerId};
use proptest::prelude::*;
use proptest::sample::Index;

/// Model names workers may advertise; clients also ask for [`UNKNOWN_MODEL`].
pub const MODELS: [&str; 3] = ["a", "b", "c"];
/// A model no worker ever advertises by name (index `MODELS.len()`); only wildcard workers serve it.
pub const UNKNOWN_MODEL: &str = "zz";
/// The index of [`WILDCARD_MODEL`] in worker lists (and, rarely, a request for `*` itself).
pub const WILDCARD: usize = MODELS.len() + 1;

/// The name of model index `index`: one of [`MODELS`], [`UNKNOWN_MODEL`] or the wildcard.
pub fn model_name(index: usize) -> &'static str {
    match index {
        WILDCARD => WILDCARD_MODEL,
        _ => MODELS.get(index).copied().unwrap_or(UNKNOWN_MODEL),
    }
}
/// Queue bound used by the contract tests (small, so it is hit).
pub const QUEUE_BOUND: usize = 3;
/// Queue timeout, milliseconds.
pub const QUEUE_TIMEOUT_MS: u64 = 20_000;
/// Request timeout, milliseconds.
pub const REQUEST_TIMEOUT_MS: u64 = 45_000;
/// Ping interval, milliseconds.
pub const HEARTBEAT_INTERVAL_MS: u64 = 15_000;
/// Silence allowed after a ping, milliseconds.
pub const HEARTBEAT_TIMEOUT_MS: u64 = 5_000;
/// Time allowed for `register`, milliseconds.
pub const REGISTER_TIMEOUT_MS: u64 = 10_000;
/// How long a request whose client left with the whole stream waits for its completion, milliseconds.
pub const FINISHED_STREAM_GRACE_MS: u64 = 2_000;
/// Requeues allowed per request.
pub const MAX_REQUEUES: u8 = 3;
/// Violations before a link is closed.
pub const MAX_VIOLATIONS: u32 = 3;

/// The relay configuration the model describes.
pub fn relay_config() -> RelayConfig {
    RelayConfig {
        max_queue_len: QUEUE_BOUND,
        queue_timeout: Some(Duration::from_millis(QUEUE_TIMEOUT_MS)),
        request_timeout: Some(Duration::from_millis(REQUEST_TIMEOUT_MS)),
        max_requeues: MAX_REQUEUES,
        heartbeat_interval: Duration::from_millis(HEARTBEAT_INTERVAL_MS),
        heartbeat_timeout: Duration::from_millis(HEARTBEAT_TIMEOUT_MS),
        register_timeout: Duration::from_millis(REGISTER_TIMEOUT_MS),
        max_protocol_violations: MAX_VIOLATIONS,
        finished_stream_grace: Duration::from_millis(FINISHED_STREAM_GRACE_MS),
        ..RelayConfig::default()
    }
}

/// The provider every model worker and request belongs to.
pub fn provider() -> ProviderId {
    ProviderId::new("local")
}

/// An abstract event; picks are indices into whatever exists when it is applied.
#[derive(Clone, Debug)]
pub enum Transition {
    /// A worker link opens (and registers at once, if `register`).
    Connect {
        /// Whether the secret is right.
        auth_ok: bool,
        /// Whether it sends `register` right away.
        register: bool,
        /// Indices into [`MODELS`].
        models: Vec<usize>,
        /// Its `max_concurrent`.
        max_concurrent: u32,
    },
    /// A worker link drops.
    Disconnect(Index),
    /// A worker stops sending anything (a partition), forever.
    Silence(Index),
    /// A worker sends an undecodable frame.
    InvalidFrame(Index),
    /// A worker is drained with this many seconds to finish.
    Drain(Index, u64),
    /// A worker changes its models.
    ModelsUpdate(Index, Vec<usize>),
    /// A worker answers with this much load beyond the relay's requests.
    Pong(Index, u32),
    /// A client asks for a model (an index for [`model_name`]).
    Request(usize),
    /// The operator sends a request for a model pinned to one worker (any
    /// connected one; with none, an id no worker has).
    PinnedRequest(Index, usize),
    /// A running request's worker streams a chunk.
    Chunk(Index),
    /// A running request's worker completes it.
    Complete(Index),
    /// A running request's worker reports a backend error.
    Fail(Index),
    /// A running request's worker refuses it as draining.
    Refuse(Index),
    /// A running request's worker refuses it as at capacity, the v1 way: a
    /// `response_complete` 503 marked with `x-modelrelay-refused`.
    RefuseMarked(Index),
    /// A client goes away (the request may have ended already).
    ClientGone(Index),
    /// A client goes away after its stream's final event (the request may have ended already).
    ClientDone(Index),
    /// A worker sends a chunk for a request that already ended there.
    LateFrame(Index),
    /// A worker sends a chunk for a request it was never given.
    ForeignFrame(Index, Index),
    /// Time passes.
    Advance(u64),
    /// The relay shuts down with this many seconds of drain.
    Shutdown(u64),
}

/// One concrete thing the test does to the relay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Stimulus {
    /// Feed this input at the current time.
    Input(Input),
    /// Let time pass to this many milliseconds since start, answering pings of live workers.
    AdvanceTo(u64),
}

/// What the relay must do in a step, compared as sets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Expectations {
    /// `(worker, request)` dispatches.
    pub dispatched: Vec<(u64, u64)>,
    /// `(worker, request, reason)` cancel frames.
    pub cancels: Vec<(u64, u64, CancelReason)>,
    /// `(worker, reason)` link closes.
    pub closes: Vec<(u64, CloseKind)>,
    /// `(request, outcome)` ends.
    pub ended: Vec<(u64, Outcome)>,
    /// Requests a chunk was forwarded for, in order.
    pub chunks: Vec<u64>,
}

/// A close reason without its free-text detail.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum CloseKind {
    /// Wrong secret.
    Unauthorized,
    /// Broke the protocol.
    ProtocolError,
    /// Too many frames about others' requests.
    TooManyViolations,
    /// Never registered.
    RegisterTimeout,
    /// Went silent.
    HeartbeatTimeout,
    /// Finished draining.
    Drained,
    /// Drain deadline passed.
    DrainTimeout,
    /// Relay shutting down.
    Shutdown,
}

impl From<&CloseReason> for CloseKind {
    fn from(reason: &CloseReason) -> Self {
        match reason {
            CloseReason::Unauthorized => Self::Unauthorized,
            CloseReason::ProtocolError(_) => Self::ProtocolError,
            CloseReason::TooManyViolations => Self::TooManyViolations,
            CloseReason::RegisterTimeout => Self::RegisterTimeout,
            CloseReason::HeartbeatTimeout => Self::HeartbeatTimeout,
            CloseReason::Drained => Self::Drained,
            CloseReason::DrainTimeout => Self::DrainTimeout,
            CloseReason::Shutdown => Self::Shutdown,
        }
    }
}

/// What one applied transition turned into.
#[derive(Clone, Debug, Default)]
pub struct Step {
    /// Inputs to feed, in order.
    pub stimuli: Vec<Stimulus>,
    /// Effects the relay must produce.
    pub expect: Expectations,
    /// The queue (request ids, in service order) before the step.
    pub queue_before: Vec<u64>,
    /// Workers that do not answer pings during the step.
    pub silent: BTreeSet<u64>,
}

/// Where a request is in the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelStatus {
    /// In the queue.
    Queued,
    /// On a worker.
    Assigned {
        /// The worker.
        worker: u64,
        /// Whether chunks went out.
        streamed: bool,
    },
    /// Between workers, only inside a step.
    Detached,
}

/// A live request.
#[derive(Clone, Debug)]
pub struct ModelRequest {
    /// Index into [`MODELS`].
    pub model: usize,
    /// When it arrived, ms.
    pub arrived: u64,
    /// How often it was requeued.
    pub requeues: u8,
    /// Where it is.
    pub status: ModelStatus,
    /// Its client left with the whole stream: cancelled unless completed by then, ms.
    pub client_done: Option<u64>,
    /// The only worker that may serve it, if the operator pinned it.
    pub pinned: Option<u64>,
}

/// A connected worker.
#[derive(Clone, Debug)]
pub struct ModelWorker {
    /// Registered yet.
    pub registered: bool,
    /// Deadline for `register`, ms.
    pub register_deadline: u64,
    /// Indices into [`MODELS`], first-seen order, no repeats.
    pub models: Vec<usize>,
    /// `max_concurrent`.
    pub max_concurrent: u32,
    /// Requests on it.
    pub in_flight: BTreeSet<u64>,
    /// Load it reported beyond ours.
    pub external: u32,
    /// Assignment count when it last got work.
    pub last_assigned: u64,
    /// Drain deadline, if draining.
    pub draining: Option<u64>,
    /// Partitioned: sends nothing.
    pub silent: bool,
    /// Next ping, ms.
    pub next_ping: Option<u64>,
    /// Lost unless it speaks by then, ms.
    pub silent_deadline: Option<u64>,
    /// Resting after a refusal.
    pub refusing: bool,
    /// Frames about others' requests so far.
    pub violations: u32,
}

/// The whole model.
#[derive(Clone, Debug, Default)]
pub struct RelayModel {
    /// Milliseconds since start.
    pub now: u64,
    next_worker: u64,
    next_request: u64,
    /// Connected workers.
    pub workers: BTreeMap<u64, ModelWorker>,
    /// Live requests.
    pub requests: BTreeMap<u64, ModelRequest>,
    /// Waiting requests in service order.
    pub queue: Vec<u64>,
    /// Models ever advertised by name (never [`WILDCARD`]).
    pub known: BTreeSet<usize>,
    /// Ended requests and the worker they ended on, if any.
    pub ended: BTreeMap<u64, Option<u64>>,
    /// Arrival time of every request that entered the relay, ms.
    pub arrivals: BTreeMap<u64, u64>,
    assignments: u64,
    /// Shutdown began.
    pub shutting_down: bool,
    /// Late frames dropped.
    pub late_frames: u64,
    /// Violations counted.
    pub violations: u64,
    /// Requeues counted.
    pub requeues: u64,
    /// The last applied step.
    pub step: Step,
}

fn request_id(id: u64) -> RequestId {
    RequestId::new(id)
}

fn wire_id(id: u64) -> WireRequestId {
    RequestId::new(id).into()
}

fn worker_id(id: u64) -> WorkerId {
    WorkerId::new(id)
}

fn frame(worker: u64, message: WorkerMessage) -> Stimulus {
    Stimulus::Input(Input::WorkerFrame {
        worker: worker_id(worker),
        message,
    })
}

fn chunk_frame(worker: u64, request: u64) -> Stimulus {
    frame(
        worker,
        WorkerMessage::ResponseChunk(ResponseChunk {
            request_id: wire_id(request),
            chunk: Bytes::from(format!("data: {request}\n\n")),
        }),
    )
}

fn model_names(models: &[usize]) -> Vec<String> {
    models.iter().map(|m| model_name(*m).to_owned()).collect()
}

/// First-seen order, no repeats: what sanitizing leaves of a list of valid names.
fn dedup(models: &[usize]) -> Vec<usize> {
    let mut seen = BTreeSet::new();
    models.iter().copied().filter(|m| seen.insert(*m)).collect()
}

impl RelayModel {
    // ---- transitions into steps ----

    /// Applies one transition: resolves it, predicts its effects.
    pub fn apply(&mut self, transition: &Transition) {
        self.step = Step {
            queue_before: self.queue.clone(),
            silent: self
                .workers
                .iter()
                .filter(|(_, w)| w.silent)
                .map(|(id, _)| *id)
                .collect(),
            ..Step::default()
        };
        match transition {
            Transition::Connect {
                auth_ok,
                register,
                models,
                max_concurrent,
            } => self.connect(*auth_ok, *register, models, *max_concurrent),
            Transition::Disconnect(pick) => {
                if let Some(w) = self.pick_worker(pick, false) {
                    self.stimulus(Stimulus::Input(Input::WorkerDisconnected {
                        worker: worker_id(w),
                    }));
                    self.lose(w, None);
                }
            }
            Transition::Silence(pick) => {
                if let Some(w) = self.pick_worker(pick, true) {
                    self.workers.get_mut(&w).expect("picked").silent = true;
                }
            }
            Transition::InvalidFrame(pick) => {
                if let Some(w) = self.pick_worker(pick, false) {
                    self.stimulus(Stimulus::Input(Input::WorkerFrameInvalid {
                        worker: worker_id(w),
                        detail: "garbage".into(),
                    }));
                    self.heard_from(w);
                    self.lose(w, Some(CloseKind::ProtocolError));
                }
            }
            Transition::Drain(pick, secs) => {
                if let Some(w) = self.pick_worker(pick, false) {
                    self.stimulus(Stimulus::Input(Input::DrainWorker {
                        worker: worker_id(w),
                        timeout: Duration::from_secs(*secs),
                        reason: None,
                    }));
                    self.drain(w, secs * 1000);
                }
            }
            Transition::ModelsUpdate(pick, models) => {
                if let Some(w) = self.pick_registered(pick) {
                    let load = self.reported_load(w);
                    self.stimulus(frame(
                        w,
                        WorkerMessage::ModelsUpdate(ModelsUpdate {
                            models: model_names(models),
                            current_load: load,
                        }),
                    ));
                    self.heard_from(w);
                    let worker = self.workers.get_mut(&w).expect("picked");
                    worker.models = dedup(models);
                    worker.refusing = false;
                    self.note_known(models);
                    self.fill(w);
                }
            }
            Transition::Pong(pick, external) => {
                if let Some(w) = self.pick_registered(pick) {
                    let in_flight = self.workers[&w].in_flight.len() as u32;
                    self.stimulus(frame(
                        w,
                        WorkerMessage::Pong(Pong {
                            current_load: in_flight + external,
                            timestamp_unix_ms: None,
                        }),
                    ));
                    self.heard_from(w);
                    self.workers.get_mut(&w).expect("picked").external = *external;
                    self.pong(w);
                }
            }
            Transition::Request(model) => self.request(*model, None),
            Transition::PinnedRequest(pick, model) => {
                let worker = self.pick_worker(pick, true).unwrap_or(self.next_worker);
                self.request(*model, Some(worker));
            }
            Transition::Chunk(pick) => {
                if let Some((w, r)) = self.pick_running(pick) {
                    self.stimulus(chunk_frame(w, r));
                    self.heard_from(w);
                    if let Some(request) = self.requests.get_mut(&r) {
                        request.status = ModelStatus::Assigned {
                            worker: w,
                            streamed: true,
                        };
                    }
                    self.step.expect.chunks.push(r);
                }
            }
            Transition::Complete(pick) => {
                if let Some((w, r)) = self.pick_running(pick) {
                    self.stimulus(frame(
                        w,
                        WorkerMessage::ResponseComplete(ResponseComplete {
                            request_id: wire_id(r),
                            status_code: 200,
                            headers: Headers::new(),
                            body: Bytes::new(),
                            token_counts: None,
                        }),
                    ));
                    self.heard_from(w);
                    self.finish(r, completed());
                }
            }
            Transition::Fail(pick) => {
                if let Some((w, r)) = self.pick_running(pick) {
                    self.worker_error(w, r, "backend_error");
                }
            }
            Transition::Refuse(pick) => {
                if let Some((w, r)) = self.pick_running(pick) {
                    self.worker_error(w, r, REFUSED_DRAINING);
                }
            }
            Transition::RefuseMarked(pick) => {
                if let Some((w, r)) = self.pick_running(pick) {
                    self.marked_refusal(w, r);
                }
            }
            Transition::ClientGone(pick) => {
                if self.next_request > 0 {
                    let r = pick.index(self.next_request as usize) as u64;
                    self.stimulus(Stimulus::Input(Input::ClientGone {
                        request: request_id(r),
                    }));
                    self.client_gone(r);
                }
            }
            Transition::ClientDone(pick) => {
                if self.next_request > 0 {
                    let r = pick.index(self.next_request as usize) as u64;
                    self.stimulus(Stimulus::Input(Input::ClientDone {
                        request: request_id(r),
                    }));
                    let now = self.now;
                    match self.requests.get_mut(&r) {
                        Some(request)
                            if matches!(
                                request.status,
                                ModelStatus::Assigned { streamed: true, .. }
                            ) =>
                        {
                            request
                                .client_done
                                .get_or_insert(now + FINISHED_STREAM_GRACE_MS);
                        }
                        Some(_) => self.client_gone(r),
                        None => {}
                    }
                }
            }
            Transition::LateFrame(pick) => {
                let candidates: Vec<(u64, u64)> = self
                    .ended
                    .iter()
                    .filter_map(|(r, w)| w.map(|w| (w, *r)))
                    .filter(|(w, r)| {
                        // Not silent, and not running it again (after a refusal it may get it back).
                        self.workers
                            .get(w)
                            .is_some_and(|w| !w.silent && !w.in_flight.contains(r))
                    })
                    .collect();
                if !candidates.is_empty() {
                    let (w, r) = candidates[pick.index(candidates.len())];
                    self.stimulus(chunk_frame(w, r));
                    self.heard_from(w);
                    self.late_frames += 1;
                }
            }
            Transition::ForeignFrame(worker_pick, request_pick) => {
                if let Some(w) = self.pick_registered(worker_pick) {
                    // Any id except the worker's own running or ended requests.
                    let own = |r: &u64| {
                        self.workers[&w].in_flight.contains(r)
                            || self.ended.get(r) == Some(&Some(w))
                    };
                    let candidates: Vec<u64> =
                        (0..self.next_request + 2).filter(|r| !own(r)).collect();
                    let r = candidates[request_pick.index(candidates.len())];
                    self.stimulus(chunk_frame(w, r));
                    self.heard_from(w);
                    self.violations += 1;
                    let worker = self.workers.get_mut(&w).expect("picked");
                    worker.violations += 1;
                    if worker.violations >= MAX_VIOLATIONS {
                        self.lose(w, Some(CloseKind::TooManyViolations));
                    }
                }
            }
            Transition::Advance(ms) => self.advance(self.now + ms),
            Transition::Shutdown(secs) => {
                self.stimulus(Stimulus::Input(Input::Shutdown {
                    drain_timeout: Duration::from_secs(*secs),
                }));
                self.shutdown(secs * 1000);
            }
        }
    }

    fn stimulus(&mut self, stimulus: Stimulus) {
        self.step.stimuli.push(stimulus);
    }

    fn pick_worker(&self, pick: &Index, include_silent: bool) -> Option<u64> {
        let ids: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| include_silent || !w.silent)
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then(|| ids[pick.index(ids.len())])
    }

    fn pick_registered(&self, pick: &Index) -> Option<u64> {
        let ids: Vec<u64> = self
            .workers
            .iter()
            .filter(|(_, w)| w.registered && !w.silent)
            .map(|(id, _)| *id)
            .collect();
        (!ids.is_empty()).then(|| ids[pick.index(ids.len())])
    }

    fn pick_running(&self, pick: &Index) -> Option<(u64, u64)> {
        let running: Vec<(u64, u64)> = self
            .workers
            .iter()
            .filter(|(_, w)| !w.silent)
            .flat_map(|(id, w)| w.in_flight.iter().map(move |r| (*id, *r)))
            .collect();
        (!running.is_empty()).then(|| running[pick.index(running.len())])
    }

    fn reported_load(&self, w: u64) -> u32 {
        let worker = &self.workers[&w];
        worker.in_flight.len() as u32 + worker.external
    }

    /// Any frame from a worker proves it alive.
    fn heard_from(&mut self, w: u64) {
        if let Some(worker) = self.workers.get_mut(&w) {
            worker.silent_deadline = None;
        }
    }

    // ---- the contract ----

    fn connect(&mut self, auth_ok: bool, register: bool, models: &[usize], max_concurrent: u32) {
        let w = self.next_worker;
        self.next_worker += 1;
        self.stimulus(Stimulus::Input(Input::WorkerConnected {
            worker: worker_id(w),
            provider: provider(),
            wire: WireVersion::V1,
            flow: LinkFlow::Unwindowed,
            auth: if auth_ok {
                AuthOutcome::Accepted
            } else {
                AuthOutcome::Rejected
            },
        }));
        if !auth_ok || self.shutting_down {
            let kind = if auth_ok {
                CloseKind::Shutdown
            } else {
                CloseKind::Unauthorized
            };
            self.step.expect.closes.push((w, kind));
            return;
        }
        self.workers.insert(
            w,
            ModelWorker {
                registered: false,
                register_deadline: self.now + REGISTER_TIMEOUT_MS,
                models: Vec::new(),
                max_concurrent,
                in_flight: BTreeSet::new(),
                external: 0,
                last_assigned: 0,
                draining: None,
                silent: false,
                next_ping: None,
                silent_deadline: None,
                refusing: false,
                violations: 0,
            },
        );
        if register {
            self.stimulus(frame(
                w,
                WorkerMessage::Register(Register {
                    worker_name: format!("w{w}"),
                    models: model_names(models),
                    max_concurrent,
                    protocol_version: Some("2026-04-bridge-v1".into()),
                    current_load: None,
                }),
            ));
            let worker = self.workers.get_mut(&w).expect("inserted");
            worker.registered = true;
            worker.models = dedup(models);
            worker.next_ping = Some(self.now + HEARTBEAT_INTERVAL_MS);
            self.note_known(models);
            self.fill(w);
        }
    }

    /// A live request's client left: cancelled at its worker, if it has one.
    fn client_gone(&mut self, r: u64) {
        let Some(request) = self.requests.get(&r) else {
            return;
        };
        if let ModelStatus::Assigned { worker, .. } = request.status {
            self.step
                .expect
                .cancels
                .push((worker, r, CancelReason::ClientDisconnect));
        }
        self.finish(r, Outcome::Cancelled);
    }

    fn request(&mut self, model: usize, pinned: Option<u64>) {
        let r = self.next_request;
        self.next_request += 1;
        let name = model_name(model);
        self.stimulus(Stimulus::Input(Input::RequestArrived(NewRequest {
            id: request_id(r),
            provider: provider(),
            model: ModelName::new(name),
            endpoint_path: "/v1/chat/completions".into(),
            streaming: true,
            body: Bytes::from_static(b"{}"),
            headers: Headers::new(),
            pinned_to: pinned.map(worker_id),
        })));
        let failure = if self.shutting_down {
            Some(Failure::ShuttingDown)
        } else if !self.known.contains(&model) && !self.has_wildcard_worker() {
            Some(Failure::UnknownModel)
        } else {
            None
        };
        if let Some(failure) = failure {
            self.step.expect.ended.push((r, failed(failure, false)));
            self.ended.insert(r, None);
            return;
        }
        self.arrivals.insert(r, self.now);
        self.requests.insert(
            r,
            ModelRequest {
                model,
                arrived: self.now,
                requeues: 0,
                status: ModelStatus::Detached,
                client_done: None,
                pinned,
            },
        );
        if !self.try_assign(r) {
            self.enqueue(r, false);
        }
    }

    /// Whether a worker may take new work of any model now.
    fn takes_work(&self, w: &ModelWorker) -> bool {
        w.registered
            && w.draining.is_none()
            && !w.refusing
            && !self.shutting_down
            && (w.in_flight.len() as u32) < w.max_concurrent
    }

    /// The worker a request for `model` goes to: among the workers that take
    /// work and name the model, else among those that take work and advertise
    /// the wildcard: the least loaded, then the least recently used, then the lowest id.
    fn best_worker(&self, model: usize) -> Option<u64> {
        let best_advertising = |advertised: usize| {
            self.workers
                .iter()
                .filter(|(_, w)| self.takes_work(w) && w.models.contains(&advertised))
                .min_by_key(|(id, w)| {
                    (
                        w.in_flight.len() as u64 + u64::from(w.external),
                        w.last_assigned,
                        **id,
                    )
                })
                .map(|(id, _)| *id)
        };
        best_advertising(model).or_else(|| best_advertising(WILDCARD))
    }

    /// Whether a registered worker advertises the wildcard (draining, busy or resting ones too).
    fn has_wildcard_worker(&self) -> bool {
        self.workers
            .values()
            .any(|w| w.registered && w.models.contains(&WILDCARD))
    }

    /// Remembers the models of a list that name a model (the wildcard names none).
    fn note_known(&mut self, models: &[usize]) {
        self.known
            .extend(models.iter().copied().filter(|m| *m != WILDCARD));
    }

    /// Assigns a request to the best worker for its model or, pinned, to its
    /// worker if that one takes work and serves the model.
    fn try_assign(&mut self, r: u64) -> bool {
        let ModelRequest { model, pinned, .. } = self.requests[&r];
        let choice = match pinned {
            Some(w) => self
                .workers
                .get(&w)
                .filter(|worker| self.takes_work(worker) && serves(worker, model))
                .map(|_| w),
            None => self.best_worker(model),
        };
        match choice {
            Some(w) => {
                self.assign(r, w);
                true
            }
            None => false,
        }
    }

    fn assign(&mut self, r: u64, w: u64) {
        let worker = self.workers.get_mut(&w).expect("assign to a live worker");
        assert!(
            (worker.in_flight.len() as u32) < worker.max_concurrent,
            "model bug: over capacity"
        );
        worker.in_flight.insert(r);
        self.assignments += 1;
        worker.last_assigned = self.assignments;
        self.requests.get_mut(&r).expect("live").status = ModelStatus::Assigned {
            worker: w,
            streamed: false,
        };
        self.step.expect.dispatched.push((w, r));
    }

    /// Queues a request no worker takes now, or ends it: a pinned one always ends.
    fn enqueue(&mut self, r: u64, front: bool) {
        let ModelRequest {
            arrived, pinned, ..
        } = self.requests[&r];
        let failure = if self.shutting_down {
            Some(Failure::ShuttingDown)
        } else if pinned.is_some() {
            Some(Failure::WorkerUnavailable)
        } else if arrived + QUEUE_TIMEOUT_MS <= self.now {
            Some(Failure::QueueTimeout)
        } else if self.queue.len() >= QUEUE_BOUND {
            Some(if front {
                Failure::NoCapacity
            } else {
                Failure::QueueFull
            })
        } else {
            None
        };
        if let Some(failure) = failure {
            self.finish(r, failed(failure, false));
            return;
        }
        if front {
            self.queue.insert(0, r);
        } else {
            self.queue.push(r);
        }
        self.requests.get_mut(&r).expect("live").status = ModelStatus::Queued;
    }

    /// Gives a worker the earliest waiting requests it can serve, while it has room.
    fn fill(&mut self, w: u64) {
        loop {
            let Some(worker) = self.workers.get(&w) else {
                return;
            };
            if !self.takes_work(worker) {
                return;
            }
            let Some(position) = self
                .queue
                .iter()
                .position(|r| serves(worker, self.requests[r].model))
            else {
                return;
            };
            let r = self.queue.remove(position);
            self.assign(r, w);
        }
    }

    fn finish(&mut self, r: u64, outcome: Outcome) {
        let Some(request) = self.requests.remove(&r) else {
            return;
        };
        self.step.expect.ended.push((r, outcome));
        match request.status {
            ModelStatus::Queued => self.queue.retain(|q| *q != r),
            ModelStatus::Detached => {
                // A worker that refused it keeps its claim: its late frames stay quiet.
                self.ended.entry(r).or_insert(None);
            }
            ModelStatus::Assigned { worker, .. } => {
                if let Some(entry) = self.workers.get_mut(&worker) {
                    entry.in_flight.remove(&r);
                    self.ended.insert(r, Some(worker));
                    self.close_if_drained(worker);
                    self.fill(worker);
                } else {
                    self.ended.insert(r, None);
                }
            }
        }
    }

    fn close_if_drained(&mut self, w: u64) {
        if self
            .workers
            .get(&w)
            .is_some_and(|worker| worker.draining.is_some() && worker.in_flight.is_empty())
        {
            self.workers.remove(&w);
            self.step.expect.closes.push((w, CloseKind::Drained));
        }
    }

    /// One more requeue, or the end of the request when none are left.
    fn count_requeue(&mut self, r: u64) -> bool {
        let request = self.requests.get_mut(&r).expect("live");
        if request.requeues >= MAX_REQUEUES {
            self.finish(r, failed(Failure::RequeueExhausted, false));
            return false;
        }
        request.requeues += 1;
        self.requeues += 1;
        true
    }

    fn lose(&mut self, w: u64, close: Option<CloseKind>) {
        let Some(worker) = self.workers.remove(&w) else {
            return;
        };
        let orphans: Vec<u64> = worker.in_flight.iter().copied().collect();
        if let Some(kind) = close {
            let reason = match kind {
                CloseKind::DrainTimeout => CancelReason::GracefulShutdown,
                CloseKind::Shutdown => CancelReason::ServerShutdown,
                _ => CancelReason::WorkerDisconnect,
            };
            for r in &orphans {
                self.step.expect.cancels.push((w, *r, reason.clone()));
            }
            self.step.expect.closes.push((w, kind));
        }
        let mut to_front = Vec::new();
        for r in orphans {
            let request = self.requests.get_mut(&r).expect("in flight means live");
            let ModelStatus::Assigned { streamed, .. } = request.status else {
                unreachable!("in flight means assigned");
            };
            request.status = ModelStatus::Detached;
            if streamed {
                self.finish(r, failed(Failure::WorkerLost, true));
            } else if request.pinned.is_some() {
                let failure = if self.shutting_down {
                    Failure::ShuttingDown
                } else {
                    Failure::WorkerLost
                };
                self.finish(r, failed(failure, false));
            } else if self.count_requeue(r) && !self.try_assign(r) {
                to_front.push(r);
            }
        }
        for r in to_front.into_iter().rev() {
            self.enqueue(r, true);
        }
    }

    /// A v1 refusal: a marked 503 `response_complete`. Before any chunk it is a
    /// refusal; after one, the answer's end, passed on as it is.
    fn marked_refusal(&mut self, w: u64, r: u64) {
        let complete = refusal_complete(wire_id(r), REFUSED_AT_CAPACITY, "m");
        self.stimulus(frame(w, WorkerMessage::ResponseComplete(complete.clone())));
        self.heard_from(w);
        let ModelStatus::Assigned { streamed, .. } = self.requests[&r].status else {
            unreachable!("running");
        };
        if streamed {
            let answer = Completion {
                status_code: complete.status_code,
                headers: complete.headers,
                body: complete.body,
                token_counts: None,
            };
            self.finish(r, Outcome::Completed(answer));
        } else {
            self.refused(w, r);
        }
    }

    /// A worker refused a request before any chunk: it rests, the request is requeued.
    fn refused(&mut self, w: u64, r: u64) {
        let worker = self.workers.get_mut(&w).expect("running");
        worker.in_flight.remove(&r);
        worker.refusing = true;
        self.ended.insert(r, Some(w));
        self.requests.get_mut(&r).expect("live").status = ModelStatus::Detached;
        // Uncounted: a refusal does not spend the request's requeues. A pinned
        // request is not requeued at all: it fails.
        if self.requests[&r].pinned.is_none() {
            self.requeues += 1;
        }
        if !self.try_assign(r) {
            self.enqueue(r, true);
        }
        self.close_if_drained(w);
    }

    fn worker_error(&mut self, w: u64, r: u64, code: &str) {
        self.stimulus(frame(
            w,
            WorkerMessage::Error(WorkerError {
                request_id: Some(wire_id(r)),
                code: code.into(),
                message: "m".into(),
            }),
        ));
        self.heard_from(w);
        let ModelStatus::Assigned { streamed, .. } = self.requests[&r].status else {
            unreachable!("running");
        };
        if code == REFUSED_DRAINING && !streamed {
            self.refused(w, r);
        } else {
            self.finish(
                r,
                failed(
                    Failure::WorkerError {
                        code: code.into(),
                        message: "m".into(),
                    },
                    streamed,
                ),
            );
        }
    }

    fn pong(&mut self, w: u64) {
        self.workers.get_mut(&w).expect("live").refusing = false;
        self.fill(w);
    }

    fn drain(&mut self, w: u64, timeout_ms: u64) {
        let worker = self.workers.get_mut(&w).expect("picked");
        if !worker.registered {
            self.workers.remove(&w);
            self.step.expect.closes.push((w, CloseKind::Drained));
        } else if worker.draining.is_none() {
            worker.draining = Some(self.now + timeout_ms);
            self.close_if_drained(w);
        }
    }

    fn shutdown(&mut self, timeout_ms: u64) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let mut queued = self.queue.clone();
        queued.sort_unstable();
        for r in queued {
            self.finish(r, failed(Failure::ShuttingDown, false));
        }
        let ids: Vec<u64> = self.workers.keys().copied().collect();
        for w in ids {
            self.drain(w, timeout_ms);
        }
    }

    // ---- time ----

    fn request_deadline(&self, request: &ModelRequest) -> u64 {
        let deadline = request.arrived + REQUEST_TIMEOUT_MS;
        match request.status {
            ModelStatus::Queued => deadline.min(request.arrived + QUEUE_TIMEOUT_MS),
            ModelStatus::Assigned { .. } => {
                request.client_done.map_or(deadline, |at| at.min(deadline))
            }
            ModelStatus::Detached => deadline,
        }
    }

    fn worker_deadline(w: &ModelWorker) -> Option<u64> {
        let phase = if !w.registered {
            Some(w.register_deadline)
        } else {
            w.draining
        };
        [phase, w.next_ping, w.silent_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// The earliest pending deadline: requests before workers at the same instant, then by id.
    fn next_timer(&self) -> Option<(u64, bool, u64)> {
        let requests = self
            .requests
            .iter()
            .map(|(id, r)| (self.request_deadline(r), false, *id));
        let workers = self
            .workers
            .iter()
            .filter_map(|(id, w)| Self::worker_deadline(w).map(|at| (at, true, *id)));
        requests.chain(workers).min()
    }

    fn advance(&mut self, target: u64) {
        self.stimulus(Stimulus::AdvanceTo(target));
        while let Some((at, _, _)) = self.next_timer() {
            if at > target {
                break;
            }
            self.now = at;
            let mut pinged = Vec::new();
            // Everything due at this instant, in timer order.
            while let Some((due, is_worker, id)) = self.next_timer() {
                if due > self.now {
                    break;
                }
                if is_worker {
                    if self.worker_timer(id) {
                        pinged.push(id);
                    }
                } else {
                    self.request_timer(id);
                }
            }
            // Live workers answer their pings at once.
            for w in pinged {
                if self.workers.get(&w).is_some_and(|w| !w.silent) {
                    self.heard_from(w);
                    self.pong(w);
                }
            }
        }
        self.now = target;
    }

    /// Returns whether a ping went out.
    fn worker_timer(&mut self, w: u64) -> bool {
        let now = self.now;
        let worker = &self.workers[&w];
        if !worker.registered && worker.register_deadline <= now {
            self.lose(w, Some(CloseKind::RegisterTimeout));
            return false;
        }
        if worker.draining.is_some_and(|at| at <= now) {
            self.lose(w, Some(CloseKind::DrainTimeout));
            return false;
        }
        if worker.silent_deadline.is_some_and(|at| at <= now) {
            self.lose(w, Some(CloseKind::HeartbeatTimeout));
            return false;
        }
        let worker = self.workers.get_mut(&w).expect("live");
        if worker.next_ping.is_some_and(|at| at <= now) {
            worker.next_ping = Some(now + HEARTBEAT_INTERVAL_MS);
            if worker.silent_deadline.is_none() {
                worker.silent_deadline = Some(now + HEARTBEAT_TIMEOUT_MS);
            }
            return true;
        }
        false
    }

    fn request_timer(&mut self, r: u64) {
        let request = &self.requests[&r];
        let timed_out = request.arrived + REQUEST_TIMEOUT_MS <= self.now;
        match request.status {
            ModelStatus::Queued => {
                let failure = if timed_out && REQUEST_TIMEOUT_MS < QUEUE_TIMEOUT_MS {
                    Failure::RequestTimeout
                } else {
                    Failure::QueueTimeout
                };
                self.finish(r, failed(failure, false));
            }
            ModelStatus::Assigned { .. }
                if request.client_done.is_some_and(|at| {
                    at <= self.now && at <= request.arrived + REQUEST_TIMEOUT_MS
                }) =>
            {
                // The client has its whole stream; the completion never came.
                self.client_gone(r);
            }
            ModelStatus::Assigned { worker, streamed } => {
                assert!(
                    timed_out,
                    "model bug: assigned request timer before its deadline"
                );
                self.step
                    .expect
                    .cancels
                    .push((worker, r, CancelReason::Timeout));
                self.finish(r, failed(Failure::RequestTimeout, streamed));
            }
            ModelStatus::Detached => unreachable!("no request is detached between events"),
        }
    }
}

/// Whether `worker` can serve a request for `model`: it names it or advertises the wildcard.
pub fn serves(worker: &ModelWorker, model: usize) -> bool {
    worker.models.contains(&model) || worker.models.contains(&WILDCARD)
}

fn failed(failure: Failure, streamed: bool) -> Outcome {
    Outcome::Failed { failure, streamed }
}

fn completed() -> Outcome {
    Outcome::Completed(Completion {
        status_code: 200,
        headers: Headers::new(),
        body: Bytes::new(),
        token_counts: None,
    })
}

/// Model lists: one to three valid names, repeats allowed (sanitizing drops
/// them), now and then the wildcard (about one list in four holds it).
fn model_list() -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(
        prop_oneof![6 => 0..MODELS.len(), 1 => Just(WILDCARD)],
        1..=3,
    )
}

/// A request's model: a named one, one nobody names, now and then `*` itself.
fn requested_model() -> impl Strategy<Value = usize> {
    prop_oneof![10 => 0..=MODELS.len(), 1 => Just(WILDCARD)]
}

/// Random transitions, weighted toward the common ones.
pub fn transitions() -> BoxedStrategy<Transition> {
    prop_oneof![
        4 => (
            proptest::bool::weighted(0.9),
            proptest::bool::weighted(0.9),
            model_list(),
            1u32..=3
        )
            .prop_map(|(auth_ok, register, models, max_concurrent)| Transition::Connect {
                auth_ok,
                register,
                models,
                max_concurrent,
            }),
        1 => any::<Index>().prop_map(Transition::Disconnect),
        1 => any::<Index>().prop_map(Transition::Silence),
        1 => any::<Index>().prop_map(Transition::InvalidFrame),
        1 => (any::<Index>(), 1u64..=20).prop_map(|(w, s)| Transition::Drain(w, s)),
        1 => (any::<Index>(), model_list()).prop_map(|(w, m)| Transition::ModelsUpdate(w, m)),
        1 => (any::<Index>(), 0u32..=2).prop_map(|(w, l)| Transition::Pong(w, l)),
        8 => requested_model().prop_map(Transition::Request),
        2 => (any::<Index>(), requested_model()).prop_map(|(w, m)| Transition::PinnedRequest(w, m)),
        4 => any::<Index>().prop_map(Transition::Chunk),
        4 => any::<Index>().prop_map(Transition::Complete),
        1 => any::<Index>().prop_map(Transition::Fail),
        1 => any::<Index>().prop_map(Transition::Refuse),
        1 => any::<Index>().prop_map(Transition::RefuseMarked),
        2 => any::<Index>().prop_map(Transition::ClientGone),
        2 => any::<Index>().prop_map(Transition::ClientDone),
        1 => any::<Index>().prop_map(Transition::LateFrame),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(w, r)| Transition::ForeignFrame(w, r)),
        4 => prop_oneof![0u64..2_000, 2_000u64..25_000].prop_map(Transition::Advance),
    ]
    .boxed()
}

/// Like [`transitions`], plus a rare shutdown.
pub fn transitions_with_shutdown() -> BoxedStrategy<Transition> {
    prop_oneof![
        60 => transitions(),
        1 => (1u64..=20).prop_map(Transition::Shutdown),
    ]
    .boxed()
}

/// Transitions weighted toward worker churn: workers keep dying, refusing and
/// coming back, so requests reach the requeue limit.
pub fn churn_transitions() -> BoxedStrategy<Transition> {
    prop_oneof![
        6 => (model_list(), 1u32..=2).prop_map(|(models, max_concurrent)| Transition::Connect {
            auth_ok: true,
            register: true,
            models,
            max_concurrent,
        }),
        5 => any::<Index>().prop_map(Transition::Disconnect),
        2 => any::<Index>().prop_map(Transition::Refuse),
        1 => any::<Index>().prop_map(Transition::RefuseMarked),
        1 => any::<Index>().prop_map(Transition::Silence),
        1 => (any::<Index>(), 0u32..=2).prop_map(|(w, l)| Transition::Pong(w, l)),
        4 => (0..MODELS.len()).prop_map(Transition::Request),
        1 => (any::<Index>(), 0..MODELS.len()).prop_map(|(w, m)| Transition::PinnedRequest(w, m)),
        1 => any::<Index>().prop_map(Transition::Chunk),
        1 => any::<Index>().prop_map(Transition::Complete),
        1 => any::<Index>().prop_map(Transition::ClientGone),
        1 => any::<Index>().prop_map(Transition::ClientDone),
        2 => (0u64..8_000).prop_map(Transition::Advance),
    ]
    .boxed()
}

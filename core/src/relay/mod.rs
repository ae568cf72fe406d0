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
mod dispatch;
mod ended;
mod flow;
mod outcome;
mod request_entry;
mod request_side;
mod routes;
mod sanitize;
mod selection;
mod timers;
mod types;
mod worker_entry;
mod worker_side;

use std::collections::VecDeque;
use std::time::Instant;

use rustc_hash::FxHashMap;

pub use config::RelayConfig;
pub use flow::{CLIENT_REPORT_EVERY, FlowConfig, FlowView};
pub use outcome::{CloseReason, Completion, Failure, Outcome};
pub use sanitize::{
    MAX_MODEL_NAME_BYTES, MAX_MODELS_PER_WORKER, MAX_WORKER_NAME_BYTES, SanitizedModels,
    sanitize_models, sanitize_worker_name,
};
pub use selection::{LeastLoaded, SelectionPolicy, SelectionRank, WorkerLoad};
pub use types::{
    AuthOutcome, Input, InputError, NewRequest, Output, RelayStats, RequestStatus, WorkerInfo,
};

use ended::EndedRequests;
use flow::AnswerBudget;
use request_entry::{RequestEntry, RequestState};
use routes::Provider;
use timers::{Timer, Timers};
use worker_entry::{Phase, WorkerEntry};

use crate::ids::{ModelName, ProviderId, RequestId, WorkerId};
use crate::wire::{Cancel, CancelReason, ServerMessage};

/// The relay: decides where every request goes and when it ends. Pure: no I/O, no clock.
pub struct Relay {
    config: RelayConfig,
    policy: Box<dyn SelectionPolicy>,
    providers: FxHashMap<ProviderId, Provider>,
    workers: FxHashMap<WorkerId, WorkerEntry>,
    requests: FxHashMap<RequestId, RequestEntry>,
    ended: EndedRequests,
    timers: Timers,
    /// What to do next. Bounded: the driver drains it after every input, and
    /// one input yields at most a few outputs per request and worker it touches
    /// (a shutdown, the largest, ends each queued or running request once).
    outputs: VecDeque<Output>,
    assignments: u64,
    arrivals: u64,
    shutting_down: bool,
    stats: RelayStats,
    /// Flow control of streamed answers, when [`RelayConfig::flow`] turns it on.
    budget: Option<AnswerBudget>,
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
            budget: config.flow.map(AnswerBudget::new),
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
                flow,
                auth,
            } => return self.on_worker_connected(now, worker, provider, (wire, flow), auth),
            Input::WorkerFrame { worker, message } => self.on_worker_frame(now, worker, message),
            Input::WorkerFrameInvalid { worker, detail } => {
                self.lose_worker(now, worker, Some(CloseReason::ProtocolError(detail)));
            }
            Input::WorkerDisconnected { worker } => self.lose_worker(now, worker, None),
            Input::RequestArrived(request) => return self.on_request(now, request),
            Input::ClientGone { request } => self.stop_for_client(request, None),
            Input::ClientDone { request } => self.client_done(now, request),
            Input::ClientTook { request, total } => self.client_took(request, total),
            Input::ClientTooSlow { request } => {
                self.stop_for_client(request, Some(Failure::ClientTooSlow))
            }
            Input::DrainWorker {
                worker,
                timeout,
                reason,
            } => self.drain_worker(now, worker, timeout, reason),
            Input::RefreshModels { worker } => self.refresh_models(worker),
            Input::Shutdown { drain_timeout } => self.shutdown(now, drain_timeout),
        }
        Ok(())
    }

    /// The next thing for the driver to do.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// When [`Relay::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Lets time pass: expires queue and request deadlines, pings, heartbeats and drains due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(timer) = self.timers.pop_due(now) {
            match timer {
                Timer::Request(id, deadline) => self.on_request_deadline(id, deadline),
                Timer::Worker(id) => self.on_worker_timer(now, id),
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
            flow: w.flow,
        })
    }

    /// Number of connected worker links.
    pub fn worker_count(&self) -> usize {
        self.workers.len()
    }

    /// The models registered workers of `provider` serve now, sorted, without
    /// repeats; never [`WILDCARD_MODEL`](crate::wire::WILDCARD_MODEL), which
    /// names no model.
    pub fn models(&self, provider: &ProviderId) -> Vec<ModelName> {
        let mut models: Vec<ModelName> = self
            .workers
            .values()
            .filter(|w| &w.provider == provider)
            .flat_map(|w| w.models.iter())
            .filter(|model| model.as_str() != crate::wire::WILDCARD_MODEL)
            .cloned()
            .collect();
        models.sort();
        models.dedup();
        models
    }

    /// Whether any worker of `provider` has ever advertised `model` by name
    /// (a wildcard worker serving it does not count).
    pub fn knows_model(&self, provider: &ProviderId, model: &str) -> bool {
        self.providers.get(provider).is_some_and(|p| p.knows(model))
    }

    /// Whether a request for `model` may wait for a worker: some worker of
    /// `provider` has advertised it by name, or a registered worker advertises
    /// the wildcard now. Otherwise it fails at once as an unknown model.
    pub fn routes_model(&self, provider: &ProviderId, model: &str) -> bool {
        self.providers
            .get(provider)
            .is_some_and(|p| p.knows(model) || p.serves_any_model())
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

    /// Queues a frame for `worker`.
    fn send(&mut self, worker: WorkerId, message: ServerMessage) {
        self.outputs
            .push_back(Output::SendToWorker { worker, message });
    }

    /// Tells `worker` to stop working on `request`.
    fn send_cancel(&mut self, worker: WorkerId, request: RequestId, reason: CancelReason) {
        let cancel = Cancel {
            request_id: request.into(),
            reason,
        };
        self.send(worker, ServerMessage::Cancel(cancel));
    }

    /// Asks the driver to close `worker`'s link.
    fn close_link(&mut self, worker: WorkerId, reason: CloseReason) {
        self.outputs
            .push_back(Output::CloseWorker { worker, reason });
    }
}

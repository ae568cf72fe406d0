//! The worker-side state machine: links to one or more relays, registration,
//! admission, cancel routing, drain.
//!
//! The driver adds a link per relay ([`WorkerSession::add_link`]), dials when
//! asked ([`SessionOutput::Connect`]), reports each link going up or down,
//! passes relay frames and backend results in, and carries out the outputs:
//! frames to send, backend calls to start or abort.
//!
//! The worker's slots are the session's, whichever link a request comes on:
//! never more than `max_concurrent` requests run at once across all links. Each
//! relay is told the worker's whole capacity; when relays together send more
//! than fits, the session refuses the rest as at capacity, and tells the other
//! relays its load whenever a request starts or ends.

mod backend_side;
mod config;
mod failure;
mod liveness;
mod local_side;
mod read_window;
mod relay_link;
mod server_side;
mod text_carry;
mod types;

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use rustc_hash::FxHashMap;

pub use backend_side::BACKEND_OUTPUT_NOT_UTF8;
pub use config::SessionConfig;
pub use failure::failure_message;
pub use liveness::{LINK_PROBE_AFTER, LINK_PROBE_TIMEOUT, Liveness};
pub use read_window::{CHUNK_COST_OVERHEAD, DEFAULT_LINK_WRITE_WINDOW, chunk_cost};
pub use types::{LinkRequest, SessionInput, SessionOutput};

use liveness::Verdict;
use read_window::ReadWindow;
use relay_link::{LinkState, RelayLink};
use text_carry::TextCarry;

use crate::ids::LinkId;
use crate::wire::{CancelReason, ModelsUpdate, ResponseComplete, WorkerMessage};

/// The worker's side of the protocol. Pure: no I/O, no clock, no global randomness.
#[derive(Debug)]
pub struct WorkerSession {
    config: SessionConfig,
    models: Vec<String>,
    /// The relays, each with its own link; a link retired and down is removed.
    links: BTreeMap<LinkId, RelayLink>,
    /// The id the next link added gets.
    next_link: u64,
    /// The requests running on the backend, each with its read window. Never
    /// more than `max_concurrent`, whichever links they came on.
    running: FxHashMap<LinkRequest, ReadWindow>,
    /// On a v1 link, the start of a UTF-8 character a backend chunk split, per request.
    text_carry: TextCarry,
    /// Local shutdown in progress; abort what still runs at this instant.
    stop_deadline: Option<Instant>,
    stopping: bool,
    exited: bool,
    /// What to do next. Bounded: the driver drains it after every input, and
    /// one input yields at most one output per running request plus a few per
    /// link (a shutdown, the largest, aborts each of at most `max_concurrent`
    /// and closes each link).
    outputs: VecDeque<SessionOutput>,
}

impl WorkerSession {
    /// A session with no link yet: add one per relay with [`WorkerSession::add_link`].
    pub fn new(config: SessionConfig) -> Self {
        Self {
            models: local_side::advertisable(config.models.clone()),
            config,
            links: BTreeMap::new(),
            next_link: 0,
            running: FxHashMap::default(),
            text_carry: TextCarry::default(),
            stop_deadline: None,
            stopping: false,
            exited: false,
            outputs: VecDeque::new(),
        }
    }

    /// A link to one more relay, dialed at once; its id is new, never reused.
    pub fn add_link(&mut self) -> LinkId {
        let link = LinkId::new(self.next_link);
        self.next_link += 1;
        if self.stopping || self.exited {
            return link; // never dialed: the worker is on its way out
        }
        let record = RelayLink::connecting(link, self.config.backoff, self.config.jitter_seed);
        self.links.insert(link, record);
        self.outputs.push_back(SessionOutput::Connect { link });
        link
    }

    /// Stops using a relay (its address left DNS): it gets no new work, its
    /// link closes once its requests end, and it is never dialed again.
    pub fn retire_link(&mut self, link: LinkId) {
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        record.retired = true;
        match record.state {
            LinkState::Down { .. } => {
                self.links.remove(&link);
            }
            LinkState::Closing => {}
            LinkState::Connecting => self.close_link(link),
            LinkState::Registering { .. } | LinkState::Ready => self.after_request_ended(link),
        }
    }

    /// Feeds one event in.
    pub fn handle(&mut self, now: Instant, input: SessionInput) {
        if self.exited {
            return;
        }
        match input {
            SessionInput::LinkUp {
                link,
                wire,
                flow,
                liveness,
            } => self.on_link_up(now, link, (wire, flow), liveness),
            SessionInput::SignOfLife { link } => self.on_sign_of_life(now, link),
            SessionInput::LinkDown { link } => self.on_link_down(now, link, None),
            SessionInput::LinkRefused { link, retry_after } => {
                self.on_link_down(now, link, retry_after)
            }
            SessionInput::Frame { link, message } => self.on_frame(now, link, message),
            SessionInput::BackendChunk { request, chunk } => self.on_backend_chunk(request, chunk),
            SessionInput::BackendComplete {
                request,
                status_code,
                headers,
                body,
                token_counts,
            } => {
                let link = request.link;
                let complete = ResponseComplete {
                    request_id: request.id,
                    status_code,
                    headers,
                    body,
                    token_counts,
                };
                self.on_backend_complete(link, complete)
            }
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

    /// The next thing for the driver to do. Once the rest is done, each relay
    /// that last heard a load that is no longer the worker's hears the new one:
    /// at most one update per relay for all the inputs handled since.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<SessionOutput> {
        if self.outputs.is_empty() {
            self.send_owed_loads();
        }
        self.outputs.pop_front()
    }

    /// When [`WorkerSession::handle_timeout`] should next be called.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.links
            .values()
            .filter_map(RelayLink::deadline)
            .chain(self.stop_deadline)
            .min()
    }

    /// Lets time pass: reconnects, registration and drain deadlines, probes.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.exited {
            return;
        }
        if self.stop_deadline.is_some_and(|at| at <= now) {
            self.stop_deadline = None;
            self.abort_all(CancelReason::ServerShutdown);
            for link in self.link_ids() {
                self.close_link(link);
            }
        }
        for link in self.link_ids() {
            self.link_timeout(now, link);
        }
    }

    /// Requests running on the backend now, from every link.
    pub fn current_load(&self) -> u32 {
        u32::try_from(self.running.len()).unwrap_or(u32::MAX)
    }

    /// Whether some relay may route work here: a link registered, neither
    /// draining nor retired, and no local shutdown.
    pub fn is_serving(&self) -> bool {
        !self.stopping && self.links.values().any(RelayLink::takes_work)
    }

    /// Whether the session still keeps `link` (a retired link that went down is gone).
    pub fn has_link(&self, link: LinkId) -> bool {
        self.links.contains_key(&link)
    }

    /// Whether local shutdown has completed.
    pub fn has_exited(&self) -> bool {
        self.exited
    }

    /// The links, in id order (a copy: handlers change the map as they go).
    fn link_ids(&self) -> Vec<LinkId> {
        self.links.keys().copied().collect()
    }

    /// One link's deadlines: drain, liveness, reconnect, registration.
    fn link_timeout(&mut self, now: Instant, link: LinkId) {
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        if record.drain_deadline.is_some_and(|at| at <= now) {
            record.drain_deadline = None;
            self.close_link(link);
            return;
        }
        match record.watch.on_timeout(now) {
            Verdict::Alive => {}
            Verdict::Probe => self.outputs.push_back(SessionOutput::ProbeLink { link }),
            // A half-open link (a partition, a dropped NAT entry) never reports itself.
            Verdict::Dead => {
                self.close_link(link);
                return;
            }
        }
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        match record.state {
            LinkState::Down {
                reconnect_at: Some(at),
            } if at <= now => {
                record.state = LinkState::Connecting;
                self.outputs.push_back(SessionOutput::Connect { link });
            }
            LinkState::Registering {
                deadline: Some(deadline),
            } if deadline <= now => self.close_link(link),
            _ => {}
        }
    }

    /// The link `link`, if it is up (registering or registered).
    fn linked(&self, link: LinkId) -> Option<&RelayLink> {
        self.links.get(&link).filter(|record| record.linked())
    }

    /// Queues a frame for a relay.
    fn send(&mut self, link: LinkId, message: WorkerMessage) {
        self.outputs
            .push_back(SessionOutput::Send { link, message });
    }

    /// Asks the driver to close a link, if it is up or being opened.
    fn close_link(&mut self, link: LinkId) {
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        if record.open_or_opening() {
            record.watch = Default::default();
            record.state = LinkState::Closing;
            // Nothing sent on it from now on would arrive: stop its backend calls at once.
            self.abort_link(link, CancelReason::WorkerDisconnect);
            self.outputs.push_back(SessionOutput::CloseLink { link });
        }
    }

    /// Requests running that came on `link`.
    fn running_on(&self, link: LinkId) -> usize {
        self.running.keys().filter(|key| key.link == link).count()
    }

    /// A request that came on `link` started or ended: every other relay's
    /// idea of the worker's load is now out of date, and so is that of `link`'s
    /// relay if it rests the worker after a refusal (its own request ending
    /// frees a slot it would otherwise not hear of until its next ping).
    fn load_changed(&mut self, link: LinkId) {
        for (other, record) in &mut self.links {
            if *other != link || record.refused_since_told {
                record.load_owed = true;
            }
        }
    }

    /// Tells each registered relay that is owed the worker's load its new value,
    /// in a `models_update` (the one frame every relay reads a load from besides
    /// a pong). Relays that take no work from here are not told.
    fn send_owed_loads(&mut self) {
        if self.stopping {
            return;
        }
        let owed: Vec<LinkId> = self
            .links
            .iter()
            .filter(|(_, record)| record.load_owed && record.takes_work())
            .map(|(link, _)| *link)
            .collect();
        for link in owed {
            self.send_models(link);
        }
    }

    /// A request ended: a link that is closing for want of work (a local
    /// shutdown, a retired relay) closes once nothing runs on it.
    fn after_request_ended(&mut self, link: LinkId) {
        let Some(record) = self.links.get(&link) else {
            return;
        };
        if (self.stopping || record.retired) && record.linked() && self.running_on(link) == 0 {
            self.close_link(link);
        }
    }

    /// Stops every backend call, in request order.
    fn abort_all(&mut self, reason: CancelReason) {
        let mut running: Vec<LinkRequest> = self.running.drain().map(|(key, _)| key).collect();
        self.abort(&mut running, reason);
    }

    /// Stops the backend calls of the requests that came on `link`, in request order.
    fn abort_link(&mut self, link: LinkId, reason: CancelReason) {
        let mut running: Vec<LinkRequest> = self
            .running
            .keys()
            .filter(|key| key.link == link)
            .cloned()
            .collect();
        for key in &running {
            self.running.remove(key);
        }
        self.abort(&mut running, reason);
    }

    /// Asks the driver to stop the backend calls of `requests` (no longer running).
    fn abort(&mut self, requests: &mut [LinkRequest], reason: CancelReason) {
        if requests.is_empty() {
            return;
        }
        requests.sort();
        for request in requests.iter() {
            self.text_carry.forget(request);
            self.load_changed(request.link);
            self.outputs.push_back(SessionOutput::AbortRequest {
                request: request.clone(),
                reason: reason.clone(),
            });
        }
    }

    /// Sends a relay the current models and load.
    fn send_models(&mut self, link: LinkId) {
        let current_load = self.current_load();
        let models = if self.stopping {
            Vec::new()
        } else {
            self.models.clone()
        };
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        record.models_sent = true;
        record.load_owed = false;
        record.refused_since_told = false;
        self.send(
            link,
            WorkerMessage::ModelsUpdate(ModelsUpdate {
                models,
                current_load,
            }),
        );
    }

    /// Exits once a local shutdown has every link down.
    fn exit_if_done(&mut self) {
        let all_down = self
            .links
            .values()
            .all(|record| matches!(record.state, LinkState::Down { .. }));
        if self.stopping && all_down && !self.exited {
            self.exited = true;
            self.stop_deadline = None;
            self.outputs.push_back(SessionOutput::Exit);
        }
    }
}

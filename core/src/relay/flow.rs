//! Flow control of streamed answers: each request's byte window, and the budget
//! that every answer held for its client shares.
//!
//! On a windowed link (WebSocket v2.1, QUIC) a request may get [`INITIAL_WINDOW`]
//! payload bytes at dispatch; as its client takes bytes, the relay tops the
//! window up to `taken + window` with a `window_update` (on QUIC the link's
//! writer applies it to its read of the request's stream). On an unwindowed
//! link (v1, a v2 peer without v2.1) nothing paces the worker: the
//! bytes held for a client that lags are capped per request (`legacy_cap`),
//! and the stream is stopped with `client_too_slow` past it.
//!
//! Both kinds share one budget for the bytes the relay *holds* for clients
//! (`Σ received − taken`), not for the windows it granted: a client that reads
//! promptly holds next to nothing however wide its window, so thousands of
//! streams never wait on each other's grants. A top-up is granted while the
//! bytes held plus its increase fit the budget, else it waits, in request-id
//! order, until bytes are taken or released; a new request goes to a windowed
//! worker only while the bytes held leave room for its initial window; an
//! unwindowed stream that holds more than a window when the budget is spent is
//! stopped like the cap stops it. What was granted before the budget filled
//! may still arrive: the bytes held stay within the budget plus, at most, one
//! window per stream then being read.

use std::collections::BTreeSet;

use super::request_entry::RequestState;
use super::{Failure, Relay, SelectionRank};
use crate::ids::{RequestId, WorkerId};
use crate::wire::{INITIAL_WINDOW, LinkFlow, ServerMessage, WindowUpdate};

/// Answer bytes a client's connection takes between two reports of how much it
/// took ([`super::Input::ClientTook`]); it also reports when it leaves.
///
/// A client that has taken all it was granted has reported at least
/// `granted − CLIENT_REPORT_EVERY`, so its top-up (to that plus the window) is
/// at least `window − CLIENT_REPORT_EVERY ≥ window · 3/4` bytes, past the
/// `window / 4` a top-up must reach: a client that took everything always asks.
pub const CLIENT_REPORT_EVERY: u64 = 16 * 1024;

// The window is at least INITIAL_WINDOW (see `FlowConfig::window`), so this
// keeps every report within a quarter of any window.
const _: () = assert!(CLIENT_REPORT_EVERY <= INITIAL_WINDOW / 4);

/// A top-up is sent once it grows a window by at least this part of it (1/4).
const TOP_UP_DIVISOR: u64 = 4;

/// How the relay paces streamed answers and bounds what it holds for clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowConfig {
    /// Bytes a windowed request may have in flight past what its client took
    /// (at least [`INITIAL_WINDOW`]).
    pub window: u64,
    /// Bytes all answers may hold for their clients at once (at least one window).
    pub budget: u64,
    /// Bytes an unwindowed stream may hold for its client, and a windowed worker
    /// may send past its window, before the stream is stopped with `client_too_slow`.
    pub legacy_cap: u64,
}

impl Default for FlowConfig {
    fn default() -> Self {
        Self {
            window: 256 * 1024,
            budget: 128 * 1024 * 1024,
            legacy_cap: 16 * 1024 * 1024,
        }
    }
}

impl FlowConfig {
    /// The window in use: never below the protocol's initial one.
    fn window(&self) -> u64 {
        self.window.max(INITIAL_WINDOW)
    }

    /// The budget in use: never below one window, so a lone request always fits.
    fn budget(&self) -> u64 {
        self.budget.max(self.window())
    }
}

/// One request's answer as flow control counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StreamFlow {
    /// Cumulative payload bytes its worker may send; `None` on an unwindowed link.
    granted: Option<u64>,
    /// Payload bytes its worker sent and the relay passed on.
    received: u64,
    /// Bytes its client's connection took.
    taken: u64,
}

impl StreamFlow {
    /// A request just dispatched on a link with `link` flow.
    pub(crate) fn new(link: LinkFlow) -> Self {
        let granted = match link {
            LinkFlow::Windowed => Some(INITIAL_WINDOW),
            LinkFlow::Unwindowed => None,
        };
        Self {
            granted,
            received: 0,
            taken: 0,
        }
    }

    /// Its share of the budget: what it holds, or may still be sent, for its client.
    pub(crate) fn reserved(&self) -> u64 {
        let sent_or_allowed = self.granted.map_or(self.received, |g| g.max(self.received));
        sent_or_allowed - self.taken
    }

    /// Bytes passed on for its client that the client has not taken.
    pub(crate) fn held(&self) -> u64 {
        self.received - self.taken
    }
}

/// What becomes of a chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChunkVerdict {
    /// Pass it on; it is counted.
    Pass,
    /// Stop the stream with `client_too_slow`; the chunk is not counted.
    TooSlow,
}

/// The budget every held answer shares, and the requests waiting for it.
#[derive(Debug)]
pub(crate) struct AnswerBudget {
    config: FlowConfig,
    /// `Σ reserved()` over the live requests' flows.
    reserved: u64,
    /// `Σ held()` over the live requests' flows.
    held: u64,
    /// Windowed requests whose top-up did not fit, served in id order.
    starved: BTreeSet<RequestId>,
    /// A request was kept from a windowed worker for want of budget.
    dispatch_held: bool,
}

impl AnswerBudget {
    /// An empty budget under `config`.
    pub(crate) fn new(config: FlowConfig) -> Self {
        Self {
            config,
            reserved: 0,
            held: 0,
            starved: BTreeSet::new(),
            dispatch_held: false,
        }
    }

    /// Whether a new request may go to a windowed worker now: the bytes held
    /// leave room for its initial window.
    pub(crate) fn fits_new(&self) -> bool {
        self.held + INITIAL_WINDOW <= self.config.budget()
    }

    /// Notes that a request was kept from a windowed worker, to retry on a release.
    pub(crate) fn note_held(&mut self) {
        self.dispatch_held = true;
    }

    /// [`Self::fits_new`], noting a refusal.
    pub(crate) fn admits_windowed(&mut self) -> bool {
        let fits = self.fits_new();
        if !fits {
            self.note_held();
        }
        fits
    }

    /// The flow of a request dispatched on a `link` link, its window reserved.
    pub(crate) fn start(&mut self, link: LinkFlow) -> StreamFlow {
        let flow = StreamFlow::new(link);
        self.reserved += flow.reserved();
        flow
    }

    /// A request's flow ends (the request ended or went back to the queue).
    pub(crate) fn release(&mut self, request: RequestId, flow: &StreamFlow) {
        self.reserved -= flow.reserved();
        self.held -= flow.held();
        self.starved.remove(&request);
    }

    /// Applies `change` to `flow`, keeping the sums in step.
    fn update(&mut self, flow: &mut StreamFlow, change: impl FnOnce(&mut StreamFlow)) {
        self.reserved -= flow.reserved();
        self.held -= flow.held();
        change(flow);
        self.reserved += flow.reserved();
        self.held += flow.held();
    }

    /// A chunk of `len` payload bytes arrived for `flow`: count it, or stop the
    /// stream when it breaks the per-request cap or does not fit the budget.
    pub(crate) fn chunk(&mut self, flow: &mut StreamFlow, len: u64) -> ChunkVerdict {
        let mut next = *flow;
        next.received += len;
        let over_cap = match next.granted {
            // A windowed worker is stopped only when it ignores its window by far.
            Some(granted) => next.received.saturating_sub(granted) > self.config.legacy_cap,
            None => next.held() > self.config.legacy_cap,
        };
        // A client that keeps up has at most one report's worth untaken: the
        // budget stops only a stream that lags further while it is spent.
        let spent = self.held + len > self.config.budget();
        let lagging = next.granted.is_none() && flow.held() > CLIENT_REPORT_EVERY;
        if over_cap || (spent && lagging) {
            return ChunkVerdict::TooSlow;
        }
        self.update(flow, |f| *f = next);
        ChunkVerdict::Pass
    }

    /// `request`'s client has taken `total` bytes in all; a windowed request
    /// that should be topped up joins the line of those waiting for budget.
    pub(crate) fn took(&mut self, request: RequestId, flow: &mut StreamFlow, total: u64) {
        // Counts only grow, and a client cannot take what was never passed on.
        let taken = total.clamp(flow.taken, flow.received);
        self.update(flow, |f| f.taken = taken);
        if self.wanted(flow).is_some() {
            self.starved.insert(request);
        }
    }

    /// The window `flow` should be topped up to, if the top-up is worth a frame.
    fn wanted(&self, flow: &StreamFlow) -> Option<u64> {
        let granted = flow.granted?;
        let window = self.config.window();
        let target = flow.taken + window;
        (target >= granted + window / TOP_UP_DIVISOR).then_some(target)
    }

    /// The first request waiting for a top-up.
    pub(crate) fn first_starved(&self) -> Option<RequestId> {
        self.starved.first().copied()
    }

    /// Tops `request` up if the budget allows: the new window, or `None` when
    /// it must wait (it stays first in line) or no longer needs one (it leaves the line).
    pub(crate) fn top_up(&mut self, request: RequestId, flow: &mut StreamFlow) -> TopUp {
        let Some(target) = self.wanted(flow) else {
            self.starved.remove(&request);
            return TopUp::NotNeeded;
        };
        let mut next = *flow;
        next.granted = Some(target);
        let grows = next.reserved().saturating_sub(flow.reserved());
        if self.held + grows > self.config.budget() {
            return TopUp::Waits;
        }
        self.update(flow, |f| *f = next);
        self.starved.remove(&request);
        TopUp::Granted(target)
    }

    /// Forgets a waiting request that no longer has a flow.
    pub(crate) fn forget(&mut self, request: RequestId) {
        self.starved.remove(&request);
    }

    /// Whether a dispatch held back for budget could be retried now.
    pub(crate) fn take_held_dispatch(&mut self) -> bool {
        let retry = self.dispatch_held && self.fits_new();
        if retry {
            self.dispatch_held = false;
        }
        retry
    }

    /// What it holds now.
    pub(crate) fn view(&self) -> FlowView {
        FlowView {
            held_bytes: self.held,
            reserved_bytes: self.reserved,
            budget_bytes: self.config.budget(),
            waiting_for_budget: self.starved.len(),
        }
    }
}

/// The outcome of trying to top a request up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TopUp {
    /// Its window is now this many bytes.
    Granted(u64),
    /// The budget cannot cover it yet.
    Waits,
    /// Its window is wide enough.
    NotNeeded,
}

/// A read-only look at the answer budget.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowView {
    /// Answer bytes passed on for clients that have not taken them yet.
    pub held_bytes: u64,
    /// Bytes held plus bytes granted to windowed workers and not yet sent.
    pub reserved_bytes: u64,
    /// What `held_bytes` is kept within (see the module's note on grants).
    pub budget_bytes: u64,
    /// Windowed requests whose top-up waits for budget.
    pub waiting_for_budget: usize,
}

impl Relay {
    /// Starts the flow of a request just put on `worker` (when flow control is on).
    pub(super) fn start_flow(&mut self, request: RequestId, worker: WorkerId) {
        let (Some(budget), Some(entry), Some(worker)) = (
            self.budget.as_mut(),
            self.requests.get_mut(&request),
            self.workers.get(&worker),
        ) else {
            return;
        };
        entry.flow = Some(budget.start(worker.flow));
    }

    /// Ends a request's flow, giving its bytes back to the budget.
    pub(super) fn release_flow(&mut self, request: RequestId) {
        let Some(budget) = self.budget.as_mut() else {
            return;
        };
        match self.requests.get_mut(&request).and_then(|r| r.flow.take()) {
            Some(flow) => budget.release(request, &flow),
            None => budget.forget(request),
        }
    }

    /// Counts a chunk for its request's flow; `false` when the stream was
    /// stopped instead (`client_too_slow`).
    pub(super) fn flow_chunk(&mut self, request: RequestId, len: u64) -> bool {
        let (Some(budget), Some(entry)) = (self.budget.as_mut(), self.requests.get_mut(&request))
        else {
            return true;
        };
        let Some(flow) = entry.flow.as_mut() else {
            return true;
        };
        if budget.chunk(flow, len) == ChunkVerdict::Pass {
            return true;
        }
        self.stop_for_client(request, Some(Failure::ClientTooSlow));
        false
    }

    /// A request's client has taken `total` bytes in all: release what it took,
    /// and top its window up (now or when the budget allows).
    pub(super) fn client_took(&mut self, request: RequestId, total: u64) {
        let (Some(budget), Some(entry)) = (self.budget.as_mut(), self.requests.get_mut(&request))
        else {
            return;
        };
        let Some(flow) = entry.flow.as_mut() else {
            return;
        };
        budget.took(request, flow, total);
        self.pump_flow();
    }

    /// Gives released budget out: first to the waiting top-ups, in request-id
    /// order (the first that does not fit holds the others back, so none
    /// starves), then to requests held in the queue for want of budget.
    pub(super) fn pump_flow(&mut self) {
        let Some(budget) = self.budget.as_mut() else {
            return;
        };
        let mut grants = Vec::new();
        while let Some(request) = budget.first_starved() {
            let Some(entry) = self.requests.get_mut(&request) else {
                budget.forget(request);
                continue;
            };
            let (Some(flow), RequestState::Assigned { worker, .. }) =
                (entry.flow.as_mut(), entry.state)
            else {
                budget.forget(request);
                continue;
            };
            match budget.top_up(request, flow) {
                TopUp::Granted(max_bytes) => grants.push((worker, request, max_bytes)),
                TopUp::NotNeeded => {}
                TopUp::Waits => break,
            }
        }
        let retry_dispatch = budget.take_held_dispatch();
        for (worker, request, max_bytes) in grants {
            self.stats.window_updates += 1;
            let update = WindowUpdate {
                request_id: request.into(),
                max_bytes,
            };
            self.send(worker, ServerMessage::WindowUpdate(update));
        }
        if retry_dispatch {
            let mut ready: Vec<(SelectionRank, WorkerId)> = self
                .workers
                .iter()
                .filter(|(_, w)| w.flow == LinkFlow::Windowed)
                .filter_map(|(id, w)| w.ranked.map(|rank| (rank, *id)))
                .collect();
            ready.sort();
            for (_, worker) in ready {
                self.fill_worker(worker);
            }
        }
    }

    /// The answer budget now, when flow control is on.
    pub fn flow_view(&self) -> Option<FlowView> {
        self.budget.as_ref().map(AnswerBudget::view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    fn config(budget: u64) -> FlowConfig {
        FlowConfig {
            window: 256 * KIB,
            budget,
            legacy_cap: 1024 * KIB,
        }
    }

    #[test]
    fn a_windowed_start_reserves_the_initial_window_and_a_release_gives_it_back() {
        let mut budget = AnswerBudget::new(config(1024 * KIB));
        let flow = budget.start(LinkFlow::Windowed);
        assert_eq!(budget.view().reserved_bytes, INITIAL_WINDOW);
        let unwindowed = budget.start(LinkFlow::Unwindowed);
        assert_eq!(budget.view().reserved_bytes, INITIAL_WINDOW);
        budget.release(RequestId::new(1), &flow);
        budget.release(RequestId::new(2), &unwindowed);
        assert_eq!(budget.view(), AnswerBudget::new(config(1024 * KIB)).view());
    }

    #[test]
    fn chunks_within_the_window_reserve_nothing_more_and_taking_releases() {
        let mut budget = AnswerBudget::new(config(1024 * KIB));
        let mut flow = budget.start(LinkFlow::Windowed);
        assert_eq!(budget.chunk(&mut flow, 40 * KIB), ChunkVerdict::Pass);
        assert_eq!(budget.view().reserved_bytes, INITIAL_WINDOW);
        assert_eq!(budget.view().held_bytes, 40 * KIB);
        budget.took(RequestId::new(1), &mut flow, 30 * KIB);
        assert_eq!(budget.view().reserved_bytes, INITIAL_WINDOW - 30 * KIB);
        assert_eq!(budget.view().held_bytes, 10 * KIB);
        // A count past what was passed on, or one going back, is clamped.
        budget.took(RequestId::new(1), &mut flow, 90 * KIB);
        budget.took(RequestId::new(1), &mut flow, 5 * KIB);
        assert_eq!(budget.view().held_bytes, 0);
    }

    #[test]
    fn a_top_up_reaches_taken_plus_window_only_once_it_grows_by_a_quarter() {
        let mut budget = AnswerBudget::new(config(1024 * KIB));
        let id = RequestId::new(1);
        let mut flow = budget.start(LinkFlow::Windowed);
        budget.chunk(&mut flow, 64 * KIB);
        // taken + window = 272 KiB: far more than a quarter of a window past 64 KiB.
        budget.took(id, &mut flow, 16 * KIB);
        assert_eq!(budget.top_up(id, &mut flow), TopUp::Granted(272 * KIB));
        // 288 KiB would grow it by 16 KiB only: not worth a frame.
        budget.took(id, &mut flow, 32 * KIB);
        assert_eq!(budget.top_up(id, &mut flow), TopUp::NotNeeded);
        budget.took(id, &mut flow, 64 * KIB);
        assert_eq!(budget.top_up(id, &mut flow), TopUp::NotNeeded);
        // A quarter of a window (64 KiB) past 272 KiB: 336 KiB.
        budget.chunk(&mut flow, 16 * KIB);
        budget.took(id, &mut flow, 80 * KIB);
        assert_eq!(budget.top_up(id, &mut flow), TopUp::Granted(336 * KIB));
    }

    #[test]
    fn a_top_up_waits_while_the_bytes_held_fill_the_budget_and_so_do_new_dispatches() {
        let mut budget = AnswerBudget::new(config(256 * KIB));
        let (a, b) = (RequestId::new(1), RequestId::new(2));
        let mut first = budget.start(LinkFlow::Windowed);
        let mut second = budget.start(LinkFlow::Windowed);
        // Grants alone hold nothing: a new request still fits.
        assert!(budget.admits_windowed());
        budget.chunk(&mut first, 64 * KIB);
        budget.chunk(&mut second, 192 * KIB);
        // 256 KiB held: the budget is spent, and no new request goes out.
        assert!(!budget.admits_windowed());
        budget.took(a, &mut first, 64 * KIB);
        // 192 KiB held; the top-up to 320 KiB would let 256 KiB more in.
        assert_eq!(budget.first_starved(), Some(a));
        assert_eq!(budget.top_up(a, &mut first), TopUp::Waits);
        budget.release(b, &second);
        assert!(budget.take_held_dispatch(), "nothing is held now");
        assert_eq!(budget.top_up(a, &mut first), TopUp::Granted(320 * KIB));
    }

    #[test]
    fn an_unwindowed_stream_past_its_cap_or_the_budget_is_too_slow() {
        let mut budget = AnswerBudget::new(config(2048 * KIB));
        let mut flow = budget.start(LinkFlow::Unwindowed);
        assert_eq!(budget.chunk(&mut flow, 1024 * KIB), ChunkVerdict::Pass);
        assert_eq!(budget.chunk(&mut flow, 1), ChunkVerdict::TooSlow);
        budget.took(RequestId::new(1), &mut flow, 512 * KIB);
        assert_eq!(budget.chunk(&mut flow, 512 * KIB), ChunkVerdict::Pass);
        let mut other = budget.start(LinkFlow::Unwindowed);
        assert_eq!(budget.chunk(&mut other, 1024 * KIB), ChunkVerdict::Pass);
        // 2 MiB held in all: the next byte anywhere does not fit.
        assert_eq!(budget.chunk(&mut other, 1), ChunkVerdict::TooSlow);
    }

    #[test]
    fn a_windowed_worker_far_past_its_window_is_too_slow() {
        let mut budget = AnswerBudget::new(config(64 * 1024 * KIB));
        let mut flow = budget.start(LinkFlow::Windowed);
        assert_eq!(
            budget.chunk(&mut flow, INITIAL_WINDOW + 1024 * KIB),
            ChunkVerdict::Pass
        );
        assert_eq!(budget.chunk(&mut flow, 1), ChunkVerdict::TooSlow);
    }

    #[test]
    fn the_window_and_budget_in_use_have_floors() {
        let tiny = FlowConfig {
            window: 1,
            budget: 1,
            legacy_cap: 0,
        };
        assert_eq!(tiny.window(), INITIAL_WINDOW);
        assert_eq!(tiny.budget(), INITIAL_WINDOW);
    }
}

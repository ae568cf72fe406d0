//! What the relay keeps about one connected worker link.

use std::time::Instant;

use rustc_hash::FxHashSet;

use super::SelectionRank;
use super::timers::{Timer, Timers};
use crate::ids::{ModelName, ProviderId, RequestId, WorkerId};
use crate::wire::{LinkFlow, WireVersion};

/// Where a worker link is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Connected; `register` must come by the deadline.
    AwaitingRegister { deadline: Option<Instant> },
    /// Registered and taking work.
    Active,
    /// Taking no new work; closed once idle or at the deadline.
    Draining { deadline: Option<Instant> },
}

/// One connected worker link.
#[derive(Debug)]
pub(crate) struct WorkerEntry {
    pub(crate) provider: ProviderId,
    pub(crate) wire: WireVersion,
    /// Whether its link carries `window_update`s.
    pub(crate) flow: LinkFlow,
    pub(crate) connected_at: Instant,
    pub(crate) phase: Phase,
    pub(crate) name: String,
    pub(crate) models: Vec<ModelName>,
    pub(crate) max_concurrent: u32,
    pub(crate) in_flight: FxHashSet<RequestId>,
    pub(crate) external_load: u32,
    pub(crate) last_assigned: u64,
    /// The rank under which it sits in its models' ready sets, if it does.
    pub(crate) ranked: Option<SelectionRank>,
    /// It refused a request; no new work until its next pong or model update.
    pub(crate) refusing: bool,
    pub(crate) next_ping: Option<Instant>,
    /// Lost unless some frame arrives by then; set when a ping goes out unanswered.
    pub(crate) silent_deadline: Option<Instant>,
    pub(crate) violations: u32,
    /// The deadline armed for it in the relay's timers.
    pub(crate) armed: Option<Instant>,
}

impl WorkerEntry {
    /// A link of `provider` that opened at `now` and must register by `register_deadline`.
    pub(crate) fn new(
        now: Instant,
        provider: ProviderId,
        (wire, flow): (WireVersion, LinkFlow),
        register_deadline: Option<Instant>,
    ) -> Self {
        Self {
            provider,
            wire,
            flow,
            connected_at: now,
            phase: Phase::AwaitingRegister {
                deadline: register_deadline,
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
            armed: None,
        }
    }

    /// Requests this relay has running on it.
    pub(crate) fn in_flight_count(&self) -> u32 {
        u32::try_from(self.in_flight.len()).unwrap_or(u32::MAX)
    }

    /// The earliest of its deadlines: registration or drain, silence, next ping.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
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

    /// Arms in `timers` its earliest deadline, in place of the one armed before.
    pub(crate) fn rearm(&mut self, id: WorkerId, timers: &mut Timers) {
        let next = self.next_deadline();
        timers.rearm(Timer::Worker(id), &mut self.armed, next);
    }

    /// Takes its deadline out of `timers`.
    pub(crate) fn disarm(&mut self, id: WorkerId, timers: &mut Timers) {
        timers.rearm(Timer::Worker(id), &mut self.armed, None);
    }
}

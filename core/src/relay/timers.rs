//! The relay's pending deadlines, one per request and one per worker, earliest first.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::ids::{RequestId, WorkerId};

/// What a deadline belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum TimerOwner {
    Request(RequestId),
    Worker(WorkerId),
}

/// A set of `(deadline, owner)`; each owner keeps the deadline it armed so it can disarm it.
#[derive(Debug, Default)]
pub(crate) struct Timers {
    pending: BTreeSet<(Instant, TimerOwner)>,
}

impl Timers {
    /// Moves `owner`'s deadline from `armed` to `next`, updating `armed`.
    pub(crate) fn rearm(
        &mut self,
        owner: TimerOwner,
        armed: &mut Option<Instant>,
        next: Option<Instant>,
    ) {
        if *armed == next {
            return;
        }
        if let Some(previous) = armed.take() {
            self.pending.remove(&(previous, owner));
        }
        if let Some(at) = next {
            self.pending.insert((at, owner));
        }
        *armed = next;
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest deadline at or before `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<TimerOwner> {
        let (at, _) = self.pending.first()?;
        if *at > now {
            return None;
        }
        self.pending.pop_first().map(|(_, owner)| owner)
    }
}

//! The relay's pending deadlines, earliest first: each request's by kind, each worker's earliest.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::ids::{RequestId, WorkerId};

/// Which of a request's deadlines a timer is.
///
/// The order of the variants is the order of firing at equal instants: a queue or
/// client-done deadline wins over the total one that falls at the same moment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum RequestDeadline {
    /// The request waited for a worker as long as it may.
    Queue,
    /// Its client left with the whole answer and the worker's completion is due.
    ClientDone,
    /// The request took as long as it may in all.
    Total,
}

impl RequestDeadline {
    /// Every kind, in firing order.
    pub(crate) const ALL: [Self; 3] = [Self::Queue, Self::ClientDone, Self::Total];
}

/// A pending deadline: what it belongs to and, for a request, which one it is.
///
/// The derived order breaks ties between equal instants: requests before workers,
/// lower ids first, then a request's deadlines in [`RequestDeadline`] order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Timer {
    /// One of a request's deadlines.
    Request(RequestId, RequestDeadline),
    /// The earliest of a worker's deadlines (register or drain, silence, ping): they
    /// are settled in a fixed order of precedence when several are due, not by kind.
    Worker(WorkerId),
}

/// The instants at which one request's deadlines are armed, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ArmedDeadlines([Option<Instant>; RequestDeadline::ALL.len()]);

impl ArmedDeadlines {
    /// Where the instant of `kind` is kept.
    pub(crate) fn slot(&mut self, kind: RequestDeadline) -> &mut Option<Instant> {
        &mut self.0[kind as usize]
    }
}

/// A set of `(deadline, timer)`; each owner keeps the deadlines it armed so it can disarm them.
///
/// Generic over the instant type only so its unit tests can use plain numbers
/// instead of reading a clock; the relay uses `Instant`.
#[derive(Debug)]
pub(crate) struct Timers<At = Instant> {
    pending: BTreeSet<(At, Timer)>,
}

impl<At> Default for Timers<At> {
    fn default() -> Self {
        Self {
            pending: BTreeSet::new(),
        }
    }
}

impl<At: Ord + Copy> Timers<At> {
    /// Moves `timer` from `armed` to `next`, updating `armed`.
    pub(crate) fn rearm(&mut self, timer: Timer, armed: &mut Option<At>, next: Option<At>) {
        if *armed == next {
            return;
        }
        if let Some(previous) = armed.take() {
            self.pending.remove(&(previous, timer));
        }
        if let Some(at) = next {
            self.pending.insert((at, timer));
        }
        *armed = next;
    }

    /// The earliest deadline.
    pub(crate) fn next_deadline(&self) -> Option<At> {
        self.pending.first().map(|(at, _)| *at)
    }

    /// Removes and returns the earliest timer due at or before `now`.
    pub(crate) fn pop_due(&mut self, now: At) -> Option<Timer> {
        let (at, _) = self.pending.first()?;
        if *at > now {
            return None;
        }
        self.pending.pop_first().map(|(_, timer)| timer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_instants_fire_requests_by_id_then_kind_before_workers() {
        let at = 100_u64;
        let mut timers = Timers::default();
        let mut slots = [None; 5];
        let order = [
            Timer::Request(RequestId::new(1), RequestDeadline::Queue),
            Timer::Request(RequestId::new(1), RequestDeadline::Total),
            Timer::Request(RequestId::new(2), RequestDeadline::ClientDone),
            Timer::Request(RequestId::new(2), RequestDeadline::Total),
            Timer::Worker(WorkerId::new(1)),
        ];
        for (timer, slot) in order.iter().rev().zip(slots.iter_mut()) {
            timers.rearm(*timer, slot, Some(at));
        }
        let fired: Vec<Timer> = std::iter::from_fn(|| timers.pop_due(at)).collect();
        assert_eq!(fired, order);
    }

    #[test]
    fn a_rearmed_timer_leaves_its_old_instant() {
        let at = 100_u64;
        let later = at + 1;
        let timer = Timer::Worker(WorkerId::new(1));
        let mut timers = Timers::default();
        let mut armed = None;
        timers.rearm(timer, &mut armed, Some(at));
        timers.rearm(timer, &mut armed, Some(later));
        assert_eq!(timers.next_deadline(), Some(later));
        assert_eq!(timers.pop_due(at), None);
        assert_eq!(timers.pop_due(later), Some(timer));
    }
}

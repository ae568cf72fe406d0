//! What the relay keeps about one live request.

use std::sync::Arc;
use std::time::Instant;

use super::routes::QueueSeq;
use super::timers::{TimerOwner, Timers};
use crate::ids::{ProviderId, RequestId, WorkerId};
use crate::wire::RequestFrame;

/// Where a live request is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RequestState {
    /// In its provider's queue under `seq`.
    Queued { seq: QueueSeq },
    /// Running on `worker`.
    Assigned {
        worker: WorkerId,
        streamed_bytes: u64,
        streamed: bool,
    },
    /// Off its worker and not yet back in a queue (during a requeue).
    Detached,
}

/// One live request.
#[derive(Debug)]
pub(crate) struct RequestEntry {
    pub(crate) provider: ProviderId,
    pub(crate) frame: Arc<RequestFrame>,
    /// Its place in arrival order.
    pub(crate) arrival: u64,
    pub(crate) queue_deadline: Option<Instant>,
    pub(crate) deadline: Option<Instant>,
    /// Its client left with the whole answer: the completion must come by then.
    pub(crate) client_done_deadline: Option<Instant>,
    pub(crate) requeues: u8,
    pub(crate) state: RequestState,
    /// The deadline armed for it in the relay's timers.
    pub(crate) timer: Option<Instant>,
}

impl RequestEntry {
    /// The earliest of the deadlines that apply in its state.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
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

    /// Arms in `timers` the deadline its state calls for, in place of the one armed before.
    pub(crate) fn rearm(&mut self, id: RequestId, timers: &mut Timers) {
        let next = self.next_deadline();
        timers.rearm(TimerOwner::Request(id), &mut self.timer, next);
    }

    /// Takes its deadline out of `timers`.
    pub(crate) fn disarm(&mut self, id: RequestId, timers: &mut Timers) {
        timers.rearm(TimerOwner::Request(id), &mut self.timer, None);
    }
}

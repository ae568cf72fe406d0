//! What the relay keeps about one live request.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::flow::StreamFlow;
use super::routes::QueueSeq;
use super::timers::{ArmedDeadlines, RequestDeadline, Timer, Timers};
use super::{NewRequest, RelayConfig};
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

/// When a timeout of `timeout` counted from `now` expires: `None` for no
/// timeout, and for one too far out to name (it never fires either way).
fn deadline(now: Instant, timeout: Option<Duration>) -> Option<Instant> {
    timeout.and_then(|timeout| now.checked_add(timeout))
}

/// One live request.
#[derive(Debug)]
pub(crate) struct RequestEntry {
    pub(crate) provider: ProviderId,
    pub(crate) frame: Arc<RequestFrame>,
    /// Its place in arrival order.
    pub(crate) arrival: u64,
    /// It fails unless a worker takes it by then.
    pub(crate) queue_deadline: Option<Instant>,
    /// It fails unless it ends by then.
    pub(crate) total_deadline: Option<Instant>,
    /// Its client left with the whole answer: the completion must come by then.
    pub(crate) client_done_deadline: Option<Instant>,
    pub(crate) requeues: u8,
    pub(crate) state: RequestState,
    /// The deadlines armed for it in the relay's timers.
    pub(crate) armed: ArmedDeadlines,
    /// Its answer's window and counts while it runs on a worker (flow control on).
    pub(crate) flow: Option<StreamFlow>,
    /// The only worker that may serve it (see [`NewRequest::pinned_to`]).
    pub(crate) pinned_to: Option<WorkerId>,
}

impl RequestEntry {
    /// A request that arrived at `now`, `arrival`-th in order; not yet queued or assigned.
    pub(crate) fn new(now: Instant, new: NewRequest, arrival: u64, config: &RelayConfig) -> Self {
        Self {
            provider: new.provider,
            pinned_to: new.pinned_to,
            frame: Arc::new(RequestFrame {
                request_id: new.id.into(),
                model: new.model,
                endpoint_path: new.endpoint_path,
                is_streaming: new.streaming,
                body: new.body,
                headers: new.headers,
            }),
            arrival,
            queue_deadline: deadline(now, config.queue_timeout),
            total_deadline: deadline(now, config.request_timeout),
            client_done_deadline: None,
            requeues: 0,
            state: RequestState::Queued { seq: 0 },
            armed: ArmedDeadlines::default(),
            flow: None,
        }
    }

    /// When `kind` is due in its current state; `None` if that deadline does not apply now.
    fn due_at(&self, kind: RequestDeadline) -> Option<Instant> {
        match (kind, self.state) {
            (RequestDeadline::Queue, RequestState::Queued { .. }) => self.queue_deadline,
            (RequestDeadline::ClientDone, RequestState::Assigned { .. }) => {
                self.client_done_deadline
            }
            (RequestDeadline::Total, _) => self.total_deadline,
            (RequestDeadline::Queue | RequestDeadline::ClientDone, _) => None,
        }
    }

    /// Arms in `timers` the deadlines its state calls for, in place of those armed before.
    pub(crate) fn rearm(&mut self, id: RequestId, timers: &mut Timers) {
        for kind in RequestDeadline::ALL {
            let next = self.due_at(kind);
            timers.rearm(Timer::Request(id, kind), self.armed.slot(kind), next);
        }
    }

    /// Takes its deadlines out of `timers`.
    pub(crate) fn disarm(&mut self, id: RequestId, timers: &mut Timers) {
        for kind in RequestDeadline::ALL {
            timers.rearm(Timer::Request(id, kind), self.armed.slot(kind), None);
        }
    }

    /// Notes that `kind` fired and is no longer armed.
    pub(crate) fn fired(&mut self, kind: RequestDeadline) {
        *self.armed.slot(kind) = None;
    }
}

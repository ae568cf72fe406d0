//! Matching waiting requests with ready workers: queueing, ranking, assignment.

use std::sync::Arc;
use std::time::Instant;

use super::flow::AnswerBudget;
use super::request_entry::RequestState;
use super::routes::{QueueEnd, is_wildcard};
use super::worker_entry::Phase;
use super::{Failure, Relay, WorkerLoad};
use crate::ids::{RequestId, WorkerId};
use crate::wire::{LinkFlow, ServerMessage};

impl Relay {
    /// Hands the request to the best ready worker for its model, if there is
    /// one: a worker that names the model before a wildcard worker (see
    /// [`super::routes::Provider::ready_for`]); with flow control on, a
    /// windowed worker only while the answer budget covers a new request's
    /// initial window (see [`super::FlowConfig`]).
    pub(super) fn try_assign(&mut self, request_id: RequestId) -> bool {
        let Some(request) = self.requests.get(&request_id) else {
            return false;
        };
        if let Some(worker) = request.pinned_to {
            return self.try_assign_pinned(request_id, worker);
        }
        let Some(provider) = self.providers.get(&request.provider) else {
            return false;
        };
        let model = request.frame.model.as_str();
        let budget_open = self.budget.as_ref().is_none_or(AnswerBudget::fits_new);
        let first = provider.ready_for(model).next();
        let best = if budget_open {
            first
        } else {
            provider.ready_for(model).find(|worker| {
                self.workers
                    .get(worker)
                    .is_some_and(|w| w.flow == LinkFlow::Unwindowed)
            })
        };
        if best != first
            && let Some(budget) = self.budget.as_mut()
        {
            budget.note_held();
        }
        match best {
            Some(worker) => {
                self.assign(request_id, worker);
                true
            }
            None => false,
        }
    }

    /// Hands a pinned request to its worker if that worker takes it now.
    /// Out of line and cold: an operator's test, never on the clients' path.
    #[cold]
    #[inline(never)]
    fn try_assign_pinned(&mut self, request_id: RequestId, worker: WorkerId) -> bool {
        let ready = self.pinned_worker_ready(request_id, worker);
        if ready {
            self.assign(request_id, worker);
        }
        ready
    }

    /// Whether the worker a request is pinned to takes it now: connected in
    /// the request's pool, eligible for new work (see [`Self::rerank`]),
    /// serving its model by name or wildcard, and (windowed, flow control on)
    /// within the answer budget.
    fn pinned_worker_ready(&self, request_id: RequestId, worker_id: WorkerId) -> bool {
        let (Some(request), Some(worker)) =
            (self.requests.get(&request_id), self.workers.get(&worker_id))
        else {
            return false;
        };
        let model = request.frame.model.as_str();
        let serves = worker
            .models
            .iter()
            .any(|m| m.as_str() == model || is_wildcard(m));
        let budget_open = worker.flow == LinkFlow::Unwindowed
            || self.budget.as_ref().is_none_or(AnswerBudget::fits_new);
        worker.provider == request.provider && worker.ranked.is_some() && serves && budget_open
    }

    /// Puts a request that no worker can take now in its queue, or fails it
    /// (a pinned request, which waits for no other worker, always fails).
    pub(super) fn enqueue(&mut self, now: Instant, request_id: RequestId, end: QueueEnd) {
        let Some(request) = self.requests.get(&request_id) else {
            return;
        };
        if request.pinned_to.is_some() {
            self.fail_pinned(request_id);
            return;
        }
        let provider = self
            .providers
            .get(&request.provider)
            .expect("a request's provider exists: it knows the model or has a wildcard worker");
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
        request.rearm(request_id, &mut self.timers);
    }

    /// Fails a pinned request its worker cannot take: it waits for no other.
    #[cold]
    #[inline(never)]
    fn fail_pinned(&mut self, request_id: RequestId) {
        let failure = if self.shutting_down {
            Failure::ShuttingDown
        } else {
            Failure::WorkerUnavailable
        };
        self.fail(request_id, failure, false);
    }

    /// Puts a request on a worker and sends it the request frame.
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
        request.rearm(request_id, &mut self.timers);
        worker.in_flight.insert(request_id);
        self.assignments += 1;
        worker.last_assigned = self.assignments;
        self.stats.dispatched += 1;
        let frame = Arc::clone(&request.frame);
        self.start_flow(request_id, worker_id);
        self.rerank(worker_id);
        self.send(worker_id, ServerMessage::Request(frame));
    }

    /// Gives a worker with free capacity the oldest waiting requests it can serve.
    pub(super) fn fill_worker(&mut self, worker_id: WorkerId) {
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
            if worker.flow == LinkFlow::Windowed
                && let Some(budget) = self.budget.as_mut()
                && !budget.admits_windowed()
            {
                return; // retried when the answer budget is released
            }
            let model = self.requests[&request_id].frame.model.clone();
            self.providers
                .get_mut(&worker.provider)
                .expect("checked above")
                .dequeue(model.as_str(), seq);
            self.assign(request_id, worker_id);
        }
    }

    /// Takes a worker out of its models' ready sets.
    pub(super) fn unrank(&mut self, worker_id: WorkerId) {
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
    pub(super) fn rerank(&mut self, worker_id: WorkerId) {
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
}

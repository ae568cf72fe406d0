//! Handlers of what clients cause (arrival, departure, deadlines), and how a request ends.

use std::time::{Duration, Instant};

use super::request_entry::{RequestEntry, RequestState};
use super::routes::{Provider, QueueEnd};
use super::timers::RequestDeadline;
use super::{Failure, InputError, NewRequest, Outcome, Output, Relay};
use crate::ids::{RequestId, WorkerId};
use crate::wire::CancelReason;

impl Relay {
    /// A client request arrived: fail it at once, hand it to a worker, or queue it.
    pub(super) fn on_request(&mut self, now: Instant, new: NewRequest) -> Result<(), InputError> {
        if self.requests.contains_key(&new.id) {
            return Err(InputError::DuplicateRequest(new.id));
        }
        let id = new.id;
        let failure = if self.shutting_down {
            Some(Failure::ShuttingDown)
        } else if !self.routes_model(&new.provider, new.model.as_str()) {
            Some(Failure::UnknownModel)
        } else {
            None
        };
        if let Some(failure) = failure {
            self.end_unregistered(id, failure);
            return Ok(());
        }
        self.arrivals += 1;
        let entry = RequestEntry::new(now, new, self.arrivals, &self.config);
        self.requests.insert(id, entry);
        if !self.try_assign(id) {
            self.enqueue(now, id, QueueEnd::Back);
        }
        Ok(())
    }

    /// Ends a request that never entered the tables.
    fn end_unregistered(&mut self, request: RequestId, failure: Failure) {
        self.stats.failed += 1;
        self.outputs.push_back(Output::RequestEnded {
            request,
            outcome: Outcome::Failed {
                failure,
                streamed: false,
            },
        });
    }

    /// Ends a request on its client's account: removed from the queue, or cancelled at
    /// its worker (for the worker, the client went away either way). With a failure,
    /// the client is still there and hears of it; without, it left.
    pub(super) fn stop_for_client(&mut self, request_id: RequestId, failure: Option<Failure>) {
        let Some(request) = self.requests.get(&request_id) else {
            return; // ended already
        };
        let mut streamed = false;
        if let RequestState::Assigned {
            worker,
            streamed: s,
            ..
        } = request.state
        {
            streamed = s;
            self.send_cancel(worker, request_id, CancelReason::ClientDisconnect);
        }
        let outcome = match failure {
            Some(failure) => Outcome::Failed { failure, streamed },
            None => Outcome::Cancelled,
        };
        self.finish(request_id, outcome);
    }

    /// The client left with its whole answer: a request that streamed waits briefly
    /// for its completion (the first such deadline holds); any other is stopped as
    /// if the client had simply gone (so it can never be requeued without a client).
    pub(super) fn client_done(&mut self, now: Instant, request_id: RequestId) {
        let grace = self.config.finished_stream_grace;
        let Some(request) = self.requests.get_mut(&request_id) else {
            return; // ended already
        };
        if !matches!(request.state, RequestState::Assigned { streamed: true, .. }) {
            self.stop_for_client(request_id, None);
            return;
        }
        if request.client_done_deadline.is_none() {
            request.client_done_deadline = Some(now.checked_add(grace).unwrap_or(now));
            request.rearm(request_id, &mut self.timers);
        }
    }

    /// One of a request's deadlines passed.
    pub(super) fn on_request_deadline(&mut self, request_id: RequestId, kind: RequestDeadline) {
        let Some(request) = self.requests.get_mut(&request_id) else {
            return;
        };
        request.fired(kind);
        match (kind, request.state) {
            (RequestDeadline::Queue, RequestState::Queued { .. }) => {
                self.fail(request_id, Failure::QueueTimeout, false);
            }
            (RequestDeadline::ClientDone, RequestState::Assigned { .. }) => {
                // The client has its answer but the worker never said it was done.
                self.stop_for_client(request_id, None);
            }
            (
                RequestDeadline::Total,
                RequestState::Assigned {
                    worker, streamed, ..
                },
            ) => {
                self.send_cancel(worker, request_id, CancelReason::Timeout);
                self.fail(request_id, Failure::RequestTimeout, streamed);
            }
            (RequestDeadline::Total, RequestState::Queued { .. } | RequestState::Detached) => {
                self.fail(request_id, Failure::RequestTimeout, false);
            }
            // Armed only in the states above, so never due in another.
            (RequestDeadline::Queue | RequestDeadline::ClientDone, _) => {}
        }
    }

    /// Ends a live request with a failure.
    pub(super) fn fail(&mut self, request_id: RequestId, failure: Failure, streamed: bool) {
        self.finish(request_id, Outcome::Failed { failure, streamed });
    }

    /// Ends a live request: one `RequestEnded`, then its worker slot goes to the next waiting request.
    pub(super) fn finish(&mut self, request_id: RequestId, outcome: Outcome) {
        self.release_flow(request_id);
        let Some(mut request) = self.requests.remove(&request_id) else {
            return;
        };
        request.disarm(request_id, &mut self.timers);
        match &outcome {
            Outcome::Completed(_) => self.stats.completed += 1,
            Outcome::Failed { .. } => self.stats.failed += 1,
            Outcome::Cancelled => self.stats.cancelled += 1,
        }
        self.outputs.push_back(Output::RequestEnded {
            request: request_id,
            outcome,
        });
        match request.state {
            RequestState::Queued { seq } => {
                if let Some(provider) = self.providers.get_mut(&request.provider) {
                    provider.dequeue(request.frame.model.as_str(), seq);
                }
            }
            RequestState::Detached => {}
            RequestState::Assigned { worker, .. } => {
                let Some(entry) = self.workers.get_mut(&worker) else {
                    return; // the worker is being removed
                };
                entry.in_flight.remove(&request_id);
                self.ended.insert(request_id, worker);
                self.rerank(worker);
                self.close_if_drained(worker);
                self.fill_worker(worker);
            }
        }
        self.pump_flow();
    }

    /// Counts one more requeue of a detached request, or fails it when none are left.
    pub(super) fn count_requeue(&mut self, request_id: RequestId) -> bool {
        let Some(request) = self.requests.get_mut(&request_id) else {
            return false;
        };
        if request.requeues >= self.config.max_requeues {
            self.fail(request_id, Failure::RequeueExhausted, false);
            return false;
        }
        request.requeues += 1;
        self.stats.requeues += 1;
        true
    }

    /// Takes no new requests, fails the queued ones (oldest first) and drains every worker.
    pub(super) fn shutdown(&mut self, now: Instant, drain_timeout: Duration) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        let mut queued: Vec<RequestId> = self
            .providers
            .values()
            .flat_map(Provider::all_queued)
            .collect();
        queued.sort_by_key(|id| self.requests[id].arrival);
        for request_id in queued {
            self.fail(request_id, Failure::ShuttingDown, false);
        }
        let mut workers: Vec<WorkerId> = self.workers.keys().copied().collect();
        workers.sort();
        for worker in workers {
            self.drain_worker(now, worker, drain_timeout, Some("server_shutdown".into()));
        }
    }
}

//! Handlers of what worker links send (connection, frames, loss) and of commands about one worker.

use std::time::{Duration, Instant};

use super::routes::QueueEnd;
use super::worker_entry::{Phase, WorkerEntry};
use super::{
    AuthOutcome, CloseReason, Completion, Failure, InputError, Outcome, Output, Relay,
    RequestState, SanitizedModels, sanitize_models, sanitize_worker_name,
};
use crate::ids::{ProviderId, RequestId, WireRequestId, WorkerId};
use crate::wire::{
    CancelReason, GracefulShutdown, LinkFlow, ModelsRefresh, ModelsUpdate, Ping, Pong,
    REFUSED_AT_CAPACITY, REFUSED_DRAINING, Register, RegisterAck, ResponseChunk, ResponseComplete,
    ServerMessage, WireVersion, WorkerError, WorkerMessage, marked_refusal,
};

impl Relay {
    /// A worker link opened: admit it to await its `register`, or close it at once.
    pub(super) fn on_worker_connected(
        &mut self,
        now: Instant,
        worker: WorkerId,
        provider: ProviderId,
        link: (WireVersion, LinkFlow),
        auth: AuthOutcome,
    ) -> Result<(), InputError> {
        if self.workers.contains_key(&worker) {
            return Err(InputError::DuplicateWorker(worker));
        }
        let refuse = match auth {
            AuthOutcome::Rejected => Some(CloseReason::Unauthorized),
            AuthOutcome::Accepted if self.shutting_down => Some(CloseReason::Shutdown),
            AuthOutcome::Accepted => None,
        };
        if let Some(reason) = refuse {
            self.close_link(worker, reason);
            return Ok(());
        }
        self.providers.entry(provider.clone()).or_default();
        let register_deadline = now.checked_add(self.config.register_timeout);
        let entry = WorkerEntry::new(now, provider, link, register_deadline);
        self.workers.insert(worker, entry);
        self.rearm_worker(worker);
        Ok(())
    }

    /// A decoded frame from a worker: any frame proves the link alive; `register` must come first.
    pub(super) fn on_worker_frame(
        &mut self,
        now: Instant,
        worker_id: WorkerId,
        message: WorkerMessage,
    ) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return; // closed already; its last frames are of no interest
        };
        let awaiting_register = matches!(worker.phase, Phase::AwaitingRegister { .. });
        if worker.silent_deadline.take().is_some() {
            self.rearm_worker(worker_id);
        }
        match message {
            WorkerMessage::Register(register) if awaiting_register => {
                self.on_register(now, worker_id, register);
            }
            _ if awaiting_register => self.lose_worker(
                now,
                worker_id,
                Some(CloseReason::ProtocolError(
                    "the first frame must be register".into(),
                )),
            ),
            WorkerMessage::Register(_) => self.lose_worker(
                now,
                worker_id,
                Some(CloseReason::ProtocolError("register sent twice".into())),
            ),
            WorkerMessage::ModelsUpdate(update) => self.on_models_update(worker_id, update),
            WorkerMessage::ResponseChunk(chunk) => self.on_chunk(now, worker_id, chunk),
            WorkerMessage::ResponseComplete(complete) => self.on_complete(now, worker_id, complete),
            WorkerMessage::Pong(pong) => self.on_pong(worker_id, pong),
            WorkerMessage::Error(error) => self.on_worker_error(now, worker_id, error),
        }
    }

    /// The worker registered: check its version, keep its sanitized models, ack, give it work.
    fn on_register(&mut self, now: Instant, worker_id: WorkerId, register: Register) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        if !worker
            .wire
            .accepts_announced_version(register.protocol_version.as_deref())
        {
            let detail = format!(
                "incompatible protocol version {:?}",
                register.protocol_version.unwrap_or_default()
            );
            self.lose_worker(now, worker_id, Some(CloseReason::ProtocolError(detail)));
            return;
        }
        let SanitizedModels {
            models,
            mut warnings,
        } = sanitize_models(
            &register.models,
            self.config.max_models_per_worker,
            self.config.max_model_name_bytes,
        );
        if register.max_concurrent == 0 {
            warnings.push("max_concurrent 0 treated as 1".into());
        }
        let (name, name_warning) = sanitize_worker_name(&register.worker_name);
        warnings.extend(name_warning);
        worker.name = name;
        worker.models = models.clone();
        worker.max_concurrent = register.max_concurrent.max(1);
        worker.external_load = register.current_load.unwrap_or(0);
        worker.phase = Phase::Active;
        worker.next_ping = now.checked_add(self.config.heartbeat_interval);
        let ack = RegisterAck {
            worker_id: worker_id.to_string(),
            models,
            warnings,
            protocol_version: Some(worker.wire.protocol_version().to_owned()),
        };
        let provider = self
            .providers
            .get_mut(&worker.provider)
            .expect("a worker's provider exists");
        provider.advertise(&worker.models);
        self.send(worker_id, ServerMessage::RegisterAck(ack));
        self.rearm_worker(worker_id);
        self.rerank(worker_id);
        self.fill_worker(worker_id);
    }

    /// The worker's model list or load changed: re-route it.
    fn on_models_update(&mut self, worker_id: WorkerId, update: ModelsUpdate) {
        let sanitized = sanitize_models(
            &update.models,
            self.config.max_models_per_worker,
            self.config.max_model_name_bytes,
        );
        self.unrank(worker_id);
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        let provider = self
            .providers
            .get_mut(&worker.provider)
            .expect("a worker's provider exists");
        provider.advertise(&sanitized.models);
        provider.withdraw(&worker.models);
        worker.models = sanitized.models;
        worker.external_load = update.current_load.saturating_sub(worker.in_flight_count());
        worker.refusing = false;
        self.rerank(worker_id);
        self.fill_worker(worker_id);
    }

    /// The worker answered a ping with its load.
    fn on_pong(&mut self, worker_id: WorkerId, pong: Pong) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.external_load = pong.current_load.saturating_sub(worker.in_flight_count());
            worker.refusing = false;
            self.rerank(worker_id);
            self.fill_worker(worker_id); // it may have been resting after a refusal
        }
    }

    /// Checks that `worker` may speak about `request`: it must be running there.
    /// Late frames for requests that ended there are dropped quietly; anything
    /// else (including an id this relay never issues) is a protocol violation,
    /// and too many close the link. Returns the request when it is running there.
    fn owned_request(
        &mut self,
        now: Instant,
        worker: WorkerId,
        request: &WireRequestId,
    ) -> Option<RequestId> {
        if let Some(id) = request.as_request_id() {
            if let Some(entry) = self.requests.get(&id)
                && matches!(entry.state, RequestState::Assigned { worker: w, .. } if w == worker)
            {
                return Some(id);
            }
            if self.ended.ended_on(id, worker) {
                self.stats.late_frames += 1;
                return None;
            }
        }
        self.stats.protocol_violations += 1;
        if let Some(entry) = self.workers.get_mut(&worker) {
            entry.violations += 1;
            if entry.violations >= self.config.max_protocol_violations {
                self.lose_worker(now, worker, Some(CloseReason::TooManyViolations));
            }
        }
        None
    }

    /// Stream bytes for a request: passed to the client, unless the stream grew past its bound.
    fn on_chunk(&mut self, now: Instant, worker: WorkerId, chunk: ResponseChunk) {
        let ResponseChunk { request_id, chunk } = chunk;
        let Some(request_id) = self.owned_request(now, worker, &request_id) else {
            return;
        };
        if chunk.is_empty() {
            return;
        }
        let limit = self.config.max_stream_bytes;
        let request = self.requests.get_mut(&request_id).expect("owned");
        let RequestState::Assigned {
            streamed_bytes,
            streamed,
            ..
        } = &mut request.state
        else {
            return;
        };
        *streamed_bytes += chunk.len() as u64;
        if *streamed_bytes > limit {
            let streamed = *streamed;
            // Only the documented reasons go out (existing workers know no others);
            // for the worker, the stream's reader went away.
            self.send_cancel(worker, request_id, CancelReason::ClientDisconnect);
            self.fail(request_id, Failure::StreamTooLarge, streamed);
            return;
        }
        if !self.flow_chunk(request_id, chunk.len() as u64) {
            return; // stopped: its client lags too far
        }
        let request = self.requests.get_mut(&request_id).expect("passed on");
        if let RequestState::Assigned { streamed, .. } = &mut request.state {
            *streamed = true;
        }
        self.outputs.push_back(Output::StreamChunk {
            request: request_id,
            chunk,
        });
    }

    /// The worker finished a request; on a v1 link, a completion marked as a
    /// refusal before any chunk is a refusal (v1 carries no `error`).
    fn on_complete(&mut self, now: Instant, worker: WorkerId, complete: ResponseComplete) {
        let Some(request_id) = self.owned_request(now, worker, &complete.request_id) else {
            return;
        };
        let v1 = self.workers[&worker].wire == WireVersion::V1;
        if v1 && marked_refusal(&complete).is_some() && !self.has_streamed(request_id) {
            self.requeue_refused(now, worker, request_id);
            return;
        }
        self.finish(
            request_id,
            Outcome::Completed(Completion {
                status_code: complete.status_code,
                headers: complete.headers,
                body: complete.body,
                token_counts: complete.token_counts,
            }),
        );
    }

    /// The worker reported an error: a refusal before any output requeues; else the request fails.
    fn on_worker_error(&mut self, now: Instant, worker: WorkerId, error: WorkerError) {
        let Some(request_id) = &error.request_id else {
            return; // about the link as a whole: for the driver's logs, not for routing
        };
        let Some(request_id) = self.owned_request(now, worker, request_id) else {
            return;
        };
        let streamed = self.has_streamed(request_id);
        let refused = matches!(error.code.as_str(), REFUSED_DRAINING | REFUSED_AT_CAPACITY);
        if refused && !streamed {
            self.requeue_refused(now, worker, request_id);
            return;
        }
        self.finish(
            request_id,
            Outcome::Failed {
                failure: Failure::WorkerError {
                    code: error.code,
                    message: error.message,
                },
                streamed,
            },
        );
    }

    /// Whether a running request's worker has passed any of its answer on.
    fn has_streamed(&self, request_id: RequestId) -> bool {
        matches!(
            self.requests[&request_id].state,
            RequestState::Assigned { streamed: true, .. }
        )
    }

    /// A worker refused a request before starting it: rest the worker, requeue the request.
    fn requeue_refused(&mut self, now: Instant, worker_id: WorkerId, request_id: RequestId) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.in_flight.remove(&request_id);
            worker.refusing = true;
            self.ended.insert(request_id, worker_id);
            self.rerank(worker_id);
        }
        if let Some(request) = self.requests.get_mut(&request_id) {
            request.state = RequestState::Detached;
        }
        self.release_flow(request_id);
        // "Try another worker": nothing reached the client and the worker was
        // only full or leaving, so the requeue limit (meant for lost workers)
        // is not spent. The refusing worker rests, and the queue timeout still
        // bounds the request's wait. A pinned request is not requeued: it fails.
        if self
            .requests
            .get(&request_id)
            .is_some_and(|r| r.pinned_to.is_none())
        {
            self.stats.requeues += 1;
        }
        if !self.try_assign(request_id) {
            self.enqueue(now, request_id, QueueEnd::Front);
        }
        self.close_if_drained(worker_id);
        self.pump_flow();
    }

    /// Stops giving a worker new work and closes it once idle or at the deadline.
    pub(super) fn drain_worker(
        &mut self,
        now: Instant,
        worker_id: WorkerId,
        timeout: Duration,
        reason: Option<String>,
    ) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        match worker.phase {
            Phase::AwaitingRegister { .. } => {
                self.remove_worker(worker_id);
                self.close_link(worker_id, CloseReason::Drained);
            }
            Phase::Draining { .. } => {}
            Phase::Active => {
                worker.phase = Phase::Draining {
                    deadline: now.checked_add(timeout),
                };
                self.unrank(worker_id);
                self.send(
                    worker_id,
                    ServerMessage::GracefulShutdown(GracefulShutdown {
                        reason,
                        drain_timeout_secs: Some(timeout.as_secs()),
                    }),
                );
                self.rearm_worker(worker_id);
                self.close_if_drained(worker_id);
            }
        }
    }

    /// Asks a registered worker to re-read its backend's models.
    pub(super) fn refresh_models(&mut self, worker_id: WorkerId) {
        let registered = self
            .workers
            .get(&worker_id)
            .is_some_and(|w| !matches!(w.phase, Phase::AwaitingRegister { .. }));
        if registered {
            let refresh = ModelsRefresh { reason: None };
            self.send(worker_id, ServerMessage::ModelsRefresh(refresh));
        }
    }

    /// Closes a draining worker that has nothing left running.
    pub(super) fn close_if_drained(&mut self, worker_id: WorkerId) {
        let drained = self
            .workers
            .get(&worker_id)
            .is_some_and(|w| matches!(w.phase, Phase::Draining { .. }) && w.in_flight.is_empty());
        if drained {
            self.remove_worker(worker_id);
            self.close_link(worker_id, CloseReason::Drained);
        }
    }

    /// The earliest of a worker's deadlines passed; settles every one due, by precedence.
    pub(super) fn on_worker_timer(&mut self, now: Instant, worker_id: WorkerId) {
        let Some(worker) = self.workers.get_mut(&worker_id) else {
            return;
        };
        worker.armed = None; // popped by handle_timeout
        match worker.phase {
            Phase::AwaitingRegister {
                deadline: Some(deadline),
            } if deadline <= now => {
                self.lose_worker(now, worker_id, Some(CloseReason::RegisterTimeout));
                return;
            }
            Phase::Draining {
                deadline: Some(deadline),
            } if deadline <= now => {
                self.lose_worker(now, worker_id, Some(CloseReason::DrainTimeout));
                return;
            }
            _ => {}
        }
        if worker.silent_deadline.is_some_and(|at| at <= now) {
            self.lose_worker(now, worker_id, Some(CloseReason::HeartbeatTimeout));
            return;
        }
        if worker.next_ping.is_some_and(|at| at <= now) {
            worker.next_ping = now.checked_add(self.config.heartbeat_interval);
            if worker.silent_deadline.is_none() {
                worker.silent_deadline = now.checked_add(self.config.heartbeat_timeout);
            }
            self.send(
                worker_id,
                ServerMessage::Ping(Ping {
                    timestamp_unix_ms: None,
                }),
            );
        }
        self.rearm_worker(worker_id);
    }

    /// Removes a worker whose link is gone or being closed: its requests go back
    /// to the queue (if nothing was streamed yet and requeues remain) or fail.
    pub(super) fn lose_worker(
        &mut self,
        now: Instant,
        worker_id: WorkerId,
        close: Option<CloseReason>,
    ) {
        let Some(worker) = self.remove_worker(worker_id) else {
            return;
        };
        let mut orphans: Vec<RequestId> = worker.in_flight.into_iter().collect();
        orphans.sort_by_key(|id| self.requests.get(id).map_or(0, |r| r.arrival));
        if let Some(reason) = close {
            // The link is still up: tell the worker to stop before closing it.
            let cancel_reason = match reason {
                CloseReason::DrainTimeout => CancelReason::GracefulShutdown,
                CloseReason::Shutdown => CancelReason::ServerShutdown,
                _ => CancelReason::WorkerDisconnect,
            };
            for request_id in &orphans {
                self.send_cancel(worker_id, *request_id, cancel_reason.clone());
            }
            self.close_link(worker_id, reason);
        }
        let mut to_front = Vec::new();
        for request_id in orphans {
            let Some(request) = self.requests.get_mut(&request_id) else {
                continue;
            };
            let RequestState::Assigned { streamed, .. } = request.state else {
                continue;
            };
            request.state = RequestState::Detached;
            let pinned = request.pinned_to.is_some();
            // Requeued before its first byte or failed: either way its flow starts over or ends.
            self.release_flow(request_id);
            if streamed {
                self.fail(request_id, Failure::WorkerLost, true);
            } else if pinned {
                // No other worker may take it: it ends as an unpinned one
                // would end if no worker could.
                let failure = if self.shutting_down {
                    Failure::ShuttingDown
                } else {
                    Failure::WorkerLost
                };
                self.fail(request_id, failure, false);
            } else if self.count_requeue(request_id) && !self.try_assign(request_id) {
                to_front.push(request_id);
            }
        }
        // Oldest first at the front: enqueue the youngest first.
        for request_id in to_front.into_iter().rev() {
            self.enqueue(now, request_id, QueueEnd::Front);
        }
        self.pump_flow();
    }

    /// Takes a worker out of every table; returns what it was.
    fn remove_worker(&mut self, worker_id: WorkerId) -> Option<WorkerEntry> {
        self.unrank(worker_id);
        let mut worker = self.workers.remove(&worker_id)?;
        worker.disarm(worker_id, &mut self.timers);
        if let Some(provider) = self.providers.get_mut(&worker.provider) {
            provider.withdraw(&worker.models);
        }
        Some(worker)
    }

    /// Re-arms a worker's timer at its earliest deadline.
    fn rearm_worker(&mut self, worker_id: WorkerId) {
        if let Some(worker) = self.workers.get_mut(&worker_id) {
            worker.rearm(worker_id, &mut self.timers);
        }
    }
}

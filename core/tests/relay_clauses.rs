//! Clause-by-clause tests of the relay's behavior contract (docs/behavior-contract.md).

use std::time::{Duration, Instant};

use bytes::Bytes;
use modelrelay_core::relay::*;
use modelrelay_core::wire::{
    CancelReason, Headers, INITIAL_WINDOW, LinkFlow, ModelsUpdate, Pong, REFUSED_AT_CAPACITY,
    REFUSED_DRAINING, Register, ResponseChunk, ResponseComplete, ServerMessage, WireVersion,
    WorkerError, WorkerMessage, refusal_complete,
};
use modelrelay_core::{ModelName, ProviderId, RequestId, WorkerId};

const SECOND: Duration = Duration::from_secs(1);

struct Harness {
    relay: Relay,
    now: Instant,
    provider: ProviderId,
    /// Workers that do not answer pings (all others do, as a live worker would).
    silent: Vec<u64>,
    /// Outputs seen while answering pings, not yet returned by `outputs`.
    seen: Vec<Output>,
}

fn w(id: u64) -> WorkerId {
    WorkerId::new(id)
}

fn r(id: u64) -> RequestId {
    RequestId::new(id)
}

impl Harness {
    fn new() -> Self {
        Self::with_config(RelayConfig::default())
    }

    fn with_config(config: RelayConfig) -> Self {
        Self {
            relay: Relay::new(config),
            now: Instant::now(),
            provider: ProviderId::new("local"),
            silent: Vec::new(),
            seen: Vec::new(),
        }
    }

    fn handle(&mut self, input: Input) {
        self.relay.handle(self.now, input).expect("valid input");
    }

    fn open(&mut self, worker: u64) {
        self.handle(Input::WorkerConnected {
            worker: w(worker),
            provider: self.provider.clone(),
            wire: WireVersion::V1,
            flow: LinkFlow::Unwindowed,
            auth: AuthOutcome::Accepted,
        });
    }

    fn frame(&mut self, worker: u64, message: WorkerMessage) {
        self.handle(Input::WorkerFrame {
            worker: w(worker),
            message,
        });
    }

    fn register(&mut self, worker: u64, models: &[&str], max_concurrent: u32) {
        self.frame(
            worker,
            WorkerMessage::Register(Register {
                worker_name: format!("worker-{worker}"),
                models: models.iter().map(|m| m.to_string()).collect(),
                max_concurrent,
                protocol_version: Some("2026-04-bridge-v1".into()),
                current_load: None,
            }),
        );
    }

    /// Connects and registers a worker, discarding the ack.
    fn worker(&mut self, worker: u64, models: &[&str], max_concurrent: u32) {
        self.open(worker);
        self.register(worker, models, max_concurrent);
        let outputs = self.outputs();
        assert!(
            outputs.iter().any(|o| matches!(
                o,
                Output::SendToWorker {
                    message: ServerMessage::RegisterAck(_),
                    ..
                }
            )),
            "{outputs:?}"
        );
    }

    fn request(&mut self, id: u64, model: &str) {
        self.request_pinned(id, model, None);
    }

    /// A request only `pinned_to` may serve, if given (an operator's test).
    fn request_pinned(&mut self, id: u64, model: &str, pinned_to: Option<u64>) {
        self.handle(Input::RequestArrived(NewRequest {
            id: r(id),
            provider: self.provider.clone(),
            model: ModelName::new(model),
            endpoint_path: "/v1/chat/completions".into(),
            streaming: true,
            body: Bytes::from(format!("{{\"model\":\"{model}\"}}")),
            headers: Headers::new(),
            pinned_to: pinned_to.map(w),
        }));
    }

    fn chunk(&mut self, worker: u64, request: u64, text: &'static str) {
        self.frame(
            worker,
            WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: r(request).into(),
                chunk: Bytes::from_static(text.as_bytes()),
            }),
        );
    }

    fn complete(&mut self, worker: u64, request: u64) {
        self.frame(
            worker,
            WorkerMessage::ResponseComplete(ResponseComplete {
                request_id: r(request).into(),
                status_code: 200,
                headers: Headers::new(),
                body: Bytes::new(),
                token_counts: None,
            }),
        );
    }

    fn pong(&mut self, worker: u64, current_load: u32) {
        self.frame(
            worker,
            WorkerMessage::Pong(Pong {
                current_load,
                timestamp_unix_ms: None,
            }),
        );
    }

    fn error(&mut self, worker: u64, request: u64, code: &str, message: &str) {
        self.frame(
            worker,
            WorkerMessage::Error(WorkerError {
                request_id: Some(r(request).into()),
                code: code.into(),
                message: message.into(),
            }),
        );
    }

    /// Lets `by` pass, firing every deadline on the way at its own instant;
    /// workers not marked silent answer their pings at once.
    fn advance(&mut self, by: Duration) {
        let target = self.now + by;
        while let Some(at) = self.relay.poll_timeout() {
            if at > target {
                break;
            }
            self.now = self.now.max(at);
            self.relay.handle_timeout(self.now);
            let outputs: Vec<Output> = std::iter::from_fn(|| self.relay.poll_output()).collect();
            for output in outputs {
                match output {
                    Output::SendToWorker {
                        worker,
                        message: ServerMessage::Ping(_),
                    } if !self.silent.contains(&worker.get()) => self.pong(worker.get(), 0),
                    other => self.seen.push(other),
                }
            }
        }
        self.now = target;
    }

    /// Everything the relay asked for since the last call, except pings answered.
    fn outputs(&mut self) -> Vec<Output> {
        let mut outputs = std::mem::take(&mut self.seen);
        outputs.extend(std::iter::from_fn(|| self.relay.poll_output()));
        outputs
    }
}

fn dispatched(outputs: &[Output]) -> Vec<(u64, u64)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::SendToWorker {
                worker,
                message: ServerMessage::Request(frame),
            } => Some((
                worker.get(),
                frame.request_id.as_request_id().unwrap().get(),
            )),
            _ => None,
        })
        .collect()
}

fn ended(outputs: &[Output]) -> Vec<(u64, Outcome)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::RequestEnded { request, outcome } => Some((request.get(), outcome.clone())),
            _ => None,
        })
        .collect()
}

fn cancels(outputs: &[Output]) -> Vec<(u64, u64, CancelReason)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::SendToWorker {
                worker,
                message: ServerMessage::Cancel(cancel),
            } => Some((
                worker.get(),
                cancel.request_id.as_request_id().unwrap().get(),
                cancel.reason.clone(),
            )),
            _ => None,
        })
        .collect()
}

fn closes(outputs: &[Output]) -> Vec<(u64, CloseReason)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::CloseWorker { worker, reason } => Some((worker.get(), reason.clone())),
            _ => None,
        })
        .collect()
}

/// The harness relay's queue timeout (it has one).
fn queue_timeout(h: &Harness) -> Duration {
    h.relay.config().queue_timeout.expect("a queue timeout")
}

/// The harness relay's request timeout (it has one).
fn request_timeout(h: &Harness) -> Duration {
    h.relay.config().request_timeout.expect("a request timeout")
}

/// The status of a request running on `worker` that has streamed nothing yet.
fn running_on(worker: u64) -> Option<RequestStatus> {
    Some(RequestStatus::Assigned {
        worker: w(worker),
        streamed: false,
    })
}

fn failed(failure: Failure) -> Outcome {
    Outcome::Failed {
        failure,
        streamed: false,
    }
}

fn completed_ok() -> Outcome {
    Outcome::Completed(Completion {
        status_code: 200,
        headers: Headers::new(),
        body: Bytes::new(),
        token_counts: None,
    })
}

// ---- registration ----

#[test]
fn registration_acks_with_the_sanitized_models_and_warnings() {
    let mut h = Harness::new();
    h.open(1);
    h.register(1, &[" a ", "b", "a", ""], 2);
    let outputs = h.outputs();
    let [
        Output::SendToWorker {
            worker,
            message: ServerMessage::RegisterAck(ack),
        },
    ] = &outputs[..]
    else {
        panic!("{outputs:?}");
    };
    assert_eq!(*worker, w(1));
    assert_eq!(ack.worker_id, "1");
    assert_eq!(ack.models, [ModelName::new("a"), ModelName::new("b")]);
    assert_eq!(ack.warnings.len(), 2, "{:?}", ack.warnings);
    assert_eq!(ack.protocol_version.as_deref(), Some("2026-04-bridge-v1"));
    assert_eq!(
        h.relay.models(&h.provider),
        [ModelName::new("a"), ModelName::new("b")]
    );
}

#[test]
fn a_rejected_secret_closes_the_link_as_unauthorized() {
    let mut h = Harness::new();
    h.handle(Input::WorkerConnected {
        worker: w(1),
        provider: h.provider.clone(),
        wire: WireVersion::V1,
        flow: LinkFlow::Unwindowed,
        auth: AuthOutcome::Rejected,
    });
    assert_eq!(closes(&h.outputs()), [(1, CloseReason::Unauthorized)]);
    assert_eq!(h.relay.worker_count(), 0);
}

#[test]
fn a_first_frame_other_than_register_is_a_protocol_error() {
    let mut h = Harness::new();
    h.open(1);
    h.pong(1, 0);
    let closed = closes(&h.outputs());
    assert!(
        matches!(&closed[..], [(1, CloseReason::ProtocolError(_))]),
        "{closed:?}"
    );
    assert!(closed[0].1.is_violation());
}

#[test]
fn an_incompatible_protocol_version_is_a_protocol_error() {
    let mut h = Harness::new();
    h.open(1);
    h.frame(
        1,
        WorkerMessage::Register(Register {
            worker_name: "w".into(),
            models: vec!["m".into()],
            max_concurrent: 1,
            protocol_version: Some("2030-01-bridge-v7".into()),
            current_load: None,
        }),
    );
    let closed = closes(&h.outputs());
    assert!(
        matches!(&closed[..], [(1, CloseReason::ProtocolError(d))] if d.contains("2030-01-bridge-v7"))
    );
}

#[test]
fn registering_twice_is_a_protocol_error() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.register(1, &["m"], 1);
    assert!(matches!(
        &closes(&h.outputs())[..],
        [(1, CloseReason::ProtocolError(_))]
    ));
}

#[test]
fn a_link_that_does_not_register_in_time_is_closed() {
    let mut h = Harness::new();
    h.open(1);
    h.advance(h.relay.config().register_timeout);
    assert_eq!(closes(&h.outputs()), [(1, CloseReason::RegisterTimeout)]);
    assert_eq!(h.relay.worker_count(), 0);
}

#[test]
fn an_undecodable_frame_closes_the_link_with_a_protocol_error() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.handle(Input::WorkerFrameInvalid {
        worker: w(1),
        detail: "invalid v1 JSON frame".into(),
    });
    assert!(matches!(
        &closes(&h.outputs())[..],
        [(1, CloseReason::ProtocolError(_))]
    ));
}

#[test]
fn duplicate_live_ids_are_driver_errors() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    let again = h.relay.handle(
        h.now,
        Input::WorkerConnected {
            worker: w(1),
            provider: h.provider.clone(),
            wire: WireVersion::V1,
            flow: LinkFlow::Unwindowed,
            auth: AuthOutcome::Accepted,
        },
    );
    assert_eq!(again, Err(InputError::DuplicateWorker(w(1))));
    h.request(1, "m");
    let again = h.relay.handle(
        h.now,
        Input::RequestArrived(NewRequest {
            id: r(1),
            provider: h.provider.clone(),
            model: ModelName::new("m"),
            endpoint_path: "/v1/completions".into(),
            streaming: false,
            body: Bytes::new(),
            headers: Headers::new(),
            pinned_to: None,
        }),
    );
    assert_eq!(again, Err(InputError::DuplicateRequest(r(1))));
}

// ---- selection ----

#[test]
fn only_workers_advertising_the_exact_model_get_it() {
    let mut h = Harness::new();
    h.worker(1, &["llama"], 4);
    h.worker(2, &["Llama"], 4);
    h.request(1, "Llama");
    h.request(2, "llama");
    assert_eq!(dispatched(&h.outputs()), [(2, 1), (1, 2)]);
}

#[test]
fn full_and_draining_workers_get_no_new_work() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.worker(2, &["m"], 5);
    h.handle(Input::DrainWorker {
        worker: w(2),
        timeout: 30 * SECOND,
        reason: None,
    });
    h.outputs();
    h.request(1, "m");
    h.request(2, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    assert_eq!(h.relay.request_status(r(2)), Some(RequestStatus::Queued));
}

#[test]
fn the_least_loaded_worker_goes_first_counting_reported_load() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 8);
    h.worker(2, &["m"], 8);
    // Worker 1 reports 3 requests of its own (another relay's).
    h.pong(1, 3);
    for id in 1..=4 {
        h.request(id, "m");
    }
    // Worker 2 takes requests until its load (in flight) passes worker 1's (3 reported).
    assert_eq!(dispatched(&h.outputs()), [(2, 1), (2, 2), (2, 3), (1, 4)]);
}

#[test]
fn equal_loads_are_served_round_robin() {
    let mut h = Harness::new();
    for worker in 1..=3 {
        h.worker(worker, &["m"], 1);
    }
    let mut order = Vec::new();
    for id in 1..=6 {
        h.request(id, "m");
        let out = dispatched(&h.outputs());
        let (worker, _) = out[0];
        order.push(worker);
        h.complete(worker, id);
        h.outputs();
    }
    assert_eq!(order, [1, 2, 3, 1, 2, 3]);
}

#[test]
fn a_custom_selection_policy_decides() {
    /// Prefers the highest worker id.
    struct HighestId;
    impl SelectionPolicy for HighestId {
        fn rank(&self, load: &WorkerLoad) -> SelectionRank {
            SelectionRank(u64::MAX - load.worker.get(), 0)
        }
    }
    let mut h = Harness::new();
    h.relay = Relay::with_policy(RelayConfig::default(), Box::new(HighestId));
    h.worker(1, &["m"], 4);
    h.worker(2, &["m"], 4);
    h.request(1, "m");
    h.request(2, "m");
    assert_eq!(dispatched(&h.outputs()), [(2, 1), (2, 2)]);
}

// ---- queue ----

#[test]
fn a_model_no_worker_ever_advertised_fails_at_once() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "other");
    assert_eq!(ended(&h.outputs()), [(1, failed(Failure::UnknownModel))]);
    assert_eq!(h.relay.open_requests(), 0);
}

#[test]
fn a_known_model_with_no_worker_now_waits_in_the_queue() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    h.request(1, "m");
    assert_eq!(h.relay.request_status(r(1)), Some(RequestStatus::Queued));
    h.worker(2, &["m"], 1);
    // The registration output was consumed by `worker`; the dispatch came with it.
    assert_eq!(
        h.relay.request_status(r(1)),
        Some(RequestStatus::Assigned {
            worker: w(2),
            streamed: false
        })
    );
}

#[test]
fn a_freed_worker_takes_the_oldest_request_it_can_serve() {
    let mut h = Harness::new();
    h.worker(1, &["a"], 1);
    h.worker(2, &["b"], 1);
    h.request(1, "a"); // to worker 1
    h.request(2, "b"); // to worker 2
    h.request(3, "b"); // waits
    h.request(4, "a"); // waits
    h.request(5, "a"); // waits
    h.outputs();
    h.complete(1, 1);
    // Worker 1 serves only "a": request 4 is the oldest it can serve, though 3 is older.
    assert_eq!(dispatched(&h.outputs()), [(1, 4)]);
    h.complete(1, 4);
    assert_eq!(dispatched(&h.outputs()), [(1, 5)]);
    h.complete(2, 2);
    assert_eq!(dispatched(&h.outputs()), [(2, 3)]);
}

#[test]
fn a_worker_serving_several_models_takes_the_oldest_across_them() {
    let mut h = Harness::new();
    h.worker(1, &["a"], 1);
    h.request(1, "a");
    h.outputs();
    h.worker(2, &["b"], 1);
    h.request(2, "b");
    h.request(3, "b"); // oldest waiting
    h.request(4, "a");
    h.outputs();
    h.worker(3, &["a", "b"], 2);
    assert_eq!(
        h.relay.request_status(r(3)),
        Some(RequestStatus::Assigned {
            worker: w(3),
            streamed: false
        })
    );
    assert_eq!(
        h.relay.request_status(r(4)),
        Some(RequestStatus::Assigned {
            worker: w(3),
            streamed: false
        })
    );
}

#[test]
fn a_full_queue_refuses_with_queue_full() {
    let mut h = Harness::with_config(RelayConfig {
        max_queue_len: 2,
        ..RelayConfig::default()
    });
    h.worker(1, &["m"], 1);
    for id in 1..=4 {
        h.request(id, "m");
    }
    let outputs = h.outputs();
    assert_eq!(dispatched(&outputs), [(1, 1)]);
    assert_eq!(ended(&outputs), [(4, failed(Failure::QueueFull))]);
    assert_eq!(h.relay.queue_len(&h.provider), 2);
}

#[test]
fn a_zero_bound_means_an_unbounded_queue() {
    let mut h = Harness::with_config(RelayConfig {
        max_queue_len: 0,
        ..RelayConfig::default()
    });
    h.worker(1, &["m"], 1);
    for id in 1..=1000 {
        h.request(id, "m");
    }
    assert!(ended(&h.outputs()).is_empty());
    assert_eq!(h.relay.queue_len(&h.provider), 999);
}

#[test]
fn waiting_past_the_queue_timeout_fails_with_queue_timeout() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m");
    h.outputs();
    h.advance(queue_timeout(&h) - SECOND);
    assert!(ended(&h.outputs()).is_empty());
    h.advance(SECOND);
    assert_eq!(ended(&h.outputs()), [(2, failed(Failure::QueueTimeout))]);
    // The running request is under the request timeout only.
    assert!(h.relay.request_status(r(1)).is_some());
}

#[test]
fn a_requeue_never_extends_the_queue_deadline() {
    let mut h = Harness::new();
    let queue_timeout = queue_timeout(&h);
    h.worker(1, &["m"], 1);
    h.worker(2, &["m"], 1);
    h.request(1, "m"); // worker 1
    h.request(2, "m"); // worker 2
    h.request(3, "m"); // waits
    h.outputs();
    h.advance(queue_timeout - 5 * SECOND);
    h.complete(2, 2); // request 3 goes to worker 2
    h.outputs();
    // Worker 2 dies: request 3 goes back to the queue with its original deadline.
    h.handle(Input::WorkerDisconnected { worker: w(2) });
    h.pong(1, 1);
    assert_eq!(h.relay.request_status(r(3)), Some(RequestStatus::Queued));
    h.advance(5 * SECOND);
    assert_eq!(ended(&h.outputs()), [(3, failed(Failure::QueueTimeout))]);
}

#[test]
fn a_requeue_after_the_queue_deadline_fails_unless_a_worker_is_free() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.outputs();
    h.advance(queue_timeout(&h) + SECOND);
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    assert_eq!(ended(&h.outputs()), [(1, failed(Failure::QueueTimeout))]);
}

// ---- requeue ----

#[test]
fn requests_of_a_lost_worker_go_back_to_the_front_of_the_queue() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 2);
    h.request(1, "m");
    h.request(2, "m");
    h.request(3, "m"); // waits behind the two running
    h.outputs();
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    assert!(ended(&h.outputs()).is_empty());
    assert_eq!(h.relay.requeue_count(r(1)), Some(1));
    h.worker(2, &["m"], 1);
    assert_eq!(
        h.relay.request_status(r(1)),
        Some(RequestStatus::Assigned {
            worker: w(2),
            streamed: false
        })
    );
    h.complete(2, 1);
    assert_eq!(dispatched(&h.outputs()), [(2, 2)]);
    h.complete(2, 2);
    assert_eq!(dispatched(&h.outputs()), [(2, 3)]);
}

#[test]
fn a_requeued_request_goes_to_a_free_worker_at_once() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.worker(2, &["m"], 1);
    h.request(1, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    assert_eq!(dispatched(&h.outputs()), [(2, 1)]);
}

#[test]
fn requeue_stops_after_three_losses() {
    let mut h = Harness::new();
    h.request(1, "m"); // unknown model: fails
    h.outputs();
    h.worker(100, &["m"], 1);
    h.handle(Input::WorkerDisconnected { worker: w(100) });
    h.request(1, "m");
    for loss in 1..=4u64 {
        h.worker(loss, &["m"], 1);
        h.handle(Input::WorkerDisconnected { worker: w(loss) });
        let outputs = h.outputs();
        if loss <= 3 {
            assert!(ended(&outputs).is_empty(), "loss {loss}: {outputs:?}");
            assert_eq!(h.relay.requeue_count(r(1)), Some(loss as u8));
        } else {
            assert_eq!(ended(&outputs), [(1, failed(Failure::RequeueExhausted))]);
        }
    }
    assert_eq!(h.relay.stats().requeues, 3);
}

#[test]
fn a_request_that_already_streamed_ends_with_worker_lost_instead_of_a_requeue() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.worker(2, &["m"], 1);
    h.request(1, "m");
    h.chunk(1, 1, "data: a\n\n");
    h.outputs();
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    let outputs = h.outputs();
    assert_eq!(
        ended(&outputs),
        [(
            1,
            Outcome::Failed {
                failure: Failure::WorkerLost,
                streamed: true
            }
        )]
    );
    assert!(dispatched(&outputs).is_empty(), "never a duplicate stream");
}

#[test]
fn a_requeue_into_a_full_queue_fails_with_no_capacity() {
    let mut h = Harness::with_config(RelayConfig {
        max_queue_len: 1,
        ..RelayConfig::default()
    });
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m"); // fills the queue
    h.outputs();
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    assert_eq!(ended(&h.outputs()), [(1, failed(Failure::NoCapacity))]);
    assert_eq!(h.relay.queue_len(&h.provider), 1);
}

// ---- cancellation ----

#[test]
fn a_gone_client_removes_its_queued_request() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m");
    h.outputs();
    h.handle(Input::ClientGone { request: r(2) });
    let outputs = h.outputs();
    assert_eq!(ended(&outputs), [(2, Outcome::Cancelled)]);
    assert!(cancels(&outputs).is_empty());
    assert_eq!(h.relay.queue_len(&h.provider), 0);
    h.complete(1, 1);
    assert!(dispatched(&h.outputs()).is_empty());
}

#[test]
fn a_gone_client_cancels_its_running_request_at_the_worker() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m");
    h.outputs();
    h.handle(Input::ClientGone { request: r(1) });
    let outputs = h.outputs();
    assert_eq!(cancels(&outputs), [(1, 1, CancelReason::ClientDisconnect)]);
    assert_eq!(ended(&outputs), [(1, Outcome::Cancelled)]);
    // The slot is free again: the queued request goes out.
    assert_eq!(dispatched(&outputs), [(1, 2)]);
}

#[test]
fn a_client_that_leaves_with_the_whole_stream_waits_for_the_completion() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m");
    h.chunk(1, 1, "data: x\n\ndata: [DONE]\n\n");
    h.outputs();
    h.handle(Input::ClientDone { request: r(1) });
    assert!(h.outputs().is_empty(), "no cancel, no end yet");
    h.advance(h.relay.config().finished_stream_grace / 2);
    assert!(h.outputs().is_empty());
    h.complete(1, 1);
    let outputs = h.outputs();
    assert_eq!(ended(&outputs), [(1, completed_ok())]);
    assert!(cancels(&outputs).is_empty());
    assert_eq!(dispatched(&outputs), [(1, 2)]);
    // A second notice changes nothing.
    h.handle(Input::ClientDone { request: r(1) });
    assert!(h.outputs().is_empty());
}

#[test]
fn a_finished_stream_whose_completion_never_comes_is_cancelled_after_the_grace() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.chunk(1, 1, "data: [DONE]\n\n");
    h.outputs();
    h.handle(Input::ClientDone { request: r(1) });
    let grace = h.relay.config().finished_stream_grace;
    h.advance(grace / 2);
    // A repeated notice does not push the deadline out.
    h.handle(Input::ClientDone { request: r(1) });
    h.advance(grace / 2);
    let outputs = h.outputs();
    assert_eq!(cancels(&outputs), [(1, 1, CancelReason::ClientDisconnect)]);
    assert_eq!(ended(&outputs), [(1, Outcome::Cancelled)]);
}

#[test]
fn a_client_done_notice_before_any_byte_is_a_plain_cancel() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m");
    h.outputs();
    // Queued: removed.
    h.handle(Input::ClientDone { request: r(2) });
    let outputs = h.outputs();
    assert_eq!(ended(&outputs), [(2, Outcome::Cancelled)]);
    assert!(cancels(&outputs).is_empty());
    // Running, nothing streamed: cancelled at once, so it can never be requeued.
    h.handle(Input::ClientDone { request: r(1) });
    let outputs = h.outputs();
    assert_eq!(cancels(&outputs), [(1, 1, CancelReason::ClientDisconnect)]);
    assert_eq!(ended(&outputs), [(1, Outcome::Cancelled)]);
}

#[test]
fn the_request_timeout_cancels_at_the_worker_with_reason_timeout() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.outputs();
    h.advance(request_timeout(&h));
    let outputs = h.outputs();
    assert_eq!(cancels(&outputs), [(1, 1, CancelReason::Timeout)]);
    assert_eq!(ended(&outputs), [(1, failed(Failure::RequestTimeout))]);
}

#[test]
fn the_request_timeout_mid_stream_says_chunks_went_out() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.chunk(1, 1, "data: x\n\n");
    h.outputs();
    h.advance(request_timeout(&h));
    assert_eq!(
        ended(&h.outputs()),
        [(
            1,
            Outcome::Failed {
                failure: Failure::RequestTimeout,
                streamed: true
            }
        )]
    );
}

#[test]
fn late_chunks_and_completions_are_dropped_and_counted() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.handle(Input::ClientGone { request: r(1) });
    h.outputs();
    h.chunk(1, 1, "data: late\n\n");
    h.complete(1, 1);
    assert!(h.outputs().is_empty());
    assert_eq!(h.relay.stats().late_frames, 2);
    assert_eq!(h.relay.stats().protocol_violations, 0);
}

#[test]
fn frames_about_requests_never_assigned_are_violations_and_repeats_close_the_link() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 2);
    h.worker(2, &["m"], 2);
    h.request(1, "m"); // to worker 1
    h.outputs();
    // Worker 2 speaks about worker 1's request, and about one that never existed.
    h.chunk(2, 1, "data: forged\n\n");
    h.complete(2, 99);
    let outputs = h.outputs();
    assert!(outputs.is_empty(), "{outputs:?}");
    assert_eq!(h.relay.stats().protocol_violations, 2);
    h.complete(2, 98);
    assert_eq!(closes(&h.outputs()), [(2, CloseReason::TooManyViolations)]);
    // Worker 1's request is untouched.
    assert_eq!(
        h.relay.request_status(r(1)),
        Some(RequestStatus::Assigned {
            worker: w(1),
            streamed: false
        })
    );
}

// ---- heartbeats ----

#[test]
fn pings_go_out_on_the_interval() {
    let mut h = Harness::new();
    let interval = h.relay.config().heartbeat_interval;
    h.worker(1, &["m"], 1);
    h.silent.push(1);
    h.advance(interval - SECOND);
    assert!(h.outputs().is_empty());
    h.advance(SECOND);
    let outputs = h.outputs();
    assert!(matches!(
        &outputs[..],
        [Output::SendToWorker {
            message: ServerMessage::Ping(_),
            ..
        }]
    ));
}

#[test]
fn a_worker_silent_for_the_heartbeat_window_is_lost_and_its_requests_requeued() {
    let mut h = Harness::new();
    let config = h.relay.config().clone();
    h.worker(1, &["m"], 1);
    h.worker(2, &["m"], 1);
    h.request(1, "m"); // worker 1
    h.outputs();
    // Worker 2 answers its pings; worker 1 stays silent.
    h.silent.push(1);
    h.advance(config.heartbeat_interval);
    assert!(closes(&h.outputs()).is_empty());
    h.advance(config.heartbeat_timeout);
    let outputs = h.outputs();
    assert_eq!(closes(&outputs), [(1, CloseReason::HeartbeatTimeout)]);
    assert_eq!(dispatched(&outputs), [(2, 1)]);
}

#[test]
fn any_frame_from_the_worker_counts_as_a_sign_of_life() {
    let mut h = Harness::new();
    let config = h.relay.config().clone();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.silent.push(1);
    h.advance(config.heartbeat_interval);
    h.chunk(1, 1, "data: busy\n\n");
    h.advance(config.heartbeat_timeout);
    assert!(closes(&h.outputs()).is_empty());
}

#[test]
fn pongs_carry_load_and_re_rank_the_worker() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 4);
    h.worker(2, &["m"], 4);
    h.pong(2, 2);
    h.request(1, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    h.pong(2, 0);
    h.request(2, "m");
    assert_eq!(dispatched(&h.outputs()), [(2, 2)]);
}

// ---- drain ----

#[test]
fn a_draining_worker_finishes_its_work_then_its_link_closes() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 2);
    h.request(1, "m");
    h.outputs();
    h.handle(Input::DrainWorker {
        worker: w(1),
        timeout: 30 * SECOND,
        reason: Some("maintenance".into()),
    });
    let outputs = h.outputs();
    assert!(matches!(
        &outputs[..],
        [Output::SendToWorker { message: ServerMessage::GracefulShutdown(g), .. }]
            if g.drain_timeout_secs == Some(30) && g.reason.as_deref() == Some("maintenance")
    ));
    h.request(2, "m");
    assert_eq!(h.relay.request_status(r(2)), Some(RequestStatus::Queued));
    h.chunk(1, 1, "data: still going\n\n");
    h.complete(1, 1);
    let outputs = h.outputs();
    assert_eq!(ended(&outputs), [(1, completed_ok())]);
    assert_eq!(closes(&outputs), [(1, CloseReason::Drained)]);
    assert!(dispatched(&outputs).is_empty());
}

#[test]
fn an_idle_worker_closes_at_once_when_drained() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.handle(Input::DrainWorker {
        worker: w(1),
        timeout: 30 * SECOND,
        reason: None,
    });
    assert_eq!(closes(&h.outputs()), [(1, CloseReason::Drained)]);
}

#[test]
fn at_the_drain_deadline_running_requests_are_handled_as_lost() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 2);
    h.request(1, "m");
    h.request(2, "m");
    h.chunk(1, 2, "data: partial\n\n");
    h.handle(Input::DrainWorker {
        worker: w(1),
        timeout: 10 * SECOND,
        reason: None,
    });
    h.worker(2, &["m"], 1); // a replacement, busy with nothing
    h.outputs();
    h.advance(10 * SECOND);
    let outputs = h.outputs();
    assert_eq!(
        cancels(&outputs),
        [
            (1, 1, CancelReason::GracefulShutdown),
            (1, 2, CancelReason::GracefulShutdown)
        ]
    );
    assert_eq!(closes(&outputs), [(1, CloseReason::DrainTimeout)]);
    assert_eq!(dispatched(&outputs), [(2, 1)]);
    assert_eq!(
        ended(&outputs),
        [(
            2,
            Outcome::Failed {
                failure: Failure::WorkerLost,
                streamed: true
            }
        )]
    );
}

#[test]
fn queued_work_goes_to_a_replacement_while_a_worker_drains() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m");
    h.handle(Input::DrainWorker {
        worker: w(1),
        timeout: 30 * SECOND,
        reason: None,
    });
    h.outputs();
    h.open(2);
    h.register(2, &["m"], 1);
    assert_eq!(dispatched(&h.outputs()), [(2, 2)]);
}

// ---- models ----

#[test]
fn a_models_update_changes_routing_at_once_and_dispatches_waiting_requests() {
    let mut h = Harness::new();
    h.worker(1, &["a"], 2);
    h.worker(2, &["b"], 1);
    h.handle(Input::WorkerDisconnected { worker: w(2) });
    h.request(1, "b"); // known, but nobody serves it now
    h.outputs();
    h.frame(
        1,
        WorkerMessage::ModelsUpdate(ModelsUpdate {
            models: vec!["a".into(), "b".into()],
            current_load: 0,
        }),
    );
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    h.frame(
        1,
        WorkerMessage::ModelsUpdate(ModelsUpdate {
            models: vec!["b".into()],
            current_load: 1,
        }),
    );
    h.request(2, "a");
    assert_eq!(h.relay.request_status(r(2)), Some(RequestStatus::Queued));
    assert_eq!(h.relay.models(&h.provider), [ModelName::new("b")]);
}

#[test]
fn a_models_refresh_is_sent_to_registered_workers_only() {
    let mut h = Harness::new();
    h.worker(1, &["a"], 1);
    h.open(2);
    h.handle(Input::RefreshModels { worker: w(1) });
    h.handle(Input::RefreshModels { worker: w(2) });
    let outputs = h.outputs();
    assert!(matches!(
        &outputs[..],
        [Output::SendToWorker { worker, message: ServerMessage::ModelsRefresh(_) }] if *worker == w(1)
    ));
}

// ---- ends ----

#[test]
fn a_worker_error_fails_the_request_with_its_code() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.outputs();
    h.error(1, 1, "backend_unreachable", "connection refused");
    assert_eq!(
        ended(&h.outputs()),
        [(
            1,
            failed(Failure::WorkerError {
                code: "backend_unreachable".into(),
                message: "connection refused".into()
            })
        )]
    );
}

#[test]
fn a_stream_past_the_size_limit_fails_and_is_cancelled() {
    let mut h = Harness::with_config(RelayConfig {
        max_stream_bytes: 10,
        ..RelayConfig::default()
    });
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.chunk(1, 1, "12345");
    h.chunk(1, 1, "678901");
    let outputs = h.outputs();
    assert_eq!(cancels(&outputs), [(1, 1, CancelReason::ClientDisconnect)]);
    assert_eq!(
        ended(&outputs),
        [(
            1,
            Outcome::Failed {
                failure: Failure::StreamTooLarge,
                streamed: true
            }
        )]
    );
}

#[test]
fn chunks_reach_the_client_in_order_without_copies() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.outputs();
    let payload = Bytes::from_static(b"data: one\n\n");
    h.frame(
        1,
        WorkerMessage::ResponseChunk(ResponseChunk {
            request_id: r(1).into(),
            chunk: payload.clone(),
        }),
    );
    h.chunk(1, 1, "data: two\n\n");
    h.complete(1, 1);
    let outputs = h.outputs();
    let chunks: Vec<&Bytes> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::StreamChunk { chunk, .. } => Some(chunk),
            _ => None,
        })
        .collect();
    assert_eq!(chunks, [&payload, &Bytes::from_static(b"data: two\n\n")]);
    assert_eq!(chunks[0].as_ptr(), payload.as_ptr());
    assert!(matches!(outputs.last(), Some(Output::RequestEnded { .. })));
}

#[test]
fn shutdown_fails_queued_and_new_requests_and_drains_every_worker() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.worker(2, &["m"], 1);
    h.request(1, "m"); // worker 1
    h.request(2, "m"); // worker 2
    h.request(3, "m"); // waits
    h.outputs();
    h.handle(Input::Shutdown {
        drain_timeout: 20 * SECOND,
    });
    let outputs = h.outputs();
    assert_eq!(ended(&outputs), [(3, failed(Failure::ShuttingDown))]);
    let drains = outputs
        .iter()
        .filter(|o| {
            matches!(
                o,
                Output::SendToWorker {
                    message: ServerMessage::GracefulShutdown(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(drains, 2);
    h.request(4, "m");
    assert_eq!(ended(&h.outputs()), [(4, failed(Failure::ShuttingDown))]);
    h.complete(1, 1);
    h.complete(2, 2);
    let outputs = h.outputs();
    assert_eq!(
        closes(&outputs),
        [(1, CloseReason::Drained), (2, CloseReason::Drained)]
    );
    assert!(h.relay.is_idle());
    h.open(3);
    assert_eq!(closes(&h.outputs()), [(3, CloseReason::Shutdown)]);
}

#[test]
fn during_a_relay_drain_every_request_ends_once_and_none_waits_past_the_deadline() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 2);
    h.worker(2, &["m"], 1);
    h.request(1, "m"); // worker 1: will have streamed
    h.request(2, "m"); // worker 2: no byte yet, its worker goes away
    h.request(3, "m"); // worker 1: no byte by the deadline
    h.request(4, "m"); // waits in the queue
    h.chunk(1, 1, "data: partial\n\n");
    h.outputs();
    h.handle(Input::Shutdown {
        drain_timeout: 20 * SECOND,
    });
    assert_eq!(
        ended(&h.outputs()),
        [(4, failed(Failure::ShuttingDown))],
        "a queued request fails at once: every worker is draining"
    );
    // A running request that loses its worker before its first byte is not requeued.
    h.handle(Input::WorkerDisconnected { worker: w(2) });
    assert_eq!(ended(&h.outputs()), [(2, failed(Failure::ShuttingDown))]);
    h.advance(20 * SECOND);
    let outputs = h.outputs();
    assert_eq!(
        cancels(&outputs),
        [
            (1, 1, CancelReason::GracefulShutdown),
            (1, 3, CancelReason::GracefulShutdown)
        ]
    );
    assert_eq!(
        ended(&outputs),
        [
            (
                1,
                Outcome::Failed {
                    failure: Failure::WorkerLost,
                    streamed: true
                }
            ),
            (3, failed(Failure::ShuttingDown)),
        ]
    );
    assert!(h.relay.is_idle(), "nothing is left to wait on");
}

#[test]
fn deadlines_are_disarmed_when_things_end() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m");
    h.handle(Input::ClientGone { request: r(2) });
    h.complete(1, 1);
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    assert_eq!(h.relay.poll_timeout(), None);
}

#[test]
fn a_refusal_before_any_chunk_requeues_the_request_and_rests_the_worker() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 2);
    h.worker(2, &["m"], 2);
    h.request(1, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    h.error(1, 1, modelrelay_core::wire::REFUSED_DRAINING, "draining");
    let outputs = h.outputs();
    assert_eq!(dispatched(&outputs), [(2, 1)]);
    assert!(ended(&outputs).is_empty());
    assert_eq!(
        h.relay.requeue_count(r(1)),
        Some(0),
        "a refusal spends no requeue"
    );
    // Worker 1 gets nothing until it speaks again.
    h.request(2, "m");
    assert_eq!(dispatched(&h.outputs()), [(2, 2)]);
    h.pong(1, 0);
    h.request(3, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 3)]);
}

#[test]
fn refusals_never_use_up_the_requeue_limit_but_a_lost_worker_still_does() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.worker(2, &["m"], 1);
    h.request(1, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    // Twice the limit of refusals, each from a worker that then speaks again.
    for round in 0..8u64 {
        let (refusing, next) = if round % 2 == 0 { (1, 2) } else { (2, 1) };
        h.error(refusing, 1, REFUSED_AT_CAPACITY, "full");
        assert_eq!(dispatched(&h.outputs()), [(next, 1)], "round {round}");
        h.pong(refusing, 0);
    }
    assert_eq!(h.relay.requeue_count(r(1)), Some(0));
    // A worker lost while holding it still counts.
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    assert_eq!(dispatched(&h.outputs()), [(2, 1)]);
    assert_eq!(h.relay.requeue_count(r(1)), Some(1));
}

/// The `response_complete` a worker on a v1 link sends to refuse a request.
fn marked_refusal_frame(request: u64, code: &str) -> WorkerMessage {
    WorkerMessage::ResponseComplete(refusal_complete(r(request).into(), code, "refused"))
}

/// The requests answered in `outputs`, each with its answer's status.
fn answered(outputs: &[Output]) -> Vec<(u64, u16)> {
    ended(outputs)
        .into_iter()
        .filter_map(|(id, outcome)| match outcome {
            Outcome::Completed(answer) => Some((id, answer.status_code)),
            _ => None,
        })
        .collect()
}

#[test]
fn on_v1_a_marked_503_before_any_chunk_is_a_refusal_and_requeues_the_request() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 2);
    h.worker(2, &["m"], 2);
    h.request(1, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    h.frame(1, marked_refusal_frame(1, REFUSED_AT_CAPACITY));
    let outputs = h.outputs();
    assert_eq!(dispatched(&outputs), [(2, 1)]);
    assert!(ended(&outputs).is_empty(), "the client sees nothing of it");
    assert_eq!(
        h.relay.requeue_count(r(1)),
        Some(0),
        "a refusal spends no requeue"
    );
    // Worker 1 rests, as after an `error` refusal, until it speaks again.
    h.request(2, "m");
    assert_eq!(dispatched(&h.outputs()), [(2, 2)]);
    h.pong(1, 0);
    h.request(3, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 3)]);
    // After a chunk the same frame is the answer's end, passed on as it is.
    h.chunk(2, 1, "data: a\n\n");
    h.frame(2, marked_refusal_frame(1, REFUSED_DRAINING));
    assert_eq!(answered(&h.outputs()), [(1, 503)]);
}

#[test]
fn a_marked_503_on_a_v2_link_is_an_answer() {
    let mut h = Harness::new();
    h.worker_with(1, LinkFlow::Unwindowed, 1);
    h.request(1, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    // v2 refuses with `error`; a marked 503 there is some backend's answer.
    h.frame(1, marked_refusal_frame(1, REFUSED_AT_CAPACITY));
    assert_eq!(answered(&h.outputs()), [(1, 503)]);
}

#[test]
fn a_resting_worker_takes_queued_work_when_it_speaks_again() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.error(1, 1, modelrelay_core::wire::REFUSED_AT_CAPACITY, "busy");
    assert_eq!(h.relay.request_status(r(1)), Some(RequestStatus::Queued));
    h.outputs();
    h.pong(1, 0);
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
}

#[test]
fn a_frame_naming_an_id_this_relay_never_issues_is_a_violation() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.outputs();
    h.frame(
        1,
        WorkerMessage::ResponseChunk(ResponseChunk {
            request_id: "req-1".into(),
            chunk: Bytes::from_static(b"data: x\n\n"),
        }),
    );
    assert!(h.outputs().is_empty());
    assert_eq!(h.relay.stats().protocol_violations, 1);
}

#[test]
fn a_client_too_slow_for_its_stream_is_stopped_with_a_failure_and_its_worker_told() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.chunk(1, 1, "data: a\n\n");
    h.outputs();
    h.handle(Input::ClientTooSlow { request: r(1) });
    let outputs = h.outputs();
    assert_eq!(cancels(&outputs), [(1, 1, CancelReason::ClientDisconnect)]);
    assert_eq!(
        ended(&outputs),
        [(
            1,
            Outcome::Failed {
                failure: Failure::ClientTooSlow,
                streamed: true
            }
        )]
    );
}

#[test]
fn models_nobody_advertises_are_forgotten_once_too_many_are_known() {
    let mut h = Harness::new();
    h.worker(1, &["keep"], 1);
    h.worker(2, &["m0"], 1);
    // Worker 2 keeps renaming its model, far past the table's bound.
    for n in 1..=5000 {
        h.frame(
            2,
            WorkerMessage::ModelsUpdate(ModelsUpdate {
                models: vec![format!("m{n}")],
                current_load: 0,
            }),
        );
    }
    h.outputs();
    assert!(
        h.relay.knows_model(&h.provider, "keep"),
        "an advertised model stays"
    );
    assert!(h.relay.knows_model(&h.provider, "m5000"));
    assert!(
        !h.relay.knows_model(&h.provider, "m1"),
        "an old name nobody serves is forgotten"
    );
}

// ---- flow control ----

const KIB: u64 = 1024;

/// Flow control on: a 256 KiB window, `budget`, and a 64 KiB cap for unwindowed streams.
fn flow_harness(budget: u64) -> Harness {
    Harness::with_config(RelayConfig {
        flow: Some(FlowConfig {
            window: 256 * KIB,
            budget,
            legacy_cap: 64 * KIB,
        }),
        ..RelayConfig::default()
    })
}

impl Harness {
    /// Connects and registers a v2 worker whose link has `flow`, discarding the ack.
    fn worker_with(&mut self, worker: u64, flow: LinkFlow, max_concurrent: u32) {
        self.handle(Input::WorkerConnected {
            worker: w(worker),
            provider: self.provider.clone(),
            wire: WireVersion::V2,
            flow,
            auth: AuthOutcome::Accepted,
        });
        self.frame(
            worker,
            WorkerMessage::Register(Register {
                worker_name: format!("worker-{worker}"),
                models: vec!["m".into()],
                max_concurrent,
                protocol_version: None,
                current_load: None,
            }),
        );
        self.outputs();
    }

    /// A chunk of `len` bytes from `worker` for `request`.
    fn chunk_of(&mut self, worker: u64, request: u64, len: u64) {
        self.frame(
            worker,
            WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: r(request).into(),
                chunk: Bytes::from(vec![b'x'; usize::try_from(len).unwrap()]),
            }),
        );
    }

    /// `request`'s client has taken `total` bytes in all.
    fn took(&mut self, request: u64, total: u64) {
        self.handle(Input::ClientTook {
            request: r(request),
            total,
        });
    }
}

/// The window updates among `outputs`: (worker, request, max_bytes).
fn window_updates(outputs: &[Output]) -> Vec<(u64, u64, u64)> {
    outputs
        .iter()
        .filter_map(|o| match o {
            Output::SendToWorker {
                worker,
                message: ServerMessage::WindowUpdate(update),
            } => Some((
                worker.get(),
                update.request_id.as_request_id().unwrap().get(),
                update.max_bytes,
            )),
            _ => None,
        })
        .collect()
}

/// Bytes of the chunks among `outputs`.
fn chunk_bytes(outputs: &[Output]) -> u64 {
    outputs
        .iter()
        .map(|o| match o {
            Output::StreamChunk { chunk, .. } => chunk.len() as u64,
            _ => 0,
        })
        .sum()
}

#[test]
fn a_windowed_worker_is_topped_up_as_its_client_takes_bytes() {
    let mut h = flow_harness(64 * 1024 * KIB);
    h.worker_with(1, LinkFlow::Windowed, 1);
    h.request(1, "m");
    h.chunk_of(1, 1, 64 * KIB);
    assert_eq!(chunk_bytes(&h.outputs()), 64 * KIB);
    // Taken + window, once that grows the window by a quarter of it or more.
    h.took(1, 16 * KIB);
    assert_eq!(window_updates(&h.outputs()), [(1, 1, 272 * KIB)]);
    h.took(1, 48 * KIB);
    assert!(
        window_updates(&h.outputs()).is_empty(),
        "16 KiB more: no frame"
    );
    h.chunk_of(1, 1, 64 * KIB);
    h.took(1, 96 * KIB);
    assert_eq!(window_updates(&h.outputs()), [(1, 1, 352 * KIB)]);
    // Counts are cumulative: a stale or repeated one changes nothing.
    h.took(1, 20 * KIB);
    h.took(1, 96 * KIB);
    assert!(window_updates(&h.outputs()).is_empty());
    assert_eq!(h.relay.stats().window_updates, 2);
}

#[test]
fn an_unwindowed_worker_never_gets_a_window_update() {
    let mut h = flow_harness(64 * 1024 * KIB);
    h.worker_with(1, LinkFlow::Unwindowed, 1);
    h.request(1, "m");
    let mut outputs = Vec::new();
    for n in 1..=40 {
        h.chunk_of(1, 1, 16 * KIB);
        h.took(1, n * 16 * KIB);
        outputs.extend(h.outputs());
    }
    assert_eq!(chunk_bytes(&outputs), 640 * KIB);
    assert!(window_updates(&outputs).is_empty(), "{outputs:?}");
    assert!(ended(&outputs).is_empty());
}

#[test]
fn a_windowed_stream_whose_client_reads_slowly_is_never_cut_for_being_slow() {
    // The cap is 64 KiB; the client lags by up to a whole window (256 KiB) for 10 MiB.
    let mut h = flow_harness(64 * 1024 * KIB);
    h.worker_with(1, LinkFlow::Windowed, 1);
    h.request(1, "m");
    let (mut granted, mut received, mut taken) = (INITIAL_WINDOW, 0, 0);
    while received < 10 * 1024 * KIB {
        // The worker sends all its window allows; the client takes 16 KiB.
        while received + 16 * KIB <= granted {
            h.chunk_of(1, 1, 16 * KIB);
            received += 16 * KIB;
        }
        taken += 16 * KIB;
        h.took(1, taken);
        let outputs = h.outputs();
        assert!(ended(&outputs).is_empty(), "cut at {received}: {outputs:?}");
        for (_, _, max_bytes) in window_updates(&outputs) {
            granted = granted.max(max_bytes);
        }
        let view = h.relay.flow_view().unwrap();
        assert!(view.held_bytes <= 256 * KIB, "{view:?}");
    }
}

#[test]
fn an_unwindowed_stream_past_its_buffer_cap_ends_with_client_too_slow() {
    let mut h = flow_harness(64 * 1024 * KIB);
    h.worker_with(1, LinkFlow::Unwindowed, 1);
    h.request(1, "m");
    for _ in 0..4 {
        h.chunk_of(1, 1, 16 * KIB);
    }
    // Taking makes room under the 64 KiB cap.
    h.took(1, 16 * KIB);
    h.chunk_of(1, 1, 16 * KIB);
    assert_eq!(chunk_bytes(&h.outputs()), 80 * KIB);
    h.chunk_of(1, 1, 1);
    let outputs = h.outputs();
    assert_eq!(
        chunk_bytes(&outputs),
        0,
        "the chunk past the cap is not passed on"
    );
    assert_eq!(cancels(&outputs), [(1, 1, CancelReason::ClientDisconnect)]);
    assert_eq!(
        ended(&outputs),
        [(
            1,
            Outcome::Failed {
                failure: Failure::ClientTooSlow,
                streamed: true
            }
        )]
    );
    assert_eq!(h.relay.flow_view().unwrap().held_bytes, 0, "released");
}

#[test]
fn an_unwindowed_stream_that_lags_when_the_budget_is_spent_ends_with_client_too_slow() {
    // Budget 256 KiB; unwindowed streams each under the 64 KiB cap.
    let mut h = flow_harness(256 * KIB);
    h.worker_with(2, LinkFlow::Unwindowed, 8);
    for id in 2..=6 {
        h.request(id, "m");
    }
    assert_eq!(dispatched(&h.outputs()).len(), 5);
    for id in 2..=5 {
        h.chunk_of(2, id, 60 * KIB);
    }
    h.chunk_of(2, 6, 10 * KIB);
    // Past the budget, but stream 6's client is within a report of its stream: it goes on.
    h.chunk_of(2, 6, 10 * KIB);
    assert_eq!(chunk_bytes(&h.outputs()), 260 * KIB);
    // Stream 2's client lags by 60 KiB while every held byte is spent: it is stopped.
    h.chunk_of(2, 2, 1);
    let outputs = h.outputs();
    assert_eq!(
        ended(&outputs),
        [(
            2,
            Outcome::Failed {
                failure: Failure::ClientTooSlow,
                streamed: true
            }
        )]
    );
    assert_eq!(h.relay.flow_view().unwrap().held_bytes, 200 * KIB);
}

#[test]
fn top_ups_wait_while_the_bytes_held_fill_the_budget_and_resume_in_arrival_order() {
    let mut h = flow_harness(384 * KIB);
    h.worker_with(1, LinkFlow::Windowed, 4);
    for id in 1..=3 {
        h.request(id, "m");
        h.chunk_of(1, id, 64 * KIB);
    }
    h.outputs();
    // 128 KiB held once request 3's client took its 64 KiB: its top-up fits.
    h.took(3, 64 * KIB);
    assert_eq!(window_updates(&h.outputs()), [(1, 3, 320 * KIB)]);
    // Its worker sends it all and its client stops reading: 384 KiB held.
    h.chunk_of(1, 3, 256 * KIB);
    // Now neither 2's nor 1's top-up fits: both wait.
    h.took(2, 64 * KIB);
    h.took(1, 64 * KIB);
    assert!(window_updates(&h.outputs()).is_empty());
    assert_eq!(h.relay.flow_view().unwrap().waiting_for_budget, 2);
    // Request 3's client takes everything: both are granted, in arrival order,
    // and request 3's own window moves on (grants hold nothing).
    h.took(3, 320 * KIB);
    assert_eq!(
        window_updates(&h.outputs()),
        [(1, 1, 320 * KIB), (1, 2, 320 * KIB), (1, 3, 576 * KIB)]
    );
    assert_eq!(h.relay.flow_view().unwrap().waiting_for_budget, 0);
}

#[test]
fn a_client_that_took_everything_always_gets_a_top_up() {
    // The smallest budget (one window), and chunk and read sizes that never line up;
    // the client reports as a response queue does: every CLIENT_REPORT_EVERY bytes.
    let mut h = flow_harness(0);
    h.worker_with(1, LinkFlow::Windowed, 2);
    h.request(1, "m");
    let mut seed: u64 = 7;
    let mut next_size = move || {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        1 + (seed >> 33) % 20_000
    };
    let (mut granted, mut received, mut taken, mut reported) = (INITIAL_WINDOW, 0, 0, 0);
    for round in 0..500 {
        while received < granted {
            let n = next_size().min(granted - received);
            h.chunk_of(1, 1, n);
            received += n;
        }
        while taken < received {
            taken += next_size().min(received - taken);
            if taken - reported >= CLIENT_REPORT_EVERY {
                reported = taken;
                h.took(1, taken);
            }
        }
        let outputs = h.outputs();
        assert!(ended(&outputs).is_empty(), "{outputs:?}");
        for (_, _, max_bytes) in window_updates(&outputs) {
            granted = granted.max(max_bytes);
        }
        assert!(
            granted > received,
            "round {round}: the client took all {received} bytes and got no top-up"
        );
    }
}

#[test]
fn a_request_waits_in_the_queue_while_the_bytes_held_leave_no_room_for_its_first_window() {
    // 256 KiB: grants alone hold nothing, so four requests go out at once.
    let mut h = flow_harness(256 * KIB);
    h.worker_with(1, LinkFlow::Windowed, 8);
    for id in 1..=4 {
        h.request(id, "m");
    }
    assert_eq!(dispatched(&h.outputs()), [(1, 1), (1, 2), (1, 3), (1, 4)]);
    // Their clients never read: 256 KiB held, and the next request waits.
    for id in 1..=4 {
        h.chunk_of(1, id, 64 * KIB);
    }
    h.request(5, "m");
    assert_eq!(h.relay.request_status(r(5)), Some(RequestStatus::Queued));
    // A worker without windows is not held back by the budget.
    h.worker_with(2, LinkFlow::Unwindowed, 1);
    assert_eq!(
        h.relay.request_status(r(5)),
        Some(RequestStatus::Assigned {
            worker: w(2),
            streamed: false
        })
    );
    h.request(6, "m");
    assert!(dispatched(&h.outputs()).is_empty());
    // A client that takes its bytes makes room: the waiting request goes.
    h.took(2, 64 * KIB);
    assert_eq!(dispatched(&h.outputs()), [(1, 6)]);
    // The queue timeout still applies to a request held for budget.
    h.chunk_of(1, 6, 64 * KIB);
    h.request(7, "m");
    h.advance(31 * SECOND);
    assert_eq!(ended(&h.outputs()), [(7, failed(Failure::QueueTimeout))]);
}

// ---- drop-in: wildcard workers and timeouts that are off ----

/// The model of the request frame sent for `request`, from `outputs`.
fn dispatched_model(outputs: &[Output], request: u64) -> Option<String> {
    outputs.iter().find_map(|o| match o {
        Output::SendToWorker {
            message: ServerMessage::Request(frame),
            ..
        } if frame.request_id.as_request_id() == Some(r(request)) => {
            Some(frame.model.as_str().to_owned())
        }
        _ => None,
    })
}

#[test]
fn a_wildcard_worker_serves_models_no_worker_names() {
    let mut h = Harness::new();
    h.worker(1, &["*"], 2);
    h.request(1, "made-up");
    h.request(2, "*");
    let outputs = h.outputs();
    assert_eq!(dispatched(&outputs), [(1, 1), (1, 2)]);
    assert_eq!(dispatched_model(&outputs, 1).as_deref(), Some("made-up"));
    assert!(ended(&outputs).is_empty());
}

#[test]
fn a_worker_that_names_the_model_goes_before_a_wildcard_worker() {
    let mut h = Harness::new();
    // Worker 1 would win every tie (lower id, equally idle) but only advertises `*`.
    h.worker(1, &["*"], 1);
    h.worker(2, &["m"], 1);
    h.request(1, "m");
    assert_eq!(dispatched(&h.outputs()), [(2, 1)]);
    // No worker that names `m` can take it now: the wildcard worker does.
    h.request(2, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 2)]);
    // Both busy: it waits, and goes to whichever frees first.
    h.request(3, "m");
    assert!(dispatched(&h.outputs()).is_empty());
    h.complete(1, 2);
    assert_eq!(dispatched(&h.outputs()), [(1, 3)]);
    // A worker that names the model and the wildcard is a worker that names it.
    h.worker(3, &["*", "m"], 1);
    h.worker(4, &["*"], 1);
    h.request(4, "m");
    assert_eq!(dispatched(&h.outputs()), [(3, 4)]);
}

#[test]
fn a_freed_wildcard_worker_takes_the_oldest_request_of_any_model() {
    let mut h = Harness::new();
    h.worker(1, &["*"], 1);
    h.worker(2, &["a"], 1);
    h.request(1, "a"); // worker 2
    h.request(2, "x"); // worker 1
    h.request(3, "a"); // waits: worker 2 is busy, and worker 1 too
    h.request(4, "y"); // waits
    assert_eq!(dispatched(&h.outputs()), [(2, 1), (1, 2)]);
    assert_eq!(h.relay.queue_len(&h.provider), 2);
    h.complete(1, 2);
    assert_eq!(dispatched(&h.outputs()), [(1, 3)]);
    h.complete(2, 1);
    assert!(
        dispatched(&h.outputs()).is_empty(),
        "worker 2 serves only a"
    );
    h.complete(1, 3);
    assert_eq!(dispatched(&h.outputs()), [(1, 4)]);
}

#[test]
fn a_model_nobody_names_waits_while_a_wildcard_worker_is_connected_and_is_unknown_after() {
    let mut h = Harness::new();
    h.worker(1, &["*"], 1);
    h.request(1, "x");
    h.request(2, "y");
    let outputs = h.outputs();
    assert_eq!(dispatched(&outputs), [(1, 1)]);
    assert!(ended(&outputs).is_empty(), "y waits: {outputs:?}");
    assert_eq!(h.relay.request_status(r(2)), Some(RequestStatus::Queued));
    // Served by the wildcard, a name is still not one a worker advertised.
    assert!(!h.relay.knows_model(&h.provider, "x"));
    // A draining wildcard worker still counts: a replacement may come.
    h.handle(Input::DrainWorker {
        worker: w(1),
        timeout: 30 * SECOND,
        reason: None,
    });
    h.request(3, "z");
    assert!(ended(&h.outputs()).is_empty());
    h.complete(1, 1);
    let outputs = h.outputs();
    assert_eq!(closes(&outputs), [(1, CloseReason::Drained)]);
    // No wildcard worker left: a new request for a name nobody advertised is
    // unknown at once; those already waiting wait on (clause 12).
    h.request(4, "x");
    assert_eq!(ended(&h.outputs()), [(4, failed(Failure::UnknownModel))]);
    h.worker(2, &["*"], 2);
    for request in [2, 3] {
        assert_eq!(h.relay.request_status(r(request)), running_on(2));
    }
}

#[test]
fn the_wildcard_is_never_listed_as_a_model() {
    let mut h = Harness::new();
    h.worker(1, &["m", "*"], 1);
    h.worker(2, &["*"], 1);
    assert_eq!(h.relay.models(&h.provider), [ModelName::new("m")]);
    assert!(!h.relay.knows_model(&h.provider, "*"));
    // The worker's own list (for the admin view and its ack) keeps it.
    let listed: Vec<Vec<String>> = h
        .relay
        .workers()
        .map(|w| w.models.iter().map(|m| m.as_str().to_owned()).collect())
        .collect();
    assert!(listed.contains(&vec!["*".to_owned()]), "{listed:?}");
}

#[test]
fn no_queue_timeout_lets_a_request_wait_however_long_with_no_deadline_armed() {
    let mut h = Harness::with_config(RelayConfig {
        queue_timeout: None,
        request_timeout: None,
        ..RelayConfig::default()
    });
    h.worker(1, &["m"], 1);
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    h.request(1, "m");
    h.outputs();
    // Nothing at all is armed: no deadline, not a distant one.
    assert_eq!(h.relay.poll_timeout(), None);
    assert_eq!(h.relay.request_status(r(1)), Some(RequestStatus::Queued));
    h.worker(2, &["m"], 1);
    assert_eq!(h.relay.request_status(r(1)), running_on(2));
}

#[test]
fn no_request_timeout_lets_a_running_request_take_however_long() {
    let mut h = Harness::with_config(RelayConfig {
        request_timeout: None,
        ..RelayConfig::default()
    });
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.chunk(1, 1, "data: x\n\n");
    h.outputs();
    h.advance(Duration::from_secs(6 * 3600));
    let outputs = h.outputs();
    assert!(cancels(&outputs).is_empty(), "{outputs:?}");
    assert!(ended(&outputs).is_empty(), "{outputs:?}");
    h.complete(1, 1);
    assert_eq!(ended(&h.outputs()), [(1, completed_ok())]);
}

#[test]
fn no_queue_timeout_still_leaves_a_waiting_request_under_the_request_timeout() {
    let mut h = Harness::with_config(RelayConfig {
        queue_timeout: None,
        ..RelayConfig::default()
    });
    h.worker(1, &["m"], 1);
    h.request(1, "m");
    h.request(2, "m");
    h.outputs();
    h.advance(request_timeout(&h));
    let ends = ended(&h.outputs());
    assert!(
        ends.contains(&(2, failed(Failure::RequestTimeout))),
        "{ends:?}"
    );
}

#[test]
fn a_pinned_request_runs_on_its_worker_or_fails_at_once() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 2);
    h.worker(2, &["m"], 1);
    h.worker(3, &["*"], 1);
    // Worker 2 is busier than worker 1, but the request names it.
    h.request(1, "m");
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    h.request(2, "m");
    assert_eq!(dispatched(&h.outputs()), [(2, 2)]);
    h.request_pinned(3, "m", Some(1));
    assert_eq!(dispatched(&h.outputs()), [(1, 3)]);
    // A wildcard worker serves any model pinned to it.
    h.request_pinned(4, "m", Some(3));
    assert_eq!(dispatched(&h.outputs()), [(3, 4)]);
    // Full, unknown, or not serving the model: it fails at once and never waits.
    h.worker(4, &["other"], 1);
    for (id, worker) in [(5, 2), (6, 9), (7, 4)] {
        h.request_pinned(id, "m", Some(worker));
        assert_eq!(
            ended(&h.outputs()),
            [(id, failed(Failure::WorkerUnavailable))],
            "pinned to worker {worker}"
        );
    }
    // Draining: no new work, pinned or not.
    h.handle(Input::DrainWorker {
        worker: w(1),
        timeout: 30 * SECOND,
        reason: None,
    });
    h.outputs();
    h.request_pinned(8, "m", Some(1));
    assert_eq!(
        ended(&h.outputs()),
        [(8, failed(Failure::WorkerUnavailable))]
    );
}

#[test]
fn a_pinned_request_is_never_moved_to_another_worker() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.worker(2, &["m"], 1);
    // Lost before any chunk: it fails, where an unpinned request would move.
    h.request_pinned(1, "m", Some(1));
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    let outputs = h.outputs();
    assert_eq!(dispatched(&outputs), []);
    assert_eq!(ended(&outputs), [(1, failed(Failure::WorkerLost))]);
    // Refused: it fails as unavailable; the free worker 2 is not tried.
    h.request_pinned(2, "m", Some(2));
    assert_eq!(dispatched(&h.outputs()), [(2, 2)]);
    h.error(2, 2, REFUSED_AT_CAPACITY, "full");
    let outputs = h.outputs();
    assert_eq!(dispatched(&outputs), []);
    assert_eq!(ended(&outputs), [(2, failed(Failure::WorkerUnavailable))]);
    assert_eq!(h.relay.stats().requeues, 0, "nothing was requeued");
    // A waiting unpinned request never takes a pinned one's place either:
    // when worker 2 speaks again, the queue's request goes to it.
    h.worker(3, &["m"], 1);
    h.request(3, "m");
    assert_eq!(dispatched(&h.outputs()), [(3, 3)]);
    h.request(4, "m");
    assert_eq!(dispatched(&h.outputs()), []);
    h.pong(2, 0);
    assert_eq!(dispatched(&h.outputs()), [(2, 4)]);
}

#[test]
fn a_pinned_request_whose_worker_is_lost_during_a_shutdown_ends_as_shutting_down() {
    let mut h = Harness::new();
    h.worker(1, &["m"], 1);
    h.request_pinned(1, "m", Some(1));
    assert_eq!(dispatched(&h.outputs()), [(1, 1)]);
    h.handle(Input::Shutdown {
        drain_timeout: 10 * SECOND,
    });
    h.outputs();
    h.handle(Input::WorkerDisconnected { worker: w(1) });
    assert_eq!(
        ended(&h.outputs()),
        [(1, failed(Failure::ShuttingDown))],
        "as an unpinned request with no worker left would end"
    );
}

//! Random event sequences through the real `Relay`, checked against the reference model.
//!
//! After every step: the relay produced exactly the dispatches, cancels, closes,
//! chunks and ends the model predicts, its request and worker tables agree with
//! the model, and the contract's invariants hold on its outputs alone (each
//! request ends once, nothing follows an end, capacity, queue bound, queue
//! order, requeue limit, deadlines). At the end of each case: time runs out
//! every request, and a replay of the same inputs gives the same outputs.
//!
//! `PROPTEST_CASES=N` runs more cases (default 256).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use contract_tests::model::{
    self, CloseKind, ModelStatus, QUEUE_BOUND, QUEUE_TIMEOUT_MS, REQUEST_TIMEOUT_MS, RelayModel,
    Stimulus, Transition,
};
use modelrelay_core::relay::{Input, Output, Relay, RequestStatus};
use modelrelay_core::wire::{CancelReason, Pong, ServerMessage, WILDCARD_MODEL, WorkerMessage};
use modelrelay_core::{RequestId, WireRequestId, WorkerId};
use proptest::prelude::*;
use proptest::test_runner::Config;
use proptest_state_machine::{ReferenceStateMachine, StateMachineTest, prop_state_machine};

/// The reference side for proptest-state-machine; `CHURN` picks the churn-heavy mix.
struct Reference<const CHURN: bool>;

impl<const CHURN: bool> ReferenceStateMachine for Reference<CHURN> {
    type State = RelayModel;
    type Transition = Transition;

    fn init_state() -> BoxedStrategy<Self::State> {
        Just(RelayModel::default()).boxed()
    }

    fn transitions(_state: &Self::State) -> BoxedStrategy<Self::Transition> {
        if CHURN {
            model::churn_transitions()
        } else {
            model::transitions_with_shutdown()
        }
    }

    fn apply(mut state: Self::State, transition: &Self::Transition) -> Self::State {
        state.apply(transition);
        state
    }
}

/// One thing fed to the relay, for the determinism replay.
#[derive(Clone, Debug)]
enum Event {
    Handle(Duration, Input),
    Timeout(Duration),
}

/// The real relay, with a clock, a log of what it was fed, and what it said.
struct Driven {
    relay: Relay,
    base: Instant,
    now_ms: u64,
    events: Vec<Event>,
    outputs: Vec<Output>,
    ended: BTreeSet<RequestId>,
}

impl Driven {
    fn new(base: Instant) -> Self {
        Self {
            relay: Relay::new(model::relay_config()),
            base,
            now_ms: 0,
            events: Vec::new(),
            outputs: Vec::new(),
            ended: BTreeSet::new(),
        }
    }

    fn at(&self, ms: u64) -> Instant {
        self.base + Duration::from_millis(ms)
    }

    fn handle(&mut self, input: Input) {
        let offset = Duration::from_millis(self.now_ms);
        self.events.push(Event::Handle(offset, input.clone()));
        self.relay
            .handle(self.at(self.now_ms), input)
            .expect("the model never reuses a live id");
    }

    fn drain_outputs(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.relay.poll_output()).collect()
    }

    /// Runs deadlines up to `target_ms`; workers not in `silent` answer pings at once.
    fn advance_to(&mut self, target_ms: u64, silent: &BTreeSet<u64>) -> Vec<Output> {
        let mut outputs = Vec::new();
        while let Some(at) = self.relay.poll_timeout() {
            let at_ms = u64::try_from((at - self.base).as_millis()).expect("small");
            if at_ms > target_ms {
                break;
            }
            self.now_ms = at_ms;
            self.events
                .push(Event::Timeout(Duration::from_millis(at_ms)));
            self.relay.handle_timeout(at);
            let due = self.drain_outputs();
            for output in &due {
                if let Output::SendToWorker {
                    worker,
                    message: ServerMessage::Ping(_),
                } = output
                    && !silent.contains(&worker.get())
                {
                    let info = self
                        .relay
                        .workers()
                        .find(|w| w.id == *worker)
                        .expect("a pinged worker is connected");
                    let load = info.in_flight as u32 + info.external_load;
                    self.handle(Input::WorkerFrame {
                        worker: *worker,
                        message: WorkerMessage::Pong(Pong {
                            current_load: load,
                            timestamp_unix_ms: None,
                        }),
                    });
                }
            }
            outputs.extend(due);
            outputs.extend(self.drain_outputs());
        }
        self.now_ms = target_ms;
        outputs
    }

    /// Checks what no request may ever see: a second end, or anything after its end.
    fn record(&mut self, outputs: &[Output]) {
        for output in outputs {
            let about = match output {
                Output::StreamChunk { request, .. } => Some(*request),
                Output::SendToWorker {
                    message: ServerMessage::Request(frame),
                    ..
                } => Some(ours(&frame.request_id)),
                Output::SendToWorker {
                    message: ServerMessage::Cancel(cancel),
                    ..
                } => Some(ours(&cancel.request_id)),
                _ => None,
            };
            if let Some(request) = about {
                assert!(
                    !self.ended.contains(&request),
                    "output for request {request} after its end: {output:?}"
                );
            }
            if let Output::RequestEnded { request, .. } = output {
                assert!(self.ended.insert(*request), "request {request} ended twice");
            }
        }
        self.outputs.extend_from_slice(outputs);
    }
}

/// The relay only ever sends its own (numeric) ids.
fn ours(id: &WireRequestId) -> RequestId {
    id.as_request_id()
        .expect("the relay sends only its own ids")
}

fn sorted<T: Ord>(mut items: Vec<T>) -> Vec<T> {
    items.sort();
    items
}

struct RelayMatchesModel<const CHURN: bool>;

impl<const CHURN: bool> StateMachineTest for RelayMatchesModel<CHURN> {
    type SystemUnderTest = Driven;
    type Reference = Reference<CHURN>;

    fn init_test(_model: &RelayModel) -> Driven {
        Driven::new(Instant::now())
    }

    fn apply(mut sut: Driven, model: &RelayModel, _transition: Transition) -> Driven {
        let silent = &model.step.silent;
        let mut outputs = Vec::new();
        for stimulus in &model.step.stimuli {
            match stimulus {
                Stimulus::Input(input) => {
                    sut.handle(input.clone());
                    outputs.extend(sut.drain_outputs());
                }
                Stimulus::AdvanceTo(target) => outputs.extend(sut.advance_to(*target, silent)),
            }
        }
        sut.record(&outputs);
        compare_effects(&outputs, model);
        compare_state(&sut, model);
        check_queue_order(&sut, model, &outputs);
        sut
    }

    fn check_invariants(sut: &Driven, model: &RelayModel) {
        let relay = &sut.relay;
        for worker in relay.workers() {
            assert!(
                worker.in_flight as u32 <= worker.max_concurrent.max(1),
                "worker {} over capacity: {} > {}",
                worker.id,
                worker.in_flight,
                worker.max_concurrent
            );
        }
        assert!(
            relay.queue_len(&model::provider()) <= QUEUE_BOUND,
            "queue above its bound"
        );
        for (id, arrived) in &model.arrivals {
            let request = RequestId::new(*id);
            let Some(status) = relay.request_status(request) else {
                continue;
            };
            assert!(
                relay.requeue_count(request).unwrap_or(0) <= 3,
                "request {id} requeued more than 3 times"
            );
            assert!(
                sut.now_ms < arrived + REQUEST_TIMEOUT_MS,
                "request {id} alive past its request deadline"
            );
            if status == RequestStatus::Queued {
                assert!(
                    sut.now_ms < arrived + QUEUE_TIMEOUT_MS,
                    "request {id} queued past its queue deadline"
                );
            }
        }
    }

    fn teardown(mut sut: Driven, model: RelayModel) {
        // Time runs out for everything: no request may hang.
        let silent = BTreeSet::new();
        let target = sut.now_ms + REQUEST_TIMEOUT_MS + 1;
        let outputs = sut.advance_to(target, &silent);
        sut.record(&outputs);
        assert_eq!(sut.relay.open_requests(), 0, "requests left hanging");
        let arrived: BTreeSet<RequestId> = (0..model_request_count(&model))
            .map(RequestId::new)
            .collect();
        assert_eq!(sut.ended, arrived, "every request ends exactly once");

        // The same inputs give the same outputs.
        let mut replay = Driven::new(sut.base);
        let mut replayed = Vec::new();
        for event in &sut.events {
            match event {
                Event::Handle(offset, input) => replay
                    .relay
                    .handle(sut.base + *offset, input.clone())
                    .expect("valid"),
                Event::Timeout(offset) => replay.relay.handle_timeout(sut.base + *offset),
            }
            replayed.extend(replay.drain_outputs());
        }
        assert_eq!(replayed, sut.outputs, "same inputs, different outputs");
    }
}

fn model_request_count(model: &RelayModel) -> u64 {
    model
        .arrivals
        .keys()
        .chain(model.ended.keys())
        .chain(model.requests.keys())
        .max()
        .map_or(0, |max| max + 1)
}

/// The step's effects are exactly the model's.
fn compare_effects(outputs: &[Output], model: &RelayModel) {
    let expect = &model.step.expect;
    let mut dispatched = Vec::new();
    let mut cancels: Vec<(u64, u64, CancelReason)> = Vec::new();
    let mut closes = Vec::new();
    let mut ended = Vec::new();
    let mut chunks = Vec::new();
    for output in outputs {
        match output {
            Output::SendToWorker {
                worker,
                message: ServerMessage::Request(frame),
            } => dispatched.push((worker.get(), ours(&frame.request_id).get())),
            Output::SendToWorker {
                worker,
                message: ServerMessage::Cancel(cancel),
            } => cancels.push((
                worker.get(),
                ours(&cancel.request_id).get(),
                cancel.reason.clone(),
            )),
            Output::CloseWorker { worker, reason } => {
                closes.push((worker.get(), CloseKind::from(reason)));
            }
            Output::RequestEnded { request, outcome } => {
                ended.push((request.get(), outcome.clone()))
            }
            Output::StreamChunk { request, .. } => chunks.push(request.get()),
            Output::SendToWorker { .. } => {}
        }
    }
    let by_ids = |v: &Vec<(u64, u64, CancelReason)>| {
        let mut v = v.clone();
        v.sort_by_key(|(w, r, _)| (*w, *r));
        v
    };
    let step = &model.step.stimuli;
    assert_eq!(
        sorted(dispatched),
        sorted(expect.dispatched.clone()),
        "dispatches for {step:?}"
    );
    assert_eq!(
        by_ids(&cancels),
        by_ids(&expect.cancels),
        "cancels for {step:?}"
    );
    assert_eq!(
        sorted(closes),
        sorted(expect.closes.clone()),
        "closes for {step:?}"
    );
    let mut expected_ended = expect.ended.clone();
    expected_ended.sort_by_key(|(r, _)| *r);
    ended.sort_by_key(|(r, _)| *r);
    assert_eq!(ended, expected_ended, "ends for {step:?}");
    assert_eq!(chunks, expect.chunks, "chunks for {step:?}");
}

/// The relay's tables agree with the model's.
fn compare_state(sut: &Driven, model: &RelayModel) {
    let relay = &sut.relay;
    assert_eq!(relay.open_requests(), model.requests.len(), "live requests");
    assert_eq!(
        relay.queue_len(&model::provider()),
        model.queue.len(),
        "queue length"
    );
    for (id, request) in &model.requests {
        let expected = match request.status {
            ModelStatus::Queued => RequestStatus::Queued,
            ModelStatus::Assigned { worker, streamed } => RequestStatus::Assigned {
                worker: WorkerId::new(worker),
                streamed,
            },
            ModelStatus::Detached => panic!("model left request {id} detached"),
        };
        assert_eq!(
            relay.request_status(RequestId::new(*id)),
            Some(expected),
            "request {id}"
        );
        assert_eq!(
            relay.requeue_count(RequestId::new(*id)),
            Some(request.requeues)
        );
    }
    let workers: BTreeMap<u64, usize> =
        relay.workers().map(|w| (w.id.get(), w.in_flight)).collect();
    let expected: BTreeMap<u64, usize> = model
        .workers
        .iter()
        .map(|(id, w)| (*id, w.in_flight.len()))
        .collect();
    assert_eq!(workers, expected, "workers and their load");
    let stats = relay.stats();
    assert_eq!(stats.late_frames, model.late_frames, "late frames");
    assert_eq!(stats.protocol_violations, model.violations, "violations");
    assert_eq!(stats.requeues, model.requeues, "requeues");
}

/// Queue order: a request that was waiting is never served while an earlier
/// waiting request the same worker could serve stays in the queue. (An earlier
/// request that was itself dispatched during the step and then requeued, when its
/// worker was lost later in the same step, waited at no moment out of turn.)
fn check_queue_order(sut: &Driven, model: &RelayModel, outputs: &[Output]) {
    let before = &model.step.queue_before;
    let dispatched_in_step: BTreeSet<u64> = outputs
        .iter()
        .filter_map(|o| match o {
            Output::SendToWorker {
                message: ServerMessage::Request(frame),
                ..
            } => Some(ours(&frame.request_id).get()),
            _ => None,
        })
        .collect();
    for output in outputs {
        let Output::SendToWorker {
            worker,
            message: ServerMessage::Request(frame),
        } = output
        else {
            continue;
        };
        let id = ours(&frame.request_id).get();
        let Some(position) = before.iter().position(|r| *r == id) else {
            continue;
        };
        let Some(info) = sut.relay.workers().find(|w| w.id == *worker) else {
            continue;
        };
        for earlier in &before[..position] {
            if dispatched_in_step.contains(earlier) {
                continue;
            }
            let id = RequestId::new(*earlier);
            if sut.relay.request_status(id) != Some(RequestStatus::Queued) {
                continue;
            }
            let wanted = model::model_name(model.requests[earlier].model);
            let serves = info
                .models
                .iter()
                .any(|m| m.as_str() == wanted || m.as_str() == WILDCARD_MODEL);
            assert!(
                !serves,
                "request {} served before earlier waiting request {earlier}",
                frame.request_id
            );
        }
    }
}

fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(256);
    Config {
        cases,
        max_shrink_iters: 20_000,
        // A failing case is saved beside this file and replayed first next time.
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("regressions"),
        )),
        ..Config::default()
    }
}

prop_state_machine! {
    #![proptest_config(config())]

    #[test]
    fn relay_matches_the_reference_model(sequential 1..120 => RelayMatchesModel<false>);

    #[test]
    fn relay_matches_the_reference_model_under_worker_churn(sequential 1..120 => RelayMatchesModel<true>);
}

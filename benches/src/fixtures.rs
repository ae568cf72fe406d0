//! A relay loaded with many registered workers and requests in flight.

use std::time::Instant;

use bytes::Bytes;
use modelrelay_core::relay::{AuthOutcome, Input, NewRequest, Output, Relay, RelayConfig};
use modelrelay_core::wire::{
    Headers, LinkFlow, Register, ResponseChunk, ResponseComplete, ServerMessage, WireVersion,
    WorkerMessage,
};
use modelrelay_core::{DEFAULT_PROVIDER, ModelName, ProviderId, RequestId, WorkerId};

/// Models the loaded relay's workers serve, each worker a few of them.
pub const MODELS: [&str; 8] = ["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"];

/// A relay with registered workers and running requests, plus what it needs to go on.
pub struct LoadedRelay {
    /// The relay.
    pub relay: Relay,
    /// The instant every event is fed at (no deadline is ever due).
    pub now: Instant,
    /// Running requests and their workers.
    pub running: Vec<(RequestId, WorkerId)>,
    next_request: u64,
    provider: ProviderId,
}

impl LoadedRelay {
    /// `workers` workers of `slots` slots each, serving 2 of [`MODELS`] apiece, with `in_flight` requests running.
    pub fn new(workers: u64, slots: u32, in_flight: u64) -> Self {
        let mut loaded = Self {
            relay: Relay::new(RelayConfig {
                max_queue_len: 0,
                ..RelayConfig::default()
            }),
            now: Instant::now(),
            running: Vec::new(),
            next_request: 0,
            provider: ProviderId::new(DEFAULT_PROVIDER),
        };
        for id in 0..workers {
            let worker = WorkerId::new(id);
            loaded.feed(Input::WorkerConnected {
                worker,
                provider: loaded.provider.clone(),
                wire: WireVersion::V2,
                flow: LinkFlow::Unwindowed,
                auth: AuthOutcome::Accepted,
            });
            let first = (id as usize) % MODELS.len();
            let models = vec![
                MODELS[first].to_owned(),
                MODELS[(first + 1) % MODELS.len()].to_owned(),
            ];
            loaded.feed(Input::WorkerFrame {
                worker,
                message: WorkerMessage::Register(Register {
                    worker_name: format!("w{id}"),
                    models,
                    max_concurrent: slots,
                    protocol_version: None,
                    current_load: None,
                }),
            });
        }
        loaded.drain();
        for _ in 0..in_flight {
            let request = loaded.arrive();
            let worker = loaded.dispatched_to(request);
            loaded.running.push((request, worker));
        }
        loaded
    }

    /// Feeds one input.
    pub fn feed(&mut self, input: Input) {
        self.relay.handle(self.now, input).expect("valid input");
    }

    /// Polls every pending output away, returning how many there were.
    pub fn drain(&mut self) -> usize {
        std::iter::from_fn(|| self.relay.poll_output()).count()
    }

    /// A new request for the next model in turn; returns its id.
    pub fn arrive(&mut self) -> RequestId {
        let id = RequestId::new(self.next_request);
        let model = MODELS[(self.next_request as usize) % MODELS.len()];
        self.next_request += 1;
        self.feed(Input::RequestArrived(NewRequest {
            id,
            provider: self.provider.clone(),
            model: ModelName::new(model),
            endpoint_path: "/v1/chat/completions".into(),
            streaming: true,
            body: Bytes::from_static(br#"{"model":"m","stream":true}"#),
            headers: Headers::new(),
            pinned_to: None,
        }));
        id
    }

    /// The worker the last output dispatched `request` to.
    pub fn dispatched_to(&mut self, request: RequestId) -> WorkerId {
        let mut worker = None;
        while let Some(output) = self.relay.poll_output() {
            if let Output::SendToWorker {
                worker: w,
                message: ServerMessage::Request(frame),
            } = output
                && frame.request_id.as_request_id() == Some(request)
            {
                worker = Some(w);
            }
        }
        worker.expect("a free worker takes the request")
    }

    /// A chunk frame from `worker` for `request`.
    pub fn chunk(&mut self, request: RequestId, worker: WorkerId, chunk: Bytes) {
        self.feed(Input::WorkerFrame {
            worker,
            message: WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: request.into(),
                chunk,
            }),
        });
    }

    /// The completion of `request` by `worker`.
    pub fn complete(&mut self, request: RequestId, worker: WorkerId) {
        self.feed(Input::WorkerFrame {
            worker,
            message: WorkerMessage::ResponseComplete(ResponseComplete {
                request_id: request.into(),
                status_code: 200,
                headers: Headers::new(),
                body: Bytes::new(),
                token_counts: None,
            }),
        });
    }
}

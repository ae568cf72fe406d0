//! The hub's loop: each command fed to the core, each output carried out, in order.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use modelrelay_core::relay::{Input, NewRequest, Outcome, Output, Relay};
use modelrelay_core::wire::{WorkerError, WorkerMessage};
use modelrelay_core::{ProviderId, RequestId, WireRequestId, WorkerId};
use tokio::sync::mpsc;
use tracing::{error, info};

use super::Undeliverable;
use super::client_board::ClientBoard;
use super::response_queue::Left;

use crate::clients::InferenceRoute;
use crate::codes;
use crate::keys::ApiKeyId;
use crate::operator::Metrics;
use crate::request_id::RequestIds;

use super::Command;
use super::links::LinkHandle;
use super::request::OpenRequest;
use super::response_queue::ResponseSender;

/// The hub's state: the core, the links it writes to, the requests it answers.
pub(super) struct HubTask {
    /// The core, which makes every decision.
    pub(super) relay: Relay,
    /// The one provider this relay serves.
    pub(super) provider: ProviderId,
    /// The open worker links.
    pub(super) links: HashMap<WorkerId, LinkHandle>,
    requests: HashMap<RequestId, OpenRequest>,
    /// Where requests and links are counted.
    pub(super) metrics: Arc<Metrics>,
}

/// The hub's clock (tokio's, so paused and simulated time apply).
pub(super) fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Commands handled per wake-up before outputs are flushed.
const BATCH: usize = 64;

/// The hub's ways in (see the module's notes for their bounds).
pub(super) struct Inlets {
    /// Commands from handlers and links.
    pub(super) inbox: mpsc::Receiver<Command>,
    /// Request frames link writers could not send.
    pub(super) undelivered: mpsc::UnboundedReceiver<Undeliverable>,
    /// Requests whose clients took bytes or left.
    pub(super) board: Arc<ClientBoard>,
}

impl HubTask {
    /// A hub over `relay`, serving `provider`.
    pub(super) fn new(relay: Relay, provider: ProviderId, metrics: Arc<Metrics>) -> Self {
        Self {
            relay,
            provider,
            links: HashMap::new(),
            requests: HashMap::new(),
            metrics,
        }
    }

    /// Runs until the inbox closes or the relay has drained after a shutdown.
    pub(super) async fn run(mut self, inlets: Inlets) {
        let Inlets {
            mut inbox,
            mut undelivered,
            board,
        } = inlets;
        loop {
            let deadline = self
                .relay
                .poll_timeout()
                .map(tokio::time::Instant::from_std);
            tokio::select! {
                command = inbox.recv() => {
                    let Some(command) = command else { break };
                    self.apply(command);
                    // Outputs go out after each command: a later command in the same
                    // batch (a link closing) must not overtake them.
                    self.flush();
                    for _ in 1..BATCH {
                        match inbox.try_recv() {
                            Ok(command) => {
                                self.apply(command);
                                self.flush();
                            }
                            Err(_) => break,
                        }
                    }
                }
                () = board.changed() => {
                    for request in board.drain() {
                        self.client_news(request);
                        self.flush();
                    }
                }
                Some(frame) = undelivered.recv() => {
                    self.undeliverable(frame.worker, frame.request, frame.detail);
                    self.flush();
                }
                () = sleep_until(deadline) => {
                    self.relay.handle_timeout(now());
                    self.flush();
                }
            }
            if self.relay.is_shutting_down() && self.relay.is_idle() {
                info!("relay drained");
                break;
            }
        }
    }

    /// Feeds one input to the core.
    pub(super) fn feed(&mut self, input: Input) {
        if let Err(error) = self.relay.handle(now(), input) {
            // Ids come from counters in this process; a clash is a bug worth a loud line.
            error!(%error, "relay refused an input");
        }
    }

    fn apply(&mut self, command: Command) {
        match command {
            Command::WorkerConnected {
                worker,
                wire,
                flow,
                auth,
                name_hint,
                transport,
                outbound,
                closing,
                reads,
            } => {
                let link = LinkHandle::new(outbound, closing, transport, reads);
                self.link_opened(worker, (wire, flow), auth, &name_hint, link);
            }
            Command::WorkerFrame { worker, message } => {
                self.feed(Input::WorkerFrame { worker, message })
            }
            Command::WorkerInvalid { worker, detail } => self.link_invalid(worker, detail),
            Command::WorkerGone { worker } => self.link_gone(worker),
            Command::Request {
                request,
                route,
                ids,
                key,
                responder,
            } => self.request_arrived(request, route, ids, key, responder),
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::Counts(reply) => {
                let _ = reply.send(self.counts());
            }
            Command::Models(reply) => {
                let _ = reply.send(self.relay.models(&self.provider));
            }
            Command::Workers(reply) => {
                let _ = reply.send(self.worker_views());
            }
            Command::DrainWorker {
                worker,
                timeout,
                reply,
            } => {
                let _ = reply.send(self.drain_worker(worker, timeout));
            }
            Command::Shutdown { drain } => self.shutdown(drain),
        }
    }

    fn flush(&mut self) {
        while let Some(output) = self.relay.poll_output() {
            match output {
                Output::SendToWorker { worker, message } => self.send_to_worker(worker, message),
                Output::CloseWorker { worker, reason } => self.close_worker(worker, &reason),
                Output::StreamChunk { request, chunk } => self.stream_chunk(request, chunk),
                Output::RequestEnded { request, outcome } => self.request_ended(request, outcome),
            }
        }
        self.metrics.sync_relay_stats(self.relay.stats());
        self.metrics.sync_flow(self.relay.flow_view());
    }

    fn request_arrived(
        &mut self,
        request: NewRequest,
        route: InferenceRoute,
        ids: RequestIds,
        key: Option<ApiKeyId>,
        responder: ResponseSender,
    ) {
        let id = request.id;
        let open = OpenRequest::new(&request, route, ids, key, responder);
        self.requests.insert(id, open);
        self.feed(Input::RequestArrived(request));
        // Its client may have left before the hub saw the request: its board
        // post found nothing then, so its queue is read now.
        self.client_news(id);
    }

    /// Feeds the core what `request`'s client did since the hub last looked:
    /// the bytes it took, and (once) that it left.
    fn client_news(&mut self, request: RequestId) {
        let Some(open) = self.requests.get_mut(&request) else {
            return; // ended already: nothing more to tell
        };
        let (took, left) = open.client_news();
        if let Some(total) = took {
            self.feed(Input::ClientTook { request, total });
        }
        match left {
            Some(Left::Done) => self.feed(Input::ClientDone { request }),
            Some(Left::Gone) => self.feed(Input::ClientGone { request }),
            None => {}
        }
    }

    /// A request's frame went to `worker`.
    pub(super) fn request_sent(&mut self, request: RequestId, worker: WorkerId) {
        if let Some(open) = self.requests.get_mut(&request) {
            let named = self
                .relay
                .knows_model(&self.provider, open.model().as_str());
            open.sent_to(worker, named, &self.metrics);
        }
    }

    fn stream_chunk(&mut self, request: RequestId, chunk: Bytes) {
        if let Some(open) = self.requests.get_mut(&request) {
            open.deliver(chunk, &self.metrics);
        }
    }

    fn request_ended(&mut self, request: RequestId, outcome: Outcome) {
        if let Some(open) = self.requests.remove(&request) {
            let known = self
                .relay
                .knows_model(&self.provider, open.model().as_str());
            open.end(outcome, known, &self.metrics);
        }
    }

    /// A request frame its worker's link could not carry.
    fn undeliverable(&mut self, worker: WorkerId, request: WireRequestId, detail: String) {
        // To the relay this is the worker failing the request: it ends with a 502.
        self.feed(Input::WorkerFrame {
            worker,
            message: WorkerMessage::Error(WorkerError {
                request_id: Some(request),
                code: codes::REQUEST_UNDELIVERABLE.into(),
                message: detail,
            }),
        });
    }

    /// Stops taking work and drains every worker.
    fn shutdown(&mut self, drain: Duration) {
        info!(
            drain_secs = drain.as_secs(),
            "draining workers for shutdown"
        );
        self.feed(Input::Shutdown {
            drain_timeout: drain,
        });
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use modelrelay_core::ModelName;
    use modelrelay_core::relay::RelayConfig;

    use super::*;
    use crate::clients::INFERENCE_ROUTES;
    use crate::hub::response_queue::response_queue;
    use crate::operator::WorkerStates;

    fn request(id: u64, model: &str) -> NewRequest {
        NewRequest {
            id: RequestId::new(id),
            provider: ProviderId::new("local"),
            model: ModelName::new(model),
            endpoint_path: INFERENCE_ROUTES[0].path.to_owned(),
            streaming: false,
            body: Bytes::from_static(b"{}"),
            headers: Default::default(),
            pinned_to: None,
        }
    }

    fn ids() -> RequestIds {
        RequestIds {
            relay: crate::request_id::PublicRequestId::generate(),
            client: None,
        }
    }

    /// Connects worker 1 over a windowed v2 link and registers it with one
    /// slot for `model`; the receiving end of its link, to keep while it is used.
    fn register_worker(hub: &mut HubTask, model: &str) -> mpsc::Receiver<crate::hub::LinkCommand> {
        use modelrelay_core::WorkerId;
        use modelrelay_core::relay::AuthOutcome;
        use modelrelay_core::wire::{FrameLimits, LinkFlow, Register, WireVersion};
        use modelrelay_transports::ReadLimit;
        use tokio_util::sync::CancellationToken;

        use crate::hub::Transport;

        let (outbound, to_worker) = mpsc::channel(8);
        hub.apply(Command::WorkerConnected {
            worker: WorkerId::new(1),
            wire: WireVersion::V2,
            flow: LinkFlow::Windowed,
            auth: AuthOutcome::Accepted,
            name_hint: "test".into(),
            transport: Transport::WebSocket,
            outbound,
            closing: CancellationToken::new(),
            reads: ReadLimit::fixed(FrameLimits::default()),
        });
        hub.apply(Command::WorkerFrame {
            worker: WorkerId::new(1),
            message: WorkerMessage::Register(Register {
                worker_name: "w".into(),
                models: vec![model.into()],
                max_concurrent: 1,
                protocol_version: None,
                current_load: None,
            }),
        });
        hub.flush();
        to_worker
    }

    #[tokio::test]
    async fn a_client_that_left_before_the_hub_saw_its_request_is_still_seen() {
        use modelrelay_core::RequestId;

        use crate::hub::response_queue::{Left, ResponseEvent};

        let metrics = Arc::new(Metrics::new());
        let relay = Relay::new(RelayConfig::default());
        let mut hub = HubTask::new(relay, ProviderId::new("local"), metrics);
        let _to_worker = register_worker(&mut hub, "m");
        let board = Arc::new(ClientBoard::default());
        let (responder, mut events) = response_queue(RequestId::new(1), Arc::clone(&board));
        // The client leaves while its request still waits in the inbox: the
        // board's post names a request the hub does not know yet.
        events.exit().leave(Left::Gone);
        for request in board.drain() {
            hub.client_news(request);
        }
        hub.apply(Command::Request {
            request: request(1, "m"),
            route: INFERENCE_ROUTES[0],
            ids: ids(),
            key: None,
            responder,
        });
        hub.flush();
        let heard = tokio::time::timeout(Duration::from_secs(5), events.recv()).await;
        assert!(
            matches!(heard, Ok(Some(ResponseEvent::Ended(Outcome::Cancelled)))),
            "the request was not cancelled: {heard:?}"
        );
        assert_eq!(hub.relay.open_requests(), 0);
    }

    #[tokio::test]
    async fn a_model_only_a_wildcard_worker_serves_never_becomes_a_metric_label() {
        use modelrelay_core::wire::{Headers, ResponseChunk, ResponseComplete};
        use modelrelay_core::{RequestId, WorkerId};

        let metrics = Arc::new(Metrics::new());
        let relay = Relay::new(RelayConfig::default());
        let mut hub = HubTask::new(relay, ProviderId::new("local"), metrics.clone());
        let _to_worker = register_worker(&mut hub, "*");
        let worker = WorkerId::new(1);
        let board = Arc::new(ClientBoard::default());
        let (responder, _events) = response_queue(RequestId::new(1), Arc::clone(&board));
        hub.apply(Command::Request {
            request: request(1, "made-up-for-the-wildcard"),
            route: INFERENCE_ROUTES[0],
            ids: ids(),
            key: None,
            responder,
        });
        hub.flush();
        let id = RequestId::new(1).into();
        for message in [
            WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: Clone::clone(&id),
                chunk: Bytes::from_static(b"data: {}\n\n"),
            }),
            WorkerMessage::ResponseComplete(ResponseComplete {
                request_id: id,
                status_code: 200,
                headers: Headers::new(),
                body: Bytes::new(),
                token_counts: None,
            }),
        ] {
            hub.apply(Command::WorkerFrame { worker, message });
            hub.flush();
        }
        let text = metrics.render("local", 0, 0, WorkerStates::default());
        assert!(!text.contains("made-up"), "{text}");
        assert!(
            text.contains(r#"model="unknown",outcome="ok"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"modelrelay_streamed_bytes_total{model="unknown"}"#),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_model_name_no_worker_advertised_never_becomes_a_metric_label_even_during_shutdown() {
        let metrics = Arc::new(Metrics::new());
        let relay = Relay::new(RelayConfig::default());
        let mut hub = HubTask::new(relay, ProviderId::new("local"), metrics.clone());
        let board = Arc::new(ClientBoard::default());
        let arrive = |hub: &mut HubTask, id, model| {
            let (responder, _events) = response_queue(RequestId::new(id), Arc::clone(&board));
            hub.apply(Command::Request {
                request: request(id, model),
                route: INFERENCE_ROUTES[0],
                ids: ids(),
                key: None,
                responder,
            });
            hub.flush();
        };
        arrive(&mut hub, 1, "made-up-before-shutdown");
        // Once shutdown began, requests fail before any model check.
        hub.apply(Command::Shutdown {
            drain: Duration::from_secs(1),
        });
        hub.flush();
        arrive(&mut hub, 2, "made-up-during-shutdown");
        let text = metrics.render("local", 0, 0, WorkerStates::default());
        assert!(!text.contains("made-up"), "{text}");
        assert!(
            text.contains(r#"model="unknown",outcome="shutting_down"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"model="unknown",outcome="model_not_found"} 1"#),
            "{text}"
        );
    }
}

//! One client request while the hub has it open: where its answer goes, and what is measured of it.

use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use modelrelay_core::relay::{NewRequest, Outcome};
use modelrelay_core::wire::TokenCounts;
use modelrelay_core::{ModelName, RequestId, WorkerId};
use prometheus_client::metrics::counter::Counter;
use tracing::info;

use crate::clients::{InferenceRoute, stream_usage};
use crate::error::ApiError;
use crate::keys::{ApiKeyId, UsageDay};
use crate::operator::{Metrics, outcome_label};
use crate::request_id::RequestIds;

use super::response_queue::{ClientState, Left, ResponseEvent, ResponseSender};
use super::task::now;

/// A request waiting for its answer: its queue to the client, its timings, usage and byte counts.
pub(super) struct OpenRequest {
    /// Its key in the core, and its id on its worker link.
    id: RequestId,
    /// What it is called outside the relay.
    ids: RequestIds,
    responder: ResponseSender,
    model: ModelName,
    route: InferenceRoute,
    streaming: bool,
    arrived: Instant,
    worker: Option<WorkerId>,
    chunks: u64,
    /// What the core has been told of its client.
    told: ClientState,
    /// Time spent queued before the first worker took it.
    queue_wait: Option<Duration>,
    /// Time to the first chunk.
    first_chunk: Option<Duration>,
    /// Stream bytes of its model, counted for `/metrics`.
    bytes: Option<Counter>,
    /// A worker advertised its model by name (so the name may be a metric label).
    named: bool,
    /// Token usage seen in the stream, if the backend reported any there.
    stream_usage: Option<TokenCounts>,
    /// The API key it came with, whose usage it counts.
    key: Option<ApiKeyId>,
}

impl OpenRequest {
    /// `request`, arrived now on `route`, answered through `responder`.
    pub(super) fn new(
        request: &NewRequest,
        route: InferenceRoute,
        ids: RequestIds,
        key: Option<ApiKeyId>,
        responder: ResponseSender,
    ) -> Self {
        Self {
            id: request.id,
            ids,
            responder,
            model: request.model.clone(),
            route,
            streaming: request.streaming,
            arrived: now(),
            worker: None,
            chunks: 0,
            told: ClientState::default(),
            queue_wait: None,
            first_chunk: None,
            bytes: None,
            named: false,
            stream_usage: None,
            key,
        }
    }

    /// The model it asks for.
    pub(super) fn model(&self) -> &ModelName {
        &self.model
    }

    /// Its frame went to `worker`; the first time, its wait in the queue is
    /// over. `named` says whether a worker advertised its model by name.
    pub(super) fn sent_to(&mut self, worker: WorkerId, named: bool, metrics: &Metrics) {
        self.worker = Some(worker);
        self.named = named;
        if self.queue_wait.is_none() {
            let waited = now().saturating_duration_since(self.arrived);
            self.queue_wait = Some(waited);
            metrics.dispatched(waited);
        }
    }

    /// Hands a stream chunk to the client, counting it. How much it may hold
    /// for a client that lags is the core's flow control's to decide.
    pub(super) fn deliver(&mut self, chunk: Bytes, metrics: &Metrics) {
        if self.chunks == 0 {
            let after = now().saturating_duration_since(self.arrived);
            self.first_chunk = Some(after);
            if self.streaming {
                metrics.first_chunk(self.route.path, after);
            }
        }
        self.chunks += 1;
        self.bytes
            .get_or_insert_with(|| metrics.streamed_bytes(self.model.as_str(), self.named))
            .inc_by(chunk.len() as u64);
        if let Some(usage) = stream_usage(&chunk) {
            self.stream_usage.get_or_insert_default().merge_max(usage);
        }
        self.responder.send(ResponseEvent::Chunk(chunk));
    }

    /// What its client did since the last look: a new total of bytes taken,
    /// and how it left, each only when the core has not heard it yet.
    pub(super) fn client_news(&mut self) -> (Option<u64>, Option<Left>) {
        let client = self.responder.client();
        let took = (client.taken > self.told.taken).then_some(client.taken);
        let left = if self.told.left.is_none() {
            client.left
        } else {
            None
        };
        self.told = client;
        (took, left)
    }

    /// Ends it: usage seen in the stream fills a completion without counts, then
    /// the metrics, its key's usage, the log line, and the end for the client. `known` says
    /// whether a worker has advertised its model by name (reaching a worker is
    /// not enough: a wildcard worker serves names clients make up).
    pub(super) fn end(mut self, mut outcome: Outcome, known: bool, metrics: &Metrics) {
        if let Outcome::Completed(completion) = &mut outcome
            && completion.token_counts.is_none()
        {
            completion.token_counts = self.stream_usage.take();
        }
        let took = now().saturating_duration_since(self.arrived);
        metrics.ended(self.route.path, self.model.as_str(), known, &outcome, took);
        if let Some(key) = self.key {
            let tokens = match &outcome {
                Outcome::Completed(completion) => completion.token_counts.as_ref(),
                _ => None,
            };
            let day = UsageDay::of(SystemTime::now());
            metrics.usage.record(key, day, tokens);
        }
        self.log_end(&outcome, took);
        let _ = self.responder.send(ResponseEvent::Ended(outcome));
    }

    /// One line per request end: ids, route, model, worker, status, outcome, timings.
    /// `request` is the id its answer carried; `link_request` names it in the
    /// worker's log; `client_request_id` is the client's own, if it sent one.
    fn log_end(&self, outcome: &Outcome, took: Duration) {
        let request = self.ids.relay;
        let link_request = self.id.get();
        let client_request_id = self.ids.client.as_deref();
        let elapsed_ms = took.as_secs_f64() * 1000.0;
        let queue_ms = millis(self.queue_wait);
        let first_chunk_ms = millis(self.first_chunk);
        let worker = self.worker.map(|w| w.get());
        let route = self.route.path;
        let result = outcome_label(outcome);
        match outcome {
            Outcome::Completed(completion) => info!(
                %request, link_request, client_request_id, route, model = %self.model, worker, status = completion.status_code,
                outcome = result, chunks = self.chunks, queue_ms, first_chunk_ms, elapsed_ms,
                "request completed"
            ),
            Outcome::Failed { failure, streamed } => info!(
                %request, link_request, client_request_id, route, model = %self.model, worker,
                status = ApiError::from_failure(failure, "").status.as_u16(),
                outcome = result, %failure, streamed, chunks = self.chunks, queue_ms,
                first_chunk_ms, elapsed_ms, "request failed"
            ),
            Outcome::Cancelled => info!(
                %request, link_request, client_request_id, route, model = %self.model, worker, outcome = result,
                chunks = self.chunks, queue_ms, first_chunk_ms, elapsed_ms,
                "request cancelled by the client"
            ),
        }
    }
}

fn millis(duration: Option<Duration>) -> Option<f64> {
    duration.map(|d| d.as_secs_f64() * 1000.0)
}

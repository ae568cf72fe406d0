//! Prometheus metrics and their `/metrics` export.
//!
//! Counted where things happen (mostly in the hub, which sees every request end
//! exactly once), gauges filled from a hub snapshot at scrape.
//!
//! Label values are bounded: routes are the paths of the inference route table
//! ([`INFERENCE_ROUTES`](crate::clients::INFERENCE_ROUTES)), models are
//! ones some worker advertised by name (any other name a client sends, whatever the
//! outcome, even during shutdown or served by a wildcard worker, is counted as `unknown`, and past [`MAX_MODEL_LABELS`] distinct models the rest count as `other`),
//! outcomes and reasons are fixed words.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use modelrelay_core::relay::{Failure, FlowView, Outcome, RelayStats};
use modelrelay_core::wire::TokenCounts;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

use super::history::{Ended, History};
use crate::app::AppState;
use crate::codes;
use crate::error::{ApiError, ApiFlavor};
use crate::usage::UsageLedger;

use super::exposition::{Format, OPENMETRICS_TEXT, PROMETHEUS_TEXT, prometheus_text};

/// The model label of a request for a model no worker serves.
const UNKNOWN_MODEL: &str = "unknown";

/// Distinct model labels kept; models seen after that many count as [`OTHER_MODELS`].
pub(crate) const MAX_MODEL_LABELS: usize = 1024;

/// The model label once [`MAX_MODEL_LABELS`] distinct ones are in use.
const OTHER_MODELS: &str = "other";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    model: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteOutcomeLabels {
    route: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelLabels {
    model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    model: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProviderLabels {
    provider: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: &'static str,
}

/// `GET /metrics`: Prometheus text format 0.0.4, or OpenMetrics for a
/// scraper that asks for it ([`exposition`](super::exposition)).
pub(super) async fn scrape(State(app): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    let Some(snapshot) = app.hub.counts().await else {
        return ApiError::shutting_down().into_response(ApiFlavor::OpenAi);
    };
    let openmetrics = app.metrics.render(
        app.config.provider.as_str(),
        snapshot.queue_depth,
        snapshot.open_requests,
        snapshot.worker_states,
    );
    let (content_type, text) = match Format::negotiate(&headers) {
        Format::OpenMetrics => (OPENMETRICS_TEXT, openmetrics),
        Format::Prometheus => (PROMETHEUS_TEXT, prometheus_text(&openmetrics)),
    };
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::VARY, "accept"),
        ],
        text,
    )
        .into_response()
}

/// Histogram of seconds, 0.5 ms to about 4.6 min.
fn seconds_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.5, 15))
}

/// Every metric the server exports.
pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteOutcomeLabels, Histogram>,
    first_chunk: Family<RouteLabels, Histogram>,
    queue_wait: Histogram,
    queue_depth: Family<ProviderLabels, Gauge>,
    in_flight: Gauge,
    workers: Family<StateLabels, Gauge>,
    requeues: Counter,
    late_frames: Counter,
    protocol_violations: Counter,
    cancellations: Family<ReasonLabels, Counter>,
    streamed_bytes: Family<ModelLabels, Counter>,
    tokens: Family<TokenLabels, Counter>,
    /// Connections cut by `--client-idle-timeout`.
    pub(crate) idle_client_cuts: Counter,
    buffered_answer_bytes: Gauge,
    reserved_answer_bytes: Gauge,
    waiting_for_budget: Gauge,
    window_updates: Counter,
    /// Model label values in use (workers may keep renaming their models).
    model_labels: Mutex<HashSet<String>>,
    /// The last hour in 10-second buckets, for the dashboard's charts.
    pub(crate) history: History,
    /// Requests and tokens per API key not yet written to the key database.
    pub(crate) usage: Arc<UsageLedger>,
}

/// Workers by state, for the `workers` gauge.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct WorkerStates {
    /// Connected, not yet registered.
    pub(crate) registering: usize,
    /// Registered and taking work.
    pub(crate) active: usize,
    /// Finishing their work before they leave.
    pub(crate) draining: usize,
}

impl Metrics {
    /// Every metric registered, at zero.
    // One flat registration per metric, in export order: long, but nothing to untangle.
    pub(crate) fn new() -> Self {
        let mut registry = Registry::default();
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "modelrelay_requests",
            "Client requests that ended, by route, model and outcome (ok, backend_4xx, backend_5xx, cancelled, or the relay's error code)",
            requests.clone(),
        );
        let duration =
            Family::<RouteOutcomeLabels, Histogram>::new_with_constructor(seconds_histogram as _);
        registry.register(
            "modelrelay_request_duration_seconds",
            "Time from a request's arrival to its end",
            duration.clone(),
        );
        let first_chunk =
            Family::<RouteLabels, Histogram>::new_with_constructor(seconds_histogram as _);
        registry.register(
            "modelrelay_time_to_first_chunk_seconds",
            "Time from a streaming request's arrival to its first chunk",
            first_chunk.clone(),
        );
        let queue_wait = seconds_histogram();
        registry.register(
            "modelrelay_queue_wait_seconds",
            "Time a request waited for its first worker",
            queue_wait.clone(),
        );
        let queue_depth = Family::<ProviderLabels, Gauge>::default();
        registry.register(
            "modelrelay_queue_depth",
            "Requests waiting for a worker",
            queue_depth.clone(),
        );
        let in_flight = Gauge::default();
        registry.register(
            "modelrelay_requests_in_flight",
            "Requests that have not ended (queued or running)",
            in_flight.clone(),
        );
        let workers = Family::<StateLabels, Gauge>::default();
        registry.register(
            "modelrelay_workers",
            "Connected workers by state (registering, active, draining)",
            workers.clone(),
        );
        let requeues = Counter::default();
        registry.register(
            "modelrelay_requeues",
            "Requests put back in the queue after their worker was lost",
            requeues.clone(),
        );
        let late_frames = Counter::default();
        registry.register(
            "modelrelay_late_frames",
            "Chunks or completions that arrived after their request ended, dropped",
            late_frames.clone(),
        );
        let protocol_violations = Counter::default();
        registry.register(
            "modelrelay_worker_protocol_violations",
            "Frames from workers about requests they were never given",
            protocol_violations.clone(),
        );
        let cancellations = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "modelrelay_cancellations",
            "Requests stopped before an answer, by reason (client_disconnected, request_timeout, queue_timeout, client_too_slow)",
            cancellations.clone(),
        );
        let streamed_bytes = Family::<ModelLabels, Counter>::default();
        registry.register(
            "modelrelay_streamed_bytes",
            "Stream bytes passed to clients",
            streamed_bytes.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "modelrelay_tokens",
            "Tokens the backends reported, by model and kind (prompt, completion)",
            tokens.clone(),
        );
        let idle_client_cuts = Counter::default();
        registry.register(
            "modelrelay_idle_client_connections_cut",
            "Client connections cut because the client took no bytes of its answer for --client-idle-timeout",
            idle_client_cuts.clone(),
        );
        let buffered_answer_bytes = Gauge::default();
        registry.register(
            "modelrelay_buffered_answer_bytes",
            "Streamed answer bytes passed on for clients that have not taken them yet",
            buffered_answer_bytes.clone(),
        );
        let reserved_answer_bytes = Gauge::default();
        registry.register(
            "modelrelay_reserved_answer_bytes",
            "Answer bytes held for clients plus those granted to workers and not yet sent (at most --max-buffered-bytes)",
            reserved_answer_bytes.clone(),
        );
        let waiting_for_budget = Gauge::default();
        registry.register(
            "modelrelay_answers_waiting_for_budget",
            "Streams whose window top-up waits for room in --max-buffered-bytes",
            waiting_for_budget.clone(),
        );
        let window_updates = Counter::default();
        registry.register(
            "modelrelay_window_updates",
            "Window updates sent to workers as their clients took bytes",
            window_updates.clone(),
        );
        Self {
            registry,
            idle_client_cuts,
            buffered_answer_bytes,
            reserved_answer_bytes,
            waiting_for_budget,
            window_updates,
            requests,
            duration,
            first_chunk,
            queue_wait,
            queue_depth,
            in_flight,
            workers,
            requeues,
            late_frames,
            protocol_violations,
            cancellations,
            streamed_bytes,
            tokens,
            model_labels: Mutex::new(HashSet::new()),
            history: History::default(),
            usage: Arc::default(),
        }
    }

    /// The label for `model`: itself while fewer than [`MAX_MODEL_LABELS`] are in use.
    fn model_label<'a>(&self, model: &'a str) -> &'a str {
        let Ok(mut labels) = self.model_labels.lock() else {
            return OTHER_MODELS;
        };
        if labels.contains(model) {
            return model;
        }
        if labels.len() < MAX_MODEL_LABELS {
            labels.insert(model.to_owned());
            return model;
        }
        OTHER_MODELS
    }

    /// A request got its first worker after waiting `waited`.
    pub(crate) fn dispatched(&self, waited: Duration) {
        self.queue_wait.observe(waited.as_secs_f64());
    }

    /// A streaming request's first chunk went out `after` its arrival.
    pub(crate) fn first_chunk(&self, route: &'static str, after: Duration) {
        self.history.first_chunk(SystemTime::now(), after);
        self.first_chunk
            .get_or_create(&RouteLabels { route })
            .observe(after.as_secs_f64());
    }

    /// The byte counter of one model's streams, to keep for the life of a
    /// request; `advertised` as for [`Metrics::ended`].
    pub(crate) fn streamed_bytes(&self, model: &str, advertised: bool) -> Counter {
        let model = if advertised {
            self.model_label(model)
        } else {
            UNKNOWN_MODEL
        };
        self.streamed_bytes.get_or_create_owned(&ModelLabels {
            model: model.to_owned(),
        })
    }

    /// A request for `model` ended; `advertised` says whether some worker
    /// advertised that exact name (else the client made it up, and it is
    /// counted as `unknown`: clients never choose label values).
    pub(crate) fn ended(
        &self,
        route: &'static str,
        model: &str,
        advertised: bool,
        outcome: &Outcome,
        took: Duration,
    ) {
        let label = outcome_label(outcome);
        let model = match outcome {
            _ if !advertised => UNKNOWN_MODEL,
            Outcome::Failed {
                failure: Failure::UnknownModel,
                ..
            } => UNKNOWN_MODEL,
            _ => self.model_label(model),
        };
        self.requests
            .get_or_create(&RequestLabels {
                route,
                model: model.to_owned(),
                outcome: label,
            })
            .inc();
        self.duration
            .get_or_create(&RouteOutcomeLabels {
                route,
                outcome: label,
            })
            .observe(took.as_secs_f64());
        if let Some(reason) = cancellation_reason(outcome) {
            self.cancellations
                .get_or_create(&ReasonLabels { reason })
                .inc();
        }
        if let Outcome::Completed(completion) = outcome
            && let Some(counts) = &completion.token_counts
        {
            self.count_tokens(model, counts);
        }
        self.history.ended(
            SystemTime::now(),
            ended_as(outcome),
            completion_tokens(outcome),
        );
    }

    fn count_tokens(&self, model: &str, counts: &TokenCounts) {
        for (kind, count) in [
            ("prompt", counts.prompt_tokens),
            ("completion", counts.completion_tokens),
        ] {
            if let Some(count) = count {
                self.tokens
                    .get_or_create(&TokenLabels {
                        model: model.to_owned(),
                        kind,
                    })
                    .inc_by(count);
            }
        }
    }

    /// Brings the counters the relay core keeps up to date (called after every hub step).
    pub(crate) fn sync_relay_stats(&self, stats: &RelayStats) {
        advance(&self.requeues, stats.requeues);
        advance(&self.late_frames, stats.late_frames);
        advance(&self.protocol_violations, stats.protocol_violations);
        advance(&self.window_updates, stats.window_updates);
    }

    /// Sets the answer-budget gauges from the core's flow control (called after every hub step).
    pub(crate) fn sync_flow(&self, flow: Option<FlowView>) {
        let flow = flow.unwrap_or_default();
        self.buffered_answer_bytes
            .set(i64::try_from(flow.held_bytes).unwrap_or(i64::MAX));
        self.reserved_answer_bytes
            .set(i64::try_from(flow.reserved_bytes).unwrap_or(i64::MAX));
        self.waiting_for_budget
            .set(gauge_value(flow.waiting_for_budget));
    }

    /// Sets the gauges from a hub snapshot and renders everything as OpenMetrics text.
    pub(crate) fn render(
        &self,
        provider: &str,
        queue_depth: usize,
        in_flight: usize,
        workers: WorkerStates,
    ) -> String {
        self.queue_depth
            .get_or_create(&ProviderLabels {
                provider: provider.to_owned(),
            })
            .set(gauge_value(queue_depth));
        self.in_flight.set(gauge_value(in_flight));
        for (state, count) in [
            ("registering", workers.registering),
            ("active", workers.active),
            ("draining", workers.draining),
        ] {
            self.workers
                .get_or_create(&StateLabels { state })
                .set(gauge_value(count));
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

fn gauge_value(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

/// Moves a counter up to `total` (counters only go up; the core's do too).
fn advance(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

/// The `outcome` label of a request end.
/// How the charts group an outcome: a backend's 5xx counts as failed.
fn ended_as(outcome: &Outcome) -> Ended {
    match outcome {
        Outcome::Completed(completion) if completion.status_code < 500 => Ended::Completed,
        Outcome::Completed(_) | Outcome::Failed { .. } => Ended::Failed,
        Outcome::Cancelled => Ended::Cancelled,
    }
}

/// The completion tokens a backend reported for a request, if it did.
fn completion_tokens(outcome: &Outcome) -> u64 {
    match outcome {
        Outcome::Completed(completion) => completion
            .token_counts
            .as_ref()
            .and_then(|counts| counts.completion_tokens)
            .unwrap_or(0),
        _ => 0,
    }
}

pub(crate) fn outcome_label(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Completed(completion) => match completion.status_code {
            400..=499 => "backend_4xx",
            500..=599 => "backend_5xx",
            _ => "ok",
        },
        Outcome::Cancelled => "cancelled",
        Outcome::Failed { failure, .. } => ApiError::from_failure(failure, "").code,
    }
}

/// Why a request was stopped before its answer, if it was.
fn cancellation_reason(outcome: &Outcome) -> Option<&'static str> {
    match outcome {
        Outcome::Cancelled => Some("client_disconnected"),
        Outcome::Failed { failure, .. } => match failure {
            Failure::RequestTimeout => Some(codes::REQUEST_TIMEOUT),
            Failure::QueueTimeout => Some(codes::QUEUE_TIMEOUT),
            Failure::ClientTooSlow => Some(codes::CLIENT_TOO_SLOW),
            _ => None,
        },
        Outcome::Completed(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use modelrelay_core::relay::Completion;

    fn completed(status_code: u16, tokens: Option<(u64, u64)>) -> Outcome {
        Outcome::Completed(Completion {
            status_code,
            headers: Default::default(),
            body: Bytes::new(),
            token_counts: tokens.map(|(p, c)| TokenCounts {
                prompt_tokens: Some(p),
                completion_tokens: Some(c),
                ..Default::default()
            }),
        })
    }

    #[test]
    fn request_ends_are_counted_by_route_model_and_outcome() {
        let metrics = Metrics::new();
        let route = "/v1/chat/completions";
        metrics.ended(
            route,
            "llama",
            true,
            &completed(200, Some((7, 11))),
            Duration::from_millis(5),
        );
        metrics.ended(route, "llama", true, &completed(503, None), Duration::ZERO);
        metrics.ended(route, "llama", true, &Outcome::Cancelled, Duration::ZERO);
        metrics.ended(
            route,
            "made-up",
            false,
            &Outcome::Failed {
                failure: Failure::UnknownModel,
                streamed: false,
            },
            Duration::ZERO,
        );
        let text = metrics.render("local", 2, 3, WorkerStates::default());
        for line in [
            r#"modelrelay_requests_total{route="/v1/chat/completions",model="llama",outcome="ok"} 1"#,
            r#"modelrelay_requests_total{route="/v1/chat/completions",model="llama",outcome="backend_5xx"} 1"#,
            r#"modelrelay_requests_total{route="/v1/chat/completions",model="llama",outcome="cancelled"} 1"#,
            r#"modelrelay_requests_total{route="/v1/chat/completions",model="unknown",outcome="model_not_found"} 1"#,
            r#"modelrelay_cancellations_total{reason="client_disconnected"} 1"#,
            r#"modelrelay_tokens_total{model="llama",kind="prompt"} 7"#,
            r#"modelrelay_tokens_total{model="llama",kind="completion"} 11"#,
            r#"modelrelay_queue_depth{provider="local"} 2"#,
            r#"modelrelay_requests_in_flight 3"#,
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("made-up"), "{text}");
    }

    #[test]
    fn model_labels_are_capped() {
        let metrics = Metrics::new();
        let route = "/v1/chat/completions";
        let ok = completed(200, None);
        for n in 0..MAX_MODEL_LABELS + 10 {
            metrics.ended(route, &format!("model-{n}"), true, &ok, Duration::ZERO);
        }
        // Known ones keep their label after the cap is reached.
        metrics.ended(route, "model-0", true, &ok, Duration::ZERO);
        let text = metrics.render("local", 0, 0, WorkerStates::default());
        let models = text
            .lines()
            .filter(|l| l.starts_with("modelrelay_requests_total{"))
            .count();
        assert_eq!(models, MAX_MODEL_LABELS + 1, "the labels plus `other`");
        assert!(text.contains(r#"model="other",outcome="ok"} 10"#), "{text}");
        assert!(text.contains(r#"model="model-0",outcome="ok"} 2"#));
    }

    #[test]
    fn the_answer_budget_gauges_follow_the_core() {
        let metrics = Metrics::new();
        metrics.sync_flow(Some(FlowView {
            held_bytes: 1000,
            reserved_bytes: 70_000,
            budget_bytes: 1 << 20,
            waiting_for_budget: 2,
        }));
        metrics.sync_relay_stats(&RelayStats {
            window_updates: 4,
            ..Default::default()
        });
        let text = metrics.render("local", 0, 0, WorkerStates::default());
        for line in [
            "modelrelay_buffered_answer_bytes 1000",
            "modelrelay_reserved_answer_bytes 70000",
            "modelrelay_answers_waiting_for_budget 2",
            "modelrelay_window_updates_total 4",
        ] {
            assert!(text.contains(line), "missing {line} in\n{text}");
        }
    }

    #[test]
    fn core_counters_only_move_forward() {
        let metrics = Metrics::new();
        let mut stats = RelayStats {
            requeues: 3,
            ..Default::default()
        };
        metrics.sync_relay_stats(&stats);
        metrics.sync_relay_stats(&stats);
        assert_eq!(metrics.requeues.get(), 3);
        stats.requeues = 5;
        metrics.sync_relay_stats(&stats);
        assert_eq!(metrics.requeues.get(), 5);
    }
}

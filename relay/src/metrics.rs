//! Prometheus metrics: counted where things happen (mostly in the hub, which sees
//! every request end exactly once), gauges filled from a hub snapshot at scrape.
//!
//! Label values are bounded: routes are the five inference paths, models are
//! ones some worker advertised (a model nobody serves is counted as `unknown`,
//! and past [`MAX_MODEL_LABELS`] distinct models the rest count as `other`),
//! outcomes and reasons are fixed words.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use modelrelay_core::relay::{Failure, Outcome, RelayStats};
use modelrelay_core::wire::{BackendUsage, TokenCounts};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::codes;
use crate::error::ApiError;

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
    /// Model label values in use (workers may keep renaming their models).
    model_labels: Mutex<HashSet<String>>,
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
        Self {
            registry,
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
        self.first_chunk
            .get_or_create(&RouteLabels { route })
            .observe(after.as_secs_f64());
    }

    /// The byte counter of one model's streams, to keep for the life of a request.
    pub(crate) fn streamed_bytes(&self, model: &str) -> Counter {
        self.streamed_bytes.get_or_create_owned(&ModelLabels {
            model: self.model_label(model).to_owned(),
        })
    }

    /// A request ended.
    pub(crate) fn ended(
        &self,
        route: &'static str,
        model: &str,
        outcome: &Outcome,
        took: Duration,
    ) {
        let label = outcome_label(outcome);
        let model = match outcome {
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
    }

    /// Sets the gauges from a hub snapshot and renders everything as Prometheus text.
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

/// Token usage a backend reported inside a stream chunk, if this chunk has it:
/// OpenAI's last chunk (`usage`, with `stream_options.include_usage`),
/// Anthropic's `message_start` and `message_delta` events, and the Responses
/// API's `response.completed` (`response.usage`).
///
/// Only the `usage` objects are read, wherever they sit in an event, so an
/// event split across chunks still counts unless the split falls inside the
/// small `usage` object itself. Several in one chunk are merged, each count
/// keeping its largest value.
pub(crate) fn stream_usage(chunk: &[u8]) -> Option<TokenCounts> {
    const KEY: &[u8] = b"\"usage\"";
    let mut found: Option<TokenCounts> = None;
    let mut from = 0;
    // Most chunks carry no usage: memmem skips them without parsing.
    while let Some(at) = memchr::memmem::find(&chunk[from..], KEY).map(|i| from + i) {
        from = at + KEY.len();
        // Inside a JSON string the quotes would be escaped: not a key.
        if at > 0 && chunk[at - 1] == b'\\' {
            continue;
        }
        let rest = chunk[from..].trim_ascii_start();
        let Some(rest) = rest.strip_prefix(b":") else {
            continue;
        };
        let Some(object) = json_object_at(rest.trim_ascii_start()) else {
            continue;
        };
        let counts = serde_json::from_slice::<BackendUsage>(object)
            .ok()
            .and_then(BackendUsage::counts);
        if let Some(counts) = counts {
            found.get_or_insert_default().merge_max(counts);
        }
    }
    found
}

/// The JSON object `text` starts with, up to its closing brace (strings and
/// their escapes skipped), or `None` if it does not start with one or ends first.
fn json_object_at(text: &[u8]) -> Option<&[u8]> {
    if text.first() != Some(&b'{') {
        return None;
    }
    let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
    for (i, &b) in text.iter().enumerate() {
        if in_string {
            match b {
                _ if escaped => escaped = false,
                b'\\' => escaped = true,
                b'"' => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(&text[..=i]);
                }
            }
            _ => {}
        }
    }
    None
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
            &completed(200, Some((7, 11))),
            Duration::from_millis(5),
        );
        metrics.ended(route, "llama", &completed(503, None), Duration::ZERO);
        metrics.ended(route, "llama", &Outcome::Cancelled, Duration::ZERO);
        metrics.ended(
            route,
            "made-up",
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
            metrics.ended(route, &format!("model-{n}"), &ok, Duration::ZERO);
        }
        // Known ones keep their label after the cap is reached.
        metrics.ended(route, "model-0", &ok, Duration::ZERO);
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
    fn usage_is_read_from_openai_and_anthropic_stream_events() {
        let openai = br#"data: {"id":"x","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":9,"total_tokens":14}}

"#;
        assert_eq!(
            stream_usage(openai),
            Some(TokenCounts {
                prompt_tokens: Some(5),
                completion_tokens: Some(9),
                total_tokens: Some(14),
            })
        );
        let start = br#"event: message_start
data: {"type":"message_start","message":{"id":"m","usage":{"input_tokens":12,"output_tokens":1}}}

"#;
        assert_eq!(stream_usage(start).and_then(|u| u.prompt_tokens), Some(12));
        let delta = br#"event: message_delta
data: {"type":"message_delta","delta":{},"usage":{"output_tokens":30}}

"#;
        assert_eq!(
            stream_usage(delta).and_then(|u| u.completion_tokens),
            Some(30)
        );
        assert_eq!(stream_usage(b"data: {\"choices\":[]}\n\n"), None);
        assert_eq!(stream_usage(b"data: {\"usage\": not json\n\n"), None);
        assert_eq!(stream_usage(b"data: {\"usage\": null}\n\n"), None);
    }

    #[test]
    fn usage_is_read_from_responses_events_and_split_events() {
        let completed = br#"event: response.completed
data: {"type":"response.completed","response":{"id":"r","output":[{"content":[{"text":"a {brace} and \"usage\": {\"input_tokens\": 99}"}]}],"usage":{"input_tokens":7,"output_tokens":11,"total_tokens":18,"output_tokens_details":{"reasoning_tokens":0}}}}

"#;
        assert_eq!(
            stream_usage(completed),
            Some(TokenCounts {
                prompt_tokens: Some(7),
                completion_tokens: Some(11),
                total_tokens: Some(18),
            })
        );
        // The event's start came in an earlier chunk; the usage is whole in this one.
        let tail = br#"reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":4}}

data: [DONE]

"#;
        assert_eq!(
            stream_usage(tail).and_then(|u| u.completion_tokens),
            Some(4)
        );
        // Cut inside the usage object: nothing rather than a wrong count.
        assert_eq!(
            stream_usage(br#"data: {"usage":{"prompt_tokens":3,"compl"#),
            None
        );
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

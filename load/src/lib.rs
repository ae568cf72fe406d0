//! The load generator behind `modelrelay-load`: many concurrent requests against any
//! OpenAI- or Anthropic-compatible URL, every answer checked, timings collected.

pub mod check;
pub mod compare;
pub mod flow;
pub mod report;
pub mod scale;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderName, HeaderValue};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use modelrelay_testkit::simulated_backend::expected_text;
use serde_json::json;

use check::{ApiShape, StreamCheck, check_body, check_text};
pub use report::{LoadReport, Percentiles};

/// When a load run stops sending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// After this many requests in all.
    Requests(u64),
    /// After this long (requests under way then finish).
    Duration(Duration),
}

/// What to send, how much, and what to expect back.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Base URL of the endpoint (`http://host:port`, or with a path prefix before `/v1`).
    pub url: String,
    /// The `model` to ask for.
    pub model: String,
    /// The API shape of requests and answers.
    pub api: ApiShape,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// When to stop.
    pub stop: Stop,
    /// Streaming or whole answers.
    pub stream: bool,
    /// Tokens per answer (`max_tokens`, and the simulated backend's `mock.tokens`).
    pub tokens: usize,
    /// Pause before each token, for the simulated backend (`mock.delay_ms`).
    pub token_delay_ms: u64,
    /// Leave each stream after this many chunks (a client that goes away).
    pub cancel_after: Option<usize>,
    /// Require exactly the simulated backend's text (else only a well-formed answer).
    pub expect_simulated_text: bool,
    /// Extra headers on every request (an API key, for instance).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Longest a single request may take.
    pub request_timeout: Duration,
    /// Prefix of the `mock.tag` that marks each request (`{prefix}{n}`).
    pub tag_prefix: String,
    /// Show a progress line on standard error (when it is a terminal).
    pub progress: bool,
    /// Spread the first requests of the concurrent clients over this long, so they
    /// do not all start (and end) together.
    pub ramp_up: Duration,
}

impl LoadConfig {
    /// A run of `requests` streaming requests, 64 at a time, at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            model: "m".into(),
            api: ApiShape::Openai,
            concurrency: 64,
            stop: Stop::Requests(1000),
            stream: true,
            tokens: 64,
            token_delay_ms: 0,
            cancel_after: None,
            expect_simulated_text: false,
            headers: Vec::new(),
            request_timeout: Duration::from_secs(300),
            tag_prefix: "load-".into(),
            progress: false,
            ramp_up: Duration::ZERO,
        }
    }

    fn body(&self, n: u64) -> Bytes {
        let messages = json!([{"role": "user", "content": "Tell me a story."}]);
        let mock = json!({"tokens": self.tokens, "delay_ms": self.token_delay_ms,
                          "tag": format!("{}{n}", self.tag_prefix)});
        Bytes::from(
            json!({"model": self.model, "stream": self.stream, "max_tokens": self.tokens,
                   "messages": messages, "mock": mock})
            .to_string(),
        )
    }
}

/// What happened to one request.
#[derive(Clone, Debug)]
pub enum Outcome {
    /// A whole, checked answer.
    Complete {
        /// Time to the first byte of the body.
        first_chunk: Duration,
        /// Time to the end.
        total: Duration,
        /// Stream events (1 for a whole answer).
        chunks: u64,
        /// Body bytes.
        bytes: u64,
    },
    /// The client left on purpose (`cancel_after`).
    Left {
        /// Time to the first byte.
        first_chunk: Duration,
        /// Events read before leaving.
        chunks: u64,
        /// When it left (wall clock, to compare with the backend's log).
        at: SystemTime,
        /// The request's `mock.tag`.
        tag: String,
    },
    /// Anything else, by kind (`http 503`, `invalid stream`, `transport`, `timeout`).
    Failed {
        /// What kind of failure.
        kind: String,
        /// The detail, for the first few of a kind.
        detail: String,
    },
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

fn http_client(pool: usize) -> Result<HttpClient, LoadError> {
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(10)));
    let roots = rustls_native_certs::load_native_certs().certs;
    let mut store = rustls::RootCertStore::empty();
    let _ = store.add_parsable_certificates(roots);
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| LoadError::Setup(e.to_string()))?
    .with_root_certificates(store)
    .with_no_client_auth();
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(pool)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The URL does not make a request URI.
    #[error("--url {url:?}: {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it is not usable.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client: {0}")]
    Setup(String),
    /// Nothing to do.
    #[error("--concurrency must be at least 1")]
    NoConcurrency,
}

/// Counters the progress line reads while the run goes on.
#[derive(Debug, Default)]
struct Live {
    done: AtomicU64,
    failed: AtomicU64,
    chunks: AtomicU64,
}

/// Runs the load `config` describes and reports what came back.
pub async fn run(config: &LoadConfig) -> Result<LoadReport, LoadError> {
    let (outcomes, elapsed) = execute(config).await?;
    Ok(LoadReport::from_outcomes(config, &outcomes, elapsed))
}

/// Runs the load `config` describes; returns each request's outcome.
pub async fn run_outcomes(config: &LoadConfig) -> Result<Vec<Outcome>, LoadError> {
    Ok(execute(config).await?.0)
}

async fn execute(config: &LoadConfig) -> Result<(Vec<Outcome>, Duration), LoadError> {
    if config.concurrency == 0 {
        return Err(LoadError::NoConcurrency);
    }
    let target: http::Uri = format!(
        "{}{}",
        config.url.trim_end_matches('/').trim_end_matches("/v1"),
        config.api.path()
    )
    .parse()
    .map_err(|e: http::uri::InvalidUri| LoadError::Url {
        url: config.url.clone(),
        reason: e.to_string(),
    })?;
    let client = http_client(config.concurrency)?;
    let config = Arc::new(config.clone());
    let next = Arc::new(AtomicU64::new(0));
    let live = Arc::new(Live::default());
    let started = Instant::now();
    let deadline = match config.stop {
        Stop::Duration(span) => Some(started + span),
        Stop::Requests(_) => None,
    };
    let finished = Arc::new(AtomicBool::new(false));
    let progress = (config.progress && std::io::stderr().is_terminal()).then(|| {
        tokio::spawn(show_progress(
            Arc::clone(&live),
            config.stop,
            started,
            Arc::clone(&finished),
        ))
    });
    let mut tasks = Vec::with_capacity(config.concurrency);
    for client_index in 0..config.concurrency {
        let (client, target, config, next, live) = (
            client.clone(),
            target.clone(),
            Arc::clone(&config),
            Arc::clone(&next),
            Arc::clone(&live),
        );
        let delay = config
            .ramp_up
            .mul_f64(client_index as f64 / config.concurrency as f64);
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            tokio::time::sleep(delay).await;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let more = match (config.stop, deadline) {
                    (Stop::Requests(total), _) => n < total,
                    (Stop::Duration(_), Some(deadline)) => Instant::now() < deadline,
                    (Stop::Duration(_), None) => false,
                };
                if !more {
                    break;
                }
                let outcome = one(&client, &target, &config, n).await;
                live.done.fetch_add(1, Ordering::Relaxed);
                match &outcome {
                    Outcome::Complete { chunks, .. } | Outcome::Left { chunks, .. } => {
                        live.chunks.fetch_add(*chunks, Ordering::Relaxed);
                    }
                    Outcome::Failed { .. } => {
                        live.failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                outcomes.push(outcome);
            }
            outcomes
        }));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.extend(task.await.unwrap_or_default());
    }
    let elapsed = started.elapsed();
    finished.store(true, Ordering::Relaxed);
    if let Some(progress) = progress {
        let _ = progress.await;
    }
    Ok((outcomes, elapsed))
}

async fn show_progress(live: Arc<Live>, stop: Stop, started: Instant, finished: Arc<AtomicBool>) {
    use std::io::Write;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tick.tick().await;
        let done = finished.load(Ordering::Relaxed);
        let count = live.done.load(Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let fraction = match stop {
            Stop::Requests(total) => count as f64 / total.max(1) as f64,
            Stop::Duration(span) => elapsed / span.as_secs_f64(),
        }
        .min(1.0);
        let filled = (fraction * 30.0) as usize;
        let line = format!(
            "\r[{}{}] {count} requests  {:.0}/s  {:.0} chunks/s  {} failed ",
            "=".repeat(filled),
            " ".repeat(30 - filled),
            count as f64 / elapsed.max(1e-9),
            live.chunks.load(Ordering::Relaxed) as f64 / elapsed.max(1e-9),
            live.failed.load(Ordering::Relaxed),
        );
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes());
        if done {
            let _ = err.write_all(b"\n");
            return;
        }
        let _ = err.flush();
    }
}

fn failed(kind: impl Into<String>, detail: impl Into<String>) -> Outcome {
    Outcome::Failed {
        kind: kind.into(),
        detail: detail.into(),
    }
}

/// Sends request number `n` and checks its answer.
async fn one(client: &HttpClient, target: &http::Uri, config: &LoadConfig, n: u64) -> Outcome {
    match tokio::time::timeout(config.request_timeout, exchange(client, target, config, n)).await {
        Ok(outcome) => outcome,
        Err(_) => failed(
            "timeout",
            format!("no end within {:?}", config.request_timeout),
        ),
    }
}

async fn exchange(client: &HttpClient, target: &http::Uri, config: &LoadConfig, n: u64) -> Outcome {
    let mut request = Request::post(target.clone()).header(CONTENT_TYPE, "application/json");
    if config.api == ApiShape::Anthropic {
        request = request.header("anthropic-version", "2023-06-01");
    }
    for (name, value) in &config.headers {
        request = request.header(name, value);
    }
    let request = match request.body(Full::new(config.body(n))) {
        Ok(request) => request,
        Err(error) => return failed("invalid request", error.to_string()),
    };
    let start = Instant::now();
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(error) => return failed("transport", format!("{error:?}")),
    };
    let status = response.status();
    let mut body = response.into_body();
    let mut first_chunk = None;
    let mut bytes = 0u64;
    let mut whole = Vec::new();
    let mut stream = StreamCheck::new(config.api);
    let streaming = config.stream && status == StatusCode::OK;
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => return failed("transport", format!("body broke off: {error}")),
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        first_chunk.get_or_insert_with(|| start.elapsed());
        bytes += data.len() as u64;
        if !streaming {
            whole.extend_from_slice(&data);
            continue;
        }
        if let Err(why) = stream.feed(&data) {
            return failed("invalid stream", why);
        }
        if config
            .cancel_after
            .is_some_and(|after| stream.events() >= after)
        {
            let left = Outcome::Left {
                first_chunk: first_chunk.unwrap_or_default(),
                chunks: stream.events() as u64,
                at: SystemTime::now(),
                tag: format!("{}{n}", config.tag_prefix),
            };
            drop(body); // hang up
            return left;
        }
    }
    let total = start.elapsed();
    if status != StatusCode::OK {
        return failed(
            format!("http {}", status.as_u16()),
            String::from_utf8_lossy(&whole)
                .chars()
                .take(200)
                .collect::<String>(),
        );
    }
    let (text, chunks) = if streaming {
        let chunks = stream.events() as u64;
        match stream.finish() {
            Ok(text) => (text, chunks),
            Err(why) => return failed("invalid stream", why),
        }
    } else {
        match check_body(config.api, &whole) {
            Ok(text) => (text, 1),
            Err(why) => return failed("invalid answer", why),
        }
    };
    if config.expect_simulated_text
        && let Err(why) = check_text(&text, &expected_text(config.tokens))
    {
        return failed("wrong text", why);
    }
    Outcome::Complete {
        first_chunk: first_chunk.unwrap_or(total),
        total,
        chunks,
        bytes,
    }
}

/// Counts of failures by kind, with one example of each.
pub fn failures(outcomes: &[Outcome]) -> BTreeMap<String, (u64, String)> {
    let mut kinds: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for outcome in outcomes {
        if let Outcome::Failed { kind, detail } = outcome {
            let entry = kinds.entry(kind.clone()).or_insert((0, detail.clone()));
            entry.0 += 1;
        }
    }
    kinds
}

/// Sets `AUTHORIZATION: Bearer {key}` on every request.
pub fn bearer(key: &str) -> Result<(HeaderName, HeaderValue), String> {
    HeaderValue::from_str(&format!("Bearer {key}"))
        .map(|value| (AUTHORIZATION, value))
        .map_err(|_| "the API key is not a valid header value".to_owned())
}

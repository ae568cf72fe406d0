//! A simulated OpenAI- and Anthropic-compatible backend: the demo's model, and the tests' fake.
//!
//! It streams canned text token by token at a set pace, answers every route the
//! relay serves (the token counters with a count of one token per 4 body bytes),
//! and records what it saw: each request, and each response the
//! client went away from before it finished (a cancellation). A request can
//! steer it with a `"mock"` object in its JSON body:
//!
//! ```json
//! {"model": "demo", "stream": true, "mock": {"tokens": 5, "delay_ms": 10, "status": 500,
//!  "fail_after": 2, "linger_ms": 200, "tag": "t1"}}
//! ```
//!
//! `tokens`/`delay_ms` override the pace, `status` answers with that error
//! status, `fail_after` breaks the stream off after that many chunks,
//! `linger_ms` keeps a stream's body open that long after its last event (it
//! counts as finished only when the body ends), `tag` marks the request in the
//! log.

use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::stream;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Notify;

/// The words the simulated model says, over and over.
const TEXT: &str = "Hello from ModelRelay! This reply streams from a simulated backend \
through the relay and an outbound worker link, token by token, just as a real model \
behind llama-server, Ollama or vLLM would answer. ";

/// How the simulated backend behaves unless a request says otherwise.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimulatedBackendConfig {
    /// Models it serves (and lists at `GET /v1/models`).
    pub models: Vec<String>,
    /// Tokens per answer.
    pub tokens: usize,
    /// Pause before each token.
    pub token_delay: Duration,
}

impl Default for SimulatedBackendConfig {
    fn default() -> Self {
        Self {
            models: vec!["demo".into()],
            tokens: 24,
            token_delay: Duration::ZERO,
        }
    }
}

/// One thing the simulated backend saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BackendEvent {
    /// A request arrived.
    Received {
        /// The path it was sent to.
        path: String,
        /// Its `model`.
        model: String,
        /// Its `mock.tag`, if any.
        tag: Option<String>,
        /// Its headers, as received.
        headers: Vec<(String, String)>,
    },
    /// A response was sent to the end.
    Finished {
        /// The request's tag, if any.
        tag: Option<String>,
    },
    /// The client went away before the response ended.
    Cancelled {
        /// The request's tag, if any.
        tag: Option<String>,
        /// Chunks sent before it left.
        chunks_sent: usize,
    },
}

#[derive(Default)]
struct Log {
    events: Mutex<Vec<BackendEvent>>,
    /// When each event happened (wall clock, to compare with other processes' clocks).
    times: Mutex<Vec<SystemTime>>,
    /// Body bytes each tagged stream has handed to the HTTP server so far.
    streamed: Mutex<std::collections::HashMap<String, usize>>,
    changed: Notify,
}

impl Log {
    fn push(&self, event: BackendEvent) {
        let mut events = self.events.lock().expect("log lock");
        self.times.lock().expect("log lock").push(SystemTime::now());
        events.push(event);
        drop(events);
        self.changed.notify_waiters();
    }
}

/// The simulated backend: build it, serve its [`SimulatedBackend::router`], read its log.
#[derive(Clone)]
pub struct SimulatedBackend {
    config: Arc<SimulatedBackendConfig>,
    models: Arc<RwLock<Vec<String>>>,
    log: Arc<Log>,
}

/// Per-request directives, from the body's `mock` object.
#[derive(Clone, Debug, Default, Deserialize)]
struct Directives {
    tokens: Option<usize>,
    delay_ms: Option<u64>,
    status: Option<u16>,
    fail_after: Option<usize>,
    linger_ms: Option<u64>,
    tag: Option<String>,
}

/// What a request asked for, as far as the simulation cares.
#[derive(Clone, Debug)]
struct Ask {
    model: String,
    stream: bool,
    include_usage: bool,
    directives: Directives,
}

/// The API shape to answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Api {
    Chat,
    Completions,
    Responses,
    Messages,
}

impl SimulatedBackend {
    /// A backend behaving as `config` says.
    pub fn new(config: SimulatedBackendConfig) -> Self {
        Self {
            models: Arc::new(RwLock::new(config.models.clone())),
            config: Arc::new(config),
            log: Arc::new(Log::default()),
        }
    }

    /// The HTTP routes.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/models", get(list_models))
            .route(
                "/v1/chat/completions",
                post(|s, h, b| generate(s, h, b, Api::Chat)),
            )
            .route(
                "/v1/completions",
                post(|s, h, b| generate(s, h, b, Api::Completions)),
            )
            .route(
                "/v1/responses",
                post(|s, h, b| generate(s, h, b, Api::Responses)),
            )
            .route(
                "/v1/messages",
                post(|s, h, b| generate(s, h, b, Api::Messages)),
            )
            .route("/v1/embeddings", post(embeddings))
            .route(
                "/v1/messages/count_tokens",
                post(|s, h, b| count_tokens(s, h, b, Api::Messages)),
            )
            .route(
                "/v1/responses/input_tokens",
                post(|s, h, b| count_tokens(s, h, b, Api::Responses)),
            )
            // As large as the relay's default body limit, as model servers take
            // long prompts (axum's own default is 2 MB).
            .layer(axum::extract::DefaultBodyLimit::max(MAX_PROMPT_BYTES))
            .with_state(self.clone())
    }

    /// Changes the models it serves and lists, as a model server loading or unloading one would.
    pub fn set_models(&self, models: Vec<String>) {
        *self.models.write().expect("models lock") = models;
    }

    /// Serves on `listener` until `stop` resolves, with TCP_NODELAY as model servers set it.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        stop: impl Future<Output = ()> + Send + 'static,
    ) {
        use axum::serve::ListenerExt;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        self.serve_on(listener, stop).await;
    }

    /// Serves `router` (its routes, perhaps with more) on `listen` until SIGTERM or
    /// Ctrl-C, after printing `listening on ADDR` on stdout so a parent process
    /// learns the port.
    #[allow(clippy::print_stdout, reason = "the address is what the parent reads")]
    pub async fn serve_announced(router: Router, listen: &str) -> std::io::Result<()> {
        use axum::serve::ListenerExt;
        let listener = tokio::net::TcpListener::bind(listen).await?;
        println!("listening on {}", listener.local_addr()?);
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        axum::serve(listener, router)
            .with_graceful_shutdown(modelrelay_process::shutdown_signal())
            .await
    }

    /// Serves on any listener (a simulated network's, for instance) until `stop` resolves.
    pub async fn serve_on<L>(self, listener: L, stop: impl Future<Output = ()> + Send + 'static)
    where
        L: axum::serve::Listener,
        L::Addr: std::fmt::Debug,
    {
        // Serving on an accepted listener only ends when asked to.
        let _ = axum::serve(listener, self.router())
            .with_graceful_shutdown(stop)
            .await;
    }

    /// Everything seen so far, in order.
    pub fn events(&self) -> Vec<BackendEvent> {
        self.log.events.lock().expect("log lock").clone()
    }

    /// Body bytes the stream tagged `tag` has handed to the HTTP server so far
    /// (what its client, or the server's buffers, took: a stalled reader stops it).
    pub fn streamed_bytes(&self, tag: &str) -> usize {
        self.log
            .streamed
            .lock()
            .expect("log lock")
            .get(tag)
            .copied()
            .unwrap_or_default()
    }

    /// [`SimulatedBackend::streamed_bytes`] of every tagged stream so far.
    pub fn streamed(&self) -> std::collections::BTreeMap<String, usize> {
        let streamed = self.log.streamed.lock().expect("log lock");
        streamed
            .iter()
            .map(|(tag, &bytes)| (tag.clone(), bytes))
            .collect()
    }

    /// Everything seen so far, in order, each with when it happened.
    pub fn timed_events(&self) -> Vec<(SystemTime, BackendEvent)> {
        let events = self.log.events.lock().expect("log lock");
        let times = self.log.times.lock().expect("log lock");
        times.iter().copied().zip(events.iter().cloned()).collect()
    }

    /// Waits until `check` holds for the log, up to `timeout`; returns whether it did.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        check: impl Fn(&[BackendEvent]) -> bool,
    ) -> bool {
        let wait = async {
            loop {
                let changed = self.log.changed.notified();
                if check(&self.log.events.lock().expect("log lock")) {
                    return;
                }
                changed.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    /// The most requests that were ever open at once (received, and neither
    /// finished nor cancelled yet), by the log's order.
    pub fn peak_concurrency(&self) -> usize {
        let (mut open, mut peak) = (0usize, 0usize);
        for event in self.log.events.lock().expect("log lock").iter() {
            match event {
                BackendEvent::Received { .. } => {
                    open += 1;
                    peak = peak.max(open);
                }
                BackendEvent::Finished { .. } | BackendEvent::Cancelled { .. } => {
                    open = open.saturating_sub(1);
                }
            }
        }
        peak
    }

    /// The tags of the requests whose client went away.
    pub fn cancelled_tags(&self) -> Vec<Option<String>> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                BackendEvent::Cancelled { tag, .. } => Some(tag),
                _ => None,
            })
            .collect()
    }

    fn read_ask(&self, body: &[u8]) -> Result<Ask, (StatusCode, String)> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}")))?;
        let model = value
            .get("model")
            .and_then(Value::as_str)
            .ok_or_else(|| (StatusCode::BAD_REQUEST, "missing model".to_owned()))?
            .to_owned();
        if !self.models.read().expect("models lock").contains(&model) {
            return Err((StatusCode::NOT_FOUND, format!("model {model:?} not found")));
        }
        Ok(Ask {
            model,
            stream: value
                .get("stream")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            include_usage: value
                .pointer("/stream_options/include_usage")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            directives: value
                .get("mock")
                .and_then(|m| serde_json::from_value(m.clone()).ok())
                .unwrap_or_default(),
        })
    }
}

fn openai_error((status, message): (StatusCode, String)) -> Response {
    let body =
        json!({"error": {"message": message, "type": "invalid_request_error", "code": null}});
    (status, axum::Json(body)).into_response()
}

async fn list_models(State(backend): State<SimulatedBackend>) -> Response {
    let data: Vec<Value> = backend
        .models
        .read()
        .expect("models lock")
        .iter()
        .map(|id| json!({"id": id, "object": "model", "created": 0, "owned_by": "simulated"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn embeddings(
    State(backend): State<SimulatedBackend>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let ask = match backend.read_ask(&body) {
        Ok(ask) => ask,
        Err(error) => return openai_error(error),
    };
    backend.log.push(received("/v1/embeddings", &ask, &headers));
    let embedding: Vec<f32> = (0..8).map(|i| (i as f32 * 0.125) - 0.5).collect();
    backend.log.push(BackendEvent::Finished {
        tag: ask.directives.tag.clone(),
    });
    axum::Json(json!({
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": embedding}],
        "model": ask.model,
        "usage": {"prompt_tokens": 4, "total_tokens": 4}
    }))
    .into_response()
}

/// Anthropic's `/v1/messages/count_tokens` and OpenAI's `/v1/responses/input_tokens`:
/// the token count of the body (one token per 4 bytes), in each API's shape.
async fn count_tokens(
    State(backend): State<SimulatedBackend>,
    headers: HeaderMap,
    body: Bytes,
    api: Api,
) -> Response {
    let ask = match backend.read_ask(&body) {
        Ok(ask) => ask,
        Err(error) => return openai_error(error),
    };
    let (path, answer) = match api {
        Api::Messages => (
            "/v1/messages/count_tokens",
            json!({"input_tokens": body.len().div_ceil(4)}),
        ),
        _ => (
            "/v1/responses/input_tokens",
            json!({"object": "response.input_tokens", "input_tokens": body.len().div_ceil(4)}),
        ),
    };
    backend.log.push(received(path, &ask, &headers));
    backend.log.push(BackendEvent::Finished {
        tag: ask.directives.tag.clone(),
    });
    axum::Json(answer).into_response()
}

fn received(path: &str, ask: &Ask, headers: &HeaderMap) -> BackendEvent {
    BackendEvent::Received {
        path: path.to_owned(),
        model: ask.model.clone(),
        tag: ask.directives.tag.clone(),
        headers: headers
            .iter()
            .filter_map(|(n, v)| {
                v.to_str()
                    .ok()
                    .map(|v| (n.as_str().to_owned(), v.to_owned()))
            })
            .collect(),
    }
}

/// Records a cancellation if dropped before [`Progress::finish`].
struct Progress {
    log: Arc<Log>,
    tag: Option<String>,
    chunks_sent: usize,
    finished: bool,
}

impl Progress {
    /// Counts `bytes` more of the body as taken by the HTTP server.
    fn streamed(&self, bytes: usize) {
        if let Some(tag) = &self.tag {
            *self
                .log
                .streamed
                .lock()
                .expect("log lock")
                .entry(tag.clone())
                .or_default() += bytes;
        }
    }

    fn finish(&mut self) {
        self.finished = true;
        self.log.push(BackendEvent::Finished {
            tag: self.tag.clone(),
        });
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if !self.finished {
            self.log.push(BackendEvent::Cancelled {
                tag: self.tag.take(),
                chunks_sent: self.chunks_sent,
            });
        }
    }
}

/// The largest request body the simulated backend takes: the relay's default limit.
const MAX_PROMPT_BYTES: usize = 32 * 1024 * 1024;

/// The text of an answer of `tokens` tokens, as the simulated model writes it.
pub fn expected_text(tokens: usize) -> String {
    (0..tokens).map(token).collect()
}

/// The `n`th token of the canned text.
fn token(n: usize) -> &'static str {
    static WORDS: OnceLock<Vec<&'static str>> = OnceLock::new();
    let words = WORDS.get_or_init(|| TEXT.split_inclusive(' ').collect());
    words[n % words.len()]
}

async fn generate(
    State(backend): State<SimulatedBackend>,
    headers: HeaderMap,
    body: Bytes,
    api: Api,
) -> Response {
    let path = match api {
        Api::Chat => "/v1/chat/completions",
        Api::Completions => "/v1/completions",
        Api::Responses => "/v1/responses",
        Api::Messages => "/v1/messages",
    };
    let ask = match backend.read_ask(&body) {
        Ok(ask) => ask,
        Err(error) => return openai_error(error),
    };
    backend.log.push(received(path, &ask, &headers));
    let mut progress = Progress {
        log: Arc::clone(&backend.log),
        tag: ask.directives.tag.clone(),
        chunks_sent: 0,
        finished: false,
    };
    let tokens = ask.directives.tokens.unwrap_or(backend.config.tokens);
    let delay = ask
        .directives
        .delay_ms
        .map_or(backend.config.token_delay, Duration::from_millis);
    if let Some(status) = ask.directives.status {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        progress.finish();
        return error_response(api, status, "simulated failure");
    }
    if !ask.stream {
        // Take as long as the stream would have; a client that leaves meanwhile cancels.
        if !delay.is_zero() {
            tokio::time::sleep(delay * tokens as u32).await;
        }
        let text: String = (0..tokens).map(token).collect();
        progress.finish();
        return axum::Json(complete_body(api, &ask.model, &text, tokens)).into_response();
    }
    let events = stream_events(api, &ask, tokens);
    let fail_after = ask.directives.fail_after;
    let linger = ask.directives.linger_ms.map(Duration::from_millis);
    let chunks = stream::unfold(
        (events.peekable(), progress, 0usize),
        move |(mut events, mut progress, n)| async move {
            if fail_after.is_some_and(|limit| n >= limit) {
                progress.finished = true; // a deliberate break, not a cancellation
                // Let what was sent reach the wire: an error aborts the connection at once.
                tokio::time::sleep(Duration::from_millis(50)).await;
                return Some((
                    Err(std::io::Error::other("simulated failure mid-stream")),
                    (events, progress, n),
                ));
            }
            let Some(event) = events.next() else {
                if let Some(linger) = linger {
                    // The body stays open a while after the last event; a client
                    // that leaves meanwhile counts as a cancellation.
                    tokio::time::sleep(linger).await;
                    progress.finish();
                }
                return None;
            };
            if event.paced && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            progress.chunks_sent += 1;
            progress.streamed(event.text.len());
            if events.peek().is_none() && linger.is_none() {
                progress.finish();
            }
            Some((
                Ok::<_, std::io::Error>(Bytes::from(event.text)),
                (events, progress, n + 1),
            ))
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(chunks))
        .expect("valid response")
}

fn error_response(api: Api, status: StatusCode, message: &str) -> Response {
    let body = match api {
        Api::Messages => {
            json!({"type": "error", "error": {"type": "api_error", "message": message}})
        }
        _ => json!({"error": {"message": message, "type": "server_error", "code": null}}),
    };
    (status, axum::Json(body)).into_response()
}

fn complete_body(api: Api, model: &str, text: &str, tokens: usize) -> Value {
    match api {
        Api::Chat => json!({
            "id": "chatcmpl-sim", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
        }),
        Api::Completions => json!({
            "id": "cmpl-sim", "object": "text_completion", "created": 0, "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens}
        }),
        Api::Responses => json!({
            "id": "resp-sim", "object": "response", "created_at": 0, "model": model, "status": "completed",
            "output": [{"type": "message", "role": "assistant",
                        "content": [{"type": "output_text", "text": text}]}],
            "usage": {"input_tokens": 5, "output_tokens": tokens, "total_tokens": 5 + tokens}
        }),
        Api::Messages => json!({
            "id": "msg-sim", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": "end_turn",
            "usage": {"input_tokens": 5, "output_tokens": tokens}
        }),
    }
}

/// One SSE event; `paced` ones wait for the token delay first.
struct SseEvent {
    text: String,
    paced: bool,
}

fn data(value: &Value) -> SseEvent {
    SseEvent {
        text: format!("data: {value}\n\n"),
        paced: false,
    }
}

fn named(event: &str, value: &Value) -> SseEvent {
    SseEvent {
        text: format!("event: {event}\ndata: {value}\n\n"),
        paced: false,
    }
}

fn paced(mut event: SseEvent) -> SseEvent {
    event.paced = true;
    event
}

/// The events of a streamed answer, made as they are sent: a long answer costs
/// the backend no memory up front.
type Events = Box<dyn Iterator<Item = SseEvent> + Send>;

/// An answer's events: `head`, one paced event per token made by `token_event`,
/// then `tail` (made once the tokens are out).
fn events_around(
    head: Vec<SseEvent>,
    tokens: usize,
    token_event: impl Fn(usize) -> SseEvent + Send + 'static,
    tail: impl FnOnce() -> Vec<SseEvent> + Send + 'static,
) -> Events {
    let body = (0..tokens).map(move |n| paced(token_event(n)));
    let tail = std::iter::once(tail).flat_map(|tail| tail());
    Box::new(head.into_iter().chain(body).chain(tail))
}

fn stream_events(api: Api, ask: &Ask, tokens: usize) -> Events {
    let model = ask.model.clone();
    let include_usage = ask.include_usage;
    match api {
        Api::Chat => {
            let chunk = move |delta: Value, finish: Value| {
                json!({"id": "chatcmpl-sim", "object": "chat.completion.chunk", "created": 0, "model": model,
                       "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})
            };
            let head = vec![data(&chunk(
                json!({"role": "assistant", "content": ""}),
                Value::Null,
            ))];
            let tail_chunk = chunk.clone();
            events_around(
                head,
                tokens,
                move |n| data(&chunk(json!({"content": token(n)}), Value::Null)),
                move || {
                    let mut tail = vec![data(&tail_chunk(json!({}), json!("stop")))];
                    if include_usage {
                        let mut usage = tail_chunk(json!({}), Value::Null);
                        usage["choices"] = json!([]);
                        usage["usage"] = json!({"prompt_tokens": 5, "completion_tokens": tokens, "total_tokens": 5 + tokens});
                        tail.push(data(&usage));
                    }
                    tail.push(SseEvent {
                        text: "data: [DONE]\n\n".into(),
                        paced: false,
                    });
                    tail
                },
            )
        }
        Api::Completions => {
            let tail_model = model.clone();
            events_around(
                Vec::new(),
                tokens,
                move |n| {
                    data(
                        &json!({"id": "cmpl-sim", "object": "text_completion", "created": 0,
                    "model": model, "choices": [{"index": 0, "text": token(n), "finish_reason": null}]}),
                    )
                },
                move || {
                    vec![
                        data(
                            &json!({"id": "cmpl-sim", "object": "text_completion", "created": 0,
                            "model": tail_model, "choices": [{"index": 0, "text": "", "finish_reason": "stop"}]}),
                        ),
                        SseEvent {
                            text: "data: [DONE]\n\n".into(),
                            paced: false,
                        },
                    ]
                },
            )
        }
        Api::Responses => {
            let head = vec![named(
                "response.created",
                &json!({"type": "response.created",
                "response": {"id": "resp-sim", "object": "response", "model": model, "status": "in_progress"}}),
            )];
            events_around(
                head,
                tokens,
                |n| {
                    named(
                        "response.output_text.delta",
                        &json!({
                    "type": "response.output_text.delta", "output_index": 0, "content_index": 0, "delta": token(n)}),
                    )
                },
                move || {
                    vec![
                        named(
                            "response.output_text.done",
                            &json!({
                            "type": "response.output_text.done", "output_index": 0, "content_index": 0,
                            "text": expected_text(tokens)}),
                        ),
                        named(
                            "response.completed",
                            &json!({"type": "response.completed",
                            "response": {"id": "resp-sim", "object": "response", "model": model, "status": "completed",
                                         "usage": {"input_tokens": 5, "output_tokens": tokens, "total_tokens": 5 + tokens}}}),
                        ),
                    ]
                },
            )
        }
        Api::Messages => {
            let head = vec![
                named(
                    "message_start",
                    &json!({"type": "message_start", "message": {
                    "id": "msg-sim", "type": "message", "role": "assistant", "model": model, "content": [],
                    "stop_reason": null, "usage": {"input_tokens": 5, "output_tokens": 0}}}),
                ),
                named(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": 0,
                    "content_block": {"type": "text", "text": ""}}),
                ),
            ];
            events_around(
                head,
                tokens,
                |n| {
                    named(
                        "content_block_delta",
                        &json!({"type": "content_block_delta",
                    "index": 0, "delta": {"type": "text_delta", "text": token(n)}}),
                    )
                },
                move || {
                    vec![
                        named(
                            "content_block_stop",
                            &json!({"type": "content_block_stop", "index": 0}),
                        ),
                        named(
                            "message_delta",
                            &json!({"type": "message_delta",
                            "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": tokens}}),
                        ),
                        named("message_stop", &json!({"type": "message_stop"})),
                    ]
                },
            )
        }
    }
}

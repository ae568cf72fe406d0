//! The worker's driver: runs the [`WorkerSession`] against a real link and backend.
//!
//! One task owns the session. Link reader/writer tasks and one task per backend
//! call report back over a bounded channel (they wait for room; the driver
//! itself never does); the session's outputs are carried out right after each
//! event. A backend call reads its backend only as far as the session allows
//! (`SessionOutput::AllowBackendRead`), which follows what the link's writer has
//! handed on: a link that stops taking frames stops the backend reads, and TCP
//! holds the model server back.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Method;
use modelrelay_core::WireRequestId;
use modelrelay_core::session::{
    CHUNK_COST_OVERHEAD, Liveness, SessionConfig, SessionInput, SessionOutput, WorkerSession,
    chunk_cost, failure_message,
};
use modelrelay_core::wire::{
    BackendUsage, FrameLimits, Headers, LinkFlow, RequestFrame, ServerMessage, TokenCounts,
    WireVersion, WorkerMessage, forwards_request_header,
};
use modelrelay_transports::{Heard, LinkReader, LinkWriter, Outgoing};
use modelrelay_transports::{LINK_CLOSE_WAIT, send_or_wait};
use modelrelay_transports::{LinkError, close_code};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, BackendError, BackendRequest, collect_body, list_models};
use crate::endpoint;
use crate::link::{
    ConnectError, Dialer, Link, ProtocolChoice, RefusalReason, Refused, RelayEndpoint, connect,
};
use crate::progress::WriteProgress;

/// Events waiting for the driver; whoever reports one waits for room.
const INBOX: usize = 256;

/// Backend reports the driver takes per wake-up before it looks at its other inputs.
const BACKEND_BATCH: usize = 64;

/// Where backend calls report their chunks and results.
///
/// Not counted in items: what waits here is bounded by the read windows. A call
/// reads no further than its window (`link_write_window` of chunk cost) past
/// what the link's writer has handed on, and a chunk counts as read before it
/// is reported; so at most each running request's window of chunks waits, plus
/// one final report, and requests run only in free slots. A count bound on top
/// made every call wait for the driver chunk by chunk under load, a wake-up per
/// chunk for nothing.
type BackendReports = mpsc::UnboundedSender<SessionInput>;

/// Frames the link's outbound queue has room for besides the running requests'
/// answers: `register`, pongs, model updates, refusals of requests past the slots.
const CONTROL_ALLOWANCE: usize = 1024;

/// Room in the link's outbound queue. A request reads its backend no further
/// than its window past what the writer has handed on, and every chunk costs at
/// least [`CHUNK_COST_OVERHEAD`]: its unwritten chunks number at most
/// `window / overhead + 1`, plus its completion. So the driver never waits for
/// room, and a full queue means the pacing failed.
fn outbound_capacity(config: &SessionConfig) -> usize {
    let per_request = config.link_write_window / CHUNK_COST_OVERHEAD + 2;
    let answers = u64::from(config.max_concurrent).saturating_mul(per_request);
    usize::try_from(answers)
        .unwrap_or(usize::MAX)
        .saturating_add(CONTROL_ALLOWANCE)
        .min(Semaphore::MAX_PERMITS)
}

/// Where the worker's model list comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelSource {
    /// A fixed list.
    List(Vec<String>),
    /// Whatever the backend's `GET /v1/models` lists (`--models '*'`).
    Discover,
}

/// Everything the driver needs besides its dialer and backend.
#[derive(Clone)]
pub struct WorkerOptions {
    /// The relay to connect to.
    pub endpoint: RelayEndpoint,
    /// The shared worker secret.
    pub secret: String,
    /// Name, slots, backoff and timeouts (its `models` are set from `models`).
    pub session: SessionConfig,
    /// Where the model list comes from.
    pub models: ModelSource,
    /// How often to re-read the backend's models (`None`: never).
    pub models_poll_interval: Option<Duration>,
    /// Which protocol versions to speak.
    pub protocol: ProtocolChoice,
    /// Frame size limit on the link.
    pub limits: FrameLimits,
    /// How long a dial and handshake may take.
    pub connect_timeout: Duration,
    /// Largest non-streaming backend response passed on.
    pub max_response_bytes: usize,
    /// QUIC client settings (TLS trust), needed for `quic://` relays.
    pub quic: Option<quinn::ClientConfig>,
}

impl WorkerOptions {
    /// Options with the defaults of the `modelrelay-worker` command.
    pub fn new(endpoint: RelayEndpoint, secret: String, models: ModelSource) -> Self {
        Self {
            endpoint,
            secret,
            session: SessionConfig::default(),
            models,
            models_poll_interval: None,
            protocol: ProtocolChoice::Auto,
            limits: FrameLimits::default(),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024 * 1024,
            quic: None,
        }
    }
}

/// A dial that failed, as the session hears of it (logged on the way): the
/// relay's refusal (see [`ConnectError::refused`]; a 429's `Retry-After` is
/// followed by the next attempt) as a refusal, like a close with 1008;
/// anything else as a link down.
fn link_failed(error: &ConnectError) -> SessionInput {
    if let Some(Refused { why, retry_after }) = error.refused() {
        let retry_after_secs = retry_after.map(|after| after.as_secs());
        error!(%error, ?retry_after_secs, "{}", why.advice());
        return SessionInput::LinkRefused { retry_after };
    }
    warn!(%error, "cannot connect to the relay");
    SessionInput::LinkDown
}

/// How a link speaks and who judges whether it is alive.
type LinkTraits = (WireVersion, LinkFlow, Liveness);

/// Something a helper task reports to the driver.
enum Event {
    LinkUp {
        generation: u64,
        traits: LinkTraits,
        outbound: mpsc::Sender<Outgoing<WorkerMessage>>,
        progress: Arc<WriteProgress>,
    },
    LinkFailed {
        generation: u64,
        error: ConnectError,
    },
    Frame {
        generation: u64,
        message: ServerMessage,
    },
    SignOfLife {
        generation: u64,
    },
    LinkClosed {
        generation: u64,
        cause: String,
        refused: bool,
    },
    Models(Result<Vec<String>, BackendError>),
}

/// The current link, from the driver's side.
enum LinkState {
    None,
    Connecting {
        generation: u64,
        task: AbortHandle,
    },
    Up {
        generation: u64,
        outbound: mpsc::Sender<Outgoing<WorkerMessage>>,
        /// What its writer has handed on.
        progress: Arc<WriteProgress>,
        /// The worker asked for the close itself.
        closing: bool,
        /// The link's task, to end it if a close never completes.
        task: AbortHandle,
    },
}

/// Runs a worker until it has shut down: `shutdown` resolving starts a graceful stop
/// (finish running requests, then exit).
///
/// Every task it starts (link, backend calls) belongs to it: dropping the
/// returned future aborts them all and drops their connections, as a crash would.
pub async fn run<D: Dialer>(
    options: WorkerOptions,
    dialer: D,
    backend: Arc<dyn Backend>,
    shutdown: impl Future<Output = ()> + Send,
) {
    let dialer = Arc::new(dialer);
    let (events, mut inbox) = mpsc::channel::<Event>(INBOX);
    let (backend_reports, mut reports) = mpsc::unbounded_channel();
    let mut session_config = options.session.clone();
    session_config.models = match &options.models {
        ModelSource::List(models) => models.clone(),
        ModelSource::Discover => discover_at_start(&*backend).await,
    };
    let mut session = WorkerSession::new(session_config);
    let mut driver = Driver {
        options,
        dialer,
        backend,
        events,
        backend_reports,
        link: LinkState::None,
        generation: 0,
        running: HashMap::new(),
        tasks: JoinSet::new(),
    };
    let mut poll = driver.options.models_poll_interval.map(|every| {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stopping = false;
    loop {
        while let Some(output) = session.poll_output() {
            if driver.carry_out(output, &mut session) {
                return;
            }
        }
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        let progress = match &driver.link {
            LinkState::Up { progress, .. } => Some(Arc::clone(progress)),
            _ => None,
        };
        tokio::select! {
            Some(event) = inbox.recv() => driver.on_event(event, &mut session),
            Some(report) = reports.recv() => {
                driver.on_backend(report, &mut session);
                for _ in 1..BACKEND_BATCH {
                    let Ok(report) = reports.try_recv() else { break };
                    driver.on_backend(report, &mut session);
                }
            }
            () = link_wrote(progress.as_deref()) => driver.link_wrote(&mut session),
            () = sleep_until(deadline) => session.handle_timeout(now()),
            () = &mut shutdown, if !stopping => {
                stopping = true;
                info!("shutting down: finishing running requests");
                session.handle(now(), SessionInput::Shutdown);
            }
            _ = tick(&mut poll) => driver.refresh_models(),
            Some(_) = driver.tasks.join_next(), if !driver.tasks.is_empty() => {}
        }
    }
}

/// Resolves once the link's writer has handed something on.
async fn link_wrote(progress: Option<&WriteProgress>) {
    match progress {
        Some(progress) => progress.changed().await,
        None => std::future::pending().await,
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn tick(poll: &mut Option<tokio::time::Interval>) {
    match poll {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The model list to register with; empty (and a warning) if the backend cannot say yet.
async fn discover_at_start(backend: &dyn Backend) -> Vec<String> {
    match tokio::time::timeout(Duration::from_secs(10), list_models(backend)).await {
        Ok(Ok(models)) => {
            info!(?models, "models discovered from the backend");
            models
        }
        Ok(Err(error)) => {
            warn!(%error, "cannot list the backend's models yet; registering without models and retrying");
            Vec::new()
        }
        Err(_) => {
            warn!(
                "the backend did not list its models within 10 s; registering without models and retrying"
            );
            Vec::new()
        }
    }
}

/// A backend call in progress, from the driver's side.
struct Running {
    /// Its task.
    task: AbortHandle,
    /// The cost it may read up to (the session's latest `AllowBackendRead`).
    allowance: watch::Sender<u64>,
    /// Cost of its chunks the link's writer has handed on, in all.
    written: u64,
}

struct Driver<D: Dialer> {
    options: WorkerOptions,
    dialer: Arc<D>,
    backend: Arc<dyn Backend>,
    events: mpsc::Sender<Event>,
    backend_reports: BackendReports,
    link: LinkState,
    generation: u64,
    running: HashMap<WireRequestId, Running>,
    /// Everything this driver started; dropped with it.
    tasks: JoinSet<()>,
}

impl<D: Dialer> Driver<D> {
    /// Carries out one session output; returns whether the worker is done.
    fn carry_out(&mut self, output: SessionOutput, session: &mut WorkerSession) -> bool {
        match output {
            SessionOutput::Connect => self.dial(),
            SessionOutput::Send(message) => self.enqueue(Outgoing::Message(message), session),
            SessionOutput::ProbeLink => self.enqueue(Outgoing::Probe, session),
            SessionOutput::CloseLink => match &mut self.link {
                // The reader reports the close when the relay answers it.
                LinkState::Up {
                    generation,
                    outbound,
                    closing,
                    task,
                    ..
                } => {
                    *closing = true;
                    // A full queue cannot take the close: the watch below ends the link.
                    let _ = outbound.try_send(Outgoing::Close {
                        code: close_code::NORMAL,
                        reason: "worker closing".into(),
                    });
                    // On a dead link the close may sit behind frames that never drain:
                    // past the linger, end the link's task and report it closed.
                    let (generation, task, events) =
                        (*generation, task.clone(), self.events.clone());
                    self.tasks.spawn(async move {
                        tokio::time::sleep(LINK_CLOSE_WAIT * 2).await;
                        if !task.is_finished() {
                            task.abort();
                            let _ = events
                                .send(Event::LinkClosed {
                                    generation,
                                    cause: "the close did not complete: link dead".into(),
                                    refused: false,
                                })
                                .await;
                        }
                    });
                }
                LinkState::Connecting { task, .. } => {
                    task.abort();
                    self.link = LinkState::None;
                    session.handle(now(), SessionInput::LinkDown);
                }
                LinkState::None => session.handle(now(), SessionInput::LinkDown),
            },
            SessionOutput::StartRequest(frame) => self.start_request(frame),
            SessionOutput::AbortRequest { request, reason } => {
                if let Some(running) = self.running.remove(&request) {
                    debug!(%request, %reason, "aborting the backend call");
                    running.task.abort();
                }
            }
            SessionOutput::AllowBackendRead { request, up_to } => {
                if let Some(running) = self.running.get(&request) {
                    running.allowance.send_replace(up_to);
                }
            }
            SessionOutput::RefreshModels => self.refresh_models(),
            SessionOutput::Registered {
                worker_id,
                models,
                warnings,
            } => {
                info!(%worker_id, ?models, relay = %self.options.endpoint.connect_url, "registered with the relay");
                for warning in warnings {
                    warn!(%warning, "the relay changed the model list");
                }
            }
            SessionOutput::Reconnecting { after } => {
                info!(
                    after_ms = after.as_millis() as u64,
                    "reconnecting to the relay"
                );
            }
            SessionOutput::Exit => {
                info!("worker stopped");
                return true;
            }
        }
        false
    }

    /// Hands `item` to the link's writer, if a link is up.
    fn enqueue(&mut self, item: Outgoing<WorkerMessage>, session: &mut WorkerSession) {
        if let LinkState::Up { outbound, task, .. } = &self.link {
            match outbound.try_send(item) {
                // Closed: the link's task ended; its reader reports the close.
                Ok(()) | Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(_)) => {
                    error!(
                        "the link's outbound queue is full: backend reads outran the link's writer; dropping the link"
                    );
                    task.abort();
                    self.link_closed("the outbound queue was full", false, session);
                }
            }
        }
    }

    fn dial(&mut self) {
        self.generation += 1;
        let generation = self.generation;
        let dialer = Arc::clone(&self.dialer);
        let events = self.events.clone();
        let options = self.options.clone();
        // The link's queue, and how often its writer wakes the driver: every
        // quarter of a request's read window written.
        let pace = (
            outbound_capacity(&options.session),
            options.session.link_write_window / 4,
        );
        let task = self.tasks.spawn(async move {
            let result = connect(
                &*dialer,
                &options.endpoint,
                &options.secret,
                options.protocol,
                options.limits,
                options.connect_timeout,
                options.quic.as_ref(),
            )
            .await;
            match result {
                Ok(Link::WebSocket(reader, writer, wire, flow)) => {
                    // The session probes a WebSocket itself: a relay's ping cadence is no evidence.
                    let traits = (wire, flow, Liveness::Probed);
                    run_link(reader, writer, traits, generation, pace, events).await
                }
                Ok(Link::Quic(reader, writer)) => {
                    // No window_update crosses QUIC: the relay paces each request's
                    // stream by reading it, and QUIC's stream windows push back here.
                    // Its keep-alives and idle timeout judge whether it is alive.
                    let traits = (WireVersion::V2, LinkFlow::Unwindowed, Liveness::Transport);
                    run_link(reader, writer, traits, generation, pace, events).await
                }
                Err(error) => {
                    let _ = events.send(Event::LinkFailed { generation, error }).await;
                }
            }
        });
        self.link = LinkState::Connecting { generation, task };
    }

    fn on_event(&mut self, event: Event, session: &mut WorkerSession) {
        let current = match &self.link {
            LinkState::None => None,
            LinkState::Connecting { generation, .. } | LinkState::Up { generation, .. } => {
                Some(*generation)
            }
        };
        match event {
            Event::LinkUp {
                generation,
                traits: (wire, flow, liveness),
                outbound,
                progress,
            } => {
                if current != Some(generation) {
                    let _ = outbound.try_send(Outgoing::Close {
                        code: close_code::NORMAL,
                        reason: "stale link".into(),
                    });
                    return;
                }
                debug!(url = %self.options.endpoint.connect_url, ?wire, ?flow, "link open, registering");
                let LinkState::Connecting { task, .. } = &self.link else {
                    return; // a link of this generation is already up
                };
                self.link = LinkState::Up {
                    generation,
                    outbound,
                    progress,
                    closing: false,
                    task: task.clone(),
                };
                session.handle(
                    now(),
                    SessionInput::LinkUp {
                        wire,
                        flow,
                        liveness,
                    },
                );
            }
            Event::LinkFailed { generation, error } => {
                if current == Some(generation) {
                    self.link = LinkState::None;
                    session.handle(now(), link_failed(&error));
                }
            }
            Event::Frame {
                generation,
                message,
            } => {
                if current == Some(generation) {
                    session.handle(now(), SessionInput::Frame(message));
                }
            }
            Event::SignOfLife { generation } => {
                if current == Some(generation) {
                    session.handle(now(), SessionInput::SignOfLife);
                }
            }
            Event::LinkClosed {
                generation,
                cause,
                refused,
            } => {
                if current == Some(generation) {
                    self.link_closed(&cause, refused, session);
                }
            }
            Event::Models(Ok(models)) => session.handle(now(), SessionInput::ModelsChanged(models)),
            Event::Models(Err(error)) => warn!(%error, "cannot re-read the backend's models"),
        }
    }

    /// A backend call reported a chunk, or its end.
    fn on_backend(&mut self, report: SessionInput, session: &mut WorkerSession) {
        if let SessionInput::BackendComplete { request, .. }
        | SessionInput::BackendFailed { request, .. } = &report
        {
            self.running.remove(request);
        }
        session.handle(now(), report);
    }

    /// The current link closed: logged by why, and the session told (a close with
    /// 1008 the worker did not ask for is the relay refusing it).
    fn link_closed(&mut self, cause: &str, refused: bool, session: &mut WorkerSession) {
        let asked = matches!(self.link, LinkState::Up { closing: true, .. });
        let input = if asked {
            debug!(%cause, "link to the relay closed");
            SessionInput::LinkDown
        } else if refused {
            error!(%cause, "{}", RefusalReason::Credentials.advice());
            SessionInput::LinkRefused { retry_after: None }
        } else {
            warn!(%cause, "link to the relay closed");
            SessionInput::LinkDown
        };
        self.link = LinkState::None;
        session.handle(now(), input);
    }

    /// The link's writer handed chunks on: the session hears each request's new total.
    fn link_wrote(&mut self, session: &mut WorkerSession) {
        let LinkState::Up { progress, .. } = &self.link else {
            return;
        };
        for (request, cost) in progress.take() {
            // A request no longer running has no window left to move.
            if let Some(running) = self.running.get_mut(&request) {
                running.written = running.written.saturating_add(cost);
                let total = running.written;
                session.handle(now(), SessionInput::LinkWrote { request, total });
            }
        }
    }

    fn refresh_models(&mut self) {
        match &self.options.models {
            ModelSource::List(_) => {}
            ModelSource::Discover => {
                let backend = Arc::clone(&self.backend);
                let events = self.events.clone();
                self.tasks.spawn(async move {
                    let _ = events
                        .send(Event::Models(list_models(&*backend).await))
                        .await;
                });
            }
        }
    }

    fn start_request(&mut self, frame: Arc<RequestFrame>) {
        let request_id = frame.request_id.clone();
        let backend = Arc::clone(&self.backend);
        let reports = self.backend_reports.clone();
        let limit = self.options.max_response_bytes;
        // Nothing is read until the session's first allowance, which follows at once.
        let (allowance, allowed) = watch::channel(0);
        let task = self.tasks.spawn(async move {
            let result = call_backend(&*backend, &frame, limit, &reports, allowed).await;
            let input = match result {
                Ok(done) => done,
                Err(error) => {
                    let code = match error {
                        BackendError::Unreachable(_) => "backend_unreachable",
                        BackendError::Body(_) => "backend_stream_error",
                        BackendError::Unexpected(_) => "backend_error",
                        BackendError::Refused(_) => endpoint::REFUSED_CODE,
                    };
                    SessionInput::BackendFailed {
                        request: frame.request_id.clone(),
                        code: code.into(),
                        message: error.to_string(),
                    }
                }
            };
            let _ = reports.send(input);
        });
        let running = Running {
            task,
            allowance,
            written: 0,
        };
        self.running.insert(request_id, running);
    }
}

/// What goes to the relay instead of a frame it cannot take (too large, or not text on v1):
/// the failure of that one request, in the form the link's encoding takes, so the
/// link and every other request go on.
fn undeliverable(
    wire: WireVersion,
    message: WorkerMessage,
    error: &LinkError,
) -> Option<WorkerMessage> {
    let request = match &message {
        WorkerMessage::ResponseChunk(chunk) => chunk.request_id.clone(),
        WorkerMessage::ResponseComplete(complete) => complete.request_id.clone(),
        other => {
            warn!(%error, message = ?std::mem::discriminant(other), "a frame for the relay could not be sent");
            return None;
        }
    };
    warn!(%request, %error, "a response could not be sent to the relay; failing the request");
    Some(failure_message(
        Some(wire),
        request,
        "response_undeliverable".into(),
        format!("the response cannot travel on this link: {error}"),
    ))
}

/// Calls the backend for one request; streams SSE bodies chunk by chunk, collects others.
///
/// A streamed body is read only while the cost read so far is below `allowance`:
/// meanwhile nothing reads the backend's socket, and TCP holds the model server back.
///
/// A path that is not an inference endpoint fails this request alone, before
/// the backend is called: the relay gets an `error` frame for it (code
/// [`endpoint::REFUSED_CODE`]), like every other failed backend call.
async fn call_backend(
    backend: &dyn Backend,
    frame: &RequestFrame,
    limit: usize,
    reports: &BackendReports,
    mut allowance: watch::Receiver<u64>,
) -> Result<SessionInput, BackendError> {
    if let Err(refused) = endpoint::check_inference_path(&frame.endpoint_path) {
        // The message escapes the path: no raw control characters reach the log.
        warn!(request = %frame.request_id, %refused, "refusing a request: the relay asked for a path the worker does not call");
        return Err(BackendError::Refused(refused));
    }
    // Whatever the relay sent (a ModelRelay server sends nearly every client
    // header), the backend gets only the listed ones, a request id well formed.
    let headers: Headers = frame
        .headers
        .iter()
        .filter(|(name, value)| forwards_request_header(name, value))
        .collect();
    let response = backend
        .send(BackendRequest {
            method: Method::POST,
            path: frame.endpoint_path.clone(),
            headers,
            body: frame.body.clone(),
        })
        .await?;
    let is_event_stream = response
        .headers
        .get("content-type")
        .is_some_and(|t| t.trim_start().starts_with("text/event-stream"));
    let request = frame.request_id.clone();
    if frame.is_streaming && (200..300).contains(&response.status) && is_event_stream {
        let mut body = response.body;
        let mut read = 0u64;
        loop {
            if allowance.wait_for(|up_to| read < *up_to).await.is_err() {
                return Err(BackendError::Body(
                    "the worker stopped following this request".into(),
                ));
            }
            let Some(chunk) = body.next().await else {
                break;
            };
            let chunk = chunk?;
            read = read.saturating_add(chunk_cost(chunk.len()));
            let _ = reports.send(SessionInput::BackendChunk {
                request: request.clone(),
                chunk,
            });
        }
        return Ok(SessionInput::BackendComplete {
            request,
            status_code: response.status,
            headers: response.headers,
            body: Bytes::new(),
            token_counts: None,
        });
    }
    let body = collect_body(response.body, limit).await?;
    Ok(SessionInput::BackendComplete {
        request,
        status_code: response.status,
        token_counts: token_counts(&response.headers, &body),
        headers: response.headers,
        body,
    })
}

/// Token usage from a JSON body's `usage` (OpenAI or Anthropic field names).
fn token_counts(headers: &Headers, body: &[u8]) -> Option<TokenCounts> {
    #[derive(serde::Deserialize)]
    struct WithUsage {
        usage: Option<BackendUsage>,
    }
    let json = headers
        .get("content-type")
        .is_some_and(|t| t.contains("json"));
    if !json {
        return None;
    }
    let mut counts = serde_json::from_slice::<WithUsage>(body)
        .ok()?
        .usage?
        .counts()?;
    counts.total_tokens = counts
        .total_tokens
        .or_else(|| counts.prompt_tokens?.checked_add(counts.completion_tokens?));
    Some(counts)
}

/// Runs one open link: reports it up, forwards frames, writes the session's messages,
/// and reports it closed. It ends when reading ends, or soon after writing ends
/// (a dead link never answers a close).
async fn run_link<R, W>(
    reader: R,
    writer: W,
    traits: LinkTraits,
    generation: u64,
    (capacity, notify_every): (usize, u64),
    events: mpsc::Sender<Event>,
) where
    R: LinkReader<ServerMessage>,
    W: LinkWriter<WorkerMessage>,
{
    let (outbound, queue) = mpsc::channel(capacity);
    let progress = WriteProgress::new(notify_every);
    let written = {
        let progress = Arc::clone(&progress);
        move |message: &WorkerMessage| progress.wrote(message)
    };
    let _ = events
        .send(Event::LinkUp {
            generation,
            traits,
            outbound,
            progress,
        })
        .await;
    let wire = traits.0;
    let unsendable = move |message, error: &LinkError| undeliverable(wire, message, error);
    let reading = read_link(reader, generation, events.clone());
    tokio::pin!(reading);
    let (cause, refused) = tokio::select! {
        biased;
        ended = &mut reading => ended,
        result = writer.run(queue, unsendable, written) => {
            if let Err(error) = result {
                debug!(%error, "writing to the relay failed");
            }
            match tokio::time::timeout(LINK_CLOSE_WAIT, &mut reading).await {
                Ok(ended) => ended,
                Err(_) => ("the relay did not answer the close: link dead".to_owned(), false),
            }
        }
    };
    let _ = events
        .send(Event::LinkClosed {
            generation,
            cause,
            refused,
        })
        .await;
}

/// Forwards a link's frames and signs of life until it ends; says why it ended
/// and whether the relay refused us.
async fn read_link<R: LinkReader<ServerMessage>>(
    mut reader: R,
    generation: u64,
    events: mpsc::Sender<Event>,
) -> (String, bool) {
    loop {
        let event = match reader.next_heard().await {
            Some(Ok(Heard::Message(message))) => Event::Frame {
                generation,
                message,
            },
            Some(Ok(Heard::SignOfLife)) => Event::SignOfLife { generation },
            Some(Err(error)) => return (error.to_string(), false),
            None => {
                return match reader.close_frame() {
                    Some((code, reason)) => (
                        format!("closed by the relay ({code}: {reason})"),
                        code == close_code::POLICY_VIOLATION,
                    ),
                    None => ("connection lost".to_owned(), false),
                };
            }
        };
        if send_or_wait(&events, event).await.is_err() {
            return ("worker stopped".to_owned(), false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json() -> Headers {
        [("content-type", "application/json")].into_iter().collect()
    }

    /// A backend that counts its calls and fails each one.
    #[derive(Default)]
    struct CountingBackend(std::sync::atomic::AtomicUsize);

    impl Backend for CountingBackend {
        fn send(&self, _: BackendRequest) -> crate::backend::BackendFuture {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Box::pin(async { Err(BackendError::Unreachable("a counted call".into())) })
        }
    }

    fn request_for(path: &str) -> RequestFrame {
        RequestFrame {
            request_id: "req-1".into(),
            model: "m".into(),
            endpoint_path: path.into(),
            is_streaming: false,
            body: Bytes::from_static(b"{}"),
            headers: Headers::new(),
        }
    }

    #[tokio::test]
    async fn a_request_for_a_path_that_is_not_an_inference_endpoint_fails_without_calling_the_backend()
     {
        let backend = CountingBackend::default();
        let (reports, _inbox) = mpsc::unbounded_channel();
        let (_allowance, allowed) = watch::channel(u64::MAX);
        for path in [
            "/api/delete",
            "@evil.example/v1/chat/completions",
            "/v1/models",
        ] {
            let result = call_backend(
                &backend,
                &request_for(path),
                1024,
                &reports,
                allowed.clone(),
            )
            .await;
            assert!(
                matches!(&result, Err(BackendError::Refused(_))),
                "{path}: {:?}",
                result.err()
            );
        }
        assert_eq!(backend.0.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// A backend that keeps the headers of the last request it got, and answers 200.
    #[derive(Default)]
    struct HeaderRecorder(std::sync::Mutex<Option<Headers>>);

    impl Backend for HeaderRecorder {
        fn send(&self, request: BackendRequest) -> crate::backend::BackendFuture {
            *self.0.lock().unwrap() = Some(request.headers);
            Box::pin(async {
                Ok(crate::backend::BackendResponse {
                    status: 200,
                    headers: json(),
                    body: Box::pin(futures_util::stream::empty()),
                })
            })
        }
    }

    #[tokio::test]
    async fn the_backend_gets_only_the_listed_headers_and_a_well_formed_request_id() {
        let (reports, _inbox) = mpsc::unbounded_channel();
        let (_allowance, allowed) = watch::channel(u64::MAX);
        let sent = |request_id: &str| {
            let mut frame = request_for("/v1/chat/completions");
            frame.headers = [
                ("Authorization", "Bearer backend-key"),
                ("openai-project", "proj_1"),
                ("openai-beta", "assistants=v2"),
                (
                    "traceparent",
                    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ),
                ("tracestate", "congo=t61rcWkgMzE"),
                ("x-request-id", request_id),
                // What a ModelRelay server also passes on.
                ("cookie", "session=1"),
                ("x-forwarded-for", "10.0.0.1"),
            ]
            .into_iter()
            .collect();
            frame
        };
        let backend = HeaderRecorder::default();
        call_backend(&backend, &sent("client-7"), 1024, &reports, allowed.clone())
            .await
            .unwrap();
        let got = backend.0.lock().unwrap().take().unwrap();
        let names: Vec<&str> = got.iter().map(|(name, _)| name).collect();
        assert_eq!(
            names,
            [
                "Authorization",
                "openai-project",
                "openai-beta",
                "traceparent",
                "tracestate",
                "x-request-id"
            ]
        );
        assert_eq!(got.get("x-request-id"), Some("client-7"));
        let too_long = "r".repeat(129);
        call_backend(&backend, &sent(&too_long), 1024, &reports, allowed)
            .await
            .unwrap();
        let got = backend.0.lock().unwrap().take().unwrap();
        assert_eq!(got.get("x-request-id"), None);
        assert_eq!(got.len(), 5);
    }

    /// A backend that streams 100-byte SSE chunks without end, counting those pulled.
    struct EndlessStream(Arc<std::sync::atomic::AtomicU64>);

    impl Backend for EndlessStream {
        fn send(&self, _: BackendRequest) -> crate::backend::BackendFuture {
            let pulled = Arc::clone(&self.0);
            let body = futures_util::stream::repeat_with(move || {
                pulled.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                Ok(Bytes::from(vec![b'x'; 100]))
            });
            Box::pin(async move {
                Ok(crate::backend::BackendResponse {
                    status: 200,
                    headers: [("content-type", "text/event-stream")]
                        .into_iter()
                        .collect(),
                    body: Box::pin(body),
                })
            })
        }
    }

    #[tokio::test]
    async fn a_streamed_body_is_read_only_up_to_the_allowance() {
        let pulled = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let backend = EndlessStream(Arc::clone(&pulled));
        let mut frame = request_for("/v1/chat/completions");
        frame.is_streaming = true;
        let (reports, mut inbox) = mpsc::unbounded_channel();
        let per_chunk = chunk_cost(100);
        let (allowance, allowed) = watch::channel(10 * per_chunk);
        let call =
            tokio::spawn(
                async move { call_backend(&backend, &frame, 1024, &reports, allowed).await },
            );
        let mut chunks = 0;
        let mut take = async |until: u64| {
            while chunks < until {
                match inbox.recv().await {
                    Some(SessionInput::BackendChunk { .. }) => chunks += 1,
                    _ => panic!("only chunks are reported"),
                }
            }
            // Nothing further comes while the allowance stands.
            let more = tokio::time::timeout(Duration::from_millis(100), inbox.recv()).await;
            assert!(more.is_err(), "read past the allowance");
        };
        take(10).await;
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 10);
        // Any growth lets it read on; a cost part-way into a chunk allows that chunk.
        allowance.send_replace(15 * per_chunk + 1);
        take(16).await;
        assert_eq!(pulled.load(std::sync::atomic::Ordering::SeqCst), 16);
        call.abort();
    }

    #[test]
    fn token_counts_come_from_openai_and_anthropic_usage() {
        let openai = br#"{"usage":{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}}"#;
        assert_eq!(
            token_counts(&json(), openai),
            Some(TokenCounts {
                prompt_tokens: Some(3),
                completion_tokens: Some(5),
                total_tokens: Some(8)
            })
        );
        let anthropic = br#"{"type":"message","usage":{"input_tokens":4,"output_tokens":6}}"#;
        assert_eq!(
            token_counts(&json(), anthropic),
            Some(TokenCounts {
                prompt_tokens: Some(4),
                completion_tokens: Some(6),
                total_tokens: Some(10)
            })
        );
        assert_eq!(token_counts(&json(), b"{}"), None);
        assert_eq!(token_counts(&Headers::new(), openai), None);
    }
}

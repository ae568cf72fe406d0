//! The worker's driver: runs the [`WorkerSession`] against real links and a backend.
//!
//! One task owns the session. It holds a link per relay (one per address a
//! relay's name resolves to, with `resolve_relays`). Link reader/writer tasks
//! and one task per backend call report back over a bounded channel (they wait
//! for room; the driver itself never does); the session's outputs are carried
//! out right after each event. A backend call reads its backend only as far as the session allows
//! (`SessionOutput::AllowBackendRead`), which follows what the link's writer has
//! handed on: a link that stops taking frames stops the backend reads, and TCP
//! holds the model server back.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use modelrelay_core::LinkId;
use modelrelay_core::session::{
    CHUNK_COST_OVERHEAD, LinkRequest, Liveness, SessionConfig, SessionInput, SessionOutput,
    WorkerSession,
};
use modelrelay_core::wire::{
    FrameLimits, LinkFlow, RequestFrame, ServerMessage, WireVersion, WorkerMessage,
};
use modelrelay_transports::{LINK_CLOSE_WAIT, Outgoing, close_code};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, error, info, warn};

use crate::backend::{Backend, BackendError, list_models};
use crate::backend_call::{BackendReports, call_backend, failure_code};
use crate::link::{
    ConnectError, Dialer, Link, ProtocolChoice, RefusalReason, Refused, RelayEndpoint, connect,
};
use crate::link_task::run_link;
use crate::progress::WriteProgress;

/// Events waiting for the driver; whoever reports one waits for room.
const INBOX: usize = 256;

/// Backend reports the driver takes per wake-up before it looks at its other inputs.
const BACKEND_BATCH: usize = 64;

/// How often relay names are resolved again when `resolve_relays` is on.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(10);

/// How long one resolution of a relay's name may take.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most links one relay name may get with `resolve_relays`: a broken or
/// hostile DNS answer cannot make the worker open thousands of links.
pub const MAX_ADDRESSES_PER_NAME: usize = 64;

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
    /// The relays to serve, a link to each; requests from all share the slots.
    pub relays: Vec<RelayEndpoint>,
    /// Link to every address each relay's host name resolves to (a Kubernetes
    /// headless Service), resolving again every [`RESOLVE_EVERY`]; else dial
    /// each relay by its name.
    pub resolve_relays: bool,
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
    /// Where to report the link state as it changes (`None`: nobody asks; the
    /// desktop app shows it in its tray).
    pub status: Option<watch::Sender<WorkerStatus>>,
}

/// The worker's state as a watcher sees it, sent only when it changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerStatus {
    /// Links the worker keeps (one per relay, or per address with `resolve_relays`).
    pub relays: usize,
    /// Of those, the links that are open.
    pub links_up: usize,
    /// Backend calls running.
    pub running: usize,
}

impl WorkerOptions {
    /// Options for one relay, with the defaults of the `modelrelay-worker` command.
    pub fn new(endpoint: RelayEndpoint, secret: String, models: ModelSource) -> Self {
        Self {
            relays: vec![endpoint],
            resolve_relays: false,
            secret,
            session: SessionConfig::default(),
            models,
            models_poll_interval: None,
            protocol: ProtocolChoice::Auto,
            limits: FrameLimits::default(),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024 * 1024,
            quic: None,
            status: None,
        }
    }
}

/// A dial that failed, as the session hears of it (logged on the way): the
/// relay's refusal (see [`ConnectError::refused`]; a 429's `Retry-After` is
/// followed by the next attempt) as a refusal, like a close with 1008;
/// anything else as a link down.
fn link_failed(link: LinkId, error: &ConnectError, relay: &str) -> SessionInput {
    if let Some(Refused { why, retry_after }) = error.refused() {
        let retry_after_secs = retry_after.map(|after| after.as_secs());
        error!(%error, ?retry_after_secs, %relay, "{}", why.advice());
        return SessionInput::LinkRefused { link, retry_after };
    }
    warn!(%error, %relay, "cannot connect to the relay");
    SessionInput::LinkDown { link }
}

/// How a link speaks and who judges whether it is alive.
pub(crate) type LinkTraits = (WireVersion, LinkFlow, Liveness);

/// Which link, and which attempt at it, an event is about: a late event from
/// an earlier attempt is told apart by its generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LinkTag {
    pub(crate) link: LinkId,
    pub(crate) generation: u64,
}

/// Something a helper task reports to the driver.
pub(crate) enum Event {
    LinkUp {
        tag: LinkTag,
        traits: LinkTraits,
        outbound: mpsc::Sender<Outgoing<WorkerMessage>>,
    },
    LinkFailed {
        tag: LinkTag,
        error: ConnectError,
    },
    Frame {
        tag: LinkTag,
        message: ServerMessage,
    },
    SignOfLife {
        tag: LinkTag,
    },
    LinkClosed {
        tag: LinkTag,
        cause: String,
        refused: bool,
    },
    Models(Result<Vec<String>, BackendError>),
    /// The addresses relay `relay` (an index into `WorkerOptions::relays`) resolves to.
    Resolved {
        relay: usize,
        addresses: std::io::Result<Vec<SocketAddr>>,
    },
}

/// One link's connection, from the driver's side.
enum Connection {
    None,
    Connecting {
        generation: u64,
        task: AbortHandle,
    },
    Up {
        generation: u64,
        outbound: mpsc::Sender<Outgoing<WorkerMessage>>,
        /// The worker asked for the close itself.
        closing: bool,
        /// The link's task, to end it if a close never completes.
        task: AbortHandle,
    },
}

impl Connection {
    /// The attempt it is at, if any.
    fn generation(&self) -> Option<u64> {
        match self {
            Self::None => None,
            Self::Connecting { generation, .. } | Self::Up { generation, .. } => Some(*generation),
        }
    }
}

/// One relay's link: where it goes and its connection.
struct RelayLink {
    endpoint: RelayEndpoint,
    /// Which of `WorkerOptions::relays` it serves, and the address it was
    /// resolved to (with `resolve_relays`).
    origin: (usize, Option<SocketAddr>),
    connection: Connection,
}

/// Runs a worker until it has shut down: `shutdown` resolving starts a graceful stop
/// (finish running requests, then exit).
///
/// Every task it starts (links, backend calls) belongs to it: dropping the
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
    // How often a writer wakes the driver: every quarter of a request's read window written.
    let progress = WriteProgress::new(session_config.link_write_window / 4);
    let mut session = WorkerSession::new(session_config);
    let mut driver = Driver {
        options,
        dialer,
        backend,
        events,
        backend_reports,
        progress,
        links: HashMap::new(),
        resolving: 0,
        generation: 0,
        running: HashMap::new(),
        tasks: JoinSet::new(),
    };
    driver.add_relays(&mut session);
    let mut poll = driver.options.models_poll_interval.map(every);
    let mut resolve = driver.options.resolve_relays.then(|| every(RESOLVE_EVERY));
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stopping = false;
    loop {
        while let Some(output) = session.poll_output() {
            if driver.carry_out(output, &mut session) {
                return;
            }
        }
        driver.report_status();
        let deadline = session.poll_timeout().map(tokio::time::Instant::from_std);
        let progress = Arc::clone(&driver.progress);
        tokio::select! {
            Some(event) = inbox.recv() => driver.on_event(event, &mut session),
            Some(report) = reports.recv() => {
                driver.on_backend(report, &mut session);
                for _ in 1..BACKEND_BATCH {
                    let Ok(report) = reports.try_recv() else { break };
                    driver.on_backend(report, &mut session);
                }
            }
            () = progress.changed() => driver.link_wrote(&mut session),
            () = sleep_until(deadline) => session.handle_timeout(now()),
            () = &mut shutdown, if !stopping => {
                stopping = true;
                info!("shutting down: finishing running requests");
                session.handle(now(), SessionInput::Shutdown);
            }
            _ = tick(&mut poll) => driver.refresh_models(),
            _ = tick(&mut resolve), if !stopping => driver.resolve_all(),
            Some(_) = driver.tasks.join_next(), if !driver.tasks.is_empty() => {}
        }
    }
}

/// An interval that first fires one period from now and never bursts.
fn every(period: Duration) -> tokio::time::Interval {
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval
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
    /// What every link's writer has handed on.
    progress: Arc<WriteProgress>,
    /// The links, by the session's ids. One is forgotten once the session
    /// retired it and it is down.
    links: HashMap<LinkId, RelayLink>,
    /// Resolutions of relay names under way.
    resolving: usize,
    generation: u64,
    running: HashMap<LinkRequest, Running>,
    /// Everything this driver started; dropped with it.
    tasks: JoinSet<()>,
}

impl<D: Dialer> Driver<D> {
    /// A link per relay, or with `resolve_relays`, a first resolution of each
    /// relay's name (its links follow when the addresses come in).
    fn add_relays(&mut self, session: &mut WorkerSession) {
        if self.options.resolve_relays {
            self.resolve_all();
            return;
        }
        for (relay, endpoint) in self.options.relays.clone().into_iter().enumerate() {
            self.add_link(session, endpoint, (relay, None));
        }
    }

    fn add_link(
        &mut self,
        session: &mut WorkerSession,
        endpoint: RelayEndpoint,
        origin: (usize, Option<SocketAddr>),
    ) {
        let link = session.add_link();
        if !session.has_link(link) {
            return; // the worker is stopping: no new links
        }
        info!(%link, relay = %endpoint.connect_url, address = ?origin.1, "linking to a relay");
        self.links.insert(
            link,
            RelayLink {
                endpoint,
                origin,
                connection: Connection::None,
            },
        );
    }

    /// Resolves every relay's host name again, in the background (unless the
    /// last resolution is still under way: answers never arrive out of order).
    fn resolve_all(&mut self) {
        if self.resolving > 0 {
            return;
        }
        self.resolving = self.options.relays.len();
        for (relay, endpoint) in self.options.relays.iter().enumerate() {
            let (dialer, events, endpoint) = (
                Arc::clone(&self.dialer),
                self.events.clone(),
                endpoint.clone(),
            );
            self.tasks.spawn(async move {
                let addresses = tokio::time::timeout(RESOLVE_TIMEOUT, dialer.resolve(&endpoint))
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the name did not resolve in time",
                        ))
                    });
                let _ = events.send(Event::Resolved { relay, addresses }).await;
            });
        }
    }

    /// A relay's name resolved: a link to each new address, and the links to
    /// addresses it no longer has retired. A failed or empty answer changes
    /// nothing (a DNS hiccup must not drop every relay).
    fn on_resolved(
        &mut self,
        relay: usize,
        addresses: std::io::Result<Vec<SocketAddr>>,
        session: &mut WorkerSession,
    ) {
        let endpoint = self.options.relays[relay].clone();
        let addresses: HashSet<SocketAddr> = match addresses {
            Ok(mut addresses) if !addresses.is_empty() => {
                addresses.sort();
                addresses.dedup();
                if addresses.len() > MAX_ADDRESSES_PER_NAME {
                    warn!(
                        relay = %endpoint.connect_url,
                        addresses = addresses.len(),
                        kept = MAX_ADDRESSES_PER_NAME,
                        "the relay's name has more addresses than the worker links to; keeping the lowest"
                    );
                    addresses.truncate(MAX_ADDRESSES_PER_NAME);
                }
                addresses.into_iter().collect()
            }
            Ok(_) => {
                warn!(relay = %endpoint.connect_url, "the relay's name has no address; keeping its links");
                return;
            }
            Err(error) => {
                warn!(relay = %endpoint.connect_url, %error, "cannot resolve the relay's name; keeping its links");
                return;
            }
        };
        let mut known = HashSet::new();
        for (link, record) in &self.links {
            let (origin, address) = record.origin;
            let Some(address) = address.filter(|_| origin == relay) else {
                continue;
            };
            if addresses.contains(&address) {
                known.insert(address);
            } else {
                info!(%link, %address, "the relay's name no longer has this address; retiring its link");
                session.retire_link(*link);
            }
        }
        // A link retired while down is gone at once; its address, if it
        // returns, gets a new link.
        self.links.retain(|link, _| session.has_link(*link));
        let mut new: Vec<SocketAddr> = addresses.difference(&known).copied().collect();
        new.sort();
        for address in new {
            let mut at = endpoint.clone();
            at.address = Some(address);
            self.add_link(session, at, (relay, Some(address)));
        }
    }

    /// Carries out one session output; returns whether the worker is done.
    fn carry_out(&mut self, output: SessionOutput, session: &mut WorkerSession) -> bool {
        match output {
            SessionOutput::Connect { link } => self.dial(link),
            SessionOutput::Send { link, message } => {
                self.enqueue(link, Outgoing::Message(message), session)
            }
            SessionOutput::ProbeLink { link } => self.enqueue(link, Outgoing::Probe, session),
            SessionOutput::CloseLink { link } => self.close(link, session),
            SessionOutput::StartRequest { request, frame } => self.start_request(request, frame),
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
                link,
                worker_id,
                models,
                warnings,
            } => {
                let relay = self.relay_url(link);
                info!(%worker_id, ?models, %relay, "registered with the relay");
                for warning in warnings {
                    warn!(%warning, %relay, "the relay changed the model list");
                }
            }
            SessionOutput::Reconnecting { link, after } => {
                let relay = self.relay_url(link);
                let after_ms = after.as_millis() as u64;
                info!(after_ms, %relay, "reconnecting to the relay");
            }
            SessionOutput::Exit => {
                info!("worker stopped");
                return true;
            }
        }
        false
    }

    /// Tells the status watcher, if any, the link state when it changed: a
    /// count over the few links, no message when nothing changed.
    fn report_status(&self) {
        let Some(status) = &self.options.status else {
            return;
        };
        let now = WorkerStatus {
            relays: self.links.len(),
            links_up: self
                .links
                .values()
                .filter(|record| matches!(record.connection, Connection::Up { .. }))
                .count(),
            running: self.running.len(),
        };
        status.send_if_modified(|shown| {
            let changed = *shown != now;
            *shown = now;
            changed
        });
    }

    /// The URL of a link's relay, for logs.
    fn relay_url(&self, link: LinkId) -> String {
        self.links
            .get(&link)
            .map_or_else(String::new, |record| match record.origin.1 {
                Some(address) => format!("{} ({address})", record.endpoint.connect_url),
                None => record.endpoint.connect_url.clone(),
            })
    }

    /// Closes a link at the session's word.
    fn close(&mut self, link: LinkId, session: &mut WorkerSession) {
        let Some(record) = self.links.get_mut(&link) else {
            session.handle(now(), SessionInput::LinkDown { link });
            return;
        };
        match &mut record.connection {
            // The reader reports the close when the relay answers it.
            Connection::Up {
                generation,
                outbound,
                closing,
                task,
            } => {
                *closing = true;
                // A full queue cannot take the close: the watch below ends the link.
                let _ = outbound.try_send(Outgoing::Close {
                    code: close_code::NORMAL,
                    reason: "worker closing".into(),
                });
                // On a dead link the close may sit behind frames that never drain:
                // past the linger, end the link's task and report it closed.
                let tag = LinkTag {
                    link,
                    generation: *generation,
                };
                let (task, events) = (task.clone(), self.events.clone());
                self.tasks.spawn(async move {
                    tokio::time::sleep(LINK_CLOSE_WAIT * 2).await;
                    if !task.is_finished() {
                        task.abort();
                        let cause = "the close did not complete: link dead".into();
                        let closed = Event::LinkClosed {
                            tag,
                            cause,
                            refused: false,
                        };
                        let _ = events.send(closed).await;
                    }
                });
            }
            Connection::Connecting { task, .. } => {
                task.abort();
                record.connection = Connection::None;
                self.link_down(link, SessionInput::LinkDown { link }, session);
            }
            Connection::None => self.link_down(link, SessionInput::LinkDown { link }, session),
        }
    }

    /// Hands `item` to a link's writer, if the link is up.
    fn enqueue(
        &mut self,
        link: LinkId,
        item: Outgoing<WorkerMessage>,
        session: &mut WorkerSession,
    ) {
        let Some(RelayLink {
            connection: Connection::Up { outbound, task, .. },
            ..
        }) = self.links.get(&link)
        else {
            return;
        };
        match outbound.try_send(item) {
            // Closed: the link's task ended; its reader reports the close.
            Ok(()) | Err(TrySendError::Closed(_)) => {}
            Err(TrySendError::Full(_)) => {
                error!(
                    relay = %self.relay_url(link),
                    "the link's outbound queue is full: backend reads outran the link's writer; dropping the link"
                );
                task.abort();
                self.link_closed(link, "the outbound queue was full", false, session);
            }
        }
    }

    fn dial(&mut self, link: LinkId) {
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        self.generation += 1;
        let tag = LinkTag {
            link,
            generation: self.generation,
        };
        let dialer = Arc::clone(&self.dialer);
        let events = self.events.clone();
        let options = self.options.clone();
        let endpoint = record.endpoint.clone();
        // The link's queue, and the board its writer reports to.
        let capacity = outbound_capacity(&options.session);
        let progress = Arc::clone(&self.progress);
        let task = self.tasks.spawn(async move {
            let result = connect(
                &*dialer,
                &endpoint,
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
                    run_link((reader, writer), traits, tag, (capacity, progress), events).await
                }
                Ok(Link::Quic(reader, writer)) => {
                    // No window_update crosses QUIC: the relay paces each request's
                    // stream by reading it, and QUIC's stream windows push back here.
                    // Its keep-alives and idle timeout judge whether it is alive.
                    let traits = (WireVersion::V2, LinkFlow::Unwindowed, Liveness::Transport);
                    run_link((reader, writer), traits, tag, (capacity, progress), events).await
                }
                Err(error) => {
                    let _ = events.send(Event::LinkFailed { tag, error }).await;
                }
            }
        });
        record.connection = Connection::Connecting {
            generation: tag.generation,
            task,
        };
    }

    /// Whether an event is about a link's current attempt.
    fn current(&self, tag: LinkTag) -> bool {
        self.links
            .get(&tag.link)
            .is_some_and(|record| record.connection.generation() == Some(tag.generation))
    }

    fn on_event(&mut self, event: Event, session: &mut WorkerSession) {
        match event {
            Event::LinkUp {
                tag,
                traits,
                outbound,
            } => self.link_up(tag, traits, outbound, session),
            Event::LinkFailed { tag, error } => {
                if self.current(tag) {
                    let input = link_failed(tag.link, &error, &self.relay_url(tag.link));
                    self.link_down(tag.link, input, session);
                }
            }
            Event::Frame { tag, message } => {
                if self.current(tag) {
                    let link = tag.link;
                    session.handle(now(), SessionInput::Frame { link, message });
                }
            }
            Event::SignOfLife { tag } => {
                if self.current(tag) {
                    session.handle(now(), SessionInput::SignOfLife { link: tag.link });
                }
            }
            Event::LinkClosed {
                tag,
                cause,
                refused,
            } => {
                if self.current(tag) {
                    self.link_closed(tag.link, &cause, refused, session);
                }
            }
            Event::Models(Ok(models)) => session.handle(now(), SessionInput::ModelsChanged(models)),
            Event::Models(Err(error)) => warn!(%error, "cannot re-read the backend's models"),
            Event::Resolved { relay, addresses } => {
                self.resolving = self.resolving.saturating_sub(1);
                self.on_resolved(relay, addresses, session);
            }
        }
    }

    /// A dial completed: the link registers, unless it is stale.
    fn link_up(
        &mut self,
        tag: LinkTag,
        (wire, flow, liveness): LinkTraits,
        outbound: mpsc::Sender<Outgoing<WorkerMessage>>,
        session: &mut WorkerSession,
    ) {
        let url = self.relay_url(tag.link);
        let record = self.links.get_mut(&tag.link);
        let Some(record) = record.filter(|r| r.connection.generation() == Some(tag.generation))
        else {
            let _ = outbound.try_send(Outgoing::Close {
                code: close_code::NORMAL,
                reason: "stale link".into(),
            });
            return;
        };
        let Connection::Connecting { task, .. } = &record.connection else {
            return; // a link of this generation is already up
        };
        debug!(%url, ?wire, ?flow, "link open, registering");
        record.connection = Connection::Up {
            generation: tag.generation,
            outbound,
            closing: false,
            task: task.clone(),
        };
        let link = tag.link;
        let input = SessionInput::LinkUp {
            link,
            wire,
            flow,
            liveness,
        };
        session.handle(now(), input);
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

    /// A link closed: logged by why, and the session told (a close with 1008
    /// the worker did not ask for is the relay refusing it).
    fn link_closed(
        &mut self,
        link: LinkId,
        cause: &str,
        refused: bool,
        session: &mut WorkerSession,
    ) {
        let relay = self.relay_url(link);
        let asked = self.links.get(&link).is_some_and(|record| {
            matches!(record.connection, Connection::Up { closing: true, .. })
        });
        let input = if asked {
            debug!(%cause, %relay, "link to the relay closed");
            SessionInput::LinkDown { link }
        } else if refused {
            error!(%cause, %relay, "{}", RefusalReason::Credentials.advice());
            SessionInput::LinkRefused {
                link,
                retry_after: None,
            }
        } else {
            warn!(%cause, %relay, "link to the relay closed");
            SessionInput::LinkDown { link }
        };
        self.link_down(link, input, session);
    }

    /// A link is down: the session hears it, and a link it no longer keeps (retired) is forgotten.
    fn link_down(&mut self, link: LinkId, input: SessionInput, session: &mut WorkerSession) {
        if let Some(record) = self.links.get_mut(&link) {
            record.connection = Connection::None;
        }
        // What its writer noted belongs to requests that ended with it; the
        // relay may reuse their ids once the link is back.
        self.progress.forget_link(link);
        session.handle(now(), input);
        if !session.has_link(link) {
            self.links.remove(&link);
        }
    }

    /// The links' writers handed chunks on: the session hears each request's new total.
    fn link_wrote(&mut self, session: &mut WorkerSession) {
        for (request, cost) in self.progress.take() {
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

    fn start_request(&mut self, request: LinkRequest, frame: Arc<RequestFrame>) {
        let backend = Arc::clone(&self.backend);
        let reports = self.backend_reports.clone();
        let limit = self.options.max_response_bytes;
        // Nothing is read until the session's first allowance, which follows at once.
        let (allowance, allowed) = watch::channel(0);
        let key = request.clone();
        let task = self.tasks.spawn(async move {
            let result =
                call_backend(&*backend, (&request, &frame), limit, &reports, allowed).await;
            let input = match result {
                Ok(done) => done,
                Err(error) => SessionInput::BackendFailed {
                    request,
                    code: failure_code(&error).into(),
                    message: error.to_string(),
                },
            };
            let _ = reports.send(input);
        });
        let running = Running {
            task,
            allowance,
            written: 0,
        };
        self.running.insert(key, running);
    }
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;
    use crate::backend::{BackendFuture, BackendRequest};

    /// A dialer whose dials never complete: links stay connecting.
    struct NeverDials;

    impl Dialer for NeverDials {
        type Stream = tokio::net::TcpStream;

        async fn dial(&self, _: &RelayEndpoint) -> io::Result<Self::Stream> {
            std::future::pending().await
        }

        async fn quic(&self, _: &RelayEndpoint) -> io::Result<(quinn::Endpoint, SocketAddr)> {
            std::future::pending().await
        }
    }

    /// A backend never called here.
    struct Unused;

    impl Backend for Unused {
        fn send(&self, _: BackendRequest) -> BackendFuture {
            Box::pin(async { Err(BackendError::Unreachable("not called".into())) })
        }
    }

    fn driver() -> (Driver<NeverDials>, WorkerSession) {
        let endpoint = RelayEndpoint::parse("http://relays.internal:8080", "local").unwrap();
        let mut options = WorkerOptions::new(endpoint, "s".into(), ModelSource::List(vec![]));
        options.resolve_relays = true;
        let (events, _) = mpsc::channel(1);
        let (backend_reports, _) = mpsc::unbounded_channel();
        let driver = Driver {
            options,
            dialer: Arc::new(NeverDials),
            backend: Arc::new(Unused),
            events,
            backend_reports,
            progress: WriteProgress::new(1),
            links: HashMap::new(),
            resolving: 0,
            generation: 0,
            running: HashMap::new(),
            tasks: JoinSet::new(),
        };
        (driver, WorkerSession::new(SessionConfig::default()))
    }

    /// Carries out the session's outputs, as the run loop does.
    fn settle(driver: &mut Driver<NeverDials>, session: &mut WorkerSession) {
        while let Some(output) = session.poll_output() {
            driver.carry_out(output, session);
        }
    }

    /// The addresses the driver has links to.
    fn linked(driver: &Driver<NeverDials>) -> Vec<SocketAddr> {
        let mut addresses: Vec<SocketAddr> = driver
            .links
            .values()
            .filter_map(|link| link.endpoint.address)
            .collect();
        addresses.sort();
        addresses
    }

    #[tokio::test]
    async fn the_status_watcher_hears_the_link_count_only_when_it_changes() {
        let (mut driver, mut session) = driver();
        let (sender, mut status) = watch::channel(WorkerStatus::default());
        driver.options.status = Some(sender);
        driver.report_status();
        assert!(
            !status.has_changed().unwrap(),
            "nothing changed: no message"
        );
        let [a, b]: [SocketAddr; 2] =
            ["10.0.0.1:8080", "10.0.0.2:8080"].map(|a| a.parse().unwrap());
        driver.on_resolved(0, Ok(vec![a, b]), &mut session);
        settle(&mut driver, &mut session);
        driver.report_status();
        assert!(status.has_changed().unwrap());
        let seen = *status.borrow_and_update();
        // Two links, both still dialing: none up, nothing running.
        let expected = WorkerStatus {
            relays: 2,
            links_up: 0,
            running: 0,
        };
        assert_eq!(seen, expected);
        driver.report_status();
        assert!(
            !status.has_changed().unwrap(),
            "the same state is not sent again"
        );
    }

    #[tokio::test]
    async fn a_relay_name_gets_a_link_per_address_and_follows_its_dns_answers() {
        let (mut driver, mut session) = driver();
        let [a, b, c]: [SocketAddr; 3] =
            ["10.0.0.1:8080", "10.0.0.2:8080", "10.0.0.3:8080"].map(|a| a.parse().unwrap());
        driver.on_resolved(0, Ok(vec![b, a]), &mut session);
        settle(&mut driver, &mut session);
        assert_eq!(linked(&driver), [a, b]);
        // Each link dials its own address and still names the relay by its host.
        for link in driver.links.values() {
            assert_eq!(link.endpoint.host, "relays.internal");
            assert!(matches!(link.connection, Connection::Connecting { .. }));
        }
        // The same answer again changes nothing; a failed or empty one neither.
        driver.on_resolved(0, Ok(vec![a, b]), &mut session);
        driver.on_resolved(0, Err(io::Error::other("SERVFAIL")), &mut session);
        driver.on_resolved(0, Ok(vec![]), &mut session);
        settle(&mut driver, &mut session);
        assert_eq!(linked(&driver), [a, b]);
        // An address that left is retired (here at once: its link was never up);
        // a new one gets a link.
        driver.on_resolved(0, Ok(vec![b, c]), &mut session);
        settle(&mut driver, &mut session);
        assert_eq!(linked(&driver), [b, c]);
        assert_eq!(driver.links.len(), 2);
        for link in driver.links.keys() {
            assert!(session.has_link(*link));
        }
        // However many addresses a name has, it gets at most so many links.
        let many: Vec<SocketAddr> = (0..1000u16)
            .map(|n| SocketAddr::from(([10, 1, (n >> 8) as u8, n as u8], 8080)))
            .collect();
        driver.on_resolved(0, Ok(many), &mut session);
        settle(&mut driver, &mut session);
        assert_eq!(driver.links.len(), MAX_ADDRESSES_PER_NAME);
    }

    #[tokio::test]
    async fn an_address_that_leaves_while_its_link_is_down_is_linked_again_when_it_returns() {
        let (mut driver, mut session) = driver();
        let [a, b]: [SocketAddr; 2] =
            ["10.0.0.1:8080", "10.0.0.2:8080"].map(|a| a.parse().unwrap());
        driver.on_resolved(0, Ok(vec![a, b]), &mut session);
        settle(&mut driver, &mut session);
        let (link_a, _) = driver
            .links
            .iter()
            .find(|(_, record)| record.endpoint.address == Some(a))
            .unwrap();
        let link_a = *link_a;
        // Relay a's link goes down (its pod crashed), then its address leaves DNS.
        driver.link_down(
            link_a,
            SessionInput::LinkDown { link: link_a },
            &mut session,
        );
        settle(&mut driver, &mut session);
        driver.on_resolved(0, Ok(vec![b]), &mut session);
        settle(&mut driver, &mut session);
        assert!(!session.has_link(link_a));
        assert_eq!(
            linked(&driver),
            [b],
            "no record is left of the retired link"
        );
        // The pod restarts with the same address: it gets a new link.
        driver.on_resolved(0, Ok(vec![a, b]), &mut session);
        settle(&mut driver, &mut session);
        assert_eq!(linked(&driver), [a, b]);
        for link in driver.links.keys() {
            assert!(session.has_link(*link));
        }
    }
}

//! A simulated world: one relay (or several), workers, their backends, clients,
//! and the faults a test injects.

use std::collections::BTreeMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelrelay_core::DEFAULT_PROVIDER;
use modelrelay_core::backoff::BackoffConfig;
use modelrelay_core::session::SessionConfig;
use modelrelay_relay::ServerConfig;
use modelrelay_testkit::simulated_backend::{
    BackendEvent, SimulatedBackend, SimulatedBackendConfig,
};
use modelrelay_transports::quic;
use modelrelay_transports::tls::{RelayIdentity, Trust, parse_fingerprint};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::RelayEndpoint;
use modelrelay_worker::{ModelSource, WorkerOptions};
use tokio_util::sync::CancellationToken;
use turmoil::Sim;

use crate::client::{self, Ask, Outcome};
use crate::net::{SimConnector, SimDialer, SimListener, listen};
use crate::quic::PacketLoss;
use crate::trace::Trace;

/// The relay's host name.
pub const RELAY: &str = "relay";
/// The relay's port, for clients and workers.
pub const RELAY_PORT: u16 = 8080;
/// The port every backend listens on.
pub const BACKEND_PORT: u16 = 9000;
/// The relay's UDP port for QUIC worker links.
pub const QUIC_PORT: u16 = 8443;

/// Which link workers use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// WebSocket over simulated TCP.
    WebSocket,
    /// QUIC over simulated UDP.
    Quic,
}

fn relay_identity() -> RelayIdentity {
    let (cert, key) = crate::quic::relay_identity();
    RelayIdentity::from_der(cert.clone(), key.clone())
}

/// How long a simulated QUIC link may bring nothing before its transport gives
/// it up: as long as a WebSocket link's probe and its wait ([`session_config`]).
const QUIC_IDLE_TIMEOUT: Duration = Duration::from_secs(6);

/// How often a simulated worker's QUIC stack sends a keep-alive on a quiet link.
const QUIC_KEEP_ALIVE: Duration = Duration::from_secs(1);

/// What simulated workers trust (exactly the simulated relay's certificate), and
/// a transport that gives a dead link up on the simulation's shorter clock.
fn quic_client_config() -> quinn::ClientConfig {
    let fingerprint = parse_fingerprint(&relay_identity().fingerprint()).expect("a fingerprint");
    let mut config = quic::client_config(&Trust::Pinned(fingerprint)).expect("client settings");
    let mut transport = quic::worker_transport();
    transport.keep_alive_interval(Some(QUIC_KEEP_ALIVE));
    transport.max_idle_timeout(Some(
        QUIC_IDLE_TIMEOUT.try_into().expect("a valid idle timeout"),
    ));
    config.transport_config(Arc::new(transport));
    config
}
/// The worker secret of the simulation.
pub const SECRET: &str = "sim-secret";

/// The relay settings of the simulation: the defaults with shorter clocks, so
/// faults resolve within seconds of simulated time.
pub fn relay_config() -> ServerConfig {
    let mut config = ServerConfig::new(SECRET);
    config.relay.heartbeat_interval = Duration::from_secs(2);
    config.relay.heartbeat_timeout = Duration::from_secs(2);
    config.relay.queue_timeout = Some(Duration::from_secs(10));
    config.relay.request_timeout = Some(Duration::from_secs(30));
    config.relay.max_queue_len = 16;
    config.drain_timeout = Duration::from_secs(10);
    config
}

/// The worker settings of the simulation, matching [`relay_config`]'s clocks.
pub fn session_config(name: &str, max_concurrent: u32, jitter_seed: u64) -> SessionConfig {
    SessionConfig {
        worker_name: name.to_owned(),
        max_concurrent,
        backoff: BackoffConfig {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(8),
        },
        jitter_seed,
        register_timeout: Duration::from_secs(5),
        shutdown_timeout: Duration::from_secs(20),
        drain_grace: Duration::from_secs(2),
        // Quiet for 2 s: a probe; given up 4 s later unanswered (6 s, three of the relay's pings).
        link_probe_after: Duration::from_secs(2),
        link_probe_timeout: Duration::from_secs(4),
        ..SessionConfig::default()
    }
}

/// Stops a worker or a relay gracefully, as SIGTERM would.
#[derive(Clone, Debug, Default)]
pub struct WorkerStop(Arc<Mutex<CancellationToken>>);

/// Stops a relay gracefully (a drain), as SIGTERM would.
pub type RelayStop = WorkerStop;

impl WorkerStop {
    /// Begins the current run's graceful stop.
    pub fn stop(&self) {
        self.0.lock().expect("stop lock").cancel();
    }

    fn fresh(&self) -> CancellationToken {
        let token = CancellationToken::new();
        *self.0.lock().expect("stop lock") = token.clone();
        token
    }
}

/// How long a client started by [`World::ask`] waits for its answer.
const CLIENT_GIVES_UP_AFTER: Duration = Duration::from_secs(240);

/// Where a client's outcome lands, for the test to read.
#[derive(Clone, Debug, Default)]
pub struct Slot(Arc<Mutex<Option<Outcome>>>);

impl Slot {
    /// What the client got, once it is done.
    pub fn outcome(&self) -> Option<Outcome> {
        self.0.lock().expect("slot lock").clone()
    }
}

/// How a world is built.
#[derive(Clone, Debug)]
pub struct WorldConfig {
    /// Seed of the network's randomness (latency, loss) and of the workers' jitter.
    pub seed: u64,
    /// Simulated time after which the run fails.
    pub duration: Duration,
    /// Smallest message latency.
    pub min_latency: Duration,
    /// Largest message latency.
    pub max_latency: Duration,
    /// The link workers use.
    pub link: LinkKind,
    /// Writes a TCP socket holds before its writer waits (turmoil counts writes,
    /// whatever their size: one of hyper's may hold 400 KB).
    pub tcp_capacity: usize,
}

/// [`WorldConfig::tcp_capacity`] unless a test asks for less.
pub const TCP_CAPACITY: usize = 256;

impl WorldConfig {
    /// A world with a fixed latency of 1 ms, which keeps scenarios readable.
    pub fn readable(seed: u64) -> Self {
        Self {
            seed,
            duration: Duration::from_secs(300),
            min_latency: Duration::from_millis(1),
            max_latency: Duration::from_millis(1),
            link: LinkKind::WebSocket,
            tcp_capacity: TCP_CAPACITY,
        }
    }
}

/// The world: the turmoil simulation plus handles on what runs in it.
pub struct World {
    /// The simulation; tests step it and inject faults through it.
    pub sim: Sim<'static>,
    /// Everything observed, with simulated times.
    pub trace: Trace,
    seed: u64,
    link: LinkKind,
    backends: BTreeMap<String, SimulatedBackend>,
    /// What each host's QUIC socket loses (relay and workers).
    losses: BTreeMap<String, PacketLoss>,
}

impl World {
    /// An empty world.
    pub fn new(config: WorldConfig) -> Self {
        let sim = turmoil::Builder::new()
            .simulation_duration(config.duration)
            .rng_seed(config.seed)
            .min_message_latency(config.min_latency)
            .max_message_latency(config.max_latency)
            .tcp_capacity(config.tcp_capacity)
            .build();
        Self {
            sim,
            trace: Trace::default(),
            seed: config.seed,
            link: config.link,
            backends: BTreeMap::new(),
            losses: BTreeMap::new(),
        }
    }

    /// The datagram loss of host `name`'s QUIC socket (relay or worker), to set.
    pub fn packet_loss(&mut self, name: &str) -> PacketLoss {
        self.losses.entry(name.to_owned()).or_default().clone()
    }

    /// Adds the relay host, running the real server with `config`.
    pub fn relay(&mut self, config: ServerConfig) {
        self.relay_named(RELAY, config);
    }

    /// Adds a relay host named `name`, running the real server with `config`;
    /// returns what starts its graceful stop (its drain) in the current run.
    pub fn relay_named(&mut self, name: &str, config: ServerConfig) -> RelayStop {
        let trace = self.trace.clone();
        let (link, seed) = (self.link, self.seed);
        let loss = self.packet_loss(name);
        let stop = RelayStop::default();
        let handle = stop.clone();
        let host = name.to_owned();
        self.sim.host(name, move || {
            let config = config.clone();
            let trace = trace.clone();
            let loss = loss.clone();
            let token = stop.fresh();
            let name = host.clone();
            async move {
                trace.record(format_args!("{name} starts"));
                let quic = match link {
                    LinkKind::WebSocket => None,
                    LinkKind::Quic => {
                        let identity = relay_identity();
                        let server = quic::server_config(&identity, quic::relay_transport())?;
                        let endpoint = quic::relay_endpoint_config(&identity);
                        Some(
                            crate::quic::endpoint(QUIC_PORT, endpoint, Some(server), seed, loss)
                                .await?,
                        )
                    }
                };
                let listener = listen(RELAY_PORT).await?;
                let listener = Observed {
                    inner: listener,
                    trace: trace.clone(),
                    name: name.clone(),
                };
                modelrelay_relay::serve(config, listener, quic, token.cancelled_owned()).await;
                trace.record(format_args!("{name} stops"));
                Ok(())
            }
        });
        handle
    }

    /// Adds a backend host; returns its handle (log, model list).
    pub fn backend(&mut self, name: &str, config: SimulatedBackendConfig) -> SimulatedBackend {
        let backend = SimulatedBackend::new(config);
        let handle = backend.clone();
        self.sim.host(name, move || {
            let backend = backend.clone();
            async move {
                backend
                    .serve_on(listen(BACKEND_PORT).await?, std::future::pending())
                    .await;
                Ok(())
            }
        });
        self.backends.insert(name.to_owned(), handle.clone());
        handle
    }

    /// Adds a worker host for `backend`, serving model `m` with `max_concurrent` slots,
    /// that starts after `start_after` of simulated time (on its first start only).
    pub fn worker(
        &mut self,
        name: &str,
        backend: &str,
        max_concurrent: u32,
        start_after: Duration,
    ) -> WorkerStop {
        self.worker_to(name, backend, (max_concurrent, start_after), &[RELAY])
    }

    /// Adds a worker host for `backend` linked to every relay host in `relays`,
    /// with `max_concurrent` slots for all, that starts after `start_after`.
    pub fn worker_to(
        &mut self,
        name: &str,
        backend: &str,
        (max_concurrent, start_after): (u32, Duration),
        relays: &[&str],
    ) -> WorkerStop {
        let relays: Vec<String> = relays.iter().map(|relay| (*relay).to_owned()).collect();
        let stop = WorkerStop::default();
        let handle = stop.clone();
        let name = name.to_owned();
        let backend_url = format!("http://{backend}:{BACKEND_PORT}");
        let starts = Arc::new(AtomicU64::new(0));
        let base_seed = self.seed ^ stable_hash(&name);
        let trace = self.trace.clone();
        let link = self.link;
        let loss = self.packet_loss(&name);
        let host = name.clone();
        self.sim.host(host.as_str(), move || {
            let start = starts.fetch_add(1, Ordering::Relaxed);
            let token = stop.fresh();
            let (name, backend_url, trace) = (name.clone(), backend_url.clone(), trace.clone());
            let (loss, relays) = (loss.clone(), relays.clone());
            async move {
                if start == 0 {
                    tokio::time::sleep(start_after).await;
                }
                trace.record(format_args!("{name} starts (run {start})"));
                let mut endpoints = Vec::new();
                for relay in &relays {
                    let url = match link {
                        LinkKind::WebSocket => format!("http://{relay}:{RELAY_PORT}"),
                        LinkKind::Quic => format!("quic://{relay}:{QUIC_PORT}"),
                    };
                    endpoints.push(RelayEndpoint::parse(&url, DEFAULT_PROVIDER)?);
                }
                let models = ModelSource::List(vec!["m".into()]);
                let mut options = WorkerOptions::new(endpoints[0].clone(), SECRET.into(), models);
                options.relays = endpoints;
                options.session =
                    session_config(&name, max_concurrent, base_seed.wrapping_add(start));
                options.connect_timeout = Duration::from_secs(3);
                if link == LinkKind::Quic {
                    options.quic = Some(quic_client_config());
                }
                let backend =
                    HttpBackend::with_connector(url::Url::parse(&backend_url)?, SimConnector);
                let dialer = SimDialer {
                    seed: base_seed.wrapping_add(start),
                    loss,
                };
                modelrelay_worker::run(options, dialer, Arc::new(backend), token.cancelled_owned())
                    .await;
                trace.record(format_args!("{name} exits"));
                Ok(())
            }
        });
        handle
    }

    /// Adds a client host running `client` to its end.
    pub fn client(&mut self, name: &str, client: impl Future<Output = turmoil::Result> + 'static) {
        self.sim.client(name, client);
    }

    /// A client host named `name` that sends `ask` after `after` (and gives up after
    /// 240 s); its outcome lands in the returned slot, and in the trace.
    pub fn ask(&mut self, name: &str, ask: Ask, after: Duration) -> Slot {
        let slot = Slot::default();
        let out = slot.clone();
        let trace = self.trace.clone();
        self.client(name, async move {
            tokio::time::sleep(after).await;
            let outcome = client::send(&ask, CLIENT_GIVES_UP_AFTER).await;
            trace.record(format_args!("{} -> {outcome}", ask.tag));
            *out.0.lock().expect("slot lock") = Some(outcome);
            Ok(())
        });
        slot
    }

    /// Records a test action in the trace, at the simulation's time.
    pub fn note(&self, event: impl std::fmt::Display) {
        self.trace.record_at(self.sim.elapsed(), event);
    }

    /// Crashes host `name` (its connections reset), noting it in the trace.
    pub fn crash(&mut self, name: &str) {
        self.note(format_args!("test crashes {name}"));
        self.sim.crash(name);
    }

    /// Restarts host `name`, noting it in the trace.
    pub fn bounce(&mut self, name: &str) {
        self.note(format_args!("test restarts {name}"));
        self.sim.bounce(name);
    }

    /// The handle of backend `name`.
    pub fn backend_handle(&self, name: &str) -> &SimulatedBackend {
        &self.backends[name]
    }

    /// Steps until `done` holds, failing with `what` if `within` of simulated time passes first.
    pub fn step_until(
        &mut self,
        what: &str,
        within: Duration,
        mut done: impl FnMut(&mut Self) -> bool,
    ) {
        let deadline = self.sim.elapsed() + within;
        while !done(self) {
            assert!(
                self.sim.elapsed() < deadline,
                "{what}: not within {within:?} (at {:?} of simulated time)",
                self.sim.elapsed()
            );
            self.sim.step().expect("the simulation runs");
        }
    }

    /// Steps for `span` of simulated time.
    pub fn step_for(&mut self, span: Duration) {
        let until = self.sim.elapsed() + span;
        while self.sim.elapsed() < until {
            self.sim.step().expect("the simulation runs");
        }
    }

    /// Runs until every client finished.
    pub fn run(&mut self) {
        self.sim.run().expect("the simulation runs to its end");
    }

    /// The backend now running the request tagged `tag` (received, not yet ended), if any.
    pub fn backend_serving(&self, tag: &str) -> Option<String> {
        self.backends
            .iter()
            .filter_map(|(name, backend)| {
                let events = backend.events();
                let received = events.iter().rposition(
                    |e| matches!(e, BackendEvent::Received { tag: Some(t), .. } if t == tag),
                )?;
                let ended = events[received..].iter().any(|e| match e {
                    BackendEvent::Finished { tag: Some(t) }
                    | BackendEvent::Cancelled { tag: Some(t), .. } => t == tag,
                    _ => false,
                });
                (!ended).then(|| name.clone())
            })
            .next()
    }

    /// When the relay accepted a connection from `peer` (host name), in simulated time.
    pub fn accepts_from(&self, peer: &str) -> Vec<Duration> {
        self.trace
            .lines()
            .iter()
            .filter_map(|line| {
                let (at, event) = line.trim_start().split_once(' ')?;
                let at: f64 = at.parse().ok()?;
                (event == format!("relay accepts {peer}")).then(|| Duration::from_secs_f64(at))
            })
            .collect()
    }

    /// Every backend request attempt, by tag: how many were received and how many ended.
    pub fn attempts(&self) -> BTreeMap<String, (usize, usize)> {
        let mut attempts: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for backend in self.backends.values() {
            for event in backend.events() {
                match event {
                    BackendEvent::Received { tag: Some(tag), .. } => {
                        attempts.entry(tag).or_default().0 += 1
                    }
                    BackendEvent::Finished { tag: Some(tag) }
                    | BackendEvent::Cancelled { tag: Some(tag), .. } => {
                        attempts.entry(tag).or_default().1 += 1;
                    }
                    _ => {}
                }
            }
        }
        attempts
    }
}

impl Drop for World {
    /// With `SIM_TRACE` set, prints what happened: the story of a failing run.
    fn drop(&mut self) {
        if std::env::var_os("SIM_TRACE").is_some() {
            let mut out = std::io::stderr().lock();
            for line in self.trace.lines() {
                let _ = std::io::Write::write_fmt(&mut out, format_args!("{line}\n"));
            }
        }
    }
}

/// A stable hash of a name (the same in every run and build).
fn stable_hash(text: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// A relay's listener, recording each connection it accepts.
struct Observed {
    inner: SimListener,
    trace: Trace,
    /// The relay's host name.
    name: String,
}

impl axum::serve::Listener for Observed {
    type Io = turmoil::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = self.inner.accept().await;
        let peer = turmoil::reverse_lookup(addr.ip()).unwrap_or_else(|| addr.ip().to_string());
        self.trace
            .record(format_args!("{} accepts {peer}", self.name));
        (io, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

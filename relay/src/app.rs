//! The server assembled: configuration, the router of every audience, serving, graceful shutdown.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::Router;
use axum::serve::{Listener, ListenerExt};
use modelrelay_core::relay::{FlowConfig, RelayConfig};
use modelrelay_core::wire::FrameLimits;
use modelrelay_core::{DEFAULT_PROVIDER, ProviderId};
use modelrelay_transports::close_code;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{AdminToken, AuthLimiter, AuthLimits, WorkerSecrets};
use crate::clients::{BodyBudget, CorsOrigins};
use crate::connections::ConnectionLimits;
use crate::downloads::{self, Downloads};
use crate::http::HttpLimits;
use crate::hub::{Command, Hub};
use crate::keys::KeyStore;
use crate::operator::{Metrics, SessionKey};
use crate::relays::{Presence, RelayIdentity};
use crate::usage::flush::UsageFlusher;
use crate::workers::quic::QuicSettings;
use crate::{clients, operator, request_id, workers};

/// Everything the server needs to know.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// The secrets workers may present (more than one during a rotation).
    pub worker_secret: WorkerSecrets,
    /// Whether a worker may pass its secret as `?worker_secret=` (old workers;
    /// query strings end up in proxy logs).
    pub allow_secret_in_query: bool,
    /// The one provider (worker pool) this server serves.
    pub provider: ProviderId,
    /// Queue bound, timeouts, heartbeats and the other relay settings.
    pub relay: RelayConfig,
    /// Largest client request body.
    pub max_body_bytes: usize,
    /// How long a request body may take to arrive (`None`: no limit); then 408.
    pub body_read_timeout: Option<Duration>,
    /// Bytes all request bodies held in memory may take together (0: no limit); past it, 503.
    pub max_buffered_request_bytes: usize,
    /// How long a client may take no bytes of its answer before its connection is cut (`None`: never).
    pub client_idle_timeout: Option<Duration>,
    /// Most open HTTP connections (0: no limit); past it, 503 and close.
    pub max_connections: usize,
    /// Most open HTTP connections from one address (0: no limit); worker links never count.
    pub max_connections_per_address: usize,
    /// Whether workers may speak protocol v2.
    pub enable_v2: bool,
    /// Whether a v2 worker that offers v2.1 gets per-request windows (off: every
    /// link is unwindowed, as with an older relay).
    pub link_windows: bool,
    /// Bytes all streamed answers may hold for their clients, or have granted
    /// to workers, at once (at least one window).
    pub max_buffered_bytes: u64,
    /// How long running requests may take once shutdown begins.
    pub drain_timeout: Duration,
    /// Frame size limit on worker links.
    pub frame_limits: FrameLimits,
    /// When addresses with failed worker logins are shut out.
    pub auth_limits: AuthLimits,
    /// QUIC worker links, if enabled (`--quic-listen`).
    pub quic: Option<QuicSettings>,
    /// The SHA-256 fingerprint of the QUIC certificate, for the commands
    /// `/setup` shows; set by whoever binds the QUIC endpoint.
    pub quic_fingerprint: Option<String>,
    /// Most bytes an unwindowed stream may hold for a client that reads too
    /// slowly, or a windowed worker may send past its window; past it, the
    /// stream is stopped with `client_too_slow`.
    pub max_client_buffer_bytes: u64,
    /// Count worker logins against the address in `X-Forwarded-For` (behind a TLS proxy).
    pub trust_forwarded_for: bool,
    /// The token for `/admin/*`, `/dashboard` and `/setup`; without it they answer 403.
    pub admin_token: Option<AdminToken>,
    /// Whether client routes need an API key.
    pub require_api_keys: bool,
    /// Where API keys are kept (needed for `/admin/keys` and `require_api_keys`).
    pub keys: Option<Arc<KeyStore>>,
    /// This server's URL as workers and clients reach it, for `/setup`.
    pub public_url: Option<String>,
    /// Which web pages may call the client API from a browser (CORS).
    pub cors_allow_origins: CorsOrigins,
    /// This relay's name in the list of relays sharing its database (`/admin/relays`).
    pub relay_name: String,
    /// The worker binaries served at `/downloads` (`--downloads-dir`), if any.
    pub downloads: Option<Arc<Downloads>>,
    /// How often the requests and tokens counted per API key are added to the
    /// key database (and once more at shutdown).
    pub usage_flush_every: Duration,
}

impl ServerConfig {
    /// The defaults of the `modelrelay-server` command, with this worker secret.
    pub fn new(worker_secret: &str) -> Self {
        Self {
            worker_secret: WorkerSecrets::new([worker_secret]),
            allow_secret_in_query: false,
            provider: ProviderId::new(DEFAULT_PROVIDER),
            relay: RelayConfig::default(),
            max_body_bytes: 32 * 1024 * 1024,
            body_read_timeout: Some(Duration::from_secs(60)),
            max_buffered_request_bytes: 256 * 1024 * 1024,
            client_idle_timeout: Some(Duration::from_secs(60)),
            max_connections: 16_384,
            max_connections_per_address: 0,
            enable_v2: true,
            link_windows: true,
            max_buffered_bytes: FlowConfig::default().budget,
            drain_timeout: Duration::from_secs(30),
            frame_limits: FrameLimits::default(),
            auth_limits: AuthLimits::default(),
            quic: None,
            quic_fingerprint: None,
            max_client_buffer_bytes: FlowConfig::default().legacy_cap,
            trust_forwarded_for: false,
            admin_token: None,
            require_api_keys: false,
            keys: None,
            public_url: None,
            cors_allow_origins: CorsOrigins::Any,
            relay_name: "relay".to_owned(),
            downloads: None,
            usage_flush_every: Duration::from_secs(10),
        }
    }
}

/// The client's address, for any listener whose addresses are socket addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerAddr(pub(crate) SocketAddr);

/// What every handler shares.
pub(crate) struct AppState {
    /// How the server was configured.
    pub(crate) config: ServerConfig,
    /// The handle to the hub task.
    pub(crate) hub: Hub,
    /// Failed worker logins, per address.
    pub(crate) limiter: Arc<AuthLimiter>,
    /// Failed admin logins, counted apart so they cannot lock workers out.
    pub(crate) admin_limiter: AuthLimiter,
    /// The next request's key in the core and on its worker link (not its public id, which
    /// [`crate::request_id`] gives).
    pub(crate) next_request: AtomicU64,
    /// The next worker id.
    pub(crate) next_worker: AtomicU64,
    /// When the server started, for uptimes.
    pub(crate) started: Instant,
    /// What dashboard session cookies are signed with.
    pub(crate) session_key: SessionKey,
    /// The metrics `/metrics` exports.
    pub(crate) metrics: Arc<Metrics>,
    /// The bytes request bodies may hold in memory at once.
    pub(crate) body_budget: BodyBudget,
    /// Who this relay process is in the list of relays.
    pub(crate) relay: RelayIdentity,
}

/// Every route, by audience, on one router; every answer carries its request's id.
fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(clients::router(&state.config.cors_allow_origins))
        .merge(workers::router())
        .merge(operator::router())
        .merge(downloads::router())
        .fallback(clients::not_found)
        // After the fallback, so that 404s are stamped too.
        .layer(axum::middleware::from_fn(request_id::stamp))
        .with_state(state)
}

/// Serves on `listener` until `shutdown` resolves, then drains: no new work,
/// workers told to finish, running requests given `drain_timeout`, then return.
///
/// With a QUIC `endpoint`, workers may also connect over QUIC; it stops
/// accepting when shutdown begins and closes once the relay has drained.
pub async fn serve<L>(
    config: ServerConfig,
    listener: L,
    quic: Option<quinn::Endpoint>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) where
    L: Listener<Addr = SocketAddr>,
{
    let drain = config.drain_timeout;
    let metrics = Arc::new(Metrics::new());
    let worker_logins = Arc::new(AuthLimiter::new(config.auth_limits));
    let http_limits = HttpLimits {
        worker_logins: Arc::clone(&worker_logins),
        connections: ConnectionLimits::new(
            config.max_connections,
            config.max_connections_per_address,
        ),
        client_idle_timeout: config.client_idle_timeout,
        idle_cuts: metrics.idle_client_cuts.clone(),
        body_read_timeout: config.body_read_timeout,
    };
    // On v1 a valid JSON body can double in size when escaped into a request frame.
    let worst_request_frame = config
        .max_body_bytes
        .saturating_mul(2)
        .saturating_add(1 << 20);
    if worst_request_frame > config.frame_limits.max_frame_bytes {
        warn!(
            max_body_bytes = config.max_body_bytes,
            max_frame_bytes = config.frame_limits.max_frame_bytes,
            "large request bodies may not fit a worker link frame; such requests will fail with 502"
        );
    }
    if let Some(why) = session_cookies_in_clear(&config) {
        warn!("dashboard session cookies may travel without TLS: {why}");
    }
    let relay = RelayConfig {
        flow: Some(FlowConfig {
            budget: config.max_buffered_bytes,
            legacy_cap: config.max_client_buffer_bytes,
            ..FlowConfig::default()
        }),
        ..config.relay.clone()
    };
    let (hub, hub_task) = Hub::spawn(relay, config.provider.clone(), Arc::clone(&metrics));
    let body_budget = BodyBudget::new(config.max_buffered_request_bytes);
    if config.max_buffered_request_bytes != 0
        && config.max_body_bytes > config.max_buffered_request_bytes
    {
        warn!(
            max_body_bytes = config.max_body_bytes,
            max_buffered_request_bytes = config.max_buffered_request_bytes,
            "bodies larger than --max-buffered-request-bytes will be refused with 503"
        );
    }
    let relay_identity = RelayIdentity::new(&config.relay_name);
    let state = Arc::new(AppState {
        limiter: worker_logins,
        admin_limiter: AuthLimiter::new(config.auth_limits),
        config,
        hub: hub.clone(),
        next_request: AtomicU64::new(1),
        next_worker: AtomicU64::new(1),
        started: tokio::time::Instant::now().into_std(),
        session_key: SessionKey::random(),
        metrics,
        body_budget,
        relay: relay_identity,
    });
    let app = router(Arc::clone(&state));
    let stopping = CancellationToken::new();
    let presence = state.config.keys.as_ref().map(|keys| {
        Presence::start(
            state.relay.clone(),
            Arc::clone(keys),
            hub.clone(),
            stopping.clone(),
        )
    });
    let usage = state.config.keys.as_ref().map(|keys| {
        UsageFlusher::start(
            Arc::clone(&state.metrics.usage),
            Arc::clone(keys),
            state.config.usage_flush_every,
        )
    });
    tokio::spawn(operator::sample_every_bucket(
        hub.clone(),
        Arc::clone(&state.metrics),
        stopping.clone(),
    ));
    if let Some(endpoint) = &quic {
        tokio::spawn(workers::quic::accept_workers(
            endpoint.clone(),
            state,
            stopping.clone(),
        ));
    }
    let hub_done = CancellationToken::new();
    let hub_task = {
        let hub_done = hub_done.clone();
        tokio::spawn(async move {
            let _ = hub_task.await;
            hub_done.cancel();
        })
    };
    let draining = {
        let stopping = stopping.clone();
        let hub = hub.clone();
        async move {
            shutdown.await;
            info!("shutting down: draining workers; new requests and /health get 503");
            hub.send(Command::Shutdown { drain }).await;
            stopping.cancel();
        }
    };
    // Open responses end once their workers finish or the drain deadline fails them.
    let bound = drain.saturating_add(Duration::from_secs(5));
    // Connections are taken until the hub has drained, so balancers see the 503s.
    let drained = {
        let stopping = stopping.clone();
        async move {
            stopping.cancelled().await;
            tokio::select! {
                () = hub_done.cancelled() => {}
                () = tokio::time::sleep(bound) => {}
            }
        }
    };
    let http = crate::http::serve(listener, app, http_limits, draining, drained);
    tokio::select! {
        () = http => {}
        () = async { stopping.cancelled().await; tokio::time::sleep(bound).await } => {
            warn!("open client connections outlived the drain; closing them");
        }
    }
    match tokio::time::timeout(bound, hub_task).await {
        Ok(_) => info!("relay stopped"),
        Err(_) => warn!("workers did not finish draining in time; stopping anyway"),
    }
    // After the hub: the requests that ended during the drain are counted too.
    if let Some(usage) = usage {
        usage.finish().await;
    }
    if let Some(presence) = presence {
        presence.finish().await;
    }
    if let Some(endpoint) = quic {
        endpoint.close(
            quinn::VarInt::from_u32(u32::from(close_code::GOING_AWAY)),
            b"relay stopped",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    }
}

/// A server running in the background on a loopback or other TCP address (for tests and the demo).
pub struct RunningServer {
    addr: SocketAddr,
    quic: Option<(SocketAddr, String)>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl RunningServer {
    /// Binds `addr` (port 0 picks a free one) and serves in the background.
    pub async fn start(mut config: ServerConfig, addr: &str) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (endpoint, quic) = match &mut config.quic {
            Some(settings) => {
                let (endpoint, fingerprint) =
                    workers::quic::endpoint(settings).map_err(std::io::Error::other)?;
                let quic_addr = endpoint.local_addr()?;
                // Port 0 picked a port: /setup names the one bound.
                settings.listen = quic_addr;
                config.quic_fingerprint = Some(fingerprint.clone());
                (Some(endpoint), Some((quic_addr, fingerprint)))
            }
            None => (None, None),
        };
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(serve(config, listener, endpoint, shutdown));
        Ok(Self {
            addr,
            quic,
            stop,
            task,
        })
    }

    /// The UDP address and certificate fingerprint of its QUIC endpoint, if it has one.
    pub fn quic(&self) -> Option<(SocketAddr, &str)> {
        self.quic
            .as_ref()
            .map(|(addr, fingerprint)| (*addr, fingerprint.as_str()))
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://addr`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Starts a graceful shutdown without waiting.
    pub fn begin_shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits for the server to have stopped.
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// Why dashboard session cookies could go out without the `Secure` flag, if
/// they could: an admin token with a plain-http public URL that is not
/// loopback, or no public URL and no trusted `X-Forwarded-Proto`.
fn session_cookies_in_clear(config: &ServerConfig) -> Option<&'static str> {
    config.admin_token.as_ref()?;
    match config.public_url.as_deref() {
        Some(url) if url.starts_with("https://") => None,
        Some(url) if is_loopback_url(url) => None,
        Some(_) => Some("--public-url is plain http; use an https:// URL behind a TLS proxy"),
        None if config.trust_forwarded_for => None,
        None => Some(
            "no --public-url; set it to the https:// URL of the TLS proxy in front, \
             or trust its X-Forwarded-Proto with --trust-forwarded-for",
        ),
    }
}

/// Whether `url` names this machine (`localhost` or a loopback address).
fn is_loopback_url(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    match parsed.host() {
        Some(url::Host::Domain(name)) => name.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AdminToken;

    #[test]
    fn cookies_in_clear_are_warned_about_only_with_an_admin_token_off_tls() {
        let mut config = ServerConfig::new("s");
        assert_eq!(session_cookies_in_clear(&config), None, "no admin token");
        config.admin_token = Some(AdminToken::new("t"));
        assert!(session_cookies_in_clear(&config).is_some(), "no public URL");
        config.trust_forwarded_for = true;
        assert_eq!(session_cookies_in_clear(&config), None);
        for (url, warned) in [
            ("https://relay.example", false),
            ("http://localhost:8080", false),
            ("http://127.0.0.1:8080", false),
            ("http://[::1]:8080", false),
            ("http://relay.example", true),
            ("http://10.0.0.5:8080", true),
        ] {
            config.public_url = Some(url.into());
            assert_eq!(session_cookies_in_clear(&config).is_some(), warned, "{url}");
        }
    }
}

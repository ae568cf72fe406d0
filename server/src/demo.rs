//! The demo: a simulated model behind an in-process worker, so the relay streams with no GPU.
//!
//! The worker is the real one, connected over a real loopback WebSocket to the
//! relay's own port; only the backend is simulated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use modelrelay_core::session::SessionConfig;
use modelrelay_testkit::simulated_backend::SimulatedBackendConfig;
use modelrelay_testkit::{Backend, Worker, WorkerSpec};
use tokio_util::sync::CancellationToken;

/// The demo model's name.
pub(crate) const DEMO_MODEL: &str = "demo";

/// Requests the demo worker runs at once.
const DEMO_SLOTS: u32 = 16;

/// Tokens in each demo reply.
const DEMO_TOKENS: usize = 40;

/// The pieces of a running demo.
pub(crate) struct Demo {
    /// The simulated backend; stops when dropped.
    _backend: Backend,
    /// The worker; ends after `stop` is cancelled and its requests finish.
    pub(crate) worker: Worker,
}

/// The address to dial for a server listening on `addr` (loopback for a wildcard address).
pub(crate) fn dial_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

/// Starts the simulated backend (one token every `token_delay`) and a worker for it
/// that connects to the relay at `relay`; the worker stops when `stop` is cancelled.
pub(crate) async fn start(
    relay: SocketAddr,
    secret: &str,
    token_delay: Duration,
    stop: CancellationToken,
) -> std::io::Result<Demo> {
    let backend = Backend::start(SimulatedBackendConfig {
        models: vec![DEMO_MODEL.into()],
        tokens: DEMO_TOKENS,
        token_delay,
    })
    .await?;
    let relay_url = format!("http://{}", dial_address(relay));
    let mut spec = WorkerSpec::to(&relay_url, &backend.url, &[DEMO_MODEL]);
    spec.secret = secret;
    spec.name = "demo-worker";
    spec.max_concurrent = DEMO_SLOTS;
    spec.jitter_seed = modelrelay_process::process_seed();
    spec.shutdown_timeout = SessionConfig::default().shutdown_timeout;
    let worker = spec.start_until(stop);
    Ok(Demo {
        _backend: backend,
        worker,
    })
}

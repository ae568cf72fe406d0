//! The demo: a simulated model behind an in-process worker, so the relay streams with no GPU.
//!
//! The worker is the real one, connected over a real loopback WebSocket to the
//! relay's own port; only the backend is simulated.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use modelrelay_core::session::SessionConfig;
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, RelayEndpoint};
use modelrelay_worker::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};
use modelrelay_worker::{ModelSource, WorkerOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The demo model's name.
pub const DEMO_MODEL: &str = "demo";

/// The pieces of a running demo.
pub struct Demo {
    /// Where the simulated backend listens.
    pub backend_addr: SocketAddr,
    /// The worker; ends after `stop` is cancelled and its requests finish.
    pub worker: tokio::task::JoinHandle<()>,
}

/// The address to dial for a server listening on `addr` (loopback for a wildcard address).
pub fn dial_address(addr: SocketAddr) -> SocketAddr {
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
/// that connects to the relay at `relay`; both stop when `stop` is cancelled.
pub async fn start(
    relay: SocketAddr,
    secret: &str,
    token_delay: Duration,
    stop: CancellationToken,
) -> std::io::Result<Demo> {
    let backend = SimulatedBackend::new(SimulatedBackendConfig {
        models: vec![DEMO_MODEL.into()],
        tokens: 40,
        token_delay,
    });
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let backend_addr = listener.local_addr()?;
    tokio::spawn(backend.serve(listener, stop.clone().cancelled_owned()));
    let relay_url = format!("http://{}", dial_address(relay));
    let endpoint = RelayEndpoint::parse(&relay_url, "local")
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let backend_url = url::Url::parse(&format!("http://{backend_addr}"))
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let http = HttpBackend::new(backend_url).map_err(std::io::Error::other)?;
    let mut options = WorkerOptions::new(
        endpoint,
        secret.to_owned(),
        ModelSource::List(vec![DEMO_MODEL.into()]),
    );
    options.session = SessionConfig {
        worker_name: "demo-worker".into(),
        max_concurrent: 16,
        jitter_seed: modelrelay_worker::process::process_seed(),
        ..SessionConfig::default()
    };
    let worker = tokio::spawn(modelrelay_worker::run(
        options,
        NetDialer::new(None),
        Arc::new(http),
        stop.cancelled_owned(),
    ));
    Ok(Demo {
        backend_addr,
        worker,
    })
}

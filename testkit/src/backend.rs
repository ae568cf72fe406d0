//! A simulated backend served on loopback, stopped when dropped.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::simulated_backend::{BackendEvent, SimulatedBackend, SimulatedBackendConfig};

/// A simulated backend served on loopback until dropped.
pub struct Backend {
    /// The backend itself: its log of requests and cancellations.
    pub sim: SimulatedBackend,
    /// Its base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    stop: CancellationToken,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Backend {
    /// Waits up to `within` for this backend to see the call tagged `tag` cancelled.
    pub async fn saw_cancelled(&self, tag: &str, within: Duration) -> bool {
        self.sim
            .wait_for(within, |events| {
                events
                    .iter()
                    .any(|e| matches!(e, BackendEvent::Cancelled { tag: Some(t), .. } if t == tag))
            })
            .await
    }
}

/// A backend serving `models`, 12 tokens a reply, as fast as it can.
pub async fn backend(models: &[&str]) -> Backend {
    backend_with(SimulatedBackendConfig {
        models: models.iter().map(|m| m.to_string()).collect(),
        tokens: 12,
        token_delay: Duration::ZERO,
    })
    .await
}

/// A backend configured by `config`; panics if no loopback port can be had.
pub async fn backend_with(config: SimulatedBackendConfig) -> Backend {
    Backend::start(config)
        .await
        .expect("a loopback port for the backend")
}

impl Backend {
    /// Serves a backend configured by `config` on a loopback port the OS picks.
    pub async fn start(config: SimulatedBackendConfig) -> std::io::Result<Self> {
        let sim = SimulatedBackend::new(config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let stop = CancellationToken::new();
        tokio::spawn(sim.clone().serve(listener, stop.clone().cancelled_owned()));
        Ok(Self { sim, url, stop })
    }
}

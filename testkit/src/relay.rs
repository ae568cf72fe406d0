//! The real relay, started in-process with the test defaults.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use modelrelay_relay::quic::QuicSettings;
use modelrelay_relay::{RunningServer, ServerConfig};

use crate::backend::{Backend, backend};
use crate::client::Http;
use crate::wait::wait_for_workers;
use crate::worker::{Worker, WorkerSpec};

/// The worker secret of every relay and worker the kit starts.
pub const SECRET: &str = "test-secret";

/// How a test's workers reach the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// WebSocket on the relay's HTTP port.
    WebSocket,
    /// QUIC on the relay's UDP port, trusting its certificate by fingerprint.
    Quic,
}

/// A relay with one worker over `link` in front of one backend serving `m`.
pub async fn world_over(link: Link) -> (RunningServer, Backend, Worker, Http) {
    let backend = backend(&["m"]).await;
    let relay = relay_over(link).await;
    let worker = WorkerSpec::over(link, &relay, &backend, &["m"]).start();
    let http = Http::new();
    wait_for_workers(&http, &relay, 1).await;
    (relay, backend, worker, http)
}

/// The real server with the test defaults, taking workers over `link`.
pub async fn relay_over(link: Link) -> RunningServer {
    match link {
        Link::WebSocket => relay(|_| {}).await,
        Link::Quic => relay_with_quic(|_| {}).await,
    }
}

/// The real server, with the test secret and short timeouts unless `tweak` changes them.
pub async fn relay(tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let mut config = ServerConfig::new(SECRET);
    config.relay.queue_timeout = Some(Duration::from_secs(5));
    config.relay.request_timeout = Some(Duration::from_secs(20));
    config.drain_timeout = Duration::from_secs(5);
    tweak(&mut config);
    RunningServer::start(config, "127.0.0.1:0")
        .await
        .expect("the relay starts")
}

/// A relay with QUIC worker links on a loopback UDP port and a certificate of its own.
pub async fn relay_with_quic(tweak: impl FnOnce(&mut ServerConfig)) -> RunningServer {
    let data_dir = std::env::temp_dir().join(format!(
        "modelrelay-testkit-quic-{}-{}",
        std::process::id(),
        QUIC_DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    relay(|config| {
        config.quic = Some(QuicSettings {
            listen: "127.0.0.1:0".parse().expect("a loopback address"),
            cert: None,
            key: None,
            data_dir,
        });
        tweak(config);
    })
    .await
}

/// Numbers the QUIC relays' data directories within one process.
static QUIC_DIRS: AtomicU64 = AtomicU64::new(0);

//! The worker, in this process: started from the settings, stopped gracefully,
//! its link state watched.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use modelrelay_core::session::SessionConfig;
use modelrelay_transports::quic;
use modelrelay_transports::tls::{Trust, client_tls};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, RelayEndpoint, RelayTransport};
use modelrelay_worker::{ModelSource, WorkerOptions, WorkerStatus};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::settings_file::Settings;

/// The provider the relay files the worker's models under (the worker's default).
const PROVIDER: &str = modelrelay_core::DEFAULT_PROVIDER;

/// How long a Disconnect waits for running requests before it drops them.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// What the tray shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkState {
    /// No link to the relay is open (or the worker is stopped).
    Disconnected,
    /// A link is open and no request is running.
    Connected,
    /// Requests are running.
    Relaying,
}

impl LinkState {
    /// The state a worker status shows.
    pub(crate) fn of(status: &WorkerStatus) -> Self {
        if status.links_up == 0 {
            Self::Disconnected
        } else if status.running == 0 {
            Self::Connected
        } else {
            Self::Relaying
        }
    }

    /// A word for it, as the tooltip and the status line say it.
    pub(crate) fn word(self) -> &'static str {
        match self {
            Self::Disconnected => "disconnected",
            Self::Connected => "connected",
            Self::Relaying => "relaying",
        }
    }
}

/// A worker started by [`Worker::start`].
pub(crate) struct Worker {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    /// Its link state, as it changes.
    pub(crate) status: watch::Receiver<WorkerStatus>,
}

impl Worker {
    /// Starts a worker with `settings` and `secret` on the current runtime.
    pub(crate) fn start(settings: &Settings, secret: String) -> anyhow::Result<Self> {
        let options = options(settings, secret)?;
        let relay = &options.relays[0];
        let tls = relay
            .tls
            .then(|| client_tls(&Trust::SystemRoots).map(Arc::new))
            .transpose()
            .context("TLS for the relay link")?;
        let backend_url =
            url::Url::parse(settings.backend_url.trim()).context("the backend URL")?;
        let backend = HttpBackend::new(backend_url).context("TLS for the backend")?;
        let (sender, status) = watch::channel(WorkerStatus::default());
        let mut options = options;
        options.status = Some(sender);
        let (stop, stopped) = oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let task = tokio::spawn(modelrelay_worker::run(
            options,
            NetDialer::new(tls),
            Arc::new(backend),
            shutdown,
        ));
        Ok(Self { stop, task, status })
    }

    /// Stops gracefully (running requests finish), waiting at most [`STOP_WAIT`].
    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        if tokio::time::timeout(STOP_WAIT, &mut task).await.is_err() {
            tracing::warn!("the worker did not stop in time: dropping its requests");
            task.abort();
        }
    }
}

/// The worker's options from the settings (one relay, the system's CA roots).
fn options(settings: &Settings, secret: String) -> anyhow::Result<WorkerOptions> {
    let relay =
        RelayEndpoint::parse(settings.relay_url.trim(), PROVIDER).context("the relay URL")?;
    let quic = (relay.transport == RelayTransport::Quic)
        .then(|| quic::client_config(&Trust::SystemRoots))
        .transpose()
        .context("QUIC settings")?;
    let models = match settings.model_list() {
        Some(list) => ModelSource::List(list),
        None => ModelSource::Discover,
    };
    let poll = (models == ModelSource::Discover && settings.models_poll_interval > 0)
        .then(|| Duration::from_secs(settings.models_poll_interval));
    let name = settings.worker_name.trim();
    let mut options = WorkerOptions::new(relay, secret, models);
    options.session = SessionConfig {
        worker_name: if name.is_empty() {
            modelrelay_process::host_name("desktop")
        } else {
            name.to_owned()
        },
        jitter_seed: modelrelay_process::process_seed(),
        ..SessionConfig::default()
    };
    options.models_poll_interval = poll;
    options.quic = quic;
    Ok(options)
}

//! A real worker, running in this process, described by a [`WorkerSpec`].

use std::sync::Arc;
use std::time::Duration;

use modelrelay_core::DEFAULT_PROVIDER;
use modelrelay_core::session::SessionConfig;
use modelrelay_relay::RunningServer;
use modelrelay_transports::tls::{Trust, parse_fingerprint};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, ProtocolChoice, RelayEndpoint};
use modelrelay_worker::{ModelSource, WorkerOptions};
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::relay::{Link, SECRET};

/// A real worker running in this process; aborted when dropped.
pub struct Worker {
    task: Option<tokio::task::JoinHandle<()>>,
    stop: CancellationToken,
}

impl Worker {
    /// Drops the worker and every connection it holds at once, as a crash would.
    pub fn kill(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Starts its graceful stop (as SIGTERM does).
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    /// Waits for it to exit; panics if it takes over 20 s.
    pub async fn exited(self) {
        assert!(
            self.exited_within(Duration::from_secs(20)).await,
            "the worker did not exit within 20 s"
        );
    }

    /// Waits up to `within` for it to exit; whether it did.
    pub async fn exited_within(mut self, within: Duration) -> bool {
        let Some(task) = self.task.take() else {
            return true;
        };
        match tokio::time::timeout(within, task).await {
            Ok(ended) => {
                if let Err(e) = ended
                    && e.is_panic()
                {
                    std::panic::resume_unwind(e.into_panic());
                }
                true
            }
            Err(_) => false,
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// What worker to start: where it connects, what it serves, and how.
pub struct WorkerSpec<'a> {
    /// The relay's URL (`http://…` for WebSocket, `quic://…` for QUIC).
    pub relay: &'a str,
    /// More relays it serves too, each over a link of its own.
    pub also: Vec<String>,
    /// The backend's base URL.
    pub backend: &'a str,
    /// The models it advertises.
    pub models: ModelSource,
    /// The secret it presents.
    pub secret: &'a str,
    /// Which protocol version it speaks over WebSocket.
    pub protocol: ProtocolChoice,
    /// Its name, as the relay lists it.
    pub name: &'a str,
    /// How many requests it runs at once.
    pub max_concurrent: u32,
    /// The seed of its reconnect jitter.
    pub jitter_seed: u64,
    /// How long its graceful stop waits for running requests.
    pub shutdown_timeout: Duration,
    /// How often it re-reads the backend's model list, if it does.
    pub models_poll_interval: Option<Duration>,
    /// The largest frame it accepts, when not the default.
    pub frame_limit: Option<usize>,
    /// For a `quic://` relay: what the worker trusts.
    pub trust: Option<Trust>,
    /// For a `quic://` relay: how many request streams may be open at once.
    pub quic_streams: Option<u32>,
}

impl<'a> WorkerSpec<'a> {
    /// A worker for `relay` in front of `backend`, serving `models`, over WebSocket.
    pub fn new(relay: &'a RunningServer, backend: &'a Backend, models: &[&str]) -> WorkerSpec<'a> {
        Self::to(leak(relay.url()), &backend.url, models)
    }

    /// A worker for the relay at URL `relay` in front of the backend at `backend`.
    pub fn to(relay: &'a str, backend: &'a str, models: &[&str]) -> WorkerSpec<'a> {
        WorkerSpec {
            relay,
            also: Vec::new(),
            backend,
            models: ModelSource::List(models.iter().map(|m| m.to_string()).collect()),
            secret: SECRET,
            protocol: ProtocolChoice::Auto,
            name: "test-worker",
            max_concurrent: 4,
            jitter_seed: 7,
            shutdown_timeout: Duration::from_secs(10),
            models_poll_interval: None,
            frame_limit: None,
            trust: None,
            quic_streams: None,
        }
    }

    /// A worker that reaches `relay` over `link`.
    pub fn over(
        link: Link,
        relay: &'a RunningServer,
        backend: &'a Backend,
        models: &[&str],
    ) -> WorkerSpec<'a> {
        match link {
            Link::WebSocket => Self::new(relay, backend, models),
            Link::Quic => Self::quic(relay, backend, models),
        }
    }

    /// A worker that reaches `relay` over QUIC, trusting its certificate by fingerprint.
    pub fn quic(relay: &'a RunningServer, backend: &'a Backend, models: &[&str]) -> WorkerSpec<'a> {
        let (addr, fingerprint) = relay.quic().expect("the relay has QUIC on");
        let mut spec = Self::to(leak(format!("quic://{addr}")), &backend.url, models);
        spec.trust = Some(Trust::Pinned(
            parse_fingerprint(fingerprint).expect("the relay's fingerprint parses"),
        ));
        spec
    }

    /// The worker options this spec describes.
    pub fn options(self) -> WorkerOptions {
        let endpoint = RelayEndpoint::parse(self.relay, DEFAULT_PROVIDER)
            .expect("the relay URL is a relay endpoint");
        let mut options = WorkerOptions::new(endpoint, self.secret.to_owned(), self.models);
        for relay in &self.also {
            let endpoint = RelayEndpoint::parse(relay, DEFAULT_PROVIDER)
                .expect("the relay URL is a relay endpoint");
            options.relays.push(endpoint);
        }
        options.session = SessionConfig {
            worker_name: self.name.to_owned(),
            max_concurrent: self.max_concurrent,
            jitter_seed: self.jitter_seed,
            shutdown_timeout: self.shutdown_timeout,
            ..SessionConfig::default()
        };
        options.protocol = self.protocol;
        options.models_poll_interval = self.models_poll_interval;
        if let Some(max_frame_bytes) = self.frame_limit {
            options.limits = modelrelay_core::wire::FrameLimits { max_frame_bytes };
        }
        if let Some(trust) = &self.trust {
            let mut config =
                modelrelay_transports::quic::client_config(trust).expect("QUIC client settings");
            if let Some(streams) = self.quic_streams {
                let mut transport = modelrelay_transports::quic::worker_transport();
                transport.max_concurrent_bidi_streams(streams.into());
                config.transport_config(Arc::new(transport));
            }
            options.quic = Some(config);
        }
        options
    }

    /// Starts the worker; it stops gracefully on [`Worker::begin_stop`].
    pub fn start(self) -> Worker {
        self.start_until(CancellationToken::new())
    }

    /// Starts the worker; it stops gracefully once `stop` is cancelled.
    pub fn start_until(self, stop: CancellationToken) -> Worker {
        let backend_url = url::Url::parse(self.backend).expect("the backend URL parses");
        let backend = HttpBackend::new(backend_url).expect("an HTTP client for the backend");
        let task = tokio::spawn(modelrelay_worker::run(
            self.options(),
            NetDialer::new(None),
            Arc::new(backend),
            stop.clone().cancelled_owned(),
        ));
        Worker {
            task: Some(task),
            stop,
        }
    }
}

/// A string that lives as long as the test (specs borrow their URLs).
fn leak(url: String) -> &'static str {
    Box::leak(url.into_boxed_str())
}

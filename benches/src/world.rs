//! A relay, a worker and a simulated backend on loopback, for end-to-end measurements.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelrelay_core::session::SessionConfig;
use modelrelay_server::quic::QuicSettings;
use modelrelay_server::{RunningServer, ServerConfig};
use modelrelay_transports::quic;
use modelrelay_transports::tls::{Trust, parse_fingerprint};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, ProtocolChoice, RelayEndpoint};
use modelrelay_worker::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};
use modelrelay_worker::{ModelSource, WorkerOptions};
use tokio_util::sync::CancellationToken;

/// The secret the bench relay and worker share.
const SECRET: &str = "bench-secret";

/// How the bench worker reaches the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchLink {
    /// WebSocket, speaking this protocol version.
    WebSocket(ProtocolChoice),
    /// QUIC (protocol v2), trusting the relay's self-signed certificate by fingerprint.
    Quic,
}

/// A backend, a relay and a worker between them, all in this process.
pub struct World {
    /// The simulated backend's base URL.
    pub backend_url: String,
    /// The relay's base URL.
    pub relay_url: String,
    /// An HTTP/1 client with connection reuse.
    pub client: Client<HttpConnector, Full<Bytes>>,
    _relay: RunningServer,
    stop: CancellationToken,
}

impl Drop for World {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl World {
    /// Starts the world; the worker links over `link` and runs up to `slots` requests at once.
    pub async fn start(link: BenchLink, slots: u32) -> Self {
        let stop = CancellationToken::new();
        let sim = SimulatedBackend::new(SimulatedBackendConfig {
            models: vec!["m".into()],
            tokens: 16,
            token_delay: Duration::ZERO,
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let backend_url = format!("http://{}", listener.local_addr().expect("addr"));
        tokio::spawn(sim.serve(listener, stop.clone().cancelled_owned()));
        let mut config = ServerConfig::new(SECRET);
        config.relay.max_queue_len = 0;
        if link == BenchLink::Quic {
            config.quic = Some(QuicSettings {
                listen: "127.0.0.1:0".parse().expect("addr"),
                cert: None,
                key: None,
                data_dir: std::env::temp_dir()
                    .join(format!("modelrelay-bench-{}", std::process::id())),
            });
        }
        let relay = RunningServer::start(config, "127.0.0.1:0")
            .await
            .expect("relay");
        let relay_url = relay.url();
        let (worker_url, quic) = match (link, relay.quic()) {
            (BenchLink::Quic, Some((addr, fingerprint))) => {
                let trust = Trust::Pinned(parse_fingerprint(fingerprint).expect("fingerprint"));
                let config = quic::client_config(&trust).expect("QUIC settings");
                (format!("quic://{addr}"), Some(config))
            }
            _ => (relay_url.clone(), None),
        };
        let endpoint = RelayEndpoint::parse(&worker_url, "local").expect("endpoint");
        let mut options =
            WorkerOptions::new(endpoint, SECRET.into(), ModelSource::List(vec!["m".into()]));
        if let BenchLink::WebSocket(protocol) = link {
            options.protocol = protocol;
        }
        options.quic = quic;
        options.session = SessionConfig {
            max_concurrent: slots,
            ..SessionConfig::default()
        };
        let backend =
            HttpBackend::new(url::Url::parse(&backend_url).expect("url")).expect("backend");
        tokio::spawn(modelrelay_worker::run(
            options,
            NetDialer::new(None),
            Arc::new(backend),
            stop.clone().cancelled_owned(),
        ));
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let world = Self {
            backend_url,
            relay_url,
            client,
            _relay: relay,
            stop,
        };
        // Ready once a request goes through.
        let deadline = Instant::now() + Duration::from_secs(10);
        while world
            .request(&world.relay_url, r#"{"model":"m"}"#)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the bench world did not come up");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        world
    }

    /// POSTs `body` to `{base}/v1/chat/completions`; returns the time to the first body
    /// chunk and the whole body, or the status if it was not 200.
    pub async fn request(&self, base: &str, body: &'static str) -> Result<(Duration, usize), u16> {
        let request = Request::post(format!("{base}/v1/chat/completions"))
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .expect("request");
        let start = Instant::now();
        let response = self.client.request(request).await.map_err(|_| 0u16)?;
        if response.status() != 200 {
            return Err(response.status().as_u16());
        }
        let mut body = response.into_body();
        let mut first = None;
        let mut bytes = 0;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.map_err(|_| 0u16)?.into_data() {
                first.get_or_insert_with(|| start.elapsed());
                bytes += data.len();
            }
        }
        Ok((first.unwrap_or_else(|| start.elapsed()), bytes))
    }
}

//! A relay, a worker and a simulated backend in one process, with production relay
//! defaults: what the benchmarks and the load tool's tests measure.

use std::time::{Duration, Instant};

use crate::simulated_backend::SimulatedBackendConfig;
use crate::{Backend, Link, Worker, WorkerSpec, backend_with, relay, relay_with_quic};
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use modelrelay_core::relay::RelayConfig;
use modelrelay_relay::{RunningServer, ServerConfig};
use modelrelay_worker::link::ProtocolChoice;

/// How the stack's worker reaches the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StackLink {
    /// WebSocket, speaking this protocol version.
    WebSocket(ProtocolChoice),
    /// QUIC (protocol v2), trusting the relay's self-signed certificate by fingerprint.
    Quic,
}

/// A backend, a relay and a worker between them, all in this process.
pub struct Stack {
    /// The simulated backend's base URL.
    pub backend_url: String,
    /// The relay's base URL.
    pub relay_url: String,
    /// An HTTP/1 client with connection reuse.
    pub client: Client<HttpConnector, Full<Bytes>>,
    _worker: Worker,
    _relay: RunningServer,
    _backend: Backend,
}

/// The relay's production defaults, with no queue bound: a bench measures, it does not shed.
fn stack_relay_config(config: &mut ServerConfig) {
    config.relay = RelayConfig {
        max_queue_len: 0,
        ..RelayConfig::default()
    };
    config.drain_timeout = ServerConfig::new("").drain_timeout;
}

impl Stack {
    /// Starts the world; the worker links over `link` and runs up to `slots` requests at once.
    pub async fn start(link: StackLink, slots: u32) -> Self {
        let backend = backend_with(SimulatedBackendConfig {
            models: vec!["m".into()],
            tokens: 16,
            token_delay: Duration::ZERO,
        })
        .await;
        let relay = match link {
            StackLink::Quic => relay_with_quic(stack_relay_config).await,
            StackLink::WebSocket(_) => relay(stack_relay_config).await,
        };
        let relay_url = relay.url();
        let mut spec = match link {
            StackLink::Quic => WorkerSpec::over(Link::Quic, &relay, &backend, &["m"]),
            StackLink::WebSocket(protocol) => {
                let mut spec = WorkerSpec::over(Link::WebSocket, &relay, &backend, &["m"]);
                spec.protocol = protocol;
                spec
            }
        };
        spec.max_concurrent = slots;
        let worker = spec.start();
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).build(connector);
        let world = Self {
            backend_url: backend.url.clone(),
            relay_url,
            client,
            _worker: worker,
            _relay: relay,
            _backend: backend,
        };
        // Ready once a request goes through.
        let deadline = Instant::now() + Duration::from_secs(10);
        while world
            .request(&world.relay_url, r#"{"model":"m"}"#)
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "the stack did not come up");
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

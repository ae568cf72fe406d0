//! The simulated world comes up and streams.

use std::sync::Arc;
use std::time::Duration;

use modelrelay_relay::ServerConfig;
use modelrelay_testkit::simulated_backend::{SimulatedBackend, SimulatedBackendConfig};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::RelayEndpoint;
use modelrelay_worker::{ModelSource, WorkerOptions};
use sim::net::{SimConnector, SimDialer, listen, post};

#[test]
fn a_request_streams_through_the_simulated_relay() {
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(120))
        .rng_seed(1)
        .build();
    sim.host("relay", || async {
        let config = ServerConfig::new("s");
        modelrelay_relay::serve(config, listen(8080).await?, None, std::future::pending()).await;
        Ok(())
    });
    let backend = SimulatedBackend::new(SimulatedBackendConfig {
        models: vec!["m".into()],
        tokens: 20,
        token_delay: Duration::from_millis(10),
    });
    sim.host("backend", move || {
        let backend = backend.clone();
        async move {
            backend
                .serve_on(listen(9000).await?, std::future::pending())
                .await;
            Ok(())
        }
    });
    sim.host("worker", || async {
        let endpoint = RelayEndpoint::parse("http://relay:8080", "local").unwrap();
        let options = WorkerOptions::new(endpoint, "s".into(), ModelSource::List(vec!["m".into()]));
        let backend = HttpBackend::with_connector(
            url::Url::parse("http://backend:9000").unwrap(),
            SimConnector,
        );
        modelrelay_worker::run(
            options,
            SimDialer::default(),
            Arc::new(backend),
            std::future::pending(),
        )
        .await;
        Ok(())
    });
    sim.client("client", async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut response = post(
            "relay",
            8080,
            "/v1/chat/completions",
            r#"{"model":"m","stream":true}"#.into(),
        )
        .await?;
        assert_eq!(response.status, 200);
        let mut body = Vec::new();
        while let Some(chunk) = response.next_chunk().await {
            body.extend_from_slice(&chunk.unwrap());
        }
        let text = String::from_utf8(body).unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        Ok(())
    });
    sim.run().unwrap();
}

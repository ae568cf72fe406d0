//! Waiting for the relay to show what a test set up.

use std::time::Duration;

use modelrelay_relay::RunningServer;

use crate::client::Http;

/// Waits until `/health` shows `n` registered workers.
pub async fn wait_for_workers(http: &Http, relay: &RunningServer, n: u64) {
    wait_for_workers_at(http, &relay.url(), n).await;
}

/// Waits until `/health` of the relay at `base_url` shows `n` registered workers.
pub async fn wait_for_workers_at(http: &Http, base_url: &str, n: u64) {
    let url = format!("{base_url}/health");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let health = http.get(&url).await.json();
        if health["workers_connected"].as_u64() == Some(n) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "expected {n} workers, health says {health}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until `/v1/models` lists `model`.
pub async fn wait_for_model(http: &Http, relay: &RunningServer, model: &str) {
    let url = format!("{}/v1/models", relay.url());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let models = http.get(&url).await.json();
        let listed = models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == model);
        if listed {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "model {model} never listed: {models}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

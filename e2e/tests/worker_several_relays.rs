//! One worker serving several relays: its slots shared across its links, and
//! one relay's drain leaving the others served.

mod common;

use std::time::Duration;

use common::*;
use http::StatusCode;
use modelrelay_relay::RunningServer;
use modelrelay_testkit::simulated_backend::BackendEvent;

/// A streamed chat for model `m`, tagged `tag` in the backend's log.
fn chat(tag: &str, tokens: u32, delay_ms: u32) -> String {
    format!(
        r#"{{"model":"m","stream":true,"messages":[],"mock":{{"tokens":{tokens},"delay_ms":{delay_ms},"tag":"{tag}"}}}}"#
    )
}

/// How many workers `relay` has registered, by its `/health`.
async fn workers_on(http: &Http, relay: &RunningServer) -> u64 {
    let health = http.get(&format!("{}/health", relay.url())).await;
    health.json()["workers_connected"].as_u64().unwrap_or(0)
}

/// Waits until every relay has registered one worker.
async fn until_each_has_the_worker(http: &Http, relays: &[&RunningServer]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut all = true;
        for relay in relays {
            all &= workers_on(http, relay).await == 1;
        }
        if all {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the worker did not register with every relay"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Two relays, and one worker with `slots` linked to both, registered with each.
async fn two_relays_one_worker(
    slots: u32,
) -> (RunningServer, RunningServer, Backend, Worker, Http) {
    let (a, b) = (relay(|_| {}).await, relay(|_| {}).await);
    let backend = backend(&["m"]).await;
    let mut spec = WorkerSpec::new(&a, &backend, &["m"]);
    spec.also.push(b.url());
    spec.max_concurrent = slots;
    let worker = spec.start();
    let http = Http::new();
    until_each_has_the_worker(&http, &[&a, &b]).await;
    (a, b, backend, worker, http)
}

/// Sends `body` to `relay` and reads the whole answer; panics unless it is a complete stream.
async fn complete_stream(http: Http, relay: String, body: String) {
    let reply = http
        .post(&format!("{relay}/v1/chat/completions"), &body)
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.text().contains("[DONE]"), "{}", reply.text());
}

#[tokio::test]
async fn one_worker_serves_two_relays_and_never_runs_more_than_its_slots() {
    let (a, b, backend, _worker, http) = two_relays_one_worker(2).await;

    // Both relays send as much as they think the worker takes, at once.
    let mut clients = Vec::new();
    for n in 0..12 {
        let relay = if n % 2 == 0 { a.url() } else { b.url() };
        let body = chat(&format!("t{n}"), 6, 20);
        clients.push(tokio::spawn(complete_stream(http.clone(), relay, body)));
    }
    for client in clients {
        client.await.unwrap();
    }
    let finished = backend
        .sim
        .events()
        .iter()
        .filter(|e| matches!(e, BackendEvent::Finished { .. }))
        .count();
    assert_eq!(finished, 12, "each request ran once");
    let peak = backend.sim.peak_concurrency();
    assert!(
        peak <= 2,
        "the backend saw {peak} requests at once from a worker with 2 slots"
    );
}

#[tokio::test]
async fn a_relays_drain_drains_only_its_link_and_the_worker_keeps_serving_the_others() {
    let (a, b, backend, _worker, http) = two_relays_one_worker(4).await;

    // A stream on each relay, then relay A drains.
    let on_a = tokio::spawn(complete_stream(http.clone(), a.url(), chat("a1", 20, 25)));
    let on_b = tokio::spawn(complete_stream(http.clone(), b.url(), chat("b1", 20, 25)));
    assert!(
        backend
            .sim
            .wait_for(Duration::from_secs(10), |events| events.len() >= 2)
            .await,
        "both streams reached the backend"
    );
    a.begin_shutdown();
    // The relay that drains lets its running stream finish; the other relay
    // takes new work on the same worker meanwhile.
    complete_stream(http.clone(), b.url(), chat("b2", 2, 0)).await;
    on_a.await.unwrap();
    on_b.await.unwrap();
    a.stopped().await;
    complete_stream(http.clone(), b.url(), chat("b3", 2, 0)).await;
    assert_eq!(
        workers_on(&http, &b).await,
        1,
        "the worker's other link stayed up"
    );
    assert!(backend.sim.cancelled_tags().is_empty(), "nothing was cut");
}

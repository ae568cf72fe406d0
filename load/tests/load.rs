//! The load tool against a real relay and a simulated backend on loopback.

use std::time::Duration;

use modelrelay_load::check::ApiShape;
use modelrelay_load::{LoadConfig, Outcome, Stop, run, run_outcomes};
use modelrelay_testkit::stack::{Stack, StackLink};
use modelrelay_worker::link::ProtocolChoice;

fn small_load(url: &str, requests: u64) -> LoadConfig {
    let mut load = LoadConfig::new(url);
    load.concurrency = 8;
    load.stop = Stop::Requests(requests);
    load.tokens = 12;
    load.expect_simulated_text = true;
    load.request_timeout = Duration::from_secs(20);
    load
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_is_checked_and_counted_through_the_relay_and_straight() {
    let world = Stack::start(StackLink::WebSocket(ProtocolChoice::V2), 16).await;
    for url in [&world.relay_url, &world.backend_url] {
        for (api, stream) in [
            (ApiShape::Openai, true),
            (ApiShape::Openai, false),
            (ApiShape::Anthropic, true),
            (ApiShape::Anthropic, false),
        ] {
            let mut load = small_load(url, 40);
            load.api = api;
            load.stream = stream;
            let report = run(&load).await.unwrap();
            assert_eq!(
                report.complete, 40,
                "{url} {api:?} stream={stream}: {report}"
            );
            assert_eq!(report.failures(), 0, "{report}");
            assert_eq!(report.first_chunk.count, 40);
            assert!(report.latency.p50_ms > 0.0 && report.latency.p50_ms <= report.latency.max_ms);
            if stream && api == ApiShape::Openai {
                // The role chunk, 12 tokens, the finish chunk and [DONE].
                assert_eq!(report.chunks, 40 * 15, "{report}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_are_counted_by_kind_with_an_example() {
    let world = Stack::start(StackLink::WebSocket(ProtocolChoice::V2), 16).await;
    let mut load = small_load(&world.relay_url, 10);
    load.model = "no-such-model".into();
    let report = run(&load).await.unwrap();
    assert_eq!(report.complete, 0);
    let failure = &report.failed["http 404"];
    assert_eq!(failure.count, 10);
    assert!(
        failure.example.contains("model_not_found"),
        "{}",
        failure.example
    );

    // Nothing listening: transport failures, not a hang.
    let mut load = small_load("http://127.0.0.1:9", 3);
    load.concurrency = 1;
    let report = run(&load).await.unwrap();
    assert_eq!(report.failed["transport"].count, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_leave_are_counted_apart_with_the_moment_they_left() {
    let world = Stack::start(StackLink::WebSocket(ProtocolChoice::V2), 16).await;
    let mut load = small_load(&world.relay_url, 12);
    load.tokens = 100;
    load.token_delay_ms = 10;
    load.cancel_after = Some(3);
    let outcomes = run_outcomes(&load).await.unwrap();
    assert_eq!(outcomes.len(), 12);
    for outcome in &outcomes {
        match outcome {
            Outcome::Left { chunks, tag, .. } => {
                assert_eq!(*chunks, 3);
                assert!(tag.starts_with("load-"));
            }
            other => panic!("expected the client to leave, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_for_a_duration_stops_sending_when_it_is_over() {
    let world = Stack::start(StackLink::WebSocket(ProtocolChoice::V2), 16).await;
    let mut load = small_load(&world.relay_url, 0);
    load.stop = Stop::Duration(Duration::from_millis(300));
    load.concurrency = 2;
    let started = std::time::Instant::now();
    let report = run(&load).await.unwrap();
    assert!(report.complete > 0);
    assert_eq!(report.failures(), 0);
    assert!(started.elapsed() < Duration::from_secs(10));
}

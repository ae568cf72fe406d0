//! Fault scenarios, each a story: build the world, break something, check what every
//! client and every backend saw. The relay, workers and backends are the real code on
//! turmoil's simulated network; time is simulated, so minutes take milliseconds.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelrelay_testkit::simulated_backend::{BackendEvent, SimulatedBackendConfig};
use sim::client::{self, Ask, Outcome};
use sim::world::{RELAY, RELAY_PORT, World, WorldConfig, relay_config};

const SECOND: Duration = Duration::from_secs(1);

fn backend_config() -> SimulatedBackendConfig {
    SimulatedBackendConfig {
        models: vec!["m".into()],
        tokens: 8,
        token_delay: Duration::ZERO,
    }
}

fn events(world: &World, backend: &str) -> Vec<BackendEvent> {
    world.backend_handle(backend).events()
}

fn received(world: &World, backend: &str, tag: &str) -> bool {
    events(world, backend)
        .iter()
        .any(|e| matches!(e, BackendEvent::Received { tag: Some(t), .. } if t == tag))
}

fn cancelled(world: &World, backend: &str, tag: &str) -> bool {
    events(world, backend)
        .iter()
        .any(|e| matches!(e, BackendEvent::Cancelled { tag: Some(t), .. } if t == tag))
}

fn finished(world: &World, backend: &str, tag: &str) -> bool {
    events(world, backend)
        .iter()
        .any(|e| matches!(e, BackendEvent::Finished { tag: Some(t) } if t == tag))
}

/// The worker host in front of a backend host (`backend-N` ↔ `worker-N`).
fn worker_of(backend: &str) -> String {
    backend.replace("backend", "worker")
}

/// Every request attempt any backend received also ended there (nothing left running).
fn assert_nothing_left_running(world: &World) {
    for (tag, (received, ended)) in world.attempts() {
        assert_eq!(
            received, ended,
            "request {tag}: {received} attempts, {ended} ended"
        );
    }
}

/// A world with a relay and `n` workers, each in front of its own backend.
fn world_with_workers(seed: u64, n: usize, slots: u32) -> World {
    let mut world = World::new(WorldConfig::readable(seed));
    world.relay(relay_config());
    for i in 1..=n {
        world.backend(&format!("backend-{i}"), backend_config());
        world.worker(
            &format!("worker-{i}"),
            &format!("backend-{i}"),
            slots,
            Duration::ZERO,
        );
    }
    world
}

/// Scenario 1: a worker crashes. Before the first byte the request moves to another
/// worker and succeeds; after it, the client gets one clean error event and nothing twice.
#[test]
fn worker_crash_before_the_first_byte_requeues_and_after_it_ends_with_one_error() {
    let mut world = world_with_workers(1, 2, 4);
    let early = world.ask("client-early", Ask::whole("early", 20, 100), SECOND);
    world.step_until("the early request reaches a backend", 5 * SECOND, |w| {
        w.backend_serving("early").is_some()
    });
    let first = world.backend_serving("early").unwrap();
    world.crash(&worker_of(&first));
    world.step_until("the early request is answered", 30 * SECOND, |_| {
        early.outcome().is_some()
    });
    assert_eq!(early.outcome(), Some(Outcome::Complete));
    let other = if first == "backend-1" {
        "backend-2"
    } else {
        "backend-1"
    };
    assert!(
        finished(&world, other, "early"),
        "the other backend served it"
    );
    assert!(
        cancelled(&world, &first, "early"),
        "the crashed worker's backend call was dropped"
    );
    world.bounce(&worker_of(&first));

    let late = world.ask("client-late", Ask::stream("late", 50, 100), Duration::ZERO);
    world.step_until("the late stream starts", 10 * SECOND, |w| {
        w.backend_serving("late").is_some()
    });
    world.step_for(Duration::from_millis(500));
    let serving = world.backend_serving("late").unwrap();
    world.crash(&worker_of(&serving));
    world.step_until("the late stream ends", 30 * SECOND, |_| {
        late.outcome().is_some()
    });
    match late.outcome().unwrap() {
        Outcome::BrokenOff { code, chunks } => {
            assert_eq!(code, "worker_lost");
            assert!(chunks >= 3, "{chunks} chunks before the error");
        }
        other => panic!("expected one error event after a correct prefix, got {other}"),
    }
    assert_eq!(
        world.attempts()["late"].0,
        1,
        "a stream that started is never sent again"
    );
    assert_nothing_left_running(&world);
}

/// Scenario 2: a partition between a worker and the relay. Heartbeats go missing, the
/// relay drops the worker and requeues its request; the worker notices the silence,
/// stops its backend call, and once the partition heals it reconnects and serves again.
#[test]
fn a_partition_drops_the_worker_requeues_its_work_and_after_healing_it_serves_again() {
    let mut world = world_with_workers(2, 2, 4);
    let held = world.ask("client-held", Ask::whole("held", 100, 100), SECOND);
    world.step_until("the request reaches a backend", 5 * SECOND, |w| {
        w.backend_serving("held").is_some()
    });
    let cut_backend = world.backend_serving("held").unwrap();
    let cut = worker_of(&cut_backend);
    world.note(format_args!("test partitions {cut} from the relay"));
    world.sim.partition(cut.as_str(), RELAY);
    let cut_at = world.sim.elapsed();
    let other_backend = if cut_backend == "backend-1" {
        "backend-2"
    } else {
        "backend-1"
    };
    // The relay notices within a ping interval plus the pong window (2 s + 2 s).
    world.step_until("the request moves to the other worker", 5 * SECOND, |w| {
        received(w, other_backend, "held")
    });
    // The cut-off worker notices the silence (6 s), gives the link up, stops its call.
    world.step_until(
        "the cut-off worker stops its backend call",
        10 * SECOND,
        |w| cancelled(w, &cut_backend, "held"),
    );
    world.step_until("the requeued request completes", 20 * SECOND, |_| {
        held.outcome().is_some()
    });
    assert_eq!(held.outcome(), Some(Outcome::Complete));

    world.note("test heals the partition");
    world.sim.repair(cut.as_str(), RELAY);
    let reconnects_before = world.accepts_from(&cut).len();
    world.step_until("the worker reconnects", 15 * SECOND, |w| {
        w.accepts_from(&cut).len() > reconnects_before
    });
    world.step_for(SECOND);
    // Both idle: the worker that got work least recently (the reconnected one) is next.
    let after = world.ask("client-after", Ask::whole("after", 4, 10), Duration::ZERO);
    world.step_until("a request after healing completes", 10 * SECOND, |_| {
        after.outcome().is_some()
    });
    assert_eq!(after.outcome(), Some(Outcome::Complete));
    assert!(
        finished(&world, &cut_backend, "after"),
        "the healed worker serves again"
    );
    assert!(world.sim.elapsed() - cut_at < 60 * SECOND);
    assert_nothing_left_running(&world);
}

/// Scenario 3: the relay restarts. Every worker reconnects with backoff, and the
/// seeded jitter spreads their attempts instead of a thundering herd.
#[test]
fn a_relay_restart_brings_every_worker_back_without_a_thundering_herd() {
    const WORKERS: usize = 8;
    let mut world = world_with_workers(3, WORKERS, 2);
    let names: Vec<String> = (1..=WORKERS).map(|i| format!("worker-{i}")).collect();
    world.step_until("every worker connects", 5 * SECOND, |w| {
        names.iter().all(|n| !w.accepts_from(n).is_empty())
    });
    world.step_for(SECOND);
    let restart = world.sim.elapsed();
    world.bounce(RELAY);
    world.step_until("every worker reconnects", 20 * SECOND, |w| {
        names
            .iter()
            .all(|n| w.accepts_from(n).iter().any(|at| *at > restart))
    });
    let first_retries: Vec<Duration> = names
        .iter()
        .map(|n| {
            *world
                .accepts_from(n)
                .iter()
                .find(|at| **at > restart)
                .unwrap()
        })
        .collect();
    let earliest = *first_retries.iter().min().unwrap();
    let latest = *first_retries.iter().max().unwrap();
    // The first retry waits 1 s plus a jitter of up to 0.5 s drawn per worker.
    assert!(
        earliest >= restart + SECOND,
        "a worker came back before its backoff"
    );
    assert!(latest <= restart + SECOND * 3 / 2 + Duration::from_millis(50));
    assert!(
        latest - earliest >= Duration::from_millis(150),
        "attempts not spread: {first_retries:?}"
    );
    let distinct: BTreeSet<u128> = first_retries.iter().map(|d| d.as_millis()).collect();
    assert!(
        distinct.len() >= WORKERS - 1,
        "attempts bunched: {first_retries:?}"
    );
    // And the restarted relay serves.
    let after = world.ask(
        "client",
        Ask::stream("after-restart", 5, 10),
        Duration::ZERO,
    );
    world.step_until("a request after the restart completes", 10 * SECOND, |_| {
        after.outcome().is_some()
    });
    assert_eq!(after.outcome(), Some(Outcome::Complete));
}

/// Scenario 4: a busy worker drains. Its running request finishes there; work that
/// queues meanwhile goes to a replacement; the drained worker disconnects and exits.
#[test]
fn draining_a_busy_worker_finishes_its_work_and_hands_new_work_to_a_replacement() {
    let mut world = World::new(WorldConfig::readable(4));
    world.relay(relay_config());
    world.backend("backend-1", backend_config());
    world.backend("backend-2", backend_config());
    let drained = world.worker("worker-1", "backend-1", 1, Duration::ZERO);
    // The replacement comes up only later.
    world.worker("worker-2", "backend-2", 1, 4 * SECOND);
    let busy = world.ask("client-busy", Ask::stream("busy", 30, 100), SECOND);
    world.step_until("worker-1 is busy", 5 * SECOND, |w| {
        w.backend_serving("busy").is_some()
    });
    let queued = world.ask("client-queued", Ask::whole("queued", 4, 10), Duration::ZERO);
    world.step_for(Duration::from_millis(500));
    world.note("test drains worker-1");
    drained.stop();
    world.step_until("both requests end", 20 * SECOND, |_| {
        busy.outcome().is_some() && queued.outcome().is_some()
    });
    assert_eq!(
        busy.outcome(),
        Some(Outcome::Complete),
        "the running stream finished where it was"
    );
    assert_eq!(queued.outcome(), Some(Outcome::Complete));
    assert!(finished(&world, "backend-1", "busy"));
    assert!(
        finished(&world, "backend-2", "queued"),
        "the replacement took the queued work"
    );
    assert!(
        !received(&world, "backend-1", "queued"),
        "no new work for the draining worker"
    );
    world.step_until("worker-1 exits", 10 * SECOND, |w| {
        w.trace
            .lines()
            .iter()
            .any(|l| l.ends_with("worker-1 exits"))
    });
    assert!(!world.sim.is_host_running("worker-1"));
}

/// Scenario 5: a client disconnects mid-stream. The backend sees the cancellation at
/// once; chunks still on their way are dropped; the relay serves on.
#[test]
fn a_client_disconnecting_mid_stream_cancels_the_backend_call() {
    let mut world = world_with_workers(5, 1, 2);
    let mut leaving = Ask::stream("leaving", 200, 50);
    leaving.abandon_after = Some(5);
    let left = world.ask("client-leaving", leaving, SECOND);
    world.step_until("the client leaves", 10 * SECOND, |_| {
        left.outcome().is_some()
    });
    assert_eq!(left.outcome(), Some(Outcome::Left { chunks: 5 }));
    let left_at = world.sim.elapsed();
    world.step_until("the backend sees the cancellation", SECOND, |w| {
        cancelled(w, "backend-1", "leaving")
    });
    assert!(world.sim.elapsed() - left_at < Duration::from_millis(100));
    let next = world.ask("client-next", Ask::stream("next", 10, 10), Duration::ZERO);
    world.step_until("the next request completes", 5 * SECOND, |_| {
        next.outcome().is_some()
    });
    assert_eq!(next.outcome(), Some(Outcome::Complete));
    assert_nothing_left_running(&world);
}

/// Scenario 6: a slow backend. The request timeout answers 504 and the backend call
/// is cancelled.
#[test]
fn a_slow_backend_hits_the_request_timeout_and_its_call_is_cancelled() {
    let mut world = World::new(WorldConfig::readable(6));
    let mut config = relay_config();
    config.relay.request_timeout = Some(5 * SECOND);
    world.relay(config);
    world.backend("backend-1", backend_config());
    world.worker("worker-1", "backend-1", 1, Duration::ZERO);
    let slow = world.ask("client", Ask::whole("slow", 100, 100), SECOND);
    world.step_until("the client is answered", 10 * SECOND, |_| {
        slow.outcome().is_some()
    });
    assert_eq!(
        slow.outcome(),
        Some(Outcome::Refused {
            status: 504,
            code: "request_timeout".into()
        })
    );
    world.step_until("the backend call is cancelled", SECOND, |w| {
        cancelled(w, "backend-1", "slow")
    });
    assert_nothing_left_running(&world);
}

/// Scenario 7: a burst overflows the queue. The excess gets 429; the queue never holds
/// more than its bound; the rest are served in arrival order.
#[test]
fn a_burst_overflows_the_queue_gets_429s_and_the_rest_are_served_in_order() {
    const BURST: usize = 10;
    const BOUND: usize = 3;
    let mut world = World::new(WorldConfig::readable(7));
    let mut config = relay_config();
    config.relay.max_queue_len = BOUND;
    world.relay(config);
    world.backend("backend-1", backend_config());
    world.worker("worker-1", "backend-1", 1, Duration::ZERO);
    let outcomes: Arc<Mutex<Vec<(usize, Outcome)>>> = Arc::default();
    let max_depth = Arc::new(Mutex::new(0u64));
    let (out, depth) = (outcomes.clone(), max_depth.clone());
    let trace = world.trace.clone();
    world.client("burst", async move {
        tokio::time::sleep(SECOND).await;
        let mut sent = Vec::new();
        for i in 0..BURST {
            let (out, trace) = (out.clone(), trace.clone());
            sent.push(tokio::spawn(async move {
                let ask = Ask::whole(format!("burst-{i}"), 5, 100);
                let outcome = client::send(&ask, 60 * SECOND).await;
                trace.record(format_args!("{} -> {outcome}", ask.tag));
                out.lock().unwrap().push((i, outcome));
            }));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Watch the queue while the burst drains.
        while out.lock().unwrap().len() < BURST {
            if let Ok((200, body)) = sim::net::get(RELAY, RELAY_PORT, "/health").await {
                let health: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let queued = health["queue_depth"].as_u64().unwrap();
                let mut max = depth.lock().unwrap();
                *max = (*max).max(queued);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for task in sent {
            task.await.unwrap();
        }
        Ok(())
    });
    world.run();
    let mut outcomes = outcomes.lock().unwrap().clone();
    outcomes.sort_by_key(|(i, _)| *i);
    let served: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Complete)
        .map(|(i, _)| *i)
        .collect();
    let refused: Vec<usize> = outcomes
        .iter()
        .filter(|(_, o)| {
            *o == Outcome::Refused {
                status: 429,
                code: "queue_full".into(),
            }
        })
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(served, [0, 1, 2, 3], "one running plus a full queue");
    assert_eq!(refused, (4..BURST).collect::<Vec<_>>());
    assert!(*max_depth.lock().unwrap() <= BOUND as u64);
    // The backend saw them in the order they arrived.
    let order: Vec<String> = events(&world, "backend-1")
        .into_iter()
        .filter_map(|e| match e {
            BackendEvent::Received { tag: Some(t), .. } => Some(t),
            _ => None,
        })
        .collect();
    assert_eq!(order, ["burst-0", "burst-1", "burst-2", "burst-3"]);
}

/// Scenario 8: a flapping link during steady load. Short holds (a congested link)
/// and short partitions (a lost link) come and go; every request still ends exactly
/// once with an outcome the contract allows, and every stream that completes is whole.
#[test]
fn a_flapping_link_during_steady_load_loses_and_duplicates_nothing() {
    let mut world = world_with_workers(8, 2, 2);
    let outcomes: Arc<Mutex<Vec<(String, Outcome)>>> = Arc::default();
    for c in 0..2 {
        let (out, trace) = (outcomes.clone(), world.trace.clone());
        world.client(&format!("client-{c}"), async move {
            tokio::time::sleep(SECOND).await;
            for n in 0..12 {
                let ask = Ask::stream(format!("c{c}-{n}"), 10, 50);
                let outcome = client::send(&ask, 90 * SECOND).await;
                trace.record(format_args!("{} -> {outcome}", ask.tag));
                out.lock().unwrap().push((ask.tag.clone(), outcome));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Ok(())
        });
    }
    let mut flaps = 0;
    while outcomes.lock().unwrap().len() < 24 {
        world.step_for(Duration::from_millis(1500));
        flaps += 1;
        if flaps % 2 == 0 {
            world.note("test holds worker-1's link for 300 ms");
            world.sim.hold("worker-1", RELAY);
            world.step_for(Duration::from_millis(300));
            world.sim.release("worker-1", RELAY);
        } else if flaps % 3 == 0 {
            world.note("test cuts worker-2's link for 500 ms");
            world.sim.partition("worker-2", RELAY);
            world.step_for(Duration::from_millis(500));
            world.sim.repair("worker-2", RELAY);
        }
        assert!(
            world.sim.elapsed() < 300 * SECOND,
            "the load never finished"
        );
    }
    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), 24, "every request ended, once");
    for (tag, outcome) in &outcomes {
        assert!(outcome.is_allowed(), "{tag}: {outcome}");
        if let Outcome::BrokenOff { code, .. } | Outcome::Refused { code, .. } = outcome {
            assert!(
                ["worker_lost", "requeue_exhausted", "queue_timeout"].contains(&code.as_str()),
                "{tag}: {outcome}"
            );
        }
    }
    let complete = outcomes
        .iter()
        .filter(|(_, o)| *o == Outcome::Complete)
        .count();
    assert!(complete >= 20, "only {complete} of 24 completed");
    world.step_for(15 * SECOND);
    assert_nothing_left_running(&world);
}

/// Scenario 9: a request whose workers keep dying fails after three requeues with a
/// 503, instead of going round forever.
#[test]
fn a_request_whose_workers_keep_dying_fails_after_three_requeues() {
    let mut world = world_with_workers(9, 4, 1);
    let doomed = world.ask("client", Ask::whole("doomed", 1000, 100), SECOND);
    let mut crashed = Vec::new();
    for attempt in 1..=4 {
        world.step_until(
            &format!("attempt {attempt} reaches a backend"),
            10 * SECOND,
            |w| {
                w.backend_serving("doomed")
                    .is_some_and(|b| !crashed.contains(&b))
            },
        );
        let backend = world.backend_serving("doomed").unwrap();
        world.crash(&worker_of(&backend));
        crashed.push(backend);
    }
    world.step_until("the client is answered", 10 * SECOND, |_| {
        doomed.outcome().is_some()
    });
    assert_eq!(
        doomed.outcome(),
        Some(Outcome::Refused {
            status: 503,
            code: "requeue_exhausted".into()
        })
    );
    assert_eq!(
        world.attempts()["doomed"],
        (4, 4),
        "four attempts, each stopped"
    );
}

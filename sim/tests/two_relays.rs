//! Two relays and one pool of workers linked to both: a relay crashes and
//! returns under load, a relay drains, a worker is cut off from one relay.
//!
//! After each story: every request ended exactly once (a client has one
//! outcome, never a wrong or duplicated answer); no backend call ran twice at
//! once for one request; no worker ran more than its slots; nothing was left
//! running; the requests of the relay that stayed up all completed. Each runs
//! for `SIM_SEEDS` seeds (default 2; `SIM_SEED=S` replays one).

use std::collections::BTreeSet;
use std::time::Duration;

use modelrelay_testkit::simulated_backend::{BackendEvent, SimulatedBackendConfig};
use sim::client::{Ask, Outcome};
use sim::seeds::{for_each_seed, seeds};
use sim::world::{RelayStop, Slot, World, WorldConfig, relay_config};

const SECOND: Duration = Duration::from_secs(1);
const A: &str = "relay-a";
const B: &str = "relay-b";
/// Workers, each linked to both relays, each in front of its own backend.
const WORKERS: usize = 3;
/// Slots of each worker, for both relays together.
const SLOTS: u32 = 2;
const TEST_FILE: &str = "two_relays";

/// Two relays and `WORKERS` workers linked to both; network latency 1–5 ms by seed.
fn two_relays(seed: u64) -> (World, RelayStop, RelayStop) {
    let mut config = WorldConfig::readable(seed);
    config.max_latency = Duration::from_millis(5);
    let mut world = World::new(config);
    let a = world.relay_named(A, relay_config());
    let b = world.relay_named(B, relay_config());
    for i in 1..=WORKERS {
        let backend = format!("backend-{i}");
        world.backend(
            &backend,
            SimulatedBackendConfig {
                models: vec!["m".into()],
                tokens: 8,
                token_delay: Duration::ZERO,
            },
        );
        world.worker_to(
            &format!("worker-{i}"),
            &backend,
            (SLOTS, Duration::ZERO),
            &[A, B],
        );
    }
    (world, a, b)
}

/// `n` streams to `relay`, tagged `{prefix}{i}`, of `tokens` tokens 100 ms apart,
/// sent from `at` on, 50 ms apart.
fn streams(
    world: &mut World,
    (relay, prefix): (&str, &str),
    n: usize,
    tokens: usize,
    at: Duration,
) -> Vec<(String, Slot)> {
    (0..n)
        .map(|i| {
            let tag = format!("{prefix}{i}");
            let ask = Ask::stream(tag.clone(), tokens, 100).to(relay);
            let after = at + Duration::from_millis(50 * i as u64);
            let slot = world.ask(&format!("client-{tag}"), ask, after);
            (tag, slot)
        })
        .collect()
}

/// Steps until every client has an outcome.
fn until_all_end(world: &mut World, clients: &[&[(String, Slot)]]) {
    world.step_until("every client ends", 120 * SECOND, |_| {
        clients
            .iter()
            .all(|group| group.iter().all(|(_, slot)| slot.outcome().is_some()))
    });
}

fn assert_all_complete(group: &[(String, Slot)]) {
    for (tag, slot) in group {
        assert_eq!(slot.outcome(), Some(Outcome::Complete), "request {tag}");
    }
}

/// The invariants every story ends with, on the backends' logs.
fn assert_invariants(world: &World) {
    for i in 1..=WORKERS {
        let backend = world.backend_handle(&format!("backend-{i}"));
        let peak = backend.peak_concurrency();
        assert!(
            peak <= SLOTS as usize,
            "backend-{i} ran {peak} requests at once for a worker with {SLOTS} slots"
        );
    }
    // One request's backend calls never overlap, on any backend.
    let mut running = BTreeSet::new();
    let mut all: Vec<(std::time::SystemTime, BackendEvent)> = (1..=WORKERS)
        .flat_map(|i| world.backend_handle(&format!("backend-{i}")).timed_events())
        .collect();
    all.sort_by_key(|(at, _)| *at);
    for (_, event) in all {
        match event {
            BackendEvent::Received { tag: Some(tag), .. } => {
                assert!(
                    running.insert(tag.clone()),
                    "request {tag} ran twice at once"
                );
            }
            BackendEvent::Finished { tag: Some(tag) }
            | BackendEvent::Cancelled { tag: Some(tag), .. } => {
                running.remove(&tag);
            }
            _ => {}
        }
    }
    for (tag, (received, ended)) in world.attempts() {
        assert_eq!(
            received, ended,
            "request {tag}: {received} calls, {ended} ended"
        );
    }
}

/// Whether the backends saw the call of `tag` cancelled.
fn cancelled(world: &World, tag: &str) -> bool {
    (1..=WORKERS).any(|i| {
        world
            .backend_handle(&format!("backend-{i}"))
            .cancelled_tags()
            .contains(&Some(tag.to_owned()))
    })
}

#[test]
fn a_relay_crash_costs_only_its_own_requests_and_workers_serve_it_again_once_it_returns() {
    for_each_seed(&seeds(2, 0x5e5e), TEST_FILE, |seed| {
        let (mut world, _a, _b) = two_relays(seed);
        let on_a = streams(&mut world, (A, "a"), 6, 20, 2 * SECOND);
        let on_b = streams(&mut world, (B, "b"), 6, 20, 2 * SECOND);
        world.step_for(3 * SECOND);
        world.crash(A);
        world.step_for(3 * SECOND);
        world.bounce(A);
        let late = streams(&mut world, (A, "late"), 6, 4, 14 * SECOND);
        until_all_end(&mut world, &[&on_a, &on_b, &late]);
        // The surviving relay's requests all completed; the crashed relay's
        // either completed before the crash or ended with their connection,
        // their backend calls cancelled by the workers.
        assert_all_complete(&on_b);
        for (tag, slot) in &on_a {
            let outcome = slot.outcome().expect("ended");
            assert_ne!(outcome, Outcome::Hung, "request {tag}");
            if outcome != Outcome::Complete {
                assert!(
                    !matches!(outcome, Outcome::Refused { .. }),
                    "request {tag}: {outcome}"
                );
                let never_ran = !world.attempts().contains_key(tag);
                assert!(never_ran || cancelled(&world, tag), "request {tag}");
            }
        }
        // Back, the relay is served by the same workers again.
        assert_all_complete(&late);
        world.step_for(2 * SECOND);
        assert_invariants(&world);
    });
}

#[test]
fn a_relay_draining_finishes_its_requests_while_the_workers_keep_serving_the_other() {
    for_each_seed(&seeds(2, 0xd7a1), TEST_FILE, |seed| {
        let (mut world, _a, b) = two_relays(seed);
        // Together they fill every slot once.
        let on_a = streams(&mut world, (A, "a"), 3, 30, 2 * SECOND);
        let on_b = streams(&mut world, (B, "b"), 3, 30, 2 * SECOND);
        world.step_for(3 * SECOND);
        world.note("test drains relay-b");
        b.stop();
        // While relay-b drains, relay-a gets new work on the same workers.
        let more = streams(&mut world, (A, "more"), 3, 4, 5 * SECOND);
        until_all_end(&mut world, &[&on_a, &on_b, &more]);
        assert_all_complete(&on_a);
        assert_all_complete(&on_b);
        assert_all_complete(&more);
        world.step_for(15 * SECOND);
        let after = streams(&mut world, (A, "after"), 6, 4, SECOND);
        until_all_end(&mut world, &[&after]);
        assert_all_complete(&after);
        for (tag, _) in on_a.iter().chain(&on_b).chain(&more).chain(&after) {
            assert!(!cancelled(&world, tag), "request {tag} was cut");
        }
        assert_invariants(&world);
    });
}

#[test]
fn a_worker_cut_off_from_one_relay_keeps_serving_the_other_and_returns_when_healed() {
    for_each_seed(&seeds(2, 0x9a27), TEST_FILE, |seed| {
        let (mut world, _a, _b) = two_relays(seed);
        world.step_for(2 * SECOND);
        world.note("test partitions worker-1 from relay-a");
        world.sim.partition("worker-1", A);
        let on_a = streams(&mut world, (A, "a"), 6, 10, SECOND);
        let on_b = streams(&mut world, (B, "b"), 6, 10, SECOND);
        world.step_for(10 * SECOND);
        world.note("test heals the partition");
        world.sim.repair("worker-1", A);
        let healed_at = world.sim.elapsed();
        let late = streams(&mut world, (A, "late"), 6, 10, 15 * SECOND);
        until_all_end(&mut world, &[&on_a, &on_b, &late]);
        // Nothing had reached worker-1 from relay-a before the cut, so every
        // request completes: relay-a moves what it sent into the cut elsewhere.
        assert_all_complete(&on_a);
        assert_all_complete(&on_b);
        assert_all_complete(&late);
        assert!(
            world
                .trace
                .lines()
                .iter()
                .any(|line| line.contains("relay-a accepts worker-1")
                    && line
                        .trim_start()
                        .split_once(' ')
                        .and_then(|(at, _)| at.parse::<f64>().ok())
                        .is_some_and(|at| at >= healed_at.as_secs_f64())),
            "worker-1 linked to relay-a again after the partition healed"
        );
        assert_invariants(&world);
    });
}

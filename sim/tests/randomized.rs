//! Randomized fault schedules: for each seed, random workers, requests and faults
//! (crashes, partitions, held links, drains), over WebSocket or lossy QUIC links,
//! then the contract's invariants.
//!
//! `SIM_SEEDS=N` runs N seeds (CI runs a few); `SIM_SEED=S` replays seed S alone;
//! `SIM_TRACE=1` prints what happened. A failing seed prints the command that replays it.
//! `SIM_PRINT_DIGESTS=1` prints each seed's trace digest, to check that a refactor
//! leaves every run exactly as it was (run with `--nocapture`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelrelay_core::backoff::SeededRng;
use modelrelay_testkit::simulated_backend::SimulatedBackendConfig;
use sim::client::{self, Ask, Outcome};
use sim::seeds::{for_each_seed, seeds};
use sim::world::{
    LinkKind, RELAY, RELAY_PORT, TCP_CAPACITY, WorkerStop, World, WorldConfig, relay_config,
};

const SECOND: Duration = Duration::from_secs(1);
const QUEUE_BOUND: usize = 6;
const REQUESTS_PER_CLIENT: usize = 8;
const CLIENTS: usize = 3;

/// Failure codes the contract allows a client to see under these faults.
const ALLOWED_CODES: [&str; 6] = [
    "queue_full",
    "queue_timeout",
    "request_timeout",
    "requeue_exhausted",
    "no_capacity",
    "worker_lost",
];

/// What one seed's run produced.
struct Run {
    /// What each request ended with, and how long it took.
    outcomes: Vec<(String, Outcome, Duration)>,
    /// The deepest the queue was seen.
    max_queue_depth: u64,
    /// Backend attempts by tag: (received, ended).
    attempts: std::collections::BTreeMap<String, (usize, usize)>,
    /// A digest of the whole trace.
    digest: u64,
}

fn pick(rng: &mut SeededRng, low: u64, high: u64) -> u64 {
    low + rng.up_to(high - low)
}

fn chance(rng: &mut SeededRng, percent: u64) -> bool {
    rng.up_to(99) < percent
}

/// A random request for client `c`, number `n`.
fn random_ask(rng: &mut SeededRng, c: usize, n: usize) -> Ask {
    let tokens = pick(rng, 1, 40) as usize;
    let delay = pick(rng, 0, 80);
    let mut ask = if chance(rng, 70) {
        Ask::stream(format!("c{c}-{n}"), tokens, delay)
    } else {
        Ask::whole(format!("c{c}-{n}"), tokens, delay)
    };
    if ask.stream && chance(rng, 10) {
        ask.abandon_after = Some(pick(rng, 1, 5) as usize);
    }
    ask
}

/// The link of `seed`'s workers: half the seeds use QUIC, losing up to 3% of datagrams.
fn link_of(seed: u64) -> (LinkKind, f64) {
    let mut rng = SeededRng::new(seed ^ 0x11_4b);
    if chance(&mut rng, 50) {
        (LinkKind::Quic, pick(&mut rng, 0, 3) as f64 / 100.0)
    } else {
        (LinkKind::WebSocket, 0.0)
    }
}

/// Builds and runs the world of `seed` to its end.
fn run(seed: u64) -> Run {
    let mut rng = SeededRng::new(seed);
    let max_latency = Duration::from_millis(pick(&mut rng, 1, 20));
    let (link, loss) = link_of(seed);
    let mut world = World::new(WorldConfig {
        seed,
        duration: Duration::from_secs(600),
        min_latency: Duration::from_millis(1),
        max_latency,
        link,
        tcp_capacity: TCP_CAPACITY,
    });
    world.note(format_args!(
        "workers link over {link:?}, losing {loss} of datagrams"
    ));
    let mut config = relay_config();
    config.relay.max_queue_len = QUEUE_BOUND;
    world.relay(config);
    world.packet_loss(RELAY).set_rate(loss, seed ^ 1);
    let workers = pick(&mut rng, 2, 4) as usize;
    let mut stops: Vec<(String, WorkerStop)> = Vec::new();
    for i in 1..=workers {
        let backend = format!("backend-{i}");
        world.backend(
            &backend,
            SimulatedBackendConfig {
                models: vec!["m".into()],
                tokens: 8,
                token_delay: Duration::ZERO,
            },
        );
        let slots = pick(&mut rng, 1, 3) as u32;
        let name = format!("worker-{i}");
        let stop = world.worker(&name, &backend, slots, Duration::ZERO);
        world
            .packet_loss(&name)
            .set_rate(loss, seed ^ (i as u64 + 1));
        stops.push((name, stop));
    }

    let outcomes: Arc<Mutex<Vec<(String, Outcome, Duration)>>> = Arc::default();
    for c in 0..CLIENTS {
        let asks: Vec<(Duration, Ask)> = (0..REQUESTS_PER_CLIENT)
            .map(|n| {
                (
                    Duration::from_millis(pick(&mut rng, 0, 2000)),
                    random_ask(&mut rng, c, n),
                )
            })
            .collect();
        let (out, trace) = (outcomes.clone(), world.trace.clone());
        world.client(&format!("client-{c}"), async move {
            tokio::time::sleep(SECOND).await;
            for (pause, ask) in asks {
                tokio::time::sleep(pause).await;
                let sent = tokio::time::Instant::now();
                let outcome = client::send(&ask, Duration::from_secs(120)).await;
                trace.record(format_args!("{} -> {outcome}", ask.tag));
                out.lock().unwrap().push((ask.tag, outcome, sent.elapsed()));
            }
            Ok(())
        });
    }
    let max_depth = Arc::new(Mutex::new(0u64));
    let (depth, out) = (max_depth.clone(), outcomes.clone());
    world.client("monitor", async move {
        while out.lock().unwrap().len() < CLIENTS * REQUESTS_PER_CLIENT {
            if let Ok((200, body)) = sim::net::get(RELAY, RELAY_PORT, "/health").await {
                let health: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let queued = health["queue_depth"].as_u64().unwrap_or(0);
                let mut max = depth.lock().unwrap();
                *max = (*max).max(queued);
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        Ok(())
    });

    // Faults until the load is done: one every 1–4 s, each undone after a while.
    let mut down: Vec<(Duration, Fault)> = Vec::new();
    let mut next_fault = SECOND + Duration::from_millis(pick(&mut rng, 0, 3000));
    while outcomes.lock().unwrap().len() < CLIENTS * REQUESTS_PER_CLIENT {
        world.step_for(Duration::from_millis(50));
        let now = world.sim.elapsed();
        down.retain(|(until, fault)| {
            if *until <= now {
                fault.undo(&mut world);
                false
            } else {
                true
            }
        });
        if now >= next_fault {
            let (name, stop) = &stops[rng.up_to(workers as u64 - 1) as usize];
            let busy = down.iter().any(|(_, f)| f.worker() == name);
            if !busy {
                let fault = match rng.up_to(3) {
                    0 => Fault::Crash(name.clone()),
                    1 => Fault::Partition(name.clone()),
                    2 => Fault::Hold(name.clone()),
                    _ => Fault::Drain(name.clone(), stop.clone()),
                };
                let lasts = match fault {
                    Fault::Hold(_) => Duration::from_millis(pick(&mut rng, 100, 1000)),
                    _ => Duration::from_millis(pick(&mut rng, 300, 6000)),
                };
                fault.apply(&mut world);
                down.push((now + lasts, fault));
            }
            next_fault = now + Duration::from_millis(pick(&mut rng, 1000, 4000));
        }
        assert!(now < Duration::from_secs(500), "the load never finished");
    }
    for (_, fault) in down.drain(..) {
        fault.undo(&mut world);
    }
    // Quiet time for every backend call to end.
    world.step_for(Duration::from_secs(40));
    let outcomes = outcomes.lock().unwrap().clone();
    let max_queue_depth = *max_depth.lock().unwrap();
    Run {
        outcomes,
        max_queue_depth,
        attempts: world.attempts(),
        digest: world.trace.digest(),
    }
}

/// A fault on one worker, and how to undo it.
#[derive(Clone, Debug)]
enum Fault {
    /// The worker's host dies; undone by restarting it.
    Crash(String),
    /// Its link to the relay drops everything; undone by repairing it.
    Partition(String),
    /// Its link to the relay holds everything back; undone by releasing it.
    Hold(String),
    /// It drains and exits, as on SIGTERM; undone by starting it again.
    Drain(String, WorkerStop),
}

impl Fault {
    fn worker(&self) -> &str {
        match self {
            Self::Crash(w) | Self::Partition(w) | Self::Hold(w) | Self::Drain(w, _) => w,
        }
    }

    fn apply(&self, world: &mut World) {
        match self {
            Self::Crash(w) => world.crash(w),
            Self::Partition(w) => {
                world.note(format_args!("test partitions {w}"));
                world.sim.partition(w.as_str(), RELAY);
            }
            Self::Hold(w) => {
                world.note(format_args!("test holds {w}"));
                world.sim.hold(w.as_str(), RELAY);
            }
            Self::Drain(w, stop) => {
                world.note(format_args!("test drains {w}"));
                stop.stop();
            }
        }
    }

    fn undo(&self, world: &mut World) {
        match self {
            Self::Crash(w) => world.bounce(w),
            Self::Partition(w) => {
                world.note(format_args!("test repairs {w}"));
                world.sim.repair(w.as_str(), RELAY);
            }
            Self::Hold(w) => {
                world.note(format_args!("test releases {w}"));
                world.sim.release(w.as_str(), RELAY);
            }
            Self::Drain(w, _) => {
                // Still draining (a long request), or already gone: start it again either way.
                if world.sim.is_host_running(w.as_str()) {
                    world.crash(w);
                }
                world.bounce(w);
            }
        }
    }
}

/// The contract's invariants over one run.
fn check(seed: u64, run: &Run) {
    let config = relay_config();
    assert_eq!(
        run.outcomes.len(),
        CLIENTS * REQUESTS_PER_CLIENT,
        "every request ends exactly once"
    );
    // A request may wait, be requeued and stream: it still ends by the request timeout.
    let deadline = config
        .relay
        .request_timeout
        .expect("the sim sets a request timeout")
        + SECOND;
    for (tag, outcome, took) in &run.outcomes {
        assert!(outcome.is_allowed(), "seed {seed}, {tag}: {outcome}");
        assert!(
            *took <= deadline,
            "seed {seed}, {tag}: took {took:?}, past its deadline"
        );
        if let Outcome::Refused { code, .. } | Outcome::BrokenOff { code, .. } = outcome {
            assert!(
                ALLOWED_CODES.contains(&code.as_str()),
                "seed {seed}, {tag}: {outcome}"
            );
        }
    }
    assert!(
        run.max_queue_depth <= QUEUE_BOUND as u64,
        "seed {seed}: queue depth {} over its bound",
        run.max_queue_depth
    );
    for (tag, (received, ended)) in &run.attempts {
        assert_eq!(
            received, ended,
            "seed {seed}, {tag}: a backend call kept running ({received} started, {ended} ended)"
        );
    }
    let complete = run
        .outcomes
        .iter()
        .filter(|(_, o, _)| *o == Outcome::Complete)
        .count();
    assert!(complete > 0, "seed {seed}: nothing completed at all");
}

#[test]
fn randomized_fault_schedules_keep_the_contract() {
    for_each_seed(&seeds(4, 0), "randomized", |seed| {
        let run = run(seed);
        print_digest(seed, &run);
        check(seed, &run);
    });
}

/// Prints the seed's trace digest when `SIM_PRINT_DIGESTS` is set.
#[allow(clippy::print_stdout, reason = "asked for on the command line")]
fn print_digest(seed: u64, run: &Run) {
    if std::env::var_os("SIM_PRINT_DIGESTS").is_some() {
        println!("seed {seed} digest {:016x}", run.digest);
    }
}

#[test]
fn the_same_seed_replays_the_same_trace() {
    // One seed of each link.
    for kind in [LinkKind::WebSocket, LinkKind::Quic] {
        let seed = (1..)
            .map(|n: u64| n.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            .find(|seed| link_of(*seed).0 == kind)
            .expect("a seed of each kind");
        let first = run(seed);
        let second = run(seed);
        assert_eq!(
            first.digest, second.digest,
            "seed {seed} ({kind:?}) did not replay the same"
        );
        assert_eq!(first.outcomes, second.outcomes);
    }
}

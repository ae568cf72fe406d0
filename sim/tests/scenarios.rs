//! Fault scenarios, each a story: build the world, break something, check what every client and backend saw.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelrelay_worker::simulated_backend::{BackendEvent, SimulatedBackendConfig};
use sim::client::{self, Ask, Outcome};
use sim::world::{World, WorldConfig, relay_config};

fn backend_config() -> SimulatedBackendConfig {
    SimulatedBackendConfig {
        models: vec!["m".into()],
        tokens: 8,
        token_delay: Duration::ZERO,
    }
}

/// Where a client's outcome lands, for the test to read.
type Slot = Arc<Mutex<Option<Outcome>>>;

fn ask_in_background(world: &mut World, name: &str, ask: Ask, after: Duration) -> Slot {
    let slot: Slot = Arc::default();
    let out = slot.clone();
    let trace = world.trace.clone();
    world.client(name, async move {
        tokio::time::sleep(after).await;
        let outcome = client::send(&ask, Duration::from_secs(120)).await;
        trace.record(format_args!("{} -> {outcome}", ask.tag));
        *out.lock().unwrap() = Some(outcome);
        Ok(())
    });
    slot
}

fn outcome(slot: &Slot) -> Option<Outcome> {
    slot.lock().unwrap().clone()
}

fn cancelled(world: &World, backend: &str, tag: &str) -> bool {
    world
        .backend_handle(backend)
        .events()
        .iter()
        .any(|e| matches!(e, BackendEvent::Cancelled { tag: Some(t), .. } if t == tag))
}

fn finished(world: &World, backend: &str, tag: &str) -> bool {
    world
        .backend_handle(backend)
        .events()
        .iter()
        .any(|e| matches!(e, BackendEvent::Finished { tag: Some(t) } if t == tag))
}

/// Scenario 1: a worker crashes. Before the first byte the request moves to another worker;
/// after it, the client gets one clean error event and nothing twice.
#[test]
fn worker_crash_before_the_first_byte_requeues_and_after_it_ends_with_one_error() {
    let mut world = World::new(WorldConfig::readable(1));
    world.relay(relay_config());
    world.backend("backend-1", backend_config());
    world.backend("backend-2", backend_config());
    world.worker("worker-1", "backend-1", 4, Duration::ZERO);
    world.worker("worker-2", "backend-2", 4, Duration::ZERO);
    let early = ask_in_background(
        &mut world,
        "client-early",
        Ask::whole("early", 20, 100),
        Duration::from_secs(1),
    );
    world.step_until(
        "the early request reaches a backend",
        Duration::from_secs(5),
        |w| w.backend_serving("early").is_some(),
    );
    let first = world.backend_serving("early").unwrap();
    let crashed = first.replace("backend", "worker");
    world.sim.crash(crashed.as_str());
    world.trace.record(format_args!("test crashes {crashed}"));
    world.step_until(
        "the early request is answered",
        Duration::from_secs(30),
        |_| outcome(&early).is_some(),
    );
    assert_eq!(outcome(&early), Some(Outcome::Complete));
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
    world.sim.bounce(crashed.as_str());

    let late = ask_in_background(
        &mut world,
        "client-late",
        Ask::stream("late", 50, 100),
        Duration::ZERO,
    );
    world.step_until("the late stream starts", Duration::from_secs(10), |w| {
        w.backend_serving("late").is_some()
    });
    world.step_for(Duration::from_millis(500));
    let serving = world.backend_serving("late").unwrap();
    let crashed = serving.replace("backend", "worker");
    world.sim.crash(crashed.as_str());
    world.trace.record(format_args!("test crashes {crashed}"));
    world.step_until("the late stream ends", Duration::from_secs(30), |_| {
        outcome(&late).is_some()
    });
    match outcome(&late).unwrap() {
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
}

//! A relay that never pings: the worker judges its link by its own evidence.
//!
//! ModelRelay's server pings a worker only after 30 s in which the worker sent
//! nothing, so a streaming worker may hear nothing from it at all. Here the
//! relay does not ping in the whole run. Over WebSocket the worker pings the
//! relay itself when it has heard nothing for a while, and the relay's
//! WebSocket answers with a pong; over QUIC the transport's keep-alives are
//! acknowledged. So a long stream completes, and a link that stops moving is given
//! up (the backend call stopped) within the worker's own limits.

use std::time::Duration;

use modelrelay_testkit::simulated_backend::{BackendEvent, SimulatedBackendConfig};
use sim::client::{Ask, Outcome};
use sim::world::{LinkKind, RELAY, World, WorldConfig, relay_config};

const SECOND: Duration = Duration::from_secs(1);

/// A run with a relay that never pings, one worker in front of one backend, on `link`.
fn world_without_relay_pings(link: LinkKind) -> World {
    let mut world = World::new(WorldConfig {
        link,
        ..WorldConfig::readable(10)
    });
    let mut relay = relay_config();
    relay.relay.heartbeat_interval = Duration::from_secs(24 * 3600);
    relay.relay.request_timeout = Some(Duration::from_secs(180));
    world.relay(relay);
    // Every ask says how many tokens it wants, and how far apart.
    let backend = SimulatedBackendConfig {
        models: vec!["m".into()],
        ..SimulatedBackendConfig::default()
    };
    world.backend("backend-1", backend);
    world.worker("worker-1", "backend-1", 2, Duration::ZERO);
    world
}

fn cancelled(world: &World, tag: &str) -> bool {
    world
        .backend_handle("backend-1")
        .events()
        .iter()
        .any(|e| matches!(e, BackendEvent::Cancelled { tag: Some(t), .. } if t == tag))
}

fn a_worker_keeps_a_working_link_and_gives_up_a_stalled_one_without_relay_pings(link: LinkKind) {
    let mut world = world_without_relay_pings(link);
    // A minute of tokens, ten times the simulation's 6 s liveness limit.
    let long = world.ask("client-long", Ask::stream("long", 600, 100), SECOND);
    world.step_until("the minute-long stream ends", 90 * SECOND, |_| {
        long.outcome().is_some()
    });
    assert_eq!(long.outcome(), Some(Outcome::Complete));

    let stalled = world.ask(
        "client-stalled",
        Ask::stream("stalled", 600, 100),
        Duration::ZERO,
    );
    world.step_until("the second stream reaches the backend", 5 * SECOND, |w| {
        w.backend_serving("stalled").is_some()
    });
    world.step_for(2 * SECOND);
    // The link stops moving without breaking (a half-open link: nothing fails,
    // nothing arrives).
    world.note("test holds everything between worker-1 and the relay");
    world.sim.hold("worker-1", RELAY);
    // Nothing answers the worker's probes or keep-alives: it gives the link up
    // by its own evidence (6 s here) and stops the backend call.
    world.step_until("the worker stops the stalled call", 10 * SECOND, |w| {
        cancelled(w, "stalled")
    });
    assert_ne!(stalled.outcome(), Some(Outcome::Complete));
}

#[test]
fn a_worker_keeps_a_working_link_and_gives_up_a_stalled_one_without_relay_pings_over_websocket() {
    a_worker_keeps_a_working_link_and_gives_up_a_stalled_one_without_relay_pings(
        LinkKind::WebSocket,
    );
}

#[test]
fn a_worker_keeps_a_working_link_and_gives_up_a_stalled_one_without_relay_pings_over_quic() {
    a_worker_keeps_a_working_link_and_gives_up_a_stalled_one_without_relay_pings(LinkKind::Quic);
}

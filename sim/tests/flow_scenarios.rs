//! Flow control, as stories on the simulated network: a stream moves at the pace of
//! its slowest part. A client that stops reading stops its own backend read and
//! nothing else; a link that stops moving for a moment stops every backend read on
//! it, and when it moves again every stream completes, whole and in order.
//!
//! Each scenario runs over WebSocket and over QUIC, with a fixed seed: a failure
//! replays exactly (`SIM_TRACE=1` prints what happened).

use std::time::Duration;

use modelrelay_testkit::simulated_backend::SimulatedBackendConfig;
use sim::client::{Ask, Outcome};
use sim::world::{LinkKind, RELAY, Slot, World, WorldConfig, relay_config};

const SECOND: Duration = Duration::from_secs(1);
/// Tokens in a long answer: about 9.6 MB, which a relay without windows lets a
/// stalled client's backend send in full.
const LONG: usize = 60_000;
/// The most a stalled stream's backend may hand on beyond what its client read:
/// the relay's window (256 KiB, 64 KiB at first), the worker's own (256 KiB),
/// QUIC's stream window (512 KiB), and the simulated sockets on the way (the
/// backend's and the client's: [`SOCKET_WRITES`] writes of up to 400 KB each).
const STALLED_AT_MOST: usize = 4 * 1024 * 1024;
/// Writes a simulated socket holds before its writer waits.
const SOCKET_WRITES: usize = 4;

fn world(seed: u64, link: LinkKind, slots: u32) -> World {
    let mut world = World::new(WorldConfig {
        link,
        // Sockets that fill: a client that stops reading pushes back at once.
        tcp_capacity: SOCKET_WRITES,
        ..WorldConfig::readable(seed)
    });
    world.relay(relay_config());
    world.backend(
        "backend-1",
        SimulatedBackendConfig {
            models: vec!["m".into()],
            tokens: 8,
            token_delay: Duration::ZERO,
        },
    );
    world.worker("worker-1", "backend-1", slots, Duration::ZERO);
    world
}

fn streamed(world: &World, tag: &str) -> usize {
    world.backend_handle("backend-1").streamed_bytes(tag)
}

fn a_client_that_stops_reading_pauses_only_its_own_backend_read(link: LinkKind) {
    let mut world = world(31, link, 4);
    let stalled = world.ask(
        "client-stalled",
        Ask::stream("stalled", LONG, 0).pausing(2, 20 * SECOND),
        SECOND,
    );
    let steady = world.ask("client-steady", Ask::stream("steady", LONG, 0), 2 * SECOND);
    world.step_until("the steady stream completes", 60 * SECOND, |_| {
        steady.outcome().is_some()
    });
    assert_eq!(steady.outcome(), Some(Outcome::Complete), "{link:?}");
    let held = streamed(&world, "stalled");
    world.step_for(10 * SECOND);
    assert_eq!(
        streamed(&world, "stalled"),
        held,
        "{link:?}: the stalled client's backend kept being read"
    );
    assert!(
        held <= STALLED_AT_MOST,
        "{link:?}: {held} bytes read from a backend whose client read two chunks"
    );
    world.step_until(
        "the paused client reads again and completes",
        120 * SECOND,
        |_| stalled.outcome().is_some(),
    );
    assert_eq!(stalled.outcome(), Some(Outcome::Complete), "{link:?}");
}

#[test]
fn a_client_that_stops_reading_pauses_only_its_own_backend_read_over_websocket() {
    a_client_that_stops_reading_pauses_only_its_own_backend_read(LinkKind::WebSocket);
}

#[test]
fn a_client_that_stops_reading_pauses_only_its_own_backend_read_over_quic() {
    a_client_that_stops_reading_pauses_only_its_own_backend_read(LinkKind::Quic);
}

fn a_link_that_stops_moving_stops_the_backend_reads_and_loses_nothing(link: LinkKind) {
    const STREAMS: usize = 4;
    let mut world = world(37, link, STREAMS as u32);
    let slots: Vec<(String, Slot)> = (0..STREAMS)
        .map(|n| {
            let tag = format!("s{n}");
            let slot = world.ask(
                &format!("client-{n}"),
                Ask::stream(tag.clone(), LONG, 0),
                SECOND,
            );
            (tag, slot)
        })
        .collect();
    world.step_until("every stream is flowing", 10 * SECOND, |w| {
        slots.iter().all(|(tag, _)| streamed(w, tag) > 0)
    });
    // Shorter than the link's liveness timeouts: the link survives the pause.
    world.note("test holds the link");
    world.sim.hold("worker-1", RELAY);
    world.step_for(SECOND / 10);
    let at_hold: Vec<usize> = slots.iter().map(|(tag, _)| streamed(&world, tag)).collect();
    world.step_for(SECOND);
    for ((tag, _), before) in slots.iter().zip(&at_hold) {
        let read = streamed(&world, tag) - before;
        assert!(
            read <= STALLED_AT_MOST,
            "{link:?}: {read} bytes of {tag} read from the backend while the link was held"
        );
    }
    world.note("test releases the link");
    world.sim.release("worker-1", RELAY);
    world.step_until("every stream completes", 120 * SECOND, |_| {
        slots.iter().all(|(_, slot)| slot.outcome().is_some())
    });
    for (tag, slot) in &slots {
        assert_eq!(slot.outcome(), Some(Outcome::Complete), "{link:?}: {tag}");
    }
}

#[test]
fn a_link_that_stops_moving_stops_the_backend_reads_and_loses_nothing_over_websocket() {
    a_link_that_stops_moving_stops_the_backend_reads_and_loses_nothing(LinkKind::WebSocket);
}

#[test]
fn a_link_that_stops_moving_stops_the_backend_reads_and_loses_nothing_over_quic() {
    a_link_that_stops_moving_stops_the_backend_reads_and_loses_nothing(LinkKind::Quic);
}

//! Workers over QUIC on turmoil's simulated UDP: correct under loss and reordering,
//! and what one lost packet costs the other streams, QUIC against WebSocket over TCP.
//!
//! `SIM_SEEDS=N` runs N seeds of the lossy scenario (3 by default); `SIM_SEED=S`
//! replays seed S; `SIM_TRACE=1` prints what happened. The stall measurement prints
//! its table with `-- --nocapture`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use modelrelay_core::backoff::SeededRng;
use modelrelay_testkit::simulated_backend::SimulatedBackendConfig;
use sim::client::{self, Ask, Outcome};
use sim::seeds::{for_each_seed, seeds};
use sim::world::{LinkKind, RELAY, TCP_CAPACITY, World, WorldConfig, relay_config};

const SECOND: Duration = Duration::from_secs(1);

fn backend_config() -> SimulatedBackendConfig {
    SimulatedBackendConfig {
        models: vec!["m".into()],
        tokens: 8,
        token_delay: Duration::ZERO,
    }
}

type Outcomes = Arc<Mutex<Vec<(String, Outcome)>>>;

/// Two QUIC workers on links that lose 5% of datagrams each way, with latency
/// jittering between 2 and 80 ms (so datagrams overtake each other), and now and
/// then a burst that empties the link. Every request still completes, once.
fn lossy_run(seed: u64) {
    let mut rng = SeededRng::new(seed);
    let mut world = World::new(WorldConfig {
        seed,
        duration: Duration::from_secs(300),
        min_latency: Duration::from_millis(2),
        max_latency: Duration::from_millis(80),
        link: LinkKind::Quic,
        tcp_capacity: TCP_CAPACITY,
    });
    world.relay(relay_config());
    world.packet_loss(RELAY).set_rate(0.05, seed ^ 1);
    for i in 1..=2 {
        let (backend, worker) = (format!("backend-{i}"), format!("worker-{i}"));
        world.backend(&backend, backend_config());
        world.worker(&worker, &backend, 4, Duration::ZERO);
        world.packet_loss(&worker).set_rate(0.05, seed ^ (i + 1));
        // Bursts: now and then the link drops everything in flight.
        world.sim.set_link_fail_rate(RELAY, worker.as_str(), 0.005);
    }
    let outcomes: Outcomes = Arc::default();
    let mut asks = Vec::new();
    for c in 0..4 {
        let mut plan = Vec::new();
        for n in 0..4 {
            let tag = format!("c{c}-{n}");
            let tokens = 5 + rng.up_to(55) as usize;
            let delay = rng.up_to(30);
            let ask = if rng.up_to(3) == 0 {
                Ask::whole(tag, tokens, delay)
            } else {
                Ask::stream(tag, tokens, delay)
            };
            asks.push(ask.tag.clone());
            plan.push((Duration::from_millis(rng.up_to(500)), ask));
        }
        let (out, trace) = (outcomes.clone(), world.trace.clone());
        world.client(&format!("client-{c}"), async move {
            tokio::time::sleep(2 * SECOND).await;
            for (pause, ask) in plan {
                tokio::time::sleep(pause).await;
                let outcome = client::send(&ask, Duration::from_secs(60)).await;
                trace.record(format_args!("{} -> {outcome}", ask.tag));
                out.lock().unwrap().push((ask.tag, outcome));
            }
            Ok(())
        });
    }
    world.run();

    let outcomes = outcomes.lock().unwrap().clone();
    assert_eq!(outcomes.len(), asks.len(), "every request ends");
    for (tag, outcome) in &outcomes {
        assert_eq!(*outcome, Outcome::Complete, "seed {seed}, {tag}");
    }
    // Nothing ran twice: no worker was ever given up on, loss or not.
    for (tag, attempts) in world.attempts() {
        assert_eq!(
            attempts,
            (1, 1),
            "seed {seed}, {tag}: attempts (started, ended)"
        );
    }
    let (lost, sent) = ["worker-1", "worker-2", RELAY]
        .iter()
        .map(|host| world.packet_loss(host).counts())
        .fold((0, 0), |(l, s), (lost, sent)| (l + lost, s + sent));
    assert!(
        lost > 0 && sent > 100,
        "seed {seed}: the links lost {lost} of {sent} datagrams"
    );
}

#[test]
fn quic_links_deliver_every_stream_intact_under_loss_and_reordering() {
    for_each_seed(&seeds(3, 0x51c), "quic", lossy_run);
}

/// How a lost packet is simulated on each link.
#[derive(Clone, Copy, Debug)]
enum LossModel {
    /// Nothing lost: the noise floor of the measurement.
    Nothing,
    /// QUIC: the worker's next datagram that carries data (≥ 100 bytes) is lost.
    QuicDatagram,
    /// TCP: a lost segment holds back everything behind it until it is sent again;
    /// modelled by holding the worker's link for this long.
    TcpHold(Duration),
}

/// Streams in flight on the one worker while packets are lost.
const STREAMS: usize = 8;
/// One token every 10 ms, 200 tokens: 2 s per stream.
const TOKEN_MS: u64 = 10;
const TOKENS: usize = 200;
/// One-way latency on every link (a 40 ms round trip).
const LATENCY: Duration = Duration::from_millis(20);

/// What one loss cost each stream: how much longer than a token's interval the
/// silence was that began around the loss (from 20 ms before to 100 ms after it).
struct Stalls {
    /// One entry per (loss, stream).
    per_stream: Vec<Duration>,
}

impl Stalls {
    fn percentile(&self, p: usize) -> Duration {
        let mut sorted = self.per_stream.clone();
        sorted.sort();
        sorted[(sorted.len() - 1) * p / 100]
    }

    /// The average number of streams (of [`STREAMS`]) held up more than 30 ms by one loss.
    fn stalled_per_loss(&self) -> f64 {
        let stalled = self
            .per_stream
            .iter()
            .filter(|s| **s > Duration::from_millis(30))
            .count();
        stalled as f64 * STREAMS as f64 / self.per_stream.len() as f64
    }
}

/// An outcome and when each piece of the answer arrived.
type Timed = (Outcome, Vec<Duration>);

/// Per stream: its outcome and when each piece of it arrived.
type Arrivals = Arc<Mutex<BTreeMap<usize, Timed>>>;

/// Runs [`STREAMS`] streams through one worker over `link` and loses packets at
/// the same seeded instants; returns what each loss cost each stream.
fn stall_run(seed: u64, link: LinkKind, model: LossModel) -> Stalls {
    let mut world = World::new(WorldConfig {
        seed,
        duration: Duration::from_secs(60),
        min_latency: LATENCY,
        max_latency: LATENCY,
        link,
        tcp_capacity: TCP_CAPACITY,
    });
    world.relay(relay_config());
    world.backend("backend-1", backend_config());
    world.worker("worker-1", "backend-1", STREAMS as u32, Duration::ZERO);
    let arrivals: Arrivals = Arc::default();
    for s in 0..STREAMS {
        let out = arrivals.clone();
        // Staggered so that the streams' tokens do not leave in lockstep, as
        // independent conversations would not.
        let start = 2 * SECOND + Duration::from_micros(s as u64 * TOKEN_MS * 1000 / STREAMS as u64);
        world.client(&format!("client-{s}"), async move {
            tokio::time::sleep(start).await;
            let ask = Ask::stream(format!("s{s}"), TOKENS, TOKEN_MS);
            let result = client::send_timed(&ask, Duration::from_secs(30)).await;
            out.lock().unwrap().insert(s, result);
            Ok(())
        });
    }
    // The same seeded instants for every link: five losses while all streams run,
    // far enough apart that each is over before the next.
    let mut rng = SeededRng::new(seed);
    let losses: Vec<Duration> = (0..5)
        .map(|i| Duration::from_millis(2_400 + 300 * i + rng.up_to(60)))
        .collect();
    for &at in &losses {
        world.step_for(at.saturating_sub(world.sim.elapsed()));
        match model {
            LossModel::Nothing => {}
            LossModel::QuicDatagram => world.packet_loss("worker-1").drop_next(1, 100),
            LossModel::TcpHold(rto) => {
                world.sim.hold("worker-1", RELAY);
                world.step_for(rto);
                world.sim.release("worker-1", RELAY);
            }
        }
    }
    world.run();

    let arrivals = arrivals.lock().unwrap();
    assert_eq!(arrivals.len(), STREAMS);
    let mut per_stream = Vec::new();
    for (outcome, times) in arrivals.values() {
        assert_eq!(*outcome, Outcome::Complete, "{link:?}");
        for &at in &losses {
            let (from, to) = (
                at.saturating_sub(Duration::from_millis(20)),
                at + Duration::from_millis(100),
            );
            let longest = times
                .windows(2)
                .filter(|pair| pair[0] >= from && pair[0] <= to)
                .map(|pair| pair[1] - pair[0])
                .max()
                .unwrap_or_default();
            per_stream.push(longest.saturating_sub(Duration::from_millis(TOKEN_MS)));
        }
    }
    Stalls { per_stream }
}

#[test]
#[allow(clippy::print_stdout)] // the table is the measurement's report (docs/quic.md)
fn one_lost_packet_stalls_one_quic_stream_but_every_stream_on_tcp() {
    let seed = 11;
    let rto = Duration::from_millis(200); // Linux's minimum retransmission timeout
    let rtt = 2 * LATENCY; // what a fast retransmit costs at best
    let quiet = stall_run(seed, LinkKind::Quic, LossModel::Nothing);
    let quic = stall_run(seed, LinkKind::Quic, LossModel::QuicDatagram);
    let tcp_rto = stall_run(seed, LinkKind::WebSocket, LossModel::TcpHold(rto));
    let tcp_fast = stall_run(seed, LinkKind::WebSocket, LossModel::TcpHold(rtt));
    println!(
        "{STREAMS} streams, one token per {TOKEN_MS} ms, {} ms RTT, 5 single-packet losses",
        rtt.as_millis()
    );
    println!(
        "link                           median stall  p90 stall  max stall  streams stalled >30 ms per loss"
    );
    for (name, stalls) in [
        ("QUIC, nothing lost", &quiet),
        ("QUIC, one datagram lost", &quic),
        ("WebSocket/TCP, RTO 200 ms", &tcp_rto),
        ("WebSocket/TCP, fast retransmit", &tcp_fast),
    ] {
        println!(
            "{name:<30} {:>9} ms {:>7} ms {:>7} ms  {:>5.1} of {STREAMS}",
            stalls.percentile(50).as_millis(),
            stalls.percentile(90).as_millis(),
            stalls.percentile(100).as_millis(),
            stalls.stalled_per_loss(),
        );
    }
    // Over QUIC the typical stream does not notice a loss at all; over TCP every
    // stream waits for the retransmission.
    assert!(
        quic.percentile(50) < Duration::from_millis(15),
        "QUIC median stall {:?}",
        quic.percentile(50)
    );
    assert!(quic.stalled_per_loss() < 2.0);
    assert!(tcp_rto.percentile(50) >= rto * 3 / 4);
    assert!(tcp_rto.stalled_per_loss() > 7.0);
    assert!(tcp_fast.percentile(50) >= rtt / 2);
}

/// A whole answer of a few megabytes takes the link several round trips; a
/// stream running beside it on the same worker goes on at its own pace meanwhile.
#[test]
fn a_large_answer_on_one_stream_does_not_hold_up_the_others() {
    let mut world = World::new(WorldConfig {
        seed: 5,
        duration: Duration::from_secs(60),
        min_latency: Duration::from_millis(25),
        max_latency: Duration::from_millis(25),
        link: LinkKind::Quic,
        tcp_capacity: TCP_CAPACITY,
    });
    world.relay(relay_config());
    world.backend("backend-1", backend_config());
    world.worker("worker-1", "backend-1", 4, Duration::ZERO);
    let large: Arc<Mutex<Option<Outcome>>> = Arc::default();
    let beside: Arc<Mutex<Option<Timed>>> = Arc::default();
    let out = large.clone();
    world.client("large", async move {
        tokio::time::sleep(2 * SECOND).await;
        // About 2.5 MB of JSON in one frame.
        let ask = Ask::whole("large", 350_000, 0);
        *out.lock().unwrap() = Some(client::send(&ask, Duration::from_secs(30)).await);
        Ok(())
    });
    let out = beside.clone();
    world.client("beside", async move {
        tokio::time::sleep(2 * SECOND - Duration::from_millis(200)).await;
        let ask = Ask::stream("beside", 150, 10);
        *out.lock().unwrap() = Some(client::send_timed(&ask, Duration::from_secs(30)).await);
        Ok(())
    });
    world.run();
    assert_eq!(large.lock().unwrap().clone(), Some(Outcome::Complete));
    let (outcome, arrivals) = beside.lock().unwrap().clone().unwrap();
    assert_eq!(outcome, Outcome::Complete);
    let longest = arrivals
        .windows(2)
        .map(|pair| pair[1] - pair[0])
        .max()
        .unwrap();
    // One token every 10 ms, 50 ms round trips: anything near the large answer's
    // transfer time (several round trips) would mean it waited behind it.
    assert!(
        longest < Duration::from_millis(60),
        "the stream beside the large answer stalled for {longest:?}"
    );
}

//! End to end over loopback: straight to the simulated backend vs through the relay
//! (server + worker over WebSocket v2 and v1, and over QUIC), measured side by side
//! in one run.
//!
//! - `ttfc/*`: time to the first chunk of a stream (one request at a time).
//! - `stream_200/*`: a whole 200-token stream; throughput in chunks/s.
//! - `small_json/*`: a small non-streaming request.

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use modelrelay_testkit::stack::{Stack, StackLink};
use modelrelay_worker::link::ProtocolChoice;

const STREAM_1: &str = r#"{"model":"m","stream":true,"mock":{"tokens":1}}"#;
const STREAM_200: &str = r#"{"model":"m","stream":true,"mock":{"tokens":200}}"#;
const SMALL: &str = r#"{"model":"m","mock":{"tokens":4}}"#;

fn end_to_end(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let v2 = runtime.block_on(Stack::start(StackLink::WebSocket(ProtocolChoice::V2), 64));
    let v1 = runtime.block_on(Stack::start(StackLink::WebSocket(ProtocolChoice::V1), 64));
    let quic = runtime.block_on(Stack::start(StackLink::Quic, 64));
    let targets = [
        ("direct", v2.backend_url.clone(), &v2),
        ("relay_ws_v2", v2.relay_url.clone(), &v2),
        ("relay_ws_v1", v1.relay_url.clone(), &v1),
        ("relay_quic", quic.relay_url.clone(), &quic),
    ];

    let mut group = c.benchmark_group("ttfc");
    for (name, base, world) in &targets {
        group.bench_function(*name, |b| {
            b.to_async(&runtime).iter_custom(|iters| async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    total += world.request(base, STREAM_1).await.expect("200").0;
                }
                total
            });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("stream_200");
    // 200 tokens plus the role chunk, the stop chunk and [DONE].
    group.throughput(Throughput::Elements(203));
    for (name, base, world) in &targets {
        group.bench_function(*name, |b| {
            b.to_async(&runtime)
                .iter(|| async { world.request(base, STREAM_200).await.expect("200") });
        });
    }
    group.finish();

    let mut group = c.benchmark_group("small_json");
    for (name, base, world) in &targets {
        group.bench_function(*name, |b| {
            b.to_async(&runtime)
                .iter(|| async { world.request(base, SMALL).await.expect("200") });
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    targets = end_to_end
}
criterion_main!(benches);

//! The core's speed: one dispatch decision, chunk routing, whole requests,
//! with 1,000 workers and 10,000 requests in flight.

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::fixtures::LoadedRelay;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const WORKERS: u64 = 1_000;
const SLOTS: u32 = 16;
const IN_FLIGHT: u64 = 10_000;
const BATCH: u64 = 1_000;

fn dispatch(c: &mut Criterion) {
    let mut loaded = LoadedRelay::new(WORKERS, SLOTS, IN_FLIGHT);
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(1));
    // Timed: a request arrives and is handed to a worker (the selection and the frame out).
    // Untimed: completing it again, so the load stays at 10,000 in flight.
    group.bench_function("dispatch_decision", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            let mut done = 0;
            let mut batch = Vec::with_capacity(BATCH as usize);
            while done < iters {
                let n = BATCH.min(iters - done);
                let start = Instant::now();
                for _ in 0..n {
                    let request = loaded.arrive();
                    batch.push(request);
                }
                black_box(loaded.drain());
                timed += start.elapsed();
                for request in batch.drain(..) {
                    let worker = match loaded.relay.request_status(request) {
                        Some(modelrelay_core::relay::RequestStatus::Assigned {
                            worker, ..
                        }) => worker,
                        other => panic!("not dispatched: {other:?}"),
                    };
                    loaded.complete(request, worker);
                }
                loaded.drain();
                done += n;
            }
            timed
        });
    });
    group.finish();
}

fn chunks(c: &mut Criterion) {
    let mut loaded = LoadedRelay::new(WORKERS, SLOTS, IN_FLIGHT);
    let chunk = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
    let running = loaded.running.clone();
    let mut group = c.benchmark_group("relay");
    group.throughput(Throughput::Elements(1));
    // One chunk frame in, routed to its client (one output out), across all running requests.
    group.bench_function("chunk_event", |b| {
        let mut next = 0usize;
        b.iter(|| {
            let (request, worker) = running[next % running.len()];
            next = next.wrapping_add(7919);
            loaded.chunk(request, worker, chunk.clone());
            black_box(loaded.relay.poll_output())
        });
    });
    group.finish();
}

fn whole_requests(c: &mut Criterion) {
    let mut loaded = LoadedRelay::new(WORKERS, SLOTS, IN_FLIGHT);
    let chunk = Bytes::from_static(b"data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n");
    const CHUNKS: u64 = 20;
    let mut group = c.benchmark_group("relay");
    // Events per request: arrival, CHUNKS chunks, completion.
    group.throughput(Throughput::Elements(CHUNKS + 2));
    group.bench_function("request_with_20_chunks", |b| {
        b.iter(|| {
            let request = loaded.arrive();
            let worker = loaded.dispatched_to(request);
            for _ in 0..CHUNKS {
                loaded.chunk(request, worker, chunk.clone());
            }
            loaded.complete(request, worker);
            black_box(loaded.drain())
        });
    });
    group.finish();
}

criterion_group!(benches, dispatch, chunks, whole_requests);
criterion_main!(benches);

//! The wire codecs per message: protocol v1 (JSON text) against v2 (postcard with
//! raw payloads), for a typical streamed chunk and a request with a 4 KiB body.

use std::hint::black_box;
use std::sync::Arc;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use modelrelay_core::wire::{
    FrameLimits, Headers, RequestFrame, ResponseChunk, ServerMessage, WireVersion, WorkerMessage,
};
use modelrelay_core::{ModelName, WireRequestId};

/// A chat-completion chunk as a backend streams it (one token, with its JSON envelope).
const CHUNK: &str = "data: {\"id\":\"chatcmpl-8f2a\",\"object\":\"chat.completion.chunk\",\"created\":1764000000,\"model\":\"llama-3.1-8b-instruct\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" streaming\"},\"finish_reason\":null}]}\n\n";

fn chunk_message() -> WorkerMessage {
    WorkerMessage::ResponseChunk(ResponseChunk {
        request_id: WireRequestId::Number(123_456),
        chunk: Bytes::from_static(CHUNK.as_bytes()),
    })
}

fn request_message() -> ServerMessage {
    let prompt = "Tell me about relays. ".repeat(180);
    let body = format!(
        "{{\"model\":\"llama-3.1-8b-instruct\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"{prompt}\"}}]}}"
    );
    let mut headers = Headers::new();
    headers.push("content-type", "application/json");
    ServerMessage::Request(Arc::new(RequestFrame {
        request_id: WireRequestId::Number(123_456),
        model: ModelName::new("llama-3.1-8b-instruct"),
        endpoint_path: "/v1/chat/completions".into(),
        is_streaming: true,
        body: Bytes::from(body),
        headers,
    }))
}

fn codecs(c: &mut Criterion) {
    let limits = FrameLimits::default();
    let chunk = chunk_message();
    let request = request_message();
    for wire in [WireVersion::V1, WireVersion::V2] {
        let name = format!("{wire:?}").to_lowercase();

        let mut group = c.benchmark_group("chunk");
        group.throughput(Throughput::Elements(1));
        let frame = wire.encode(&chunk).expect("encodes");
        group.bench_with_input(BenchmarkId::new("encode", &name), &chunk, |b, m| {
            b.iter(|| wire.encode(black_box(m)).expect("encodes"))
        });
        group.bench_with_input(BenchmarkId::new("decode", &name), &frame, |b, f| {
            b.iter(|| {
                wire.decode::<WorkerMessage>(black_box(f), limits)
                    .expect("decodes")
            })
        });
        group.finish();

        let mut group = c.benchmark_group("request_4k");
        group.throughput(Throughput::Elements(1));
        let frame = wire.encode(&request).expect("encodes");
        group.bench_with_input(BenchmarkId::new("encode", &name), &request, |b, m| {
            b.iter(|| wire.encode(black_box(m)).expect("encodes"))
        });
        group.bench_with_input(BenchmarkId::new("decode", &name), &frame, |b, f| {
            b.iter(|| {
                wire.decode::<ServerMessage>(black_box(f), limits)
                    .expect("decodes")
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .measurement_time(std::time::Duration::from_secs(2))
        .warm_up_time(std::time::Duration::from_millis(500));
    targets = codecs
}
criterion_main!(benches);

//! Decoders that cannot be inflated: list and map ceilings enforced while
//! decoding, the frame limit before `register`, and the allocations a frame of
//! N bytes may cost (at most 4·N + 1 MiB). That v1 decoding matches serde's
//! derive is checked beside the golden frames, in `core/src/wire/tests.rs`.
//!
//! Allocations are counted per thread by `allocation_counter` (its global
//! allocator), so the tests of this binary may run in parallel.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use modelrelay_core::relay::{
    MAX_MODEL_NAME_BYTES, MAX_MODELS_PER_WORKER, MAX_WORKER_NAME_BYTES, RelayConfig,
    sanitize_models,
};
use modelrelay_core::wire::{
    DecodeError, FrameLimits, MAX_ACK_WARNINGS, MAX_HEADER_PAIRS, MAX_LISTED_MODELS,
    MAX_PROTOCOL_VERSION_BYTES, ModelsUpdate, Register, RegisterAck, RequestFrame,
    ResponseComplete, ServerMessage, WireVersion, WorkerMessage,
};
use modelrelay_core::{ModelName, RequestId};
use proptest::prelude::*;

const BOTH: [WireVersion; 2] = [WireVersion::V1, WireVersion::V2];
const MIB: u64 = 1024 * 1024;

fn worker(version: WireVersion, frame: &[u8]) -> Result<WorkerMessage, DecodeError> {
    version.decode(&Bytes::copy_from_slice(frame), FrameLimits::default())
}

fn server(version: WireVersion, frame: &[u8]) -> Result<ServerMessage, DecodeError> {
    version.decode(&Bytes::copy_from_slice(frame), FrameLimits::default())
}

fn register(models: Vec<String>) -> WorkerMessage {
    WorkerMessage::Register(Register {
        worker_name: "w".into(),
        models,
        max_concurrent: 1,
        protocol_version: None,
        current_load: None,
    })
}

fn encode<M: modelrelay_core::wire::WireMessage>(version: WireVersion, message: &M) -> Bytes {
    version.encode(message).unwrap()
}

fn is_too_many(
    result: &Result<impl std::fmt::Debug, DecodeError>,
    list: &str,
    ceiling: usize,
) -> bool {
    matches!(result, Err(DecodeError::TooManyItems { list: l, ceiling: c }) if *l == list && *c == ceiling)
}

// ---- ceilings ----

#[test]
fn a_register_listing_more_names_than_the_ceiling_is_refused_while_decoding() {
    for version in BOTH {
        let frame = encode(
            version,
            &register(vec![String::new(); MAX_LISTED_MODELS + 1]),
        );
        let result = worker(version, &frame);
        assert!(
            is_too_many(&result, "models", MAX_LISTED_MODELS),
            "{version:?}: {result:?}"
        );
    }
}

#[test]
fn a_register_listing_up_to_the_ceiling_decodes_and_the_relay_still_keeps_the_first_256_with_a_warning()
 {
    let names: Vec<String> = (0..MAX_LISTED_MODELS).map(|i| format!("m{i}")).collect();
    for version in BOTH {
        let frame = encode(version, &register(names.clone()));
        let Ok(WorkerMessage::Register(decoded)) = worker(version, &frame) else {
            panic!("{version:?}: a list at the ceiling decodes");
        };
        assert_eq!(decoded.models, names);
        let config = RelayConfig::default();
        let kept = sanitize_models(
            &decoded.models,
            config.max_models_per_worker,
            config.max_model_name_bytes,
        );
        assert_eq!(kept.models.len(), MAX_MODELS_PER_WORKER);
        assert_eq!(
            kept.warnings,
            [format!(
                "dropped {} models past the limit of {MAX_MODELS_PER_WORKER}",
                MAX_LISTED_MODELS - MAX_MODELS_PER_WORKER
            )]
        );
    }
}

#[test]
fn the_ceilings_are_four_times_what_the_relay_keeps_and_the_relay_keeps_its_defaults() {
    assert_eq!(MAX_LISTED_MODELS, 4 * MAX_MODELS_PER_WORKER);
    let config = RelayConfig::default();
    assert_eq!(config.max_models_per_worker, MAX_MODELS_PER_WORKER);
    assert_eq!(config.max_model_name_bytes, MAX_MODEL_NAME_BYTES);
    assert_eq!((MAX_MODELS_PER_WORKER, MAX_MODEL_NAME_BYTES), (256, 256));
}

#[test]
fn a_models_update_is_bounded_like_a_register() {
    for version in BOTH {
        for (count, refused) in [(MAX_LISTED_MODELS, false), (MAX_LISTED_MODELS + 1, true)] {
            let message = WorkerMessage::ModelsUpdate(ModelsUpdate {
                models: vec!["m".into(); count],
                current_load: 0,
            });
            let result = worker(version, &encode(version, &message));
            assert_eq!(
                is_too_many(&result, "models", MAX_LISTED_MODELS),
                refused,
                "{result:?}"
            );
            assert_eq!(result.is_ok(), !refused);
        }
    }
}

#[test]
fn a_postcard_count_past_the_ceiling_is_refused_before_anything_is_reserved() {
    // register: worker_name "w", then a models count, then `bytes` zero bytes.
    let register = |count: u64, bytes: usize| {
        let mut frame = vec![2, 1, 1, b'w'];
        push_varint(&mut frame, count);
        frame.resize(frame.len() + bytes, 0);
        frame
    };
    // response_complete: id 1, status 200, then a header count and `bytes` zero bytes.
    let response = |count: u64, bytes: usize| {
        let mut frame = vec![2, 4, 0, 1, 200, 1];
        push_varint(&mut frame, count);
        frame.resize(frame.len() + bytes, 0);
        frame
    };
    let over = (MAX_LISTED_MODELS + 1) as u64;
    let info = allocation_counter::measure(|| {
        // A count the frame could hold: refused at the count, before the first name.
        let result = worker(WireVersion::V2, &register(over, 2 * MAX_LISTED_MODELS));
        assert!(
            is_too_many(&result, "models", MAX_LISTED_MODELS),
            "{result:?}"
        );
        let over = (MAX_HEADER_PAIRS + 1) as u64;
        let result = worker(WireVersion::V2, &response(over, 4 * MAX_HEADER_PAIRS));
        assert!(
            is_too_many(&result, "headers", MAX_HEADER_PAIRS),
            "{result:?}"
        );
        // A list count the frame cannot hold: postcard gives no size hint, nothing
        // is reserved, and the frame ends before the list does.
        let result = worker(WireVersion::V2, &register(u64::from(u32::MAX), 16));
        assert!(matches!(result, Err(DecodeError::Binary(_))), "{result:?}");
        // postcard announces a map's count whatever the bytes left: refused at once.
        let result = worker(WireVersion::V2, &response(1 << 40, 16));
        assert!(
            is_too_many(&result, "headers", MAX_HEADER_PAIRS),
            "{result:?}"
        );
    });
    // The frames themselves (copied by `worker`) are the only sizeable allocations.
    assert!(info.bytes_max < 8 * 1024, "{info:?}");
}

fn response_with_headers(pairs: usize) -> WorkerMessage {
    WorkerMessage::ResponseComplete(ResponseComplete {
        request_id: RequestId::new(1).into(),
        status_code: 200,
        headers: (0..pairs)
            .map(|i| (format!("x-{i}"), String::new()))
            .collect(),
        body: Bytes::new(),
        token_counts: None,
    })
}

#[test]
fn headers_past_the_ceiling_are_refused_while_decoding_in_responses_and_requests() {
    for version in BOTH {
        assert!(
            worker(
                version,
                &encode(version, &response_with_headers(MAX_HEADER_PAIRS))
            )
            .is_ok()
        );
        let result = worker(
            version,
            &encode(version, &response_with_headers(MAX_HEADER_PAIRS + 1)),
        );
        assert!(
            is_too_many(&result, "headers", MAX_HEADER_PAIRS),
            "{version:?}: {result:?}"
        );

        let request = ServerMessage::Request(Arc::new(RequestFrame {
            request_id: RequestId::new(1).into(),
            model: ModelName::new("m"),
            endpoint_path: "/v1/chat/completions".into(),
            is_streaming: false,
            body: Bytes::from_static(b"{}"),
            headers: (0..=MAX_HEADER_PAIRS)
                .map(|i| (format!("h{i}"), "v"))
                .collect(),
        }));
        let result = server(version, &encode(version, &request));
        assert!(
            is_too_many(&result, "headers", MAX_HEADER_PAIRS),
            "{version:?}: {result:?}"
        );
    }
}

#[test]
fn a_register_ack_is_bounded_in_models_and_in_warnings() {
    let ack = |models: usize, warnings: usize| {
        ServerMessage::RegisterAck(RegisterAck {
            worker_id: "1".into(),
            models: (0..models)
                .map(|i| ModelName::new(&format!("m{i}")))
                .collect(),
            warnings: vec!["w".into(); warnings],
            protocol_version: None,
        })
    };
    for version in BOTH {
        assert!(
            server(
                version,
                &encode(version, &ack(MAX_LISTED_MODELS, MAX_ACK_WARNINGS))
            )
            .is_ok()
        );
        let result = server(version, &encode(version, &ack(MAX_LISTED_MODELS + 1, 0)));
        assert!(
            is_too_many(&result, "models", MAX_LISTED_MODELS),
            "{result:?}"
        );
        let result = server(version, &encode(version, &ack(1, MAX_ACK_WARNINGS + 1)));
        assert!(
            is_too_many(&result, "warnings", MAX_ACK_WARNINGS),
            "{result:?}"
        );
    }
}

#[test]
fn a_60_mb_register_of_empty_names_costs_kilobytes_not_gigabytes() {
    // v1: `"",` per name; v2: one zero byte per name.
    let mut v1 = br#"{"type":"register","worker_name":"w","max_concurrent":1,"models":["#.to_vec();
    v1.extend(std::iter::repeat_n(*br#""","#, 20_000_000).flatten());
    v1.extend_from_slice(br#""""]}"#);
    let mut v2 = vec![2, 1, 1, b'w'];
    v2.extend_from_slice(&[0x80, 0xb5, 0x93, 0x1d]); // 60,000,000 as a varint
    v2.resize(v2.len() + 60_000_000, 0);
    v2.push(1);
    for (version, frame) in [(WireVersion::V1, v1), (WireVersion::V2, v2)] {
        let frame = Bytes::from(frame);
        let info = allocation_counter::measure(|| {
            let result = version.decode::<WorkerMessage>(&frame, FrameLimits::default());
            assert!(
                is_too_many(&result, "models", MAX_LISTED_MODELS),
                "{result:?}"
            );
        });
        assert!(info.bytes_max < 256 * 1024, "{version:?}: {info:?}");
    }
}

// ---- the frame limit before `register` ----

/// `text` with every byte written as a `\u00XX` escape, in quotes.
fn escaped(text: &str) -> String {
    let mut out = String::from("\"");
    for byte in text.bytes() {
        out.push_str(&format!("\\u{byte:04x}"));
    }
    out.push('"');
    out
}

/// The largest `register` the relay accepts, in v1's most expensive form:
/// every string escaped, one space after every `:` and `,`.
fn largest_v1_register(extra_list_bytes: usize) -> Vec<u8> {
    let name = escaped(&"n".repeat(MAX_MODEL_NAME_BYTES));
    let models = vec![name; MAX_MODELS_PER_WORKER].join(", ");
    let field = |key: &str, value: String| format!("{}: {value}", escaped(key));
    let version = format!("{}-v1", "x".repeat(MAX_PROTOCOL_VERSION_BYTES - 3));
    let fields = [
        field("type", escaped("register")),
        field("worker_name", escaped(&"w".repeat(MAX_WORKER_NAME_BYTES))),
        field(
            "models",
            format!("[{models}{}]", " ".repeat(extra_list_bytes)),
        ),
        field("max_concurrent", u32::MAX.to_string()),
        field("protocol_version", escaped(&version)),
        field("current_load", u32::MAX.to_string()),
    ];
    format!("{{{}}}", fields.join(", ")).into_bytes()
}

#[test]
fn the_largest_acceptable_v1_register_fits_the_before_register_limit_and_one_byte_of_list_more_does_not()
 {
    let limit = FrameLimits::before_register();
    let frame = largest_v1_register(0);
    assert_eq!(
        frame.len(),
        limit.max_frame_bytes,
        "the limit is exactly the worst case"
    );
    let decoded = WireVersion::V1.decode::<WorkerMessage>(&Bytes::from(frame), limit);
    let Ok(WorkerMessage::Register(register)) = decoded else {
        panic!("the largest register decodes: {decoded:?}");
    };
    assert_eq!(register.models.len(), MAX_MODELS_PER_WORKER);
    assert!(
        register
            .models
            .iter()
            .all(|m| m.len() == MAX_MODEL_NAME_BYTES)
    );
    assert_eq!(register.worker_name.len(), MAX_WORKER_NAME_BYTES);
    assert_eq!(register.current_load, Some(u32::MAX));
    assert!(WireVersion::V1.accepts_announced_version(register.protocol_version.as_deref()));

    let frame = largest_v1_register(1);
    let result = WireVersion::V1.decode::<WorkerMessage>(&Bytes::from(frame), limit);
    assert!(
        matches!(result, Err(DecodeError::FrameTooLarge { size, limit: l }) if size == l + 1),
        "{result:?}"
    );
}

#[test]
fn the_largest_acceptable_v2_register_fits_its_before_register_limit_and_one_byte_of_list_more_does_not()
 {
    let limit = FrameLimits::before_register_on(WireVersion::V2);
    let largest = |last_name_bytes: usize| {
        let mut models = vec!["n".repeat(MAX_MODEL_NAME_BYTES); MAX_MODELS_PER_WORKER];
        models[MAX_MODELS_PER_WORKER - 1] = "n".repeat(last_name_bytes);
        WorkerMessage::Register(Register {
            worker_name: "w".repeat(MAX_WORKER_NAME_BYTES),
            models,
            max_concurrent: u32::MAX,
            protocol_version: Some("v".repeat(MAX_PROTOCOL_VERSION_BYTES)),
            current_load: Some(u32::MAX),
        })
    };
    let frame = encode(WireVersion::V2, &largest(MAX_MODEL_NAME_BYTES));
    assert_eq!(
        frame.len(),
        limit.max_frame_bytes,
        "the limit is exactly the worst case"
    );
    assert_eq!(
        WireVersion::V2
            .decode::<WorkerMessage>(&frame, limit)
            .unwrap(),
        largest(MAX_MODEL_NAME_BYTES)
    );
    let frame = encode(WireVersion::V2, &largest(MAX_MODEL_NAME_BYTES + 1));
    assert!(matches!(
        WireVersion::V2.decode::<WorkerMessage>(&frame, limit),
        Err(DecodeError::FrameTooLarge { .. })
    ));
    // Either version's limit covers the other's worst case.
    assert!(FrameLimits::before_register().max_frame_bytes >= limit.max_frame_bytes);
    assert_eq!(
        FrameLimits::before_register(),
        FrameLimits::before_register_on(WireVersion::V1)
    );
}

#[test]
fn the_before_register_limit_is_a_few_hundred_kilobytes() {
    assert_eq!(FrameLimits::before_register().max_frame_bytes, 395_880);
    assert_eq!(
        FrameLimits::before_register_on(WireVersion::V2).max_frame_bytes,
        66_259
    );
}

fn cases(default: u32) -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(default),
    )
}

// ---- allocations: a frame of N bytes costs at most 4·N + 1 MiB ----
//
// Two measures, both from `allocation_counter`:
// - peak: the most bytes held at once while decoding (what a frame grows the
//   process by); asserted at most 4·N + 1 MiB.
// - total: every byte asked of the allocator, a growing `realloc` counted as a
//   whole new block of its new size (allocation_counter leaves `realloc` to
//   `GlobalAlloc`'s default: alloc, copy, free). serde_json unescapes a string
//   into a buffer that doubles as it grows: counted block by block that is up
//   to 4× the string, plus the string's own copy, so a long string with sparse
//   escapes totals up to ~5·N this way (an allocator that grows blocks in
//   place asks for at most ~3·N); asserted at most 6·N + 1 MiB.

/// The largest `peak / N` and `total / N` seen over frames of at least 1 MiB, in thousandths.
static MAX_PEAK_PERMILLE: AtomicU64 = AtomicU64::new(0);
static MAX_TOTAL_PERMILLE: AtomicU64 = AtomicU64::new(0);

/// Decodes `frame` as both message types on both versions, counting what each allocates.
fn allocation_bound_holds(frame: &[u8]) -> Result<(), TestCaseError> {
    let n = frame.len() as u64;
    let frame = Bytes::copy_from_slice(frame);
    for version in BOTH {
        for info in [
            allocation_counter::measure(|| {
                let _ = version.decode::<WorkerMessage>(&frame, FrameLimits::default());
            }),
            allocation_counter::measure(|| {
                let _ = version.decode::<ServerMessage>(&frame, FrameLimits::default());
            }),
        ] {
            prop_assert!(
                info.bytes_max <= 4 * n + MIB,
                "{:?}, {} bytes: {:?}",
                version,
                n,
                info
            );
            prop_assert!(
                info.bytes_total <= 6 * n + MIB,
                "{:?}, {} bytes: {:?}",
                version,
                n,
                info
            );
            if n >= MIB {
                MAX_PEAK_PERMILLE.fetch_max(info.bytes_max * 1000 / n, Ordering::Relaxed);
                MAX_TOTAL_PERMILLE.fetch_max(info.bytes_total * 1000 / n, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// JSON text of `count` copies of `item` separated by commas.
fn repeated(item: &str, count: usize) -> String {
    vec![item; count].join(",")
}

/// Frames built to inflate a decoder: long lists of empty strings, deep and wide
/// JSON in known and unknown fields, many header pairs, long escaped strings,
/// postcard length prefixes that claim far more than the frame holds.
fn adversarial_frame() -> impl Strategy<Value = Vec<u8>> {
    let count = 0usize..200_000;
    prop_oneof![
        // v1: a register or models_update of empty names, under and over the ceiling.
        (count.clone(), any::<bool>()).prop_map(|(n, update)| {
            let kind = if update { "models_update" } else { "register" };
            format!(r#"{{"type":"{kind}","worker_name":"w","max_concurrent":1,"models":[{}]}}"#, repeated(r#""""#, n)).into_bytes()
        }),
        // v1: the same with `type` last, so the first pass must skip the list.
        count.clone().prop_map(|n| {
            format!(r#"{{"models":[{}],"worker_name":"w","max_concurrent":1,"type":"register"}}"#, repeated(r#""""#, n)).into_bytes()
        }),
        // v1: wide unknown fields: a long array of zeros, many small keys, before and after `type`.
        (count.clone(), any::<bool>()).prop_map(|(n, first)| {
            let junk = format!(r#""x":[{}],"y":{{{}}}"#, repeated("0", n), (0..n / 8).map(|i| format!(r#""{i}":0"#)).collect::<Vec<_>>().join(","));
            if first {
                format!(r#"{{"type":"pong","current_load":1,{junk}}}"#).into_bytes()
            } else {
                format!(r#"{{{junk},"type":"pong","current_load":1}}"#).into_bytes()
            }
        }),
        // v1: deep nesting in an unknown field and in a known one.
        (0usize..200_000, any::<bool>()).prop_map(|(depth, known)| {
            let field = if known { "models" } else { "x" };
            format!(r#"{{"type":"register","{field}":{}{}}}"#, "[".repeat(depth), "]".repeat(depth)).into_bytes()
        }),
        // v1: many header pairs, in a response and in a request.
        (count.clone(), any::<bool>()).prop_map(|(n, request)| {
            let headers = repeated(r#""":"""#, n);
            if request {
                format!(r#"{{"type":"request","request_id":"1","model":"m","endpoint_path":"/","is_streaming":false,"body":"","headers":{{{headers}}}}}"#).into_bytes()
            } else {
                format!(r#"{{"type":"response_complete","request_id":"1","status_code":200,"headers":{{{headers}}}}}"#).into_bytes()
            }
        }),
        // v1: a long payload, model name or worker name full of escapes.
        (0usize..400_000, 0u8..3, 0usize..64).prop_map(|(n, field, every)| {
            let text: String = (0..n).map(|i| if every > 0 && i % every == 0 { "\\n" } else { "a" }).collect();
            match field {
                0 => format!(r#"{{"type":"response_chunk","request_id":"1","chunk":"{text}"}}"#),
                1 => format!(r#"{{"type":"register","worker_name":"w","max_concurrent":1,"models":["{text}"]}}"#),
                _ => format!(r#"{{"type":"error","code":"{text}","message":"{text}"}}"#),
            }.into_bytes()
        }),
        // v2: a register or models_update of empty names (one zero byte each), counted honestly or not.
        (count.clone(), any::<bool>(), any::<u32>()).prop_map(|(n, honest, claimed)| {
            let mut frame = vec![2, 1, 1, b'w'];
            push_varint(&mut frame, if honest { n as u64 } else { u64::from(claimed) });
            frame.resize(frame.len() + n, 0);
            frame.extend_from_slice(&[1, 0, 0]);
            frame
        }),
        // v2: header pairs of empty strings, and a huge claimed count.
        (count.clone(), any::<u32>()).prop_map(|(n, claimed)| {
            let mut frame = vec![2, 4, 0, 1, 200, 1];
            push_varint(&mut frame, u64::from(claimed).min(n as u64 + 1));
            frame.resize(frame.len() + 2 * n, 0);
            frame
        }),
        // v2: strings and payloads whose length prefix claims far more than the frame holds.
        (any::<u64>(), 0u8..4, 0usize..1024).prop_map(|(claimed, tag, tail)| {
            let mut frame = vec![2, tag + 1];
            if tag != 0 { frame.extend_from_slice(&[0, 1]); }
            push_varint(&mut frame, claimed);
            frame.resize(frame.len() + tail, b'a');
            frame
        }),
    ]
}

fn push_varint(frame: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        frame.push((value as u8) | 0x80);
        value >>= 7;
    }
    frame.push(value as u8);
}

proptest! {
    #![proptest_config(cases(48))]

    #[test]
    fn decoding_arbitrary_bytes_allocates_at_most_four_times_the_frame_plus_one_mib(
        frame in proptest::collection::vec(any::<u8>(), 0..4096),
    ) {
        allocation_bound_holds(&frame)?;
    }

    #[test]
    fn decoding_adversarial_frames_allocates_at_most_four_times_the_frame_plus_one_mib(
        frame in adversarial_frame(),
    ) {
        allocation_bound_holds(&frame)?;
    }
}

#[test]
#[allow(clippy::print_stderr)]
fn decoding_the_worst_frames_we_know_of_stays_within_four_times_the_frame_plus_one_mib() {
    // One large instance of each adversarial shape, so the ratio is measured where
    // the 1 MiB allowance no longer hides it.
    let n = 2_000_000;
    let escaped: String = (0..n)
        .map(|i| if i % 7 == 0 { "\\n" } else { "a" })
        .collect();
    let frames: Vec<Vec<u8>> = vec![
        format!(r#"{{"type":"register","worker_name":"w","max_concurrent":1,"models":[{}]}}"#, repeated(r#""""#, n)).into_bytes(),
        format!(r#"{{"models":[{}],"type":"register"}}"#, repeated(r#""""#, n)).into_bytes(),
        format!(r#"{{"x":[{}],"type":"pong","current_load":1}}"#, repeated("0", n)).into_bytes(),
        format!(r#"{{"type":"pong","current_load":1,"x":{{{}}}}}"#, (0..n / 4).map(|i| format!(r#""{i}":0"#)).collect::<Vec<_>>().join(",")).into_bytes(),
        format!(r#"{{"type":"register","x":{}{}}}"#, "[".repeat(n), "]".repeat(n)).into_bytes(),
        format!(r#"{{"type":"response_complete","request_id":"1","status_code":200,"headers":{{{}}}}}"#, repeated(r#""":"""#, n)).into_bytes(),
        format!(r#"{{"type":"response_chunk","request_id":"1","chunk":"{escaped}"}}"#).into_bytes(),
        format!(r#"{{"type":"error","code":"{escaped}","message":"{escaped}"}}"#).into_bytes(),
        format!(r#"{{"type":"request","request_id":"1","model":"{escaped}","endpoint_path":"{escaped}","is_streaming":true,"body":"{escaped}"}}"#).into_bytes(),
        {
            let mut frame = vec![2, 1, 1, b'w'];
            push_varint(&mut frame, n as u64);
            frame.resize(frame.len() + n, 0);
            frame
        },
        {
            let mut frame = vec![2, 3, 0, 1];
            push_varint(&mut frame, n as u64);
            frame.resize(frame.len() + n, b'a');
            frame
        },
    ];
    for frame in &frames {
        allocation_bound_holds(frame).unwrap();
    }
    // Long strings with escapes spaced so serde_json's unescaping buffer doubles
    // the most, up to 8 MiB.
    for (length, every) in [
        (4 << 20, 3),
        (4 << 20, 1000),
        (3 << 20, 64 << 10),
        (2 << 20, 1 << 20),
    ] {
        let text: String = (0..length)
            .map(|i| if i % every == 0 { "\\n" } else { "a" })
            .collect();
        let frame = format!(r#"{{"type":"response_chunk","request_id":"1","chunk":"{text}"}}"#);
        allocation_bound_holds(frame.as_bytes()).unwrap();
    }
    eprintln!(
        "over frames of N >= 1 MiB: peak at most {:.3}·N, total at most {:.3}·N",
        MAX_PEAK_PERMILLE.load(Ordering::Relaxed) as f64 / 1000.0,
        MAX_TOTAL_PERMILLE.load(Ordering::Relaxed) as f64 / 1000.0,
    );
}

//! Golden frames, round trips and malformed-input tests for both encodings.

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use serde::Deserialize;

use super::*;
use crate::ids::{ModelName, RequestId, WireRequestId};

const LIMITS: FrameLimits = FrameLimits {
    max_frame_bytes: 1 << 20,
};

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs.iter().copied().collect()
}

/// Every message, each with its v1 frame exactly as it travels.
fn golden_worker_frames() -> Vec<(WorkerMessage, &'static str)> {
    vec![
        (
            WorkerMessage::Register(Register {
                worker_name: "gpu-box-1".into(),
                models: vec!["llama-3-8b".into(), "qwen2.5".into()],
                max_concurrent: 4,
                protocol_version: Some("2026-04-bridge-v1".into()),
                current_load: Some(1),
            }),
            r#"{"type":"register","worker_name":"gpu-box-1","models":["llama-3-8b","qwen2.5"],"max_concurrent":4,"protocol_version":"2026-04-bridge-v1","current_load":1}"#,
        ),
        (
            WorkerMessage::Register(Register {
                worker_name: "w".into(),
                models: vec![],
                max_concurrent: 1,
                protocol_version: None,
                current_load: None,
            }),
            r#"{"type":"register","worker_name":"w","models":[],"max_concurrent":1}"#,
        ),
        (
            WorkerMessage::ModelsUpdate(ModelsUpdate {
                models: vec!["a".into()],
                current_load: 2,
            }),
            r#"{"type":"models_update","models":["a"],"current_load":2}"#,
        ),
        (
            WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: RequestId::new(17).into(),
                chunk: Bytes::from_static(b"data: {\"x\":\"\xc3\xa9\"}\n\n"),
            }),
            "{\"type\":\"response_chunk\",\"request_id\":\"17\",\"chunk\":\"data: {\\\"x\\\":\\\"\u{e9}\\\"}\\n\\n\"}",
        ),
        (
            WorkerMessage::ResponseComplete(ResponseComplete {
                request_id: RequestId::new(17).into(),
                status_code: 200,
                headers: headers(&[("content-type", "application/json")]),
                body: Bytes::from_static(b"{\"ok\":true}"),
                token_counts: Some(TokenCounts {
                    prompt_tokens: Some(5),
                    completion_tokens: Some(7),
                    total_tokens: Some(12),
                }),
            }),
            r#"{"type":"response_complete","request_id":"17","status_code":200,"headers":{"content-type":"application/json"},"body":"{\"ok\":true}","token_counts":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}"#,
        ),
        (
            WorkerMessage::ResponseComplete(ResponseComplete {
                request_id: RequestId::new(3).into(),
                status_code: 200,
                headers: Headers::new(),
                body: Bytes::new(),
                token_counts: Some(TokenCounts {
                    prompt_tokens: None,
                    completion_tokens: Some(9),
                    total_tokens: None,
                }),
            }),
            r#"{"type":"response_complete","request_id":"3","status_code":200,"token_counts":{"completion_tokens":9}}"#,
        ),
        (
            WorkerMessage::Pong(Pong {
                current_load: 3,
                timestamp_unix_ms: Some(1_764_000_000_000),
            }),
            r#"{"type":"pong","current_load":3,"timestamp_unix_ms":1764000000000}"#,
        ),
        (
            WorkerMessage::Pong(Pong {
                current_load: 0,
                timestamp_unix_ms: None,
            }),
            r#"{"type":"pong","current_load":0}"#,
        ),
        (
            WorkerMessage::Error(WorkerError {
                request_id: Some(RequestId::new(9).into()),
                code: "backend_unreachable".into(),
                message: "connection refused".into(),
            }),
            r#"{"type":"error","request_id":"9","code":"backend_unreachable","message":"connection refused"}"#,
        ),
        (
            WorkerMessage::Error(WorkerError {
                request_id: None,
                code: "internal".into(),
                message: "oops".into(),
            }),
            r#"{"type":"error","code":"internal","message":"oops"}"#,
        ),
    ]
}

fn golden_server_frames() -> Vec<(ServerMessage, &'static str)> {
    vec![
        (
            ServerMessage::RegisterAck(RegisterAck {
                worker_id: "5".into(),
                models: vec![ModelName::new("llama-3-8b")],
                warnings: vec!["dropped duplicate model \"llama-3-8b\"".into()],
                protocol_version: Some("2026-04-bridge-v1".into()),
            }),
            r#"{"type":"register_ack","worker_id":"5","models":["llama-3-8b"],"warnings":["dropped duplicate model \"llama-3-8b\""],"protocol_version":"2026-04-bridge-v1"}"#,
        ),
        (
            ServerMessage::RegisterAck(RegisterAck {
                worker_id: "6".into(),
                models: vec![],
                warnings: vec![],
                protocol_version: None,
            }),
            r#"{"type":"register_ack","worker_id":"6","models":[]}"#,
        ),
        (
            ServerMessage::Request(Arc::new(RequestFrame {
                request_id: RequestId::new(42).into(),
                model: ModelName::new("llama-3-8b"),
                endpoint_path: "/v1/chat/completions".into(),
                is_streaming: true,
                body: Bytes::from_static(br#"{"model":"llama-3-8b","stream":true}"#),
                headers: headers(&[
                    ("content-type", "application/json"),
                    ("authorization", "Bearer sk-x"),
                ]),
            })),
            r#"{"type":"request","request_id":"42","model":"llama-3-8b","endpoint_path":"/v1/chat/completions","is_streaming":true,"body":"{\"model\":\"llama-3-8b\",\"stream\":true}","headers":{"content-type":"application/json","authorization":"Bearer sk-x"}}"#,
        ),
        (
            ServerMessage::Request(Arc::new(RequestFrame {
                request_id: RequestId::new(43).into(),
                model: ModelName::new("m"),
                endpoint_path: "/v1/embeddings".into(),
                is_streaming: false,
                body: Bytes::from_static(b"{}"),
                headers: Headers::new(),
            })),
            r#"{"type":"request","request_id":"43","model":"m","endpoint_path":"/v1/embeddings","is_streaming":false,"body":"{}"}"#,
        ),
        (
            ServerMessage::Cancel(Cancel {
                request_id: RequestId::new(42).into(),
                reason: CancelReason::ClientDisconnect,
            }),
            r#"{"type":"cancel","request_id":"42","reason":"client_disconnect"}"#,
        ),
        (
            ServerMessage::Cancel(Cancel {
                request_id: RequestId::new(1).into(),
                reason: CancelReason::Other("operator".into()),
            }),
            r#"{"type":"cancel","request_id":"1","reason":"operator"}"#,
        ),
        (
            ServerMessage::Ping(Ping {
                timestamp_unix_ms: Some(1_764_000_000_123),
            }),
            r#"{"type":"ping","timestamp_unix_ms":1764000000123}"#,
        ),
        (
            ServerMessage::Ping(Ping {
                timestamp_unix_ms: None,
            }),
            r#"{"type":"ping"}"#,
        ),
        (
            ServerMessage::GracefulShutdown(GracefulShutdown {
                reason: Some("server_shutdown".into()),
                drain_timeout_secs: Some(30),
            }),
            r#"{"type":"graceful_shutdown","reason":"server_shutdown","drain_timeout_secs":30}"#,
        ),
        (
            ServerMessage::GracefulShutdown(GracefulShutdown {
                reason: None,
                drain_timeout_secs: None,
            }),
            r#"{"type":"graceful_shutdown"}"#,
        ),
        (
            ServerMessage::ModelsRefresh(ModelsRefresh {
                reason: Some("admin".into()),
            }),
            r#"{"type":"models_refresh","reason":"admin"}"#,
        ),
        (
            ServerMessage::ModelsRefresh(ModelsRefresh { reason: None }),
            r#"{"type":"models_refresh"}"#,
        ),
        (
            ServerMessage::WindowUpdate(WindowUpdate {
                request_id: RequestId::new(300).into(),
                max_bytes: 262_144,
            }),
            r#"{"type":"window_update","request_id":"300","max_bytes":262144}"#,
        ),
    ]
}

#[test]
fn v1_worker_frames_match_the_golden_json_both_ways() {
    for (message, json) in golden_worker_frames() {
        let encoded = WireVersion::V1.encode(&message).unwrap();
        assert_eq!(std::str::from_utf8(&encoded).unwrap(), json);
        let decoded: WorkerMessage = WireVersion::V1
            .decode(&Bytes::from_static(json.as_bytes()), LIMITS)
            .unwrap();
        assert_eq!(decoded, message);
    }
}

#[test]
fn v1_server_frames_match_the_golden_json_both_ways() {
    for (message, json) in golden_server_frames() {
        let encoded = WireVersion::V1.encode(&message).unwrap();
        assert_eq!(std::str::from_utf8(&encoded).unwrap(), json);
        let decoded: ServerMessage = WireVersion::V1
            .decode(&Bytes::from_static(json.as_bytes()), LIMITS)
            .unwrap();
        assert_eq!(decoded, message);
    }
}

#[test]
fn v1_failures_and_refusals_are_response_completes_with_the_golden_json() {
    let refusal = refusal_complete("18".into(), REFUSED_AT_CAPACITY, "all slots are busy");
    let failure = failure_complete("17".into(), "backend_unreachable", "connection refused");
    let golden = [
        (
            &refusal,
            r#"{"type":"response_complete","request_id":"18","status_code":503,"headers":{"content-type":"application/json","x-modelrelay-refused":"worker_at_capacity"},"body":"{\"error\":{\"code\":\"worker_at_capacity\",\"message\":\"all slots are busy\",\"type\":\"server_error\"}}"}"#,
        ),
        (
            &failure,
            r#"{"type":"response_complete","request_id":"17","status_code":502,"headers":{"content-type":"application/json"},"body":"{\"error\":{\"code\":\"backend_unreachable\",\"message\":\"The backend failed (backend_unreachable): connection refused\",\"type\":\"server_error\"}}"}"#,
        ),
    ];
    for (complete, json) in golden {
        let message = WorkerMessage::ResponseComplete(complete.clone());
        let encoded = WireVersion::V1.encode(&message).unwrap();
        assert_eq!(std::str::from_utf8(&encoded).unwrap(), json);
    }
    assert_eq!(marked_refusal(&refusal), Some(REFUSED_AT_CAPACITY));
    assert_eq!(marked_refusal(&failure), None);
    // The marker counts only on a 503 naming a refusal code.
    let mut other = refusal.clone();
    other.status_code = 500;
    assert_eq!(marked_refusal(&other), None);
    let unknown = refusal_complete("19".into(), "worker_on_fire", "?");
    assert_eq!(marked_refusal(&unknown), None);
}

#[test]
fn v1_every_message_type_has_a_golden_frame() {
    let worker: std::collections::BTreeSet<_> = golden_worker_frames()
        .iter()
        .map(|(_, json)| json.split('"').nth(3).unwrap().to_owned())
        .collect();
    let server: std::collections::BTreeSet<_> = golden_server_frames()
        .iter()
        .map(|(_, json)| json.split('"').nth(3).unwrap().to_owned())
        .collect();
    let expect = |names: &[&str]| names.iter().map(|n| n.to_string()).collect();
    assert_eq!(
        worker,
        expect(&[
            "register",
            "models_update",
            "response_chunk",
            "response_complete",
            "pong",
            "error"
        ])
    );
    assert_eq!(
        server,
        expect(&[
            "register_ack",
            "request",
            "cancel",
            "ping",
            "graceful_shutdown",
            "models_refresh",
            "window_update"
        ])
    );
}

#[test]
fn v1_accepts_frames_from_existing_workers_with_extra_fields_nulls_and_any_field_order() {
    let json = r#"{"current_load":0,"max_concurrent":2,"models":["m"],"worker_name":"w","type":"register","extra":{"x":1}}"#;
    let decoded: WorkerMessage = WireVersion::V1
        .decode(&Bytes::from_static(json.as_bytes()), LIMITS)
        .unwrap();
    assert_eq!(
        decoded,
        WorkerMessage::Register(Register {
            worker_name: "w".into(),
            models: vec!["m".into()],
            max_concurrent: 2,
            protocol_version: None,
            current_load: Some(0),
        })
    );
    let json = r#"{"type":"response_complete","request_id":"1","status_code":204,"headers":null,"body":null,"token_counts":null}"#;
    let decoded: WorkerMessage = WireVersion::V1
        .decode(&Bytes::from_static(json.as_bytes()), LIMITS)
        .unwrap();
    assert_eq!(
        decoded,
        WorkerMessage::ResponseComplete(ResponseComplete {
            request_id: RequestId::new(1).into(),
            status_code: 204,
            headers: Headers::new(),
            body: Bytes::new(),
            token_counts: None,
        })
    );
}

#[test]
fn v1_rejects_unknown_types_and_malformed_frames_with_typed_errors() {
    for json in [
        r#"{"type":"teleport"}"#,
        r#"{"type":"response_chunk","request_id":7,"chunk":"x"}"#,
        r#"{"type":"response_chunk","request_id":"1"}"#,
        r#"{"models":[]}"#,
        "[]",
        "",
        "\u{0}",
    ] {
        let result = WireVersion::V1.decode::<WorkerMessage>(&Bytes::from(json), LIMITS);
        assert!(
            matches!(result, Err(DecodeError::Json(_))),
            "{json}: {result:?}"
        );
    }
}

#[test]
fn v1_cannot_carry_a_payload_that_is_not_utf8() {
    let message = WorkerMessage::ResponseChunk(ResponseChunk {
        request_id: RequestId::new(1).into(),
        chunk: Bytes::from_static(&[0xff, 0xfe]),
    });
    assert!(matches!(
        WireVersion::V1.encode(&message),
        Err(EncodeError::Json(_))
    ));
    // v2 carries any bytes.
    let frame = WireVersion::V2.encode(&message).unwrap();
    let decoded: WorkerMessage = WireVersion::V2.decode(&frame, LIMITS).unwrap();
    assert_eq!(decoded, message);
}

#[test]
fn v2_frames_start_with_the_version_byte_and_round_trip_every_message() {
    for (message, _) in golden_worker_frames() {
        let frame = WireVersion::V2.encode(&message).unwrap();
        assert_eq!(frame[0], V2_FRAME_VERSION);
        assert_eq!(
            WireVersion::V2
                .decode::<WorkerMessage>(&frame, LIMITS)
                .unwrap(),
            message
        );
    }
    for (message, _) in golden_server_frames() {
        let frame = WireVersion::V2.encode(&message).unwrap();
        assert_eq!(frame[0], V2_FRAME_VERSION);
        assert_eq!(
            WireVersion::V2
                .decode::<ServerMessage>(&frame, LIMITS)
                .unwrap(),
            message
        );
    }
}

#[test]
fn v2_golden_chunk_frame_layout() {
    let message = WorkerMessage::ResponseChunk(ResponseChunk {
        request_id: RequestId::new(300).into(),
        chunk: Bytes::from_static(b"data: x\n\n"),
    });
    let frame = WireVersion::V2.encode(&message).unwrap();
    // version 2, tag 3 (response_chunk), id variant 0 (number) and varint 300, length 9, the raw bytes.
    let mut expected = vec![2, 3, 0, 0xac, 0x02, 9];
    expected.extend_from_slice(b"data: x\n\n");
    assert_eq!(&frame[..], &expected[..]);
}

#[test]
fn v2_golden_window_update_frame_layout() {
    let message = ServerMessage::WindowUpdate(WindowUpdate {
        request_id: RequestId::new(300).into(),
        max_bytes: 262_144,
    });
    let frame = WireVersion::V2.encode(&message).unwrap();
    // version 2, tag 7 (window_update), id variant 0 (number) and varint 300, varint 2^18.
    assert_eq!(&frame[..], &[2, 7, 0, 0xac, 0x02, 0x80, 0x80, 0x10]);
}

#[test]
fn v2_payloads_are_slices_of_the_received_frame() {
    let message = WorkerMessage::ResponseChunk(ResponseChunk {
        request_id: RequestId::new(1).into(),
        chunk: Bytes::from(vec![7u8; 4096]),
    });
    let frame = WireVersion::V2.encode(&message).unwrap();
    let WorkerMessage::ResponseChunk(chunk) = WireVersion::V2.decode(&frame, LIMITS).unwrap()
    else {
        panic!("wrong message");
    };
    let frame_range = frame.as_ptr() as usize..frame.as_ptr() as usize + frame.len();
    assert!(frame_range.contains(&(chunk.chunk.as_ptr() as usize)));
    assert_eq!(chunk.chunk.len(), 4096);
}

#[test]
fn v2_rejects_bad_versions_tags_and_trailing_bytes() {
    let decode = |bytes: &[u8]| {
        WireVersion::V2.decode::<WorkerMessage>(&Bytes::copy_from_slice(bytes), LIMITS)
    };
    assert!(matches!(decode(&[]), Err(DecodeError::Empty)));
    assert!(matches!(decode(&[2]), Err(DecodeError::Empty)));
    assert!(matches!(
        decode(&[1, 3]),
        Err(DecodeError::UnsupportedVersion { found: 1 })
    ));
    assert!(matches!(
        decode(&[2, 99]),
        Err(DecodeError::UnknownMessageTag { tag: 99 })
    ));
    assert!(matches!(decode(&[2, 5]), Err(DecodeError::Binary(_))));
    assert!(matches!(
        decode(&[2, 5, 1, 0, 0xaa]),
        Err(DecodeError::TrailingBytes { count: 1 })
    ));
}

#[test]
fn frames_over_the_limit_are_refused_before_parsing() {
    let limits = FrameLimits { max_frame_bytes: 8 };
    for version in [WireVersion::V1, WireVersion::V2] {
        let result = version.decode::<WorkerMessage>(&Bytes::from(vec![b' '; 9]), limits);
        assert!(matches!(
            result,
            Err(DecodeError::FrameTooLarge { size: 9, limit: 8 })
        ));
    }
}

#[test]
fn announced_versions_are_checked_per_link() {
    assert!(WireVersion::V1.accepts_announced_version(None));
    assert!(WireVersion::V1.accepts_announced_version(Some("2026-04-bridge-v1")));
    assert!(!WireVersion::V1.accepts_announced_version(Some("2027-01-bridge-v2")));
    assert!(WireVersion::V2.accepts_announced_version(Some(V2_PROTOCOL_VERSION)));
    assert!(!WireVersion::V2.accepts_announced_version(Some("2026-04-bridge-v1")));
}

// ---- property tests ----

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9._:/-]{0,12}",
        any::<String>().prop_map(|s| s.chars().take(16).collect()),
    ]
}

fn payload() -> impl Strategy<Value = Bytes> {
    any::<String>().prop_map(Bytes::from)
}

fn opt_u64() -> impl Strategy<Value = Option<u64>> {
    proptest::option::of(any::<u64>())
}

fn arb_headers() -> impl Strategy<Value = Headers> {
    proptest::collection::vec((text(), text()), 0..4).prop_map(|pairs| pairs.into_iter().collect())
}

fn arb_worker_message() -> impl Strategy<Value = WorkerMessage> {
    let request_id = prop_oneof![
        any::<u64>().prop_map(WireRequestId::Number),
        "[a-z0-9-]{0,8}".prop_map(|t| WireRequestId::from(t.as_str())),
    ];
    prop_oneof![
        (
            text(),
            proptest::collection::vec(text(), 0..4),
            any::<u32>(),
            proptest::option::of(text()),
            proptest::option::of(any::<u32>())
        )
            .prop_map(
                |(worker_name, models, max_concurrent, protocol_version, current_load)| {
                    WorkerMessage::Register(Register {
                        worker_name,
                        models,
                        max_concurrent,
                        protocol_version,
                        current_load,
                    })
                }
            ),
        (proptest::collection::vec(text(), 0..4), any::<u32>()).prop_map(
            |(models, current_load)| WorkerMessage::ModelsUpdate(ModelsUpdate {
                models,
                current_load
            })
        ),
        (request_id.clone(), payload()).prop_map(|(request_id, chunk)| {
            WorkerMessage::ResponseChunk(ResponseChunk { request_id, chunk })
        }),
        (
            request_id.clone(),
            any::<u16>(),
            arb_headers(),
            payload(),
            proptest::option::of((opt_u64(), opt_u64(), opt_u64()))
        )
            .prop_map(|(request_id, status_code, headers, body, counts)| {
                WorkerMessage::ResponseComplete(ResponseComplete {
                    request_id,
                    status_code,
                    headers,
                    body,
                    token_counts: counts.map(|(prompt_tokens, completion_tokens, total_tokens)| {
                        TokenCounts {
                            prompt_tokens,
                            completion_tokens,
                            total_tokens,
                        }
                    }),
                })
            }),
        (any::<u32>(), opt_u64()).prop_map(|(current_load, timestamp_unix_ms)| {
            WorkerMessage::Pong(Pong {
                current_load,
                timestamp_unix_ms,
            })
        }),
        (proptest::option::of(request_id), text(), text()).prop_map(
            |(request_id, code, message)| WorkerMessage::Error(WorkerError {
                request_id,
                code,
                message
            })
        ),
    ]
}

fn arb_cancel_reason() -> impl Strategy<Value = CancelReason> {
    prop_oneof![
        Just(CancelReason::ClientDisconnect),
        Just(CancelReason::Timeout),
        Just(CancelReason::GracefulShutdown),
        Just(CancelReason::WorkerDisconnect),
        Just(CancelReason::RequeueExhausted),
        Just(CancelReason::ServerShutdown),
        "[a-z]{1,8}x".prop_map(CancelReason::Other),
    ]
}

fn arb_server_message() -> impl Strategy<Value = ServerMessage> {
    let request_id = prop_oneof![
        any::<u64>().prop_map(WireRequestId::Number),
        "[a-z0-9-]{0,8}".prop_map(|t| WireRequestId::from(t.as_str())),
    ];
    prop_oneof![
        (
            any::<u64>(),
            proptest::collection::vec(text(), 0..4),
            proptest::collection::vec(text(), 0..3),
            proptest::option::of(text())
        )
            .prop_map(|(id, models, warnings, protocol_version)| {
                ServerMessage::RegisterAck(RegisterAck {
                    worker_id: id.to_string(),
                    models: models.iter().map(|m| ModelName::new(m)).collect(),
                    warnings,
                    protocol_version,
                })
            }),
        (
            request_id.clone(),
            text(),
            text(),
            any::<bool>(),
            payload(),
            arb_headers()
        )
            .prop_map(
                |(request_id, model, endpoint_path, is_streaming, body, headers)| {
                    ServerMessage::Request(Arc::new(RequestFrame {
                        request_id,
                        model: ModelName::new(&model),
                        endpoint_path,
                        is_streaming,
                        body,
                        headers,
                    }))
                }
            ),
        (request_id.clone(), arb_cancel_reason())
            .prop_map(|(request_id, reason)| ServerMessage::Cancel(Cancel { request_id, reason })),
        opt_u64().prop_map(|timestamp_unix_ms| ServerMessage::Ping(Ping { timestamp_unix_ms })),
        (proptest::option::of(text()), opt_u64()).prop_map(|(reason, drain_timeout_secs)| {
            ServerMessage::GracefulShutdown(GracefulShutdown {
                reason,
                drain_timeout_secs,
            })
        }),
        proptest::option::of(text())
            .prop_map(|reason| ServerMessage::ModelsRefresh(ModelsRefresh { reason })),
        (request_id, any::<u64>()).prop_map(|(request_id, max_bytes)| {
            ServerMessage::WindowUpdate(WindowUpdate {
                request_id,
                max_bytes,
            })
        }),
    ]
}

fn cases() -> ProptestConfig {
    ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|cases| cases.parse().ok())
            .unwrap_or(256),
    )
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn every_worker_message_round_trips_in_both_encodings(message in arb_worker_message()) {
        for version in [WireVersion::V1, WireVersion::V2] {
            let frame = version.encode(&message).unwrap();
            let decoded: WorkerMessage = version.decode(&frame, FrameLimits::default()).unwrap();
            prop_assert_eq!(&decoded, &message);
        }
    }

    #[test]
    fn every_server_message_round_trips_in_both_encodings(message in arb_server_message()) {
        for version in [WireVersion::V1, WireVersion::V2] {
            let frame = version.encode(&message).unwrap();
            let decoded: ServerMessage = version.decode(&frame, FrameLimits::default()).unwrap();
            prop_assert_eq!(&decoded, &message);
        }
    }

    #[test]
    fn random_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let frame = Bytes::from(bytes);
        for version in [WireVersion::V1, WireVersion::V2] {
            let _ = version.decode::<WorkerMessage>(&frame, LIMITS);
            let _ = version.decode::<ServerMessage>(&frame, LIMITS);
        }
    }

    #[test]
    fn mutated_valid_frames_never_panic_the_decoders(
        message in arb_worker_message(),
        server in arb_server_message(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        for version in [WireVersion::V1, WireVersion::V2] {
            for mut bytes in [
                version.encode(&message).unwrap().to_vec(),
                version.encode(&server).unwrap().to_vec(),
            ] {
                for (index, byte, kind) in &mutations {
                    if bytes.is_empty() {
                        break;
                    }
                    let at = index.index(bytes.len());
                    match kind {
                        0 => bytes[at] = *byte,
                        1 => { bytes.remove(at); }
                        _ => bytes.truncate(at),
                    }
                }
                let frame = Bytes::from(bytes);
                let _ = version.decode::<WorkerMessage>(&frame, LIMITS);
                let _ = version.decode::<ServerMessage>(&frame, LIMITS);
            }
        }
    }
}

fn v1_worker(frame: &[u8]) -> Result<WorkerMessage, DecodeError> {
    WireVersion::V1.decode(&Bytes::copy_from_slice(frame), FrameLimits::default())
}

fn v1_server(frame: &[u8]) -> Result<ServerMessage, DecodeError> {
    WireVersion::V1.decode(&Bytes::copy_from_slice(frame), FrameLimits::default())
}

// ---- v1 decodes as serde's internally tagged derive did (before `tagged.rs`) ----

/// The message enums as they were derived before: the reference for v1 decoding.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DerivedWorkerMessage {
    Register(Register),
    ModelsUpdate(ModelsUpdate),
    ResponseChunk(ResponseChunk),
    ResponseComplete(ResponseComplete),
    Pong(Pong),
    Error(WorkerError),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum DerivedServerMessage {
    RegisterAck(RegisterAck),
    Request(Arc<RequestFrame>),
    Cancel(Cancel),
    Ping(Ping),
    GracefulShutdown(GracefulShutdown),
    ModelsRefresh(ModelsRefresh),
    WindowUpdate(WindowUpdate),
}

impl From<DerivedWorkerMessage> for WorkerMessage {
    fn from(message: DerivedWorkerMessage) -> Self {
        match message {
            DerivedWorkerMessage::Register(m) => Self::Register(m),
            DerivedWorkerMessage::ModelsUpdate(m) => Self::ModelsUpdate(m),
            DerivedWorkerMessage::ResponseChunk(m) => Self::ResponseChunk(m),
            DerivedWorkerMessage::ResponseComplete(m) => Self::ResponseComplete(m),
            DerivedWorkerMessage::Pong(m) => Self::Pong(m),
            DerivedWorkerMessage::Error(m) => Self::Error(m),
        }
    }
}

impl From<DerivedServerMessage> for ServerMessage {
    fn from(message: DerivedServerMessage) -> Self {
        match message {
            DerivedServerMessage::RegisterAck(m) => Self::RegisterAck(m),
            DerivedServerMessage::Request(m) => Self::Request(m),
            DerivedServerMessage::Cancel(m) => Self::Cancel(m),
            DerivedServerMessage::Ping(m) => Self::Ping(m),
            DerivedServerMessage::GracefulShutdown(m) => Self::GracefulShutdown(m),
            DerivedServerMessage::ModelsRefresh(m) => Self::ModelsRefresh(m),
            DerivedServerMessage::WindowUpdate(m) => Self::WindowUpdate(m),
        }
    }
}

/// Both decoders agree: the same message, or both an error.
///
/// Except where serde's buffering decoded a value the message then ignored: an
/// unknown field is now skipped unread, as serde_json does for any struct, so a
/// number past `f64`'s range or a lone surrogate escape there no longer fails
/// the frame. Every frame the derive accepted is accepted, with the same result.
fn decodes_as_the_derive_did(frame: &[u8]) -> Result<(), TestCaseError> {
    fn agree<T: PartialEq + std::fmt::Debug>(
        ours: Result<T, String>,
        derived: Result<T, String>,
    ) -> Result<(), TestCaseError> {
        match (ours, derived) {
            (Ok(ours), Ok(derived)) => prop_assert_eq!(ours, derived),
            (Err(_), Err(_)) => {}
            (Ok(ours), Err(derived)) => prop_assert!(
                derived.contains("number out of range") || derived.contains("surrogate"),
                "{:?} vs {:?}",
                ours,
                derived
            ),
            (Err(ours), Ok(derived)) => {
                prop_assert!(false, "refused {:?}: {}", derived, ours);
            }
        }
        Ok(())
    }
    agree(
        v1_worker(frame).map_err(|e| e.to_string()),
        serde_json::from_slice::<DerivedWorkerMessage>(frame)
            .map(WorkerMessage::from)
            .map_err(|e| e.to_string()),
    )?;
    agree(
        v1_server(frame).map_err(|e| e.to_string()),
        serde_json::from_slice::<DerivedServerMessage>(frame)
            .map(ServerMessage::from)
            .map_err(|e| e.to_string()),
    )
}

#[test]
fn type_may_come_anywhere_and_a_repeated_type_is_refused_as_before() {
    let frames: [&[u8]; 8] = [
        br#"{"current_load":3,"type":"pong"}"#,
        br#"{"current_load":3,"type":"pong","timestamp_unix_ms":5}"#,
        br#" { "type" : "pong" , "current_load" : 3 } "#,
        br#"{"\u0074ype":"pong","current_load":3}"#,
        br#"{"type":"pong","current_load":3,"type":"pong"}"#,
        br#"{"current_load":3,"type":"pong","type":"pong"}"#,
        br#"{"type":"ping","type":"pong"}"#,
        br#"{}"#,
    ];
    for frame in frames {
        decodes_as_the_derive_did(frame).unwrap();
    }
    assert!(v1_worker(br#"{"current_load":3,"type":"pong"}"#).is_ok());
    assert!(v1_worker(br#"{"type":"pong","current_load":3,"type":"pong"}"#).is_err());
}

#[test]
fn a_v1_frame_that_is_not_utf8_is_refused_even_where_the_bytes_sit_in_an_ignored_field() {
    for frame in [
        &b"{\"x\":\"\x80\",\"type\":\"pong\",\"current_load\":0}"[..],
        &b"{\"type\":\"pong\",\"current_load\":0,\"x\":\"\x80\"}"[..],
    ] {
        let result = v1_worker(frame);
        assert!(matches!(result, Err(DecodeError::Json(_))), "{result:?}");
        decodes_as_the_derive_did(frame).unwrap();
    }
    // Values of ignored fields are checked for syntax only, as for any struct.
    let frame = br#"{"x":1e999,"type":"pong","current_load":0}"#;
    assert!(v1_worker(frame).is_ok());
    assert!(serde_json::from_slice::<DerivedWorkerMessage>(frame).is_err());
}

/// A v1 frame of either direction, its keys in encoder order or sorted (which
/// puts `type` after other keys for most messages), or with a repeated `type`.
fn arb_v1_frame() -> impl Strategy<Value = Vec<u8>> {
    let encoded = prop_oneof![
        arb_worker_message().prop_map(|m| WireVersion::V1.encode(&m).unwrap().to_vec()),
        arb_server_message().prop_map(|m| WireVersion::V1.encode(&m).unwrap().to_vec()),
    ];
    (encoded, 0u8..4).prop_map(|(frame, shape)| match shape {
        // serde_json's Value keeps keys sorted.
        0 => serde_json::to_vec(&serde_json::from_slice::<serde_json::Value>(&frame).unwrap())
            .unwrap(),
        1 => {
            let mut repeated = frame[..frame.len() - 1].to_vec();
            repeated.extend_from_slice(br#","type":"ping"}"#);
            repeated
        }
        _ => frame,
    })
}

proptest! {
    #![proptest_config(cases())]

    #[test]
    fn v1_frames_decode_as_serdes_internally_tagged_derive_did(
        frame in arb_v1_frame(),
        mutations in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..4), 0..3),
    ) {
        let mut frame = frame;
        for (index, byte, kind) in &mutations {
            if frame.is_empty() {
                break;
            }
            let at = index.index(frame.len());
            match kind {
                0 => frame[at] = *byte,
                1 => { frame.remove(at); }
                2 => frame.insert(at, *byte),
                _ => frame.truncate(at),
            }
        }
        // serde also took a JSON array for an internally tagged enum; v1 frames are objects.
        prop_assume!(frame.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'['));
        decodes_as_the_derive_did(&frame)?;
    }
}

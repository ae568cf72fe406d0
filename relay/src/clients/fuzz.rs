//! Property-based fuzzing of what reads client bodies and backend chunks
//! before anyone trusts them: the body probe and the stream end and usage
//! scanners never panic, do one pass of work, and allocate a bounded amount.

use proptest::prelude::*;

use super::parse::probe;
use super::sse::{ends_stream, scan_usage};

/// Pieces an attacker would repeat: structure, the keys the relay looks for,
/// the markers it ends streams on, and escapes.
const PIECES: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ":",
    ",",
    "\"",
    "\\",
    "\\\"",
    " ",
    "\n",
    "\r\n",
    "0",
    "-1e999",
    "\"usage\"",
    "\"usage\":{",
    "\"model\"",
    "\"model\":",
    "\"stream\":",
    "true",
    "null",
    "\"prompt_tokens\":",
    "\"input_tokens\":7",
    "data: ",
    "[DONE]",
    "event: ",
    "message_stop",
    "response.completed",
    "\u{0}",
    "\u{7f}",
    "é",
    "\u{fffd}",
];

/// Arbitrary bytes, or a few pieces repeated many times over.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let repeated = (
        prop::collection::vec(prop::sample::select(PIECES), 1..8),
        1usize..4000,
    )
        .prop_map(|(pieces, times)| pieces.concat().repeat(times).into_bytes());
    prop_oneof![prop::collection::vec(any::<u8>(), 0..4096), repeated]
}

proptest! {
    #[test]
    fn the_usage_scan_does_one_pass_and_allocates_little(chunk in hostile_bytes()) {
        let info = allocation_counter::measure(|| {
            let (_, examined) = scan_usage(&chunk);
            assert!(examined <= chunk.len(), "{examined} of {}", chunk.len());
        });
        // Only a window-sized usage object is ever parsed.
        prop_assert!(info.bytes_max <= 64 * 1024, "{info:?}");
    }

    #[test]
    fn the_stream_end_check_never_panics_or_allocates(chunk in hostile_bytes()) {
        let info = allocation_counter::measure(|| {
            let _ = ends_stream(&chunk);
        });
        prop_assert_eq!(info.count_total, 0, "{:?}", info);
    }

    #[test]
    fn the_body_probe_allocates_at_most_the_body_and_a_little(body in hostile_bytes()) {
        let info = allocation_counter::measure(|| {
            let _ = probe(&body);
        });
        // The model name it keeps, an error message, serde's scratch.
        prop_assert!(info.bytes_max <= (body.len() + 64 * 1024) as u64, "{info:?} for {} bytes", body.len());
    }
}

/// Deep nesting costs no stack: skipped fields are skipped without recursion,
/// and a `model` that opens an object is refused at its first byte.
#[test]
fn a_deeply_nested_body_does_not_overflow_the_stack() {
    let deep = format!(
        "{{\"x\":{}{},\"model\":\"m\"}}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    assert!(probe(deep.as_bytes()).is_ok());
    let deep_model = format!("{{\"model\":{}}}", "{\"a\":".repeat(100_000));
    assert!(probe(deep_model.as_bytes()).is_err());
}

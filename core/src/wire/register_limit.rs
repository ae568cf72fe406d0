//! The frame limit for a link whose `register` is not accepted yet.
//!
//! Until a worker has registered, the only frame it may send is `register`,
//! so the link needs room for the largest `register` the relay accepts and no
//! more: [`MAX_MODELS_PER_WORKER`] names of [`MAX_MODEL_NAME_BYTES`] bytes, a
//! worker name of [`MAX_WORKER_NAME_BYTES`], a `protocol_version` of
//! [`MAX_PROTOCOL_VERSION_BYTES`] and both counts at `u32::MAX`, in the most
//! expensive encoding each version allows:
//! - v1: every byte of every string (keys and the `type` value too) written as
//!   a `\uXXXX` escape (6 bytes for 1; JSON lets a sender escape any character,
//!   and control characters must be), and one space after every `:` and `,`
//!   (Python's `json.dumps` writes those; serde_json and `JSON.stringify` none).
//! - v2: postcard, with every optional field present.
//!
//! A worker name or version string past its budget, or unknown extra fields,
//! still fit when the rest of the frame is below its worst case, as any real
//! frame is: 256 plain names of 256 bytes take 66 KB of the 396 KB.

use super::{FrameLimits, WireVersion};
use crate::relay::{MAX_MODEL_NAME_BYTES, MAX_MODELS_PER_WORKER, MAX_WORKER_NAME_BYTES};

/// Longest `protocol_version` a `register` is budgeted for in
/// [`FrameLimits::before_register`], in bytes (the one existing workers send,
/// `2026-04-bridge-v1`, has 17).
pub const MAX_PROTOCOL_VERSION_BYTES: usize = 64;

/// Digits of `u32::MAX` in decimal.
const U32_DIGITS: usize = 10;

/// A JSON string of `bytes` bytes, each escaped as `\uXXXX`, in its quotes.
const fn escaped(bytes: usize) -> usize {
    2 + 6 * bytes
}

/// `"key": value`, the key escaped.
const fn field(key: &str, value: usize) -> usize {
    escaped(key.len()) + ": ".len() + value
}

/// The largest acceptable v1 `register` frame.
const fn largest_v1_register() -> usize {
    let name = escaped(MAX_MODEL_NAME_BYTES);
    let models =
        "[]".len() + MAX_MODELS_PER_WORKER * name + (MAX_MODELS_PER_WORKER - 1) * ", ".len();
    let fields = [
        field("type", escaped("register".len())),
        field("worker_name", escaped(MAX_WORKER_NAME_BYTES)),
        field("models", models),
        field("max_concurrent", U32_DIGITS),
        field("protocol_version", escaped(MAX_PROTOCOL_VERSION_BYTES)),
        field("current_load", U32_DIGITS),
    ];
    let mut total = "{}".len() + (fields.len() - 1) * ", ".len();
    let mut i = 0;
    while i < fields.len() {
        total += fields[i];
        i += 1;
    }
    total
}

/// Bytes of a postcard varint holding `value`.
const fn varint(mut value: usize) -> usize {
    let mut bytes = 1;
    while value >= 0x80 {
        value >>= 7;
        bytes += 1;
    }
    bytes
}

/// A postcard string of `bytes` bytes with its length prefix.
const fn postcard_str(bytes: usize) -> usize {
    varint(bytes) + bytes
}

/// The largest acceptable v2 `register` frame.
const fn largest_v2_register() -> usize {
    let version_and_tag = 2;
    let u32_max = varint(u32::MAX as usize);
    version_and_tag
        + postcard_str(MAX_WORKER_NAME_BYTES)
        + varint(MAX_MODELS_PER_WORKER)
        + MAX_MODELS_PER_WORKER * postcard_str(MAX_MODEL_NAME_BYTES)
        + u32_max
        + 1
        + postcard_str(MAX_PROTOCOL_VERSION_BYTES)
        + 1
        + u32_max
}

impl FrameLimits {
    /// The limit for a link on either version until its `register` is accepted:
    /// room for the largest `register` the relay accepts, no more (395,880
    /// bytes, set by v1's worst case escaping; see [`FrameLimits::before_register_on`]).
    pub const fn before_register() -> Self {
        let v1 = largest_v1_register();
        let v2 = largest_v2_register();
        Self {
            max_frame_bytes: if v1 > v2 { v1 } else { v2 },
        }
    }

    /// The limit for a link on `wire` until its `register` is accepted: the size of
    /// the largest `register` the relay accepts in that encoding (v2: 66,259 bytes).
    pub const fn before_register_on(wire: WireVersion) -> Self {
        Self {
            max_frame_bytes: match wire {
                WireVersion::V1 => largest_v1_register(),
                WireVersion::V2 => largest_v2_register(),
            },
        }
    }
}

//! The worker wire protocol: v1 JSON text frames and v2 postcard binary frames.
//!
//! Both encodings carry the same messages ([`WorkerMessage`], [`ServerMessage`]).
//! v1 is byte-compatible with existing ModelRelay workers: one JSON object per
//! text frame, tagged by `"type"`, absent optional fields omitted. v2 is ours:
//! `[version byte][message tag byte][postcard body]` in a binary frame, with
//! payloads (`body`, `chunk`) as raw bytes that decode as slices of the frame.

mod bounded;
mod format;
mod forwarded;
mod messages;
mod register_limit;
mod tagged;
mod v1_errors;

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use bounded::{MAX_ACK_WARNINGS, MAX_HEADER_PAIRS, MAX_LISTED_MODELS};
pub use forwarded::{
    CLIENT_REQUEST_ID_HEADER, FORWARDED_REQUEST_HEADERS, MAX_CLIENT_REQUEST_ID_BYTES,
    forwards_request_header, is_well_formed_request_id,
};
pub use messages::{
    BackendUsage, Cancel, CancelReason, GracefulShutdown, Headers, ModelsRefresh, ModelsUpdate,
    Ping, Pong, Register, RegisterAck, RequestFrame, ResponseChunk, ResponseComplete,
    ServerMessage, TokenCounts, WindowUpdate, WorkerError, WorkerMessage,
};
pub use register_limit::MAX_PROTOCOL_VERSION_BYTES;
pub use v1_errors::{
    FAILURE_STATUS, REFUSAL_HEADER, REFUSAL_STATUS, failure_complete, marked_refusal,
    refusal_complete,
};

/// The `protocol_version` existing (v1) ModelRelay workers announce.
pub const V1_PROTOCOL_VERSION: &str = "2026-04-bridge-v1";
/// The `protocol_version` our worker announces on a v2 link.
pub const V2_PROTOCOL_VERSION: &str = "modelrelay-v2";
/// WebSocket subprotocol a worker offers to ask for v2 framing.
pub const V2_WEBSOCKET_SUBPROTOCOL: &str = "modelrelay.v2";
/// WebSocket subprotocol of the v2.1 revision: v2 framing plus `window_update`.
///
/// A worker offers it before [`V2_WEBSOCKET_SUBPROTOCOL`]; a relay that does
/// not know it picks plain v2, and then no `window_update` is ever sent.
pub const V2_1_WEBSOCKET_SUBPROTOCOL: &str = "modelrelay.v2.1";
/// Payload bytes of a request's streamed answer a worker may send before any
/// `window_update`, on a link with [`LinkFlow::Windowed`]. Part of the
/// protocol: both sides assume it, so the first chunk never waits for a grant.
pub const INITIAL_WINDOW: u64 = 64 * 1024;
/// QUIC ALPN identifier of v2.
pub const V2_ALPN: &[u8] = b"modelrelay/2";
/// The version byte that starts every v2 frame.
pub const V2_FRAME_VERSION: u8 = 2;

/// Response headers about the connection rather than the content; never passed on.
pub const HOP_BY_HOP_HEADERS: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The model a worker advertises to say it serves any model. ModelRelay's
/// workers send it when they cannot read their backend's model list, and its
/// server routes any model to them. A relay routes to such a worker a request
/// for any model that no eligible worker names; `GET /v1/models` never lists
/// it, and our worker never advertises it.
pub const WILDCARD_MODEL: &str = "*";

/// `error` code of a worker that refuses a request because it is draining.
pub const REFUSED_DRAINING: &str = "worker_draining";
/// `error` code of a worker that refuses a request because all its slots are busy.
pub const REFUSED_AT_CAPACITY: &str = "worker_at_capacity";

/// Which encoding a link speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireVersion {
    /// JSON text frames, as existing ModelRelay workers speak.
    V1,
    /// postcard binary frames with raw payloads.
    V2,
}

/// Whether the relay paces each request's streamed answer with `window_update`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinkFlow {
    /// The relay grants each request a byte window and tops it up as its client
    /// reads: a WebSocket link that negotiated v2.1, or a QUIC link (where the
    /// relay applies the window to its read of the request's stream instead of
    /// sending it).
    Windowed,
    /// No `window_update` travels: v1 links, and v2 links with a peer that
    /// did not offer or pick v2.1.
    Unwindowed,
}

/// Limits a decoder enforces on frames from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame accepted, in bytes.
    pub max_frame_bytes: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        // Room for a 32 MiB request body doubled by JSON escaping on v1 (a valid
        // JSON body escapes at most `"` and `\`), plus headers.
        Self {
            max_frame_bytes: 80 * 1024 * 1024,
        }
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The frame is larger than the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Size of the frame.
        size: usize,
        /// The limit it broke.
        limit: usize,
    },
    /// The frame has no bytes.
    #[error("empty frame")]
    Empty,
    /// A v1 frame that is not a valid message.
    #[error("invalid v1 JSON frame: {0}")]
    Json(#[source] serde_json::Error),
    /// A v2 frame whose version byte is not one this build speaks.
    #[error("v2 frame announces unsupported version {found}")]
    UnsupportedVersion {
        /// The version byte found.
        found: u8,
    },
    /// A v2 frame with a message tag this build does not know.
    #[error("v2 frame has unknown message tag {tag}")]
    UnknownMessageTag {
        /// The tag byte found.
        tag: u8,
    },
    /// A v2 frame whose body is not a valid message.
    #[error("invalid v2 frame body: {0}")]
    Binary(#[source] postcard::Error),
    /// A v2 frame with bytes after its message.
    #[error("v2 frame has {count} bytes after its message")]
    TrailingBytes {
        /// How many bytes were left over.
        count: usize,
    },
    /// A list or map in the frame (v1 or v2) is longer than its ceiling
    /// ([`MAX_LISTED_MODELS`], [`MAX_ACK_WARNINGS`], [`MAX_HEADER_PAIRS`]);
    /// decoding stopped at the first item past it.
    #[error("{list} lists more than {ceiling} items")]
    TooManyItems {
        /// Which field: `models`, `warnings` or `headers`.
        list: &'static str,
        /// The ceiling it broke.
        ceiling: usize,
    },
}

/// Why a message could not be encoded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// v1 text frames carry payloads as JSON strings, so they must be UTF-8.
    #[error("cannot encode as v1 JSON: {0}")]
    Json(#[source] serde_json::Error),
    /// postcard failed (for instance out of memory for the frame).
    #[error("cannot encode as v2: {0}")]
    Binary(#[source] postcard::Error),
}

impl WireVersion {
    /// Encodes a message as one frame: UTF-8 JSON text for v1, binary for v2.
    pub fn encode<M: WireMessage>(self, message: &M) -> Result<Bytes, EncodeError> {
        match self {
            Self::V1 => format::omitting_absent(|| serde_json::to_vec(message))
                .map(Bytes::from)
                .map_err(EncodeError::Json),
            Self::V2 => {
                let mut frame = Vec::with_capacity(message.v2_size_hint());
                frame.push(V2_FRAME_VERSION);
                message
                    .encode_v2(frame)
                    .map(Bytes::from)
                    .map_err(EncodeError::Binary)
            }
        }
    }

    /// Decodes one frame; payloads of v2 frames are slices of `frame`, not copies.
    pub fn decode<M: WireMessage>(
        self,
        frame: &Bytes,
        limits: FrameLimits,
    ) -> Result<M, DecodeError> {
        if frame.len() > limits.max_frame_bytes {
            return Err(DecodeError::FrameTooLarge {
                size: frame.len(),
                limit: limits.max_frame_bytes,
            });
        }
        bounded::clear_ceiling_hit();
        let decoded = match self {
            Self::V1 => M::decode_v1(frame).map_err(DecodeError::Json),
            Self::V2 => {
                let (&version, rest) = frame.split_first().ok_or(DecodeError::Empty)?;
                if version != V2_FRAME_VERSION {
                    return Err(DecodeError::UnsupportedVersion { found: version });
                }
                let (&tag, body) = rest.split_first().ok_or(DecodeError::Empty)?;
                format::slicing_from(frame, || M::decode_v2(tag, body))
            }
        };
        match (decoded, bounded::take_ceiling_hit()) {
            (Err(_), Some(hit)) => Err(DecodeError::TooManyItems {
                list: hit.list,
                ceiling: hit.ceiling,
            }),
            (decoded, _) => decoded,
        }
    }

    /// Whether a worker announcing `announced` in `register` can talk on this link.
    ///
    /// A missing version is taken as the link's own. v1 accepts any version
    /// string of major version 1 (ending in `-v1`), as existing workers send.
    pub fn accepts_announced_version(self, announced: Option<&str>) -> bool {
        match (self, announced) {
            (_, None) => true,
            (Self::V1, Some(version)) => version.ends_with("-v1"),
            (Self::V2, Some(version)) => version == V2_PROTOCOL_VERSION,
        }
    }

    /// The version string the server names in `register_ack` on this link.
    pub fn protocol_version(self) -> &'static str {
        match self {
            Self::V1 => V1_PROTOCOL_VERSION,
            Self::V2 => V2_PROTOCOL_VERSION,
        }
    }
}

/// A message type that travels in frames: [`WorkerMessage`] or [`ServerMessage`].
pub trait WireMessage: Serialize + DeserializeOwned + Sized {
    /// Decodes a v1 JSON frame without serde's buffering of tagged enums.
    fn decode_v1(frame: &[u8]) -> Result<Self, serde_json::Error>;
    /// Appends the v2 tag byte and postcard body to `frame`.
    fn encode_v2(&self, frame: Vec<u8>) -> Result<Vec<u8>, postcard::Error>;
    /// Decodes a v2 message from its tag byte and postcard body.
    fn decode_v2(tag: u8, body: &[u8]) -> Result<Self, DecodeError>;
    /// Bytes to reserve for the v2 frame, so payloads are not copied twice.
    fn v2_size_hint(&self) -> usize;
}

fn decode_v2_body<'a, T: serde::Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(DecodeError::Binary)?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(DecodeError::TrailingBytes { count: rest.len() })
    }
}

macro_rules! v2_tags {
    ($message:ident { $($tag:literal => $variant:ident),* $(,)? }) => {
        impl WireMessage for $message {
            fn decode_v1(frame: &[u8]) -> Result<Self, serde_json::Error> {
                tagged::decode_v1(frame)
            }

            fn encode_v2(&self, mut frame: Vec<u8>) -> Result<Vec<u8>, postcard::Error> {
                match self {
                    $(Self::$variant(inner) => {
                        frame.push($tag);
                        postcard::to_extend(inner, frame)
                    })*
                }
            }

            fn decode_v2(tag: u8, body: &[u8]) -> Result<Self, DecodeError> {
                match tag {
                    $($tag => decode_v2_body(body).map(Self::$variant),)*
                    tag => Err(DecodeError::UnknownMessageTag { tag }),
                }
            }

            fn v2_size_hint(&self) -> usize {
                64 + self.payload_len()
            }
        }
    };
}

v2_tags!(WorkerMessage {
    1 => Register,
    2 => ModelsUpdate,
    3 => ResponseChunk,
    4 => ResponseComplete,
    5 => Pong,
    6 => Error,
});

v2_tags!(ServerMessage {
    1 => RegisterAck,
    2 => Request,
    3 => Cancel,
    4 => Ping,
    5 => GracefulShutdown,
    6 => ModelsRefresh,
    7 => WindowUpdate,
});

impl WorkerMessage {
    fn payload_len(&self) -> usize {
        match self {
            Self::ResponseChunk(chunk) => chunk.chunk.len(),
            Self::ResponseComplete(complete) => complete.body.len(),
            _ => 0,
        }
    }
}

impl ServerMessage {
    fn payload_len(&self) -> usize {
        match self {
            Self::Request(request) => request.body.len(),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests;

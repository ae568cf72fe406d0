//! The protocol messages, worker → server and server → worker (PROTOCOL.md).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::bounded::{self, MAX_HEADER_PAIRS, too_many};
use super::format::{payload, skip_empty_bytes, skip_empty_headers, skip_empty_vec, skip_none};
use super::tagged::tagged_by_type;
use crate::ids::{ModelName, WireRequestId};

/// A frame a worker sends to the server.
///
/// Deserialized without serde's internally tagged buffering (see `tagged.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WorkerMessage {
    /// First frame on every link: who the worker is and what it serves.
    Register(Register),
    /// The worker's model list changed.
    ModelsUpdate(ModelsUpdate),
    /// A piece of a streaming response, already framed as SSE.
    ResponseChunk(ResponseChunk),
    /// The end of a response (status, headers and the body of a non-streaming one).
    ResponseComplete(ResponseComplete),
    /// Answer to a ping, with the worker's load.
    Pong(Pong),
    /// A failure, for one request or for the link.
    Error(WorkerError),
}

/// A frame the server sends to a worker.
///
/// Deserialized without serde's internally tagged buffering (see `tagged.rs`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Registration accepted: the worker's id and its sanitized model list.
    RegisterAck(RegisterAck),
    /// Work for the worker (shared, so dispatching and requeueing never copy it).
    Request(Arc<RequestFrame>),
    /// Stop working on a request.
    Cancel(Cancel),
    /// Liveness probe; the worker answers with a pong.
    Ping(Ping),
    /// Take no new work, finish what is running, then the link closes.
    GracefulShutdown(GracefulShutdown),
    /// Re-read the backend's models and send a `models_update`.
    ModelsRefresh(ModelsRefresh),
    /// More room for one request's streamed answer (v2.1 links only).
    WindowUpdate(WindowUpdate),
}

tagged_by_type!(WorkerMessage, WorkerMessageType, "a worker message: a JSON object tagged by `type`" {
    Register(Register),
    ModelsUpdate(ModelsUpdate),
    ResponseChunk(ResponseChunk),
    ResponseComplete(ResponseComplete),
    Pong(Pong),
    Error(WorkerError),
});

tagged_by_type!(ServerMessage, ServerMessageType, "a server message: a JSON object tagged by `type`" {
    RegisterAck(RegisterAck),
    Request(Arc<RequestFrame>),
    Cancel(Cancel),
    Ping(Ping),
    GracefulShutdown(GracefulShutdown),
    ModelsRefresh(ModelsRefresh),
    WindowUpdate(WindowUpdate),
});

/// `register`: sent once, as the first frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    /// Human-readable name of the worker.
    pub worker_name: String,
    /// Models as the worker lists them, before sanitizing; at most
    /// [`MAX_LISTED_MODELS`](super::MAX_LISTED_MODELS), or the frame does not decode.
    #[serde(deserialize_with = "bounded::listed_models")]
    pub models: Vec<String>,
    /// Requests the worker runs at once.
    pub max_concurrent: u32,
    /// Protocol version string; existing workers send `2026-04-bridge-v1`.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub protocol_version: Option<String>,
    /// Requests already running on the worker (for instance for another relay).
    #[serde(default, skip_serializing_if = "skip_none")]
    pub current_load: Option<u32>,
}

/// `models_update`: the worker's full new model list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelsUpdate {
    /// Models as the worker lists them, before sanitizing; at most
    /// [`MAX_LISTED_MODELS`](super::MAX_LISTED_MODELS), or the frame does not decode.
    #[serde(deserialize_with = "bounded::listed_models")]
    pub models: Vec<String>,
    /// Requests running on the worker.
    #[serde(default)]
    pub current_load: u32,
}

/// `response_chunk`: SSE bytes forwarded to the client unchanged.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseChunk {
    /// The request this chunk belongs to.
    pub request_id: WireRequestId,
    /// Already-framed SSE text.
    #[serde(with = "payload")]
    pub chunk: Bytes,
}

/// `response_complete`: the end of a response.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseComplete {
    /// The request that ended.
    pub request_id: WireRequestId,
    /// HTTP status from the backend.
    pub status_code: u16,
    /// Response headers from the backend.
    #[serde(default, skip_serializing_if = "skip_empty_headers")]
    pub headers: Headers,
    /// Body of a non-streaming response; empty after a stream.
    #[serde(default, with = "payload", skip_serializing_if = "skip_empty_bytes")]
    pub body: Bytes,
    /// Token usage, when the backend reports it.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub token_counts: Option<TokenCounts>,
}

/// Token usage reported by the backend.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenCounts {
    /// Tokens in the prompt.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub prompt_tokens: Option<u64>,
    /// Tokens generated.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub completion_tokens: Option<u64>,
    /// Sum of both.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub total_tokens: Option<u64>,
}

impl TokenCounts {
    /// Sets each count to the larger of the two (a stream may report its counts
    /// in pieces, as Anthropic's does: input tokens first, output tokens last).
    pub fn merge_max(&mut self, other: TokenCounts) {
        self.prompt_tokens = self.prompt_tokens.max(other.prompt_tokens);
        self.completion_tokens = self.completion_tokens.max(other.completion_tokens);
        self.total_tokens = self.total_tokens.max(other.total_tokens);
    }
}

/// A backend's `usage` object, with OpenAI's names (`prompt_tokens`,
/// `completion_tokens`, `total_tokens`) or Anthropic's and the Responses
/// API's (`input_tokens`, `output_tokens`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub struct BackendUsage {
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    total_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
}

impl BackendUsage {
    /// The counts it reports, or `None` if it reports neither prompt nor completion tokens.
    pub fn counts(self) -> Option<TokenCounts> {
        let counts = TokenCounts {
            prompt_tokens: self.prompt_tokens.or(self.input_tokens),
            completion_tokens: self.completion_tokens.or(self.output_tokens),
            total_tokens: self.total_tokens,
        };
        (counts.prompt_tokens.is_some() || counts.completion_tokens.is_some()).then_some(counts)
    }
}

/// `pong`: answer to a ping.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    /// Requests running on the worker.
    pub current_load: u32,
    /// The ping's timestamp, echoed.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub timestamp_unix_ms: Option<u64>,
}

/// `error` from a worker, about one request or the whole link.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerError {
    /// The request that failed, if the error is about one.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub request_id: Option<WireRequestId>,
    /// Machine-readable error code.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
}

/// `register_ack`: registration accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterAck {
    /// Id of this worker link on the server (opaque text).
    pub worker_id: String,
    /// The model list after sanitizing: what the server routes to this worker.
    #[serde(deserialize_with = "bounded::acked_models")]
    pub models: Vec<ModelName>,
    /// What sanitizing changed, in words.
    #[serde(
        default,
        deserialize_with = "bounded::ack_warnings",
        skip_serializing_if = "skip_empty_vec"
    )]
    pub warnings: Vec<String>,
    /// Protocol version the server speaks on this link.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub protocol_version: Option<String>,
}

/// `request`: a client request for the worker to run against its backend.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestFrame {
    /// Id to put on every frame about this request.
    pub request_id: WireRequestId,
    /// The model the client asked for.
    pub model: ModelName,
    /// Backend path, for instance `/v1/chat/completions`.
    pub endpoint_path: String,
    /// Whether the client asked for a stream.
    pub is_streaming: bool,
    /// The client's JSON body, unchanged.
    #[serde(with = "payload")]
    pub body: Bytes,
    /// Client headers the worker forwards to the backend.
    #[serde(default, skip_serializing_if = "skip_empty_headers")]
    pub headers: Headers,
}

/// `cancel`: stop one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancel {
    /// The request to stop.
    pub request_id: WireRequestId,
    /// Why it is stopped.
    pub reason: CancelReason,
}

/// `ping`: liveness probe.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Server wall-clock time, echoed by the pong.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub timestamp_unix_ms: Option<u64>,
}

/// `graceful_shutdown`: drain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracefulShutdown {
    /// Why the worker is drained.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub reason: Option<String>,
    /// Seconds the server waits for running requests before it closes the link.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub drain_timeout_secs: Option<u64>,
}

/// `models_refresh`: ask the worker to re-read its backend's models.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelsRefresh {
    /// Why a refresh is asked for.
    #[serde(default, skip_serializing_if = "skip_none")]
    pub reason: Option<String>,
}

/// `window_update`: how many `response_chunk` payload bytes the worker may have
/// sent for a request in all, since it was dispatched.
///
/// Sent only on a link that negotiated the v2.1 revision ([`LinkFlow::Windowed`]);
/// until the first one, a request's window is [`INITIAL_WINDOW`]. The value
/// only ever grows: a smaller one, a repeat, or one for a request the worker
/// does not run is ignored. `response_complete` bodies and `error`s do not count.
///
/// [`LinkFlow::Windowed`]: super::LinkFlow::Windowed
/// [`INITIAL_WINDOW`]: super::INITIAL_WINDOW
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowUpdate {
    /// The request the window is for.
    pub request_id: WireRequestId,
    /// Cumulative payload bytes the worker may have sent for it.
    pub max_bytes: u64,
}

/// Why a request was cancelled.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum CancelReason {
    /// The client went away.
    ClientDisconnect,
    /// The request ran past its deadline.
    Timeout,
    /// The worker is being drained.
    GracefulShutdown,
    /// The worker's link was lost.
    WorkerDisconnect,
    /// The request was requeued too many times.
    RequeueExhausted,
    /// The server is shutting down.
    ServerShutdown,
    /// A reason this version does not know.
    Other(String),
}

impl CancelReason {
    /// The reason as it appears on the wire.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ClientDisconnect => "client_disconnect",
            Self::Timeout => "timeout",
            Self::GracefulShutdown => "graceful_shutdown",
            Self::WorkerDisconnect => "worker_disconnect",
            Self::RequeueExhausted => "requeue_exhausted",
            Self::ServerShutdown => "server_shutdown",
            Self::Other(other) => other,
        }
    }

    fn from_wire(text: &str) -> Self {
        match text {
            "client_disconnect" => Self::ClientDisconnect,
            "timeout" => Self::Timeout,
            "graceful_shutdown" => Self::GracefulShutdown,
            "worker_disconnect" => Self::WorkerDisconnect,
            "requeue_exhausted" => Self::RequeueExhausted,
            "server_shutdown" => Self::ServerShutdown,
            other => Self::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for CancelReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for CancelReason {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for CancelReason {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Ok(Self::from_wire(&text))
    }
}

/// HTTP headers as `{name: value}`, in the order they were given; at most
/// [`MAX_HEADER_PAIRS`] when decoded from a frame.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    /// No headers.
    pub const fn new() -> Self {
        Self(Vec::new())
    }

    /// Appends a header.
    pub fn push(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.0.push((name.into(), value.into()));
    }

    /// The first value of `name`, compared without regard to case.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Drops every value of `name`, compared without regard to case.
    pub fn remove(&mut self, name: &str) {
        self.0.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// How many there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// The headers in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }
}

impl<N: Into<String>, V: Into<String>> FromIterator<(N, V)> for Headers {
    fn from_iter<I: IntoIterator<Item = (N, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(n, v)| (n.into(), v.into()))
                .collect(),
        )
    }
}

impl Serialize for Headers {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in &self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Headers {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HeadersVisitor;

        impl<'de> Visitor<'de> for HeadersVisitor {
            type Value = Headers;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of header names to string values")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Headers, A::Error> {
                // postcard announces the count up front: refuse before reserving anything.
                let announced = access.size_hint().unwrap_or(0);
                if announced > MAX_HEADER_PAIRS {
                    return Err(too_many("headers", MAX_HEADER_PAIRS));
                }
                let mut pairs = Vec::with_capacity(announced);
                while let Some((name, value)) = access.next_entry::<String, String>()? {
                    if pairs.len() == MAX_HEADER_PAIRS {
                        return Err(too_many("headers", MAX_HEADER_PAIRS));
                    }
                    pairs.push((name, value));
                }
                Ok(Headers(pairs))
            }

            fn visit_unit<E: serde::de::Error>(self) -> Result<Headers, E> {
                Ok(Headers::new())
            }
        }

        if deserializer.is_human_readable() {
            // `any`, so that an explicit JSON `null` reads as no headers.
            deserializer.deserialize_any(HeadersVisitor)
        } else {
            deserializer.deserialize_map(HeadersVisitor)
        }
    }
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn usage_is_read_under_either_apis_names_and_merged_by_the_larger_count() {
        let openai: BackendUsage =
            serde_json::from_str(r#"{"prompt_tokens":3,"completion_tokens":5,"total_tokens":8}"#)
                .unwrap();
        let start: BackendUsage =
            serde_json::from_str(r#"{"input_tokens":12,"output_tokens":1}"#).unwrap();
        let end: BackendUsage = serde_json::from_str(r#"{"output_tokens":30}"#).unwrap();
        assert_eq!(
            openai.counts(),
            Some(TokenCounts {
                prompt_tokens: Some(3),
                completion_tokens: Some(5),
                total_tokens: Some(8)
            })
        );
        let mut merged = start.counts().unwrap();
        merged.merge_max(end.counts().unwrap());
        assert_eq!(merged.prompt_tokens, Some(12));
        assert_eq!(merged.completion_tokens, Some(30));
        assert_eq!(BackendUsage::default().counts(), None);
    }
}

//! How requests end and why worker links close.

use std::fmt;

use bytes::Bytes;

use crate::wire::{Headers, TokenCounts};

/// How a request ended. Every request gets exactly one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The worker answered (any status, 4xx and 5xx included).
    Completed(Completion),
    /// The relay could not get an answer.
    Failed {
        /// What went wrong.
        failure: Failure,
        /// Whether stream chunks reached the client before the failure.
        streamed: bool,
    },
    /// The client went away first.
    Cancelled,
}

/// The end of a response as the backend gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion {
    /// HTTP status from the backend.
    pub status_code: u16,
    /// Response headers from the backend.
    pub headers: Headers,
    /// Body of a non-streaming response; empty after a stream.
    pub body: Bytes,
    /// Token usage, when the backend reported it.
    pub token_counts: Option<TokenCounts>,
}

/// Why the relay failed a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// No worker of the provider has ever advertised the model.
    #[error("model is not served by any worker")]
    UnknownModel,
    /// The provider's queue is at its bound.
    #[error("queue is full")]
    QueueFull,
    /// No worker took the request within the queue timeout.
    #[error("no worker became available within the queue timeout")]
    QueueTimeout,
    /// The request ran past the request timeout.
    #[error("request timed out")]
    RequestTimeout,
    /// The request lost its worker more times than allowed.
    #[error("request was requeued too many times after losing its worker")]
    RequeueExhausted,
    /// The worker was lost after part of the stream reached the client.
    #[error("worker was lost mid-stream")]
    WorkerLost,
    /// The worker reported an error for this request.
    #[error("worker error {code}: {message}")]
    WorkerError {
        /// Machine-readable code from the worker.
        code: String,
        /// Explanation from the worker.
        message: String,
    },
    /// The request had to go back to the queue but the queue was full.
    #[error("no capacity to requeue the request")]
    NoCapacity,
    /// The relay is shutting down and takes no new work.
    #[error("relay is shutting down")]
    ShuttingDown,
    /// The stream grew past the relay's bound.
    #[error("response stream exceeded the size limit")]
    StreamTooLarge,
    /// The client read the stream so slowly that too much piled up for it.
    #[error("the client read the stream too slowly")]
    ClientTooSlow,
    /// The worker a pinned request names cannot take it now: gone, draining,
    /// resting after a refusal, full, or not serving its model.
    #[error("the worker the request is pinned to cannot take it now")]
    WorkerUnavailable,
}

/// Why the relay closes a worker link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The worker secret was wrong.
    Unauthorized,
    /// The worker broke the protocol (first frame not `register`, bad frame, wrong version).
    ProtocolError(String),
    /// The worker kept sending frames about requests it was never given.
    TooManyViolations,
    /// No `register` arrived in time.
    RegisterTimeout,
    /// No frame arrived within the heartbeat window.
    HeartbeatTimeout,
    /// The worker finished draining.
    Drained,
    /// The drain deadline passed with requests still running.
    DrainTimeout,
    /// The relay is shutting down.
    Shutdown,
}

impl CloseReason {
    /// Whether the close is the worker's fault (a WebSocket close code 1002/1008 rather than 1000/1001).
    pub fn is_violation(&self) -> bool {
        matches!(
            self,
            Self::Unauthorized
                | Self::ProtocolError(_)
                | Self::TooManyViolations
                | Self::RegisterTimeout
        )
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unauthorized => f.write_str("unauthorized"),
            Self::ProtocolError(detail) => write!(f, "protocol error: {detail}"),
            Self::TooManyViolations => f.write_str("too many frames about requests never assigned"),
            Self::RegisterTimeout => f.write_str("no register frame in time"),
            Self::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            Self::Drained => f.write_str("drained"),
            Self::DrainTimeout => f.write_str("drain deadline passed"),
            Self::Shutdown => f.write_str("relay shutting down"),
        }
    }
}

//! How a request the worker fails or refuses ends, on each wire.
//!
//! v2 has `error`. ModelRelay's server takes no `error` from a worker (it
//! closes the link with 1002 and requeues everything on it), so on v1 the
//! request ends with a `response_complete` instead: an error status and body
//! for a failure, a marked 503 for a refusal (see [`refusal_complete`]).

use crate::ids::WireRequestId;
use crate::wire::{WireVersion, WorkerError, WorkerMessage, failure_complete, refusal_complete};

/// The last frame of a request that failed with `code` and `message`, on a link
/// of encoding `wire` (`None`: no link, where v2's form is as good as any).
pub fn failure_message(
    wire: Option<WireVersion>,
    request: WireRequestId,
    code: String,
    message: String,
) -> WorkerMessage {
    match wire {
        Some(WireVersion::V1) => {
            WorkerMessage::ResponseComplete(failure_complete(request, &code, &message))
        }
        Some(WireVersion::V2) | None => WorkerMessage::Error(WorkerError {
            request_id: Some(request),
            code,
            message,
        }),
    }
}

/// The frame that refuses a request before any of its output (`code` is
/// `worker_draining` or `worker_at_capacity`), on a link of encoding `wire`.
pub(super) fn refusal_message(
    wire: Option<WireVersion>,
    request: WireRequestId,
    code: &str,
    message: &str,
) -> WorkerMessage {
    match wire {
        Some(WireVersion::V1) => {
            WorkerMessage::ResponseComplete(refusal_complete(request, code, message))
        }
        Some(WireVersion::V2) | None => WorkerMessage::Error(WorkerError {
            request_id: Some(request),
            code: code.into(),
            message: message.into(),
        }),
    }
}

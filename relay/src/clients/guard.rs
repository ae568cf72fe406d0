//! The guard that tells the hub when a client leaves before its request ended.

use modelrelay_core::RequestId;

use crate::hub::{Command, Hub};

use super::sse::ends_stream;

/// Tells the hub, when dropped while armed, that the client left: done if its stream's final event reached it, gone otherwise.
pub(super) struct ClientGuard {
    hub: Hub,
    request: RequestId,
    armed: bool,
    /// The last chunk handed to the client was its stream's final event.
    answered: bool,
}

impl ClientGuard {
    /// An armed guard for `request`.
    pub(super) fn new(hub: Hub, request: RequestId) -> Self {
        Self {
            hub,
            request,
            armed: true,
            answered: false,
        }
    }

    /// The request ended: nothing to tell the hub.
    pub(super) fn disarm(&mut self) {
        self.armed = false;
    }

    /// Notes a chunk on its way to the client.
    pub(super) fn handing_over(&mut self, chunk: &[u8]) {
        self.answered = ends_stream(chunk);
    }
}

impl Drop for ClientGuard {
    fn drop(&mut self) {
        if self.armed {
            let request = self.request;
            self.hub.send(if self.answered {
                Command::ClientDone { request }
            } else {
                Command::ClientGone { request }
            });
        }
    }
}

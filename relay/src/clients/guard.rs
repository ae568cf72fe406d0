//! The guard that tells the hub when a client leaves before its request ended.

use crate::hub::response_queue::{ClientExit, Left};

use super::sse::ends_stream;

/// Tells the hub, when dropped while armed, that the client left: done if its
/// stream's final event reached it, gone otherwise. It posts on the client
/// board, which never waits or refuses, so the signal cannot be lost.
pub(super) struct ClientGuard {
    exit: ClientExit,
    armed: bool,
    /// The last chunk handed to the client was its stream's final event.
    answered: bool,
}

impl ClientGuard {
    /// An armed guard that leaves through `exit`.
    pub(super) fn new(exit: ClientExit) -> Self {
        Self {
            exit,
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
            self.exit.leave(if self.answered {
                Left::Done
            } else {
                Left::Gone
            });
        }
    }
}

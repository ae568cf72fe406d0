//! Where clients' connections post that their request has news for the hub:
//! answer bytes taken, or the client gone.
//!
//! A set of request ids and a wake-up, not a queue: posting never waits and
//! never fails, a request is on it at most once however often it posts, and the
//! news itself stays in the request's response queue, where the hub reads it
//! when it drains the board. So it holds at most one entry per response queue
//! alive (one per open client request), and an end signal cannot be lost or
//! held back when the hub's inbox is full.

use std::collections::BTreeSet;
use std::sync::{Mutex, PoisonError};

use modelrelay_core::RequestId;
use tokio::sync::Notify;

/// The board: requests with news, and the hub's wake-up.
#[derive(Debug, Default)]
pub(crate) struct ClientBoard {
    posted: Mutex<BTreeSet<RequestId>>,
    changed: Notify,
}

impl ClientBoard {
    /// Notes that `request` has news, and wakes the hub.
    pub(crate) fn post(&self, request: RequestId) {
        self.posted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(request);
        // Keeps a permit if the hub is not waiting: a post is never missed.
        self.changed.notify_one();
    }

    /// Resolves once something was posted since the last wake-up.
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// The requests posted since the last drain, in id order.
    pub(crate) fn drain(&self) -> BTreeSet<RequestId> {
        std::mem::take(&mut *self.posted.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn a_request_is_posted_once_however_often_and_a_post_before_the_wait_is_not_missed() {
        let board = ClientBoard::default();
        board.post(RequestId::new(2));
        board.post(RequestId::new(1));
        board.post(RequestId::new(2));
        tokio::time::timeout(Duration::from_secs(5), board.changed())
            .await
            .expect("the posts woke the waiter");
        let drained: Vec<_> = board.drain().into_iter().collect();
        assert_eq!(drained, [RequestId::new(1), RequestId::new(2)]);
        assert!(board.drain().is_empty());
    }
}

//! What the links' writers have handed on, per request: the board their progress
//! callbacks write and the driver drains into `SessionInput::LinkWrote`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use modelrelay_core::session::{LinkRequest, chunk_cost};
use modelrelay_core::wire::WorkerMessage;
use modelrelay_core::{LinkId, WireRequestId};
use tokio::sync::Notify;

/// Cost of each request's `response_chunk`s written since the driver last looked.
/// One for all links: each writer names its link, so a writer's reports never
/// reach another link's requests (two relays may use the same request id).
///
/// The driver is woken only when a request's cost since it last looked reaches
/// `notify_every` (a quarter of the read window), not for every chunk: a
/// backend call waits only when a whole window is queued unwritten, so its
/// writes always reach that mark, and a stream of small chunks costs no
/// wake-up per chunk. A request's entry goes when its last message (its
/// completion or error) is written; at most [`PENDING_REQUESTS`] entries wait
/// before the driver is woken to take them (requests cancelled mid-answer).
#[derive(Debug)]
pub(crate) struct WriteProgress {
    written: Mutex<HashMap<LinkRequest, u64>>,
    changed: Notify,
    notify_every: u64,
}

/// Requests with written cost the driver has not taken, past which it is woken.
pub(crate) const PENDING_REQUESTS: usize = 1024;

impl WriteProgress {
    /// An empty board that wakes the driver every `notify_every` of one request's cost.
    pub(crate) fn new(notify_every: u64) -> Arc<Self> {
        Arc::new(Self {
            written: Mutex::default(),
            changed: Notify::new(),
            notify_every: notify_every.max(1),
        })
    }

    /// The writer of `link` is done with `message`: a chunk's cost is added to
    /// its request's; a request's last message clears its entry.
    pub(crate) fn wrote(&self, link: LinkId, message: &WorkerMessage) {
        let (request, cost) = match message {
            WorkerMessage::ResponseChunk(chunk) => {
                (&chunk.request_id, chunk_cost(chunk.chunk.len()))
            }
            WorkerMessage::ResponseComplete(complete) => {
                self.forget(link, &complete.request_id);
                return;
            }
            WorkerMessage::Error(error) => {
                if let Some(request) = &error.request_id {
                    self.forget(link, request);
                }
                return;
            }
            _ => return,
        };
        let wake = {
            let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
            let total = written
                .entry(LinkRequest::new(link, request.clone()))
                .or_default();
            let before = *total;
            *total = total.saturating_add(cost);
            let crossed = before / self.notify_every != *total / self.notify_every;
            crossed || written.len() >= PENDING_REQUESTS
        };
        if wake {
            self.changed.notify_one();
        }
    }

    /// Drops what was noted of a request that has ended.
    fn forget(&self, link: LinkId, request: &WireRequestId) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&LinkRequest::new(link, request.clone()));
    }

    /// Drops what was noted of `link`'s requests (the link went down with them).
    pub(crate) fn forget_link(&self, link: LinkId) {
        self.written
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|request, _| request.link != link);
    }

    /// Resolves once something was written since the last [`WriteProgress::take`]
    /// (at once if it already was).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// What was written since the last call, by request; the board is left empty.
    pub(crate) fn take(&self) -> HashMap<LinkRequest, u64> {
        std::mem::take(&mut *self.written.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use modelrelay_core::wire::{Pong, ResponseChunk};

    use super::*;

    const L0: LinkId = LinkId::new(0);

    fn on_l0(id: u64) -> LinkRequest {
        LinkRequest::new(L0, WireRequestId::Number(id))
    }

    fn chunk(id: u64, bytes: usize) -> WorkerMessage {
        WorkerMessage::ResponseChunk(ResponseChunk {
            request_id: WireRequestId::Number(id),
            chunk: Bytes::from(vec![b'x'; bytes]),
        })
    }

    #[tokio::test]
    async fn chunks_add_up_by_request_until_taken_and_other_messages_count_nothing() {
        let board = WriteProgress::new(1);
        board.wrote(L0, &chunk(1, 10));
        board.wrote(L0, &chunk(1, 20));
        board.wrote(L0, &chunk(2, 0));
        board.wrote(
            L0,
            &WorkerMessage::Pong(Pong {
                current_load: 0,
                timestamp_unix_ms: None,
            }),
        );
        // The writes were announced before anyone waited.
        tokio::time::timeout(std::time::Duration::from_secs(1), board.changed())
            .await
            .expect("a change noted earlier wakes the next wait");
        let taken = board.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(taken[&on_l0(1)], chunk_cost(10) + chunk_cost(20));
        assert_eq!(taken[&on_l0(2)], chunk_cost(0));
        assert!(board.take().is_empty());
    }

    #[tokio::test]
    async fn the_driver_is_woken_once_a_request_crosses_a_quarter_window_and_ended_requests_go() {
        let board = WriteProgress::new(chunk_cost(100) * 3);
        board.wrote(L0, &chunk(1, 100));
        board.wrote(L0, &chunk(1, 100));
        let early = tokio::time::timeout(std::time::Duration::from_millis(50), board.changed());
        assert!(
            early.await.is_err(),
            "two chunks: under the mark, no wake-up"
        );
        board.wrote(L0, &chunk(1, 100));
        tokio::time::timeout(std::time::Duration::from_secs(1), board.changed())
            .await
            .expect("the third chunk reaches the mark");
        // A request whose completion is written leaves the board.
        board.wrote(L0, &chunk(2, 10));
        board.wrote(
            L0,
            &WorkerMessage::ResponseComplete(modelrelay_core::wire::ResponseComplete {
                request_id: WireRequestId::Number(2),
                status_code: 200,
                headers: modelrelay_core::wire::Headers::new(),
                body: Bytes::new(),
                token_counts: None,
            }),
        );
        let taken = board.take();
        assert_eq!(taken.len(), 1);
        assert_eq!(taken[&on_l0(1)], 3 * chunk_cost(100));
    }

    #[test]
    fn two_links_requests_of_the_same_id_are_kept_apart() {
        let board = WriteProgress::new(1);
        let other = LinkId::new(1);
        board.wrote(L0, &chunk(1, 10));
        board.wrote(other, &chunk(1, 20));
        board.wrote(
            other,
            &WorkerMessage::Error(modelrelay_core::wire::WorkerError {
                request_id: Some(WireRequestId::Number(1)),
                code: "x".into(),
                message: "x".into(),
            }),
        );
        let taken = board.take();
        assert_eq!(taken.len(), 1, "the other link's request ended alone");
        assert_eq!(taken[&on_l0(1)], chunk_cost(10));
    }
}

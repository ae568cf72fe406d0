//! What a link's writer has handed on, per request: the board its progress
//! callback writes and the driver drains into `SessionInput::LinkWrote`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use modelrelay_core::WireRequestId;
use modelrelay_core::session::chunk_cost;
use modelrelay_core::wire::WorkerMessage;
use tokio::sync::Notify;

/// Cost of each request's `response_chunk`s written since the driver last looked.
/// One per link: a writer's reports never reach the next link's requests.
#[derive(Debug, Default)]
pub(crate) struct WriteProgress {
    written: Mutex<HashMap<WireRequestId, u64>>,
    changed: Notify,
}

impl WriteProgress {
    /// An empty board.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The writer is done with `message`: a chunk's cost is added to its request's.
    pub(crate) fn wrote(&self, message: &WorkerMessage) {
        let WorkerMessage::ResponseChunk(chunk) = message else {
            return;
        };
        let cost = chunk_cost(chunk.chunk.len());
        {
            let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
            match written.get_mut(&chunk.request_id) {
                Some(total) => *total = total.saturating_add(cost),
                None => {
                    written.insert(chunk.request_id.clone(), cost);
                }
            }
        }
        self.changed.notify_one();
    }

    /// Resolves once something was written since the last [`WriteProgress::take`]
    /// (at once if it already was).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }

    /// What was written since the last call, by request; the board is left empty.
    pub(crate) fn take(&self) -> HashMap<WireRequestId, u64> {
        std::mem::take(&mut *self.written.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use modelrelay_core::wire::{Pong, ResponseChunk};

    use super::*;

    fn chunk(id: u64, bytes: usize) -> WorkerMessage {
        WorkerMessage::ResponseChunk(ResponseChunk {
            request_id: WireRequestId::Number(id),
            chunk: Bytes::from(vec![b'x'; bytes]),
        })
    }

    #[tokio::test]
    async fn chunks_add_up_by_request_until_taken_and_other_messages_count_nothing() {
        let board = WriteProgress::new();
        board.wrote(&chunk(1, 10));
        board.wrote(&chunk(1, 20));
        board.wrote(&chunk(2, 0));
        board.wrote(&WorkerMessage::Pong(Pong {
            current_load: 0,
            timestamp_unix_ms: None,
        }));
        // The writes were announced before anyone waited.
        tokio::time::timeout(std::time::Duration::from_secs(1), board.changed())
            .await
            .expect("a change noted earlier wakes the next wait");
        let taken = board.take();
        assert_eq!(taken.len(), 2);
        assert_eq!(
            taken[&WireRequestId::Number(1)],
            chunk_cost(10) + chunk_cost(20)
        );
        assert_eq!(taken[&WireRequestId::Number(2)], chunk_cost(0));
        assert!(board.take().is_empty());
    }
}

//! A response's events on their way from the hub to the client's handler.
//!
//! It sits with the hub: the hub writes it; handlers only take from it. The
//! handler's end counts the answer bytes its client's connection took, and
//! every [`CLIENT_REPORT_EVERY`] of them, and when the client leaves, it posts
//! the request on the [`ClientBoard`]; the hub then reads those counts here.
//!
//! An unbounded queue (the hub must never wait on a client) that holds no
//! memory while it is empty: with ten thousand streams open, most of them
//! keeping up, a preallocated block per request would be most of the relay's
//! memory. What bounds it is the core's flow control: a windowed worker sends
//! no more than its client took plus a window, and an unwindowed stream is
//! stopped past its cap or the answer budget.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::Bytes;
use modelrelay_core::RequestId;
use modelrelay_core::relay::{CLIENT_REPORT_EVERY, Outcome};

use super::client_board::ClientBoard;

/// What a waiting response hears.
#[derive(Debug)]
pub(crate) enum ResponseEvent {
    /// Stream bytes, in order.
    Chunk(Bytes),
    /// The end; nothing follows.
    Ended(Outcome),
}

/// How a client left before its request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Left {
    /// With its stream's final event: the answer is whole.
    Done,
    /// Before its answer was whole.
    Gone,
}

/// What the hub reads of a client: bytes taken, and whether it left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ClientState {
    /// Answer bytes taken from the queue since the request arrived.
    pub(crate) taken: u64,
    /// Set once the client left before its request ended.
    pub(crate) left: Option<Left>,
}

#[derive(Debug, Default)]
struct State {
    events: VecDeque<ResponseEvent>,
    client: ClientState,
    /// `client.taken` when it was last posted.
    reported: u64,
    sender_gone: bool,
    receiver_gone: bool,
    waker: Option<Waker>,
}

type Shared = Arc<Mutex<State>>;

/// The hub's end.
#[derive(Debug)]
pub(crate) struct ResponseSender(Shared);

/// The handler's end.
#[derive(Debug)]
pub(crate) struct ResponseReceiver {
    shared: Shared,
    poster: Poster,
}

/// Posts a request's news on the client board.
#[derive(Clone, Debug)]
struct Poster {
    request: RequestId,
    board: Arc<ClientBoard>,
}

/// Tells the hub, through the board, that the client left.
#[derive(Debug)]
pub(crate) struct ClientExit {
    shared: Shared,
    poster: Poster,
}

/// A new, empty queue for `request`, whose news goes on `board`.
pub(crate) fn response_queue(
    request: RequestId,
    board: Arc<ClientBoard>,
) -> (ResponseSender, ResponseReceiver) {
    let shared = Shared::default();
    let poster = Poster { request, board };
    (
        ResponseSender(Arc::clone(&shared)),
        ResponseReceiver { shared, poster },
    )
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // The state stays consistent even if a holder panicked: every change is one step.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ResponseSender {
    /// Queues `event`; `false` if the client is gone (the event is dropped).
    pub(crate) fn send(&self, event: ResponseEvent) -> bool {
        let waker = {
            let mut state = lock(&self.0);
            if state.receiver_gone {
                return false;
            }
            state.events.push_back(event);
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
        true
    }

    /// What the client has taken, and whether it left.
    pub(crate) fn client(&self) -> ClientState {
        lock(&self.0).client
    }
}

impl Drop for ResponseSender {
    fn drop(&mut self) {
        let waker = {
            let mut state = lock(&self.0);
            state.sender_gone = true;
            state.waker.take()
        };
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

impl ResponseReceiver {
    /// The next event; `None` once the hub dropped its end and nothing is left.
    pub(crate) async fn recv(&mut self) -> Option<ResponseEvent> {
        let (event, post) = poll_fn(|cx| {
            let mut state = lock(&self.shared);
            if let Some(event) = state.events.pop_front() {
                let mut post = false;
                if let ResponseEvent::Chunk(chunk) = &event {
                    state.client.taken += chunk.len() as u64;
                    if state.client.taken - state.reported >= CLIENT_REPORT_EVERY {
                        state.reported = state.client.taken;
                        post = true;
                    }
                }
                if state.events.is_empty() && state.events.capacity() > 64 {
                    // A burst is over: give its room back.
                    state.events.shrink_to(8);
                }
                return Poll::Ready((Some(event), post));
            }
            if state.sender_gone {
                return Poll::Ready((None, false));
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await;
        if post {
            self.poster.post();
        }
        event
    }

    /// The handle that tells the hub when the client leaves.
    pub(crate) fn exit(&self) -> ClientExit {
        ClientExit {
            shared: Arc::clone(&self.shared),
            poster: self.poster.clone(),
        }
    }
}

impl Drop for ResponseReceiver {
    fn drop(&mut self) {
        let mut state = lock(&self.shared);
        state.receiver_gone = true;
        state.events.clear();
    }
}

impl Poster {
    fn post(&self) {
        self.board.post(self.request);
    }
}

impl ClientExit {
    /// The client left, `how`: noted once in the queue, and posted.
    pub(crate) fn leave(&self, how: Left) {
        {
            let mut state = lock(&self.shared);
            if state.client.left.is_some() {
                return;
            }
            state.client.left = Some(how);
        }
        self.poster.post();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> (ResponseSender, ResponseReceiver, Arc<ClientBoard>) {
        let board = Arc::new(ClientBoard::default());
        let (sender, receiver) = response_queue(RequestId::new(7), Arc::clone(&board));
        (sender, receiver, board)
    }

    #[tokio::test]
    async fn events_arrive_in_order_and_the_end_follows_the_sender() {
        let (sender, mut receiver, _board) = queue();
        assert!(sender.send(ResponseEvent::Chunk(Bytes::from_static(b"ab"))));
        assert!(sender.send(ResponseEvent::Chunk(Bytes::from_static(b"cde"))));
        assert!(matches!(receiver.recv().await, Some(ResponseEvent::Chunk(c)) if c == "ab"));
        assert_eq!(sender.client().taken, 2);
        assert!(sender.send(ResponseEvent::Ended(Outcome::Cancelled)));
        assert!(matches!(receiver.recv().await, Some(ResponseEvent::Chunk(c)) if c == "cde"));
        assert!(matches!(
            receiver.recv().await,
            Some(ResponseEvent::Ended(_))
        ));
        drop(sender);
        assert!(receiver.recv().await.is_none());
    }

    #[tokio::test]
    async fn a_waiting_receiver_wakes_for_an_event_and_a_gone_client_refuses_them() {
        let (sender, mut receiver, _board) = queue();
        let waiting = tokio::spawn(async move {
            let first = receiver.recv().await;
            (first, receiver)
        });
        tokio::task::yield_now().await;
        sender.send(ResponseEvent::Chunk(Bytes::from_static(b"x")));
        let (first, receiver) = waiting.await.unwrap();
        assert!(matches!(first, Some(ResponseEvent::Chunk(_))));
        drop(receiver);
        assert!(!sender.send(ResponseEvent::Chunk(Bytes::from_static(b"y"))));
    }

    #[tokio::test]
    async fn taken_bytes_are_posted_every_report_step_and_a_leave_once() {
        let (sender, mut receiver, board) = queue();
        let piece = Bytes::from(vec![b'x'; 6 * 1024]);
        for _ in 0..3 {
            sender.send(ResponseEvent::Chunk(piece.clone()));
        }
        receiver.recv().await;
        receiver.recv().await;
        assert!(board.drain().is_empty(), "12 KiB taken: not yet reported");
        receiver.recv().await;
        assert_eq!(
            board.drain().into_iter().collect::<Vec<_>>(),
            [RequestId::new(7)]
        );
        assert_eq!(sender.client().taken, 18 * 1024);
        let exit = receiver.exit();
        exit.leave(Left::Gone);
        exit.leave(Left::Done);
        assert_eq!(board.drain().len(), 1);
        assert_eq!(
            sender.client().left,
            Some(Left::Gone),
            "the first leave holds"
        );
    }
}

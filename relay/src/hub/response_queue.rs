//! A response's events on their way from the hub to the client's handler.
//!
//! It sits with the hub: the hub writes it, and its byte count is what the hub's
//! backpressure reads; handlers only take from it.
//!
//! An unbounded queue (the hub must never wait on a client) that holds no
//! memory while it is empty: with ten thousand streams open, most of them
//! keeping up, a preallocated block per request would be most of the relay's
//! memory. It also counts the stream bytes waiting in it, so the hub can stop
//! a client that does not read.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::{Arc, Mutex};
use std::task::{Poll, Waker};

use bytes::Bytes;
use modelrelay_core::relay::Outcome;

/// What a waiting response hears.
#[derive(Debug)]
pub(crate) enum ResponseEvent {
    /// Stream bytes, in order.
    Chunk(Bytes),
    /// The end; nothing follows.
    Ended(Outcome),
}

#[derive(Debug, Default)]
struct State {
    events: VecDeque<ResponseEvent>,
    /// Bytes of the chunks in `events`.
    held_bytes: usize,
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
pub(crate) struct ResponseReceiver(Shared);

/// A new, empty queue.
pub(crate) fn response_queue() -> (ResponseSender, ResponseReceiver) {
    let shared = Shared::default();
    (
        ResponseSender(Arc::clone(&shared)),
        ResponseReceiver(shared),
    )
}

fn lock(shared: &Shared) -> std::sync::MutexGuard<'_, State> {
    // The state stays consistent even if a holder panicked: every change is one step.
    shared
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ResponseSender {
    /// Queues `event`; returns the stream bytes now waiting for the client, or
    /// `None` if the client is gone (the event is dropped).
    pub(crate) fn send(&self, event: ResponseEvent) -> Option<usize> {
        let waker = {
            let mut state = lock(&self.0);
            if state.receiver_gone {
                return None;
            }
            if let ResponseEvent::Chunk(chunk) = &event {
                state.held_bytes += chunk.len();
            }
            state.events.push_back(event);
            (state.held_bytes, state.waker.take())
        };
        if let Some(waker) = waker.1 {
            waker.wake();
        }
        Some(waker.0)
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
        poll_fn(|cx| {
            let mut state = lock(&self.0);
            if let Some(event) = state.events.pop_front() {
                if let ResponseEvent::Chunk(chunk) = &event {
                    state.held_bytes -= chunk.len();
                }
                if state.events.is_empty() && state.events.capacity() > 64 {
                    // A burst is over: give its room back.
                    state.events.shrink_to(8);
                }
                return Poll::Ready(Some(event));
            }
            if state.sender_gone {
                return Poll::Ready(None);
            }
            match &mut state.waker {
                Some(waker) if waker.will_wake(cx.waker()) => {}
                slot => *slot = Some(cx.waker().clone()),
            }
            Poll::Pending
        })
        .await
    }
}

impl Drop for ResponseReceiver {
    fn drop(&mut self) {
        let mut state = lock(&self.0);
        state.receiver_gone = true;
        state.events.clear();
        state.held_bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn events_arrive_in_order_and_the_end_follows_the_sender() {
        let (sender, mut receiver) = response_queue();
        assert_eq!(
            sender.send(ResponseEvent::Chunk(Bytes::from_static(b"ab"))),
            Some(2)
        );
        assert_eq!(
            sender.send(ResponseEvent::Chunk(Bytes::from_static(b"cde"))),
            Some(5)
        );
        assert!(matches!(receiver.recv().await, Some(ResponseEvent::Chunk(c)) if c == "ab"));
        // Taken by the client: no longer held.
        assert_eq!(
            sender.send(ResponseEvent::Ended(Outcome::Cancelled)),
            Some(3)
        );
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
        let (sender, mut receiver) = response_queue();
        let waiting = tokio::spawn(async move {
            let first = receiver.recv().await;
            (first, receiver)
        });
        tokio::task::yield_now().await;
        sender.send(ResponseEvent::Chunk(Bytes::from_static(b"x")));
        let (first, receiver) = waiting.await.unwrap();
        assert!(matches!(first, Some(ResponseEvent::Chunk(_))));
        drop(receiver);
        assert_eq!(
            sender.send(ResponseEvent::Chunk(Bytes::from_static(b"y"))),
            None
        );
    }
}

//! A bounded queue whose senders, once they find it full, wait until it has
//! drained to its low-water mark (half its capacity) rather than for one free
//! place.
//!
//! tokio's bounded channel hands a waiting sender each place as it frees: when
//! many senders outrun one receiver (a QUIC link's stream tasks and its
//! reader), every item taken wakes a sender for one item, so the two sides
//! trade a thread wake-up per item and the receiver gets no batches. Measured
//! on the relay over QUIC: half again the context switches, and a fifth more
//! writes to clients, each carrying less. Here a full queue lets its senders
//! wait until half of it is free, then wakes them all at once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc};

/// What both ends share besides the channel: the senders' wake-up.
#[derive(Debug, Default)]
struct Gate {
    /// Set by a sender that found the queue full and is about to wait.
    waiting: AtomicBool,
    /// Rung when the queue has drained to its low-water mark, or the receiver went.
    drained: Notify,
}

/// The sending half; clone it for each producer.
#[derive(Debug)]
pub struct Sender<T> {
    inner: mpsc::Sender<T>,
    gate: Arc<Gate>,
}

/// A sender that does not keep the queue open (see [`Sender::downgrade`]).
#[derive(Debug)]
pub struct WeakSender<T> {
    inner: mpsc::WeakSender<T>,
    gate: Arc<Gate>,
}

/// The receiving half.
#[derive(Debug)]
pub struct Receiver<T> {
    inner: mpsc::Receiver<T>,
    gate: Arc<Gate>,
    low_water: usize,
}

/// The receiver is gone; the item comes back.
#[derive(Debug, PartialEq, Eq)]
pub struct Closed<T>(pub T);

/// A queue of at most `capacity` items (at least 1) whose full senders resume at half.
pub fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let capacity = capacity.max(1);
    let (inner_tx, inner_rx) = mpsc::channel(capacity);
    let gate = Arc::new(Gate::default());
    (
        Sender {
            inner: inner_tx,
            gate: Arc::clone(&gate),
        },
        Receiver {
            inner: inner_rx,
            gate,
            low_water: capacity / 2,
        },
    )
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<T> Sender<T> {
    /// Queues `item`, waiting while the queue is full; `Err` once the receiver is gone.
    pub async fn send(&self, mut item: T) -> Result<(), Closed<T>> {
        loop {
            item = match self.try_send(item)? {
                None => return Ok(()),
                Some(back) => back,
            };
            let drained = self.gate.drained.notified();
            tokio::pin!(drained);
            // Registered before the second look: a receiver that drains the queue
            // after it (and sees `waiting`) wakes this sender.
            drained.as_mut().enable();
            self.gate.waiting.store(true, Ordering::SeqCst);
            item = match self.try_send(item)? {
                None => return Ok(()),
                Some(back) => back,
            };
            drained.await;
        }
    }

    /// Queues `item` if there is room: `Ok(None)` if it went, `Ok(Some(item))` if full.
    fn try_send(&self, item: T) -> Result<Option<T>, Closed<T>> {
        match self.inner.try_send(item) {
            Ok(()) => Ok(None),
            Err(mpsc::error::TrySendError::Full(item)) => Ok(Some(item)),
            Err(mpsc::error::TrySendError::Closed(item)) => Err(Closed(item)),
        }
    }

    /// A sender that does not keep the queue open.
    pub fn downgrade(&self) -> WeakSender<T> {
        WeakSender {
            inner: self.inner.downgrade(),
            gate: Arc::clone(&self.gate),
        }
    }
}

impl<T> WeakSender<T> {
    /// A sender again, if some other sender still keeps the queue open.
    pub fn upgrade(&self) -> Option<Sender<T>> {
        Some(Sender {
            inner: self.inner.upgrade()?,
            gate: Arc::clone(&self.gate),
        })
    }
}

impl<T> Receiver<T> {
    /// The next item; `None` once every sender is gone and nothing is left.
    pub async fn recv(&mut self) -> Option<T> {
        let item = self.inner.recv().await;
        if self.gate.waiting.load(Ordering::SeqCst) && self.inner.len() <= self.low_water {
            self.gate.waiting.store(false, Ordering::SeqCst);
            self.gate.drained.notify_waiters();
        }
        item
    }
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        // Close first, so that woken senders find the queue closed rather than full.
        self.inner.close();
        self.gate.drained.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn items_arrive_in_order_and_a_full_sender_waits_for_the_low_water_mark() {
        let (sender, mut receiver) = channel(4);
        for n in 0..4 {
            sender.send(n).await.unwrap();
        }
        let blocked = tokio::spawn({
            let sender = sender.clone();
            async move { sender.send(4).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(receiver.recv().await, Some(0));
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(
            !blocked.is_finished(),
            "one free place does not wake a full sender"
        );
        assert_eq!(receiver.recv().await, Some(1));
        tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("half drained wakes the sender")
            .unwrap()
            .unwrap();
        let rest: Vec<_> = [
            receiver.recv().await,
            receiver.recv().await,
            receiver.recv().await,
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(rest, [2, 3, 4]);
    }

    #[tokio::test]
    async fn many_full_senders_all_get_through_and_nothing_is_lost() {
        let (sender, mut receiver) = channel(8);
        let senders: Vec<_> = (0..16u32)
            .map(|task| {
                let sender = sender.clone();
                tokio::spawn(async move {
                    for n in 0..100u32 {
                        sender.send((task, n)).await.unwrap();
                    }
                })
            })
            .collect();
        drop(sender);
        let mut next = [0u32; 16];
        while let Some((task, n)) = tokio::time::timeout(Duration::from_secs(10), receiver.recv())
            .await
            .expect("no sender is left waiting for ever")
        {
            assert_eq!(next[task as usize], n, "each sender's items stay in order");
            next[task as usize] += 1;
        }
        assert!(next.iter().all(|&n| n == 100));
        for task in senders {
            task.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_waiting_sender_gets_its_item_back_when_the_receiver_goes() {
        let (sender, receiver) = channel(1);
        sender.send(1).await.unwrap();
        let blocked = tokio::spawn(async move { sender.send(2).await });
        tokio::task::yield_now().await;
        drop(receiver);
        let result = tokio::time::timeout(Duration::from_secs(5), blocked)
            .await
            .expect("the sender was woken")
            .unwrap();
        assert_eq!(result, Err(Closed(2)));
    }

    #[tokio::test]
    async fn a_weak_sender_upgrades_only_while_a_sender_lives() {
        let (sender, mut receiver) = channel::<u8>(2);
        let weak = sender.downgrade();
        weak.upgrade().unwrap().send(7).await.unwrap();
        assert_eq!(receiver.recv().await, Some(7));
        drop(sender);
        assert!(weak.upgrade().is_none());
        assert_eq!(receiver.recv().await, None);
    }
}

//! A bounded memory of recently ended requests and the worker each was on.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::ids::{RequestId, WorkerId};

/// Remembers the last `capacity` requests that ended while assigned, so a late
/// frame from their worker can be told apart from a frame about a request the
/// worker was never given.
#[derive(Debug)]
pub(crate) struct EndedRequests {
    capacity: usize,
    order: VecDeque<(RequestId, WorkerId)>,
    worker_of: FxHashMap<RequestId, WorkerId>,
}

impl EndedRequests {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            capacity,
            order: VecDeque::new(),
            worker_of: FxHashMap::default(),
        }
    }

    /// Records that `request` ended while assigned to `worker`.
    pub(crate) fn insert(&mut self, request: RequestId, worker: WorkerId) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() == self.capacity
            && let Some((oldest, its_worker)) = self.order.pop_front()
            && self.worker_of.get(&oldest) == Some(&its_worker)
        {
            // Only if no later record of the same request replaced this one.
            self.worker_of.remove(&oldest);
        }
        self.order.push_back((request, worker));
        self.worker_of.insert(request, worker);
    }

    /// Whether `request` ended recently while assigned to `worker`.
    pub(crate) fn ended_on(&self, request: RequestId, worker: WorkerId) -> bool {
        self.worker_of.get(&request) == Some(&worker)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forgets_the_oldest_past_capacity() {
        let mut ended = EndedRequests::new(2);
        let w = WorkerId::new(1);
        for r in 1..=3 {
            ended.insert(RequestId::new(r), w);
        }
        assert!(!ended.ended_on(RequestId::new(1), w));
        assert!(ended.ended_on(RequestId::new(2), w));
        assert!(ended.ended_on(RequestId::new(3), w));
        assert!(!ended.ended_on(RequestId::new(3), WorkerId::new(2)));
    }

    #[test]
    fn a_later_record_of_the_same_request_survives_eviction_of_the_earlier_one() {
        let mut ended = EndedRequests::new(2);
        let (a, b) = (WorkerId::new(1), WorkerId::new(2));
        ended.insert(RequestId::new(1), a); // refused on worker 1
        ended.insert(RequestId::new(1), b); // then ended on worker 2
        ended.insert(RequestId::new(2), a); // evicts the first record only
        assert!(ended.ended_on(RequestId::new(1), b));
    }
}

//! Which eligible worker gets a request: the policy trait and its default.

use crate::ids::WorkerId;

/// What a policy may look at to rank a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkerLoad {
    /// The worker being ranked.
    pub worker: WorkerId,
    /// Requests this relay has running on the worker.
    pub in_flight: u32,
    /// Load the worker reported beyond what this relay gave it (other relays' work).
    pub external_load: u32,
    /// Requests the worker runs at once.
    pub max_concurrent: u32,
    /// When the worker last got a request, as a relay-wide assignment count (0 = never).
    pub last_assigned: u64,
}

/// A worker's place in line: the eligible worker with the smallest rank gets the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SelectionRank(pub u64, pub u64);

/// Orders eligible workers; the relay keeps them sorted by rank, so a pick is a lookup.
///
/// The relay only ranks workers that are eligible (registered, not draining,
/// serving the model, with free capacity) and re-ranks a worker whenever one of
/// the [`WorkerLoad`] fields changes. Ties in rank go to the lower [`WorkerId`].
pub trait SelectionPolicy: Send {
    /// The worker's rank; lower wins.
    fn rank(&self, load: &WorkerLoad) -> SelectionRank;
}

/// Lowest load first (in flight plus external), round-robin among equal loads.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeastLoaded;

impl SelectionPolicy for LeastLoaded {
    fn rank(&self, load: &WorkerLoad) -> SelectionRank {
        let total = u64::from(load.in_flight) + u64::from(load.external_load);
        SelectionRank(total, load.last_assigned)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(worker: u64, in_flight: u32, external_load: u32, last_assigned: u64) -> WorkerLoad {
        WorkerLoad {
            worker: WorkerId::new(worker),
            in_flight,
            external_load,
            max_concurrent: 8,
            last_assigned,
        }
    }

    #[test]
    fn least_loaded_prefers_lower_load_then_least_recently_assigned() {
        let policy = LeastLoaded;
        assert!(policy.rank(&load(1, 1, 0, 0)) < policy.rank(&load(2, 2, 0, 0)));
        assert!(policy.rank(&load(1, 0, 2, 0)) > policy.rank(&load(2, 1, 0, 9)));
        assert!(policy.rank(&load(1, 1, 0, 3)) < policy.rank(&load(2, 1, 0, 7)));
    }
}

//! What the hub shows of itself: the snapshot behind the status endpoints and the list of workers.

use std::time::{Duration, SystemTime};

use modelrelay_core::relay::RelayStats;
use modelrelay_core::wire::WireVersion;
use modelrelay_core::{ModelName, WorkerId};

use crate::operator::WorkerStates;

use super::Transport;
use super::task::{HubTask, now};

/// One connected worker, for the admin API.
#[derive(Clone, Debug)]
pub(crate) struct WorkerView {
    /// Its id.
    pub(crate) id: WorkerId,
    /// The name it registered with.
    pub(crate) name: String,
    /// The provider it serves.
    pub(crate) provider: String,
    /// The models it serves.
    pub(crate) models: Vec<ModelName>,
    /// Requests it runs for this relay.
    pub(crate) in_flight: usize,
    /// Those plus the load it reports from elsewhere.
    pub(crate) load: u64,
    /// Most requests it takes at once.
    pub(crate) capacity: u32,
    /// Whether it has registered.
    pub(crate) registered: bool,
    /// Whether it is draining.
    pub(crate) draining: bool,
    /// When its link opened (wall clock).
    pub(crate) connected_since: SystemTime,
    /// How long its link has been open.
    pub(crate) connected_for: Duration,
    /// How its link reaches the relay.
    pub(crate) transport: Transport,
    /// The protocol version it speaks.
    pub(crate) wire: WireVersion,
}

/// The relay's numbers without any list: what `/health` and `/metrics` (open
/// to anyone) ask for, costing one pass over the workers and nothing cloned.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Counts {
    /// Registered workers.
    pub(crate) workers: usize,
    /// Requests waiting.
    pub(crate) queue_depth: usize,
    /// Requests not ended.
    pub(crate) open_requests: usize,
    /// Whether shutdown began.
    pub(crate) shutting_down: bool,
    /// Workers by state.
    pub(crate) worker_states: WorkerStates,
}

/// The relay's state, for status endpoints.
#[derive(Clone, Debug, Default)]
pub(crate) struct Snapshot {
    /// Requests waiting.
    pub(crate) queue_depth: usize,
    /// Requests not ended.
    pub(crate) open_requests: usize,
    /// Whether shutdown began.
    pub(crate) shutting_down: bool,
    /// Workers by state.
    pub(crate) worker_states: WorkerStates,
    /// What the relay has counted.
    pub(crate) stats: RelayStats,
}

impl HubTask {
    /// The numbers for `/health` and `/metrics`.
    pub(super) fn counts(&self) -> Counts {
        let mut counts = Counts {
            queue_depth: self.relay.queue_len(&self.provider),
            open_requests: self.relay.open_requests(),
            shutting_down: self.relay.is_shutting_down(),
            ..Counts::default()
        };
        for worker in self.relay.workers() {
            counts.workers += usize::from(worker.registered);
            let states = &mut counts.worker_states;
            match (worker.registered, worker.draining) {
                (_, true) => states.draining += 1,
                (false, false) => states.registering += 1,
                (true, false) => states.active += 1,
            }
        }
        counts
    }

    /// The numbers and counters for `/admin/stats`.
    pub(super) fn snapshot(&self) -> Snapshot {
        let counts = self.counts();
        Snapshot {
            queue_depth: counts.queue_depth,
            open_requests: counts.open_requests,
            shutting_down: counts.shutting_down,
            worker_states: counts.worker_states,
            stats: self.relay.stats().clone(),
        }
    }

    /// The connected workers, for `/admin/workers`.
    pub(super) fn worker_views(&self) -> Vec<WorkerView> {
        let (mono, wall) = (now(), SystemTime::now());
        self.relay
            .workers()
            .map(|w| {
                let connected_for = mono.saturating_duration_since(w.connected_at);
                WorkerView {
                    id: w.id,
                    name: w.name.to_owned(),
                    provider: w.provider.to_string(),
                    models: w.models.to_vec(),
                    in_flight: w.in_flight,
                    load: w.in_flight as u64 + u64::from(w.external_load),
                    capacity: w.max_concurrent,
                    registered: w.registered,
                    draining: w.draining,
                    connected_since: wall.checked_sub(connected_for).unwrap_or(wall),
                    connected_for,
                    transport: self.link_transport(w.id),
                    wire: w.wire,
                }
            })
            .collect()
    }
}

//! What happened in a run, with simulated times: compared across runs of one seed.

use std::fmt::Display;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

/// An append-only log of events stamped with simulated time.
#[derive(Clone, Debug, Default)]
pub struct Trace(Arc<Mutex<Vec<String>>>);

impl Trace {
    /// Records `event` at the current simulated time (from inside a host).
    pub fn record(&self, event: impl Display) {
        self.record_at(turmoil::sim_elapsed().unwrap_or_default(), event);
    }

    /// Records `event` at simulated time `at` (from the test, outside any host).
    pub fn record_at(&self, at: std::time::Duration, event: impl Display) {
        let line = format!("{:>10.3} {event}", at.as_secs_f64());
        self.0.lock().expect("trace lock").push(line);
    }

    /// The events so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().expect("trace lock").clone()
    }

    /// A digest of the events, to compare runs.
    pub fn digest(&self) -> u64 {
        // SipHash with fixed keys: the same lines give the same digest in every run.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.lines().hash(&mut hasher);
        hasher.finish()
    }
}

//! Per-provider routing: for each model, the waiting requests and the workers ready to take one.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use super::selection::SelectionRank;
use crate::ids::{ModelName, RequestId, WorkerId};
use crate::wire::WILDCARD_MODEL;

/// How many models a provider remembers before forgetting unadvertised ones.
pub(crate) const MAX_KNOWN_MODELS: usize = 4096;

/// A request's place in its provider's queue: smaller is served first.
pub(crate) type QueueSeq = i64;

/// Where a request enters the queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QueueEnd {
    /// Behind everything waiting (a new request).
    Back,
    /// Ahead of everything waiting (a request that lost its worker).
    Front,
}

/// One model of one provider.
#[derive(Debug, Default)]
pub(crate) struct Route {
    /// Requests for this model waiting for a worker, oldest (smallest seq) first.
    pub(crate) queue: BTreeMap<QueueSeq, RequestId>,
    /// Workers that can take a request for this model now, best first.
    pub(crate) ready: BTreeSet<(SelectionRank, WorkerId)>,
    /// Connected workers that advertise this model.
    advertisers: usize,
    /// A worker has advertised it by name. A route made only to hold requests
    /// that wait for a wildcard worker has not; it goes once they stop waiting.
    advertised: bool,
}

/// All routes of one provider, its wildcard workers, and the queue its bound applies to.
///
/// A worker that advertises [`WILDCARD_MODEL`] serves any model, but second:
/// [`Provider::ready_for`] offers a request the workers that name its model
/// before the wildcard ones, and a freed wildcard worker takes the oldest
/// request of any model ([`Provider::oldest_for`]).
#[derive(Debug)]
pub(crate) struct Provider {
    /// Every model a worker of this provider has ever advertised by name, and
    /// the models requests wait for.
    routes: FxHashMap<ModelName, Route>,
    /// Wildcard workers that can take a request now, best first.
    wildcard_ready: BTreeSet<(SelectionRank, WorkerId)>,
    /// Registered workers that advertise the wildcard.
    wildcard_advertisers: usize,
    /// Every waiting request across models, oldest (smallest seq) first.
    waiting: BTreeMap<QueueSeq, RequestId>,
    next_back: QueueSeq,
    next_front: QueueSeq,
}

impl Default for Provider {
    fn default() -> Self {
        Self {
            routes: FxHashMap::default(),
            wildcard_ready: BTreeSet::new(),
            wildcard_advertisers: 0,
            waiting: BTreeMap::new(),
            next_back: 0,
            next_front: -1,
        }
    }
}

pub(super) fn is_wildcard(model: &ModelName) -> bool {
    model.as_str() == WILDCARD_MODEL
}

impl Provider {
    /// Whether a worker of this provider has ever advertised `model` by name.
    pub(crate) fn knows(&self, model: &str) -> bool {
        self.routes.get(model).is_some_and(|route| route.advertised)
    }

    /// Whether a registered worker of this provider advertises the wildcard now
    /// (draining, busy or resting ones included).
    pub(crate) fn serves_any_model(&self) -> bool {
        self.wildcard_advertisers > 0
    }

    /// The workers that can take a request for `model` now, in the order they
    /// get it: those that name the model, best first, then the wildcard ones,
    /// best first (a worker that does both may come twice).
    pub(crate) fn ready_for<'a>(&'a self, model: &str) -> impl Iterator<Item = WorkerId> + 'a {
        self.routes
            .get(model)
            .into_iter()
            .flat_map(|route| route.ready.iter())
            .chain(self.wildcard_ready.iter())
            .map(|(_, worker)| *worker)
    }

    /// The route of `model`, created (not advertised) if it has none.
    fn route_mut(&mut self, model: &ModelName) -> &mut Route {
        if !self.routes.contains_key(model.as_str()) {
            self.routes.insert(model.clone(), Route::default());
        }
        self.routes
            .get_mut(model.as_str())
            .expect("route was just inserted")
    }

    /// Notes that a worker advertises `models`.
    pub(crate) fn advertise(&mut self, models: &[ModelName]) {
        for model in models {
            if is_wildcard(model) {
                self.wildcard_advertisers += 1;
            } else {
                let route = self.route_mut(model);
                route.advertisers += 1;
                route.advertised = true;
            }
        }
    }

    /// Notes that a worker no longer advertises `models`. Past [`MAX_KNOWN_MODELS`],
    /// models nobody advertises and nothing waits for are forgotten, so workers that
    /// keep renaming models cannot grow the table without end.
    pub(crate) fn withdraw(&mut self, models: &[ModelName]) {
        for model in models {
            if is_wildcard(model) {
                self.wildcard_advertisers = self.wildcard_advertisers.saturating_sub(1);
            } else if let Some(route) = self.routes.get_mut(model.as_str()) {
                route.advertisers = route.advertisers.saturating_sub(1);
            }
        }
        if self.routes.len() > MAX_KNOWN_MODELS {
            self.routes.retain(|_, route| {
                route.advertisers > 0 || !route.queue.is_empty() || !route.ready.is_empty()
            });
        }
    }

    /// Requests waiting across all models.
    pub(crate) fn queued(&self) -> usize {
        self.waiting.len()
    }

    /// Puts a request in `model`'s queue.
    pub(crate) fn enqueue(
        &mut self,
        model: &ModelName,
        request: RequestId,
        end: QueueEnd,
    ) -> QueueSeq {
        let seq = match end {
            QueueEnd::Back => {
                self.next_back += 1;
                self.next_back
            }
            QueueEnd::Front => {
                self.next_front -= 1;
                self.next_front
            }
        };
        self.route_mut(model).queue.insert(seq, request);
        self.waiting.insert(seq, request);
        seq
    }

    /// Takes a request out of `model`'s queue; a route no worker ever named
    /// goes with the last request waiting on it (so clients that name models
    /// for a wildcard worker leave nothing behind).
    pub(crate) fn dequeue(&mut self, model: &str, seq: QueueSeq) {
        let Some(route) = self.routes.get_mut(model) else {
            return;
        };
        if route.queue.remove(&seq).is_some() {
            self.waiting.remove(&seq);
        }
        if !route.advertised && route.queue.is_empty() && route.ready.is_empty() {
            self.routes.remove(model);
        }
    }

    /// The oldest request a worker advertising `models` can serve: for a
    /// wildcard worker, the oldest of all.
    pub(crate) fn oldest_for(&self, models: &[ModelName]) -> Option<(QueueSeq, RequestId)> {
        if models.iter().any(is_wildcard) {
            return self.waiting.first_key_value().map(|(seq, r)| (*seq, *r));
        }
        models
            .iter()
            .filter_map(|model| self.routes.get(model.as_str()))
            .filter_map(|route| route.queue.first_key_value())
            .min_by_key(|(seq, _)| **seq)
            .map(|(seq, request)| (*seq, *request))
    }

    /// Adds `worker` to the ready set of each of `models`.
    pub(crate) fn mark_ready(&mut self, models: &[ModelName], key: (SelectionRank, WorkerId)) {
        for model in models {
            if is_wildcard(model) {
                self.wildcard_ready.insert(key);
            } else {
                self.route_mut(model).ready.insert(key);
            }
        }
    }

    /// Removes `worker` from the ready set of each of `models`.
    pub(crate) fn unmark_ready(&mut self, models: &[ModelName], key: (SelectionRank, WorkerId)) {
        for model in models {
            if is_wildcard(model) {
                self.wildcard_ready.remove(&key);
            } else if let Some(route) = self.routes.get_mut(model.as_str()) {
                route.ready.remove(&key);
            }
        }
    }

    /// Every waiting request, oldest first.
    pub(crate) fn all_queued(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.waiting.values().copied()
    }
}

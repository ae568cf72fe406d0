//! Per-provider routing: for each model, the waiting requests and the workers ready to take one.

use std::collections::{BTreeMap, BTreeSet};

use rustc_hash::FxHashMap;

use super::selection::SelectionRank;
use crate::ids::{ModelName, RequestId, WorkerId};

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
}

/// All routes of one provider, and the count that its queue bound applies to.
#[derive(Debug)]
pub(crate) struct Provider {
    /// Every model a worker of this provider has ever advertised.
    routes: FxHashMap<ModelName, Route>,
    /// Requests waiting across all models.
    queued: usize,
    next_back: QueueSeq,
    next_front: QueueSeq,
}

impl Default for Provider {
    fn default() -> Self {
        Self {
            routes: FxHashMap::default(),
            queued: 0,
            next_back: 0,
            next_front: -1,
        }
    }
}

impl Provider {
    /// The route of `model`, if any worker ever advertised it.
    pub(crate) fn route(&self, model: &str) -> Option<&Route> {
        self.routes.get(model)
    }

    /// The route of `model`, created when a worker first advertises it.
    pub(crate) fn route_mut(&mut self, model: &ModelName) -> &mut Route {
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
            self.route_mut(model).advertisers += 1;
        }
    }

    /// Notes that a worker no longer advertises `models`. Past [`MAX_KNOWN_MODELS`],
    /// models nobody advertises and nothing waits for are forgotten, so workers that
    /// keep renaming models cannot grow the table without end.
    pub(crate) fn withdraw(&mut self, models: &[ModelName]) {
        for model in models {
            if let Some(route) = self.routes.get_mut(model.as_str()) {
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
        self.queued
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
        self.queued += 1;
        seq
    }

    /// Takes a request out of `model`'s queue.
    pub(crate) fn dequeue(&mut self, model: &str, seq: QueueSeq) {
        if let Some(route) = self.routes.get_mut(model)
            && route.queue.remove(&seq).is_some()
        {
            self.queued -= 1;
        }
    }

    /// The oldest request waiting for any of `models`.
    pub(crate) fn oldest_for(&self, models: &[ModelName]) -> Option<(QueueSeq, RequestId)> {
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
            self.route_mut(model).ready.insert(key);
        }
    }

    /// Removes `worker` from the ready set of each of `models`.
    pub(crate) fn unmark_ready(&mut self, models: &[ModelName], key: (SelectionRank, WorkerId)) {
        for model in models {
            if let Some(route) = self.routes.get_mut(model.as_str()) {
                route.ready.remove(&key);
            }
        }
    }

    /// Every waiting request, in no particular order.
    pub(crate) fn all_queued(&self) -> impl Iterator<Item = RequestId> + '_ {
        self.routes
            .values()
            .flat_map(|route| route.queue.values().copied())
    }
}

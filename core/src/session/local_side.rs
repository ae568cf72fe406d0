//! Handlers of the worker's own events: its links going up or down, its models changing, shutdown.

use std::time::{Duration, Instant};

use super::liveness::{LinkWatch, Liveness};
use super::{LinkState, SessionOutput, WorkerSession};
use crate::ids::LinkId;
use crate::relay::{MAX_MODEL_NAME_BYTES, MAX_MODELS_PER_WORKER};
use crate::wire::{
    CancelReason, LinkFlow, ModelsUpdate, Register, WILDCARD_MODEL, WireVersion, WorkerMessage,
};

impl WorkerSession {
    /// A link asked for is open: register on it.
    pub(super) fn on_link_up(
        &mut self,
        now: Instant,
        link: LinkId,
        (wire, flow): (WireVersion, LinkFlow),
        liveness: Liveness,
    ) {
        if self.links.get(&link).map(|record| record.state) != Some(LinkState::Connecting) {
            return;
        }
        if self.stopping || self.links[&link].retired {
            self.close_link(link);
            return;
        }
        let current_load = self.current_load();
        let (register_timeout, probe_after, probe_timeout) = (
            self.config.register_timeout,
            self.config.link_probe_after,
            self.config.link_probe_timeout,
        );
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        record.wire = Some(wire);
        record.flow = flow;
        record.state = LinkState::Registering {
            deadline: now.checked_add(register_timeout),
        };
        record.watch = LinkWatch::start(now, liveness, probe_after, probe_timeout);
        record.models_sent = true;
        record.load_owed = false;
        let register = Register {
            worker_name: self.config.worker_name.clone(),
            models: self.models.clone(),
            max_concurrent: self.config.max_concurrent,
            protocol_version: Some(wire.protocol_version().to_owned()),
            current_load: Some(current_load),
        };
        self.send(link, WorkerMessage::Register(register));
    }

    /// A link closed: abort what ran on it, then exit if stopping and no link
    /// is left, forget it if retired, or redial after a backoff (or after
    /// `retry_after`, when the relay said how long to wait).
    pub(super) fn on_link_down(
        &mut self,
        now: Instant,
        link: LinkId,
        retry_after: Option<Duration>,
    ) {
        let Some(record) = self.links.get(&link) else {
            return;
        };
        if matches!(record.state, LinkState::Down { .. }) {
            return;
        }
        // Results can no longer be delivered; the relay requeues or fails these.
        self.abort_link(link, CancelReason::WorkerDisconnect);
        let stopping = self.stopping;
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        record.went_down();
        if record.retired {
            self.links.remove(&link);
            self.exit_if_done();
            return;
        }
        if stopping {
            record.state = LinkState::Down { reconnect_at: None };
            self.exit_if_done();
            return;
        }
        let after = match retry_after {
            Some(retry_after) => record.backoff.after_retry_after(retry_after),
            None => record.backoff.next_delay(),
        };
        record.state = LinkState::Down {
            reconnect_at: now.checked_add(after),
        };
        self.outputs
            .push_back(SessionOutput::Reconnecting { link, after });
    }

    /// The backend's models changed: tell each registered relay now, the others once registered.
    pub(super) fn on_models_changed(&mut self, models: Vec<String>) {
        let models = advertisable(models);
        if models == self.models {
            return;
        }
        self.models = models;
        for link in self.link_ids() {
            let Some(record) = self.links.get_mut(&link) else {
                continue;
            };
            record.models_sent = false;
            if record.state == LinkState::Ready && !self.stopping {
                self.send_models(link);
            }
        }
    }

    /// Local shutdown: advertise nothing, finish what runs (until the deadline), then exit.
    pub(super) fn on_shutdown(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.stop_deadline = now.checked_add(self.config.shutdown_timeout);
        for link in self.link_ids() {
            self.stop_link(link);
        }
        self.exit_if_done();
    }

    /// One link at a local shutdown: closed now if nothing runs on it, else
    /// told to route nothing new here while its requests finish.
    fn stop_link(&mut self, link: LinkId) {
        let running = self.running_on(link);
        let current_load = self.current_load();
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        match record.state {
            LinkState::Down { .. } => record.state = LinkState::Down { reconnect_at: None },
            LinkState::Registering { .. } | LinkState::Ready if running > 0 => {
                // Advertise nothing, so the relay routes no new work here.
                self.send(
                    link,
                    WorkerMessage::ModelsUpdate(ModelsUpdate {
                        models: Vec::new(),
                        current_load,
                    }),
                );
            }
            LinkState::Registering { .. } | LinkState::Ready | LinkState::Connecting => {
                self.close_link(link);
            }
            LinkState::Closing => {}
        }
    }
}

/// The models a worker advertises: the first [`MAX_MODELS_PER_WORKER`] names of
/// at most [`MAX_MODEL_NAME_BYTES`], exactly what a relay keeps. So its
/// `register` always fits the frame limit a relay holds a link to before
/// `register` (sized for 256 names of 256 bytes), whatever the backend lists.
/// Never [`WILDCARD_MODEL`]: relays would send this worker requests for any
/// model, so a backend that lists `*` (or a list that still holds it) must
/// not make it say so.
pub(super) fn advertisable(models: Vec<String>) -> Vec<String> {
    models
        .into_iter()
        .filter(|model| model.len() <= MAX_MODEL_NAME_BYTES)
        .filter(|model| model.trim() != WILDCARD_MODEL)
        .take(MAX_MODELS_PER_WORKER)
        .collect()
}

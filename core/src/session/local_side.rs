//! Handlers of the worker's own events: its link going up or down, its models changing, shutdown.

use std::time::{Duration, Instant};

use super::liveness::{LinkWatch, Liveness};
use super::{LinkState, SessionOutput, WorkerSession};
use crate::relay::{MAX_MODEL_NAME_BYTES, MAX_MODELS_PER_WORKER};
use crate::wire::{
    CancelReason, LinkFlow, ModelsUpdate, Register, WILDCARD_MODEL, WireVersion, WorkerMessage,
};

impl WorkerSession {
    /// The link asked for is open: register on it.
    pub(super) fn on_link_up(
        &mut self,
        now: Instant,
        (wire, flow): (WireVersion, LinkFlow),
        liveness: Liveness,
    ) {
        if self.link != LinkState::Connecting {
            return;
        }
        if self.stopping && self.running.is_empty() {
            self.close_link();
            return;
        }
        self.wire = Some(wire);
        self.flow = flow;
        self.link = LinkState::Registering {
            deadline: now.checked_add(self.config.register_timeout),
        };
        self.watch = LinkWatch::start(
            now,
            liveness,
            self.config.link_probe_after,
            self.config.link_probe_timeout,
        );
        self.models_sent = true;
        let models = if self.stopping {
            Vec::new()
        } else {
            self.models.clone()
        };
        self.send(WorkerMessage::Register(Register {
            worker_name: self.config.worker_name.clone(),
            models,
            max_concurrent: self.config.max_concurrent,
            protocol_version: Some(wire.protocol_version().to_owned()),
            current_load: Some(self.current_load()),
        }));
    }

    /// The link closed: abort what runs, then exit if stopping or reconnect after
    /// a backoff (or after `retry_after`, when the server said how long to wait).
    pub(super) fn on_link_down(&mut self, now: Instant, retry_after: Option<Duration>) {
        if matches!(self.link, LinkState::Down { .. }) {
            return;
        }
        // Results can no longer be delivered; the relay requeues or fails these.
        self.abort_all(CancelReason::WorkerDisconnect);
        self.wire = None;
        self.flow = LinkFlow::Unwindowed;
        self.server_drain_deadline = None;
        self.server_draining = false;
        self.watch = LinkWatch::default();
        if self.stopping {
            self.link = LinkState::Down { reconnect_at: None };
            self.exit();
            return;
        }
        let after = match retry_after {
            Some(retry_after) => self.backoff.after_retry_after(retry_after),
            None => self.backoff.next_delay(),
        };
        self.link = LinkState::Down {
            reconnect_at: now.checked_add(after),
        };
        self.outputs
            .push_back(SessionOutput::Reconnecting { after });
    }

    /// The backend's models changed: tell the server now if registered, else once registered.
    pub(super) fn on_models_changed(&mut self, models: Vec<String>) {
        let models = advertisable(models);
        if models == self.models {
            return;
        }
        self.models = models;
        self.models_sent = false;
        if self.link == LinkState::Ready && !self.stopping {
            self.send_models();
        }
    }

    /// Sends the current models and load.
    pub(super) fn send_models(&mut self) {
        self.models_sent = true;
        self.send(WorkerMessage::ModelsUpdate(ModelsUpdate {
            models: self.models.clone(),
            current_load: self.current_load(),
        }));
    }

    /// Local shutdown: advertise nothing, finish what runs (until the deadline), then exit.
    pub(super) fn on_shutdown(&mut self, now: Instant) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.stop_deadline = now.checked_add(self.config.shutdown_timeout);
        match self.link {
            LinkState::Down { .. } => self.exit(),
            LinkState::Registering { .. } | LinkState::Ready if !self.running.is_empty() => {
                // Advertise nothing, so the relay routes no new work here.
                self.send(WorkerMessage::ModelsUpdate(ModelsUpdate {
                    models: Vec::new(),
                    current_load: self.current_load(),
                }));
            }
            LinkState::Registering { .. } | LinkState::Ready | LinkState::Connecting => {
                self.close_link();
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

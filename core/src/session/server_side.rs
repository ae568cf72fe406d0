//! Handlers of what a relay sends: the registration ack, requests, cancels, pings, drains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::failure::refusal_message;
use super::read_window::ReadWindow;
use super::{LinkRequest, LinkState, SessionOutput, WorkerSession};
use crate::ids::LinkId;
use crate::wire::{
    Cancel, GracefulShutdown, INITIAL_WINDOW, LinkFlow, Ping, Pong, REFUSED_AT_CAPACITY,
    REFUSED_DRAINING, RegisterAck, RequestFrame, ServerMessage, WindowUpdate, WorkerMessage,
};

impl WorkerSession {
    /// A frame from a relay: any frame proves its link alive.
    pub(super) fn on_frame(&mut self, now: Instant, link: LinkId, message: ServerMessage) {
        let Some(record) = self.links.get_mut(&link).filter(|record| record.linked()) else {
            return;
        };
        record.watch.heard(now);
        match message {
            ServerMessage::RegisterAck(ack) => self.on_register_ack(link, ack),
            ServerMessage::Request(frame) => self.on_request(link, frame),
            ServerMessage::Cancel(cancel) => self.on_cancel(link, cancel),
            ServerMessage::Ping(ping) => self.on_ping(link, ping),
            ServerMessage::GracefulShutdown(drain) => self.on_server_drain(now, link, drain),
            ServerMessage::ModelsRefresh(_) => self.outputs.push_back(SessionOutput::RefreshModels),
            ServerMessage::WindowUpdate(update) => self.on_window_update(link, update),
        }
    }

    /// A sign of life that is no frame (a WebSocket pong or ping): the link is alive.
    pub(super) fn on_sign_of_life(&mut self, now: Instant, link: LinkId) {
        if let Some(record) = self.links.get_mut(&link).filter(|record| record.linked()) {
            record.watch.heard(now);
        }
    }

    /// A relay accepted the registration: serve there, and send it the models
    /// (and load) if they changed since.
    fn on_register_ack(&mut self, link: LinkId, ack: RegisterAck) {
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        if !matches!(record.state, LinkState::Registering { .. }) {
            return;
        }
        record.state = LinkState::Ready;
        record.backoff.reset();
        let owed = !record.models_sent || record.load_owed;
        self.outputs.push_back(SessionOutput::Registered {
            link,
            worker_id: ack.worker_id,
            models: ack.models,
            warnings: ack.warnings,
        });
        if owed && !self.stopping {
            self.send_models(link);
        }
    }

    /// A request to run: started in a free slot, or refused when this link
    /// drains or every slot is busy (with any link's requests).
    fn on_request(&mut self, link: LinkId, frame: Arc<RequestFrame>) {
        let request = LinkRequest::new(link, frame.request_id.clone());
        if self.running.contains_key(&request) {
            return; // a repeat; the first copy is already running
        }
        let record = &self.links[&link];
        let (wire, flow) = (record.wire, record.flow);
        let refusal = if self.stopping || record.draining || record.retired {
            Some((
                REFUSED_DRAINING,
                "worker is draining and takes no new requests",
            ))
        } else if self.current_load() >= self.config.max_concurrent {
            Some((REFUSED_AT_CAPACITY, "all of the worker's slots are busy"))
        } else {
            None
        };
        if let Some((code, message)) = refusal {
            if code == REFUSED_AT_CAPACITY
                && let Some(record) = self.links.get_mut(&link)
            {
                // Not told at once: "still full" would only start it over.
                record.refused_since_told = true;
            }
            self.send(link, refusal_message(wire, request.id, code, message));
            return;
        }
        let relay_max = match flow {
            LinkFlow::Windowed => INITIAL_WINDOW,
            LinkFlow::Unwindowed => u64::MAX,
        };
        let (window, up_to) = ReadWindow::new(self.config.link_write_window, relay_max);
        self.running.insert(request.clone(), window);
        self.load_changed(link);
        self.outputs.push_back(SessionOutput::StartRequest {
            request: request.clone(),
            frame,
        });
        self.outputs
            .push_back(SessionOutput::AllowBackendRead { request, up_to });
    }

    /// More window for a request's answer: its backend call may read further.
    /// Ignored on a link that did not negotiate windows and for requests not running.
    fn on_window_update(&mut self, link: LinkId, update: WindowUpdate) {
        if self.links[&link].flow != LinkFlow::Windowed {
            return;
        }
        let request = LinkRequest::new(link, update.request_id);
        let allowance = self
            .running
            .get_mut(&request)
            .and_then(|window| window.on_relay_window(update.max_bytes));
        self.allow_read(request, allowance);
    }

    /// The relay no longer wants a request: its backend call is stopped.
    fn on_cancel(&mut self, link: LinkId, cancel: Cancel) {
        let request = LinkRequest::new(link, cancel.request_id);
        if self.running.remove(&request).is_none() {
            return;
        }
        self.text_carry.forget(&request);
        self.load_changed(link);
        self.outputs.push_back(SessionOutput::AbortRequest {
            request,
            reason: cancel.reason,
        });
        self.after_request_ended(link);
    }

    /// A ping, answered with the worker's whole load (which the relay then knows).
    fn on_ping(&mut self, link: LinkId, ping: Ping) {
        if let Some(record) = self.links.get_mut(&link) {
            record.load_owed = false;
            record.refused_since_told = false;
        }
        self.send(
            link,
            WorkerMessage::Pong(Pong {
                current_load: self.current_load(),
                timestamp_unix_ms: ping.timestamp_unix_ms,
            }),
        );
    }

    /// A relay asked this worker to drain: take no new work from it, drop its
    /// link after its deadline. The other links go on serving.
    fn on_server_drain(&mut self, now: Instant, link: LinkId, drain: GracefulShutdown) {
        let timeout = Duration::from_secs(drain.drain_timeout_secs.unwrap_or(30));
        let grace = self.config.drain_grace;
        let Some(record) = self.links.get_mut(&link) else {
            return;
        };
        record.draining = true;
        // The timeout comes from the peer: no value of it may overflow.
        record.drain_deadline = now
            .checked_add(timeout)
            .and_then(|at| at.checked_add(grace));
    }
}

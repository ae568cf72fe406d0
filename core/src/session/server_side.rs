//! Handlers of what the server sends: the registration ack, requests, cancels, pings, drains.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::failure::refusal_message;
use super::read_window::ReadWindow;
use super::{LinkState, SessionOutput, WorkerSession};
use crate::wire::{
    Cancel, GracefulShutdown, INITIAL_WINDOW, LinkFlow, Ping, Pong, REFUSED_AT_CAPACITY,
    REFUSED_DRAINING, RegisterAck, RequestFrame, ServerMessage, WindowUpdate, WorkerMessage,
};

impl WorkerSession {
    /// A frame from the server: any frame proves the link alive.
    pub(super) fn on_frame(&mut self, now: Instant, message: ServerMessage) {
        if !self.linked() {
            return;
        }
        self.watch.heard(now);
        match message {
            ServerMessage::RegisterAck(ack) => self.on_register_ack(ack),
            ServerMessage::Request(frame) => self.on_request(frame),
            ServerMessage::Cancel(cancel) => self.on_cancel(cancel),
            ServerMessage::Ping(ping) => self.on_ping(ping),
            ServerMessage::GracefulShutdown(drain) => self.on_server_drain(now, drain),
            ServerMessage::ModelsRefresh(_) => self.outputs.push_back(SessionOutput::RefreshModels),
            ServerMessage::WindowUpdate(update) => self.on_window_update(update),
        }
    }

    /// A sign of life that is no frame (a WebSocket pong or ping): the link is alive.
    pub(super) fn on_sign_of_life(&mut self, now: Instant) {
        if self.linked() {
            self.watch.heard(now);
        }
    }

    /// The server accepted the registration: serve, and send the models if they changed since.
    fn on_register_ack(&mut self, ack: RegisterAck) {
        if !matches!(self.link, LinkState::Registering { .. }) {
            return;
        }
        self.link = LinkState::Ready;
        self.backoff.reset();
        self.outputs.push_back(SessionOutput::Registered {
            worker_id: ack.worker_id,
            models: ack.models,
            warnings: ack.warnings,
        });
        if !self.models_sent {
            self.send_models();
        }
    }

    /// A request to run: started, or refused when draining or at capacity.
    fn on_request(&mut self, frame: Arc<RequestFrame>) {
        let request_id = frame.request_id.clone();
        if self.running.contains_key(&request_id) {
            return; // a repeat; the first copy is already running
        }
        let refusal = if self.stopping || self.server_draining {
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
            self.send(refusal_message(self.wire, request_id, code, message));
            return;
        }
        let relay_max = match self.flow {
            LinkFlow::Windowed => INITIAL_WINDOW,
            LinkFlow::Unwindowed => u64::MAX,
        };
        let (window, up_to) = ReadWindow::new(self.config.link_write_window, relay_max);
        self.running.insert(request_id.clone(), window);
        self.outputs.push_back(SessionOutput::StartRequest(frame));
        self.outputs.push_back(SessionOutput::AllowBackendRead {
            request: request_id,
            up_to,
        });
    }

    /// More window for a request's answer: its backend call may read further.
    /// Ignored on a link that did not negotiate windows and for requests not running.
    fn on_window_update(&mut self, update: WindowUpdate) {
        if self.flow != LinkFlow::Windowed {
            return;
        }
        let allowance = self
            .running
            .get_mut(&update.request_id)
            .and_then(|window| window.on_relay_window(update.max_bytes));
        self.allow_read(update.request_id, allowance);
    }

    /// The server no longer wants a request: its backend call is stopped.
    fn on_cancel(&mut self, cancel: Cancel) {
        if self.running.remove(&cancel.request_id).is_none() {
            return;
        }
        self.text_carry.forget(&cancel.request_id);
        self.outputs.push_back(SessionOutput::AbortRequest {
            request: cancel.request_id,
            reason: cancel.reason,
        });
        self.after_request_ended();
    }

    /// A ping, answered with the current load.
    fn on_ping(&mut self, ping: Ping) {
        self.send(WorkerMessage::Pong(Pong {
            current_load: self.current_load(),
            timestamp_unix_ms: ping.timestamp_unix_ms,
        }));
    }

    /// The server asked this worker to drain: take no new work, drop the link after its deadline.
    fn on_server_drain(&mut self, now: Instant, drain: GracefulShutdown) {
        let timeout = Duration::from_secs(drain.drain_timeout_secs.unwrap_or(30));
        // The timeout comes from the peer: no value of it may overflow.
        self.server_draining = true;
        self.server_drain_deadline = now
            .checked_add(timeout)
            .and_then(|at| at.checked_add(self.config.drain_grace));
    }
}

//! The hub's side of worker links: opening, closing, writing frames, and the log lines about them.

use std::time::Duration;

use modelrelay_core::WorkerId;
use modelrelay_core::relay::{AuthOutcome, CloseReason, Input};
use modelrelay_core::wire::{LinkFlow, RegisterAck, ServerMessage, WireVersion};
use modelrelay_transports::{Outgoing, ReadLimit, close_code};
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::task::HubTask;
use super::{LinkCommand, Transport};

/// What the hub holds of a worker link.
pub(super) struct LinkHandle {
    /// Bounded (see `Command::WorkerConnected`'s `outbound`); the hub never waits for room.
    outbound: mpsc::Sender<LinkCommand>,
    closing: CancellationToken,
    transport: Transport,
    /// The reader's frame limit: the before-register one until the `register_ack` goes out.
    reads: ReadLimit,
}

impl LinkHandle {
    /// The handle of a link written through `outbound`, ended by cancelling `closing`.
    pub(super) fn new(
        outbound: mpsc::Sender<LinkCommand>,
        closing: CancellationToken,
        transport: Transport,
        reads: ReadLimit,
    ) -> Self {
        Self {
            outbound,
            closing,
            transport,
            reads,
        }
    }
}

impl HubTask {
    /// A worker link is open: the hub keeps its handle and the core hears of the worker.
    pub(super) fn link_opened(
        &mut self,
        worker: WorkerId,
        (wire, flow): (WireVersion, LinkFlow),
        auth: AuthOutcome,
        name_hint: &str,
        link: LinkHandle,
    ) {
        debug!(%worker, ?wire, ?flow, peer = %name_hint, transport = link.transport.name(), "worker link open");
        self.links.insert(worker, link);
        self.feed(Input::WorkerConnected {
            worker,
            provider: self.provider.clone(),
            wire,
            flow,
            auth,
        });
    }

    /// A frame from `worker` that did not decode.
    pub(super) fn link_invalid(&mut self, worker: WorkerId, detail: String) {
        warn!(%worker, %detail, "worker sent a frame that does not decode");
        self.feed(Input::WorkerFrameInvalid { worker, detail });
    }

    /// A worker link closed.
    pub(super) fn link_gone(&mut self, worker: WorkerId) {
        if self.links.remove(&worker).is_some() {
            info!(%worker, "worker link closed");
        }
        self.feed(Input::WorkerDisconnected { worker });
    }

    /// How `worker`'s link reaches the relay (WebSocket if it is already gone).
    pub(super) fn link_transport(&self, worker: WorkerId) -> Transport {
        self.links
            .get(&worker)
            .map_or(Transport::WebSocket, |l| l.transport)
    }

    /// Drains one worker at an operator's request; whether it was connected.
    pub(super) fn drain_worker(&mut self, worker: WorkerId, timeout: Duration) -> bool {
        let known = self.relay.workers().any(|w| w.id == worker);
        if known {
            info!(%worker, timeout_secs = timeout.as_secs(), "draining a worker (admin request)");
            self.feed(Input::DrainWorker {
                worker,
                timeout,
                reason: Some("drained by an administrator".into()),
            });
        }
        known
    }

    /// Writes a frame to `worker`'s link, noting a request's dispatch or a registration first;
    /// a registration also raises the link's frame limit to the configured one.
    pub(super) fn send_to_worker(&mut self, worker: WorkerId, message: ServerMessage) {
        match &message {
            ServerMessage::Request(frame) => {
                if let Some(request) = frame.request_id.as_request_id() {
                    self.request_sent(request, worker);
                }
            }
            ServerMessage::RegisterAck(ack) => {
                if let Some(link) = self.links.get(&worker) {
                    link.reads.raise();
                }
                self.log_registration(worker, ack);
            }
            _ => {}
        }
        if let Some(link) = self.links.get(&worker) {
            match link.outbound.try_send(Outgoing::Message(message)) {
                // Closed: the link's writer is gone, and the link with it.
                Ok(()) | Err(TrySendError::Closed(_)) => {}
                Err(TrySendError::Full(_)) => self.link_queue_full(worker),
            }
        }
    }

    /// `worker`'s outbound queue is full: its link stopped taking frames. The
    /// frame that did not fit is dropped, as if the link's writer were gone,
    /// and the link is closed (the core hears of it as the link goes).
    /// (`closing` ends the link's task within a bound; one warning per link.)
    fn link_queue_full(&mut self, worker: WorkerId) {
        if let Some(link) = self.links.get(&worker)
            && !link.closing.is_cancelled()
        {
            warn!(%worker, "the worker link's outbound queue is full; closing the link");
            link.closing.cancel();
        }
    }

    /// Closes `worker`'s link for `reason` and lets it go.
    pub(super) fn close_worker(&mut self, worker: WorkerId, reason: &CloseReason) {
        log_close(worker, reason);
        if let Some(link) = self.links.remove(&worker) {
            // A full queue has a close of its own coming: `closing` ends the link.
            let _ = link.outbound.try_send(Outgoing::Close {
                code: close_code_for(reason),
                reason: reason.to_string(),
            });
            link.closing.cancel();
        }
    }

    fn log_registration(&self, worker: WorkerId, ack: &RegisterAck) {
        let name = self
            .relay
            .workers()
            .find(|w| w.id == worker)
            .map(|w| w.name.to_owned())
            .unwrap_or_default();
        info!(%worker, %name, models = ?ack.models, "worker registered");
        for warning in &ack.warnings {
            warn!(%worker, %name, %warning, "worker model list sanitized");
        }
    }
}

/// The WebSocket close code for each reason the relay closes a link.
fn close_code_for(reason: &CloseReason) -> u16 {
    match reason {
        CloseReason::Unauthorized => close_code::POLICY_VIOLATION,
        CloseReason::ProtocolError(_)
        | CloseReason::TooManyViolations
        | CloseReason::RegisterTimeout => close_code::PROTOCOL_ERROR,
        CloseReason::Drained => close_code::NORMAL,
        CloseReason::HeartbeatTimeout | CloseReason::DrainTimeout | CloseReason::Shutdown => {
            close_code::GOING_AWAY
        }
    }
}

fn log_close(worker: WorkerId, reason: &CloseReason) {
    match reason {
        CloseReason::Drained => info!(%worker, "worker drained"),
        reason if reason.is_violation() => warn!(%worker, %reason, "closing worker link"),
        reason => info!(%worker, %reason, "closing worker link"),
    }
}

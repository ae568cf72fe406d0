//! The task that runs one worker link, whichever its transport: frames to the hub, the hub's frames to the worker.

use std::net::SocketAddr;

use modelrelay_core::WorkerId;
use modelrelay_core::relay::AuthOutcome;
use modelrelay_core::wire::{LinkFlow, ServerMessage, WireVersion, WorkerMessage};
use modelrelay_transports::LINK_CLOSE_WAIT;
use modelrelay_transports::{LinkError, LinkReader, LinkWriter, ReadLimit};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::hub::{Command, Hub, Transport, Undeliverable};

/// Items a worker link's outbound queue holds (the hub's frames waiting for the
/// link's writer). Never reached by a healthy link: the hub puts in it a
/// request frame per request dispatched to the worker (at most its slots at a
/// time, their bodies held within `--max-buffered-request-bytes`), at most one
/// cancel per request, a ping every 15 s and one `register_ack`. A link that
/// leaves 4,096 of those unwritten has stopped taking frames, and is closed.
pub(crate) const LINK_QUEUE: usize = 4096;

/// What the hub is told of a new link.
pub(super) struct LinkInfo {
    /// The id the worker gets.
    pub(super) worker: WorkerId,
    /// The protocol version of the link.
    pub(super) wire: WireVersion,
    /// Whether it carries `window_update`s.
    pub(super) flow: LinkFlow,
    /// Its address, as a name until it registers.
    pub(super) peer: SocketAddr,
    /// How it connected.
    pub(super) transport: Transport,
    /// The reader's frame limit, for the hub to raise once the worker registers.
    pub(super) reads: ReadLimit,
}

/// Feeds a link's frames to the hub and writes what the hub sends, until either side ends it.
pub(super) async fn run_link<R, W>(reader: R, writer: W, link: LinkInfo, hub: Hub)
where
    R: LinkReader<WorkerMessage>,
    W: LinkWriter<ServerMessage>,
{
    let worker = link.worker;
    let (outbound, queue) = mpsc::channel(LINK_QUEUE);
    let closing = CancellationToken::new();
    let connected = hub
        .send(Command::WorkerConnected {
            worker,
            wire: link.wire,
            flow: link.flow,
            // Admission let in only workers whose secret was right.
            auth: AuthOutcome::Accepted,
            name_hint: link.peer.to_string(),
            transport: link.transport,
            outbound,
            closing: closing.clone(),
            reads: link.reads.clone(),
        })
        .await;
    if !connected {
        return;
    }
    let reading = read_frames(reader, &hub, worker, &link.reads);
    // The relay's reads need no pacing: nothing waits for its writer's progress.
    let writing = writer.run(
        queue,
        |message, error| undeliverable(&hub, worker, message, error),
        |_: &ServerMessage| {},
    );
    tokio::pin!(reading, writing);
    // One task per link. When the worker's side ends, the hub hears of it and the
    // writer gets a moment to send what the hub still has to say (a close); when the
    // hub's side ends (a close sent), the worker gets a moment to answer. A dead
    // link answers nothing, so both waits are bounded.
    let link = async {
        tokio::select! {
            biased;
            () = &mut reading => {
                // Behind the link's last frame on the same inbox: it cannot overtake them.
                hub.send(Command::WorkerGone { worker }).await;
                let _ = tokio::time::timeout(LINK_CLOSE_WAIT, &mut writing).await;
            }
            result = &mut writing => {
                if let Err(error) = result {
                    debug!(%worker, %error, "writing to the worker failed");
                }
                let _ = tokio::time::timeout(LINK_CLOSE_WAIT, &mut reading).await;
            }
        }
    };
    // The hub's close may sit behind frames a dead link never drains: past the
    // linger, drop the link (the hub has already let it go).
    let gave_up = async {
        closing.cancelled().await;
        tokio::time::sleep(LINK_CLOSE_WAIT * 2).await;
    };
    tokio::select! {
        () = link => {}
        () = gave_up => debug!(%worker, "the close did not complete: dropping the link"),
    }
    hub.send(Command::WorkerGone { worker }).await;
}

/// Passes the worker's frames to the hub until the link ends or fails; a frame
/// that breaks the protocol ends the link, and its close says why (a frame too
/// large for the limit before register says so).
async fn read_frames<R: LinkReader<WorkerMessage>>(
    mut reader: R,
    hub: &Hub,
    worker: WorkerId,
    reads: &ReadLimit,
) {
    loop {
        match reader.next().await {
            Some(Ok(message)) => {
                if !hub.send(Command::WorkerFrame { worker, message }).await {
                    return;
                }
            }
            Some(Err(error)) if error.is_protocol_violation() => {
                let detail = if error.is_too_large() && !reads.is_raised() {
                    format!("before register: {error}")
                } else {
                    error.to_string()
                };
                hub.send(Command::WorkerInvalid { worker, detail }).await;
                return;
            }
            Some(Err(error)) => {
                debug!(%worker, %error, "worker link failed");
                return;
            }
            None => return,
        }
    }
}

/// A frame the writer could not send: a request is failed through the hub, anything else logged.
fn undeliverable(
    hub: &Hub,
    worker: WorkerId,
    message: ServerMessage,
    error: &LinkError,
) -> Option<ServerMessage> {
    if let ServerMessage::Request(frame) = &message {
        warn!(%worker, request = %frame.request_id, %error, "a request could not be sent to its worker");
        hub.undeliverable(Undeliverable {
            worker,
            request: frame.request_id.clone(),
            detail: error.to_string(),
        });
    } else {
        warn!(%worker, %error, "a frame for a worker could not be sent");
    }
    None
}

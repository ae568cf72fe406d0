//! One open link's task: reports it up, forwards the relay's frames to the
//! driver, writes the session's messages, and reports it closed.

use std::sync::Arc;

use modelrelay_core::session::failure_message;
use modelrelay_core::wire::{ServerMessage, WireVersion, WorkerMessage};
use modelrelay_transports::{
    Heard, LINK_CLOSE_WAIT, LinkError, LinkReader, LinkWriter, close_code, send_or_wait,
};
use tokio::sync::mpsc;
use tracing::{debug, warn};

use crate::driver::{Event, LinkTag, LinkTraits};
use crate::progress::WriteProgress;

/// Runs one open link: reports it up, forwards frames, writes the session's messages,
/// and reports it closed. It ends when reading ends, or soon after writing ends
/// (a dead link never answers a close).
pub(crate) async fn run_link<R, W>(
    (reader, writer): (R, W),
    traits: LinkTraits,
    tag: LinkTag,
    (capacity, progress): (usize, Arc<WriteProgress>),
    events: mpsc::Sender<Event>,
) where
    R: LinkReader<ServerMessage>,
    W: LinkWriter<WorkerMessage>,
{
    let (outbound, queue) = mpsc::channel(capacity);
    let written = move |message: &WorkerMessage| progress.wrote(tag.link, message);
    let _ = events
        .send(Event::LinkUp {
            tag,
            traits,
            outbound,
        })
        .await;
    let wire = traits.0;
    let unsendable = move |message, error: &LinkError| undeliverable(wire, message, error);
    let reading = read_link(reader, tag, events.clone());
    tokio::pin!(reading);
    let (cause, refused) = tokio::select! {
        biased;
        ended = &mut reading => ended,
        result = writer.run(queue, unsendable, written) => {
            if let Err(error) = result {
                debug!(%error, "writing to the relay failed");
            }
            match tokio::time::timeout(LINK_CLOSE_WAIT, &mut reading).await {
                Ok(ended) => ended,
                Err(_) => ("the relay did not answer the close: link dead".to_owned(), false),
            }
        }
    };
    let _ = events
        .send(Event::LinkClosed {
            tag,
            cause,
            refused,
        })
        .await;
}

/// Forwards a link's frames and signs of life until it ends; says why it ended
/// and whether the relay refused us.
async fn read_link<R: LinkReader<ServerMessage>>(
    mut reader: R,
    tag: LinkTag,
    events: mpsc::Sender<Event>,
) -> (String, bool) {
    loop {
        let event = match reader.next_heard().await {
            Some(Ok(Heard::Message(message))) => Event::Frame { tag, message },
            Some(Ok(Heard::SignOfLife)) => Event::SignOfLife { tag },
            Some(Err(error)) => return (error.to_string(), false),
            None => {
                return match reader.close_frame() {
                    Some((code, reason)) => (
                        format!("closed by the relay ({code}: {reason})"),
                        code == close_code::POLICY_VIOLATION,
                    ),
                    None => ("connection lost".to_owned(), false),
                };
            }
        };
        if send_or_wait(&events, event).await.is_err() {
            return ("worker stopped".to_owned(), false);
        }
    }
}

/// What goes to the relay instead of a frame it cannot take (too large, or not text on v1):
/// the failure of that one request, in the form the link's encoding takes, so the
/// link and every other request go on.
fn undeliverable(
    wire: WireVersion,
    message: WorkerMessage,
    error: &LinkError,
) -> Option<WorkerMessage> {
    let request = match &message {
        WorkerMessage::ResponseChunk(chunk) => chunk.request_id.clone(),
        WorkerMessage::ResponseComplete(complete) => complete.request_id.clone(),
        other => {
            warn!(%error, message = ?std::mem::discriminant(other), "a frame for the relay could not be sent");
            return None;
        }
    };
    warn!(%request, %error, "a response could not be sent to the relay; failing the request");
    Some(failure_message(
        Some(wire),
        request,
        "response_undeliverable".into(),
        format!("the response cannot travel on this link: {error}"),
    ))
}

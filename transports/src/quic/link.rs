//! The two halves of a QUIC link, on the relay's side and on the worker's.
//!
//! Each side's writer owns every stream's sending half; reading happens in one
//! task per stream, which forwards decoded messages to the reader and tells
//! the writer when a stream opens or ends. Messages of one request travel on
//! its stream, in order; a cancel travels there too, after the request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use modelrelay_core::WireRequestId;
use modelrelay_core::wire::{
    Cancel, CancelReason, FrameLimits, ServerMessage, WireMessage, WireVersion, WorkerMessage,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::debug;

use super::{CANCELLED, read_frame, write_frame};
use crate::{LinkError, LinkReader, LinkWriter, Outgoing, close_code};

/// How long a closing writer waits for the peer to acknowledge what it sent.
pub const CLOSE_LINGER: Duration = Duration::from_secs(3);

/// Closes the connection once both halves of the link are gone, so that the
/// tasks reading its streams end with it (they hold the connection too).
struct CloseOnDrop(Connection);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        // A no-op when the link was already closed with a code of its own.
        self.0.close(
            VarInt::from_u32(u32::from(close_code::GOING_AWAY)),
            b"link dropped",
        );
    }
}

/// The receiving half: messages from every stream of the connection.
pub struct QuicReader<M> {
    connection: Connection,
    inbound: mpsc::UnboundedReceiver<Result<M, LinkError>>,
    close_frame: Option<(u16, String)>,
    done: bool,
    _open: Arc<CloseOnDrop>,
}

/// What both sides' writers hold: the connection and its control stream.
struct Control {
    connection: Connection,
    send: SendStream,
    limits: FrameLimits,
    /// Finished streams whose data the peer has not acknowledged yet.
    unacknowledged: JoinSet<()>,
    _open: Arc<CloseOnDrop>,
}

/// The relay's sending half: opens a stream per request, routes cancels to it.
pub struct RelayWriter {
    control: Control,
    /// Decoded worker frames go here (from the request streams this writer opens).
    inbound: mpsc::UnboundedSender<Result<WorkerMessage, LinkError>>,
    /// Request streams whose worker side ended.
    ended_tx: mpsc::UnboundedSender<WireRequestId>,
    ended: mpsc::UnboundedReceiver<WireRequestId>,
}

/// The worker's sending half: answers each request on the stream it came on.
pub struct WorkerWriter {
    control: Control,
    /// Request streams the relay opened or cancelled, as their reading tasks see it.
    streams: mpsc::UnboundedReceiver<RequestStream>,
}

/// What a request stream's reading task tells the worker's writer.
enum RequestStream {
    /// The relay opened a stream for this request: answer on it.
    Opened(WireRequestId, SendStream),
    /// The relay cancelled it: nothing more will be said; reset our half.
    Cancelled(WireRequestId),
}

fn encode<M: WireMessage>(message: &M, limits: FrameLimits) -> Result<Bytes, LinkError> {
    let frame = WireVersion::V2.encode(message)?;
    if frame.len() > limits.max_frame_bytes {
        return Err(LinkError::FrameTooLarge {
            size: frame.len(),
            limit: limits.max_frame_bytes,
        });
    }
    Ok(frame)
}

fn decode<M: WireMessage>(frame: &Bytes, limits: FrameLimits) -> Result<M, LinkError> {
    Ok(WireVersion::V2.decode(frame, limits)?)
}

/// Forwards the messages of one stream until it ends. Link-level failures (the
/// connection going away) end it quietly; malformed frames are passed on as errors.
async fn forward<M: WireMessage>(
    recv: &mut RecvStream,
    limits: FrameLimits,
    inbound: &mpsc::UnboundedSender<Result<M, LinkError>>,
) -> Result<(), ()> {
    loop {
        match read_frame(recv, limits).await {
            Ok(Some(frame)) => {
                let message = decode(&frame, limits);
                let malformed = message.is_err();
                if inbound.send(message).is_err() || malformed {
                    return Err(());
                }
            }
            Ok(None) => return Ok(()),
            Err(error) if error.is_protocol_violation() => {
                let _ = inbound.send(Err(error));
                return Err(());
            }
            Err(error) => {
                debug!(%error, "QUIC stream ended");
                return Err(());
            }
        }
    }
}

/// The relay's halves of a link whose control stream is `(send, recv)`.
pub(super) fn server_side(
    connection: Connection,
    control_send: SendStream,
    mut control_recv: RecvStream,
    limits: FrameLimits,
) -> (QuicReader<WorkerMessage>, RelayWriter) {
    let (inbound_tx, inbound) = mpsc::unbounded_channel();
    let (ended_tx, ended) = mpsc::unbounded_channel();
    let control_tx = inbound_tx.clone();
    tokio::spawn(async move {
        let _ = forward(&mut control_recv, limits, &control_tx).await;
    });
    let open = Arc::new(CloseOnDrop(connection.clone()));
    (
        QuicReader::new(connection.clone(), inbound, Arc::clone(&open)),
        RelayWriter {
            control: Control::new(connection, control_send, limits, open),
            inbound: inbound_tx,
            ended_tx,
            ended,
        },
    )
}

/// The worker's halves of a link whose control stream is `(send, recv)`.
pub(super) fn worker_side(
    connection: Connection,
    control_send: SendStream,
    mut control_recv: RecvStream,
    limits: FrameLimits,
) -> (QuicReader<ServerMessage>, WorkerWriter) {
    let (inbound_tx, inbound) = mpsc::unbounded_channel();
    let (streams_tx, streams) = mpsc::unbounded_channel();
    let control_tx = inbound_tx.clone();
    tokio::spawn(async move {
        let _ = forward(&mut control_recv, limits, &control_tx).await;
    });
    let accepting = connection.clone();
    tokio::spawn(async move {
        while let Ok((send, recv)) = accepting.accept_bi().await {
            tokio::spawn(serve_request_stream(
                send,
                recv,
                limits,
                inbound_tx.clone(),
                streams_tx.clone(),
            ));
        }
    });
    let open = Arc::new(CloseOnDrop(connection.clone()));
    (
        QuicReader::new(connection.clone(), inbound, Arc::clone(&open)),
        WorkerWriter {
            control: Control::new(connection, control_send, limits, open),
            streams,
        },
    )
}

/// On the worker: one request stream the relay opened. Its first frame is the
/// request; a cancel may follow; a reset means cancelled too. Either way the
/// writer resets its half, so the stream closes on both sides.
async fn serve_request_stream(
    send: SendStream,
    mut recv: RecvStream,
    limits: FrameLimits,
    inbound: mpsc::UnboundedSender<Result<ServerMessage, LinkError>>,
    streams: mpsc::UnboundedSender<RequestStream>,
) {
    let request = match read_frame(&mut recv, limits).await {
        Ok(Some(frame)) => decode::<ServerMessage>(&frame, limits),
        // Reset before the request arrived: it was cancelled; nothing to run.
        Ok(None) | Err(_) => return,
    };
    let request_id = match &request {
        Ok(ServerMessage::Request(frame)) => frame.request_id.clone(),
        Ok(_) => {
            let _ = inbound.send(Err(LinkError::Protocol(
                "a request stream must start with a request".into(),
            )));
            return;
        }
        Err(_) => {
            let _ = inbound.send(request);
            return;
        }
    };
    // The writer hears of the stream before anything can be written to it.
    let opened = RequestStream::Opened(request_id.clone(), send);
    if streams.send(opened).is_err() || inbound.send(request).is_err() {
        return;
    }
    // After the request only a cancel may come, then the end of the stream.
    let cancel = match read_frame(&mut recv, limits).await {
        // The relay finished its half: the request ended normally.
        Ok(None) => return,
        Ok(Some(frame)) => match decode::<ServerMessage>(&frame, limits) {
            Ok(ServerMessage::Cancel(cancel)) if cancel.request_id == request_id => cancel,
            Ok(_) => {
                let _ = inbound.send(Err(LinkError::Protocol(
                    "a request stream carries only its request and its cancel".into(),
                )));
                return;
            }
            Err(error) => {
                let _ = inbound.send(Err(error));
                return;
            }
        },
        Err(error) if error.is_protocol_violation() => {
            let _ = inbound.send(Err(error));
            return;
        }
        // Reset by the relay (or the link went): for this request, a cancel.
        Err(_) => Cancel {
            request_id: request_id.clone(),
            reason: CancelReason::ClientDisconnect,
        },
    };
    let _ = streams.send(RequestStream::Cancelled(request_id));
    let _ = inbound.send(Ok(ServerMessage::Cancel(cancel)));
}

impl<M> QuicReader<M> {
    fn new(
        connection: Connection,
        inbound: mpsc::UnboundedReceiver<Result<M, LinkError>>,
        open: Arc<CloseOnDrop>,
    ) -> Self {
        Self {
            connection,
            inbound,
            close_frame: None,
            done: false,
            _open: open,
        }
    }

    /// The next message from any stream; `None` once the connection is closed.
    pub async fn next(&mut self) -> Option<Result<M, LinkError>> {
        if self.done {
            return None;
        }
        tokio::select! {
            biased;
            message = self.inbound.recv() => {
                if message.is_some() {
                    return message;
                }
            }
            _ = self.connection.closed() => {
                // What arrived before the close still counts.
                if let Ok(message) = self.inbound.try_recv() {
                    return Some(message);
                }
            }
        }
        // Every stream ended, or the connection did: either way it is over.
        if let Some(quinn::ConnectionError::ApplicationClosed(close)) =
            self.connection.close_reason()
        {
            let code = u16::try_from(close.error_code.into_inner()).unwrap_or(0);
            self.close_frame = Some((code, String::from_utf8_lossy(&close.reason).into_owned()));
        }
        self.done = true;
        None
    }
}

impl Control {
    fn new(
        connection: Connection,
        send: SendStream,
        limits: FrameLimits,
        open: Arc<CloseOnDrop>,
    ) -> Self {
        Self {
            connection,
            send,
            limits,
            unacknowledged: JoinSet::new(),
            _open: open,
        }
    }

    async fn write(&mut self, frame: Bytes) -> Result<(), LinkError> {
        write_frame(&mut self.send, frame).await
    }

    /// Finishes a request stream; a graceful close waits for its data to arrive.
    fn finish(&mut self, mut send: SendStream) {
        let _ = send.finish();
        let acknowledged = send.stopped();
        self.unacknowledged.spawn(async move {
            let _ = acknowledged.await;
        });
        while self.unacknowledged.try_join_next().is_some() {}
    }

    /// Closes the connection once the peer has what was sent (or [`CLOSE_LINGER`]
    /// has passed): quinn drops unsent data when a connection closes.
    async fn close(mut self, code: u16, reason: &str) {
        let _ = self.send.finish();
        let control = self.send.stopped();
        let mut unacknowledged = std::mem::take(&mut self.unacknowledged);
        let _ = tokio::time::timeout(CLOSE_LINGER, async move {
            let _ = control.await;
            while unacknowledged.join_next().await.is_some() {}
        })
        .await;
        self.connection
            .close(VarInt::from_u32(u32::from(code)), reason.as_bytes());
    }
}

impl RelayWriter {
    /// Writes the relay's messages: each request on a new stream, a cancel on its
    /// request's stream (then a reset), everything else on the control stream.
    pub async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Outgoing<ServerMessage>>,
        mut unsendable: impl FnMut(ServerMessage, &LinkError) -> Option<ServerMessage> + Send,
    ) -> Result<(), LinkError> {
        let mut streams: HashMap<WireRequestId, SendStream> = HashMap::new();
        loop {
            let item = tokio::select! {
                biased;
                Some(id) = self.ended.recv() => {
                    // The worker finished its half: the request is over; finish ours.
                    if let Some(send) = streams.remove(&id) {
                        self.control.finish(send);
                    }
                    continue;
                }
                item = queue.recv() => item,
            };
            let Some(item) = item else { break };
            let message = match item {
                Outgoing::Message(message) => message,
                Outgoing::Close { code, reason } => {
                    self.control.close(code, &reason).await;
                    return Ok(());
                }
            };
            let limits = self.control.limits;
            let frame = match encode(&message, limits) {
                Ok(frame) => frame,
                Err(error) => {
                    if let Some(instead) = unsendable(message, &error) {
                        self.control.write(encode(&instead, limits)?).await?;
                    }
                    continue;
                }
            };
            match message {
                ServerMessage::Request(request) => {
                    let (mut send, mut recv) = self.control.connection.open_bi().await?;
                    write_frame(&mut send, frame).await?;
                    let id = request.request_id.clone();
                    streams.insert(id.clone(), send);
                    let (inbound, ended_tx) = (self.inbound.clone(), self.ended_tx.clone());
                    tokio::spawn(async move {
                        let _ = forward(&mut recv, limits, &inbound).await;
                        let _ = ended_tx.send(id);
                    });
                }
                ServerMessage::Cancel(cancel) => match streams.remove(&cancel.request_id) {
                    Some(mut send) => {
                        // Ordered after the request on its own stream; the reset stops it for good.
                        let _ = write_frame(&mut send, frame).await;
                        let _ = send.reset(CANCELLED);
                    }
                    None => self.control.write(frame).await?,
                },
                _ => self.control.write(frame).await?,
            }
        }
        self.control.close(close_code::NORMAL, "").await;
        Ok(())
    }
}

impl WorkerWriter {
    /// Writes the worker's messages: a request's chunks, completion or error on its
    /// stream (finished after the last), everything else on the control stream.
    pub async fn run(
        mut self,
        mut queue: mpsc::UnboundedReceiver<Outgoing<WorkerMessage>>,
        mut unsendable: impl FnMut(WorkerMessage, &LinkError) -> Option<WorkerMessage> + Send,
    ) -> Result<(), LinkError> {
        let mut streams: HashMap<WireRequestId, SendStream> = HashMap::new();
        loop {
            let item = tokio::select! {
                biased;
                Some(event) = self.streams.recv() => {
                    match event {
                        RequestStream::Opened(id, send) => {
                            streams.insert(id, send);
                        }
                        RequestStream::Cancelled(id) => {
                            if let Some(mut send) = streams.remove(&id) {
                                let _ = send.reset(CANCELLED);
                            }
                        }
                    }
                    continue;
                }
                item = queue.recv() => item,
            };
            let Some(item) = item else { break };
            let message = match item {
                Outgoing::Message(message) => message,
                Outgoing::Close { code, reason } => {
                    self.control.close(code, &reason).await;
                    return Ok(());
                }
            };
            let limits = self.control.limits;
            let (message, frame) = match encode(&message, limits) {
                Ok(frame) => (message, frame),
                Err(error) => match unsendable(message, &error) {
                    Some(instead) => {
                        let frame = encode(&instead, limits)?;
                        (instead, frame)
                    }
                    None => continue,
                },
            };
            let (request, last) = match &message {
                WorkerMessage::ResponseChunk(chunk) => (Some(&chunk.request_id), false),
                WorkerMessage::ResponseComplete(complete) => (Some(&complete.request_id), true),
                WorkerMessage::Error(error) => (error.request_id.as_ref(), true),
                _ => (None, false),
            };
            let Some(request) = request else {
                self.control.write(frame).await?;
                continue;
            };
            let Some(send) = streams.get_mut(request) else {
                continue; // the relay cancelled it: nothing more to say about it
            };
            let written = write_frame(send, frame).await;
            if (last || written.is_err())
                && let Some(send) = streams.remove(request)
            {
                self.control.finish(send);
            }
        }
        self.control.close(close_code::NORMAL, "").await;
        Ok(())
    }
}

impl<M: Send + 'static> LinkReader<M> for QuicReader<M> {
    fn next(&mut self) -> impl std::future::Future<Output = Option<Result<M, LinkError>>> + Send {
        QuicReader::next(self)
    }

    fn close_frame(&self) -> Option<(u16, String)> {
        self.close_frame.clone()
    }
}

impl LinkWriter<ServerMessage> for RelayWriter {
    fn run(
        self,
        queue: mpsc::UnboundedReceiver<Outgoing<ServerMessage>>,
        unsendable: impl FnMut(ServerMessage, &LinkError) -> Option<ServerMessage> + Send,
    ) -> impl std::future::Future<Output = Result<(), LinkError>> + Send {
        RelayWriter::run(self, queue, unsendable)
    }
}

impl LinkWriter<WorkerMessage> for WorkerWriter {
    fn run(
        self,
        queue: mpsc::UnboundedReceiver<Outgoing<WorkerMessage>>,
        unsendable: impl FnMut(WorkerMessage, &LinkError) -> Option<WorkerMessage> + Send,
    ) -> impl std::future::Future<Output = Result<(), LinkError>> + Send {
        WorkerWriter::run(self, queue, unsendable)
    }
}

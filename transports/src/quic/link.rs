//! The two halves of a QUIC link, on the relay's side and on the worker's.
//!
//! Every stream has a task of its own that writes its frames and reads the
//! peer's, so a stream held back by flow control or loss holds back nothing
//! else: not the other requests, and not the control stream with its
//! heartbeats. A side's writer only sorts messages to those tasks. Decoded
//! messages from every stream meet in one channel, which the reader drains.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use modelrelay_core::WireRequestId;
use modelrelay_core::session::{CHUNK_COST_OVERHEAD, DEFAULT_LINK_WRITE_WINDOW};
use modelrelay_core::wire::{
    Cancel, CancelReason, FrameLimits, INITIAL_WINDOW, LinkFlow, ServerMessage, WindowUpdate,
    WireMessage, WireVersion, WorkerMessage,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::debug;

use super::{read_frame, write_frame};
use crate::{LinkError, LinkReader, LinkWriter, Outgoing, ReadLimit, close_code, low_water};

/// How long a closing QUIC writer waits for the peer to acknowledge what it sent
/// (quinn drops unsent data when a connection closes).
const UNACKED_SEND_WAIT: Duration = Duration::from_secs(3);

/// After the connection closed, how long the reader waits for each message its
/// streams still hand over (frames that arrived just before the close).
const DRAIN_AFTER_CLOSE: Duration = Duration::from_millis(500);

/// Decoded messages from every stream of a connection waiting for the reader.
/// A stream's task that finds it full waits until half of it is free (see
/// [`low_water`]), and stops reading its stream meanwhile, so quinn's stream
/// window holds the peer back.
const INBOUND_QUEUE: usize = 256;

/// Control-stream frames waiting for its task; the writer waits for room.
const CONTROL_QUEUE: usize = 256;

/// Frames waiting for one of the worker's request streams. The worker reads a
/// backend no further than its read window past what its writer has written
/// (`modelrelay_core::session`), and each chunk costs at least
/// [`CHUNK_COST_OVERHEAD`]: a stream never holds more than the default window's
/// worth of chunks, plus its completion. Full means that pacing failed: the
/// stream is reset and its request failed alone.
const STREAM_QUEUE: usize = (DEFAULT_LINK_WRITE_WINDOW / CHUNK_COST_OVERHEAD) as usize + 2;

/// The code a worker's request stream is reset with when its queue overflowed.
const STREAM_OVERFLOW_RESET: u32 = 8;

/// The error code of a request stream reset by a cancel, for each reason (the
/// `cancel` message on the control stream says the same; this code says it on
/// the stream itself, whichever arrives first).
pub fn reset_code(reason: &CancelReason) -> VarInt {
    VarInt::from_u32(match reason {
        CancelReason::ClientDisconnect => 1,
        CancelReason::Timeout => 2,
        CancelReason::GracefulShutdown => 3,
        CancelReason::WorkerDisconnect => 4,
        CancelReason::RequeueExhausted => 5,
        CancelReason::ServerShutdown => 6,
        CancelReason::Other(_) => 7,
    })
}

/// The cancel reason a request stream's reset code stands for.
pub fn reset_reason(code: VarInt) -> CancelReason {
    match code.into_inner() {
        2 => CancelReason::Timeout,
        3 => CancelReason::GracefulShutdown,
        4 => CancelReason::WorkerDisconnect,
        5 => CancelReason::RequeueExhausted,
        6 => CancelReason::ServerShutdown,
        7 => CancelReason::Other("cancelled".into()),
        _ => CancelReason::ClientDisconnect,
    }
}

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

type Inbound<M> = low_water::Sender<Result<M, LinkError>>;

/// A message's report to its writer's `written` callback, made once its frame is written.
type Report = Box<dyn FnOnce() + Send>;

/// The report of `message`: `written` called with it.
fn report_of<M: Send + 'static>(
    written: &(impl Fn(&M) + Clone + Send + 'static),
    message: M,
) -> Report {
    let written = written.clone();
    Box::new(move || written(&message))
}

/// The receiving half: messages from every stream of the connection.
pub struct QuicReader<M> {
    connection: Connection,
    inbound: low_water::Receiver<Result<M, LinkError>>,
    close_frame: Option<(u16, String)>,
    closing: bool,
    done: bool,
    _open: Arc<CloseOnDrop>,
}

impl<M> QuicReader<M> {
    fn new(
        connection: Connection,
        inbound: low_water::Receiver<Result<M, LinkError>>,
        open: Arc<CloseOnDrop>,
    ) -> Self {
        Self {
            connection,
            inbound,
            close_frame: None,
            closing: false,
            done: false,
            _open: open,
        }
    }

    /// The next message from any stream; `None` once the connection is closed
    /// and every stream handed over what it had.
    pub async fn next(&mut self) -> Option<Result<M, LinkError>> {
        if self.done {
            return None;
        }
        if !self.closing {
            tokio::select! {
                biased;
                message = self.inbound.recv() => {
                    if message.is_some() {
                        return message;
                    }
                }
                _ = self.connection.closed() => self.closing = true,
            }
        }
        if self.closing {
            // The stream tasks end with the connection; what they still hold counts.
            if let Ok(Some(message)) =
                tokio::time::timeout(DRAIN_AFTER_CLOSE, self.inbound.recv()).await
            {
                return Some(message);
            }
        }
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

/// A message from a writer's queue, encoded, with the report to make once it is written.
struct Encoded<M> {
    message: M,
    frame: Bytes,
    report: Report,
}

/// `message` encoded; or, when it cannot travel, what `unsendable` gives instead
/// (if anything: `message` is reported written, as refused, first).
fn encode_or_instead<M: WireMessage + Clone + Send + 'static>(
    message: M,
    limits: FrameLimits,
    unsendable: &mut impl FnMut(M, &LinkError) -> Option<M>,
    written: &(impl Fn(&M) + Clone + Send + 'static),
) -> Result<Option<Encoded<M>>, LinkError> {
    match encode(&message, limits) {
        Ok(frame) => Ok(Some(Encoded {
            report: report_of(written, message.clone()),
            message,
            frame,
        })),
        Err(error) => {
            written(&message);
            match unsendable(message, &error) {
                Some(instead) => {
                    let frame = encode(&instead, limits)?;
                    Ok(Some(Encoded {
                        message: instead,
                        frame,
                        // Not from the queue: nothing to report.
                        report: Box::new(|| {}),
                    }))
                }
                None => Ok(None),
            }
        }
    }
}

fn decode<M: WireMessage>(frame: &Bytes, limits: FrameLimits) -> Result<M, LinkError> {
    Ok(WireVersion::V2.decode(frame, limits)?)
}

/// When a stream's reader may read its next frame.
trait Pace<M>: Send {
    /// Resolves once the next frame may be read.
    fn ready(&mut self) -> impl Future<Output = ()> + Send;
    /// Counts a message read.
    fn read(&mut self, message: &M);
}

/// A stream read as fast as its frames arrive (control streams, the worker's side).
struct Unpaced;

impl<M> Pace<M> for Unpaced {
    async fn ready(&mut self) {}
    fn read(&mut self, _: &M) {}
}

/// A request stream on the relay, read only while its answer has window: the
/// payload bytes of the `response_chunk`s read stay below what the relay granted
/// (`window_update`s routed here instead of crossing the link). While it waits,
/// QUIC's stream window fills and pushes back on the worker's writes for this
/// request alone.
struct AnswerWindow {
    granted: watch::Receiver<u64>,
    received: u64,
}

impl Pace<WorkerMessage> for AnswerWindow {
    async fn ready(&mut self) {
        let received = self.received;
        // An error means the writer is gone (the link is closing, or the request
        // was cancelled): read on, so that the stream's end or the connection's
        // close ends this task rather than leaving it waiting for ever.
        let _ = self.granted.wait_for(|granted| received < *granted).await;
    }

    fn read(&mut self, message: &WorkerMessage) {
        if let WorkerMessage::ResponseChunk(chunk) = message {
            let len = u64::try_from(chunk.chunk.len()).unwrap_or(u64::MAX);
            self.received = self.received.saturating_add(len);
        }
    }
}

/// Forwards the messages of one stream until it ends: `Ok` at a clean end,
/// `Err` with the reset code if the peer reset it, `Err(None)` otherwise.
/// Malformed frames are passed on as errors. Each frame is read once `pace` allows.
async fn forward<M: WireMessage + Send>(
    recv: &mut RecvStream,
    reads: &ReadLimit,
    inbound: &Inbound<M>,
    pace: &mut impl Pace<M>,
) -> Result<(), Option<VarInt>> {
    loop {
        pace.ready().await;
        match read_frame(recv, reads).await {
            Ok(Some(frame)) => {
                let message = decode(&frame, reads.get());
                if let Ok(message) = &message {
                    pace.read(message);
                }
                let malformed = message.is_err();
                if inbound.send(message).await.is_err() || malformed {
                    return Err(None);
                }
            }
            Ok(None) => return Ok(()),
            Err(error) if error.is_protocol_violation() => {
                let _ = inbound.send(Err(error)).await;
                return Err(None);
            }
            Err(error) => {
                debug!(%error, "QUIC stream ended");
                return Err(reset_of(&error));
            }
        }
    }
}

fn reset_of(error: &LinkError) -> Option<VarInt> {
    match error {
        LinkError::QuicRead(quinn::ReadExactError::ReadError(quinn::ReadError::Reset(code))) => {
            Some(*code)
        }
        _ => None,
    }
}

/// The control stream's task: writes its frames in order, reporting each once
/// written; when its queue closes, finishes the stream and waits for the peer to
/// acknowledge it.
async fn write_control(
    mut send: SendStream,
    mut frames: mpsc::Receiver<(Bytes, Report)>,
) -> Result<(), LinkError> {
    while let Some((frame, report)) = frames.recv().await {
        write_frame(&mut send, frame).await?;
        report();
    }
    let _ = send.finish();
    let _ = send.stopped().await;
    Ok(())
}

/// What both sides' writers share: the connection, its control stream's task.
struct Control {
    connection: Connection,
    frames: Option<mpsc::Sender<(Bytes, Report)>>,
    task: JoinHandle<Result<(), LinkError>>,
    limits: FrameLimits,
    _open: Arc<CloseOnDrop>,
}

impl Control {
    fn new(
        connection: Connection,
        send: SendStream,
        limits: FrameLimits,
        open: Arc<CloseOnDrop>,
    ) -> Self {
        let (frames, queue) = mpsc::channel(CONTROL_QUEUE);
        Self {
            connection,
            frames: Some(frames),
            task: tokio::spawn(write_control(send, queue)),
            limits,
            _open: open,
        }
    }

    /// Queues a frame for the control stream, waiting for room.
    async fn send(&self, frame: Bytes, report: Report) {
        if let Some(frames) = &self.frames {
            // A closed queue means the task failed; `failed` reports it.
            let _ = frames.send((frame, report)).await;
        }
    }

    /// Resolves if the control stream's task stops early (its writes failed).
    async fn failed(&mut self) -> LinkError {
        match (&mut self.task).await {
            Ok(Err(error)) => error,
            _ => LinkError::Protocol("the control stream ended".into()),
        }
    }

    /// Closes the connection once the control stream and `streams` were
    /// acknowledged (or [`UNACKED_SEND_WAIT`] passed): quinn drops unsent data when a
    /// connection closes.
    async fn close(mut self, code: u16, reason: &str, streams: Option<&TaskTracker>) {
        self.frames = None;
        let task = &mut self.task;
        let _ = tokio::time::timeout(UNACKED_SEND_WAIT, async {
            let _ = task.await;
            if let Some(streams) = streams {
                streams.close();
                streams.wait().await;
            }
        })
        .await;
        self.connection
            .close(VarInt::from_u32(u32::from(code)), reason.as_bytes());
    }
}

/// What a worker's request stream's task hears from the worker's writer.
struct ToStream {
    /// The frame to write.
    frame: Bytes,
    /// Whether to finish the stream after it.
    last: bool,
    /// Made once the frame is written.
    report: Report,
}

/// A side's request streams by request, each with the token of its task (the
/// same request may come back on a new stream after a refusal) and what its
/// writer holds of it (`S`).
struct StreamTable<S> {
    by_request: HashMap<WireRequestId, (u64, S)>,
}

impl<S> StreamTable<S> {
    fn new() -> Self {
        Self {
            by_request: HashMap::new(),
        }
    }

    fn ended(&mut self, request: &WireRequestId, token: u64) {
        if self
            .by_request
            .get(request)
            .is_some_and(|(current, _)| *current == token)
        {
            self.by_request.remove(request);
        }
    }
}

/// What the relay's writer holds of a request stream's task.
struct RelayStream {
    /// Takes the reset code of a cancel: at most one item, since the writer
    /// removes the stream's entry as it sends it.
    cancel: mpsc::UnboundedSender<VarInt>,
    /// The payload bytes of the answer the relay reads in all (see [`AnswerWindow`]).
    window: watch::Sender<u64>,
}

impl RelayWriter {
    /// A `window_update` for a request: its stream's task may read further. Never
    /// crosses the link: the worker's writes wait on QUIC's stream window instead.
    fn grant(&self, update: &WindowUpdate) {
        if let Some((_, stream)) = self.streams.by_request.get(&update.request_id) {
            stream.window.send_if_modified(|granted| {
                let raised = update.max_bytes > *granted;
                *granted = (*granted).max(update.max_bytes);
                raised
            });
        }
    }
}

/// The relay's halves of a link whose control stream is `(send, recv)`.
pub(super) fn server_side(
    connection: Connection,
    control_send: SendStream,
    mut control_recv: RecvStream,
    (limits, control): (FrameLimits, ReadLimit),
    flow: LinkFlow,
) -> (QuicReader<WorkerMessage>, RelayWriter) {
    let (inbound_tx, inbound) = low_water::channel(INBOUND_QUEUE);
    // Bounded by construction: one item per request stream's task, as it ends.
    let (ended_tx, ended) = mpsc::unbounded_channel();
    // Only the stream tasks keep the channel open: once they are gone after a
    // close, the reader has seen everything.
    let weak_inbound = inbound_tx.downgrade();
    tokio::spawn(async move {
        let _ = forward(&mut control_recv, &control, &inbound_tx, &mut Unpaced).await;
    });
    let open = Arc::new(CloseOnDrop(connection.clone()));
    (
        QuicReader::new(connection.clone(), inbound, Arc::clone(&open)),
        RelayWriter {
            control: Control::new(connection, control_send, limits, open),
            inbound: weak_inbound,
            streams: StreamTable::new(),
            first_window: match flow {
                LinkFlow::Windowed => INITIAL_WINDOW,
                LinkFlow::Unwindowed => u64::MAX,
            },
            next_token: 0,
            ended_tx,
            ended,
        },
    )
}

/// The relay's sending half: a task per request stream, routes cancels to it.
pub struct RelayWriter {
    control: Control,
    inbound: low_water::WeakSender<Result<WorkerMessage, LinkError>>,
    /// Each request stream's task: told the reset code of a cancel, and its answer's window.
    streams: StreamTable<RelayStream>,
    /// Each answer's window before any `window_update` (`u64::MAX`: the link has none).
    first_window: u64,
    next_token: u64,
    ended_tx: mpsc::UnboundedSender<(WireRequestId, u64)>,
    ended: mpsc::UnboundedReceiver<(WireRequestId, u64)>,
}

impl RelayWriter {
    /// Writes the relay's messages: each request on a stream of its own, a cancel
    /// on the control stream and as a reset of its request's stream, everything
    /// else on the control stream. `written` hears of each message as its stream's
    /// task wrote it (see [`LinkWriter::run`]).
    pub async fn run(
        mut self,
        mut queue: mpsc::Receiver<Outgoing<ServerMessage>>,
        mut unsendable: impl FnMut(ServerMessage, &LinkError) -> Option<ServerMessage> + Send,
        written: impl Fn(&ServerMessage) + Clone + Send + 'static,
    ) -> Result<(), LinkError> {
        loop {
            let item = tokio::select! {
                biased;
                Some((request, token)) = self.ended.recv() => {
                    self.streams.ended(&request, token);
                    continue;
                }
                error = self.control.failed() => return Err(error),
                item = queue.recv() => item,
            };
            let message = match item {
                Some(Outgoing::Message(ServerMessage::WindowUpdate(update))) => {
                    self.grant(&update);
                    written(&ServerMessage::WindowUpdate(update));
                    continue;
                }
                Some(Outgoing::Message(message)) => message,
                // QUIC's keep-alives already ask for signs of life.
                Some(Outgoing::Probe) => continue,
                Some(Outgoing::Close { code, reason }) => {
                    self.control.close(code, &reason, None).await;
                    return Ok(());
                }
                None => break,
            };
            let Some(Encoded {
                message,
                frame,
                report,
            }) = encode_or_instead(message, self.control.limits, &mut unsendable, &written)?
            else {
                continue;
            };
            match message {
                ServerMessage::Request(request) => {
                    self.open(request.request_id.clone(), frame, report)
                }
                ServerMessage::Cancel(cancel) => {
                    self.control.send(frame, report).await;
                    if let Some((_, stream)) = self.streams.by_request.remove(&cancel.request_id) {
                        let _ = stream.cancel.send(reset_code(&cancel.reason));
                    }
                }
                _ => self.control.send(frame, report).await,
            }
        }
        self.control.close(close_code::NORMAL, "", None).await;
        Ok(())
    }

    /// Starts the task of a new request stream, which writes `frame` first.
    fn open(&mut self, request: WireRequestId, frame: Bytes, report: Report) {
        let Some(inbound) = self.inbound.upgrade() else {
            return; // the reader is gone: the link is closing
        };
        // Bounded by construction: the writer sends it at most one cancel.
        let (cancel, commands) = mpsc::unbounded_channel();
        let (window, granted) = watch::channel(self.first_window);
        let token = self.next_token;
        self.next_token += 1;
        self.streams
            .by_request
            .insert(request.clone(), (token, RelayStream { cancel, window }));
        let connection = self.control.connection.clone();
        let limits = self.control.limits;
        let ended = self.ended_tx.clone();
        tokio::spawn(async move {
            relay_stream(
                connection,
                frame,
                report,
                (commands, granted),
                inbound,
                limits,
            )
            .await;
            let _ = ended.send((request, token));
        });
    }
}

/// On the relay: one request's stream. Writes the request, forwards the worker's
/// answer, finishes once the worker finished; a cancel resets it.
async fn relay_stream(
    connection: Connection,
    request: Bytes,
    report: Report,
    (mut commands, granted): (mpsc::UnboundedReceiver<VarInt>, watch::Receiver<u64>),
    inbound: Inbound<WorkerMessage>,
    limits: FrameLimits,
) {
    let (mut send, mut recv) = match connection.open_bi().await {
        Ok(stream) => stream,
        Err(error) => {
            debug!(%error, "cannot open a request stream");
            return; // the connection is gone; the reader reports it
        }
    };
    let wrote = write_frame(&mut send, request).await;
    report();
    if let Err(error) = wrote {
        // The request would be lost without a word: end the link, its work is requeued.
        debug!(%error, "a request could not be written; closing the link");
        connection.close(
            VarInt::from_u32(u32::from(close_code::GOING_AWAY)),
            b"a request stream failed",
        );
        return;
    }
    let cancelled = {
        let reads = ReadLimit::fixed(limits);
        let mut window = AnswerWindow {
            granted,
            received: 0,
        };
        let reading = forward(&mut recv, &reads, &inbound, &mut window);
        tokio::pin!(reading);
        let mut commands_open = true;
        loop {
            tokio::select! {
                // The worker's half ended (finished, or reset): so has the request.
                _ = &mut reading => break None,
                command = commands.recv(), if commands_open => match command {
                    Some(code) => break Some(code),
                    // The writer is closing: the connection ends this stream soon.
                    None => commands_open = false,
                },
            }
        }
    };
    match cancelled {
        None => {
            let _ = send.finish();
        }
        Some(code) => {
            // Nothing more to say, nothing more to hear.
            let _ = send.reset(code);
            let _ = recv.stop(code);
        }
    }
}

/// The worker's halves of a link whose control stream is `(send, recv)`.
pub(super) fn worker_side(
    connection: Connection,
    control_send: SendStream,
    mut control_recv: RecvStream,
    limits: FrameLimits,
) -> (QuicReader<ServerMessage>, WorkerWriter) {
    let (inbound_tx, inbound) = low_water::channel(INBOUND_QUEUE);
    // Bounded by construction: two items per request stream (opened, ended).
    let (events_tx, events) = mpsc::unbounded_channel();
    let control_tx = inbound_tx.clone();
    tokio::spawn(async move {
        let reads = ReadLimit::fixed(limits);
        let _ = forward(&mut control_recv, &reads, &control_tx, &mut Unpaced).await;
    });
    let tracker = TaskTracker::new();
    let accepting = connection.clone();
    let streams = tracker.clone();
    tokio::spawn(async move {
        let tokens = Arc::new(AtomicU64::new(0));
        while let Ok((send, recv)) = accepting.accept_bi().await {
            let token = tokens.fetch_add(1, Ordering::Relaxed);
            streams.spawn(worker_stream(
                send,
                recv,
                token,
                limits,
                inbound_tx.clone(),
                events_tx.clone(),
            ));
        }
    });
    let open = Arc::new(CloseOnDrop(connection.clone()));
    (
        QuicReader::new(connection.clone(), inbound, Arc::clone(&open)),
        WorkerWriter {
            control: Control::new(connection, control_send, limits, open),
            events,
            streams: StreamTable::new(),
            tracker,
        },
    )
}

/// What a request stream's task tells the worker's writer.
enum StreamEvent {
    /// A request came on a new stream: its answer goes to `frames`.
    Opened {
        request: WireRequestId,
        token: u64,
        stream: WorkerStream,
    },
    /// The stream is done (answered, cancelled or broken).
    Ended { request: WireRequestId, token: u64 },
}

/// What the worker's writer holds of one request stream.
struct WorkerStream {
    /// Its frames ([`STREAM_QUEUE`] at most).
    frames: mpsc::Sender<ToStream>,
    /// Cancelled to reset the stream at once (its queue overflowed).
    reset: CancellationToken,
}

/// The worker's sending half: answers each request on the stream it came on.
pub struct WorkerWriter {
    control: Control,
    events: mpsc::UnboundedReceiver<StreamEvent>,
    streams: StreamTable<WorkerStream>,
    tracker: TaskTracker,
}

impl WorkerWriter {
    /// Writes the worker's messages: a request's chunks, completion or error on its
    /// stream (finished after the last), everything else on the control stream.
    /// `written` hears of each message once its stream's task wrote it, or once it
    /// was dropped because its stream is gone (see [`LinkWriter::run`]).
    ///
    /// A stream whose queue is full (its request read past its window: a bug) is
    /// reset, and `unsendable` gives the error that goes, on the control stream,
    /// in place of the message that did not fit.
    pub async fn run(
        mut self,
        mut queue: mpsc::Receiver<Outgoing<WorkerMessage>>,
        mut unsendable: impl FnMut(WorkerMessage, &LinkError) -> Option<WorkerMessage> + Send,
        written: impl Fn(&WorkerMessage) + Clone + Send + 'static,
    ) -> Result<(), LinkError> {
        loop {
            let item = tokio::select! {
                biased;
                Some(event) = self.events.recv() => {
                    match event {
                        StreamEvent::Opened { request, token, stream } => {
                            self.streams.by_request.insert(request, (token, stream));
                        }
                        StreamEvent::Ended { request, token } => self.streams.ended(&request, token),
                    }
                    continue;
                }
                error = self.control.failed() => return Err(error),
                item = queue.recv() => item,
            };
            let message = match item {
                Some(Outgoing::Message(message)) => message,
                // QUIC's keep-alives already ask for signs of life.
                Some(Outgoing::Probe) => continue,
                Some(Outgoing::Close { code, reason }) => {
                    self.close(code, &reason).await;
                    return Ok(());
                }
                None => break,
            };
            let Some(Encoded {
                message,
                frame,
                report,
            }) = encode_or_instead(message, self.control.limits, &mut unsendable, &written)?
            else {
                continue;
            };
            let (request, last) = match &message {
                WorkerMessage::ResponseChunk(chunk) => (Some(&chunk.request_id), false),
                WorkerMessage::ResponseComplete(complete) => (Some(&complete.request_id), true),
                WorkerMessage::Error(error) => (error.request_id.as_ref(), true),
                _ => (None, false),
            };
            let Some(request) = request else {
                self.control.send(frame, report).await;
                continue;
            };
            // Borrowed, not cloned, for every chunk but the last: a clone would
            // take the reset token's lock twice per chunk.
            let removed;
            let frames = if last {
                removed = self
                    .streams
                    .by_request
                    .remove(request)
                    .map(|(_, s)| s.frames);
                removed.as_ref()
            } else {
                self.streams.by_request.get(request).map(|(_, s)| &s.frames)
            };
            let Some(frames) = frames else {
                // No stream: the relay cancelled the request; nothing more to say about it.
                report();
                continue;
            };
            match frames.try_send(ToStream {
                frame,
                last,
                report,
            }) {
                Ok(()) => {}
                // The stream's task ended (cancelled, or broken): the frame goes nowhere.
                Err(TrySendError::Closed(dropped)) => (dropped.report)(),
                Err(TrySendError::Full(dropped)) => {
                    (dropped.report)();
                    let request = request.clone();
                    self.overflowed(&request, message, &mut unsendable).await;
                }
            }
        }
        self.close(close_code::NORMAL, "").await;
        Ok(())
    }

    /// A request stream's queue overflowed: the stream is reset, and the error
    /// `unsendable` gives for `message` goes on the control stream.
    async fn overflowed(
        &mut self,
        request: &WireRequestId,
        message: WorkerMessage,
        unsendable: &mut impl FnMut(WorkerMessage, &LinkError) -> Option<WorkerMessage>,
    ) {
        if let Some((_, stream)) = self.streams.by_request.remove(request) {
            stream.reset.cancel();
        }
        let error = LinkError::StreamQueueFull {
            capacity: STREAM_QUEUE,
        };
        if let Some(frame) = unsendable(message, &error)
            .and_then(|instead| encode(&instead, self.control.limits).ok())
        {
            self.control.send(frame, Box::new(|| {})).await;
        }
    }

    /// Lets every stream write what it has and be acknowledged, then closes.
    async fn close(mut self, code: u16, reason: &str) {
        // Dropping their queues tells the stream tasks to finish.
        self.streams.by_request.clear();
        self.control.close(code, reason, Some(&self.tracker)).await;
    }
}

/// What came on a request stream after the request.
enum AfterRequest {
    /// The relay finished its half: the request goes on normally.
    Finished,
    /// The relay cancelled it (a `cancel` frame, or a reset with the reason's code).
    Cancelled(Cancel),
    /// Something that does not belong on a request stream.
    Violation(LinkError),
    /// The connection went.
    Lost,
}

async fn after_request(
    recv: &mut RecvStream,
    limits: FrameLimits,
    request_id: &WireRequestId,
) -> AfterRequest {
    match read_frame(recv, &limits).await {
        Ok(None) => AfterRequest::Finished,
        Ok(Some(frame)) => match decode::<ServerMessage>(&frame, limits) {
            Ok(ServerMessage::Cancel(cancel)) if cancel.request_id == *request_id => {
                AfterRequest::Cancelled(cancel)
            }
            Ok(_) => AfterRequest::Violation(LinkError::Protocol(
                "a request stream carries only its request and its cancel".into(),
            )),
            Err(error) => AfterRequest::Violation(error),
        },
        Err(error) if error.is_protocol_violation() => AfterRequest::Violation(error),
        Err(error) => match reset_of(&error) {
            Some(code) => AfterRequest::Cancelled(Cancel {
                request_id: request_id.clone(),
                reason: reset_reason(code),
            }),
            None => AfterRequest::Lost,
        },
    }
}

/// On the worker: one request stream the relay opened. Hands the request to the
/// reader, writes the answer the writer routes here, and turns a cancel or a
/// reset into a `cancel` for the session (resetting its own half).
async fn worker_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    token: u64,
    limits: FrameLimits,
    inbound: Inbound<ServerMessage>,
    events: mpsc::UnboundedSender<StreamEvent>,
) {
    let request = match read_frame(&mut recv, &limits).await {
        Ok(Some(frame)) => decode::<ServerMessage>(&frame, limits),
        // Reset before the request arrived: it was cancelled; nothing to run.
        Ok(None) | Err(_) => return,
    };
    let request_id = match &request {
        Ok(ServerMessage::Request(frame)) => frame.request_id.clone(),
        Ok(_) => {
            let _ = inbound
                .send(Err(LinkError::Protocol(
                    "a request stream must start with a request".into(),
                )))
                .await;
            return;
        }
        Err(_) => {
            let _ = inbound.send(request).await;
            return;
        }
    };
    let (frames_tx, mut frames) = mpsc::channel(STREAM_QUEUE);
    let reset = CancellationToken::new();
    // The writer hears of the stream before the session hears of the request.
    let opened = StreamEvent::Opened {
        request: request_id.clone(),
        token,
        stream: WorkerStream {
            frames: frames_tx,
            reset: reset.clone(),
        },
    };
    if events.send(opened).is_err() || inbound.send(request).await.is_err() {
        return;
    }
    let reading = after_request(&mut recv, limits, &request_id);
    tokio::pin!(reading);
    // Made once: a fresh `cancelled()` per frame would register and drop a
    // waiter on the token's lock for every chunk.
    let reset_asked = reset.cancelled();
    tokio::pin!(reset_asked);
    let mut relay_done = false;
    loop {
        tokio::select! {
            biased;
            () = &mut reset_asked => {
                let _ = send.reset(VarInt::from_u32(STREAM_OVERFLOW_RESET));
                break;
            }
            after = &mut reading, if !relay_done => match after {
                AfterRequest::Finished => relay_done = true,
                AfterRequest::Cancelled(cancel) => {
                    let _ = send.reset(reset_code(&cancel.reason));
                    let _ = inbound.send(Ok(ServerMessage::Cancel(cancel))).await;
                    break;
                }
                AfterRequest::Violation(error) => {
                    let _ = inbound.send(Err(error)).await;
                    break;
                }
                AfterRequest::Lost => break,
            },
            frame = frames.recv() => match frame {
                Some(ToStream { frame, last, report }) => {
                    let wrote = write_frame(&mut send, frame).await;
                    report();
                    if wrote.is_err() {
                        break; // the relay stopped the stream: it cancelled
                    }
                    if last {
                        let _ = send.finish();
                        let _ = events.send(StreamEvent::Ended { request: request_id.clone(), token });
                        // Stay until the answer is acknowledged (a closing link waits for this).
                        let _ = send.stopped().await;
                        return;
                    }
                }
                // The writer is closing.
                None => {
                    let _ = send.finish();
                    break;
                }
            },
        }
    }
    let _ = events.send(StreamEvent::Ended {
        request: request_id.clone(),
        token,
    });
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
        queue: mpsc::Receiver<Outgoing<ServerMessage>>,
        unsendable: impl FnMut(ServerMessage, &LinkError) -> Option<ServerMessage> + Send,
        written: impl Fn(&ServerMessage) + Clone + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(), LinkError>> + Send {
        RelayWriter::run(self, queue, unsendable, written)
    }
}

impl LinkWriter<WorkerMessage> for WorkerWriter {
    fn run(
        self,
        queue: mpsc::Receiver<Outgoing<WorkerMessage>>,
        unsendable: impl FnMut(WorkerMessage, &LinkError) -> Option<WorkerMessage> + Send,
        written: impl Fn(&WorkerMessage) + Clone + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(), LinkError>> + Send {
        WorkerWriter::run(self, queue, unsendable, written)
    }
}

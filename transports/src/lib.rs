//! Links that carry ModelRelay protocol frames between the server and its workers.
//!
//! A link moves whole protocol messages: its reading half ([`LinkReader`])
//! decodes frames into [`modelrelay_core::wire`] messages, its writing half
//! ([`LinkWriter`]) encodes them. Two links exist: WebSocket (feature `ws`),
//! generic over the byte stream so it runs over TCP, TLS or a simulated
//! network, and QUIC (feature `quic`), one stream per request, generic over
//! the UDP socket through quinn's endpoint.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use modelrelay_core::wire::{DecodeError, EncodeError, FrameLimits, WireVersion};
use tokio::sync::mpsc;

pub mod low_water;
#[cfg(feature = "quic")]
pub mod quic;
pub mod tls;
#[cfg(feature = "ws")]
pub mod ws;

/// How long one side of a link, of either kind, waits for the other once it is done
/// (a close answered, last frames written); a dead link never answers, so this
/// bounds every close.
pub const LINK_CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Standard WebSocket close codes the relay uses (QUIC closes carry the same numbers).
pub mod close_code {
    /// The link ended normally (a drained worker).
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (shutdown, heartbeat loss).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer is not allowed (wrong secret, unknown provider).
    pub const POLICY_VIOLATION: u16 = 1008;
}

/// The frame limit a link's reader enforces, shared with whoever may raise it.
///
/// The relay reads a worker's frames at the before-register limit until the
/// worker's `register` is accepted, then raises the limit to the configured
/// one; a clone held elsewhere raises the reader's limit at once. The limit
/// only ever grows.
#[derive(Clone, Debug)]
pub struct ReadLimit {
    current: Arc<AtomicUsize>,
    raised: usize,
}

impl ReadLimit {
    /// A limit that stays `limits`.
    pub fn fixed(limits: FrameLimits) -> Self {
        Self::until_raised(limits, limits)
    }

    /// A limit that is `before` until [`ReadLimit::raise`], then `after` (if larger).
    pub fn until_raised(before: FrameLimits, after: FrameLimits) -> Self {
        Self {
            current: Arc::new(AtomicUsize::new(before.max_frame_bytes)),
            raised: after.max_frame_bytes.max(before.max_frame_bytes),
        }
    }

    /// The limit now.
    pub fn get(&self) -> FrameLimits {
        FrameLimits {
            max_frame_bytes: self.current.load(Ordering::Acquire),
        }
    }

    /// Raises the limit to its `after` value, for this handle and every clone.
    pub fn raise(&self) {
        self.current.fetch_max(self.raised, Ordering::AcqRel);
    }

    /// Whether the limit has reached its `after` value.
    pub fn is_raised(&self) -> bool {
        self.current.load(Ordering::Acquire) >= self.raised
    }
}

/// Why a link failed, or why one message could not travel on it.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The WebSocket itself failed (I/O, framing, size limit).
    #[cfg(feature = "ws")]
    #[error("websocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The QUIC connection failed or was closed.
    #[cfg(feature = "quic")]
    #[error("quic: {0}")]
    Quic(#[from] quinn::ConnectionError),
    /// Writing to a QUIC stream failed.
    #[cfg(feature = "quic")]
    #[error("quic stream: {0}")]
    QuicWrite(#[from] quinn::WriteError),
    /// Reading from a QUIC stream failed.
    #[cfg(feature = "quic")]
    #[error("quic stream: {0}")]
    QuicRead(#[from] quinn::ReadExactError),
    /// A frame did not decode as a protocol message.
    #[error("{0}")]
    Decode(#[from] DecodeError),
    /// A message could not be encoded (a non-UTF-8 payload on v1).
    #[error("{0}")]
    Encode(#[from] EncodeError),
    /// A frame larger than the link's frame limit (to send, or announced by the peer).
    #[error("a {size}-byte frame exceeds the link's limit of {limit} bytes")]
    FrameTooLarge {
        /// Size of the frame.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A text frame on a v2 link or a binary frame on a v1 link.
    #[error("{found} frame on a {wire:?} link")]
    WrongFrameType {
        /// `text` or `binary`.
        found: &'static str,
        /// The link's encoding.
        wire: WireVersion,
    },
    /// A request stream's queue was full: its request read past its window (a bug
    /// in the pacing); that request fails alone.
    #[error("a request stream's queue of {capacity} frames is full")]
    StreamQueueFull {
        /// How many frames the queue holds.
        capacity: usize,
    },
    /// The peer broke the link's own rules (no hello, a stream it should not open).
    #[error("link protocol: {0}")]
    Protocol(String),
}

impl LinkError {
    /// Whether a frame was over the link's limit.
    pub fn is_too_large(&self) -> bool {
        matches!(
            self,
            Self::FrameTooLarge { .. } | Self::Decode(DecodeError::FrameTooLarge { .. })
        )
    }

    /// Whether the peer sent something malformed (rather than the link breaking).
    pub fn is_protocol_violation(&self) -> bool {
        matches!(
            self,
            Self::Decode(_)
                | Self::WrongFrameType { .. }
                | Self::FrameTooLarge { .. }
                | Self::Protocol(_)
        )
    }
}

/// Sends `value` on a bounded channel, waiting only while it is full.
///
/// tokio's `Sender::send` spends the task's cooperative budget on every call
/// and yields once it is spent, even with room in the channel: a link reader
/// that sent each frame that way handed its consumer a few frames per wake-up
/// instead of all it had read, and the relay wrote to its clients in smaller
/// pieces (a third more CPU per request). `try_send` first keeps the batches.
pub async fn send_or_wait<T>(
    sender: &mpsc::Sender<T>,
    value: T,
) -> Result<(), mpsc::error::SendError<T>> {
    match sender.try_send(value) {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(value)) => sender.send(value).await,
        Err(mpsc::error::TrySendError::Closed(value)) => Err(mpsc::error::SendError(value)),
    }
}

/// What a link's writer is asked to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outgoing<M> {
    /// Send a message.
    Message(M),
    /// Close the link with a code and a reason.
    Close {
        /// WebSocket-style close code.
        code: u16,
        /// Why, in words.
        reason: String,
    },
    /// Ask the peer for a sign of life: a WebSocket ping, which any WebSocket
    /// peer answers with a pong. QUIC links ignore it (their transport's
    /// keep-alives already ask).
    Probe,
}

/// What a link's reader hears: a message, or a sign of life that carries none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Heard<M> {
    /// A protocol message.
    Message(M),
    /// A WebSocket ping or pong: the peer is there, and has nothing to say.
    SignOfLife,
}

/// The receiving half of a link: messages of type `M` as they arrive.
pub trait LinkReader<M>: Send + 'static {
    /// The next message; `None` once the link is closed.
    fn next(&mut self) -> impl Future<Output = Option<Result<M, LinkError>>> + Send;

    /// The next message or sign of life; `None` once the link is closed. Links
    /// whose transport keeps its own liveness (QUIC) hear messages only.
    fn next_heard(&mut self) -> impl Future<Output = Option<Result<Heard<M>, LinkError>>> + Send {
        async { self.next().await.map(|next| next.map(Heard::Message)) }
    }

    /// The code and reason the peer closed with, once [`LinkReader::next`] returned `None`.
    fn close_frame(&self) -> Option<(u16, String)>;
}

/// The sending half of a link: writes messages of type `M` from a queue.
pub trait LinkWriter<M>: Send + 'static {
    /// Writes what arrives on `queue` until it closes or a close is asked for.
    ///
    /// A message that cannot be sent on this link (it does not encode, or its
    /// frame is over the limit) does not end the link: `unsendable` hears of it
    /// and may give a message to send in its place (an error about that one request).
    ///
    /// `written` hears of each message taken from `queue` once, after the writer
    /// is done with it: its frame handed to the link (fed into the WebSocket
    /// sink, or written to its QUIC stream, which may be in a task of that
    /// stream's own, hence `Clone`), refused as unsendable, or dropped because
    /// its request's stream is gone. It must not block. A message still queued
    /// when the link ends is never reported.
    fn run(
        self,
        queue: mpsc::Receiver<Outgoing<M>>,
        unsendable: impl FnMut(M, &LinkError) -> Option<M> + Send,
        written: impl Fn(&M) + Clone + Send + 'static,
    ) -> impl Future<Output = Result<(), LinkError>> + Send;
}

//! Reading and writing protocol messages on a WebSocket.

use std::marker::PhantomData;

use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use modelrelay_core::wire::{FrameLimits, WireMessage, WireVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};

use crate::{Heard, LinkError, LinkReader, LinkWriter, Outgoing, ReadLimit};

/// The receiving half: decodes each message as it arrives.
pub struct WsReader<S, M> {
    stream: SplitStream<WebSocketStream<S>>,
    wire: WireVersion,
    reads: ReadLimit,
    closed: bool,
    close_frame: Option<(u16, String)>,
    _message: PhantomData<fn() -> M>,
}

/// The sending half: encodes messages; frames leave on [`WsWriter::flush`].
pub struct WsWriter<S, M> {
    sink: SplitSink<WebSocketStream<S>, Message>,
    wire: WireVersion,
    limits: FrameLimits,
    _message: PhantomData<fn(M)>,
}

/// Splits a WebSocket into a reader of `In` messages and a writer of `Out` messages.
pub fn split<S, In, Out>(
    socket: WebSocketStream<S>,
    wire: WireVersion,
    limits: FrameLimits,
) -> (WsReader<S, In>, WsWriter<S, Out>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    split_limited(socket, wire, limits, ReadLimit::fixed(limits))
}

/// [`split`], with the reader enforcing `reads` (which may be raised later).
///
/// The WebSocket itself must be configured for the largest limit `reads`
/// may reach: tungstenite's own limit is fixed when the socket is made, so a
/// message up to that size is received whole and then refused by the reader
/// before it is decoded.
pub fn split_limited<S, In, Out>(
    socket: WebSocketStream<S>,
    wire: WireVersion,
    limits: FrameLimits,
    reads: ReadLimit,
) -> (WsReader<S, In>, WsWriter<S, Out>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let (sink, stream) = socket.split();
    (
        WsReader {
            stream,
            wire,
            reads,
            closed: false,
            close_frame: None,
            _message: PhantomData,
        },
        WsWriter {
            sink,
            wire,
            limits,
            _message: PhantomData,
        },
    )
}

impl<S, M> WsReader<S, M>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: WireMessage,
{
    /// The next message; `None` once the peer closed the link or it failed.
    pub async fn next(&mut self) -> Option<Result<M, LinkError>> {
        loop {
            match self.next_heard().await? {
                Ok(Heard::Message(message)) => return Some(Ok(message)),
                Ok(Heard::SignOfLife) => {}
                Err(error) => return Some(Err(error)),
            }
        }
    }

    /// The next message, or a ping or pong as a sign of life; `None` once the
    /// peer closed the link or it failed.
    pub async fn next_heard(&mut self) -> Option<Result<Heard<M>, LinkError>> {
        while !self.closed {
            let message = match self.stream.next().await {
                None => break,
                Some(Err(error)) => {
                    self.closed = true;
                    if let Some(exceeded) = super::budget::budget_exceeded(&error) {
                        return Some(Err(LinkError::Protocol(exceeded.to_string())));
                    }
                    return Some(Err(error.into()));
                }
                Some(Ok(message)) => message,
            };
            let frame: Bytes = match (message, self.wire) {
                (Message::Text(text), WireVersion::V1) => text.into(),
                (Message::Binary(bytes), WireVersion::V2) => bytes,
                (Message::Text(_), wire) => {
                    return Some(Err(LinkError::WrongFrameType {
                        found: "text",
                        wire,
                    }));
                }
                (Message::Binary(_), wire) => {
                    return Some(Err(LinkError::WrongFrameType {
                        found: "binary",
                        wire,
                    }));
                }
                (Message::Close(frame), _) => {
                    self.close_frame = frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                    break;
                }
                // Pings are answered by tungstenite itself; both are signs of life.
                (Message::Ping(_) | Message::Pong(_), _) => return Some(Ok(Heard::SignOfLife)),
                // Raw frames are never handed out when reading.
                (Message::Frame(_), _) => continue,
            };
            return Some(
                self.wire
                    .decode(&frame, self.reads.get())
                    .map(Heard::Message)
                    .map_err(LinkError::from),
            );
        }
        self.closed = true;
        None
    }

    /// The code and reason of the peer's close frame, once [`WsReader::next`] returned `None`.
    pub fn close_frame(&self) -> Option<(u16, String)> {
        self.close_frame.clone()
    }
}

impl<S, M> WsWriter<S, M>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: WireMessage,
{
    /// Queues a message; it goes out at the next [`WsWriter::flush`].
    pub async fn feed(&mut self, message: &M) -> Result<(), LinkError> {
        let frame = self.encode(message)?;
        self.sink.feed(frame).await?;
        Ok(())
    }

    /// The WebSocket message for `message`, or why it cannot be sent on this link.
    fn encode(&self, message: &M) -> Result<Message, LinkError> {
        let frame = self.wire.encode(message)?;
        if frame.len() > self.limits.max_frame_bytes {
            return Err(LinkError::FrameTooLarge {
                size: frame.len(),
                limit: self.limits.max_frame_bytes,
            });
        }
        Ok(match self.wire {
            WireVersion::V1 => Message::Text(Utf8Bytes::try_from(frame).map_err(|_| {
                // serde_json only writes UTF-8; reaching this is a bug, reported as an encoding failure.
                LinkError::WebSocket(tungstenite::Error::Utf8(
                    "encoder produced invalid UTF-8".into(),
                ))
            })?),
            WireVersion::V2 => Message::Binary(frame),
        })
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> Result<(), LinkError> {
        self.sink.flush().await?;
        Ok(())
    }

    /// Sends a close frame with `code` and `reason`, then closes.
    pub async fn close(&mut self, code: u16, reason: &str) -> Result<(), LinkError> {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: Utf8Bytes::from(truncate_reason(reason)),
        };
        self.sink.send(Message::Close(Some(frame))).await?;
        self.sink.close().await?;
        Ok(())
    }
}

impl<S, M> WsWriter<S, M>
where
    S: AsyncRead + AsyncWrite + Unpin,
    M: WireMessage,
{
    /// Writes what arrives on `queue` until it closes or a close is asked for;
    /// frames are flushed whenever the queue runs empty, so bursts share one write.
    ///
    /// A message that cannot be sent on this link (it does not encode, or its frame
    /// is over the limit) does not end the link: `unsendable` hears of it and may
    /// give a message to send in its place (an error about that one request).
    ///
    /// `written` hears of each message from `queue` once its frame was fed into
    /// the sink, or once it was refused as unsendable (before `unsendable` takes it).
    pub async fn run(
        mut self,
        mut queue: mpsc::Receiver<Outgoing<M>>,
        mut unsendable: impl FnMut(M, &LinkError) -> Option<M>,
        written: impl Fn(&M),
    ) -> Result<(), LinkError> {
        while let Some(item) = queue.recv().await {
            match item {
                Outgoing::Message(message) => {
                    match self.encode(&message) {
                        Ok(frame) => {
                            self.sink.feed(frame).await?;
                            written(&message);
                        }
                        Err(error) => {
                            written(&message);
                            let instead = unsendable(message, &error)
                                .and_then(|instead| self.encode(&instead).ok());
                            if let Some(frame) = instead {
                                self.sink.feed(frame).await?;
                            }
                        }
                    }
                    if queue.is_empty() {
                        self.flush().await?;
                    }
                }
                Outgoing::Probe => {
                    self.sink.feed(Message::Ping(Bytes::new())).await?;
                    if queue.is_empty() {
                        self.flush().await?;
                    }
                }
                Outgoing::Close { code, reason } => return self.close(code, &reason).await,
            }
        }
        // Nothing more to send: end the link cleanly (this also answers a close from the peer).
        self.sink.close().await?;
        Ok(())
    }
}

/// Close reasons must fit a control frame (123 bytes).
fn truncate_reason(reason: &str) -> String {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    reason[..end].to_owned()
}

impl<S, M> LinkReader<M> for WsReader<S, M>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: WireMessage + Send + 'static,
{
    fn next(&mut self) -> impl std::future::Future<Output = Option<Result<M, LinkError>>> + Send {
        WsReader::next(self)
    }

    fn next_heard(
        &mut self,
    ) -> impl std::future::Future<Output = Option<Result<Heard<M>, LinkError>>> + Send {
        WsReader::next_heard(self)
    }

    fn close_frame(&self) -> Option<(u16, String)> {
        WsReader::close_frame(self)
    }
}

impl<S, M> LinkWriter<M> for WsWriter<S, M>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    M: WireMessage + Send + Sync + 'static,
{
    fn run(
        self,
        queue: mpsc::Receiver<Outgoing<M>>,
        unsendable: impl FnMut(M, &LinkError) -> Option<M> + Send,
        written: impl Fn(&M) + Clone + Send + 'static,
    ) -> impl std::future::Future<Output = Result<(), LinkError>> + Send {
        WsWriter::run(self, queue, unsendable, written)
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll};

    use bytes::Bytes;
    use modelrelay_core::WireRequestId;
    use modelrelay_core::wire::{ResponseChunk, ServerMessage, WorkerMessage};
    use tokio::io::{AsyncRead, AsyncWrite, DuplexStream, ReadBuf};
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    /// A stream that counts the writes made to it.
    struct Counted {
        inner: DuplexStream,
        writes: Arc<AtomicUsize>,
    }

    impl AsyncRead for Counted {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Counted {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            self.writes.fetch_add(1, Ordering::Relaxed);
            Pin::new(&mut self.inner).poll_write(cx, buf)
        }

        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }

        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    #[tokio::test]
    async fn a_probe_is_answered_by_any_websocket_peer_and_heard_as_a_sign_of_life() {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let config = Some(super::super::config(FrameLimits::default()));
        let ours = WebSocketStream::from_raw_socket(near, Role::Client, config).await;
        // The peer is a bare WebSocket that knows nothing of probes: it only reads.
        let mut peer = WebSocketStream::from_raw_socket(far, Role::Server, config).await;
        let (mut reader, writer) =
            split::<_, ServerMessage, WorkerMessage>(ours, WireVersion::V1, FrameLimits::default());
        let (queue, outgoing) = mpsc::channel(4);
        queue.try_send(Outgoing::Probe).unwrap();
        let writing = tokio::spawn(writer.run(outgoing, |_, _| None, |_: &WorkerMessage| {}));
        let pings = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&pings);
        let peer = tokio::spawn(async move {
            while let Some(Ok(message)) = peer.next().await {
                if message.is_ping() {
                    seen.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
        assert!(
            matches!(reader.next_heard().await, Some(Ok(Heard::SignOfLife))),
            "the pong is heard"
        );
        assert_eq!(pings.load(Ordering::Relaxed), 1, "the peer saw one ping");
        peer.abort();
        drop(queue);
        writing.abort();
    }

    #[tokio::test]
    async fn a_burst_of_frames_leaves_in_a_few_writes() {
        let (near, far) = tokio::io::duplex(1 << 20);
        let writes = Arc::new(AtomicUsize::new(0));
        let stream = Counted {
            inner: near,
            writes: Arc::clone(&writes),
        };
        let socket = WebSocketStream::from_raw_socket(
            stream,
            Role::Client,
            Some(super::super::config(FrameLimits::default())),
        )
        .await;
        let (_reader, writer) = split::<_, WorkerMessage, WorkerMessage>(
            socket,
            WireVersion::V2,
            FrameLimits::default(),
        );
        let (queue, outgoing) = mpsc::channel(100);
        for n in 0..100 {
            let chunk = WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: WireRequestId::Number(n),
                chunk: Bytes::from_static(b"data: {\"choices\":[]}\n\n"),
            });
            queue.try_send(Outgoing::Message(chunk)).unwrap();
        }
        drop(queue);
        let reported = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&reported);
        writer
            .run(
                outgoing,
                |_, _| None,
                move |_: &WorkerMessage| {
                    counter.fetch_add(1, Ordering::Relaxed);
                },
            )
            .await
            .unwrap();
        // 100 frames queued at once: they share writes (one per flush, plus the close).
        let writes = writes.load(Ordering::Relaxed);
        assert!(writes <= 5, "{writes} writes for one burst of 100 frames");
        assert_eq!(reported.load(Ordering::Relaxed), 100);
        drop(far);
    }

    #[tokio::test]
    async fn each_message_is_reported_written_once_sent_or_refused() {
        let (near, _far) = tokio::io::duplex(1 << 20);
        let socket = WebSocketStream::from_raw_socket(
            near,
            Role::Client,
            Some(super::super::config(FrameLimits::default())),
        )
        .await;
        let limits = FrameLimits {
            max_frame_bytes: 256,
        };
        let (_reader, writer) =
            split::<_, WorkerMessage, WorkerMessage>(socket, WireVersion::V2, limits);
        let chunk = |n: u64, bytes: usize| {
            Outgoing::Message(WorkerMessage::ResponseChunk(ResponseChunk {
                request_id: WireRequestId::Number(n),
                chunk: Bytes::from(vec![b'x'; bytes]),
            }))
        };
        let (queue, outgoing) = mpsc::channel(4);
        queue.try_send(chunk(1, 10)).unwrap();
        queue.try_send(chunk(2, 1000)).unwrap();
        queue.try_send(chunk(3, 20)).unwrap();
        drop(queue);
        let reported = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&reported);
        let mut refused = Vec::new();
        writer
            .run(
                outgoing,
                |message, _| {
                    refused.push(message);
                    None
                },
                move |message: &WorkerMessage| {
                    if let WorkerMessage::ResponseChunk(chunk) = message {
                        seen.lock().unwrap().push(chunk.request_id.clone());
                    }
                },
            )
            .await
            .unwrap();
        assert_eq!(refused.len(), 1, "the 1000-byte chunk is over the limit");
        let reported = reported.lock().unwrap().clone();
        assert_eq!(
            reported,
            [1, 2, 3].map(WireRequestId::Number).to_vec(),
            "each message once, in order, the refused one too"
        );
    }
}

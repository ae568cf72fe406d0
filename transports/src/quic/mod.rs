//! The QUIC link: protocol v2 frames on one control stream plus one stream per request.
//!
//! The worker opens the connection (ALPN `modelrelay/2`) and the control
//! stream, whose first frame is a [`Hello`] (secret and provider, as the
//! WebSocket link carries them in its upgrade request). After that both sides
//! speak v2 frames, each prefixed with its length as a big-endian `u32`:
//!
//! - the control stream carries registration, pings and pongs, model updates,
//!   drain, and `cancel`;
//! - the relay opens one bidirectional stream per request: the request frame
//!   goes down, the worker's chunks and completion (or error) come back up,
//!   then both ends finish it. A cancel also resets that stream.
//!
//! A lost packet stalls only the stream it belonged to.

mod link;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use modelrelay_core::wire::{FrameLimits, LinkFlow, ServerMessage, V2_ALPN, WorkerMessage};
use quinn::{RecvStream, SendStream, VarInt};
use serde::{Deserialize, Serialize};

pub use link::{QuicReader, RelayWriter, WorkerWriter, reset_code, reset_reason};

use crate::tls::{RelayIdentity, TlsError, Trust, client_tls};
use crate::{LinkError, ReadLimit};

/// How long a worker may take, from its first packet, to finish the handshake,
/// open its control stream and say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest hello the relay reads (before it knows who is talking).
pub const HELLO_MAX_BYTES: usize = 4096;

/// The first frame on the control stream: who the worker is, as WebSocket headers say it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The shared worker secret.
    pub secret: String,
    /// The provider (worker pool) to join.
    pub provider: String,
}

impl std::fmt::Debug for Hello {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hello")
            .field("secret", &"<redacted>")
            .field("provider", &self.provider)
            .finish()
    }
}

/// Writes one length-prefixed frame; the payload is not copied.
pub(crate) async fn write_frame(send: &mut SendStream, frame: Bytes) -> Result<(), LinkError> {
    let length = u32::try_from(frame.len()).map_err(|_| LinkError::FrameTooLarge {
        size: frame.len(),
        limit: u32::MAX as usize,
    })?;
    let mut pieces = [Bytes::copy_from_slice(&length.to_be_bytes()), frame];
    send.write_all_chunks(&mut pieces).await?;
    Ok(())
}

/// A frame limit as a stream reader sees it: fixed, or a [`ReadLimit`] that may grow.
pub(crate) trait CurrentLimit {
    /// The limit for the frame whose length was just read.
    fn current(&self) -> FrameLimits;
}

impl CurrentLimit for FrameLimits {
    fn current(&self) -> FrameLimits {
        *self
    }
}

impl CurrentLimit for ReadLimit {
    fn current(&self) -> FrameLimits {
        self.get()
    }
}

/// Reads one length-prefixed frame; `None` at a clean end of the stream. The
/// limit is read once the length has arrived, so a limit raised while the
/// reader waited already applies.
pub(crate) async fn read_frame(
    recv: &mut RecvStream,
    limits: &impl CurrentLimit,
) -> Result<Option<Bytes>, LinkError> {
    let mut length = [0u8; 4];
    match recv.read_exact(&mut length).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(error) => return Err(error.into()),
    }
    let length = u32::from_be_bytes(length) as usize;
    let limit = limits.current().max_frame_bytes;
    if length > limit {
        return Err(LinkError::FrameTooLarge {
            size: length,
            limit,
        });
    }
    let mut frame = vec![0u8; length];
    recv.read_exact(&mut frame).await?;
    Ok(Some(Bytes::from(frame)))
}

/// A worker's connection that has said hello, before the relay decided whether
/// to let it in: nothing after the hello has been read from it.
pub struct Arrival {
    /// What the worker said first.
    pub hello: Hello,
    connection: quinn::Connection,
    send: SendStream,
    recv: RecvStream,
}

impl Arrival {
    /// Where the worker connects from.
    pub fn remote(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// Lets the worker in: its frames are read from now on, the control stream's
    /// at `control` (which may be raised later), its request streams' at `limits`,
    /// and the relay's frames to it are held to `limits`.
    ///
    /// With `flow` windowed, each request's stream is read only while its answer
    /// has window (`INITIAL_WINDOW`, then what `window_update`s sent to the writer
    /// grant); unwindowed, every stream is read as fast as it arrives.
    pub fn into_link(
        self,
        limits: FrameLimits,
        control: ReadLimit,
        flow: LinkFlow,
    ) -> (QuicReader<WorkerMessage>, RelayWriter) {
        link::server_side(
            self.connection,
            self.send,
            self.recv,
            (limits, control),
            flow,
        )
    }

    /// Refuses the worker: closes the connection with `code` and `reason`, reading nothing more.
    pub fn refuse(self, code: u16, reason: &str) {
        self.connection
            .close(VarInt::from_u32(u32::from(code)), reason.as_bytes());
    }
}

/// Why an incoming worker connection did not become a link.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// The QUIC handshake failed (or the connection broke before the hello).
    #[error("QUIC handshake: {0}")]
    Handshake(#[from] quinn::ConnectionError),
    /// The QUIC handshake did not complete within [`HELLO_TIMEOUT`].
    #[error("QUIC handshake: not completed in time")]
    HandshakeTimeout,
    /// The handshake completed, but no usable hello came in time: none, too large, or malformed.
    #[error("no valid hello: {0}")]
    Hello(String),
}

impl AcceptError {
    /// Whether the peer completed the handshake (so its address is proven) and then
    /// failed to say a valid hello: as good as presenting no secret.
    pub fn after_handshake(&self) -> bool {
        matches!(self, Self::Hello(_))
    }
}

/// Completes an incoming connection within [`HELLO_TIMEOUT`]: TLS, the control
/// stream, the hello (at most [`HELLO_MAX_BYTES`]). Nothing past the hello is read.
pub async fn accept(incoming: quinn::Incoming) -> Result<Arrival, AcceptError> {
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    let connection = tokio::time::timeout_at(deadline, incoming)
        .await
        .map_err(|_| AcceptError::HandshakeTimeout)??;
    let hello = async {
        let (send, mut recv) = connection.accept_bi().await?;
        let hello_limits = FrameLimits {
            max_frame_bytes: HELLO_MAX_BYTES,
        };
        let hello = match read_frame(&mut recv, &hello_limits).await {
            Ok(Some(hello)) => hello,
            Ok(None) => return Err(AcceptError::Hello("the control stream ended first".into())),
            Err(error) => return Err(AcceptError::Hello(error.to_string())),
        };
        let hello: Hello = postcard::from_bytes(&hello)
            .map_err(|e| AcceptError::Hello(format!("malformed: {e}")))?;
        Ok((send, recv, hello))
    };
    let (send, recv, hello) = tokio::time::timeout_at(deadline, hello)
        .await
        .map_err(|_| AcceptError::Hello("none in time".into()))??;
    Ok(Arrival {
        hello,
        connection,
        send,
        recv,
    })
}

/// Connects a worker to the relay at `addr` (TLS name `server_name`) and says hello.
pub async fn connect(
    endpoint: &quinn::Endpoint,
    config: quinn::ClientConfig,
    addr: SocketAddr,
    server_name: &str,
    hello: &Hello,
    limits: FrameLimits,
) -> Result<(QuicReader<ServerMessage>, WorkerWriter), ConnectError> {
    let connection = endpoint
        .connect_with(config, addr, server_name)
        .map_err(ConnectError::Start)?
        .await
        .map_err(ConnectError::Handshake)?;
    let (mut send, recv) = connection
        .open_bi()
        .await
        .map_err(ConnectError::Handshake)?;
    write_hello(&mut send, hello)
        .await
        .map_err(ConnectError::Link)?;
    Ok(link::worker_side(connection, send, recv, limits))
}

/// Writes `hello` as the first frame of a control stream.
pub async fn write_hello(send: &mut SendStream, hello: &Hello) -> Result<(), LinkError> {
    send.write_all(&hello_frame(hello)?).await?;
    Ok(())
}

/// `hello` as it travels: its length (big-endian `u32`), then its postcard encoding.
pub fn hello_frame(hello: &Hello) -> Result<Vec<u8>, LinkError> {
    let payload = postcard::to_allocvec(hello).map_err(|e| LinkError::Protocol(e.to_string()))?;
    let length = u32::try_from(payload.len())
        .map_err(|_| LinkError::Protocol("a hello too large to send".into()))?;
    let mut frame = length.to_be_bytes().to_vec();
    frame.extend_from_slice(&payload);
    Ok(frame)
}

/// Why a worker's QUIC connection failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The connection could not even start (bad address or settings).
    #[error("cannot start a QUIC connection: {0}")]
    Start(#[source] quinn::ConnectError),
    /// The handshake failed: unreachable, refused, or a certificate not trusted.
    #[error("{}", explain(.0))]
    Handshake(#[source] quinn::ConnectionError),
    /// The connection came up but the hello could not be sent.
    #[error("{0}")]
    Link(#[source] LinkError),
}

/// How often a worker's QUIC stack sends a keep-alive on a link with nothing
/// else to send: a PING the relay's QUIC stack acknowledges by itself.
pub const WORKER_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// How long a QUIC link may bring nothing at all, not even the acknowledgement
/// of a keep-alive, before the transport closes it as dead. This is how a
/// worker judges a QUIC link (it never waits for the relay's pings): six
/// keep-alives go unanswered first, so a relay paused for less survives. Both
/// sides set it; a link takes the lower of the two.
pub const LINK_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// [`LINK_IDLE_TIMEOUT`] as quinn takes it.
fn idle_timeout() -> quinn::IdleTimeout {
    LINK_IDLE_TIMEOUT
        .try_into()
        .expect("30 s is within QUIC's idle timeout range")
}

/// quinn transport settings for a worker: room for many request streams, and
/// keep-alives so NATs and firewalls keep an idle link open, a dead link is
/// found within [`LINK_IDLE_TIMEOUT`], and a restarted relay's reset reaches an
/// idle worker within seconds.
pub fn worker_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(4096));
    transport.keep_alive_interval(Some(WORKER_KEEP_ALIVE));
    transport.max_idle_timeout(Some(idle_timeout()));
    // What the worker has written but the relay has not acknowledged, on all
    // streams together: a paused relay holds at most this much here.
    transport.send_window(WORKER_SEND_WINDOW);
    transport
}

/// Bytes of a request's answer the relay lets the worker send ahead of what it
/// has read of that stream (QUIC's per-stream window). The relay reads a stream
/// only while the request has answer window (`window_update`s stay on the relay),
/// so a stalled request holds at most this much in quinn, plus its answer window.
/// It also caps one stream's speed at this much per round trip (5 MB/s at 100 ms).
pub const ANSWER_STREAM_WINDOW: u32 = 512 * 1024;

/// Bytes the worker's quinn holds unacknowledged, over all streams.
pub const WORKER_SEND_WINDOW: u64 = 8 * 1024 * 1024;

/// quinn transport settings for the relay: workers open only their control stream.
pub fn relay_transport() -> quinn::TransportConfig {
    let mut transport = quinn::TransportConfig::default();
    transport.max_concurrent_bidi_streams(VarInt::from_u32(1));
    transport.max_concurrent_uni_streams(VarInt::from_u32(0));
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    transport.max_idle_timeout(Some(idle_timeout()));
    transport.stream_receive_window(VarInt::from_u32(ANSWER_STREAM_WINDOW));
    // The connection's window stays unlimited: stalled streams must never use up
    // credit the control stream (its pongs) needs. What they hold is bounded per
    // stream (above), and streams by the requests the relay dispatched.
    transport.receive_window(VarInt::MAX);
    transport
}

/// The ALPN identifiers a v2 QUIC link offers.
pub fn alpn() -> Vec<Vec<u8>> {
    vec![V2_ALPN.to_vec()]
}

/// Why quinn refused TLS settings (a cipher suite QUIC cannot use).
#[derive(Debug, thiserror::Error)]
#[error("TLS settings unusable for QUIC: {0}")]
pub struct QuicTlsError(String);

/// quinn endpoint settings for the relay. Its stateless-reset key and the key
/// that signs its connection ids come from the certificate's private key, so a
/// relay restarted with the same certificate recognises its workers' old
/// connections and resets them at their next packet: they reconnect at once
/// instead of waiting out the idle timeout.
pub fn relay_endpoint_config(identity: &RelayIdentity) -> quinn::EndpointConfig {
    let reset_key = identity.derived_secret(b"modelrelay QUIC stateless reset key");
    let mut config = quinn::EndpointConfig::new(Arc::new(ring::hmac::Key::new(
        ring::hmac::HMAC_SHA256,
        &reset_key,
    )));
    let cid_secret = identity.derived_secret(b"modelrelay QUIC connection id key");
    let cid_key = u64::from_le_bytes(cid_secret[..8].try_into().expect("8 bytes"));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// quinn server settings: the relay's identity, the v2 ALPN, `transport`.
pub fn server_config(
    identity: &RelayIdentity,
    transport: quinn::TransportConfig,
) -> Result<quinn::ServerConfig, SetupError> {
    let mut tls = identity.rustls_config()?;
    tls.alpn_protocols = alpn();
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| QuicTlsError(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// quinn client settings: what the worker trusts, the v2 ALPN, the worker's transport.
pub fn client_config(trust: &Trust) -> Result<quinn::ClientConfig, SetupError> {
    let mut tls = client_tls(trust)?;
    tls.alpn_protocols = alpn();
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| QuicTlsError(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    config.transport_config(Arc::new(worker_transport()));
    Ok(config)
}

/// Why QUIC settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Certificates or trust.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// quinn refused the TLS settings.
    #[error("{0}")]
    Quic(#[from] QuicTlsError),
}

/// A connection error in words, with what to do when the relay's certificate is not trusted.
pub fn explain(error: &quinn::ConnectionError) -> String {
    let text = error.to_string();
    // rustls hands quinn the verifier's error in Debug form, so match both forms.
    if text.contains("not the pinned") || text.contains("FingerprintMismatch") {
        format!(
            "the relay's certificate is not the pinned one ({text}): the relay's certificate \
             changed, or --server-cert-sha256 names another relay"
        )
    } else if text.contains("invalid peer certificate") || text.contains("UnknownIssuer") {
        format!(
            "the relay's certificate is not trusted ({text}): pass --server-cert-sha256 with the fingerprint \
             the relay prints at start-up, or --tls-ca with the CA that signed it"
        )
    } else if matches!(
        error,
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED
    ) {
        "the relay refused the connection: too many failed logins from this address \
         in the last minute (check --worker-secret), too many connections from it still \
         logging in, or it is shutting down"
            .to_owned()
    } else if matches!(error, quinn::ConnectionError::TimedOut) {
        "no answer from the relay's QUIC port (is --quic-listen set, and UDP open?)".to_owned()
    } else {
        text
    }
}

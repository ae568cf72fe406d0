//! Reaching the relay: where to dial, how (TCP or TLS), and the WebSocket handshake.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use modelrelay_core::wire::{FrameLimits, LinkFlow, ServerMessage, WireVersion, WorkerMessage};
use modelrelay_transports::quic::{self, Hello, QuicReader, WorkerWriter};
use modelrelay_transports::ws::client::{HandshakeError, Offer, handshake};
use modelrelay_transports::ws::{WsReader, WsWriter, split};
use modelrelay_transports::{LinkError, close_code};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use url::Url;

/// Where the relay is and how to reach its worker endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayEndpoint {
    /// Host to dial.
    pub host: String,
    /// Port to dial.
    pub port: u16,
    /// Whether the link runs over TLS (always, for QUIC).
    pub tls: bool,
    /// Which link: WebSocket (`ws://`, `wss://`, `http://`, `https://`) or QUIC (`quic://`).
    pub transport: RelayTransport,
    /// The provider (worker pool) to join.
    pub provider: String,
    /// The `ws://`/`wss://` URL of the worker endpoint with `?provider=`, or the `quic://` URL.
    pub connect_url: String,
    /// The address to dial instead of resolving `host` (one of the addresses
    /// `host` resolved to); `host` still names the relay to TLS and HTTP.
    pub address: Option<SocketAddr>,
}

/// The kind of link to the relay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayTransport {
    /// A WebSocket on the relay's HTTP port.
    WebSocket,
    /// QUIC on the relay's UDP port (`--quic-listen`).
    Quic,
}

/// Why a proxy URL cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not a URL.
    #[error("invalid proxy URL {url:?}: {reason}")]
    Invalid {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A scheme other than http, https, ws, wss, quic.
    #[error(
        "proxy URL scheme {0:?} is not supported (use http://, https://, ws://, wss:// or quic://)"
    )]
    UnsupportedScheme(String),
}

impl RelayEndpoint {
    /// Reads `--proxy-url` (the relay's base URL) for `provider`.
    pub fn parse(proxy_url: &str, provider: &str) -> Result<Self, EndpointError> {
        let invalid = |reason: String| EndpointError::Invalid {
            url: proxy_url.to_owned(),
            reason,
        };
        let url = Url::parse(proxy_url).map_err(|e| invalid(e.to_string()))?;
        // The host as a name or a bare address (an IPv6 one without its brackets).
        let host = url
            .host_str()
            .ok_or_else(|| invalid("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if url.scheme() == "quic" {
            let port = url.port().ok_or_else(|| {
                invalid("quic:// needs a port (the relay's --quic-listen)".into())
            })?;
            return Ok(Self {
                connect_url: format!("quic://{}:{port}", url.host_str().unwrap_or_default()),
                host,
                port,
                tls: true,
                transport: RelayTransport::Quic,
                provider: provider.to_owned(),
                address: None,
            });
        }
        let (tls, ws_scheme) = match url.scheme() {
            "http" | "ws" => (false, "ws"),
            "https" | "wss" => (true, "wss"),
            other => return Err(EndpointError::UnsupportedScheme(other.to_owned())),
        };
        let port = url
            .port_or_known_default()
            .ok_or_else(|| invalid("no port".into()))?;
        let mut connect = url.clone();
        connect
            .set_scheme(ws_scheme)
            .map_err(|()| invalid("cannot form a WebSocket URL".into()))?;
        let base_path = url.path().trim_end_matches('/');
        let path = if base_path.ends_with("/v1/worker/connect") {
            base_path.to_owned()
        } else {
            format!("{base_path}/v1/worker/connect")
        };
        connect.set_path(&path);
        connect.set_query(None);
        connect.query_pairs_mut().append_pair("provider", provider);
        Ok(Self {
            host,
            port,
            tls,
            transport: RelayTransport::WebSocket,
            provider: provider.to_owned(),
            connect_url: connect.to_string(),
            address: None,
        })
    }
}

/// Opens byte streams to the relay; the simulation supplies its own.
pub trait Dialer: Send + Sync + 'static {
    /// The stream a dial yields.
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// Connects to `endpoint` (TLS included when it says so).
    fn dial(
        &self,
        endpoint: &RelayEndpoint,
    ) -> impl Future<Output = io::Result<Self::Stream>> + Send;

    /// For QUIC: the local endpoint to connect from, and the relay's UDP address.
    fn quic(
        &self,
        endpoint: &RelayEndpoint,
    ) -> impl Future<Output = io::Result<(quinn::Endpoint, SocketAddr)>> + Send;

    /// Every address `endpoint`'s host resolves to (for `resolve_relays`).
    fn resolve(
        &self,
        endpoint: &RelayEndpoint,
    ) -> impl Future<Output = io::Result<Vec<SocketAddr>>> + Send {
        let target = (endpoint.host.clone(), endpoint.port);
        async move { Ok(tokio::net::lookup_host(target).await?.collect()) }
    }
}

/// Dials over the machine's network, with TLS from the given settings for `wss://`.
#[derive(Clone)]
pub struct NetDialer {
    tls: Option<Arc<rustls::ClientConfig>>,
    /// One local QUIC endpoint per address family, made at the first QUIC dial.
    quic: Arc<Mutex<Vec<quinn::Endpoint>>>,
}

impl NetDialer {
    /// A dialer; `tls` is needed only for `https://`/`wss://` relays.
    pub fn new(tls: Option<Arc<rustls::ClientConfig>>) -> Self {
        Self {
            tls,
            quic: Arc::default(),
        }
    }
}

impl Dialer for NetDialer {
    type Stream = NetStream;

    async fn dial(&self, endpoint: &RelayEndpoint) -> io::Result<NetStream> {
        let tcp = match endpoint.address {
            Some(address) => TcpStream::connect(address).await?,
            None => TcpStream::connect((endpoint.host.as_str(), endpoint.port)).await?,
        };
        tcp.set_nodelay(true)?;
        if !endpoint.tls {
            return Ok(NetStream::Plain(tcp));
        }
        let config = self.tls.clone().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                "TLS is not set up for this worker",
            )
        })?;
        let name = ServerName::try_from(endpoint.host.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls = TlsConnector::from(config).connect(name, tcp).await?;
        Ok(NetStream::Tls(Box::new(tls)))
    }

    async fn quic(&self, endpoint: &RelayEndpoint) -> io::Result<(quinn::Endpoint, SocketAddr)> {
        let resolved = match endpoint.address {
            Some(address) => Some(address),
            None => tokio::net::lookup_host((endpoint.host.as_str(), endpoint.port))
                .await?
                .next(),
        };
        let addr = resolved.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} has no address", endpoint.host),
            )
        })?;
        let mut endpoints = self.quic.lock().expect("endpoint lock");
        if let Some(local) = endpoints
            .iter()
            .find(|e| e.local_addr().is_ok_and(|a| a.is_ipv4() == addr.is_ipv4()))
        {
            return Ok((local.clone(), addr));
        }
        let any: SocketAddr = if addr.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let local = quinn::Endpoint::client(any)?;
        endpoints.push(local.clone());
        Ok((local, addr))
    }
}

/// A TCP stream, with or without TLS.
pub enum NetStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for NetStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NetStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Self::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_flush(cx),
            Self::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Self::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Which protocol versions the worker may speak.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ProtocolChoice {
    /// v2 if the relay speaks it, else v1.
    #[default]
    Auto,
    /// Only v1 (JSON), as existing workers speak.
    V1,
    /// Only v2 (with the v2.1 revision's windows if the relay knows them).
    V2,
    /// Only plain v2, as workers before the v2.1 revision spoke it: for tests of
    /// mixed versions.
    #[value(name = "v2-without-windows", hide = true)]
    V2WithoutWindows,
}

/// Why the worker could not open a link.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The QUIC connection failed (unreachable, refused, untrusted certificate).
    #[error("{0}")]
    Quic(#[from] quic::ConnectError),
    /// QUIC was asked for but the worker has no QUIC settings.
    #[error("quic:// needs the worker's QUIC TLS settings")]
    NoQuicSettings,
    /// No TCP/TLS connection.
    #[error("cannot reach the relay at {endpoint}: {source}")]
    Dial {
        /// Where.
        endpoint: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// No answer in time.
    #[error("the relay at {0} did not answer within the connect timeout")]
    Timeout(String),
    /// The WebSocket handshake failed.
    #[error("handshake with the relay failed: {0}")]
    Handshake(#[from] HandshakeError),
}

/// How the relay refused the worker: why, and `Retry-After`, if it said when to come back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Refused {
    /// Why, as far as the worker can tell.
    pub why: RefusalReason,
    /// How long the relay asked the worker to wait.
    pub retry_after: Option<Duration>,
}

/// Why a relay refused a worker, as far as the worker can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefusalReason {
    /// A wrong or missing secret, or an unknown provider (401, 403, a close with 1008).
    Credentials,
    /// This address cools down after failed logins (429).
    CoolingDown,
    /// A QUIC connection turned away before its handshake: the relay has too
    /// many connections waiting for their hello, or this address cools down.
    TurnedAway,
}

impl RefusalReason {
    /// What the worker logs about it.
    pub fn advice(self) -> &'static str {
        match self {
            Self::Credentials => {
                "the relay refused this worker: check --worker-secret and --provider"
            }
            Self::CoolingDown => {
                "the relay refused this worker: this address cools down after failed logins \
                 (check --worker-secret here and on workers that share this address)"
            }
            Self::TurnedAway => {
                "the relay turned the QUIC connection away: it is busy with connections \
                 waiting for their hello, or this address cools down after failed logins"
            }
        }
    }
}

impl ConnectError {
    /// Whether the relay refused this worker rather than failing to answer: HTTP
    /// 401 (wrong secret), 403 (unknown provider) or 429 (its address cools down)
    /// at the upgrade; over QUIC, a refused connection or a close with 1008 before
    /// the link was up.
    pub fn refused(&self) -> Option<Refused> {
        match self {
            Self::Handshake(HandshakeError::Refused {
                status,
                retry_after_secs,
            }) => {
                let why = match status.as_u16() {
                    401 | 403 => RefusalReason::Credentials,
                    429 => RefusalReason::CoolingDown,
                    _ => return None,
                };
                Some(Refused {
                    why,
                    retry_after: retry_after_secs.map(Duration::from_secs),
                })
            }
            Self::Quic(quic::ConnectError::Handshake(error)) => quic_refusal(error),
            Self::Quic(quic::ConnectError::Link(LinkError::QuicWrite(
                quinn::WriteError::ConnectionLost(error),
            ))) => quic_refusal(error),
            _ => None,
        }
    }
}

/// A QUIC connection the relay turned away (busy, or its address cools down)
/// or closed with 1008 (a wrong secret or provider).
fn quic_refusal(error: &quinn::ConnectionError) -> Option<Refused> {
    let why = match error {
        quinn::ConnectionError::ConnectionClosed(close)
            if close.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED =>
        {
            RefusalReason::TurnedAway
        }
        quinn::ConnectionError::ApplicationClosed(close)
            if close.error_code.into_inner() == u64::from(close_code::POLICY_VIOLATION) =>
        {
            RefusalReason::Credentials
        }
        _ => return None,
    };
    Some(Refused {
        why,
        retry_after: None,
    })
}

/// An open link to the relay, of either kind.
pub enum Link<S> {
    /// A WebSocket on byte stream `S`, speaking the negotiated encoding and flow.
    WebSocket(
        WsReader<S, ServerMessage>,
        WsWriter<S, WorkerMessage>,
        WireVersion,
        LinkFlow,
    ),
    /// A QUIC connection (always v2).
    Quic(QuicReader<ServerMessage>, WorkerWriter),
}

/// Opens a link of the kind `endpoint` names; `quic_config` is needed for `quic://`.
pub async fn connect<D: Dialer>(
    dialer: &D,
    endpoint: &RelayEndpoint,
    secret: &str,
    protocol: ProtocolChoice,
    limits: FrameLimits,
    timeout: Duration,
    quic_config: Option<&quinn::ClientConfig>,
) -> Result<Link<D::Stream>, ConnectError> {
    match endpoint.transport {
        RelayTransport::WebSocket => {
            let (reader, writer, wire, flow) =
                connect_websocket(dialer, endpoint, secret, protocol, limits, timeout).await?;
            Ok(Link::WebSocket(reader, writer, wire, flow))
        }
        RelayTransport::Quic => {
            let config = quic_config.ok_or(ConnectError::NoQuicSettings)?.clone();
            let (local, addr) = tokio::time::timeout(timeout, dialer.quic(endpoint))
                .await
                .map_err(|_| ConnectError::Timeout(endpoint.connect_url.clone()))?
                .map_err(|source| ConnectError::Dial {
                    endpoint: endpoint.connect_url.clone(),
                    source,
                })?;
            let hello = Hello {
                secret: secret.to_owned(),
                provider: endpoint.provider.clone(),
            };
            let (reader, writer) = tokio::time::timeout(
                timeout,
                quic::connect(&local, config, addr, &endpoint.host, &hello, limits),
            )
            .await
            .map_err(|_| ConnectError::Timeout(endpoint.connect_url.clone()))??;
            Ok(Link::Quic(reader, writer))
        }
    }
}

/// Dials and shakes hands: v2 first unless told otherwise, v1 if the relay does not speak v2.
async fn connect_websocket<D: Dialer>(
    dialer: &D,
    endpoint: &RelayEndpoint,
    secret: &str,
    protocol: ProtocolChoice,
    limits: FrameLimits,
    timeout: Duration,
) -> Result<
    (
        WsReader<D::Stream, ServerMessage>,
        WsWriter<D::Stream, WorkerMessage>,
        WireVersion,
        LinkFlow,
    ),
    ConnectError,
> {
    let attempt = |offer: Offer| async move {
        let stream = tokio::time::timeout(timeout, dialer.dial(endpoint))
            .await
            .map_err(|_| ConnectError::Timeout(endpoint.connect_url.clone()))?
            .map_err(|source| ConnectError::Dial {
                endpoint: format!("{}:{}", endpoint.host, endpoint.port),
                source,
            })?;
        let headers = [("x-worker-secret", secret)];
        let result = tokio::time::timeout(
            timeout,
            handshake(stream, &endpoint.connect_url, &headers, offer, limits),
        )
        .await
        .map_err(|_| ConnectError::Timeout(endpoint.connect_url.clone()))?;
        Ok::<_, ConnectError>(result?)
    };
    let (socket, wire, flow) = match protocol {
        ProtocolChoice::V1 => attempt(Offer::V1).await?,
        ProtocolChoice::V2 => attempt(Offer::V2Windowed).await?,
        ProtocolChoice::V2WithoutWindows => attempt(Offer::V2).await?,
        ProtocolChoice::Auto => match attempt(Offer::V2Windowed).await {
            Err(ConnectError::Handshake(HandshakeError::V2NotSupported)) => {
                attempt(Offer::V1).await?
            }
            other => other?,
        },
    };
    let (reader, writer) = split(socket, wire, limits);
    Ok((reader, writer, wire, flow))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_become_worker_endpoints() {
        let e = RelayEndpoint::parse("http://relay.lan:8080", "local").unwrap();
        assert_eq!((e.host.as_str(), e.port, e.tls), ("relay.lan", 8080, false));
        assert_eq!(
            e.connect_url,
            "ws://relay.lan:8080/v1/worker/connect?provider=local"
        );

        let e = RelayEndpoint::parse("https://example.com/relay/", "gpu pool").unwrap();
        assert_eq!((e.port, e.tls), (443, true));
        assert_eq!(
            e.connect_url,
            "wss://example.com/relay/v1/worker/connect?provider=gpu+pool"
        );

        let e = RelayEndpoint::parse("ws://[::1]:9000/v1/worker/connect", "local").unwrap();
        assert_eq!(e.host, "::1");
        assert_eq!(
            e.connect_url,
            "ws://[::1]:9000/v1/worker/connect?provider=local"
        );

        let e = RelayEndpoint::parse("quic://relay.lan:8443", "local").unwrap();
        assert_eq!(e.transport, RelayTransport::Quic);
        assert_eq!((e.host.as_str(), e.port, e.tls), ("relay.lan", 8443, true));
        let e = RelayEndpoint::parse("quic://[::1]:8443", "local").unwrap();
        assert_eq!(
            (e.host.as_str(), e.connect_url.as_str()),
            ("::1", "quic://[::1]:8443")
        );
    }

    #[test]
    fn a_401_403_or_429_at_the_upgrade_is_a_refusal_and_a_429_says_when_to_return() {
        let refused = |status: u16, retry_after_secs| {
            ConnectError::Handshake(HandshakeError::Refused {
                status: http::StatusCode::from_u16(status).unwrap(),
                retry_after_secs,
            })
            .refused()
        };
        assert_eq!(
            refused(429, Some(7)),
            Some(Refused {
                why: RefusalReason::CoolingDown,
                retry_after: Some(Duration::from_secs(7))
            })
        );
        for status in [401, 403] {
            assert_eq!(
                refused(status, None),
                Some(Refused {
                    why: RefusalReason::Credentials,
                    retry_after: None
                })
            );
        }
        // Anything else is the relay failing, not refusing: the normal backoff.
        assert_eq!(refused(502, Some(3)), None);
        assert_eq!(refused(404, None), None);
        assert_eq!(ConnectError::Timeout("x".into()).refused(), None);
    }

    #[test]
    fn a_quic_connection_turned_away_is_not_blamed_on_the_secret() {
        let turned_away = quinn::ConnectionError::ConnectionClosed(quinn::ConnectionClose {
            error_code: quinn::TransportErrorCode::CONNECTION_REFUSED,
            frame_type: None,
            reason: Default::default(),
        });
        let refused = quic_refusal(&turned_away).unwrap();
        assert_eq!(refused.why, RefusalReason::TurnedAway);
        assert!(!refused.why.advice().contains("--worker-secret"));
        let policy = quinn::ConnectionError::ApplicationClosed(quinn::ApplicationClose {
            error_code: quinn::VarInt::from_u32(u32::from(close_code::POLICY_VIOLATION)),
            reason: Default::default(),
        });
        assert_eq!(
            quic_refusal(&policy).unwrap().why,
            RefusalReason::Credentials
        );
        assert!(
            RefusalReason::Credentials
                .advice()
                .contains("check --worker-secret")
        );
    }

    #[test]
    fn unusable_proxy_urls_say_why() {
        assert!(matches!(
            RelayEndpoint::parse("ftp://x", "local"),
            Err(EndpointError::UnsupportedScheme(s)) if s == "ftp"
        ));
        assert!(matches!(
            RelayEndpoint::parse("relay:8080", "local"),
            Err(EndpointError::UnsupportedScheme(_) | EndpointError::Invalid { .. })
        ));
        assert!(matches!(
            RelayEndpoint::parse("not a url", "local"),
            Err(EndpointError::Invalid { .. })
        ));
        // QUIC has no default port: the relay's --quic-listen port must be given.
        assert!(matches!(
            RelayEndpoint::parse("quic://relay.lan", "local"),
            Err(EndpointError::Invalid { reason, .. }) if reason.contains("--quic-listen")
        ));
    }
}

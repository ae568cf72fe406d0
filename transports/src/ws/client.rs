//! The worker's side of the handshake, over any byte stream (TCP, TLS, simulated).

use http::HeaderValue;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use modelrelay_core::wire::{FrameLimits, V2_WEBSOCKET_SUBPROTOCOL, WireVersion};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::error::{ProtocolError, SubProtocolError};
use tokio_tungstenite::tungstenite::{self, http::StatusCode};

/// Why the handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The URL or a header could not form a request.
    #[error("invalid connect request: {0}")]
    InvalidRequest(String),
    /// The server answered with an HTTP status instead of upgrading.
    #[error("server refused the upgrade with HTTP {status}")]
    Refused {
        /// The status it answered with.
        status: StatusCode,
        /// `Retry-After`, in seconds, if it gave one.
        retry_after_secs: Option<u64>,
    },
    /// We offered v2 and the server does not speak it: dial again without the offer.
    #[error("server does not speak protocol v2")]
    V2NotSupported,
    /// Anything else (I/O, a malformed answer).
    #[error("websocket handshake: {0}")]
    WebSocket(#[from] tungstenite::Error),
}

/// Upgrades `stream` to a WebSocket at `url` (`ws://` or `wss://`), with extra headers.
///
/// With `offer_v2` the v2 subprotocol is offered and the result says whether
/// the server took it; a server that ignores the offer yields
/// [`HandshakeError::V2NotSupported`], and the caller dials again without it.
pub async fn handshake<S>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
    offer_v2: bool,
    limits: FrameLimits,
) -> Result<(WebSocketStream<S>, WireVersion), HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = url
        .into_client_request()
        .map_err(|e| HandshakeError::InvalidRequest(e.to_string()))?;
    for (name, value) in headers {
        let name = http::HeaderName::from_bytes(name.as_bytes())
            .map_err(|e| HandshakeError::InvalidRequest(e.to_string()))?;
        let value = HeaderValue::from_str(value)
            .map_err(|e| HandshakeError::InvalidRequest(e.to_string()))?;
        request.headers_mut().insert(name, value);
    }
    if offer_v2 {
        request.headers_mut().insert(
            SEC_WEBSOCKET_PROTOCOL,
            HeaderValue::from_static(V2_WEBSOCKET_SUBPROTOCOL),
        );
    }
    match tokio_tungstenite::client_async_with_config(request, stream, Some(super::config(limits)))
        .await
    {
        Ok((socket, response)) => {
            let v2 = response
                .headers()
                .get(SEC_WEBSOCKET_PROTOCOL)
                .is_some_and(|p| p == V2_WEBSOCKET_SUBPROTOCOL);
            Ok((socket, if v2 { WireVersion::V2 } else { WireVersion::V1 }))
        }
        Err(tungstenite::Error::Protocol(ProtocolError::SecWebSocketSubProtocolError(
            SubProtocolError::NoSubProtocol,
        ))) => Err(HandshakeError::V2NotSupported),
        Err(tungstenite::Error::Http(response)) => Err(HandshakeError::Refused {
            status: response.status(),
            retry_after_secs: response
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
        }),
        Err(error) => Err(error.into()),
    }
}

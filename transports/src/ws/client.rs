//! The worker's side of the handshake, over any byte stream (TCP, TLS, simulated).

use http::HeaderValue;
use http::header::SEC_WEBSOCKET_PROTOCOL;
use modelrelay_core::wire::{
    FrameLimits, LinkFlow, V2_1_WEBSOCKET_SUBPROTOCOL, V2_WEBSOCKET_SUBPROTOCOL, WireVersion,
};
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

/// Which subprotocols the worker offers in its upgrade request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// None: the link speaks v1, as existing workers do.
    V1,
    /// `modelrelay.v2` alone, as workers before the v2.1 revision did.
    V2,
    /// `modelrelay.v2.1, modelrelay.v2`: windows if the relay knows them, else plain v2.
    V2Windowed,
}

impl Offer {
    /// The `Sec-WebSocket-Protocol` value, if anything is offered.
    fn header(self) -> Option<HeaderValue> {
        match self {
            Self::V1 => None,
            Self::V2 => Some(HeaderValue::from_static(V2_WEBSOCKET_SUBPROTOCOL)),
            Self::V2Windowed => Some(HeaderValue::from_static(OFFER_V2_1_THEN_V2)),
        }
    }
}

/// The v2.1 offer: a relay that does not know v2.1 finds `modelrelay.v2` in it.
const OFFER_V2_1_THEN_V2: &str = "modelrelay.v2.1, modelrelay.v2";
const _: () = assert!(
    OFFER_V2_1_THEN_V2.len()
        == V2_1_WEBSOCKET_SUBPROTOCOL.len() + 2 + V2_WEBSOCKET_SUBPROTOCOL.len()
);

/// Upgrades `stream` to a WebSocket at `url` (`ws://` or `wss://`), with extra headers.
///
/// The result says which encoding and flow the server picked from the `offer`;
/// a server that ignores a v2 offer yields [`HandshakeError::V2NotSupported`],
/// and the caller dials again without it.
pub async fn handshake<S>(
    stream: S,
    url: &str,
    headers: &[(&str, &str)],
    offer: Offer,
    limits: FrameLimits,
) -> Result<(WebSocketStream<S>, WireVersion, LinkFlow), HandshakeError>
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
    if let Some(protocols) = offer.header() {
        request
            .headers_mut()
            .insert(SEC_WEBSOCKET_PROTOCOL, protocols);
    }
    match tokio_tungstenite::client_async_with_config(request, stream, Some(super::config(limits)))
        .await
    {
        Ok((socket, response)) => {
            // tungstenite has checked that the answer is one of the offered protocols.
            let picked = response.headers().get(SEC_WEBSOCKET_PROTOCOL);
            let (wire, flow) = match picked {
                Some(p) if p == V2_1_WEBSOCKET_SUBPROTOCOL => (WireVersion::V2, LinkFlow::Windowed),
                Some(p) if p == V2_WEBSOCKET_SUBPROTOCOL => (WireVersion::V2, LinkFlow::Unwindowed),
                _ => (WireVersion::V1, LinkFlow::Unwindowed),
            };
            Ok((socket, wire, flow))
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

#[cfg(test)]
mod tests {
    use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

    use super::*;

    /// Shakes hands with a server that answers the first offered protocol it `knows`.
    #[allow(clippy::result_large_err)] // tungstenite's callback type, not ours
    async fn negotiate(offer: Offer, knows: &'static [&'static str]) -> (WireVersion, LinkFlow) {
        let (near, far) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let pick = move |request: &Request, mut response: Response| {
                let offered = request
                    .headers()
                    .get(SEC_WEBSOCKET_PROTOCOL)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_owned();
                if let Some(known) = offered
                    .split(',')
                    .map(str::trim)
                    .find(|offered| knows.contains(offered))
                {
                    response.headers_mut().insert(
                        SEC_WEBSOCKET_PROTOCOL,
                        HeaderValue::from_str(known).unwrap(),
                    );
                }
                Ok(response)
            };
            tokio_tungstenite::accept_hdr_async(far, pick)
                .await
                .unwrap()
        });
        let (_socket, wire, flow) = handshake(
            near,
            "ws://relay.test/v1/worker/connect",
            &[],
            offer,
            FrameLimits::default(),
        )
        .await
        .unwrap();
        server.await.unwrap();
        (wire, flow)
    }

    #[tokio::test]
    async fn a_relay_that_knows_v2_1_gives_windows_and_one_that_does_not_gives_plain_v2() {
        let new_relay = &[V2_1_WEBSOCKET_SUBPROTOCOL, V2_WEBSOCKET_SUBPROTOCOL];
        let v2_relay = &[V2_WEBSOCKET_SUBPROTOCOL];
        assert_eq!(
            negotiate(Offer::V2Windowed, new_relay).await,
            (WireVersion::V2, LinkFlow::Windowed)
        );
        assert_eq!(
            negotiate(Offer::V2Windowed, v2_relay).await,
            (WireVersion::V2, LinkFlow::Unwindowed)
        );
        // A worker from before the revision offers plain v2, and a new relay keeps to it.
        assert_eq!(
            negotiate(Offer::V2, new_relay).await,
            (WireVersion::V2, LinkFlow::Unwindowed)
        );
    }
}

//! The server's side of the handshake: an HTTP/1.1 upgrade on the relay's own port.

use http::header::{
    CONNECTION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_PROTOCOL,
    SEC_WEBSOCKET_VERSION, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use modelrelay_core::wire::{
    FrameLimits, LinkFlow, V2_1_WEBSOCKET_SUBPROTOCOL, V2_WEBSOCKET_SUBPROTOCOL, WireVersion,
};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::PreRegisterBudget;
use crate::ReadLimit;

/// Why a request is not a WebSocket upgrade we can accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum UpgradeError {
    /// Not a `GET` with `Connection: upgrade` and `Upgrade: websocket`.
    #[error("expected a WebSocket upgrade (GET with Connection: upgrade, Upgrade: websocket)")]
    NotAnUpgrade,
    /// A WebSocket version other than 13.
    #[error("unsupported WebSocket version (only 13)")]
    UnsupportedVersion,
    /// No `Sec-WebSocket-Key`.
    #[error("missing Sec-WebSocket-Key")]
    MissingKey,
}

/// A valid upgrade request, ready to be answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    accept: String,
    offers_v2: bool,
    offers_v2_1: bool,
}

fn header_has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|item| item.trim().eq_ignore_ascii_case(token))
}

/// Checks that a request is a WebSocket upgrade and notes whether it asks for v2.
pub fn inspect(method: &Method, headers: &HeaderMap) -> Result<UpgradeRequest, UpgradeError> {
    if method != Method::GET
        || !header_has_token(headers, CONNECTION, "upgrade")
        || !header_has_token(headers, UPGRADE, "websocket")
    {
        return Err(UpgradeError::NotAnUpgrade);
    }
    if headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(UpgradeError::UnsupportedVersion);
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or(UpgradeError::MissingKey)?;
    Ok(UpgradeRequest {
        accept: derive_accept_key(key.as_bytes()),
        offers_v2: header_has_token(headers, SEC_WEBSOCKET_PROTOCOL, V2_WEBSOCKET_SUBPROTOCOL),
        offers_v2_1: header_has_token(headers, SEC_WEBSOCKET_PROTOCOL, V2_1_WEBSOCKET_SUBPROTOCOL),
    })
}

impl UpgradeRequest {
    /// Whether the client offered the v2 subprotocol.
    pub fn offers_v2(&self) -> bool {
        self.offers_v2
    }

    /// Whether the client offered the v2.1 revision (v2 with `window_update`).
    pub fn offers_v2_1(&self) -> bool {
        self.offers_v2_1
    }

    /// The `101 Switching Protocols` answer, naming the subprotocol picked: v2.1
    /// for a v2 link with `flow` windowed, v2 for a plain v2 link, none for v1.
    pub fn response(&self, wire: WireVersion, flow: LinkFlow) -> Response<()> {
        let mut response = Response::new(());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(
            SEC_WEBSOCKET_ACCEPT,
            HeaderValue::from_str(&self.accept).expect("base64 is a valid header value"),
        );
        let picked = match (wire, flow) {
            (WireVersion::V1, _) => None,
            (WireVersion::V2, LinkFlow::Windowed) => Some(V2_1_WEBSOCKET_SUBPROTOCOL),
            (WireVersion::V2, LinkFlow::Unwindowed) => Some(V2_WEBSOCKET_SUBPROTOCOL),
        };
        if let Some(picked) = picked {
            headers.insert(SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(picked));
        }
        response
    }
}

/// The WebSocket, once hyper has handed over the upgraded connection.
pub async fn accept(
    on_upgrade: OnUpgrade,
    limits: FrameLimits,
) -> Result<WebSocketStream<TokioIo<Upgraded>>, hyper::Error> {
    let upgraded = on_upgrade.await?;
    Ok(WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(super::config(limits)),
    )
    .await)
}

/// [`accept`], reading at most a [`PreRegisterBudget`] of bytes until `reads` is
/// raised (the worker registered); `limits` is the limit after that.
pub async fn accept_before_register(
    on_upgrade: OnUpgrade,
    limits: FrameLimits,
    reads: ReadLimit,
) -> Result<WebSocketStream<PreRegisterBudget<TokioIo<Upgraded>>>, hyper::Error> {
    let upgraded = on_upgrade.await?;
    Ok(WebSocketStream::from_raw_socket(
        PreRegisterBudget::new(TokioIo::new(upgraded), reads),
        Role::Server,
        Some(super::config(limits)),
    )
    .await)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upgrade_headers(protocols: Option<&str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        headers.insert(
            SEC_WEBSOCKET_KEY,
            HeaderValue::from_static("dGhlIHNhbXBsZSBub25jZQ=="),
        );
        if let Some(protocols) = protocols {
            headers.insert(
                SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_str(protocols).unwrap(),
            );
        }
        headers
    }

    #[test]
    fn a_valid_upgrade_is_answered_with_the_rfc_accept_key() {
        let request = inspect(&Method::GET, &upgrade_headers(None)).unwrap();
        assert!(!request.offers_v2());
        let response = request.response(WireVersion::V1, LinkFlow::Unwindowed);
        assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
        // The example from RFC 6455, section 1.3.
        assert_eq!(
            response.headers()[SEC_WEBSOCKET_ACCEPT],
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        assert!(response.headers().get(SEC_WEBSOCKET_PROTOCOL).is_none());
    }

    #[test]
    fn a_v2_offer_is_noticed_and_echoed_only_when_v2_is_chosen() {
        let request = inspect(&Method::GET, &upgrade_headers(Some("chat, modelrelay.v2"))).unwrap();
        assert!(request.offers_v2());
        assert_eq!(
            request
                .response(WireVersion::V2, LinkFlow::Unwindowed)
                .headers()[SEC_WEBSOCKET_PROTOCOL],
            V2_WEBSOCKET_SUBPROTOCOL
        );
        assert!(
            request
                .response(WireVersion::V1, LinkFlow::Unwindowed)
                .headers()
                .get(SEC_WEBSOCKET_PROTOCOL)
                .is_none()
        );
    }

    #[test]
    fn a_v2_1_offer_is_noticed_and_answered_with_v2_1_only_when_windows_are_picked() {
        let request = inspect(
            &Method::GET,
            &upgrade_headers(Some("modelrelay.v2.1, modelrelay.v2")),
        )
        .unwrap();
        assert!(request.offers_v2() && request.offers_v2_1());
        let picked = |wire, flow| {
            request
                .response(wire, flow)
                .headers()
                .get(SEC_WEBSOCKET_PROTOCOL)
                .map(|p| p.to_str().unwrap().to_owned())
        };
        assert_eq!(
            picked(WireVersion::V2, LinkFlow::Windowed).as_deref(),
            Some(V2_1_WEBSOCKET_SUBPROTOCOL)
        );
        assert_eq!(
            picked(WireVersion::V2, LinkFlow::Unwindowed).as_deref(),
            Some(V2_WEBSOCKET_SUBPROTOCOL)
        );
        assert_eq!(picked(WireVersion::V1, LinkFlow::Windowed), None);
        // A plain v2 offer is not a v2.1 offer.
        let v2 = inspect(&Method::GET, &upgrade_headers(Some("modelrelay.v2"))).unwrap();
        assert!(v2.offers_v2() && !v2.offers_v2_1());
    }

    #[test]
    fn requests_that_are_not_upgrades_are_refused() {
        assert_eq!(
            inspect(&Method::POST, &upgrade_headers(None)),
            Err(UpgradeError::NotAnUpgrade)
        );
        let mut headers = upgrade_headers(None);
        headers.remove(UPGRADE);
        assert_eq!(
            inspect(&Method::GET, &headers),
            Err(UpgradeError::NotAnUpgrade)
        );
        let mut headers = upgrade_headers(None);
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(
            inspect(&Method::GET, &headers),
            Err(UpgradeError::UnsupportedVersion)
        );
        let mut headers = upgrade_headers(None);
        headers.remove(SEC_WEBSOCKET_KEY);
        assert_eq!(
            inspect(&Method::GET, &headers),
            Err(UpgradeError::MissingKey)
        );
    }
}

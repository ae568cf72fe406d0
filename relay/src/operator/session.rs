//! The operator's proof: the admin token as a bearer or a dashboard session cookie, and the [`Admin`] extractor.
//!
//! The admin token comes as `Authorization: Bearer …` (or, as ModelRelay takes
//! it, as the bare `Authorization` value), or, from the dashboard, as
//! a session cookie signed with a random key drawn when the process starts: a
//! stolen cookie says nothing about the token (no offline guessing), and a
//! restart (how the token is rotated) ends every session. Writes made with the
//! cookie, logging out included, must carry the `x-modelrelay-csrf` header,
//! which a cross-site form cannot send.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use tracing::warn;

use crate::app::{AppState, PeerAddr};
use crate::auth::{bearer_or_bare, client_address};
use crate::codes;
use crate::error::{ApiError, ApiFlavor, ClientError};
use crate::log_budget::LogBudget;

/// The dashboard's session cookie.
pub(super) const SESSION_COOKIE: &str = "modelrelay_session";
/// How long a dashboard session lasts.
pub(super) const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The header dashboard writes carry.
pub const CSRF_HEADER: &str = "x-modelrelay-csrf";

/// The key dashboard sessions are signed with: random, drawn once per process.
pub(crate) struct SessionKey(Option<ring::hmac::Key>);

impl SessionKey {
    /// A fresh random key; without the system's randomness, none (dashboard
    /// logins are then refused, the bearer token still works).
    pub(crate) fn random() -> Self {
        let key =
            ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new());
        if key.is_err() {
            tracing::error!(
                "no system randomness for the dashboard session key: dashboard logins are off"
            );
        }
        Self(key.ok())
    }
}

/// How a request proved it is the operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum AdminProof {
    Bearer,
    Session,
}

/// Why a request is not let in.
pub(super) enum Refusal {
    /// No admin token is configured.
    Disabled,
    /// Nothing or the wrong thing was presented.
    Unauthorized,
    /// Too many failures from this address.
    CoolingDown(Duration),
    /// A cookie-authenticated write without the CSRF header.
    MissingCsrf,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let error = match self {
            Self::Disabled => ApiError::new(
                StatusCode::FORBIDDEN,
                codes::ADMIN_DISABLED,
                "The admin API is off; start the server with --admin-token (MODELRELAY_ADMIN_TOKEN).",
            )
            .for_api(ApiFlavor::OpenAi),
            Self::Unauthorized => ApiError::new(
                StatusCode::UNAUTHORIZED,
                codes::INVALID_ADMIN_TOKEN,
                "A valid admin token is required: Authorization: Bearer <token>.",
            )
            .for_api(ApiFlavor::OpenAi)
            .challenging("Bearer realm=\"modelrelay-admin\""),
            Self::CoolingDown(retry) => ApiError::auth_cooldown(
                "Too many failed admin authentications from this address; try again later.",
                retry,
            )
            .for_api(ApiFlavor::OpenAi),
            Self::MissingCsrf => ApiError::new(
                StatusCode::FORBIDDEN,
                codes::CSRF_HEADER_MISSING,
                format!("Writes made with the dashboard session need the {CSRF_HEADER} header."),
            )
            .for_api(ApiFlavor::OpenAi),
        };
        ClientError::into_response(error)
    }
}

/// Checks the admin token (bearer or dashboard session) of a request.
pub(super) fn authorize(
    app: &AppState,
    peer: PeerAddr,
    method: &Method,
    headers: &HeaderMap,
) -> Result<AdminProof, Refusal> {
    let Some(token) = &app.config.admin_token else {
        return Err(Refusal::Disabled);
    };
    let now = tokio::time::Instant::now().into_std();
    let address = client_address(peer.0.ip(), headers, app.config.trust_forwarded_for);
    app.admin_limiter
        .check(address, now)
        .map_err(Refusal::CoolingDown)?;
    if let Some(presented) = bearer_or_bare(headers) {
        if token.matches(presented) {
            // The operator's address stays exempt from the limiter's backstop,
            // so a flood of wrong tokens from elsewhere cannot shut it out.
            app.admin_limiter.success(address);
            return Ok(AdminProof::Bearer);
        }
        app.admin_limiter.failure(address, now);
        static LINES: LogBudget = LogBudget::new();
        if let Some(left_out) = LINES.allow(now) {
            warn!(peer = %peer.0, left_out, "refused an admin request: wrong token");
        }
        return Err(Refusal::Unauthorized);
    }
    if let Some(session) = cookie(headers, SESSION_COOKIE)
        && session_is_valid(app, session, SystemTime::now())
    {
        let writes = !matches!(*method, Method::GET | Method::HEAD);
        if writes && !headers.contains_key(CSRF_HEADER) {
            return Err(Refusal::MissingCsrf);
        }
        app.admin_limiter.success(address);
        return Ok(AdminProof::Session);
    }
    Err(Refusal::Unauthorized)
}

fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value)
}

/// What a session's signature covers: its expiry, in seconds since the epoch.
fn session_message(expires: &str) -> String {
    format!("dashboard-session:{expires}")
}

/// A session value: its expiry and a signature of it.
pub(super) fn session_value(app: &AppState, expires: u64) -> Option<String> {
    app.config.admin_token.as_ref()?;
    let key = app.session_key.0.as_ref()?;
    let expires = expires.to_string();
    let tag = ring::hmac::sign(key, session_message(&expires).as_bytes());
    Some(format!(
        "{expires}.{}",
        URL_SAFE_NO_PAD.encode(tag.as_ref())
    ))
}

fn session_is_valid(app: &AppState, value: &str, now: SystemTime) -> bool {
    let (Some(_), Some(key)) = (&app.config.admin_token, &app.session_key.0) else {
        return false;
    };
    let Some((expires, signature)) = value.split_once('.') else {
        return false;
    };
    let Ok(expires_at) = expires.parse::<u64>() else {
        return false;
    };
    let now = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if expires_at <= now {
        return false;
    }
    let Ok(signature) = URL_SAFE_NO_PAD.decode(signature) else {
        return false;
    };
    ring::hmac::verify(key, session_message(expires).as_bytes(), &signature).is_ok()
}

/// Proof that a request carries the admin token: handlers that take it run only for the operator.
pub(crate) struct Admin;

impl axum::extract::FromRequestParts<Arc<AppState>> for Admin {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        app: &Arc<AppState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = peer_of(parts).map_err(IntoResponse::into_response)?;
        authorize(app, peer, &parts.method, &parts.headers)
            .map(|_| Self)
            .map_err(IntoResponse::into_response)
    }
}

/// The client's address, as the HTTP loop put it on the request.
pub(super) fn peer_of(parts: &Parts) -> Result<PeerAddr, StatusCode> {
    parts
        .extensions
        .get::<ConnectInfo<PeerAddr>>()
        .map(|info| info.0)
        .ok_or(StatusCode::INTERNAL_SERVER_ERROR)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn cookies_are_found_among_others() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; modelrelay_session=5.ab; b=2"),
        );
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("5.ab"));
        assert_eq!(cookie(&headers, "c"), None);
    }
}

//! The API-key gate in front of client routes (with `--require-api-keys`).

use std::time::SystemTime;

use axum::http::{HeaderMap, StatusCode};
use tracing::warn;

use crate::app::AppState;
use crate::auth::{bare_authorization, bearer};
use crate::codes;
use crate::error::{ApiError, ApiFlavor, ClientError};
use crate::keys::{ApiKeyId, is_key_shaped};

/// Whether a header value is, or is a bearer of, something shaped like one of the relay's keys.
pub(super) fn carries_relay_key(value: &str) -> bool {
    let value = value.trim();
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value,
    };
    is_key_shaped(token)
}

/// With `--require-api-keys` (else nothing to check, and `None`): the client's
/// key, checked before the request is read; its id, to count its usage. The
/// key is taken from `Authorization: Bearer`, or on `/v1/messages` from
/// `x-api-key` (as Anthropic clients send it), preferring whichever has a
/// relay key's shape, so a client may also carry a backend credential in the
/// other header.
pub(super) async fn require_api_key(
    app: &AppState,
    flavor: ApiFlavor,
    headers: &HeaderMap,
) -> Result<Option<ApiKeyId>, ClientError> {
    if !app.config.require_api_keys {
        return Ok(None);
    }
    let Some(keys) = &app.config.keys else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            codes::KEY_STORE_UNAVAILABLE,
            "API keys are required but this server has no key database.",
        )
        .for_api(flavor));
    };
    let Some(presented) = presented_key(flavor, headers) else {
        let hint = match flavor {
            ApiFlavor::OpenAi => "Authorization: Bearer mr-…",
            ApiFlavor::Anthropic => "x-api-key: mr-… (or Authorization: Bearer mr-…)",
        };
        return Err(unauthorized(
            flavor,
            codes::MISSING_API_KEY,
            format!("An API key is required: {hint}."),
        ));
    };
    match keys.authenticate(presented, SystemTime::now()).await {
        Ok(Some(key)) => Ok(Some(key)),
        Ok(None) => Err(unauthorized(
            flavor,
            codes::INVALID_API_KEY,
            "The API key is not valid (unknown or revoked).".into(),
        )),
        Err(error) => {
            warn!(%error, "the key store failed");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                codes::KEY_STORE_UNAVAILABLE,
                "API keys cannot be checked right now.",
            )
            .for_api(flavor))
        }
    }
}

/// The key a request presents: the bearer token (or a key-shaped bare
/// `Authorization` value, as ModelRelay's clients may send it) or (Anthropic)
/// `x-api-key`, a key-shaped one first.
fn presented_key(flavor: ApiFlavor, headers: &HeaderMap) -> Option<&str> {
    let x_api_key = (flavor == ApiFlavor::Anthropic)
        .then(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .flatten()
        .map(str::trim)
        .filter(|key| !key.is_empty());
    let authorization =
        bearer(headers).or_else(|| bare_authorization(headers).filter(|key| is_key_shaped(key)));
    let candidates = [authorization, x_api_key];
    candidates
        .iter()
        .flatten()
        .find(|key| is_key_shaped(key))
        .or(candidates.iter().flatten().next())
        .copied()
}

fn unauthorized(flavor: ApiFlavor, code: &'static str, message: String) -> ClientError {
    ApiError::new(StatusCode::UNAUTHORIZED, code, message)
        .for_api(flavor)
        .challenging("Bearer")
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    const OURS: &str = "mr-aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_aZ09-_a";
    const THEIRS: &str = "mr_live_aZ09aZ09aZ09aZ09aZ09aZ09aZ09aZ09";

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(name, value)| (name.parse().unwrap(), HeaderValue::from_static(value)))
            .collect()
    }

    #[test]
    fn modelrelay_keys_are_recognised_and_never_passed_on_like_the_relays_own() {
        for key in [OURS, THEIRS] {
            assert!(carries_relay_key(key), "{key}");
            assert!(carries_relay_key(&format!("Bearer {key}")), "{key}");
        }
        assert!(!carries_relay_key("Bearer sk-backend-credential"));
    }

    #[test]
    fn a_bare_authorization_value_counts_only_when_it_is_shaped_like_a_key() {
        let bare = headers(&[("authorization", THEIRS)]);
        assert_eq!(presented_key(ApiFlavor::OpenAi, &bare), Some(THEIRS));
        let basic = headers(&[("authorization", "Basic dXNlcjpwYXNz")]);
        assert_eq!(presented_key(ApiFlavor::OpenAi, &basic), None);
        // A backend credential in the bearer, the relay's key in x-api-key.
        let both = headers(&[
            ("authorization", "Bearer sk-backend"),
            ("x-api-key", THEIRS),
        ]);
        assert_eq!(presented_key(ApiFlavor::Anthropic, &both), Some(THEIRS));
    }
}

//! Letting a worker in, the same way for both transports: the cooldown, the secret, the provider.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use modelrelay_core::relay::AuthOutcome;
use tracing::warn;

use crate::app::AppState;
use crate::hub::Transport;

/// What a worker presented to be let in.
pub(super) struct Candidate<'a> {
    /// How it connected.
    pub(super) transport: Transport,
    /// Its address, for log lines.
    pub(super) peer: SocketAddr,
    /// The address its failures count against.
    pub(super) address: IpAddr,
    /// The secret it presented, if any.
    pub(super) secret: Option<&'a str>,
    /// The provider it asked to join.
    pub(super) provider: &'a str,
}

/// The verdict on a worker that may be heard.
pub(super) struct Admission {
    /// Whether its secret was right (the core closes a rejected link).
    pub(super) auth: AuthOutcome,
    /// Why its link must be closed at once (an unknown provider), if it must.
    pub(super) refusal: Option<String>,
}

/// Checks a worker: `Err(retry_after)` while its address cools down, else
/// the verdict on its secret (a wrong one counts as a failure) and provider.
pub(super) fn admit(
    app: &AppState,
    candidate: &Candidate<'_>,
    now: Instant,
) -> Result<Admission, Duration> {
    app.limiter.check(candidate.address, now)?;
    let Candidate {
        transport, peer, ..
    } = candidate;
    let who = worker_noun(*transport);
    let auth = match candidate.secret {
        Some(secret) if app.config.worker_secret.matches(secret) => AuthOutcome::Accepted,
        presented => {
            app.limiter.failure(candidate.address, now);
            let why = if presented.is_some() { "a wrong" } else { "no" };
            warn!(%peer, "{who} presented {why} secret");
            AuthOutcome::Rejected
        }
    };
    let provider = candidate.provider;
    let refusal = (provider != app.config.provider.as_str()).then(|| {
        warn!(%peer, %provider, "{who} asked for an unknown provider");
        format!("unknown provider {provider:?}")
    });
    Ok(Admission { auth, refusal })
}

/// How log lines name a worker on `transport`.
fn worker_noun(transport: Transport) -> &'static str {
    match transport {
        Transport::WebSocket => "worker",
        Transport::Quic => "QUIC worker",
    }
}

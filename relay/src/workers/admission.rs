//! Letting a worker in, the same way for both transports: the cooldown, the secret, the provider.
//!
//! Everything here is decided from what the worker presents before its link
//! exists (the upgrade request's headers, or the QUIC hello): a worker that is
//! refused never gets a link, so nothing it sends after that is read.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::warn;

use crate::app::AppState;
use crate::hub::Transport;
use crate::log_budget::LogBudget;

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

/// Why a worker is not let in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// Its address cools down after failed attempts, for this much longer.
    Cooldown(Duration),
    /// It presented no secret, or a wrong one (counted as a failure).
    Unauthorized,
    /// It asked for a provider this relay does not serve (its secret was right).
    UnknownProvider(String),
}

impl Refusal {
    /// The refusal in words, for a close reason or an error body.
    pub(super) fn reason(&self) -> String {
        match self {
            Self::Cooldown(_) => {
                "too many failed worker authentications from this address; try again later".into()
            }
            Self::Unauthorized => "missing or wrong worker secret".into(),
            Self::UnknownProvider(provider) => format!("unknown provider {provider:?}"),
        }
    }
}

/// Checks a worker, in this order: its address's cooldown, its secret (a
/// missing or wrong one counts as a failure), then its provider.
/// Log lines about workers refused during a cool-down (strangers cause them at will).
static COOLING_DOWN_LINES: LogBudget = LogBudget::new();
/// Log lines about wrong or missing worker secrets.
static WRONG_SECRET_LINES: LogBudget = LogBudget::new();
/// Log lines about unknown providers.
static UNKNOWN_PROVIDER_LINES: LogBudget = LogBudget::new();

pub(super) fn admit(
    app: &AppState,
    candidate: &Candidate<'_>,
    now: Instant,
) -> Result<(), Refusal> {
    let Candidate {
        transport, peer, ..
    } = candidate;
    let who = worker_noun(*transport);
    if let Err(retry_after) = app.limiter.check(candidate.address, now) {
        if let Some(left_out) = COOLING_DOWN_LINES.allow(now) {
            warn!(%peer, left_out, "refusing a {who} connection: too many failed attempts from this address");
        }
        return Err(Refusal::Cooldown(retry_after));
    }
    match candidate.secret {
        Some(secret) if app.config.worker_secret.matches(secret) => {
            app.limiter.success(candidate.address);
        }
        presented => {
            app.limiter.failure(candidate.address, now);
            let why = if presented.is_some() { "a wrong" } else { "no" };
            if let Some(left_out) = WRONG_SECRET_LINES.allow(now) {
                warn!(%peer, left_out, "{who} presented {why} secret");
            }
            return Err(Refusal::Unauthorized);
        }
    }
    let provider = candidate.provider;
    if provider != app.config.provider.as_str() {
        if let Some(left_out) = UNKNOWN_PROVIDER_LINES.allow(now) {
            warn!(%peer, %provider, left_out, "{who} asked for an unknown provider");
        }
        return Err(Refusal::UnknownProvider(provider.to_owned()));
    }
    Ok(())
}

/// How log lines name a worker on `transport`.
fn worker_noun(transport: Transport) -> &'static str {
    match transport {
        Transport::WebSocket => "worker",
        Transport::Quic => "QUIC worker",
    }
}

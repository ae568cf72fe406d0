//! Worker links over QUIC: the endpoint, the pool of connections still before
//! their hello, and the same admission as the WebSocket endpoint, on a UDP port.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use modelrelay_core::WorkerId;
use modelrelay_core::wire::{FrameLimits, LinkFlow, WireVersion};
use modelrelay_transports::quic;
use modelrelay_transports::tls::{RelayIdentity, TlsError};
use modelrelay_transports::{ReadLimit, close_code};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::app::AppState;
use crate::auth::counted_as;
use crate::hub::Transport;
use crate::log_budget::LogBudget;

use super::admission::{Candidate, admit};
use super::link::{LinkInfo, run_link};

/// Where and with which certificate the relay takes QUIC worker links.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuicSettings {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// PEM certificate chain; without it a self-signed certificate is used.
    pub cert: Option<PathBuf>,
    /// PEM private key for `cert`.
    pub key: Option<PathBuf>,
    /// Where the self-signed certificate is kept across restarts.
    pub data_dir: PathBuf,
}

/// Why the QUIC endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicSetupError {
    /// The certificate could not be loaded or made.
    #[error("QUIC certificate: {0}")]
    Tls(#[from] TlsError),
    /// The QUIC settings could not be built.
    #[error("{0}")]
    Setup(#[from] quic::SetupError),
    /// `--tls-cert` without `--tls-key` or the other way round.
    #[error("--tls-cert and --tls-key go together")]
    HalfACertificate,
    /// The UDP port could not be bound.
    #[error("cannot listen for QUIC on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

/// The relay's QUIC endpoint for `settings`, and its certificate's fingerprint.
pub fn endpoint(settings: &QuicSettings) -> Result<(quinn::Endpoint, String), QuicSetupError> {
    let identity = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => RelayIdentity::from_pem_files(cert, key)?,
        (None, None) => {
            let mut names = vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ];
            if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
                names.push(host.trim().to_owned());
            }
            RelayIdentity::self_signed_in(&settings.data_dir, &names)?
        }
        _ => return Err(QuicSetupError::HalfACertificate),
    };
    let fingerprint = identity.fingerprint();
    if identity.generated {
        info!(
            %fingerprint,
            dir = %settings.data_dir.display(),
            "QUIC uses a self-signed certificate; start workers with --server-cert-sha256 {fingerprint}"
        );
    }
    let config = quic::server_config(&identity, quic::relay_transport())?;
    let socket = std::net::UdpSocket::bind(settings.listen)
        .map_err(|e| QuicSetupError::Bind(settings.listen, e))?;
    let runtime = quinn::default_runtime().ok_or_else(|| {
        QuicSetupError::Bind(settings.listen, std::io::Error::other("no async runtime"))
    })?;
    let endpoint = quinn::Endpoint::new(
        quic::relay_endpoint_config(&identity),
        Some(config),
        socket,
        runtime,
    )
    .map_err(|e| QuicSetupError::Bind(settings.listen, e))?;
    Ok((endpoint, fingerprint))
}

/// Connections that have not said who they are yet, at most this many from one
/// address (an IPv6 address counts by its /64, as failed logins do).
const PENDING_PER_ADDRESS: usize = 4;
/// And at most this many in all.
const PENDING_IN_ALL: usize = 64;
/// Places past [`PENDING_IN_ALL`] kept for addresses that have logged in
/// before, so stalled handshakes from strangers cannot keep known workers out.
const PENDING_RESERVE: usize = 16;

/// Connections still before their hello, counted per address: until it says
/// who it is, a peer may hold only a little of the relay.
#[derive(Debug, Default)]
struct Pending(Mutex<HashMap<IpAddr, usize>>);

/// One pending connection; dropping it gives its place back.
struct PendingPlace<'a> {
    pending: &'a Pending,
    ip: IpAddr,
}

impl Pending {
    /// A place for a connection from `ip`, if one is free; `known_worker`: the
    /// address has logged in before and may use the reserve.
    fn enter(&self, ip: IpAddr, known_worker: bool) -> Option<PendingPlace<'_>> {
        let ip = counted_as(ip);
        let mut counts = self.0.lock().expect("pending lock");
        let all: usize = counts.values().sum();
        let in_all = if known_worker {
            PENDING_IN_ALL + PENDING_RESERVE
        } else {
            PENDING_IN_ALL
        };
        let here = counts.entry(ip).or_insert(0);
        if *here >= PENDING_PER_ADDRESS || all >= in_all {
            if *here == 0 {
                counts.remove(&ip);
            }
            return None;
        }
        *here += 1;
        Some(PendingPlace { pending: self, ip })
    }
}

impl Drop for PendingPlace<'_> {
    fn drop(&mut self) {
        let mut counts = self.pending.0.lock().expect("pending lock");
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Accepts worker connections until `stop` is cancelled.
///
/// A connection whose source address is not proven yet is answered with a
/// QUIC Retry, which costs the relay one packet and no state: only a peer that
/// receives packets at its address comes back, so spoofed sources can neither
/// hold a place in the pool of connections before their hello nor be counted
/// against an address.
pub(crate) async fn accept_workers(
    endpoint: quinn::Endpoint,
    app: Arc<AppState>,
    stop: CancellationToken,
) {
    let pending = Arc::new(Pending::default());
    loop {
        let incoming = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { break };
        if !incoming.remote_address_validated() {
            // quinn guarantees that an unvalidated connection may be retried; if
            // not, dropping the error refuses it.
            let _ = incoming.retry();
            continue;
        }
        tokio::spawn(serve_connection(
            incoming,
            Arc::clone(&app),
            Arc::clone(&pending),
        ));
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Log lines about refused QUIC connections: strangers can cause them at will.
static REFUSAL_LINES: LogBudget = LogBudget::new();

/// Takes one QUIC connection (its address proven) through its hello and
/// admission, then runs its link. Only the hello is read before the secret is
/// checked; a refused worker's connection is closed with 1008 and the reason.
async fn serve_connection(incoming: quinn::Incoming, app: Arc<AppState>, pending: Arc<Pending>) {
    let peer = incoming.remote_address();
    if app.limiter.check(peer.ip(), now()).is_err() {
        if let Some(left_out) = REFUSAL_LINES.allow(now()) {
            warn!(%peer, left_out, "refusing a QUIC worker connection: too many failed attempts from this address");
        }
        incoming.refuse();
        return;
    }
    let known_worker = app.limiter.has_logged_in(peer.ip());
    let Some(place) = pending.enter(peer.ip(), known_worker) else {
        if let Some(left_out) = REFUSAL_LINES.allow(now()) {
            warn!(%peer, left_out, "refusing a QUIC worker connection: too many connections still before their hello");
        }
        incoming.refuse();
        return;
    };
    let arrival = quic::accept(incoming).await;
    drop(place);
    let arrival = match arrival {
        Ok(arrival) => arrival,
        Err(error) if error.after_handshake() => {
            // The handshake proved the address; saying nothing useful after it
            // is as good as presenting no secret.
            app.limiter.failure(peer.ip(), now());
            if let Some(left_out) = REFUSAL_LINES.allow(now()) {
                warn!(%peer, %error, left_out, "QUIC worker connection without a valid hello");
            }
            return;
        }
        Err(error) => {
            // A handshake that never completes proves nothing and counts for nothing.
            debug!(%peer, %error, "QUIC worker connection failed before its hello");
            return;
        }
    };
    // The cooldown is checked again now: failures by other connections may have
    // started one while this one was shaking hands.
    let candidate = Candidate {
        transport: Transport::Quic,
        peer,
        address: peer.ip(),
        secret: Some(&arrival.hello.secret),
        provider: &arrival.hello.provider,
    };
    if let Err(refusal) = admit(&app, &candidate, now()) {
        arrival.refuse(close_code::POLICY_VIOLATION, &refusal.reason());
        return;
    }
    let limits = app.config.frame_limits;
    let reads = ReadLimit::until_raised(FrameLimits::before_register_on(WireVersion::V2), limits);
    // Windows need nothing from the worker over QUIC (the relay applies them to
    // its reads of each request's stream), so every QUIC worker gets them.
    let flow = if app.config.link_windows {
        LinkFlow::Windowed
    } else {
        LinkFlow::Unwindowed
    };
    let (reader, writer) = arrival.into_link(limits, reads.clone(), flow);
    let worker = WorkerId::new(app.next_worker.fetch_add(1, Ordering::Relaxed));
    let link = LinkInfo {
        worker,
        wire: WireVersion::V2,
        flow,
        peer,
        transport: Transport::Quic,
        reads,
    };
    run_link(reader, writer, link, app.hub.clone()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strangers_fill_the_pending_pool_by_their_slash_64_and_known_workers_keep_a_reserve() {
        let pending = Pending::default();
        // One /64 holds at most its share, however many addresses it uses.
        let one_network: Vec<_> = (1..=8u16)
            .filter_map(|host| pending.enter(format!("2001:db8::{host:x}").parse().unwrap(), false))
            .collect();
        assert_eq!(one_network.len(), PENDING_PER_ADDRESS);
        // Strangers fill the rest of the pool...
        let strangers: Vec<_> = (0..PENDING_IN_ALL as u32)
            .filter_map(|n| pending.enter(IpAddr::from((0x0a00_0000_u32 + n).to_be_bytes()), false))
            .collect();
        assert_eq!(strangers.len() + one_network.len(), PENDING_IN_ALL);
        assert!(pending.enter("192.0.2.1".parse().unwrap(), false).is_none());
        // ...and a worker that logged in before still gets a place.
        assert!(pending.enter("192.0.2.9".parse().unwrap(), true).is_some());
    }
}

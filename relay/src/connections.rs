//! Caps on open HTTP connections: one for all, and an optional one per address.
//!
//! A connection holds its [`ConnectionSlot`] while hyper serves it. A worker
//! link upgraded at `/v1/worker/connect` leaves hyper (its connection task ends
//! at the upgrade), so it gives its slot back: authenticated worker links never
//! count. A connection past a cap gets one short HTTP answer and is closed,
//! never left waiting.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use modelrelay_core::wire::CLIENT_REQUEST_ID_HEADER;
use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tracing::warn;

use crate::codes;
use crate::log_budget::LogBudget;
use crate::request_id::{PublicRequestId, REQUEST_ID_HEADER};

/// How long a refused connection may take to receive its answer.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections past `--max-connections` kept for addresses that have logged in
/// as workers, so a flood of idle clients cannot keep reconnecting workers out.
pub(crate) const WORKER_RESERVE: usize = 256;

/// Refusals being written at once; past it, a connection is closed without an answer.
const MAX_REFUSALS_IN_FLIGHT: usize = 256;

/// The connection caps and what is open now.
#[derive(Debug)]
pub(crate) struct ConnectionLimits {
    /// Most open client connections; 0 means no limit.
    max: usize,
    /// Most open client connections from one address; 0 means no limit.
    per_address: usize,
    open: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
    refusing: AtomicUsize,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The relay holds `--max-connections` connections.
    Full,
    /// This address holds `--max-connections-per-address` connections.
    AddressFull,
}

/// One counted connection; gives its place back when dropped.
#[derive(Debug)]
pub(crate) struct ConnectionSlot {
    limits: Arc<ConnectionLimits>,
    address: IpAddr,
}

impl ConnectionLimits {
    /// Caps of `max` connections in all and `per_address` from one address (0: no cap).
    pub(crate) fn new(max: usize, per_address: usize) -> Arc<Self> {
        Arc::new(Self {
            max,
            per_address,
            open: AtomicUsize::new(0),
            by_address: Mutex::new(HashMap::new()),
            refusing: AtomicUsize::new(0),
        })
    }

    /// A slot for a new connection from `address`, or why there is none. An
    /// address that has logged in as a worker may also use the
    /// [`WORKER_RESERVE`] slots past the cap.
    pub(crate) fn admit(
        self: &Arc<Self>,
        address: IpAddr,
        known_worker: bool,
    ) -> Result<ConnectionSlot, Refusal> {
        let open = self.open.fetch_add(1, Ordering::AcqRel);
        let cap = if known_worker {
            self.max.saturating_add(WORKER_RESERVE)
        } else {
            self.max
        };
        if self.max != 0 && open >= cap {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::Full);
        }
        if self.per_address != 0 {
            let mut by_address = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            let count = by_address.entry(address).or_insert(0);
            if *count >= self.per_address {
                drop(by_address);
                self.open.fetch_sub(1, Ordering::AcqRel);
                return Err(Refusal::AddressFull);
            }
            *count += 1;
        }
        Ok(ConnectionSlot {
            limits: Arc::clone(self),
            address,
        })
    }

    /// Connections counted now.
    #[cfg(test)]
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Answers a refused connection with the reason and closes it, in the
    /// background and within [`REFUSAL_TIMEOUT`]; never more than
    /// [`MAX_REFUSALS_IN_FLIGHT`] at once (past that the connection is just closed).
    pub(crate) fn refuse<I>(self: &Arc<Self>, mut tcp: I, refusal: Refusal)
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        if self.refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS_IN_FLIGHT {
            self.refusing.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let limits = Arc::clone(self);
        tokio::spawn(async move {
            let answer = refusal_answer(refusal);
            let _ = tokio::time::timeout(REFUSAL_TIMEOUT, async {
                tcp.write_all(answer.as_bytes()).await?;
                tcp.shutdown().await?;
                // Read what the client sent, so closing does not reset the
                // connection before it has read the answer.
                let mut sink = [0u8; 4096];
                let mut left: usize = 64 * 1024;
                while left > 0 {
                    let n = tcp.read(&mut sink).await?;
                    if n == 0 {
                        break;
                    }
                    left = left.saturating_sub(n);
                }
                std::io::Result::Ok(())
            })
            .await;
            limits.refusing.fetch_sub(1, Ordering::AcqRel);
        });
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let limits = &self.limits;
        limits.open.fetch_sub(1, Ordering::AcqRel);
        if limits.per_address != 0 {
            let mut by_address = limits.by_address.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = by_address.get_mut(&self.address) {
                *count -= 1;
                if *count == 0 {
                    by_address.remove(&self.address);
                }
            }
        }
    }
}

/// The whole HTTP answer to a refused connection: the status, the JSON error, a request id, `Connection: close`.
fn refusal_answer(refusal: Refusal) -> String {
    let (status, code, message) = match refusal {
        Refusal::Full => (
            StatusCode::SERVICE_UNAVAILABLE,
            codes::TOO_MANY_CONNECTIONS,
            "The relay holds as many connections as it allows; try again shortly.",
        ),
        Refusal::AddressFull => (
            StatusCode::TOO_MANY_REQUESTS,
            codes::TOO_MANY_CONNECTIONS_FROM_ADDRESS,
            "This address holds as many connections as the relay allows one address.",
        ),
    };
    let kind = if status == StatusCode::TOO_MANY_REQUESTS {
        "rate_limit_error"
    } else {
        "server_error"
    };
    let body = json!({"error": {"message": message, "type": kind, "code": code}}).to_string();
    // Like every answer, it carries a request id (for the request it did not read).
    let id = PublicRequestId::generate();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nretry-after: 1\r\n{CLIENT_REQUEST_ID_HEADER}: {id}\r\n{REQUEST_ID_HEADER}: {id}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

/// Logs a refusal (at most the count of refusals is interesting; addresses may be many).
pub(crate) fn log_refusal(refusal: Refusal, address: IpAddr) {
    static LINES: LogBudget = LogBudget::new();
    let Some(left_out) = LINES.allow(std::time::Instant::now()) else {
        return;
    };
    match refusal {
        Refusal::Full => {
            warn!(%address, left_out, "refusing a connection: --max-connections reached")
        }
        Refusal::AddressFull => {
            warn!(%address, left_out, "refusing a connection: --max-connections-per-address reached")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_counted_in_all_and_per_address_and_given_back_when_dropped() {
        let limits = ConnectionLimits::new(3, 2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let first = limits.admit(a, false).unwrap();
        let _second = limits.admit(a, false).unwrap();
        assert_eq!(limits.admit(a, false).unwrap_err(), Refusal::AddressFull);
        let _third = limits.admit(b, false).unwrap();
        assert_eq!(limits.admit(b, false).unwrap_err(), Refusal::Full);
        assert_eq!(limits.open(), 3);
        drop(first);
        assert_eq!(limits.open(), 2);
        let _again = limits.admit(a, false).unwrap();
        // 0 means no cap.
        let unlimited = ConnectionLimits::new(0, 0);
        let held: Vec<_> = (0..100)
            .map(|_| unlimited.admit(a, false).unwrap())
            .collect();
        assert_eq!(unlimited.open(), held.len());
    }

    #[test]
    fn addresses_that_logged_in_as_workers_may_use_the_reserve_past_the_cap() {
        let limits = ConnectionLimits::new(2, 0);
        let stranger: IpAddr = "10.0.0.1".parse().unwrap();
        let worker: IpAddr = "10.0.0.9".parse().unwrap();
        let _held: Vec<_> = (0..2)
            .map(|_| limits.admit(stranger, false).unwrap())
            .collect();
        assert_eq!(limits.admit(stranger, false).unwrap_err(), Refusal::Full);
        let reserve: Vec<_> = (0..WORKER_RESERVE)
            .map(|_| limits.admit(worker, true).unwrap())
            .collect();
        assert_eq!(limits.admit(worker, true).unwrap_err(), Refusal::Full);
        assert_eq!(limits.open(), 2 + reserve.len());
    }
}

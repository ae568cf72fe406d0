//! Worker authentication: a constant-time secret check and a per-address cooldown after failures.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ring::digest::{SHA256, digest};
use subtle::ConstantTimeEq;

/// The shared worker secret, kept only as a digest so it cannot leak through `Debug` or logs.
#[derive(Clone)]
pub struct WorkerSecret([u8; 32]);

impl WorkerSecret {
    /// Wraps a secret.
    pub fn new(secret: &str) -> Self {
        let mut hash = [0u8; 32];
        hash.copy_from_slice(digest(&SHA256, secret.as_bytes()).as_ref());
        Self(hash)
    }

    /// Whether `presented` is the secret; the time taken does not depend on where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = digest(&SHA256, presented.as_bytes());
        bool::from(self.0.as_slice().ct_eq(presented.as_ref()))
    }
}

impl std::fmt::Debug for WorkerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WorkerSecret(<redacted>)")
    }
}

/// The admin token for `/admin/*`, `/dashboard` and `/setup`, kept only as a digest.
#[derive(Clone)]
pub struct AdminToken(WorkerSecret);

impl AdminToken {
    /// Wraps a token.
    pub fn new(token: &str) -> Self {
        Self(WorkerSecret::new(token))
    }

    /// Whether `presented` is the token, compared in constant time.
    pub fn matches(&self, presented: &str) -> bool {
        self.0.matches(presented)
    }

    /// A key derived from the token, for signing dashboard sessions (changes with the token).
    pub(crate) fn session_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &(self.0).0)
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

/// When an address that keeps failing is shut out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AuthLimits {
    /// Failures allowed within `window`.
    pub max_failures: u32,
    /// The window failures are counted in.
    pub window: Duration,
    /// How long an address is refused once over the limit.
    pub cooldown: Duration,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
}

/// Counts failed worker authentications per address.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    limits: AuthLimits,
    records: Mutex<HashMap<IpAddr, Record>>,
}

/// Most addresses tracked before stale ones are swept.
const SWEEP_AT: usize = 4096;

impl AuthLimiter {
    /// A limiter with these limits.
    pub fn new(limits: AuthLimits) -> Self {
        Self {
            limits,
            records: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `ip` is shut out.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let records = self.records.lock().expect("limiter lock");
        match records.get(&ip).and_then(|r| r.blocked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt from `ip`.
    pub fn failure(&self, ip: IpAddr, now: Instant) {
        let mut records = self.records.lock().expect("limiter lock");
        if records.len() >= SWEEP_AT {
            let stale = self.limits.window + self.limits.cooldown;
            records.retain(|_, r| now.saturating_duration_since(r.window_start) < stale);
        }
        let record = records.entry(ip).or_insert(Record {
            failures: 0,
            window_start: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(record.window_start) >= self.limits.window {
            record.failures = 0;
            record.window_start = now;
        }
        record.failures += 1;
        if record.failures >= self.limits.max_failures {
            record.blocked_until = now.checked_add(self.limits.cooldown);
            record.failures = 0;
            record.window_start = now;
        }
    }
}

/// The address an authentication attempt counts against: the peer, or with
/// `trust_forwarded_for` the last address the proxy in front appended to
/// `X-Forwarded-For` (behind a proxy every peer is the proxy itself).
pub fn client_address(
    peer: IpAddr,
    forwarded_for: Option<&str>,
    trust_forwarded_for: bool,
) -> IpAddr {
    if !trust_forwarded_for {
        return peer;
    }
    forwarded_for
        .and_then(|list| list.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_matches_only_itself_and_never_prints() {
        let secret = WorkerSecret::new("s3cret");
        assert!(secret.matches("s3cret"));
        assert!(!secret.matches("s3cre"));
        assert!(!secret.matches("s3cret "));
        assert!(!secret.matches(""));
        assert!(!format!("{secret:?}").contains("s3cret"));
    }

    #[test]
    fn an_address_is_shut_out_after_repeated_failures_for_the_cooldown() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
        });
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let t0 = Instant::now();
        for _ in 0..2 {
            limiter.failure(ip, t0);
            assert_eq!(limiter.check(ip, t0), Ok(()));
        }
        limiter.failure(ip, t0);
        assert_eq!(limiter.check(ip, t0), Err(Duration::from_secs(30)));
        assert_eq!(limiter.check(other, t0), Ok(()));
        assert_eq!(limiter.check(ip, t0 + Duration::from_secs(30)), Ok(()));
    }

    #[test]
    fn behind_a_trusted_proxy_attempts_count_against_the_forwarded_address() {
        let proxy: IpAddr = "10.0.0.9".parse().unwrap();
        let header = Some("203.0.113.7, 198.51.100.2");
        assert_eq!(client_address(proxy, header, false), proxy);
        assert_eq!(
            client_address(proxy, header, true),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(proxy, Some("garbage"), true), proxy);
        assert_eq!(client_address(proxy, None, true), proxy);
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 2,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
        });
        let ip: IpAddr = "::1".parse().unwrap();
        let t0 = Instant::now();
        limiter.failure(ip, t0);
        limiter.failure(ip, t0 + Duration::from_secs(11));
        assert_eq!(limiter.check(ip, t0 + Duration::from_secs(11)), Ok(()));
        // A success elsewhere from the same address does not wipe the count.
        limiter.failure(ip, t0 + Duration::from_secs(12));
        assert!(limiter.check(ip, t0 + Duration::from_secs(12)).is_err());
    }
}

//! Authentication shared by every audience: constant-time secret checks, bearer tokens, and a per-address cooldown after failures.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};

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

/// The worker secrets the relay accepts: one, or more while a rotation is under
/// way. Each is kept only as a digest.
#[derive(Clone, Debug)]
pub struct WorkerSecrets(Vec<WorkerSecret>);

impl WorkerSecrets {
    /// Accepts any of `secrets`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Self {
        Self(secrets.into_iter().map(WorkerSecret::new).collect())
    }

    /// Whether `presented` is one of the secrets. Every secret is compared, each
    /// in constant time, so the time taken says neither which one matched nor
    /// where they differ.
    pub fn matches(&self, presented: &str) -> bool {
        let presented = digest(&SHA256, presented.as_bytes());
        let matched = self
            .0
            .iter()
            .fold(subtle::Choice::from(0), |matched, secret| {
                matched | secret.0.as_slice().ct_eq(presented.as_ref())
            });
        bool::from(matched)
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
    /// Failures allowed within `window` from all addresses together: past it,
    /// every address that has not logged in before is refused until the window
    /// ends (a backstop against guessing from very many addresses).
    pub max_failures_in_all: u32,
}

impl Default for AuthLimits {
    fn default() -> Self {
        Self {
            max_failures: 5,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(60),
            max_failures_in_all: 1_000,
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Record {
    failures: u32,
    window_start: Instant,
    blocked_until: Option<Instant>,
    /// When the record was made: its place in [`Table::order`].
    created: Instant,
}

/// Counts failed authentications per address (per /64 network for IPv6,
/// where one host commonly holds a whole /64), and in all.
#[derive(Debug, Default)]
pub struct AuthLimiter {
    limits: AuthLimits,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    records: HashMap<IpAddr, Record>,
    /// Records in the order they were made, for evicting the oldest: one entry
    /// per record (eviction pops it, a sweep prunes it with its record), so at
    /// most [`MAX_TRACKED`] entries.
    order: VecDeque<(IpAddr, Instant)>,
    last_sweep: Option<Instant>,
    /// Failures from all addresses in the current window.
    all: u32,
    /// When that window started.
    all_since: Option<Instant>,
    /// Addresses that logged in successfully, exempt from the backstop.
    proven: HashSet<IpAddr>,
}

/// Addresses tracked before stale ones are swept (at most once a second).
const SWEEP_AT: usize = 4096;
/// Most addresses tracked at all: past it, the oldest record is evicted, so
/// the table (and the time spent under its lock) stays bounded and no new
/// address goes uncounted.
const MAX_TRACKED: usize = 65_536;
/// Most addresses remembered as having logged in (then the set starts over).
const MAX_PROVEN: usize = 4096;

/// The address failures are counted against: IPv4 as is (also when mapped
/// into IPv6), IPv6 by its /64 network.
pub(crate) fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(network))
            }
        },
    }
}

impl AuthLimiter {
    /// A limiter with these limits.
    pub fn new(limits: AuthLimits) -> Self {
        Self {
            limits,
            table: Mutex::new(Table::default()),
        }
    }

    /// `Err(retry_after)` while `ip` is shut out: its own cooldown, or the
    /// backstop while failures from all addresses are over their limit.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let ip = counted_as(ip);
        let table = self.table.lock().expect("limiter lock");
        if let Some(until) = table.records.get(&ip).and_then(|r| r.blocked_until)
            && until > now
        {
            return Err(until - now);
        }
        if table.all >= self.limits.max_failures_in_all
            && !table.proven.contains(&ip)
            && let Some(since) = table.all_since
        {
            let ends = since.checked_add(self.limits.window).unwrap_or(now);
            if ends > now {
                return Err(ends - now);
            }
        }
        Ok(())
    }

    /// Records a successful login from `ip`: it stays exempt from the backstop.
    pub fn success(&self, ip: IpAddr) {
        let mut table = self.table.lock().expect("limiter lock");
        if table.proven.len() >= MAX_PROVEN {
            table.proven.clear();
        }
        table.proven.insert(counted_as(ip));
    }

    /// Whether `ip` has logged in successfully (and is still remembered).
    pub fn has_logged_in(&self, ip: IpAddr) -> bool {
        let table = self.table.lock().expect("limiter lock");
        table.proven.contains(&counted_as(ip))
    }

    /// Records a failed attempt from `ip`.
    pub fn failure(&self, ip: IpAddr, now: Instant) {
        let ip = counted_as(ip);
        let mut table = self.table.lock().expect("limiter lock");
        self.count_in_all(&mut table, now);
        self.sweep(&mut table, now);
        if !table.records.contains_key(&ip) {
            while table.records.len() >= MAX_TRACKED {
                evict_oldest(&mut table);
            }
            table.order.push_back((ip, now));
        }
        let record = table.records.entry(ip).or_insert(Record {
            failures: 0,
            window_start: now,
            blocked_until: None,
            created: now,
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

    /// Counts one failure in the window of all addresses.
    fn count_in_all(&self, table: &mut Table, now: Instant) {
        let fresh = table
            .all_since
            .is_none_or(|since| now.saturating_duration_since(since) >= self.limits.window);
        if fresh {
            table.all = 0;
            table.all_since = Some(now);
        }
        table.all = table.all.saturating_add(1);
    }

    /// Drops stale records once the table is large (at most once a second).
    fn sweep(&self, table: &mut Table, now: Instant) {
        let swept_lately = table
            .last_sweep
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_secs(1));
        if table.records.len() < SWEEP_AT || swept_lately {
            return;
        }
        let stale = self.limits.window + self.limits.cooldown;
        table
            .records
            .retain(|_, r| now.saturating_duration_since(r.window_start) < stale);
        let Table { records, order, .. } = table;
        order.retain(|(ip, created)| records.get(ip).is_some_and(|r| r.created == *created));
        table.last_sweep = Some(now);
    }
}

/// Removes the oldest record still in the table.
fn evict_oldest(table: &mut Table) {
    while let Some((ip, created)) = table.order.pop_front() {
        if table.records.get(&ip).is_some_and(|r| r.created == created) {
            table.records.remove(&ip);
            return;
        }
    }
    // The order lost track (it cannot, but the table must stay bounded): drop any one.
    if let Some(ip) = table.records.keys().next().copied() {
        table.records.remove(&ip);
    }
}

/// The token of an `Authorization: Bearer` header.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// The token of an `Authorization` header with or without the `Bearer `
/// scheme, as ModelRelay reads its admin token: the bearer's token, else the
/// whole value (trimmed).
pub(crate) fn bearer_or_bare(headers: &HeaderMap) -> Option<&str> {
    bearer(headers).or_else(|| bare_authorization(headers))
}

/// The whole `Authorization` value, trimmed, when it is not empty.
pub(crate) fn bare_authorization(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    (!value.is_empty()).then_some(value)
}

/// The address an authentication attempt counts against: the peer, or with
/// `trust_forwarded_for` the last address the proxy in front appended to
/// `X-Forwarded-For` (behind a proxy every peer is the proxy itself). The last
/// entry of the last such header counts, as proxies that add a header line of
/// their own instead of extending the client's put theirs after it.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trust_forwarded_for: bool) -> IpAddr {
    if !trust_forwarded_for {
        return peer;
    }
    headers
        .get_all("x-forwarded-for")
        .iter()
        .next_back()
        .and_then(|line| line.to_str().ok())
        .and_then(|list| list.rsplit(',').next())
        .and_then(|last| last.trim().parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    #[test]
    fn bearer_tokens_are_read_case_insensitively_and_trimmed() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer  abc "),
        );
        assert_eq!(bearer(&headers), Some("abc"));
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&headers), None);
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer "));
        assert_eq!(bearer(&headers), None);
    }

    #[test]
    fn the_admin_token_is_read_with_or_without_the_bearer_scheme() {
        let mut headers = HeaderMap::new();
        assert_eq!(bearer_or_bare(&headers), None);
        for (value, token) in [
            ("Bearer s3cret", "s3cret"),
            ("bearer s3cret ", "s3cret"),
            ("s3cret", "s3cret"),
            (" s3cret ", "s3cret"),
            // A token with a space in it is taken whole.
            ("two words", "two words"),
        ] {
            headers.insert(header::AUTHORIZATION, HeaderValue::from_static(value));
            assert_eq!(bearer_or_bare(&headers), Some(token), "{value:?}");
        }
        headers.insert(header::AUTHORIZATION, HeaderValue::from_static("  "));
        assert_eq!(bearer_or_bare(&headers), None);
    }

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
    fn during_a_rotation_each_of_several_secrets_is_accepted_and_nothing_else() {
        let secrets = WorkerSecrets::new(["old-secret", "new-secret"]);
        assert!(secrets.matches("old-secret"));
        assert!(secrets.matches("new-secret"));
        assert!(!secrets.matches("old-secretnew-secret"));
        assert!(!secrets.matches("old-secret,new-secret"));
        assert!(!secrets.matches(""));
        assert!(!WorkerSecrets::new([]).matches(""));
        let printed = format!("{secrets:?}");
        assert!(!printed.contains("old-secret") && !printed.contains("new-secret"));
    }

    #[test]
    fn an_address_is_shut_out_after_repeated_failures_for_the_cooldown() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 3,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            ..AuthLimits::default()
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
        let forwarded = |lines: &[&'static str]| {
            let mut headers = HeaderMap::new();
            for line in lines {
                headers.append("x-forwarded-for", line.parse().unwrap());
            }
            headers
        };
        let header = forwarded(&["203.0.113.7, 198.51.100.2"]);
        assert_eq!(client_address(proxy, &header, false), proxy);
        assert_eq!(
            client_address(proxy, &header, true),
            "198.51.100.2".parse::<IpAddr>().unwrap()
        );
        // A proxy that adds its own line: the client's line cannot speak for it.
        let two_lines = forwarded(&["203.0.113.5", "198.51.100.66"]);
        assert_eq!(
            client_address(proxy, &two_lines, true),
            "198.51.100.66".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_address(proxy, &forwarded(&["garbage"]), true), proxy);
        assert_eq!(client_address(proxy, &HeaderMap::new(), true), proxy);
    }

    #[test]
    fn ipv6_addresses_count_by_their_64_network() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 2,
            window: Duration::from_secs(60),
            cooldown: Duration::from_secs(30),
            ..AuthLimits::default()
        });
        let t0 = Instant::now();
        limiter.failure("2001:db8:1:2::1".parse().unwrap(), t0);
        limiter.failure("2001:db8:1:2:ffff::9".parse().unwrap(), t0);
        assert!(
            limiter
                .check("2001:db8:1:2::77".parse().unwrap(), t0)
                .is_err()
        );
        assert_eq!(
            limiter.check("2001:db8:1:3::1".parse().unwrap(), t0),
            Ok(())
        );
        // An IPv4 address mapped into IPv6 counts as itself.
        limiter.failure("::ffff:192.0.2.1".parse().unwrap(), t0);
        limiter.failure("192.0.2.1".parse().unwrap(), t0);
        assert!(limiter.check("192.0.2.1".parse().unwrap(), t0).is_err());
    }

    #[test]
    fn the_table_stays_bounded_under_failures_from_many_networks() {
        let limiter = AuthLimiter::new(AuthLimits::default());
        let t0 = Instant::now();
        for n in 0..(MAX_TRACKED as u32 + 1_000) {
            limiter.failure(IpAddr::from(n.to_be_bytes()), t0);
        }
        assert_eq!(limiter.table.lock().unwrap().records.len(), MAX_TRACKED);
        // Once they are stale, the next sweep makes room again.
        let later = t0 + Duration::from_secs(600);
        limiter.failure("192.0.2.200".parse().unwrap(), later);
        assert_eq!(limiter.table.lock().unwrap().records.len(), 1);
    }

    #[test]
    fn past_its_cap_the_table_evicts_the_oldest_and_still_counts_new_addresses() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures_in_all: u32::MAX,
            ..AuthLimits::default()
        });
        let t0 = Instant::now();
        let first = IpAddr::from(0u32.to_be_bytes());
        for _ in 0..4 {
            limiter.failure(first, t0);
        }
        for n in 1..(MAX_TRACKED as u32 + 10) {
            limiter.failure(IpAddr::from(n.to_be_bytes()), t0);
        }
        let table = limiter.table.lock().unwrap();
        assert_eq!(table.records.len(), MAX_TRACKED);
        assert!(!table.records.contains_key(&first), "the oldest went first");
        assert!(table.order.len() <= 2 * MAX_TRACKED);
        drop(table);
        // A newcomer to the full table is counted, not waved through.
        let guesser: IpAddr = "198.51.100.77".parse().unwrap();
        for _ in 0..5 {
            limiter.failure(guesser, t0);
        }
        assert!(limiter.check(guesser, t0).is_err());
    }

    #[test]
    fn past_the_failures_allowed_in_all_only_addresses_that_logged_in_before_get_in() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures_in_all: 10,
            ..AuthLimits::default()
        });
        let t0 = Instant::now();
        let worker: IpAddr = "192.0.2.10".parse().unwrap();
        limiter.success(worker);
        for n in 0..10u32 {
            limiter.failure(IpAddr::from((0x0a00_0000 + n).to_be_bytes()), t0);
        }
        let stranger: IpAddr = "203.0.113.1".parse().unwrap();
        let later = t0 + Duration::from_secs(20);
        assert_eq!(limiter.check(stranger, later), Err(Duration::from_secs(40)));
        assert_eq!(limiter.check(worker, later), Ok(()));
        // The next window starts afresh.
        assert_eq!(
            limiter.check(stranger, t0 + Duration::from_secs(60)),
            Ok(())
        );
    }

    #[test]
    fn failures_outside_the_window_do_not_add_up() {
        let limiter = AuthLimiter::new(AuthLimits {
            max_failures: 2,
            window: Duration::from_secs(10),
            cooldown: Duration::from_secs(30),
            ..AuthLimits::default()
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

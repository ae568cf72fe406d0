//! Reconnect delays: doubling from an initial delay up to a cap, plus seeded jitter.

use std::time::Duration;

/// The longest `Retry-After` a worker waits for before trying again.
pub const MAX_HONOURED_RETRY_AFTER: Duration = Duration::from_secs(300);
/// A small deterministic random number generator (SplitMix64), seeded by the caller.
#[derive(Clone, Debug)]
pub struct SeededRng(u64);

impl SeededRng {
    /// A generator whose sequence is fixed by `seed`.
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// The next number of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..=max`.
    pub fn up_to(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            self.next_u64()
        } else {
            self.next_u64() % (max + 1)
        }
    }
}

/// Reconnect delay policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay before the first retry.
    pub initial: Duration,
    /// Largest delay before jitter.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

/// Successive reconnect delays: `initial`, doubling to `max`, each plus a jitter
/// of up to half the delay, so that workers cut off together do not return together.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
    rng: SeededRng,
}

impl Backoff {
    /// A backoff with jitter drawn from `seed`.
    pub fn new(config: BackoffConfig, seed: u64) -> Self {
        Self {
            config,
            failures: 0,
            rng: SeededRng::new(seed),
        }
    }

    /// The delay before the next attempt; each call counts one more failure.
    pub fn next_delay(&mut self) -> Duration {
        let base = self
            .config
            .initial
            .saturating_mul(1u32.checked_shl(self.failures).unwrap_or(u32::MAX))
            .min(self.config.max);
        self.failures = self.failures.saturating_add(1);
        let half_nanos = u64::try_from(base.as_nanos() / 2).unwrap_or(u64::MAX);
        base + Duration::from_nanos(self.rng.up_to(half_nanos))
    }

    /// The delay before the next attempt when the server said when to come back
    /// (`Retry-After`): that long, plus a jitter of up to a tenth of it (at most
    /// a second), so workers behind one address do not return at one instant.
    /// It counts one more failure, so later delays go on doubling from where they were.
    ///
    /// A `Retry-After` over [`MAX_HONOURED_RETRY_AFTER`] (a relay, or anyone on a
    /// plain `ws://` link, could say a year) is waited only that long.
    pub fn after_retry_after(&mut self, retry_after: Duration) -> Duration {
        let retry_after = retry_after.min(MAX_HONOURED_RETRY_AFTER);
        self.failures = self.failures.saturating_add(1);
        let spread = (retry_after / 10).min(Duration::from_secs(1));
        let spread_nanos = u64::try_from(spread.as_nanos()).unwrap_or(u64::MAX);
        retry_after + Duration::from_nanos(self.rng.up_to(spread_nanos))
    }

    /// Starts over from `initial` (after a successful registration).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_one_second_to_thirty_with_up_to_half_again_of_jitter() {
        let mut backoff = Backoff::new(BackoffConfig::default(), 7);
        let bases = [1, 2, 4, 8, 16, 30, 30, 30];
        for base in bases {
            let delay = backoff.next_delay();
            let base = Duration::from_secs(base);
            assert!(
                delay >= base && delay <= base + base / 2,
                "{delay:?} for {base:?}"
            );
        }
        backoff.reset();
        assert!(backoff.next_delay() < Duration::from_millis(1500));
    }

    #[test]
    fn a_retry_after_of_years_is_waited_at_most_five_minutes() {
        let mut backoff = Backoff::new(BackoffConfig::default(), 3);
        for retry_after in [Duration::from_secs(99_999_999), Duration::MAX] {
            let delay = backoff.after_retry_after(retry_after);
            assert!(
                delay >= MAX_HONOURED_RETRY_AFTER
                    && delay <= MAX_HONOURED_RETRY_AFTER + Duration::from_secs(1),
                "{delay:?}"
            );
        }
    }

    #[test]
    fn a_retry_after_is_followed_even_when_the_backoff_has_grown_past_it() {
        let mut backoff = Backoff::new(BackoffConfig::default(), 3);
        for _ in 0..8 {
            backoff.next_delay();
        }
        let retry_after = Duration::from_secs(20);
        let delay = backoff.after_retry_after(retry_after);
        assert!(
            delay >= retry_after && delay <= retry_after + Duration::from_secs(1),
            "{delay:?}"
        );
        // A short one is not stretched to the backoff either, and the backoff goes on from where it was.
        let short = backoff.after_retry_after(Duration::from_secs(2));
        assert!(short >= Duration::from_secs(2) && short <= Duration::from_millis(2200));
        assert!(backoff.next_delay() >= Duration::from_secs(30));
    }

    #[test]
    fn the_same_seed_gives_the_same_delays_and_seeds_spread_them() {
        let delays = |seed| {
            let mut backoff = Backoff::new(BackoffConfig::default(), seed);
            (0..6).map(|_| backoff.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(delays(1), delays(1));
        assert_ne!(delays(1), delays(2));
        // First retries of 100 workers spread over the jitter window.
        let firsts: std::collections::BTreeSet<u128> = (0..100)
            .map(|seed| {
                Backoff::new(BackoffConfig::default(), seed)
                    .next_delay()
                    .as_millis()
            })
            .collect();
        assert!(
            firsts.len() > 80,
            "only {} distinct first delays",
            firsts.len()
        );
    }
}

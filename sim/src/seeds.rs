//! Which seeds a randomized simulation test runs, and how a failing one says how to replay it.

/// The seeds to run: `SIM_SEED=S` alone if set, else `SIM_SEEDS=N` seeds (or
/// `default_count`), the same list in every run. `salt` makes one test's list
/// differ from another's.
pub fn seeds(default_count: u64, salt: u64) -> Vec<u64> {
    if let Some(seed) = std::env::var("SIM_SEED").ok().and_then(|s| s.parse().ok()) {
        return vec![seed];
    }
    let count = std::env::var("SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_count);
    (1..=count)
        .map(|n: u64| n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ salt)
        .collect()
}

/// Runs `check` for each seed; a failure names its seed and the command that
/// replays it (`cargo test -p sim --test {test_file}`).
pub fn for_each_seed(seeds: &[u64], test_file: &str, check: impl Fn(u64)) {
    for &seed in seeds {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(seed)));
        if let Err(panic) = result {
            let message = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            std::panic::resume_unwind(Box::new(format!(
                "seed {seed} failed: {message}\nreplay with: SIM_SEED={seed} SIM_TRACE=1 \
                 cargo test -p sim --test {test_file} -- --nocapture"
            )));
        }
    }
}

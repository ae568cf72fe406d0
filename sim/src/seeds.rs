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
            // A new panic (not `resume_unwind`), so the panic hook prints the replay command.
            panic!(
                "seed {seed} failed: {message}\nreplay with: SIM_SEED={seed} SIM_TRACE=1 \
                 cargo test -p sim --test {test_file} -- --nocapture"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failing_seed_names_the_command_that_replays_it() {
        let failure = std::panic::catch_unwind(|| {
            for_each_seed(&[7, 42], "scenarios", |seed| {
                assert_ne!(seed, 42, "bad seed")
            });
        })
        .expect_err("seed 42 fails");
        let message = failure
            .downcast_ref::<String>()
            .expect("a formatted message");
        assert!(message.contains("seed 42 failed"), "{message}");
        assert!(message.contains("bad seed"), "{message}");
        assert!(
            message.contains("SIM_SEED=42 SIM_TRACE=1 cargo test -p sim --test scenarios"),
            "{message}"
        );
    }
}

//! Shared set-ups for ModelRelay's benchmarks (`cargo bench -p benches`).

pub mod fixtures;

//! What a load run measured, as text for people and JSON for scripts.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::{LoadConfig, Outcome, failures};

/// Percentiles of a set of durations, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// How many durations.
    pub count: usize,
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
    /// Mean.
    pub mean_ms: f64,
}

impl Percentiles {
    /// The percentiles of `samples` (nearest rank).
    pub fn of(mut samples: Vec<Duration>) -> Self {
        if samples.is_empty() {
            return Self::default();
        }
        samples.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let rank = |p: usize| {
            let index = (samples.len() * p).div_ceil(100).max(1) - 1;
            ms(samples[index.min(samples.len() - 1)])
        };
        let sum: Duration = samples.iter().sum();
        Self {
            count: samples.len(),
            p50_ms: rank(50),
            p90_ms: rank(90),
            p99_ms: rank(99),
            max_ms: ms(samples[samples.len() - 1]),
            mean_ms: ms(sum) / samples.len() as f64,
        }
    }
}

/// A failure kind: how many, and one example.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FailureCount {
    /// How many requests failed this way.
    pub count: u64,
    /// What the first one said.
    pub example: String,
}

/// What a load run measured.
#[derive(Clone, Debug, Serialize)]
pub struct LoadReport {
    /// The endpoint.
    pub url: String,
    /// The API shape.
    pub api: super::ApiShape,
    /// Streaming or whole answers.
    pub stream: bool,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests sent.
    pub requests: u64,
    /// Whole, checked answers.
    pub complete: u64,
    /// Streams the client left on purpose.
    pub left: u64,
    /// Failures by kind (`http 503`, `invalid stream`, `transport`, `timeout`, ...).
    pub failed: BTreeMap<String, FailureCount>,
    /// Wall time of the run.
    pub elapsed_secs: f64,
    /// Requests ended per second.
    pub requests_per_sec: f64,
    /// Stream events received in all.
    pub chunks: u64,
    /// Stream events per second.
    pub chunks_per_sec: f64,
    /// Body bytes received.
    pub bytes: u64,
    /// Time to the first chunk, over complete and left requests.
    pub first_chunk: Percentiles,
    /// Time to the end, over complete requests.
    pub latency: Percentiles,
}

impl LoadReport {
    /// Sums up `outcomes` of a run of `config` that took `elapsed`.
    pub fn from_outcomes(config: &LoadConfig, outcomes: &[Outcome], elapsed: Duration) -> Self {
        let mut first = Vec::new();
        let mut totals = Vec::new();
        let (mut complete, mut left, mut chunks, mut bytes) = (0, 0, 0, 0);
        for outcome in outcomes {
            match outcome {
                Outcome::Complete {
                    first_chunk,
                    total,
                    chunks: c,
                    bytes: b,
                } => {
                    complete += 1;
                    chunks += c;
                    bytes += b;
                    first.push(*first_chunk);
                    totals.push(*total);
                }
                Outcome::Left {
                    first_chunk,
                    chunks: c,
                    ..
                } => {
                    left += 1;
                    chunks += c;
                    first.push(*first_chunk);
                }
                Outcome::Failed { .. } => {}
            }
        }
        let secs = elapsed.as_secs_f64().max(1e-9);
        Self {
            url: config.url.clone(),
            api: config.api,
            stream: config.stream,
            concurrency: config.concurrency,
            requests: outcomes.len() as u64,
            complete,
            left,
            failed: failures(outcomes)
                .into_iter()
                .map(|(kind, (count, example))| (kind, FailureCount { count, example }))
                .collect(),
            elapsed_secs: elapsed.as_secs_f64(),
            requests_per_sec: outcomes.len() as f64 / secs,
            chunks,
            chunks_per_sec: chunks as f64 / secs,
            bytes,
            first_chunk: Percentiles::of(first),
            latency: Percentiles::of(totals),
        }
    }

    /// Requests that failed, of any kind.
    pub fn failures(&self) -> u64 {
        self.failed.values().map(|f| f.count).sum()
    }
}

impl fmt::Display for LoadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({:?}, {}), {} at a time",
            self.url,
            self.api,
            if self.stream {
                "streaming"
            } else {
                "whole answers"
            },
            self.concurrency
        )?;
        writeln!(
            f,
            "requests      {} in {:.2} s: {} complete, {} left on purpose, {} failed",
            self.requests,
            self.elapsed_secs,
            self.complete,
            self.left,
            self.failures()
        )?;
        writeln!(
            f,
            "throughput    {:.1} requests/s, {:.0} chunks/s, {:.2} MB/s",
            self.requests_per_sec,
            self.chunks_per_sec,
            self.bytes as f64 / self.elapsed_secs.max(1e-9) / 1e6
        )?;
        writeln!(
            f,
            "               p50       p90       p99       max      (ms)"
        )?;
        for (name, p) in [("first chunk", &self.first_chunk), ("total", &self.latency)] {
            writeln!(
                f,
                "{name:<12} {:>8.3}  {:>8.3}  {:>8.3}  {:>8.3}",
                p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms
            )?;
        }
        for (kind, failure) in &self.failed {
            writeln!(
                f,
                "failed        {kind}: {} (e.g. {})",
                failure.count, failure.example
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let p = Percentiles::of(samples);
        assert_eq!(
            (p.p50_ms, p.p90_ms, p.p99_ms, p.max_ms),
            (50.0, 90.0, 99.0, 100.0)
        );
        assert_eq!(p.mean_ms, 50.5);
        let one = Percentiles::of(vec![Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
        assert_eq!(Percentiles::of(Vec::new()).count, 0);
    }
}

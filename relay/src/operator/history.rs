//! The last hour, in 10-second buckets, for the dashboard's charts: requests
//! by outcome, time to first chunk, tokens, queue depth and each worker's load.
//!
//! Fixed size whatever the traffic: [`BUCKETS`] buckets, each with a fixed
//! histogram of first-chunk times and at most [`MAX_WORKERS_PER_BUCKET`]
//! workers' loads. Kept in memory only: a restart starts a new hour.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// How long one bucket covers.
pub(crate) const BUCKET: Duration = Duration::from_secs(10);

/// Buckets kept: one hour.
pub(crate) const BUCKETS: usize = 360;

/// Workers whose load one bucket keeps (the busiest, when more are connected).
pub(crate) const MAX_WORKERS_PER_BUCKET: usize = 32;

/// Upper bounds of the first-chunk histogram's bins, in milliseconds (the
/// last bin holds everything slower).
const FIRST_CHUNK_BOUNDS_MS: [u64; 16] = [
    5, 10, 20, 35, 50, 75, 100, 150, 250, 400, 600, 1_000, 1_500, 2_500, 5_000, 10_000,
];

/// How a request ended, as the charts group outcomes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ended {
    /// A whole answer (any status the backend chose below 500).
    Completed,
    /// The relay or the backend failed it (a 5xx, a lost worker, a timeout).
    Failed,
    /// The client left.
    Cancelled,
}

/// One bucket.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Bucket {
    /// Its start, in seconds since the Unix epoch (a multiple of 10).
    pub(crate) start: u64,
    pub(crate) completed: u64,
    pub(crate) failed: u64,
    pub(crate) cancelled: u64,
    /// Completion tokens the backends reported.
    pub(crate) tokens: u64,
    /// The first-chunk histogram (counts per bin of `FIRST_CHUNK_BOUNDS_MS`, and one more).
    #[serde(skip)]
    first_chunk: [u64; FIRST_CHUNK_BOUNDS_MS.len() + 1],
    /// The most requests that waited in the queue at one sample.
    pub(crate) queue_depth: u64,
    /// Each sampled worker's requests in flight, busiest first.
    pub(crate) workers: Vec<(String, u32)>,
}

/// A bucket as the dashboard reads it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct BucketView {
    #[serde(flatten)]
    bucket: Bucket,
    /// Median time to first chunk, in ms (an upper bound: its bin's), if any streamed.
    first_chunk_p50_ms: Option<u64>,
    /// 99th percentile time to first chunk, in ms (likewise).
    first_chunk_p99_ms: Option<u64>,
    /// Completion tokens per second over the bucket.
    tokens_per_sec: f64,
}

/// The rolling hour.
#[derive(Debug, Default)]
pub(crate) struct History {
    buckets: Mutex<VecDeque<Bucket>>,
}

impl History {
    /// Runs `change` on the bucket of `at`, opening it (and dropping the oldest) if new.
    fn with_bucket(&self, at: SystemTime, change: impl FnOnce(&mut Bucket)) {
        let secs = at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let start = secs - secs % BUCKET.as_secs();
        let Ok(mut buckets) = self.buckets.lock() else {
            return;
        };
        match buckets.back().map(|b| b.start) {
            Some(last) if last == start => {}
            // A clock that stepped back: count into the newest bucket.
            Some(last) if last > start => {}
            _ => {
                if buckets.len() == BUCKETS {
                    buckets.pop_front();
                }
                buckets.push_back(Bucket {
                    start,
                    ..Bucket::default()
                });
            }
        }
        if let Some(bucket) = buckets.back_mut() {
            change(bucket);
        }
    }

    /// A request ended, with the completion tokens its backend reported.
    pub(crate) fn ended(&self, at: SystemTime, ended: Ended, tokens: u64) {
        self.with_bucket(at, |bucket| {
            match ended {
                Ended::Completed => bucket.completed += 1,
                Ended::Failed => bucket.failed += 1,
                Ended::Cancelled => bucket.cancelled += 1,
            }
            bucket.tokens = bucket.tokens.saturating_add(tokens);
        });
    }

    /// A streamed answer's first chunk went out `after` its arrival.
    pub(crate) fn first_chunk(&self, at: SystemTime, after: Duration) {
        let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        let bin = FIRST_CHUNK_BOUNDS_MS
            .iter()
            .position(|&bound| ms <= bound)
            .unwrap_or(FIRST_CHUNK_BOUNDS_MS.len());
        self.with_bucket(at, |bucket| bucket.first_chunk[bin] += 1);
    }

    /// A sample of the queue and of each worker's requests in flight.
    pub(crate) fn sample(&self, at: SystemTime, queue_depth: u64, mut workers: Vec<(String, u32)>) {
        workers.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        workers.truncate(MAX_WORKERS_PER_BUCKET);
        self.with_bucket(at, |bucket| {
            bucket.queue_depth = bucket.queue_depth.max(queue_depth);
            for (name, load) in workers {
                let full = bucket.workers.len() >= MAX_WORKERS_PER_BUCKET;
                match bucket.workers.iter_mut().find(|(known, _)| *known == name) {
                    Some((_, most)) => *most = (*most).max(load),
                    None if !full => bucket.workers.push((name, load)),
                    None => {}
                }
            }
        });
    }

    /// Every bucket kept, oldest first, with its percentiles and rates.
    pub(crate) fn view(&self) -> Vec<BucketView> {
        let Ok(buckets) = self.buckets.lock() else {
            return Vec::new();
        };
        buckets
            .iter()
            .map(|bucket| BucketView {
                first_chunk_p50_ms: percentile(&bucket.first_chunk, 50),
                first_chunk_p99_ms: percentile(&bucket.first_chunk, 99),
                tokens_per_sec: bucket.tokens as f64 / BUCKET.as_secs_f64(),
                bucket: bucket.clone(),
            })
            .collect()
    }
}

/// The upper bound (ms) of the bin that holds the `pct`th percentile; the
/// last, open bin reports twice the last bound.
fn percentile(bins: &[u64], pct: u64) -> Option<u64> {
    let total: u64 = bins.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (total * pct).div_ceil(100).max(1);
    let mut seen = 0;
    for (bin, count) in bins.iter().enumerate() {
        seen += count;
        if seen >= rank {
            return Some(
                FIRST_CHUNK_BOUNDS_MS
                    .get(bin)
                    .copied()
                    .unwrap_or(FIRST_CHUNK_BOUNDS_MS[FIRST_CHUNK_BOUNDS_MS.len() - 1] * 2),
            );
        }
    }
    None
}

/// Samples the queue and each worker's load into `metrics`' history every
/// bucket, until `stop`.
pub(crate) async fn sample_every_bucket(
    hub: crate::hub::Hub,
    metrics: std::sync::Arc<super::Metrics>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut every = tokio::time::interval(BUCKET);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        let (Some(counts), Some(workers)) = (hub.counts().await, hub.workers().await) else {
            return; // the hub has stopped
        };
        let loads = workers
            .into_iter()
            // A link that has not registered has no name yet.
            .filter(|worker| worker.registered)
            .map(|worker| {
                let load = u32::try_from(worker.in_flight).unwrap_or(u32::MAX);
                (worker.name, load)
            })
            .collect();
        let depth = u64::try_from(counts.queue_depth).unwrap_or(u64::MAX);
        metrics.history.sample(SystemTime::now(), depth, loads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn events_land_in_their_ten_second_bucket_with_percentiles_and_rates() {
        let history = History::default();
        history.ended(at(1_000), Ended::Completed, 50);
        history.ended(at(1_009), Ended::Failed, 0);
        history.ended(at(1_010), Ended::Cancelled, 0);
        for ms in [3, 8, 8, 40, 2_000] {
            history.first_chunk(at(1_011), Duration::from_millis(ms));
        }
        let view = history.view();
        assert_eq!(view.len(), 2);
        assert_eq!(
            (
                view[0].bucket.start,
                view[0].bucket.completed,
                view[0].bucket.failed
            ),
            (1_000, 1, 1)
        );
        assert_eq!(view[0].tokens_per_sec, 5.0);
        assert_eq!(view[0].first_chunk_p50_ms, None);
        assert_eq!(view[1].bucket.cancelled, 1);
        assert_eq!(view[1].first_chunk_p50_ms, Some(10));
        assert_eq!(view[1].first_chunk_p99_ms, Some(2_500));
    }

    #[test]
    fn an_hour_is_kept_and_no_more_whatever_comes() {
        let history = History::default();
        for n in 0..(BUCKETS as u64 + 50) {
            history.ended(at(n * 10), Ended::Completed, 1);
        }
        let view = history.view();
        assert_eq!(view.len(), BUCKETS);
        assert_eq!(view[0].bucket.start, 500, "the oldest went first");
        // Many workers: only the busiest are kept in a bucket.
        let workers = (0..100).map(|n| (format!("w{n:03}"), n)).collect();
        history.sample(at(BUCKETS as u64 * 10 + 600), 7, workers);
        let last = history.view().pop().unwrap();
        assert_eq!(last.bucket.workers.len(), MAX_WORKERS_PER_BUCKET);
        assert_eq!(last.bucket.workers[0], ("w099".to_owned(), 99));
        assert_eq!(last.bucket.queue_depth, 7);
    }
}

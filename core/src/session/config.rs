//! Who the worker is and how its session behaves.

use std::time::Duration;

use super::liveness::{LINK_PROBE_AFTER, LINK_PROBE_TIMEOUT};
use super::read_window::DEFAULT_LINK_WRITE_WINDOW;
use crate::backoff::BackoffConfig;

/// Who the worker is and how it behaves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionConfig {
    /// Name sent in `register`.
    pub worker_name: String,
    /// Models advertised at start.
    pub models: Vec<String>,
    /// Requests run at once.
    pub max_concurrent: u32,
    /// Reconnect delays.
    pub backoff: BackoffConfig,
    /// Seed of the reconnect jitter.
    pub jitter_seed: u64,
    /// How long to wait for `register_ack` before dropping the link.
    pub register_timeout: Duration,
    /// How long running requests may take after a local shutdown.
    pub shutdown_timeout: Duration,
    /// Extra time past the server's drain timeout before the worker drops the link itself.
    pub drain_grace: Duration,
    /// How long a probed (WebSocket) link may bring nothing before the worker
    /// probes it with a WebSocket ping ([`LINK_PROBE_AFTER`]).
    pub link_probe_after: Duration,
    /// How long a probe may go unanswered, with nothing else heard either,
    /// before the link counts as dead ([`LINK_PROBE_TIMEOUT`]).
    pub link_probe_timeout: Duration,
    /// Cost (see [`chunk_cost`](super::chunk_cost)) a request's backend call may
    /// read ahead of what the link writer has handed on. The QUIC link sizes each
    /// request stream's queue for [`DEFAULT_LINK_WRITE_WINDOW`]: a larger window
    /// there may overflow it, which fails the request.
    pub link_write_window: u64,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            worker_name: "worker".into(),
            models: Vec::new(),
            max_concurrent: 1,
            backoff: BackoffConfig::default(),
            jitter_seed: 0,
            register_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            drain_grace: Duration::from_secs(5),
            link_probe_after: LINK_PROBE_AFTER,
            link_probe_timeout: LINK_PROBE_TIMEOUT,
            link_write_window: DEFAULT_LINK_WRITE_WINDOW,
        }
    }
}

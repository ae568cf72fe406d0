//! Tunables of the relay state machine.

use std::time::Duration;

use super::FlowConfig;

/// How the relay queues, times out, requeues, probes and bounds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayConfig {
    /// Most requests waiting per provider; 0 means no bound.
    pub max_queue_len: usize,
    /// How long a request may wait for a worker, counted from its arrival;
    /// `None`: as long as it takes (no queue deadline is armed at all).
    pub queue_timeout: Option<Duration>,
    /// How long a request may take in all, counted from its arrival; `None`:
    /// as long as it takes (no total deadline is armed at all).
    pub request_timeout: Option<Duration>,
    /// How many times a request goes back to the queue after losing its worker.
    pub max_requeues: u8,
    /// Time between pings to a worker.
    pub heartbeat_interval: Duration,
    /// How long a worker may stay silent after a ping before it counts as lost.
    pub heartbeat_timeout: Duration,
    /// How long a new link may take to send `register`.
    pub register_timeout: Duration,
    /// Most models kept from one worker's list.
    pub max_models_per_worker: usize,
    /// Longest model name kept, in bytes.
    pub max_model_name_bytes: usize,
    /// Most bytes one streaming response may carry.
    pub max_stream_bytes: u64,
    /// Frames naming requests a worker was never given before its link is closed.
    pub max_protocol_violations: u32,
    /// How many ended requests are remembered so their late frames are dropped quietly.
    pub ended_request_memory: usize,
    /// How long a request whose client left with the whole answer waits for the
    /// worker's completion before it is cancelled after all.
    pub finished_stream_grace: Duration,
    /// Flow control of streamed answers (windows, the answer budget, the cap on
    /// unwindowed streams); `None` passes every chunk on and holds no count.
    pub flow: Option<FlowConfig>,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            max_queue_len: 100,
            queue_timeout: Some(Duration::from_secs(30)),
            request_timeout: Some(Duration::from_secs(300)),
            max_requeues: 3,
            heartbeat_interval: Duration::from_secs(15),
            heartbeat_timeout: Duration::from_secs(10),
            register_timeout: Duration::from_secs(10),
            max_models_per_worker: super::sanitize::MAX_MODELS_PER_WORKER,
            max_model_name_bytes: super::sanitize::MAX_MODEL_NAME_BYTES,
            max_stream_bytes: 256 * 1024 * 1024,
            max_protocol_violations: 3,
            ended_request_memory: 16 * 1024,
            finished_stream_grace: Duration::from_secs(2),
            flow: None,
        }
    }
}

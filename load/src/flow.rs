//! `modelrelay-load flow`: what a relay holds in memory when one side of a stream is
//! slower than the other. Two scenarios, against real `modelrelay-server` and
//! `modelrelay-worker` processes in front of the fast fake backend:
//!
//! - **paused relay:** full-speed long streams; the server is stopped (SIGSTOP)
//!   for a while, then resumed. What the worker's peak memory grows by, and
//!   whether every stream then completes, whole and in order.
//! - **never-reading clients:** clients send a streaming request for a long
//!   answer and never read a byte. What the server's peak memory grows by, and
//!   the most it reported holding for clients (`modelrelay_buffered_answer_bytes`).

use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio::process::Command;

use super::compare::{
    CompareError, ExtraArgs, Programs, Relay, Via, announce, machine, process_error, start_backend,
    start_relay,
};
use super::{LoadConfig, Stop, failures, run_outcomes};
use crate::Outcome;

/// What to run.
#[derive(Clone, Debug)]
pub struct FlowConfig {
    /// The programs.
    pub programs: Programs,
    /// Full-speed streams in flight while the relay is paused.
    pub streams: usize,
    /// Tokens per long answer (each token is one SSE event of about 150 bytes).
    pub tokens: usize,
    /// How long the relay stays stopped.
    pub pause: Duration,
    /// Never-reading client counts to try, one run each.
    pub idle_clients: Vec<usize>,
    /// Extra arguments for the server (`--max-buffered-bytes`, which older servers lack).
    pub server_args: Vec<String>,
}

/// The paused-relay scenario on one path.
#[derive(Clone, Debug, Serialize)]
pub struct PauseReport {
    /// Which path.
    pub path: Via,
    /// The worker's peak memory just before the pause, in MB.
    pub worker_before_mb: f64,
    /// The worker's peak memory by the end, in MB.
    pub worker_peak_mb: f64,
    /// Streams that completed, whole and in order.
    pub complete: u64,
    /// Streams that did not, by kind.
    pub failed: Vec<(String, u64, String)>,
}

/// The never-reading scenario with one client count.
#[derive(Clone, Debug, Serialize)]
pub struct IdleReport {
    /// Clients that never read.
    pub clients: usize,
    /// The server's peak memory before they came, in MB.
    pub server_before_mb: f64,
    /// The server's peak memory while they waited, in MB.
    pub server_peak_mb: f64,
    /// The most the server reported holding for clients, in MB (if it reports it).
    pub held_max_mb: Option<f64>,
}

/// Everything measured.
#[derive(Clone, Debug, Serialize)]
pub struct FlowReport {
    /// The machine it ran on.
    pub machine: String,
    /// Streams during the pause.
    pub streams: usize,
    /// Tokens per answer.
    pub tokens: usize,
    /// The pause, in seconds.
    pub pause_secs: f64,
    /// The paused-relay scenario, per path.
    pub paused: Vec<PauseReport>,
    /// The never-reading scenario, per client count.
    pub idle: Vec<IdleReport>,
}

/// How long after the streams start the relay is paused: long enough for every
/// stream to be flowing at full speed.
const PAUSE_AFTER: Duration = Duration::from_secs(1);
/// How long the server's memory must stay flat, once every never-reading client's
/// answer has begun, before the scenario counts as settled.
const SETTLED_FOR: Duration = Duration::from_secs(3);
/// The longest the never-reading scenario waits for the server to settle.
const SETTLE_AT_MOST: Duration = Duration::from_secs(60);

/// Runs both scenarios.
pub async fn flow(config: &FlowConfig) -> Result<FlowReport, CompareError> {
    config.programs.check()?;
    let (backend, backend_url) = start_backend(&config.programs.load_bin).await?;
    let mut paused = Vec::new();
    for path in [Via::WebSocket, Via::Quic] {
        announce(&format!(
            "pausing the relay for {:?} during {} streams ({path}) ...",
            config.pause, config.streams
        ));
        paused.push(pause_relay(config, path, &backend_url).await?);
    }
    let mut idle = Vec::new();
    for &clients in &config.idle_clients {
        announce(&format!("{clients} clients that never read ..."));
        idle.push(never_reading(config, clients, &backend_url).await?);
    }
    backend.stop().await;
    Ok(FlowReport {
        machine: machine(),
        streams: config.streams,
        tokens: config.tokens,
        pause_secs: config.pause.as_secs_f64(),
        paused,
        idle,
    })
}

fn extra(config: &FlowConfig) -> ExtraArgs {
    ExtraArgs {
        server: config.server_args.clone(),
        worker: Vec::new(),
    }
}

/// Sends `signal` (`-STOP`, `-CONT`) to the server.
async fn signal(relay: &Relay, signal: &str) -> Result<(), CompareError> {
    let pid = relay
        .server
        .pid()
        .ok_or_else(|| process_error("modelrelay-server", "exited"))?;
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .await
        .map_err(|e| process_error("kill", e))?;
    if status.success() {
        Ok(())
    } else {
        Err(process_error("kill", format!("{signal} failed: {status}")))
    }
}

async fn pause_relay(
    config: &FlowConfig,
    path: Via,
    backend_url: &str,
) -> Result<PauseReport, CompareError> {
    let relay = start_relay(
        &config.programs,
        path,
        backend_url,
        config.streams,
        &extra(config),
    )
    .await?;
    let mut load = LoadConfig::new(&relay.url);
    load.concurrency = config.streams;
    load.stop = Stop::Requests(config.streams as u64);
    load.tokens = config.tokens;
    load.expect_simulated_text = true;
    load.tag_prefix = "flow-pause-".into();
    load.request_timeout = Duration::from_secs(600);
    let streams = tokio::spawn(async move { run_outcomes(&load).await });
    tokio::time::sleep(PAUSE_AFTER).await;
    let worker_before_mb = relay.worker.peak_rss_mb().unwrap_or_default();
    signal(&relay, "-STOP").await?;
    tokio::time::sleep(config.pause).await;
    signal(&relay, "-CONT").await?;
    let outcomes = streams
        .await
        .map_err(|e| process_error("load", e))?
        .map_err(CompareError::from)?;
    let worker_peak_mb = relay.worker.peak_rss_mb().unwrap_or_default();
    relay.worker.stop().await;
    relay.server.stop().await;
    let complete = outcomes
        .iter()
        .filter(|o| matches!(o, Outcome::Complete { .. }))
        .count() as u64;
    Ok(PauseReport {
        path,
        worker_before_mb,
        worker_peak_mb,
        complete,
        failed: failures(&outcomes)
            .into_iter()
            .map(|(kind, (count, detail))| (kind, count, detail))
            .collect(),
    })
}

/// A streaming request for a long answer, on a connection that will never be read.
async fn never_read(
    addr: std::net::SocketAddr,
    tokens: usize,
    tag: &str,
) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    // A small window: the relay's writes stop reaching this client almost at once.
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr).await?;
    let body = serde_json::json!({
        "model": "m", "stream": true, "max_tokens": tokens,
        "messages": [{"role": "user", "content": "Tell me a story."}],
        "mock": {"tokens": tokens, "delay_ms": 0, "tag": tag},
    })
    .to_string();
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    Ok(stream)
}

/// How many never-reading clients' answers the backend has begun to send.
async fn begun(backend_url: &str, prefix: &str) -> usize {
    super::compare::get_json(&format!("{backend_url}/_load/streamed"))
        .await
        .and_then(|streamed| {
            let streamed = streamed.as_object()?;
            Some(
                streamed
                    .iter()
                    .filter(|(tag, bytes)| {
                        tag.starts_with(prefix) && bytes.as_u64().unwrap_or(0) > 0
                    })
                    .count(),
            )
        })
        .unwrap_or(0)
}

/// The server's `modelrelay_buffered_answer_bytes`, in MB, if it reports it.
async fn held_mb(url: &str) -> Option<f64> {
    let text = super::compare::get_text(&format!("{url}/metrics")).await?;
    text.lines()
        .find_map(|line| line.strip_prefix("modelrelay_buffered_answer_bytes "))
        .and_then(|value| value.trim().parse::<f64>().ok())
        .map(|bytes| bytes / 1024.0 / 1024.0)
}

async fn never_reading(
    config: &FlowConfig,
    clients: usize,
    backend_url: &str,
) -> Result<IdleReport, CompareError> {
    let relay = start_relay(
        &config.programs,
        Via::WebSocket,
        backend_url,
        clients,
        &extra(config),
    )
    .await?;
    let server_before_mb = relay.server.peak_rss_mb().unwrap_or_default();
    let addr: std::net::SocketAddr = relay
        .url
        .trim_start_matches("http://")
        .parse()
        .map_err(|e| process_error("relay address", e))?;
    // Tags of this run alone: the backend serves every run.
    let prefix = format!("flow-idle-{clients}-");
    let mut connections = Vec::with_capacity(clients);
    for n in 0..clients {
        connections.push(
            never_read(addr, config.tokens, &format!("{prefix}{n}"))
                .await
                .map_err(|e| process_error("never-reading client", e))?,
        );
    }
    let started = Instant::now();
    let (mut peak, mut flat_since, mut held_max) = (0.0_f64, Instant::now(), None::<f64>);
    let mut all_begun = false;
    while started.elapsed() < SETTLE_AT_MOST && !(all_begun && flat_since.elapsed() >= SETTLED_FOR)
    {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if !all_begun {
            all_begun = begun(backend_url, &prefix).await >= clients;
            flat_since = Instant::now();
        }
        let now = relay.server.peak_rss_mb().unwrap_or_default();
        if now > peak + 0.5 {
            (peak, flat_since) = (now, Instant::now());
        }
        if let Some(held) = held_mb(&relay.url).await {
            held_max = Some(held_max.map_or(held, |max| max.max(held)));
        }
    }
    drop(connections);
    relay.worker.stop().await;
    relay.server.stop().await;
    Ok(IdleReport {
        clients,
        server_before_mb,
        server_peak_mb: peak.max(server_before_mb),
        held_max_mb: held_max,
    })
}

impl fmt::Display for FlowReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(
            f,
            "relay stopped for {:.0} s during {} full-speed streams of {} tokens",
            self.pause_secs, self.streams, self.tokens
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| path | worker peak before | worker peak after | grew by | complete, in order | failed |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|")?;
        for p in &self.paused {
            let failed: Vec<String> = p
                .failed
                .iter()
                .map(|(kind, count, detail)| format!("{count} {kind} ({detail})"))
                .collect();
            writeln!(
                f,
                "| {} | {:.1} MB | {:.1} MB | {:.1} MB | {} of {} | {} |",
                p.path,
                p.worker_before_mb,
                p.worker_peak_mb,
                p.worker_peak_mb - p.worker_before_mb,
                p.complete,
                self.streams,
                if failed.is_empty() {
                    "none".to_owned()
                } else {
                    failed.join("; ")
                }
            )?;
        }
        if !self.idle.is_empty() {
            writeln!(f)?;
            writeln!(
                f,
                "| never-reading clients | server peak before | server peak with them | grew by | most held for clients |"
            )?;
            writeln!(f, "|---|---|---|---|---|")?;
            for i in &self.idle {
                writeln!(
                    f,
                    "| {} | {:.1} MB | {:.1} MB | {:.1} MB | {} |",
                    i.clients,
                    i.server_before_mb,
                    i.server_peak_mb,
                    i.server_peak_mb - i.server_before_mb,
                    i.held_max_mb
                        .map_or("not reported".to_owned(), |mb| format!("{mb:.1} MB"))
                )?;
            }
        }
        Ok(())
    }
}

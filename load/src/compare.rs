//! `modelrelay-load compare`: the same load straight at a fast fake backend and
//! through the relay (real `modelrelay-server` and `modelrelay-worker` processes,
//! over WebSocket and over QUIC), in one run, as one table.

use std::fmt;
use std::net::{TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::check::ApiShape;
use super::{LoadConfig, LoadReport, Outcome, Percentiles, Stop};

/// The worker secret of the compared relays.
const SECRET: &str = "compare-secret";

/// The programs a comparison starts, and where the relays keep their files.
#[derive(Clone, Debug)]
pub struct Programs {
    /// The `modelrelay-server` program.
    pub server_bin: PathBuf,
    /// The `modelrelay-worker` program.
    pub worker_bin: PathBuf,
    /// This program (it runs the fake backend as `modelrelay-load backend`).
    pub load_bin: PathBuf,
    /// Where the relays keep their certificate.
    pub data_dir: PathBuf,
}

impl Programs {
    /// Checks that every program exists and makes the data directory.
    pub(crate) fn check(&self) -> Result<(), CompareError> {
        for program in [&self.server_bin, &self.worker_bin, &self.load_bin] {
            if !program.is_file() {
                return Err(CompareError::Missing(program.clone()));
            }
        }
        std::fs::create_dir_all(&self.data_dir).map_err(|e| process_error("data dir", e))
    }
}

/// What to compare, and with which programs.
#[derive(Clone, Debug)]
pub struct CompareConfig {
    /// The programs.
    pub programs: Programs,
    /// Streams in flight at once in the streaming loads.
    pub concurrency: usize,
    /// Streaming requests per path, at full speed (throughput).
    pub requests: u64,
    /// Tokens per streamed answer.
    pub tokens: usize,
    /// Paced streams per path (time to first chunk): `tokens` tokens, one every 20 ms.
    pub paced_requests: u64,
    /// Whole small answers per path, one at a time.
    pub small_requests: u64,
    /// Streams each path's clients leave, for the cancellation latency.
    pub cancels: u64,
    /// Clients leaving streams at once.
    pub cancel_concurrency: usize,
    /// Streams held open at once over WebSocket (0 skips that load).
    pub open_streams: usize,
}

/// Which way requests reach the backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Via {
    /// Straight to the backend.
    Direct,
    /// Through the relay, the worker on WebSocket (protocol v2).
    WebSocket,
    /// Through the relay, the worker on QUIC.
    Quic,
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Direct => "direct",
            Self::WebSocket => "relay, WebSocket",
            Self::Quic => "relay, QUIC",
        })
    }
}

/// What one path measured.
#[derive(Clone, Debug, Serialize)]
pub struct PathReport {
    /// Which path.
    pub path: Via,
    /// Paced streams, as models generate them: time to first chunk.
    pub paced: LoadReport,
    /// Streams at full speed: throughput.
    pub streaming: LoadReport,
    /// Small whole answers, one at a time.
    pub small: LoadReport,
    /// Client leaves → backend sees the cancellation.
    pub cancellation: Percentiles,
    /// Cancellations the backend never saw.
    pub cancellations_unseen: u64,
    /// Peak resident memory of the server, in MB.
    pub server_peak_rss_mb: Option<f64>,
    /// Peak resident memory of the worker, in MB.
    pub worker_peak_rss_mb: Option<f64>,
    /// CPU seconds the server and worker spent per 1,000 streamed requests.
    pub relay_cpu_secs_per_1k: Option<f64>,
}

/// Many streams held open at once through the relay.
#[derive(Clone, Debug, Serialize)]
pub struct OpenStreamsReport {
    /// The load.
    pub load: LoadReport,
    /// Peak resident memory of the server, in MB.
    pub server_peak_rss_mb: f64,
    /// Peak resident memory of the worker, in MB.
    pub worker_peak_rss_mb: f64,
}

/// The whole comparison.
#[derive(Clone, Debug, Serialize)]
pub struct CompareReport {
    /// The machine it ran on.
    pub machine: String,
    /// When it ran.
    pub date_unix: u64,
    /// Streams in flight at once.
    pub concurrency: usize,
    /// Streaming requests per path.
    pub requests: u64,
    /// Tokens per stream.
    pub tokens: usize,
    /// Each path.
    pub paths: Vec<PathReport>,
    /// The open-streams load, if run.
    pub open_streams: Option<OpenStreamsReport>,
}

/// Why the comparison could not run.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    /// A program is missing.
    #[error(
        "{0} not found; build it first: cargo build --release --bin modelrelay-server --bin modelrelay-worker --bin modelrelay-load (or run load/compare.sh)"
    )]
    Missing(PathBuf),
    /// A process failed to start or to come up.
    #[error("{what}: {detail}")]
    Process {
        /// Which process.
        what: &'static str,
        /// What happened.
        detail: String,
    },
    /// A load could not run.
    #[error(transparent)]
    Load(#[from] super::LoadError),
    /// Certificate set-up for the QUIC relay.
    #[error("QUIC certificate: {0}")]
    Tls(#[from] modelrelay_transports::tls::TlsError),
}

pub(crate) fn process_error(what: &'static str, detail: impl fmt::Display) -> CompareError {
    CompareError::Process {
        what,
        detail: detail.to_string(),
    }
}

/// A child process, killed when dropped.
pub(crate) struct Running {
    child: Child,
}

impl Running {
    pub(crate) fn start(
        what: &'static str,
        program: &Path,
        args: &[String],
    ) -> Result<Self, CompareError> {
        let child = Command::new(program)
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| process_error(what, format!("{}: {e}", program.display())))?;
        Ok(Self { child })
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Peak resident memory so far, in MB (Linux `VmHWM`).
    pub(crate) fn peak_rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// CPU time used so far, user plus system.
    pub(crate) fn cpu(&self) -> Option<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()?)).ok()?;
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')')? + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
        Some(Duration::from_secs_f64(
            ticks as f64 / clock_ticks_per_sec(),
        ))
    }

    /// Kills the process at once (SIGKILL), as a crash would.
    pub(crate) async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    pub(crate) async fn stop(mut self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_err()
            {
                let _ = self.child.kill().await;
            }
        }
    }
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(100.0)
}

/// A free loopback port for TCP and one for UDP (the OS picks; the relay binds them next).
fn free_ports() -> std::io::Result<(u16, u16)> {
    let tcp = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let udp = UdpSocket::bind("127.0.0.1:0")?.local_addr()?.port();
    Ok((tcp, udp))
}

/// The fake backend, as a process of its own.
pub(crate) async fn start_backend(load_bin: &Path) -> Result<(Running, String), CompareError> {
    let mut backend = Running::start(
        "fake backend",
        load_bin,
        &["backend".into(), "--listen".into(), "127.0.0.1:0".into()],
    )?;
    let stdout = backend
        .child
        .stdout
        .take()
        .ok_or_else(|| process_error("fake backend", "no stdout"))?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .map_err(|_| process_error("fake backend", "did not say where it listens"))?
        .map_err(|e| process_error("fake backend", e))?
        .ok_or_else(|| process_error("fake backend", "exited at once"))?;
    let addr = line
        .strip_prefix("listening on ")
        .ok_or_else(|| process_error("fake backend", format!("said {line:?}")))?;
    Ok((backend, format!("http://{addr}")))
}

/// A relay (server and one worker) in front of `backend_url`.
pub(crate) struct Relay {
    pub(crate) server: Running,
    pub(crate) worker: Running,
    pub(crate) url: String,
}

/// Extra arguments for the relay's two programs.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExtraArgs {
    pub(crate) server: Vec<String>,
    pub(crate) worker: Vec<String>,
}

pub(crate) async fn start_relay(
    programs: &Programs,
    path: Via,
    backend_url: &str,
    slots: usize,
    extra: &ExtraArgs,
) -> Result<Relay, CompareError> {
    let (http_port, quic_port) = free_ports().map_err(|e| process_error("ports", e))?;
    let listen = format!("127.0.0.1:{http_port}");
    let quic_listen = format!("127.0.0.1:{quic_port}");
    let data_dir = programs.data_dir.to_string_lossy().into_owned();
    // Made here (and kept in the data dir, where the server finds it) to know its fingerprint.
    let identity = modelrelay_transports::tls::RelayIdentity::self_signed_in(
        &programs.data_dir,
        &["localhost".to_owned(), "127.0.0.1".to_owned()],
    )?;
    let mut server_args = vec![
        "--listen".into(),
        listen.clone(),
        "--worker-secret".into(),
        SECRET.into(),
        "--max-queue-len".into(),
        "0".into(),
        "--log-level".into(),
        "warn".into(),
        "--data-dir".into(),
        data_dir,
    ];
    if path == Via::Quic {
        server_args.extend(["--quic-listen".into(), quic_listen.clone()]);
    }
    server_args.extend(extra.server.iter().cloned());
    let server = Running::start("modelrelay-server", &programs.server_bin, &server_args)?;
    let url = format!("http://{listen}");
    let mut worker_args = vec![
        "--backend-url".into(),
        backend_url.to_owned(),
        "--worker-secret".into(),
        SECRET.into(),
        "--models".into(),
        "m".into(),
        "--max-concurrency".into(),
        slots.to_string(),
        "--log-level".into(),
        "warn".into(),
    ];
    match path {
        Via::Quic => worker_args.extend([
            "--proxy-url".into(),
            format!("quic://{quic_listen}"),
            "--server-cert-sha256".into(),
            identity.fingerprint(),
        ]),
        _ => worker_args.extend(["--proxy-url".into(), url.clone()]),
    }
    worker_args.extend(extra.worker.iter().cloned());
    wait_for(&url, Some(0)).await?;
    let worker = Running::start("modelrelay-worker", &programs.worker_bin, &worker_args)?;
    wait_for(&url, Some(1)).await?;
    Ok(Relay {
        server,
        worker,
        url,
    })
}

/// Waits until the relay at `url` answers `/health`, with `workers` workers if given.
pub(crate) async fn wait_for(url: &str, workers: Option<u64>) -> Result<(), CompareError> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(health) = get_json(&format!("{url}/health")).await
            && workers.is_none_or(|n| health["workers_connected"].as_u64() == Some(n))
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(process_error(
                "relay",
                format!("{url} never reported {workers:?} workers"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn get_json(url: &str) -> Option<Value> {
    serde_json::from_str(&get_text(url).await?).ok()
}

/// The body of a `GET`, as text.
pub(crate) async fn get_text(url: &str) -> Option<String> {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(hyper_util::client::legacy::connect::HttpConnector::new());
    let uri: http::Uri = url.parse().ok()?;
    let response = client.get(uri).await.ok()?;
    let body = response.into_body().collect().await.ok()?.to_bytes();
    String::from_utf8(body.to_vec()).ok()
}

/// Tokens every this many milliseconds in the paced load (50 tokens/s, a typical model).
const PACED_TOKEN_MS: u64 = 20;

fn paced_load(config: &CompareConfig, url: &str, tag: &str) -> LoadConfig {
    let mut load = streaming_load(config, url, tag);
    load.stop = Stop::Requests(config.paced_requests);
    load.token_delay_ms = PACED_TOKEN_MS;
    load.tokens = 25;
    load.tag_prefix = format!("{tag}-paced-");
    // Start the streams over one stream's length, as independent clients would.
    load.ramp_up = Duration::from_millis(25 * PACED_TOKEN_MS);
    load
}

fn streaming_load(config: &CompareConfig, url: &str, tag: &str) -> LoadConfig {
    let mut load = LoadConfig::new(url);
    load.api = ApiShape::Openai;
    load.concurrency = config.concurrency;
    load.stop = Stop::Requests(config.requests);
    load.tokens = config.tokens;
    load.expect_simulated_text = true;
    load.tag_prefix = format!("{tag}-stream-");
    load.request_timeout = Duration::from_secs(60);
    load
}

fn small_load(config: &CompareConfig, url: &str, tag: &str) -> LoadConfig {
    let mut load = LoadConfig::new(url);
    load.concurrency = 1;
    load.stop = Stop::Requests(config.small_requests);
    load.stream = false;
    load.tokens = 4;
    load.expect_simulated_text = true;
    load.tag_prefix = format!("{tag}-small-");
    load.request_timeout = Duration::from_secs(30);
    load
}

fn cancel_load(config: &CompareConfig, url: &str, tag: &str) -> LoadConfig {
    let mut load = LoadConfig::new(url);
    load.concurrency = config
        .cancel_concurrency
        .min(config.cancels as usize)
        .max(1);
    load.stop = Stop::Requests(config.cancels);
    load.tokens = 1000;
    load.token_delay_ms = PACED_TOKEN_MS;
    load.cancel_after = Some(3);
    load.tag_prefix = format!("{tag}-cancel-");
    load.request_timeout = Duration::from_secs(30);
    load
}

/// Runs the cancellation load and matches each leave with the backend's log.
async fn cancellation(
    config: &CompareConfig,
    url: &str,
    backend_url: &str,
    tag: &str,
) -> Result<(Percentiles, u64), CompareError> {
    let load = cancel_load(config, url, tag);
    let outcomes = super::run_outcomes(&load).await?;
    // Give the last cancellations time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = get_json(&format!("{backend_url}/_load/cancellations"))
        .await
        .unwrap_or_default();
    let seen: std::collections::HashMap<&str, u64> = seen
        .as_array()
        .map(|list| {
            list.iter()
                .filter_map(|c| Some((c["tag"].as_str()?, c["at_unix_us"].as_u64()?)))
                .collect()
        })
        .unwrap_or_default();
    let mut delays = Vec::new();
    let mut unseen = 0;
    for outcome in &outcomes {
        if let Outcome::Left { at, tag, .. } = outcome {
            let left = unix_us(*at);
            match seen.get(tag.as_str()) {
                Some(&cancelled) => {
                    delays.push(Duration::from_micros(cancelled.saturating_sub(left)))
                }
                None => unseen += 1,
            }
        }
    }
    Ok((Percentiles::of(delays), unseen))
}

/// Microseconds since the Unix epoch.
pub fn unix_us(at: SystemTime) -> u64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

async fn measure_path(
    config: &CompareConfig,
    path: Via,
    backend_url: &str,
) -> Result<PathReport, CompareError> {
    let tag = match path {
        Via::Direct => "direct",
        Via::WebSocket => "ws",
        Via::Quic => "quic",
    };
    let relay = match path {
        Via::Direct => None,
        _ => Some(
            start_relay(
                &config.programs,
                path,
                backend_url,
                config.concurrency * 4,
                &ExtraArgs::default(),
            )
            .await?,
        ),
    };
    let url = relay
        .as_ref()
        .map_or_else(|| backend_url.to_owned(), |r| r.url.clone());
    // Warm up: connections, pools, allocator.
    let mut warm = streaming_load(config, &url, &format!("{tag}-warm"));
    warm.stop = Stop::Requests((config.concurrency * 2) as u64);
    super::run(&warm).await?;
    let paced = super::run(&paced_load(config, &url, tag)).await?;
    let cpu_before = relay.as_ref().map(relay_cpu);
    let streaming = super::run(&streaming_load(config, &url, tag)).await?;
    let cpu_after = relay.as_ref().map(relay_cpu);
    let small = super::run(&small_load(config, &url, tag)).await?;
    let (cancellation, cancellations_unseen) = cancellation(config, &url, backend_url, tag).await?;
    let relay_cpu_secs_per_1k = match (cpu_before.flatten(), cpu_after.flatten()) {
        (Some(before), Some(after)) => {
            Some((after - before).as_secs_f64() * 1000.0 / streaming.requests.max(1) as f64)
        }
        _ => None,
    };
    let (server_peak_rss_mb, worker_peak_rss_mb) = match &relay {
        Some(relay) => (relay.server.peak_rss_mb(), relay.worker.peak_rss_mb()),
        None => (None, None),
    };
    if let Some(relay) = relay {
        relay.worker.stop().await;
        relay.server.stop().await;
    }
    Ok(PathReport {
        path,
        paced,
        streaming,
        small,
        cancellation,
        cancellations_unseen,
        server_peak_rss_mb,
        worker_peak_rss_mb,
        relay_cpu_secs_per_1k,
    })
}

fn relay_cpu(relay: &Relay) -> Option<Duration> {
    Some(relay.server.cpu()? + relay.worker.cpu()?)
}

async fn open_streams(
    config: &CompareConfig,
    backend_url: &str,
) -> Result<OpenStreamsReport, CompareError> {
    let relay = start_relay(
        &config.programs,
        Via::WebSocket,
        backend_url,
        config.open_streams,
        &ExtraArgs::default(),
    )
    .await?;
    let mut load = LoadConfig::new(&relay.url);
    load.concurrency = config.open_streams;
    load.stop = Stop::Requests(config.open_streams as u64);
    // Each stream lasts about 10 s, so all of them are open at once.
    load.tokens = 20;
    load.token_delay_ms = 500;
    load.expect_simulated_text = true;
    load.tag_prefix = "open-".into();
    load.request_timeout = Duration::from_secs(120);
    let report = super::run(&load).await?;
    let server = relay.server.peak_rss_mb().unwrap_or_default();
    let worker = relay.worker.peak_rss_mb().unwrap_or_default();
    relay.worker.stop().await;
    relay.server.stop().await;
    Ok(OpenStreamsReport {
        load: report,
        server_peak_rss_mb: server,
        worker_peak_rss_mb: worker,
    })
}

pub(crate) fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, name)| name.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            let line = info
                .lines()
                .find(|l| l.starts_with("MemTotal:"))?
                .to_owned();
            let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.0} GiB", kb / 1024.0 / 1024.0))
        })
        .unwrap_or_default();
    format!("{cpus} cores ({model}), {memory}, Linux, everything on loopback")
}

/// Says on standard error what the comparison is doing (it takes a while).
#[allow(clippy::print_stderr)] // a command-line tool's progress
pub(crate) fn announce(step: &str) {
    eprintln!("{step}");
}

/// Runs the whole comparison.
pub async fn compare(config: &CompareConfig) -> Result<CompareReport, CompareError> {
    config.programs.check()?;
    let (backend, backend_url) = start_backend(&config.programs.load_bin).await?;
    let mut paths = Vec::new();
    for path in [Via::Direct, Via::WebSocket, Via::Quic] {
        announce(&format!("measuring {path} ..."));
        paths.push(measure_path(config, path, &backend_url).await?);
    }
    let open = if config.open_streams > 0 {
        announce(&format!(
            "holding {} streams open over WebSocket ...",
            config.open_streams
        ));
        Some(open_streams(config, &backend_url).await?)
    } else {
        None
    };
    backend.stop().await;
    Ok(CompareReport {
        machine: machine(),
        date_unix: unix_us(SystemTime::now()) / 1_000_000,
        concurrency: config.concurrency,
        requests: config.requests,
        tokens: config.tokens,
        paths,
        open_streams: open,
    })
}

impl fmt::Display for CompareReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(
            f,
            "{} streams at a time; first chunk: 25 tokens one every {PACED_TOKEN_MS} ms; \
             throughput: {} requests of {} tokens at full speed; small answer: one at a time",
            self.concurrency, self.requests, self.tokens
        )?;
        let direct = self.paths.iter().find(|p| p.path == Via::Direct);
        writeln!(f)?;
        writeln!(
            f,
            "| path | first chunk p50 / p99 | relay adds p50 / p99 | chunks/s | of direct | small answer p50 (adds) | cancel seen p50 / p99 | server / worker peak RSS | relay CPU s per 1k req | failures |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|---|---|---|")?;
        for p in &self.paths {
            let s = &p.streaming;
            let first = &p.paced.first_chunk;
            let (adds, ratio, small_adds) = match direct {
                Some(d) if p.path != Via::Direct => (
                    format!(
                        "{:.3} / {:.3} ms",
                        first.p50_ms - d.paced.first_chunk.p50_ms,
                        first.p99_ms - d.paced.first_chunk.p99_ms
                    ),
                    format!(
                        "{:.0}%",
                        100.0 * s.chunks_per_sec / d.streaming.chunks_per_sec.max(1e-9)
                    ),
                    format!(" (+{:.3})", p.small.latency.p50_ms - d.small.latency.p50_ms),
                ),
                _ => ("—".into(), "—".into(), String::new()),
            };
            let mb = |v: Option<f64>| v.map_or("—".into(), |v| format!("{v:.1} MB"));
            writeln!(
                f,
                "| {} | {:.3} / {:.3} ms | {adds} | {:.0} | {ratio} | {:.3} ms{small_adds} | {:.2} / {:.2} ms{} | {} / {} | {} | {} |",
                p.path,
                first.p50_ms,
                first.p99_ms,
                s.chunks_per_sec,
                p.small.latency.p50_ms,
                p.cancellation.p50_ms,
                p.cancellation.p99_ms,
                if p.cancellations_unseen > 0 {
                    format!(" ({} unseen)", p.cancellations_unseen)
                } else {
                    String::new()
                },
                mb(p.server_peak_rss_mb),
                mb(p.worker_peak_rss_mb),
                p.relay_cpu_secs_per_1k
                    .map_or("—".into(), |v| format!("{v:.2}")),
                p.paced.failures() + s.failures() + p.small.failures(),
            )?;
        }
        if let Some(open) = &self.open_streams {
            writeln!(f)?;
            writeln!(
                f,
                "{} streams open at once over WebSocket: {} complete, {} failed; server peak RSS {:.1} MB, worker {:.1} MB",
                open.load.concurrency,
                open.load.complete,
                open.load.failures(),
                open.server_peak_rss_mb,
                open.worker_peak_rss_mb
            )?;
        }
        Ok(())
    }
}

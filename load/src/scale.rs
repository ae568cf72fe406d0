//! `modelrelay-load scale`: one relay against two relays behind HAProxy, in one
//! run, and what killing one of the two costs under load.
//!
//! Real `modelrelay-server`, `modelrelay-worker` and `haproxy` processes in
//! front of the fast fake backend. Three paths carry the same streaming load:
//! one relay straight, one relay behind HAProxy (what the balancer costs), and
//! two relays behind HAProxy with every worker linked to both. Then a paced
//! load runs through HAProxy while one relay is killed (SIGKILL) and started
//! again: which requests failed, and how long the restarted relay took to have
//! its workers back and to answer.

use std::fmt;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::compare::{
    CompareError, Programs, Running, announce, get_json, machine, process_error, start_backend,
    wait_for,
};
use super::{LoadConfig, LoadReport, Stop, run, run_outcomes};

/// The worker secret of the measured relays.
const SECRET: &str = "scale-secret";

/// How often HAProxy checks each relay's `/health`.
const HEALTH_CHECK_EVERY_MS: u64 = 500;

/// What to measure, and with which programs.
#[derive(Clone, Debug)]
pub struct ScaleConfig {
    /// The relay programs.
    pub programs: Programs,
    /// The `haproxy` program.
    pub haproxy: PathBuf,
    /// Workers, each linked to every relay.
    pub workers: usize,
    /// Slots of each worker.
    pub slots: usize,
    /// Streams in flight at once.
    pub concurrency: usize,
    /// Streaming requests per path, at full speed.
    pub requests: u64,
    /// Tokens per stream.
    pub tokens: usize,
    /// How long the paced load of the kill runs.
    pub kill_load: Duration,
    /// When into that load one relay is killed.
    pub kill_at: Duration,
    /// How long the killed relay stays down.
    pub down_for: Duration,
}

/// One path's throughput and what the relays spent on it.
#[derive(Clone, Debug, Serialize)]
pub struct PathRun {
    /// Which path.
    pub path: String,
    /// The load.
    pub load: LoadReport,
    /// CPU seconds the relays and workers spent per 1,000 requests.
    pub relay_cpu_secs_per_1k: f64,
    /// CPU seconds HAProxy spent per 1,000 requests (0 without it).
    pub balancer_cpu_secs_per_1k: f64,
}

/// What killing one of two relays under load cost.
#[derive(Clone, Debug, Serialize)]
pub struct KillReport {
    /// The paced load that ran through it.
    pub load: LoadReport,
    /// Streams the killed relay was carrying when it died (from its last `/health`).
    pub carried_by_killed: Option<u64>,
    /// From the restart until the relay's `/health` listed every worker, in ms.
    pub workers_back_ms: f64,
    /// From the restart until a request sent straight to it completed, in ms.
    pub first_answer_ms: f64,
}

/// The whole measurement.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleReport {
    /// The machine it ran on.
    pub machine: String,
    /// When it ran.
    pub date_unix: u64,
    /// Workers, and slots of each.
    pub workers: usize,
    /// Slots of each worker.
    pub slots: usize,
    /// The three paths.
    pub paths: Vec<PathRun>,
    /// The kill.
    pub kill: KillReport,
}

/// One relay process: its port and arguments, to start it again on the same port.
struct RelayProcess {
    port: u16,
    args: Vec<String>,
    process: Option<Running>,
}

impl RelayProcess {
    async fn start(programs: &Programs, data_dir: &Path) -> Result<Self, CompareError> {
        let port = free_port()?;
        let args = vec![
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--worker-secret".into(),
            SECRET.into(),
            "--max-queue-len".into(),
            "0".into(),
            "--log-level".into(),
            "warn".into(),
            "--data-dir".into(),
            data_dir.to_string_lossy().into_owned(),
        ];
        let mut relay = Self {
            port,
            args,
            process: None,
        };
        relay.restart(programs).await?;
        Ok(relay)
    }

    async fn restart(&mut self, programs: &Programs) -> Result<(), CompareError> {
        let process = Running::start("modelrelay-server", &programs.server_bin, &self.args)?;
        self.process = Some(process);
        wait_for(&self.url(), None).await
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn cpu(&self) -> Duration {
        self.process
            .as_ref()
            .and_then(Running::cpu)
            .unwrap_or_default()
    }
}

fn free_port() -> Result<u16, CompareError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| process_error("ports", e))?;
    Ok(listener
        .local_addr()
        .map_err(|e| process_error("ports", e))?
        .port())
}

/// Starts `count` workers with `slots` each, linked to every relay in `relays`.
async fn start_workers(
    config: &ScaleConfig,
    backend_url: &str,
    relays: &[&RelayProcess],
) -> Result<Vec<Running>, CompareError> {
    let urls: Vec<String> = relays.iter().map(|relay| relay.url()).collect();
    let mut workers = Vec::new();
    for n in 0..config.workers {
        let args = vec![
            "--proxy-url".into(),
            urls.join(","),
            "--backend-url".into(),
            backend_url.to_owned(),
            "--worker-secret".into(),
            SECRET.into(),
            "--worker-name".into(),
            format!("worker-{n}"),
            "--models".into(),
            "m".into(),
            "--max-concurrency".into(),
            config.slots.to_string(),
            "--log-level".into(),
            "warn".into(),
        ];
        workers.push(Running::start(
            "modelrelay-worker",
            &config.programs.worker_bin,
            &args,
        )?);
    }
    for url in &urls {
        wait_for(url, Some(config.workers as u64)).await?;
    }
    Ok(workers)
}

/// HAProxy in front of `relays`, as `extras/haproxy/haproxy.cfg` sets it up:
/// least connections, `/health` checked, a dead relay's connections redispatched.
async fn start_haproxy(
    config: &ScaleConfig,
    relays: &[&RelayProcess],
) -> Result<(Running, String), CompareError> {
    let port = free_port()?;
    let servers: String = relays
        .iter()
        .enumerate()
        .map(|(n, relay)| format!("    server relay-{n} 127.0.0.1:{} check\n", relay.port))
        .collect();
    let text = format!(
        "global\n    maxconn 4096\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 10m\n    timeout server 10m\n    \
         retries 3\n    option redispatch\n\
         frontend clients\n    bind 127.0.0.1:{port}\n    default_backend relays\n\
         backend relays\n    balance leastconn\n    option httpchk GET /health\n    \
         http-check expect status 200\n    \
         default-server inter {HEALTH_CHECK_EVERY_MS}ms fall 2 rise 2\n{servers}"
    );
    let file = config.programs.data_dir.join(format!("haproxy-{port}.cfg"));
    std::fs::write(&file, text).map_err(|e| process_error("haproxy config", e))?;
    let args = vec![
        "-db".into(),
        "-f".into(),
        file.to_string_lossy().into_owned(),
    ];
    let haproxy = Running::start("haproxy", &config.haproxy, &args)?;
    let url = format!("http://127.0.0.1:{port}");
    wait_for(&url, None).await?;
    Ok((haproxy, url))
}

fn streaming(config: &ScaleConfig, url: &str, tag: &str) -> LoadConfig {
    let mut load = LoadConfig::new(url);
    load.concurrency = config.concurrency;
    load.stop = Stop::Requests(config.requests);
    load.tokens = config.tokens;
    load.tag_prefix = format!("{tag}-");
    load.request_timeout = Duration::from_secs(60);
    load
}

/// Runs the streaming load at `url`; the CPU the relays (and the balancer) spent on it.
async fn measure(
    config: &ScaleConfig,
    (path, url): (&str, &str),
    relays: &[&RelayProcess],
    (workers, balancer): (&[Running], Option<&Running>),
) -> Result<PathRun, CompareError> {
    announce(&format!("measuring {path} ..."));
    let relay_cpu = || {
        relays.iter().map(|relay| relay.cpu()).sum::<Duration>()
            + workers.iter().filter_map(Running::cpu).sum::<Duration>()
    };
    let balancer_cpu = || balancer.and_then(Running::cpu).unwrap_or_default();
    let (relay_before, balancer_before) = (relay_cpu(), balancer_cpu());
    let load = run(&streaming(config, url, path)).await?;
    let per_1k = |spent: Duration| spent.as_secs_f64() * 1000.0 / config.requests.max(1) as f64;
    Ok(PathRun {
        path: path.to_owned(),
        relay_cpu_secs_per_1k: per_1k(relay_cpu().saturating_sub(relay_before)),
        balancer_cpu_secs_per_1k: per_1k(balancer_cpu().saturating_sub(balancer_before)),
        load,
    })
}

/// Runs the whole measurement.
pub async fn scale(config: &ScaleConfig) -> Result<ScaleReport, CompareError> {
    config.programs.check()?;
    if !config.haproxy.is_file() {
        return Err(CompareError::Missing(config.haproxy.clone()));
    }
    let (_backend, backend_url) = start_backend(&config.programs.load_bin).await?;
    let data_dir = &config.programs.data_dir;
    let mut paths = Vec::new();
    {
        let single = RelayProcess::start(&config.programs, &data_dir.join("single")).await?;
        let workers = start_workers(config, &backend_url, &[&single]).await?;
        let url = single.url();
        let direct = ("one relay, straight", url.as_str());
        paths.push(measure(config, direct, &[&single], (&workers, None)).await?);
        let (haproxy, url) = start_haproxy(config, &[&single]).await?;
        let behind = ("one relay, behind HAProxy", url.as_str());
        paths.push(measure(config, behind, &[&single], (&workers, Some(&haproxy))).await?);
    }
    let mut a = RelayProcess::start(&config.programs, &data_dir.join("a")).await?;
    let b = RelayProcess::start(&config.programs, &data_dir.join("b")).await?;
    let workers = start_workers(config, &backend_url, &[&a, &b]).await?;
    let (haproxy, url) = start_haproxy(config, &[&a, &b]).await?;
    let two = ("two relays, behind HAProxy", url.as_str());
    paths.push(measure(config, two, &[&a, &b], (&workers, Some(&haproxy))).await?);
    let kill = kill_one(config, &url, &mut a).await?;
    Ok(ScaleReport {
        machine: machine(),
        date_unix: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        workers: config.workers,
        slots: config.slots,
        paths,
        kill,
    })
}

/// A paced load through the balancer while relay `a` is killed and started again.
async fn kill_one(
    config: &ScaleConfig,
    url: &str,
    a: &mut RelayProcess,
) -> Result<KillReport, CompareError> {
    announce("killing one relay under a paced load ...");
    let mut load = LoadConfig::new(url);
    load.concurrency = config.concurrency;
    load.stop = Stop::Duration(config.kill_load);
    // Streams of about a second, as a model writes them.
    load.tokens = 50;
    load.token_delay_ms = 20;
    load.tag_prefix = "kill-".into();
    load.request_timeout = Duration::from_secs(60);
    load.ramp_up = Duration::from_secs(1);
    let started = Instant::now();
    let running = tokio::spawn({
        let load = load.clone();
        async move { run_outcomes(&load).await }
    });
    tokio::time::sleep(config.kill_at).await;
    let health = get_json(&format!("{}/health", a.url())).await;
    let carried_by_killed = health.and_then(|h| h["requests_in_progress"].as_u64());
    if let Some(process) = a.process.take() {
        process.kill().await;
    }
    tokio::time::sleep(config.down_for).await;
    let restarted = Instant::now();
    a.restart(&config.programs).await?;
    wait_for(&a.url(), Some(config.workers as u64)).await?;
    let workers_back = restarted.elapsed();
    let mut probe = LoadConfig::new(a.url());
    probe.stop = Stop::Requests(1);
    probe.concurrency = 1;
    probe.tokens = 4;
    probe.tag_prefix = "probe-".into();
    loop {
        let report = run(&probe).await?;
        if report.complete == 1 || restarted.elapsed() > Duration::from_secs(60) {
            break;
        }
    }
    let first_answer = restarted.elapsed();
    let outcomes = running.await.map_err(|e| process_error("kill load", e))??;
    let load = LoadReport::from_outcomes(&load, &outcomes, started.elapsed());
    Ok(KillReport {
        load,
        carried_by_killed,
        workers_back_ms: workers_back.as_secs_f64() * 1000.0,
        first_answer_ms: first_answer.as_secs_f64() * 1000.0,
    })
}

impl fmt::Display for ScaleReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "machine: {}", self.machine)?;
        writeln!(
            f,
            "{} workers of {} slots, each linked to every relay",
            self.workers, self.slots
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "| path | requests/s | chunks/s | first chunk p50 / p99 | failed | relay CPU s / 1k | HAProxy CPU s / 1k |"
        )?;
        writeln!(f, "|---|---|---|---|---|---|---|")?;
        for run in &self.paths {
            let load = &run.load;
            writeln!(
                f,
                "| {} | {:.0} | {:.0} | {:.2} / {:.2} ms | {} | {:.2} | {:.2} |",
                run.path,
                load.requests_per_sec,
                load.chunks_per_sec,
                load.first_chunk.p50_ms,
                load.first_chunk.p99_ms,
                load.failures(),
                run.relay_cpu_secs_per_1k,
                run.balancer_cpu_secs_per_1k,
            )?;
        }
        let kill = &self.kill;
        writeln!(f)?;
        writeln!(
            f,
            "one of two relays killed during a {:.0} s paced load ({} streams at once):",
            kill.load.elapsed_secs, kill.load.concurrency
        )?;
        writeln!(
            f,
            "- {} requests, {} complete, {} failed; the killed relay carried {} streams",
            kill.load.requests,
            kill.load.complete,
            kill.load.failures(),
            kill.carried_by_killed
                .map_or_else(|| "an unknown number of".to_owned(), |n| n.to_string())
        )?;
        for (kind, failure) in &kill.load.failed {
            writeln!(f, "  - {} {kind}: {}", failure.count, failure.example)?;
        }
        writeln!(
            f,
            "- restarted: every worker back after {:.0} ms, first answer after {:.0} ms",
            kill.workers_back_ms, kill.first_answer_ms
        )
    }
}

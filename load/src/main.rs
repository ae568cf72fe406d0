//! `modelrelay-load`: load for any OpenAI- or Anthropic-compatible endpoint, with every
//! answer checked; and `compare`, the relay against going straight to the backend.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use axum::routing::get;
use clap::{Parser, Subcommand};
use http::{HeaderName, HeaderValue};
use modelrelay_load::check::ApiShape;
use modelrelay_load::compare::{CompareConfig, Programs, compare, unix_us};
use modelrelay_load::flow::{FlowConfig, flow};
use modelrelay_load::scale::{ScaleConfig, scale};
use modelrelay_load::{LoadConfig, Stop, bearer, run};
use modelrelay_testkit::simulated_backend::{
    BackendEvent, SimulatedBackend, SimulatedBackendConfig,
};
use serde_json::json;

/// Load for OpenAI- and Anthropic-compatible endpoints (a ModelRelay relay, or a
/// backend straight), with every answer checked for completeness and order.
#[derive(Debug, Parser)]
#[command(name = "modelrelay-load", version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sends load to one endpoint and reports throughput and latency percentiles.
    Run(RunArgs),
    /// Starts a fake backend and the relay (WebSocket and QUIC), runs the same load
    /// straight and through each, and prints one table.
    Compare(CompareArgs),
    /// Starts a fake backend and the relay, then measures what the relay holds when
    /// it is paused during full-speed streams and when clients never read.
    Flow(FlowArgs),
    /// One relay against two relays behind HAProxy (workers linked to both), in one
    /// run, then one of the two killed under load and started again.
    Scale(ScaleArgs),
    /// Serves the fast fake backend (used by `compare`).
    #[command(hide = true)]
    Backend {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
    },
    /// Forwards TCP connections byte for byte (used by `compare` to measure what any
    /// two extra processes in the path cost on this machine).
    #[command(hide = true)]
    Forward {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: String,
        /// Address to forward to.
        #[arg(long)]
        to: String,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Base URL of the endpoint, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    url: String,
    /// The model to ask for.
    #[arg(long, default_value = "m")]
    model: String,
    /// Request and answer shape: OpenAI chat completions or Anthropic messages.
    #[arg(long, value_enum, default_value_t = ApiShape::Openai)]
    api: ApiShape,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// Requests in all.
    #[arg(long, short = 'n', default_value_t = 1000, conflicts_with = "duration")]
    requests: u64,
    /// Send for this many seconds instead of a number of requests.
    #[arg(long)]
    duration: Option<f64>,
    /// Ask for whole answers instead of streams.
    #[arg(long)]
    no_stream: bool,
    /// Tokens per answer (max_tokens; the simulated backend's mock.tokens).
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Milliseconds between tokens (for ModelRelay's simulated backend).
    #[arg(long, default_value_t = 0)]
    token_delay_ms: u64,
    /// Leave each stream after this many chunks, as a client that goes away.
    #[arg(long)]
    cancel_after: Option<usize>,
    /// Require exactly the text of ModelRelay's simulated backend (else only a well-formed answer).
    #[arg(long)]
    expect_simulated_text: bool,
    /// API key sent as `Authorization: Bearer KEY`.
    #[arg(long, env = "MODELRELAY_LOAD_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Extra header `NAME: VALUE` (repeatable).
    #[arg(long = "header", short = 'H')]
    headers: Vec<String>,
    /// Seconds a single request may take.
    #[arg(long, default_value_t = 300)]
    request_timeout: u64,
    /// Seconds over which the concurrent clients start, so they do not all move in step.
    #[arg(long, default_value_t = 0.0)]
    ramp_up: f64,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, clap::Args)]
struct CompareArgs {
    /// Streams in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Streaming requests per path.
    #[arg(long, default_value_t = 4000)]
    requests: u64,
    /// Tokens per stream.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Paced streams per path (25 tokens, one every 20 ms), for time to first chunk.
    #[arg(long, default_value_t = 1280)]
    paced_requests: u64,
    /// Small whole answers per path, one at a time.
    #[arg(long, default_value_t = 2000)]
    small_requests: u64,
    /// Streams left by their client per path, to time cancellation.
    #[arg(long, default_value_t = 500)]
    cancels: u64,
    /// Clients leaving streams at once.
    #[arg(long, default_value_t = 16)]
    cancel_concurrency: usize,
    /// Streams held open at once over WebSocket (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    open_streams: usize,
    #[command(flatten)]
    programs: ProgramArgs,
}

#[derive(Debug, clap::Args)]
struct FlowArgs {
    /// Full-speed streams in flight while the relay is paused.
    #[arg(long, default_value_t = 32)]
    streams: usize,
    /// Tokens per long answer (about 150 bytes each).
    #[arg(long, default_value_t = 200_000)]
    tokens: usize,
    /// Seconds the relay stays stopped.
    #[arg(long, default_value_t = 8.0)]
    pause: f64,
    /// Never-reading client counts to try (comma-separated; empty skips it).
    #[arg(long, value_delimiter = ',', default_value = "64,1000")]
    idle_clients: Vec<usize>,
    /// An extra argument for the server, repeatable (e.g. --server-arg=--max-buffered-bytes=32MiB).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,
    #[command(flatten)]
    programs: ProgramArgs,
}

#[derive(Debug, clap::Args)]
struct ScaleArgs {
    /// Workers, each linked to every relay.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Slots of each worker.
    #[arg(long, default_value_t = 64)]
    slots: usize,
    /// Streams in flight at once.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Streaming requests per path, at full speed.
    #[arg(long, default_value_t = 4000)]
    requests: u64,
    /// Tokens per stream.
    #[arg(long, default_value_t = 64)]
    tokens: usize,
    /// Seconds the paced load of the kill runs.
    #[arg(long, default_value_t = 20.0)]
    kill_load: f64,
    /// Seconds into that load one relay is killed.
    #[arg(long, default_value_t = 6.0)]
    kill_at: f64,
    /// Seconds the killed relay stays down.
    #[arg(long, default_value_t = 3.0)]
    down_for: f64,
    /// The haproxy program.
    #[arg(long, default_value = "/usr/sbin/haproxy")]
    haproxy: PathBuf,
    #[command(flatten)]
    programs: ProgramArgs,
}

/// Which relay programs `compare`, `flow` and `scale` start, and how they report.
#[derive(Debug, clap::Args)]
struct ProgramArgs {
    /// The modelrelay-server program (default: beside this one).
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The modelrelay-worker program (default: beside this one).
    #[arg(long)]
    worker_bin: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The programs to start: the ones given, else those beside this one.
fn programs(args: &ProgramArgs) -> anyhow::Result<Programs> {
    let load_bin = std::env::current_exe().context("where is this program?")?;
    let beside = |name: &str| load_bin.with_file_name(name);
    Ok(Programs {
        server_bin: args
            .server_bin
            .clone()
            .unwrap_or_else(|| beside("modelrelay-server")),
        worker_bin: args
            .worker_bin
            .clone()
            .unwrap_or_else(|| beside("modelrelay-worker")),
        load_bin: load_bin.clone(),
        data_dir: std::env::temp_dir().join(format!("modelrelay-compare-{}", std::process::id())),
    })
}

fn header(text: &str) -> anyhow::Result<(HeaderName, HeaderValue)> {
    let (name, value) = text
        .split_once(':')
        .with_context(|| format!("--header {text:?}: expected NAME: VALUE"))?;
    Ok((
        HeaderName::from_bytes(name.trim().as_bytes()).context("--header name")?,
        HeaderValue::from_str(value.trim()).context("--header value")?,
    ))
}

#[allow(clippy::print_stdout)] // the report is the program's output
async fn run_command(args: RunArgs) -> anyhow::Result<()> {
    let mut config = LoadConfig::new(args.url);
    config.model = args.model;
    config.api = args.api;
    config.concurrency = args.concurrency;
    config.stop = match args.duration {
        Some(secs) if secs > 0.0 => Stop::Duration(Duration::from_secs_f64(secs)),
        Some(_) => anyhow::bail!("--duration must be positive"),
        None => Stop::Requests(args.requests),
    };
    config.stream = !args.no_stream;
    config.tokens = args.tokens;
    config.token_delay_ms = args.token_delay_ms;
    config.cancel_after = args.cancel_after;
    config.expect_simulated_text = args.expect_simulated_text;
    config.request_timeout = Duration::from_secs(args.request_timeout);
    config.progress = !args.json;
    if !(args.ramp_up >= 0.0 && args.ramp_up.is_finite()) {
        anyhow::bail!("--ramp-up must be zero or more seconds");
    }
    config.ramp_up = Duration::from_secs_f64(args.ramp_up);
    if let Some(key) = &args.api_key {
        config
            .headers
            .push(bearer(key).map_err(anyhow::Error::msg)?);
    }
    for text in &args.headers {
        config.headers.push(header(text)?);
    }
    let report = run(&config).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{report}");
    }
    if report.failures() > 0 {
        std::process::exit(1);
    }
    Ok(())
}

async fn compare_command(args: CompareArgs) -> anyhow::Result<()> {
    let config = CompareConfig {
        programs: programs(&args.programs)?,
        concurrency: args.concurrency,
        requests: args.requests,
        tokens: args.tokens,
        paced_requests: args.paced_requests,
        small_requests: args.small_requests,
        cancels: args.cancels,
        cancel_concurrency: args.cancel_concurrency,
        open_streams: args.open_streams,
    };
    let report = compare(&config).await;
    let _ = std::fs::remove_dir_all(&config.programs.data_dir);
    print_report(&report?, args.programs.json)
}

/// Prints a `compare` or `flow` report, as JSON or as its table.
#[allow(clippy::print_stdout)] // the report is the program's output
fn print_report<R: serde::Serialize + std::fmt::Display>(
    report: &R,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
    } else {
        print!("{report}");
    }
    Ok(())
}

async fn flow_command(args: FlowArgs) -> anyhow::Result<()> {
    if !(args.pause > 0.0 && args.pause.is_finite()) {
        anyhow::bail!("--pause must be a positive number of seconds");
    }
    let config = FlowConfig {
        programs: programs(&args.programs)?,
        streams: args.streams,
        tokens: args.tokens,
        pause: Duration::from_secs_f64(args.pause),
        idle_clients: args.idle_clients,
        server_args: args.server_args,
    };
    let report = flow(&config).await;
    let _ = std::fs::remove_dir_all(&config.programs.data_dir);
    print_report(&report?, args.programs.json)
}

async fn scale_command(args: ScaleArgs) -> anyhow::Result<()> {
    let seconds = |value: f64, flag: &str| {
        if value > 0.0 && value.is_finite() {
            Ok(Duration::from_secs_f64(value))
        } else {
            Err(anyhow::anyhow!(
                "{flag} must be a positive number of seconds"
            ))
        }
    };
    let config = ScaleConfig {
        programs: programs(&args.programs)?,
        haproxy: args.haproxy,
        workers: args.workers.max(1),
        slots: args.slots.max(1),
        concurrency: args.concurrency.max(1),
        requests: args.requests,
        tokens: args.tokens,
        kill_load: seconds(args.kill_load, "--kill-load")?,
        kill_at: seconds(args.kill_at, "--kill-at")?,
        down_for: seconds(args.down_for, "--down-for")?,
    };
    let report = scale(&config).await;
    let _ = std::fs::remove_dir_all(&config.programs.data_dir);
    print_report(&report?, args.programs.json)
}

/// The fake backend, plus `/_load/cancellations` (when each tagged stream's client
/// left) and `/_load/streamed` (body bytes each tagged stream has handed on).
async fn backend_command(listen: String) -> anyhow::Result<()> {
    let backend = SimulatedBackend::new(SimulatedBackendConfig {
        models: vec!["m".into()],
        tokens: 64,
        token_delay: Duration::ZERO,
    });
    let log = backend.clone();
    let streamed = backend.clone();
    let app = backend.router().route(
        "/_load/streamed",
        get(move || {
            let streamed = streamed.clone();
            async move { axum::Json(streamed.streamed()) }
        }),
    );
    let app = app.route(
        "/_load/cancellations",
        get(move || {
            let log = log.clone();
            async move {
                let cancelled: Vec<_> = log
                    .timed_events()
                    .into_iter()
                    .filter_map(|(at, event)| match event {
                        BackendEvent::Cancelled { tag: Some(tag), .. } => {
                            Some(json!({"tag": tag, "at_unix_us": unix_us(at)}))
                        }
                        _ => None,
                    })
                    .collect();
                axum::Json(cancelled)
            }
        }),
    );
    SimulatedBackend::serve_announced(app, &listen)
        .await
        .with_context(|| format!("cannot serve on {listen}"))?;
    Ok(())
}

/// A byte-for-byte TCP forwarder: the least any process in the path can cost.
#[allow(clippy::print_stdout)] // tells `compare` where it listens
async fn forward_command(listen: String, to: String) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("listening on {}", listener.local_addr()?);
    loop {
        let (mut inbound, _) = listener.accept().await?;
        let to = to.clone();
        tokio::spawn(async move {
            let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await else {
                return;
            };
            let _ = inbound.set_nodelay(true);
            let _ = outbound.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
        });
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        match args.command {
            Command::Run(run) => run_command(run).await,
            Command::Compare(compare) => compare_command(compare).await,
            Command::Flow(flow) => flow_command(flow).await,
            Command::Scale(scale) => scale_command(scale).await,
            Command::Backend { listen } => backend_command(listen).await,
            Command::Forward { listen, to } => forward_command(listen, to).await,
        }
    })
}

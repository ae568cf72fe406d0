//! `modelrelay-worker`: runs beside a model server and connects out to a ModelRelay relay.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use modelrelay_core::DEFAULT_PROVIDER;
use modelrelay_core::backoff::BackoffConfig;
use modelrelay_core::session::SessionConfig;
use modelrelay_core::wire::WILDCARD_MODEL;
use modelrelay_process::{self as process, LogFormat};
use modelrelay_transports::quic;
use modelrelay_transports::tls::{Trust, client_tls, parse_fingerprint};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, ProtocolChoice, RelayEndpoint, RelayTransport};
use modelrelay_worker::{ModelSource, WorkerOptions};
use url::Url;

/// Serve a local model server (llama-server, Ollama, vLLM, SGLang, any
/// OpenAI-compatible backend) through a ModelRelay relay, over an outbound link.
#[derive(Debug, Parser)]
#[command(name = "modelrelay-worker", version, about)]
struct Args {
    /// Base URL of the relay (http://, https://, ws://, wss://), or quic://host:port for QUIC.
    #[arg(long, env = "PROXY_URL", required_unless_present = "completions")]
    proxy_url: Option<String>,

    /// Shared secret the relay expects from workers.
    #[arg(
        long,
        env = "WORKER_SECRET",
        hide_env_values = true,
        required_unless_present = "completions"
    )]
    worker_secret: Option<String>,

    /// Base URL of the model server, for instance http://127.0.0.1:8000.
    #[arg(long, env = "BACKEND_URL", required_unless_present = "completions")]
    backend_url: Option<Url>,

    /// Models to advertise, comma-separated; `*` asks the backend's GET /v1/models.
    #[arg(long, env = "MODELS", default_value = "*")]
    models: String,

    /// Provider (worker pool) to join on the relay.
    #[arg(long, env = "PROVIDER_NAME", default_value = DEFAULT_PROVIDER)]
    provider: String,

    /// Name shown on the relay; defaults to the host name.
    #[arg(long, env = "WORKER_NAME")]
    worker_name: Option<String>,

    /// Requests run at once.
    #[arg(long, env = "MAX_CONCURRENCY", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    max_concurrency: u32,

    /// Seconds between re-reads of the backend's models (with `--models '*'`; 0 = never).
    #[arg(long, env = "MODELS_POLL_INTERVAL", default_value_t = 60)]
    models_poll_interval: u64,

    /// Protocol to speak: v2 with fallback to v1 (auto), or only one.
    #[arg(long, env = "WORKER_PROTOCOL", value_enum, default_value_t = ProtocolChoice::Auto)]
    protocol: ProtocolChoice,

    /// Trust only the relay certificate with this SHA-256 fingerprint (for a self-signed
    /// relay: it prints the fingerprint at start-up). For wss:// and quic://.
    #[arg(long, env = "SERVER_CERT_SHA256")]
    server_cert_sha256: Option<String>,

    /// Trust relay certificates signed by the CA in this PEM file (else the system roots).
    #[arg(long, env = "TLS_CA", conflicts_with = "server_cert_sha256")]
    tls_ca: Option<PathBuf>,

    /// Seconds running requests may take after SIGTERM before they are aborted.
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS", default_value_t = 30)]
    shutdown_timeout: u64,

    /// Log level or filter (RUST_LOG wins).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    log_level: String,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Print shell completions and exit.
    #[arg(long, hide = true, value_name = "SHELL")]
    completions: Option<clap_complete::Shell>,
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "worker".to_owned())
}

/// The models to advertise from a comma list: `*` anywhere in it asks the
/// backend (as ModelRelay's worker does), so the worker never advertises `*`.
fn model_source(models: &str) -> ModelSource {
    let names: Vec<String> = models
        .split(',')
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .collect();
    if names.iter().any(|name| name == WILDCARD_MODEL) {
        ModelSource::Discover
    } else {
        ModelSource::List(names)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(shell) = args.completions {
        process::print_completions::<Args>(shell);
        return Ok(());
    }
    process::init(&args.log_level, args.log_format);
    let (Some(proxy_url), Some(secret), Some(backend_url)) =
        (args.proxy_url, args.worker_secret, args.backend_url)
    else {
        unreachable!("clap requires these unless --completions is given");
    };
    let endpoint = RelayEndpoint::parse(&proxy_url, &args.provider).context("--proxy-url")?;
    let trust = match (args.server_cert_sha256, args.tls_ca) {
        (Some(fingerprint), _) => {
            Trust::Pinned(parse_fingerprint(&fingerprint).context("--server-cert-sha256")?)
        }
        (None, Some(ca)) => Trust::CaFile(ca),
        (None, None) => Trust::SystemRoots,
    };
    let tls = if endpoint.tls {
        Some(Arc::new(
            client_tls(&trust).context("TLS for the relay link")?,
        ))
    } else {
        None
    };
    let quic = match endpoint.transport {
        RelayTransport::Quic => Some(quic::client_config(&trust).context("QUIC settings")?),
        RelayTransport::WebSocket => None,
    };
    let backend = HttpBackend::new(backend_url.clone()).context("--backend-url")?;
    let models = model_source(&args.models);
    let poll = (models == ModelSource::Discover && args.models_poll_interval > 0)
        .then(|| Duration::from_secs(args.models_poll_interval));
    let mut options = WorkerOptions::new(endpoint, secret, models);
    options.session = SessionConfig {
        worker_name: args.worker_name.unwrap_or_else(host_name),
        max_concurrent: args.max_concurrency,
        backoff: BackoffConfig::default(),
        jitter_seed: process::process_seed(),
        shutdown_timeout: Duration::from_secs(args.shutdown_timeout),
        ..SessionConfig::default()
    };
    options.models_poll_interval = poll;
    options.quic = quic;
    options.protocol = args.protocol;
    tracing::info!(
        relay = %options.endpoint.connect_url,
        backend = %backend_url,
        name = %options.session.worker_name,
        max_concurrency = options.session.max_concurrent,
        "starting worker"
    );
    let stop = process::graceful_stop_signal();
    modelrelay_worker::run(options, NetDialer::new(tls), Arc::new(backend), stop).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_models_flag_is_a_list_or_a_wildcard() {
        assert_eq!(model_source("*"), ModelSource::Discover);
        assert_eq!(model_source("a, * "), ModelSource::Discover);
        assert_eq!(
            model_source(" a, b ,,c"),
            ModelSource::List(vec!["a".into(), "b".into(), "c".into()])
        );
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }
}

//! `modelrelay-worker`: runs beside a model server and connects out to a ModelRelay relay.

// Beside this file, where cargo does not take them for binaries of their own.
#[path = "modelrelay-worker/config_file.rs"]
mod config_file;
#[path = "modelrelay-worker/settings.rs"]
mod settings;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use modelrelay_core::backoff::BackoffConfig;
use modelrelay_core::session::SessionConfig;
use modelrelay_process as process;
use modelrelay_transports::quic;
use modelrelay_transports::tls::{Trust, client_tls, parse_fingerprint};
use modelrelay_worker::backend::HttpBackend;
use modelrelay_worker::link::{NetDialer, RelayEndpoint, RelayTransport};
use modelrelay_worker::{ModelSource, WorkerOptions};
use tracing::warn;

use crate::config_file::{Loaded, UnknownKey};
use crate::settings::{Args, Settings, TrustSetting};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    process::exit_code(start().await)
}

/// Reads the flags and the config file, then serves until a stop signal.
async fn start() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(shell) = args.completions {
        process::print_completions::<Args>(shell);
        return Ok(());
    }
    let config = args.config.clone();
    let file = match &config {
        Some(path) => config_file::load(path)?,
        None => Loaded::default(),
    };
    let settings = Settings::resolve(args, file.config)?;
    process::init(&settings.log_level, settings.log_format);
    if let Some(path) = &config {
        tracing::info!(config = %path.display(), "settings not given by flags or environment variables come from the config file");
        for UnknownKey { key, line } in &file.unknown {
            warn!(
                config = %path.display(), line, key,
                known = %config_file::KNOWN_KEYS.join(", "),
                "unknown key in the config file, ignored (as ModelRelay's worker ignores it)"
            );
        }
    }
    run(settings).await
}

/// Connects to the relays and serves until a stop signal.
async fn run(settings: Settings) -> anyhow::Result<()> {
    let relays = settings
        .proxy_urls
        .iter()
        .map(|url| RelayEndpoint::parse(url, &settings.provider))
        .collect::<Result<Vec<_>, _>>()
        .context("the proxy URL")?;
    let trust = match settings.trust {
        TrustSetting::Pinned(fingerprints) => pinned(&fingerprints)?,
        TrustSetting::CaFile(ca) => Trust::CaFile(ca),
        TrustSetting::SystemRoots => Trust::SystemRoots,
    };
    let tls = if relays.iter().any(|relay| relay.tls) {
        Some(Arc::new(
            client_tls(&trust).context("TLS for the relay link")?,
        ))
    } else {
        None
    };
    let quic = if relays
        .iter()
        .any(|relay| relay.transport == RelayTransport::Quic)
    {
        Some(quic::client_config(&trust).context("QUIC settings")?)
    } else {
        None
    };
    let backend_url = settings.backend_url;
    let backend = HttpBackend::new(backend_url.clone()).context("the backend URL")?;
    let models = settings.models;
    let poll = (models == ModelSource::Discover && settings.models_poll_interval > 0)
        .then(|| Duration::from_secs(settings.models_poll_interval));
    let mut options = WorkerOptions::new(relays[0].clone(), settings.worker_secret, models);
    options.relays = relays;
    options.resolve_relays = settings.resolve_relays;
    options.session = SessionConfig {
        worker_name: settings
            .worker_name
            .unwrap_or_else(|| process::host_name("worker")),
        max_concurrent: settings.max_concurrency,
        backoff: BackoffConfig::default(),
        jitter_seed: process::process_seed(),
        shutdown_timeout: Duration::from_secs(settings.shutdown_timeout),
        ..SessionConfig::default()
    };
    options.models_poll_interval = poll;
    options.quic = quic;
    options.protocol = settings.protocol;
    let urls: Vec<&str> = options
        .relays
        .iter()
        .map(|relay| relay.connect_url.as_str())
        .collect();
    tracing::info!(
        relays = %urls.join(", "),
        resolve_relays = options.resolve_relays,
        backend = %backend_url,
        name = %options.session.worker_name,
        max_concurrency = options.session.max_concurrent,
        "starting worker"
    );
    let stop = process::graceful_stop_signal();
    modelrelay_worker::run(options, NetDialer::new(tls), Arc::new(backend), stop).await;
    Ok(())
}

/// Trust in the certificates with these fingerprints (a comma list: one per relay).
fn pinned(fingerprints: &str) -> anyhow::Result<Trust> {
    let mut parsed = fingerprints
        .split(',')
        .map(str::trim)
        .filter(|text| !text.is_empty())
        .map(|text| parse_fingerprint(text).context("--server-cert-sha256"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    match parsed.len() {
        0 => anyhow::bail!("--server-cert-sha256 is empty"),
        1 => Ok(Trust::Pinned(parsed.remove(0))),
        _ => Ok(Trust::PinnedAny(parsed)),
    }
}

//! `modelrelay-server`: the relay's HTTP endpoint for clients and workers.

mod args;
mod demo;
mod warnings;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::{CommandFactory, FromArgMatches};
use modelrelay_core::ProviderId;
use modelrelay_process as process;
use modelrelay_relay::downloads::Downloads;
use modelrelay_relay::keys::{KeyStore, KeyStoreLocation};
use modelrelay_relay::quic::QuicSettings;
use modelrelay_relay::relays;
use modelrelay_relay::{AdminToken, CorsOrigins, ServerConfig, WorkerSecrets, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::args::{Args, DatabaseUrl, seconds_or_never};

/// How long the demo model waits between tokens: slow enough to watch it stream.
const DEMO_TOKEN_DELAY: Duration = Duration::from_millis(60);

/// How long the demo worker may take to finish after the relay stopped.
const DEMO_WORKER_EXIT_WAIT: Duration = Duration::from_secs(5);

#[tokio::main]
async fn main() -> std::process::ExitCode {
    process::exit_code(run().await)
}

/// Reads the flags, starts the relay and serves until a stop signal.
async fn run() -> anyhow::Result<()> {
    let matches = Args::command().get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|error| error.exit());
    if let Some(shell) = args.completions {
        process::print_completions::<Args>(shell);
        return Ok(());
    }
    process::init(&args.log_level, args.log_format);
    for warning in warnings::unworkable(&args) {
        tracing::warn!("{warning}");
    }
    check_open_file_limit(args.max_connections);
    let secrets = worker_secrets(&args)?;
    let mut config = server_config(&args, &secrets)?;
    let database_url = args.key_database_url(
        matches.value_source("database_url"),
        std::env::var(args::MODELRELAY_DATABASE_URL_VAR).ok(),
    );
    if config.admin_token.is_some() || config.require_api_keys || database_url.is_some() {
        config.keys = Some(open_key_store(&args, database_url.as_ref()).await?);
    }
    let quic = match args.quic_listen {
        Some(listen) => Some(quic_endpoint(&args, listen, &mut config)?),
        None => None,
    };

    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    info!(%addr, provider = %config.provider, "relay listening");

    let stop = CancellationToken::new();
    let demo = if args.demo {
        Some(start_demo(addr, &secrets[0], stop.clone()).await?)
    } else {
        None
    };
    let on_signal = async move {
        process::graceful_stop_signal().await;
        stop.cancel();
    };
    serve(config, listener, quic, on_signal).await;
    if let Some(demo) = demo {
        demo.worker.exited_within(DEMO_WORKER_EXIT_WAIT).await;
    }
    Ok(())
}

/// The secrets workers may present: the flag's (several during a rotation), or
/// a fresh one for the demo. The first is the one the demo worker uses.
fn worker_secrets(args: &Args) -> anyhow::Result<Vec<String>> {
    if args.worker_secret.is_empty() {
        return Ok(vec![format!("demo-{:016x}", process::process_seed())]);
    }
    let secrets: Vec<String> = args
        .worker_secret
        .iter()
        .map(|secret| secret.trim().to_owned())
        .collect();
    if secrets.iter().any(String::is_empty) {
        anyhow::bail!("--worker-secret must not be empty (nor hold an empty item in a comma list)");
    }
    Ok(secrets)
}

/// The relay's settings from the flags (all but the key store and QUIC).
fn server_config(args: &Args, secrets: &[String]) -> anyhow::Result<ServerConfig> {
    let mut config = ServerConfig::new(&secrets[0]);
    config.worker_secret = WorkerSecrets::new(secrets.iter().map(String::as_str));
    config.allow_secret_in_query = args.allow_secret_in_query;
    config.provider = ProviderId::new(&args.provider);
    config.relay = args.relay_config();
    config.max_body_bytes = args.max_body_bytes;
    config.body_read_timeout = seconds_or_never(args.body_read_timeout);
    config.client_idle_timeout = seconds_or_never(args.client_idle_timeout);
    config.max_buffered_request_bytes = args.max_buffered_request_bytes;
    config.max_buffered_bytes = args.max_buffered_bytes;
    config.link_windows = !args.no_link_windows;
    config.max_client_buffer_bytes = args.max_client_buffer_bytes;
    config.max_connections = args.max_connections;
    config.max_connections_per_address = args.max_connections_per_address;
    config.drain_timeout = Duration::from_secs(args.drain_timeout);
    config.enable_v2 = !args.disable_v2;
    config.trust_forwarded_for = args.trust_forwarded_for;
    config.require_api_keys = args.require_api_keys;
    config.public_url = match &args.public_url {
        // It is pasted into shell commands on /setup, inside single quotes.
        Some(url) if url.as_str().contains(['\'', '"', '`', '\\']) => {
            anyhow::bail!("--public-url must not contain quotes or backslashes")
        }
        // `relay.example:8080` parses as a URL of scheme `relay.example`.
        Some(url) if !matches!(url.scheme(), "http" | "https") => anyhow::bail!(
            "--public-url must be an http:// or https:// URL such as https://relay.example.com, not {url}"
        ),
        Some(url) => Some(url.to_string()),
        None => None,
    };
    config.admin_token = match args.admin_token.as_deref().map(str::trim) {
        None => None,
        Some("") => anyhow::bail!("--admin-token must not be empty"),
        Some(token) => Some(AdminToken::new(token)),
    };
    config.relay_name = match &args.relay_name {
        Some(name) if !relays::is_valid_relay_name(name) => anyhow::bail!(
            "--relay-name must be 1 to {} characters, without control characters",
            relays::MAX_RELAY_NAME_CHARS
        ),
        Some(name) => name.trim().to_owned(),
        None => process::host_name("relay"),
    };
    config.cors_allow_origins =
        CorsOrigins::parse(args.cors_allow_origins.iter().map(String::as_str))
            .context("--cors-allow-origins")?;
    if let Some(dir) = &args.downloads_dir {
        let downloads = Downloads::scan(dir).context("--downloads-dir")?;
        let files: Vec<&str> = downloads.files().iter().map(|f| f.name.as_str()).collect();
        info!(dir = %dir.display(), ?files, "serving downloads at /downloads");
        config.downloads = Some(Arc::new(downloads));
    }
    Ok(config)
}

/// Warns when the process may open fewer files than `--max-connections` asks
/// for (each connection is one), plus a margin for worker links, the database and logs.
fn check_open_file_limit(max_connections: usize) {
    const MARGIN: u64 = 1024;
    let Some(limit) = open_file_limit() else {
        return;
    };
    let wanted = (max_connections as u64).saturating_add(MARGIN);
    if max_connections != 0 && limit < wanted {
        tracing::warn!(
            open_file_limit = limit,
            max_connections,
            "the open-file limit is below --max-connections plus {MARGIN}: past it, new connections fail at accept; raise it (ulimit -n, LimitNOFILE=) or lower --max-connections"
        );
    }
}

/// The soft limit on open files, from `/proc/self/limits` (Linux; `None` elsewhere or unlimited).
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..]
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Opens (and migrates) the API-key database at `url`, else in `--data-dir`.
/// Logs where the URL came from, never the URL.
async fn open_key_store(args: &Args, url: Option<&DatabaseUrl>) -> anyhow::Result<Arc<KeyStore>> {
    let from = url.map(|url| url.from);
    let location = KeyStoreLocation::from_settings(&args.data_dir, url.map(|u| u.url.as_str()))
        .with_context(|| format!("the database URL from {}", from.unwrap_or("--data-dir")))?;
    let store = KeyStore::open(&location)
        .await
        .with_context(|| match &location {
            // Its errors name the server and database (never the URL).
            KeyStoreLocation::Postgres(_) => "opening the API-key database".to_owned(),
            other => format!("opening the API-key database ({other:?})"),
        })?;
    info!(database = ?location, url_from = from, "API-key database open");
    if let Some(live) = store.modelrelay_keys().await? {
        info!(
            live_keys = live,
            "ModelRelay's key table (server_api_keys) found: its mr_live_ keys are checked, listed and revoked in place"
        );
    }
    Ok(Arc::new(store))
}

/// Binds the QUIC endpoint for worker links and records its settings in `config`.
fn quic_endpoint(
    args: &Args,
    listen: std::net::SocketAddr,
    config: &mut ServerConfig,
) -> anyhow::Result<quinn::Endpoint> {
    let mut settings = QuicSettings {
        listen,
        cert: args.tls_cert.clone(),
        key: args.tls_key.clone(),
        data_dir: args.data_dir.clone(),
    };
    let (endpoint, fingerprint) =
        modelrelay_relay::quic::endpoint(&settings).context("--quic-listen")?;
    info!(addr = %endpoint.local_addr()?, %fingerprint, "QUIC worker links on");
    settings.listen = endpoint.local_addr()?;
    config.quic = Some(settings);
    config.quic_fingerprint = Some(fingerprint);
    Ok(endpoint)
}

/// Starts the demo's simulated model and worker, and says how to try it.
async fn start_demo(
    addr: std::net::SocketAddr,
    secret: &str,
    stop: CancellationToken,
) -> anyhow::Result<demo::Demo> {
    let demo = demo::start(addr, secret, DEMO_TOKEN_DELAY, stop)
        .await
        .context("starting the demo")?;
    let dial = demo::dial_address(addr);
    info!(
        "demo: a simulated model {:?} is connected; try:\n\n  curl -N http://{dial}/v1/chat/completions \\\n    -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n",
        demo::DEMO_MODEL,
        demo::DEMO_MODEL,
    );
    Ok(demo)
}

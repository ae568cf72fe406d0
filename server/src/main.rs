//! `modelrelay-server`: the relay's HTTP endpoint for clients and workers.

mod demo;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use axum::serve::ListenerExt;
use clap::{CommandFactory, Parser};
use modelrelay_core::ProviderId;
use modelrelay_core::relay::RelayConfig;
use modelrelay_process::{self as process, LogFormat};
use modelrelay_relay::keys::{KeyStore, KeyStoreLocation};
use modelrelay_relay::quic::QuicSettings;
use modelrelay_relay::{AdminToken, ServerConfig, serve};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

/// One stable OpenAI- and Anthropic-compatible endpoint in front of your own
/// model servers, which connect out to it through `modelrelay-worker`.
#[derive(Debug, Parser)]
#[command(name = "modelrelay-server", version, about)]
struct Args {
    /// Address to listen on, for clients and workers alike.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    listen: String,

    /// Shared secret workers must present (required unless --demo).
    #[arg(long, env = "WORKER_SECRET", hide_env_values = true, required_unless_present_any = ["demo", "completions"])]
    worker_secret: Option<String>,

    /// Provider (worker pool) name workers join.
    #[arg(long, env = "PROVIDER_NAME", default_value = "local")]
    provider: String,

    /// Most requests waiting for a worker; 0 means no limit.
    #[arg(long, env = "MAX_QUEUE_LEN", default_value_t = 100)]
    max_queue_len: usize,

    /// Seconds a request may wait for a worker.
    #[arg(long, env = "QUEUE_TIMEOUT_SECS", default_value_t = 30)]
    queue_timeout: u64,

    /// Seconds a request may take in all.
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 300)]
    request_timeout: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    max_body_bytes: usize,

    /// Seconds running requests may take after SIGTERM before the relay stops.
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    drain_timeout: u64,

    /// Behind a TLS proxy: count worker logins against the address it puts in X-Forwarded-For.
    #[arg(long, env = "TRUST_FORWARDED_FOR")]
    trust_forwarded_for: bool,

    /// Speak only protocol v1 to workers (as older relays do).
    #[arg(long, env = "DISABLE_PROTOCOL_V2")]
    disable_v2: bool,

    /// UDP address for QUIC worker links (off unless given), for example 0.0.0.0:8443.
    #[arg(long, env = "QUIC_LISTEN_ADDR")]
    quic_listen: Option<SocketAddr>,

    /// PEM certificate chain for QUIC; without it a self-signed one is made and kept in --data-dir.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,

    /// Where the relay keeps its state (the API-key database, the self-signed QUIC certificate).
    #[arg(long, env = "MODELRELAY_DATA_DIR", default_value = "modelrelay-data")]
    data_dir: PathBuf,

    /// Bearer token for /admin/*, /dashboard and /setup; unset, they answer 403.
    #[arg(long, env = "MODELRELAY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,

    /// Client routes need an API key (Authorization: Bearer mr-…, or x-api-key on /v1/messages).
    #[arg(long, env = "MODELRELAY_REQUIRE_API_KEYS")]
    require_api_keys: bool,

    /// postgres://… to keep API keys in PostgreSQL (shared by several relays); default: SQLite in --data-dir.
    #[arg(long, env = "MODELRELAY_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,

    /// This server's URL as workers and clients reach it, shown on /setup (default: from the request).
    #[arg(long, env = "MODELRELAY_PUBLIC_URL")]
    public_url: Option<url::Url>,

    /// Run with a built-in simulated model and worker: streams with no GPU and no backend.
    #[arg(long)]
    demo: bool,

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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(shell) = args.completions {
        clap_complete::generate(
            shell,
            &mut Args::command(),
            "modelrelay-server",
            &mut std::io::stdout(),
        );
        return Ok(());
    }
    process::init(&args.log_level, args.log_format);
    let secret = match args.worker_secret {
        Some(secret) if !secret.is_empty() => secret,
        Some(_) => anyhow::bail!("--worker-secret must not be empty"),
        None => format!("demo-{:016x}", process::process_seed()),
    };
    let mut config = ServerConfig::new(&secret);
    config.provider = ProviderId::new(&args.provider);
    config.relay = RelayConfig {
        max_queue_len: args.max_queue_len,
        queue_timeout: Duration::from_secs(args.queue_timeout),
        request_timeout: Duration::from_secs(args.request_timeout),
        ..RelayConfig::default()
    };
    config.max_body_bytes = args.max_body_bytes;
    config.drain_timeout = Duration::from_secs(args.drain_timeout);
    config.enable_v2 = !args.disable_v2;
    config.trust_forwarded_for = args.trust_forwarded_for;
    config.require_api_keys = args.require_api_keys;
    config.public_url = match args.public_url {
        // It is pasted into shell commands on /setup, inside single quotes.
        Some(url) if url.as_str().contains(['\'', '"', '`', '\\']) => {
            anyhow::bail!("--public-url must not contain quotes or backslashes")
        }
        Some(url) => Some(url.to_string()),
        None => None,
    };
    config.admin_token = match args.admin_token.as_deref().map(str::trim) {
        None => None,
        Some("") => anyhow::bail!("--admin-token must not be empty"),
        Some(token) => Some(AdminToken::new(token)),
    };
    if config.admin_token.is_some() || config.require_api_keys || args.database_url.is_some() {
        let location =
            KeyStoreLocation::from_settings(&args.data_dir, args.database_url.as_deref())?;
        let store = KeyStore::open(&location)
            .await
            .with_context(|| format!("opening the API-key database ({location:?})"))?;
        info!(database = ?location, "API-key database open");
        config.keys = Some(Arc::new(store));
    }
    let quic = match args.quic_listen {
        Some(listen) => {
            let settings = QuicSettings {
                listen,
                cert: args.tls_cert,
                key: args.tls_key,
                data_dir: args.data_dir,
            };
            let (endpoint, fingerprint) =
                modelrelay_relay::quic::endpoint(&settings).context("--quic-listen")?;
            info!(addr = %endpoint.local_addr()?, %fingerprint, "QUIC worker links on");
            config.quic = Some(settings);
            Some(endpoint)
        }
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
    let demo_worker = if args.demo {
        let demo = demo::start(addr, &secret, Duration::from_millis(60), stop.clone())
            .await
            .context("starting the demo")?;
        let dial = demo::dial_address(addr);
        info!(
            "demo: a simulated model {:?} is connected; try:\n\n  curl -N http://{dial}/v1/chat/completions \\\n    -H 'content-type: application/json' \\\n    -d '{{\"model\":\"{}\",\"stream\":true,\"messages\":[{{\"role\":\"user\",\"content\":\"Hello\"}}]}}'\n",
            demo::DEMO_MODEL,
            demo::DEMO_MODEL,
        );
        Some(demo)
    } else {
        None
    };

    let on_signal = {
        let stop = stop.clone();
        async move {
            process::graceful_stop_signal().await;
            stop.cancel();
        }
    };
    serve(config, listener, quic, on_signal).await;
    if let Some(demo) = demo_worker {
        demo.worker.exited_within(Duration::from_secs(5)).await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }
}

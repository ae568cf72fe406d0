//! The server's command line: every flag, with its environment variable and default.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::parser::ValueSource;
use modelrelay_core::DEFAULT_PROVIDER;
use modelrelay_core::relay::{FlowConfig, RelayConfig};
use modelrelay_process::LogFormat;

/// One stable OpenAI- and Anthropic-compatible endpoint in front of your own
/// model servers, which connect out to it through `modelrelay-worker`.
#[derive(Debug, Parser)]
#[command(name = "modelrelay-server", version, about)]
pub(crate) struct Args {
    /// Address to listen on, for clients and workers alike.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:8080")]
    pub(crate) listen: String,

    /// Shared secret workers must present (required unless --demo); during a rotation, several: repeat the flag or separate them with commas.
    #[arg(long, env = "WORKER_SECRET", hide_env_values = true, value_delimiter = ',', required_unless_present_any = ["demo", "completions"])]
    pub(crate) worker_secret: Vec<String>,

    /// Accept the worker secret in the connect URL's query (?worker_secret=), as some old workers send it; off, since query strings end up in proxy logs.
    #[arg(long, env = "ALLOW_SECRET_IN_QUERY")]
    pub(crate) allow_secret_in_query: bool,

    /// Provider (worker pool) name workers join.
    #[arg(long, env = "PROVIDER_NAME", default_value = DEFAULT_PROVIDER)]
    pub(crate) provider: String,

    /// Most requests waiting for a worker; 0 means no limit.
    #[arg(long, env = "MAX_QUEUE_LEN", default_value_t = 100)]
    pub(crate) max_queue_len: usize,

    /// Seconds a request may wait for a worker; then 504. 0 means no limit (the request timeout still applies).
    #[arg(long, env = "QUEUE_TIMEOUT_SECS", default_value_t = 30)]
    pub(crate) queue_timeout: u64,

    /// Seconds a request may take in all; then 504. 0 means no limit (--client-idle-timeout still applies).
    #[arg(long, env = "REQUEST_TIMEOUT_SECS", default_value_t = 300)]
    pub(crate) request_timeout: u64,

    /// Largest request body accepted, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = 32 * 1024 * 1024)]
    pub(crate) max_body_bytes: usize,

    /// Seconds a request body may take to arrive; then 408. 0 means no limit.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECS", default_value_t = 60)]
    pub(crate) body_read_timeout: u64,

    /// Bytes all request bodies may hold in memory at once; a body that finds no room within 5 s gets 503. 0 means no limit.
    #[arg(long, env = "MAX_BUFFERED_REQUEST_BYTES", default_value_t = 256 * 1024 * 1024)]
    pub(crate) max_buffered_request_bytes: usize,

    /// Bytes all streamed answers may hold for their clients at once; while they are spent, new windows and requests wait, and a lagging stream from a worker without windows ends with client_too_slow.
    #[arg(long, env = "MAX_BUFFERED_BYTES", default_value_t = FlowConfig::default().budget)]
    pub(crate) max_buffered_bytes: u64,

    /// Seconds a client (or a worker link) may take none of the relay's bytes before its connection is cut (a stream is cancelled at its worker). 0 means never, for worker links too.
    #[arg(long, env = "CLIENT_IDLE_TIMEOUT_SECS", default_value_t = 60)]
    pub(crate) client_idle_timeout: u64,

    /// Most open HTTP connections (worker links are not counted once connected); past it, 503 and close. 0 means no limit.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 16_384)]
    pub(crate) max_connections: usize,

    /// Most open HTTP connections from one address, past it 429 (behind a proxy every client shares its address; worker links are not counted once connected). 0 means no limit.
    #[arg(long, env = "MAX_CONNECTIONS_PER_ADDRESS", default_value_t = 0)]
    pub(crate) max_connections_per_address: usize,

    /// Seconds running requests may take after SIGTERM before the relay stops.
    #[arg(long, env = "DRAIN_TIMEOUT_SECS", default_value_t = 30)]
    pub(crate) drain_timeout: u64,

    /// Behind a TLS proxy: count failed worker and admin logins against the address it puts in X-Forwarded-For.
    #[arg(long, env = "TRUST_FORWARDED_FOR")]
    pub(crate) trust_forwarded_for: bool,

    /// Speak only protocol v1 to workers (as older relays do).
    #[arg(long, env = "DISABLE_PROTOCOL_V2")]
    pub(crate) disable_v2: bool,

    /// Bytes a stream from a worker without windows may hold for a client that lags (or a windowed worker may send past its window) before it ends with client_too_slow. For tests.
    #[arg(long, hide = true, default_value_t = FlowConfig::default().legacy_cap)]
    pub(crate) max_client_buffer_bytes: u64,

    /// Never give workers per-request windows (v2.1): every link is paced as with an older relay. For tests.
    #[arg(long, hide = true)]
    pub(crate) no_link_windows: bool,

    /// UDP address for QUIC worker links (off unless given), for example 0.0.0.0:8443.
    #[arg(long, env = "QUIC_LISTEN_ADDR")]
    pub(crate) quic_listen: Option<SocketAddr>,

    /// PEM certificate chain for QUIC; without it a self-signed one is made and kept in --data-dir.
    #[arg(long, env = "TLS_CERT", requires = "tls_key")]
    pub(crate) tls_cert: Option<PathBuf>,

    /// PEM private key for --tls-cert.
    #[arg(long, env = "TLS_KEY", requires = "tls_cert")]
    pub(crate) tls_key: Option<PathBuf>,

    /// Where the relay keeps its state (the API-key database, the self-signed QUIC certificate).
    #[arg(long, env = "MODELRELAY_DATA_DIR", default_value = "modelrelay-data")]
    pub(crate) data_dir: PathBuf,

    /// Token for /admin/*, /dashboard and /setup, sent as Authorization: Bearer <token> or bare (as ModelRelay takes it); unset, they answer 403.
    #[arg(long, env = "MODELRELAY_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,

    /// Client routes need an API key (Authorization: Bearer mr-…, or x-api-key on /v1/messages).
    #[arg(long, env = "MODELRELAY_REQUIRE_API_KEYS")]
    pub(crate) require_api_keys: bool,

    /// postgres://… to keep API keys in PostgreSQL (shared by several relays), or sqlite:PATH; default: SQLite in --data-dir. Also read from DATABASE_URL (ModelRelay's name) when neither this flag nor MODELRELAY_DATABASE_URL is set. ModelRelay's own keys (mr_live_…) in that database keep working.
    #[arg(long, env = "MODELRELAY_DATABASE_URL", hide_env_values = true)]
    pub(crate) database_url: Option<String>,

    /// This server's http:// or https:// URL as workers and clients reach it, shown on /setup (default: from the request).
    #[arg(long, env = "MODELRELAY_PUBLIC_URL")]
    pub(crate) public_url: Option<url::Url>,

    /// Web pages that may call the client API (/v1/*, /health) from a browser: * for any, or a comma list of origins such as https://app.example.com. Never on /admin, /dashboard, /setup.
    #[arg(
        long,
        env = "CORS_ALLOW_ORIGINS",
        value_delimiter = ',',
        default_value = "*"
    )]
    pub(crate) cors_allow_origins: Vec<String>,

    /// A directory of worker binaries to serve at /downloads, each with its size and SHA-256 (read at start-up).
    #[arg(long, env = "MODELRELAY_DOWNLOADS_DIR", value_name = "DIR")]
    pub(crate) downloads_dir: Option<std::path::PathBuf>,

    /// This relay's name in the list of relays sharing its database (GET /admin/relays, the dashboard); default: the host name.
    #[arg(long, env = "MODELRELAY_RELAY_NAME")]
    pub(crate) relay_name: Option<String>,

    /// Run with a built-in simulated model and worker: streams with no GPU and no backend.
    #[arg(long)]
    pub(crate) demo: bool,

    /// Log level or filter (RUST_LOG wins).
    #[arg(long, env = "LOG_LEVEL", default_value = "info")]
    pub(crate) log_level: String,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub(crate) log_format: LogFormat,

    /// Print shell completions and exit.
    #[arg(long, hide = true, value_name = "SHELL")]
    pub(crate) completions: Option<clap_complete::Shell>,
}

impl Args {
    /// The relay core's queue bound and timeouts; a timeout of 0 is none at
    /// all, as in ModelRelay (no deadline is armed, not a distant one).
    pub(crate) fn relay_config(&self) -> RelayConfig {
        RelayConfig {
            max_queue_len: self.max_queue_len,
            queue_timeout: seconds_or_never(self.queue_timeout),
            request_timeout: seconds_or_never(self.request_timeout),
            ..RelayConfig::default()
        }
    }
}

/// `secs` seconds, or `None` for 0 (no limit).
pub(crate) fn seconds_or_never(secs: u64) -> Option<Duration> {
    (secs != 0).then(|| Duration::from_secs(secs))
}

/// ModelRelay's name for the key database's URL, read when ours is not set.
pub(crate) const MODELRELAY_DATABASE_URL_VAR: &str = "DATABASE_URL";

/// The key database's URL, and the name it was given under (never logged
/// itself: a PostgreSQL URL may carry a password).
#[derive(PartialEq, Eq)]
pub(crate) struct DatabaseUrl {
    /// The URL.
    pub(crate) url: String,
    /// The flag or variable it came from.
    pub(crate) from: &'static str,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DatabaseUrl(<url> from {})", self.from)
    }
}

impl Args {
    /// The key database's URL: `--database-url`, else `MODELRELAY_DATABASE_URL`
    /// (both read by clap, which says which in `source`), else ModelRelay's
    /// `DATABASE_URL` (`modelrelay_var`, when not empty).
    pub(crate) fn key_database_url(
        &self,
        source: Option<ValueSource>,
        modelrelay_var: Option<String>,
    ) -> Option<DatabaseUrl> {
        let (url, from) = match (&self.database_url, source) {
            (Some(url), Some(ValueSource::CommandLine)) => (url.clone(), "--database-url"),
            (Some(url), _) => (url.clone(), "MODELRELAY_DATABASE_URL"),
            (None, _) => (
                modelrelay_var.filter(|url| !url.trim().is_empty())?,
                MODELRELAY_DATABASE_URL_VAR,
            ),
        };
        Some(DatabaseUrl { url, from })
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn several_worker_secrets_are_read_from_repeated_flags_and_comma_lists() {
        let args = Args::try_parse_from([
            "modelrelay-server",
            "--worker-secret",
            "old,new",
            "--worker-secret",
            "third",
        ])
        .unwrap();
        assert_eq!(args.worker_secret, ["old", "new", "third"]);
        assert!(!args.allow_secret_in_query);
    }

    #[test]
    fn zero_queue_and_request_timeouts_mean_none() {
        let parse = |extra: &[&str]| {
            let base = ["modelrelay-server", "--worker-secret", "s"];
            Args::try_parse_from(base.iter().chain(extra)).unwrap()
        };
        let zero = parse(&["--queue-timeout", "0", "--request-timeout", "0"]).relay_config();
        assert_eq!(zero.queue_timeout, None);
        assert_eq!(zero.request_timeout, None);
        let set = parse(&["--queue-timeout", "7", "--request-timeout", "9"]).relay_config();
        assert_eq!(set.queue_timeout, Some(Duration::from_secs(7)));
        assert_eq!(set.request_timeout, Some(Duration::from_secs(9)));
        let default = parse(&[]).relay_config();
        assert_eq!(default.queue_timeout, Some(Duration::from_secs(30)));
        assert_eq!(default.request_timeout, Some(Duration::from_secs(300)));
    }

    #[test]
    fn modelrelays_database_url_is_read_when_ours_is_not_set_and_ours_wins() {
        let theirs = || Some("postgres://u:pw@theirs/db".to_owned());
        let mut args = Args::try_parse_from(["modelrelay-server", "--demo"]).unwrap();
        args.database_url = None;
        let used = args.key_database_url(None, theirs()).unwrap();
        assert_eq!(used.url, "postgres://u:pw@theirs/db");
        assert_eq!(used.from, "DATABASE_URL");
        assert!(!format!("{used:?}").contains("pw"), "Debug hides the URL");
        assert_eq!(args.key_database_url(None, Some(" ".into())), None);
        assert_eq!(args.key_database_url(None, None), None);

        args.database_url = Some("postgres://ours/db".into());
        let ours = args
            .key_database_url(Some(ValueSource::EnvVariable), theirs())
            .unwrap();
        assert_eq!(
            (ours.url.as_str(), ours.from),
            ("postgres://ours/db", "MODELRELAY_DATABASE_URL")
        );
        let flag = args
            .key_database_url(Some(ValueSource::CommandLine), theirs())
            .unwrap();
        assert_eq!(flag.from, "--database-url");
    }

    #[test]
    fn cors_origins_default_to_any_and_take_a_comma_list() {
        let args = Args::try_parse_from(["modelrelay-server", "--demo"]).unwrap();
        assert_eq!(args.cors_allow_origins, ["*"]);
        let args = Args::try_parse_from([
            "modelrelay-server",
            "--demo",
            "--cors-allow-origins",
            "https://a.example,http://localhost:3000",
        ])
        .unwrap();
        assert_eq!(
            args.cors_allow_origins,
            ["https://a.example", "http://localhost:3000"]
        );
    }
}

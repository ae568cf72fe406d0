//! The worker's settings: flags, then environment variables (both read by
//! clap), then the `--config` file, then the defaults, the first that says
//! wins. ModelRelay's worker has the same order and the same defaults for the
//! relay (`http://127.0.0.1:8080`) and the backend (`http://127.0.0.1:8000`).

use std::path::PathBuf;

use clap::Parser;
use modelrelay_core::DEFAULT_PROVIDER;
use modelrelay_core::wire::WILDCARD_MODEL;
use modelrelay_process::LogFormat;
use modelrelay_worker::ModelSource;
use modelrelay_worker::link::ProtocolChoice;
use url::Url;

use crate::config_file::{FileConfig, ModelList};

/// The relay, when no flag, variable or file names one (ModelRelay's default).
pub(crate) const DEFAULT_PROXY_URL: &str = "http://127.0.0.1:8080";
/// The model server, when no flag, variable or file names one (ModelRelay's default).
pub(crate) const DEFAULT_BACKEND_URL: &str = "http://127.0.0.1:8000";
/// The models, when none are given: ask the backend.
const DEFAULT_MODELS: &str = WILDCARD_MODEL;
/// Requests run at once, when not given.
const DEFAULT_MAX_CONCURRENCY: u32 = 1;
/// Seconds between re-reads of the backend's models, when not given.
const DEFAULT_MODELS_POLL_INTERVAL: u64 = 60;
/// Seconds running requests get after SIGTERM, when not given.
const DEFAULT_SHUTDOWN_TIMEOUT: u64 = 30;
/// The log filter, when not given.
const DEFAULT_LOG_LEVEL: &str = "info";

/// Serve a local model server (llama-server, Ollama, vLLM, SGLang, any
/// OpenAI-compatible backend) through a ModelRelay relay, over an outbound link.
///
/// Each setting comes from its flag, else its environment variable, else the
/// --config file, else its default.
#[derive(Debug, Parser)]
#[command(name = "modelrelay-worker", version, about)]
pub(crate) struct Args {
    /// A TOML file of settings by their flags' names in snake_case, as ModelRelay's config.toml (proxy_url, worker_secret, models = ["a", "b"] or "a,b", …); flags and environment variables win over it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,

    /// Base URL of the relay (http://, https://, ws://, wss://), or quic://host:port for QUIC; several relays: a comma list or the flag repeated, and the worker serves them all [default: http://127.0.0.1:8080].
    #[arg(long, env = "PROXY_URL", value_delimiter = ',', action = clap::ArgAction::Append)]
    pub(crate) proxy_url: Vec<String>,

    /// Link to every address each relay URL's host name resolves to (a Kubernetes headless Service), resolving again every 10 s.
    #[arg(
        long,
        env = "RESOLVE_RELAYS",
        num_args = 0..=1,
        default_missing_value = "true",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    pub(crate) resolve_relays: Option<bool>,

    /// Shared secret the relay expects from workers (required: a flag, the variable or the file).
    #[arg(long, env = "WORKER_SECRET", hide_env_values = true)]
    pub(crate) worker_secret: Option<String>,

    /// Base URL of the model server [default: http://127.0.0.1:8000].
    #[arg(long, env = "BACKEND_URL")]
    pub(crate) backend_url: Option<Url>,

    /// Models to advertise, comma-separated; `*` (alone or in the list) asks the backend's GET /v1/models [default: *].
    #[arg(long, env = "MODELS")]
    pub(crate) models: Option<String>,

    /// Provider (worker pool) to join on the relay [default: local].
    #[arg(long, env = "PROVIDER_NAME")]
    pub(crate) provider: Option<String>,

    /// Name shown on the relay [default: the host name].
    #[arg(long, env = "WORKER_NAME")]
    pub(crate) worker_name: Option<String>,

    /// Requests run at once [default: 1].
    #[arg(long, env = "MAX_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..))]
    pub(crate) max_concurrency: Option<u32>,

    /// Seconds between re-reads of the backend's models (with `--models '*'`; 0 = never) [default: 60].
    #[arg(long, env = "MODELS_POLL_INTERVAL")]
    pub(crate) models_poll_interval: Option<u64>,

    /// Protocol to speak: v2 with fallback to v1 (auto), or only one [default: auto].
    #[arg(long, env = "WORKER_PROTOCOL", value_enum)]
    pub(crate) protocol: Option<ProtocolChoice>,

    /// Trust only the relay certificate with this SHA-256 fingerprint (for a self-signed
    /// relay: it prints the fingerprint at start-up), hex with or without colons, or the
    /// line `openssl x509 -noout -fingerprint -sha256` prints; several relays with their
    /// own certificates: a comma list. For wss:// and quic://.
    #[arg(long, env = "SERVER_CERT_SHA256")]
    pub(crate) server_cert_sha256: Option<String>,

    /// Trust relay certificates signed by the CA in this PEM file [default: the system roots].
    #[arg(long, env = "TLS_CA", conflicts_with = "server_cert_sha256")]
    pub(crate) tls_ca: Option<PathBuf>,

    /// Seconds running requests may take after SIGTERM before they are aborted [default: 30].
    #[arg(long, env = "SHUTDOWN_TIMEOUT_SECS")]
    pub(crate) shutdown_timeout: Option<u64>,

    /// Log level or filter (RUST_LOG wins) [default: info].
    #[arg(long, env = "LOG_LEVEL")]
    pub(crate) log_level: Option<String>,

    /// Log line format [default: text].
    #[arg(long, env = "LOG_FORMAT", value_enum)]
    pub(crate) log_format: Option<LogFormat>,

    /// Print shell completions and exit.
    #[arg(long, hide = true, value_name = "SHELL")]
    pub(crate) completions: Option<clap_complete::Shell>,
}

/// How the worker trusts a relay's TLS certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum TrustSetting {
    /// The system's roots.
    SystemRoots,
    /// Only the certificate with this SHA-256 fingerprint.
    Pinned(String),
    /// Certificates signed by the CA in this PEM file.
    CaFile(PathBuf),
}

/// Every setting, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Settings {
    /// One or more relays.
    pub(crate) proxy_urls: Vec<String>,
    pub(crate) resolve_relays: bool,
    pub(crate) worker_secret: String,
    pub(crate) backend_url: Url,
    pub(crate) models: ModelSource,
    pub(crate) provider: String,
    /// `None`: the host name.
    pub(crate) worker_name: Option<String>,
    pub(crate) max_concurrency: u32,
    pub(crate) models_poll_interval: u64,
    pub(crate) protocol: ProtocolChoice,
    pub(crate) trust: TrustSetting,
    pub(crate) shutdown_timeout: u64,
    pub(crate) log_level: String,
    pub(crate) log_format: LogFormat,
}

/// A setting nothing gave and that has no default.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettingsError {
    /// No worker secret anywhere.
    #[error(
        "no worker secret: give --worker-secret, WORKER_SECRET, or worker_secret in the --config file"
    )]
    NoSecret,
}

impl Settings {
    /// Each setting from `args` (flags and variables), else `file`, else its default.
    pub(crate) fn resolve(args: Args, file: FileConfig) -> Result<Self, SettingsError> {
        let models = match (args.models, file.models) {
            (Some(flag), _) => ModelList::Comma(flag).names(),
            (None, Some(list)) => list.names(),
            (None, None) => vec![DEFAULT_MODELS.to_owned()],
        };
        let trust = if args.server_cert_sha256.is_some() || args.tls_ca.is_some() {
            trust(args.server_cert_sha256, args.tls_ca)
        } else {
            trust(file.server_cert_sha256, file.tls_ca)
        };
        Ok(Self {
            proxy_urls: proxy_urls(args.proxy_url, file.proxy_url),
            resolve_relays: args.resolve_relays.or(file.resolve_relays).unwrap_or(false),
            worker_secret: (args.worker_secret.or(file.worker_secret))
                .ok_or(SettingsError::NoSecret)?,
            backend_url: (args.backend_url.or(file.backend_url))
                .unwrap_or_else(|| Url::parse(DEFAULT_BACKEND_URL).expect("a valid default")),
            models: model_source(models),
            provider: (args.provider.or(file.provider))
                .unwrap_or_else(|| DEFAULT_PROVIDER.to_owned()),
            worker_name: args.worker_name.or(file.worker_name),
            max_concurrency: (args.max_concurrency)
                .or(file.max_concurrency.map(|n| n.get()))
                .unwrap_or(DEFAULT_MAX_CONCURRENCY),
            models_poll_interval: (args.models_poll_interval.or(file.models_poll_interval))
                .unwrap_or(DEFAULT_MODELS_POLL_INTERVAL),
            protocol: args.protocol.or(file.protocol).unwrap_or_default(),
            trust,
            shutdown_timeout: (args.shutdown_timeout.or(file.shutdown_timeout))
                .unwrap_or(DEFAULT_SHUTDOWN_TIMEOUT),
            log_level: (args.log_level.or(file.log_level))
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        })
    }
}

/// The relays: the flags' (or the variable's), else the file's comma list,
/// else the default; blank items are left out.
fn proxy_urls(flags: Vec<String>, file: Option<String>) -> Vec<String> {
    let given = if flags.is_empty() {
        file.map(|list| list.split(',').map(str::to_owned).collect())
            .unwrap_or_default()
    } else {
        flags
    };
    let mut urls: Vec<String> = Vec::new();
    for url in given.into_iter().map(|url| url.trim().to_owned()) {
        // A relay named twice would get two links, and each its whole capacity.
        if !url.is_empty() && !urls.contains(&url) {
            urls.push(url);
        }
    }
    if urls.is_empty() {
        return vec![DEFAULT_PROXY_URL.to_owned()];
    }
    urls
}

/// The trust one layer asks for (at most one of the two, as clap and the file check).
fn trust(fingerprint: Option<String>, ca: Option<PathBuf>) -> TrustSetting {
    match (fingerprint, ca) {
        (Some(fingerprint), _) => TrustSetting::Pinned(fingerprint),
        (None, Some(ca)) => TrustSetting::CaFile(ca),
        (None, None) => TrustSetting::SystemRoots,
    }
}

/// The models to advertise: `*` anywhere in the list asks the backend (as
/// ModelRelay's worker does), so the worker never advertises `*`.
pub(crate) fn model_source(names: Vec<String>) -> ModelSource {
    if names.iter().any(|name| name == WILDCARD_MODEL) {
        ModelSource::Discover
    } else {
        ModelSource::List(names)
    }
}

#[cfg(test)]
mod tests {
    use std::num::NonZeroU32;

    use clap::CommandFactory;

    use super::*;
    use crate::config_file;

    /// The settings from these flags (and whatever the environment holds) over `file`.
    fn resolve(flags: &[&str], file: &str) -> Settings {
        let args =
            Args::try_parse_from(std::iter::once("modelrelay-worker").chain(flags.iter().copied()))
                .unwrap();
        let file = config_file::parse(file).unwrap().config;
        Settings::resolve(args, file).unwrap()
    }

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn flags_win_over_the_file_and_the_file_over_the_defaults() {
        let file = r#"
worker_secret = "from-file"
worker_name = "file-name"
models = ["file-model"]
max_concurrency = 3
proxy_url = "http://file-relay:1"
"#;
        let settings = resolve(
            &["--worker-name", "flag-name", "--models", "flag-a,flag-b"],
            file,
        );
        assert_eq!(settings.worker_name.as_deref(), Some("flag-name"));
        assert_eq!(
            settings.models,
            ModelSource::List(vec!["flag-a".into(), "flag-b".into()])
        );
        assert_eq!(settings.worker_secret, "from-file");
        assert_eq!(settings.max_concurrency, 3);
        assert_eq!(settings.proxy_urls, ["http://file-relay:1"]);
        let flagged = resolve(&["--max-concurrency", "5", "--worker-secret", "flag"], file);
        assert_eq!(flagged.max_concurrency, 5);
        assert_eq!(flagged.worker_secret, "flag");
    }

    #[test]
    fn what_nothing_gives_takes_modelrelays_defaults() {
        let settings = resolve(&[], "worker_secret = \"s\"");
        assert_eq!(settings.proxy_urls, [DEFAULT_PROXY_URL]);
        assert_eq!(settings.proxy_urls, ["http://127.0.0.1:8080"]);
        assert!(!settings.resolve_relays);
        assert_eq!(settings.backend_url.as_str(), "http://127.0.0.1:8000/");
        assert_eq!(settings.models, ModelSource::Discover);
        assert_eq!(settings.provider, DEFAULT_PROVIDER);
        assert_eq!(settings.worker_name, None);
        assert_eq!(settings.max_concurrency, 1);
        assert_eq!(settings.models_poll_interval, 60);
        assert_eq!(settings.protocol, ProtocolChoice::Auto);
        assert_eq!(settings.trust, TrustSetting::SystemRoots);
        assert_eq!(settings.shutdown_timeout, 30);
        assert_eq!(settings.log_level, "info");
        assert_eq!(settings.log_format, LogFormat::Text);
    }

    #[test]
    fn several_relays_come_as_a_comma_list_or_the_flag_repeated() {
        let secret = "worker_secret = \"s\"\n";
        let both = ["ws://a:1", "ws://b:2"];
        let comma = resolve(&["--proxy-url", "ws://a:1, ws://b:2,"], secret);
        let repeated = resolve(
            &["--proxy-url", "ws://a:1", "--proxy-url", "ws://b:2"],
            secret,
        );
        let file = resolve(&[], &format!("{secret}proxy_url = \"ws://a:1,ws://b:2\""));
        for settings in [comma, repeated, file] {
            assert_eq!(settings.proxy_urls, both);
        }
        let resolving = resolve(&["--resolve-relays"], secret);
        assert!(resolving.resolve_relays);
        for flag in [
            "--resolve-relays=1",
            "--resolve-relays=yes",
            "--resolve-relays=true",
        ] {
            assert!(resolve(&[flag], secret).resolve_relays, "{flag}");
        }
        assert!(!resolve(&["--resolve-relays=0"], secret).resolve_relays);
        let twice = resolve(&["--proxy-url", "ws://a:1,ws://a:1, ws://b:2"], secret);
        assert_eq!(twice.proxy_urls, both, "a relay named twice gets one link");
        let from_file = resolve(&[], &format!("{secret}resolve_relays = true"));
        assert!(from_file.resolve_relays);
    }

    #[test]
    fn models_come_as_an_array_or_a_comma_string_and_a_wildcard_asks_the_backend() {
        let secret = "worker_secret = \"s\"\n";
        let array = resolve(&[], &format!("{secret}models = [\"a\", \"b\"]"));
        let comma = resolve(&[], &format!("{secret}models = \"a, b\""));
        let flag = resolve(&["--models", " a ,b,"], secret);
        for settings in [array, comma, flag] {
            assert_eq!(
                settings.models,
                ModelSource::List(vec!["a".into(), "b".into()])
            );
        }
        for file in [
            "models = [\"*\"]",
            "models = \"a,*\"",
            "models = [\"a\", \" * \"]",
        ] {
            let settings = resolve(&[], &format!("{secret}{file}"));
            assert_eq!(settings.models, ModelSource::Discover, "{file}");
        }
        assert_eq!(
            resolve(&["--models", "a, *"], secret).models,
            ModelSource::Discover
        );
    }

    #[test]
    fn the_trust_comes_whole_from_the_strongest_layer_that_sets_it() {
        let file = "worker_secret = \"s\"\ntls_ca = \"/etc/ca.pem\"";
        assert_eq!(
            resolve(&[], file).trust,
            TrustSetting::CaFile("/etc/ca.pem".into())
        );
        assert_eq!(
            resolve(&["--server-cert-sha256", "AB"], file).trust,
            TrustSetting::Pinned("AB".into())
        );
    }

    #[test]
    fn no_secret_anywhere_is_an_error_that_says_where_to_give_one() {
        let args = Args::try_parse_from(["modelrelay-worker"]).unwrap();
        let file = FileConfig {
            max_concurrency: NonZeroU32::new(2),
            ..FileConfig::default()
        };
        let error = Settings::resolve(args, file).unwrap_err().to_string();
        assert!(
            error.contains("--worker-secret") && error.contains("worker_secret"),
            "{error}"
        );
    }
}

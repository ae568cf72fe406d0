//! The `--config FILE`: ModelRelay's worker `config.toml`, read as TOML.
//!
//! Its keys are the worker's flags' long names in snake_case. ModelRelay's
//! worker reads eight of them (`proxy_url`, `provider`, `worker_secret`,
//! `worker_name`, `models` as an array, `max_concurrency`, `backend_url`,
//! `log_level`), and its `/setup` page writes such a file for launchd; we read
//! those and our own flags' too. A value of the wrong kind stops the worker
//! with the file's path, line and column; a key we do not know is only
//! warned about (see [`UnknownKey`]).

use std::num::NonZeroU32;
use std::path::{Path, PathBuf};

use modelrelay_process::LogFormat;
use modelrelay_worker::link::ProtocolChoice;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use url::Url;

/// Every key the file may hold, as [`FileConfig`] names its fields.
pub(crate) const KNOWN_KEYS: [&str; 15] = [
    "proxy_url",
    "resolve_relays",
    "provider",
    "worker_secret",
    "worker_name",
    "models",
    "max_concurrency",
    "backend_url",
    "log_level",
    "models_poll_interval",
    "protocol",
    "server_cert_sha256",
    "tls_ca",
    "shutdown_timeout",
    "log_format",
];

/// What the file sets; every key is optional.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct FileConfig {
    /// One relay's URL, or several, comma-separated.
    pub(crate) proxy_url: Option<String>,
    pub(crate) resolve_relays: Option<bool>,
    pub(crate) provider: Option<String>,
    pub(crate) worker_secret: Option<String>,
    pub(crate) worker_name: Option<String>,
    pub(crate) models: Option<ModelList>,
    pub(crate) max_concurrency: Option<NonZeroU32>,
    #[serde(default, deserialize_with = "url")]
    pub(crate) backend_url: Option<Url>,
    pub(crate) log_level: Option<String>,
    pub(crate) models_poll_interval: Option<u64>,
    #[serde(default, deserialize_with = "value_enum")]
    pub(crate) protocol: Option<ProtocolChoice>,
    pub(crate) server_cert_sha256: Option<String>,
    pub(crate) tls_ca: Option<PathBuf>,
    pub(crate) shutdown_timeout: Option<u64>,
    #[serde(default, deserialize_with = "value_enum")]
    pub(crate) log_format: Option<LogFormat>,
}

/// `models`: an array of names (as ModelRelay writes it), or one string of
/// comma-separated names (as `MODELS` and `--models` take them).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(
    untagged,
    expecting = "an array of model names, or one string of comma-separated names"
)]
pub(crate) enum ModelList {
    /// `models = ["a", "b"]`.
    Names(Vec<String>),
    /// `models = "a,b"`.
    Comma(String),
}

impl ModelList {
    /// The names, trimmed, empty ones left out.
    pub(crate) fn names(self) -> Vec<String> {
        let names = match self {
            Self::Names(names) => names,
            Self::Comma(list) => list.split(',').map(str::to_owned).collect(),
        };
        names
            .into_iter()
            .map(|name| name.trim().to_owned())
            .filter(|name| !name.is_empty())
            .collect()
    }
}

/// A key the worker does not know. It is ignored with a warning rather than
/// refused: ModelRelay's worker ignored unknown keys silently, so a file that
/// worked there keeps working here, and the warning still points at a typo.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnknownKey {
    /// The key as written.
    pub(crate) key: String,
    /// Its line in the file, from 1.
    pub(crate) line: usize,
}

/// A file read and checked.
#[derive(Debug, Default)]
pub(crate) struct Loaded {
    /// What it sets.
    pub(crate) config: FileConfig,
    /// The keys it holds that the worker does not know, in file order.
    pub(crate) unknown: Vec<UnknownKey>,
}

/// Why the file cannot be used; each says which file, and its source what went wrong.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigFileError {
    /// It cannot be read.
    #[error("cannot read the config file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// It is not TOML, or a value is not of its key's kind (the TOML error
    /// gives the line, the column and the line itself).
    #[error("the config file {} is not valid", path.display())]
    Invalid {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// It trusts the relay two ways at once.
    #[error("the config file {} sets both server_cert_sha256 and tls_ca; keep one", path.display())]
    TwoTrusts { path: PathBuf },
}

/// Reads and checks the file at `path`. A relative `tls_ca` in it is taken
/// from the file's folder, where its author would look for it.
pub(crate) fn load(path: &Path) -> Result<Loaded, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    let mut loaded = parse(&text).map_err(|source| ConfigFileError::Invalid {
        path: path.to_owned(),
        source: Box::new(source),
    })?;
    let config = &mut loaded.config;
    if config.server_cert_sha256.is_some() && config.tls_ca.is_some() {
        return Err(ConfigFileError::TwoTrusts {
            path: path.to_owned(),
        });
    }
    if let (Some(ca), Some(folder)) = (&mut config.tls_ca, path.parent())
        && ca.is_relative()
    {
        *ca = folder.join(&*ca);
    }
    Ok(loaded)
}

/// The settings in `text`, and the keys in it the worker does not know.
pub(crate) fn parse(text: &str) -> Result<Loaded, toml::de::Error> {
    let table = toml::de::DeTable::parse(text)?;
    let mut unknown: Vec<UnknownKey> = table
        .get_ref()
        .keys()
        .filter(|key| !KNOWN_KEYS.contains(&key.get_ref().as_ref()))
        .map(|key| UnknownKey {
            key: key.get_ref().to_string(),
            line: line_of(text, key.span().start),
        })
        .collect();
    unknown.sort_by_key(|key| key.line);
    let config = toml::from_str(text)?;
    Ok(Loaded { config, unknown })
}

/// The line (from 1) of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let before = text.get(..offset).unwrap_or(text);
    before.bytes().filter(|byte| *byte == b'\n').count() + 1
}

/// A URL value.
fn url<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Url>, D::Error> {
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    Url::parse(&text)
        .map(Some)
        .map_err(|error| D::Error::custom(format!("`{text}` is not a URL: {error}")))
}

/// One of a flag's words (`auto`, `json`, …), as the flag takes it.
fn value_enum<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: clap::ValueEnum,
{
    let Some(text) = Option::<String>::deserialize(deserializer)? else {
        return Ok(None);
    };
    T::from_str(&text, true).map(Some).map_err(|_| {
        let words: Vec<String> = T::value_variants()
            .iter()
            .filter_map(clap::ValueEnum::to_possible_value)
            .filter(|value| !value.is_hide_set())
            .map(|value| value.get_name().to_owned())
            .collect();
        D::Error::custom(format!("`{text}` is not one of {}", words.join(", ")))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error and its sources, as the worker prints them.
    fn chain(error: &dyn std::error::Error) -> String {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(error) = source {
            text = format!("{text}: {error}");
            source = error.source();
        }
        text
    }

    fn parsed(text: &str) -> Loaded {
        parse(text).unwrap_or_else(|error| panic!("{error}"))
    }

    #[test]
    fn modelrelays_own_config_file_is_read_whole() {
        // As ModelRelay's /setup page writes it, plus the keys its worker reads.
        let loaded = parsed(
            r#"
proxy_url = "https://relay.example"
worker_secret = "s3cret"
worker_name = "rtx4090-desktop"
backend_url = "http://localhost:1234"
models = ["llama3.2:3b", "qwen"]
provider = "team"
max_concurrency = 4
log_level = "debug"
"#,
        );
        let config = loaded.config;
        assert!(loaded.unknown.is_empty(), "{:?}", loaded.unknown);
        assert_eq!(config.proxy_url.as_deref(), Some("https://relay.example"));
        assert_eq!(config.worker_secret.as_deref(), Some("s3cret"));
        assert_eq!(config.worker_name.as_deref(), Some("rtx4090-desktop"));
        assert_eq!(
            config.backend_url.map(String::from).as_deref(),
            Some("http://localhost:1234/")
        );
        assert_eq!(
            config.models.map(ModelList::names),
            Some(vec!["llama3.2:3b".to_owned(), "qwen".to_owned()])
        );
        assert_eq!(config.provider.as_deref(), Some("team"));
        assert_eq!(config.max_concurrency.map(NonZeroU32::get), Some(4));
        assert_eq!(config.log_level.as_deref(), Some("debug"));
    }

    #[test]
    fn models_are_an_array_or_a_comma_separated_string() {
        let array = parsed(r#"models = [" a ", "b", ""]"#).config.models;
        let comma = parsed(r#"models = " a, b ,,""#).config.models;
        for models in [array, comma] {
            assert_eq!(
                models.map(ModelList::names),
                Some(vec!["a".into(), "b".into()])
            );
        }
        let wildcard = parsed(r#"models = ["*"]"#).config.models;
        assert_eq!(wildcard.map(ModelList::names), Some(vec!["*".into()]));
        let error = parse("models = 3").unwrap_err().to_string();
        assert!(error.contains("an array of model names"), "{error}");
    }

    #[test]
    fn every_key_of_every_flag_is_read() {
        let loaded = parsed(
            r#"
proxy_url = "quic://relay:8443"
provider = "p"
worker_secret = "s"
worker_name = "n"
models = "m"
max_concurrency = 2
backend_url = "http://b:1"
log_level = "warn"
models_poll_interval = 0
protocol = "v1"
server_cert_sha256 = "AB"
tls_ca = "/etc/ca.pem"
shutdown_timeout = 5
log_format = "json"
resolve_relays = true
"#,
        );
        assert!(loaded.unknown.is_empty(), "{:?}", loaded.unknown);
        let config = loaded.config;
        assert_eq!(config.models_poll_interval, Some(0));
        assert_eq!(config.protocol, Some(ProtocolChoice::V1));
        assert_eq!(config.server_cert_sha256.as_deref(), Some("AB"));
        assert_eq!(config.tls_ca, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(config.shutdown_timeout, Some(5));
        assert_eq!(config.log_format, Some(LogFormat::Json));
        assert_eq!(config.resolve_relays, Some(true));
        assert_eq!(KNOWN_KEYS.len(), 15, "a key was added: test it here");
    }

    #[test]
    fn the_shipped_example_file_names_every_key_and_only_known_ones() {
        // extras/env/worker.toml.example, which the launchd agent and the
        // Windows service use, with its commented-out settings switched on.
        let example = include_str!("../../../../extras/env/worker.toml.example");
        let settings = example.lines().map(|line| {
            let setting = line.strip_prefix('#').unwrap_or(line);
            let is_setting = setting.split_once(" = ").is_some_and(|(key, _)| {
                !key.is_empty()
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
            });
            if is_setting { setting } else { line }
        });
        let uncommented: String = settings.map(|line| format!("{line}\n")).collect();
        let loaded = parsed(&uncommented);
        assert!(loaded.unknown.is_empty(), "{:?}", loaded.unknown);
        let left_out: Vec<&str> = KNOWN_KEYS
            .into_iter()
            .filter(|key| !uncommented.contains(&format!("\n{key} = ")))
            .collect();
        assert!(left_out.is_empty(), "the example leaves out {left_out:?}");
        let config = loaded.config;
        assert_eq!(
            config.worker_secret.as_deref(),
            Some("the-relays-worker-secret")
        );
        assert_eq!(config.models.map(ModelList::names), Some(vec!["*".into()]));
    }

    #[test]
    fn unknown_keys_are_named_with_their_lines_and_the_rest_is_read() {
        let loaded = parsed("worker_secret = \"s\"\nmax_concurrent = 4\n\n[extra]\nx = 1\n");
        assert_eq!(
            loaded.unknown,
            [
                UnknownKey {
                    key: "max_concurrent".into(),
                    line: 2
                },
                UnknownKey {
                    key: "extra".into(),
                    line: 4
                },
            ]
        );
        assert_eq!(loaded.config.worker_secret.as_deref(), Some("s"));
        assert_eq!(loaded.config.max_concurrency, None);
    }

    #[test]
    fn a_bad_file_is_refused_with_its_path_and_line() {
        let folder = std::env::temp_dir().join(format!("worker-config-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let cases = [
            (
                "syntax.toml",
                "proxy_url = \"http://r\"\nmodels = [\"a\"\n",
                "line 2",
            ),
            (
                "kind.toml",
                "worker_secret = \"s\"\nmax_concurrency = \"four\"\n",
                "line 2",
            ),
            ("zero.toml", "\n\nmax_concurrency = 0\n", "line 3"),
            ("url.toml", "backend_url = \"not a url\"\n", "line 1"),
            ("word.toml", "log_format = \"yaml\"\n", "text, json"),
        ];
        for (name, text, expected) in cases {
            let path = folder.join(name);
            std::fs::write(&path, text).unwrap();
            let error = chain(&load(&path).unwrap_err());
            assert!(error.contains(&path.display().to_string()), "{error}");
            assert!(error.contains(expected), "{name}: {error}");
        }
        let missing = folder.join("missing.toml");
        let error = chain(&load(&missing).unwrap_err());
        assert!(error.contains("cannot read the config file"), "{error}");
        assert!(error.contains("No such file"), "{error}");
        assert!(error.contains(&missing.display().to_string()), "{error}");
        std::fs::remove_dir_all(&folder).unwrap();
    }

    #[test]
    fn a_relative_ca_is_found_beside_the_file() {
        let folder = std::env::temp_dir().join(format!("worker-config-ca-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("config.toml");
        std::fs::write(&path, "tls_ca = \"ca.pem\"\n").unwrap();
        assert_eq!(
            load(&path).unwrap().config.tls_ca,
            Some(folder.join("ca.pem"))
        );
        std::fs::write(&path, "tls_ca = \"ca.pem\"\nserver_cert_sha256 = \"AB\"\n").unwrap();
        let error = load(&path).unwrap_err().to_string();
        assert!(error.contains("keep one"), "{error}");
        std::fs::remove_dir_all(&folder).unwrap();
    }
}

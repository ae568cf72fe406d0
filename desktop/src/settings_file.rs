//! The app's settings: a TOML file in the platform's config directory (mode
//! 600 on unix), the worker secret beside it in the keyring (see [`crate::secret`]).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The settings file's name inside the config directory.
pub(crate) const FILE_NAME: &str = "settings.toml";

/// The folder under the platform's config directory (`~/.config` on Linux).
const APP_DIR: &str = "modelrelay-desktop";

/// Default seconds between two reads of the backend's model list.
pub(crate) const DEFAULT_POLL_SECS: u64 = 60;

/// What the user set in the settings window.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub(crate) struct Settings {
    /// The model server's base URL (`http://127.0.0.1:8000`).
    pub(crate) backend_url: String,
    /// The relay's URL (http, https, ws, wss or quic).
    pub(crate) relay_url: String,
    /// `*` (whatever the backend lists) or a comma list of model names.
    pub(crate) models: String,
    /// Seconds between reads of the backend's models with `*` (0: never).
    pub(crate) models_poll_interval: u64,
    /// The name the relay shows (empty: this computer's name).
    pub(crate) worker_name: String,
    /// Start the app when the user logs in.
    pub(crate) start_on_login: bool,
    /// The worker secret, only where no keyring could take it (the file is mode 600).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) worker_secret: Option<String>,
}

impl Settings {
    /// Fresh settings with the defaults a first start shows.
    pub(crate) fn initial() -> Self {
        Self {
            backend_url: "http://127.0.0.1:8000".into(),
            relay_url: String::new(),
            models: "*".into(),
            models_poll_interval: DEFAULT_POLL_SECS,
            ..Self::default()
        }
    }

    /// Whether enough is set to connect.
    pub(crate) fn is_configured(&self) -> bool {
        !self.relay_url.trim().is_empty() && !self.backend_url.trim().is_empty()
    }

    /// The model list: `None` for `*` (discover), else the names.
    pub(crate) fn model_list(&self) -> Option<Vec<String>> {
        let text = self.models.trim();
        if text.is_empty() || text == "*" {
            return None;
        }
        Some(
            text.split(',')
                .map(str::trim)
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect(),
        )
    }
}

/// Why the settings could not be read or written.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SettingsError {
    /// The file exists but cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// The file is not valid TOML for these settings.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: toml::de::Error,
    },
    /// The settings could not be written as TOML.
    #[error("cannot write the settings: {0}")]
    Serialize(#[from] toml::ser::Error),
}

/// The platform's config directory for the app (`--config-dir` overrides it).
pub(crate) fn default_dir() -> PathBuf {
    directories::BaseDirs::new()
        .map(|dirs| dirs.config_dir().join(APP_DIR))
        .unwrap_or_else(|| PathBuf::from(".").join(APP_DIR))
}

/// Reads the settings from `dir`; `None` when there is no file yet.
pub(crate) fn load(dir: &Path) -> Result<Option<Settings>, SettingsError> {
    let path = dir.join(FILE_NAME);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(SettingsError::Io { path, source }),
    };
    toml::from_str(&text)
        .map(Some)
        .map_err(|source| SettingsError::Parse { path, source })
}

/// Writes the settings to `dir` (created if need be), readable by the user alone.
pub(crate) fn save(dir: &Path, settings: &Settings) -> Result<(), SettingsError> {
    let path = dir.join(FILE_NAME);
    let io = |source| SettingsError::Io {
        path: path.clone(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let text = toml::to_string(settings)?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(&path).map_err(io)?;
    // An older file keeps its mode through open: set it again.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io)?;
    }
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_round_trip_through_a_file_only_the_user_reads() {
        let dir = std::env::temp_dir().join(format!("mr-desktop-settings-{}", std::process::id()));
        let mut settings = Settings::initial();
        settings.relay_url = "ws://relay.example:8080".into();
        settings.worker_secret = Some("s3cret".into());
        save(&dir, &settings).unwrap();
        assert_eq!(load(&dir).unwrap(), Some(settings));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(FILE_NAME))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_star_discovers_models_and_a_list_is_split_on_commas() {
        let mut settings = Settings::initial();
        assert_eq!(settings.model_list(), None);
        settings.models = " llama3 , qwen ,".into();
        assert_eq!(
            settings.model_list(),
            Some(vec!["llama3".into(), "qwen".into()])
        );
    }
}

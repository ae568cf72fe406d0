//! The worker secret: in the platform's keyring (Secret Service on Linux, the
//! Keychain on macOS, the Credential Manager on Windows) where there is one;
//! where there is none (no Secret Service on the session bus), in the settings
//! file, which only the user can read (mode 600).

use crate::settings_file::Settings;

/// The keyring entry's service name.
const SERVICE: &str = "modelrelay-desktop";
/// The keyring entry's user name.
const USER: &str = "worker-secret";

/// Where the secret ended up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Stored {
    /// In the platform's keyring.
    Keyring,
    /// In the settings file, for want of a keyring.
    File,
}

/// The secret for `settings`: the file's when it holds one (the fallback),
/// else the keyring's; empty when neither has one. Blocks on the keyring.
pub(crate) fn read(settings: &Settings) -> String {
    if let Some(secret) = &settings.worker_secret {
        return secret.clone();
    }
    match keyring::Entry::new(SERVICE, USER).and_then(|entry| entry.get_password()) {
        Ok(secret) => secret,
        Err(error) => {
            tracing::warn!(%error, "no worker secret in the keyring");
            String::new()
        }
    }
}

/// Puts `secret` in the keyring, or where there is none in `settings` (to be
/// saved to the file); says which.
pub(crate) fn store(settings: &mut Settings, secret: &str) -> Stored {
    match keyring::Entry::new(SERVICE, USER).and_then(|entry| entry.set_password(secret)) {
        Ok(()) => {
            settings.worker_secret = None;
            Stored::Keyring
        }
        Err(error) => {
            tracing::warn!(%error, "no keyring: the worker secret goes in the settings file (mode 600)");
            settings.worker_secret = Some(secret.to_owned());
            Stored::File
        }
    }
}

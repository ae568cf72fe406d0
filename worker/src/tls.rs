//! TLS client settings shared by the relay link (`wss://`) and HTTPS backends.

use std::sync::Arc;

use rustls::ClientConfig;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// No usable root certificate was found on the system.
    #[error("no system root certificates could be loaded: {0}")]
    NoRoots(String),
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A client configuration trusting the system's root certificates, with the ring provider.
pub fn system_roots_config() -> Result<Arc<ClientConfig>, TlsSetupError> {
    let mut roots = rustls::RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for cert in loaded.certs {
        // A single unparsable system certificate should not disable TLS.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        let errors: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        return Err(TlsSetupError::NoRoots(errors.join("; ")));
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    Ok(Arc::new(config))
}

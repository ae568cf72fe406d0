//! TLS for worker links (QUIC, and `wss://`): the relay's certificate, and what a worker trusts.
//!
//! A relay uses the PEM certificate and key it is given, or generates a
//! self-signed certificate once and keeps it in its data directory, so the
//! fingerprint it prints stays the same across restarts. A worker trusts the
//! system's roots, a CA file, or exactly one certificate named by its SHA-256
//! fingerprint (the way to trust a self-signed relay).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ring::digest::{SHA256, digest};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, DigitallySignedStruct, InconsistentKeys, OtherError, SignatureScheme,
};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or written.
    #[error("{path}: {source}")]
    File {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// The private key is not the one of the certificate.
    #[error("{key} does not hold the private key of the certificate in {cert}")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The certificate and key were read but cannot be used together.
    #[error("{cert} with {key}: {source}")]
    Unusable {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls found wrong (boxed: with two paths beside it the error
        /// outgrew clippy's `result_large_err` on Windows, where paths are larger).
        #[source]
        source: Box<rustls::Error>,
    },
    /// A PEM file holds no certificate or no key.
    #[error("{0}: no {1} found in the PEM file")]
    Missing(PathBuf, &'static str),
    /// A certificate could not be generated.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the settings.
    #[error("TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
    /// A fingerprint that is not 32 bytes of hex.
    #[error(
        "invalid SHA-256 fingerprint {0:?}: expected 64 hex digits (colons allowed), \
         alone or as `openssl x509 -noout -fingerprint -sha256` prints them"
    )]
    BadFingerprint(String),
    /// No system root certificates could be loaded.
    #[error("no system root certificates could be loaded")]
    NoRoots,
    /// Only one of the stored certificate and key is there.
    #[error(
        "{dir}: found only one of quic-cert.pem and quic-key.pem; restore the other, or \
         remove both to make a new certificate (workers pinning the old fingerprint then \
         need the new one)"
    )]
    HalfAnIdentity {
        /// The data directory.
        dir: PathBuf,
    },
}

/// The SHA-256 fingerprint of a certificate, as `AB:CD:…` (the form `openssl x509 -fingerprint` prints).
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    digest(&SHA256, cert.as_ref())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// What `openssl x509 -noout -fingerprint -sha256` prints before the digits:
/// `sha256 Fingerprint=` (OpenSSL 3) or `SHA256 Fingerprint=` (older, LibreSSL).
const OPENSSL_LABEL: &str = "sha256 fingerprint";

/// Reads a fingerprint written with or without colons, in either case, alone
/// or as `openssl x509 -noout -fingerprint -sha256` prints it (label and all).
pub fn parse_fingerprint(text: &str) -> Result<[u8; 32], TlsError> {
    let bad = || TlsError::BadFingerprint(text.to_owned());
    let digits = match text.split_once('=') {
        None => text,
        Some((label, digits)) => {
            let label = label.split_whitespace().collect::<Vec<_>>().join(" ");
            if !label.eq_ignore_ascii_case(OPENSSL_LABEL) {
                return Err(bad());
            }
            digits
        }
    };
    let hex: String = digits
        .chars()
        .filter(|c| *c != ':' && !c.is_whitespace())
        .collect();
    if hex.len() != 64 {
        return Err(bad());
    }
    let mut bytes = [0u8; 32];
    for (i, byte) in bytes.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16)
            .map_err(|_| bad())?;
    }
    Ok(bytes)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The relay's certificate chain and key.
pub struct RelayIdentity {
    /// Certificate chain, leaf first.
    pub certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// Whether it was generated (rather than given).
    pub generated: bool,
}

impl fmt::Debug for RelayIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayIdentity")
            .field("fingerprint", &self.fingerprint())
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::File {
        path: path.to_owned(),
        source,
    })
}

fn pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<_, _>>()
        .map_err(|source| TlsError::File {
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Missing(path.to_owned(), "certificate"));
    }
    Ok(certs)
}

fn pem_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|source| TlsError::File {
            path: path.to_owned(),
            source,
        })?
        .ok_or_else(|| TlsError::Missing(path.to_owned(), "private key"))
}

impl RelayIdentity {
    /// The certificate and key in these PEM files, checked to go together
    /// (the error names both files).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let certs = pem_certs(cert)?;
        let private_key = pem_key(key)?;
        CertifiedKey::from_der(certs.clone(), private_key.clone_key(), &provider()).map_err(
            |error| match error {
                rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch) => {
                    TlsError::KeyMismatch {
                        cert: cert.to_owned(),
                        key: key.to_owned(),
                    }
                }
                source => TlsError::Unusable {
                    cert: cert.to_owned(),
                    key: key.to_owned(),
                    source: Box::new(source),
                },
            },
        )?;
        Ok(Self {
            certs,
            key: private_key,
            generated: false,
        })
    }

    /// The self-signed certificate kept in `dir`, generated (for `names`) the first time.
    pub fn self_signed_in(dir: &Path, names: &[String]) -> Result<Self, TlsError> {
        let cert_path = dir.join("quic-cert.pem");
        let key_path = dir.join("quic-key.pem");
        match (cert_path.exists(), key_path.exists()) {
            (true, true) => {
                return Self::from_pem_files(&cert_path, &key_path).map(|identity| Self {
                    generated: true,
                    ..identity
                });
            }
            (false, false) => {}
            _ => {
                return Err(TlsError::HalfAnIdentity {
                    dir: dir.to_owned(),
                });
            }
        }
        let generated = rcgen::generate_simple_self_signed(names.to_vec())?;
        let file_error = |path: &Path| {
            let path = path.to_owned();
            move |source| TlsError::File { path, source }
        };
        create_private_dir(dir).map_err(file_error(dir))?;
        // Each file is written whole under a temporary name, the key readable by its
        // owner only from the start, then renamed into place.
        let key_tmp = dir.join("quic-key.pem.tmp");
        let cert_tmp = dir.join("quic-cert.pem.tmp");
        write_new(&key_tmp, &generated.signing_key.serialize_pem(), 0o600)
            .map_err(file_error(&key_tmp))?;
        write_new(&cert_tmp, &generated.cert.pem(), 0o644).map_err(file_error(&cert_tmp))?;
        std::fs::rename(&key_tmp, &key_path).map_err(file_error(&key_path))?;
        std::fs::rename(&cert_tmp, &cert_path).map_err(file_error(&cert_path))?;
        Self::from_pem_files(&cert_path, &key_path).map(|identity| Self {
            generated: true,
            ..identity
        })
    }

    /// A certificate and its PKCS#8 private key, both DER-encoded.
    pub fn from_der(cert: Vec<u8>, pkcs8_key: Vec<u8>) -> Self {
        Self {
            certs: vec![CertificateDer::from(cert)],
            key: PrivateKeyDer::Pkcs8(pkcs8_key.into()),
            generated: false,
        }
    }

    /// The leaf certificate's SHA-256 fingerprint.
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.certs[0])
    }

    /// A secret for `purpose` that stays the same as long as the private key does.
    pub fn derived_secret(&self, purpose: &[u8]) -> [u8; 32] {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, self.key.secret_der());
        let tag = ring::hmac::sign(&key, purpose);
        let mut secret = [0u8; 32];
        secret.copy_from_slice(tag.as_ref());
        secret
    }

    /// rustls server settings with this identity, TLS 1.3 only (as QUIC needs).
    pub fn rustls_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(self.certs.clone(), self.key.clone_key())?)
    }
}

/// What a worker trusts in the relay's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Certificates signed by the system's root authorities.
    SystemRoots,
    /// Certificates signed by the authorities in this PEM file.
    CaFile(PathBuf),
    /// Certificates signed by these authorities (none: trust nothing).
    Roots(Vec<CertificateDer<'static>>),
    /// Exactly the certificate with this SHA-256 fingerprint (self-signed relays).
    Pinned([u8; 32]),
    /// Exactly the certificates with these SHA-256 fingerprints (several
    /// self-signed relays, each with its own certificate).
    PinnedAny(Vec<[u8; 32]>),
}

/// rustls client settings for `trust` (also used for `wss://` links).
pub fn client_tls(trust: &Trust) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let config = match trust {
        Trust::Pinned(fingerprint) => pinned(builder, vec![*fingerprint]),
        Trust::PinnedAny(fingerprints) => pinned(builder, fingerprints.clone()),
        Trust::CaFile(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in pem_certs(path)? {
                roots.add(cert)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::Roots(certs) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs {
                roots.add(cert.clone())?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        Trust::SystemRoots => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(TlsError::NoRoots);
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(config)
}

/// Client settings that trust exactly the certificates with `fingerprints`.
fn pinned(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::WantsVerifier>,
    fingerprints: Vec<[u8; 32]>,
) -> rustls::ClientConfig {
    builder
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCertificate {
            fingerprints,
            provider: provider(),
        }))
        .with_no_client_auth()
}

/// Creates `dir` (and its parents) if missing; a new `dir` is private to its owner.
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// Writes `text` to a fresh file at `path` with permissions `mode` (on Unix) from the start.
fn write_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    // A leftover from an interrupted start would keep its old permissions.
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let mut file = options.open(path)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Trusts the certificates named by fingerprint; signatures are still checked.
#[derive(Debug)]
struct PinnedCertificate {
    fingerprints: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
}

/// The relay presented a certificate other than the pinned one.
#[derive(Debug, thiserror::Error)]
#[error("the relay's certificate has fingerprint {actual}, not the pinned {expected}")]
struct FingerprintMismatch {
    actual: String,
    expected: String,
}

impl ServerCertVerifier for PinnedCertificate {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let presented = digest(&SHA256, end_entity.as_ref());
        if self
            .fingerprints
            .iter()
            .any(|pinned| presented.as_ref() == pinned)
        {
            return Ok(ServerCertVerified::assertion());
        }
        let expected = self
            .fingerprints
            .iter()
            .map(|pinned| {
                let hex: Vec<String> = pinned.iter().map(|b| format!("{b:02X}")).collect();
                hex.join(":")
            })
            .collect::<Vec<_>>()
            .join(" or ");
        Err(rustls::Error::InvalidCertificate(CertificateError::Other(
            OtherError(Arc::new(FingerprintMismatch {
                actual: fingerprint(end_entity),
                expected,
            })),
        )))
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_read_with_or_without_colons() {
        let text = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89";
        let bytes = parse_fingerprint(text).unwrap();
        assert_eq!(bytes[0], 0xab);
        assert_eq!(
            parse_fingerprint(&text.replace(':', "").to_lowercase()).unwrap(),
            bytes
        );
        assert!(parse_fingerprint("AB:CD").is_err());
        assert!(parse_fingerprint(&"zz".repeat(32)).is_err());
    }

    #[test]
    fn fingerprints_read_as_openssl_prints_them() {
        let digits = "72:3F:C8:9A:30:61:C3:F1:C2:DA:97:59:65:93:5A:72:EF:70:9E:0F:6D:3B:73:B8:D3:A6:70:EF:CE:31:D7:95";
        let bytes = parse_fingerprint(digits).unwrap();
        for text in [
            // OpenSSL 3, then OpenSSL 1.1 and LibreSSL.
            format!("sha256 Fingerprint={digits}"),
            format!("SHA256 Fingerprint={digits}"),
            // Pasted with the line's end, or without colons in lower case.
            format!("  sha256 Fingerprint={digits}\n"),
            format!(
                "SHA256  fingerprint = {}",
                digits.replace(':', "").to_lowercase()
            ),
        ] {
            assert_eq!(parse_fingerprint(&text).unwrap(), bytes, "{text:?}");
        }
        // Another digest's label, or digits of another length, are refused.
        let sha1 = "SHA1 Fingerprint=72:3F:C8:9A:30:61:C3:F1:C2:DA:97:59:65:93:5A:72:EF:70:9E:0F";
        assert!(parse_fingerprint(sha1).is_err());
        assert!(parse_fingerprint(&format!("sha1 Fingerprint={digits}")).is_err());
        assert!(parse_fingerprint(&format!("Fingerprint={digits}")).is_err());
        assert!(parse_fingerprint(&format!("sha256 Fingerprint={digits}=")).is_err());
        let error = parse_fingerprint(sha1).unwrap_err().to_string();
        assert!(
            error.contains("openssl x509 -noout -fingerprint -sha256"),
            "{error}"
        );
    }

    #[test]
    fn a_generated_certificate_is_kept_and_reused() {
        let dir = std::env::temp_dir().join(format!("modelrelay-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let names = vec!["localhost".to_owned()];
        let first = RelayIdentity::self_signed_in(&dir, &names).unwrap();
        let second = RelayIdentity::self_signed_in(&dir, &names).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        assert_eq!(first.fingerprint().len(), 32 * 3 - 1);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&dir.join("quic-key.pem")), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
        // With the key gone, it refuses rather than quietly changing its fingerprint.
        std::fs::remove_file(dir.join("quic-key.pem")).unwrap();
        let error = RelayIdentity::self_signed_in(&dir, &names).unwrap_err();
        assert!(matches!(error, TlsError::HalfAnIdentity { .. }), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_key_that_is_not_the_certificates_is_refused_naming_both_files() {
        let root = std::env::temp_dir().join(format!("modelrelay-tls-pair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let names = vec!["localhost".to_owned()];
        let (a, b) = (root.join("a"), root.join("b"));
        RelayIdentity::self_signed_in(&a, &names).unwrap();
        RelayIdentity::self_signed_in(&b, &names).unwrap();
        let cert = a.join("quic-cert.pem");
        assert!(RelayIdentity::from_pem_files(&cert, &a.join("quic-key.pem")).is_ok());
        let wrong_key = b.join("quic-key.pem");
        let error = RelayIdentity::from_pem_files(&cert, &wrong_key).unwrap_err();
        assert!(matches!(error, TlsError::KeyMismatch { .. }), "{error:?}");
        let text = error.to_string();
        for named in [&cert, &wrong_key] {
            assert!(text.contains(&named.display().to_string()), "{text}");
        }
        // The stored pair of a data directory is checked the same way.
        std::fs::copy(&wrong_key, a.join("quic-key.pem")).unwrap();
        let stored = RelayIdentity::self_signed_in(&a, &names).unwrap_err();
        assert!(matches!(stored, TlsError::KeyMismatch { .. }), "{stored:?}");
        let _ = std::fs::remove_dir_all(&root);
    }
}

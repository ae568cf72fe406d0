//! API-key stores for relays that require keys.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use modelrelay_relay::keys::{KeyStore, KeyStoreLocation};

/// Numbers the stores' folders within one test binary.
static DIRS: AtomicU64 = AtomicU64::new(0);

/// An empty SQLite key store of its own in the test target folder.
pub async fn sqlite_keys() -> Arc<KeyStore> {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "keys-{}-{}",
        std::process::id(),
        DIRS.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    Arc::new(
        KeyStore::open(&KeyStoreLocation::Sqlite(dir))
            .await
            .unwrap(),
    )
}

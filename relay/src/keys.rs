//! Client API keys: created, listed and revoked through the admin API, checked on
//! every client request, kept in an embedded SQLite file or in PostgreSQL.
//!
//! A key is shown once, when it is made; the database holds only its SHA-256
//! digest (keys are 256 random bits, so a plain digest cannot be searched back),
//! its display prefix, a name and two times. Every check reads the database, so a
//! revocation holds at once, on every relay instance sharing it.
//!
//! A database that also holds ModelRelay's key table (`server_api_keys`) has
//! those keys (`mr_live_…`) checked, listed and revoked in place ([`modelrelay`]).
//!
//! The same database holds the relays sharing it (`relays`) and what each key
//! used, per day (`usage`).

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};
use serde::Serialize;
use sqlx::Row as _;
use sqlx::postgres::PgPool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use tracing::warn;

/// What every key starts with, so clients and secret scanners can tell it apart.
pub const KEY_PREFIX: &str = "mr-";

/// Characters of a key shown in listings (`mr-` and 8 more).
const SHOWN_CHARS: usize = KEY_PREFIX.len() + 8;

/// Random bytes in a key.
const KEY_BYTES: usize = 32;

/// Longest key name.
pub const MAX_NAME_CHARS: usize = 100;

/// How often one key's last-used time is written, at most.
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// How long a key-shaped key the database did not know is answered from memory.
///
/// Only misses are remembered, by digest: a revoked key is never served from
/// memory (revocation holds at once), and a key created after a miss has a
/// digest nobody can have presented before, short of guessing 256 random bits.
const MISS_TTL: Duration = Duration::from_secs(30);

/// Misses remembered at most; past it, new misses go to the database each time.
const MAX_MISSES: usize = 4096;

/// The SQLite file inside the data folder.
const SQLITE_FILE: &str = "modelrelay.sqlite3";

/// The id of a stored key: a number for the relay's own, a UUID for ModelRelay's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ApiKeyId {
    /// A key this relay made, in its `api_keys` table.
    Relay(i64),
    /// A key a ModelRelay server made, in its `server_api_keys` table.
    ModelRelay(ModelRelayKeyId),
}

impl ApiKeyId {
    /// Wraps a number from the database (one of the relay's own keys).
    pub fn new(id: i64) -> Self {
        Self::Relay(id)
    }

    /// Reads an id as the admin API lists it: a number, or a UUID; `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        match text.parse::<i64>() {
            Ok(id) => Some(Self::Relay(id)),
            Err(_) => ModelRelayKeyId::parse(text).map(Self::ModelRelay),
        }
    }
}

impl fmt::Display for ApiKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Relay(id) => id.fmt(f),
            Self::ModelRelay(id) => id.fmt(f),
        }
    }
}

impl Serialize for ApiKeyId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Relay(id) => serializer.serialize_i64(*id),
            Self::ModelRelay(id) => serializer.collect_str(id),
        }
    }
}

/// A stored key as listed: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiKeyRecord {
    /// Its id.
    pub id: ApiKeyId,
    /// The name given at creation.
    pub name: String,
    /// The first characters of the key, to recognize it.
    pub prefix: String,
    /// When it was made.
    pub created_at: SystemTime,
    /// When a request last used it (written at most once a minute).
    pub last_used_at: Option<SystemTime>,
}

/// A key just made: the only time the key itself is known.
#[derive(Clone, PartialEq, Eq)]
pub struct CreatedKey {
    /// What listings will show of it.
    pub record: ApiKeyRecord,
    /// The key, to hand to the client.
    pub key: String,
}

impl fmt::Debug for CreatedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CreatedKey")
            .field("record", &self.record)
            .field("key", &"<redacted>")
            .finish()
    }
}

/// Where keys are kept.
#[derive(Clone, PartialEq, Eq)]
pub enum KeyStoreLocation {
    /// An SQLite file in this folder (made if missing).
    Sqlite(PathBuf),
    /// An SQLite file by `sqlite:` URL (made if missing).
    SqliteUrl(String),
    /// A PostgreSQL database, by `postgres://` URL.
    Postgres(String),
}

impl KeyStoreLocation {
    /// The SQLite file in `data_dir`, or the database at `database_url` when given.
    pub fn from_settings(
        data_dir: &Path,
        database_url: Option<&str>,
    ) -> Result<Self, KeyStoreError> {
        match database_url {
            None => Ok(Self::Sqlite(data_dir.to_owned())),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            Some(url) if url.starts_with("sqlite:") => Ok(Self::SqliteUrl(url.to_owned())),
            Some(_) => Err(KeyStoreError::UnsupportedUrl),
        }
    }
}

impl fmt::Debug for KeyStoreLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sqlite(dir) => write!(f, "Sqlite({})", dir.join(SQLITE_FILE).display()),
            // A URL is never printed: a PostgreSQL one may carry a password.
            Self::SqliteUrl(_) => f.write_str("Sqlite(<url>)"),
            Self::Postgres(_) => f.write_str("Postgres(<url>)"),
        }
    }
}

/// Why the key store failed.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    /// `--database-url` is not a PostgreSQL URL.
    #[error("the database URL must start with postgres://, postgresql:// or sqlite:")]
    UnsupportedUrl,
    /// The data folder could not be made.
    #[error("cannot create the data folder {path}: {source}")]
    DataDir {
        /// The folder.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The database holds a newer schema than this relay knows.
    #[error(
        "the key database has schema version {found}, newer than this relay's {known}; upgrade the relay"
    )]
    SchemaTooNew {
        /// Version in the database.
        found: i64,
        /// Newest version this build knows.
        known: i64,
    },
    /// The database has a migration that breaks relays below a reader level above ours.
    #[error(
        "the key database has migration {migration}, which needs a relay of reader level {needs} or newer; this relay is level {level} (version {version}): upgrade it",
        version = env!("CARGO_PKG_VERSION")
    )]
    NeedsNewerRelay {
        /// The migration's name.
        migration: String,
        /// The lowest reader level that works with it.
        needs: i64,
        /// This relay's level.
        level: i64,
    },
    /// A key name that is empty, too long or has control characters.
    #[error("a key name must be 1 to {MAX_NAME_CHARS} characters, without control characters")]
    InvalidName,
    /// The system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// The database server could not be reached at start.
    #[error("cannot connect to {server}: {cause}")]
    Connect {
        /// Which server and database (never the URL).
        server: String,
        /// Why, in words.
        cause: String,
    },
    /// The database failed.
    #[error("key database: {0}")]
    Database(#[from] sqlx::Error),
}

/// The keys, in whichever database holds them.
pub struct KeyStore {
    db: Database,
    random: SystemRandom,
    /// When this process last wrote each key's last-used time.
    touched: Mutex<HashMap<ApiKeyId, Instant>>,
    /// Digests of key-shaped keys the database did not know, and when it said so.
    misses: Mutex<HashMap<String, Instant>>,
    /// Database lookups `authenticate` has made.
    lookups: AtomicU64,
    /// Whether the database holds ModelRelay's key table (looked for at open).
    modelrelay_table: bool,
}

enum Database {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Database {
    /// The statement that opens a transaction which will write. SQLite's plain
    /// `BEGIN` takes the write lock only at the first write, so two relays on
    /// one file that both read first cannot both upgrade: one fails at once
    /// with "database is locked". `BEGIN IMMEDIATE` takes the lock up front,
    /// where the busy timeout makes the second wait its turn.
    fn begin_writing(&self) -> &'static str {
        match self {
            Database::Sqlite(_) => "BEGIN IMMEDIATE",
            Database::Postgres(_) => "BEGIN",
        }
    }
}

impl fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.db {
            Database::Sqlite(_) => "KeyStore(sqlite)",
            Database::Postgres(_) => "KeyStore(postgres)",
        })
    }
}

/// Runs `$body` with `$pool` bound to whichever pool holds the keys. The SQL
/// is written once, with `$1`-style parameters, which both databases read.
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Database::Sqlite($pool) => $body,
            Database::Postgres($pool) => $body,
        }
    };
}

pub mod modelrelay;
mod postgres;
mod relays;
mod schema;
mod usage;

pub use modelrelay::ModelRelayKeyId;
pub use relays::RelayRow;
pub use schema::{READER_LEVEL, Schema};
pub use usage::{MAX_USAGE_ROWS, UsageDay, UsageListing, UsageRow, UsageTally};

/// What kind of key a presented text is shaped like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    /// One of the relay's own (`mr-…`).
    Relay,
    /// One a ModelRelay server made (`mr_live_…`).
    ModelRelay,
}

impl KeyStore {
    /// Opens (and creates or upgrades) the key database.
    pub async fn open(location: &KeyStoreLocation) -> Result<Self, KeyStoreError> {
        Self::open_with(location, &Schema::current()).await
    }

    /// Opens the key database migrated only as far as `schema` knows (what an
    /// older relay does; [`KeyStore::open`] uses this build's).
    pub async fn open_with(
        location: &KeyStoreLocation,
        schema: &Schema,
    ) -> Result<Self, KeyStoreError> {
        let db = match location {
            KeyStoreLocation::Sqlite(dir) => {
                create_private_dir(dir)?;
                open_sqlite(SqliteConnectOptions::new().filename(dir.join(SQLITE_FILE))).await?
            }
            KeyStoreLocation::SqliteUrl(url) => open_sqlite(url.parse()?).await?,
            KeyStoreLocation::Postgres(url) => {
                Database::Postgres(postgres::open(url.parse()?).await?)
            }
        };
        schema::migrate(&db, schema).await?;
        let modelrelay_table = modelrelay::table_present(&db).await?;
        Ok(Self {
            db,
            random: SystemRandom::new(),
            touched: Mutex::new(HashMap::new()),
            misses: Mutex::new(HashMap::new()),
            lookups: AtomicU64::new(0),
            modelrelay_table,
        })
    }

    /// How many live keys ModelRelay's table holds, or `None` when the
    /// database has no such table (it is looked for when the store opens).
    pub async fn modelrelay_keys(&self) -> Result<Option<i64>, KeyStoreError> {
        if !self.modelrelay_table {
            return Ok(None);
        }
        Ok(Some(modelrelay::live_count(&self.db).await?))
    }

    /// The base schema version the database is at (1, forever: later
    /// migrations are recorded by name, see [`Schema`]).
    pub async fn schema_version(&self) -> Result<i64, KeyStoreError> {
        Ok(on_pool!(&self.db, |pool| sqlx::query(
            schema::CURRENT_VERSION
        )
        .fetch_one(pool)
        .await?
        .try_get::<i64, _>("version")?))
    }

    /// The names of the migrations recorded in the database (see [`Schema`]), in name order.
    pub async fn applied_migrations(&self) -> Result<Vec<String>, KeyStoreError> {
        Ok(on_pool!(&self.db, |pool| sqlx::query(
            "SELECT name FROM modelrelay_migrations ORDER BY name"
        )
        .fetch_all(pool)
        .await?
        .iter()
        .map(|row| row.try_get::<String, _>("name"))
        .collect::<Result<Vec<_>, sqlx::Error>>()?))
    }

    /// Makes a key named `name`; the answer is the only place the key appears.
    pub async fn create(&self, name: &str, now: SystemTime) -> Result<CreatedKey, KeyStoreError> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > MAX_NAME_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(KeyStoreError::InvalidName);
        }
        let mut bytes = [0u8; KEY_BYTES];
        self.random
            .fill(&mut bytes)
            .map_err(|_| KeyStoreError::Random)?;
        let key = format!(
            "{KEY_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let prefix = key[..SHOWN_CHARS].to_owned();
        let hash = hex(&key_digest(&key));
        self.forget_miss(&hash);
        let created_ms = unix_ms(now);
        let sql = "INSERT INTO api_keys (name, prefix, key_hash, created_at_ms) \
                   VALUES ($1, $2, $3, $4) RETURNING id";
        let id = on_pool!(&self.db, |pool| sqlx::query(sql)
            .bind(name)
            .bind(&prefix)
            .bind(&hash)
            .bind(created_ms)
            .fetch_one(pool)
            .await?
            .try_get::<i64, _>("id")?);
        Ok(CreatedKey {
            record: ApiKeyRecord {
                id: ApiKeyId::Relay(id),
                name: name.to_owned(),
                prefix,
                created_at: from_unix_ms(created_ms),
                last_used_at: None,
            },
            key,
        })
    }

    /// Every key, oldest first: ModelRelay's (which came before), then the relay's own.
    pub async fn list(&self) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        let mut keys = if self.modelrelay_table {
            modelrelay::list(&self.db).await?
        } else {
            Vec::new()
        };
        keys.extend(self.list_own().await?);
        Ok(keys)
    }

    /// The relay's own keys, oldest first.
    async fn list_own(&self) -> Result<Vec<ApiKeyRecord>, KeyStoreError> {
        let sql =
            "SELECT id, name, prefix, created_at_ms, last_used_at_ms FROM api_keys ORDER BY id";
        Ok(on_pool!(&self.db, |pool| sqlx::query(sql)
            .fetch_all(pool)
            .await?
            .iter()
            .map(|row| {
                Ok(ApiKeyRecord {
                    id: ApiKeyId::Relay(row.try_get("id")?),
                    name: row.try_get("name")?,
                    prefix: row.try_get("prefix")?,
                    created_at: from_unix_ms(row.try_get("created_at_ms")?),
                    last_used_at: row
                        .try_get::<Option<i64>, _>("last_used_at_ms")?
                        .map(from_unix_ms),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?))
    }

    /// Revokes a key at once: deletes one of the relay's own, or marks one of
    /// ModelRelay's revoked as ModelRelay does; `false` if there was none with this id.
    pub async fn revoke(&self, id: ApiKeyId) -> Result<bool, KeyStoreError> {
        let revoked = match id {
            ApiKeyId::Relay(number) => {
                on_pool!(&self.db, |pool| sqlx::query(
                    "DELETE FROM api_keys WHERE id = $1"
                )
                .bind(number)
                .execute(pool)
                .await?
                .rows_affected())
                    > 0
            }
            ApiKeyId::ModelRelay(uuid) if self.modelrelay_table => {
                modelrelay::revoke(&self.db, uuid).await?
            }
            ApiKeyId::ModelRelay(_) => false,
        };
        if let Ok(mut touched) = self.touched.lock() {
            touched.remove(&id);
        }
        Ok(revoked)
    }

    /// The key `presented` is, if it is a live one; notes its use.
    pub async fn authenticate(
        &self,
        presented: &str,
        now: SystemTime,
    ) -> Result<Option<ApiKeyId>, KeyStoreError> {
        let Some(kind) = key_kind(presented) else {
            return Ok(None);
        };
        if kind == KeyKind::ModelRelay && !self.modelrelay_table {
            return Ok(None);
        }
        let digest = key_digest(presented);
        let hash = hex(&digest);
        if self.recently_missed(&hash) {
            return Ok(None);
        }
        self.lookups.fetch_add(1, Ordering::Relaxed);
        let found = match kind {
            KeyKind::Relay => on_pool!(&self.db, |pool| sqlx::query(
                "SELECT id FROM api_keys WHERE key_hash = $1"
            )
            .bind(&hash)
            .fetch_optional(pool)
            .await?
            .map(|row| row.try_get::<i64, _>("id"))
            .transpose()?
            .map(ApiKeyId::Relay)),
            KeyKind::ModelRelay => modelrelay::find(&self.db, &digest).await?,
        };
        let Some(id) = found else {
            self.remember_miss(hash);
            return Ok(None);
        };
        // Best effort, tried at most once a minute per key: a key that checked
        // out is not refused because its last-used time could not be written
        // (a busy or read-only database).
        if self.due_for_touch(id)
            && let Err(error) = self.touch(id, &digest, now).await
        {
            warn!(key = %id, %error, "could not note an API key's last use");
        }
        Ok(Some(id))
    }

    /// Database lookups `authenticate` has made (a miss answered from memory makes none).
    pub fn lookups(&self) -> u64 {
        self.lookups.load(Ordering::Relaxed)
    }

    /// Whether the database said within [`MISS_TTL`] that it does not know this digest.
    fn recently_missed(&self, hash: &str) -> bool {
        let Ok(misses) = self.misses.lock() else {
            return false;
        };
        misses.get(hash).is_some_and(|at| at.elapsed() < MISS_TTL)
    }

    /// Remembers a miss, if there is room once expired ones are gone.
    fn remember_miss(&self, hash: String) {
        let Ok(mut misses) = self.misses.lock() else {
            return;
        };
        if misses.len() >= MAX_MISSES {
            misses.retain(|_, at| at.elapsed() < MISS_TTL);
        }
        if misses.len() < MAX_MISSES {
            misses.insert(hash, Instant::now());
        }
    }

    /// Forgets a remembered miss for `hash` (a key just created here).
    fn forget_miss(&self, hash: &str) {
        if let Ok(mut misses) = self.misses.lock() {
            misses.remove(hash);
        }
    }

    /// Whether this key's last-used time is due to be written; if so, the attempt is noted.
    fn due_for_touch(&self, id: ApiKeyId) -> bool {
        let Ok(mut touched) = self.touched.lock() else {
            return true;
        };
        let now = Instant::now();
        match touched.get(&id) {
            Some(at) if now.duration_since(*at) < LAST_USED_EVERY => false,
            _ => {
                touched.insert(id, now);
                true
            }
        }
    }

    /// Writes a key's last-used time (`digest` finds one of ModelRelay's).
    async fn touch(
        &self,
        id: ApiKeyId,
        digest: &[u8],
        now: SystemTime,
    ) -> Result<(), KeyStoreError> {
        match id {
            ApiKeyId::Relay(number) => on_pool!(&self.db, |pool| sqlx::query(
                "UPDATE api_keys SET last_used_at_ms = $1 WHERE id = $2"
            )
            .bind(unix_ms(now))
            .bind(number)
            .execute(pool)
            .await?
            .rows_affected()),
            ApiKeyId::ModelRelay(_) => {
                modelrelay::touch(&self.db, digest).await?;
                0
            }
        };
        Ok(())
    }

    /// Closes the database connections.
    pub async fn close(&self) {
        on_pool!(&self.db, |pool| pool.close().await)
    }
}

/// Whether `text` has the shape of a key, the relay's own or one ModelRelay
/// made (checked before any database work).
pub(crate) fn is_key_shaped(text: &str) -> bool {
    key_kind(text).is_some()
}

/// Which kind of key `text` is shaped like, if any.
fn key_kind(text: &str) -> Option<KeyKind> {
    let own = text.len() == KEY_PREFIX.len() + 43
        && text.starts_with(KEY_PREFIX)
        && text[KEY_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if own {
        Some(KeyKind::Relay)
    } else if modelrelay::is_key_shaped(text) {
        Some(KeyKind::ModelRelay)
    } else {
        None
    }
}

/// The SHA-256 of a key: stored as hex for the relay's own, as bytes by ModelRelay.
fn key_digest(key: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest(&SHA256, key.as_bytes()).as_ref());
    out
}

/// Bytes as lower-case hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How long a writer waits for another's lock on the SQLite file.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The pause between tries to open a SQLite file another relay is switching to WAL.
const SQLITE_OPEN_RETRY: Duration = Duration::from_millis(25);

/// A pool on the SQLite file `options` names, made if missing.
///
/// Turning a new file into WAL mode needs an exclusive lock that SQLite does
/// not wait for, so a relay that opens the file while another is creating it
/// gets "database is locked" at once; it tries again for up to the busy timeout.
async fn open_sqlite(options: SqliteConnectOptions) -> Result<Database, KeyStoreError> {
    let options = options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT);
    let started = std::time::Instant::now();
    loop {
        match SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.clone())
            .await
        {
            Ok(pool) => return Ok(Database::Sqlite(pool)),
            Err(error) if is_sqlite_busy(&error) && started.elapsed() < SQLITE_BUSY_TIMEOUT => {
                tokio::time::sleep(SQLITE_OPEN_RETRY).await;
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// Whether `error` is SQLite's `SQLITE_BUSY` (any extended code of it).
fn is_sqlite_busy(error: &sqlx::Error) -> bool {
    const SQLITE_BUSY: i64 = 5;
    let sqlx::Error::Database(error) = error else {
        return false;
    };
    error
        .code()
        .and_then(|code| code.parse::<i64>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
}

fn unix_ms(at: SystemTime) -> i64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn from_unix_ms(ms: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn create_private_dir(dir: &Path) -> Result<(), KeyStoreError> {
    let error = |source| KeyStoreError::DataDir {
        path: dir.to_owned(),
        source,
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(error)
}

/// RFC 3339 in UTC to the second, as `2026-11-25T18:00:00Z`.
pub fn rfc3339(at: SystemTime) -> String {
    let secs = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    let (year, month, day) = civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The year, month and day of `days` since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_date(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_629_600)),
            "2026-11-25T18:00:00Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400 + 86_399)),
            "2000-02-29T23:59:59Z"
        );
    }

    #[test]
    fn only_key_shaped_text_reaches_the_database() {
        assert!(!is_key_shaped(""));
        assert!(!is_key_shaped("mr-short"));
        assert!(!is_key_shaped(&format!("sk-{}", "a".repeat(43))));
        assert!(!is_key_shaped(&format!("mr-{}", "a/".repeat(21) + "a")));
        assert!(is_key_shaped(&format!("mr-{}", "aZ09-_".repeat(7) + "a")));
        assert_eq!(
            key_kind(&format!("mr_live_{}", "aZ09".repeat(8))),
            Some(KeyKind::ModelRelay)
        );
    }
}

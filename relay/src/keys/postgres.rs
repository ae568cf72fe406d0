//! Opening the PostgreSQL pool at start, with an error that names the server
//! and says why it could not be reached (never the URL: it may hold a password).

use std::time::Duration;

use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};

use super::KeyStoreError;

/// Connections the pool keeps at most.
const MAX_CONNECTIONS: u32 = 8;

/// How long opening waits for a connection (PostgreSQL may still be starting:
/// a refused connection is tried again until then).
const CONNECT_WAIT: Duration = Duration::from_secs(5);

/// A pool on the database `options` name.
pub(super) async fn open(options: PgConnectOptions) -> Result<PgPool, KeyStoreError> {
    let opened = PgPoolOptions::new()
        .max_connections(MAX_CONNECTIONS)
        .acquire_timeout(CONNECT_WAIT)
        .connect_with(options.clone())
        .await;
    let cause = match opened {
        Ok(pool) => return Ok(pool),
        // The pool retries a refused connection until its timeout, then says
        // only that it timed out: one more attempt says why.
        Err(sqlx::Error::PoolTimedOut) => why_unreachable(&options).await,
        Err(error) => error.to_string(),
    };
    Err(KeyStoreError::Connect {
        server: server_name(&options),
        cause,
    })
}

/// Why a single connection to `options` fails, in words.
async fn why_unreachable(options: &PgConnectOptions) -> String {
    match tokio::time::timeout(CONNECT_WAIT, PgConnection::connect_with(options)).await {
        Ok(Err(error)) => error.to_string(),
        Ok(Ok(connection)) => {
            let _ = connection.close().await;
            format!(
                "no connection from the pool within {CONNECT_WAIT:?}, though one alone succeeds"
            )
        }
        Err(_) => format!("no answer within {CONNECT_WAIT:?}"),
    }
}

/// Which server and database `options` name: host (or socket folder), port
/// and database; no user, no password.
pub(super) fn server_name(options: &PgConnectOptions) -> String {
    let at = match options.get_socket() {
        Some(folder) => format!("the socket in {}", folder.display()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    match options.get_database() {
        Some(database) => format!("PostgreSQL at {at}, database {database}"),
        None => format!("PostgreSQL at {at}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_server_is_named_without_user_or_password() {
        let options: PgConnectOptions = "postgres://keys:hunter2@db.example:6543/relay"
            .parse()
            .unwrap();
        let name = server_name(&options);
        assert_eq!(name, "PostgreSQL at db.example:6543, database relay");
        assert!(
            !name.contains("hunter2") && !name.contains("keys"),
            "{name}"
        );
    }
}

//! Opening a store: which backend a `DATABASE_URL` names, its connection pools, and the
//! migrations of that backend (`migrations/sqlite`, `migrations/postgres`).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migrator;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, Executor};

use super::{Result, Store, StoreError};

static SQLITE: Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES: Migrator = sqlx::migrate!("./migrations/postgres");

/// The engine behind a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    /// One file (or memory), the zero-setup default.
    Sqlite,
    /// A server several processes share.
    Postgres,
}

impl Backend {
    /// The backend a database URL names.
    pub fn of(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            Ok(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Backend::Postgres)
        } else {
            Err(StoreError::Url(redact(url)))
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// A database URL, kept for connections opened later (listeners); printed without its password.
#[derive(Clone)]
pub(super) struct DbUrl(String);

impl DbUrl {
    pub(super) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// Connections a PostgreSQL store keeps at most (reads and writes share them).
const POSTGRES_CONNECTIONS: u32 = 8;

impl Store {
    /// Opens the database at `url` (a SQLite file is created if missing) and applies pending
    /// migrations.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        match Backend::of(url)? {
            Backend::Sqlite => open_sqlite(url).await,
            Backend::Postgres => open_postgres(url).await,
        }
    }

    /// A fresh, empty store for tests: PostgreSQL when `MYNAH_TEST_POSTGRES` names a server
    /// (a new database on it each time), else SQLite in memory.
    #[cfg(test)]
    pub(crate) async fn open_for_test() -> Result<Store> {
        match std::env::var("MYNAH_TEST_POSTGRES").ok().filter(|s| !s.is_empty()) {
            Some(server) => {
                let name = format!("mynah_unit_{}", uuid_like());
                Store::open(&create_postgres_database(&server, &name).await?).await
            }
            None => Store::open("sqlite::memory:").await,
        }
    }
}

async fn open_sqlite(url: &str) -> Result<Store> {
    let memory = url.contains(":memory:") || url.contains("mode=memory");
    if !memory {
        // The Any driver takes its options from the URL alone, so the file is created, and put
        // in WAL mode (which the file remembers), with SQLite's own options first.
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
        if let Some(dir) = Path::new(options.get_filename()).parent() {
            if !dir.as_os_str().is_empty() {
                std::fs::create_dir_all(dir)
                    .map_err(|source| StoreError::Dir { path: dir.display().to_string(), source })?;
            }
        }
        options
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .connect()
            .await?
            .close()
            .await?;
    }
    let pool_with = |connections: u32| {
        AnyPoolOptions::new().max_connections(connections).after_connect(|conn, _| {
            Box::pin(async move {
                // Per connection: NORMAL is durable across process crashes (the failure we guard
                // against) in WAL mode; writers wait for each other instead of failing.
                conn.execute(
                    "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL;",
                )
                .await?;
                Ok(())
            })
        })
    };
    // An in-memory database exists per connection, so it must have exactly one.
    let pool = pool_with(1).connect(url).await?;
    SQLITE.run(&pool).await?;
    let read = if memory { pool.clone() } else { pool_with(4).connect(url).await? };
    Ok(Store { pool, read, backend: Backend::Sqlite, url: DbUrl(url.to_string()) })
}

async fn open_postgres(url: &str) -> Result<Store> {
    let pool = AnyPoolOptions::new()
        .max_connections(POSTGRES_CONNECTIONS)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await?;
    // Several processes may start at once: sqlx's migrator holds an advisory lock meanwhile.
    POSTGRES.run(&pool).await?;
    Ok(Store { read: pool.clone(), pool, backend: Backend::Postgres, url: DbUrl(url.to_string()) })
}

/// Creates the database `name` on the PostgreSQL server at `server_url` (any database URL of
/// that server) unless it exists, and returns the URL of the new database.
pub async fn create_postgres_database(server_url: &str, name: &str) -> Result<String> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Unexpected(format!("database name {name:?}")));
    }
    let mut url = url::Url::parse(server_url).map_err(|_| StoreError::Url(redact(server_url)))?;
    let mut conn = sqlx::PgConnection::connect(server_url).await?;
    let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
        .bind(name)
        .fetch_optional(&mut conn)
        .await?;
    if exists.is_none() {
        // CREATE DATABASE takes no parameters; the name was checked above.
        match conn.execute(format!("CREATE DATABASE {name}").as_str()).await {
            Ok(_) => {}
            // Another process created it meanwhile.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    conn.close().await?;
    url.set_path(&format!("/{name}"));
    Ok(url.to_string())
}

/// A URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// A name part unique enough for throwaway test databases.
#[cfg(test)]
fn uuid_like() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    format!("{}_{}_{}", std::process::id(), nanos % 1_000_000_000, N.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_backend_and_others_are_refused_without_their_password() {
        assert_eq!(Backend::of("sqlite://data/mynah.db").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("sqlite::memory:").unwrap(), Backend::Sqlite);
        assert_eq!(Backend::of("postgres://u:p@h/db").unwrap(), Backend::Postgres);
        assert_eq!(Backend::of("postgresql://h/db").unwrap(), Backend::Postgres);
        let e = Backend::of("mysql://u:secret@h/db").unwrap_err().to_string();
        assert!(e.contains("mysql://u:***@h/db") && !e.contains("secret"), "{e}");
    }
}

//! How to connect: URL, pool size, timeouts, statement mode, schema, TLS.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use cairn_checkpoint::{Error, Result};
use deadpool_postgres::{ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{NoTls, Socket};

use crate::error::{pg_error, pool_error, BACKEND};
use crate::saver::PostgresSaver;
use crate::schema::{self, Statements, SCHEMA_VERSION};

/// Default of [`PostgresOptions::commit_slots`].
const DEFAULT_COMMIT_SLOTS: usize = 4;

/// Settings for a [`PostgresSaver`]; build one with [`PostgresOptions::new`], adjust it, then
/// [`connect`](PostgresOptions::connect).
///
/// ```no_run
/// # async fn demo() -> cairn_checkpoint::Result<()> {
/// use std::time::Duration;
/// use cairn_postgres::PostgresOptions;
///
/// let saver = PostgresOptions::new("postgres://app@db.internal:6432/cairn")
///     .max_size(32)
///     .connect_timeout(Duration::from_secs(5))
///     .wait_timeout(Duration::from_secs(10))
///     .prepared_statements(false) // behind PgBouncer in transaction mode
///     .schema("cairn")
///     .connect()
///     .await?;
/// # drop(saver); Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    url: String,
    max_size: usize,
    connect_timeout: Option<Duration>,
    wait_timeout: Option<Duration>,
    prepared_statements: bool,
    verify_connections: bool,
    schema: Option<String>,
    run_migrations: bool,
    commit_slots: usize,
}

impl PostgresOptions {
    /// Options for the server at `url`, with the defaults: a pool of 16 connections, 10 s to
    /// connect, 30 s to wait for a free connection, prepared statements on, no check
    /// query before reusing a connection, tables in the connection's search path, migrations run on
    /// connect.
    ///
    /// `url` is a `postgres://user:password@host:port/database?param=value` URL or a
    /// `host=... user=... dbname=...` key/value string, as libpq and `tokio-postgres` accept
    /// (for example `?application_name=worker-1`, `?options=-c%20statement_timeout%3D5s`,
    /// `host=/var/run/postgresql` for a Unix socket).
    pub fn new(url: impl Into<String>) -> Self {
        PostgresOptions {
            url: url.into(),
            max_size: 16,
            connect_timeout: Some(Duration::from_secs(10)),
            wait_timeout: Some(Duration::from_secs(30)),
            prepared_statements: true,
            verify_connections: false,
            schema: None,
            run_migrations: true,
            commit_slots: DEFAULT_COMMIT_SLOTS,
        }
    }

    /// At most this many writes (`put`, `put_writes_and_put`, `put_batch`) commit at once
    /// (default 4; at least 1). A write that finds them all busy waits, and everything that
    /// waited while a commit was under way is stored together in one transaction when it
    /// ends: with many threads writing at once (durability `Sync`), commits, and the
    /// server's WAL flushes, grow far slower than checkpoints. A write that finds a slot free
    /// is stored at once and alone, so one thread pays nothing. A group that fails for a
    /// reason one write may cause (a value the server refuses, a check before any SQL) is
    /// stored again caller by caller, so each gets its own result; any other failure (the
    /// server unreachable, a timeout) is every caller's at once. `max_size` or more turns the
    /// grouping off.
    pub fn commit_slots(mut self, slots: usize) -> Self {
        self.commit_slots = slots.max(1);
        self
    }

    /// At most this many connections to the server (default 16; at least 1).
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.max_size = max_size.max(1);
        self
    }

    /// How long opening one connection may take (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long a call waits for a free pooled connection when all are busy (default 30 s).
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = Some(timeout);
        self
    }

    /// Whether to use named prepared statements, cached per connection (default `true`:
    /// fastest against PostgreSQL itself).
    ///
    /// Set `false` behind PgBouncer in transaction (or statement) pooling mode, where a named
    /// statement prepared on one server connection is missing on the next. Every statement
    /// then goes out as one unnamed parse/bind/execute with its parameter types given up
    /// front (`tokio-postgres`'s `query_typed`), and migrations use the simple query
    /// protocol, so no named statement is ever created. Costs a parse per call.
    pub fn prepared_statements(mut self, enabled: bool) -> Self {
        self.prepared_statements = enabled;
        self
    }

    /// Whether a pooled connection is checked with an empty query before each reuse
    /// (default `false`). The check costs one round trip per call. Without it, connections
    /// the driver already knows are closed are replaced before reuse, and a call that finds
    /// its connection dead anyway (restart, `pg_terminate_backend`, idle timeout of a
    /// proxy) runs again on another connection, up to three in all — safe because every
    /// saver operation is idempotent. Turn it on when the network drops connections
    /// silently (no reset reaches the client).
    pub fn verify_connections(mut self, enabled: bool) -> Self {
        self.verify_connections = enabled;
        self
    }

    /// Keep Cairn's tables in this schema (created if missing) instead of the connection's
    /// search path. Letters, digits, `_`, `$` and `-`; case is kept. Useful to share one
    /// database between applications, to keep clear of LangGraph's tables of the same
    /// names, and for tests.
    pub fn schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = Some(schema.into());
        self
    }

    /// Whether [`connect`](Self::connect) applies missing migrations (default `true`). With
    /// `false` it only checks that the schema is current, for deployments where migrations
    /// run as a separate step with more privileges.
    pub fn run_migrations(mut self, enabled: bool) -> Self {
        self.run_migrations = enabled;
        self
    }

    /// Connects without TLS, runs migrations, and returns the saver.
    pub async fn connect(self) -> Result<PostgresSaver> {
        self.connect_with_tls(NoTls).await
    }

    /// Connects with a TLS connector of your choice (for example
    /// `postgres_native_tls::MakeTlsConnector` or `tokio_postgres_rustls::MakeRustlsConnect`,
    /// both from crates.io; pair it with `sslmode=require` in the URL), runs migrations, and
    /// returns the saver.
    pub async fn connect_with_tls<T>(self, tls: T) -> Result<PostgresSaver>
    where
        T: MakeTlsConnect<Socket> + Clone + Sync + Send + 'static,
        T::Stream: Sync + Send,
        T::TlsConnect: Sync + Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        if let Some(name) = &self.schema {
            schema::validate_schema_name(name)?;
        }
        let mut pg_config = tokio_postgres::Config::from_str(&self.url).map_err(|e| {
            // The driver's message names the bad part; the URL itself may hold a password.
            Error::InvalidArgument(format!("invalid PostgreSQL connection URL: {e}"))
        })?;
        if let Some(timeout) = self.connect_timeout {
            pg_config.connect_timeout(timeout);
        }
        let recycling_method = if self.verify_connections {
            RecyclingMethod::Verified
        } else {
            RecyclingMethod::Fast
        };
        let manager = deadpool_postgres::Manager::from_config(
            pg_config,
            tls,
            ManagerConfig { recycling_method },
        );
        let pool = Pool::builder(manager)
            .max_size(self.max_size)
            .wait_timeout(self.wait_timeout)
            .create_timeout(self.connect_timeout)
            .recycle_timeout(self.connect_timeout)
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| Error::Backend {
                backend: BACKEND,
                message: format!("could not build the connection pool: {e}"),
                source: Some(Box::new(e)),
            })?;

        let schema = self.schema.as_deref();
        let mut client = pool.get().await.map_err(pool_error)?;
        if self.run_migrations {
            schema::migrate(&mut client, schema).await?;
        } else {
            let prefix = schema::prefix(schema);
            let version = schema::version_query(&client, &prefix).await?;
            if version != SCHEMA_VERSION {
                return Err(Error::Backend {
                    backend: BACKEND,
                    message: format!(
                        "the database schema is at version {version}, this Cairn build needs \
                         {SCHEMA_VERSION}; run the migrations (PostgresOptions::run_migrations)"
                    ),
                    source: None,
                });
            }
        }
        // Make sure the session can see the tables (catches a wrong search_path early).
        client
            .simple_query(&format!(
                "SELECT 1 FROM {}checkpoints LIMIT 0",
                schema::prefix(schema)
            ))
            .await
            .map_err(|e| pg_error("checking the checkpoints table", e))?;
        drop(client);

        Ok(PostgresSaver::from_parts(
            pool,
            Arc::new(Statements::new(schema)),
            self.prepared_statements,
            self.schema,
            self.commit_slots,
        ))
    }
}

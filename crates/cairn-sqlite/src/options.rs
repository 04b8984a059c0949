//! How a [`crate::SqliteSaver`] opens its database.

use std::time::Duration;

/// SQLite's `PRAGMA synchronous` level for the writer connection: how much a committed
/// checkpoint survives. (In WAL mode, which Cairn always uses for files.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Synchronous {
    /// No fsync at all. A committed checkpoint survives the process crashing, but an OS crash
    /// or power loss may lose recent commits *or corrupt the database*. For throwaway data.
    Off,
    /// fsync only at WAL checkpoints (the default). A committed checkpoint survives the
    /// process crashing or being killed; after an OS crash or power loss the most recent
    /// commits may be rolled back, but the database stays consistent.
    #[default]
    Normal,
    /// fsync the WAL on every commit. A committed checkpoint also survives power loss.
    Full,
    /// Like `Full`, and also fsyncs the directory after unlinking the rollback journal.
    /// Only matters outside WAL mode; offered for completeness.
    Extra,
}

impl Synchronous {
    /// The pragma value.
    pub fn as_sql(self) -> &'static str {
        match self {
            Synchronous::Off => "OFF",
            Synchronous::Normal => "NORMAL",
            Synchronous::Full => "FULL",
            Synchronous::Extra => "EXTRA",
        }
    }
}

/// Options for [`crate::SqliteSaver::open_with`] and [`crate::SqliteSaver::in_memory_with`].
///
/// ```
/// use std::time::Duration;
/// use cairn_sqlite::{SqliteOptions, Synchronous};
/// let options = SqliteOptions::default()
///     .synchronous(Synchronous::Full)
///     .busy_timeout(Duration::from_secs(30));
/// assert_eq!(options.synchronous_level(), Synchronous::Full);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOptions {
    synchronous: Synchronous,
    busy_timeout: Duration,
    read_connections: usize,
    max_batch: usize,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        SqliteOptions {
            synchronous: Synchronous::Normal,
            busy_timeout: Duration::from_secs(10),
            read_connections: 4,
            max_batch: 256,
        }
    }
}

impl SqliteOptions {
    /// Durability of commits (default [`Synchronous::Normal`]).
    pub fn synchronous(mut self, level: Synchronous) -> Self {
        self.synchronous = level;
        self
    }

    /// How long a connection waits for another process holding the write lock before failing
    /// with "database is locked" (default 10 s). Raise it when several processes write
    /// heavily to one file.
    pub fn busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }

    /// How many reads may run at once on a file database, each on its own connection
    /// (default 4, at least 1). In-memory databases read through the writer connection.
    pub fn read_connections(mut self, n: usize) -> Self {
        self.read_connections = n.max(1);
        self
    }

    /// At most this many queued writes are committed in one transaction (default 256, at
    /// least 1).
    pub fn max_batch(mut self, n: usize) -> Self {
        self.max_batch = n.max(1);
        self
    }

    /// The configured durability level.
    pub fn synchronous_level(&self) -> Synchronous {
        self.synchronous
    }

    /// The configured busy timeout.
    pub fn busy_timeout_duration(&self) -> Duration {
        self.busy_timeout
    }

    pub(crate) fn read_connection_count(&self) -> usize {
        self.read_connections
    }

    pub(crate) fn max_batch_size(&self) -> usize {
        self.max_batch
    }
}

//! Transactions and savepoints begun and ended through cached statements.
//!
//! `rusqlite`'s `Transaction` and `Savepoint` run their `BEGIN`, `SAVEPOINT`, `RELEASE` and
//! `COMMIT` through `execute_batch`, which parses the SQL every time. Reads run them once per
//! query (the runtime's head read once per invoke), the writer once per batch and, when a
//! batch has to fall back to one savepoint per request, per request: through the statement
//! cache each is parsed once per connection.

use rusqlite::Connection;

use cairn_checkpoint::Result;

use crate::sql_error;

/// Runs a parameterless statement through the statement cache.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut stmt| stmt.execute([]))
        .map(drop)
}

/// A transaction. Dropped without [`commit`](Self::commit) (an error, a panic) it rolls
/// back, so the connection, which may be the write connection, is never left inside a
/// transaction.
pub(crate) struct Transaction<'c> {
    conn: &'c Connection,
    open: bool,
}

impl<'c> Transaction<'c> {
    /// A write transaction (`BEGIN IMMEDIATE`): takes the database's write lock, waiting up
    /// to the connection's busy timeout.
    pub(crate) fn write(conn: &'c Connection) -> rusqlite::Result<Self> {
        exec_cached(conn, "BEGIN IMMEDIATE")?;
        Ok(Transaction { conn, open: true })
    }

    /// A read transaction (`BEGIN`): one snapshot for all its queries.
    pub(crate) fn read(conn: &'c Connection) -> Result<Self> {
        exec_cached(conn, "BEGIN").map_err(sql_error("starting a read transaction"))?;
        Ok(Transaction { conn, open: true })
    }

    /// Commits (ends a read transaction). On an error the transaction is still open and
    /// `drop` rolls it back.
    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        exec_cached(self.conn, "COMMIT")?;
        self.open = false;
        Ok(())
    }

    /// Rolls back now, reporting an error (`drop` only logs it).
    pub(crate) fn rollback(mut self) -> rusqlite::Result<()> {
        self.open = false;
        // Some errors (a full disk, say) end the transaction themselves.
        if self.conn.is_autocommit() {
            return Ok(());
        }
        exec_cached(self.conn, "ROLLBACK")
    }

    /// Runs `f` inside a savepoint: kept when it returns `Ok`, undone when it returns an
    /// error (the transaction goes on either way). The outer error is `f`'s; the inner one
    /// a failure to open, release or roll back the savepoint, after which the transaction
    /// must be rolled back.
    pub(crate) fn in_savepoint<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> rusqlite::Result<Result<T>> {
        exec_cached(self.conn, "SAVEPOINT cairn_request")?;
        let result = f(self.conn);
        if result.is_err() {
            exec_cached(self.conn, "ROLLBACK TO cairn_request")?;
        }
        exec_cached(self.conn, "RELEASE cairn_request")?;
        Ok(result)
    }
}

impl std::ops::Deref for Transaction<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if self.open && !self.conn.is_autocommit() {
            if let Err(e) = exec_cached(self.conn, "ROLLBACK") {
                tracing::error!(error = %e, "rolling back a transaction");
            }
        }
    }
}

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

/// How a request run inside a savepoint ended.
pub(crate) enum Savepoint {
    /// It succeeded; its changes stay in the transaction.
    Kept,
    /// It failed and its changes were undone; the transaction goes on.
    Undone(cairn_checkpoint::Error),
    /// It failed with an error that made SQLite roll back the whole transaction (a full
    /// disk, an I/O error): the other requests' changes are gone too.
    TransactionLost(cairn_checkpoint::Error),
}

impl<'c> Transaction<'c> {
    /// A write transaction (`BEGIN IMMEDIATE`): takes the database's write lock, waiting up
    /// to the connection's busy timeout. A connection an earlier failure left inside a
    /// transaction is rolled back first, so one failed `ROLLBACK` cannot block every later
    /// write.
    pub(crate) fn write(conn: &'c Connection) -> rusqlite::Result<Self> {
        if !conn.is_autocommit() {
            tracing::warn!("the write connection was left inside a transaction; rolling it back");
            exec_cached(conn, "ROLLBACK")?;
        }
        exec_cached(conn, "BEGIN IMMEDIATE")?;
        Ok(Transaction { conn, open: true })
    }

    /// A read transaction (`BEGIN`): one snapshot for all its queries.
    pub(crate) fn read(conn: &'c Connection) -> Result<Self> {
        exec_cached(conn, "BEGIN").map_err(sql_error("starting a read transaction"))?;
        Ok(Transaction { conn, open: true })
    }

    /// Commits a write transaction. On an error `drop` rolls back whatever SQLite left
    /// open.
    pub(crate) fn commit(mut self) -> rusqlite::Result<()> {
        exec_cached(self.conn, "COMMIT")?;
        self.open = false;
        Ok(())
    }

    /// Ends a read transaction (see [`read`](Self::read)).
    pub(crate) fn end_read(self) -> Result<()> {
        self.commit()
            .map_err(sql_error("ending a read transaction"))
    }

    /// Rolls back now, reporting an error (`drop` only logs it, trying once more).
    pub(crate) fn rollback(mut self) -> rusqlite::Result<()> {
        // Some errors (a full disk, say) end the transaction themselves.
        if !self.conn.is_autocommit() {
            exec_cached(self.conn, "ROLLBACK")?;
        }
        self.open = false;
        Ok(())
    }

    /// Runs `f` inside a savepoint: kept when it returns `Ok`, undone when it returns an
    /// error. The `Err` is a failure of the savepoint's own statements, after which the
    /// transaction must be rolled back.
    pub(crate) fn in_savepoint(
        &self,
        f: impl FnOnce(&Connection) -> Result<()>,
    ) -> rusqlite::Result<Savepoint> {
        exec_cached(self.conn, "SAVEPOINT cairn_request")?;
        let err = match f(self.conn) {
            Ok(()) => {
                exec_cached(self.conn, "RELEASE cairn_request")?;
                return Ok(Savepoint::Kept);
            }
            Err(err) => err,
        };
        if self.conn.is_autocommit() {
            return Ok(Savepoint::TransactionLost(err));
        }
        exec_cached(self.conn, "ROLLBACK TO cairn_request")?;
        exec_cached(self.conn, "RELEASE cairn_request")?;
        Ok(Savepoint::Undone(err))
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

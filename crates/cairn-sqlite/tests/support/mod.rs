//! Helpers the SQLite test files share: a database file in a fresh directory, and a raw
//! connection to look at (or damage) what the saver stored.

use std::path::{Path, PathBuf};

use rusqlite::Connection;

/// A path for a new database in a temporary directory (kept while the guard lives).
pub fn temp_db() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("cairn.db");
    (dir, path)
}

/// A plain connection to the file at `path`, beside the saver's own.
pub fn raw(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("raw connection");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn
}

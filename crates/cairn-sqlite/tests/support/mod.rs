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

/// SQL reading a `type_tag` column as text: since schema 11 the tags Cairn writes are stored
/// as one code byte (see the crate's storage notes), others as their text.
#[allow(dead_code)] // not every test file reads type tags
pub const TYPE_TAG_TEXT: &str =
    "CASE hex(type_tag) WHEN '01' THEN 'msgpack' WHEN '02' THEN 'json' \
     WHEN '03' THEN 'bytes' WHEN '04' THEN 'empty' WHEN '05' THEN 'null' WHEN '06' THEN 'append' \
     WHEN '07' THEN 'append/2' WHEN '08' THEN 'ref/append' WHEN '09' THEN 'ref/map' \
     ELSE type_tag END";

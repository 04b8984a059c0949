//! # cairn-sqlite
//!
//! Cairn's embedded default checkpoint store: a [`CheckpointSaver`] on SQLite, in a file
//! (several processes may share it) or in memory.
//!
//! ```
//! use cairn_checkpoint::*;
//! use cairn_sqlite::SqliteSaver;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let saver = SqliteSaver::open(dir.path().join("cairn.db"))?;
//! let codec = ValueCodec::default();
//!
//! let mut cp = Checkpoint::new();
//! let v1 = saver.get_next_version(None);
//! cp.channel_values.insert("messages".into(), codec.encode(&["hi"])?);
//! cp.channel_versions.insert("messages".into(), v1.clone());
//! let meta = CheckpointMetadata::new(CheckpointSource::Input, -1).with("user", "ada");
//! let stored = saver
//!     .put(&CheckpointConfig::thread("chat-1"), cp, meta, [("messages".into(), v1)].into())
//!     .await?;
//!
//! let latest = saver.get_tuple(&CheckpointConfig::thread("chat-1")).await?.expect("saved");
//! assert_eq!(latest.config, stored);
//! assert_eq!(latest.channel_value::<Vec<String>>(&codec, "messages")?, Some(vec!["hi".into()]));
//! let by_ada = saver.list(&ListQuery::thread("chat-1").filter("user", "ada")).await?;
//! assert_eq!(by_ada.len(), 1);
//! # Ok::<(), Error>(()) }).unwrap();
//! ```
//!
//! ## Schema, and why
//!
//! Five tables (see `schema.rs`; `cairn_migrations` records which migrations ran, so later
//! schema changes apply once, in order, inside a transaction). The four data tables are
//! `WITHOUT ROWID` tables (schema 3; schema 6 for `checkpoint_runs`): each is stored as its
//! primary key b-tree, with no second b-tree for the key, so keys are stored once and a commit
//! writes fewer pages.
//!
//! * `checkpoints` — one row per checkpoint, primary key `(thread_id, checkpoint_ns,
//!   checkpoint_id)`. It holds the checkpoint *header* (the checkpoint without its id and
//!   channel values: a MessagePack array `[v, ts, channel_versions, versions_seen,
//!   updated_channels]`, so `Int(1)` versions come back as `Int(1)`; since schema 4 a
//!   version in Cairn's own 49-character format is stored as the pair `[counter, suffix]`,
//!   about 11 bytes, which halves a header; since schema 10 the runtime's own names are
//!   one-byte codes, a suffix the header already holds a back reference and `ts` the
//!   microseconds after the id's time, about 90 bytes for a chat step; headers written before
//!   schema 3 are named maps with the id and read as before, as do later schemas'), the
//!   metadata (JSON text up to schema 11; since schema 12 a blob of a few bytes,
//!   `stored_metadata.rs`, which list filters read in SQL through `cairn_metadata_json`
//!   and `json_extract`), the parent id, and the run id in its own
//!   column (since schema 6 the JSON leaves it out: reads put it back, a filter on `run_id`
//!   tests the column; a `run_id` string among the caller's own keys counts as the run id,
//!   any other such key is refused at `put`; an empty `parents` map is left out too). Since
//!   schema 9 the checkpoint, parent and run ids (and in `checkpoint_writes` the checkpoint
//!   and task ids) are stored as their 16 bytes when they are canonical UUIDs, which every
//!   id Cairn or LangGraph makes is, and as text otherwise (`id_key.rs`; 20 bytes less per id,
//!   in the same order; SQLite sorts text before blobs, so in a thread that mixes UUIDs with
//!   other ids the others list as older). A partial index, `(thread_id, checkpoint_id)
//!   WHERE checkpoint_ns <> ''` (schema 6), holds the subgraphs' checkpoints; listing a
//!   whole thread merges it with the root namespace's primary-key range, newest first,
//!   without sorting, and a thread without subgraphs adds no index entry per checkpoint.
//!   "Latest checkpoint of a thread" is `ORDER BY checkpoint_id DESC LIMIT 1` on the primary
//!   key: one index seek, as cheap on a thread with 100 000 checkpoints as on one with 10.
//! * `checkpoint_blobs` — channel values, stored **once per `(thread, ns, channel,
//!   version)`**. A `put` writes only the channels in `new_versions`; a checkpoint finds
//!   its values through its `channel_versions`. Storing the whole state in every checkpoint
//!   row (as LangGraph's SqliteSaver does) makes a thread of n steps cost O(n²) bytes; here
//!   an unchanged channel costs nothing per step. `base_version` is set for append values
//!   (below) and NULL otherwise. Since schema 5 both version columns hold Cairn's own
//!   49-character versions as 16-byte blobs (counter then suffix, big-endian, so they sort
//!   by counter as the strings did) and any other version as text (`version_key.rs`; the SQL
//!   functions `cairn_version_key` / `cairn_version_text` convert). A channel updated to no
//!   value (a consumed trigger) gets no row: a version without a row reads as no value.
//!   Since schema 8 an append value is stored without its 76-byte text header, as an item
//!   code, its item count and its items, the base only in `base_version`
//!   (`stored_value.rs`); reads rebuild it.
//! * Pending writes — since schema 13 in their checkpoint's row, `checkpoints.writes`, one
//!   blob per checkpoint (`packed_writes.rs`: per task its id, as 16 bytes when a UUID, and
//!   path, then per write its index, channel, type tag and data): a step's writes belong to
//!   the checkpoint it started from and travel in the batch that stores the step's own; they
//!   go into their checkpoint's `INSERT` when the same batch stores it, else into its row by
//!   an `UPDATE`; later writes merge into the row in SQL (`cairn_merge_writes`). A
//!   W1 chat step's writes take about 80 bytes there, where two rows of `checkpoint_writes`
//!   took about 190. Writes for a checkpoint that is not stored (LangGraph allows them), and
//!   those of files written before schema 13, are rows of `checkpoint_writes`, keyed
//!   `(thread, ns, checkpoint_id, task_id, idx)`; reads take both, the rows first (they are
//!   the older). `copy_thread` first moves each thread's rows into their checkpoints' rows,
//!   then merges the rows left into the target's checkpoint rows that the copy made, the
//!   source's writes winning.
//!   Either way regular writes are insert-if-absent (a retried task cannot duplicate them),
//!   special channels (negative index) overwrite. Merging into one blob costs a wide fan-out
//!   whose tasks each store their writes alone (durability `sync`) a rewrite of the growing
//!   blob per task, where rows cost one insert each. Since schema 8 a write stored together
//!   with the checkpoint its step produced (`put_batch`, `put_writes_and_put`: what the runtime
//!   does), whose items are a run of whole items of that checkpoint's new append value for
//!   the same channel, is stored as a reference to them (`write_refs.rs`): a message a node
//!   appends is stored once, not once as the write and again as the value. Reads rebuild
//!   the write byte for byte. Likewise a run's input (the `__start__` value, a map such as
//!   `{"messages": [...]}`) stored in one batch with the checkpoint that appended those
//!   messages refers to them for that entry.
//!
//!   Since schema 11 the type tags (here and in `checkpoint_blobs`) and task paths Cairn
//!   writes (`msgpack`, `append/2`, `ref/append`, `~__pregel_pull, <node>` …) are stored as
//!   a code byte, and for a known task path prefix the rest after it (`stored_text.rs`):
//!   one byte instead of ten for `ref/append`; other tags and paths stay text. On a
//!   connection Cairn opened, `cairn_stored_text(type_tag)` gives the text back.
//! * `checkpoint_runs` — `(run_id, thread_id, checkpoint_ns)`, one row per run and thread
//!   namespace holding its checkpoints, so `delete_for_runs` finds them with a primary-key
//!   search per run id and then tests `run_id` only in those namespaces. Since schema 6 it
//!   replaces an index on `checkpoints.run_id`, which took an entry per checkpoint (64 per
//!   batch of a long run, about 80 bytes each) where this takes one per run and batch.
//!
//! `list` reads the checkpoint rows in one query; then each distinct value they name once and
//! their writes by primary key (prepared statements in process: cheaper than joining with a
//! JSON array of keys), and the links of append chains in one query per read (below), all
//! inside one read transaction.
//!
//! ## Append values
//!
//! A list channel that grows by a few items per step can be stored as an *append value*
//! ([`cairn_checkpoint::AppendValue`]): the version it extends and the new items. SQLite
//! stores it as given, in `checkpoint_blobs`, and copies its base version into the
//! `base_version` column at `put` (a malformed append value is refused there, since it could
//! never be read back). A thread of n steps adding one message each then stores each message
//! once, not n times.
//!
//! Reads return whole values. When any loaded checkpoint holds append values, one more query
//! fetches the links of all their chains at once: per `(thread, namespace, channel)`, every
//! stored version up to the newest head's version, a single range of the primary key
//! ([`cairn_checkpoint::chain_fetch_bound`]; every version of the channel when versions are
//! not in the zero-padded form whose text order is their counter order). The links go into
//! one [`cairn_checkpoint::AppendChains`] per thread and namespace, and the checkpoints are
//! resolved oldest first, so a listing of a long history joins each link once. Reading the
//! latest checkpoint stays four queries, however long its chains; three with
//! [`CheckpointSaver::get_tuple_known`], which skips the values (and chains) the caller
//! already holds.
//!
//! Deletions keep what chains need: reclaiming unreferenced values (after `delete_for_runs`
//! and `prune`) reads the channel versions from the headers of the remaining checkpoints of
//! each affected thread and namespace, from their pending writes stored as references and
//! from the inputs stored as references that those checkpoints name (MessagePack, so
//! decoded here, not in SQL; these are rare operations), then follows `base_version` from
//! those values in a recursive query, one primary-key search per link. A header that cannot
//! be decoded stops the deletion with an error rather than risk deleting values it refers
//! to, and so does a reference that cannot be decoded. `prune` with `KeepLatest` first
//! rewrites the kept checkpoint's append values as whole values, in the same transaction,
//! so none of the older links stays (a reference counts its items from the end of the
//! value, so it still finds them there). `copy_thread` copies values and bases as stored.
//!
//! ## Concurrency: one writer thread, group commit
//!
//! SQLite allows one writer at a time. Rather than letting many tasks fight for the lock
//! (and fail with "database is locked"), every change goes to one dedicated thread owning
//! the write connection. It takes the first queued request, drains everything else queued
//! behind it, and commits the lot in **one transaction** — one fsync for many checkpoints.
//! A failing request is rolled back alone and only its caller sees the error: the batch runs
//! straight through first, and only when a request fails is it rolled back and run again with
//! each request in its own SAVEPOINT. Callers are answered after the commit.
//!
//! One shortcut: on a file database under [`Synchronous::Off`] or [`Synchronous::Normal`]
//! (where a commit does not wait for fsync), while writes come one at a time (the last eight
//! overlapped no other), a write that finds the write connection idle and the database's
//! write lock free commits right on the calling thread, in its own transaction, saving two
//! thread hand-offs. Anything else — concurrent writes, which commit in groups, the writer
//! busy, another process holding the lock, `Full` durability — goes through the queue as
//! above. WAL checkpoints run on a thread of their own with a connection of their own
//! (PASSIVE: they never take the write lock), so commits go on meanwhile; the writer thread
//! then copies only what was written during the pass, so the WAL starts over (see
//! `checkpointer.rs`).
//!
//! Reads of a file database use a small pool of read connections on tokio's blocking pool
//! (`get_tuple`, one checkpoint, runs right on the calling thread when a read connection is
//! free); WAL mode lets them read while the writer writes. `get_tuple_known` (the runtime's
//! check of a thread's head, which skips the values the runtime holds: a small read) first
//! tries the write connection itself: when nothing holds it, the read runs there, on the
//! calling thread. A read connection drops its page cache whenever another connection has
//! committed, so a chat turn reading the head it has just written would read those pages
//! from the file again; the write connection still holds them. Several processes (or
//! several `SqliteSaver`s) can share one file: each writer waits up to the busy timeout for
//! the write lock. An in-memory database has a single connection, owned by the writer
//! thread, which serves reads too (`get_tuple_known` on the calling thread when it is
//! idle).
//!
//! ## Durability: `synchronous`
//!
//! Files always use WAL. [`SqliteOptions::synchronous`] picks what a committed checkpoint
//! survives:
//!
//! | level | process crash / kill | OS crash, power loss |
//! |---|---|---|
//! | [`Synchronous::Off`] | survives | may lose commits or corrupt the file |
//! | [`Synchronous::Normal`] (default) | survives | may lose the latest commits; file stays consistent |
//! | [`Synchronous::Full`] | survives | survives |

#![warn(missing_docs)]

mod checkpointer;
mod header;
mod id_key;
mod leb128;
mod ops;
mod options;
mod packed_writes;
mod read;
mod schema;
mod stored_metadata;
mod stored_text;
mod stored_value;
mod txn;
mod version_key;
mod write_refs;
mod writer;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{mpsc, oneshot};

use cairn_checkpoint::{
    AppendValue, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointTuple, Error, KnownValues, ListQuery, PruneStrategy, PutRequest,
    Result, ThreadSummary, TypedValue,
};

pub use options::{SqliteOptions, Synchronous};
/// The SQLite driver Cairn uses, for [`SqliteSaver::register_sql_functions`].
pub use rusqlite;
pub use schema::SCHEMA_VERSION;

use read::ReadPool;
use version_key::VersionKey;
pub use writer::WriterStats;
use writer::{writer_stopped, Counters, Job};

/// Wraps a rusqlite error as [`Error::Backend`], saying what was being done (and what to
/// do when the database was locked for longer than the busy timeout).
pub(crate) fn sql_error(what: impl fmt::Display) -> impl FnOnce(rusqlite::Error) -> Error {
    move |e| {
        let busy = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        let hint = if busy {
            " (another process held the write lock past the busy timeout; \
             raise SqliteOptions::busy_timeout)"
        } else {
            ""
        };
        Error::backend("sqlite", format!("{what}{hint}"), e)
    }
}

/// Pauses between tries of something a busy database refused: 1 ms, doubling up to 20 ms.
struct BusyBackoff(std::time::Duration);

impl BusyBackoff {
    fn new() -> Self {
        BusyBackoff(std::time::Duration::from_millis(1))
    }

    /// The next pause.
    fn next(&mut self) -> std::time::Duration {
        let pause = self.0;
        self.0 = (pause * 2).min(std::time::Duration::from_millis(20));
        pause
    }
}

/// Runs `f` again while it fails with "database is busy/locked", for at most `timeout`,
/// backing off ([`BusyBackoff`]). For the few statements SQLite does not run through the
/// busy handler.
pub(crate) fn retry_busy<T>(
    timeout: std::time::Duration,
    mut f: impl FnMut() -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let deadline = std::time::Instant::now() + timeout;
    let mut backoff = BusyBackoff::new();
    loop {
        match f() {
            Err(e)
                if matches!(
                    e.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(backoff.next());
            }
            other => return other,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConnectionRole {
    Writer,
    Reader,
}

/// Opens one connection to a file database and applies the per-connection settings.
pub(crate) fn open_connection(
    path: &Path,
    options: &SqliteOptions,
    role: ConnectionRole,
) -> Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(sql_error(format!("opening {}", path.display())))?;
    configure(&conn, options, role, true)?;
    Ok(conn)
}

fn configure(
    conn: &Connection,
    options: &SqliteOptions,
    role: ConnectionRole,
    file: bool,
) -> Result<()> {
    conn.busy_timeout(options.busy_timeout_duration())
        .map_err(sql_error("setting the busy timeout"))?;
    SqliteSaver::register_sql_functions(conn)?;
    if file && role == ConnectionRole::Writer {
        // Switching a new file to WAL needs an exclusive lock, and SQLite reports a busy
        // database here without calling the busy handler: retry until the busy timeout.
        let mode: String = retry_busy(options.busy_timeout_duration(), || {
            // Read first: a file already in WAL mode (the common case) needs no switch.
            conn.query_row("SELECT COUNT(*) FROM sqlite_schema", [], |_| Ok(()))?;
            let mode: String = conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            if mode.eq_ignore_ascii_case("wal") {
                return Ok(mode);
            }
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        })
        .map_err(sql_error("switching to WAL mode"))?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(mode, "SQLite did not switch to WAL mode");
        }
    }
    match role {
        ConnectionRole::Writer => {
            conn.pragma_update(None, "synchronous", options.synchronous_level().as_sql())
                .map_err(sql_error("setting synchronous"))?;
            if file {
                // Copy the WAL into the database every 1 000 pages (4 MB, SQLite's own
                // threshold), on the checkpointer thread: the hook replaces SQLite's
                // automatic checkpoint, which would run on whichever thread committed. With
                // append values a commit adds a few pages at most, so the WAL, not the
                // data, would dominate the files of a larger threshold (10 000 pages made a
                // 1.4 MB database come with a 26 MB WAL); the smaller WAL also makes a
                // `sync` commit's fsync cheaper.
                conn.wal_hook(Some(writer::wal_hook));
                // After a checkpoint resets the WAL, keep at most this much of its file
                // (the size the WAL reaches between two checkpoints).
                conn.pragma_update(None, "journal_size_limit", 4i64 << 20)
                    .map_err(sql_error("setting journal_size_limit"))?;
            }
        }
        ConnectionRole::Reader => {
            conn.pragma_update(None, "query_only", true)
                .map_err(sql_error("making a read connection read-only"))?;
            conn.pragma_update(None, "mmap_size", 256i64 << 20)
                .map_err(sql_error("setting mmap_size"))?;
        }
    }
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(sql_error("setting temp_store"))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

struct Inner {
    writer: mpsc::Sender<Job>,
    /// The write connection, for committing a write inline when nothing else is writing.
    /// `None` in memory and under `synchronous=FULL`/`EXTRA` (a commit then waits for
    /// fsync, too long to block an async worker).
    inline: Option<writer::SharedConn>,
    /// The write connection again, for reading a checkpoint on it when it is idle: its page
    /// cache survives its own commits, where a read connection's is dropped after every
    /// commit and re-read from the file.
    writer_conn: writer::SharedConn,
    /// Asks the checkpointer thread to copy the WAL (`None` in memory: no WAL).
    checkpoints: Option<checkpointer::CheckpointRequests>,
    busy_timeout: std::time::Duration,
    /// The writer thread, joined when the last handle is dropped.
    writer_thread: Option<std::thread::JoinHandle<()>>,
    /// Gets a message once the writer thread has closed its connection.
    writer_stopped: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    /// `None` for an in-memory database: the writer connection serves reads.
    readers: Option<Arc<ReadPool>>,
    path: Option<PathBuf>,
    counters: Arc<Counters>,
    /// Whether writes come one at a time, deciding when a write may commit inline.
    concurrency: WriteConcurrency,
}

/// Writes that overlap no other since [`SOLO_STREAK`] writes commit inline; any overlap
/// sends the following writes to the writer thread, where they commit in groups. Committing
/// inline whenever the connection was free, many concurrent runs (W4 with 64 threads) split
/// group commit into a transaction each and held up the async workers while they committed:
/// with this rule that workload's median throughput rose by about 12% (8 alternating runs),
/// while a single run's turns keep the inline commit's saved thread hops (after its first
/// eight writes, and eight after any overlap).
#[derive(Default)]
struct WriteConcurrency {
    /// Writes begun and not yet answered.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Writes in a row that began with no other under way.
    solo_streak: std::sync::atomic::AtomicU32,
}

/// See [`WriteConcurrency`].
const SOLO_STREAK: u32 = 8;

impl WriteConcurrency {
    /// Enters a write, counted until the guard is dropped; also whether it may commit inline.
    fn enter(&self) -> (InFlight<'_>, bool) {
        use std::sync::atomic::Ordering;
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let inline = if before == 0 {
            // Capped in one step, so an overlapping write's reset in between is never lost.
            let streak = self
                .solo_streak
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |s| {
                    Some((s + 1).min(SOLO_STREAK))
                })
                .unwrap_or_else(|s| s);
            streak >= SOLO_STREAK
        } else {
            self.solo_streak.store(0, Ordering::Relaxed);
            false
        };
        (InFlight(&self.in_flight), inline)
    }
}

/// Counts a write in [`WriteConcurrency::in_flight`] until dropped.
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// How long dropping the last handle inside an async runtime waits for the writer thread to
/// close its connection before leaving it to finish on its own (so a tokio worker is never
/// held for long).
const ASYNC_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

impl Drop for Inner {
    /// Stops the writer thread: it commits what is queued, closes its connection (which
    /// copies the WAL into the database and removes the `-wal` and `-shm` files, once the
    /// read connections are closed too) and exits. Outside an async runtime this waits for
    /// it; inside one, at most [`ASYNC_CLOSE_WAIT`].
    fn drop(&mut self) {
        // Read connections first, so the writer's is the last one and cleans up the WAL.
        self.readers = None;
        self.inline = None;
        // Dropping the only sender ends the writer's loop.
        let (closed, _) = mpsc::channel(1);
        drop(std::mem::replace(&mut self.writer, closed));
        let Some(thread) = self.writer_thread.take() else {
            return;
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            let stopped = self
                .writer_stopped
                .get_mut()
                .unwrap_or_else(|p| p.into_inner());
            if stopped.recv_timeout(ASYNC_CLOSE_WAIT).is_err() {
                tracing::debug!("the SQLite writer thread is still closing; not waiting");
                return;
            }
        }
        if thread.join().is_err() {
            tracing::error!("the SQLite writer thread panicked");
        }
    }
}

/// A [`CheckpointSaver`] on SQLite. Cheap to clone (clones share the writer thread and
/// read pool); see the [crate docs](crate) for the design.
#[derive(Clone)]
pub struct SqliteSaver {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqliteSaver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteSaver")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

impl SqliteSaver {
    /// Opens (creating if needed) the database file at `path` with default options, and
    /// brings its schema up to date.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        SqliteSaver::open_with(path, SqliteOptions::default())
    }

    /// Opens the Cairn database file at `path` with default options, refusing to make one: a
    /// missing file, an empty one, a file that is not SQLite, or a SQLite database without
    /// Cairn's tables (LangGraph's, say) is an [`Error::InvalidArgument`] that says which,
    /// and the file is left as it was (it is looked at read-only first). For tools that
    /// inspect databases, where a mistyped path should not become a new empty database. An
    /// older Cairn schema is brought up to date, as [`open`](Self::open) does.
    ///
    /// ```
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("typo.db");
    /// assert!(cairn_sqlite::SqliteSaver::open_existing(&path).is_err());
    /// assert!(!path.exists(), "nothing created");
    /// ```
    pub fn open_existing(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let shown = path.display();
        if !path.is_file() {
            return Err(Error::InvalidArgument(format!(
                "{shown} is not a file: no Cairn database there"
            )));
        }
        if std::fs::metadata(path).is_ok_and(|m| m.len() == 0) {
            return Err(Error::InvalidArgument(format!(
                "{shown} is empty, not a Cairn database"
            )));
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql_error(format!("opening {shown} read-only")))?;
        let tables: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            .and_then(|mut stmt| {
                stmt.query_map([], |row| row.get::<_, String>(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(|e| {
                Error::InvalidArgument(format!("{shown} is not a SQLite database ({e})"))
            })?;
        drop(conn);
        if !tables.iter().any(|t| t == "cairn_migrations") {
            let holds = if tables.is_empty() {
                "no tables".to_owned()
            } else {
                format!("tables {}", tables.join(", "))
            };
            return Err(Error::InvalidArgument(format!(
                "{shown} is a SQLite database but not a Cairn one (it holds {holds}; Cairn's \
                 have a cairn_migrations table): left as it is"
            )));
        }
        SqliteSaver::open(path)
    }

    /// Opens the database file at `path` with `options`.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut conn = open_connection(&path, &options, ConnectionRole::Writer)?;
        schema::migrate(&mut conn)?;
        let readers = ReadPool::new(path.clone(), options.clone())?;
        let checkpointer = checkpointer::Checkpointer::start(open_connection(
            &path,
            &options,
            ConnectionRole::Writer,
        )?)?;
        let counters = Arc::new(Counters::default());
        let handle = writer::spawn(
            conn,
            options.max_batch_size(),
            Arc::clone(&counters),
            Some(checkpointer),
        )?;
        tracing::debug!(path = %path.display(), "opened SQLite checkpoint store");
        Ok(SqliteSaver {
            inner: Arc::new(Inner {
                writer: handle.jobs,
                inline: matches!(
                    options.synchronous_level(),
                    Synchronous::Off | Synchronous::Normal
                )
                .then(|| Arc::clone(&handle.conn)),
                writer_conn: handle.conn,
                checkpoints: handle.checkpoints,
                busy_timeout: options.busy_timeout_duration(),
                writer_thread: Some(handle.thread),
                writer_stopped: std::sync::Mutex::new(handle.stopped),
                readers: Some(Arc::new(readers)),
                path: Some(path),
                counters,
                concurrency: WriteConcurrency::default(),
            }),
        })
    }

    /// A private in-memory database, gone when the saver (and its clones) are dropped.
    pub fn in_memory() -> Result<Self> {
        SqliteSaver::in_memory_with(SqliteOptions::default())
    }

    /// A private in-memory database with `options`.
    pub fn in_memory_with(options: SqliteOptions) -> Result<Self> {
        let mut conn =
            Connection::open_in_memory().map_err(sql_error("opening an in-memory database"))?;
        configure(&conn, &options, ConnectionRole::Writer, false)?;
        schema::migrate(&mut conn)?;
        let counters = Arc::new(Counters::default());
        let handle = writer::spawn(conn, options.max_batch_size(), Arc::clone(&counters), None)?;
        Ok(SqliteSaver {
            inner: Arc::new(Inner {
                writer: handle.jobs,
                inline: None,
                writer_conn: handle.conn,
                checkpoints: None,
                busy_timeout: options.busy_timeout_duration(),
                writer_thread: Some(handle.thread),
                writer_stopped: std::sync::Mutex::new(handle.stopped),
                readers: None,
                path: None,
                counters,
                concurrency: WriteConcurrency::default(),
            }),
        })
    }

    /// Registers Cairn's SQL functions on a connection of your own, to read a Cairn file with
    /// SQL: `cairn_id_text` (an id column as text), `cairn_version_text` (a version column),
    /// `cairn_stored_text` (a type tag or task path), `cairn_metadata_json` (metadata as
    /// JSON), `cairn_pending_writes_json` (the writes stored in a checkpoint row, as a JSON
    /// array), and the ones Cairn's own statements use. Connections the saver opens have them
    /// already.
    ///
    /// ```
    /// use cairn_sqlite::{rusqlite::Connection, SqliteSaver};
    /// let conn = Connection::open_in_memory()?;
    /// SqliteSaver::register_sql_functions(&conn)?;
    /// let json: String =
    ///     conn.query_row("SELECT cairn_metadata_json('{\"step\":1}')", [], |r| r.get(0))?;
    /// assert_eq!(json, r#"{"step":1}"#);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn register_sql_functions(conn: &Connection) -> Result<()> {
        version_key::register_functions(conn)?;
        id_key::register_functions(conn)?;
        stored_text::register_functions(conn)?;
        stored_metadata::register_functions(conn)?;
        packed_writes::register_functions(conn)
    }

    /// The database file, `None` in memory.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// Bytes the store occupies: the database file plus its WAL (page count × page size in
    /// memory).
    pub async fn storage_bytes(&self) -> Result<u64> {
        if let Some(path) = &self.inner.path {
            let mut total = 0;
            let mut wal = path.clone().into_os_string();
            wal.push("-wal");
            for file in [path.clone(), PathBuf::from(wal)] {
                match std::fs::metadata(&file) {
                    Ok(m) => total += m.len(),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(Error::backend(
                            "sqlite",
                            format!("reading the size of {}", file.display()),
                            e,
                        ))
                    }
                }
            }
            return Ok(total);
        }
        self.on_writer(|conn| {
            conn.query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| u64::try_from(n).unwrap_or(0))
            .map_err(sql_error("reading the database size"))
        })
        .await
    }

    /// Copies the WAL into the database file and truncates it (`PRAGMA
    /// wal_checkpoint(TRUNCATE)`). SQLite does this on its own from time to time; call it to
    /// measure the database size or before copying the file. A no-op in memory.
    ///
    /// A checkpoint that cannot complete is an error, not a silent no-op: while the saver's
    /// own background pass holds the checkpoint lock it waits for the pass and tries again,
    /// otherwise it tries again after a short pause, up to the busy timeout; past it (a read
    /// transaction of another connection or process still needs the WAL, say) the error says
    /// so.
    pub async fn checkpoint_wal(&self) -> Result<()> {
        if self.inner.path.is_none() {
            return Ok(());
        }
        let deadline = std::time::Instant::now() + self.inner.busy_timeout;
        let mut backoff = BusyBackoff::new();
        loop {
            // The first column of the pragma's row is 1 when the checkpoint did not complete.
            let busy = self
                .on_writer(|conn| {
                    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
                        r.get::<_, i64>(0)
                    })
                    .map_err(sql_error("checkpointing the WAL"))
                })
                .await?;
            if busy == 0 {
                return Ok(());
            }
            if std::time::Instant::now() >= deadline {
                return Err(Error::backend(
                    "sqlite",
                    "checkpointing the WAL",
                    std::io::Error::other(
                        "the WAL is still in use (a reader, a writer or another checkpoint of \
                         another connection or process holds it); try again later, or raise \
                         SqliteOptions::busy_timeout",
                    ),
                ));
            }
            // The background pass is the usual holder of the checkpoint lock: wait for it.
            // SQLite does not wait for a checkpoint lock held elsewhere (another saver on the
            // file, the sqlite3 shell): back off instead of spinning.
            let waited = match self.inner.checkpoints.clone() {
                Some(requests) => {
                    tokio::task::spawn_blocking(move || requests.wait_while_running())
                        .await
                        .map_err(|e| Error::backend("sqlite", "waiting for a WAL checkpoint", e))?
                }
                None => false,
            };
            if !waited {
                tokio::time::sleep(backoff.next()).await;
            }
        }
    }

    /// How many transactions the writer thread committed, for how many write requests
    /// (requests / batches is the group-commit factor).
    pub fn writer_stats(&self) -> WriterStats {
        self.inner
            .counters
            .snapshot(self.inner.checkpoints.as_ref())
    }

    /// The schema version of the open database (the highest migration applied).
    pub async fn schema_version(&self) -> Result<i64> {
        self.read(|conn| {
            conn.query_row("SELECT MAX(version) FROM cairn_migrations", [], |r| {
                r.get::<_, i64>(0)
            })
            .map_err(sql_error("reading the schema version"))
        })
        .await
    }

    /// Runs `f` on the writer connection, outside any transaction.
    async fn on_writer<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Job::Direct(Box::new(move |conn| {
            let _ = tx.send(f(conn));
        }));
        self.inner
            .writer
            .send(job)
            .await
            .map_err(|_| writer_stopped())?;
        rx.await.map_err(|_| writer_stopped())?
    }

    /// Runs `f` on a read connection (the writer connection in memory).
    async fn read<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        match &self.inner.readers {
            Some(pool) => pool.run(f).await,
            None => self.on_writer(f).await,
        }
    }

    /// `get_tuple`, leaving out the values `known` names.
    async fn get_tuple_with(
        &self,
        config: &CheckpointConfig,
        known: Option<read::Known>,
    ) -> Result<Option<CheckpointTuple>> {
        let config = config.clone();
        let small = known.is_some();
        let mut read = move |conn: &mut Connection| read::get_tuple(conn, &config, known.as_ref());
        // A read that skips the values the caller holds (the runtime checking a thread's
        // head at the start of a run) is small: on the write connection when it is idle (a
        // chat turn reads the head it has just committed, whose pages are in that
        // connection's cache). Other reads, however large the state, never hold up commits.
        if small {
            read = match writer::try_read_inline(&self.inner.writer_conn, read) {
                Ok(result) => return result,
                Err(back) => back,
            };
        }
        match &self.inner.readers {
            // One checkpoint: small enough to read without the hop to the blocking pool.
            Some(pool) => pool.run_small(read).await,
            None => self.on_writer(read).await,
        }
    }

    /// Commits a change, on the calling thread when writes have been coming one at a time
    /// (see [`WriteConcurrency`]) and the synchronous level allows it, else through the
    /// writer thread; waits until it is committed.
    async fn write<F>(&self, op: F) -> Result<()>
    where
        F: Fn(&Connection) -> Result<()> + Send + 'static,
    {
        let mut op: writer::WriteOp = Box::new(op);
        let (_in_flight, may_inline) = self.inner.concurrency.enter();
        if let Some(shared) = self.inner.inline.as_ref().filter(|_| may_inline) {
            match writer::try_inline(shared, op, self.inner.busy_timeout, &self.inner.counters) {
                Ok(result) => {
                    let checkpoints = &self.inner.checkpoints;
                    if let Some((c, next)) = checkpoints
                        .as_ref()
                        .and_then(|c| c.after_commit().map(|next| (c.clone(), next)))
                    {
                        // On the writer thread, never an async worker. Best effort: when
                        // the queue is full the writer is busy anyway, and a later commit
                        // past the threshold asks again.
                        let job = Job::Direct(Box::new(move |conn| next.run(&c, conn)));
                        let _ = self.inner.writer.try_send(job);
                    }
                    return result;
                }
                Err(back) => op = back,
            }
        }
        self.send_to_writer(op).await
    }

    /// Queues a change for the writer thread and waits until it is committed.
    async fn write_queued(&self, op: writer::WriteOp) -> Result<()> {
        let (_in_flight, _) = self.inner.concurrency.enter();
        self.send_to_writer(op).await
    }

    async fn send_to_writer(&self, op: writer::WriteOp) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.inner
            .writer
            .send(Job::Write { op, reply })
            .await
            .map_err(|_| writer_stopped())?;
        rx.await.map_err(|_| writer_stopped())?
    }
}

/// The run id `metadata` names: its `run_id`, or a `run_id` string among the caller's own
/// keys (LangGraph's form). The metadata is [checked](CheckpointMetadata::check) first: a
/// caller key named like a field, or a `run_id` key other than the run id, is refused.
fn run_id_of(metadata: &CheckpointMetadata) -> Result<Option<&str>> {
    metadata.check()?;
    Ok(
        match (metadata.run_id.as_deref(), metadata.extra.get("run_id")) {
            (None, Some(serde_json::Value::String(run_id))) => Some(run_id),
            (run_id, _) => run_id,
        },
    )
}

/// Encodes `checkpoint` for [`ops::put`] (off the writer thread); also returns the config
/// naming it.
fn put_row(
    config: &CheckpointConfig,
    checkpoint: Checkpoint,
    metadata: &CheckpointMetadata,
    new_versions: ChannelVersions,
) -> Result<(ops::PutRow, CheckpointConfig)> {
    let mut checkpoint = checkpoint;
    let mut values = std::mem::take(&mut checkpoint.channel_values);
    // Already an `Error::Encode` that names the checkpoint header.
    let header = header::encode(&checkpoint)?;
    let run_id = run_id_of(metadata)?.map(str::to_owned);
    let metadata = stored_metadata::encode(metadata).map_err(|message| Error::Encode {
        format: "json",
        message,
    })?;
    // A channel updated to no value (an empty marker, or no value given) gets no row: a
    // version without a row reads as no value, exactly as an empty marker does, and a
    // consumed trigger channel is one such version per step.
    let blobs = new_versions
        .into_iter()
        .filter_map(|(channel, version)| {
            let value = values.remove(&channel)?;
            (!value.is_empty_marker()).then_some((channel, version, value))
        })
        .map(|(channel, version, value)| {
            let version = version.to_storage_string();
            // A malformed append value could never be read back: refuse it now rather than
            // leave the thread unreadable.
            let append = AppendValue::parse(&value).map_err(|e| {
                Error::InvalidArgument(format!(
                    "cannot store channel {channel:?} version {version} of thread {:?}: {e}",
                    config.thread_id
                ))
            })?;
            Ok(ops::BlobRow {
                channel,
                key: VersionKey::from_storage_string(&version),
                base_key: append
                    .as_ref()
                    .map(|a| VersionKey::from_storage_string(&a.base)),
                version,
                value: stored_value::to_row(value, append.as_ref()),
            })
        })
        .collect::<Result<_>>()?;
    let row = ops::PutRow {
        thread_id: config.thread_id.clone(),
        checkpoint_ns: config.checkpoint_ns.clone(),
        checkpoint_id: checkpoint.id.clone(),
        parent_id: config.checkpoint_id.clone(),
        header,
        metadata,
        run_id,
        blobs,
        writes: None,
    };
    let stored = CheckpointConfig {
        thread_id: config.thread_id.clone(),
        checkpoint_ns: config.checkpoint_ns.clone(),
        checkpoint_id: Some(checkpoint.id),
    };
    Ok((row, stored))
}

/// The row [`ops::put_writes`] stores, or `None` when there are no writes; an error when
/// `config` names no checkpoint.
fn writes_row(
    config: &CheckpointConfig,
    writes: Vec<(String, TypedValue)>,
    task_id: &str,
    task_path: &str,
) -> Result<Option<ops::WritesRow>> {
    let Some(checkpoint_id) = config.checkpoint_id.clone() else {
        return Err(Error::InvalidArgument(
            "put_writes needs a config with a checkpoint_id: writes belong to a checkpoint".into(),
        ));
    };
    if writes.is_empty() {
        return Ok(None);
    }
    Ok(Some(ops::WritesRow {
        thread_id: config.thread_id.clone(),
        checkpoint_ns: config.checkpoint_ns.clone(),
        checkpoint_id,
        task_id: task_id.to_owned(),
        task_path: task_path.to_owned(),
        writes,
    }))
}

/// Which thread commits a batch.
#[derive(Clone, Copy)]
enum Committer {
    /// Always the writer thread (the caller goes on meanwhile).
    WriterThread,
    /// The calling thread when writes come one at a time and the writer is idle (see
    /// [`WriteConcurrency`]), else the writer thread.
    CallingThreadWhenIdle,
}

impl SqliteSaver {
    /// Encodes `requests` here and stores them in one write request committed by `committer`.
    async fn store_batch(
        &self,
        requests: Vec<PutRequest>,
        committer: Committer,
    ) -> Result<Vec<CheckpointConfig>> {
        let (writes, rows, stored) = batch_rows(requests)?;
        if rows.is_empty() {
            return Ok(stored);
        }
        let op = move |conn: &Connection| ops::store(conn, &writes, &rows);
        match committer {
            Committer::WriterThread => self.write_queued(Box::new(op)).await?,
            Committer::CallingThreadWhenIdle => self.write(op).await?,
        }
        Ok(stored)
    }
}

/// A batch's rows, encoded off the writer thread: the tasks' writes, the checkpoints, and the
/// configs naming the stored checkpoints.
type BatchRows = (
    Vec<ops::LooseWrites>,
    Vec<ops::PutRow>,
    Vec<CheckpointConfig>,
);

fn batch_rows(requests: Vec<PutRequest>) -> Result<BatchRows> {
    let mut rows = Vec::with_capacity(requests.len());
    let mut writes = Vec::new();
    let mut stored = Vec::with_capacity(requests.len());
    for request in requests {
        let mut own = Vec::with_capacity(request.writes.len());
        for w in request.writes {
            own.extend(writes_row(
                &request.config,
                w.writes,
                &w.task_id,
                &w.task_path,
            )?);
        }
        let (row, config) = put_row(
            &request.config,
            request.checkpoint,
            &request.metadata,
            request.new_versions,
        )?;
        write_refs::link(&mut own, &row);
        writes.append(&mut own);
        rows.push(row);
        stored.push(config);
    }
    write_refs::link_values(&mut rows);
    // The runtime sends each step's writes with the next checkpoint: they go into the row of
    // the checkpoint they belong to when this batch stores it.
    let writes = ops::attach_writes(writes, &mut rows);
    Ok((writes, rows, stored))
}

#[async_trait]
impl CheckpointSaver for SqliteSaver {
    fn get_next_version_in_run(
        &self,
        current: Option<&cairn_checkpoint::ChannelVersion>,
        run_suffix: u64,
    ) -> cairn_checkpoint::ChannelVersion {
        cairn_checkpoint::ChannelVersion::next_in_run(current, run_suffix)
    }

    async fn get_tuple(&self, config: &CheckpointConfig) -> Result<Option<CheckpointTuple>> {
        self.get_tuple_with(config, None).await
    }

    /// The known channels' values are not read, nor are the append chains behind them: a
    /// runtime holding a thread's state reads the latest checkpoint in three queries,
    /// however long its chains.
    async fn get_tuple_known(
        &self,
        config: &CheckpointConfig,
        known: KnownValues<'_>,
    ) -> Result<Option<CheckpointTuple>> {
        let known = read::Known {
            checkpoint_id: known.checkpoint_id.to_owned(),
            channels: known.channels.iter().map(|c| (*c).to_owned()).collect(),
        };
        self.get_tuple_with(config, Some(known)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<CheckpointTuple>> {
        let query = query.clone();
        self.read(move |conn| read::list(conn, &query)).await
    }

    async fn list_threads(&self, after: Option<&str>, limit: usize) -> Result<Vec<ThreadSummary>> {
        let after = after.map(str::to_owned);
        self.read(move |conn| read::list_threads(conn, after.as_deref(), limit))
            .await
    }

    async fn put(
        &self,
        config: &CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        let (row, stored) = put_row(config, checkpoint, &metadata, new_versions)?;
        self.write(move |conn| ops::put(conn, &row)).await?;
        Ok(stored)
    }

    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> Result<()> {
        match writes_row(config, writes, task_id, task_path)? {
            Some(row) => {
                let writes = ops::LooseWrites::from(row);
                self.write(move |conn| ops::put_writes(conn, &writes)).await
            }
            None => Ok(()),
        }
    }

    /// Both in one write request, so stored together or not at all, with one commit.
    async fn put_writes_and_put(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        let mut writes = writes_row(config, writes, task_id, task_path)?;
        let (row, stored) = put_row(config, checkpoint, &metadata, new_versions)?;
        write_refs::link(writes.as_mut_slice(), &row);
        let writes: Vec<ops::LooseWrites> = writes.into_iter().map(Into::into).collect();
        self.write(move |conn| ops::store(conn, &writes, std::slice::from_ref(&row)))
            .await?;
        Ok(stored)
    }

    /// The whole batch in one write request, so stored together or not at all, with one
    /// commit (shared with other callers' requests by group commit). The request always goes
    /// to the writer thread, never committing on the calling thread: a runtime calls this in
    /// the background while its run goes on, and the writer thread commits while the run
    /// computes its next steps.
    async fn put_batch(&self, requests: Vec<PutRequest>) -> Result<Vec<CheckpointConfig>> {
        self.store_batch(requests, Committer::WriterThread).await
    }

    /// Commits on the calling thread when writes come one at a time and the writer is idle (as
    /// `put` does), since the caller waits anyway: no hop to the writer thread and back.
    async fn put_batch_now(&self, requests: Vec<PutRequest>) -> Result<Vec<CheckpointConfig>> {
        self.store_batch(requests, Committer::CallingThreadWhenIdle)
            .await
    }

    async fn delete_thread(&self, thread_id: &str) -> Result<()> {
        let thread_id = thread_id.to_owned();
        self.write(move |conn| ops::delete_thread(conn, &thread_id))
            .await
    }

    async fn copy_thread(&self, source_thread_id: &str, target_thread_id: &str) -> Result<()> {
        let (source, target) = (source_thread_id.to_owned(), target_thread_id.to_owned());
        self.write(move |conn| ops::copy_thread(conn, &source, &target))
            .await
    }

    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()> {
        if thread_ids.is_empty() {
            return Ok(());
        }
        let thread_ids = thread_ids.to_vec();
        self.write(move |conn| {
            for thread_id in &thread_ids {
                match strategy {
                    PruneStrategy::KeepLatest => ops::keep_latest(conn, thread_id)?,
                    PruneStrategy::Delete => ops::delete_thread(conn, thread_id)?,
                }
            }
            Ok(())
        })
        .await
    }

    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()> {
        if run_ids.is_empty() {
            return Ok(());
        }
        let run_ids = serde_json::to_string(run_ids).map_err(|e| Error::Encode {
            format: "json",
            message: format!("encoding run ids: {e}"),
        })?;
        self.write(move |conn| ops::delete_for_runs(conn, &run_ids))
            .await
    }
}

#[cfg(test)]
mod tests;

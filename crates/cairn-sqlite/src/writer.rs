//! The writer thread: one connection, group commit.
//!
//! Every change goes through one dedicated thread that owns the only write connection. It
//! waits for a request, then drains whatever else is queued (up to `max_batch`) and commits
//! all of it in ONE transaction. A failing request is rolled back alone and its caller gets
//! the error, while the others still commit: the batch is first run straight through, and
//! only if a request fails is it rolled back and run again with each request inside its own
//! SAVEPOINT (a savepoint per request costs two statements and a copy of every page it
//! touches into the sub-journal, about a sixth of the writer's work on W4's batches, for a
//! failure that almost never comes). Each caller is answered through its own oneshot channel
//! once the transaction has committed, so an `Ok` always means "durable at the configured
//! synchronous level".

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot};

use cairn_checkpoint::{Error, Result};

use crate::checkpointer::{CheckpointRequests, Checkpointer};
use crate::txn::{Savepoint, Transaction};

/// A change to apply inside the batch transaction. `Fn`, not `FnOnce`: a batch in which one
/// request failed is rolled back and run again, one savepoint per request.
pub(crate) type WriteOp = Box<dyn Fn(&Connection) -> Result<()> + Send>;
/// Work run on the writer connection outside any transaction (reads of an in-memory
/// database, WAL checkpoints). It answers its caller itself.
pub(crate) type DirectOp = Box<dyn FnOnce(&mut Connection) + Send>;

/// A request to the writer thread.
pub(crate) enum Job {
    /// A change, answered after commit.
    Write {
        op: WriteOp,
        reply: oneshot::Sender<Result<()>>,
    },
    /// Work outside transactions.
    Direct(DirectOp),
}

/// Counters of the writer thread, shared with the saver.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    batches: AtomicU64,
    requests: AtomicU64,
}

impl Counters {
    /// Counts a committed transaction that held `requests` requests.
    fn committed(&self, requests: usize) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(requests as u64, Ordering::Relaxed);
    }

    /// The counts so far, with the WAL checkpoints `checkpoints` has run (none in memory).
    pub(crate) fn snapshot(&self, checkpoints: Option<&CheckpointRequests>) -> WriterStats {
        WriterStats {
            batches: self.batches.load(Ordering::Relaxed),
            requests: self.requests.load(Ordering::Relaxed),
            wal_checkpoints: checkpoints.map_or(0, CheckpointRequests::completed),
        }
    }
}

/// What the writer thread has committed so far: how well group commit is batching.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct WriterStats {
    /// Transactions committed.
    pub batches: u64,
    /// Write requests committed in them (successful or individually rolled back).
    pub requests: u64,
    /// WAL checkpoints run in the background (one per 1 000 WAL pages written).
    pub wal_checkpoints: u64,
}

/// The error callers get when the writer thread is gone.
pub(crate) fn writer_stopped() -> Error {
    Error::Backend {
        backend: "sqlite",
        message: "the SQLite writer thread has stopped (or the request panicked), so this \
                  saver can no longer write; see earlier errors in the log and reopen the saver"
            .into(),
        source: None,
    }
}

/// The write connection, shared by the writer thread and callers that commit inline.
/// `None` once the writer thread has closed it.
pub(crate) type SharedConn = Arc<std::sync::Mutex<Option<Connection>>>;

/// The running writer thread: its queue, and what tells when it has closed its connection.
pub(crate) struct WriterHandle {
    pub(crate) jobs: mpsc::Sender<Job>,
    pub(crate) conn: SharedConn,
    /// Asks the checkpointer thread (of a file database) to copy the WAL.
    pub(crate) checkpoints: Option<CheckpointRequests>,
    pub(crate) thread: std::thread::JoinHandle<()>,
    pub(crate) stopped: std::sync::mpsc::Receiver<()>,
}

/// Starts the writer thread owning `conn` (and `checkpointer`, stopped before `conn` is
/// closed, so the writer's connection is the last one and cleans up the WAL).
pub(crate) fn spawn(
    conn: Connection,
    max_batch: usize,
    counters: Arc<Counters>,
    checkpointer: Option<Checkpointer>,
) -> Result<WriterHandle> {
    let checkpoints = checkpointer.as_ref().map(Checkpointer::requests);
    let (tx, rx) = mpsc::channel(max_batch.max(1) * 4);
    let (stopped_tx, stopped) = std::sync::mpsc::channel();
    let conn: SharedConn = Arc::new(std::sync::Mutex::new(Some(conn)));
    let shared = Arc::clone(&conn);
    let thread = std::thread::Builder::new()
        .name("cairn-sqlite-writer".into())
        .spawn(move || {
            run(&shared, rx, max_batch, &counters, checkpointer);
            let _ = stopped_tx.send(());
        })
        .map_err(|e| Error::backend("sqlite", "starting the writer thread", e))?;
    Ok(WriterHandle {
        jobs: tx,
        conn,
        checkpoints,
        thread,
        stopped,
    })
}

/// WAL size, in pages, past which a commit asks the checkpointer thread to copy the WAL
/// into the database (a PASSIVE checkpoint; SQLite's own automatic checkpoint would run on
/// whichever thread committed, possibly an async worker, holding up that commit, so it is
/// replaced by this).
pub(crate) const CHECKPOINT_PAGES: i32 = 1_000;

thread_local! {
    /// Pages in the WAL after the last commit on this thread (set by [`wal_hook`]).
    static WAL_PAGES: std::cell::Cell<i32> = const { std::cell::Cell::new(0) };
}

/// Installed on the write connection in place of SQLite's automatic checkpoint: only notes
/// the WAL size.
pub(crate) fn wal_hook(_: &rusqlite::hooks::Wal, pages: std::ffi::c_int) -> rusqlite::Result<()> {
    WAL_PAGES.with(|p| p.set(pages));
    Ok(())
}

/// The WAL's size in pages if the last commit on this thread left it past
/// [`CHECKPOINT_PAGES`] (and forgets it, so the checkpoint is asked for once).
pub(crate) fn checkpoint_due() -> Option<i32> {
    let pages = WAL_PAGES.with(|p| p.replace(0));
    (pages >= CHECKPOINT_PAGES).then_some(pages)
}

/// The write connection if nothing holds it. A request that panicked while holding it
/// left it poisoned: its transaction was rolled back when the panic dropped it, so the
/// connection is as good as before and the poison is cleared (else the shortcuts through it
/// would stay off for good).
fn try_lock(conn: &SharedConn) -> Option<std::sync::MutexGuard<'_, Option<Connection>>> {
    match conn.try_lock() {
        Ok(guard) => Some(guard),
        Err(std::sync::TryLockError::Poisoned(poisoned)) => {
            conn.clear_poison();
            Some(poisoned.into_inner())
        }
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

fn lock(conn: &SharedConn) -> std::sync::MutexGuard<'_, Option<Connection>> {
    conn.lock().unwrap_or_else(|p| p.into_inner())
}

/// Commits `op` right here, in its own transaction, if the write connection is free and
/// the write lock of the database can be had without waiting; otherwise hands `op` back
/// (to be queued for the writer thread).
pub(crate) fn try_inline(
    shared: &SharedConn,
    op: WriteOp,
    busy_timeout: std::time::Duration,
    counters: &Counters,
) -> std::result::Result<Result<()>, WriteOp> {
    let Some(mut guard) = try_lock(shared) else {
        return Err(op);
    };
    let Some(conn) = guard.as_mut() else {
        return Err(op);
    };
    // Never wait here for another process's write lock: the writer thread does that.
    if conn.busy_timeout(std::time::Duration::ZERO).is_err() {
        return Err(op);
    }
    let conn: &Connection = conn;
    let tx = match Transaction::write(conn) {
        Ok(tx) => tx,
        Err(_) => {
            let _ = conn.busy_timeout(busy_timeout);
            return Err(op);
        }
    };
    let result = run_alone(&op, tx);
    if let Err(e) = conn.busy_timeout(busy_timeout) {
        tracing::warn!(error = %e, "restoring the busy timeout");
    }
    if result.is_ok() {
        counters.committed(1);
    }
    Ok(result)
}

/// Runs the read `f` right here on the write connection if nothing holds it; otherwise
/// hands `f` back (for a read connection). `f` opens its own read transaction.
pub(crate) fn try_read_inline<T, F>(shared: &SharedConn, f: F) -> std::result::Result<Result<T>, F>
where
    F: FnOnce(&mut Connection) -> Result<T>,
{
    let Some(mut guard) = try_lock(shared) else {
        return Err(f);
    };
    match guard.as_mut() {
        Some(conn) => Ok(f(conn)),
        None => Err(f),
    }
}

fn run(
    shared: &SharedConn,
    mut rx: mpsc::Receiver<Job>,
    max_batch: usize,
    counters: &Counters,
    checkpointer: Option<Checkpointer>,
) {
    let checkpoints = checkpointer.as_ref().map(Checkpointer::requests);
    tracing::debug!("SQLite writer thread started");
    while let Some(first) = rx.blocking_recv() {
        let mut guard = lock(shared);
        let Some(conn) = guard.as_mut() else {
            break;
        };
        let mut batch = vec![first];
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let mut writes: Pending = Vec::new();
        for job in batch {
            match job {
                Job::Write { op, reply } => writes.push((op, reply)),
                Job::Direct(op) => {
                    // Keep request order: commit what came before this job first.
                    commit_batch(conn, std::mem::take(&mut writes), counters);
                    if catch_unwind(AssertUnwindSafe(|| op(conn))).is_err() {
                        tracing::error!("a request on the SQLite writer connection panicked");
                    }
                }
            }
        }
        commit_batch(conn, writes, counters);
        if let Some(checkpoints) = &checkpoints {
            if let Some(next) = checkpoints.after_commit() {
                next.run(checkpoints, conn);
            }
        }
    }
    drop(checkpointer);
    // Closing the last connection to a file copies the WAL into it and removes the WAL
    // and shared-memory files.
    let conn = lock(shared).take();
    if let Some(Err((_, e))) = conn.map(Connection::close) {
        tracing::warn!(error = %e, "closing the SQLite writer connection");
    }
    tracing::debug!("SQLite writer thread stopped: the saver was dropped");
}

/// Runs `op` in `tx` and commits, or rolls back if it fails.
fn run_alone(op: &WriteOp, tx: Transaction<'_>) -> Result<()> {
    match run_op(op, &tx) {
        Ok(()) => tx.commit().map_err(|e| {
            tracing::warn!(error = %e, "committing a write failed");
            batch_error("committing", &e.to_string())
        }),
        Err(err) => {
            if let Err(e) = tx.rollback() {
                tracing::error!(error = %e, "rolling back a failed write");
            }
            Err(err)
        }
    }
}

/// Callers waiting for their request's outcome.
type Pending = Vec<(WriteOp, oneshot::Sender<Result<()>>)>;

/// Runs `writes` in one transaction and answers every caller: straight through, or, if a
/// request fails, again with one savepoint per request.
fn commit_batch(conn: &mut Connection, writes: Pending, counters: &Counters) {
    if writes.is_empty() {
        return;
    }
    let count = writes.len();
    let tx = match Transaction::write(conn) {
        Ok(tx) => tx,
        Err(e) => return fail_all(writes, "starting a write transaction", &e),
    };
    if count == 1 {
        // A single request needs no savepoint: if it fails, rolling back the transaction
        // undoes exactly it.
        let Some((op, reply)) = writes.into_iter().next() else {
            return;
        };
        let result = run_alone(&op, tx);
        if result.is_ok() {
            counters.committed(1);
        }
        let _ = reply.send(result);
        return;
    }
    // Stops at the first failure; its error comes again from the savepoint run below.
    let any_failed = writes.iter().any(|(op, _)| run_op(op, &tx).is_err());
    if !any_failed {
        let result = tx.commit();
        finish(
            writes.into_iter().map(|(_, reply)| (reply, Ok(()))),
            result,
            counters,
        );
        return;
    }
    tracing::debug!(
        requests = count,
        "a request of a write batch failed; storing the batch again, one savepoint each"
    );
    // The write lock is let go in between: another process writing the same file may take
    // it meanwhile, and the second transaction waits for it up to the busy timeout, as any
    // write does.
    if let Err(e) = tx.rollback() {
        return fail_all(writes, "rolling back a failed batch", &e);
    }
    commit_with_savepoints(conn, writes, counters);
}

/// Runs `writes` in one transaction, one savepoint each, so that a failing request is
/// undone alone, and answers every caller. A request whose failure made SQLite roll back the
/// whole transaction (a full disk, say) gets its own error and the others run again without
/// it, in a new transaction.
fn commit_with_savepoints(conn: &mut Connection, mut writes: Pending, counters: &Counters) {
    loop {
        let tx = match Transaction::write(conn) {
            Ok(tx) => tx,
            Err(e) => return fail_all(writes, "starting a write transaction", &e),
        };
        let mut results = Vec::with_capacity(writes.len());
        let mut lost = None;
        for (at, (op, _)) in writes.iter().enumerate() {
            match tx.in_savepoint(|conn| run_op(op, conn)) {
                Ok(Savepoint::Kept) => results.push(Ok(())),
                Ok(Savepoint::Undone(err)) => results.push(Err(err)),
                Ok(Savepoint::TransactionLost(err)) => {
                    lost = Some((at, err));
                    break;
                }
                Err(e) => {
                    drop(tx);
                    return fail_all(writes, "opening, releasing or rolling back a savepoint", &e);
                }
            }
        }
        if let Some((at, err)) = lost {
            drop(tx);
            tracing::warn!(error = %err, "a write request ended its batch's transaction");
            let (_, reply) = writes.remove(at);
            let _ = reply.send(Err(err));
            if writes.is_empty() {
                return;
            }
            continue;
        }
        let committed = tx.commit();
        let answers = writes
            .into_iter()
            .zip(results)
            .map(|((_, reply), r)| (reply, r));
        return finish(answers, committed, counters);
    }
}

/// Answers every caller of `writes` with the failure `e` of `what`.
fn fail_all(writes: Pending, what: &str, e: &rusqlite::Error) {
    tracing::warn!(error = %e, "{what}");
    let message = e.to_string();
    for (_, reply) in writes {
        let _ = reply.send(Err(batch_error(what, &message)));
    }
}

/// Answers the callers of a batch whose commit ended with `committed`.
fn finish(
    answers: impl ExactSizeIterator<Item = (oneshot::Sender<Result<()>>, Result<()>)>,
    committed: rusqlite::Result<()>,
    counters: &Counters,
) {
    let count = answers.len();
    match committed {
        Ok(()) => {
            tracing::trace!(requests = count, "committed a write batch");
            counters.committed(count);
            for (reply, result) in answers {
                let _ = reply.send(result);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, requests = count, "committing a write batch failed");
            let message = e.to_string();
            for (reply, result) in answers {
                let _ = reply.send(result.and(Err(batch_error("committing", &message))));
            }
        }
    }
}

/// Runs one request, turning a panic into an error.
fn run_op(op: &WriteOp, conn: &Connection) -> Result<()> {
    match catch_unwind(AssertUnwindSafe(|| op(conn))) {
        Ok(r) => r,
        Err(_) => Err(Error::Backend {
            backend: "sqlite",
            message: "a write request panicked; it was rolled back".into(),
            source: None,
        }),
    }
}

fn batch_error(what: &str, message: &str) -> Error {
    Error::Backend {
        backend: "sqlite",
        message: format!("{what}: {message}; nothing of this request was written"),
        source: None,
    }
}

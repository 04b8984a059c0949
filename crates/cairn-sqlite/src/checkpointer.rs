//! Copies the WAL into the database on a thread of its own, with a connection of its own.
//!
//! A PASSIVE checkpoint runs alongside writers: it copies the frames no reader still needs
//! and never takes the write lock. Run on the writer thread, it held every commit queued
//! behind it for as long as it took (copying 1 000 pages and syncing the database file);
//! here commits go on meanwhile.
//!
//! The WAL starts over from its beginning only after a checkpoint that copied every frame,
//! and under a steady stream of commits a background pass never does: frames keep coming
//! while it runs, and the WAL would grow without end (each commit then also grows the
//! file, which makes a `sync` commit's fsync dearer). So once a background pass has run,
//! the next commit past the threshold *finishes* on the write connection: a PASSIVE
//! checkpoint there copies only the frames written during the pass (no commit runs
//! meanwhile, so it copies them all) and the commit after it starts the WAL over.

use std::sync::{Arc, Condvar, Mutex};

use rusqlite::Connection;

use cairn_checkpoint::{Error, Result};

#[derive(Default)]
struct State {
    requested: bool,
    stop: bool,
    /// A checkpoint is under way.
    running: bool,
    /// Checkpoints run so far.
    completed: u64,
    /// `completed` when a commit last finished a checkpoint on the write connection.
    finished_after: u64,
}

/// What a commit that left the WAL past the threshold does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PastThreshold {
    /// A background pass is asked for (or under way): nothing to do on the write
    /// connection.
    Requested,
    /// A background pass has run since: checkpoint on the write connection now.
    Finish,
    /// The WAL is past [`WAIT_PAGES`] with a pass asked for or under way: wait for it,
    /// then finish. Only when commits outrun the checkpointer thread (a slow disk, a
    /// starved thread); it bounds the WAL.
    WaitThenFinish,
}

/// WAL size, in pages, past which commits wait for the background pass (three times the
/// threshold, 12 MB).
pub(crate) const WAIT_PAGES: i32 = 3 * crate::writer::CHECKPOINT_PAGES;

impl PastThreshold {
    /// Does what `self` says on the write connection `conn` (the writer thread's).
    pub(crate) fn run(self, requests: &CheckpointRequests, conn: &Connection) {
        match self {
            PastThreshold::Requested => {}
            PastThreshold::Finish => checkpoint(conn),
            PastThreshold::WaitThenFinish => {
                requests.wait_for_pass();
                checkpoint(conn);
            }
        }
    }
}

/// Asks the checkpointer thread for a checkpoint; cheap to clone and to call often (asks
/// made while one is pending count once).
#[derive(Clone, Default)]
pub(crate) struct CheckpointRequests {
    shared: Arc<(Mutex<State>, Condvar)>,
}

impl CheckpointRequests {
    /// What the write connection does after a commit on this thread: nothing (`None`)
    /// unless the commit left the WAL past the threshold and a background pass has run
    /// since the last finish, or must be waited for; asks for a pass when one is due.
    pub(crate) fn after_commit(&self) -> Option<PastThreshold> {
        let pages = crate::writer::checkpoint_due()?;
        match self.past_threshold(pages) {
            PastThreshold::Requested => None,
            next => Some(next),
        }
    }

    /// Called after a commit that left the WAL at `pages`, past the threshold.
    fn past_threshold(&self, pages: i32) -> PastThreshold {
        let mut next = PastThreshold::Requested;
        self.update(|state| {
            if state.completed > state.finished_after {
                state.finished_after = state.completed;
                next = PastThreshold::Finish;
            } else {
                // One pass at a time: a second one asked for while the first runs would
                // start right after it and hold the checkpoint lock while the write
                // connection finishes, so the finish would fail, the WAL would not start
                // over, and every later commit would ask for yet another pass.
                if !state.running {
                    state.requested = true;
                }
                if pages >= WAIT_PAGES {
                    next = PastThreshold::WaitThenFinish;
                }
            }
        });
        next
    }

    /// Waits until the pass asked for or under way has run.
    fn wait_for_pass(&self) {
        let (state, wake) = &*self.shared;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        while (state.requested || state.running) && !state.stop {
            state = wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.finished_after = state.completed;
    }

    /// Waits until no background pass is under way (one may be asked for); whether one was.
    pub(crate) fn wait_while_running(&self) -> bool {
        let (state, wake) = &*self.shared;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        let waited = state.running;
        while state.running && !state.stop {
            state = wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        waited
    }

    /// Checkpoints the thread has run so far.
    pub(crate) fn completed(&self) -> u64 {
        self.shared
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .completed
    }

    /// Waits until the thread has run at least one checkpoint and has none asked for or
    /// under way.
    #[cfg(test)]
    pub(crate) fn wait_idle(&self) {
        let (state, wake) = &*self.shared;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        while state.completed == 0 || state.requested || state.running {
            state = wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let (state, wake) = &*self.shared;
        change(&mut state.lock().unwrap_or_else(|p| p.into_inner()));
        // The thread and test waiters share the condition variable.
        wake.notify_all();
    }

    /// Waits for a request; `false` once asked to stop.
    fn next(&self) -> bool {
        let (state, wake) = &*self.shared;
        let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
        while !state.requested && !state.stop {
            state = wake.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.requested = false;
        state.running = !state.stop;
        state.running
    }
}

/// The checkpointer thread. Dropping it stops the thread and closes its connection (after a
/// checkpoint under way completes), so the writer's connection can be the last to close.
pub(crate) struct Checkpointer {
    requests: CheckpointRequests,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Starts the thread on `conn`, a connection to the database file.
    pub(crate) fn start(conn: Connection) -> Result<Self> {
        let requests = CheckpointRequests::default();
        let waiting = requests.clone();
        let thread = std::thread::Builder::new()
            .name("cairn-sqlite-checkpointer".into())
            .spawn(move || {
                while waiting.next() {
                    // Commits may wait for this pass (past `WAIT_PAGES`): it must end, and
                    // the thread must live on, whatever happens inside it.
                    let pass = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        checkpoint(&conn);
                    }));
                    if pass.is_err() {
                        tracing::error!("a WAL checkpoint panicked");
                    }
                    waiting.update(|state| {
                        state.running = false;
                        state.completed += 1;
                    });
                }
                if let Err((_, e)) = conn.close() {
                    tracing::warn!(error = %e, "closing the SQLite checkpointer connection");
                }
            })
            .map_err(|e| Error::backend("sqlite", "starting the checkpointer thread", e))?;
        Ok(Checkpointer {
            requests,
            thread: Some(thread),
        })
    }

    pub(crate) fn requests(&self) -> CheckpointRequests {
        self.requests.clone()
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.requests.update(|state| state.stop = true);
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::error!("the SQLite checkpointer thread panicked");
            }
        }
    }
}

/// Copies the WAL into the database without waiting for readers or writers.
pub(crate) fn checkpoint(conn: &Connection) {
    match conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
        Ok(()) => tracing::trace!("checkpointed the WAL"),
        Err(e) => tracing::debug!(error = %e, "a WAL checkpoint did not complete"),
    }
}

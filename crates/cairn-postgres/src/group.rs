//! Group commit: checkpoints stored by many callers at once share transactions.
//!
//! With durability `Sync` every step of every thread waits for its own commit, and with many
//! threads at once the server spends its time starting, committing and flushing one small
//! transaction per checkpoint. Here a write that finds [`GroupCommit::slots`] commits already
//! in flight waits in a queue instead of taking another connection; when a commit ends,
//! whatever queued meanwhile is stored together in one transaction (one `put_batch`), so the
//! number of commits, and of WAL flushes, grows with the concurrency far slower than the
//! number of checkpoints. A write that finds a free slot is
//! stored at once, alone: a single thread pays nothing for the grouping.
//!
//! A group that fails for a reason one request may cause is stored again caller by caller,
//! so one bad request fails only its own caller; a failure that concerns all (the server
//! unreachable, a timeout) is every caller's at once, not retried once per caller. Queued
//! requests are stored by a spawned task; a caller that stops waiting before its group is
//! taken is dropped from it (nothing of it is stored), one whose group is under way is stored
//! with it.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_checkpoint::{Error, PutRequest, Result};
use tokio::sync::oneshot;

use crate::error::BACKEND;

/// An error of the group commit itself (not of storing), saying what happened.
fn group_error(what: &str) -> Error {
    Error::Backend {
        backend: BACKEND,
        message: format!("storing checkpoints with a group commit: {what}"),
        source: None,
    }
}

/// What stores a group: [`crate::PostgresSaver`]'s `put_batch` without the grouping.
pub(crate) trait StoreBatch: Clone + Send + Sync + 'static {
    fn store_batch(&self, requests: Vec<PutRequest>) -> impl Future<Output = Result<()>> + Send;

    /// Whether `error`, from storing a group, may be due to one of its requests (a value the
    /// server refused, an argument checked before any SQL), so that storing each caller's
    /// requests on their own gives the others a chance; otherwise (the server unreachable, a
    /// timeout) every caller gets the group's error at once.
    fn may_concern_one_request(error: &Error) -> bool;
}

/// Requests waiting for a commit slot, and the commits in flight.
#[derive(Default)]
struct State {
    queue: Vec<Waiting>,
    in_flight: usize,
}

/// Whether a write is stored at once or waits for the next group.
enum Turn {
    Now(Vec<PutRequest>),
    Queued(oneshot::Receiver<Result<()>>),
}

/// One caller's requests and where its result goes.
struct Waiting {
    requests: Vec<PutRequest>,
    done: oneshot::Sender<Result<()>>,
}

/// How many transactions stored how many writes, since a saver was connected
/// ([`PostgresSaver::commit_stats`](crate::PostgresSaver::commit_stats)): `writes /
/// commits` is what the group commit gained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    /// Transactions committed that stored checkpoints (`put`, `put_writes_and_put`,
    /// `put_batch`): each waits for at most one WAL flush, and the server may flush several
    /// at once.
    pub commits: u64,
    /// The calls stored in them, one per caller (a `put_batch` counts once).
    pub writes: u64,
}

/// The group commit of one saver (shared by its clones).
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    /// Commits in flight at most; further writes queue for the next group.
    slots: usize,
    commits: AtomicU64,
    writes: AtomicU64,
}

impl GroupCommit {
    pub(crate) fn new(slots: usize) -> Self {
        GroupCommit {
            state: Mutex::default(),
            slots: slots.max(1),
            commits: AtomicU64::new(0),
            writes: AtomicU64::new(0),
        }
    }

    pub(crate) fn stats(&self) -> CommitStats {
        CommitStats {
            commits: self.commits.load(Ordering::Relaxed),
            writes: self.writes.load(Ordering::Relaxed),
        }
    }

    /// Counts a transaction that stored `writes` callers' requests.
    fn committed(&self, writes: usize) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Only pushes, takes and counts happen under the lock: a panic cannot leave it torn.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stores `requests` through `saver` (its `put_batch` without grouping): at once when a
    /// commit slot is free, else with the next group.
    pub(crate) async fn store<S: StoreBatch>(
        self: &Arc<Self>,
        saver: &S,
        requests: Vec<PutRequest>,
    ) -> Result<()> {
        let turn = {
            let mut state = self.lock();
            if state.in_flight < self.slots {
                state.in_flight += 1;
                Turn::Now(requests)
            } else {
                let (done, result) = oneshot::channel();
                state.queue.push(Waiting { requests, done });
                Turn::Queued(result)
            }
        };
        let result = match turn {
            Turn::Queued(result) => result,
            Turn::Now(requests) => {
                // A slot of our own; released (and handed to the queue) even if this future
                // is dropped mid-commit.
                let slot = Slot {
                    group: Arc::clone(self),
                    saver,
                };
                let stored = saver.store_batch(requests).await;
                if stored.is_ok() {
                    self.committed(1);
                }
                drop(slot);
                return stored;
            }
        };
        result.await.unwrap_or_else(|_| {
            Err(group_error(
                "the task storing the group ended without a result (is the Tokio runtime \
                 shutting down?)",
            ))
        })
    }

    /// Called when a commit ends: the queue, if any, becomes the next group, stored by a task
    /// that keeps the slot until the queue is empty; else the slot is free.
    fn release<S: StoreBatch>(self: &Arc<Self>, saver: &S) {
        let mut state = self.lock();
        if state.queue.is_empty() {
            state.in_flight -= 1;
            return;
        }
        drop(state);
        let drain = drain(Arc::clone(self), saver.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(drain);
            }
            // No runtime to store the queue on: dropped unpolled, the task frees the slot and
            // its callers get an error now rather than waiting for ever.
            Err(_) => drop(drain),
        }
    }
}

/// A commit slot held by a caller storing its own requests.
struct Slot<'a, S: StoreBatch> {
    group: Arc<GroupCommit>,
    saver: &'a S,
}

impl<S: StoreBatch> Drop for Slot<'_, S> {
    fn drop(&mut self) {
        self.group.release(self.saver);
    }
}

/// Stores the queue group by group until it is empty, then frees the slot. A queued caller
/// that stopped waiting before its group was taken is dropped from it: nothing of it is stored,
/// as when a write is cancelled before it reaches the server.
///
/// The guard is made before the task first runs, so a task dropped unpolled (spawned on a
/// runtime that is shutting down) frees the slot too.
fn drain<S: StoreBatch>(group: Arc<GroupCommit>, saver: S) -> impl Future<Output = ()> + Send {
    let mut guard = DrainGuard { group, done: false };
    async move {
        loop {
            let batch: Vec<Waiting> = {
                let mut state = guard.group.lock();
                if state.queue.is_empty() {
                    state.in_flight -= 1;
                    drop(state);
                    guard.finish();
                    return;
                }
                std::mem::take(&mut state.queue)
            };
            let batch = batch.into_iter().filter(|w| !w.done.is_closed()).collect();
            store_group(&guard.group, &saver, batch).await;
        }
    }
}

/// Frees the slot of a drain task dropped before it finished (its runtime shut down, or there
/// was none to run it on), and fails the callers still queued, which no task would store any
/// more.
struct DrainGuard {
    group: Arc<GroupCommit>,
    done: bool,
}

impl DrainGuard {
    /// The task freed its slot itself, the queue empty.
    fn finish(&mut self) {
        self.done = true;
    }
}

impl Drop for DrainGuard {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut state = self.group.lock();
        state.in_flight -= 1;
        for waiting in state.queue.drain(..) {
            let _ = waiting.done.send(Err(group_error(
                "the task storing the group was dropped or never ran (no Tokio runtime, or \
                 it shut down); nothing of this write was stored",
            )));
        }
    }
}

/// Stores the requests of `batch` in one `put_batch`. If that fails for a reason one request
/// may cause, each caller's requests are stored again on their own, so that each gets its own
/// result; any other failure (the server unreachable, a timeout) is every caller's at once.
async fn store_group<S: StoreBatch>(group: &GroupCommit, saver: &S, batch: Vec<Waiting>) {
    if batch.is_empty() {
        // Every caller of this group stopped waiting: nothing to store, no commit to count.
        return;
    }
    if let [_] = batch.as_slice() {
        return store_each(group, saver, batch).await;
    }
    // A copy, as storing consumes the requests: a failed group is stored again from the
    // callers' own.
    let combined: Vec<PutRequest> = batch
        .iter()
        .flat_map(|w| w.requests.iter().cloned())
        .collect();
    let error = match saver.store_batch(combined).await {
        Ok(()) => {
            group.committed(batch.len());
            for waiting in batch {
                let _ = waiting.done.send(Ok(()));
            }
            return;
        }
        Err(error) => error,
    };
    if !S::may_concern_one_request(&error) {
        let message = format!(
            "{error} (a group of {} writes stored together; none of it was stored)",
            batch.len()
        );
        let mut first = Some(error);
        for waiting in batch {
            let error = first.take().unwrap_or_else(|| Error::Backend {
                backend: BACKEND,
                message: message.clone(),
                source: None,
            });
            let _ = waiting.done.send(Err(error));
        }
        return;
    }
    store_each(group, saver, batch).await;
}

/// Stores each caller's requests on their own.
async fn store_each<S: StoreBatch>(group: &GroupCommit, saver: &S, batch: Vec<Waiting>) {
    for waiting in batch {
        let result = saver.store_batch(waiting.requests).await;
        if result.is_ok() {
            group.committed(1);
        }
        let _ = waiting.done.send(result);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use cairn_checkpoint::{Checkpoint, CheckpointConfig, CheckpointMetadata};
    use tokio::sync::{mpsc, Semaphore};

    impl GroupCommit {
        fn queued(&self) -> usize {
            self.lock().queue.len()
        }
    }

    /// Records the threads of each batch it is given; the first batch waits for `gate`, and
    /// a batch holding thread `bad` fails.
    #[derive(Clone)]
    struct Recorder {
        batches: Arc<Mutex<Vec<Vec<String>>>>,
        gate: Arc<Semaphore>,
        entered: mpsc::UnboundedSender<()>,
    }

    impl StoreBatch for Recorder {
        async fn store_batch(&self, requests: Vec<PutRequest>) -> Result<()> {
            let threads: Vec<String> = requests
                .iter()
                .map(|r| r.config.thread_id.clone())
                .collect();
            let first = {
                let mut batches = self.batches.lock().expect("lock");
                batches.push(threads.clone());
                batches.len() == 1
            };
            let _ = self.entered.send(());
            if first {
                let _permit = self.gate.acquire().await.expect("gate");
            }
            if threads.iter().any(|t| t == "bad") {
                return Err(Error::InvalidArgument("thread bad is refused".into()));
            }
            if threads.iter().any(|t| t == "down") {
                return Err(Error::Backend {
                    backend: "postgres",
                    message: "the server is down".into(),
                    source: None,
                });
            }
            Ok(())
        }

        fn may_concern_one_request(error: &Error) -> bool {
            matches!(error, Error::InvalidArgument(_))
        }
    }

    /// A recorder whose first batch waits for `permits` (0: until the test opens the gate),
    /// and the signal it sends as each batch arrives.
    fn recorder(permits: usize) -> (Recorder, mpsc::UnboundedReceiver<()>) {
        let (entered, entries) = mpsc::unbounded_channel();
        let store = Recorder {
            batches: Arc::default(),
            gate: Arc::new(Semaphore::new(permits)),
            entered,
        };
        (store, entries)
    }

    fn request(thread: &str) -> PutRequest {
        PutRequest {
            config: CheckpointConfig::thread(thread),
            writes: Vec::new(),
            checkpoint: Checkpoint::new(),
            metadata: CheckpointMetadata::default(),
            new_versions: Default::default(),
        }
    }

    /// Stores `first` through a group of one slot and, while its commit waits at the gate,
    /// queues `then`; returns each caller's result (in `then`'s order after `first`'s) and
    /// the batches the store saw.
    async fn hold_first_then_queue(
        first: &str,
        then: &[&str],
    ) -> (Vec<(String, Result<()>)>, Vec<Vec<String>>, CommitStats) {
        let (store, mut entries) = recorder(0);
        let group = Arc::new(GroupCommit::new(1));
        let spawn = |thread: &str| {
            let (group, store, thread) = (Arc::clone(&group), store.clone(), thread.to_owned());
            tokio::spawn(async move {
                let result = group.store(&store, vec![request(&thread)]).await;
                (thread, result)
            })
        };
        let leader = spawn(first);
        entries.recv().await.expect("the first commit started");
        let queued: Vec<_> = then.iter().map(|t| spawn(t)).collect();
        // The queued callers hold no slot: each is in the queue once its task has run.
        while group.queued() < then.len() {
            tokio::task::yield_now().await;
        }
        store.gate.add_permits(1);
        let mut results = vec![leader.await.expect("leader")];
        for task in queued {
            results.push(task.await.expect("queued caller"));
        }
        assert_eq!(group.queued(), 0);
        // The task that stored the queue frees its slot once it finds the queue empty, just
        // after handing out the last result.
        while group.lock().in_flight > 0 {
            tokio::task::yield_now().await;
        }
        let batches = store.batches.lock().expect("lock").clone();
        (results, batches, group.stats())
    }

    fn sorted(mut threads: Vec<String>) -> Vec<String> {
        threads.sort();
        threads
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_behind_a_commit_are_stored_together() {
        let (results, batches, stats) = hold_first_then_queue("a", &["b", "c", "d", "e"]).await;
        assert_eq!(
            stats,
            CommitStats {
                commits: 2,
                writes: 5
            }
        );
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[0], ["a"]);
        assert_eq!(sorted(batches[1].clone()), ["b", "c", "d", "e"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_group_is_stored_again_caller_by_caller() {
        let (results, batches, stats) = hold_first_then_queue("a", &["b", "bad", "d"]).await;
        // `a`, then `b` and `d` alone: the failed group and `bad` count nothing.
        assert_eq!(
            stats,
            CommitStats {
                commits: 3,
                writes: 3
            }
        );
        for (thread, result) in &results {
            match thread.as_str() {
                "bad" => assert!(
                    matches!(result, Err(Error::InvalidArgument(m)) if m.contains("refused")),
                    "{result:?}"
                ),
                _ => assert!(result.is_ok(), "{thread}: {result:?}"),
            }
        }
        // The group of three failed, then each caller was stored alone.
        assert_eq!(batches.len(), 5, "{batches:?}");
        assert_eq!(sorted(batches[1].clone()), ["b", "bad", "d"]);
        let mut alone: Vec<Vec<String>> = batches[2..].to_vec();
        alone.sort();
        assert_eq!(alone, [["b"], ["bad"], ["d"]]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_failing_for_all_alike_fails_every_caller_at_once() {
        let (results, batches, _) = hold_first_then_queue("a", &["b", "down", "d"]).await;
        for (thread, result) in &results[1..] {
            let err = result.as_ref().expect_err(thread);
            assert!(
                err.to_string().contains("the server is down"),
                "{thread}: {err}"
            );
        }
        assert!(results[0].1.is_ok());
        // One attempt for the group, none caller by caller.
        assert_eq!(batches.len(), 2, "{batches:?}");
    }

    /// When every queued caller stopped waiting before its group was taken, nothing is
    /// stored and no commit is counted for the empty group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_group_whose_callers_all_left_stores_and_counts_nothing() {
        let (store, mut entries) = recorder(0);
        let group = Arc::new(GroupCommit::new(1));
        let spawn = |thread: &str| {
            let (group, store, thread) = (Arc::clone(&group), store.clone(), thread.to_owned());
            tokio::spawn(async move { group.store(&store, vec![request(&thread)]).await })
        };
        let leader = spawn("leader");
        entries.recv().await.expect("the first commit started");
        let queued = [spawn("gone-1"), spawn("gone-2")];
        while group.queued() < queued.len() {
            tokio::task::yield_now().await;
        }
        for task in queued {
            task.abort();
            assert!(task.await.expect_err("aborted").is_cancelled());
        }
        store.gate.add_permits(1);
        leader.await.expect("leader").expect("the leader's write");
        while group.lock().in_flight > 0 {
            tokio::task::yield_now().await;
        }
        let batches = store.batches.lock().expect("lock").clone();
        assert_eq!(batches, [vec!["leader".to_owned()]]);
        let stats = group.stats();
        assert_eq!((stats.commits, stats.writes), (1, 1), "{stats:?}");
    }

    #[tokio::test]
    async fn a_drain_task_dropped_unpolled_frees_its_slot_and_fails_the_queue() {
        let group = Arc::new(GroupCommit::new(1));
        let (done, result) = oneshot::channel();
        {
            let mut state = group.lock();
            state.in_flight = 1;
            state.queue.push(Waiting {
                requests: vec![request("q")],
                done,
            });
        }
        let (store, _entries) = recorder(1);
        drop(drain(Arc::clone(&group), store.clone()));
        assert_eq!(group.lock().in_flight, 0);
        let err = result.await.expect("a result").expect_err("not stored");
        assert!(err.to_string().contains("was dropped"), "{err}");
        assert!(store.batches.lock().expect("lock").is_empty());
        // The group works on: the next write takes the free slot.
        group
            .store(&store, vec![request("next")])
            .await
            .expect("stored");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_stopped_waiting_before_its_group_is_not_stored() {
        let (store, mut entries) = recorder(0);
        let group = Arc::new(GroupCommit::new(1));
        let leader = {
            let (group, store) = (Arc::clone(&group), store.clone());
            tokio::spawn(async move { group.store(&store, vec![request("a")]).await })
        };
        entries.recv().await.expect("the first commit started");
        let gave_up = {
            let (group, store) = (Arc::clone(&group), store.clone());
            tokio::spawn(async move { group.store(&store, vec![request("gave-up")]).await })
        };
        let stays = {
            let (group, store) = (Arc::clone(&group), store.clone());
            tokio::spawn(async move { group.store(&store, vec![request("stays")]).await })
        };
        while group.queued() < 2 {
            tokio::task::yield_now().await;
        }
        gave_up.abort();
        assert!(gave_up.await.expect_err("aborted").is_cancelled());
        store.gate.add_permits(1);
        leader.await.expect("leader").expect("stored");
        stays.await.expect("caller").expect("stored");
        let batches = store.batches.lock().expect("lock").clone();
        assert_eq!(batches, [["a"], ["stays"]]);
    }

    #[tokio::test]
    async fn a_single_writer_is_stored_at_once_and_alone() {
        let (store, _entries) = recorder(1);
        let group = Arc::new(GroupCommit::new(1));
        for thread in ["x", "y", "bad", "z"] {
            let result = group.store(&store, vec![request(thread)]).await;
            assert_eq!(result.is_ok(), thread != "bad", "{thread}: {result:?}");
        }
        let batches = store.batches.lock().expect("lock").clone();
        assert_eq!(batches, [["x"], ["y"], ["bad"], ["z"]]);
        assert_eq!(group.lock().in_flight, 0);
    }
}

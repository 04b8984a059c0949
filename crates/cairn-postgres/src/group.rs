//! Group commit: checkpoints stored by many callers at once share transactions.
//!
//! With durability `Sync` every step of every thread waits for its own commit, and with many
//! threads at once the server spends its time starting, committing and flushing one small
//! transaction per checkpoint. Here a write that finds [`GroupCommit::slots`] commits already
//! in flight waits in a queue instead of taking another connection; when a commit ends, whatever queued meanwhile is stored together in one
//! transaction (one `put_batch`), so the number of commits, and of WAL flushes, grows with the
//! concurrency far slower than the number of checkpoints. A write that finds a free slot is
//! stored at once, alone: a single thread pays nothing for the grouping.
//!
//! A group that fails is stored again request by request, so one bad request fails only its
//! own caller. Queued requests are stored by a spawned task, which a dropped caller does not
//! cancel: a request that was queued is stored (or fails) whether or not its caller still
//! waits.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use cairn_checkpoint::{Error, PutRequest, Result};
use tokio::sync::oneshot;

/// What stores a group: [`crate::PostgresSaver`]'s `put_batch` without the grouping.
pub(crate) trait StoreBatch: Clone + Send + Sync + 'static {
    fn store_batch(&self, requests: Vec<PutRequest>) -> impl Future<Output = Result<()>> + Send;
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

/// The group commit of one saver (shared by its clones).
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    /// Commits in flight at most; further writes queue for the next group.
    slots: usize,
}

impl GroupCommit {
    pub(crate) fn new(slots: usize) -> Self {
        GroupCommit {
            state: Mutex::default(),
            slots: slots.max(1),
        }
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
                drop(slot);
                return stored;
            }
        };
        result.await.unwrap_or_else(|_| {
            Err(Error::Backend {
                backend: "postgres",
                message: "storing checkpoints with a group commit: the task storing the group \
                          ended without a result (is the Tokio runtime shutting down?)"
                    .into(),
                source: None,
            })
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
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(drain(Arc::clone(self), saver.clone()));
            }
            Err(_) => {
                // No runtime to store the queue on: its callers get an error now rather than
                // waiting for ever.
                let mut state = self.lock();
                state.in_flight -= 1;
                for waiting in state.queue.drain(..) {
                    let _ = waiting.done.send(Err(Error::Backend {
                        backend: "postgres",
                        message: "storing checkpoints with a group commit: no Tokio runtime \
                                  to store the queued checkpoints on"
                            .into(),
                        source: None,
                    }));
                }
            }
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

/// Stores the queue group by group until it is empty, then frees the slot.
async fn drain<S: StoreBatch>(group: Arc<GroupCommit>, saver: S) {
    loop {
        let batch = {
            let mut state = group.lock();
            if state.queue.is_empty() {
                state.in_flight -= 1;
                return;
            }
            std::mem::take(&mut state.queue)
        };
        store_group(&saver, batch).await;
    }
}

/// Stores the requests of `batch` in one `put_batch`; if that fails and the group holds more
/// than one caller, stores each caller's requests again on their own, so that each gets its
/// own result.
async fn store_group<S: StoreBatch>(saver: &S, batch: Vec<Waiting>) {
    if let [_] = batch.as_slice() {
        for waiting in batch {
            let result = saver.store_batch(waiting.requests).await;
            let _ = waiting.done.send(result);
        }
        return;
    }
    let combined: Vec<PutRequest> = batch
        .iter()
        .flat_map(|w| w.requests.iter().cloned())
        .collect();
    if saver.store_batch(combined).await.is_ok() {
        for waiting in batch {
            let _ = waiting.done.send(Ok(()));
        }
        return;
    }
    for waiting in batch {
        let result = saver.store_batch(waiting.requests).await;
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
            Ok(())
        }
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
    ) -> (Vec<(String, Result<()>)>, Vec<Vec<String>>) {
        let (entered, mut entries) = mpsc::unbounded_channel();
        let store = Recorder {
            batches: Arc::default(),
            gate: Arc::new(Semaphore::new(0)),
            entered,
        };
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
        (results, batches)
    }

    fn sorted(mut threads: Vec<String>) -> Vec<String> {
        threads.sort();
        threads
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_queued_behind_a_commit_are_stored_together() {
        let (results, batches) = hold_first_then_queue("a", &["b", "c", "d", "e"]).await;
        assert!(results.iter().all(|(_, r)| r.is_ok()), "{results:?}");
        assert_eq!(batches.len(), 2, "{batches:?}");
        assert_eq!(batches[0], ["a"]);
        assert_eq!(sorted(batches[1].clone()), ["b", "c", "d", "e"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_group_is_stored_again_caller_by_caller() {
        let (results, batches) = hold_first_then_queue("a", &["b", "bad", "d"]).await;
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

    #[tokio::test]
    async fn a_single_writer_is_stored_at_once_and_alone() {
        let (entered, _entries) = mpsc::unbounded_channel();
        let store = Recorder {
            batches: Arc::default(),
            gate: Arc::new(Semaphore::new(1)),
            entered,
        };
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

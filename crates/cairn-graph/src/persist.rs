//! Checkpoint writing for one run, per durability mode.
//!
//! In [`Durability::Async`] mode a run never waits for its checkpoints while it has work to do:
//! each checkpoint joins a queue, and one background flusher per run hands everything queued
//! to [`CheckpointSaver::put_batch`] in order, taking what queued up meanwhile as the next
//! batch. A saver that stores a batch in one transaction then commits once for all the steps
//! that ran while the previous commit was under way, so the commit rate stops bounding the
//! step rate. Order is kept by construction: one flusher, batches in queue order, and a
//! batch's requests stored in order.

use std::sync::{Arc, Mutex, MutexGuard};

use cairn_checkpoint::{
    ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver, PutRequest,
    TaskWrites,
};

use crate::error::{GraphError, Result};
use crate::options::Durability;
use crate::runtime::ThreadGuard;

/// Checkpoints a run may have queued, not yet handed to the saver, before its next step waits
/// for the flusher to take them: bounds memory and what a crash can lose when steps outrun
/// the saver (at most this many queued plus the batch being stored).
///
/// The run waits only for room, not for the queue to drain: while the flusher stores one
/// batch the run fills the next, so steps and commits overlap. (Waiting for a full drain
/// made them alternate: W2 on SQLite ran batches of 1 and 64 by turns, with one core idle.)
pub(crate) const MAX_QUEUED: usize = 64;

/// What the run and its flusher share.
#[derive(Default)]
struct Queue {
    /// Checkpoints not yet handed to the saver, oldest first.
    requests: Vec<PutRequest>,
    /// Whether a flusher is running (it clears this when it finds the queue empty).
    flushing: bool,
    /// Set while the running flusher is still in its commit delay, having taken nothing: its
    /// hold on the run's thread, kept here rather than in the flusher's task so that the run,
    /// settling, can take the queue over and release the flusher's hold at once (the flusher,
    /// finding this empty when its delay ends, stops). A run dropped during the delay leaves
    /// the hold here until the flusher has stored the queue.
    delayed: Option<Arc<ThreadGuard>>,
    /// The first error a batch failed with; nothing is stored after it.
    failed: Option<cairn_checkpoint::Error>,
}

/// The queue and the signal a flusher sends each time it takes the queue (or stops), for a
/// run waiting for room.
#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    taken: tokio::sync::Notify,
    /// Ends a flusher's commit delay early: the run is settling, or its queue is full.
    flush_now: tokio::sync::Notify,
}

/// Checkpoint writing for one run.
pub(crate) struct Persister<'a> {
    pub(crate) saver: &'a Arc<dyn CheckpointSaver>,
    mode: Durability,
    shared: Arc<Shared>,
    /// The flusher task, when it did not finish on its first poll.
    flusher: Option<tokio::task::JoinHandle<()>>,
    /// Sync mode: the input checkpoint, held until the START step's checkpoint so that both
    /// are stored in one call (see [`put_input`](Self::put_input)).
    held_input: Option<PutRequest>,
    /// The run's hold on its thread; each flusher keeps a clone, so that a run dropped
    /// mid-way (a cancelled `invoke`) keeps its thread busy until its queued checkpoints are
    /// stored, and the next run on the thread starts from them.
    thread: Arc<ThreadGuard>,
    /// How long a flusher waits before taking its first batch (`RunConfig::commit_delay`).
    commit_delay: std::time::Duration,
    /// When the oldest checkpoint queued while no flusher runs was queued.
    first_queued: Option<std::time::Instant>,
}

impl Drop for Persister<'_> {
    /// A run dropped with checkpoints queued and no flusher started (it was cancelled within
    /// the commit delay) still gets them stored, holding its thread until then.
    fn drop(&mut self) {
        let mut queue = lock(&self.shared.queue);
        if queue.delayed.is_some() {
            // A flusher in its delay: it stores the dropped run's queue now, not after the
            // delay, and holds the thread until then.
            self.shared.flush_now.notify_one();
            return;
        }
        if queue.flushing || queue.requests.is_empty() {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                queue.flushing = true;
                drop(queue);
                runtime.spawn(flush(
                    Arc::clone(&self.shared),
                    Arc::clone(self.saver),
                    Arc::clone(&self.thread),
                    Waiting::No,
                ));
            }
            Err(_) => tracing::warn!(
                checkpoints = queue.requests.len(),
                "a run was dropped outside a Tokio runtime with checkpoints not yet stored"
            ),
        }
    }
}

fn lock(queue: &Mutex<Queue>) -> MutexGuard<'_, Queue> {
    // The flusher holds the lock only to move requests and flags, never across a panic point
    // that could leave them inconsistent.
    queue.lock().unwrap_or_else(|p| p.into_inner())
}

impl<'a> Persister<'a> {
    pub(crate) fn new(
        saver: &'a Arc<dyn CheckpointSaver>,
        mode: Durability,
        thread: &Arc<ThreadGuard>,
        commit_delay: std::time::Duration,
    ) -> Self {
        Persister {
            saver,
            mode,
            shared: Arc::default(),
            flusher: None,
            held_input: None,
            thread: Arc::clone(thread),
            commit_delay,
            first_queued: None,
        }
    }

    /// Saves a run's input checkpoint. In sync mode it is held until the next checkpoint (or
    /// [`before_nodes`](Self::before_nodes), or [`settle`](Self::settle)) and stored in the
    /// same saver call, so a turn that starts with the START step costs one durable commit
    /// less: the START step runs no node, only the input's routing, so nothing happens
    /// between the two that a crash could make run twice, and both are stored before any
    /// node runs.
    pub(crate) async fn put_input(
        &mut self,
        parent: &CheckpointConfig,
        cp: Checkpoint,
        meta: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        if self.mode != Durability::Sync {
            return self.put(parent, cp, meta, new_versions).await;
        }
        self.store_held_input().await?;
        let request = request(parent, Vec::new(), cp, meta, new_versions);
        let stored = request.stored_config();
        self.held_input = Some(request);
        Ok(stored)
    }

    /// Called before a step whose tasks run nodes: a held input checkpoint is stored now.
    pub(crate) async fn before_nodes(&mut self) -> Result<()> {
        self.store_held_input().await
    }

    async fn store_held_input(&mut self) -> Result<()> {
        if let Some(request) = self.held_input.take() {
            self.put_now(request).await?;
        }
        Ok(())
    }

    /// Saves a checkpoint as a child of `parent`; returns its config (in async mode before it
    /// is stored: [`settle`](Self::settle) waits for it).
    pub(crate) async fn put(
        &mut self,
        parent: &CheckpointConfig,
        cp: Checkpoint,
        meta: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        self.put_with_writes(parent, Vec::new(), cp, meta, new_versions)
            .await
    }

    /// Saves the writes of a step's tasks against `parent` and the step's checkpoint as its
    /// child, in one saver call (one transaction where the saver can).
    pub(crate) async fn put_with_writes(
        &mut self,
        parent: &CheckpointConfig,
        writes: Vec<TaskWrites>,
        cp: Checkpoint,
        meta: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        let request = request(parent, writes, cp, meta, new_versions);
        if self.mode != Durability::Async {
            if let Some(input) = self.held_input.take() {
                let stored = request.stored_config();
                self.saver.put_batch(vec![input, request]).await?;
                return Ok(stored);
            }
            return Ok(self.put_now(request).await?);
        }
        let stored = request.stored_config();
        let (idle, queued) = {
            let mut queue = lock(&self.shared.queue);
            if let Some(e) = queue.failed.take() {
                return Err(e.into());
            }
            queue.requests.push(request);
            (!queue.flushing, queue.requests.len())
        };
        if !idle {
            self.wait_for_room().await;
        } else if self.commit_delay.is_zero() || queued >= MAX_QUEUED {
            self.start_flusher(None).await;
        } else {
            // The steps that follow at once join this checkpoint's batch: a run that ends,
            // or waits in a node (see `arm`), hands the queue over; one that keeps stepping
            // hands it over once the delay has passed.
            let first = *self
                .first_queued
                .get_or_insert_with(std::time::Instant::now);
            if first.elapsed() >= self.commit_delay {
                self.start_flusher(None).await;
            }
        }
        Ok(stored)
    }

    /// Called when the run is about to wait for a step's tasks (a node did not finish at
    /// once): checkpoints queued and not handed over go to the saver once the commit delay
    /// since the first of them has passed, while the run waits.
    pub(crate) async fn arm(&mut self) {
        let Some(first) = self.first_queued else {
            return;
        };
        if self.mode != Durability::Async || lock(&self.shared.queue).flushing {
            return;
        }
        let left = self.commit_delay.saturating_sub(first.elapsed());
        self.start_flusher((!left.is_zero()).then_some(left)).await;
    }

    /// Starts the run's flusher on the queue, at once or after `delay`.
    async fn start_flusher(&mut self, delay: Option<std::time::Duration>) {
        self.first_queued = None;
        // A flusher that finished left `flushing` false; its handle is done.
        self.flusher = None;
        {
            let mut queue = lock(&self.shared.queue);
            queue.flushing = true;
            queue.delayed = delay.map(|_| Arc::clone(&self.thread));
        }
        let Some(delay) = delay else {
            let mut flush = Box::pin(flush(
                Arc::clone(&self.shared),
                Arc::clone(self.saver),
                Arc::clone(&self.thread),
                Waiting::No,
            ));
            // Savers that finish without waiting (in memory) cost no spawned task.
            if futures::poll!(flush.as_mut()).is_pending() {
                self.flusher = Some(tokio::spawn(flush));
            }
            return;
        };
        let shared = Arc::clone(&self.shared);
        let saver = Arc::clone(self.saver);
        self.flusher = Some(tokio::spawn(async move {
            if let Some(sleep) = sleep_if_timers(delay) {
                tokio::select! {
                    () = sleep => {}
                    () = shared.flush_now.notified() => {}
                }
            }
            let hold = lock(&shared.queue).delayed.take();
            // None: the run took the queue over.
            if let Some(thread) = hold {
                flush(Arc::clone(&shared), saver, thread, Waiting::No).await;
            }
        }));
    }

    /// Returns once fewer than [`MAX_QUEUED`] checkpoints wait in the queue (the flusher took
    /// them, or stopped on an error the next checkpoint reports).
    async fn wait_for_room(&self) {
        {
            // A flusher still in its delay takes a full queue at once (only then: a stored
            // permit would cut the next flusher's delay short).
            let queue = lock(&self.shared.queue);
            if queue.requests.len() >= MAX_QUEUED && queue.delayed.is_some() {
                self.shared.flush_now.notify_one();
            }
        }
        loop {
            let taken = self.shared.taken.notified();
            tokio::pin!(taken);
            // Registered before the check, so a flusher taking the queue in between is seen.
            taken.as_mut().enable();
            {
                let queue = lock(&self.shared.queue);
                if queue.requests.len() < MAX_QUEUED || !queue.flushing {
                    return;
                }
            }
            taken.await;
        }
    }

    /// Stores one request and waits for it: through the narrowest saver call that does it, or
    /// for several tasks' writes as a batch of one (one transaction where the saver can).
    async fn put_now(&self, request: PutRequest) -> cairn_checkpoint::Result<CheckpointConfig> {
        if request.writes.len() <= 1 {
            return request.store(self.saver.as_ref()).await;
        }
        let stored = request.stored_config();
        self.saver.put_batch(vec![request]).await?;
        Ok(stored)
    }

    /// Waits until every queued checkpoint is stored; the first error of any batch.
    pub(crate) async fn settle(&mut self) -> Result<()> {
        self.store_held_input().await?;
        let take_over = {
            let mut queue = lock(&self.shared.queue);
            // No flusher yet, or one still in its delay (having taken nothing; its hold on
            // the thread goes now, so the next run is not kept waiting for its task).
            let take_over =
                (!queue.flushing && !queue.requests.is_empty()) || queue.delayed.take().is_some();
            if take_over {
                queue.flushing = true;
            }
            take_over
        };
        self.first_queued = None;
        if take_over {
            // Store the queue from here, sparing the hop to the flusher's task and back (a
            // short run's one commit is then all it waits for). Dropped mid-way (a cancelled
            // `invoke`), the flush goes on in the background, holding the thread, as the
            // flusher would have.
            if let Some(handle) = self.flusher.take() {
                handle.abort();
            }
            DetachOnDrop(Some(Box::pin(flush(
                Arc::clone(&self.shared),
                Arc::clone(self.saver),
                Arc::clone(&self.thread),
                Waiting::Yes,
            ))))
            .await;
        }
        if let Some(handle) = self.flusher.take() {
            self.shared.flush_now.notify_one();
            if let Err(e) = handle.await {
                let mut queue = lock(&self.shared.queue);
                queue.flushing = false;
                queue.requests.clear();
                return Err(GraphError::Checkpoint(cairn_checkpoint::Error::backend(
                    "graph runtime",
                    "saving checkpoints in the background",
                    e,
                )));
            }
        }
        match lock(&self.shared.queue).failed.take() {
            Some(e) => Err(e.into()),
            None => Ok(()),
        }
    }
}

/// A future run in place that, when dropped before it finishes, finishes in a spawned task
/// instead of being cancelled.
struct DetachOnDrop(Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>);

impl std::future::Future for DetachOnDrop {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let Some(inner) = self.0.as_mut() else {
            return std::task::Poll::Ready(());
        };
        let poll = inner.as_mut().poll(cx);
        if poll.is_ready() {
            self.0 = None;
        }
        poll
    }
}

impl Drop for DetachOnDrop {
    fn drop(&mut self) {
        // Dropped while unwinding, the future itself panicked: it cannot be resumed.
        if std::thread::panicking() {
            return;
        }
        if let (Some(rest), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(rest);
        }
    }
}

/// `sleep(delay)`, or `None` on a Tokio runtime built without timers (where creating it
/// panics, and the panic hook reports it): the commit delay is then skipped rather than
/// leaving the queue without a flusher.
fn sleep_if_timers(delay: std::time::Duration) -> Option<tokio::time::Sleep> {
    let sleep = std::panic::catch_unwind(|| tokio::time::sleep(delay)).ok();
    if sleep.is_none() {
        tracing::warn!(
            "the Tokio runtime has no timers (build it with `enable_time`): checkpoints are \
             stored without a commit delay"
        );
    }
    sleep
}

/// The request storing `checkpoint` as a child of `parent`, with its tasks' `writes`.
fn request(
    parent: &CheckpointConfig,
    writes: Vec<TaskWrites>,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    new_versions: ChannelVersions,
) -> PutRequest {
    PutRequest {
        config: parent.clone(),
        writes,
        checkpoint,
        metadata,
        new_versions,
    }
}

/// Whether the run waits for a flush with nothing else to do (it is settling).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Waiting {
    Yes,
    No,
}

/// Hands the queue to the saver batch by batch until it is empty or a batch fails; holds the
/// run's thread (`_thread`) until then. A settling run's batches go through
/// [`CheckpointSaver::put_batch_now`].
async fn flush(
    shared: Arc<Shared>,
    saver: Arc<dyn CheckpointSaver>,
    _thread: Arc<ThreadGuard>,
    waiting: Waiting,
) {
    // Wakes a run waiting for room however this returns. A saver that panics fails the run
    // like a failed batch: nothing queued after it is stored, and the next checkpoint (or
    // `settle`) reports it instead of waiting for a flusher that is gone.
    struct WakeOnExit<'a>(&'a Shared);
    impl Drop for WakeOnExit<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                let mut q = lock(&self.0.queue);
                q.requests.clear();
                q.flushing = false;
                q.failed.get_or_insert(cairn_checkpoint::Error::Backend {
                    backend: "graph runtime",
                    message: "saving checkpoints in the background: the saver panicked".into(),
                    source: None,
                });
            }
            self.0.taken.notify_waiters();
        }
    }
    let _wake = WakeOnExit(&shared);
    let queue = &shared.queue;
    loop {
        let batch = {
            let mut q = lock(queue);
            if q.requests.is_empty() {
                q.flushing = false;
                return;
            }
            std::mem::take(&mut q.requests)
        };
        shared.taken.notify_waiters();
        let count = batch.len();
        let stored = match waiting {
            Waiting::Yes => saver.put_batch_now(batch).await,
            Waiting::No => saver.put_batch(batch).await,
        };
        if let Err(e) = stored {
            tracing::warn!(error = %e, checkpoints = count, "saving checkpoints failed");
            let mut q = lock(queue);
            // Later checkpoints descend from the lost ones: storing them would leave a
            // thread whose history has a hole.
            q.requests.clear();
            q.failed = Some(e);
            q.flushing = false;
            return;
        }
    }
}

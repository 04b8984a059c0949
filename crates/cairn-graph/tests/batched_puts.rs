//! Checkpoints stored together: in `Durability::Async` mode checkpoints queue while the saver
//! is busy and go to it in batches, in order, and a failed batch fails the run with nothing
//! after it stored; in `Durability::Sync` mode the input checkpoint goes with the START step's.
//! A saver whose first batch waits on a gate the test opens makes the queueing deterministic
//! (no sleeps).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_checkpoint::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointTuple, Error, InMemorySaver, ListQuery, PruneStrategy, PutRequest,
    TypedValue,
};
use cairn_graph::{
    CompiledGraph, Durability, GraphError, HistoryQuery, RunConfig, State, StateGraph, END, START,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, Semaphore};

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Counter {
    n: i64,
    #[reducer(append)]
    seen: Vec<String>,
}

/// One `put_batch` call as the saver saw it.
#[derive(Debug, Clone, PartialEq)]
struct Batch {
    checkpoints: usize,
    /// Tasks whose writes came with each checkpoint.
    tasks: Vec<usize>,
}

/// An in-memory saver whose first `held` calls of `put_batch` each wait until the gate opens
/// once more, and whose batch number `fail_at` (0-based) fails.
struct Gated {
    inner: InMemorySaver,
    gate: Semaphore,
    batches: Mutex<Vec<Batch>>,
    fail_at: Option<usize>,
    held: usize,
    /// Notified on every `put_batch` call.
    received: Notify,
}

impl Gated {
    /// Holds the first batch.
    fn new(fail_at: Option<usize>) -> Arc<Self> {
        Gated::holding(1, fail_at)
    }

    fn holding(held: usize, fail_at: Option<usize>) -> Arc<Self> {
        Arc::new(Gated {
            inner: InMemorySaver::new(),
            gate: Semaphore::new(0),
            batches: Mutex::new(Vec::new()),
            fail_at,
            held,
            received: Notify::new(),
        })
    }

    fn open(&self) {
        self.gate.add_permits(1);
    }

    fn batches(&self) -> Vec<Batch> {
        self.batches.lock().expect("lock").clone()
    }
}

#[async_trait]
impl CheckpointSaver for Gated {
    async fn put_batch(
        &self,
        requests: Vec<PutRequest>,
    ) -> cairn_checkpoint::Result<Vec<CheckpointConfig>> {
        let index = {
            let mut batches = self.batches.lock().expect("lock");
            batches.push(Batch {
                checkpoints: requests.len(),
                tasks: requests.iter().map(|r| r.writes.len()).collect(),
            });
            batches.len() - 1
        };
        self.received.notify_one();
        if index < self.held {
            self.gate.acquire().await.expect("gate open").forget();
        }
        if self.fail_at == Some(index) {
            return Err(Error::Backend {
                backend: "gated",
                message: "disk full".into(),
                source: None,
            });
        }
        self.inner.put_batch(requests).await
    }
    async fn get_tuple(
        &self,
        c: &CheckpointConfig,
    ) -> cairn_checkpoint::Result<Option<CheckpointTuple>> {
        self.inner.get_tuple(c).await
    }
    async fn list(&self, q: &ListQuery) -> cairn_checkpoint::Result<Vec<CheckpointTuple>> {
        self.inner.list(q).await
    }
    async fn put(
        &self,
        c: &CheckpointConfig,
        cp: Checkpoint,
        m: CheckpointMetadata,
        v: ChannelVersions,
    ) -> cairn_checkpoint::Result<CheckpointConfig> {
        self.inner.put(c, cp, m, v).await
    }
    async fn put_writes(
        &self,
        c: &CheckpointConfig,
        w: Vec<(String, TypedValue)>,
        t: &str,
        p: &str,
    ) -> cairn_checkpoint::Result<()> {
        self.inner.put_writes(c, w, t, p).await
    }
    async fn delete_thread(&self, t: &str) -> cairn_checkpoint::Result<()> {
        self.inner.delete_thread(t).await
    }
    async fn copy_thread(&self, s: &str, t: &str) -> cairn_checkpoint::Result<()> {
        self.inner.copy_thread(s, t).await
    }
    async fn prune(&self, t: &[String], s: PruneStrategy) -> cairn_checkpoint::Result<()> {
        self.inner.prune(t, s).await
    }
    async fn delete_for_runs(&self, r: &[String]) -> cairn_checkpoint::Result<()> {
        self.inner.delete_for_runs(r).await
    }
    fn get_next_version(&self, c: Option<&ChannelVersion>) -> ChannelVersion {
        self.inner.get_next_version(c)
    }

    fn get_next_version_in_run(&self, c: Option<&ChannelVersion>, run: u64) -> ChannelVersion {
        self.inner.get_next_version_in_run(c, run)
    }
}

/// `inc` adds one to `n` and its name to `seen` until `n` reaches `last`, then notifies
/// `reached` (from inside the last step, before its checkpoint is made).
/// Durability `Async` with no commit delay: each queue goes to the saver as soon as the
/// previous batch is stored, the behaviour the queueing tests pin down.
fn async_at_once(thread: &str) -> RunConfig {
    RunConfig::thread(thread)
        .with_durability(Durability::Async)
        .with_commit_delay(Duration::ZERO)
}

/// Runs `app` from a fresh input in a spawned task.
fn spawn_run(
    app: &CompiledGraph<Counter>,
    config: &RunConfig,
) -> tokio::task::JoinHandle<Result<Counter, GraphError>> {
    let (app, config) = (app.clone(), config.clone());
    tokio::spawn(async move { app.invoke(Some(CounterUpdate::default()), config).await })
}

/// START → `first` (a sync increment) → `waiting` (an increment that first awaits `wait()`)
/// → END.
fn first_then_waiting<F, Fut>(wait: F) -> StateGraph<Counter>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("first", |s: &Counter| {
        Ok(CounterUpdate::default().n(s.n + 1))
    })
    .add_node("waiting", move |s: Arc<Counter>| {
        let waited = wait();
        async move {
            waited.await;
            Ok(CounterUpdate::default().n(s.n + 1))
        }
    })
    .add_edge(START, "first")
    .add_edge("first", "waiting")
    .add_edge("waiting", END);
    g
}

/// Counts to `last`, one step per increment; `reached` is notified when the node computes
/// `last` (see [`counting_graph_notifying`]).
fn counting_graph(last: i64, reached: Arc<Notify>) -> StateGraph<Counter> {
    counting_graph_notifying(last, vec![(last, reached)])
}

/// Counts to `last`; each `(n, notify)` is notified when the node computes `n`.
fn counting_graph_notifying(last: i64, marks: Vec<(i64, Arc<Notify>)>) -> StateGraph<Counter> {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", move |s: &Counter| {
        for (n, notify) in &marks {
            if s.n + 1 == *n {
                notify.notify_one();
            }
        }
        Ok(CounterUpdate::default()
            .n(s.n + 1)
            .seen(vec![format!("inc {}", s.n + 1)]))
    })
    .add_edge(START, "inc")
    .add_conditional_edges(
        "inc",
        move |s: &Counter| {
            if s.n < last {
                "inc"
            } else {
                END
            }
        },
    );
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_queue_while_the_saver_is_busy_and_are_stored_in_order() {
    const LAST: i64 = 20;
    let saver = Gated::new(None);
    let reached = Arc::new(Notify::new());
    let app = counting_graph(LAST, Arc::clone(&reached))
        .compile(saver.clone())
        .expect("compile");
    let config = async_at_once("queued");
    let run = spawn_run(&app, &config);
    // The first batch (the input checkpoint) is held; the run goes on meanwhile.
    reached.notified().await;
    saver.open();
    let out = run.await.expect("join").expect("run");
    assert_eq!(out.n, LAST);

    // Input (step -1), START (step 0), then one checkpoint per step of inc.
    let checkpoints = LAST as usize + 2;
    let batches = saver.batches();
    assert_eq!(batches[0].checkpoints, 1, "the input checkpoint goes alone");
    assert!(
        batches[1].checkpoints >= checkpoints - 2,
        "the steps that ran while the first batch was held go in one batch: {batches:?}"
    );
    assert_eq!(
        batches.iter().map(|b| b.checkpoints).sum::<usize>(),
        checkpoints,
        "every checkpoint is handed over once: {batches:?}"
    );
    assert!(
        batches
            .iter()
            .skip(1)
            .flat_map(|b| &b.tasks[1..])
            .all(|&t| t == 1),
        "each step's writes travel with its checkpoint: {batches:?}"
    );

    let history: Vec<_> = app
        .get_state_history(config.clone(), HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    let steps: Vec<i64> = history
        .iter()
        .map(|s| s.metadata.step.expect("step"))
        .collect();
    assert_eq!(steps, (-1..=LAST).rev().collect::<Vec<_>>());
    for pair in history.windows(2) {
        assert_eq!(
            pair[0].parent_config.as_ref().map(|p| &p.checkpoint_id),
            Some(&pair[1].config.checkpoint_id),
            "each checkpoint's parent is the one before it"
        );
    }
    assert_eq!(history[0].values.n, LAST);
    assert_eq!(history[0].values.seen.len(), LAST as usize);
    for snapshot in &history {
        let step = snapshot.metadata.step.expect("step");
        assert_eq!(
            snapshot.values.n,
            step.max(0),
            "the state after step {step}"
        );
        assert_eq!(snapshot.values.seen.len() as i64, step.max(0));
    }
    let state = app
        .get_state(config)
        .await
        .expect("get_state")
        .expect("a state");
    assert_eq!(state.values, out);
}

/// A run whose queue is full waits only until the flusher takes the queue, not until it is
/// stored: with the second batch still held by the saver, the run goes on and fills the next
/// one, so steps and commits overlap. (Waiting for the queue to drain made the run stop at
/// about `MAX_QUEUED` steps here.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_waits_for_room_not_for_the_queue_to_drain() {
    const LAST: i64 = 200;
    // Below 64 queued checkpoints while the first batch is held; beyond 64 + 64 once the
    // second batch is handed over and held in turn.
    let (queued, beyond) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
    let saver = Gated::holding(2, None);
    let app = counting_graph_notifying(
        LAST,
        vec![(60, Arc::clone(&queued)), (110, Arc::clone(&beyond))],
    )
    .compile(saver.clone())
    .expect("compile");
    let config = async_at_once("room").with_recursion_limit(LAST as usize + 10);
    let run = spawn_run(&app, &config);
    // Timeouts guard against hanging, they do not synchronise: the run gets there at once or
    // never.
    let guard = Duration::from_secs(60);
    tokio::time::timeout(guard, queued.notified())
        .await
        .expect("the run reached step 60 while its first batch was held");
    saver.open();
    tokio::time::timeout(guard, beyond.notified())
        .await
        .expect("the run went on while its previous batch was being stored");
    let held = saver.batches();
    assert_eq!(held.len(), 2, "the second batch is still held: {held:?}");
    assert!(held[1].checkpoints >= 59, "{held:?}");
    saver.open();
    let out = run.await.expect("join").expect("run");
    assert_eq!(out.n, LAST);
    let batches = saver.batches();
    assert_eq!(
        batches.iter().map(|b| b.checkpoints).sum::<usize>(),
        LAST as usize + 2,
        "every checkpoint is handed over once: {batches:?}"
    );
    assert!(
        batches.iter().all(|b| b.checkpoints <= 64),
        "a batch holds at most the queue's bound: {batches:?}"
    );
    let steps: Vec<i64> = app
        .get_state_history(config, HistoryQuery::default())
        .map_ok(|s| s.metadata.step.expect("step"))
        .try_collect()
        .await
        .expect("history");
    assert_eq!(steps, (-1..=LAST).rev().collect::<Vec<_>>());
}

/// With the default commit delay a run that ends within it stores all its checkpoints in one
/// batch: the run's end hands the queue over at once instead of waiting out the delay (an
/// hour here; the guard fails the test long before).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_run_stores_all_its_checkpoints_in_one_batch() {
    const LAST: i64 = 20;
    let saver = Gated::holding(0, None);
    let app = counting_graph(LAST, Arc::new(Notify::new()))
        .compile(saver.clone())
        .expect("compile");
    let config = RunConfig::thread("short")
        .with_durability(Durability::Async)
        .with_commit_delay(Duration::from_secs(3600));
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        app.invoke(Some(CounterUpdate::default()), config.clone()),
    )
    .await
    .expect("the run's end flushes without waiting out the delay")
    .expect("run");
    assert_eq!(out.n, LAST);
    let batches = saver.batches();
    assert_eq!(
        batches.iter().map(|b| b.checkpoints).collect::<Vec<_>>(),
        [LAST as usize + 2],
        "input, START and every step in one batch"
    );
    // The run stored its queue itself; its flusher, still in its delay, no longer holds the
    // thread: the next run starts at once.
    let again = app
        .invoke(None, config)
        .await
        .expect("the next run on the thread");
    assert_eq!(again.n, LAST);
}

/// A run still busy when the commit delay has passed gets what it queued handed over
/// meanwhile: the node blocks until the saver has received the first batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_hands_its_checkpoints_over_after_the_commit_delay() {
    let saver = Gated::holding(0, None);
    let release = Arc::new(Notify::new());
    let g = first_then_waiting({
        let release = Arc::clone(&release);
        move || {
            let release = Arc::clone(&release);
            async move { release.notified().await }
        }
    });
    let app = g.compile(saver.clone()).expect("compile");
    let config = RunConfig::thread("long")
        .with_durability(Durability::Async)
        .with_commit_delay(Duration::from_millis(1));
    let run = spawn_run(&app, &config);
    tokio::time::timeout(Duration::from_secs(60), saver.received.notified())
        .await
        .expect("a batch was handed over while the run waited in a node");
    let first = saver.batches();
    assert_eq!(first.len(), 1, "{first:?}");
    assert!(
        (1..=3).contains(&first[0].checkpoints),
        "what the run made before the waiting node (input, START, first): {first:?}"
    );
    release.notify_one();
    let out = run.await.expect("join").expect("run");
    assert_eq!(out.n, 2);
    assert_eq!(
        saver.batches().iter().map(|b| b.checkpoints).sum::<usize>(),
        4,
        "input, START, first, waiting"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_fails_the_run_and_nothing_after_it_is_stored() {
    const LAST: i64 = 10;
    let saver = Gated::new(Some(1));
    let reached = Arc::new(Notify::new());
    let app = counting_graph(LAST, Arc::clone(&reached))
        .compile(saver.clone())
        .expect("compile");
    let config = async_at_once("failing");
    let run = spawn_run(&app, &config);
    reached.notified().await;
    saver.open();
    let err = run
        .await
        .expect("join")
        .expect_err("the second batch fails");
    assert!(err.to_string().contains("disk full"), "{err}");

    let batches = saver.batches();
    let stored: Vec<_> = app
        .get_state_history(config, HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    assert_eq!(
        stored
            .iter()
            .map(|s| s.metadata.step.expect("step"))
            .collect::<Vec<_>>(),
        [-1],
        "only the first batch is stored: {batches:?}"
    );
    assert!(
        batches.len() <= 3,
        "after the failure at most the step that was running hands over its checkpoint \
         (it is refused): {batches:?}"
    );
}

/// In `Sync` mode each task's writes are saved as it finishes (so a crash loses none); in
/// `Async` mode they go with the step's checkpoint.
#[tokio::test]
async fn async_steps_of_parallel_tasks_store_their_writes_with_the_checkpoint_in_one_call() {
    #[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
    struct Fan {
        #[reducer(append)]
        done: Vec<String>,
    }
    {
        let durability = Durability::Async;
        let saver = Gated::new(None);
        saver.open();
        let mut g = StateGraph::<Fan>::new();
        for name in ["a", "b", "c"] {
            g.add_sync_node(name, move |_: &Fan| {
                Ok(FanUpdate::default().done(vec![name.to_owned()]))
            })
            .add_edge(START, name)
            .add_edge(name, END);
        }
        let app = g.compile(saver.clone()).expect("compile");
        let config = RunConfig::thread("fan").with_durability(durability);
        let out = app
            .invoke(Some(FanUpdate::default()), config.clone())
            .await
            .expect("run");
        assert_eq!(out.done.len(), 3);
        let batches = saver.batches();
        assert!(
            batches.iter().any(|b| b.tasks.contains(&3)),
            "{durability:?}: the three tasks' writes go with the step's checkpoint: {batches:?}"
        );
        let history: Vec<_> = app
            .get_state_history(config, HistoryQuery::default())
            .try_collect()
            .await
            .expect("history");
        assert_eq!(history.len(), 3, "input, START, the fan-out step");
        assert_eq!(
            history[1].tasks.len(),
            3,
            "{durability:?}: the step's three tasks"
        );
    }
}

/// In sync mode the input checkpoint and the START step's checkpoint are stored in one call,
/// before any node runs; every later checkpoint is stored before the next step starts.
#[tokio::test]
async fn sync_runs_store_the_input_with_the_start_step_before_any_node_runs() {
    let saver = Gated::new(None);
    saver.open();
    let stored_before_node = Arc::new(Mutex::new(Vec::new()));
    let mut g = StateGraph::<Counter>::new();
    {
        let (saver, seen) = (Arc::clone(&saver), Arc::clone(&stored_before_node));
        g.add_node("inc", move |s: Arc<Counter>| {
            let (saver, seen) = (Arc::clone(&saver), Arc::clone(&seen));
            async move {
                let stored = saver
                    .inner
                    .list(&ListQuery::thread("sync-input"))
                    .await
                    .expect("list");
                seen.lock().expect("lock").push(stored.len());
                Ok(CounterUpdate::default().n(s.n + 1))
            }
        })
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |s: &Counter| if s.n < 3 { "inc" } else { END });
    }
    let app = g.compile(saver.clone()).expect("compile");
    let config = RunConfig::thread("sync-input").with_durability(Durability::Sync);
    let out = app
        .invoke(Some(CounterUpdate::default()), config.clone())
        .await
        .expect("run");
    assert_eq!(out.n, 3);
    assert_eq!(
        saver.batches(),
        [Batch {
            checkpoints: 2,
            tasks: vec![0, 1],
        }],
        "one call stores the input checkpoint and the START step's (with its task's writes)"
    );
    assert_eq!(
        *stored_before_node.lock().expect("lock"),
        [2, 3, 4],
        "each node runs after every checkpoint before it is stored"
    );
    let history: Vec<_> = app
        .get_state_history(config, HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    assert_eq!(
        history
            .iter()
            .map(|s| s.metadata.step.expect("step"))
            .collect::<Vec<_>>(),
        [3, 2, 1, 0, -1]
    );
}

/// A run whose `invoke` is dropped mid-way keeps its thread busy until the checkpoints it
/// queued are stored, so the next run on the thread starts from the last of them instead of
/// racing the dropped run's writes; the thread's history stays one unbroken chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_run_holds_its_thread_until_its_checkpoints_are_stored() {
    // With no commit delay the flusher holds the first batch when the run is dropped; with
    // the default one, it may still be in its delay.
    for delay in [Duration::ZERO, cairn_graph::DEFAULT_COMMIT_DELAY] {
        cancelled_run_holds_its_thread(delay).await;
    }
}

async fn cancelled_run_holds_its_thread(delay: Duration) {
    const LAST: i64 = 100;
    let saver = Gated::new(None);
    let reached = Arc::new(Notify::new());
    let mut g = StateGraph::<Counter>::new();
    {
        let reached = Arc::clone(&reached);
        g.add_sync_node("inc", move |s: &Counter| {
            if s.n + 1 == 10 {
                reached.notify_one();
            }
            Ok(CounterUpdate::default().n(s.n + 1))
        })
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |s: &Counter| if s.n < LAST { "inc" } else { END });
    }
    let app = g.compile(saver.clone()).expect("compile");
    let config = async_at_once("cancelled")
        .with_recursion_limit(1_000)
        .with_commit_delay(delay);
    let run = spawn_run(&app, &config);
    // The first batch is held, so everything the run produces stays queued.
    reached.notified().await;
    run.abort();
    assert!(
        run.await.is_err_and(|e| e.is_cancelled()),
        "the run was cancelled"
    );
    let busy = app.invoke(None, config.clone()).await;
    assert!(
        matches!(&busy, Err(GraphError::ThreadBusy { thread_id }) if thread_id == "cancelled"),
        "while the dropped run's checkpoints are queued its thread is busy: {busy:?}"
    );

    // The first batch reaches the saver (at once, or once the delay has passed), then the gate
    // opens.
    tokio::time::timeout(Duration::from_secs(60), saver.received.notified())
        .await
        .expect("the dropped run's first batch reaches the saver");
    saver.open();
    let mut resumed = None;
    for _ in 0..100_000 {
        match app.invoke(None, config.clone()).await {
            Err(GraphError::ThreadBusy { .. }) => tokio::task::yield_now().await,
            other => {
                resumed = Some(other);
                break;
            }
        }
    }
    let out = resumed
        .expect("the thread is released once the queue is stored")
        .expect("the next run resumes");
    assert_eq!(out.n, LAST);

    let history: Vec<_> = app
        .get_state_history(config, HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    let steps: Vec<i64> = history
        .iter()
        .map(|s| s.metadata.step.expect("step"))
        .collect();
    assert_eq!(steps.len(), history.len());
    for pair in history.windows(2) {
        assert_eq!(
            pair[0].parent_config.as_ref().map(|p| &p.checkpoint_id),
            Some(&pair[1].config.checkpoint_id),
            "one chain: {steps:?}"
        );
    }
    let stored = saver
        .inner
        .list(&ListQuery::thread("cancelled"))
        .await
        .expect("list");
    assert_eq!(
        stored.len(),
        history.len(),
        "no checkpoint outside the chain (no fork): {steps:?}"
    );
    assert_eq!(steps.first(), Some(&LAST));
    assert_eq!(steps.last(), Some(&-1));
}

/// A run that fails after handing checkpoints over returns only once they are stored, in
/// every mode: the thread's history then shows where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_run_returns_after_its_checkpoints_are_stored() {
    #[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
    struct Doc {
        title: String,
    }
    for durability in [Durability::Async, Durability::Sync] {
        let saver = Arc::new(cairn_sqlite::SqliteSaver::in_memory().expect("sqlite"));
        let mut g = StateGraph::<Doc>::new();
        for name in ["a", "b"] {
            g.add_sync_node(name, move |_: &Doc| Ok(DocUpdate::default().title(name)))
                .add_edge(START, name)
                .add_edge(name, END);
        }
        let app = g.compile(saver.clone()).expect("compile");
        let config = RunConfig::thread("conflict").with_durability(durability);
        let err = app
            .invoke(Some(DocUpdate::default()), config.clone())
            .await
            .expect_err("two writes to one replace field");
        assert!(
            matches!(err, GraphError::ConflictingWrites { .. }),
            "{durability:?}: {err}"
        );
        let steps: Vec<i64> = saver
            .list(&ListQuery::thread("conflict"))
            .await
            .expect("list")
            .iter()
            .map(|t| t.metadata.step.expect("step"))
            .collect();
        assert_eq!(
            steps,
            [0, -1],
            "{durability:?}: the input and START checkpoints are stored when the error returns"
        );
    }
}

/// On a Tokio runtime built without timers the commit delay is skipped (the flusher starts at
/// once) instead of failing or leaving the queue without a flusher: a run whose nodes wait
/// completes with every checkpoint stored.
#[test]
fn a_runtime_without_timers_skips_the_commit_delay() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("a runtime without timers");
    runtime.block_on(async {
        // Beyond `MAX_QUEUED`, so the run also waits for room while its nodes wait.
        const LAST: i64 = 200;
        let saver = Gated::holding(0, None);
        let mut g = StateGraph::<Counter>::new();
        g.add_node("inc", |s: Arc<Counter>| async move {
            // Not done on the first poll: the run arms its flusher while it waits.
            tokio::task::yield_now().await;
            Ok(CounterUpdate::default().n(s.n + 1))
        })
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |s: &Counter| if s.n < LAST { "inc" } else { END });
        let app = g.compile(saver.clone()).expect("compile");
        let config = RunConfig::thread("no-timers")
            .with_durability(Durability::Async)
            .with_recursion_limit(300);
        let out = app
            .invoke(Some(CounterUpdate::default()), config)
            .await
            .expect("run");
        assert_eq!(out.n, LAST);
        assert_eq!(
            saver.batches().iter().map(|b| b.checkpoints).sum::<usize>(),
            LAST as usize + 2
        );
    });
}

/// A run dropped while its flusher waits out the commit delay (an hour here) has its queue
/// stored at once: the next run on the thread does not wait for the delay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_dropped_during_the_commit_delay_is_stored_at_once() {
    let saver = Gated::holding(0, None);
    let stuck = Arc::new(Notify::new());
    let g = first_then_waiting({
        let stuck = Arc::clone(&stuck);
        move || {
            let stuck = Arc::clone(&stuck);
            async move {
                stuck.notify_one();
                // Never finishes: the run waits here (its flusher in its delay) until it
                // is dropped.
                std::future::pending::<()>().await
            }
        }
    });
    let app = g.compile(saver.clone()).expect("compile");
    let config = RunConfig::thread("dropped-delay")
        .with_durability(Durability::Async)
        .with_commit_delay(Duration::from_secs(3600));
    let run = spawn_run(&app, &config);
    let guard = Duration::from_secs(60);
    tokio::time::timeout(guard, stuck.notified())
        .await
        .expect("the run reached the stuck node");
    assert!(
        saver.batches().is_empty(),
        "nothing handed over within the delay"
    );
    run.abort();
    assert!(run.await.is_err_and(|e| e.is_cancelled()));
    let state = tokio::time::timeout(guard, async {
        loop {
            match app.get_state(config.clone()).await {
                Ok(Some(state)) if state.values.n == 1 => break state,
                _ => tokio::task::yield_now().await,
            }
        }
    })
    .await
    .expect("the dropped run's checkpoints are stored without waiting out the delay");
    assert_eq!(state.values.n, 1);
    assert_eq!(
        saver.batches().iter().map(|b| b.checkpoints).sum::<usize>(),
        3,
        "input, START and first"
    );
}

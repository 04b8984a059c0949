//! The Pregel loop: super-steps, concurrent tasks, pending writes and checkpoints.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

use cairn_checkpoint::{
    CheckpointConfig, CheckpointMetadata, CheckpointSaver, CheckpointSource, PendingWrite,
    TypedValue, ValueCodec, ERROR, INTERRUPT, RESUME,
};
use futures::future::BoxFuture;
use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::channels::{
    is_special, resolve_goto, resolve_route, Channels, Spec, StoredExtra, Task, TaskWrites,
};
use crate::command::{interrupt_id, Command, Interrupt, Resume, RunOutcome, Scratch};
use crate::config::RunConfig;
use crate::error::{GraphError, Result};
use crate::graph::{StateGraph, START};
use crate::options::Durability;
use crate::persist::Persister;
use crate::state::State;

/// The task id of writes made by no task (a caller's [`Command`]), as in LangGraph.
pub const NULL_TASK_ID: &str = "00000000-0000-0000-0000-000000000000";

/// What [`CompiledGraph::stream`] emits.
#[derive(Debug, Clone)]
pub enum StreamEvent<S: State> {
    /// The whole state after a super-step.
    Values {
        /// The super-step.
        step: i64,
        /// The state.
        state: S,
    },
    /// What one node wrote in a super-step.
    Updates {
        /// The super-step.
        step: i64,
        /// The node.
        node: String,
        /// Its update.
        update: S::Update,
    },
    /// Task and checkpoint events, as they happen ([`StreamMode::Debug`]).
    Debug(DebugEvent),
    /// A value a node emitted with [`emit`] ([`StreamMode::Custom`]).
    Custom {
        /// The super-step.
        step: i64,
        /// The emitting node.
        node: String,
        /// The value.
        value: serde_json::Value,
    },
    /// The run stopped at interrupts (always sent, whatever the modes); the stream ends.
    Interrupted {
        /// The pending interrupts (empty at a static breakpoint).
        interrupts: Vec<Interrupt>,
    },
}

/// A [`StreamMode::Debug`] event.
#[derive(Debug, Clone, PartialEq)]
pub enum DebugEvent {
    /// A task started (tasks whose saved writes are reused do not start).
    TaskStart {
        /// The super-step.
        step: i64,
        /// The task id.
        task_id: String,
        /// The node.
        node: String,
    },
    /// A task ended.
    TaskEnd {
        /// The super-step.
        step: i64,
        /// The task id.
        task_id: String,
        /// The node.
        node: String,
        /// Its error, if it failed.
        error: Option<String>,
        /// Its interrupt, if it was interrupted.
        interrupt: Option<Interrupt>,
    },
    /// A checkpoint was written (or handed to the saver, in [`Durability::Async`] mode).
    Checkpoint {
        /// Its step.
        step: i64,
        /// Its config.
        config: CheckpointConfig,
    },
}

/// Which events [`CompiledGraph::stream`] emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamMode {
    /// [`StreamEvent::Values`] after every super-step.
    Values,
    /// [`StreamEvent::Updates`] for every task.
    Updates,
    /// [`StreamEvent::Debug`]: task starts/ends and checkpoints, as they happen.
    Debug,
    /// [`StreamEvent::Custom`]: values nodes emit with [`emit`].
    Custom,
}

/// The task a node is running in, available to node code through [`current_task`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The task's deterministic id (empty when the graph has no saver).
    pub id: String,
    /// The node's name.
    pub name: String,
    /// The task path (`~__pregel_pull, node` or `~__pregel_push, 0000000003`).
    pub path: String,
    /// The super-step.
    pub step: i64,
    /// The thread (empty when there is none).
    pub thread_id: String,
}

/// Sends a node's custom stream event: `(step, node, value)`.
type Emitter = Arc<dyn Fn(i64, String, serde_json::Value) -> BoxFuture<'static, ()> + Send + Sync>;

/// Everything a running node can reach through task-local storage.
pub(crate) struct TaskContext {
    pub(crate) info: TaskInfo,
    /// The graph's checkpoint namespace.
    pub(crate) ns: String,
    pub(crate) scratch: Mutex<Scratch>,
    emitter: Option<Emitter>,
    /// The saver of the running graph (a subgraph node runs its child with it).
    pub(crate) saver: Option<Arc<dyn CheckpointSaver>>,
    /// The checkpoint the task's step derives from.
    pub(crate) current: Option<CheckpointConfig>,
    /// The running graph's `parents` metadata (its ancestors' namespaces -> checkpoint ids).
    pub(crate) parents: Arc<BTreeMap<String, String>>,
}

impl TaskContext {
    /// The task's own namespace (`<ns|>node:task_id`), as LangGraph names it.
    pub(crate) fn task_ns(&self) -> String {
        if self.ns.is_empty() {
            format!("{}:{}", self.info.name, self.info.id)
        } else {
            format!("{}|{}:{}", self.ns, self.info.name, self.info.id)
        }
    }
}

tokio::task_local! {
    pub(crate) static CURRENT_TASK: TaskContext;
}

/// The task the calling node runs in; `None` outside of a node.
pub fn current_task() -> Option<TaskInfo> {
    CURRENT_TASK.try_with(|c| c.info.clone()).ok()
}

/// Emits a custom stream event from inside a node ([`StreamMode::Custom`]): progress,
/// tokens, anything JSON. Does nothing when nobody streams custom events.
pub async fn emit<V: serde::Serialize>(value: V) {
    let target = CURRENT_TASK
        .try_with(|c| {
            c.emitter
                .clone()
                .map(|e| (e, c.info.step, c.info.name.clone()))
        })
        .ok()
        .flatten();
    if let Some((emitter, step, node)) = target {
        match serde_json::to_value(value) {
            Ok(v) => emitter(step, node, v).await,
            Err(e) => tracing::warn!(error = %e, "cannot encode a custom stream event"),
        }
    }
}

/// Threads with a run in progress: (saver identity, namespace, thread).
type RunKey = (usize, String, String);

fn running() -> &'static Mutex<HashSet<RunKey>> {
    static RUNNING: OnceLock<Mutex<HashSet<RunKey>>> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Releases a thread when its run ends, however it ends (and, in async durability, once its
/// checkpoints are stored).
pub(crate) struct ThreadGuard(Option<RunKey>);

impl ThreadGuard {
    pub(crate) fn acquire(key: Option<RunKey>) -> Result<Self> {
        if let Some(key) = &key {
            let mut set = running().lock().unwrap_or_else(|p| p.into_inner());
            if !set.insert(key.clone()) {
                return Err(GraphError::ThreadBusy {
                    thread_id: key.2.clone(),
                });
            }
        }
        Ok(ThreadGuard(key))
    }
}

impl Drop for ThreadGuard {
    fn drop(&mut self) {
        if let Some(key) = self.0.take() {
            running()
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
    }
}

pub(crate) struct Inner<S: State> {
    pub(crate) spec: Arc<Spec<S>>,
    pub(crate) saver: Option<Arc<dyn CheckpointSaver>>,
    /// Distinguishes graphs without a saver in the running-threads registry.
    identity: usize,
    /// Default durability of runs.
    durability: Durability,
    /// The last state each thread's run ended with, by the checkpoint that saved it, so the
    /// next invoke of the thread skips decoding it.
    pub(crate) states: StateCache<S>,
}

/// Most threads whose last state [`StateCache`] keeps.
const STATE_CACHE_CAP: usize = 64;

/// `(thread, namespace)` → the state a run ended with.
pub(crate) struct StateCache<S: State>(Mutex<CachedStates<S>>);

/// The cached states by `(thread, namespace)`, each with the sequence number of its
/// insertion, so that a full cache gives up its oldest entry.
struct CachedStates<S: State> {
    by_thread: HashMap<(String, String), (u64, CachedState<S>)>,
    next_seq: u64,
}

/// The state a run left in memory: the checkpoint that saved it, the state, and the
/// checkpoint's other channels as stored (when known exactly), so the next run's head read
/// fetches no value at all.
pub(crate) struct CachedState<S: State> {
    pub(crate) id: String,
    pub(crate) state: Arc<S>,
    pub(crate) extras: Option<Arc<[StoredExtra]>>,
}

impl<S: State> Clone for CachedState<S> {
    fn clone(&self) -> Self {
        CachedState {
            id: self.id.clone(),
            state: Arc::clone(&self.state),
            extras: self.extras.clone(),
        }
    }
}

impl<S: State> Default for StateCache<S> {
    fn default() -> Self {
        StateCache(Mutex::new(CachedStates {
            by_thread: HashMap::new(),
            next_seq: 0,
        }))
    }
}

impl<S: State> StateCache<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, CachedStates<S>> {
        // Entries are inserted whole: a poisoned map is still consistent.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the state saved in checkpoint `id` of `(thread, ns)`, if it is the one cached.
    /// The entry is removed (the run puts its own state back when it ends), so the run owns
    /// the state and updates it in place.
    fn take(&self, thread: &str, ns: &str, id: &str) -> Option<Arc<S>> {
        let mut cache = self.lock();
        let key = (thread.to_owned(), ns.to_owned());
        if cache.by_thread.get(&key)?.1.id != id {
            return None;
        }
        cache.by_thread.remove(&key).map(|(_, cached)| cached.state)
    }

    /// The cached state of `(thread, ns)`, left in the cache.
    pub(crate) fn peek(&self, thread: &str, ns: &str) -> Option<CachedState<S>> {
        self.lock()
            .by_thread
            .get(&(thread.to_owned(), ns.to_owned()))
            .map(|(_, cached)| cached.clone())
    }

    fn put(&self, thread: &str, ns: &str, cached: CachedState<S>) {
        let mut cache = self.lock();
        let key = (thread.to_owned(), ns.to_owned());
        if cache.by_thread.len() >= STATE_CACHE_CAP && !cache.by_thread.contains_key(&key) {
            // Give up the entry put longest ago: with many threads served at once, the
            // threads still running keep theirs (a run takes its entry out while it runs
            // and puts it back when it ends).
            let oldest = cache
                .by_thread
                .iter()
                .min_by_key(|(_, (seq, _))| *seq)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                cache.by_thread.remove(&oldest);
            }
        }
        let seq = cache.next_seq;
        cache.next_seq += 1;
        cache.by_thread.insert(key, (seq, cached));
    }
}

/// A validated, runnable graph. Cheap to clone; share it between tasks.
pub struct CompiledGraph<S: State> {
    pub(crate) inner: Arc<Inner<S>>,
    pub(crate) codec: ValueCodec,
}

impl<S: State> Clone for CompiledGraph<S> {
    fn clone(&self) -> Self {
        CompiledGraph {
            inner: Arc::clone(&self.inner),
            codec: self.codec,
        }
    }
}

type EventSink<S> = Option<mpsc::Sender<Result<StreamEvent<S>>>>;

#[derive(Default, Clone, Copy)]
pub(crate) struct Modes {
    values: bool,
    updates: bool,
    debug: bool,
    custom: bool,
}

/// What a run starts from.
pub(crate) enum RunInput<S: State> {
    /// New input: a fresh run from START.
    Update(S::Update),
    /// Continue the thread's unfinished run.
    Continue,
    /// Continue with a caller's command (resume values, update, goto).
    Command(Command<S>),
}

impl<S: State> RunInput<S> {
    /// `Some(update)`: a fresh run from START; `None`: continue the thread's run.
    fn from_update(input: Option<S::Update>) -> Self {
        match input {
            Some(u) => RunInput::Update(u),
            None => RunInput::Continue,
        }
    }
}

/// How one task ended.
pub(crate) enum TaskEnd<S: State> {
    Done(TaskWrites<S>),
    Interrupted(Vec<Interrupt>),
}

/// The result of running one task, plus (in exit mode) the writes still to be saved.
pub(crate) struct TaskOutcome<S: State> {
    end: std::result::Result<TaskEnd<S>, GraphError>,
    unsaved: Vec<(String, TypedValue)>,
}

impl<S: State> TaskOutcome<S> {
    fn err(e: GraphError) -> Self {
        TaskOutcome {
            end: Err(e),
            unsaved: Vec::new(),
        }
    }
}

/// Resume information for a step's tasks.
#[derive(Default)]
struct ResumeCtx {
    /// The run's unassigned resume value (first interrupting task takes it).
    null: Option<Arc<Mutex<Option<serde_json::Value>>>>,
    /// Resume values by interrupt id.
    map: Option<BTreeMap<String, serde_json::Value>>,
    /// Whether this run's command gave the resume (else it was read back with the
    /// checkpoint's pending writes, and an earlier run may have used it).
    given: bool,
}

impl ResumeCtx {
    /// The run moved past the resume's step: what it did not answer answers nothing later,
    /// as in LangGraph, where a resume is a pending write of the checkpoint its step starts
    /// from. Left in place, a value nothing took would answer an interrupt raised later in
    /// the run that nobody was asked.
    fn moved_on(&mut self) {
        self.null = None;
        self.map = None;
        self.given = false;
    }

    /// After a step's tasks ran: a resume lasts through steps replayed from saved writes
    /// only (steps that wrote no checkpoint, on the way to the task that asked), and only
    /// when this run's command gave it; a step where a task ran fresh uses it up.
    fn after_step(&mut self, any_task_ran: bool) {
        if any_task_ran || !self.given {
            self.moved_on();
        }
    }
}

/// A checkpoint the run has computed but not saved yet (exit durability).
struct Unsaved {
    id: String,
    step: i64,
    source: CheckpointSource,
}

impl Unsaved {
    /// Stores the checkpoint of `channels` under this id, as a child of `parent`.
    async fn save<S: State>(
        self,
        persister: &mut Persister<'_>,
        parent: &CheckpointConfig,
        channels: &mut Channels<S>,
        spec: &Spec<S>,
        codec: &ValueCodec,
        meta_base: &CheckpointMetadata,
    ) -> Result<CheckpointConfig> {
        let (mut cp, new_versions) = channels.checkpoint(spec, codec)?;
        cp.id = self.id;
        let mut meta = meta_base.clone();
        meta.source = Some(self.source);
        meta.step = Some(self.step);
        persister.put(parent, cp, meta, new_versions).await
    }
}

impl<S: State> CompiledGraph<S> {
    pub(crate) fn build(
        graph: &StateGraph<S>,
        saver: Option<Arc<dyn CheckpointSaver>>,
    ) -> Result<Self> {
        let spec = Spec::build(graph)?;
        static NEXT_IDENTITY: std::sync::atomic::AtomicUsize =
            std::sync::atomic::AtomicUsize::new(1);
        let identity = NEXT_IDENTITY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(CompiledGraph {
            inner: Arc::new(Inner {
                spec: Arc::new(spec),
                saver,
                identity,
                durability: graph.durability,
                states: StateCache::default(),
            }),
            codec: ValueCodec::default(),
        })
    }

    /// Uses `codec` to encode channel values and writes (MessagePack by default).
    pub fn with_codec(mut self, codec: ValueCodec) -> Self {
        self.codec = codec;
        self
    }

    /// The same graph with another saver (a subgraph runs with its parent's saver).
    pub(crate) fn bound(&self, saver: Option<Arc<dyn CheckpointSaver>>) -> CompiledGraph<S> {
        CompiledGraph {
            inner: Arc::new(Inner {
                spec: Arc::clone(&self.inner.spec),
                saver,
                identity: self.inner.identity,
                durability: self.inner.durability,
                states: StateCache::default(),
            }),
            codec: self.codec,
        }
    }

    /// The checkpoint saver, if the graph has one.
    pub fn saver(&self) -> Option<&Arc<dyn CheckpointSaver>> {
        self.inner.saver.as_ref()
    }

    /// The node names, in the order they were added.
    pub fn node_names(&self) -> Vec<&str> {
        self.inner.spec.nodes[1..]
            .iter()
            .map(|n| n.name.as_str())
            .collect()
    }

    /// Runs the graph and returns the state where it stopped.
    ///
    /// * `Some(input)`: the input is applied (through the reducers) to the thread's state —
    ///   empty for a new thread — and a run starts from START.
    /// * `None`: resumes the thread's unfinished run from its latest checkpoint (or from
    ///   `config.checkpoint_id`: replay), skipping tasks whose writes were already saved.
    ///
    /// A run that stops at an [`interrupt`](crate::interrupt) or a breakpoint also returns
    /// `Ok(state)`; use [`invoke_outcome`](Self::invoke_outcome) to tell the two apart and
    /// read the interrupts.
    pub async fn invoke(
        &self,
        input: Option<S::Update>,
        config: impl Into<RunConfig>,
    ) -> Result<S> {
        Ok(self.invoke_outcome(input, config).await?.into_state())
    }

    /// Like [`invoke`](Self::invoke), telling whether the run finished or stopped at
    /// interrupts (and which).
    pub async fn invoke_outcome(
        &self,
        input: Option<S::Update>,
        config: impl Into<RunConfig>,
    ) -> Result<RunOutcome<S>> {
        let input = RunInput::from_update(input);
        self.run_outcome(input, config.into(), None, Modes::default())
            .await
    }

    /// Like [`invoke`](Self::invoke), returning the state shared with the runtime's
    /// per-thread cache (which keeps it for the thread's next run) instead of a copy of it:
    /// no clone of the whole state, such as a chat's growing message list, per call.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cairn_graph::{State, StateGraph, RunConfig, START, END};
    /// use cairn_checkpoint::InMemorySaver;
    ///
    /// #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
    /// struct Chat {
    ///     #[reducer(append)]
    ///     messages: Vec<String>,
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let mut g = StateGraph::<Chat>::new();
    /// g.add_sync_node("echo", |s: &Chat| {
    ///     let last = s.messages.last().cloned().unwrap_or_default();
    ///     Ok(ChatUpdate::default().messages(vec![format!("echo: {last}")]))
    /// })
    /// .add_edge(START, "echo")
    /// .add_edge("echo", END);
    /// let app = g.compile(Arc::new(InMemorySaver::new()))?;
    /// let input = ChatUpdate::default().messages(vec!["hi".to_owned()]);
    /// let state: Arc<Chat> = app.invoke_shared(Some(input), RunConfig::thread("t")).await?;
    /// assert_eq!(state.messages, ["hi", "echo: hi"]);
    /// # Ok::<(), cairn_graph::GraphError>(()) }).unwrap();
    /// ```
    pub async fn invoke_shared(
        &self,
        input: Option<S::Update>,
        config: impl Into<RunConfig>,
    ) -> Result<Arc<S>> {
        let input = RunInput::from_update(input);
        let (state, _) = self
            .run(input, config.into(), None, Modes::default(), None)
            .await?;
        Ok(state)
    }

    /// Continues the thread's run with a [`Command`]: answers pending interrupts
    /// ([`Command::resume`]), applies an update and schedules `goto` nodes, then runs on.
    pub async fn invoke_command(
        &self,
        command: Command<S>,
        config: impl Into<RunConfig>,
    ) -> Result<RunOutcome<S>> {
        self.run_outcome(
            RunInput::Command(command),
            config.into(),
            None,
            Modes::default(),
        )
        .await
    }

    async fn run_outcome(
        &self,
        input: RunInput<S>,
        config: RunConfig,
        sink: EventSink<S>,
        modes: Modes,
    ) -> Result<RunOutcome<S>> {
        let (state, interrupts) = self.run(input, config, sink, modes, None).await?;
        let state = Arc::try_unwrap(state).unwrap_or_else(|s| (*s).clone());
        Ok(match interrupts {
            None => RunOutcome::Finished(state),
            Some(interrupts) => RunOutcome::Interrupted { state, interrupts },
        })
    }

    /// Runs the graph like [`invoke`](Self::invoke), streaming events as super-steps finish.
    /// The run happens in a spawned task; dropping the stream stops it after the current
    /// step (the run can be resumed with `invoke(None, ..)`). A run that stops at
    /// interrupts ends the stream with [`StreamEvent::Interrupted`].
    pub fn stream(
        &self,
        input: Option<S::Update>,
        config: impl Into<RunConfig>,
        modes: &[StreamMode],
    ) -> impl Stream<Item = Result<StreamEvent<S>>> + Send + 'static {
        let input = RunInput::from_update(input);
        self.stream_input(input, config.into(), modes)
    }

    /// Like [`stream`](Self::stream), continuing with a [`Command`].
    pub fn stream_command(
        &self,
        command: Command<S>,
        config: impl Into<RunConfig>,
        modes: &[StreamMode],
    ) -> impl Stream<Item = Result<StreamEvent<S>>> + Send + 'static {
        self.stream_input(RunInput::Command(command), config.into(), modes)
    }

    fn stream_input(
        &self,
        input: RunInput<S>,
        config: RunConfig,
        modes: &[StreamMode],
    ) -> impl Stream<Item = Result<StreamEvent<S>>> + Send + 'static {
        let (tx, rx) = mpsc::channel(64);
        let graph = self.clone();
        let modes = Modes {
            values: modes.contains(&StreamMode::Values),
            updates: modes.contains(&StreamMode::Updates),
            debug: modes.contains(&StreamMode::Debug),
            custom: modes.contains(&StreamMode::Custom),
        };
        tokio::spawn(async move {
            match graph
                .run(input, config, Some(tx.clone()), modes, None)
                .await
            {
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                }
                Ok((_, Some(interrupts))) => {
                    let _ = tx.send(Ok(StreamEvent::Interrupted { interrupts })).await;
                }
                Ok(_) => {}
            }
        });
        futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
    }

    pub(crate) fn thread_key(&self, config: &RunConfig) -> Option<RunKey> {
        let thread = config.thread_id.clone()?;
        let identity = match &self.inner.saver {
            Some(saver) => Arc::as_ptr(saver) as *const () as usize,
            None => self.inner.identity,
        };
        Some((identity, config.checkpoint_ns.clone(), thread))
    }

    /// Runs until the graph finishes (`None` interrupts) or stops (`Some`). `nested` is set
    /// when the graph runs as a subgraph node of a parent graph.
    pub(crate) async fn run(
        &self,
        input: RunInput<S>,
        config: RunConfig,
        sink: EventSink<S>,
        modes: Modes,
        nested: Option<Nested>,
    ) -> Result<(Arc<S>, Option<Vec<Interrupt>>)> {
        // Shared with the run's checkpoint flusher: a run whose future is dropped mid-way
        // keeps its thread busy until its queued checkpoints are stored.
        let guard = Arc::new(ThreadGuard::acquire(self.thread_key(&config))?);
        let spec = &self.inner.spec;
        let saver_arc = self.inner.saver.as_ref();
        let saver = saver_arc.map(|s| s.as_ref());
        let codec = self.codec;
        let versioner = crate::channels::Versioner::for_run(saver);
        let durability = config.durability.unwrap_or(self.inner.durability);
        let mut persister =
            saver_arc.map(|saver| Persister::new(saver, durability, &guard, config.commit_delay));
        let result: Result<(Arc<S>, Option<Vec<Interrupt>>)> = async {
        let exit_mode = saver.is_some() && durability == Durability::Exit;
        let run_id = config
            .run_id
            .clone()
            .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        let thread_id = config.thread_id.clone().unwrap_or_default();
        if saver.is_some() && config.thread_id.is_none() {
            return Err(GraphError::InvalidArgument(
                "a graph with a checkpoint saver needs a thread id: RunConfig::thread(\"...\")"
                    .into(),
            ));
        }
        config.check_metadata()?;
        let cp_config = config.checkpoint_config();
        let before_flags = flags(spec, config.interrupt_before.as_deref(), |n| {
            n.interrupt_before
        })?;
        let after_flags = flags(spec, config.interrupt_after.as_deref(), |n| {
            n.interrupt_after
        })?;

        // 1. Load.
        let tuple = match saver {
            Some(saver) => {
                // The state a previous run left in memory need not be read back.
                let cached = self.inner.states.peek(&thread_id, &config.checkpoint_ns);
                let cached_id = cached.as_ref().map(|c| c.id.clone());
                let tuple = self
                    .read_tuple(saver, &cp_config, cached.as_ref())
                    .await?;
                // Let go of the state before taking it over, or updating it would copy it.
                drop(cached);
                if tuple.is_none() && config.checkpoint_id.is_some() {
                    return Err(GraphError::CheckpointNotFound {
                        thread_id,
                        checkpoint_id: config.checkpoint_id.clone(),
                    });
                }
                let cached = tuple.as_ref().and_then(|t| {
                    self.inner
                        .states
                        .take(&thread_id, &config.checkpoint_ns, &t.checkpoint.id)
                });
                match (tuple, cached) {
                    (Some(t), None) if cached_id.as_ref() == Some(&t.checkpoint.id) => {
                        // The values were left out for a state that is gone since: read them.
                        (saver.get_tuple(&t.config).await?, None)
                    }
                    (tuple, cached) => (tuple, cached),
                }
            }
            None => (None, None),
        };
        let (tuple, cached_state) = tuple;
        // A config naming a checkpoint replays it (time travel), unless it is a caller's
        // resume addressed at the thread's latest checkpoint (the config `get_state` hands
        // out): that is a resume as without an id, as in LangGraph, keeping the answers given
        // and the writes of tasks that finished.
        let resumes_head = match (&tuple, saver, &input) {
            (Some(t), Some(saver), RunInput::Command(c))
                if config.checkpoint_id.is_some() && c.resume.is_some() && nested.is_none() =>
            {
                let latest = CheckpointConfig {
                    thread_id: thread_id.clone(),
                    checkpoint_ns: config.checkpoint_ns.clone(),
                    checkpoint_id: None,
                };
                saver
                    .list(&cairn_checkpoint::ListQuery {
                        limit: Some(1),
                        ..cairn_checkpoint::ListQuery::from_config(&latest)
                    })
                    .await?
                    .first()
                    .is_some_and(|l| l.checkpoint.id == t.checkpoint.id)
            }
            _ => false,
        };
        let replaying = config.checkpoint_id.is_some() && !resumes_head;
        let (mut channels, mut step, mut current, mut pending) = match &tuple {
            Some(t) => (
                Channels::load_with(spec, t, &codec, cached_state, None)?,
                t.metadata.step.unwrap_or(-1) + 1,
                Some(t.config.clone()),
                if replaying {
                    Vec::new()
                } else {
                    t.pending_writes.clone()
                },
            ),
            None => (Channels::new(spec), -1, None, Vec::new()),
        };
        let mut meta_base = CheckpointMetadata::default().with_run_id(run_id.clone());
        meta_base.extra = config.metadata.clone();
        let parents = Arc::new(
            nested
                .as_ref()
                .map(|n| n.parents.clone())
                .unwrap_or_default(),
        );
        meta_base.parents = (*parents).clone();
        let thread_config = CheckpointConfig {
            thread_id: thread_id.clone(),
            checkpoint_ns: config.checkpoint_ns.clone(),
            checkpoint_id: None,
        };
        // Exit durability: the checkpoint the tasks derive from, not saved yet.
        let mut unsaved: Option<Unsaved> = None;
        // Changes applied by steps that wrote no checkpoint (per-node checkpoint policy).
        let mut changed_since_save = false;
        let mut resume = ResumeCtx::default();

        // 2. Input.
        let command = match input {
            RunInput::Update(input) => {
                // A caller's update stored on the head and not applied by a run yet (a
                // command on a finished thread) applies first, as in LangGraph.
                self.apply_null_writes(&mut channels, &pending, &versioner)?;
                // Unfinished tasks of the previous run are discarded, as in LangGraph.
                let current_id = current
                    .as_ref()
                    .and_then(|c| c.checkpoint_id.clone())
                    .unwrap_or_default();
                let discarded = channels.prepare_tasks(
                    spec,
                    &current_id,
                    &config.checkpoint_ns,
                    step,
                    false,
                )?;
                let bump = !discarded.is_empty();
                let writes = discarded
                    .iter()
                    .map(|t| (t, TaskWrites::default()))
                    .collect();
                channels.apply_writes(spec, writes, Some(input), bump, &versioner)?;
                match &mut persister {
                    Some(_) if exit_mode => {
                        unsaved = Some(Unsaved {
                            id: cairn_checkpoint::new_checkpoint_id(),
                            step,
                            source: CheckpointSource::Input,
                        });
                    }
                    Some(p) => {
                        let parent = current.as_ref().unwrap_or(&thread_config);
                        let (cp, new_versions) = channels.checkpoint(spec, &codec)?;
                        let mut meta = meta_base.clone();
                        meta.source = Some(CheckpointSource::Input);
                        meta.step = Some(step);
                        let saved = p.put_input(parent, cp, meta, new_versions).await?;
                        debug_checkpoint(&sink, modes, step, &saved).await;
                        current = Some(saved);
                    }
                    None => channels.mark_clean(),
                }
                step += 1;
                pending.clear();
                None
            }
            RunInput::Continue => Some(Command::default()),
            RunInput::Command(c) => Some(c),
        };
        if let Some(command) = command {
            let Some(tuple) = &tuple else {
                return Err(GraphError::InvalidArgument(
                    "no input and no checkpoint to resume: pass an input to start a run".into(),
                ));
            };
            if let (Some(saver), true) = (saver, replaying) {
                // Replaying an old checkpoint starts a new branch with a fork checkpoint,
                // unless it is an update/fork checkpoint nothing has continued from yet.
                let latest = saver.get_tuple(&thread_config).await?;
                let superseded = latest.is_some_and(|l| l.checkpoint.id != tuple.checkpoint.id);
                let own_branch = matches!(
                    tuple.metadata.source,
                    Some(CheckpointSource::Update | CheckpointSource::Fork)
                );
                if superseded || !own_branch {
                    channels.mark_resumed();
                    let (cp, new_versions) = channels.checkpoint(spec, &codec)?;
                    let mut meta = meta_base.clone();
                    meta.source = Some(CheckpointSource::Fork);
                    meta.step = Some(step);
                    current = Some(saver.put(&tuple.config, cp, meta, new_versions).await?);
                    step += 1;
                }
            }
            self.apply_command(
                command,
                &mut channels,
                &mut pending,
                &mut resume,
                current.as_ref(),
                &versioner,
            )
            .await?;
            if let Some(n) = &nested {
                // A subgraph answers its interrupts with the parent's resume value or map.
                if resume.null.is_none() {
                    resume.null = n.null_resume.clone();
                }
                if resume.map.is_none() {
                    resume.map = n.resume_map.as_deref().cloned();
                }
            }
            channels.mark_resumed();
        }

        // 3. Super-steps.
        let first_step = step;
        let placeholder = Arc::new(S::default());
        let any_no_checkpoint = spec.nodes.iter().any(|n| !n.checkpoint);
        let stopped: Option<Vec<Interrupt>> = loop {
            let current_id = match &unsaved {
                Some(u) => u.id.clone(),
                None => current
                    .as_ref()
                    .and_then(|c| c.checkpoint_id.clone())
                    .unwrap_or_default(),
            };
            let mut tasks = channels.prepare_tasks(
                spec,
                &current_id,
                &config.checkpoint_ns,
                step,
                saver.is_some(),
            )?;
            if tasks.is_empty() {
                break None;
            }
            if channels.should_interrupt(&before_flags, &tasks) {
                tracing::debug!(step, "stopping before an interrupt_before node");
                break Some(Vec::new());
            }
            if (step - first_step) as usize >= config.recursion_limit.saturating_add(1) {
                if let Some(p) = &mut persister {
                    // Durability exit saves a run stopped here as one that failed (LangGraph
                    // saves on any exit), so the caller can raise the limit and go on.
                    if let Some(u) = unsaved.take() {
                        let parent = current.as_ref().unwrap_or(&thread_config);
                        let at = u.step;
                        let saved = u
                            .save(p, parent, &mut channels, spec, &codec, &meta_base)
                            .await?;
                        debug_checkpoint(&sink, modes, at, &saved).await;
                    }
                    p.settle().await?;
                }
                return Err(GraphError::RecursionLimit {
                    limit: config.recursion_limit,
                });
            }
            // A lone task's writes are saved with the step's checkpoint (writes first), so a
            // saver that commits queued requests together stores both at once. In async
            // mode so are the writes of parallel tasks: that mode already accepts losing the
            // step in flight to a crash, and one call then stores the whole step. In sync
            // mode each of several tasks saves its writes as it finishes, so a crash in the
            // middle of the step does not make the finished ones run again.
            let defer_writes = !exit_mode
                && saver.is_some()
                && !any_no_checkpoint
                && (tasks.len() == 1 || durability == Durability::Async);
            if let Some(p) = &mut persister {
                if tasks.iter().any(|t| t.node != 0) {
                    p.before_nodes().await?;
                }
            }
            let span = tracing::debug_span!("superstep", step, thread_id = %thread_id, tasks = tasks.len());
            let writes_config = match &unsaved {
                Some(u) => Some(CheckpointConfig {
                    checkpoint_id: Some(u.id.clone()),
                    ..thread_config.clone()
                }),
                None => current.clone(),
            };
            let outcomes = {
            let step_tasks = self
                .run_tasks(
                    &tasks,
                    &channels,
                    &pending,
                    &mut resume,
                    StepCtx {
                        step,
                        current: writes_config.as_ref(),
                        thread_id: &thread_id,
                        ns: &config.checkpoint_ns,
                        parents: &parents,
                        save_writes: !exit_mode,
                        defer_writes,
                        sink: &sink,
                        modes,
                    },
                )
                .instrument(span.clone());
            tokio::pin!(step_tasks);
            match futures::poll!(step_tasks.as_mut()) {
                std::task::Poll::Ready(outcomes) => outcomes,
                std::task::Poll::Pending => {
                    // A node is waiting (on a model, a tool, I/O): queued checkpoints go to
                    // the saver meanwhile, once the commit delay has passed.
                    if let Some(p) = &mut persister {
                        p.arm().await;
                    }
                    step_tasks.await
                }
            }
            };
            // The tasks ran: release their hold on the state so applying the writes updates
            // it in place instead of copying it.
            for task in &mut tasks {
                task.input = Arc::clone(&placeholder);
            }
            let mut writes = Vec::with_capacity(tasks.len());
            let mut first_error = None;
            let mut interrupts = Vec::new();
            let mut order: Vec<usize> = (0..tasks.len()).collect();
            order.sort_by(|&a, &b| tasks[a].path.cmp(&tasks[b].path));
            let mut outcomes: Vec<Option<TaskOutcome<S>>> =
                outcomes.into_iter().map(Some).collect();
            let mut to_save = Vec::new();
            for &i in &order {
                let Some(outcome) = outcomes[i].take() else {
                    continue;
                };
                if !outcome.unsaved.is_empty() {
                    to_save.push((i, outcome.unsaved));
                }
                match outcome.end {
                    Ok(TaskEnd::Done(w)) => writes.push((&tasks[i], w)),
                    Ok(TaskEnd::Interrupted(int)) => interrupts.extend(int),
                    Err(e) if first_error.is_none() => first_error = Some(e),
                    Err(_) => {}
                }
            }
            if first_error.is_some() || !interrupts.is_empty() {
                // The step is not applied: its finished tasks' writes, errors and interrupts
                // are pending writes of the checkpoint the step ran from.
                if let (Some(p), true) = (&mut persister, exit_mode) {
                    let target = match unsaved.take() {
                        Some(u) => {
                            let parent = current.as_ref().unwrap_or(&thread_config);
                            let at = u.step;
                            let saved = u
                                .save(p, parent, &mut channels, spec, &codec, &meta_base)
                                .await?;
                            debug_checkpoint(&sink, modes, at, &saved).await;
                            Some(saved)
                        }
                        None => current.clone(),
                    };
                    if let Some(target) = target {
                        for (i, w) in to_save {
                            p.saver
                                .put_writes(&target, w, &tasks[i].id, &tasks[i].path)
                                .await?;
                        }
                    }
                } else if let (Some(p), Some(target)) = (&mut persister, &writes_config) {
                    // Writes held back to go with the checkpoint: the step is not applied, so
                    // they are pending writes of the checkpoint it ran from, which must be
                    // stored first.
                    p.settle().await?;
                    for (i, w) in to_save {
                        p.saver
                            .put_writes(target, w, &tasks[i].id, &tasks[i].path)
                            .await?;
                    }
                    if changed_since_save {
                        tracing::debug!(step, "stopping after steps without checkpoints");
                    }
                } else if changed_since_save {
                    // Steps without a checkpoint before this one: their writes are pending
                    // writes of `current` and are replayed on resume.
                    tracing::debug!(step, "stopping after steps without checkpoints");
                }
                if let Some(p) = &mut persister {
                    p.settle().await?;
                }
                if let Some(e) = first_error {
                    return Err(e);
                }
                tracing::debug!(step, count = interrupts.len(), "stopping at interrupts");
                return Ok((channels.state, Some(interrupts)));
            }
            let _enter = span.enter();
            let updates: Vec<(String, S::Update)> = if modes.updates && sink.is_some() {
                writes
                    .iter()
                    .filter(|(t, _)| t.node != 0)
                    .filter_map(|(t, w)| {
                        w.update
                            .clone()
                            .map(|u| (spec.nodes[t.node].name.clone(), u))
                    })
                    .collect()
            } else {
                Vec::new()
            };
            let ran_after = writes.iter().any(|(t, _)| after_flags[t.node]);
            let skip_checkpoint =
                any_no_checkpoint && writes.iter().all(|(t, _)| !spec.nodes[t.node].checkpoint);
            channels.apply_writes(spec, writes, None, true, &versioner)?;
            drop(_enter);
            match &mut persister {
                Some(_) if exit_mode => {
                    unsaved = Some(Unsaved {
                        id: cairn_checkpoint::new_checkpoint_id(),
                        step,
                        source: CheckpointSource::Loop,
                    });
                    pending.clear();
                    resume.moved_on();
                }
                Some(_) if skip_checkpoint => {
                    // Tasks of the next step derive their ids from the same checkpoint
                    // (the step number differs) and save their writes against it.
                    changed_since_save = true;
                }
                Some(p) => {
                    let parent = current.as_ref().unwrap_or(&thread_config);
                    let (cp, new_versions) = channels.checkpoint(spec, &codec)?;
                    let mut meta = meta_base.clone();
                    meta.source = Some(CheckpointSource::Loop);
                    meta.step = Some(step);
                    let saved = match (&writes_config, to_save.len()) {
                        (Some(target), n) if n > 0 && target == parent => {
                            // The tasks' writes and the step's checkpoint in one call (one
                            // transaction where the saver can).
                            let writes = to_save
                                .into_iter()
                                .map(|(i, writes)| cairn_checkpoint::TaskWrites {
                                    task_id: tasks[i].id.clone(),
                                    task_path: tasks[i].path.clone(),
                                    writes,
                                })
                                .collect();
                            p.put_with_writes(target, writes, cp, meta, new_versions)
                                .await?
                        }
                        (Some(target), n) if n > 0 => {
                            // Writes of a checkpoint older than the parent (steps without
                            // checkpoints ran since): both requests are issued before either
                            // is awaited, writes first; each keeps its own error.
                            let saver = p.saver;
                            let writes = async {
                                for (i, w) in to_save {
                                    saver
                                        .put_writes(target, w, &tasks[i].id, &tasks[i].path)
                                        .await?;
                                }
                                Ok::<(), GraphError>(())
                            };
                            let ((), saved) =
                                futures::try_join!(writes, p.put(parent, cp, meta, new_versions))?;
                            saved
                        }
                        _ => p.put(parent, cp, meta, new_versions).await?,
                    };
                    debug_checkpoint(&sink, modes, step, &saved).await;
                    current = Some(saved);
                    changed_since_save = false;
                    pending.clear();
                    resume.moved_on();
                }
                None => {
                    channels.mark_clean();
                    pending.clear();
                    resume.moved_on();
                }
            }
            if let Some(tx) = &sink {
                // A consumer that reads slowly makes the sends below wait: checkpoints queued
                // meanwhile go to the saver once the commit delay has passed.
                if tx.capacity() <= updates.len() + usize::from(modes.values) {
                    if let Some(p) = &mut persister {
                        p.arm().await;
                    }
                }
                for (node, update) in updates {
                    if tx
                        .send(Ok(StreamEvent::Updates { step, node, update }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                if modes.values {
                    let state = (*channels.state).clone();
                    let _ = tx.send(Ok(StreamEvent::Values { step, state })).await;
                }
                if tx.is_closed() {
                    // Nobody listens any more: stop after this step (resumable).
                    break None;
                }
            }
            step += 1;
            if ran_after && channels.changed_since_resume() {
                tracing::debug!(step, "stopping after an interrupt_after node");
                break Some(Vec::new());
            }
        };
        // 4. Save what is not saved yet.
        if let Some(p) = &mut persister {
            if let Some(u) = unsaved.take() {
                let parent = current.as_ref().unwrap_or(&thread_config);
                let at = u.step;
                let saved = u
                    .save(p, parent, &mut channels, spec, &codec, &meta_base)
                    .await?;
                debug_checkpoint(&sink, modes, at, &saved).await;
                current = Some(saved);
            } else if changed_since_save {
                let parent = current.as_ref().unwrap_or(&thread_config);
                let (cp, new_versions) = channels.checkpoint(spec, &codec)?;
                let mut meta = meta_base.clone();
                meta.source = Some(CheckpointSource::Loop);
                meta.step = Some(step - 1);
                let saved = p.put(parent, cp, meta, new_versions).await?;
                debug_checkpoint(&sink, modes, step - 1, &saved).await;
                current = Some(saved);
            }
            p.settle().await?;
            // Only a state that is exactly the latest checkpoint's is kept for the next run.
            let saved_id = current
                .and_then(|c| c.checkpoint_id)
                .filter(|_| !channels.has_unsaved_changes());
            if let Some(id) = saved_id {
                let cached = CachedState {
                    id,
                    state: Arc::clone(&channels.state),
                    extras: channels.stored_extras(spec).map(Arc::from),
                };
                self.inner
                    .states
                    .put(&thread_id, &config.checkpoint_ns, cached);
            }
        }
        Ok((channels.state, stopped))
        }
        .await;
        if result.is_err() {
            // A run that fails still stores what it handed over (in sync mode the input
            // checkpoint held for the START step), as a run that stops normally does.
            if let Some(p) = &mut persister {
                if let Err(e) = p.settle().await {
                    tracing::warn!(error = %e, "storing a failed run's checkpoints");
                }
            }
        }
        result
    }

    /// Applies the writes of no task (a caller's update/goto, `NULL_TASK_ID`) among
    /// `pending` to `channels`, oldest first.
    pub(crate) fn apply_null_writes(
        &self,
        channels: &mut Channels<S>,
        pending: &[PendingWrite],
        versioner: &crate::channels::Versioner<'_>,
    ) -> Result<()> {
        let spec = &self.inner.spec;
        let null: Vec<&PendingWrite> = pending
            .iter()
            .filter(|w| w.task_id == NULL_TASK_ID && !is_special(&w.channel))
            .collect();
        if null.is_empty() {
            return Ok(());
        }
        // Several commands' writes apply together, each through its field's reducer in the
        // order given, as parallel tasks' writes do (an append keeps both, packets to send
        // all go), except that a replace field takes the last value instead of refusing two:
        // a later command corrects an earlier one.
        let replace = |channel: &str| match spec.channel_index.get(channel) {
            Some(&c) => match spec.kind(c) {
                crate::channels::Chan::Field(f) => {
                    S::fields()[f].reducer == crate::state::ReducerKind::Replace
                }
                _ => false,
            },
            None => false,
        };
        let kept = null.iter().enumerate().filter(|(i, w)| {
            !replace(&w.channel) || !null[i + 1..].iter().any(|later| later.channel == w.channel)
        });
        let task = Task {
            node: 0,
            path: String::new(),
            triggers: Vec::new(),
            // Not read when applying writes; a shared state here would force a copy.
            input: Arc::new(S::default()),
            id: String::new(),
        };
        let mut writes = Vec::with_capacity(null.len());
        for (_, w) in kept {
            writes.push((
                &task,
                TaskWrites::decode(spec, [(w.channel.as_str(), &w.value)], &self.codec)?,
            ));
        }
        channels.apply_writes(spec, writes, None, false, versioner)?;
        Ok(())
    }

    /// Applies a caller's command before the run continues: saves resume values and the
    /// update/goto as writes of no task (`NULL_TASK_ID`), then applies every such write.
    async fn apply_command(
        &self,
        command: Command<S>,
        channels: &mut Channels<S>,
        pending: &mut Vec<PendingWrite>,
        resume: &mut ResumeCtx,
        current: Option<&CheckpointConfig>,
        versioner: &crate::channels::Versioner<'_>,
    ) -> Result<()> {
        let spec = &self.inner.spec;
        let saver = self.inner.saver.as_ref();
        let codec = &self.codec;
        let Command {
            update,
            goto,
            resume: answer,
        } = command;
        let mut null_writes: Vec<(String, TypedValue)> = Vec::new();
        match answer {
            None => {}
            Some(Resume::Map(map)) => {
                resume.map = Some(map);
                resume.given = true;
            }
            Some(Resume::Value(value)) => {
                resume.given = true;
                let open = pending_interrupts(spec, pending, codec);
                if open > 1 {
                    return Err(GraphError::InvalidArgument(format!(
                        "{open} interrupts are pending: resume them by id with Command::resume_map"
                    )));
                }
                null_writes.push((RESUME.to_owned(), codec.encode(&value)?));
            }
        }
        if update.is_some() || !goto.is_empty() {
            let mut writes = TaskWrites {
                update,
                ..TaskWrites::default()
            };
            resolve_goto(spec, 0, goto, &mut writes)?;
            let encoded = writes.encode(spec, 0, codec)?;
            null_writes.extend(
                encoded
                    .into_iter()
                    .filter(|(c, _)| c != crate::channels::NO_WRITES),
            );
        }
        if !null_writes.is_empty() {
            let Some(saver) = saver else {
                return Err(GraphError::NoCheckpointer {
                    operation: "a Command",
                });
            };
            let Some(config) = current else {
                return Err(GraphError::InvalidArgument(
                    "no checkpoint to apply the command to".into(),
                ));
            };
            // Writes of no task accumulate, as in LangGraph: the savers key a regular write
            // by its position in its call, so the ones already stored go first (kept as they
            // are) and this command's follow them, at positions of their own; a second
            // command's update is not taken for the first's and dropped.
            let mut to_save: Vec<(String, TypedValue)> = pending
                .iter()
                .filter(|w| w.task_id == NULL_TASK_ID && !is_special(&w.channel))
                .map(|w| (w.channel.clone(), w.value.clone()))
                .collect();
            // Special writes (the resume value) go last, as in LangGraph: they are not
            // listed again next time, so a regular write after one would move to a new
            // position when the list is saved again, and be stored twice.
            null_writes.sort_by_key(|(channel, _)| is_special(channel));
            to_save.extend(null_writes.iter().cloned());
            saver.put_writes(config, to_save, NULL_TASK_ID, "").await?;
            // The saver replaces a special write and appends the new regular ones; mirror
            // that in the writes this run sees.
            for (channel, value) in null_writes {
                let existing = pending
                    .iter_mut()
                    .find(|w| w.task_id == NULL_TASK_ID && w.channel == channel);
                match existing {
                    Some(w) if is_special(&channel) => w.value = value,
                    _ => pending.push(PendingWrite {
                        task_id: NULL_TASK_ID.to_owned(),
                        channel,
                        value,
                        task_path: String::new(),
                    }),
                }
            }
        }
        // Writes of no task (a caller's update/goto) apply before the next step.
        self.apply_null_writes(channels, pending, versioner)?;
        if let Some(w) = pending
            .iter()
            .find(|w| w.task_id == NULL_TASK_ID && w.channel == RESUME)
        {
            let value: serde_json::Value = codec.decode(&w.value)?;
            resume.null = Some(Arc::new(Mutex::new(Some(value))));
        }
        Ok(())
    }

    /// Runs a step's tasks concurrently; tasks with saved writes are not run again.
    async fn run_tasks(
        &self,
        tasks: &[Task<S>],
        channels: &Channels<S>,
        pending: &[PendingWrite],
        resume: &mut ResumeCtx,
        ctx: StepCtx<'_, S>,
    ) -> Vec<TaskOutcome<S>> {
        let spec = &self.inner.spec;
        let step = ctx.step;
        let mut saved: HashMap<&str, Vec<&PendingWrite>> = HashMap::new();
        for w in pending {
            saved.entry(w.task_id.as_str()).or_default().push(w);
        }
        let mut outcomes: Vec<Option<TaskOutcome<S>>> = Vec::with_capacity(tasks.len());
        let mut to_run = Vec::new();
        let mut scratches = Vec::new();
        for (i, task) in tasks.iter().enumerate() {
            let ws = saved.get(task.id.as_str());
            let completed = ws.is_some_and(|ws| ws.iter().any(|w| !is_special(&w.channel)));
            if let (true, Some(ws)) = (completed, ws) {
                let decoded = TaskWrites::decode(
                    spec,
                    ws.iter().map(|w| (w.channel.as_str(), &w.value)),
                    &self.codec,
                )
                .map(TaskEnd::Done)
                .map_err(|e| {
                    GraphError::Checkpoint(cairn_checkpoint::Error::corrupt(
                        cairn_checkpoint::DataLocation {
                            thread_id: ctx.thread_id.to_owned(),
                            checkpoint_ns: ctx
                                .current
                                .map(|c| c.checkpoint_ns.clone())
                                .unwrap_or_default(),
                            checkpoint_id: ctx.current.and_then(|c| c.checkpoint_id.clone()),
                            channel: None,
                        },
                        format!("cannot decode the saved writes of task {}: {e}", task.id),
                    ))
                });
                tracing::debug!(task = %task.id, node = %spec.nodes[task.node].name, "reusing saved writes");
                outcomes.push(Some(TaskOutcome {
                    end: decoded,
                    unsaved: Vec::new(),
                }));
                continue;
            }
            outcomes.push(None);
            to_run.push(i);
            // Resume values this task already has, and the run's shared ones.
            let mut scratch = Scratch {
                null_resume: resume.null.clone(),
                resume_map: resume.map.clone().map(Arc::new),
                ..Scratch::default()
            };
            if let Some(ws) = ws {
                if let Some(w) = ws.iter().find(|w| w.channel == RESUME) {
                    match self.codec.decode::<Vec<serde_json::Value>>(&w.value) {
                        Ok(values) => scratch.resume = values,
                        Err(e) => {
                            tracing::warn!(task = %task.id, error = %e, "ignoring undecodable resume values")
                        }
                    }
                }
            }
            if let Some(map) = &resume.map {
                let ns = task_ns(ctx.ns, &spec.nodes[task.node].name, &task.id);
                if let Some(v) = map.get(&interrupt_id(&ns, scratch.resume.len())) {
                    scratch.resume.push(v.clone());
                    scratch.resume_changed = true;
                }
            }
            scratches.push(scratch);
        }
        let input = channels.input.clone();
        let graph_state = Arc::clone(&channels.state);
        let emitter = make_emitter(ctx.sink, ctx.modes);
        let make = |i: usize, scratch: Scratch| {
            run_task(
                self.clone(),
                prepare(&tasks[i], &input, &graph_state),
                TaskRun {
                    step,
                    current: ctx.current.cloned(),
                    thread_id: ctx.thread_id.to_owned(),
                    ns: ctx.ns.to_owned(),
                    parents: Arc::clone(ctx.parents),
                    save_writes: ctx.save_writes,
                    defer_writes: ctx.defer_writes,
                    scratch,
                    emitter: emitter.clone(),
                    debug: if ctx.modes.debug {
                        ctx.sink.clone()
                    } else {
                        None
                    },
                },
            )
        };
        if to_run.len() == 1 {
            let i = to_run[0];
            let scratch = scratches.pop().unwrap_or_default();
            let fut = make(i, scratch);
            outcomes[i] = Some(
                AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| {
                        TaskOutcome::err(panicked(spec, &tasks[i], step, panic))
                    }),
            );
        } else if !to_run.is_empty() {
            let handles: Vec<_> = to_run
                .iter()
                .zip(scratches)
                .map(|(&i, scratch)| tokio::spawn(make(i, scratch).in_current_span()))
                .collect();
            for (&i, result) in to_run.iter().zip(futures::future::join_all(handles).await) {
                outcomes[i] = Some(match result {
                    Ok(outcome) => outcome,
                    Err(e) => TaskOutcome::err(match e.try_into_panic() {
                        Ok(panic) => panicked(spec, &tasks[i], step, panic),
                        Err(e) => GraphError::NodePanicked {
                            node: spec.nodes[tasks[i].node].name.clone(),
                            step,
                            message: e.to_string(),
                        },
                    }),
                });
            }
        }
        resume.after_step(!to_run.is_empty());
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    TaskOutcome::err(GraphError::InvalidArgument(
                        "task produced no outcome".into(),
                    ))
                })
            })
            .collect()
    }
}

/// How a subgraph's run hangs off its parent's.
#[derive(Default)]
pub(crate) struct Nested {
    /// The `parents` metadata of the subgraph's checkpoints.
    pub(crate) parents: BTreeMap<String, String>,
    /// The parent's unanswered resume value, shared (answering in the child consumes it).
    pub(crate) null_resume: Option<Arc<Mutex<Option<serde_json::Value>>>>,
    /// The caller's resume map (answers interrupts of the subgraph by id).
    pub(crate) resume_map: Option<Arc<BTreeMap<String, serde_json::Value>>>,
}

/// Per-step settings of [`CompiledGraph::run_tasks`].
struct StepCtx<'a, S: State> {
    step: i64,
    current: Option<&'a CheckpointConfig>,
    thread_id: &'a str,
    ns: &'a str,
    parents: &'a Arc<BTreeMap<String, String>>,
    save_writes: bool,
    /// Return a finished task's writes instead of saving them: the step saves them together
    /// with its checkpoint.
    defer_writes: bool,
    sink: &'a EventSink<S>,
    modes: Modes,
}

/// Per-task settings of [`run_task`], owned.
struct TaskRun<S: State> {
    step: i64,
    current: Option<CheckpointConfig>,
    thread_id: String,
    ns: String,
    parents: Arc<BTreeMap<String, String>>,
    save_writes: bool,
    defer_writes: bool,
    scratch: Scratch,
    emitter: Option<Emitter>,
    debug: EventSink<S>,
}

fn make_emitter<S: State>(sink: &EventSink<S>, modes: Modes) -> Option<Emitter> {
    let tx = sink.as_ref().filter(|_| modes.custom)?.clone();
    Some(Arc::new(move |step, node, value| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(Ok(StreamEvent::Custom { step, node, value })).await;
        }
        .boxed()
    }))
}

async fn debug_checkpoint<S: State>(
    sink: &EventSink<S>,
    modes: Modes,
    step: i64,
    config: &CheckpointConfig,
) {
    if let (Some(tx), true) = (sink, modes.debug) {
        let _ = tx
            .send(Ok(StreamEvent::Debug(DebugEvent::Checkpoint {
                step,
                config: config.clone(),
            })))
            .await;
    }
}

/// Per-node breakpoint flags: the run's own list when given, else the compiled ones.
fn flags<S: State>(
    spec: &Spec<S>,
    names: Option<&[String]>,
    compiled: impl Fn(&crate::channels::NodeSpec<S>) -> bool,
) -> Result<Vec<bool>> {
    match names {
        None => Ok(spec.nodes.iter().map(compiled).collect()),
        Some(names) => {
            for n in names {
                if !spec.node_index.contains_key(n) || n == START {
                    return Err(GraphError::UnknownNode {
                        node: n.clone(),
                        context: "interrupt list of the run config".into(),
                        known: spec.node_names(),
                    });
                }
            }
            Ok(spec.nodes.iter().map(|n| names.contains(&n.name)).collect())
        }
    }
}

/// How many interrupts are unanswered among `pending` (tasks with an `__interrupt__` write
/// and no output).
fn pending_interrupts<S: State>(
    _spec: &Spec<S>,
    pending: &[PendingWrite],
    codec: &ValueCodec,
) -> usize {
    // Interrupts per task: a subgraph's task holds every interrupt its child raised at once
    // (two parallel nodes asking), each needing its own answer.
    let mut interrupted: HashMap<&str, usize> = HashMap::new();
    let mut done: HashSet<&str> = HashSet::new();
    for w in pending {
        if w.channel == INTERRUPT {
            let n = codec
                .decode::<Vec<Interrupt>>(&w.value)
                .map_or(1, |i| i.len().max(1));
            interrupted.insert(&w.task_id, n);
        } else if !is_special(&w.channel) {
            done.insert(&w.task_id);
        }
    }
    interrupted
        .iter()
        .filter(|(task, _)| !done.contains(*task))
        .map(|(_, n)| n)
        .sum()
}

/// A task's namespace: `<ns|>node:task_id`.
pub(crate) fn task_ns(ns: &str, node: &str, task_id: &str) -> String {
    if ns.is_empty() {
        format!("{node}:{task_id}")
    } else {
        format!("{ns}|{node}:{task_id}")
    }
}

/// What a spawned task needs, owned.
pub(crate) struct PreparedTask<S: State> {
    node: usize,
    id: String,
    path: String,
    input: Arc<S>,
    start_input: Option<S::Update>,
    /// A task a [`SendTo`](crate::SendTo) started gets the packet's argument as its input;
    /// its routers see the graph's state (this), as in LangGraph.
    graph_state: Option<Arc<S>>,
}

fn prepare<S: State>(
    task: &Task<S>,
    start_input: &Option<S::Update>,
    graph_state: &Arc<S>,
) -> PreparedTask<S> {
    PreparedTask {
        node: task.node,
        id: task.id.clone(),
        path: task.path.clone(),
        input: Arc::clone(&task.input),
        start_input: if task.node == 0 {
            start_input.clone()
        } else {
            None
        },
        graph_state: crate::channels::is_push_path(&task.path).then(|| Arc::clone(graph_state)),
    }
}

fn panicked<S: State>(
    spec: &Spec<S>,
    task: &Task<S>,
    step: i64,
    panic: Box<dyn std::any::Any + Send>,
) -> GraphError {
    let message = crate::error::panic_message(&*panic);
    GraphError::NodePanicked {
        node: spec.nodes[task.node].name.clone(),
        step,
        message,
    }
}

/// Saves (or, in exit mode, returns) a task's bookkeeping writes.
async fn save_or_keep<S: State>(
    graph: &CompiledGraph<S>,
    task: &PreparedTask<S>,
    run: &TaskRun<S>,
    writes: Vec<(String, TypedValue)>,
    unsaved: &mut Vec<(String, TypedValue)>,
) -> Result<()> {
    if let (Some(saver), Some(config)) = (&graph.inner.saver, &run.current) {
        if run.save_writes {
            saver
                .put_writes(config, writes, &task.id, &task.path)
                .await?;
        } else {
            unsaved.extend(writes);
        }
    }
    Ok(())
}

/// Runs one task: the node (with retries), then its edges and routers, then saves its
/// writes.
async fn run_task<S: State>(
    graph: CompiledGraph<S>,
    task: PreparedTask<S>,
    mut run: TaskRun<S>,
) -> TaskOutcome<S> {
    let spec = &graph.inner.spec;
    let node = &spec.nodes[task.node];
    let step = run.step;
    let mut unsaved = Vec::new();
    if let Some(tx) = &run.debug {
        let _ = tx
            .send(Ok(StreamEvent::Debug(DebugEvent::TaskStart {
                step,
                task_id: task.id.clone(),
                node: node.name.clone(),
            })))
            .await;
    }
    let end = run_task_inner(&graph, &task, &mut run, &mut unsaved).await;
    if let Some(tx) = &run.debug {
        let (error, interrupt) = match &end {
            Ok(TaskEnd::Done(_)) => (None, None),
            Ok(TaskEnd::Interrupted(i)) => (None, i.first().cloned()),
            Err(e) => (Some(e.to_string()), None),
        };
        let _ = tx
            .send(Ok(StreamEvent::Debug(DebugEvent::TaskEnd {
                step,
                task_id: task.id.clone(),
                node: node.name.clone(),
                error,
                interrupt,
            })))
            .await;
    }
    TaskOutcome { end, unsaved }
}

async fn run_task_inner<S: State>(
    graph: &CompiledGraph<S>,
    task: &PreparedTask<S>,
    run: &mut TaskRun<S>,
    unsaved: &mut Vec<(String, TypedValue)>,
) -> std::result::Result<TaskEnd<S>, GraphError> {
    let spec = &graph.inner.spec;
    let node = &spec.nodes[task.node];
    let step = run.step;
    let mut resume_values = None;
    let command = match &node.run {
        None => Command {
            update: task.start_input.clone(),
            ..Command::default()
        },
        Some(node_fn) => {
            let mut attempt: u32 = 1;
            let mut scratch = std::mem::take(&mut run.scratch);
            loop {
                let ctx = TaskContext {
                    info: TaskInfo {
                        id: task.id.clone(),
                        name: node.name.clone(),
                        path: task.path.clone(),
                        step,
                        thread_id: run.thread_id.clone(),
                    },
                    ns: run.ns.clone(),
                    scratch: Mutex::new(scratch),
                    emitter: run.emitter.clone(),
                    saver: graph.inner.saver.clone(),
                    current: run.current.clone(),
                    parents: Arc::clone(&run.parents),
                };
                let (result, ctx) = CURRENT_TASK
                    .scope(ctx, async {
                        let r = node_fn(Arc::clone(&task.input)).await;
                        let s = CURRENT_TASK.with(|c| {
                            std::mem::take(
                                &mut *c.scratch.lock().unwrap_or_else(|p| p.into_inner()),
                            )
                        });
                        (r, s)
                    })
                    .await;
                scratch = ctx;
                match result {
                    Ok(command) => {
                        if scratch.resume_changed {
                            resume_values = Some(std::mem::take(&mut scratch.resume));
                        }
                        break command;
                    }
                    Err(source) => {
                        if !scratch.raised.is_empty() {
                            let raised = std::mem::take(&mut scratch.raised);
                            let mut writes =
                                vec![(INTERRUPT.to_owned(), graph.codec.encode(&raised)?)];
                            if scratch.resume_changed {
                                writes.push((
                                    RESUME.to_owned(),
                                    graph.codec.encode(&scratch.resume)?,
                                ));
                            }
                            save_or_keep(graph, task, run, writes, unsaved).await?;
                            return Ok(TaskEnd::Interrupted(raised));
                        }
                        if let Some(policy) = &node.retry {
                            if attempt < policy.max_attempts && policy.should_retry(&source) {
                                let delay = policy.jittered_delay(attempt);
                                tracing::debug!(node = %node.name, attempt, error = %source, ?delay, "retrying a failed node");
                                tokio::time::sleep(delay).await;
                                attempt += 1;
                                scratch.counter = 0;
                                continue;
                            }
                        }
                        if let Ok(value) = graph.codec.encode(&source.to_string()) {
                            if let Err(e) = save_or_keep(
                                graph,
                                task,
                                run,
                                vec![(ERROR.to_owned(), value)],
                                unsaved,
                            )
                            .await
                            {
                                tracing::warn!(error = %e, "could not save a task's error");
                            }
                        }
                        return Err(GraphError::Node {
                            node: node.name.clone(),
                            step,
                            source,
                        });
                    }
                }
            }
        }
    };
    let Command { update, goto, .. } = command;
    let mut writes = TaskWrites {
        update,
        branches: node.edges.clone(),
        joins: node.joins.clone(),
        sends: Vec::new(),
    };
    if !goto.is_empty() {
        resolve_goto(spec, task.node, goto, &mut writes)?;
    }
    if !node.branches.is_empty() {
        // Routers see the state with this task's own writes applied: the graph's state,
        // also for a task a SendTo started (its input is the packet's argument).
        let seen = task.graph_state.as_ref().unwrap_or(&task.input);
        let local = match &writes.update {
            Some(u) => {
                let mut local = (**seen).clone();
                S::apply(&mut local, S::Update::clone(u));
                std::borrow::Cow::Owned(local)
            }
            None => std::borrow::Cow::Borrowed(&**seen),
        };
        for branch in &node.branches {
            let route = (branch.router)(&local);
            resolve_route(spec, task.node, branch, route, &mut writes)?;
        }
    }
    if graph.inner.saver.is_some() {
        let mut encoded = writes.encode(spec, task.node, &graph.codec)?;
        if let Some(values) = &resume_values {
            encoded.push((RESUME.to_owned(), graph.codec.encode(values)?));
        }
        if run.defer_writes && run.current.is_some() {
            unsaved.extend(encoded);
        } else {
            save_or_keep(graph, task, run, encoded, unsaved).await?;
        }
    }
    Ok(TaskEnd::Done(writes))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use cairn_checkpoint::{CheckpointSaver, InMemorySaver};
    use futures::TryStreamExt;

    use crate::{RunConfig, State, StateGraph, END, START};

    #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
    struct Log {
        #[reducer(append)]
        items: Vec<String>,
    }

    fn graph() -> StateGraph<Log> {
        let mut g = StateGraph::<Log>::new();
        g.add_sync_node("reply", |s: &Log| {
            Ok(LogUpdate::default().items(vec![format!("reply {}", s.items.len())]))
        })
        .add_edge(START, "reply")
        .add_edge("reply", END);
        g
    }

    fn said(text: &str) -> LogUpdate {
        LogUpdate::default().items(vec![text.to_owned()])
    }

    /// A full cache gives up only the entry put longest ago, not every entry: the threads
    /// served most recently keep their states.
    #[test]
    fn a_full_state_cache_gives_up_its_oldest_entry() {
        use super::{CachedState, StateCache, STATE_CACHE_CAP};
        let cache = StateCache::<Log>::default();
        let entry = |id: usize| CachedState {
            id: format!("cp-{id}"),
            state: Arc::new(Log::default()),
            extras: None,
        };
        for t in 0..STATE_CACHE_CAP {
            cache.put(&format!("thread-{t}"), "", entry(t));
        }
        // Thread 0 runs again: its entry is put back as the newest.
        cache.put("thread-0", "", entry(100));
        cache.put("one more", "", entry(200));
        assert!(cache.peek("thread-1", "").is_none(), "the oldest went");
        assert_eq!(
            cache.peek("thread-0", "").map(|c| c.id).as_deref(),
            Some("cp-100")
        );
        assert!(cache.peek("one more", "").is_some());
        for t in 2..STATE_CACHE_CAP {
            assert!(
                cache.peek(&format!("thread-{t}"), "").is_some(),
                "thread-{t}"
            );
        }
    }

    /// Re-invoking a thread reuses the state the last run ended with only while the thread's
    /// latest checkpoint is the one that run saved.
    #[tokio::test]
    async fn cached_state_is_used_only_for_the_checkpoint_it_was_saved_in() {
        let saver: Arc<dyn CheckpointSaver> = Arc::new(InMemorySaver::new());
        let app = graph().compile(Arc::clone(&saver)).expect("compile");
        let config = RunConfig::thread("t");
        app.invoke(Some(said("a")), config.clone())
            .await
            .expect("run");
        let out = app
            .invoke(Some(said("b")), config.clone())
            .await
            .expect("run");
        assert_eq!(out.items, ["a", "reply 1", "b", "reply 3"]);

        // Another writer moves the thread on: the cached state is stale and not used.
        app.update_state(config.clone(), said("edit"), Some("reply"))
            .await
            .expect("update");
        let out = app
            .invoke(Some(said("c")), config.clone())
            .await
            .expect("run");
        assert_eq!(
            out.items,
            ["a", "reply 1", "b", "reply 3", "edit", "c", "reply 6"]
        );

        // A second compiled graph on the same saver writes the thread too.
        let other = graph().compile(Arc::clone(&saver)).expect("compile");
        other
            .invoke(Some(said("d")), config.clone())
            .await
            .expect("run");
        let out = app
            .invoke(Some(said("e")), config.clone())
            .await
            .expect("run");
        assert_eq!(out.items.len(), 11);
        assert_eq!(out.items[7..], ["d", "reply 8", "e", "reply 10"]);

        // Replaying an old checkpoint decodes that checkpoint's state.
        let history: Vec<_> = app
            .get_state_history(config.clone(), crate::HistoryQuery::default())
            .try_collect()
            .await
            .expect("history");
        let first_done = history
            .iter()
            .find(|s| s.values.items == ["a", "reply 1"])
            .expect("first run's last checkpoint")
            .config
            .clone();
        let out = app
            .invoke(Some(said("f")), RunConfig::from(first_done))
            .await
            .expect("run");
        assert_eq!(out.items, ["a", "reply 1", "f", "reply 3"]);
    }
}

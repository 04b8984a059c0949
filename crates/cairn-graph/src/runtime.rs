//! The Pregel loop: super-steps, concurrent tasks, pending writes and checkpoints.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, OnceLock};

use cairn_checkpoint::{
    CheckpointConfig, CheckpointMetadata, CheckpointSaver, CheckpointSource, PendingWrite,
    ValueCodec, ERROR,
};
use futures::{FutureExt, Stream};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::channels::{resolve_route, Channels, Spec, Task, TaskWrites};
use crate::config::RunConfig;
use crate::error::{GraphError, Result};
use crate::graph::StateGraph;
use crate::state::State;

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
}

/// Which events [`CompiledGraph::stream`] emits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamMode {
    /// [`StreamEvent::Values`] after every super-step.
    Values,
    /// [`StreamEvent::Updates`] for every task.
    Updates,
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

tokio::task_local! {
    static CURRENT_TASK: TaskInfo;
}

/// The task the calling node runs in; `None` outside of a node.
pub fn current_task() -> Option<TaskInfo> {
    CURRENT_TASK.try_with(Clone::clone).ok()
}

/// Threads with a run in progress: (saver identity, namespace, thread).
type RunKey = (usize, String, String);

fn running() -> &'static Mutex<HashSet<RunKey>> {
    static RUNNING: OnceLock<Mutex<HashSet<RunKey>>> = OnceLock::new();
    RUNNING.get_or_init(|| Mutex::new(HashSet::new()))
}

/// Releases a thread when its run ends, however it ends.
struct ThreadGuard(Option<RunKey>);

impl ThreadGuard {
    fn acquire(key: Option<RunKey>) -> Result<Self> {
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
    pub(crate) spec: Spec<S>,
    pub(crate) saver: Option<Arc<dyn CheckpointSaver>>,
    /// Distinguishes graphs without a saver in the running-threads registry.
    identity: usize,
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

struct Modes {
    values: bool,
    updates: bool,
}

/// The result of running one task.
type TaskOutcome<S> = std::result::Result<TaskWrites<S>, GraphError>;

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
                spec,
                saver,
                identity,
            }),
            codec: ValueCodec::default(),
        })
    }

    /// Uses `codec` to encode channel values and writes (MessagePack by default).
    pub fn with_codec(mut self, codec: ValueCodec) -> Self {
        self.codec = codec;
        self
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

    /// Runs the graph to completion and returns the final state.
    ///
    /// * `Some(input)`: the input is applied (through the reducers) to the thread's state —
    ///   empty for a new thread — and a run starts from START.
    /// * `None`: resumes the thread's unfinished run from its latest checkpoint (or from
    ///   `config.checkpoint_id`: replay), skipping tasks whose writes were already saved.
    pub async fn invoke(
        &self,
        input: Option<S::Update>,
        config: impl Into<RunConfig>,
    ) -> Result<S> {
        let state = self
            .run(
                input,
                config.into(),
                None,
                Modes {
                    values: false,
                    updates: false,
                },
            )
            .await?;
        Ok(Arc::try_unwrap(state).unwrap_or_else(|s| (*s).clone()))
    }

    /// Runs the graph like [`invoke`](Self::invoke), streaming events as super-steps finish.
    /// The run happens in a spawned task; dropping the stream stops it after the current
    /// step (the run can be resumed with `invoke(None, ..)`).
    pub fn stream(
        &self,
        input: Option<S::Update>,
        config: impl Into<RunConfig>,
        modes: &[StreamMode],
    ) -> impl Stream<Item = Result<StreamEvent<S>>> + Send + 'static {
        let (tx, rx) = mpsc::channel(64);
        let graph = self.clone();
        let config = config.into();
        let modes = Modes {
            values: modes.contains(&StreamMode::Values),
            updates: modes.contains(&StreamMode::Updates),
        };
        tokio::spawn(async move {
            let result = graph.run(input, config, Some(tx.clone()), modes).await;
            if let Err(e) = result {
                let _ = tx.send(Err(e)).await;
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

    async fn run(
        &self,
        input: Option<S::Update>,
        config: RunConfig,
        sink: EventSink<S>,
        modes: Modes,
    ) -> Result<Arc<S>> {
        let _guard = ThreadGuard::acquire(self.thread_key(&config))?;
        let spec = &self.inner.spec;
        let saver = self.inner.saver.as_deref();
        let codec = self.codec;
        let versioner = match saver {
            Some(s) => crate::channels::Versioner::Saver(s),
            None => crate::channels::Versioner::Int,
        };
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
        let cp_config = config.checkpoint_config();

        // 1. Load.
        let tuple = match saver {
            Some(saver) => {
                let tuple = saver.get_tuple(&cp_config).await?;
                if tuple.is_none() && config.checkpoint_id.is_some() {
                    return Err(GraphError::CheckpointNotFound {
                        thread_id,
                        checkpoint_id: config.checkpoint_id.clone(),
                    });
                }
                tuple
            }
            None => None,
        };
        let replaying = config.checkpoint_id.is_some();
        let (mut channels, mut step, mut current, mut pending) = match &tuple {
            Some(t) => (
                Channels::load(spec, t, &codec)?,
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
        let mut saved_any = false;
        let thread_config = CheckpointConfig {
            thread_id: thread_id.clone(),
            checkpoint_ns: config.checkpoint_ns.clone(),
            checkpoint_id: None,
        };

        // 2. Input.
        match input {
            Some(input) => {
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
                if let Some(saver) = saver {
                    let parent = current.clone().unwrap_or_else(|| thread_config.clone());
                    let (cp, new_versions) = channels.checkpoint(spec, &codec)?;
                    let mut meta = meta_base.clone();
                    meta.source = Some(CheckpointSource::Input);
                    meta.step = Some(step);
                    let saved = saver.put(&parent, cp, meta, new_versions).await?;
                    current = Some(saved);
                    saved_any = true;
                } else {
                    channels.mark_clean();
                }
                step += 1;
                pending.clear();
            }
            None => {
                let Some(tuple) = &tuple else {
                    return Err(GraphError::InvalidArgument(
                        "no input and no checkpoint to resume: pass an input to start a run".into(),
                    ));
                };
                channels.mark_resumed();
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
                        let (cp, new_versions) = channels.checkpoint(spec, &codec)?;
                        let mut meta = meta_base.clone();
                        meta.source = Some(CheckpointSource::Fork);
                        meta.step = Some(step);
                        current = Some(saver.put(&tuple.config, cp, meta, new_versions).await?);
                        step += 1;
                    }
                }
            }
        }
        let _ = saved_any;

        // 3. Super-steps.
        let first_step = step;
        loop {
            let current_id = current
                .as_ref()
                .and_then(|c| c.checkpoint_id.clone())
                .unwrap_or_default();
            let tasks = channels.prepare_tasks(
                spec,
                &current_id,
                &config.checkpoint_ns,
                step,
                saver.is_some(),
            )?;
            if tasks.is_empty() {
                break;
            }
            if channels.should_interrupt(spec, &tasks) {
                tracing::debug!(step, "stopping before an interrupt_before node");
                break;
            }
            if (step - first_step) as usize >= config.recursion_limit.saturating_add(1) {
                return Err(GraphError::RecursionLimit {
                    limit: config.recursion_limit,
                });
            }
            let span = tracing::debug_span!("superstep", step, thread_id = %thread_id, tasks = tasks.len());
            let outcomes = self
                .run_tasks(
                    &tasks,
                    &channels,
                    &pending,
                    step,
                    current.as_ref(),
                    &thread_id,
                )
                .instrument(span.clone())
                .await;
            let _enter = span.enter();
            let mut writes = Vec::with_capacity(tasks.len());
            let mut first_error = None;
            let mut order: Vec<usize> = (0..tasks.len()).collect();
            order.sort_by(|&a, &b| tasks[a].path.cmp(&tasks[b].path));
            let mut outcomes: Vec<Option<TaskOutcome<S>>> =
                outcomes.into_iter().map(Some).collect();
            for &i in &order {
                match outcomes[i].take() {
                    Some(Ok(w)) => writes.push((&tasks[i], w)),
                    Some(Err(e)) if first_error.is_none() => first_error = Some(e),
                    Some(Err(_)) => {}
                    None => {}
                }
            }
            if let Some(e) = first_error {
                return Err(e);
            }
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
            channels.apply_writes(spec, writes, None, true, &versioner)?;
            if let Some(saver) = saver {
                let parent = current.clone().unwrap_or_else(|| thread_config.clone());
                let (cp, new_versions) = channels.checkpoint(spec, &codec)?;
                let mut meta = meta_base.clone();
                meta.source = Some(CheckpointSource::Loop);
                meta.step = Some(step);
                current = Some(saver.put(&parent, cp, meta, new_versions).await?);
            } else {
                channels.mark_clean();
            }
            drop(_enter);
            if let Some(tx) = &sink {
                for (node, update) in updates {
                    if tx
                        .send(Ok(StreamEvent::Updates { step, node, update }))
                        .await
                        .is_err()
                    {
                        return Ok(channels.state);
                    }
                }
                if modes.values {
                    let state = (*channels.state).clone();
                    if tx
                        .send(Ok(StreamEvent::Values { step, state }))
                        .await
                        .is_err()
                    {
                        return Ok(channels.state);
                    }
                }
            }
            pending.clear();
            step += 1;
        }
        Ok(channels.state)
    }

    /// Runs a step's tasks concurrently; tasks with saved writes are not run again.
    async fn run_tasks(
        &self,
        tasks: &[Task<S>],
        channels: &Channels<S>,
        pending: &[PendingWrite],
        step: i64,
        current: Option<&CheckpointConfig>,
        thread_id: &str,
    ) -> Vec<TaskOutcome<S>> {
        let spec = &self.inner.spec;
        let mut saved: HashMap<&str, Vec<&PendingWrite>> = HashMap::new();
        for w in pending {
            saved.entry(w.task_id.as_str()).or_default().push(w);
        }
        let mut outcomes: Vec<Option<TaskOutcome<S>>> = Vec::with_capacity(tasks.len());
        let mut to_run = Vec::new();
        for (i, task) in tasks.iter().enumerate() {
            match saved.get(task.id.as_str()) {
                Some(ws) if !ws.iter().any(|w| w.channel == ERROR) => {
                    let decoded = TaskWrites::decode(
                        spec,
                        ws.iter().map(|w| (w.channel.as_str(), &w.value)),
                        &self.codec,
                    )
                    .map_err(|e| {
                        GraphError::Checkpoint(cairn_checkpoint::Error::corrupt(
                            cairn_checkpoint::DataLocation {
                                thread_id: thread_id.to_owned(),
                                checkpoint_ns: current
                                    .map(|c| c.checkpoint_ns.clone())
                                    .unwrap_or_default(),
                                checkpoint_id: current.and_then(|c| c.checkpoint_id.clone()),
                                channel: None,
                            },
                            format!("cannot decode the saved writes of task {}: {e}", task.id),
                        ))
                    });
                    tracing::debug!(task = %task.id, node = %spec.nodes[task.node].name, "reusing saved writes");
                    outcomes.push(Some(decoded));
                }
                _ => {
                    outcomes.push(None);
                    to_run.push(i);
                }
            }
        }
        let input = channels.input.clone();
        if to_run.len() == 1 {
            let i = to_run[0];
            let fut = run_task(
                self.clone(),
                prepare(&tasks[i], &input),
                step,
                current.cloned(),
                thread_id.to_owned(),
            );
            outcomes[i] = Some(
                AssertUnwindSafe(fut)
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|panic| Err(panicked(spec, &tasks[i], step, panic))),
            );
        } else if !to_run.is_empty() {
            let handles: Vec<_> = to_run
                .iter()
                .map(|&i| {
                    tokio::spawn(
                        run_task(
                            self.clone(),
                            prepare(&tasks[i], &input),
                            step,
                            current.cloned(),
                            thread_id.to_owned(),
                        )
                        .in_current_span(),
                    )
                })
                .collect();
            for (&i, result) in to_run.iter().zip(futures::future::join_all(handles).await) {
                outcomes[i] = Some(match result {
                    Ok(outcome) => outcome,
                    Err(e) => Err(match e.try_into_panic() {
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
        outcomes
            .into_iter()
            .map(|o| {
                o.unwrap_or_else(|| {
                    Err(GraphError::InvalidArgument(
                        "task produced no outcome".into(),
                    ))
                })
            })
            .collect()
    }
}

/// What a spawned task needs, owned.
pub(crate) struct PreparedTask<S: State> {
    node: usize,
    id: String,
    path: String,
    input: Arc<S>,
    start_input: Option<S::Update>,
}

fn prepare<S: State>(task: &Task<S>, start_input: &Option<S::Update>) -> PreparedTask<S> {
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
    }
}

fn panicked<S: State>(
    spec: &Spec<S>,
    task: &Task<S>,
    step: i64,
    panic: Box<dyn std::any::Any + Send>,
) -> GraphError {
    let message = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned());
    GraphError::NodePanicked {
        node: spec.nodes[task.node].name.clone(),
        step,
        message,
    }
}

/// Runs one task: the node, then its edges and routers, then saves its writes.
async fn run_task<S: State>(
    graph: CompiledGraph<S>,
    task: PreparedTask<S>,
    step: i64,
    current: Option<CheckpointConfig>,
    thread_id: String,
) -> TaskOutcome<S> {
    let spec = &graph.inner.spec;
    let node = &spec.nodes[task.node];
    let update = match &node.run {
        None => task.start_input.clone(),
        Some(run) => {
            let info = TaskInfo {
                id: task.id.clone(),
                name: node.name.clone(),
                path: task.path.clone(),
                step,
                thread_id,
            };
            match CURRENT_TASK
                .scope(info, async { run(Arc::clone(&task.input)).await })
                .await
            {
                Ok(update) => Some(update),
                Err(source) => {
                    if let (Some(saver), Some(config)) = (&graph.inner.saver, &current) {
                        if let Ok(value) = graph.codec.encode(&source.to_string()) {
                            if let Err(e) = saver
                                .put_writes(
                                    config,
                                    vec![(ERROR.to_owned(), value)],
                                    &task.id,
                                    &task.path,
                                )
                                .await
                            {
                                tracing::warn!(error = %e, "could not save a task's error");
                            }
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
    };
    let mut writes = TaskWrites {
        update,
        branches: node.edges.clone(),
        joins: node.joins.clone(),
        sends: Vec::new(),
    };
    if !node.branches.is_empty() {
        // Routers see the state with this task's own writes applied.
        let mut local = (*task.input).clone();
        if let Some(u) = &writes.update {
            S::apply(&mut local, S::Update::clone(u));
        }
        for branch in &node.branches {
            let route = (branch.router)(&local);
            resolve_route(spec, task.node, branch, route, &mut writes)?;
        }
    }
    if let (Some(saver), Some(config)) = (&graph.inner.saver, &current) {
        let encoded = writes.encode(spec, task.node, &graph.codec)?;
        saver
            .put_writes(config, encoded, &task.id, &task.path)
            .await?;
    }
    Ok(writes)
}

//! The state API: read a thread's state and history, change it, fork it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cairn_checkpoint::{
    CheckpointConfig, CheckpointMetadata, CheckpointSaver, CheckpointSource, CheckpointTuple,
    KnownValues, ListFrames, ListQuery, MetadataFilter, TypedValue, ERROR, INTERRUPT, RESUME,
};
use futures::Stream;

use crate::channels::{resolve_route, Channels, Task, TaskWrites, Versioner};
use crate::command::Interrupt;
use crate::config::RunConfig;
use crate::error::{GraphError, Result};
use crate::graph::{END, START};
use crate::runtime::{CachedState, CompiledGraph};
use crate::state::{ReducerKind, State};

/// A thread's state at one checkpoint.
#[derive(Debug, Clone)]
pub struct StateSnapshot<S> {
    /// The state's values.
    pub values: S,
    /// Nodes of the tasks of the next step (one entry per task, so a node fanned out to with
    /// [`crate::SendTo`] appears once per packet); empty when the run is finished. Read
    /// with `get_state` on the thread's head, tasks whose writes are already saved are left
    /// out (they will not run again).
    pub next: Vec<String>,
    /// Config naming this checkpoint.
    pub config: CheckpointConfig,
    /// The checkpoint's metadata (source, step, run id, ...).
    pub metadata: CheckpointMetadata,
    /// When the checkpoint was written (RFC 3339).
    pub created_at: String,
    /// The previous checkpoint, if any.
    pub parent_config: Option<CheckpointConfig>,
    /// The tasks of the next step, including those whose writes are already saved.
    pub tasks: Vec<SnapshotTask>,
    /// The interrupts the run waits on (those of `tasks`, in task order).
    pub interrupts: Vec<Interrupt>,
}

/// A snapshot and the states of the subgraphs its run is waiting in
/// ([`CompiledGraph::get_state_with_subgraphs`]).
#[derive(Debug, Clone)]
pub struct SnapshotWithSubgraphs<S> {
    /// The graph's own state.
    pub state: StateSnapshot<S>,
    /// Subgraph states by namespace (`node:task_id`, nested ones `a:<id>|b:<id>`).
    pub subgraphs: std::collections::BTreeMap<String, StateSnapshot<serde_json::Value>>,
}

/// A task of the step after a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotTask {
    /// Deterministic task id.
    pub id: String,
    /// Node name.
    pub name: String,
    /// Task path.
    pub path: String,
    /// Whether the task's writes are saved (it finished and will not run again).
    pub completed: bool,
    /// The error it failed with, if it failed.
    pub error: Option<String>,
    /// The interrupt(s) it raised and that are not answered yet (the latest one per task).
    pub interrupts: Vec<Interrupt>,
    /// For a task running a subgraph: the subgraph's checkpoint namespace
    /// (`<ns|>node:task_id`), where its own checkpoints are saved.
    pub checkpoint_ns: Option<String>,
}

/// Which checkpoints [`CompiledGraph::get_state_history`] returns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    /// Metadata equality filter.
    pub filter: MetadataFilter,
    /// Only checkpoints older than this checkpoint id.
    pub before: Option<String>,
    /// At most this many.
    pub limit: Option<usize>,
}

impl HistoryQuery {
    /// At most `limit` checkpoints.
    pub fn limit(mut self, limit: usize) -> Self {
        self.limit = Some(limit);
        self
    }

    /// Only checkpoints older than `checkpoint_id`.
    pub fn before(mut self, checkpoint_id: impl Into<String>) -> Self {
        self.before = Some(checkpoint_id.into());
        self
    }

    /// Adds a metadata equality condition.
    pub fn filter(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.filter.insert(key.into(), value.into());
        self
    }
}

/// Checkpoints read by the first `list` call while paging through history; every further
/// page is [`HISTORY_PAGE_MAX`] (or what is left of the caller's limit). The first snapshots
/// come quickly, and a long walk takes few calls: each call resolves the append chains of its
/// checkpoints from their roots, so reading 600 checkpoints in 2 pages instead of 5 (pages
/// doubling in size) or 19 (pages of 32) reads each chain's links twice.
const HISTORY_PAGE: usize = 32;
/// The pages `get_state_history` reads after the first.
const HISTORY_PAGE_MAX: usize = 1024;
/// The most snapshots `get_state_history` decodes together, each taking the list items it
/// shares with the one before it from that one (see `history_run`). Runs start at one
/// snapshot and double, so a caller that reads only the first few snapshots decodes few
/// more than it reads; at most this many decoded snapshots wait in the stream.
const HISTORY_DECODE_RUN: usize = 32;

/// How many steps a live snapshot follows past its checkpoint through writes the checkpoint
/// holds (steps that wrote no checkpoint of their own); a bound against damaged data.
const MAX_WALKED_STEPS: usize = 10_000;

/// A checkpoint's stored channel values, by channel.
type StoredValues = BTreeMap<String, TypedValue>;

impl<S: State> CompiledGraph<S> {
    fn require_saver(&self, operation: &'static str) -> Result<&Arc<dyn CheckpointSaver>> {
        self.inner
            .saver
            .as_ref()
            .ok_or(GraphError::NoCheckpointer { operation })
    }

    /// The checkpoint `config` names. When it is the checkpoint of `cached` (a state this
    /// graph holds in memory), the saver leaves out the field values, and the other channels'
    /// values too when the cache holds them as stored: those are put back into the tuple here,
    /// so callers see every value but the fields'.
    pub(crate) async fn read_tuple(
        &self,
        saver: &dyn CheckpointSaver,
        config: &CheckpointConfig,
        cached: Option<&CachedState<S>>,
    ) -> Result<Option<CheckpointTuple>> {
        let Some(cached) = cached else {
            return Ok(saver.get_tuple(config).await?);
        };
        let spec = &self.inner.spec;
        let mut known_channels: Vec<&str> = spec.channel_names[..spec.n_fields]
            .iter()
            .map(String::as_str)
            .collect();
        let extras = cached.extras.as_deref().unwrap_or_default();
        known_channels.extend(extras.iter().map(|(name, _, _)| name.as_str()));
        let known = KnownValues {
            checkpoint_id: &cached.id,
            channels: &known_channels,
        };
        let mut tuple = saver.get_tuple_known(config, known).await?;
        if let Some(t) = tuple.as_mut().filter(|t| t.checkpoint.id == cached.id) {
            for (name, version, value) in extras {
                if t.checkpoint.channel_versions.get(name) != Some(version) {
                    // Not the checkpoint the cache describes after all: read it whole.
                    return Ok(saver.get_tuple(&t.config).await?);
                }
                if let Some(value) = value {
                    t.checkpoint
                        .channel_values
                        .insert(name.clone(), value.clone());
                }
            }
        }
        Ok(tuple)
    }

    /// `latest`: the thread's head read without a checkpoint id, whose `next` leaves out
    /// tasks that already finished (as LangGraph's `get_state` does).
    pub(crate) fn snapshot(
        &self,
        tuple: CheckpointTuple,
        latest: bool,
    ) -> Result<StateSnapshot<S>> {
        self.snapshot_with(tuple, latest, None, None)
            .map(|(snapshot, _)| snapshot)
    }

    /// [`snapshot`](Self::snapshot) of a checkpoint whose state is `cached` when given (its
    /// field values are then neither read nor decoded); `known`, when given, is another
    /// checkpoint's state and stored values to take shared list items from. Also returns
    /// the checkpoint's stored values.
    fn snapshot_with(
        &self,
        mut tuple: CheckpointTuple,
        latest: bool,
        cached: Option<Arc<S>>,
        known: Option<(&S, &HashMap<String, usize>)>,
    ) -> Result<(StateSnapshot<S>, StoredValues)> {
        let spec = &self.inner.spec;
        let mut channels = Channels::load_with(spec, &tuple, &self.codec, cached, known)?;
        let stored = std::mem::take(&mut tuple.checkpoint.channel_values);
        let mut step = tuple.metadata.step.unwrap_or(-1) + 1;
        let mut prepared = channels.prepare_tasks(
            spec,
            &tuple.checkpoint.id,
            &tuple.config.checkpoint_ns,
            step,
            true,
        )?;
        let mut by_task: HashMap<&str, (bool, Option<String>, Vec<Interrupt>)> = HashMap::new();
        for w in &tuple.pending_writes {
            let entry = by_task.entry(w.task_id.as_str()).or_default();
            if w.channel == INTERRUPT {
                match self.codec.decode::<Vec<Interrupt>>(&w.value) {
                    Ok(i) => entry.2 = i,
                    Err(e) => {
                        tracing::warn!(task = %w.task_id, error = %e, "ignoring an undecodable interrupt")
                    }
                }
            } else if w.channel == RESUME {
            } else if w.channel == ERROR {
                entry.1 = Some(
                    self.codec
                        .decode::<String>(&w.value)
                        .unwrap_or_else(|_| "error".to_owned()),
                );
            } else {
                entry.0 = true;
            }
        }
        let ns = tuple.config.checkpoint_ns.clone();
        let shown = |prepared: &[Task<S>]| -> Vec<SnapshotTask> {
            prepared
                .iter()
                .map(|t| {
                    let (wrote, error, interrupts) =
                        by_task.get(t.id.as_str()).cloned().unwrap_or_default();
                    SnapshotTask {
                        id: t.id.clone(),
                        name: spec.nodes[t.node].name.clone(),
                        path: t.path.clone(),
                        completed: wrote,
                        error,
                        interrupts: if wrote && latest {
                            Vec::new()
                        } else {
                            interrupts
                        },
                        checkpoint_ns: spec.nodes[t.node]
                            .subgraph
                            .as_ref()
                            .map(|_| crate::runtime::task_ns(&ns, &spec.nodes[t.node].name, &t.id)),
                    }
                })
                .collect()
        };
        let mut tasks = shown(&prepared);
        // A caller's updates stored on the checkpoint, as LangGraph shows them in every
        // snapshot (plain integer versions: nothing here is stored).
        self.apply_null_writes(
            &mut channels,
            &tuple.pending_writes,
            &Versioner::for_run(None),
        )?;
        if latest {
            // Live: the finished tasks' output is in the values. When every task of the step
            // finished and no checkpoint followed (their steps wrote none, with
            // `NodeOptions::checkpoint(false)`, or the run stopped before its next
            // checkpoint), the run goes on from their writes: so does the snapshot, through
            // the steps whose tasks' writes this checkpoint holds, to the tasks still to run.
            for _ in 0..=MAX_WALKED_STEPS {
                self.apply_finished_writes(
                    &mut channels,
                    &tuple.pending_writes,
                    &prepared,
                    &tasks,
                )?;
                if tasks.is_empty() || !tasks.iter().all(|t| t.completed) {
                    break;
                }
                step += 1;
                prepared = channels.prepare_tasks(spec, &tuple.checkpoint.id, &ns, step, true)?;
                tasks = shown(&prepared);
            }
        }
        let next = tasks
            .iter()
            .filter(|t| !(latest && t.completed))
            .map(|t| t.name.clone())
            .collect();
        let interrupts = tasks
            .iter()
            .flat_map(|t| t.interrupts.iter().cloned())
            .collect();
        // The prepared tasks hold the state too: drop them so the state is moved, not cloned.
        drop(prepared);
        let values = Arc::try_unwrap(channels.state).unwrap_or_else(|s| (*s).clone());
        let snapshot = StateSnapshot {
            values,
            next,
            created_at: tuple.checkpoint.ts.clone(),
            config: tuple.config,
            metadata: tuple.metadata,
            parent_config: tuple.parent_config,
            tasks,
            interrupts,
        };
        Ok((snapshot, stored))
    }

    /// Puts the output of the finished ones of `prepared` (per `tasks`) into a live
    /// snapshot's values, as LangGraph's live `get_state` does.
    fn apply_finished_writes(
        &self,
        channels: &mut Channels<S>,
        pending: &[cairn_checkpoint::PendingWrite],
        prepared: &[Task<S>],
        tasks: &[SnapshotTask],
    ) -> Result<()> {
        let spec = &self.inner.spec;
        let versioner = Versioner::for_run(None);
        let mut finished = Vec::new();
        for (task, shown) in prepared.iter().zip(tasks) {
            if !shown.completed {
                continue;
            }
            let writes = TaskWrites::decode(
                spec,
                pending
                    .iter()
                    .filter(|w| w.task_id == task.id && !crate::channels::is_special(&w.channel))
                    .map(|w| (w.channel.as_str(), &w.value)),
                &self.codec,
            )?;
            finished.push((task, writes));
        }
        if !finished.is_empty() {
            // In the order the run applies them: by task path.
            finished.sort_by(|(a, _), (b, _)| a.path.cmp(&b.path));
            // As the run applies a step's writes: the step's packets and triggers are used
            // up, so a walked next step does not prepare them again.
            channels.apply_writes(spec, finished, None, true, &versioner)?;
        }
        Ok(())
    }

    /// Snapshots of the next `n` checkpoints of a history page (newest first). Each older
    /// checkpoint's list fields are usually the leading items of the one before it: they
    /// are cloned from that one's decoded state instead of being decoded again, which
    /// roughly halves the cost of reading a long chat's history. A checkpoint that cannot be
    /// read ends the run: the snapshots before it come back with its error, so a caller
    /// still gets every snapshot newer than a corrupt checkpoint.
    fn history_run(
        &self,
        page: &mut impl Iterator<Item = CheckpointTuple>,
        n: usize,
    ) -> (Vec<StateSnapshot<S>>, Option<GraphError>) {
        let lists: Vec<&str> = S::fields()
            .iter()
            .filter(|f| f.reducer == ReducerKind::Append)
            .map(|f| f.name)
            .collect();
        let mut run: Vec<StateSnapshot<S>> = Vec::with_capacity(n);
        // The stored values of the snapshot before and the frames of its lists.
        let mut before: Option<(StoredValues, HashMap<&str, ListFrames>)> = None;
        for tuple in page.take(n) {
            let mut shared = HashMap::new();
            let mut frames = HashMap::new();
            for &name in &lists {
                let Some(value) = tuple.checkpoint.channel_values.get(name) else {
                    continue;
                };
                let leading = before.as_ref().and_then(|(values, frames)| {
                    frames.get(name)?.leading(values.get(name)?, value)
                });
                let found = match leading {
                    Some(f) => {
                        shared.insert(name.to_owned(), f.count());
                        Some(f)
                    }
                    // Walked once here; the older lists that lead it are then checked
                    // by comparing bytes.
                    None => ListFrames::of(value),
                };
                if let Some(f) = found {
                    frames.insert(name, f);
                }
            }
            let known = run
                .last()
                .filter(|_| !shared.is_empty())
                .map(|s| (&s.values, &shared));
            match self.snapshot_with(tuple, false, None, known) {
                Ok((snapshot, stored)) => {
                    before = Some((stored, frames));
                    run.push(snapshot);
                }
                Err(e) => return (run, Some(e)),
            }
        }
        (run, None)
    }

    /// The state at the thread's latest checkpoint (or at `config.checkpoint_id`); `None`
    /// when there is no such checkpoint.
    ///
    /// As in LangGraph, the latest checkpoint (no id in the config) is shown live: its values
    /// include what the step's finished tasks wrote and `next` lists only the tasks still to
    /// run; a checkpoint named by id is a record of its step (values as the step started,
    /// every task in `next`). Both include a caller's updates stored on the checkpoint.
    pub async fn get_state(
        &self,
        config: impl Into<RunConfig>,
    ) -> Result<Option<StateSnapshot<S>>> {
        let saver = self.require_saver("get_state")?;
        let config = config.into();
        let latest = config.checkpoint_id.is_none();
        let cp_config = config.checkpoint_config();
        // The state the last run on this thread left in memory is not read back and decoded.
        let cached = config
            .thread_id
            .as_deref()
            .and_then(|t| self.inner.states.peek(t, &config.checkpoint_ns));
        let Some(cached) = cached else {
            return match saver.get_tuple(&cp_config).await? {
                Some(tuple) => self.snapshot(tuple, latest).map(Some),
                None => Ok(None),
            };
        };
        match self
            .read_tuple(saver.as_ref(), &cp_config, Some(&cached))
            .await?
        {
            Some(tuple) if tuple.checkpoint.id == cached.id => self
                .snapshot_with(tuple, latest, Some(cached.state), None)
                .map(|(snapshot, _)| Some(snapshot)),
            Some(tuple) => self.snapshot(tuple, latest).map(Some),
            None => Ok(None),
        }
    }

    /// Like [`get_state`](Self::get_state), plus the state of every subgraph the run is
    /// waiting in (an unfinished task of a node added with
    /// [`StateGraph::add_subgraph`](crate::StateGraph::add_subgraph)), keyed by the
    /// subgraph's namespace ([`SnapshotTask::checkpoint_ns`]); nested subgraphs are
    /// included, keyed by their full namespace (`sub:<id>|inner:<id>`). Subgraph values
    /// are shown as JSON since their state type may differ.
    pub async fn get_state_with_subgraphs(
        &self,
        config: impl Into<RunConfig>,
    ) -> Result<Option<SnapshotWithSubgraphs<S>>> {
        let saver = self.require_saver("get_state")?;
        let config = config.into();
        let latest = config.checkpoint_id.is_none();
        let Some(tuple) = saver.get_tuple(&config.checkpoint_config()).await? else {
            return Ok(None);
        };
        let state = self.snapshot(tuple, latest)?;
        let subgraphs = self.nested_states(saver, &state).await?;
        Ok(Some(SnapshotWithSubgraphs { state, subgraphs }))
    }

    /// The thread's checkpoints as snapshots, newest first, read a page at a time (a first
    /// page of 32 checkpoints, then pages of 1,024; a [`HistoryQuery::limit`] caps them) and
    /// decoded as the stream is consumed, in runs of 1, 2, 4, … up to 32 snapshots: within a
    /// run, an older checkpoint's list items shared with the newer one are cloned, not
    /// decoded again (see [`State::decode_field_sharing`]). A checkpoint that cannot be
    /// decoded ends the stream with its error after every newer snapshot.
    ///
    /// A config naming a checkpoint (`checkpoint_id`) gives the history up to it: that
    /// checkpoint, then the ones before it (nothing when the thread does not hold it).
    /// LangGraph lists only the named checkpoint there; Cairn gives its history, as the
    /// config of any snapshot then pages back from it.
    pub fn get_state_history(
        &self,
        config: impl Into<RunConfig>,
        query: HistoryQuery,
    ) -> impl Stream<Item = Result<StateSnapshot<S>>> + Send + 'static {
        struct Cursor<S: State> {
            graph: CompiledGraph<S>,
            base: ListQuery,
            before: Option<String>,
            remaining: usize,
            page: std::vec::IntoIter<CheckpointTuple>,
            ready: std::vec::IntoIter<StateSnapshot<S>>,
            /// The error that ended the last decode run, reported after its snapshots.
            failed: Option<GraphError>,
            /// Snapshots the next decode run may hold (doubling up to `HISTORY_DECODE_RUN`).
            run_size: usize,
            page_size: usize,
            done: bool,
            /// The checkpoint the config names, listed first; the pages after it are the
            /// checkpoints before it.
            first: Option<String>,
        }
        let config = config.into();
        let mut base = ListQuery::from_config(&config.checkpoint_config());
        base.checkpoint_id = None;
        base.filter = query.filter;
        // A checkpoint id in the config means "history up to and including it".
        let first = match &query.before {
            Some(_) => None,
            None => config.checkpoint_id.clone(),
        };
        let cursor = Cursor {
            graph: self.clone(),
            base,
            before: query.before.clone(),
            first,
            remaining: query.limit.unwrap_or(usize::MAX),
            page: Vec::new().into_iter(),
            ready: Vec::new().into_iter(),
            failed: None,
            run_size: 1,
            page_size: HISTORY_PAGE,
            done: false,
        };
        futures::stream::try_unfold(cursor, |mut c| async move {
            loop {
                if c.remaining == 0 {
                    return Ok(None);
                }
                if let Some(snapshot) = c.ready.next() {
                    c.remaining -= 1;
                    return Ok(Some((snapshot, c)));
                }
                if let Some(e) = c.failed.take() {
                    return Err(e);
                }
                if c.page.len() > 0 {
                    let n = c.remaining.min(c.run_size);
                    c.run_size = (c.run_size * 2).min(HISTORY_DECODE_RUN);
                    let (run, failed) = c.graph.history_run(&mut c.page, n);
                    c.ready = run.into_iter();
                    c.failed = failed;
                    continue;
                }
                if c.done {
                    return Ok(None);
                }
                let saver = c.graph.require_saver("get_state_history")?.clone();
                let mut q = c.base.clone();
                if let Some(id) = c.first.take() {
                    // The named checkpoint itself (a thread that does not hold it has no
                    // history up to it), then the ones before it.
                    q.checkpoint_id = Some(id.clone());
                    q.filter = Default::default();
                    q.limit = Some(1);
                    let mut page = saver.list(&q).await?;
                    if page.is_empty() {
                        return Ok(None);
                    }
                    page.retain(|t| t.metadata.matches(&c.base.filter));
                    c.page = page.into_iter();
                    c.before = Some(id);
                    continue;
                }
                q.before = c.before.clone();
                let page_size = c.remaining.min(c.page_size);
                c.page_size = HISTORY_PAGE_MAX;
                q.limit = Some(page_size);
                let page = saver.list(&q).await?;
                if page.len() < page_size {
                    c.done = true;
                }
                match page.last() {
                    Some(last) => c.before = Some(last.checkpoint.id.clone()),
                    None => return Ok(None),
                }
                c.page = page.into_iter();
            }
        })
    }

    /// Writes `values` into the thread's state as if node `as_node` had returned them: the
    /// values go through the reducers, `as_node`'s edges and routers decide what runs next,
    /// and a checkpoint with source `update` is saved as a child of the checkpoint `config`
    /// names (the latest when it names none). Updating an old checkpoint forks the thread:
    /// the new checkpoint starts a branch and the old history stays intact.
    ///
    /// `as_node: None` picks the node that last updated the state (as LangGraph does), or
    /// START on an empty thread. Returns the config of the new checkpoint. Fails with
    /// [`GraphError::ThreadBusy`] while a run of the thread is in progress in this process
    /// (its update would be lost under the run's next checkpoints), as a second run does.
    pub async fn update_state(
        &self,
        config: impl Into<RunConfig>,
        values: S::Update,
        as_node: Option<&str>,
    ) -> Result<CheckpointConfig> {
        let saver = self.require_saver("update_state")?.clone();
        let config = config.into();
        let thread_id = config
            .thread_id
            .clone()
            .ok_or_else(|| GraphError::InvalidArgument("update_state needs a thread id".into()))?;
        config.check_metadata()?;
        // Not while a run of this thread (or its background writes) is in progress: the
        // update would build on a head the run is about to supersede, and be lost.
        let _guard = crate::runtime::ThreadGuard::acquire(self.thread_key(&config))?;
        let spec = &self.inner.spec;
        let cp_config = config.checkpoint_config();
        let tuple = saver.get_tuple(&cp_config).await?;
        if tuple.is_none() && config.checkpoint_id.is_some() {
            return Err(GraphError::CheckpointNotFound {
                thread_id,
                checkpoint_id: config.checkpoint_id.clone(),
            });
        }
        let (mut channels, step, parent) = match &tuple {
            Some(t) => (
                Channels::load(spec, t, &self.codec)?,
                t.metadata.step.unwrap_or(-2) + 1,
                t.config.clone(),
            ),
            None => (Channels::new(spec), -1, cp_config.clone()),
        };
        let node = match as_node {
            Some(name) if name == START => 0,
            Some(name) => match spec.node_index.get(name) {
                Some(&n) => n,
                None => {
                    return Err(GraphError::UnknownNode {
                        node: name.to_owned(),
                        context: "as_node of update_state".into(),
                        known: spec.node_names(),
                    })
                }
            },
            None => match &tuple {
                Some(t) => last_updated_node(self, t)?,
                None => 0,
            },
        };
        let node_spec = &spec.nodes[node];
        let mut writes = TaskWrites {
            update: Some(values),
            branches: node_spec.edges.clone(),
            joins: node_spec.joins.clone(),
            sends: Vec::new(),
        };
        if !node_spec.branches.is_empty() {
            // The update through the reducers and the routers are user code: a panic is an
            // error of the call, not an unwind through it.
            let routes = crate::error::catch_reducer(&node_spec.name, || {
                let mut local = (*channels.state).clone();
                if let Some(u) = &writes.update {
                    S::apply(&mut local, S::Update::clone(u));
                }
                node_spec
                    .branches
                    .iter()
                    .map(|branch| (branch.router)(&local))
                    .collect::<Vec<_>>()
            })?;
            for (branch, route) in node_spec.branches.iter().zip(routes) {
                resolve_route(spec, node, branch, route, &mut writes)?;
            }
        }
        let task = Task {
            node,
            path: String::new(),
            triggers: Vec::new(),
            input: Arc::clone(&channels.state),
            id: String::new(),
        };
        channels.apply_writes(
            spec,
            vec![(&task, writes)],
            None,
            true,
            &Versioner::for_run(Some(saver.as_ref())),
        )?;
        channels.updated = None;
        let (cp, new_versions) = channels.checkpoint(spec, &self.codec)?;
        let mut meta = CheckpointMetadata::new(CheckpointSource::Update, step);
        meta.extra = config.metadata.clone();
        if let Some(run_id) = &config.run_id {
            meta.run_id = Some(run_id.clone());
        }
        let _ = END;
        Ok(saver.put(&parent, cp, meta, new_versions).await?)
    }

    /// Copies the whole thread `source` (every checkpoint and pending write) into the new
    /// thread `target`, which can then be continued independently (a fork into a new
    /// thread).
    pub async fn copy_thread(&self, source: &str, target: &str) -> Result<()> {
        let saver = self.require_saver("copy_thread")?;
        Ok(saver.copy_thread(source, target).await?)
    }
}

/// The node that last updated the state at `tuple`, as LangGraph picks `as_node`.
fn last_updated_node<S: State>(graph: &CompiledGraph<S>, tuple: &CheckpointTuple) -> Result<usize> {
    let spec = &graph.inner.spec;
    let mut last: Vec<(&cairn_checkpoint::ChannelVersion, usize)> = Vec::new();
    for (node, seen) in &tuple.checkpoint.versions_seen {
        let Some(&n) = spec.node_index.get(node) else {
            continue;
        };
        if n == 0 {
            continue;
        }
        for v in seen.values() {
            last.push((v, n));
        }
    }
    last.sort();
    match last.as_slice() {
        [] => Ok(0),
        [.., (v1, n1), (v2, n2)] if v1 == v2 && n1 != n2 => Err(GraphError::InvalidArgument(
            "ambiguous update: several nodes ran last; pass as_node to update_state".into(),
        )),
        [.., (_, n)] => Ok(*n),
    }
}

//! The compiled graph's channels and the Pregel bookkeeping: which tasks run next, and how
//! a step's writes are applied (LangGraph's `prepare_next_tasks` / `apply_writes`).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cairn_checkpoint::{
    chain_fetch_bound, ChannelVersion, ChannelVersions, Checkpoint, CheckpointTuple,
    Error as CpError, TypedValue, ValueCodec,
};

use crate::error::{GraphError, Result};
use crate::graph::{BranchSpec, Goto, NodeFn, SendTo, StateGraph, END, START};
use crate::state::{ReducerKind, State};

/// Name of the channel holding [`SendTo`] packets for the next step.
pub(crate) const TASKS: &str = "__pregel_tasks";
/// Channel a task writes when it finished without writing anything.
pub(crate) const NO_WRITES: &str = "__no_writes__";
const PULL: &str = "__pregel_pull";
const PUSH: &str = "__pregel_push";

/// Whether `path` is that of a task a [`SendTo`] started.
pub(crate) fn is_push_path(path: &str) -> bool {
    path.strip_prefix('~')
        .is_some_and(|rest| rest.starts_with(PUSH))
}
const BRANCH_PREFIX: &str = "branch:to:";
/// `versions_seen` key LangGraph always writes for the input.
const INPUT_SEEN: &str = "__input__";
/// `versions_seen` key of the versions at the last resume (static interrupts).
const INTERRUPT_SEEN: &str = "__interrupt__";

/// What a channel id stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chan {
    Field(usize),
    Start,
    Branch(usize),
    Join(usize),
    Tasks,
}

pub(crate) struct NodeSpec<S: State> {
    pub(crate) name: String,
    /// `None` for START, whose "output" is the run's input.
    pub(crate) run: Option<NodeFn<S>>,
    /// Targets of plain edges (node indexes; END edges are dropped).
    pub(crate) edges: Vec<usize>,
    /// Waiting edges this node feeds.
    pub(crate) joins: Vec<usize>,
    pub(crate) branches: Vec<BranchSpec<S>>,
    /// Channels whose update triggers this node.
    pub(crate) triggers: Vec<usize>,
    /// The task path of this node's pull task (`~__pregel_pull, <name>`).
    pub(crate) pull_path: String,
    /// Stop the run before this node runs.
    pub(crate) interrupt_before: bool,
    /// Stop the run after this node ran.
    pub(crate) interrupt_after: bool,
    /// Retries on failure.
    pub(crate) retry: Option<crate::options::RetryPolicy>,
    /// Whether a step of only such nodes writes a checkpoint.
    pub(crate) checkpoint: bool,
    /// Set when the node is a compiled subgraph: reads its state.
    pub(crate) subgraph: Option<crate::subgraph::SubgraphStateFn>,
}

pub(crate) struct JoinSpec {
    pub(crate) sources: Vec<usize>,
    pub(crate) name: String,
}

/// The static layout of a compiled graph. Channel ids: fields `0..F`, then `__start__`,
/// then `branch:to:<node>` for each node, then the waiting-edge channels, then the
/// `__pregel_tasks` channel.
pub(crate) struct Spec<S: State> {
    pub(crate) nodes: Vec<NodeSpec<S>>,
    pub(crate) node_index: HashMap<String, usize>,
    pub(crate) joins: Vec<JoinSpec>,
    pub(crate) channel_names: Vec<String>,
    pub(crate) channel_index: HashMap<String, usize>,
    pub(crate) n_fields: usize,
}

impl<S: State> Spec<S> {
    pub(crate) fn build(graph: &StateGraph<S>) -> Result<Self> {
        graph.validate()?;
        let fields = S::fields();
        let n_fields = fields.len();
        if n_fields > 64 {
            return Err(GraphError::InvalidGraph(
                "a state has at most 64 fields".into(),
            ));
        }
        let mut nodes: Vec<NodeSpec<S>> = vec![NodeSpec {
            name: START.to_owned(),
            run: None,
            edges: Vec::new(),
            joins: Vec::new(),
            branches: Vec::new(),
            triggers: vec![n_fields],
            pull_path: format!("~{PULL}, {START}"),
            interrupt_before: false,
            interrupt_after: false,
            retry: None,
            checkpoint: true,
            subgraph: None,
        }];
        for (name, run) in &graph.nodes {
            let index = nodes.len();
            nodes.push(NodeSpec {
                name: name.clone(),
                run: Some(Arc::clone(run)),
                edges: Vec::new(),
                joins: Vec::new(),
                branches: Vec::new(),
                triggers: vec![n_fields + index],
                pull_path: format!("~{PULL}, {name}"),
                interrupt_before: graph.interrupt_before.contains(name),
                interrupt_after: graph.interrupt_after.contains(name),
                retry: graph.options.get(name).and_then(|o| o.retry.clone()),
                checkpoint: graph.options.get(name).is_none_or(|o| o.checkpoint),
                subgraph: graph.subgraphs.get(name).cloned(),
            });
        }
        let node_index: HashMap<String, usize> = nodes
            .iter()
            .enumerate()
            .map(|(i, n)| (n.name.clone(), i))
            .collect();
        let lookup = |name: &str| -> Result<usize> {
            node_index
                .get(name)
                .copied()
                .ok_or_else(|| GraphError::InvalidGraph(format!("unknown node {name:?}")))
        };
        for (from, to) in &graph.edges {
            let from = lookup(from)?;
            if to != END {
                let to = lookup(to)?;
                if !nodes[from].edges.contains(&to) {
                    nodes[from].edges.push(to);
                }
            }
        }
        let mut joins = Vec::new();
        let first_join = n_fields + nodes.len();
        for (sources, to) in &graph.waiting_edges {
            let join = joins.len();
            let target = lookup(to)?;
            let mut source_ids = Vec::new();
            for s in sources {
                let s = lookup(s)?;
                nodes[s].joins.push(join);
                source_ids.push(s);
            }
            nodes[target].triggers.push(first_join + join);
            joins.push(JoinSpec {
                sources: source_ids,
                name: format!("join:{}:{}", sources.join("+"), to),
            });
        }
        for (source, branch) in &graph.branches {
            let source = lookup(source)?;
            nodes[source].branches.push(branch.clone());
        }
        let mut channel_names: Vec<String> = fields.iter().map(|f| f.name.to_owned()).collect();
        channel_names.push(START.to_owned());
        for node in &nodes[1..] {
            channel_names.push(format!("{BRANCH_PREFIX}{}", node.name));
        }
        for join in &joins {
            channel_names.push(join.name.clone());
        }
        channel_names.push(TASKS.to_owned());
        let channel_index = channel_names
            .iter()
            .enumerate()
            .map(|(i, n)| (n.clone(), i))
            .collect();
        Ok(Spec {
            nodes,
            node_index,
            joins,
            channel_names,
            channel_index,
            n_fields,
        })
    }

    pub(crate) fn n_channels(&self) -> usize {
        self.channel_names.len()
    }

    pub(crate) fn kind(&self, chan: usize) -> Chan {
        let f = self.n_fields;
        let n = self.nodes.len();
        if chan < f {
            Chan::Field(chan)
        } else if chan == f {
            Chan::Start
        } else if chan < f + n {
            Chan::Branch(chan - f)
        } else if chan < f + n + self.joins.len() {
            Chan::Join(chan - f - n)
        } else {
            Chan::Tasks
        }
    }

    pub(crate) fn branch_chan(&self, node: usize) -> usize {
        self.n_fields + node
    }

    pub(crate) fn join_chan(&self, join: usize) -> usize {
        self.n_fields + self.nodes.len() + join
    }

    pub(crate) fn tasks_chan(&self) -> usize {
        self.channel_names.len() - 1
    }

    pub(crate) fn node_names(&self) -> String {
        self.nodes[1..]
            .iter()
            .map(|n| n.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// One task of a super-step.
pub(crate) struct Task<S: State> {
    pub(crate) node: usize,
    pub(crate) path: String,
    pub(crate) triggers: Vec<usize>,
    pub(crate) input: Arc<S>,
    pub(crate) id: String,
}

/// What a task wrote.
pub(crate) struct TaskWrites<S: State> {
    pub(crate) update: Option<S::Update>,
    pub(crate) branches: Vec<usize>,
    pub(crate) joins: Vec<usize>,
    pub(crate) sends: Vec<SendTo<S>>,
}

impl<S: State> Default for TaskWrites<S> {
    fn default() -> Self {
        TaskWrites {
            update: None,
            branches: Vec::new(),
            joins: Vec::new(),
            sends: Vec::new(),
        }
    }
}

impl<S: State> TaskWrites<S> {
    /// The writes as saved with `put_writes`: `(channel, value)` pairs.
    pub(crate) fn encode(
        &self,
        spec: &Spec<S>,
        node: usize,
        codec: &ValueCodec,
    ) -> cairn_checkpoint::Result<Vec<(String, TypedValue)>> {
        let mut out = Vec::new();
        if let Some(update) = &self.update {
            for (field, value) in S::encode_update(update, codec)? {
                out.push((spec.channel_names[field].clone(), value));
            }
        }
        for &b in &self.branches {
            out.push((
                spec.channel_names[spec.branch_chan(b)].clone(),
                codec.encode(&())?,
            ));
        }
        for &j in &self.joins {
            out.push((
                spec.channel_names[spec.join_chan(j)].clone(),
                codec.encode(&spec.nodes[node].name)?,
            ));
        }
        for send in &self.sends {
            out.push((TASKS.to_owned(), codec.encode(send)?));
        }
        if out.is_empty() {
            out.push((NO_WRITES.to_owned(), codec.encode(&())?));
        }
        Ok(out)
    }

    /// Rebuilds a task's writes from saved `(channel, value)` pairs.
    pub(crate) fn decode<'a>(
        spec: &Spec<S>,
        writes: impl IntoIterator<Item = (&'a str, &'a TypedValue)>,
        codec: &ValueCodec,
    ) -> cairn_checkpoint::Result<Self> {
        let mut out = TaskWrites::default();
        for (channel, value) in writes {
            if channel == NO_WRITES || is_special(channel) {
                continue;
            }
            let Some(&chan) = spec.channel_index.get(channel) else {
                tracing::warn!(channel, "ignoring a saved write to an unknown channel");
                continue;
            };
            match spec.kind(chan) {
                Chan::Field(f) => {
                    let update = out.update.get_or_insert_with(Default::default);
                    S::decode_update_field(update, f, value, codec)?;
                }
                Chan::Branch(n) => out.branches.push(n),
                Chan::Join(j) => out.joins.push(j),
                Chan::Tasks => out.sends.push(codec.decode(value)?),
                Chan::Start => {}
            }
        }
        Ok(out)
    }
}

/// Whether `channel` is a bookkeeping write (error, interrupt, resume) rather than a task's
/// output.
pub(crate) fn is_special(channel: &str) -> bool {
    cairn_checkpoint::special_write_index(channel).is_some()
}

/// Field `f` of `state` as stored at `version`: the items added since the last stored version
/// (`stored`, updated here) when the field is stored item by item and that version can be
/// extended, else the whole field.
fn encode_field_since_stored<S: State>(
    state: &S,
    f: usize,
    stored: &mut Option<(ChannelVersion, usize)>,
    version: &ChannelVersion,
    codec: &ValueCodec,
) -> cairn_checkpoint::Result<TypedValue> {
    let count = state.item_count(f);
    let extendable = chain_fetch_bound(version).is_some();
    let last = std::mem::replace(
        stored,
        count.filter(|_| extendable).map(|n| (version.clone(), n)),
    );
    if let (Some((base, from)), Some(n), true) = (last, count, extendable) {
        if from <= n && base != *version {
            if let Some(value) = state.encode_field_items(f, from, &base, codec)? {
                return Ok(value);
            }
        }
    }
    state.encode_field(f, codec)
}

/// How the runtime makes channel versions.
pub(crate) enum Versioner<'a> {
    /// Plain integers (no saver).
    Int,
    /// The saver's versions, for one run (or one `update_state`): `run_suffix` is drawn once
    /// and offered to the saver for every version the run makes.
    Saver {
        saver: &'a dyn cairn_checkpoint::CheckpointSaver,
        run_suffix: u64,
    },
}

/// The largest channel version counter a loaded checkpoint may hold (see
/// [`Channels::load_with`]): 2^62, a margin no run of one step at a time reaches.
const MAX_COUNTER: i64 = 1 << 62;

impl<'a> Versioner<'a> {
    /// The versioner of a new run: `saver`'s versions with a fresh run suffix, or integers.
    pub(crate) fn for_run(saver: Option<&'a dyn cairn_checkpoint::CheckpointSaver>) -> Self {
        match saver {
            Some(saver) => Versioner::Saver {
                saver,
                run_suffix: ChannelVersion::new_run_suffix(),
            },
            None => Versioner::Int,
        }
    }

    fn next(&self, current: Option<&ChannelVersion>) -> ChannelVersion {
        match self {
            Versioner::Int => {
                ChannelVersion::Int(current.map_or(0, ChannelVersion::counter).saturating_add(1))
            }
            Versioner::Saver { saver, run_suffix } => {
                saver.get_next_version_in_run(current, *run_suffix)
            }
        }
    }
}

/// The live channels of one run.
pub(crate) struct Channels<S: State> {
    pub(crate) state: Arc<S>,
    pub(crate) input: Option<S::Update>,
    branch: Vec<bool>,
    join_seen: Vec<Vec<bool>>,
    pub(crate) sends: Vec<SendTo<S>>,
    versions: Vec<Option<ChannelVersion>>,
    max_version: Option<ChannelVersion>,
    /// Per node: trigger channel → version last seen.
    seen: Vec<Vec<(usize, ChannelVersion)>>,
    /// Channels whose version changed since the last saved checkpoint.
    dirty: Vec<bool>,
    /// Per field stored item by item: the version last stored (or loaded) and how many items
    /// it held, so the next checkpoint stores only the items added since.
    stored_items: Vec<Option<(ChannelVersion, usize)>>,
    /// Channels updated by the last applied step (`None`: not a loop step).
    pub(crate) updated: Option<Vec<usize>>,
    /// Channel versions when the run last resumed past an interrupt (LangGraph's
    /// `versions_seen["__interrupt__"]`).
    pub(crate) interrupt_seen: Option<Vec<(usize, ChannelVersion)>>,
    /// Per channel that is not a state field (input, branch triggers, joins, sends): the
    /// version last loaded or handed to the saver and the value stored with it (`None`:
    /// stored without a value). What the next run's head read may leave out, see
    /// [`stored_extras`](Self::stored_extras).
    stored_extra: Vec<Option<(ChannelVersion, Option<TypedValue>)>>,
}

/// A channel that is not a state field, as the checkpoint a run ended with stores it: its
/// name, version and value (`None`: stored without one).
pub(crate) type StoredExtra = (String, ChannelVersion, Option<TypedValue>);

impl<S: State> Channels<S> {
    pub(crate) fn new(spec: &Spec<S>) -> Self {
        Channels {
            state: Arc::new(S::default()),
            input: None,
            branch: vec![false; spec.nodes.len()],
            join_seen: spec
                .joins
                .iter()
                .map(|j| vec![false; j.sources.len()])
                .collect(),
            sends: Vec::new(),
            versions: vec![None; spec.n_channels()],
            max_version: None,
            seen: vec![Vec::new(); spec.nodes.len()],
            dirty: vec![false; spec.n_channels()],
            stored_items: vec![None; spec.n_fields],
            updated: None,
            interrupt_seen: None,
            stored_extra: vec![None; spec.n_channels()],
        }
    }

    /// The channels other than state fields as the last saved checkpoint stores them, when
    /// that is known exactly for every one of them (each was loaded or saved at its current
    /// version); `None` otherwise. Call it right after the run's last checkpoint was handed
    /// to the saver: a runtime holding the state and these need not read any value back.
    pub(crate) fn stored_extras(&self, spec: &Spec<S>) -> Option<Vec<StoredExtra>> {
        let mut extras = Vec::new();
        for (c, version) in self.versions.iter().enumerate() {
            let Some(version) = version else { continue };
            if matches!(spec.kind(c), Chan::Field(_)) {
                continue;
            }
            match &self.stored_extra[c] {
                Some((stored, value)) if stored == version && !self.dirty[c] => extras.push((
                    spec.channel_names[c].clone(),
                    version.clone(),
                    value.clone(),
                )),
                _ => return None,
            }
        }
        Some(extras)
    }

    /// Restores the channels of a saved checkpoint.
    pub(crate) fn load(
        spec: &Spec<S>,
        tuple: &CheckpointTuple,
        codec: &ValueCodec,
    ) -> Result<Self> {
        Channels::load_with(spec, tuple, codec, None, None)
    }

    /// Like [`load`](Self::load); `state`, when given, is the checkpoint's already decoded
    /// state (its fields are then not decoded again). `known`, when given, is another
    /// checkpoint's decoded state and, by channel, how many leading items of that
    /// checkpoint's stored list this checkpoint's list is made of: those fields take their
    /// items from it ([`State::decode_field_sharing`]).
    pub(crate) fn load_with(
        spec: &Spec<S>,
        tuple: &CheckpointTuple,
        codec: &ValueCodec,
        state: Option<Arc<S>>,
        known: Option<(&S, &HashMap<String, usize>)>,
    ) -> Result<Self> {
        let cached = state;
        let mut ch = Channels::new(spec);
        let cp = &tuple.checkpoint;
        let corrupt = |channel: &str, e: CpError| {
            GraphError::Checkpoint(CpError::corrupt(
                tuple.location(Some(channel)),
                format!("cannot decode the channel's value: {e}"),
            ))
        };
        for (name, version) in &cp.channel_versions {
            if let Some(&c) = spec.channel_index.get(name) {
                ch.versions[c] = Some(version.clone());
                if !matches!(spec.kind(c), Chan::Field(_)) {
                    let value = cp.channel_values.get(name).cloned();
                    ch.stored_extra[c] = Some((version.clone(), value));
                }
            }
            // Every channel counts for the next version, even one this graph lacks.
            let newer = match &ch.max_version {
                Some(m) => version > m,
                None => true,
            };
            if newer {
                ch.max_version = Some(version.clone());
            }
        }
        // Steps count one at a time too: the next step must be computable.
        if let Some(step) = tuple
            .metadata
            .step
            .filter(|s| !(-MAX_COUNTER..MAX_COUNTER).contains(s))
        {
            return Err(GraphError::Checkpoint(CpError::corrupt(
                tuple.location(None),
                format!("metadata step {step} is out of range (at most {MAX_COUNTER} either way)"),
            )));
        }
        // Versions count steps, one at a time: a counter near the end of the integers is
        // damage, and the next version could not be made above it.
        if let Some(m) = ch
            .max_version
            .as_ref()
            .filter(|m| m.counter() >= MAX_COUNTER)
        {
            return Err(GraphError::Checkpoint(CpError::corrupt(
                tuple.location(None),
                format!(
                    "channel version {m} has a counter of {} (at most {MAX_COUNTER}): no \
                     version can follow it",
                    m.counter()
                ),
            )));
        }
        let mut state = S::default();
        for (name, value) in &cp.channel_values {
            let Some(&c) = spec.channel_index.get(name) else {
                tracing::debug!(channel = %name, "ignoring a channel this graph does not have");
                continue;
            };
            match spec.kind(c) {
                Chan::Field(_) if cached.is_some() => {}
                Chan::Field(f) => match known.and_then(|(k, shared)| Some((k, *shared.get(name)?)))
                {
                    Some((known, shared)) => {
                        state.decode_field_sharing(f, value, codec, known, shared)
                    }
                    None => state.decode_field(f, value, codec),
                }
                .map_err(|e| corrupt(name, e))?,
                Chan::Start => ch.input = Some(codec.decode(value).map_err(|e| corrupt(name, e))?),
                Chan::Branch(n) => ch.branch[n] = true,
                Chan::Join(j) => {
                    let seen: Vec<String> = codec.decode(value).map_err(|e| corrupt(name, e))?;
                    for s in seen {
                        if let Some(pos) = spec.joins[j]
                            .sources
                            .iter()
                            .position(|&src| spec.nodes[src].name == s)
                        {
                            ch.join_seen[j][pos] = true;
                        }
                    }
                }
                Chan::Tasks => ch.sends = codec.decode(value).map_err(|e| corrupt(name, e))?,
            }
        }
        let was_cached = cached.is_some();
        ch.state = cached.unwrap_or_else(|| Arc::new(state));
        // Fields stored item by item continue from the loaded version, when it is whole in
        // the format this codec writes (savers return values whole).
        // A cached state's values may have been left out of the tuple (the saver was told
        // they are held); they were stored by this graph, in this codec's format.
        for (f, field) in S::fields().iter().enumerate() {
            let Some(version) = cp.channel_versions.get(field.name) else {
                continue;
            };
            let whole_in_format = match cp.channel_values.get(field.name) {
                Some(value) => value.type_tag == codec.format().tag(),
                None => was_cached,
            };
            if whole_in_format && chain_fetch_bound(version).is_some() {
                ch.stored_items[f] = ch.state.item_count(f).map(|n| (version.clone(), n));
            }
        }
        for (node, seen) in &cp.versions_seen {
            if node == INTERRUPT_SEEN {
                ch.interrupt_seen = Some(
                    seen.iter()
                        .filter_map(|(c, v)| spec.channel_index.get(c).map(|&c| (c, v.clone())))
                        .collect(),
                );
                continue;
            }
            let Some(&n) = spec.node_index.get(node) else {
                continue;
            };
            for (chan, version) in seen {
                if let Some(&c) = spec.channel_index.get(chan) {
                    ch.seen[n].push((c, version.clone()));
                }
            }
        }
        Ok(ch)
    }

    fn available(&self, spec: &Spec<S>, chan: usize) -> bool {
        match spec.kind(chan) {
            Chan::Field(_) => self.versions[chan].is_some(),
            Chan::Start => self.input.is_some(),
            Chan::Branch(n) => self.branch[n],
            Chan::Join(j) => self.join_seen[j].iter().all(|s| *s),
            Chan::Tasks => !self.sends.is_empty(),
        }
    }

    fn seen_version(&self, node: usize, chan: usize) -> Option<&ChannelVersion> {
        self.seen[node]
            .iter()
            .find(|(c, _)| *c == chan)
            .map(|(_, v)| v)
    }

    /// The tasks of the next super-step: one per [`SendTo`] packet, then one per node whose
    /// trigger channels are newer than what it last saw. Task ids derive from
    /// `checkpoint_id`, `step`, the node and the task path.
    pub(crate) fn prepare_tasks(
        &self,
        spec: &Spec<S>,
        checkpoint_id: &str,
        checkpoint_ns: &str,
        step: i64,
        with_ids: bool,
    ) -> Result<Vec<Task<S>>> {
        let mut tasks = Vec::new();
        let task_id = |name: &str, path: &str| {
            if with_ids {
                task_id(checkpoint_id, checkpoint_ns, step, name, path)
            } else {
                String::new()
            }
        };
        for (i, send) in self.sends.iter().enumerate() {
            let Some(&node) = spec.node_index.get(&send.node).filter(|&&n| n != 0) else {
                return Err(GraphError::UnknownNode {
                    node: send.node.clone(),
                    context: "target of a SendTo".into(),
                    known: spec.node_names(),
                });
            };
            let path = format!("~{PUSH}, {i:010}");
            tasks.push(Task {
                node,
                id: task_id(&send.node, &path),
                path,
                triggers: Vec::new(),
                input: Arc::new(send.arg.clone()),
            });
        }
        for (n, node) in spec.nodes.iter().enumerate() {
            let triggers: Vec<usize> = node
                .triggers
                .iter()
                .copied()
                .filter(|&c| {
                    self.available(spec, c)
                        && match (&self.versions[c], self.seen_version(n, c)) {
                            (Some(v), Some(seen)) => v > seen,
                            (Some(_), None) => true,
                            (None, _) => false,
                        }
                })
                .collect();
            if triggers.is_empty() {
                continue;
            }
            let path = node.pull_path.clone();
            tasks.push(Task {
                node: n,
                id: task_id(&node.name, &path),
                path,
                triggers,
                input: Arc::clone(&self.state),
            });
        }
        Ok(tasks)
    }

    fn bump(&mut self, chan: usize, version: &ChannelVersion) {
        self.versions[chan] = Some(version.clone());
        self.dirty[chan] = true;
    }

    /// Applies a step's writes (LangGraph's `apply_writes`). `writes` must be sorted by task
    /// path. `input` is a new input for `__start__`. `bump_step` is false only when applying
    /// input alone.
    pub(crate) fn apply_writes(
        &mut self,
        spec: &Spec<S>,
        writes: Vec<(&Task<S>, TaskWrites<S>)>,
        input: Option<S::Update>,
        bump_step: bool,
        versioner: &Versioner<'_>,
    ) -> Result<()> {
        // Versions seen by the tasks that ran.
        for (task, _) in &writes {
            for &c in &task.triggers {
                if let Some(v) = self.versions[c].clone() {
                    match self.seen[task.node].iter_mut().find(|(ch, _)| *ch == c) {
                        Some(entry) => entry.1 = v,
                        None => self.seen[task.node].push((c, v)),
                    }
                }
            }
        }
        let next = versioner.next(self.max_version.as_ref());
        let mut updated = Vec::new();
        // Consume waiting edges that fired.
        for (task, _) in &writes {
            for &c in &task.triggers {
                if let Chan::Join(j) = spec.kind(c) {
                    if self.join_seen[j].iter().any(|s| *s) {
                        self.join_seen[j].iter_mut().for_each(|s| *s = false);
                        self.bump(c, &next);
                    }
                }
            }
        }
        // Fields, through their reducers.
        let fields = S::fields();
        let mut counts = [0u8; 64];
        let mut any_field = 0u64;
        for (_, w) in &writes {
            if let Some(u) = &w.update {
                let mask = S::written(u);
                any_field |= mask;
                for (f, count) in counts.iter_mut().enumerate().take(fields.len()) {
                    if mask & (1 << f) != 0 {
                        *count = count.saturating_add(1);
                    }
                }
            }
        }
        for (f, field) in fields.iter().enumerate() {
            if field.reducer == ReducerKind::Replace && counts[f] > 1 {
                let nodes: Vec<&str> = writes
                    .iter()
                    .filter(|(_, w)| {
                        w.update
                            .as_ref()
                            .is_some_and(|u| S::written(u) & (1 << f) != 0)
                    })
                    .map(|(t, _)| spec.nodes[t.node].name.as_str())
                    .collect();
                return Err(GraphError::ConflictingWrites {
                    field: field.name.to_owned(),
                    count: counts[f] as usize,
                    nodes: nodes.join(", "),
                });
            }
        }
        let mut new_sends: Option<Vec<SendTo<S>>> = None;
        let mut written_branches: Vec<usize> = Vec::new();
        let mut state = (any_field != 0).then(|| Arc::make_mut(&mut self.state));
        for (task, w) in writes {
            if let (Some(u), Some(state)) = (w.update, state.as_deref_mut()) {
                // Reducers are user code (a custom `with =`, or `add` overflowing in a debug
                // build): a panic is an error of the run, not an unwind through `invoke`.
                crate::error::catch_reducer(&spec.nodes[task.node].name, || state.apply(u))?;
            }
            for b in w.branches {
                if !written_branches.contains(&b) {
                    written_branches.push(b);
                }
            }
            for j in w.joins {
                let Some(pos) = spec.joins[j].sources.iter().position(|&s| s == task.node) else {
                    continue;
                };
                if !self.join_seen[j][pos] {
                    self.join_seen[j][pos] = true;
                    let c = spec.join_chan(j);
                    self.versions[c] = Some(next.clone());
                    self.dirty[c] = true;
                    if self.join_seen[j].iter().all(|s| *s) && !updated.contains(&c) {
                        updated.push(c);
                    }
                }
            }
            if !w.sends.is_empty() {
                new_sends.get_or_insert_with(Vec::new).extend(w.sends);
            }
        }
        for f in 0..fields.len() {
            if any_field & (1 << f) != 0 {
                self.bump(f, &next);
                updated.push(f);
            }
        }
        for b in written_branches {
            self.branch[b] = true;
            let c = spec.branch_chan(b);
            self.bump(c, &next);
            updated.push(c);
        }
        if let Some(sends) = new_sends {
            self.sends = sends;
            let c = spec.tasks_chan();
            self.bump(c, &next);
            updated.push(c);
        }
        if let Some(input) = input {
            self.input = Some(input);
            let c = spec.n_fields;
            self.bump(c, &next);
            updated.push(c);
        }
        if bump_step {
            // Ephemeral channels not written in this step are cleared.
            for c in 0..spec.n_channels() {
                if updated.contains(&c) {
                    continue;
                }
                let cleared = match spec.kind(c) {
                    Chan::Start => self.input.take().is_some(),
                    Chan::Branch(n) => std::mem::take(&mut self.branch[n]),
                    Chan::Tasks => {
                        let had = !self.sends.is_empty();
                        self.sends.clear();
                        had
                    }
                    Chan::Field(_) | Chan::Join(_) => false,
                };
                if cleared {
                    self.bump(c, &next);
                }
            }
        }
        if self.dirty.iter().any(|d| *d) {
            self.max_version = Some(next);
        }
        updated.sort_unstable();
        self.updated = Some(updated);
        Ok(())
    }

    /// The checkpoint of the current channels; only channels changed since the last saved
    /// checkpoint carry values (and are listed in the returned new versions).
    pub(crate) fn checkpoint(
        &mut self,
        spec: &Spec<S>,
        codec: &ValueCodec,
    ) -> cairn_checkpoint::Result<(Checkpoint, ChannelVersions)> {
        let mut cp = Checkpoint::new();
        let mut new_versions = ChannelVersions::new();
        for (c, version) in self.versions.iter().enumerate() {
            let Some(version) = version else { continue };
            let name = &spec.channel_names[c];
            cp.channel_versions.insert(name.clone(), version.clone());
            if !self.dirty[c] {
                continue;
            }
            new_versions.insert(name.clone(), version.clone());
            let value = match spec.kind(c) {
                Chan::Field(f) => Some(encode_field_since_stored(
                    &*self.state,
                    f,
                    &mut self.stored_items[f],
                    version,
                    codec,
                )?),
                Chan::Start => self.input.as_ref().map(|i| codec.encode(i)).transpose()?,
                Chan::Branch(n) => self.branch[n].then(|| codec.encode(&())).transpose()?,
                Chan::Join(j) => {
                    let seen: Vec<&str> = spec.joins[j]
                        .sources
                        .iter()
                        .zip(&self.join_seen[j])
                        .filter(|(_, s)| **s)
                        .map(|(&n, _)| spec.nodes[n].name.as_str())
                        .collect();
                    (!seen.is_empty())
                        .then(|| codec.encode(&seen))
                        .transpose()?
                }
                Chan::Tasks => (!self.sends.is_empty())
                    .then(|| codec.encode(&self.sends))
                    .transpose()?,
            };
            if !matches!(spec.kind(c), Chan::Field(_)) {
                self.stored_extra[c] = Some((version.clone(), value.clone()));
            }
            if let Some(value) = value {
                cp.channel_values.insert(name.clone(), value);
            }
        }
        for (n, seen) in self.seen.iter().enumerate() {
            if seen.is_empty() {
                continue;
            }
            // Inserting a few entries is cheaper than `collect` (which sorts into a buffer).
            let mut map = BTreeMap::new();
            for (c, v) in seen {
                map.insert(spec.channel_names[*c].clone(), v.clone());
            }
            cp.versions_seen.insert(spec.nodes[n].name.clone(), map);
        }
        cp.versions_seen
            .insert(INPUT_SEEN.to_owned(), BTreeMap::new());
        if let Some(seen) = &self.interrupt_seen {
            cp.versions_seen.insert(
                INTERRUPT_SEEN.to_owned(),
                seen.iter()
                    .map(|(c, v)| (spec.channel_names[*c].clone(), v.clone()))
                    .collect(),
            );
        }
        cp.updated_channels = self.updated.take().map(|mut updated| {
            updated.sort_unstable_by(|&a, &b| spec.channel_names[a].cmp(&spec.channel_names[b]));
            updated.dedup();
            updated
                .iter()
                .map(|&c| spec.channel_names[c].clone())
                .collect()
        });
        self.dirty.iter_mut().for_each(|d| *d = false);
        Ok((cp, new_versions))
    }

    /// Whether some channel changed since the last checkpoint was handed to the saver (a
    /// command's update applied with no step after it, say): the state in memory is then not
    /// the state of the thread's latest checkpoint.
    pub(crate) fn has_unsaved_changes(&self) -> bool {
        self.dirty.iter().any(|d| *d)
    }

    /// Marks every channel clean (after a checkpoint was saved by other means).
    pub(crate) fn mark_clean(&mut self) {
        self.dirty.iter_mut().for_each(|d| *d = false);
        self.updated = None;
    }

    /// Records that the run resumes here: interrupts already raised at these versions do
    /// not fire again.
    pub(crate) fn mark_resumed(&mut self) {
        self.interrupt_seen = Some(
            self.versions
                .iter()
                .enumerate()
                .filter_map(|(c, v)| v.clone().map(|v| (c, v)))
                .collect(),
        );
    }

    /// Whether a run must stop before `tasks` (LangGraph's `should_interrupt`): a task's
    /// node is flagged in `flags` (by node index) and some channel changed since the last
    /// resume.
    pub(crate) fn should_interrupt(&self, flags: &[bool], tasks: &[Task<S>]) -> bool {
        tasks.iter().any(|t| flags[t.node]) && self.changed_since_resume()
    }

    /// Whether some channel changed since the run last resumed past a breakpoint.
    pub(crate) fn changed_since_resume(&self) -> bool {
        self.versions.iter().enumerate().any(|(c, v)| {
            let Some(v) = v else { return false };
            match self
                .interrupt_seen
                .as_ref()
                .and_then(|seen| seen.iter().find(|(sc, _)| *sc == c))
            {
                Some((_, seen)) => v > seen,
                None => true,
            }
        })
    }
}

/// The deterministic id of a task: a UUID v5 of the checkpoint id, namespace, step, node
/// name and task path. The same task of the same step always gets the same id, so writes
/// saved before a crash are found again on resume.
pub fn task_id(
    checkpoint_id: &str,
    checkpoint_ns: &str,
    step: i64,
    name: &str,
    path: &str,
) -> String {
    // Built by hand: this runs for every task of every step, and `format!` costs more than
    // the hash.
    let mut key = String::with_capacity(
        checkpoint_id.len() + checkpoint_ns.len() + name.len() + path.len() + 24,
    );
    key.push_str(checkpoint_id);
    key.push('\u{0}');
    key.push_str(checkpoint_ns);
    key.push('\u{0}');
    push_i64(&mut key, step);
    key.push('\u{0}');
    key.push_str(name);
    key.push('\u{0}');
    key.push_str(path);
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes())
        .hyphenated()
        .encode_lower(&mut buf)
        .to_owned()
}

/// Appends `n` in decimal.
fn push_i64(out: &mut String, n: i64) {
    if n < 0 {
        out.push('-');
    }
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut m = n.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (m % 10) as u8;
        m /= 10;
        if m == 0 {
            break;
        }
    }
    out.extend(digits[i..].iter().map(|&d| d as char));
}

/// Resolves a node's [`crate::Command`] `goto` into branch targets and sends.
pub(crate) fn resolve_goto<S: State>(
    spec: &Spec<S>,
    source: usize,
    goto: Vec<Goto<S>>,
    out: &mut TaskWrites<S>,
) -> Result<()> {
    for g in goto {
        match g {
            Goto::Node(name) if name == END => {}
            Goto::Node(name) => match spec.node_index.get(&name) {
                Some(&n) if n != 0 => {
                    if !out.branches.contains(&n) {
                        out.branches.push(n);
                    }
                }
                _ => {
                    return Err(GraphError::UnknownNode {
                        node: name,
                        context: format!("goto of a command from {:?}", spec.nodes[source].name),
                        known: spec.node_names(),
                    })
                }
            },
            Goto::Send(send) => {
                if !matches!(spec.node_index.get(&send.node), Some(&n) if n != 0) {
                    return Err(GraphError::UnknownNode {
                        node: send.node,
                        context: format!("SendTo in a command from {:?}", spec.nodes[source].name),
                        known: spec.node_names(),
                    });
                }
                out.sends.push(send);
            }
        }
    }
    Ok(())
}

/// Resolves a router's route into branch targets and sends.
pub(crate) fn resolve_route<S: State>(
    spec: &Spec<S>,
    source: usize,
    branch: &BranchSpec<S>,
    route: crate::graph::Route<S>,
    out: &mut TaskWrites<S>,
) -> Result<()> {
    for goto in route.targets {
        match goto {
            Goto::Send(send) => {
                let known = matches!(spec.node_index.get(&send.node), Some(&n) if n != 0);
                if !known {
                    return Err(GraphError::UnknownNode {
                        node: send.node,
                        context: format!(
                            "SendTo returned by the router of {:?}",
                            spec.nodes[source].name
                        ),
                        known: spec.node_names(),
                    });
                }
                out.sends.push(send);
            }
            Goto::Node(key) => {
                let target = match &branch.path_map {
                    Some(map) => match map.get(&key) {
                        Some(t) => t.clone(),
                        None => {
                            return Err(GraphError::UnknownNode {
                                node: key,
                                context: format!(
                                    "key returned by the router of {:?}, missing from its path map",
                                    spec.nodes[source].name
                                ),
                                known: map.keys().cloned().collect::<Vec<_>>().join(", "),
                            })
                        }
                    },
                    None => key,
                };
                if target == END {
                    continue;
                }
                match spec.node_index.get(&target) {
                    Some(&n) if n != 0 => {
                        if !out.branches.contains(&n) {
                            out.branches.push(n);
                        }
                    }
                    _ => {
                        return Err(GraphError::UnknownNode {
                            node: target,
                            context: format!(
                                "returned by the router of {:?}",
                                spec.nodes[source].name
                            ),
                            known: spec.node_names(),
                        })
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::task_id;

    #[test]
    fn task_ids_hash_the_joined_key() {
        for step in [-1i64, 0, 7, 1234567890, i64::MIN, i64::MAX] {
            let key = format!("cp\u{0}ns\u{0}{step}\u{0}node\u{0}~__pregel_pull, node");
            let expected = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, key.as_bytes());
            assert_eq!(
                task_id("cp", "ns", step, "node", "~__pregel_pull, node"),
                expected.hyphenated().to_string()
            );
        }
    }
}

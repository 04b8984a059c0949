//! Building graphs: nodes, edges, conditional edges, fan-out, and compile-time validation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use cairn_checkpoint::CheckpointSaver;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};

use crate::command::{Command, IntoNodeOutput};
use crate::error::{GraphError, NodeError, Result};
use crate::options::NodeOptions;
use crate::runtime::CompiledGraph;
use crate::state::State;

/// The virtual node every run starts from.
pub const START: &str = "__start__";
/// The virtual node a path ends at.
pub const END: &str = "__end__";

/// What a node returns: the partial update, or an error.
pub type NodeResult<S> = std::result::Result<<S as State>::Update, NodeError>;

/// What a node's function returns once type-erased: a command (update + goto).
pub(crate) type NodeCommand<S> = std::result::Result<Command<S>, NodeError>;
pub(crate) type NodeFn<S> = Arc<dyn Fn(Arc<S>) -> BoxFuture<'static, NodeCommand<S>> + Send + Sync>;
pub(crate) type RouterFn<S> = Arc<dyn Fn(&S) -> Route<S> + Send + Sync>;

/// A task to start in the next super-step with its own input (LangGraph's `Send`): routers
/// return these to fan out one node over many inputs.
///
/// ```
/// use cairn_graph::{Route, SendTo, State};
/// # #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
/// # struct Jokes { subject: String, #[reducer(append)] jokes: Vec<String> }
/// fn fan_out(_: &Jokes) -> Route<Jokes> {
///     ["cats", "dogs"]
///         .into_iter()
///         .map(|s| SendTo::new("write_joke", Jokes { subject: s.into(), ..Default::default() }))
///         .collect()
/// }
/// ```
#[doc(alias = "Send")]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SendTo<S> {
    /// The node to run.
    pub node: String,
    /// The state that node receives instead of the graph's state.
    pub arg: S,
}

impl<S> SendTo<S> {
    /// Runs `node` with `arg` as its input.
    pub fn new(node: impl Into<String>, arg: S) -> Self {
        SendTo {
            node: node.into(),
            arg,
        }
    }
}

/// One destination chosen by a router.
#[derive(Debug, Clone, PartialEq)]
pub enum Goto<S> {
    /// A node name, [`END`], or a key of the conditional edge's path map.
    Node(String),
    /// A task with its own input.
    Send(SendTo<S>),
}

/// Where a router sends the run next: any number of nodes, [`END`] and [`SendTo`] packets.
///
/// Converts from a node name (`&str`, `String`), a list of names, a [`SendTo`] or a list of
/// them, so routers can return whichever is natural.
#[derive(Debug, Clone, PartialEq)]
pub struct Route<S> {
    /// The destinations.
    pub targets: Vec<Goto<S>>,
}

impl<S> Route<S> {
    /// No destination (the path ends).
    pub fn end() -> Self {
        Route {
            targets: Vec::new(),
        }
    }

    /// Adds a destination.
    pub fn and(mut self, goto: impl Into<Route<S>>) -> Self {
        self.targets.extend(goto.into().targets);
        self
    }
}

impl<S> From<&str> for Route<S> {
    fn from(node: &str) -> Self {
        Route {
            targets: vec![Goto::Node(node.to_owned())],
        }
    }
}

impl<S> From<String> for Route<S> {
    fn from(node: String) -> Self {
        Route {
            targets: vec![Goto::Node(node)],
        }
    }
}

impl<S> From<SendTo<S>> for Route<S> {
    fn from(send: SendTo<S>) -> Self {
        Route {
            targets: vec![Goto::Send(send)],
        }
    }
}

impl<S> From<Goto<S>> for Route<S> {
    fn from(goto: Goto<S>) -> Self {
        Route {
            targets: vec![goto],
        }
    }
}

impl<S, T: Into<Route<S>>> From<Vec<T>> for Route<S> {
    fn from(items: Vec<T>) -> Self {
        items.into_iter().collect()
    }
}

impl<S, T: Into<Route<S>>, const N: usize> From<[T; N]> for Route<S> {
    fn from(items: [T; N]) -> Self {
        items.into_iter().collect()
    }
}

impl<S, T: Into<Route<S>>> FromIterator<T> for Route<S> {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        Route {
            targets: iter.into_iter().flat_map(|t| t.into().targets).collect(),
        }
    }
}

/// The sources of an edge: one node, or several (a waiting edge: the target runs once all of
/// them have finished).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeSources(pub(crate) Vec<String>);

impl From<&str> for EdgeSources {
    fn from(s: &str) -> Self {
        EdgeSources(vec![s.to_owned()])
    }
}

impl From<String> for EdgeSources {
    fn from(s: String) -> Self {
        EdgeSources(vec![s])
    }
}

impl<const N: usize> From<[&str; N]> for EdgeSources {
    fn from(s: [&str; N]) -> Self {
        EdgeSources(s.iter().map(|s| (*s).to_owned()).collect())
    }
}

impl From<Vec<&str>> for EdgeSources {
    fn from(s: Vec<&str>) -> Self {
        EdgeSources(s.into_iter().map(str::to_owned).collect())
    }
}

impl From<Vec<String>> for EdgeSources {
    fn from(s: Vec<String>) -> Self {
        EdgeSources(s)
    }
}

pub(crate) struct BranchSpec<S> {
    pub(crate) router: RouterFn<S>,
    /// Router key → node (or END). `None`: the router returns node names itself.
    pub(crate) path_map: Option<BTreeMap<String, String>>,
}

impl<S> Clone for BranchSpec<S> {
    fn clone(&self) -> Self {
        BranchSpec {
            router: Arc::clone(&self.router),
            path_map: self.path_map.clone(),
        }
    }
}

/// A graph over the typed state `S`, built with `add_node` / `add_edge` /
/// `add_conditional_edges` and turned into a runnable [`CompiledGraph`] by
/// [`compile`](Self::compile).
pub struct StateGraph<S: State> {
    pub(crate) nodes: Vec<(String, NodeFn<S>)>,
    pub(crate) edges: Vec<(String, String)>,
    pub(crate) waiting_edges: Vec<(Vec<String>, String)>,
    pub(crate) branches: Vec<(String, BranchSpec<S>)>,
    pub(crate) errors: Vec<GraphError>,
    pub(crate) interrupt_before: Vec<String>,
    pub(crate) interrupt_after: Vec<String>,
    pub(crate) options: HashMap<String, NodeOptions>,
    pub(crate) durability: crate::options::Durability,
    /// Nodes that are compiled subgraphs: how to read their state.
    pub(crate) subgraphs: HashMap<String, crate::subgraph::SubgraphStateFn>,
}

impl<S: State> Default for StateGraph<S> {
    fn default() -> Self {
        StateGraph::new()
    }
}

impl<S: State> StateGraph<S> {
    /// An empty graph.
    pub fn new() -> Self {
        StateGraph {
            nodes: Vec::new(),
            edges: Vec::new(),
            waiting_edges: Vec::new(),
            branches: Vec::new(),
            errors: Vec::new(),
            interrupt_before: Vec::new(),
            interrupt_after: Vec::new(),
            options: HashMap::new(),
            durability: crate::options::Durability::default(),
            subgraphs: HashMap::new(),
        }
    }

    /// Stops runs after any of `nodes` ran (a static breakpoint, LangGraph's
    /// `interrupt_after`): the step's checkpoint is saved, `invoke` returns, and
    /// `invoke(None, ..)` continues with the next step.
    pub fn interrupt_after<I, N>(&mut self, nodes: I) -> &mut Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.interrupt_after
            .extend(nodes.into_iter().map(Into::into));
        self
    }

    /// The default [`Durability`](crate::Durability) of runs (overridden per invoke by
    /// [`RunConfig::with_durability`](crate::RunConfig::with_durability)).
    pub fn durability(&mut self, durability: crate::options::Durability) -> &mut Self {
        self.durability = durability;
        self
    }

    /// Adds an async node with options (retries, declared destinations, checkpointing).
    /// The node returns either its update (`<Name>Update`) or a [`Command`]: an update plus
    /// `goto` (the nodes to run next, like edges taken). Declare a command's possible
    /// targets with [`NodeOptions::destinations`] so `compile` can check the graph.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cairn_checkpoint::InMemorySaver;
    /// use cairn_graph::{Command, NodeOptions, RunConfig, State, StateGraph, END, START};
    /// # #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
    /// # struct Steps { #[reducer(append)] steps: Vec<String> }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let mut g = StateGraph::<Steps>::new();
    /// g.add_node_with("a", NodeOptions::default().destinations(["b", "c"]), |_s: Arc<Steps>| async {
    ///     Ok(Command::update(StepsUpdate::default().steps(vec!["a".into()])).goto("c"))
    /// })
    /// .add_sync_node("b", |_| Ok(StepsUpdate::default().steps(vec!["b".into()])))
    /// .add_sync_node("c", |_| Ok(StepsUpdate::default().steps(vec!["c".into()])))
    /// .add_edge(START, "a")
    /// .add_edge("b", END)
    /// .add_edge("c", END);
    /// let app = g.compile(Arc::new(InMemorySaver::new()))?;
    /// let out = app.invoke(Some(StepsUpdate::default()), RunConfig::thread("t")).await?;
    /// assert_eq!(out.steps, ["a", "c"]);
    /// # Ok::<(), cairn_graph::GraphError>(()) }).unwrap();
    /// ```
    pub fn add_node_with<F, Fut, O>(
        &mut self,
        name: impl Into<String>,
        options: NodeOptions,
        node: F,
    ) -> &mut Self
    where
        F: Fn(Arc<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<O, NodeError>> + Send + 'static,
        O: IntoNodeOutput<S>,
    {
        let name = name.into();
        let run: NodeFn<S> = Arc::new(move |state| {
            node(state)
                .map(|r| r.map(IntoNodeOutput::into_command))
                .boxed()
        });
        self.push_node(name.clone(), run);
        self.set_node_options(name, options)
    }

    /// Sets the options of node `name` (added before or after this call).
    pub fn set_node_options(&mut self, name: impl Into<String>, options: NodeOptions) -> &mut Self {
        self.options.insert(name.into(), options);
        self
    }

    /// Stops runs before any of `nodes` runs (a static breakpoint, LangGraph's
    /// `interrupt_before`): `invoke` returns the state at that point, the latest checkpoint
    /// lists the node in `next`, and `invoke(None, ..)` continues.
    pub fn interrupt_before<I, N>(&mut self, nodes: I) -> &mut Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.interrupt_before
            .extend(nodes.into_iter().map(Into::into));
        self
    }

    /// Adds an async node: it receives the state (or a [`SendTo`]'s input) and returns the
    /// fields it writes. To return a [`Command`] (update plus where to go next) or set
    /// retries, use [`add_node_with`](Self::add_node_with).
    pub fn add_node<F, Fut>(&mut self, name: impl Into<String>, node: F) -> &mut Self
    where
        F: Fn(Arc<S>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = NodeResult<S>> + Send + 'static,
    {
        let run: NodeFn<S> =
            Arc::new(move |state| node(state).map(|r| r.map(Command::update)).boxed());
        self.push_node(name.into(), run)
    }

    /// Adds a synchronous node (a plain function of the state). Cheaper than an async node
    /// for quick, CPU-only steps.
    pub fn add_sync_node<F>(&mut self, name: impl Into<String>, node: F) -> &mut Self
    where
        F: Fn(&S) -> NodeResult<S> + Send + Sync + 'static,
    {
        let node = Arc::new(node);
        let run: NodeFn<S> = Arc::new(move |state: Arc<S>| {
            let result = node(&state).map(Command::update);
            futures::future::ready(result).boxed()
        });
        self.push_node(name.into(), run)
    }

    /// Adds a synchronous node with options; like [`add_node_with`](Self::add_node_with).
    pub fn add_sync_node_with<F, O>(
        &mut self,
        name: impl Into<String>,
        options: NodeOptions,
        node: F,
    ) -> &mut Self
    where
        F: Fn(&S) -> std::result::Result<O, NodeError> + Send + Sync + 'static,
        O: IntoNodeOutput<S>,
    {
        let name = name.into();
        let node = Arc::new(node);
        let run: NodeFn<S> = Arc::new(move |state: Arc<S>| {
            let result = node(&state).map(IntoNodeOutput::into_command);
            futures::future::ready(result).boxed()
        });
        self.push_node(name.clone(), run);
        self.set_node_options(name, options)
    }

    pub(crate) fn push_node(&mut self, name: String, run: NodeFn<S>) -> &mut Self {
        if name.is_empty() || name == START || name == END {
            self.errors.push(GraphError::InvalidGraph(format!(
                "{name:?} cannot be a node name (reserved or empty)"
            )));
        } else if let Some(c) = name.chars().find(|c| matches!(c, ':' | '|' | '+' | '~')) {
            self.errors.push(GraphError::InvalidGraph(format!(
                "node name {name:?} contains the reserved character {c:?}"
            )));
        } else if S::field_index(&name).is_some() {
            self.errors.push(GraphError::InvalidGraph(format!(
                "node name {name:?} is also a state field; give the node another name"
            )));
        } else if self.nodes.iter().any(|(n, _)| *n == name) {
            self.errors.push(GraphError::InvalidGraph(format!(
                "node {name:?} is added twice"
            )));
        } else {
            self.nodes.push((name, run));
        }
        self
    }

    /// Adds an edge: when every source has finished, `to` runs in the next super-step. One
    /// source (`"a"`) is a plain edge; several (`["a", "b"]`) make a waiting edge (join).
    pub fn add_edge(&mut self, from: impl Into<EdgeSources>, to: impl Into<String>) -> &mut Self {
        let EdgeSources(sources) = from.into();
        let to = to.into();
        if to == START {
            self.errors.push(GraphError::InvalidGraph(
                "START cannot be an edge's target".into(),
            ));
        }
        match sources.as_slice() {
            [] => self.errors.push(GraphError::InvalidGraph(format!(
                "edge to {to:?} has no source"
            ))),
            [one] => {
                if one == END {
                    self.errors.push(GraphError::InvalidGraph(
                        "END cannot be an edge's source".into(),
                    ));
                }
                self.edges.push((one.clone(), to));
            }
            many => {
                if many.iter().any(|s| s == START || s == END) {
                    self.errors.push(GraphError::InvalidGraph(
                        "a waiting edge's sources must be nodes (not START or END)".into(),
                    ));
                }
                if to == END {
                    self.errors.push(GraphError::InvalidGraph(
                        "a waiting edge cannot end at END; add an edge from each source instead"
                            .into(),
                    ));
                }
                if let Some(twice) = many
                    .iter()
                    .enumerate()
                    .find(|(i, s)| many[..*i].contains(s))
                    .map(|(_, s)| s)
                {
                    // The join would wait for a second finish of the same node, which a step
                    // never gives: `to` would never run.
                    self.errors.push(GraphError::InvalidGraph(format!(
                        "the waiting edge to {to:?} lists {twice:?} twice; list each source once"
                    )));
                }
                self.waiting_edges.push((many.to_vec(), to));
            }
        }
        self
    }

    /// Adds a conditional edge: after `source` runs, `router` looks at the state (with
    /// `source`'s writes applied) and returns the next node(s), [`END`], or [`SendTo`]
    /// packets.
    pub fn add_conditional_edges<F, R>(&mut self, source: impl Into<String>, router: F) -> &mut Self
    where
        F: Fn(&S) -> R + Send + Sync + 'static,
        R: Into<Route<S>>,
    {
        self.push_branch(source.into(), router, None)
    }

    /// Like [`add_conditional_edges`](Self::add_conditional_edges), with a path map: the
    /// router returns keys, mapped to node names (or [`END`]). The map also tells `compile`
    /// where the router can go, so validation is more precise.
    pub fn add_conditional_edges_with_map<F, R, K, V>(
        &mut self,
        source: impl Into<String>,
        router: F,
        path_map: impl IntoIterator<Item = (K, V)>,
    ) -> &mut Self
    where
        F: Fn(&S) -> R + Send + Sync + 'static,
        R: Into<Route<S>>,
        K: Into<String>,
        V: Into<String>,
    {
        let map = path_map
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self.push_branch(source.into(), router, Some(map))
    }

    fn push_branch<F, R>(
        &mut self,
        source: String,
        router: F,
        path_map: Option<BTreeMap<String, String>>,
    ) -> &mut Self
    where
        F: Fn(&S) -> R + Send + Sync + 'static,
        R: Into<Route<S>>,
    {
        if source == END {
            self.errors.push(GraphError::InvalidGraph(
                "END cannot be a conditional edge's source".into(),
            ));
        }
        let router: RouterFn<S> = Arc::new(move |state: &S| router(state).into());
        self.branches
            .push((source, BranchSpec { router, path_map }));
        self
    }

    /// Shorthand for `add_edge(START, node)`.
    pub fn set_entry_point(&mut self, node: impl Into<String>) -> &mut Self {
        self.add_edge(START, node)
    }

    /// Shorthand for `add_edge(node, END)`.
    pub fn set_finish_point(&mut self, node: impl Into<String>) -> &mut Self {
        self.add_edge(node.into(), END)
    }

    /// Validates the graph and compiles it with a checkpoint saver: every run is saved as
    /// LangGraph-compatible checkpoints and can be resumed, inspected, replayed and forked.
    pub fn compile(&self, saver: Arc<dyn CheckpointSaver>) -> Result<CompiledGraph<S>> {
        CompiledGraph::build(self, Some(saver))
    }

    /// Validates the graph and compiles it without a saver: runs keep no history (fastest).
    pub fn compile_without_saver(&self) -> Result<CompiledGraph<S>> {
        CompiledGraph::build(self, None)
    }

    /// Checks the graph: known nodes, an entry point, every node able to reach END.
    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(first) = self.errors.first() {
            return Err(match first {
                GraphError::InvalidGraph(m) => GraphError::InvalidGraph(m.clone()),
                other => GraphError::InvalidGraph(other.to_string()),
            });
        }
        // The runtime's own channels (`__start__`, `__pregel_tasks`, `__interrupt__` …) all
        // start with two underscores: a field of such a name could share a runtime channel in
        // every checkpoint.
        if let Some(field) = S::fields().iter().find(|f| f.name.starts_with("__")) {
            return Err(GraphError::InvalidGraph(format!(
                "state field {:?}: names starting with __ are the runtime's own channels; \
                 rename the field",
                field.name
            )));
        }
        let names: HashSet<&str> = self.nodes.iter().map(|(n, _)| n.as_str()).collect();
        let known = || {
            self.nodes
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let check = |node: &str, allow: &[&str], context: String| -> Result<()> {
            if names.contains(node) || allow.contains(&node) {
                Ok(())
            } else {
                Err(GraphError::UnknownNode {
                    node: node.to_owned(),
                    context,
                    known: known(),
                })
            }
        };
        for (from, to) in &self.edges {
            check(from, &[START], format!("source of the edge to {to:?}"))?;
            check(to, &[END], format!("target of the edge from {from:?}"))?;
        }
        for (sources, to) in &self.waiting_edges {
            for s in sources {
                check(s, &[], format!("source of the waiting edge to {to:?}"))?;
            }
            check(
                to,
                &[],
                format!("target of the waiting edge from {sources:?}"),
            )?;
        }
        for (source, branch) in &self.branches {
            check(source, &[START], "source of a conditional edge".into())?;
            if let Some(map) = &branch.path_map {
                for (key, target) in map {
                    check(
                        target,
                        &[END],
                        format!("path map entry {key:?} of the conditional edge from {source:?}"),
                    )?;
                }
            }
        }
        let has_entry = self.edges.iter().any(|(f, _)| f == START)
            || self.branches.iter().any(|(s, _)| s == START);
        if !has_entry {
            return Err(GraphError::NoEntryPoint);
        }
        // Which nodes can reach END: walk edges backwards from END. A conditional edge
        // without a path map may go anywhere, END included.
        let mut successors: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut reaches_end: HashSet<&str> = HashSet::new();
        for (from, to) in &self.edges {
            successors.entry(from).or_default().push(to);
        }
        for (sources, to) in &self.waiting_edges {
            for s in sources {
                successors.entry(s).or_default().push(to);
            }
        }
        for (name, options) in &self.options {
            for d in &options.destinations {
                successors.entry(name).or_default().push(d);
            }
        }
        for (source, branch) in &self.branches {
            match &branch.path_map {
                Some(map) => successors
                    .entry(source)
                    .or_default()
                    .extend(map.values().map(String::as_str)),
                None => {
                    reaches_end.insert(source);
                }
            }
        }
        reaches_end.insert(END);
        loop {
            let before = reaches_end.len();
            for (from, tos) in &successors {
                if tos.iter().any(|t| reaches_end.contains(t)) {
                    reaches_end.insert(from);
                }
            }
            if reaches_end.len() == before {
                break;
            }
        }
        for name in &self.interrupt_before {
            check(name, &[], "interrupt_before".into())?;
        }
        for name in &self.interrupt_after {
            check(name, &[], "interrupt_after".into())?;
        }
        for (name, options) in &self.options {
            check(name, &[], "set_node_options".into())?;
            for d in &options.destinations {
                check(d, &[END], format!("destination of node {name:?}"))?;
            }
        }
        for (name, _) in &self.nodes {
            if !reaches_end.contains(name.as_str()) {
                return Err(GraphError::CannotReachEnd { node: name.clone() });
            }
        }
        Ok(())
    }
}

//! Compiled graphs used as nodes of other graphs.
//!
//! A subgraph node runs its child graph with the parent's saver, on the parent's thread,
//! under its own checkpoint namespace `<parent ns|>node:task_id`. The task id is
//! deterministic, so a re-run of the task (after an interrupt or a crash) finds the child's
//! checkpoints again and continues from them instead of starting over.

use std::collections::BTreeMap;
use std::sync::Arc;

use cairn_checkpoint::{CheckpointConfig, CheckpointSaver, ValueCodec};
use futures::future::BoxFuture;
use futures::FutureExt;

use crate::command::{Command, NodeInterrupted};
use crate::config::RunConfig;
use crate::error::{GraphError, NodeError, Result};
use crate::graph::{NodeFn, StateGraph};
use crate::runtime::{task_ns, CompiledGraph, Nested, RunInput, CURRENT_TASK};
use crate::snapshot::StateSnapshot;
use crate::state::State;

/// Reads a subgraph's state (and its own subgraphs'), by namespace, with a saver.
pub(crate) type SubgraphStateFn = Arc<
    dyn Fn(
            Arc<dyn CheckpointSaver>,
            CheckpointConfig,
        )
            -> BoxFuture<'static, Result<BTreeMap<String, StateSnapshot<serde_json::Value>>>>
        + Send
        + Sync,
>;

/// The whole state as an update writing every field (a shared-state subgraph's input and
/// output, as LangGraph passes them).
pub(crate) fn state_as_update<S: State>(state: &S, codec: &ValueCodec) -> Result<S::Update> {
    let mut update = S::Update::default();
    for index in 0..S::fields().len() {
        let value = state.encode_field(index, codec)?;
        S::decode_update_field(&mut update, index, &value, codec)?;
    }
    Ok(update)
}

/// What a subgraph node needs from the task it runs in.
struct ParentTask {
    saver: Option<Arc<dyn CheckpointSaver>>,
    thread_id: String,
    child_ns: String,
    parents: BTreeMap<String, String>,
    nested_resume: Option<Arc<std::sync::Mutex<Option<serde_json::Value>>>>,
    resume_map: Option<Arc<BTreeMap<String, serde_json::Value>>>,
}

fn parent_task() -> std::result::Result<ParentTask, NodeError> {
    CURRENT_TASK
        .try_with(|c| {
            let mut parents = (*c.parents).clone();
            if let Some(id) = c.current.as_ref().and_then(|cfg| cfg.checkpoint_id.clone()) {
                parents.insert(c.ns.clone(), id);
            }
            let scratch = c.scratch.lock().unwrap_or_else(|p| p.into_inner());
            ParentTask {
                saver: c.saver.clone(),
                thread_id: c.info.thread_id.clone(),
                child_ns: task_ns(&c.ns, &c.info.name, &c.info.id),
                parents,
                nested_resume: scratch.null_resume.clone(),
                resume_map: scratch.resume_map.clone(),
            }
        })
        .map_err(|_| NodeError::from("a subgraph runs only as a node of a running graph"))
}

/// Runs `child` as the current task's subgraph: continues its run in the task's namespace
/// when one is saved there, else starts one with `input`. An interrupt inside the child
/// interrupts the current task with the child's interrupts.
pub(crate) async fn run_child<C: State>(
    child: &CompiledGraph<C>,
    input: impl FnOnce() -> Result<C::Update>,
) -> std::result::Result<C, NodeError> {
    let parent = parent_task()?;
    let bound = child.bound(parent.saver.clone());
    let mut config = RunConfig {
        checkpoint_ns: parent.child_ns.clone(),
        ..RunConfig::default()
    };
    let mut resuming = false;
    if let Some(saver) = &parent.saver {
        config.thread_id = Some(parent.thread_id.clone());
        resuming = saver
            .get_tuple(&config.checkpoint_config())
            .await
            .map_err(|e| NodeError::from(GraphError::from(e)))?
            .is_some();
    }
    let run_input = if resuming {
        tracing::debug!(ns = %parent.child_ns, "continuing a subgraph from its saved checkpoint");
        RunInput::Continue
    } else {
        RunInput::Update(input().map_err(NodeError::from)?)
    };
    let nested = Nested {
        parents: parent.parents,
        null_resume: parent.nested_resume,
        resume_map: parent.resume_map,
    };
    let (state, interrupts) = bound
        .run(run_input, config, None, Default::default(), Some(nested))
        .await
        .map_err(NodeError::from)?;
    match interrupts {
        None => Ok(Arc::try_unwrap(state).unwrap_or_else(|s| (*s).clone())),
        Some(interrupts) => {
            let Some(first) = interrupts.first().cloned() else {
                return Err(NodeError::from(format!(
                    "subgraph {} stopped at a static breakpoint, which a parent graph cannot resume",
                    parent.child_ns
                )));
            };
            CURRENT_TASK
                .try_with(|c| {
                    c.scratch.lock().unwrap_or_else(|p| p.into_inner()).raised = interrupts;
                })
                .map_err(|_| NodeError::from("a subgraph runs only as a node"))?;
            Err(NodeError::from(NodeInterrupted(first)))
        }
    }
}

impl<S: State> CompiledGraph<S> {
    /// The snapshot of this graph's run in `config`'s namespace, and those of the subgraphs
    /// it is waiting in, keyed by namespace.
    pub(crate) fn subgraph_states(
        &self,
        config: CheckpointConfig,
    ) -> BoxFuture<'static, Result<BTreeMap<String, StateSnapshot<serde_json::Value>>>> {
        let graph = self.clone();
        async move {
            let mut out = BTreeMap::new();
            let Some(saver) = graph.inner.saver.clone() else {
                return Ok(out);
            };
            let Some(tuple) = saver.get_tuple(&config).await? else {
                return Ok(out);
            };
            let snapshot = graph.snapshot(tuple, true)?;
            out.extend(graph.nested_states(&saver, &snapshot).await?);
            let values = serde_json::to_value(&snapshot.values).map_err(|e| {
                GraphError::InvalidArgument(format!("cannot show a subgraph's state: {e}"))
            })?;
            out.insert(
                config.checkpoint_ns.clone(),
                StateSnapshot {
                    values,
                    next: snapshot.next,
                    config: snapshot.config,
                    metadata: snapshot.metadata,
                    created_at: snapshot.created_at,
                    parent_config: snapshot.parent_config,
                    tasks: snapshot.tasks,
                    interrupts: snapshot.interrupts,
                },
            );
            Ok(out)
        }
        .boxed()
    }

    /// The states of the unfinished subgraph tasks of `snapshot`.
    pub(crate) async fn nested_states<T>(
        &self,
        saver: &Arc<dyn CheckpointSaver>,
        snapshot: &StateSnapshot<T>,
    ) -> Result<BTreeMap<String, StateSnapshot<serde_json::Value>>> {
        let mut out = BTreeMap::new();
        for task in &snapshot.tasks {
            let (Some(ns), false) = (&task.checkpoint_ns, task.completed) else {
                continue;
            };
            let Some(hook) = self
                .inner
                .spec
                .node_index
                .get(&task.name)
                .and_then(|&i| self.inner.spec.nodes[i].subgraph.clone())
            else {
                continue;
            };
            let config = CheckpointConfig {
                thread_id: snapshot.config.thread_id.clone(),
                checkpoint_ns: ns.clone(),
                checkpoint_id: None,
            };
            out.extend(hook(Arc::clone(saver), config).await?);
        }
        Ok(out)
    }
}

impl<S: State> StateGraph<S> {
    /// Adds a compiled graph of the same state type as a node (LangGraph's shared-state
    /// subgraph): it starts from the parent's whole state, and its whole final state is
    /// the node's update (so an `append` field gets the child's full list appended, as in
    /// LangGraph). The child runs with the parent's saver, on the parent's thread, in the
    /// namespace `node:task_id`; an [`interrupt`](crate::interrupt) inside it interrupts
    /// the parent, and [`Command::resume`] on the parent continues the child where it
    /// stopped.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use cairn_checkpoint::InMemorySaver;
    /// use cairn_graph::{Command, RunConfig, State, StateGraph, END, START};
    /// # #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
    /// # struct Doc { #[reducer(append)] steps: Vec<String>, answer: String }
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let mut child = StateGraph::<Doc>::new();
    /// child
    ///     .add_node("ask", |_s: Arc<Doc>| async {
    ///         let answer: String = cairn_graph::interrupt_as("approve?")?;
    ///         Ok(DocUpdate::default().answer(answer))
    ///     })
    ///     .add_edge(START, "ask")
    ///     .add_edge("ask", END);
    /// let mut parent = StateGraph::<Doc>::new();
    /// parent
    ///     .add_subgraph("review", child.compile_without_saver()?)
    ///     .add_edge(START, "review")
    ///     .add_edge("review", END);
    /// let app = parent.compile(Arc::new(InMemorySaver::new()))?;
    /// let first = app.invoke_outcome(Some(DocUpdate::default()), RunConfig::thread("t")).await?;
    /// assert_eq!(first.interrupts()[0].value, "approve?");
    /// let done = app.invoke_command(Command::resume("yes"), RunConfig::thread("t")).await?;
    /// assert_eq!(done.state().answer, "yes");
    /// # Ok::<(), cairn_graph::GraphError>(()) }).unwrap();
    /// ```
    pub fn add_subgraph(&mut self, name: impl Into<String>, child: CompiledGraph<S>) -> &mut Self {
        self.add_subgraph_mapped(
            name,
            child,
            |s: &S| state_as_update(s, &ValueCodec::default()),
            |_: &S, c: S| state_as_update(&c, &ValueCodec::default()),
        )
    }

    /// Adds a compiled graph with another state type as a node: `input` maps the parent's
    /// state to the child's input, `output` maps the parent's state (as the node saw it)
    /// and the child's final state to the node's update. Otherwise like
    /// [`add_subgraph`](Self::add_subgraph).
    pub fn add_subgraph_mapped<C, I, O>(
        &mut self,
        name: impl Into<String>,
        child: CompiledGraph<C>,
        input: I,
        output: O,
    ) -> &mut Self
    where
        C: State,
        I: Fn(&S) -> Result<C::Update> + Send + Sync + 'static,
        O: Fn(&S, C) -> Result<S::Update> + Send + Sync + 'static,
    {
        let name = name.into();
        let input = Arc::new(input);
        let output = Arc::new(output);
        let node_child = child.clone();
        let run: NodeFn<S> = Arc::new(move |state: Arc<S>| {
            let child = node_child.clone();
            let input = Arc::clone(&input);
            let output = Arc::clone(&output);
            async move {
                let result = run_child(&child, || input(&state)).await?;
                let update = output(&state, result).map_err(NodeError::from)?;
                Ok(Command::update(update))
            }
            .boxed()
        });
        let hook: SubgraphStateFn = Arc::new(move |saver, config| {
            let bound = child.bound(Some(saver));
            bound.subgraph_states(config)
        });
        self.subgraphs.insert(name.clone(), hook);
        self.push_node(name, run)
    }
}

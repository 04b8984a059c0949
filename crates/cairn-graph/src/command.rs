//! Human-in-the-loop: dynamic interrupts, resume values, [`Command`]s and run outcomes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::NodeError;
use crate::graph::{Goto, Route, SendTo};
use crate::runtime::CURRENT_TASK;
use crate::state::State;

/// A pause requested by a node with [`interrupt`]: the run stops, and the caller answers with
/// [`Command::resume`] (or [`Command::resume_map`] keyed by [`id`](Self::id) when several
/// are pending).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interrupt {
    /// Stable id: the same interrupt of the same task keeps its id across re-runs.
    pub id: String,
    /// The payload the node passed to [`interrupt`] (what the human is asked).
    pub value: Value,
}

/// How an invocation ended.
#[derive(Debug, Clone)]
pub enum RunOutcome<S> {
    /// The run reached END (no task left).
    Finished(S),
    /// The run stopped before finishing: at [`interrupt`] calls (listed in `interrupts`, in
    /// task order) or at a static breakpoint (`interrupt_before` / `interrupt_after`; then
    /// `interrupts` is empty). Continue with [`crate::CompiledGraph::invoke_command`] and a
    /// [`Command::resume`], or with `invoke(None, ..)` after a static breakpoint.
    Interrupted {
        /// The state where the run stopped (the step that interrupted is not applied).
        state: S,
        /// The pending interrupts.
        interrupts: Vec<Interrupt>,
    },
}

impl<S> RunOutcome<S> {
    /// The state, however the run ended.
    pub fn state(&self) -> &S {
        match self {
            RunOutcome::Finished(s) | RunOutcome::Interrupted { state: s, .. } => s,
        }
    }

    /// Consumes the outcome, keeping the state.
    pub fn into_state(self) -> S {
        match self {
            RunOutcome::Finished(s) | RunOutcome::Interrupted { state: s, .. } => s,
        }
    }

    /// The pending interrupts (empty when finished or stopped at a static breakpoint).
    pub fn interrupts(&self) -> &[Interrupt] {
        match self {
            RunOutcome::Finished(_) => &[],
            RunOutcome::Interrupted { interrupts, .. } => interrupts,
        }
    }

    /// Whether the run stopped before finishing.
    pub fn is_interrupted(&self) -> bool {
        matches!(self, RunOutcome::Interrupted { .. })
    }
}

/// The answer(s) to pending interrupts.
#[derive(Debug, Clone, PartialEq)]
pub enum Resume {
    /// One value, for the (single) pending interrupt.
    Value(Value),
    /// Values by interrupt id, when several interrupts are pending.
    Map(BTreeMap<String, Value>),
}

/// A state update plus control flow (LangGraph's `Command`).
///
/// * Returned by a **node** (see [`crate::StateGraph::add_node`]): `update` is the node's
///   update and `goto` the nodes (or [`SendTo`] packets) to run next, in addition to its
///   edges — exactly like an edge taken. Declare where a node can go with
///   [`crate::NodeOptions::destinations`] so `compile` can validate the graph.
/// * Passed by the **caller** to [`crate::CompiledGraph::invoke_command`]: `resume` answers
///   pending interrupts, `update` is applied to the thread's state (as a write of no task)
///   and `goto` schedules nodes, before the run continues.
///
/// ```
/// use cairn_graph::{Command, State};
/// # #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
/// # struct Doc { text: String }
/// let from_a_node = Command::<Doc>::update(DocUpdate::default().text("draft".to_string()))
///     .goto("review");
/// let from_the_caller = Command::<Doc>::resume(serde_json::json!("approved"));
/// # let _ = (from_a_node, from_the_caller);
/// ```
#[derive(Debug, Clone)]
pub struct Command<S: State> {
    /// Fields to write.
    pub update: Option<S::Update>,
    /// Nodes (or [`SendTo`] packets) to run next; [`END`](crate::END) is allowed and ignored.
    pub goto: Vec<Goto<S>>,
    /// Answer to pending interrupts (caller only).
    pub resume: Option<Resume>,
}

impl<S: State> Default for Command<S> {
    fn default() -> Self {
        Command {
            update: None,
            goto: Vec::new(),
            resume: None,
        }
    }
}

impl<S: State> Command<S> {
    /// A command writing `update`.
    pub fn update(update: S::Update) -> Self {
        Command {
            update: Some(update),
            ..Command::default()
        }
    }

    /// A command going to `route` (node names, [`END`](crate::END), [`SendTo`] packets).
    pub fn go(route: impl Into<Route<S>>) -> Self {
        Command::default().goto(route)
    }

    /// Adds destinations.
    pub fn goto(mut self, route: impl Into<Route<S>>) -> Self {
        self.goto.extend(route.into().targets);
        self
    }

    /// Sets the update.
    pub fn with_update(mut self, update: S::Update) -> Self {
        self.update = Some(update);
        self
    }

    /// Answers the single pending interrupt with `value`.
    pub fn resume(value: impl Into<Value>) -> Self {
        Command {
            resume: Some(Resume::Value(value.into())),
            ..Command::default()
        }
    }

    /// Answers several pending interrupts, by [`Interrupt::id`].
    pub fn resume_map<I, K, V>(values: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<Value>,
    {
        Command {
            resume: Some(Resume::Map(
                values
                    .into_iter()
                    .map(|(k, v)| (k.into(), v.into()))
                    .collect(),
            )),
            ..Command::default()
        }
    }
}

impl<S: State> From<SendTo<S>> for Command<S> {
    fn from(send: SendTo<S>) -> Self {
        Command::go(send)
    }
}

/// What a node may return: its state's update type (`<Name>Update`, implemented by
/// `#[derive(State)]`) or a [`Command`].
pub trait IntoNodeOutput<S: State>: Send + 'static {
    /// The output as a command (an update with no `goto`).
    fn into_command(self) -> Command<S>;
}

impl<S: State> IntoNodeOutput<S> for Command<S> {
    fn into_command(self) -> Command<S> {
        self
    }
}

/// The error a node returns (through `?`) when it calls [`interrupt`] without a resume
/// value: the runtime stops the run and saves the interrupt. Nodes should propagate it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("interrupted: {0:?}")]
pub struct NodeInterrupted(pub Interrupt);

/// Per-task interrupt bookkeeping (LangGraph's scratchpad).
#[derive(Default)]
pub(crate) struct Scratch {
    /// Resume values the task already has, in interrupt order.
    pub(crate) resume: Vec<Value>,
    /// How many `interrupt` calls the current execution made.
    pub(crate) counter: usize,
    /// The run's unassigned resume value, shared by the step's tasks (first one takes it).
    pub(crate) null_resume: Option<Arc<Mutex<Option<Value>>>>,
    /// The interrupt the task raised.
    pub(crate) raised: Vec<Interrupt>,
    /// `resume` gained values in this execution (save them as a `__resume__` write).
    pub(crate) resume_changed: bool,
    /// The caller's resume map, for the interrupts of a subgraph this task runs.
    pub(crate) resume_map: Option<Arc<BTreeMap<String, Value>>>,
}

/// The id of the interrupt a task raises after `answered` answers.
pub(crate) fn interrupt_id(ns: &str, answered: usize) -> String {
    let key = if answered == 0 {
        ns.to_owned()
    } else {
        format!("{ns}|{answered}")
    };
    uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, key.as_bytes())
        .simple()
        .to_string()
}

/// Pauses the run for human input (LangGraph's `interrupt()`), from inside a node.
///
/// The first time, it returns `Err` ([`NodeInterrupted`]): propagate it with `?`. The run
/// stops, the interrupt (with `value`) is saved with the checkpoint and reported by
/// [`crate::CompiledGraph::invoke_outcome`] and `get_state`. When the caller resumes with
/// [`Command::resume`], **the node runs again from its start** and this call returns the
/// resume value. Several calls in one node are matched to resume values in order. Code
/// before an `interrupt` call therefore runs again on resume: keep it idempotent.
///
/// ```
/// use std::sync::Arc;
/// use cairn_checkpoint::InMemorySaver;
/// use cairn_graph::{interrupt, Command, RunConfig, RunOutcome, State, StateGraph, END, START};
///
/// #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
/// struct Review { answer: String }
///
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let mut g = StateGraph::<Review>::new();
/// g.add_node("ask", |_s: Arc<Review>| async {
///     let answer = interrupt(serde_json::json!({"question": "approve?"}))?;
///     Ok(ReviewUpdate::default().answer(answer.as_str().unwrap_or_default().to_string()))
/// })
/// .add_edge(START, "ask")
/// .add_edge("ask", END);
/// let app = g.compile(Arc::new(InMemorySaver::new()))?;
/// let out = app.invoke_outcome(Some(ReviewUpdate::default()), RunConfig::thread("t")).await?;
/// assert_eq!(out.interrupts()[0].value["question"], "approve?");
/// let out = app.invoke_command(Command::resume("yes"), RunConfig::thread("t")).await?;
/// assert!(matches!(out, RunOutcome::Finished(ref s) if s.answer == "yes"));
/// # Ok::<(), cairn_graph::GraphError>(()) }).unwrap();
/// ```
pub fn interrupt<V: Serialize>(value: V) -> Result<Value, NodeError> {
    let value = serde_json::to_value(value)?;
    let outcome = CURRENT_TASK.try_with(|ctx| {
        let mut s = ctx.scratch.lock().unwrap_or_else(|p| p.into_inner());
        let idx = s.counter;
        s.counter += 1;
        if let Some(v) = s.resume.get(idx) {
            return Ok(v.clone());
        }
        let null = s
            .null_resume
            .as_ref()
            .and_then(|n| n.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(v) = null {
            s.resume.push(v.clone());
            s.resume_changed = true;
            return Ok(v);
        }
        let raised = Interrupt {
            id: interrupt_id(&ctx.task_ns(), s.resume.len()),
            value,
        };
        s.raised = vec![raised.clone()];
        Err(NodeInterrupted(raised))
    });
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(Box::new(e)),
        Err(_) => Err("cairn_graph::interrupt called outside of a graph node".into()),
    }
}

/// Like [`interrupt`], decoding the resume value as `T`.
pub fn interrupt_as<T: DeserializeOwned, V: Serialize>(value: V) -> Result<T, NodeError> {
    let v = interrupt(value)?;
    Ok(serde_json::from_value(v)?)
}

//! # cairn-graph
//!
//! Durable state graphs: a typed [`StateGraph`] whose runs are saved, step by step, as
//! LangGraph-compatible checkpoints, so they can be resumed after a crash, inspected,
//! replayed and forked.
//!
//! ```
//! use std::sync::Arc;
//! use cairn_checkpoint::InMemorySaver;
//! use cairn_graph::{RunConfig, State, StateGraph, END, START};
//!
//! #[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
//! struct Chat {
//!     #[reducer(append)]
//!     messages: Vec<String>,
//!     #[reducer(add)]
//!     turns: u32,
//! }
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let mut graph = StateGraph::<Chat>::new();
//! graph
//!     .add_node("greet", |_s: Arc<Chat>| async { Ok(ChatUpdate::default().messages(vec!["hi".to_string()])) })
//!     .add_node("answer", |s: Arc<Chat>| async move {
//!         Ok(ChatUpdate::default().messages(vec![format!("you said {} things", s.messages.len())]).turns(1u32))
//!     })
//!     .add_node("check", |_s: Arc<Chat>| async { Ok(ChatUpdate::default()) })
//!     .add_edge(START, "greet")
//!     .add_edge("greet", "answer")
//!     .add_conditional_edges("answer", |s: &Chat| if s.turns < 2 { "answer" } else { "check" })
//!     .add_edge("check", END);
//! let app = graph.compile(Arc::new(InMemorySaver::new()))?;
//!
//! let input = ChatUpdate::default().messages(vec!["hello".to_string()]);
//! let out = app.invoke(Some(input), RunConfig::thread("t1")).await?;
//! assert_eq!(out.turns, 2);
//! assert_eq!(out.messages, ["hello", "hi", "you said 2 things", "you said 3 things"]);
//! let snapshot = app.get_state(RunConfig::thread("t1")).await?.expect("saved");
//! assert!(snapshot.next.is_empty());
//! assert_eq!(snapshot.metadata.step, Some(4)); // input at -1, then steps 0..=4
//! # Ok::<(), cairn_graph::GraphError>(()) }).unwrap();
//! ```
//!
//! ## Design
//!
//! **State and channels.** A state is a struct deriving [`State`](macro@State). Each field is
//! one *channel*, named after the field, with a reducer chosen by `#[reducer(..)]`:
//! `replace` (default), `append`, `merge`, `add` or `with = my_fn`. The derive generates
//! `<Name>Update`, an all-`Option` twin of the struct that nodes return; applying it runs each
//! written field's reducer. Fields are encoded one by one ([`cairn_checkpoint::ValueCodec`],
//! MessagePack by default), and a checkpoint only carries the fields that changed in its step
//! (`new_versions`), so storage grows with what changed, not with the state's size.
//!
//! Each field is stored with its own type's `serde` implementation, so field-level serde
//! attributes on the state struct (`rename`, `skip`, `with`) do not change how a field is
//! stored; a field added to a state later reads as its default from older checkpoints, and a
//! removed one is ignored. [`SendTo`] packets and a run's input are stored whole (the packet's
//! argument through the state struct's own serde): to keep a thread with a pending packet
//! readable after adding a field, give the struct `#[serde(default)]`. Field names starting
//! with `__` are the runtime's and are refused by `compile`.
//!
//! Besides the fields, a compiled graph has the same bookkeeping channels as LangGraph:
//! `__start__` (the run's input, consumed by the hidden START task in step 0),
//! `branch:to:<node>` (one per node: an edge or a router writing it triggers the node in the
//! next step), `join:<a>+<b>:<node>` (waiting edges: triggers once every source wrote it)
//! and `__pregel_tasks` ([`SendTo`] packets: one task each, with its own input).
//!
//! **Triggers.** Every channel has a version (from
//! [`CheckpointSaver::get_next_version_in_run`]; one new version per step, shared by every
//! channel the step changed, with one random suffix per run) and every node remembers,
//! in `versions_seen`, the versions of its trigger channels when it last ran. A node runs in
//! the next super-step when one of its trigger channels holds a value with a version newer
//! than the one it saw. After a step, ephemeral channels (`__start__`, `branch:to:*`,
//! `__pregel_tasks`) that were not written again are cleared.
//!
//! **Super-steps.** Every task of a step runs concurrently (one tokio task each; a step with a
//! single task runs inline). Writes are applied after the step, sorted by task path (pull
//! tasks by node name, then push tasks by index) so results do not depend on timing. A field
//! with the `replace` reducer written by two tasks of one step is an error, as in LangGraph.
//!
//! **Task ids and pending writes.** A task's id is a UUID v5 of (checkpoint id, namespace,
//! step, node, task path). As soon as a task finishes, its writes (fields, edges taken,
//! sends) are saved with `put_writes` under that id. When a run resumes from a checkpoint
//! with pending writes, the tasks of the next step are recomputed — with the same ids — and
//! those whose writes are saved are not run again: their writes are applied instead.
//!
//! **Checkpoints.** Like LangGraph: an input checkpoint (`source: input`, step = previous
//! step + 1, -1 on a new thread) holding `__start__`, then one `loop` checkpoint per
//! super-step. Metadata carries `source`, `step`, `parents`, `run_id` (fresh per invoke) and
//! the caller's [`RunConfig::metadata`].
//!
//! ## Differences from LangGraph
//! The golden tests (`tests/golden.rs`) replay LangGraph 1.2.24's recorded histories
//! (`tests/golden/*.json`) and match them checkpoint by checkpoint (step, source, next,
//! values, parent links). Deliberate differences:
//! * Nodes receive the state as `Arc<S>` (a [`SendTo`]'s argument is a whole `S`) and return
//!   a typed partial update instead of a dict. Typed fields always have a value: a field
//!   LangGraph shows as absent (never written) is `Default::default()` here.
//! * Every checkpoint a run writes carries a `run_id` (fresh per invoke unless
//!   [`RunConfig::with_run_id`] sets one); LangGraph stores none unless the caller passes one.
//! * Task ids are UUID v5 rather than LangGraph's xxhash-based ids, so pending writes saved by
//!   one cannot be reused by the other (the state itself can).
//! * `update_state` on the thread's head does not also store the update as pending writes
//!   of a synthetic task on the previous checkpoint (LangGraph does; the resulting
//!   `update` checkpoint is the same).
//! * Storage of growing lists: a `Vec` field with `#[reducer(append)]` is stored as an
//!   *append value* per version — only the items added since the last stored version, plus
//!   the version it extends ([`cairn_checkpoint::AppendValue`]) — so a conversation of `n`
//!   messages costs O(n) bytes, not O(n²) (LangGraph stores the whole list at every version;
//!   its beta `DeltaChannel` stores a full snapshot every K versions, still quadratic). Savers
//!   hand back whole lists, so nothing else changes: history, time travel, forks,
//!   `update_state`, `copy_thread` and `prune` work as before (see
//!   `tests/append_storage.rs`). Other collections with the append reducer (`VecDeque`,
//!   sets) are stored whole.
//! * Empty bookkeeping channels are left out of `channel_values` (LangGraph keeps an empty
//!   `join:` barrier as `[]` and an empty `__pregel_tasks` as `[]`).
//! * `get_state_history` with a `checkpoint_id` in the config lists that checkpoint and the
//!   older ones (LangGraph lists only that checkpoint).
//! * A failed step's sibling tasks are not cancelled: they finish and their writes are saved.
//! * The recursion limit counts super-steps of one invocation after the input: a run may
//!   take `recursion_limit + 1` steps including the START step.
//! * Interrupt ids are 32 hex digits of a UUID v5 of the task's namespace (and the number of
//!   answers it already has), not xxh3 hashes: stable across re-runs and processes, but not
//!   equal to LangGraph's. Resume maps must use Cairn's ids.
//! * [`CompiledGraph::invoke`] returns the state also when a run stops at an interrupt (no
//!   `__interrupt__` key in a typed state); [`CompiledGraph::invoke_outcome`] /
//!   [`CompiledGraph::invoke_command`] return a [`RunOutcome`] that lists the interrupts.
//!   The caller's [`Command`] is a separate method rather than a kind of input.
//! * A node returns a [`Command`] only when added with [`StateGraph::add_node_with`] /
//!   [`StateGraph::add_sync_node_with`]; its possible targets are declared with
//!   [`NodeOptions::destinations`] (LangGraph reads them from type hints).
//! * Task errors are stored as the error's `Display` string, not a Python repr.
//! * Durability `async` batches: LangGraph chains each step's `put` after the previous one
//!   (one saver call and one commit per checkpoint); Cairn queues checkpoints while the saver
//!   is busy and hands each queue to `put_batch` at once (one transaction on SQLite and PostgreSQL), and the writes of a step's parallel
//!   tasks go with its checkpoint instead of one call per task. Both wait for every put before
//!   `invoke` returns. The queue holds at most 64 checkpoints; see [`Durability`]. Cairn
//!   also waits up to [`RunConfig::commit_delay`] (1 ms) before handing a queue over, so a
//!   run that ends within it (a chat turn whose model answered at once) stores its
//!   checkpoints with one commit instead of one per step; LangGraph has no such delay. In sync
//!   mode the input checkpoint is stored together with the START step's checkpoint (one
//!   commit instead of two): the START step runs no node, and both are durable before the
//!   first node runs.
//! * `Command::resume(value)` with several interrupts pending is refused (LangGraph raises
//!   too); a resume with nothing pending is stored and ignored.
//! * Durability: `Async` overlaps a checkpoint's `put` with the next step only when the saver
//!   does not finish immediately; all puts are complete when the call returns. `Exit` keeps
//!   task writes in memory and saves, at the end, one checkpoint (plus the interrupted or
//!   failed step's task writes against it).
//! * Per-node checkpoint policy ([`NodeOptions::checkpoint`]`(false)`): a step running only
//!   such nodes writes no checkpoint; its task writes are saved against the previous
//!   checkpoint and replayed on resume (LangGraph has no per-node policy).
//! * Supported: static breakpoints (`interrupt_before` / `interrupt_after`, compiled and
//!   per run), dynamic [`interrupt`] with resume values and resume maps, commands from
//!   nodes (update + goto) and callers (resume, update, goto), retry policies, durability
//!   modes, debug/custom streaming, replay (a `fork` checkpoint first, as LangGraph 1.2
//!   does), forks with `update_state`, subgraphs. Golden traces 1-14 match (13: the parent
//!   history and the subgraph's own history). Not yet: caching, deferred nodes.
//! * Subgraphs ([`StateGraph::add_subgraph`]): a shared-state subgraph's output is its
//!   whole final state, applied through the parent's reducers — an `append` field gets the
//!   child's full list (input included) appended again, exactly as LangGraph does
//!   (`["pre", "pre", "sub_a", "sub_ask", "post"]` in scenario 13); use
//!   [`StateGraph::add_subgraph_mapped`] to write only what you want. The child always runs
//!   with the parent's saver (a saver compiled into the child is not used; LangGraph's
//!   per-subgraph `checkpointer=` choices are not offered), with its own compiled
//!   durability and default recursion limit, and a fresh `run_id` per child run. A static
//!   breakpoint inside a subgraph fails the parent task (dynamic [`interrupt`]s work at any
//!   depth); subgraph events are not streamed; `update_state` cannot target a subgraph's
//!   namespace. [`CompiledGraph::get_state_with_subgraphs`] returns the subgraph states
//!   (values as JSON) in a map keyed by namespace instead of nesting them in
//!   `tasks[].state`; [`SnapshotTask::checkpoint_ns`] names a subgraph task's namespace.
//!
//! ## Human in the loop
//!
//! A node calls [`interrupt`]`(payload)?`: the run stops, the interrupt is saved as an
//! `__interrupt__` pending write of the checkpoint the step ran from (no new checkpoint),
//! and [`CompiledGraph::invoke_outcome`] returns [`RunOutcome::Interrupted`]. Answer with
//! [`CompiledGraph::invoke_command`]`(`[`Command::resume`]`(value), ..)` — from the same
//! process or another one, the state is in the saver: the value is saved as a
//! `__resume__` write of no task ([`NULL_TASK_ID`]), the node runs again from its start, and
//! its `interrupt` call returns the value (several calls are matched in order; the values a
//! task consumed are saved as its own `__resume__` write). Sibling tasks of the interrupted
//! step that finished are not run again. `get_state` shows the waiting tasks in `next` and
//! their interrupts in `tasks[].interrupts` and `interrupts`. See
//! `examples/human_approval.rs` for a command-line approval flow on SQLite.
//!
//! ## Subgraphs
//!
//! [`StateGraph::add_subgraph`] adds a compiled graph of the same state type as a node;
//! [`StateGraph::add_subgraph_mapped`] one of another type, with input/output mappings.
//! The child runs on the parent's thread with the parent's saver, in its own checkpoint
//! namespace `node:task_id` (nested: `outer:<id>|inner:<id>`), and its checkpoints carry
//! `parents` metadata mapping each ancestor's namespace to the checkpoint it ran from
//! (`""` -> the root's). An [`interrupt`] inside the child stops the parent run with the
//! child's interrupts (same ids); [`Command::resume`] on the parent re-runs the subgraph
//! task — its id is deterministic, so the same namespace — which continues the child from
//! its latest checkpoint: finished child tasks (saved writes) do not run again, also after
//! a failure or a crash. [`CompiledGraph::get_state_with_subgraphs`] shows the states of
//! the subgraphs a run waits in.

#![warn(missing_docs)]

extern crate self as cairn_graph;

mod channels;
mod command;
mod config;
mod error;
mod graph;
mod options;
mod persist;
mod runtime;
mod snapshot;
mod state;
mod subgraph;

pub use cairn_macros::State;
pub use channels::task_id;
pub use command::{
    interrupt, interrupt_as, Command, Interrupt, IntoNodeOutput, NodeInterrupted, Resume,
    RunOutcome,
};
pub use config::{RunConfig, DEFAULT_COMMIT_DELAY, DEFAULT_RECURSION_LIMIT};
pub use error::{GraphError, NodeError, Result};
pub use graph::{EdgeSources, Goto, NodeResult, Route, SendTo, StateGraph, END, START};
pub use options::{Durability, NodeOptions, RetryPolicy, RetryPredicate};
pub use runtime::{
    current_task, emit, CompiledGraph, DebugEvent, StreamEvent, StreamMode, TaskInfo, NULL_TASK_ID,
};
pub use snapshot::{HistoryQuery, SnapshotTask, SnapshotWithSubgraphs, StateSnapshot};
pub use state::{reducers, FieldInfo, ReducerKind, State};

#[doc(hidden)]
pub use state::__private;

#[cfg(doc)]
use cairn_checkpoint::CheckpointSaver;

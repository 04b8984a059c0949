//! The graph runtime's error type.

/// What a node returns when it fails: any error type converts into it with `?`.
pub type NodeError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias of the graph runtime.
pub type Result<T, E = GraphError> = std::result::Result<T, E>;

/// Everything that can go wrong while building or running a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// The graph definition is inconsistent (found by `compile`).
    #[error("invalid graph: {0}")]
    InvalidGraph(String),

    /// An edge, path map or router names a node that does not exist.
    #[error("unknown node {node:?} ({context}); known nodes: {known}")]
    UnknownNode {
        /// The name that was not found.
        node: String,
        /// Where it was used.
        context: String,
        /// The graph's nodes, comma separated.
        known: String,
    },

    /// No edge leaves START.
    #[error("the graph has no entry point: add an edge from START, e.g. add_edge(START, \"first_node\")")]
    NoEntryPoint,

    /// A node has no path to END.
    #[error("node {node:?} can never reach END: add an edge from it (e.g. add_edge({node:?}, END)) or a conditional edge; a node that moves on only by returning a Command with goto declares where it may go with NodeOptions::destinations")]
    CannotReachEnd {
        /// The dead-end node.
        node: String,
    },

    /// A node returned an error. Writes of the step's other tasks are saved; invoking the
    /// thread again with no input retries the failed task.
    #[error("node {node:?} failed at step {step}: {source}")]
    Node {
        /// The node that failed.
        node: String,
        /// The super-step.
        step: i64,
        /// The node's error.
        #[source]
        source: NodeError,
    },

    /// A node panicked.
    #[error("node {node:?} panicked at step {step}: {message}")]
    NodePanicked {
        /// The node that panicked.
        node: String,
        /// The super-step.
        step: i64,
        /// The panic message.
        message: String,
    },

    /// A field's reducer panicked while applying node `node`'s update (a custom `with =`
    /// reducer, or `add` overflowing in a debug build). The run stops; what the step's tasks
    /// wrote stays stored as pending writes, so fix the reducer (or the value) and resume.
    #[error(
        "a reducer panicked applying the update of node {node:?}: {message}; fix the reducer \
         or the value, then resume the thread"
    )]
    ReducerPanicked {
        /// The node whose update was being applied.
        node: String,
        /// The panic message.
        message: String,
    },

    /// Several tasks of one super-step wrote a field whose reducer is `replace`.
    #[error("field {field:?} received {count} values in one step (from {nodes}); a replace field takes one value per step: give it a reducer such as #[reducer(append)] or make only one branch write it")]
    ConflictingWrites {
        /// The field.
        field: String,
        /// How many values it received.
        count: usize,
        /// The writing nodes.
        nodes: String,
    },

    /// The run did not finish within the recursion limit.
    #[error("recursion limit of {limit} super-steps reached without finishing; raise it with RunConfig::with_recursion_limit if the graph really needs more steps")]
    RecursionLimit {
        /// The limit.
        limit: usize,
    },

    /// Another run of the same thread is in progress in this process.
    #[error("thread {thread_id:?} already has a run in progress; wait for it to finish or use another thread")]
    ThreadBusy {
        /// The busy thread.
        thread_id: String,
    },

    /// The operation needs a checkpoint saver and the graph was compiled without one.
    #[error("{operation} needs a checkpoint saver: compile the graph with compile_with(saver)")]
    NoCheckpointer {
        /// What was attempted.
        operation: &'static str,
    },

    /// The named checkpoint does not exist.
    #[error("no checkpoint {checkpoint_id:?} in thread {thread_id:?}")]
    CheckpointNotFound {
        /// The thread.
        thread_id: String,
        /// The checkpoint id asked for (`None`: the thread has no checkpoint).
        checkpoint_id: Option<String>,
    },

    /// The call's arguments cannot be used.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// Storing or loading a checkpoint failed.
    #[error(transparent)]
    Checkpoint(#[from] cairn_checkpoint::Error),
}

/// The message of a caught panic (`panic!("...")` and `assert!` give a `&str` or a `String`).
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".to_owned())
}

/// Runs `f`, a reducer or router of node `node` (user code), turning a panic into
/// [`GraphError::ReducerPanicked`] instead of an unwind through the caller.
pub(crate) fn catch_reducer<T>(node: &str, f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|panic| {
        GraphError::ReducerPanicked {
            node: node.to_owned(),
            message: panic_message(&*panic),
        }
    })
}

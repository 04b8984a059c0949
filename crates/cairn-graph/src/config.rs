//! Per-invocation settings.

use cairn_checkpoint::CheckpointConfig;

use crate::options::Durability;

/// The default recursion limit (LangGraph's): at most this many super-steps per invocation,
/// not counting the step that applies the input.
pub const DEFAULT_RECURSION_LIMIT: usize = 25;

/// How long, in durability [`Async`](crate::Durability::Async), a run's first queued
/// checkpoint may wait before it is handed to the saver, so that the checkpoints of the steps
/// that follow at once go in the same batch (see [`RunConfig::commit_delay`]).
pub const DEFAULT_COMMIT_DELAY: std::time::Duration = std::time::Duration::from_millis(1);

/// Which thread (and optionally which checkpoint) a call is about, plus run settings.
///
/// ```
/// use cairn_graph::RunConfig;
/// let config = RunConfig::thread("chat-1")
///     .with_recursion_limit(100)
///     .with_metadata("user", "ada");
/// assert_eq!(config.thread_id.as_deref(), Some("chat-1"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// The thread; required when the graph has a checkpoint saver.
    pub thread_id: Option<String>,
    /// Checkpoint namespace (`""` for a root graph).
    pub checkpoint_ns: String,
    /// Start from this checkpoint instead of the thread's latest (replay / fork).
    pub checkpoint_id: Option<String>,
    /// Maximum number of super-steps in this invocation.
    pub recursion_limit: usize,
    /// Keys copied into the metadata of every checkpoint this run writes.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The run id written into checkpoint metadata; a fresh UUID when `None`.
    pub run_id: Option<String>,
    /// When this run's checkpoints are written (`None`: the graph's default).
    pub durability: Option<Durability>,
    /// Breakpoints before these nodes for this run, replacing the compiled ones.
    pub interrupt_before: Option<Vec<String>>,
    /// Breakpoints after these nodes for this run, replacing the compiled ones.
    pub interrupt_after: Option<Vec<String>>,
    /// Durability [`Async`](crate::Durability::Async) only: how long the first checkpoint
    /// queued while no batch is being stored waits before the queue goes to the saver, unless
    /// the run ends (or fills the queue) first. A run that ends within it stores all its
    /// checkpoints in one batch, one commit; a longer run hands its queue over once this long
    /// has passed, at its next step or while it waits (in a node that awaits a model, a tool
    /// or I/O, or on a stream consumer reading slowly), as with a commit delay in a database.
    /// A node that blocks its thread instead of awaiting (a long [`add_sync_node`] body)
    /// holds the queue back until it returns, as it holds back everything else on that Tokio
    /// worker: run long work in async nodes. Zero hands each queue over at once. Default
    /// [`DEFAULT_COMMIT_DELAY`] (1 ms).
    ///
    /// [`add_sync_node`]: crate::StateGraph::add_sync_node
    pub commit_delay: std::time::Duration,
}

impl RunConfig {
    /// Refuses caller metadata keys named like the metadata's own fields (see
    /// [`with_metadata`](Self::with_metadata)).
    pub(crate) fn check_metadata(&self) -> Result<(), crate::GraphError> {
        match self
            .metadata
            .keys()
            .find(|key| cairn_checkpoint::RESERVED_METADATA_KEYS.contains(&key.as_str()))
        {
            None => Ok(()),
            Some(key) => Err(crate::GraphError::InvalidArgument(format!(
                "RunConfig metadata key {key:?} is reserved: the run sets the checkpoint \
                 metadata's {} itself; rename the key{}",
                cairn_checkpoint::RESERVED_METADATA_KEYS.join(", "),
                if key == "run_id" {
                    " (set the run id with RunConfig::with_run_id)"
                } else {
                    ""
                }
            ))),
        }
    }
}

impl Default for RunConfig {
    fn default() -> Self {
        RunConfig {
            thread_id: None,
            checkpoint_ns: String::new(),
            checkpoint_id: None,
            recursion_limit: DEFAULT_RECURSION_LIMIT,
            metadata: serde_json::Map::new(),
            run_id: None,
            durability: None,
            interrupt_before: None,
            interrupt_after: None,
            commit_delay: DEFAULT_COMMIT_DELAY,
        }
    }
}

impl RunConfig {
    /// A run on thread `thread_id`, from its latest checkpoint.
    pub fn thread(thread_id: impl Into<String>) -> Self {
        RunConfig {
            thread_id: Some(thread_id.into()),
            ..RunConfig::default()
        }
    }

    /// Starts from checkpoint `id` instead of the latest.
    pub fn with_checkpoint_id(mut self, id: impl Into<String>) -> Self {
        self.checkpoint_id = Some(id.into());
        self
    }

    /// Sets the recursion limit.
    pub fn with_recursion_limit(mut self, limit: usize) -> Self {
        self.recursion_limit = limit;
        self
    }

    /// Adds a metadata key written into every checkpoint of the run. The names of the
    /// metadata's own fields (`source`, `step`, `parents`, `run_id`:
    /// [`RESERVED_METADATA_KEYS`](cairn_checkpoint::RESERVED_METADATA_KEYS)) are refused when
    /// the run starts, with [`GraphError::InvalidArgument`](crate::GraphError): the run sets
    /// those itself (the run id with [`with_run_id`](Self::with_run_id)). LangGraph lets its
    /// own values win over such keys without a word; Cairn says so instead of dropping them.
    pub fn with_metadata(
        mut self,
        key: impl Into<String>,
        value: impl Into<serde_json::Value>,
    ) -> Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// Sets the run id.
    pub fn with_run_id(mut self, run_id: impl Into<String>) -> Self {
        self.run_id = Some(run_id.into());
        self
    }

    /// Sets this run's durability.
    pub fn with_durability(mut self, durability: Durability) -> Self {
        self.durability = Some(durability);
        self
    }

    /// Sets how long a queued checkpoint may wait for the next ones in durability `Async`
    /// (see [`commit_delay`](Self::commit_delay)).
    ///
    /// ```
    /// use std::time::Duration;
    /// use cairn_graph::RunConfig;
    /// // Hand every checkpoint to the saver as soon as the previous batch is stored.
    /// let config = RunConfig::thread("chat").with_commit_delay(Duration::ZERO);
    /// assert_eq!(config.commit_delay, Duration::ZERO);
    /// ```
    pub fn with_commit_delay(mut self, delay: std::time::Duration) -> Self {
        self.commit_delay = delay;
        self
    }

    /// Stops this run before any of `nodes` (replacing the compiled `interrupt_before`).
    pub fn with_interrupt_before<I, N>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.interrupt_before = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// Stops this run after any of `nodes` ran (replacing the compiled `interrupt_after`).
    pub fn with_interrupt_after<I, N>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.interrupt_after = Some(nodes.into_iter().map(Into::into).collect());
        self
    }

    /// The checkpoint config this run addresses (thread `""` when there is none).
    pub fn checkpoint_config(&self) -> CheckpointConfig {
        CheckpointConfig {
            thread_id: self.thread_id.clone().unwrap_or_default(),
            checkpoint_ns: self.checkpoint_ns.clone(),
            checkpoint_id: self.checkpoint_id.clone(),
        }
    }
}

impl From<CheckpointConfig> for RunConfig {
    fn from(config: CheckpointConfig) -> Self {
        RunConfig {
            thread_id: Some(config.thread_id),
            checkpoint_ns: config.checkpoint_ns,
            checkpoint_id: config.checkpoint_id,
            ..RunConfig::default()
        }
    }
}

impl From<&CheckpointConfig> for RunConfig {
    fn from(config: &CheckpointConfig) -> Self {
        RunConfig::from(config.clone())
    }
}

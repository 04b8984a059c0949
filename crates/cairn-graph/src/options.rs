//! Per-node options (retries, declared destinations, checkpointing) and durability modes.

use std::sync::Arc;
use std::time::Duration;

use crate::error::NodeError;

/// When a run's checkpoints are written.
///
/// | mode | checkpoints written | what a SIGKILL loses |
/// |---|---|---|
/// | `Sync` | every step, each `put` awaited before the next step starts; the input checkpoint is stored in one call with the START step's, before any node runs | nothing saved: at most the running step's unsaved task writes (finished tasks' writes are saved as they finish) |
/// | `Async` (default) | every step, in the background: each step's checkpoint (with its tasks' writes) joins a queue that one writer per run hands to the saver in order, everything queued while the previous batch was being stored in one [`put_batch`](cairn_checkpoint::CheckpointSaver::put_batch) call (one commit on SQLite and PostgreSQL); the first checkpoint of a queue waits for the steps that follow until the run's [`commit_delay`](crate::RunConfig::commit_delay) (1 ms) has passed at a step or while the run waits (a node that blocks its thread instead of awaiting holds it back), and a run that ends first stores its queue itself, so a short run is one commit; the run waits only when 64 checkpoints are queued besides the batch being stored, and only until that batch is stored and the queue taken; the call returns once all are stored | the checkpoints still queued or in flight (at most 128 steps, or what was queued before a blocking node, usually the last one or two; the run then resumes from the last stored one and the lost steps' tasks run again); a batch that fails fails the run, and nothing after it is stored; a run whose `invoke` is dropped keeps its thread busy until what it queued is stored |
/// | `Exit` | once, when the run finishes, stops at an interrupt or fails (plus that step's task writes) | everything since the run started (the thread stays at its previous checkpoint) |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// Save only when the run ends (finished, interrupted or failed). Fastest; a crash loses
    /// the whole run.
    Exit,
    /// Save every step in the background, overlapping the next steps; checkpoints that queue
    /// up while the saver is busy are stored together.
    #[default]
    Async,
    /// Save every step before starting the next one.
    Sync,
}

/// Which node errors a [`RetryPolicy`] retries.
pub type RetryPredicate = Arc<dyn Fn(&NodeError) -> bool + Send + Sync>;

/// Retries of a failing node: up to `max_attempts` runs in total, waiting
/// `initial_interval * backoff_factor^(n-1)` (capped at `max_interval`) before retry `n`.
/// Interrupts are never retried.
///
/// ```
/// use std::time::Duration;
/// use cairn_graph::RetryPolicy;
/// let policy = RetryPolicy::new(5)
///     .backoff(Duration::from_millis(100), 2.0, Duration::from_secs(5))
///     .retry_if(|e| e.to_string().contains("timeout"));
/// assert_eq!(policy.delay(1), Duration::from_millis(100));
/// assert_eq!(policy.delay(3), Duration::from_millis(400));
/// ```
#[derive(Clone)]
pub struct RetryPolicy {
    /// Total attempts, the first included (1 = no retry).
    pub max_attempts: u32,
    /// Wait before the first retry.
    pub initial_interval: Duration,
    /// Multiplier of the wait after each retry.
    pub backoff_factor: f64,
    /// Longest wait.
    pub max_interval: Duration,
    /// Randomise each wait by up to ±50% (off by default).
    pub jitter: bool,
    /// Which errors are retried (`None`: all).
    pub retry_on: Option<RetryPredicate>,
}

impl std::fmt::Debug for RetryPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetryPolicy")
            .field("max_attempts", &self.max_attempts)
            .field("initial_interval", &self.initial_interval)
            .field("backoff_factor", &self.backoff_factor)
            .field("max_interval", &self.max_interval)
            .field("jitter", &self.jitter)
            .field("retry_on", &self.retry_on.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval: Duration::from_millis(500),
            backoff_factor: 2.0,
            max_interval: Duration::from_secs(128),
            jitter: false,
            retry_on: None,
        }
    }
}

impl RetryPolicy {
    /// `max_attempts` attempts in total, default backoff (0.5 s, ×2, at most 128 s).
    pub fn new(max_attempts: u32) -> Self {
        RetryPolicy {
            max_attempts,
            ..RetryPolicy::default()
        }
    }

    /// Sets the backoff.
    pub fn backoff(mut self, initial: Duration, factor: f64, max: Duration) -> Self {
        self.initial_interval = initial;
        self.backoff_factor = factor;
        self.max_interval = max;
        self
    }

    /// Turns jitter on or off.
    pub fn jitter(mut self, on: bool) -> Self {
        self.jitter = on;
        self
    }

    /// Retries only errors for which `predicate` is true.
    pub fn retry_if(
        mut self,
        predicate: impl Fn(&NodeError) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.retry_on = Some(Arc::new(predicate));
        self
    }

    /// Whether `error` may be retried.
    pub fn should_retry(&self, error: &NodeError) -> bool {
        self.retry_on.as_ref().is_none_or(|p| p(error))
    }

    /// The wait before retry number `retry` (1-based), without jitter.
    pub fn delay(&self, retry: u32) -> Duration {
        let factor = self
            .backoff_factor
            .max(0.0)
            .powi(retry.saturating_sub(1) as i32);
        let secs =
            (self.initial_interval.as_secs_f64() * factor).min(self.max_interval.as_secs_f64());
        Duration::try_from_secs_f64(secs).unwrap_or(self.max_interval)
    }

    pub(crate) fn jittered_delay(&self, retry: u32) -> Duration {
        let base = self.delay(retry);
        if !self.jitter {
            return base;
        }
        let r = (uuid::Uuid::new_v4().as_u128() % 1_000_000) as f64 / 1_000_000.0;
        base.mul_f64(0.5 + r)
    }
}

/// Options of one node, given with [`crate::StateGraph::add_node_with`] or
/// [`crate::StateGraph::set_node_options`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// Retries when the node fails.
    pub retry: Option<RetryPolicy>,
    /// Where the node's [`crate::Command`]s may go (node names or END), for validation and
    /// documentation; a node going only through commands needs this to pass `compile`.
    pub destinations: Vec<String>,
    /// Whether a step that runs only nodes with `checkpoint == false` writes its own
    /// checkpoint (default `true`). See [`NodeOptions::checkpoint`].
    pub checkpoint: bool,
}

impl Default for NodeOptions {
    fn default() -> Self {
        NodeOptions {
            retry: None,
            destinations: Vec::new(),
            checkpoint: true,
        }
    }
}

impl NodeOptions {
    /// Sets the retry policy.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = Some(policy);
        self
    }

    /// Declares where the node's commands may go.
    pub fn destinations<I, N>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.destinations.extend(nodes.into_iter().map(Into::into));
        self
    }

    /// `false`: a step running only such nodes does not write its own checkpoint; its
    /// changes are saved with the next step's checkpoint. The step's task writes are still
    /// saved (against the previous checkpoint), so a crash before the next checkpoint does
    /// not re-run the finished tasks, but `get_state_history` has no entry for that step and
    /// it cannot be replayed or forked from. Useful for cheap, frequent steps.
    pub fn checkpoint(mut self, on: bool) -> Self {
        self.checkpoint = on;
        self
    }
}

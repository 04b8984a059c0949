//! Shared by the runtime's test files: a saver wrapper for tests that watch what the runtime
//! asks of its saver, a whole-history helper and a macro running a test on both embedded
//! savers.

use std::sync::Arc;

use async_trait::async_trait;
use cairn_graph::{CompiledGraph, HistoryQuery, RunConfig, State, StateSnapshot};
use futures::TryStreamExt;

use cairn_checkpoint::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointTuple, KnownValues, ListQuery, PruneStrategy, Result, TypedValue,
};

/// What a test notes about the calls an [`Observed`] saver passes on; every method does
/// nothing unless the test says otherwise.
pub trait Observer: Send + Sync + 'static {
    /// A checkpoint about to be put.
    fn putting(&self, _checkpoint: &Checkpoint) {}
    /// A checkpoint put (the inner saver returned), with its step.
    fn put_done(&self, _step: Option<i64>) {}
    /// Pending writes of `task_id` about to be put.
    fn putting_writes(&self, _task_id: &str) {}
    /// Pending writes of `task_id` put.
    fn writes_done(&self, _task_id: &str) {}
    /// A `get_tuple_known` call and the values the caller holds.
    fn reading_known(&self, _known: &KnownValues<'_>) {}
    /// A `list` call.
    fn listing(&self, _query: &ListQuery) {}
}

/// Passes every call on to `inner`, telling `observer` about it. Batched puts go through the
/// trait's default methods, so the observer sees each checkpoint and each task's writes.
pub struct Observed<O> {
    pub inner: Arc<dyn CheckpointSaver>,
    pub observer: O,
}

impl<O> Observed<O> {
    pub fn new(inner: Arc<dyn CheckpointSaver>, observer: O) -> Self {
        Observed { inner, observer }
    }
}

#[async_trait]
impl<O: Observer> CheckpointSaver for Observed<O> {
    async fn get_tuple(&self, config: &CheckpointConfig) -> Result<Option<CheckpointTuple>> {
        self.inner.get_tuple(config).await
    }
    async fn get_tuple_known(
        &self,
        config: &CheckpointConfig,
        known: KnownValues<'_>,
    ) -> Result<Option<CheckpointTuple>> {
        self.observer.reading_known(&known);
        self.inner.get_tuple_known(config, known).await
    }
    async fn list(&self, query: &ListQuery) -> Result<Vec<CheckpointTuple>> {
        self.observer.listing(query);
        self.inner.list(query).await
    }
    async fn put(
        &self,
        config: &CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        self.observer.putting(&checkpoint);
        let step = metadata.step;
        let saved = self
            .inner
            .put(config, checkpoint, metadata, new_versions)
            .await?;
        self.observer.put_done(step);
        Ok(saved)
    }
    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> Result<()> {
        self.observer.putting_writes(task_id);
        self.inner
            .put_writes(config, writes, task_id, task_path)
            .await?;
        self.observer.writes_done(task_id);
        Ok(())
    }
    async fn delete_thread(&self, thread_id: &str) -> Result<()> {
        self.inner.delete_thread(thread_id).await
    }
    async fn copy_thread(&self, source: &str, target: &str) -> Result<()> {
        self.inner.copy_thread(source, target).await
    }
    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()> {
        self.inner.prune(thread_ids, strategy).await
    }
    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()> {
        self.inner.delete_for_runs(run_ids).await
    }
    fn get_next_version(&self, current: Option<&ChannelVersion>) -> ChannelVersion {
        self.inner.get_next_version(current)
    }

    fn get_next_version_in_run(
        &self,
        current: Option<&ChannelVersion>,
        run_suffix: u64,
    ) -> ChannelVersion {
        self.inner.get_next_version_in_run(current, run_suffix)
    }
}

/// The whole history of `thread`, newest first.
#[allow(dead_code)]
pub async fn history<S: State>(app: &CompiledGraph<S>, thread: &str) -> Vec<StateSnapshot<S>> {
    app.get_state_history(RunConfig::thread(thread), HistoryQuery::default())
        .try_collect()
        .await
        .expect("history")
}

/// Runs each named `async fn(sqlite: bool)` as two tests: on the in-memory saver
/// (`memory::name`) and on SQLite (`sqlite::name`).
#[allow(unused_macros)]
macro_rules! on_both_savers {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test] async fn $name() { super::$name(false).await } )*
        }
        mod sqlite {
            $( #[tokio::test] async fn $name() { super::$name(true).await } )*
        }
    };
}

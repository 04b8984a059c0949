//! The saver contract: one trait every storage backend implements.

use async_trait::async_trait;

use crate::checkpoint::{
    Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointTuple, ListQuery,
};
use crate::error::Result;
use crate::value::TypedValue;
use crate::version::{ChannelVersion, ChannelVersions};

/// What [`CheckpointSaver::prune`] does with each thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PruneStrategy {
    /// Keep only the latest checkpoint of each namespace of the thread (with its pending
    /// writes and the channel values it references); delete everything older.
    KeepLatest,
    /// Delete the whole thread, as [`CheckpointSaver::delete_thread`] does.
    Delete,
}

/// Durable storage for checkpoints, their pending writes and their channel values.
///
/// # The contract
/// Every backend behaves the same; the conformance kit (`cairn_checkpoint::conformance`,
/// feature `testkit`) checks each rule below against every backend.
///
/// * **Identity.** A checkpoint is identified by `(thread_id, checkpoint_ns, checkpoint_id)`.
///   Checkpoint ids are time-ordered ([`crate::new_checkpoint_id`]): within a thread and
///   namespace, a larger id is a newer checkpoint. "Latest" means the largest id.
/// * **Ordering.** [`list`](Self::list) returns newest first: descending checkpoint id (ties
///   across threads or namespaces are broken by thread id then namespace, descending).
/// * **Channel values are stored per version.** [`put`](Self::put) stores the value of each
///   channel named in `new_versions` under `(thread, ns, channel, version)`; channels not in
///   `new_versions` are not written again. On read, a checkpoint's `channel_values` holds, for
///   every channel in its `channel_versions`, the value stored for that version; a channel
///   whose stored value is the empty marker ([`TypedValue::empty`]) or that has no stored value
///   is absent. A channel named in `new_versions` but missing from `channel_values` is stored
///   as the empty marker.
/// * **Atomicity.** A `put` is all or nothing: after a crash either the whole checkpoint (row,
///   metadata and new channel values) is readable or none of it is. Each `put_writes` call is
///   likewise atomic.
/// * **Parents.** The checkpoint named by `put`'s `config.checkpoint_id` (if any) becomes the
///   new checkpoint's `parent_config`.
/// * **Pending writes.** [`put_writes`](Self::put_writes) attaches writes to the checkpoint
///   named by `config` (which must carry a `checkpoint_id`). Each write gets an index: its
///   position in the call for a regular channel, the fixed negative index of
///   [`crate::special_write_index`] for a special one. A regular write whose
///   `(task_id, index)` is already stored is ignored (so a retried task cannot duplicate its
///   writes); a special-channel write replaces the stored one. Writes are returned with the
///   checkpoint, ordered by task path, task id, then index.
/// * **Isolation.** Threads and namespaces never see each other's data.
/// * **Deletion.** `delete_thread`, `prune` and `delete_for_runs` remove checkpoints together
///   with their pending writes; values no kept checkpoint refers to may be reclaimed.
///
/// Implementations are `Send + Sync` and safe to share between tasks (`Arc<dyn
/// CheckpointSaver>`).
#[async_trait]
pub trait CheckpointSaver: Send + Sync {
    /// The checkpoint named by `config`, or the latest of its thread and namespace when
    /// `config.checkpoint_id` is `None`. `Ok(None)` when there is no such checkpoint.
    async fn get_tuple(&self, config: &CheckpointConfig) -> Result<Option<CheckpointTuple>>;

    /// Checkpoints matching `query`, newest first, with their values and pending writes.
    async fn list(&self, query: &ListQuery) -> Result<Vec<CheckpointTuple>>;

    /// Stores `checkpoint` with `metadata` in `config`'s thread and namespace, as a child of
    /// `config.checkpoint_id`. Returns the config naming the stored checkpoint.
    async fn put(
        &self,
        config: &CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig>;

    /// Stores writes made by task `task_id` against the checkpoint named by `config`.
    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> Result<()>;

    /// Deletes every checkpoint, value and write of `thread_id`, in every namespace.
    async fn delete_thread(&self, thread_id: &str) -> Result<()>;

    /// Copies every checkpoint, value and write of `source_thread_id` into
    /// `target_thread_id`, keeping checkpoint ids, namespaces, metadata and parents.
    async fn copy_thread(&self, source_thread_id: &str, target_thread_id: &str) -> Result<()>;

    /// Applies `strategy` to each of `thread_ids`.
    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()>;

    /// Deletes every checkpoint whose metadata `run_id` is one of `run_ids`, with its writes.
    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()>;

    /// The version a channel gets when it is next written.
    fn get_next_version(&self, current: Option<&ChannelVersion>) -> ChannelVersion {
        ChannelVersion::first_after(current)
    }
}

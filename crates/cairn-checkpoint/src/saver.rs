//! The saver contract: one trait every storage backend implements.

use std::collections::{BTreeMap, BTreeSet};

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

/// Channel values a caller already holds, so that [`CheckpointSaver::get_tuple_known`] need
/// not read them again: a runtime that kept a thread's state in memory after a run only needs
/// the checkpoint's bookkeeping when the next run starts.
#[derive(Debug, Clone, Copy)]
pub struct KnownValues<'a> {
    /// The checkpoint whose values the caller holds.
    pub checkpoint_id: &'a str,
    /// The channels whose values it holds.
    pub channels: &'a [&'a str],
}

/// The latest checkpoint of a thread, as [`CheckpointSaver::list_threads`] reports it: its
/// identity, metadata and creation time, without channel values or pending writes.
#[derive(Debug, Clone, PartialEq)]
pub struct LatestCheckpoint {
    /// Config naming exactly this checkpoint (thread, namespace and id).
    pub config: CheckpointConfig,
    /// Its metadata.
    pub metadata: CheckpointMetadata,
    /// Its creation time ([`Checkpoint::ts`]).
    pub ts: String,
}

/// One thread, as [`CheckpointSaver::list_threads`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadSummary {
    /// The thread.
    pub thread_id: String,
    /// How many checkpoints it holds, all namespaces together.
    pub checkpoints: u64,
    /// Its namespaces (`""`: root graph), sorted.
    pub namespaces: Vec<String>,
    /// Its latest checkpoint in the root namespace or, when it has none there, its latest
    /// checkpoint in any namespace (largest id; ties go to the larger namespace).
    pub latest: LatestCheckpoint,
}

impl ThreadSummary {
    /// A summary of one checkpoint, the start of a thread's summary.
    fn first(t: &CheckpointTuple) -> Self {
        ThreadSummary {
            thread_id: t.config.thread_id.clone(),
            checkpoints: 0,
            namespaces: Vec::new(),
            latest: LatestCheckpoint {
                config: t.config.clone(),
                metadata: t.metadata.clone(),
                ts: t.checkpoint.ts.clone(),
            },
        }
    }
}

/// Whether `candidate` (namespace, id) should replace `current` as a thread's latest
/// checkpoint: the root namespace wins, then the larger id, then the larger namespace.
pub(crate) fn is_later(current: (&str, &str), candidate: (&str, &str)) -> bool {
    let rank = |(ns, id): (&str, &str)| (ns.is_empty(), id.to_owned(), ns.to_owned());
    rank(candidate) > rank(current)
}

/// The writes one task made in a step, stored as pending writes of the checkpoint the step
/// ran from (see [`CheckpointSaver::put_writes`]).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskWrites {
    /// The task's id.
    pub task_id: String,
    /// The task's path (orders writes of different tasks).
    pub task_path: String,
    /// `(channel, value)` pairs, in the order the task made them.
    pub writes: Vec<(String, TypedValue)>,
}

/// One checkpoint for [`CheckpointSaver::put_batch`]: the pending writes of the step's tasks,
/// stored against `config`'s checkpoint, then `checkpoint` as that checkpoint's child.
#[derive(Debug, Clone, PartialEq)]
pub struct PutRequest {
    /// The parent checkpoint (thread, namespace and id), as for [`CheckpointSaver::put`].
    pub config: CheckpointConfig,
    /// Writes of the tasks that produced `checkpoint`, stored against `config` first.
    pub writes: Vec<TaskWrites>,
    /// The checkpoint to store.
    pub checkpoint: Checkpoint,
    /// Its metadata.
    pub metadata: CheckpointMetadata,
    /// The channels whose values it stores, as for [`CheckpointSaver::put`].
    pub new_versions: ChannelVersions,
}

impl PutRequest {
    /// The config naming the checkpoint this request stores.
    pub fn stored_config(&self) -> CheckpointConfig {
        CheckpointConfig {
            thread_id: self.config.thread_id.clone(),
            checkpoint_ns: self.config.checkpoint_ns.clone(),
            checkpoint_id: Some(self.checkpoint.id.clone()),
        }
    }

    /// Stores this request on its own through the narrowest calls that do it:
    /// [`put`](CheckpointSaver::put) without writes,
    /// [`put_writes_and_put`](CheckpointSaver::put_writes_and_put) with one task's writes,
    /// else [`put_writes`](CheckpointSaver::put_writes) per task then `put`.
    pub async fn store<S: CheckpointSaver + ?Sized>(self, saver: &S) -> Result<CheckpointConfig> {
        let PutRequest {
            config,
            mut writes,
            checkpoint,
            metadata,
            new_versions,
        } = self;
        if writes.len() == 1 {
            let TaskWrites {
                task_id,
                task_path,
                writes,
            } = writes.remove(0);
            return saver
                .put_writes_and_put(
                    &config,
                    writes,
                    &task_id,
                    &task_path,
                    checkpoint,
                    metadata,
                    new_versions,
                )
                .await;
        }
        for w in writes {
            saver
                .put_writes(&config, w.writes, &w.task_id, &w.task_path)
                .await?;
        }
        saver.put(&config, checkpoint, metadata, new_versions).await
    }
}

/// Checkpoints per page when the default [`CheckpointSaver::list_threads`] walks `list`.
const LIST_THREADS_PAGE: usize = 256;

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
/// * **Append values.** A value tagged [`crate::TAG_APPEND`] ([`crate::AppendValue`]) holds
///   only the items added to the list stored for the same channel, thread and namespace at its
///   base version. It is stored as given, and every read (`get_tuple`, `list`) returns the
///   whole list instead: the chain of bases followed down to a whole value, items joined in
///   order ([`crate::AppendChains`] does the joining). A chain whose base is missing reads as
///   [`crate::Error::Corrupt`] naming the channel. Deletions keep every stored value a kept
///   checkpoint's chains pass through; `prune` with [`PruneStrategy::KeepLatest`] rewrites
///   the kept checkpoint's append values as whole values, so nothing older is kept for them.
///   `copy_thread` copies values as stored, so copied chains stay intact.
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

    /// Like [`get_tuple`](Self::get_tuple), except that when the checkpoint found is
    /// `known.checkpoint_id`, the values of `known.channels` may be left out of its
    /// `channel_values` (their versions stay in `channel_versions`): the caller holds them.
    ///
    /// The default implementation calls `get_tuple` and reads everything; backends override
    /// it to skip reading and resolving those values.
    async fn get_tuple_known(
        &self,
        config: &CheckpointConfig,
        known: KnownValues<'_>,
    ) -> Result<Option<CheckpointTuple>> {
        let _ = known;
        self.get_tuple(config).await
    }

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

    /// Stores `writes` of task `task_id` against the checkpoint named by `config`, then
    /// `checkpoint` as a child of that checkpoint: the same effect as
    /// [`put_writes`](Self::put_writes) followed by [`put`](Self::put) (with the same errors),
    /// and the config naming the stored checkpoint is returned. A runtime calls it when a step
    /// with one task finishes, so one commit holds the task's writes and the step's checkpoint.
    ///
    /// The default implementation makes the two calls in turn. Backends that can override it
    /// to store both atomically (one transaction): after an error, either both are stored or
    /// neither is. Like its parts it is idempotent, so it can be retried.
    #[allow(clippy::too_many_arguments)]
    async fn put_writes_and_put(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        self.put_writes(config, writes, task_id, task_path).await?;
        self.put(config, checkpoint, metadata, new_versions).await
    }

    /// Stores `requests` in order, each as [`put_writes`](Self::put_writes) for every entry
    /// of its `writes` followed by [`put`](Self::put) would (with the same errors), and
    /// returns the configs naming the stored checkpoints, in order. A request may name a
    /// checkpoint stored by an earlier request of the same batch as its parent.
    ///
    /// Cairn's runtime calls it from the background in its asynchronous durability mode, with
    /// every checkpoint that queued up while the previous batch was being stored, so that one
    /// commit serves many checkpoints; the run does not wait for it before its next step.
    ///
    /// The default implementation stores the requests one by one (a request with exactly one
    /// task's writes through [`put_writes_and_put`](Self::put_writes_and_put)); on an error
    /// the requests before the failing one are stored and none after it. Backends override it
    /// to store the whole batch in one transaction: after an error nothing of it is stored.
    /// Like its parts it is idempotent, so it can be retried.
    ///
    /// ```
    /// use cairn_checkpoint::*;
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let saver = InMemorySaver::new();
    /// let thread = CheckpointConfig::thread("t");
    /// let first = Checkpoint::new();
    /// let second = first.successor();
    /// let request = |parent: &CheckpointConfig, cp: &Checkpoint, step| PutRequest {
    ///     config: parent.clone(),
    ///     writes: Vec::new(),
    ///     checkpoint: cp.clone(),
    ///     metadata: CheckpointMetadata::new(CheckpointSource::Loop, step),
    ///     new_versions: ChannelVersions::new(),
    /// };
    /// // The second names the first, stored earlier in the same batch, as its parent.
    /// let batch = vec![
    ///     request(&thread, &first, 0),
    ///     request(&thread.clone().with_checkpoint_id(&first.id), &second, 1),
    /// ];
    /// let stored = saver.put_batch(batch).await?;
    /// assert_eq!(stored[1].checkpoint_id.as_deref(), Some(second.id.as_str()));
    /// let latest = saver.get_tuple(&thread).await?.expect("stored");
    /// assert_eq!(latest.parent_config.and_then(|p| p.checkpoint_id), Some(first.id));
    /// # Ok::<(), Error>(()) }).unwrap();
    /// ```
    async fn put_batch(&self, requests: Vec<PutRequest>) -> Result<Vec<CheckpointConfig>> {
        let mut stored = Vec::with_capacity(requests.len());
        for request in requests {
            stored.push(request.store(self).await?);
        }
        Ok(stored)
    }

    /// [`put_batch`](Self::put_batch) for a caller that waits for the result with nothing
    /// else to do meanwhile (a run storing what it queued as it ends): a saver may do the work
    /// on the calling thread instead of handing it to a background writer, sparing the thread
    /// hops. Same effects as `put_batch`, which the default calls.
    async fn put_batch_now(&self, requests: Vec<PutRequest>) -> Result<Vec<CheckpointConfig>> {
        self.put_batch(requests).await
    }

    /// Deletes every checkpoint, value and write of `thread_id`, in every namespace.
    async fn delete_thread(&self, thread_id: &str) -> Result<()>;

    /// Copies every checkpoint, value and write of `source_thread_id` into
    /// `target_thread_id`, keeping checkpoint ids, namespaces, metadata and parents.
    async fn copy_thread(&self, source_thread_id: &str, target_thread_id: &str) -> Result<()>;

    /// Applies `strategy` to each of `thread_ids`.
    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()>;

    /// Deletes every checkpoint whose metadata `run_id` is one of `run_ids`, with its writes.
    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()>;

    /// One entry per thread: its id, how many checkpoints it has (all namespaces), its
    /// namespaces and its latest checkpoint (see [`ThreadSummary::latest`]; no channel values
    /// are loaded), ordered by thread id, at most `limit`, starting after the thread id
    /// `after` (exclusive) for paging.
    ///
    /// The default implementation walks every checkpoint with [`list`](Self::list), so it
    /// reads values and writes it then drops; backends override it with an index scan.
    async fn list_threads(&self, after: Option<&str>, limit: usize) -> Result<Vec<ThreadSummary>> {
        let mut threads: BTreeMap<String, ThreadSummary> = BTreeMap::new();
        let mut namespaces: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut before: Option<String> = None;
        loop {
            let page = self
                .list(&ListQuery {
                    before: before.clone(),
                    limit: Some(LIST_THREADS_PAGE),
                    ..ListQuery::all()
                })
                .await?;
            let full = page.len() == LIST_THREADS_PAGE;
            let Some(last) = page.last().map(|t| t.checkpoint.id.clone()) else {
                break;
            };
            // `before` is strict: take every checkpoint with the boundary id in one query, so
            // ids shared by several threads (copy_thread keeps ids) are not skipped.
            let mut items: Vec<CheckpointTuple> = if full {
                page.into_iter()
                    .filter(|t| t.checkpoint.id != last)
                    .collect()
            } else {
                page
            };
            if full {
                items.extend(
                    self.list(&ListQuery {
                        checkpoint_id: Some(last.clone()),
                        ..ListQuery::all()
                    })
                    .await?,
                );
            }
            for t in &items {
                let tid = &t.config.thread_id;
                if after.is_some_and(|a| tid.as_str() <= a) {
                    continue;
                }
                let entry = threads
                    .entry(tid.clone())
                    .or_insert_with(|| ThreadSummary::first(t));
                entry.checkpoints += 1;
                let current = &entry.latest.config;
                if is_later(
                    (
                        &current.checkpoint_ns,
                        current.checkpoint_id.as_deref().unwrap_or(""),
                    ),
                    (&t.config.checkpoint_ns, &t.checkpoint.id),
                ) {
                    entry.latest = ThreadSummary::first(t).latest;
                }
                namespaces
                    .entry(tid.clone())
                    .or_default()
                    .insert(t.config.checkpoint_ns.clone());
            }
            if !full {
                break;
            }
            before = Some(last);
        }
        Ok(threads
            .into_values()
            .take(limit)
            .map(|mut s| {
                s.namespaces = namespaces
                    .remove(&s.thread_id)
                    .map(|n| n.into_iter().collect())
                    .unwrap_or_default();
                s
            })
            .collect())
    }

    /// The version a channel gets when it is next written.
    fn get_next_version(&self, current: Option<&ChannelVersion>) -> ChannelVersion {
        ChannelVersion::first_after(current)
    }

    /// The version a channel gets when it is next written by a run whose versions may share
    /// `run_suffix` (drawn once per run by the runtime). The default is
    /// [`get_next_version`](Self::get_next_version), so a saver with versions of its own keeps
    /// them; Cairn's savers return [`ChannelVersion::next_in_run`], whose shared suffix a
    /// compact checkpoint header stores once instead of once per step. A saver that wraps
    /// another forwards both this and `get_next_version`. Callers other than the runtime must
    /// draw `run_suffix` with [`ChannelVersion::new_run_suffix`] for each run, never reuse one
    /// (see [`ChannelVersion::next_in_run`]).
    fn get_next_version_in_run(
        &self,
        current: Option<&ChannelVersion>,
        run_suffix: u64,
    ) -> ChannelVersion {
        let _ = run_suffix;
        self.get_next_version(current)
    }
}

//! The in-memory saver: the reference model every other backend is checked against.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::RwLock;

use async_trait::async_trait;

use crate::append::{append_heads, has_append_values, mark_chain_live, AppendChains, TAG_APPEND};
use crate::checkpoint::{
    write_index, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointTuple, ListQuery,
    PendingWrite,
};
use crate::error::{DataLocation, Error, Result};
use crate::header::{decode_header, decode_header_versions, encode_header, HeaderError};
use crate::saver::{is_later, CheckpointSaver, KnownValues, PruneStrategy, ThreadSummary};
use crate::value::TypedValue;
use crate::version::ChannelVersions;

/// A checkpoint as kept in memory: its header (the checkpoint without its values, which live
/// in `blobs`, and without its id, which is the key it is kept under) in the compact form of
/// [`encode_header`].
///
/// One allocation of 40 to 150 bytes for a few channels instead of the maps of a
/// [`Checkpoint`] (a b-tree node of several hundred bytes per map, plus every name and version
/// as its own string): several kilobytes per checkpoint, which a long run paid for in page
/// faults as its memory grew. Reads decode the header again; they are rarer than writes.
#[derive(Debug, Clone)]
struct StoredCheckpoint {
    header: Box<[u8]>,
    metadata: CheckpointMetadata,
    parent_id: Option<String>,
}

impl StoredCheckpoint {
    /// Encodes `checkpoint`, whose values the caller has taken out.
    fn new(
        checkpoint: &Checkpoint,
        metadata: CheckpointMetadata,
        parent_id: Option<String>,
    ) -> Result<Self> {
        debug_assert!(checkpoint.channel_values.is_empty());
        Ok(StoredCheckpoint {
            header: encode_header(checkpoint)?.into_boxed_slice(),
            metadata,
            parent_id,
        })
    }

    /// The checkpoint kept under `id`, without values.
    fn checkpoint(&self, thread_id: &str, ns_name: &str, id: &str) -> Result<Checkpoint> {
        decode_header(&self.header, id).map_err(|e| corrupt_header(thread_id, ns_name, id, e))
    }

    /// Only the channel versions of the checkpoint kept under `id`.
    fn channel_versions(
        &self,
        thread_id: &str,
        ns_name: &str,
        id: &str,
    ) -> Result<ChannelVersions> {
        decode_header_versions(&self.header).map_err(|e| corrupt_header(thread_id, ns_name, id, e))
    }
}

fn corrupt_header(thread_id: &str, ns_name: &str, id: &str, e: HeaderError) -> Error {
    Error::corrupt(
        DataLocation {
            thread_id: thread_id.to_owned(),
            checkpoint_ns: ns_name.to_owned(),
            checkpoint_id: Some(id.to_owned()),
            channel: None,
        },
        e.to_string(),
    )
}

/// `(channel, version)` → value.
type Blobs = HashMap<(String, String), TypedValue>;
/// A checkpoint's writes, kept sorted by `(task_id, index)` with at most one write per key.
/// A sorted vector: most checkpoints have a handful of writes, and a vector costs one
/// allocation where a map costs a node per few entries.
#[derive(Debug, Default, Clone)]
struct Writes(Vec<(i64, PendingWrite)>);

impl Writes {
    fn position(&self, task_id: &str, idx: i64) -> std::result::Result<usize, usize> {
        self.0
            .binary_search_by(|(i, w)| (w.task_id.as_str(), *i).cmp(&(task_id, idx)))
    }

    fn contains(&self, task_id: &str, idx: i64) -> bool {
        self.position(task_id, idx).is_ok()
    }

    /// Inserts `write` at `idx`, replacing a write with the same key.
    fn insert(&mut self, idx: i64, write: PendingWrite) {
        match self.position(&write.task_id, idx) {
            Ok(at) => self.0[at] = (idx, write),
            Err(at) => self.0.insert(at, (idx, write)),
        }
    }

    fn extend(&mut self, other: Writes) {
        for (idx, write) in other.0 {
            self.insert(idx, write);
        }
    }
}

/// The namespace `ns` of `thread`, created if missing (without copying the names when it
/// exists).
fn namespace_mut<'a>(threads: &'a mut Threads, thread: &str, ns: &str) -> &'a mut Namespace {
    if !threads.contains_key(thread) {
        threads.insert(thread.to_owned(), BTreeMap::new());
    }
    let namespaces = threads
        .get_mut(thread)
        .unwrap_or_else(|| unreachable!("inserted above"));
    if !namespaces.contains_key(ns) {
        namespaces.insert(ns.to_owned(), Namespace::default());
    }
    namespaces
        .get_mut(ns)
        .unwrap_or_else(|| unreachable!("inserted above"))
}

/// A version as the blob key (moved, not copied, when it is a string).
fn storage_key(version: crate::version::ChannelVersion) -> String {
    match version {
        crate::version::ChannelVersion::Str(s) => s,
        other => other.to_storage_string(),
    }
}

#[derive(Debug, Default, Clone)]
struct Namespace {
    checkpoints: BTreeMap<String, StoredCheckpoint>,
    blobs: Blobs,
    writes: HashMap<String, Writes>,
}

/// thread id → namespace → data.
type Threads = BTreeMap<String, BTreeMap<String, Namespace>>;

/// Counts of what an [`InMemorySaver`] holds ([`InMemorySaver::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryStats {
    /// Checkpoints, all threads and namespaces.
    pub checkpoints: usize,
    /// Stored channel values (one per channel and version).
    pub values: usize,
    /// Bytes of the stored channel values.
    pub value_bytes: usize,
    /// Pending writes.
    pub writes: usize,
    /// Bytes of the pending writes' values.
    pub write_bytes: usize,
}

/// Keeps checkpoints in process memory. Fast, lost when the process ends: for tests,
/// development and as the model other savers are checked against.
///
/// ```
/// use cairn_checkpoint::*;
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// let saver = InMemorySaver::new();
/// let codec = ValueCodec::default();
/// let mut checkpoint = Checkpoint::new();
/// checkpoint.channel_values.insert("count".into(), codec.encode(&1)?);
/// let version = saver.get_next_version(None);
/// checkpoint.channel_versions.insert("count".into(), version.clone());
/// let config = saver
///     .put(&CheckpointConfig::thread("t1"), checkpoint,
///          CheckpointMetadata::new(CheckpointSource::Input, -1),
///          [("count".to_string(), version)].into())
///     .await?;
/// let tuple = saver.get_tuple(&CheckpointConfig::thread("t1")).await?.expect("stored");
/// assert_eq!(tuple.config, config);
/// assert_eq!(tuple.channel_value::<i32>(&codec, "count")?, Some(1));
/// assert_eq!(saver.list(&ListQuery::thread("t1")).await?.len(), 1);
/// # Ok::<(), Error>(()) }).unwrap();
/// ```
#[derive(Debug, Default)]
pub struct InMemorySaver {
    threads: RwLock<Threads>,
}

impl InMemorySaver {
    /// An empty saver.
    pub fn new() -> Self {
        InMemorySaver::default()
    }

    /// What the saver holds, as stored: append values count their own bytes, not the whole
    /// lists they stand for.
    ///
    /// ```
    /// let saver = cairn_checkpoint::InMemorySaver::new();
    /// assert_eq!(saver.stats(), cairn_checkpoint::MemoryStats::default());
    /// ```
    pub fn stats(&self) -> MemoryStats {
        let mut stats = MemoryStats::default();
        for ns in self.read().values().flat_map(BTreeMap::values) {
            stats.checkpoints += ns.checkpoints.len();
            stats.values += ns.blobs.len();
            stats.value_bytes += ns.blobs.values().map(TypedValue::len).sum::<usize>();
            for writes in ns.writes.values() {
                stats.writes += writes.0.len();
                stats.write_bytes += writes.0.iter().map(|(_, w)| w.value.len()).sum::<usize>();
            }
        }
        stats
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Threads> {
        // A panic while holding the lock cannot leave a half-applied change: every mutation
        // below is computed first and then inserted, so a poisoned lock is still consistent.
        self.threads.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Threads> {
        self.threads.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// `stored` as a tuple, its append values resolved through `chains` (one per namespace, so a
/// listing walks each chain link once).
fn build_tuple(
    thread_id: &str,
    ns_name: &str,
    ns: &Namespace,
    (id, stored): (&str, &StoredCheckpoint),
    chains: &mut AppendChains,
) -> Result<CheckpointTuple> {
    build_tuple_known(thread_id, ns_name, ns, (id, stored), chains, &[])
}

/// [`build_tuple`] without the values of `known` channels.
fn build_tuple_known(
    thread_id: &str,
    ns_name: &str,
    ns: &Namespace,
    (id, stored): (&str, &StoredCheckpoint),
    chains: &mut AppendChains,
    known: &[&str],
) -> Result<CheckpointTuple> {
    let mut checkpoint = stored.checkpoint(thread_id, ns_name, id)?;
    checkpoint.channel_values = checkpoint
        .channel_versions
        .iter()
        .filter(|(channel, _)| !known.contains(&channel.as_str()))
        .filter_map(|(channel, version)| {
            let value = ns
                .blobs
                .get(&(channel.clone(), version.to_storage_string()))?;
            (!value.is_empty_marker()).then(|| (channel.clone(), value.clone()))
        })
        .collect();
    // `writes` is keyed by (task_id, index); the contract orders by task path first.
    let mut indexed: Vec<(&String, &String, i64, &PendingWrite)> = ns
        .writes
        .get(&checkpoint.id)
        .map(|w| {
            w.0.iter()
                .map(|(idx, pw)| (&pw.task_path, &pw.task_id, *idx, pw))
                .collect()
        })
        .unwrap_or_default();
    indexed.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    let pending_writes = indexed
        .into_iter()
        .map(|(_, _, _, pw)| pw.clone())
        .collect();
    let config = CheckpointConfig {
        thread_id: thread_id.to_owned(),
        checkpoint_ns: ns_name.to_owned(),
        checkpoint_id: Some(checkpoint.id.clone()),
    };
    let parent_config = stored.parent_id.as_ref().map(|id| CheckpointConfig {
        checkpoint_id: Some(id.clone()),
        ..config.clone()
    });
    let mut tuple = CheckpointTuple {
        config,
        checkpoint,
        metadata: stored.metadata.clone(),
        parent_config,
        pending_writes,
    };
    if has_append_values(&tuple.checkpoint) {
        for (channel, version) in append_heads(&tuple.checkpoint) {
            chains.gather(channel, &version.to_storage_string(), |v| {
                ns.blobs.get(&(channel.to_owned(), v.to_owned()))
            });
        }
        chains.resolve_tuple(&mut tuple)?;
    }
    Ok(tuple)
}

/// Drops stored values that no remaining checkpoint of the namespace refers to, directly or
/// as a link in an append chain.
fn reclaim_unreferenced_blobs(ns: &mut Namespace, thread_id: &str, ns_name: &str) -> Result<()> {
    let mut referenced: HashSet<(String, String)> = HashSet::new();
    for (id, stored) in &ns.checkpoints {
        for (channel, version) in &stored.channel_versions(thread_id, ns_name, id)? {
            mark_chain_live(
                &mut referenced,
                channel,
                &version.to_storage_string(),
                |v| ns.blobs.get(&(channel.clone(), v.to_owned())),
            );
        }
    }
    ns.blobs.retain(|key, _| referenced.contains(key));
    Ok(())
}

/// Rewrites the append values `latest` refers to as whole values, so that nothing older is
/// needed to read it.
fn compact_append_values(
    ns: &mut Namespace,
    thread_id: &str,
    ns_name: &str,
    latest: &str,
) -> Result<()> {
    let Some(stored) = ns.checkpoints.get(latest) else {
        return Ok(());
    };
    let mut chains = AppendChains::default();
    let tuple = build_tuple(thread_id, ns_name, ns, (latest, stored), &mut chains)?;
    for (channel, version) in &tuple.checkpoint.channel_versions {
        let key = (channel.clone(), version.to_storage_string());
        let is_append = ns.blobs.get(&key).is_some_and(|v| v.type_tag == TAG_APPEND);
        if let (true, Some(whole)) = (is_append, tuple.checkpoint.channel_values.get(channel)) {
            ns.blobs.insert(key, whole.clone());
        }
    }
    Ok(())
}

#[async_trait]
impl CheckpointSaver for InMemorySaver {
    fn get_next_version_in_run(
        &self,
        current: Option<&crate::ChannelVersion>,
        run_suffix: u64,
    ) -> crate::ChannelVersion {
        crate::ChannelVersion::next_in_run(current, run_suffix)
    }

    async fn get_tuple(&self, config: &CheckpointConfig) -> Result<Option<CheckpointTuple>> {
        let nothing_known = KnownValues {
            checkpoint_id: "",
            channels: &[],
        };
        self.get_tuple_known(config, nothing_known).await
    }

    async fn get_tuple_known(
        &self,
        config: &CheckpointConfig,
        known: KnownValues<'_>,
    ) -> Result<Option<CheckpointTuple>> {
        let threads = self.read();
        let Some(ns) = threads
            .get(&config.thread_id)
            .and_then(|t| t.get(&config.checkpoint_ns))
        else {
            return Ok(None);
        };
        let stored = match &config.checkpoint_id {
            Some(id) => ns.checkpoints.get_key_value(id),
            None => ns.checkpoints.iter().next_back(),
        };
        stored
            .map(|(id, s)| {
                let skip = if id == known.checkpoint_id {
                    known.channels
                } else {
                    &[]
                };
                build_tuple_known(
                    &config.thread_id,
                    &config.checkpoint_ns,
                    ns,
                    (id, s),
                    &mut AppendChains::default(),
                    skip,
                )
            })
            .transpose()
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<CheckpointTuple>> {
        let threads = self.read();
        type Found<'a> = (
            &'a str,
            &'a str,
            &'a Namespace,
            (&'a str, &'a StoredCheckpoint),
        );
        let mut found: Vec<Found<'_>> = Vec::new();
        for (thread_id, namespaces) in threads.iter() {
            if query.thread_id.as_ref().is_some_and(|t| t != thread_id) {
                continue;
            }
            for (ns_name, ns) in namespaces {
                if query.checkpoint_ns.as_ref().is_some_and(|n| n != ns_name) {
                    continue;
                }
                for (id, stored) in &ns.checkpoints {
                    if query.checkpoint_id.as_ref().is_some_and(|c| c != id)
                        || query.before.as_ref().is_some_and(|b| id >= b)
                        || !stored.metadata.matches(&query.filter)
                    {
                        continue;
                    }
                    found.push((thread_id, ns_name, ns, (id, stored)));
                }
            }
        }
        found.sort_by(|a, b| (b.3 .0, b.0, b.1).cmp(&(a.3 .0, a.0, a.1)));
        let limit = query.limit.unwrap_or(usize::MAX);
        found.truncate(limit);
        // Oldest first, so each append chain is walked once per namespace.
        let mut chains: HashMap<(&str, &str), AppendChains> = HashMap::new();
        let mut tuples = found
            .into_iter()
            .rev()
            .map(|(t, n, ns, s)| build_tuple(t, n, ns, s, chains.entry((t, n)).or_default()))
            .collect::<Result<Vec<_>>>()?;
        tuples.reverse();
        Ok(tuples)
    }

    async fn put(
        &self,
        config: &CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        let mut checkpoint = checkpoint;
        let mut values = std::mem::take(&mut checkpoint.channel_values);
        let id = checkpoint.id.clone();
        // Encoded before taking the lock: other threads' puts and reads go on meanwhile.
        let metadata = metadata.into_normalized()?;
        let stored = StoredCheckpoint::new(&checkpoint, metadata, config.checkpoint_id.clone())?;
        let mut threads = self.write();
        let ns = namespace_mut(&mut threads, &config.thread_id, &config.checkpoint_ns);
        for (channel, version) in new_versions {
            let value = values.remove(&channel).unwrap_or_else(TypedValue::empty);
            ns.blobs.insert((channel, storage_key(version)), value);
        }
        ns.checkpoints.insert(id.clone(), stored);
        Ok(CheckpointConfig {
            thread_id: config.thread_id.clone(),
            checkpoint_ns: config.checkpoint_ns.clone(),
            checkpoint_id: Some(id),
        })
    }

    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> Result<()> {
        let Some(checkpoint_id) = &config.checkpoint_id else {
            return Err(Error::InvalidArgument(
                "put_writes needs a config with a checkpoint_id: writes belong to a checkpoint"
                    .into(),
            ));
        };
        let mut threads = self.write();
        let ns = namespace_mut(&mut threads, &config.thread_id, &config.checkpoint_ns);
        if !ns.writes.contains_key(checkpoint_id) {
            ns.writes.insert(checkpoint_id.clone(), Writes::default());
        }
        let Some(stored) = ns.writes.get_mut(checkpoint_id) else {
            unreachable!("inserted above")
        };
        stored.0.reserve(writes.len());
        for (position, (channel, value)) in writes.into_iter().enumerate() {
            let idx = write_index(&channel, position);
            if idx >= 0 && stored.contains(task_id, idx) {
                continue;
            }
            stored.insert(
                idx,
                PendingWrite {
                    task_id: task_id.to_owned(),
                    channel,
                    value,
                    task_path: task_path.to_owned(),
                },
            );
        }
        Ok(())
    }

    async fn delete_thread(&self, thread_id: &str) -> Result<()> {
        self.write().remove(thread_id);
        Ok(())
    }

    async fn copy_thread(&self, source_thread_id: &str, target_thread_id: &str) -> Result<()> {
        let mut threads = self.write();
        let Some(source) = threads.get(source_thread_id).cloned() else {
            return Ok(());
        };
        let target = threads.entry(target_thread_id.to_owned()).or_default();
        for (ns_name, ns) in source {
            let into = target.entry(ns_name).or_default();
            into.checkpoints.extend(ns.checkpoints);
            into.blobs.extend(ns.blobs);
            for (checkpoint_id, writes) in ns.writes {
                into.writes.entry(checkpoint_id).or_default().extend(writes);
            }
        }
        Ok(())
    }

    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()> {
        let mut threads = self.write();
        for thread_id in thread_ids {
            match strategy {
                PruneStrategy::Delete => {
                    threads.remove(thread_id);
                }
                PruneStrategy::KeepLatest => {
                    let Some(namespaces) = threads.get_mut(thread_id) else {
                        continue;
                    };
                    for (ns_name, ns) in namespaces.iter_mut() {
                        let Some(latest) = ns.checkpoints.keys().next_back().cloned() else {
                            continue;
                        };
                        compact_append_values(ns, thread_id, ns_name, &latest)?;
                        ns.checkpoints.retain(|id, _| *id == latest);
                        ns.writes.retain(|id, _| *id == latest);
                        reclaim_unreferenced_blobs(ns, thread_id, ns_name)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// From the index: no values are read and no append chain is resolved, so one thread's
    /// damaged value does not fail the listing of the others.
    async fn list_threads(&self, after: Option<&str>, limit: usize) -> Result<Vec<ThreadSummary>> {
        let threads = self.read();
        let from = match after {
            Some(after) => std::ops::Bound::Excluded(after),
            None => std::ops::Bound::Unbounded,
        };
        let mut out = Vec::new();
        for (thread_id, namespaces) in threads.range::<str, _>((from, std::ops::Bound::Unbounded)) {
            if out.len() >= limit {
                break;
            }
            let held: Vec<(&String, &Namespace)> = namespaces
                .iter()
                .filter(|(_, ns)| !ns.checkpoints.is_empty())
                .collect();
            // Each namespace's newest; the thread's latest as the trait's default picks it.
            let latest = held
                .iter()
                .filter_map(|(name, ns)| {
                    let (id, stored) = ns.checkpoints.iter().next_back()?;
                    Some((name.as_str(), id, stored))
                })
                .reduce(|best, next| {
                    if is_later((best.0, best.1), (next.0, next.1)) {
                        next
                    } else {
                        best
                    }
                });
            let Some((ns_name, id, stored)) = latest else {
                continue;
            };
            let checkpoint = stored.checkpoint(thread_id, ns_name, id)?;
            out.push(ThreadSummary {
                thread_id: thread_id.clone(),
                checkpoints: held.iter().map(|(_, ns)| ns.checkpoints.len() as u64).sum(),
                namespaces: held.iter().map(|(name, _)| (*name).clone()).collect(),
                latest: crate::saver::LatestCheckpoint {
                    config: CheckpointConfig {
                        thread_id: thread_id.clone(),
                        checkpoint_ns: ns_name.to_owned(),
                        checkpoint_id: Some(id.clone()),
                    },
                    metadata: stored.metadata.clone(),
                    ts: checkpoint.ts,
                },
            });
        }
        Ok(out)
    }

    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()> {
        if run_ids.is_empty() {
            return Ok(());
        }
        let mut threads = self.write();
        for (thread_id, namespaces) in threads.iter_mut() {
            for (ns_name, ns) in namespaces.iter_mut() {
                let doomed: Vec<String> = ns
                    .checkpoints
                    .iter()
                    .filter(|(_, s)| {
                        s.metadata
                            .run_id
                            .as_ref()
                            .is_some_and(|r| run_ids.contains(r))
                    })
                    .map(|(id, _)| id.clone())
                    .collect();
                if doomed.is_empty() {
                    continue;
                }
                for id in &doomed {
                    ns.checkpoints.remove(id);
                    ns.writes.remove(id);
                }
                reclaim_unreferenced_blobs(ns, thread_id, ns_name)?;
            }
        }
        Ok(())
    }
}

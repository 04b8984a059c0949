//! Helpers shared by the cases: unique names, checkpoint builders and calls that panic with a
//! clear message when the saver returns an error.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointSource, CheckpointTuple, ListQuery, PendingWrite, PruneStrategy,
    Result, TypedValue, ValueCodec,
};

pub(crate) use CheckpointSource::{Input, Loop};

/// A name no other case (and no other run of the kit against a shared store) uses.
pub(crate) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// A fresh thread id.
pub(crate) fn thread_id() -> String {
    unique("conformance-thread")
}

/// `thread_id`'s latest checkpoint in the root namespace.
pub(crate) fn cfg(thread_id: &str) -> CheckpointConfig {
    CheckpointConfig::thread(thread_id)
}

/// `thread_id`'s latest checkpoint in namespace `ns`.
pub(crate) fn cfg_ns(thread_id: &str, ns: &str) -> CheckpointConfig {
    CheckpointConfig::thread(thread_id).with_ns(ns)
}

/// The listing LangGraph's `alist(cfg(tid))` makes: one thread, root namespace.
pub(crate) fn query(thread_id: &str) -> ListQuery {
    ListQuery::thread(thread_id).ns("")
}

/// The codec every case encodes values with.
pub(crate) fn codec() -> ValueCodec {
    ValueCodec::default()
}

/// `value` encoded with [`codec`].
#[track_caller]
pub(crate) fn value<T: Serialize + ?Sized>(value: &T) -> TypedValue {
    match codec().encode(value) {
        Ok(v) => v,
        Err(e) => panic!("conformance kit: cannot encode a test value: {e}"),
    }
}

/// `value` decoded as JSON, for readable assertion messages.
#[track_caller]
pub(crate) fn json(value: &TypedValue) -> serde_json::Value {
    match codec().decode(value) {
        Ok(v) => v,
        Err(e) => {
            panic!("a stored value no longer decodes ({e}); savers must keep values byte for byte")
        }
    }
}

/// Integer channel versions.
pub(crate) fn versions(pairs: &[(&str, i64)]) -> ChannelVersions {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), ChannelVersion::Int(*v)))
        .collect()
}

/// Channel values.
pub(crate) fn values(pairs: &[(&str, TypedValue)]) -> BTreeMap<String, TypedValue> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect()
}

/// A new checkpoint holding `vals` at `vers`.
pub(crate) fn checkpoint(vals: &[(&str, TypedValue)], vers: &[(&str, i64)]) -> Checkpoint {
    let mut cp = Checkpoint::new();
    cp.channel_values = values(vals);
    cp.channel_versions = versions(vers);
    cp
}

/// Metadata with a source and a step.
pub(crate) fn md(source: CheckpointSource, step: i64) -> CheckpointMetadata {
    CheckpointMetadata::new(source, step)
}

/// The result of a saver call, or a panic naming the call and the error.
#[track_caller]
pub(crate) fn ok<T>(result: Result<T>, call: &str) -> T {
    match result {
        Ok(v) => v,
        Err(e) => panic!("{call} failed: {e}"),
    }
}

pub(crate) async fn put(
    saver: &dyn CheckpointSaver,
    config: &CheckpointConfig,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    new_versions: ChannelVersions,
) -> CheckpointConfig {
    let id = checkpoint.id.clone();
    let result = saver.put(config, checkpoint, metadata, new_versions).await;
    ok(result, &format!("put of checkpoint {id} into {config:?}"))
}

/// An empty checkpoint with `metadata` and no new versions.
pub(crate) async fn put_empty(
    saver: &dyn CheckpointSaver,
    config: &CheckpointConfig,
    metadata: CheckpointMetadata,
) -> CheckpointConfig {
    put(
        saver,
        config,
        Checkpoint::new(),
        metadata,
        ChannelVersions::new(),
    )
    .await
}

/// `n` empty checkpoints in `(thread_id, ns)`, each the child of the previous one, with
/// metadata `meta(i)`. Returns the stored configs, oldest first.
pub(crate) async fn put_chain(
    saver: &dyn CheckpointSaver,
    thread_id: &str,
    ns: &str,
    n: usize,
    mut meta: impl FnMut(usize) -> CheckpointMetadata,
) -> Vec<CheckpointConfig> {
    let mut config = cfg_ns(thread_id, ns);
    let mut stored = Vec::with_capacity(n);
    for i in 0..n {
        config = put_empty(saver, &config, meta(i)).await;
        stored.push(config.clone());
    }
    stored
}

pub(crate) async fn put_writes(
    saver: &dyn CheckpointSaver,
    config: &CheckpointConfig,
    writes: Vec<(&str, TypedValue)>,
    task_id: &str,
    task_path: &str,
) {
    let writes = writes.into_iter().map(|(c, v)| (c.to_owned(), v)).collect();
    let result = saver.put_writes(config, writes, task_id, task_path).await;
    ok(
        result,
        &format!("put_writes by task {task_id:?} on {config:?}"),
    );
}

pub(crate) async fn get(
    saver: &dyn CheckpointSaver,
    config: &CheckpointConfig,
) -> Option<CheckpointTuple> {
    let result = saver.get_tuple(config).await;
    ok(result, &format!("get_tuple({config:?})"))
}

/// The tuple `config` names, which must exist.
pub(crate) async fn get_some(
    saver: &dyn CheckpointSaver,
    config: &CheckpointConfig,
) -> CheckpointTuple {
    match get(saver, config).await {
        Some(t) => t,
        None => panic!("get_tuple({config:?}) returned None for a stored checkpoint"),
    }
}

pub(crate) async fn list(saver: &dyn CheckpointSaver, query: &ListQuery) -> Vec<CheckpointTuple> {
    let result = saver.list(query).await;
    ok(result, &format!("list({query:?})"))
}

pub(crate) async fn delete_thread(saver: &dyn CheckpointSaver, thread_id: &str) {
    let result = saver.delete_thread(thread_id).await;
    ok(result, &format!("delete_thread({thread_id:?})"));
}

pub(crate) async fn delete_for_runs(saver: &dyn CheckpointSaver, run_ids: &[String]) {
    let result = saver.delete_for_runs(run_ids).await;
    ok(result, &format!("delete_for_runs({run_ids:?})"));
}

pub(crate) async fn copy_thread(saver: &dyn CheckpointSaver, from: &str, to: &str) {
    let result = saver.copy_thread(from, to).await;
    ok(result, &format!("copy_thread({from:?}, {to:?})"));
}

pub(crate) async fn prune(
    saver: &dyn CheckpointSaver,
    thread_ids: &[String],
    strategy: PruneStrategy,
) {
    let result = saver.prune(thread_ids, strategy).await;
    ok(result, &format!("prune({thread_ids:?}, {strategy:?})"));
}

/// The checkpoint id a stored config names.
#[track_caller]
pub(crate) fn id_of(config: &CheckpointConfig) -> String {
    match &config.checkpoint_id {
        Some(id) => id.clone(),
        None => panic!("put returned a config without a checkpoint_id: {config:?}"),
    }
}

/// The checkpoint ids of a listing, in listing order.
pub(crate) fn ids(tuples: &[CheckpointTuple]) -> Vec<String> {
    tuples.iter().map(|t| t.checkpoint.id.clone()).collect()
}

/// The ids of stored configs, in order.
pub(crate) fn config_ids(configs: &[CheckpointConfig]) -> Vec<String> {
    configs.iter().map(id_of).collect()
}

/// Pending writes as `(task_id, channel, value as JSON)`, for comparisons.
pub(crate) fn writes_json(writes: &[PendingWrite]) -> Vec<(String, String, serde_json::Value)> {
    writes
        .iter()
        .map(|w| (w.task_id.clone(), w.channel.clone(), json(&w.value)))
        .collect()
}

/// The run ids in a listing's metadata.
pub(crate) fn run_ids(tuples: &[CheckpointTuple]) -> Vec<String> {
    tuples
        .iter()
        .filter_map(|t| t.metadata.run_id.clone())
        .collect()
}

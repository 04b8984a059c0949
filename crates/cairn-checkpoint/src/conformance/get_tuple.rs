//! `get_tuple`: reading one checkpoint, by id or the latest.

use serde_json::json;

use super::support::*;
use crate::CheckpointSaver;

/// An unknown thread has no checkpoint: `None`, not an error.
pub async fn get_tuple_nonexistent_returns_none(saver: &dyn CheckpointSaver) {
    assert!(get(saver, &cfg(&thread_id())).await.is_none());
}

/// Without a checkpoint id, the latest (largest id) checkpoint is returned.
pub async fn get_tuple_latest_when_no_checkpoint_id(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let chain = put_chain(saver, &tid, "", 3, |i| md(Loop, i as i64)).await;
    let t = get_some(saver, &cfg(&tid)).await;
    assert_eq!(
        t.checkpoint.id,
        id_of(&chain[2]),
        "not the latest checkpoint"
    );
    assert_eq!(t.metadata.step, Some(2));
}

/// With a checkpoint id, exactly that checkpoint is returned (not the latest).
pub async fn get_tuple_specific_checkpoint_id(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let first = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    put_empty(saver, &first, md(Loop, 1)).await;
    let t = get_some(saver, &first).await;
    assert_eq!(t.checkpoint.id, id_of(&first));
    assert_eq!(t.metadata.step, Some(0));
}

/// The returned config names thread, namespace and checkpoint.
pub async fn get_tuple_config_structure(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let stored = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.config.thread_id, tid);
    assert_eq!(t.config.checkpoint_ns, "");
    assert_eq!(t.config.checkpoint_id, stored.checkpoint_id);
    let latest = get_some(saver, &cfg(&tid)).await;
    assert_eq!(
        latest.config, stored,
        "the latest lookup must name the checkpoint it found"
    );
}

/// The checkpoint's fields come back as given: id, format version `v`, timestamp, values,
/// versions.
pub async fn get_tuple_checkpoint_fields(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let mut cp = checkpoint(&[("k", value("v"))], &[("k", 1)]);
    cp.v = 1;
    let (id, ts) = (cp.id.clone(), cp.ts.clone());
    let stored = put(saver, &cfg(&tid), cp, md(Loop, 0), versions(&[("k", 1)])).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.checkpoint.id, id);
    assert_eq!(
        t.checkpoint.v, 1,
        "the saver must not rewrite the format version"
    );
    assert!(!t.checkpoint.ts.is_empty(), "ts is empty");
    assert_eq!(t.checkpoint.ts, ts, "ts must round-trip unchanged");
    assert_eq!(t.checkpoint.channel_values, values(&[("k", value("v"))]));
    assert_eq!(t.checkpoint.channel_versions, versions(&[("k", 1)]));
    assert!(t.checkpoint.versions_seen.is_empty());
}

/// Metadata source and (negative) step come back.
pub async fn get_tuple_metadata(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let stored = put_empty(saver, &cfg(&tid), md(Input, -1)).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.metadata.source, Some(Input));
    assert_eq!(t.metadata.step, Some(-1));
}

/// No parent gives `parent_config: None`; a parent gives its config.
pub async fn get_tuple_parent_config(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let first = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    let t1 = get_some(saver, &first).await;
    assert_eq!(
        t1.parent_config, None,
        "a checkpoint put without a parent has none"
    );
    let second = put_empty(saver, &first, md(Loop, 1)).await;
    let t2 = get_some(saver, &second).await;
    assert_eq!(
        t2.parent_config,
        Some(first),
        "parent_config names thread, namespace and parent id"
    );
}

/// Pending writes come back as `(task_id, channel, value)`.
pub async fn get_tuple_pending_writes(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let stored = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    let task = unique("task");
    put_writes(saver, &stored, vec![("ch", value("val"))], &task, "").await;
    let t = get_some(saver, &stored).await;
    assert_eq!(
        writes_json(&t.pending_writes),
        [(task, "ch".to_owned(), json!("val"))]
    );
}

/// The namespace of the config selects the checkpoint.
pub async fn get_tuple_respects_namespace(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let root = put_empty(saver, &cfg_ns(&tid, ""), md(Loop, 0)).await;
    let child = put_empty(saver, &cfg_ns(&tid, "child:1"), md(Loop, 0)).await;
    assert_eq!(get_some(saver, &root).await.checkpoint.id, id_of(&root));
    assert_eq!(get_some(saver, &child).await.checkpoint.id, id_of(&child));
    assert_eq!(
        get_some(saver, &cfg_ns(&tid, "")).await.checkpoint.id,
        id_of(&root)
    );
    assert_eq!(
        get_some(saver, &cfg_ns(&tid, "child:1"))
            .await
            .checkpoint
            .id,
        id_of(&child)
    );
}

/// An unknown checkpoint id gives `None`, never the latest checkpoint.
pub async fn get_tuple_nonexistent_checkpoint_id(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    let unknown = cfg(&tid).with_checkpoint_id(uuid::Uuid::new_v4().to_string());
    assert!(
        get(saver, &unknown).await.is_none(),
        "an unknown checkpoint id must not fall back to the latest"
    );
}

//! `list`: history of a thread, filtered, paged and newest first.

use serde_json::json;

use super::support::*;
use crate::CheckpointSaver;

/// A fresh thread with a chain of 4 checkpoints: source input/loop/input/loop, step 0..3.
async fn setup(saver: &dyn CheckpointSaver) -> (String, Vec<String>) {
    let tid = thread_id();
    let chain = put_chain(saver, &tid, "", 4, |i| {
        md(if i % 2 == 0 { Input } else { Loop }, i as i64)
    })
    .await;
    (tid, config_ids(&chain))
}

/// All checkpoints of the thread are listed.
pub async fn list_all(saver: &dyn CheckpointSaver) {
    let (tid, _) = setup(saver).await;
    assert_eq!(list(saver, &query(&tid)).await.len(), 4);
}

/// Only the queried thread is listed.
pub async fn list_by_thread(saver: &dyn CheckpointSaver) {
    let (tid, ids_put) = setup(saver).await;
    assert!(list(saver, &query(&thread_id())).await.is_empty());
    let listed = list(saver, &query(&tid)).await;
    assert_eq!(listed.len(), 4);
    assert!(listed
        .iter()
        .all(|t| t.config.thread_id == tid && ids_put.contains(&t.checkpoint.id)));
}

/// The namespace of the query selects exactly that namespace.
pub async fn list_by_namespace(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let root = put_empty(saver, &cfg_ns(&tid, ""), md(Loop, 0)).await;
    let child = put_empty(saver, &cfg_ns(&tid, "child:1"), md(Loop, 0)).await;
    let in_root = list(saver, &query(&tid)).await;
    assert_eq!(ids(&in_root), [id_of(&root)]);
    let in_child = list(saver, &query(&tid).ns("child:1")).await;
    assert_eq!(ids(&in_child), [id_of(&child)]);
    assert_eq!(in_child[0].config.checkpoint_ns, "child:1");
}

/// Newest first.
pub async fn list_ordering(saver: &dyn CheckpointSaver) {
    let (tid, mut ids_put) = setup(saver).await;
    ids_put.reverse();
    assert_eq!(ids(&list(saver, &query(&tid)).await), ids_put);
}

/// Filtering on one metadata key.
pub async fn list_filter_single_key(saver: &dyn CheckpointSaver) {
    let (tid, _) = setup(saver).await;
    let listed = list(saver, &query(&tid).filter("source", "input")).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|t| t.metadata.source == Some(Input)));
}

/// Filtering on the integer `step`.
pub async fn list_filter_step(saver: &dyn CheckpointSaver) {
    let (tid, _) = setup(saver).await;
    let listed = list(saver, &query(&tid).filter("step", 1)).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata.step, Some(1));
}

/// Several filter keys combine with AND.
pub async fn list_filter_multiple_keys(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    for (source, step) in [(Input, 1), (Loop, 1), (Input, 2)] {
        put_empty(saver, &cfg(&tid), md(source, step)).await;
    }
    let listed = list(
        saver,
        &query(&tid).filter("source", "input").filter("step", 2),
    )
    .await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata.source, Some(Input));
    assert_eq!(listed[0].metadata.step, Some(2));
}

/// Filter numbers compare by value, whether written as integers or floats (`1` matches
/// `1.0`), in the caller's keys, in nested values and on `step`.
pub async fn list_filter_numbers_compare_by_value(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    put_empty(
        saver,
        &cfg(&tid),
        md(Loop, 1)
            .with("ratio", 1.0)
            .with("count", 2)
            .with("nested", serde_json::json!({"k": [1, 2.5]})),
    )
    .await;
    put_empty(saver, &cfg(&tid), md(Loop, 2).with("count", 3)).await;
    for (key, value, matches) in [
        ("ratio", serde_json::json!(1), 1),
        ("ratio", serde_json::json!(1.0), 1),
        ("count", serde_json::json!(2.0), 1),
        ("count", serde_json::json!(2), 1),
        ("step", serde_json::json!(1.0), 1),
        ("nested", serde_json::json!({"k": [1.0, 2.5]}), 1),
        ("count", serde_json::json!(2.5), 0),
        ("count", serde_json::json!("2"), 0),
    ] {
        let listed = list(saver, &query(&tid).filter(key, value.clone())).await;
        assert_eq!(listed.len(), matches, "filter {key} = {value}");
    }
}

/// A filter nothing matches lists nothing.
pub async fn list_filter_no_match(saver: &dyn CheckpointSaver) {
    let (tid, _) = setup(saver).await;
    let listed = list(
        saver,
        &query(&tid).filter("source", "update").filter("step", 99),
    )
    .await;
    assert!(listed.is_empty());
}

/// Filtering on the caller's own metadata keys, integers compared as integers.
pub async fn list_filter_custom_keys(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let (run_a, run_b) = (unique("run-abc"), unique("run-xyz"));
    put_empty(
        saver,
        &cfg(&tid),
        md(Loop, 0).with("score", 42).with_run_id(&run_a),
    )
    .await;
    put_empty(
        saver,
        &cfg(&tid),
        md(Loop, 0).with("score", 99).with_run_id(&run_b),
    )
    .await;
    let listed = list(saver, &query(&tid).filter("score", 42)).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].metadata.extra.get("score"), Some(&json!(42)));
    assert_eq!(listed[0].metadata.run_id.as_deref(), Some(run_a.as_str()));
    let by_run = list(saver, &query(&tid).filter("run_id", run_b.as_str())).await;
    assert_eq!(
        by_run.len(),
        1,
        "run_id is filterable like any metadata key"
    );
    assert_eq!(by_run[0].metadata.extra.get("score"), Some(&json!(99)));
}

/// `before` keeps strictly older checkpoints.
pub async fn list_before(saver: &dyn CheckpointSaver) {
    let (tid, ids_put) = setup(saver).await;
    let listed = list(saver, &query(&tid).before(&ids_put[2])).await;
    assert_eq!(ids(&listed), [ids_put[1].clone(), ids_put[0].clone()]);
}

/// `limit` caps the number of results.
pub async fn list_limit(saver: &dyn CheckpointSaver) {
    let (tid, ids_put) = setup(saver).await;
    assert_eq!(
        ids(&list(saver, &query(&tid).limit(1)).await),
        [ids_put[3].clone()]
    );
    assert_eq!(
        ids(&list(saver, &query(&tid).limit(2)).await),
        [ids_put[3].clone(), ids_put[2].clone()]
    );
}

/// `limit` applies after `before` and the ordering.
pub async fn list_limit_plus_before(saver: &dyn CheckpointSaver) {
    let (tid, ids_put) = setup(saver).await;
    let listed = list(saver, &query(&tid).before(&ids_put[3]).limit(1)).await;
    assert_eq!(ids(&listed), [ids_put[2].clone()]);
}

/// Thread and metadata filter combine.
pub async fn list_combined_thread_and_filter(saver: &dyn CheckpointSaver) {
    let (tid, _) = setup(saver).await;
    let listed = list(saver, &query(&tid).filter("source", "loop")).await;
    assert_eq!(listed.len(), 2);
    assert!(listed.iter().all(|t| t.metadata.source == Some(Loop)));
}

/// Nothing to list is an empty result, not an error.
pub async fn list_empty_result(saver: &dyn CheckpointSaver) {
    let listed = list(saver, &query(&thread_id()).filter("source", "nonexistent")).await;
    assert!(listed.is_empty());
}

/// Listed checkpoints carry their pending writes.
pub async fn list_includes_pending_writes(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let stored = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    let task = unique("task");
    put_writes(saver, &stored, vec![("ch", value("val"))], &task, "").await;
    let listed = list(saver, &query(&tid)).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        writes_json(&listed[0].pending_writes),
        [(task, "ch".to_owned(), json!("val"))]
    );
}

/// A namespace in the query hides the other namespaces of the thread.
pub async fn list_multiple_namespaces(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    for ns in ["", "child:1", "child:2"] {
        put_empty(saver, &cfg_ns(&tid, ns), md(Loop, 0)).await;
    }
    let listed = list(saver, &query(&tid)).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].config.checkpoint_ns, "");
}

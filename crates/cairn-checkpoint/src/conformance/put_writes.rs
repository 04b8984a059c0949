//! `put_writes`: pending writes attached to a checkpoint.

use serde_json::json;

use super::support::*;
use crate::{CheckpointConfig, CheckpointSaver, ERROR, INTERRUPT};

/// One empty checkpoint on a fresh thread; returns its config.
async fn setup(saver: &dyn CheckpointSaver) -> CheckpointConfig {
    put_empty(saver, &cfg(&thread_id()), md(Loop, 0)).await
}

/// One write reads back with its task, channel and value.
pub async fn put_writes_basic(saver: &dyn CheckpointSaver) {
    let stored = setup(saver).await;
    let task = unique("task");
    put_writes(
        saver,
        &stored,
        vec![("channel1", value("value1"))],
        &task,
        "",
    )
    .await;
    let t = get_some(saver, &stored).await;
    assert_eq!(
        writes_json(&t.pending_writes),
        [(task, "channel1".to_owned(), json!("value1"))]
    );
}

/// Several writes of one task in one call all read back.
pub async fn put_writes_multiple_writes_same_task(saver: &dyn CheckpointSaver) {
    let stored = setup(saver).await;
    let task = unique("task");
    let writes = vec![
        ("ch1", value("v1")),
        ("ch2", value("v2")),
        ("ch3", value("v3")),
    ];
    put_writes(saver, &stored, writes, &task, "").await;
    let t = get_some(saver, &stored).await;
    assert_eq!(
        writes_json(&t.pending_writes),
        [
            (task.clone(), "ch1".to_owned(), json!("v1")),
            (task.clone(), "ch2".to_owned(), json!("v2")),
            (task, "ch3".to_owned(), json!("v3")),
        ],
        "three writes, in index order"
    );
}

/// Writes of two tasks to the same channel are both kept.
pub async fn put_writes_multiple_tasks(saver: &dyn CheckpointSaver) {
    let stored = setup(saver).await;
    let (t1, t2) = (unique("task"), unique("task"));
    put_writes(saver, &stored, vec![("ch", value("from_t1"))], &t1, "").await;
    put_writes(saver, &stored, vec![("ch", value("from_t2"))], &t2, "").await;
    let t = get_some(saver, &stored).await;
    let mut got = writes_json(&t.pending_writes);
    got.sort_by(|a, b| a.0.cmp(&b.0));
    let mut expected = vec![
        (t1, "ch".to_owned(), json!("from_t1")),
        (t2, "ch".to_owned(), json!("from_t2")),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(got, expected);
}

/// The task id of a write is kept.
pub async fn put_writes_preserves_task_id(saver: &dyn CheckpointSaver) {
    let stored = setup(saver).await;
    let task = unique("task");
    put_writes(saver, &stored, vec![("ch", value("val"))], &task, "").await;
    let t = get_some(saver, &stored).await;
    assert!(
        t.pending_writes.iter().any(|w| w.task_id == task),
        "no write carries task id {task}: {:?}",
        t.pending_writes
    );
}

/// Channel name and a structured value are kept.
pub async fn put_writes_preserves_channel_and_value(saver: &dyn CheckpointSaver) {
    let stored = setup(saver).await;
    let task = unique("task");
    let v = value(&json!({"data": 123}));
    put_writes(saver, &stored, vec![("my_channel", v.clone())], &task, "").await;
    let t = get_some(saver, &stored).await;
    let matching: Vec<_> = t
        .pending_writes
        .iter()
        .filter(|w| w.channel == "my_channel")
        .collect();
    assert_eq!(matching.len(), 1, "exactly one write on my_channel");
    assert_eq!(
        matching[0].value, v,
        "the value must round-trip byte for byte"
    );
}

/// A task path is accepted and kept.
pub async fn put_writes_task_path(saver: &dyn CheckpointSaver) {
    let stored = setup(saver).await;
    let task = unique("task");
    put_writes(saver, &stored, vec![("ch", value("v"))], &task, "a:b:c").await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.pending_writes.len(), 1);
    assert_eq!(
        t.pending_writes[0].task_path, "a:b:c",
        "task_path must round-trip"
    );
}

/// The same call made twice stores the write once.
pub async fn put_writes_idempotent(saver: &dyn CheckpointSaver) {
    let stored = setup(saver).await;
    let task = unique("task");
    for _ in 0..2 {
        put_writes(saver, &stored, vec![("ch", value("val"))], &task, "").await;
    }
    let t = get_some(saver, &stored).await;
    assert_eq!(
        t.pending_writes.len(),
        1,
        "a retried put_writes must not duplicate writes: {:?}",
        t.pending_writes
    );
}

/// Error and interrupt writes are stored with their values.
pub async fn put_writes_special_channels(saver: &dyn CheckpointSaver) {
    let stored = setup(saver).await;
    let task = unique("task");
    let writes = vec![
        (ERROR, value("something went wrong")),
        (INTERRUPT, value(&json!({"reason": "human_input"}))),
    ];
    put_writes(saver, &stored, writes, &task, "").await;
    let t = get_some(saver, &stored).await;
    let of = |channel: &str| -> Vec<serde_json::Value> {
        t.pending_writes
            .iter()
            .filter(|w| w.channel == channel)
            .map(|w| json(&w.value))
            .collect()
    };
    assert_eq!(of(ERROR), [json!("something went wrong")]);
    assert_eq!(of(INTERRUPT), [json!({"reason": "human_input"})]);
}

/// Writes to checkpoints of two namespaces of one thread stay apart.
pub async fn put_writes_across_namespaces(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let root = put_empty(saver, &cfg_ns(&tid, ""), md(Loop, 0)).await;
    put_writes(
        saver,
        &root,
        vec![("ch", value("root_val"))],
        &unique("task"),
        "",
    )
    .await;
    let child = put_empty(saver, &cfg_ns(&tid, "child:1"), md(Loop, 0)).await;
    put_writes(
        saver,
        &child,
        vec![("ch", value("child_val"))],
        &unique("task"),
        "",
    )
    .await;
    for (config, expected) in [(&root, "root_val"), (&child, "child_val")] {
        let t = get_some(saver, config).await;
        let vals: Vec<_> = t.pending_writes.iter().map(|w| json(&w.value)).collect();
        assert_eq!(
            vals,
            [json!(expected)],
            "writes of namespace {:?}",
            config.checkpoint_ns
        );
    }
}

/// Writes belong to one checkpoint: the next checkpoint starts without them.
pub async fn put_writes_cleared_on_next_checkpoint(saver: &dyn CheckpointSaver) {
    let first = setup(saver).await;
    put_writes(
        saver,
        &first,
        vec![("ch", value("old_write"))],
        &unique("task"),
        "",
    )
    .await;
    let second = put_empty(saver, &first, md(Loop, 1)).await;
    let t = get_some(saver, &second).await;
    assert!(
        t.pending_writes.is_empty(),
        "writes of the parent leaked into the child: {:?}",
        t.pending_writes
    );
}

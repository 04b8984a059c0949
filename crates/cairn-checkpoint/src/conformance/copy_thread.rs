//! `copy_thread`: a thread's whole history duplicated under another thread id.

use serde_json::json;

use super::support::*;
use crate::{CheckpointConfig, CheckpointSaver, CheckpointTuple, ListQuery, INTERRUPT};

/// In each of `namespaces`, a chain of `n` checkpoints where checkpoint `i` holds
/// `{"step": i}` at version 1 and metadata step `i`.
async fn setup_source(
    saver: &dyn CheckpointSaver,
    thread: &str,
    n: usize,
    namespaces: &[&str],
) -> Vec<CheckpointConfig> {
    let mut stored = Vec::new();
    for ns in namespaces {
        let mut config = cfg_ns(thread, ns);
        for i in 0..n {
            let cp = checkpoint(&[("step", value(&i))], &[("step", 1)]);
            config = put(
                saver,
                &config,
                cp,
                md(Loop, i as i64),
                versions(&[("step", 1)]),
            )
            .await;
            stored.push(config.clone());
        }
    }
    stored
}

/// Asserts every metadata key of `src` has the same value in `dst`.
#[track_caller]
fn assert_same_metadata(src: &CheckpointTuple, dst: &CheckpointTuple) {
    let dst_json = dst.metadata.to_json();
    for (key, v) in src.metadata.to_json() {
        assert_eq!(
            dst_json.get(&key),
            Some(&v),
            "metadata key {key:?} differs in the copy of checkpoint {}",
            src.checkpoint.id
        );
    }
}

/// Every checkpoint is copied.
pub async fn copy_thread_basic(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    setup_source(saver, &src, 3, &[""]).await;
    copy_thread(saver, &src, &dst).await;
    assert_eq!(list(saver, &query(&dst)).await.len(), 3);
}

/// Copies read back the same checkpoints (values, versions, timestamps, parents) as the source.
pub async fn copy_thread_all_checkpoints(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    setup_source(saver, &src, 3, &[""]).await;
    copy_thread(saver, &src, &dst).await;
    let from = list(saver, &query(&src)).await;
    let to = list(saver, &query(&dst)).await;
    assert_eq!(from.len(), to.len(), "not every checkpoint was copied");
    for (a, b) in from.iter().zip(&to) {
        assert_eq!(
            a.checkpoint, b.checkpoint,
            "the copy reads back another checkpoint"
        );
        assert_eq!(b.config.thread_id, dst);
        assert_eq!(
            a.parent_config.as_ref().map(|p| &p.checkpoint_id),
            b.parent_config.as_ref().map(|p| &p.checkpoint_id),
            "the copy must keep the parent"
        );
        if let Some(parent) = &b.parent_config {
            assert_eq!(
                parent.thread_id, dst,
                "the copy's parent must be in the target thread"
            );
        }
    }
}

/// Metadata is copied key for key.
pub async fn copy_thread_preserves_metadata(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    setup_source(saver, &src, 2, &[""]).await;
    copy_thread(saver, &src, &dst).await;
    let mut from = list(saver, &query(&src)).await;
    let mut to = list(saver, &query(&dst)).await;
    from.sort_by_key(|t| t.metadata.step);
    to.sort_by_key(|t| t.metadata.step);
    assert_eq!(from.len(), to.len());
    for (a, b) in from.iter().zip(&to) {
        assert_same_metadata(a, b);
    }
}

/// Every namespace is copied.
pub async fn copy_thread_preserves_namespaces(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    setup_source(saver, &src, 1, &["", "child:1"]).await;
    copy_thread(saver, &src, &dst).await;
    for ns in ["", "child:1"] {
        let listed = list(saver, &query(&dst).ns(ns)).await;
        assert_eq!(listed.len(), 1, "namespace {ns:?} was not copied");
        assert_eq!(listed[0].config.checkpoint_ns, ns);
    }
}

/// Pending writes are copied.
pub async fn copy_thread_preserves_writes(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    let stored = setup_source(saver, &src, 1, &[""]).await;
    let task = unique("task");
    put_writes(
        saver,
        &stored[0],
        vec![("ch", value("write_val"))],
        &task,
        "p:1",
    )
    .await;
    copy_thread(saver, &src, &dst).await;
    let t = get_some(saver, &cfg(&dst)).await;
    assert_eq!(
        writes_json(&t.pending_writes),
        [(task, "ch".to_owned(), json!("write_val"))]
    );
    assert_eq!(
        t.pending_writes[0].task_path, "p:1",
        "task_path must be copied"
    );
}

/// Copying over a thread with data of its own: writes stored for a checkpoint that only one
/// side holds meet the other side's checkpoint, and the source's writes win, regular and
/// special alike (the target's writes for other tasks stay).
pub async fn copy_thread_over_writes_of_the_target(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    let (task, other_task) = (unique("task"), unique("task"));
    let (shared, target_only) = (crate::new_checkpoint_id(), crate::new_checkpoint_id());
    let at = |thread: &str, id: &str| cfg(thread).with_checkpoint_id(id);
    // The target has writes for `shared` without storing it; the source stores it.
    put_writes(
        saver,
        &at(&dst, &shared),
        vec![("a", value("target"))],
        &task,
        "p",
    )
    .await;
    put_writes(
        saver,
        &at(&dst, &shared),
        vec![("b", value("kept"))],
        &other_task,
        "p",
    )
    .await;
    let mut cp = checkpoint(&[], &[]);
    cp.id = shared.clone();
    put(saver, &cfg(&src), cp, md(Loop, 0), versions(&[])).await;
    put_writes(
        saver,
        &at(&src, &shared),
        vec![("a", value("source"))],
        &task,
        "p",
    )
    .await;
    // The target stores `target_only`; the source has writes for it without storing it.
    let mut cp = checkpoint(&[], &[]);
    cp.id = target_only.clone();
    put(saver, &cfg(&dst), cp, md(Loop, 1), versions(&[])).await;
    put_writes(
        saver,
        &at(&dst, &target_only),
        vec![(INTERRUPT, value("target"))],
        &task,
        "p",
    )
    .await;
    put_writes(
        saver,
        &at(&src, &target_only),
        vec![(INTERRUPT, value("source"))],
        &task,
        "p",
    )
    .await;
    copy_thread(saver, &src, &dst).await;
    let mut kept = writes_json(&get_some(saver, &at(&dst, &shared)).await.pending_writes);
    kept.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let mut expected = vec![
        (task.clone(), "a".to_owned(), json!("source")),
        (other_task, "b".to_owned(), json!("kept")),
    ];
    expected.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        kept, expected,
        "the source's regular write must win in the copy"
    );
    assert_eq!(
        writes_json(
            &get_some(saver, &at(&dst, &target_only))
                .await
                .pending_writes
        ),
        [(task, INTERRUPT.to_owned(), json!("source"))],
        "the source's special write must win in the copy"
    );
}

/// Checkpoint ids and their order are kept.
pub async fn copy_thread_preserves_ordering(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    setup_source(saver, &src, 4, &[""]).await;
    copy_thread(saver, &src, &dst).await;
    let from = ids(&list(saver, &query(&src)).await);
    assert_eq!(from.len(), 4);
    assert_eq!(ids(&list(saver, &query(&dst)).await), from);
}

/// The source thread is unchanged.
pub async fn copy_thread_source_unchanged(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    setup_source(saver, &src, 2, &[""]).await;
    let before = list(saver, &ListQuery::thread(&src)).await;
    copy_thread(saver, &src, &dst).await;
    let after = list(saver, &ListQuery::thread(&src)).await;
    assert_eq!(ids(&before), ids(&after));
    assert_eq!(before, after, "copying changed the source thread");
}

/// Copying an unknown thread may fail or do nothing, but creates no checkpoint.
pub async fn copy_thread_nonexistent_source(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    // Either outcome of the call is allowed; only its effect is checked.
    let _ = saver.copy_thread(&src, &dst).await;
    assert!(list(saver, &ListQuery::thread(&dst)).await.is_empty());
}

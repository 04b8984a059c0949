//! `delete_for_runs`: removing the checkpoints a run wrote, in every thread and namespace.

use serde_json::json;

use super::support::*;
use crate::{CheckpointConfig, CheckpointSaver};

/// An empty checkpoint written by `run` in `(thread, ns)`, child of `parent`.
async fn put_run(
    saver: &dyn CheckpointSaver,
    thread: &str,
    ns: &str,
    run: &str,
    parent: Option<&CheckpointConfig>,
) -> CheckpointConfig {
    let config = match parent {
        Some(p) => p.clone(),
        None => cfg_ns(thread, ns),
    };
    put_empty(saver, &config, md(Loop, 0).with_run_id(run)).await
}

/// Deleting one run keeps the next run's checkpoint, even though its parent is gone.
pub async fn delete_for_runs_single(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let (run1, run2) = (unique("run"), unique("run"));
    let first = put_run(saver, &tid, "", &run1, None).await;
    let second = put_run(saver, &tid, "", &run2, Some(&first)).await;
    let before = run_ids(&list(saver, &query(&tid)).await);
    assert!(before.contains(&run1) && before.contains(&run2));
    delete_for_runs(saver, std::slice::from_ref(&run1)).await;
    let after = list(saver, &query(&tid)).await;
    assert_eq!(run_ids(&after), [run2], "only run1's checkpoint must go");
    assert!(get(saver, &first).await.is_none());
    let survivor = get_some(saver, &second).await;
    assert_eq!(
        survivor.parent_config.and_then(|p| p.checkpoint_id),
        first.checkpoint_id,
        "the survivor keeps its parent pointer"
    );
}

/// Several runs at once.
pub async fn delete_for_runs_multiple(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let runs = [unique("run"), unique("run"), unique("run")];
    let mut parent = None;
    for run in &runs {
        parent = Some(put_run(saver, &tid, "", run, parent.as_ref()).await);
    }
    assert_eq!(run_ids(&list(saver, &query(&tid)).await).len(), 3);
    delete_for_runs(saver, &runs[..2]).await;
    assert_eq!(run_ids(&list(saver, &query(&tid)).await), [runs[2].clone()]);
}

/// Checkpoints of other runs stay.
pub async fn delete_for_runs_preserves_other_runs(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let (keep, doomed) = (unique("run-keep"), unique("run-delete"));
    put_run(saver, &tid, "", &keep, None).await;
    put_run(saver, &tid, "", &doomed, None).await;
    delete_for_runs(saver, std::slice::from_ref(&doomed)).await;
    assert_eq!(run_ids(&list(saver, &query(&tid)).await), [keep]);
}

/// The deleted checkpoint's writes go with it.
pub async fn delete_for_runs_removes_writes(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let run = unique("run");
    let stored = put_run(saver, &tid, "", &run, None).await;
    put_writes(
        saver,
        &stored,
        vec![("ch", value("val"))],
        &unique("task"),
        "",
    )
    .await;
    assert_eq!(get_some(saver, &stored).await.pending_writes.len(), 1);
    delete_for_runs(saver, std::slice::from_ref(&run)).await;
    assert!(get(saver, &stored).await.is_none());
    // The same checkpoint id put again starts without the deleted writes.
    let mut again = crate::Checkpoint::new();
    again.id = id_of(&stored);
    put(saver, &cfg(&tid), again, md(Loop, 0), versions(&[])).await;
    let t = get_some(saver, &stored).await;
    assert!(
        t.pending_writes.is_empty(),
        "writes of a deleted run came back: {:?}",
        t.pending_writes
    );
}

/// No run ids: nothing happens.
pub async fn delete_for_runs_empty_list_noop(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    put_run(saver, &tid, "", &unique("run"), None).await;
    delete_for_runs(saver, &[]).await;
    assert_eq!(list(saver, &query(&tid)).await.len(), 1);
}

/// Unknown run ids: nothing happens.
pub async fn delete_for_runs_nonexistent_noop(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    put_run(saver, &tid, "", &unique("run"), None).await;
    delete_for_runs(saver, &[uuid::Uuid::new_v4().to_string()]).await;
    assert_eq!(list(saver, &query(&tid)).await.len(), 1);
}

/// A run's checkpoints go in every namespace (and every thread).
pub async fn delete_for_runs_across_namespaces(saver: &dyn CheckpointSaver) {
    let (tid, other) = (thread_id(), thread_id());
    let run = unique("run");
    put_run(saver, &tid, "", &run, None).await;
    put_run(saver, &tid, "child:1", &run, None).await;
    put_run(saver, &other, "", &run, None).await;
    for ns in ["", "child:1"] {
        assert_eq!(
            run_ids(&list(saver, &query(&tid).ns(ns)).await),
            std::slice::from_ref(&run)
        );
    }
    delete_for_runs(saver, std::slice::from_ref(&run)).await;
    for ns in ["", "child:1"] {
        assert!(
            list(saver, &query(&tid).ns(ns)).await.is_empty(),
            "run survived in namespace {ns:?}"
        );
    }
    assert!(
        list(saver, &query(&other)).await.is_empty(),
        "run survived in another thread"
    );
    let everywhere = list(saver, &crate::ListQuery::all().filter("run_id", json!(run))).await;
    assert!(
        everywhere.is_empty(),
        "run still listed: {:?}",
        ids(&everywhere)
    );
}

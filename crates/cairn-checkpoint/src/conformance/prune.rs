//! `prune`: trimming or deleting threads.

use serde_json::json;

use super::support::*;
use crate::{CheckpointSaver, PruneStrategy};

/// A chain of `n` empty checkpoints in the root namespace; returns their ids oldest first.
async fn setup(saver: &dyn CheckpointSaver, thread: &str, n: usize) -> Vec<String> {
    config_ids(&put_chain(saver, thread, "", n, |i| md(Loop, i as i64)).await)
}

/// Only the latest checkpoint of the thread stays.
pub async fn prune_keep_latest_single_thread(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let ids_put = setup(saver, &tid, 4).await;
    prune(saver, std::slice::from_ref(&tid), PruneStrategy::KeepLatest).await;
    assert_eq!(ids(&list(saver, &query(&tid)).await), [ids_put[3].clone()]);
}

/// Each listed thread keeps its own latest checkpoint.
pub async fn prune_keep_latest_multiple_threads(saver: &dyn CheckpointSaver) {
    let (t1, t2) = (thread_id(), thread_id());
    let ids1 = setup(saver, &t1, 3).await;
    let ids2 = setup(saver, &t2, 2).await;
    prune(saver, &[t1.clone(), t2.clone()], PruneStrategy::KeepLatest).await;
    assert_eq!(ids(&list(saver, &query(&t1)).await), [ids1[2].clone()]);
    assert_eq!(ids(&list(saver, &query(&t2)).await), [ids2[1].clone()]);
}

/// The latest checkpoint of every namespace stays.
pub async fn prune_keep_latest_across_namespaces(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let root = config_ids(&put_chain(saver, &tid, "", 3, |i| md(Loop, i as i64)).await);
    let child = config_ids(&put_chain(saver, &tid, "child:1", 2, |i| md(Loop, i as i64)).await);
    prune(saver, std::slice::from_ref(&tid), PruneStrategy::KeepLatest).await;
    assert_eq!(ids(&list(saver, &query(&tid)).await), [root[2].clone()]);
    assert_eq!(
        ids(&list(saver, &query(&tid).ns("child:1")).await),
        [child[1].clone()],
        "keep_latest keeps the latest checkpoint of each namespace"
    );
}

/// The kept checkpoint keeps its pending writes.
pub async fn prune_keep_latest_keeps_writes(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let ids_put = setup(saver, &tid, 3).await;
    let latest = cfg(&tid).with_checkpoint_id(&ids_put[2]);
    let task = unique("task");
    put_writes(saver, &latest, vec![("ch", value("val"))], &task, "").await;
    prune(saver, std::slice::from_ref(&tid), PruneStrategy::KeepLatest).await;
    let t = get_some(saver, &cfg(&tid)).await;
    assert_eq!(
        writes_json(&t.pending_writes),
        [(task, "ch".to_owned(), json!("val"))]
    );
}

/// The delete strategy removes the thread.
pub async fn prune_delete_all(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    setup(saver, &tid, 3).await;
    prune(saver, std::slice::from_ref(&tid), PruneStrategy::Delete).await;
    assert!(list(saver, &crate::ListQuery::thread(&tid))
        .await
        .is_empty());
}

/// Threads not listed are untouched.
pub async fn prune_preserves_other_threads(saver: &dyn CheckpointSaver) {
    let (t1, t2) = (thread_id(), thread_id());
    setup(saver, &t1, 3).await;
    setup(saver, &t2, 2).await;
    let before = ids(&list(saver, &query(&t2)).await);
    prune(saver, std::slice::from_ref(&t1), PruneStrategy::KeepLatest).await;
    assert_eq!(ids(&list(saver, &query(&t2)).await), before);
    assert_eq!(before.len(), 2);
}

/// Pruning no threads is not an error.
pub async fn prune_empty_list_noop(saver: &dyn CheckpointSaver) {
    prune(saver, &[], PruneStrategy::KeepLatest).await;
    prune(saver, &[], PruneStrategy::Delete).await;
}

/// Pruning an unknown thread is not an error.
pub async fn prune_nonexistent_noop(saver: &dyn CheckpointSaver) {
    prune(saver, &[thread_id()], PruneStrategy::KeepLatest).await;
    prune(saver, &[thread_id()], PruneStrategy::Delete).await;
}

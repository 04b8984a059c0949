//! `delete_thread`: removing a thread with everything it holds.

use super::support::*;
use crate::CheckpointSaver;

/// After deletion the thread has no checkpoint.
pub async fn delete_thread_removes_checkpoints(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    put_chain(saver, &tid, "", 3, |i| md(Loop, i as i64)).await;
    assert!(get(saver, &cfg(&tid)).await.is_some());
    delete_thread(saver, &tid).await;
    assert!(
        get(saver, &cfg(&tid)).await.is_none(),
        "latest checkpoint survived delete_thread"
    );
    assert!(
        list(saver, &query(&tid)).await.is_empty(),
        "listing still shows checkpoints"
    );
}

/// Deletion takes the pending writes with it.
pub async fn delete_thread_removes_writes(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let stored = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    put_writes(
        saver,
        &stored,
        vec![("ch", value("val"))],
        &unique("task"),
        "",
    )
    .await;
    assert_eq!(get_some(saver, &cfg(&tid)).await.pending_writes.len(), 1);
    delete_thread(saver, &tid).await;
    assert!(get(saver, &cfg(&tid)).await.is_none());
    // Putting the same checkpoint id again must not resurrect the old writes.
    let mut again = crate::Checkpoint::new();
    again.id = id_of(&stored);
    put(saver, &cfg(&tid), again, md(Loop, 0), versions(&[])).await;
    let t = get_some(saver, &stored).await;
    assert!(
        t.pending_writes.is_empty(),
        "writes of a deleted thread came back: {:?}",
        t.pending_writes
    );
}

/// Every namespace of the thread goes.
pub async fn delete_thread_removes_all_namespaces(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    for ns in ["", "child:1"] {
        put_empty(saver, &cfg_ns(&tid, ns), md(Loop, 0)).await;
        assert!(get(saver, &cfg_ns(&tid, ns)).await.is_some());
    }
    delete_thread(saver, &tid).await;
    for ns in ["", "child:1"] {
        assert!(
            get(saver, &cfg_ns(&tid, ns)).await.is_none(),
            "namespace {ns:?} survived delete_thread"
        );
    }
    assert!(list(saver, &crate::ListQuery::thread(&tid))
        .await
        .is_empty());
}

/// Other threads are untouched.
pub async fn delete_thread_preserves_other_threads(saver: &dyn CheckpointSaver) {
    let (t1, t2) = (thread_id(), thread_id());
    put_empty(saver, &cfg(&t1), md(Loop, 0)).await;
    put_empty(saver, &cfg(&t2), md(Loop, 0)).await;
    delete_thread(saver, &t1).await;
    assert!(get(saver, &cfg(&t1)).await.is_none());
    assert!(
        get(saver, &cfg(&t2)).await.is_some(),
        "delete_thread removed another thread"
    );
}

/// Deleting an unknown thread is not an error.
pub async fn delete_thread_nonexistent_noop(saver: &dyn CheckpointSaver) {
    delete_thread(saver, &thread_id()).await;
}

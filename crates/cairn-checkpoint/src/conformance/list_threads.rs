//! `list_threads`: one summary per thread, ordered by thread id and paged with `after`.
//!
//! The store may be shared, so every case names its threads `<unique prefix>/<suffix>` and
//! lists from `after = <prefix>`: every thread id between the prefix and the case's own
//! threads starts with the prefix, so the case's threads come first.

use super::support::*;
use crate::CheckpointSource::Update;
use crate::{CheckpointSaver, ThreadSummary};

async fn list_threads(
    saver: &dyn CheckpointSaver,
    after: Option<&str>,
    limit: usize,
) -> Vec<ThreadSummary> {
    let result = saver.list_threads(after, limit).await;
    ok(result, &format!("list_threads({after:?}, {limit})"))
}

/// The summaries of the threads whose id starts with `prefix`, listed from just before it.
async fn own_threads(saver: &dyn CheckpointSaver, prefix: &str) -> Vec<ThreadSummary> {
    let mut listed = list_threads(saver, Some(prefix), 100).await;
    listed.retain(|t| t.thread_id.starts_with(prefix));
    listed
}

/// Counts cover every namespace; the latest is the root's newest checkpoint (even when a
/// subgraph wrote later), or the newest of any namespace when the thread has no root
/// checkpoint; deleted threads disappear and copied threads appear.
pub async fn list_threads_counts_and_latest(saver: &dyn CheckpointSaver) {
    let prefix = unique("conformance-threads");
    let a = format!("{prefix}/a");
    let b = format!("{prefix}/b");
    let root = put_chain(saver, &a, "", 3, |i| {
        md(Loop, i as i64).with("marker", prefix.as_str())
    })
    .await;
    put_chain(saver, &a, "child:1", 2, |i| md(Loop, 10 + i as i64)).await;
    let child = put_chain(saver, &b, "child:2", 2, |i| md(Input, 20 + i as i64)).await;

    let listed = own_threads(saver, &prefix).await;
    let names: Vec<&str> = listed.iter().map(|t| t.thread_id.as_str()).collect();
    assert_eq!(
        names,
        [a.as_str(), b.as_str()],
        "threads listed in id order"
    );

    let sa = &listed[0];
    assert_eq!(
        sa.checkpoints, 5,
        "checkpoints of all namespaces are counted"
    );
    assert_eq!(sa.namespaces, ["", "child:1"]);
    let latest_root = get_some(saver, &root[2]).await;
    assert_eq!(
        sa.latest.config, root[2],
        "the latest is the root namespace's newest checkpoint, not the subgraph's"
    );
    assert_eq!(sa.latest.metadata, latest_root.metadata);
    assert_eq!(sa.latest.ts, latest_root.checkpoint.ts);

    let sb = &listed[1];
    assert_eq!(sb.checkpoints, 2);
    assert_eq!(sb.namespaces, ["child:2"]);
    assert_eq!(
        sb.latest.config, child[1],
        "without a root checkpoint, the latest of any namespace"
    );
    assert_eq!(sb.latest.metadata.step, Some(21));

    // A later root checkpoint becomes the latest.
    let newer = put_empty(saver, &root[2], md(Update, 3)).await;
    // Copies appear with the same counts; deleted threads disappear.
    let c = format!("{prefix}/c");
    copy_thread(saver, &a, &c).await;
    delete_thread(saver, &b).await;
    let listed = own_threads(saver, &prefix).await;
    let names: Vec<&str> = listed.iter().map(|t| t.thread_id.as_str()).collect();
    assert_eq!(names, [a.as_str(), c.as_str()]);
    assert_eq!(listed[0].checkpoints, 6);
    assert_eq!(listed[0].latest.config, newer);
    assert_eq!(listed[0].latest.metadata.source, Some(Update));
    assert_eq!(listed[1].checkpoints, 6, "a copy has as many checkpoints");
    assert_eq!(listed[1].namespaces, ["", "child:1"]);
    assert_eq!(
        listed[1].latest.config.checkpoint_id, newer.checkpoint_id,
        "copy_thread keeps checkpoint ids"
    );
    assert_eq!(listed[1].latest.config.thread_id, c);
}

/// Paging with `after` and `limit` visits every thread once, in thread id order.
pub async fn list_threads_pages_in_order(saver: &dyn CheckpointSaver) {
    let prefix = unique("conformance-threads");
    // Written out of order; listed in id order.
    let suffixes = ["d", "a", "e", "c", "b"];
    for s in suffixes {
        put_empty(saver, &cfg(&format!("{prefix}/{s}")), md(Loop, 0)).await;
    }
    let expected: Vec<String> = ["a", "b", "c", "d", "e"]
        .iter()
        .map(|s| format!("{prefix}/{s}"))
        .collect();

    assert!(
        list_threads(saver, Some(&prefix), 0).await.is_empty(),
        "limit 0"
    );
    let mut seen = Vec::new();
    let mut after = prefix.clone();
    loop {
        let page = list_threads(saver, Some(&after), 2).await;
        assert!(page.len() <= 2, "a page holds at most `limit` threads");
        let own: Vec<String> = page
            .iter()
            .map(|t| t.thread_id.clone())
            .take_while(|t| t.starts_with(&prefix))
            .collect();
        for w in page.windows(2) {
            assert!(w[0].thread_id < w[1].thread_id, "ordered by thread id");
        }
        if let Some(first) = page.first() {
            assert!(first.thread_id > after, "`after` is exclusive");
        }
        seen.extend(own.iter().cloned());
        if own.len() < 2 {
            break;
        }
        after = own[1].clone();
        assert!(
            seen.len() <= expected.len(),
            "paging repeats threads: {seen:?}"
        );
    }
    assert_eq!(seen, expected);
    let last = list_threads(saver, Some(&expected[3]), 1).await;
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].thread_id, expected[4]);
    assert_eq!(last[0].checkpoints, 1);
}

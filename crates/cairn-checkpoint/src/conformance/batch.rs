//! `put_batch` (Cairn's own): several checkpoints, each with its tasks' writes, stored in
//! order in one call.

use serde_json::json;

use super::support::*;
use crate::{
    ChannelVersion, Checkpoint, CheckpointConfig, CheckpointSaver, Error, PutRequest, TaskWrites,
    TypedValue,
};

fn task_writes(task: &str, path: &str, writes: &[(&str, TypedValue)]) -> TaskWrites {
    TaskWrites {
        task_id: task.to_owned(),
        task_path: path.to_owned(),
        writes: writes
            .iter()
            .map(|(c, v)| ((*c).to_owned(), v.clone()))
            .collect(),
    }
}

fn request(
    parent: &CheckpointConfig,
    checkpoint: &Checkpoint,
    step: i64,
    writes: Vec<TaskWrites>,
) -> PutRequest {
    PutRequest {
        config: parent.clone(),
        writes,
        new_versions: checkpoint.channel_versions.clone(),
        checkpoint: checkpoint.clone(),
        metadata: md(Loop, step),
    }
}

/// A batch of three checkpoints, each the child of the one before (the first child of a
/// checkpoint stored earlier), stores each one with its parent, its values (an append value
/// whose base is stored earlier in the same batch included) and its tasks' writes on its
/// parent, returns their configs in order, and changes nothing when sent again.
pub async fn put_batch_stores_checkpoints_in_order(saver: &dyn CheckpointSaver) {
    stores_checkpoints_in_order(saver, false).await;
}

/// [`put_batch_now`](CheckpointSaver::put_batch_now) (what a run ending calls; savers may
/// store on the calling thread) has the effects of `put_batch`: the same case through it.
pub async fn put_batch_now_stores_checkpoints_in_order(saver: &dyn CheckpointSaver) {
    stores_checkpoints_in_order(saver, true).await;
}

async fn stores_checkpoints_in_order(saver: &dyn CheckpointSaver, now: bool) {
    let tid = thread_id();
    let codec = codec();
    let root = put_empty(saver, &cfg(&tid), md(Input, -1)).await;
    let root_id = id_of(&root);
    let v1 = ChannelVersion::first_after(None);
    let v2 = ChannelVersion::first_after(Some(&v1));

    let mut first = Checkpoint::new();
    first.channel_values.insert(
        "messages".into(),
        ok(codec.encode(&["a"]), "encoding a list"),
    );
    first.channel_versions.insert("messages".into(), v1.clone());
    let mut second = first.successor();
    second.channel_values.insert(
        "messages".into(),
        ok(
            codec.encode_append(&v1, ["b", "c"].iter()),
            "encoding an append value",
        ),
    );
    second
        .channel_versions
        .insert("messages".into(), v2.clone());
    let mut third = second.successor();
    third.channel_values.clear();
    third.channel_values.insert("count".into(), value(&3));
    let count_version = ChannelVersion::first_after(None);
    third
        .channel_versions
        .insert("count".into(), count_version.clone());
    let (first_id, second_id, third_id) = (first.id.clone(), second.id.clone(), third.id.clone());
    let at = |id: &str| cfg(&tid).with_checkpoint_id(id);

    let batch = vec![
        request(
            &root,
            &first,
            0,
            vec![task_writes("t-root", "~a", &[("messages", value(&["a"]))])],
        ),
        request(
            &at(&first_id),
            &second,
            1,
            vec![
                task_writes("t-b", "~b", &[("messages", value(&["b"]))]),
                task_writes("t-c", "~c", &[("messages", value(&["c"]))]),
            ],
        ),
        PutRequest {
            new_versions: [("count".to_owned(), count_version)].into(),
            ..request(&at(&second_id), &third, 2, Vec::new())
        },
    ];
    for attempt in 0..2 {
        let stored = if now {
            ok(saver.put_batch_now(batch.clone()).await, "put_batch_now")
        } else {
            ok(saver.put_batch(batch.clone()).await, "put_batch")
        };
        assert_eq!(
            config_ids(&stored),
            [first_id.clone(), second_id.clone(), third_id.clone()],
            "call {attempt}: the configs of the stored checkpoints, in order"
        );
        assert!(stored
            .iter()
            .all(|c| c.thread_id == tid && c.checkpoint_ns.is_empty()));

        let history = list(saver, &query(&tid)).await;
        assert_eq!(
            ids(&history),
            [
                third_id.clone(),
                second_id.clone(),
                first_id.clone(),
                root_id.clone()
            ],
            "call {attempt}: every checkpoint once"
        );
        let parent_of = |i: usize| {
            history[i]
                .parent_config
                .as_ref()
                .and_then(|p| p.checkpoint_id.clone())
        };
        assert_eq!(parent_of(0).as_deref(), Some(second_id.as_str()));
        assert_eq!(parent_of(1).as_deref(), Some(first_id.as_str()));
        assert_eq!(parent_of(2).as_deref(), Some(root_id.as_str()));

        let messages = |i: usize| json(&history[i].checkpoint.channel_values["messages"]);
        assert_eq!(
            messages(0),
            json!(["a", "b", "c"]),
            "the third keeps the list"
        );
        assert_eq!(
            messages(1),
            json!(["a", "b", "c"]),
            "the append value reads whole"
        );
        assert_eq!(messages(2), json!(["a"]));
        assert_eq!(
            json(&history[0].checkpoint.channel_values["count"]),
            json!(3)
        );
        assert_eq!(history[0].metadata.step, Some(2));

        let w = |t: &str, v: serde_json::Value| (t.to_owned(), "messages".to_owned(), v);
        assert_eq!(
            writes_json(&history[3].pending_writes),
            [w("t-root", json!(["a"]))],
            "the first request's writes belong to the root"
        );
        assert_eq!(
            writes_json(&history[2].pending_writes),
            [w("t-b", json!(["b"])), w("t-c", json!(["c"]))],
            "both tasks' writes belong to the first checkpoint of the batch"
        );
        assert!(history[1].pending_writes.is_empty());
        assert!(history[0].pending_writes.is_empty());
    }
    assert!(
        ok(saver.put_batch(Vec::new()).await, "an empty put_batch").is_empty(),
        "an empty batch stores nothing"
    );
}

/// A request that cannot be stored (writes for a parent config without a checkpoint id, even a
/// task's empty writes) fails the batch with `InvalidArgument`; neither it nor any request
/// after it is stored.
pub async fn put_batch_stops_at_a_failing_request(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let root = put_empty(saver, &cfg(&tid), md(Input, -1)).await;
    let good = checkpoint(&[("a", value(&1))], &[("a", 1)]);
    let bad = checkpoint(&[("a", value(&2))], &[("a", 2)]);
    let after = checkpoint(&[("a", value(&3))], &[("a", 3)]);
    let batch = vec![
        request(&root, &good, 0, Vec::new()),
        request(
            &cfg(&tid),
            &bad,
            1,
            vec![task_writes("t", "", &[("a", value(&2))])],
        ),
        request(&root, &after, 2, Vec::new()),
    ];
    match saver.put_batch(batch).await {
        Err(Error::InvalidArgument(_)) => {}
        other => {
            panic!("expected InvalidArgument for writes without a checkpoint id, got {other:?}")
        }
    }
    let stored = ids(&list(saver, &query(&tid)).await);
    assert!(
        !stored.contains(&bad.id) && !stored.contains(&after.id),
        "nothing from the failing request on: {stored:?}"
    );
    assert!(stored.contains(&id_of(&root)), "earlier checkpoints stay");
    // A task that wrote nothing still needs the checkpoint its writes would belong to.
    let orphan = checkpoint(&[("a", value(&4))], &[("a", 4)]);
    match saver
        .put_batch(vec![request(
            &cfg(&tid),
            &orphan,
            3,
            vec![task_writes("t", "", &[])],
        )])
        .await
    {
        Err(Error::InvalidArgument(_)) => {}
        other => panic!(
            "expected InvalidArgument for a task's (empty) writes without a checkpoint id, got \
             {other:?}"
        ),
    }
    let stored = ids(&list(saver, &query(&tid)).await);
    assert!(!stored.contains(&orphan.id), "{stored:?}");
}

/// A large batch (41 requests: a chain of 40 with two tasks' regular and special writes each,
/// and a fork that repeats a task's writes on a checkpoint of the chain and a value already in
/// the batch) stores exactly what storing the same requests one call each stores: the same
/// history, values and pending writes. The first regular write of a task at an index is kept,
/// the last special write (and the last value of a channel version) wins, in a batch as one by
/// one. Savers that store batches with multi-row statements split them in chunks; 41 crosses
/// several chunk sizes.
pub async fn put_batch_matches_one_call_per_request(saver: &dyn CheckpointSaver) {
    let (batched, one_by_one) = (thread_id(), thread_id());
    let requests = |tid: &str| {
        let mut requests = Vec::new();
        let mut parent = cfg(tid);
        let mut cp = Checkpoint::new();
        let mut fork_parent = None;
        let mut fork_version = None;
        for step in 0..40i64 {
            let mut next = cp.successor();
            next.channel_values.clear();
            let v = ChannelVersion::first_after(next.channel_versions.get("n"));
            next.channel_values.insert("n".into(), value(&step));
            next.channel_versions.insert("n".into(), v.clone());
            let writes = if parent.checkpoint_id.is_some() {
                vec![
                    task_writes(
                        "t-a",
                        "~a",
                        &[
                            ("n", value(&step)),
                            ("__error__", value(&format!("a{step}"))),
                        ],
                    ),
                    task_writes("t-b", "~b", &[("log", value(&[step]))]),
                ]
            } else {
                Vec::new()
            };
            let mut r = request(&parent, &next, step, writes);
            r.new_versions = [("n".to_owned(), v.clone())].into();
            requests.push(r);
            if step == 5 {
                fork_parent = Some(parent.clone());
                fork_version = Some(v);
            }
            parent = cfg(tid).with_checkpoint_id(&next.id);
            cp = next;
        }
        // A fork from the parent of step 5: same task, same indexes, another value for the
        // version step 5 stored.
        if let (Some(fork_parent), Some(v)) = (fork_parent, fork_version) {
            let mut fork = Checkpoint::new();
            fork.channel_values.insert("n".into(), value(&"fork"));
            fork.channel_versions.insert("n".into(), v.clone());
            let mut r = request(
                &fork_parent,
                &fork,
                5,
                vec![task_writes(
                    "t-a",
                    "~a",
                    &[("n", value(&"again")), ("__error__", value(&"fork"))],
                )],
            );
            r.new_versions = [("n".to_owned(), v)].into();
            requests.push(r);
        }
        requests
    };
    let batch = requests(&batched);
    assert_eq!(batch.len(), 41);
    let ids_in_batch: Vec<String> = batch.iter().map(|r| r.checkpoint.id.clone()).collect();
    let stored = ok(saver.put_batch(batch).await, "put_batch of 41 requests");
    assert_eq!(config_ids(&stored), ids_in_batch);
    for (i, r) in requests(&one_by_one).into_iter().enumerate() {
        ok(
            saver.put_batch(vec![r]).await,
            &format!("put_batch of request {i} alone"),
        );
    }

    // Compare everything but the thread ids (and checkpoint ids, new per call of `requests`).
    let view = |history: &[crate::CheckpointTuple]| -> Vec<serde_json::Value> {
        history
            .iter()
            .map(|t| {
                let values: Vec<(String, serde_json::Value)> = t
                    .checkpoint
                    .channel_values
                    .iter()
                    .map(|(c, v)| (c.clone(), json(v)))
                    .collect();
                json!({
                    "step": t.metadata.step,
                    "has_parent": t.parent_config.is_some(),
                    "values": values,
                    "writes": writes_json(&t.pending_writes),
                })
            })
            .collect()
    };
    let a = list(saver, &query(&batched)).await;
    let b = list(saver, &query(&one_by_one)).await;
    assert_eq!(a.len(), 41);
    assert_eq!(
        view(&a),
        view(&b),
        "a batch stores what one call per request stores"
    );
    let fork_parent = a
        .iter()
        .find(|t| {
            t.pending_writes
                .iter()
                .any(|w| w.channel == "__error__" && json(&w.value) == json!("fork"))
        })
        .expect("the fork's special write replaced the chain's");
    let regular: Vec<_> = fork_parent
        .pending_writes
        .iter()
        .filter(|w| w.task_id == "t-a" && w.channel == "n")
        .map(|w| json(&w.value))
        .collect();
    assert_eq!(regular, [json!(5)], "the first regular write is kept");
}

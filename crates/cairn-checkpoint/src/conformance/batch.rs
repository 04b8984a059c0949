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
        let stored = ok(saver.put_batch(batch.clone()).await, "put_batch");
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

/// A request that cannot be stored (writes for a parent config without a checkpoint id) fails
/// the batch with `InvalidArgument`; neither it nor any request after it is stored.
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
}

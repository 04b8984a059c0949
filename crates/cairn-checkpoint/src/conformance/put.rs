//! `put`: storing checkpoints, their values, versions, metadata and parents.

use serde_json::json;

use super::support::*;
use crate::{ChannelVersion, CheckpointSaver};

/// `put` returns a config naming the thread, the namespace and the stored checkpoint's id.
pub async fn put_returns_config(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let cp = checkpoint(&[("k", value("v"))], &[("k", 1)]);
    let id = cp.id.clone();
    let stored = put(saver, &cfg(&tid), cp, md(Loop, 0), versions(&[("k", 1)])).await;
    assert_eq!(stored.thread_id, tid, "put returned another thread id");
    assert_eq!(stored.checkpoint_ns, "", "put returned another namespace");
    assert_eq!(
        stored.checkpoint_id.as_deref(),
        Some(id.as_str()),
        "put must return the stored checkpoint's id"
    );
}

/// A stored checkpoint reads back with its id and its channel values, exactly.
pub async fn put_roundtrip(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let cp = checkpoint(&[("msg", value("hello"))], &[("msg", 1)]);
    let id = cp.id.clone();
    let stored = put(
        saver,
        &cfg(&tid),
        cp,
        md(Input, -1),
        versions(&[("msg", 1)]),
    )
    .await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.checkpoint.id, id);
    assert_eq!(
        t.checkpoint.channel_values,
        values(&[("msg", value("hello"))]),
        "channel_values must round-trip exactly"
    );
}

/// Strings, integers, lists and nested maps round-trip with their types.
pub async fn put_preserves_channel_values(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let vals = [
        ("str_val", value("hello")),
        ("int_val", value(&42)),
        ("list_val", value(&[1, 2, 3])),
        ("dict_val", value(&json!({"nested": true}))),
    ];
    let vers = [
        ("str_val", 1),
        ("int_val", 1),
        ("list_val", 1),
        ("dict_val", 1),
    ];
    let stored = put(
        saver,
        &cfg(&tid),
        checkpoint(&vals, &vers),
        md(Loop, 0),
        versions(&vers),
    )
    .await;
    let t = get_some(saver, &stored).await;
    for (channel, expected) in &vals {
        let actual = t.checkpoint.channel_values.get(*channel);
        assert_eq!(
            actual,
            Some(expected),
            "channel {channel:?} did not round-trip"
        );
    }
    let dict = json(&t.checkpoint.channel_values["dict_val"]);
    assert_eq!(
        dict,
        json!({"nested": true}),
        "a nested bool must stay a bool"
    );
    assert_eq!(json(&t.checkpoint.channel_values["int_val"]), json!(42));
}

/// `channel_versions` round-trip.
pub async fn put_preserves_channel_versions(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let vers = [("a", 1), ("b", 2)];
    let cp = checkpoint(&[("a", value("x")), ("b", value("y"))], &vers);
    let stored = put(saver, &cfg(&tid), cp, md(Loop, 0), versions(&vers)).await;
    let t = get_some(saver, &stored).await;
    for (channel, expected) in vers {
        let actual = t.checkpoint.channel_versions.get(channel);
        assert_eq!(
            actual,
            Some(&ChannelVersion::Int(expected)),
            "version of channel {channel:?} changed on the way through the saver"
        );
    }
}

/// `versions_seen` keeps every node.
pub async fn put_preserves_versions_seen(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let mut cp = checkpoint(&[], &[]);
    cp.versions_seen
        .insert("node1".into(), versions(&[("ch", 1)]));
    cp.versions_seen
        .insert("node2".into(), versions(&[("ch", 2)]));
    let stored = put(saver, &cfg(&tid), cp, md(Loop, 0), versions(&[])).await;
    let t = get_some(saver, &stored).await;
    for node in ["node1", "node2"] {
        assert!(
            t.checkpoint.versions_seen.contains_key(node),
            "versions_seen lost node {node:?}: {:?}",
            t.checkpoint.versions_seen
        );
    }
}

/// Source, step and caller keys of the metadata round-trip.
pub async fn put_preserves_metadata(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let meta = md(Loop, 3).with("custom_key", "custom_value");
    let stored = put_empty(saver, &cfg(&tid), meta).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.metadata.source, Some(Loop));
    assert_eq!(t.metadata.step, Some(3));
    assert_eq!(
        t.metadata.extra.get("custom_key"),
        Some(&json!("custom_value")),
        "caller metadata keys must round-trip"
    );
}

/// A checkpoint in the root namespace reads back in the root namespace.
pub async fn put_root_namespace(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let stored = put_empty(saver, &cfg_ns(&tid, ""), md(Loop, 0)).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.config.checkpoint_ns, "");
}

/// A checkpoint in a child namespace reads back in that namespace.
pub async fn put_child_namespace(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let stored = put_empty(saver, &cfg_ns(&tid, "child:abc"), md(Loop, 0)).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.config.checkpoint_ns, "child:abc");
}

/// A config that leaves the namespace out (deserialized without `checkpoint_ns`) stores into
/// the root namespace and reads back.
pub async fn put_default_namespace(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let config: crate::CheckpointConfig = match serde_json::from_value(json!({ "thread_id": tid }))
    {
        Ok(c) => c,
        Err(e) => panic!("a config without checkpoint_ns must deserialize: {e}"),
    };
    let stored = put_empty(saver, &config, md(Loop, 0)).await;
    assert_eq!(
        stored.checkpoint_ns, "",
        "the default namespace is the root namespace"
    );
    assert!(
        get(saver, &stored).await.is_some(),
        "stored checkpoint not found"
    );
    assert!(
        get(saver, &cfg(&tid)).await.is_some(),
        "not found as the thread's latest"
    );
}

/// Every checkpoint of a chain stays readable by its id.
pub async fn put_multiple_checkpoints_same_thread(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let chain = put_chain(saver, &tid, "", 3, |i| md(Loop, i as i64)).await;
    for id in config_ids(&chain) {
        let t = get_some(saver, &cfg(&tid).with_checkpoint_id(&id)).await;
        assert_eq!(t.checkpoint.id, id);
    }
}

/// Two threads writing the same channel at the same version do not see each other's value.
pub async fn put_multiple_threads_isolated(saver: &dyn CheckpointSaver) {
    let (t1, t2) = (thread_id(), thread_id());
    for (tid, v) in [(&t1, "thread1"), (&t2, "thread2")] {
        let cp = checkpoint(&[("x", value(v))], &[("x", 1)]);
        put(saver, &cfg(tid), cp, md(Loop, 0), versions(&[("x", 1)])).await;
    }
    for (tid, v) in [(&t1, "thread1"), (&t2, "thread2")] {
        let t = get_some(saver, &cfg(tid)).await;
        assert_eq!(
            t.checkpoint.channel_values.get("x"),
            Some(&value(v)),
            "thread {tid} sees another thread's value"
        );
    }
}

/// The checkpoint named by `put`'s config becomes the parent.
pub async fn put_parent_config(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let first = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    let second = put_empty(saver, &first, md(Loop, 1)).await;
    let t = get_some(saver, &second).await;
    let parent = t
        .parent_config
        .expect("the second checkpoint must have a parent_config");
    assert_eq!(parent.checkpoint_id, first.checkpoint_id);
}

/// A channel not in `new_versions` is read from the version an earlier checkpoint stored.
pub async fn put_incremental_channel_update(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let cp1 = checkpoint(
        &[("a", value("v1")), ("b", value("v2"))],
        &[("a", 1), ("b", 1)],
    );
    let s1 = put(
        saver,
        &cfg(&tid),
        cp1,
        md(Loop, 0),
        versions(&[("a", 1), ("b", 1)]),
    )
    .await;
    let cp2 = checkpoint(
        &[("a", value("v1_updated")), ("b", value("v2"))],
        &[("a", 2), ("b", 1)],
    );
    let s2 = put(saver, &s1, cp2, md(Loop, 1), versions(&[("a", 2)])).await;
    let t2 = get_some(saver, &s2).await;
    assert_eq!(
        t2.checkpoint.channel_values,
        values(&[("a", value("v1_updated")), ("b", value("v2"))])
    );
    let t1 = get_some(saver, &s1).await;
    assert_eq!(
        t1.checkpoint.channel_values,
        values(&[("a", value("v1")), ("b", value("v2"))]),
        "the older checkpoint must still read its own versions"
    );
}

/// A channel added in a later checkpoint reads back with the old ones.
pub async fn put_new_channel_added(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let cp1 = checkpoint(&[("a", value("v1"))], &[("a", 1)]);
    let s1 = put(saver, &cfg(&tid), cp1, md(Loop, 0), versions(&[("a", 1)])).await;
    let cp2 = checkpoint(
        &[("a", value("v1")), ("b", value("new_channel"))],
        &[("a", 1), ("b", 1)],
    );
    let s2 = put(saver, &s1, cp2, md(Loop, 1), versions(&[("b", 1)])).await;
    let t2 = get_some(saver, &s2).await;
    assert_eq!(
        t2.checkpoint.channel_values,
        values(&[("a", value("v1")), ("b", value("new_channel"))])
    );
}

/// A channel dropped from `channel_versions` is absent from the read checkpoint.
pub async fn put_channel_removed(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let cp1 = checkpoint(
        &[("a", value("v1")), ("b", value("v2"))],
        &[("a", 1), ("b", 1)],
    );
    let s1 = put(
        saver,
        &cfg(&tid),
        cp1,
        md(Loop, 0),
        versions(&[("a", 1), ("b", 1)]),
    )
    .await;
    let cp2 = checkpoint(&[("a", value("v1_updated"))], &[("a", 2)]);
    let s2 = put(saver, &s1, cp2, md(Loop, 1), versions(&[("a", 2)])).await;
    let t2 = get_some(saver, &s2).await;
    assert_eq!(
        t2.checkpoint.channel_values.get("a"),
        Some(&value("v1_updated"))
    );
    assert!(
        !t2.checkpoint.channel_values.contains_key("b"),
        "channel b is not in the checkpoint's channel_versions, so it must not be read back"
    );
}

/// The metadata `run_id` round-trips.
pub async fn put_preserves_run_id(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let run = unique("run");
    let stored = put_empty(saver, &cfg(&tid), md(Loop, 0).with_run_id(&run)).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.metadata.run_id.as_deref(), Some(run.as_str()));
}

/// Every node and channel of `versions_seen` round-trips with its version.
pub async fn put_preserves_versions_seen_values(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let mut cp = checkpoint(&[], &[]);
    cp.versions_seen
        .insert("node1".into(), versions(&[("ch_a", 1), ("ch_b", 2)]));
    cp.versions_seen
        .insert("node2".into(), versions(&[("ch_a", 3)]));
    let expected = cp.versions_seen.clone();
    let stored = put(saver, &cfg(&tid), cp, md(Loop, 0), versions(&[])).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.checkpoint.versions_seen, expected);
}

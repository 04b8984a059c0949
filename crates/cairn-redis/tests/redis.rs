//! Behaviour particular to the Redis saver, against a real server: key layout, native TTL,
//! lazy cleanup of expired entries, corrupt data, reopening, concurrency and large values.
//! Each test uses its own key prefix and deletes its keys at the end.

mod support;

use std::sync::Arc;
use std::time::Duration;

use cairn_checkpoint::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointSource, Error, ListQuery, PruneStrategy, TypedValue, ValueCodec,
};
use cairn_redis::{KeyLayout, RedisOptions, RedisSaver};

/// Saves a checkpoint with `values` (every channel at a fresh version) as a child of
/// `parent`, returning its config.
async fn put_values(
    saver: &dyn CheckpointSaver,
    parent: &CheckpointConfig,
    values: &[(&str, TypedValue)],
    metadata: CheckpointMetadata,
) -> CheckpointConfig {
    let mut cp = Checkpoint::new();
    let mut new_versions = ChannelVersions::new();
    for (channel, value) in values {
        let version = saver.get_next_version(None);
        cp.channel_values.insert((*channel).into(), value.clone());
        cp.channel_versions
            .insert((*channel).into(), version.clone());
        new_versions.insert((*channel).into(), version);
    }
    saver
        .put(parent, cp, metadata, new_versions)
        .await
        .expect("put")
}

fn meta(step: i64) -> CheckpointMetadata {
    CheckpointMetadata::new(CheckpointSource::Loop, step)
}

fn json(value: serde_json::Value) -> TypedValue {
    ValueCodec::new(cairn_checkpoint::Format::Json)
        .encode(&value)
        .expect("encode")
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("PTTL")
}

async fn keys_matching(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        out.extend(keys);
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

/// Escapes glob characters so a key prefix can be matched literally.
fn glob_literal(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '*' | '?' | '[' | ']' | '\\' => vec!['\\', c],
            c => vec![c],
        })
        .collect()
}

#[tokio::test]
async fn data_survives_dropping_and_reopening_the_saver() {
    let options = support::options("reopen");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let thread = CheckpointConfig::thread("reopen");
    let first = put_values(&saver, &thread, &[("a", json(1.into()))], meta(0)).await;
    let second = put_values(&saver, &first, &[("b", json("x".into()))], meta(1)).await;
    saver
        .put_writes(&second, vec![("c".into(), json(true.into()))], "task", "")
        .await
        .expect("put_writes");
    let before = saver.get_tuple(&thread).await.expect("get").expect("saved");
    let history_before = saver
        .list(&ListQuery::thread("reopen"))
        .await
        .expect("list");
    drop(saver);

    let reopened = support::saver(options.clone()).await.expect("saver");
    let after = reopened
        .get_tuple(&thread)
        .await
        .expect("get")
        .expect("still there");
    assert_eq!(after, before);
    assert_eq!(after.config, second);
    assert_eq!(after.parent_config, Some(first));
    assert_eq!(after.pending_writes.len(), 1);
    let history_after = reopened
        .list(&ListQuery::thread("reopen"))
        .await
        .expect("list");
    assert_eq!(history_after, history_before);
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn ttl_is_set_on_every_thread_key_and_refreshed_on_read() {
    let ttl = Duration::from_secs(600);
    let options = support::options("ttl")
        .with_ttl(ttl)
        .with_refresh_ttl_on_read(true);
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let thread = "ttl-thread";
    let cfg = CheckpointConfig::thread(thread);
    let saved = put_values(
        &saver,
        &cfg,
        &[("a", json(1.into()))],
        meta(0).with_run_id("run-ttl"),
    )
    .await;
    saver
        .put_writes(&saved, vec![("w".into(), json(2.into()))], "task", "")
        .await
        .expect("put_writes");

    // Every key of the thread (found by scanning its hash tag) and the global indexes expire.
    let tag = keys.thread_tag(thread);
    let mut thread_keys = keys_matching(&mut conn, &format!("{}*", glob_literal(&tag))).await;
    thread_keys.sort();
    assert!(
        thread_keys.len() >= 7,
        "checkpoint, index, values, writes, namespaces, key set, run index: {thread_keys:?}"
    );
    let global = [keys.threads_key(), keys.run_threads_key("run-ttl")];
    let key_set = keys.thread_keys_key(thread);
    for key in thread_keys.iter().chain(&global) {
        let left = pttl(&mut conn, key).await;
        // The key set outlives every key it names: values kept alive chain-wise may live
        // up to two TTLs.
        let limit = if *key == key_set { 1_200_000 } else { 600_000 };
        assert!(
            left > 0 && left <= limit,
            "{key} should expire within its TTL, PTTL is {left}"
        );
    }
    assert!(
        pttl(&mut conn, &key_set).await > 600_000,
        "the key set expires no sooner than the values it names"
    );

    // Shorten the expiry by hand; a read extends it again.
    let id = saved.checkpoint_id.clone().expect("id");
    let cp_key = keys.checkpoint_key(thread, "", &id);
    support::expire_in(&mut conn, thread_keys.iter().chain(&global), 5_000).await;
    let tuple = saver.get_tuple(&cfg).await.expect("get").expect("saved");
    assert_eq!(tuple.pending_writes.len(), 1);
    for key in thread_keys.iter().chain(&global) {
        let left = pttl(&mut conn, key).await;
        assert!(
            left > 5_000,
            "{key} should have been refreshed by the read, PTTL is {left}"
        );
    }

    // A read that leaves out values the caller holds refreshes them too: they must outlive
    // the checkpoint's other keys no less than a full read would make them.
    support::expire_in(&mut conn, thread_keys.iter().chain(&global), 5_000).await;
    let known = cairn_checkpoint::KnownValues {
        checkpoint_id: &id,
        channels: &["a"],
    };
    saver
        .get_tuple_known(&cfg, known)
        .await
        .expect("get")
        .expect("saved");
    for key in thread_keys.iter().chain(&global) {
        let left = pttl(&mut conn, key).await;
        assert!(
            left > 5_000,
            "{key} should have been refreshed by the read naming held values, PTTL is {left}"
        );
    }

    // A saver that does not refresh on read leaves the expiry alone.
    let no_refresh = support::saver(options.clone().with_refresh_ttl_on_read(false))
        .await
        .expect("saver");
    let _: () = redis::cmd("PEXPIRE")
        .arg(&cp_key)
        .arg(5_000)
        .query_async(&mut conn)
        .await
        .expect("PEXPIRE");
    no_refresh
        .get_tuple(&cfg)
        .await
        .expect("get")
        .expect("saved");
    no_refresh
        .list(&ListQuery::thread(thread))
        .await
        .expect("list");
    let left = pttl(&mut conn, &cp_key).await;
    assert!(
        left <= 5_000,
        "read without refresh kept PTTL ≤ 5000, got {left}"
    );

    // A value written by an older checkpoint lives as long as the newest one referring to it.
    let a_version = tuple.checkpoint.channel_versions["a"].to_storage_string();
    let a_key = keys.blob_key(thread, "", "a", &a_version);
    let _: () = redis::cmd("PEXPIRE")
        .arg(&a_key)
        .arg(5_000)
        .query_async(&mut conn)
        .await
        .expect("PEXPIRE");
    let mut next = tuple.checkpoint.successor();
    next.channel_values.clear();
    saver
        .put(&saved, next, meta(1), ChannelVersions::new())
        .await
        .expect("put");
    let left = pttl(&mut conn, &a_key).await;
    assert!(
        left > 5_000,
        "a put referring to {a_key} extends it, PTTL is {left}"
    );

    // Without a TTL nothing expires.
    let plain = support::saver(support::options("ttl-none"))
        .await
        .expect("saver");
    let saved = put_values(&plain, &cfg, &[("a", json(1.into()))], meta(0)).await;
    let plain_key =
        plain
            .key_layout()
            .checkpoint_key(thread, "", saved.checkpoint_id.as_deref().expect("id"));
    assert_eq!(
        pttl(&mut conn, &plain_key).await,
        -1,
        "no expiry without a TTL"
    );

    support::delete_prefix(&url, &options.key_prefix).await;
    support::delete_prefix(&url, &support::prefix("ttl-none")).await;
}

#[tokio::test]
async fn expired_checkpoints_vanish_from_reads_and_indexes() {
    let options = support::options("expiry");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let thread = "expiring";
    let cfg = CheckpointConfig::thread(thread);
    let first = put_values(&saver, &cfg, &[("a", json(1.into()))], meta(0)).await;
    let second = put_values(&saver, &first, &[("a", json(2.into()))], meta(1)).await;
    let second_id = second.checkpoint_id.clone().expect("id");

    // What a Redis expiry does: the checkpoint's hash disappears, its index entry stays.
    let _: () = redis::cmd("DEL")
        .arg(keys.checkpoint_key(thread, "", &second_id))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let latest = saver
        .get_tuple(&cfg)
        .await
        .expect("get")
        .expect("older one");
    assert_eq!(latest.config, first, "the expired latest is skipped");
    let indexed: Vec<String> = redis::cmd("ZRANGE")
        .arg(keys.checkpoints_key(thread, ""))
        .arg(0)
        .arg(-1)
        .query_async(&mut conn)
        .await
        .expect("ZRANGE");
    assert_eq!(indexed, [first.checkpoint_id.clone().expect("id")]);
    assert!(saver.get_tuple(&second).await.expect("get").is_none());

    // A whole thread expiring drops out of the global thread index on the next listing.
    let _: () = redis::cmd("DEL")
        .arg(keys.namespaces_key(thread))
        .arg(keys.checkpoints_key(thread, ""))
        .query_async(&mut conn)
        .await
        .expect("DEL");
    let all = saver.list(&ListQuery::all()).await.expect("list");
    assert!(all.iter().all(|t| t.config.thread_id != thread));
    let still_indexed: bool = redis::cmd("SISMEMBER")
        .arg(keys.threads_key())
        .arg(thread)
        .query_async(&mut conn)
        .await
        .expect("SISMEMBER");
    assert!(!still_indexed, "the expired thread left the global index");
    support::delete_prefix(&url, &options.key_prefix).await;
}

/// `list_threads` finds a thread's newest checkpoint that has not expired however many newer
/// ones expired before their index entries were dropped (each met once is dropped).
#[tokio::test]
async fn list_threads_skips_any_number_of_expired_newest_checkpoints() {
    let options = support::options("expired-newest");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let thread = "many-expired";
    let mut stored = vec![CheckpointConfig::thread(thread)];
    for step in 0..20 {
        let parent = stored.last().expect("parent").clone();
        stored.push(put_values(&saver, &parent, &[("a", json(step.into()))], meta(step)).await);
    }
    // What Redis expiries do: the 17 newest hashes disappear, their index entries stay.
    for config in &stored[4..] {
        let id = config.checkpoint_id.as_deref().expect("id");
        let _: () = redis::cmd("DEL")
            .arg(keys.checkpoint_key(thread, "", id))
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
    let threads = saver.list_threads(None, 10).await.expect("list_threads");
    let summary = threads
        .iter()
        .find(|t| t.thread_id == thread)
        .expect("the thread is listed");
    assert_eq!(
        summary.latest.config, stored[3],
        "the newest live checkpoint"
    );
    assert_eq!(
        summary.checkpoints, 3,
        "the expired entries met are dropped"
    );
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn awkward_thread_ids_and_namespaces_stay_apart_in_one_hash_tag() {
    let options = support::options("awkward");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let names = [
        ("a:b", ""),
        ("a", "b"),
        ("a", ":b"),
        ("{a}", "}{"),
        ("{a", "x"),
        ("线程 🧵", "子图:ñ|x"),
        ("", ""),
    ];
    for (i, (thread, ns)) in names.iter().enumerate() {
        let cfg = CheckpointConfig::thread(*thread).with_ns(*ns);
        let saved = put_values(&saver, &cfg, &[("v", json((i as i64).into()))], meta(0)).await;
        saver
            .put_writes(&saved, vec![("w".into(), json((i as i64).into()))], "t", "")
            .await
            .expect("put_writes");
    }
    let codec = ValueCodec::default();
    for (i, (thread, ns)) in names.iter().enumerate() {
        let cfg = CheckpointConfig::thread(*thread).with_ns(*ns);
        let tuple = saver.get_tuple(&cfg).await.expect("get").expect("saved");
        assert_eq!(tuple.config.thread_id, *thread);
        assert_eq!(tuple.config.checkpoint_ns, *ns);
        let value: i64 = tuple
            .channel_value(&codec, "v")
            .expect("decode")
            .expect("set");
        assert_eq!(value, i as i64, "{thread:?}/{ns:?} reads its own value");
        assert_eq!(tuple.pending_writes.len(), 1);
        let listed = saver
            .list(&ListQuery::thread(*thread).ns(*ns))
            .await
            .expect("list");
        assert_eq!(listed.len(), 1, "{thread:?}/{ns:?}");
    }
    let a = saver.list(&ListQuery::thread("a")).await.expect("list");
    assert_eq!(a.len(), 2, "thread \"a\" has namespaces \"b\" and \":b\"");

    // Every key of a thread carries that thread's hash tag.
    for (thread, _) in &names {
        let tag = keys.thread_tag(thread);
        let members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(keys.thread_keys_key(thread))
            .query_async(&mut conn)
            .await
            .expect("SMEMBERS");
        assert!(!members.is_empty());
        for key in members {
            assert!(key.starts_with(&tag), "{key} is under {tag}");
            assert_eq!(key.matches('{').count(), 1, "{key} has one hash tag");
        }
    }

    saver.delete_thread("a").await.expect("delete");
    assert!(saver
        .get_tuple(&CheckpointConfig::thread("a:b"))
        .await
        .expect("get")
        .is_some());
    assert!(saver
        .list(&ListQuery::thread("a"))
        .await
        .expect("list")
        .is_empty());
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn corrupt_stored_data_is_reported_where_it_is() {
    let options = support::options("corrupt");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let thread = "damaged";
    let cfg = CheckpointConfig::thread(thread).with_ns("sub");
    let good = put_values(&saver, &cfg, &[("a", json(1.into()))], meta(0)).await;
    let bad = put_values(&saver, &good, &[("b", json(2.into()))], meta(1)).await;
    let bad_id = bad.checkpoint_id.clone().expect("id");
    let cp_key = keys.checkpoint_key(thread, "sub", &bad_id);

    let expect_corrupt = |result: cairn_checkpoint::Result<_>, what: &str| match result {
        Err(Error::Corrupt { location, reason }) => {
            assert_eq!(location.thread_id, thread, "{what}");
            assert_eq!(location.checkpoint_ns, "sub", "{what}");
            assert_eq!(
                location.checkpoint_id.as_deref(),
                Some(bad_id.as_str()),
                "{what}"
            );
            (location, reason)
        }
        Err(other) => panic!("{what}: expected Error::Corrupt, got {other}"),
        Ok(_) => panic!("{what}: expected Error::Corrupt, got a result"),
    };

    // A header that is not JSON.
    let original: Vec<u8> = redis::cmd("HGET")
        .arg(&cp_key)
        .arg("checkpoint")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    let _: () = redis::cmd("HSET")
        .arg(&cp_key)
        .arg("checkpoint")
        .arg(b"\xff{not json".as_slice())
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let (_, reason) = expect_corrupt(saver.get_tuple(&bad).await.map(|_| ()), "get by id");
    assert!(reason.contains("header"), "{reason}");
    expect_corrupt(saver.get_tuple(&cfg).await.map(|_| ()), "get latest");
    expect_corrupt(
        saver.list(&ListQuery::thread(thread)).await.map(|_| ()),
        "list",
    );
    // The older checkpoint is still readable on its own.
    assert!(saver.get_tuple(&good).await.expect("get").is_some());
    let err = saver.get_tuple(&bad).await.expect_err("corrupt");
    assert!(err.to_string().contains(&bad_id), "{err}");

    // A header without its metadata field.
    let _: () = redis::cmd("HSET")
        .arg(&cp_key)
        .arg("checkpoint")
        .arg(original)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let _: () = redis::cmd("HSET")
        .arg(&cp_key)
        .arg("metadata")
        .arg("[1,2")
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let (_, reason) = expect_corrupt(saver.get_tuple(&bad).await.map(|_| ()), "metadata");
    assert!(reason.contains("metadata"), "{reason}");
    let _: () = redis::cmd("HDEL")
        .arg(&cp_key)
        .arg("metadata")
        .query_async(&mut conn)
        .await
        .expect("HDEL");
    expect_corrupt(saver.get_tuple(&bad).await.map(|_| ()), "missing metadata");
    let _: () = redis::cmd("HSET")
        .arg(&cp_key)
        .arg("metadata")
        .arg(r#"{"source":"loop","step":1}"#)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    assert!(saver.get_tuple(&bad).await.expect("repaired").is_some());

    // A channel value without its envelope names the channel.
    let tuple = saver.get_tuple(&bad).await.expect("get").expect("saved");
    let version = tuple.checkpoint.channel_versions["b"].to_storage_string();
    let _: () = redis::cmd("SET")
        .arg(keys.blob_key(thread, "sub", "b", &version))
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .expect("SET");
    let (location, _) = expect_corrupt(saver.get_tuple(&bad).await.map(|_| ()), "value");
    assert_eq!(location.channel.as_deref(), Some("b"));

    // An indexed checkpoint whose hash holds none of a checkpoint's fields.
    let _: () = redis::cmd("HSET")
        .arg(keys.checkpoint_key(thread, "sub", "zzzz-newest"))
        .arg("foreign")
        .arg("field")
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let _: () = redis::cmd("ZADD")
        .arg(keys.checkpoints_key(thread, "sub"))
        .arg(0)
        .arg("zzzz-newest")
        .query_async(&mut conn)
        .await
        .expect("ZADD");
    match saver.get_tuple(&cfg).await {
        Err(Error::Corrupt { location, .. }) => {
            assert_eq!(location.checkpoint_id.as_deref(), Some("zzzz-newest"))
        }
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }

    // A pending write that is not MessagePack.
    let _: () = redis::cmd("HSET")
        .arg(keys.writes_key(thread, "sub", &bad_id))
        .arg("1:t0")
        .arg(b"\xc1".as_slice())
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let err = saver.get_tuple(&bad).await.expect_err("corrupt");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn deleting_a_thread_removes_every_key_and_index_entry() {
    let options = support::options("delete");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let thread = "doomed";
    for ns in ["", "child:1"] {
        let cfg = CheckpointConfig::thread(thread).with_ns(ns);
        let first = put_values(
            &saver,
            &cfg,
            &[("a", json(1.into()))],
            meta(0).with_run_id("r1"),
        )
        .await;
        let second = put_values(&saver, &first, &[("b", json(2.into()))], meta(1)).await;
        saver
            .put_writes(&second, vec![("w".into(), json(3.into()))], "t", "")
            .await
            .expect("put_writes");
    }
    // Writes against a checkpoint that was never saved belong to the thread too.
    saver
        .put_writes(
            &CheckpointConfig::thread(thread).with_checkpoint_id("never-saved"),
            vec![("w".into(), json(4.into()))],
            "t",
            "",
        )
        .await
        .expect("put_writes");
    put_values(
        &saver,
        &CheckpointConfig::thread("survivor"),
        &[("a", json(1.into()))],
        meta(0).with_run_id("r1"),
    )
    .await;

    let pattern = format!("{}*", glob_literal(&keys.thread_tag(thread)));
    assert!(keys_matching(&mut conn, &pattern).await.len() > 5);
    saver.delete_thread(thread).await.expect("delete");
    assert_eq!(
        keys_matching(&mut conn, &pattern).await,
        Vec::<String>::new()
    );
    let threads: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.threads_key())
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    assert_eq!(threads, ["survivor"]);
    let run_threads: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.run_threads_key("r1"))
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    assert_eq!(run_threads, ["survivor"]);
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn prune_reclaims_values_only_older_checkpoints_referred_to() {
    let options = support::options("prune");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let cfg = CheckpointConfig::thread("pruned");
    // Channel "keep" is written once and shared by every checkpoint; "step" changes each time.
    let mut parent = cfg.clone();
    let keep_version = ChannelVersion::Int(1);
    for step in 0..5i64 {
        let mut cp = Checkpoint::new();
        let step_version = ChannelVersion::Int(step + 1);
        cp.channel_values.insert("keep".into(), json("kept".into()));
        cp.channel_values.insert("step".into(), json(step.into()));
        cp.channel_versions
            .insert("keep".into(), keep_version.clone());
        cp.channel_versions
            .insert("step".into(), step_version.clone());
        let mut new_versions = ChannelVersions::from([("step".to_string(), step_version)]);
        if step == 0 {
            new_versions.insert("keep".into(), keep_version.clone());
        }
        let meta = meta(step).with_run_id(format!("prune-run-{step}"));
        parent = saver
            .put(&parent, cp, meta, new_versions)
            .await
            .expect("put");
        saver
            .put_writes(&parent, vec![("w".into(), json(step.into()))], "t", "")
            .await
            .expect("put_writes");
    }
    let pattern = format!("{}*", glob_literal(&keys.blob_prefix("pruned", "")));
    assert_eq!(keys_matching(&mut conn, &pattern).await.len(), 6);
    saver
        .prune(&["pruned".to_string()], PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    let mut left = keys_matching(&mut conn, &pattern).await;
    left.sort();
    let mut expected = vec![
        keys.blob_key("pruned", "", "keep", "1"),
        keys.blob_key("pruned", "", "step", "5"),
    ];
    expected.sort();
    assert_eq!(
        left, expected,
        "only the latest checkpoint's two values remain"
    );
    let latest = saver.get_tuple(&cfg).await.expect("get").expect("kept");
    assert_eq!(latest.config, parent);
    assert_eq!(latest.checkpoint.channel_values.len(), 2);
    assert_eq!(latest.pending_writes.len(), 1);
    assert_eq!(
        latest.checkpoint.channel_versions["step"],
        ChannelVersion::Int(5)
    );
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.thread_keys_key("pruned"))
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    let checkpoint_keys = members
        .iter()
        .filter(|k| k.contains(":cp:") || k.contains(":w:") || k.contains(":b:"))
        .count();
    assert_eq!(
        checkpoint_keys, 4,
        "one checkpoint hash, its writes and its two values: {members:?}"
    );
    let old_run: Vec<String> = redis::cmd("SMEMBERS")
        .arg(keys.run_checkpoints_key("pruned", "prune-run-0"))
        .query_async(&mut conn)
        .await
        .expect("SMEMBERS");
    assert!(old_run.is_empty(), "pruned checkpoints leave the run index");
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn delete_for_runs_reaches_copies_and_ignores_stale_index_entries() {
    let options = support::options("runs");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let cfg = CheckpointConfig::thread("origin");
    let first = put_values(
        &saver,
        &cfg,
        &[("a", json(1.into()))],
        meta(0).with_run_id("run-a"),
    )
    .await;
    let second = put_values(
        &saver,
        &first,
        &[("a", json(2.into()))],
        meta(1).with_run_id("run-b"),
    )
    .await;
    saver.copy_thread("origin", "copy").await.expect("copy");
    let copied = saver.list(&ListQuery::thread("copy")).await.expect("list");
    assert_eq!(copied.len(), 2);

    // Re-saving the first checkpoint under another run leaves a stale "run-a" index entry.
    let mut again = saver.get_tuple(&first).await.expect("get").expect("saved");
    again.checkpoint.channel_values.clear();
    saver
        .put(
            &cfg,
            again.checkpoint,
            meta(0).with_run_id("run-c"),
            ChannelVersions::new(),
        )
        .await
        .expect("put");

    saver
        .delete_for_runs(&["run-a".to_string()])
        .await
        .expect("delete");
    let origin_ids: Vec<_> = saver
        .list(&ListQuery::thread("origin"))
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.config)
        .collect();
    assert_eq!(
        origin_ids.len(),
        2,
        "the re-saved checkpoint now belongs to run-c"
    );
    let copy_left = saver.list(&ListQuery::thread("copy")).await.expect("list");
    assert_eq!(copy_left.len(), 1, "the copy of run-a's checkpoint is gone");
    assert_eq!(copy_left[0].config.checkpoint_id, second.checkpoint_id);
    let exists: i64 = redis::cmd("EXISTS")
        .arg(keys.run_threads_key("run-a"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(exists, 0, "the run's global index is gone");

    saver
        .delete_for_runs(&["run-b".to_string(), "run-c".to_string()])
        .await
        .expect("delete");
    assert!(saver
        .list(&ListQuery::thread("origin"))
        .await
        .expect("list")
        .is_empty());
    assert!(saver
        .list(&ListQuery::thread("copy"))
        .await
        .expect("list")
        .is_empty());
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn list_with_a_sparse_filter_pages_through_long_histories() {
    let options = support::options("paging");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut parent = CheckpointConfig::thread("long");
    let mut marked = Vec::new();
    for step in 0..260i64 {
        let mut meta = meta(step);
        if step % 50 == 7 {
            meta = meta.with("marked", true);
        }
        parent = saver
            .put(&parent, Checkpoint::new(), meta, ChannelVersions::new())
            .await
            .expect("put");
        if step % 50 == 7 {
            marked.push(parent.clone());
        }
    }
    marked.reverse();
    let found = saver
        .list(&ListQuery::thread("long").filter("marked", true).limit(4))
        .await
        .expect("list");
    let found: Vec<_> = found.into_iter().map(|t| t.config).collect();
    assert_eq!(found, marked[..4]);
    let all = saver
        .list(&ListQuery::thread("long").filter("marked", true))
        .await
        .expect("list");
    assert_eq!(all.len(), 6);
    let everything = saver.list(&ListQuery::thread("long")).await.expect("list");
    assert_eq!(everything.len(), 260);
    assert!(everything
        .windows(2)
        .all(|w| w[0].checkpoint.id > w[1].checkpoint.id));
    let page = saver
        .list(
            &ListQuery::thread("long")
                .before(everything[100].checkpoint.id.clone())
                .limit(150),
        )
        .await
        .expect("list");
    assert_eq!(page.len(), 150);
    assert_eq!(page[0].checkpoint.id, everything[101].checkpoint.id);
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn sixty_four_tasks_write_sixty_four_threads_with_large_values() {
    let options = support::options("concurrent");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let saver: Arc<RedisSaver> = Arc::new(saver);
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let saver = saver.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                let thread = CheckpointConfig::thread(format!("worker-{i}"));
                let mut parent = thread.clone();
                for step in 0..3i64 {
                    parent = put_values(
                        saver.as_ref(),
                        &parent,
                        &[("n", json((i * 10 + step).into()))],
                        meta(step),
                    )
                    .await;
                    saver
                        .put_writes(&parent, vec![("w".into(), json(step.into()))], "t", "")
                        .await
                        .expect("put_writes");
                }
                parent
            })
        })
        .collect();
    let lasts = futures::future::join_all(tasks).await;
    let codec = ValueCodec::default();
    for (i, last) in lasts.into_iter().enumerate() {
        let last = last.expect("task");
        let tuple = saver
            .get_tuple(&CheckpointConfig::thread(format!("worker-{i}")))
            .await
            .expect("get")
            .expect("saved");
        assert_eq!(tuple.config, last);
        let n: i64 = tuple
            .channel_value(&codec, "n")
            .expect("decode")
            .expect("set");
        assert_eq!(n, i as i64 * 10 + 2);
        assert_eq!(tuple.pending_writes.len(), 1);
        let history = saver
            .list(&ListQuery::thread(format!("worker-{i}")))
            .await
            .expect("list");
        assert_eq!(history.len(), 3);
    }

    // A 10 MB value goes in and out intact.
    let big: Vec<u8> = (0..10 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let value = TypedValue::new("bytes", big.clone());
    let saved = put_values(
        saver.as_ref(),
        &CheckpointConfig::thread("big"),
        &[("blob", value.clone())],
        meta(0),
    )
    .await;
    let back = saver.get_tuple(&saved).await.expect("get").expect("saved");
    assert_eq!(back.checkpoint.channel_values["blob"].data.len(), big.len());
    assert_eq!(back.checkpoint.channel_values["blob"], value);
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn bad_settings_and_unreachable_servers_are_errors() {
    if support::url().is_none() {
        return;
    }
    let err = KeyLayout::new("has{brace").expect_err("brace");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = RedisSaver::connect_with(
        "redis://127.0.0.1:6379/",
        RedisOptions::default().with_ttl(Duration::ZERO),
    )
    .await
    .expect_err("zero ttl");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    let err = RedisSaver::connect("not a url").await.expect_err("bad url");
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "redis",
                ..
            }
        ),
        "{err}"
    );
    let err = RedisSaver::connect("rediss://127.0.0.1:6379/")
        .await
        .expect_err("TLS is not compiled in");
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "redis",
                ..
            }
        ),
        "{err}"
    );
    // Nothing listens on port 1.
    let err = RedisSaver::connect("redis://127.0.0.1:1/")
        .await
        .expect_err("unreachable");
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "redis",
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("connect"), "{err}");
}

/// A channel updated to no value (a consumed trigger) gets no value key, and reads back as
/// no value at its new version.
#[tokio::test]
async fn a_channel_updated_to_no_value_stores_no_key() {
    let options = support::options("no-value");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let stored = put_values(
        &saver,
        &CheckpointConfig::thread("t"),
        &[("kept", json(1.into())), ("consumed", TypedValue::empty())],
        meta(0),
    )
    .await;
    let tuple = saver
        .get_tuple(&stored)
        .await
        .expect("get")
        .expect("stored");
    let consumed = tuple.checkpoint.channel_versions["consumed"].to_storage_string();
    let kept = tuple.checkpoint.channel_versions["kept"].to_storage_string();
    assert_eq!(tuple.checkpoint.channel_values.len(), 1);
    assert!(tuple.checkpoint.channel_values.contains_key("kept"));
    let exists = |key: String| redis::cmd("EXISTS").arg(key).clone();
    let kept_key: i64 = exists(keys.blob_key("t", "", "kept", &kept))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    let consumed_key: i64 = exists(keys.blob_key("t", "", "consumed", &consumed))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!((kept_key, consumed_key), (1, 0));
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn headers_stored_as_json_by_earlier_versions_read_as_before() {
    let options = support::options("json-headers");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let cfg = CheckpointConfig::thread("old-json");
    let first = put_values(&saver, &cfg, &[("a", json(1.into()))], meta(0)).await;
    let stored = put_values(&saver, &first, &[("b", json(2.into()))], meta(1)).await;
    let id = stored.checkpoint_id.clone().expect("id");
    let cp_key = saver.key_layout().checkpoint_key("old-json", "", &id);
    let compact: Vec<u8> = redis::cmd("HGET")
        .arg(&cp_key)
        .arg("checkpoint")
        .query_async(&mut conn)
        .await
        .expect("HGET");
    let before = saver.get_tuple(&stored).await.expect("get").expect("saved");
    assert!(
        compact.len() < 120,
        "compact header of {} bytes",
        compact.len()
    );

    // What earlier versions wrote: the whole checkpoint without values, as JSON.
    let mut header = before.checkpoint.clone();
    header.channel_values.clear();
    let json_header = serde_json::to_vec(&header).expect("json");
    assert!(json_header.len() > compact.len());
    let _: () = redis::cmd("HSET")
        .arg(&cp_key)
        .arg("checkpoint")
        .arg(json_header)
        .query_async(&mut conn)
        .await
        .expect("HSET");
    let after = saver.get_tuple(&stored).await.expect("get").expect("saved");
    assert_eq!(after.checkpoint, before.checkpoint);
    let listed = saver
        .list(&ListQuery::thread("old-json"))
        .await
        .expect("list");
    assert_eq!(listed[0].checkpoint, before.checkpoint);
    support::delete_prefix(&url, &options.key_prefix).await;
}

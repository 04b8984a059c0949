//! Append values on PostgreSQL: how they are stored, read and reclaimed (the shared
//! conformance kit checks what every saver must do; these check the layout behind it).

mod support;

use cairn_checkpoint::conformance::helpers::{put_channel, read_list};
use cairn_checkpoint::{
    ChannelVersion, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver, Error,
    ListQuery, PruneStrategy, TypedValue, ValueCodec,
};
use cairn_postgres::PostgresSaver;

const CHANNEL: &str = "messages";

/// `(version, type tag, base)` of every stored `messages` value of `thread`, by version.
async fn stored_links(
    url: &str,
    schema: &str,
    thread: &str,
) -> Vec<(String, String, Option<String>)> {
    support::admin_client(url)
        .await
        .query(
            &format!(
                "SELECT version, type_tag, base FROM \"{schema}\".checkpoint_blobs \
                 WHERE thread_id = $1 AND channel = $2 ORDER BY version COLLATE \"C\""
            ),
            &[&thread, &CHANNEL],
        )
        .await
        .expect("read the stored links")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// A chat of 400 steps adding one 200-character message each, with statements sent unnamed
/// (PgBouncer mode): every step reads back whole (latest, by id, through `list`), and the
/// stored values take about the bytes of the messages themselves instead of growing with the
/// square of the history.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_step_chain_reads_back_whole_and_stores_each_message_once() {
    let Some(url) = support::url() else { return };
    let schema = support::fresh_schema_name();
    let saver = support::options(&url, &schema)
        .prepared_statements(false)
        .connect()
        .await
        .expect("connect");
    let codec = ValueCodec::default();
    let mut parent = CheckpointConfig::thread("chat");
    let mut version: Option<ChannelVersion> = None;
    let mut items: Vec<String> = Vec::new();
    let mut item_bytes = 0;
    let mut configs = Vec::new();
    for step in 0..400 {
        let message = format!("{step:>4} {}", "m".repeat(195));
        item_bytes += codec.encode(&message).expect("encode").data.len();
        let next = saver.get_next_version(version.as_ref());
        let value = match &version {
            None => codec.encode(&[&message]).expect("encode"),
            Some(base) => codec
                .encode_append(base, [&message])
                .expect("encode an append value"),
        };
        parent = put_channel(&saver, &parent, CHANNEL, &next, value, "run").await;
        configs.push(parent.clone());
        items.push(message);
        version = Some(next);
    }
    assert_eq!(
        read_list(&saver, &CheckpointConfig::thread("chat"), CHANNEL).await,
        items
    );
    assert_eq!(read_list(&saver, &configs[10], CHANNEL).await, items[..=10]);
    let listed = saver.list(&ListQuery::thread("chat")).await.expect("list");
    assert_eq!(listed.len(), 400);
    for (n, tuple) in listed.iter().rev().enumerate() {
        let got: Vec<String> = tuple
            .channel_value(&codec, CHANNEL)
            .expect("decode")
            .expect("a value");
        assert_eq!(got, items[..=n], "checkpoint {n} of the listing");
    }
    let page = saver
        .list(
            &ListQuery::thread("chat")
                .before(configs[200].checkpoint_id.clone().expect("an id"))
                .limit(3),
        )
        .await
        .expect("a page");
    let got: Vec<Vec<String>> = page
        .iter()
        .map(|t| {
            t.channel_value(&codec, CHANNEL)
                .expect("decode")
                .expect("a value")
        })
        .collect();
    assert_eq!(got, [&items[..200], &items[..199], &items[..198]]);
    // A saver that has not seen append values yet fetches the chains in a second statement
    // (the first one above did too); the result is the same.
    let cold = support::options(&url, &schema)
        .prepared_statements(false)
        .connect()
        .await
        .expect("connect again");
    assert_eq!(
        read_list(&cold, &configs[300], CHANNEL).await,
        items[..=300],
        "a cold saver reads a chain whole"
    );
    let cold = support::options(&url, &schema)
        .connect()
        .await
        .expect("connect again");
    let listed_cold = cold.list(&ListQuery::thread("chat")).await.expect("list");
    assert_eq!(listed_cold, listed, "a cold saver lists the same history");
    drop(cold);

    let stored: i64 = support::admin_client(&url)
        .await
        .query_one(
            &format!(
                "SELECT SUM(octet_length(blob))::int8 FROM \"{schema}\".checkpoint_blobs \
                 WHERE thread_id = 'chat' AND channel = $1"
            ),
            &[&CHANNEL],
        )
        .await
        .expect("sum")
        .get(0);
    let stored = usize::try_from(stored).expect("a size");
    assert!(
        stored < 2 * item_bytes,
        "{stored} bytes stored for {item_bytes} bytes of messages"
    );
    let links = stored_links(&url, &schema, "chat").await;
    assert_eq!(links.len(), 400);
    assert!(links[0].2.is_none(), "the root is a whole value");
    for pair in links.windows(2) {
        assert_eq!(pair[1].1, "append");
        assert_eq!(pair[1].2.as_deref(), Some(pair[0].0.as_str()));
    }
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

/// Integer versions have no range bound (their strings do not sort as numbers: "10" comes
/// before "9"), so reads take every stored version of the channel; branches, `list`,
/// `delete_for_runs` and `prune` work on them as on the default versions, with statements
/// prepared or sent unnamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integer_versions_and_branches_read_whole_and_reclaim_exactly() {
    let Some(url) = support::url() else { return };
    for prepared in [true, false] {
        let schema = support::fresh_schema_name();
        let saver = support::options(&url, &schema)
            .prepared_statements(prepared)
            .connect()
            .await
            .expect("connect");
        integer_versions_and_branches(&saver, &url, &schema).await;
        drop(saver);
        support::drop_schema(&url, &schema).await;
    }
}

async fn integer_versions_and_branches(saver: &PostgresSaver, url: &str, schema: &str) {
    let codec = ValueCodec::default();
    let v = ChannelVersion::Int;
    // The trunk: versions 1..=12, runs "early" (1..=9) and "late" (10..=12).
    let mut parent = put_channel(
        saver,
        &CheckpointConfig::thread("t"),
        CHANNEL,
        &v(1),
        codec.encode(&["m1"]).expect("encode"),
        "early",
    )
    .await;
    let mut trunk = vec![parent.clone()];
    for n in 2..=12 {
        let run = if n < 10 { "early" } else { "late" };
        let value = codec
            .encode_append(&v(n - 1), [format!("m{n}")].iter())
            .expect("encode");
        parent = put_channel(saver, &parent, CHANNEL, &v(n), value, run).await;
        trunk.push(parent.clone());
    }
    // A branch forking from version 5 with version 100 (run "branch").
    let value = codec.encode_append(&v(5), ["fork"].iter()).expect("encode");
    let branch = put_channel(saver, &trunk[4], CHANNEL, &v(100), value, "branch").await;

    let trunk_items = |n: usize| (1..=n).map(|i| format!("m{i}")).collect::<Vec<_>>();
    assert_eq!(read_list(saver, &trunk[11], CHANNEL).await, trunk_items(12));
    let mut fork_items = trunk_items(5);
    fork_items.push("fork".into());
    assert_eq!(read_list(saver, &branch, CHANNEL).await, fork_items);
    let listed = saver.list(&ListQuery::thread("t")).await.expect("list");
    assert_eq!(listed.len(), 13);
    for tuple in &listed {
        let got: Vec<String> = tuple
            .channel_value(&codec, CHANNEL)
            .expect("decode")
            .expect("a value");
        let expected = match trunk.iter().position(|c| *c == tuple.config) {
            Some(at) => trunk_items(at + 1),
            None => fork_items.clone(),
        };
        assert_eq!(got, expected, "{:?}", tuple.config);
    }

    // Deleting the early run keeps every link the late checkpoints pass through (versions
    // 1..=9 included); deleting the branch run reclaims the branch's own value only.
    saver
        .delete_for_runs(&["early".into(), "branch".into()])
        .await
        .expect("delete runs");
    let versions: Vec<String> = stored_links(url, schema, "t")
        .await
        .into_iter()
        .map(|l| l.0)
        .collect();
    let mut expected: Vec<String> = (1..=12).map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(versions, expected);
    assert_eq!(read_list(saver, &trunk[9], CHANNEL).await, trunk_items(10));

    // Keeping the latest rewrites its value whole; nothing else of the chain stays.
    saver
        .prune(&["t".into()], PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    assert_eq!(
        stored_links(url, schema, "t").await,
        [("12".to_owned(), "msgpack".to_owned(), None)]
    );
    assert_eq!(
        read_list(saver, &CheckpointConfig::thread("t"), CHANNEL).await,
        trunk_items(12)
    );
}

/// `prune` keeping the latest checkpoint of several threads and namespaces at once rewrites
/// each kept append value whole and reclaims every older link; a copied thread's chains are
/// its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_rewrites_kept_append_values_whole_in_every_namespace() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    let codec = ValueCodec::default();
    let mut heads = Vec::new();
    for (thread, ns) in [("a", ""), ("a", "child:1"), ("b", "")] {
        let mut parent = CheckpointConfig::thread(thread).with_ns(ns);
        let mut version = saver.get_next_version(None);
        parent = put_channel(
            &saver,
            &parent,
            CHANNEL,
            &version,
            codec.encode(&["0"]).expect("encode"),
            "run",
        )
        .await;
        for n in 1..6 {
            let next = saver.get_next_version(Some(&version));
            let value = codec
                .encode_append(&version, [n.to_string()].iter())
                .expect("encode");
            parent = put_channel(&saver, &parent, CHANNEL, &next, value, "run").await;
            version = next;
        }
        heads.push(parent);
    }
    saver.copy_thread("a", "a-copy").await.expect("copy");
    saver
        .prune(&["a".into(), "b".into()], PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    let all: Vec<String> = (0..6).map(|n| n.to_string()).collect();
    for head in &heads {
        assert_eq!(read_list(&saver, head, CHANNEL).await, all, "{head:?}");
        let tuples = saver
            .list(&ListQuery::thread(&head.thread_id).ns(&head.checkpoint_ns))
            .await
            .expect("list");
        assert_eq!(tuples.len(), 1);
    }
    for thread in ["a", "b"] {
        let links = stored_links(&url, &schema, thread).await;
        let expected = if thread == "a" { 2 } else { 1 };
        assert_eq!(links.len(), expected, "{thread}: {links:?}");
        assert!(
            links.iter().all(|l| l.1 == "msgpack" && l.2.is_none()),
            "{links:?}"
        );
    }
    // The copy still holds the whole chain, and reads it.
    assert_eq!(stored_links(&url, &schema, "a-copy").await.len(), 12);
    let copied = CheckpointConfig::thread("a-copy").with_ns("child:1");
    assert_eq!(read_list(&saver, &copied, CHANNEL).await, all);
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

/// A value tagged as an append value whose header cannot be parsed could never be read
/// back: `put` refuses it and stores nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_append_value_is_refused() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    let mut cp = Checkpoint::new();
    cp.channel_values.insert(
        CHANNEL.into(),
        TypedValue::new(cairn_checkpoint::TAG_APPEND, &b"not a header"[..]),
    );
    cp.channel_versions
        .insert(CHANNEL.into(), ChannelVersion::Int(2));
    let err = saver
        .put(
            &CheckpointConfig::thread("t"),
            cp,
            CheckpointMetadata::default(),
            [(CHANNEL.to_owned(), ChannelVersion::Int(2))].into(),
        )
        .await
        .expect_err("malformed");
    assert!(
        matches!(&err, Error::InvalidArgument(m) if m.contains("malformed append value")),
        "{err}"
    );
    assert!(saver
        .get_tuple(&CheckpointConfig::thread("t"))
        .await
        .expect("get")
        .is_none());
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

/// Append values stored before the `base` column existed get their base from their header
/// when migration 2 runs, so deletions follow their chains.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_2_fills_in_the_base_of_stored_append_values() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    let codec = ValueCodec::default();
    let mut parent = CheckpointConfig::thread("old");
    let mut version = saver.get_next_version(None);
    parent = put_channel(
        &saver,
        &parent,
        CHANNEL,
        &version,
        codec.encode(&["a"]).expect("encode"),
        "first",
    )
    .await;
    for item in ["b", "c"] {
        let next = saver.get_next_version(Some(&version));
        let value = codec
            .encode_append(&version, [item].iter())
            .expect("encode");
        parent = put_channel(&saver, &parent, CHANNEL, &next, value, "second").await;
        version = next;
    }
    let before = stored_links(&url, &schema, "old").await;
    drop(saver);
    // Back to schema version 1, as an older Cairn left it.
    support::admin_client(&url)
        .await
        .batch_execute(&format!(
            "ALTER TABLE \"{schema}\".checkpoint_blobs DROP COLUMN base; \
             DELETE FROM \"{schema}\".cairn_migrations WHERE version = 2"
        ))
        .await
        .expect("downgrade");
    let saver = support::options(&url, &schema)
        .connect()
        .await
        .expect("reconnect and migrate");
    assert_eq!(stored_links(&url, &schema, "old").await, before);
    assert!(before[1].2.is_some() && before[2].2.is_some(), "{before:?}");
    saver
        .delete_for_runs(&["first".into()])
        .await
        .expect("delete the run holding the root");
    assert_eq!(stored_links(&url, &schema, "old").await.len(), 3);
    assert_eq!(read_list(&saver, &parent, CHANNEL).await, ["a", "b", "c"]);
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

/// `get_tuple_known` fetches neither the known values nor the chains behind them: with a
/// chain link deleted behind Cairn's back, `get_tuple` reports the corruption while
/// `get_tuple_known` for the latest checkpoint still returns its bookkeeping. Another
/// checkpoint than the known one is read whole (and so fails here too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_tuple_known_skips_the_chains_of_known_values() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    let codec = ValueCodec::default();
    let v1 = saver.get_next_version(None);
    let v2 = saver.get_next_version(Some(&v1));
    let v3 = saver.get_next_version(Some(&v2));
    let root = CheckpointConfig::thread("t");
    let first = put_channel(
        &saver,
        &root,
        CHANNEL,
        &v1,
        codec.encode(&["a"]).expect("encode"),
        "r",
    )
    .await;
    let append = |base: &ChannelVersion, item: &str| {
        codec
            .encode_append(base, [item].iter())
            .expect("encode an append value")
    };
    let second = put_channel(&saver, &first, CHANNEL, &v2, append(&v1, "b"), "r").await;
    let latest = put_channel(&saver, &second, CHANNEL, &v3, append(&v2, "c"), "r").await;
    support::admin_client(&url)
        .await
        .execute(
            &format!("DELETE FROM \"{schema}\".checkpoint_blobs WHERE version = $1"),
            &[&v1.to_storage_string()],
        )
        .await
        .expect("delete the root");

    let err = saver.get_tuple(&root).await.expect_err("broken chain");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let latest_id = latest.checkpoint_id.clone().expect("an id");
    let known = cairn_checkpoint::KnownValues {
        checkpoint_id: &latest_id,
        channels: &[CHANNEL],
    };
    let tuple = saver
        .get_tuple_known(&root, known)
        .await
        .expect("the known chain is not read")
        .expect("stored");
    assert_eq!(tuple.config, latest);
    assert_eq!(tuple.checkpoint.channel_versions[CHANNEL], v3);
    assert!(!tuple.checkpoint.channel_values.contains_key(CHANNEL));
    let err = saver
        .get_tuple_known(&second, known)
        .await
        .expect_err("another checkpoint is read whole");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

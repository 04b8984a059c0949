//! Append values on SQLite: how they are stored, read and reclaimed (the shared conformance
//! kit checks what every saver must do; these check the SQLite layout behind it).

mod support;
use support::{raw, temp_db, TYPE_TAG_TEXT};

use std::path::Path;

use cairn_checkpoint::conformance::helpers::{put_channel, read_list};
use cairn_checkpoint::{
    ChannelVersion, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver, Error,
    ListQuery, PruneStrategy, TypedValue, ValueCodec,
};
use cairn_sqlite::SqliteSaver;

const CHANNEL: &str = "messages";

/// The stored form of a version (schema 5): Cairn's own versions as 16 bytes, the counter
/// then the suffix, big-endian; any other as its text.
fn stored_version(version: &ChannelVersion) -> rusqlite::types::Value {
    match version.compact_parts() {
        Some((counter, suffix)) => {
            let mut bytes = counter.to_be_bytes().to_vec();
            bytes.extend(suffix.to_be_bytes());
            rusqlite::types::Value::Blob(bytes)
        }
        None => rusqlite::types::Value::Text(version.to_storage_string()),
    }
}

/// The version string of a stored version column.
fn version_text(r: &rusqlite::Row<'_>, i: usize) -> rusqlite::Result<Option<String>> {
    Ok(match r.get::<_, rusqlite::types::Value>(i)? {
        rusqlite::types::Value::Blob(b) => {
            assert_eq!(b.len(), 16, "a compact version is 16 bytes");
            let part = |at: usize| u64::from_be_bytes(b[at..at + 8].try_into().expect("8"));
            let v = ChannelVersion::from_compact_parts(part(0), part(8)).expect("in range");
            Some(v.to_storage_string())
        }
        rusqlite::types::Value::Text(t) => Some(t),
        _ => None,
    })
}

/// `(version, type tag, base version)` of every stored `messages` value of `thread`, by
/// version.
fn stored_links(path: &Path, thread: &str) -> Vec<(String, String, Option<String>)> {
    raw(path)
        .prepare(&format!(
            "SELECT version, {TYPE_TAG_TEXT}, base_version FROM checkpoint_blobs
                 WHERE thread_id = ?1 AND channel = ?2 ORDER BY version"
        ))
        .expect("prepare")
        .query_map([thread, CHANNEL], |r| {
            Ok((
                version_text(r, 0)?.unwrap_or_default(),
                r.get(1)?,
                version_text(r, 2)?,
            ))
        })
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

/// A chat of 400 steps adding one 200-character message each: every step reads back whole
/// (latest, by id, through `list`), and the stored values take about the bytes of the
/// messages themselves instead of growing with the square of the history.
#[tokio::test]
async fn a_400_step_chain_reads_back_whole_and_stores_each_message_once() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let codec = ValueCodec::default();
    let mut parent = CheckpointConfig::thread("chat");
    let mut version: Option<ChannelVersion> = None;
    let mut items: Vec<String> = Vec::new();
    let mut item_bytes = 0;
    let mut configs = Vec::new();
    for step in 0..400 {
        let message = format!("{step:>4} {}", "m".repeat(195));
        item_bytes += codec.encode(&message).expect("encode").data.len();
        let next = ChannelVersion::first_after(version.as_ref());
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

    let stored: i64 = raw(&path)
        .query_row(
            "SELECT SUM(length(data)) FROM checkpoint_blobs WHERE channel = ?1",
            [CHANNEL],
            |r| r.get(0),
        )
        .expect("sum");
    let stored = usize::try_from(stored).expect("a size");
    assert!(
        stored < 2 * item_bytes,
        "{stored} bytes stored for {item_bytes} bytes of messages"
    );
    let links = stored_links(&path, "chat");
    assert_eq!(links.len(), 400);
    let not_compact: i64 = raw(&path)
        .query_row(
            "SELECT COUNT(*) FROM checkpoint_blobs
             WHERE typeof(version) <> 'blob' OR length(version) <> 16
                OR (base_version IS NOT NULL AND length(base_version) <> 16)",
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(
        not_compact, 0,
        "Cairn's own versions are stored as 16 bytes"
    );
    assert!(links[0].2.is_none(), "the root is a whole value");
    for pair in links.windows(2) {
        assert_eq!(pair[1].1, "append/2", "the compact form (schema 8)");
        assert_eq!(pair[1].2.as_deref(), Some(pair[0].0.as_str()));
    }
}

/// Integer versions have no range bound (their strings do not sort as numbers: "10" comes
/// before "9"), so reads take every stored version of the channel; branches, `list`,
/// `delete_for_runs` and `prune` work on them as on the default versions.
#[tokio::test]
async fn integer_versions_and_branches_read_whole_and_reclaim_exactly() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let codec = ValueCodec::default();
    let v = ChannelVersion::Int;
    // The trunk: versions 1..=12, runs "early" (1..=9) and "late" (10..=12).
    let mut parent = put_channel(
        &saver,
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
        parent = put_channel(&saver, &parent, CHANNEL, &v(n), value, run).await;
        trunk.push(parent.clone());
    }
    // A branch forking from version 5 with version 100 (run "branch").
    let value = codec.encode_append(&v(5), ["fork"].iter()).expect("encode");
    let branch = put_channel(&saver, &trunk[4], CHANNEL, &v(100), value, "branch").await;

    let trunk_items = |n: usize| (1..=n).map(|i| format!("m{i}")).collect::<Vec<_>>();
    assert_eq!(
        read_list(&saver, &trunk[11], CHANNEL).await,
        trunk_items(12)
    );
    let mut fork_items = trunk_items(5);
    fork_items.push("fork".into());
    assert_eq!(read_list(&saver, &branch, CHANNEL).await, fork_items);
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
    let versions: Vec<String> = stored_links(&path, "t").into_iter().map(|l| l.0).collect();
    let mut expected: Vec<String> = (1..=12).map(|n| n.to_string()).collect();
    expected.sort();
    assert_eq!(versions, expected);
    assert_eq!(read_list(&saver, &trunk[9], CHANNEL).await, trunk_items(10));

    // Keeping the latest rewrites its value whole; nothing else of the chain stays.
    saver
        .prune(&["t".into()], PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    assert_eq!(
        stored_links(&path, "t"),
        [("12".to_owned(), "msgpack".to_owned(), None)]
    );
    assert_eq!(
        read_list(&saver, &CheckpointConfig::thread("t"), CHANNEL).await,
        trunk_items(12)
    );
}

/// A value tagged as an append value whose header cannot be parsed could never be read
/// back: `put` refuses it and stores nothing.
#[tokio::test]
async fn a_malformed_append_value_is_refused() {
    let saver = SqliteSaver::in_memory().expect("open");
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
}

/// `get_tuple_known` reads neither the known values nor the chains behind them: with a
/// chain link deleted behind Cairn's back, `get_tuple` reports the corruption while
/// `get_tuple_known` for the latest checkpoint still returns its bookkeeping. Another
/// checkpoint than the known one is read whole (and so fails here too).
#[tokio::test]
async fn get_tuple_known_skips_the_chains_of_known_values() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let codec = ValueCodec::default();
    let (v1, v2, v3) = (
        ChannelVersion::first_after(None),
        ChannelVersion::first_after(Some(&ChannelVersion::Int(1))),
        ChannelVersion::first_after(Some(&ChannelVersion::Int(2))),
    );
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
    raw(&path)
        .execute(
            "DELETE FROM checkpoint_blobs WHERE version = ?1",
            [stored_version(&v1)],
        )
        .expect("delete the root");

    let thread = CheckpointConfig::thread("t");
    let err = saver.get_tuple(&thread).await.expect_err("broken chain");
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    let latest_id = latest.checkpoint_id.clone().expect("an id");
    let known = cairn_checkpoint::KnownValues {
        checkpoint_id: &latest_id,
        channels: &[CHANNEL],
    };
    let tuple = saver
        .get_tuple_known(&thread, known)
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
}

/// Versions in other forms stay text, and a chain may cross from them to Cairn's compact
/// ones: a thread carried over with LangGraph's `…0001.0.5` versions or with integer
/// versions, continued with Cairn's, reads back whole at every checkpoint, after a reopen
/// too, and pruning to the latest keeps exactly its value.
#[tokio::test]
async fn chains_cross_from_text_versions_to_compact_ones() {
    let (_dir, path) = temp_db();
    let codec = ValueCodec::default();
    let roots = [
        (
            "langgraph",
            ChannelVersion::Str("00000000000000000000000000000001.0.5".into()),
        ),
        ("integer", ChannelVersion::Int(7)),
    ];
    let mut checkpoints = Vec::new();
    {
        let saver = SqliteSaver::open(&path).expect("open");
        for (thread, root) in &roots {
            let whole = codec.encode(&["a"]).expect("encode");
            let first = put_channel(
                &saver,
                &CheckpointConfig::thread(*thread),
                CHANNEL,
                root,
                whole,
                "r",
            )
            .await;
            let v2 = saver.get_next_version(Some(root));
            assert!(v2.compact_parts().is_some(), "Cairn's own form: {v2}");
            let append = codec.encode_append(root, ["b"].iter()).expect("append");
            let second = put_channel(&saver, &first, CHANNEL, &v2, append, "r").await;
            let v3 = saver.get_next_version(Some(&v2));
            let append = codec.encode_append(&v2, ["c"].iter()).expect("append");
            put_channel(&saver, &second, CHANNEL, &v3, append, "r").await;
            let links = stored_links(&path, thread);
            assert_eq!(
                links,
                [
                    (root.to_storage_string(), "msgpack".to_owned(), None),
                    (
                        v2.to_storage_string(),
                        "append/2".to_owned(),
                        Some(root.to_storage_string())
                    ),
                    (
                        v3.to_storage_string(),
                        "append/2".to_owned(),
                        Some(v2.to_storage_string())
                    ),
                ]
            );
            checkpoints.push((thread, first, second));
        }
    }
    let saver = SqliteSaver::open(&path).expect("reopen");
    for (thread, first, second) in &checkpoints {
        let latest = CheckpointConfig::thread(**thread);
        assert_eq!(read_list(&saver, &latest, CHANNEL).await, ["a", "b", "c"]);
        assert_eq!(read_list(&saver, second, CHANNEL).await, ["a", "b"]);
        assert_eq!(read_list(&saver, first, CHANNEL).await, ["a"]);
        let listed = saver
            .list(&ListQuery::thread(**thread))
            .await
            .expect("list");
        let lengths: Vec<usize> = listed
            .iter()
            .map(|t| {
                let list: Vec<String> = t
                    .channel_value(&codec, CHANNEL)
                    .expect("decode")
                    .expect("a value");
                list.len()
            })
            .collect();
        assert_eq!(lengths, [3, 2, 1]);
        saver
            .prune(&[thread.to_string()], PruneStrategy::KeepLatest)
            .await
            .expect("prune");
        assert_eq!(read_list(&saver, &latest, CHANNEL).await, ["a", "b", "c"]);
        assert_eq!(stored_links(&path, thread).len(), 1);
    }
}

/// Schema 8 stores an append value without its text header: an item code, the count and the
/// items, its base only in `base_version`. Reads give back the same whole values, and a
/// compact row that cannot be read is a corrupt-data error naming its channel.
#[tokio::test]
async fn append_values_are_stored_compact_and_a_corrupt_one_is_named() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let codec = ValueCodec::default();
    let first = ChannelVersion::first_after(None);
    let second = first.next();
    let root = put_channel(
        &saver,
        &CheckpointConfig::thread("t"),
        CHANNEL,
        &first,
        codec.encode(&["hello"]).expect("encode"),
        "run",
    )
    .await;
    let message = "m".repeat(200);
    let delta = codec
        .encode_append(&first, [&message, &message].iter())
        .expect("encode");
    let head = put_channel(&saver, &root, CHANNEL, &second, delta.clone(), "run").await;
    assert_eq!(
        read_list(&saver, &head, CHANNEL).await,
        ["hello", message.as_str(), message.as_str()]
    );

    let (tag, data): (String, Vec<u8>) = raw(&path)
        .query_row(
            &format!(
                "SELECT {TYPE_TAG_TEXT}, data FROM checkpoint_blobs WHERE base_version IS NOT NULL"
            ),
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .expect("the append row");
    assert_eq!(tag, "append/2");
    assert_eq!(&data[..2], &[b'm', 2], "item code, then the count");
    let header = delta.data.len() - data.len();
    assert!(
        header >= 60,
        "the text header is gone ({header} bytes saved)"
    );

    raw(&path)
        .execute(
            "UPDATE checkpoint_blobs SET data = x'7801' WHERE base_version IS NOT NULL",
            [],
        )
        .expect("corrupt the row");
    match saver.get_tuple(&head).await {
        Err(Error::Corrupt { location, reason }) => {
            assert_eq!(location.channel.as_deref(), Some(CHANNEL));
            assert!(reason.contains("item code"), "{reason}");
        }
        other => panic!("expected a corrupt-data error, got {other:?}"),
    }
}

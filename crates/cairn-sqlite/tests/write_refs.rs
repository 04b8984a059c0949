//! Pending writes stored as references to the items they appended (schema 8): stored that
//! way only when the checkpoint their step produced comes with them, read back byte for byte
//! through every read, and kept readable through deleting runs, copying and pruning.

mod support;
use support::{raw, temp_db, TYPE_TAG_TEXT};

use std::path::Path;

use cairn_checkpoint::conformance::helpers::put_channel;
use cairn_checkpoint::{
    ChannelVersion, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver,
    CheckpointSource, Error, ListQuery, PendingWrite, PruneStrategy, PutRequest, TaskWrites,
    TypedValue, ValueCodec,
};
use cairn_sqlite::SqliteSaver;

const CHANNEL: &str = "messages";

/// `(task, type tag)` of every stored write of `thread`, by task: the rows of
/// `checkpoint_writes` and the writes stored in checkpoint rows (schema 13).
fn stored_writes(path: &Path, thread: &str) -> Vec<(String, String)> {
    let conn = raw(path);
    SqliteSaver::register_sql_functions(&conn).expect("functions");
    conn.prepare(&format!(
        "SELECT task_id, tag FROM (
             SELECT task_id, {TYPE_TAG_TEXT} AS tag, idx FROM checkpoint_writes
             WHERE thread_id = ?1
             UNION ALL
             SELECT w.value ->> 'task_id', w.value ->> 'type_tag', w.value ->> 'idx'
             FROM checkpoints AS c, json_each(cairn_pending_writes_json(c.writes)) AS w
             WHERE c.thread_id = ?1 AND c.writes IS NOT NULL)
         ORDER BY task_id, idx"
    ))
    .and_then(|mut s| {
        s.query_map([thread], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<Vec<_>>>()
    })
    .expect("stored writes")
}

fn message(i: usize) -> String {
    format!("message {i}: {}", "x".repeat(150))
}

/// A chat step as the runtime stores it: the writes of tasks `a` (one message), `b` (two)
/// and `c` (a bookkeeping value), then the checkpoint appending the three messages, in one
/// `put_batch`.
struct Step {
    root: CheckpointConfig,
    head: CheckpointConfig,
    writes: Vec<(String, String, TypedValue)>,
}

async fn chat_step(saver: &SqliteSaver, thread: &str) -> Step {
    let codec = ValueCodec::default();
    let first = ChannelVersion::first_after(None);
    let root = put_channel(
        saver,
        &CheckpointConfig::thread(thread),
        CHANNEL,
        &first,
        codec.encode(&vec![message(0)]).expect("encode"),
        "first",
    )
    .await;
    let writes = vec![
        (
            "a".to_owned(),
            CHANNEL.to_owned(),
            codec.encode(&vec![message(1)]).expect("encode"),
        ),
        (
            "b".to_owned(),
            CHANNEL.to_owned(),
            codec.encode(&vec![message(2), message(3)]).expect("encode"),
        ),
        (
            "c".to_owned(),
            "branch:to:reply".to_owned(),
            codec.encode(&()).expect("encode"),
        ),
    ];
    let second = first.next();
    let mut checkpoint = Checkpoint::new();
    let delta = codec
        .encode_append(&first, [message(1), message(2), message(3)].iter())
        .expect("encode");
    checkpoint.channel_values.insert(CHANNEL.into(), delta);
    checkpoint
        .channel_versions
        .insert(CHANNEL.into(), second.clone());
    let request = PutRequest {
        config: root.clone(),
        writes: writes
            .iter()
            .map(|(task, channel, value)| TaskWrites {
                task_id: task.clone(),
                task_path: format!("~__pregel_pull, {task}"),
                writes: vec![(channel.clone(), value.clone())],
            })
            .collect(),
        checkpoint,
        metadata: CheckpointMetadata::new(CheckpointSource::Loop, 1).with_run_id("second"),
        new_versions: [(CHANNEL.to_owned(), second)].into(),
    };
    let head = saver
        .put_batch(vec![request])
        .await
        .expect("put_batch")
        .remove(0);
    Step { root, head, writes }
}

/// The writes of `tuple`'s checkpoint as `(task, channel, value)`, by task.
fn writes_of(pending: &[PendingWrite]) -> Vec<(String, String, TypedValue)> {
    let mut out: Vec<_> = pending
        .iter()
        .map(|w| (w.task_id.clone(), w.channel.clone(), w.value.clone()))
        .collect();
    out.sort_by(|x, y| x.0.cmp(&y.0));
    out
}

async fn assert_writes_read_back(saver: &SqliteSaver, step: &Step, at: &CheckpointConfig) {
    let tuple = saver.get_tuple(at).await.expect("get").expect("stored");
    assert_eq!(writes_of(&tuple.pending_writes), step.writes, "get_tuple");
    let listed = saver
        .list(&ListQuery::thread(&at.thread_id))
        .await
        .expect("list");
    let root = listed
        .iter()
        .find(|t| t.config.checkpoint_id == at.checkpoint_id)
        .expect("listed");
    assert_eq!(writes_of(&root.pending_writes), step.writes, "list");
}

#[tokio::test]
async fn appended_items_are_stored_once_and_every_read_rebuilds_the_writes() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let step = chat_step(&saver, "t").await;
    assert_eq!(
        stored_writes(&path, "t"),
        [
            ("a".into(), "ref/append".into()),
            ("b".into(), "ref/append".into()),
            ("c".into(), "msgpack".into()),
        ],
        "the message writes refer to the appended items; the other write is stored as given"
    );
    assert_writes_read_back(&saver, &step, &step.root).await;
    let head = saver
        .get_tuple(&step.head)
        .await
        .expect("get")
        .expect("stored");
    let messages: Vec<String> = head
        .channel_value(&ValueCodec::default(), CHANNEL)
        .expect("decode")
        .expect("a value");
    assert_eq!(messages, (0..4).map(message).collect::<Vec<_>>());
}

#[tokio::test]
async fn writes_stored_on_their_own_keep_their_values() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let codec = ValueCodec::default();
    let root = put_channel(
        &saver,
        &CheckpointConfig::thread("t"),
        CHANNEL,
        &ChannelVersion::first_after(None),
        codec.encode(&vec![message(0)]).expect("encode"),
        "first",
    )
    .await;
    let value = codec.encode(&vec![message(1)]).expect("encode");
    saver
        .put_writes(&root, vec![(CHANNEL.into(), value.clone())], "a", "")
        .await
        .expect("put_writes");
    assert_eq!(stored_writes(&path, "t"), [("a".into(), "msgpack".into())]);
}

/// Deleting the run that stored the appended value keeps the value the older checkpoint's
/// writes refer to; so do copying the thread and pruning it to its latest checkpoint.
#[tokio::test]
async fn the_values_writes_refer_to_outlive_their_checkpoint() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let step = chat_step(&saver, "t").await;
    saver
        .delete_for_runs(&["second".into()])
        .await
        .expect("delete the run");
    assert!(saver.get_tuple(&step.head).await.expect("get").is_none());
    assert_writes_read_back(&saver, &step, &step.root).await;

    saver.copy_thread("t", "u").await.expect("copy");
    let copied = CheckpointConfig {
        thread_id: "u".into(),
        ..step.root.clone()
    };
    assert_writes_read_back(&saver, &step, &copied).await;

    saver
        .prune(&["t".into()], PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    assert_writes_read_back(&saver, &step, &step.root).await;
}

/// Pruning to the latest checkpoint rewrites its append value whole; writes counted from the
/// end of that value still find their items.
#[tokio::test]
async fn a_reference_survives_its_value_being_rewritten_whole() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let step = chat_step(&saver, "t").await;
    // The value the writes refer to becomes whole, as `prune` stores a kept head.
    let (tag, data): (String, Vec<u8>) = {
        let tuple = saver
            .get_tuple(&step.head)
            .await
            .expect("get")
            .expect("stored");
        let whole = tuple.checkpoint.channel_values[CHANNEL].clone();
        (whole.type_tag, whole.data.to_vec())
    };
    raw(&path)
        .execute(
            "UPDATE checkpoint_blobs SET type_tag = ?1, data = ?2, base_version = NULL
             WHERE base_version IS NOT NULL",
            rusqlite::params![tag, data],
        )
        .expect("rewrite whole");
    assert_writes_read_back(&saver, &step, &step.root).await;
}

#[tokio::test]
async fn a_corrupt_reference_is_an_error_naming_the_write() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let step = chat_step(&saver, "t").await;
    // Task b's write, in its checkpoint's row (`packed_writes.rs`): after the task id (text
    // form, length 1, `b`) come its path, count, index and channel, then the `ref/append`
    // tag code (form 1, length 1, 0x08) and the reference's length and bytes; cut the
    // reference to two bytes.
    let conn = raw(&path);
    let stored: Vec<u8> = conn
        .query_row(
            "SELECT writes FROM checkpoints WHERE writes IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("stored writes");
    let find = |needle: &[u8], from: usize| {
        from + stored[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("stored form")
    };
    let tag = find(b"\x01\x01\x08", find(b"\x01\x01b", 0)) + 3;
    let len = usize::from(stored[tag]);
    let mut damaged = stored[..tag].to_vec();
    damaged.extend_from_slice(b"\x02\x00\x01");
    damaged.extend_from_slice(&stored[tag + 1 + len..]);
    conn.execute(
        "UPDATE checkpoints SET writes = ?1 WHERE writes IS NOT NULL",
        [&damaged],
    )
    .expect("corrupt the reference");
    match saver.get_tuple(&step.root).await {
        Err(Error::Corrupt { location, reason }) => {
            assert_eq!(location.channel.as_deref(), Some(CHANNEL));
            assert_eq!(location.checkpoint_id, step.root.checkpoint_id);
            assert!(reason.contains("task b"), "{reason}");
        }
        other => panic!("expected a corrupt-data error, got {other:?}"),
    }
    // Reclaiming cannot tell what the corrupt write needs, so it refuses to delete.
    match saver.delete_for_runs(&["second".into()]).await {
        Err(Error::Corrupt { .. }) => {}
        other => panic!("expected a corrupt-data error, got {other:?}"),
    }
}

/// What [`input_and_step`] stored.
struct InputStep {
    input_config: CheckpointConfig,
    input_value: TypedValue,
}

/// On thread `t`: a root checkpoint (run `first`) with one message, then in one `put_batch`
/// an input checkpoint (run `input_run`) whose `__start__` map holds two messages and a
/// topic, with the same map in a state channel `notes`, and the START step's checkpoint (run
/// `step_run`) appending both messages. No pending writes: the START task's write would
/// refer to the same items and keep them by itself.
async fn input_and_step(saver: &SqliteSaver, input_run: &str, step_run: &str) -> InputStep {
    let codec = ValueCodec::default();
    let first = ChannelVersion::first_after(None);
    let root = put_channel(
        saver,
        &CheckpointConfig::thread("t"),
        CHANNEL,
        &first,
        codec.encode(&vec![message(0)]).expect("encode"),
        "first",
    )
    .await;
    let input_value = codec
        .encode(&serde_json::json!({"messages": [message(1), message(2)], "topic": "x"}))
        .expect("encode");
    let mut input = Checkpoint::new();
    let start_version = ChannelVersion::first_after(None);
    for channel in ["__start__", "notes"] {
        input
            .channel_values
            .insert(channel.into(), input_value.clone());
        input
            .channel_versions
            .insert(channel.into(), start_version.clone());
    }
    input.channel_versions.insert(CHANNEL.into(), first.clone());
    let second = first.next();
    let mut step = input.successor();
    step.channel_values.clear();
    let delta = codec
        .encode_append(&first, [message(1), message(2)].iter())
        .expect("encode");
    step.channel_values.insert(CHANNEL.into(), delta);
    step.channel_versions.insert(CHANNEL.into(), second.clone());
    let input_config = CheckpointConfig {
        checkpoint_id: Some(input.id.clone()),
        ..root.clone()
    };
    let requests = vec![
        PutRequest {
            config: root,
            writes: Vec::new(),
            checkpoint: input,
            metadata: CheckpointMetadata::new(CheckpointSource::Input, 0).with_run_id(input_run),
            new_versions: [
                ("__start__".to_owned(), start_version.clone()),
                ("notes".to_owned(), start_version),
            ]
            .into(),
        },
        PutRequest {
            config: input_config.clone(),
            writes: Vec::new(),
            checkpoint: step,
            metadata: CheckpointMetadata::new(CheckpointSource::Loop, 1).with_run_id(step_run),
            new_versions: [(CHANNEL.to_owned(), second)].into(),
        },
    ];
    saver.put_batch(requests).await.expect("put_batch");
    InputStep {
        input_config,
        input_value,
    }
}

/// Deleting the run that stored both the input and the checkpoint it refers to leaves none of
/// their values: the deleted input does not keep the appended items alive.
#[tokio::test]
async fn deleting_an_input_with_what_it_refers_to_reclaims_both() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    input_and_step(&saver, "second", "second").await;
    let rows = |sql: &str| -> i64 { raw(&path).query_row(sql, [], |r| r.get(0)).expect("count") };
    assert_eq!(
        rows("SELECT count(*) FROM checkpoint_blobs WHERE channel = 'messages'"),
        2
    );
    saver
        .delete_for_runs(&["second".into()])
        .await
        .expect("delete the run");
    assert_eq!(
        rows("SELECT count(*) FROM checkpoint_blobs WHERE channel = 'messages'"),
        1,
        "only the root's value is left"
    );
    assert_eq!(
        rows("SELECT count(*) FROM checkpoint_blobs WHERE channel <> 'messages'"),
        0
    );
}

/// An input checkpoint's `__start__` value (`{"messages": [...], "topic": ...}`) stored in
/// the same batch as the checkpoint that appended those messages: the list entry is stored
/// as a reference to the appended items, the other entry inline; the value reads back byte
/// for byte, also after the checkpoint it refers to is deleted.
#[tokio::test]
async fn an_input_value_refers_to_the_items_a_later_checkpoint_appended() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let InputStep {
        input_config,
        input_value,
    } = input_and_step(&saver, "first", "second").await;
    let tag: String = raw(&path)
        .query_row(
            &format!("SELECT {TYPE_TAG_TEXT} FROM checkpoint_blobs WHERE channel = '__start__'"),
            [],
            |r| r.get(0),
        )
        .expect("the input row");
    assert_eq!(tag, "ref/map");
    let notes_tag: String = raw(&path)
        .query_row(
            &format!("SELECT {TYPE_TAG_TEXT} FROM checkpoint_blobs WHERE channel = 'notes'"),
            [],
            |r| r.get(0),
        )
        .expect("the state row");
    assert_eq!(notes_tag, "msgpack");

    let read_input = |saver: SqliteSaver, config: CheckpointConfig| async move {
        let tuple = saver
            .get_tuple(&config)
            .await
            .expect("get")
            .expect("stored");
        tuple.checkpoint.channel_values["__start__"].clone()
    };
    assert_eq!(
        read_input(saver.clone(), input_config.clone()).await,
        input_value
    );
    let listed = saver.list(&ListQuery::thread("t")).await.expect("list");
    let listed_input = listed
        .iter()
        .find(|t| t.config == input_config)
        .expect("listed");
    assert_eq!(
        listed_input.checkpoint.channel_values["__start__"],
        input_value
    );

    // The checkpoint whose items it refers to goes; the input still reads back.
    saver
        .delete_for_runs(&["second".into()])
        .await
        .expect("delete the run");
    assert_eq!(
        read_input(saver.clone(), input_config.clone()).await,
        input_value
    );
    saver
        .prune(&["t".into()], PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    assert_eq!(
        read_input(saver.clone(), input_config.clone()).await,
        input_value
    );

    raw(&path)
        .execute(
            "UPDATE checkpoint_blobs SET data = x'01' WHERE channel = '__start__'",
            [],
        )
        .expect("corrupt the row");
    match saver.get_tuple(&input_config).await {
        Err(Error::Corrupt { location, reason }) => {
            assert_eq!(location.channel.as_deref(), Some("__start__"));
            assert!(reason.contains("references"), "{reason}");
        }
        other => panic!("expected a corrupt-data error, got {other:?}"),
    }
}

/// Versions a caller chooses (integers) may be reused across forks, overwriting the value a
/// reference would name: writes under them keep their own bytes.
#[tokio::test]
async fn writes_against_values_under_caller_chosen_versions_keep_their_bytes() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let codec = ValueCodec::default();
    let root = put_channel(
        &saver,
        &CheckpointConfig::thread("t"),
        CHANNEL,
        &ChannelVersion::Int(1),
        codec.encode(&vec![message(0)]).expect("encode"),
        "first",
    )
    .await;
    let write = codec.encode(&vec![message(1)]).expect("encode");
    let mut checkpoint = Checkpoint::new();
    checkpoint.channel_values.insert(
        CHANNEL.into(),
        codec
            .encode_append(&ChannelVersion::Int(1), [message(1)].iter())
            .expect("encode"),
    );
    checkpoint
        .channel_versions
        .insert(CHANNEL.into(), ChannelVersion::Int(2));
    saver
        .put_writes_and_put(
            &root,
            vec![(CHANNEL.into(), write.clone())],
            "a",
            "",
            checkpoint,
            CheckpointMetadata::new(CheckpointSource::Loop, 1),
            [(CHANNEL.to_owned(), ChannelVersion::Int(2))].into(),
        )
        .await
        .expect("put");
    assert_eq!(stored_writes(&path, "t"), [("a".into(), "msgpack".into())]);
    let tuple = saver.get_tuple(&root).await.expect("get").expect("stored");
    assert_eq!(tuple.pending_writes[0].value, write);
}

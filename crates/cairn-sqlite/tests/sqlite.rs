//! Behaviour specific to the SQLite backend: corruption, concurrency, several savers on one
//! file, reopening, migrations, storage layout.

mod support;
use support::{raw, temp_db};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use cairn_checkpoint::{
    ChannelVersion, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver,
    CheckpointSource, Error, InMemorySaver, ListQuery, PruneStrategy, TypedValue, ValueCodec,
};
use cairn_sqlite::{SqliteOptions, SqliteSaver, Synchronous};
use serde_json::json;

fn count(path: &Path, sql: &str) -> i64 {
    raw(path).query_row(sql, [], |r| r.get(0)).expect("count")
}

fn value(v: impl serde::Serialize) -> TypedValue {
    ValueCodec::default().encode(&v).expect("encode")
}

/// Puts a chain of `n` checkpoints on `thread`; step i sets channel `counter` to i and keeps
/// channel `fixed` from step 0. Returns the stored configs.
async fn chain(saver: &dyn CheckpointSaver, thread: &str, n: usize) -> Vec<CheckpointConfig> {
    let mut configs = Vec::new();
    let mut config = CheckpointConfig::thread(thread);
    let mut cp = Checkpoint::new();
    let mut counter_version: Option<ChannelVersion> = None;
    for i in 0..n {
        cp = cp.successor();
        let v = saver.get_next_version(counter_version.as_ref());
        let mut new_versions = vec![("counter".to_string(), v.clone())];
        cp.channel_values.clear();
        cp.channel_values.insert("counter".into(), value(i));
        cp.channel_versions.insert("counter".into(), v.clone());
        if i == 0 {
            cp.channel_values
                .insert("fixed".into(), value("x".repeat(1000)));
            cp.channel_versions
                .insert("fixed".into(), ChannelVersion::Int(1));
            new_versions.push(("fixed".to_string(), ChannelVersion::Int(1)));
        }
        counter_version = Some(v);
        let meta = CheckpointMetadata::new(CheckpointSource::Loop, i as i64)
            .with_run_id(format!("run-{}", i % 2));
        config = saver
            .put(
                &config,
                cp.clone(),
                meta,
                new_versions.into_iter().collect(),
            )
            .await
            .expect("put");
        configs.push(config.clone());
    }
    configs
}

fn corrupt_location(err: Error) -> (String, Option<String>) {
    match err {
        Error::Corrupt { location, .. } => (location.thread_id, location.checkpoint_id),
        other => panic!("expected Error::Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn corrupt_metadata_is_an_error_naming_thread_and_checkpoint() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let configs = chain(&saver, "t-meta", 3).await;
    chain(&saver, "t-healthy", 2).await;
    let broken = configs[1].checkpoint_id.clone().expect("id");
    raw(&path)
        .execute(
            "UPDATE checkpoints SET metadata = '{not json' WHERE checkpoint_id = unhex(replace(?1, '-', ''))",
            [&broken],
        )
        .expect("corrupt");

    let err = saver.get_tuple(&configs[1]).await.expect_err("corrupt");
    assert!(err.to_string().contains(&broken), "{err}");
    assert_eq!(
        corrupt_location(err),
        ("t-meta".to_string(), Some(broken.clone()))
    );
    let err = saver
        .list(&ListQuery::thread("t-meta"))
        .await
        .expect_err("list");
    assert_eq!(corrupt_location(err).1, Some(broken.clone()));
    // A metadata filter must not hide the damaged row.
    let err = saver
        .list(&ListQuery::thread("t-meta").filter("step", 1))
        .await
        .expect_err("filtered list");
    assert_eq!(corrupt_location(err).1, Some(broken.clone()));

    // The rest of the thread, and other threads, stay readable.
    let latest = saver
        .get_tuple(&CheckpointConfig::thread("t-meta"))
        .await
        .expect("latest")
        .expect("present");
    assert_eq!(latest.config, configs[2]);
    assert_eq!(
        saver
            .list(&ListQuery::thread("t-meta").before(broken))
            .await
            .expect("older")
            .len(),
        1
    );
    assert_eq!(
        saver
            .list(&ListQuery::thread("t-healthy"))
            .await
            .expect("other thread")
            .len(),
        2
    );
}

/// A pending write's type tag or task path stored as a code the reader does not know (a
/// damaged file, or one written by a newer Cairn) is corrupt data of that checkpoint.
#[tokio::test]
async fn a_damaged_stored_tag_or_task_path_is_corrupt_data_of_its_checkpoint() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let configs = chain(&saver, "t-tag", 2).await;
    saver
        .put_writes(
            &configs[0],
            vec![("fixed".into(), value("y"))],
            "task",
            "~__pregel_pull, node",
        )
        .await
        .expect("put_writes");
    let broken = configs[0].checkpoint_id.clone().expect("id");
    // The writes are stored in their checkpoint's row (`packed_writes.rs`): the task path as
    // a code byte and the node, the type tag as a code byte after the channel.
    let stored: Vec<u8> = raw(&path)
        .query_row(
            "SELECT writes FROM checkpoints WHERE writes IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .expect("the stored writes");
    let at = |needle: &[u8]| {
        stored
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("stored form")
    };
    let path_code = at(b"\x01\x05\x40node") + 2;
    let tag_code = at(b"\x05fixed\x01\x01\x01") + 8;
    for code_at in [tag_code, path_code] {
        let mut damaged = stored.clone();
        damaged[code_at] = 0x3e;
        raw(&path)
            .execute(
                "UPDATE checkpoints SET writes = ?1 WHERE writes IS NOT NULL",
                [&damaged],
            )
            .expect("damage");
        let err = saver.get_tuple(&configs[0]).await.expect_err("damaged");
        assert!(err.to_string().contains("unknown stored"), "{err}");
        assert_eq!(
            corrupt_location(err),
            ("t-tag".to_string(), Some(broken.clone()))
        );
        // The rest of the thread stays readable.
        saver
            .get_tuple(&configs[1])
            .await
            .expect("the other checkpoint");
        raw(&path)
            .execute(
                "UPDATE checkpoints SET writes = ?1 WHERE writes IS NOT NULL",
                [&stored],
            )
            .expect("repair");
    }
    let tuple = saver
        .get_tuple(&configs[0])
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(tuple.pending_writes[0].task_path, "~__pregel_pull, node");
    assert_eq!(tuple.pending_writes[0].value.type_tag, "msgpack");
}

#[tokio::test]
async fn corrupt_header_is_an_error_naming_thread_and_checkpoint() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let configs = chain(&saver, "t-header", 2).await;
    let broken = configs[0].checkpoint_id.clone().expect("id");
    // 0xc1 is never used in MessagePack; then a truncated header.
    for bytes in [vec![0xc1u8, 0xff, 0x00], vec![0x87, 0xa1]] {
        raw(&path)
            .execute(
                "UPDATE checkpoints SET header = ?1 WHERE checkpoint_id = unhex(replace(?2, '-', ''))",
                rusqlite::params![bytes, broken],
            )
            .expect("corrupt");
        let err = saver.get_tuple(&configs[0]).await.expect_err("corrupt");
        assert!(err.to_string().contains("header"), "{err}");
        assert_eq!(
            corrupt_location(err),
            ("t-header".to_string(), Some(broken.clone()))
        );
        let err = saver
            .list(&ListQuery::thread("t-header"))
            .await
            .expect_err("list");
        assert_eq!(corrupt_location(err).1, Some(broken.clone()));
        assert!(saver
            .get_tuple(&configs[1])
            .await
            .expect("intact")
            .is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_concurrent_tasks_write_one_file_without_locking_errors() {
    let (_dir, path) = temp_db();
    let saver = Arc::new(SqliteSaver::open(&path).expect("open"));
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..64 {
        let saver = Arc::clone(&saver);
        tasks.spawn(async move {
            let thread = format!("t-{task}");
            let configs = chain(saver.as_ref(), &thread, 10).await;
            let last = configs.last().expect("configs");
            saver
                .put_writes(last, vec![("ch".into(), value(task))], "task", "")
                .await
                .expect("put_writes");
            // Also read while others write.
            let tuple = saver
                .get_tuple(&CheckpointConfig::thread(thread))
                .await
                .expect("read")
                .expect("present");
            assert_eq!(&tuple.config, last);
            assert_eq!(tuple.pending_writes.len(), 1);
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    assert_eq!(count(&path, "SELECT COUNT(*) FROM checkpoints"), 640);
    // Each write went into its checkpoint's row (`packed_writes.rs`).
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM checkpoints WHERE writes IS NOT NULL"
        ),
        64
    );
    assert_eq!(count(&path, "SELECT COUNT(*) FROM checkpoint_writes"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_savers_on_one_file_both_write_and_see_each_other() {
    let (_dir, path) = temp_db();
    let a = Arc::new(SqliteSaver::open(&path).expect("open a"));
    let b = Arc::new(SqliteSaver::open(&path).expect("open b"));
    let mut tasks = tokio::task::JoinSet::new();
    for (name, saver) in [("a", Arc::clone(&a)), ("b", Arc::clone(&b))] {
        for i in 0..8 {
            let saver = Arc::clone(&saver);
            tasks.spawn(async move { chain(saver.as_ref(), &format!("{name}-{i}"), 15).await });
        }
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    for (reader, writer) in [(&a, "b"), (&b, "a")] {
        for i in 0..8 {
            let listed = reader
                .list(&ListQuery::thread(format!("{writer}-{i}")))
                .await
                .expect("list");
            assert_eq!(listed.len(), 15, "{writer}-{i} as seen by the other saver");
        }
    }
}

#[tokio::test]
async fn data_survives_dropping_and_reopening_the_saver() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let configs = chain(&saver, "t", 5).await;
    saver
        .put_writes(&configs[4], vec![("ch".into(), value([1, 2]))], "task", "p")
        .await
        .expect("writes");
    let before = saver.list(&ListQuery::thread("t")).await.expect("list");
    drop(saver);

    let reopened = SqliteSaver::open(&path).expect("reopen");
    let after = reopened.list(&ListQuery::thread("t")).await.expect("list");
    assert_eq!(after, before);
    // The integer version is still an integer, the string ones still strings.
    let latest = &after[0];
    assert_eq!(
        latest.checkpoint.channel_versions.get("fixed"),
        Some(&ChannelVersion::Int(1))
    );
    assert!(matches!(
        latest.checkpoint.channel_versions.get("counter"),
        Some(ChannelVersion::Str(_))
    ));
    assert_eq!(
        latest
            .channel_value::<usize>(&ValueCodec::default(), "counter")
            .expect("decode"),
        Some(4)
    );
}

#[tokio::test]
async fn migrations_run_once_and_reopening_is_a_no_op() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    assert_eq!(
        saver.schema_version().await.expect("version"),
        cairn_sqlite::SCHEMA_VERSION
    );
    drop(saver);
    let rows = |path: &Path| -> Vec<(i64, String)> {
        let conn = raw(path);
        let mut stmt = conn
            .prepare("SELECT version, applied_at FROM cairn_migrations ORDER BY version")
            .expect("prepare");
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows")
    };
    let first = rows(&path);
    assert_eq!(first.len() as i64, cairn_sqlite::SCHEMA_VERSION);
    for _ in 0..2 {
        let again = SqliteSaver::open(&path).expect("reopen");
        chain(&again, "t", 1).await;
    }
    assert_eq!(rows(&path), first, "no migration ran again");
    let user_version: i64 = raw(&path)
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(user_version, cairn_sqlite::SCHEMA_VERSION);
    let journal: String = raw(&path)
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal_mode");
    assert_eq!(journal, "wal");
}

#[tokio::test]
async fn channel_values_are_stored_once_per_version() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let configs = chain(&saver, "t", 100).await;
    // 100 versions of `counter`, one of the 1000-byte `fixed`: not 100 copies of it.
    assert_eq!(count(&path, "SELECT COUNT(*) FROM checkpoint_blobs"), 101);
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM checkpoint_blobs WHERE channel = 'fixed'"
        ),
        1
    );
    let middle = saver
        .get_tuple(&configs[50])
        .await
        .expect("get")
        .expect("present");
    let codec = ValueCodec::default();
    assert_eq!(
        middle.channel_value::<usize>(&codec, "counter").unwrap(),
        Some(50)
    );
    assert_eq!(
        middle
            .channel_value::<String>(&codec, "fixed")
            .unwrap()
            .map(|s| s.len()),
        Some(1000)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failing_request_fails_alone_and_the_rest_of_its_batch_commits() {
    let (_dir, path) = temp_db();
    let saver = Arc::new(SqliteSaver::open(&path).expect("open"));
    let target = chain(saver.as_ref(), "t", 1).await.remove(0);
    raw(&path)
        .execute_batch(
            // Writes go into their checkpoint's row (`packed_writes.rs`), the channel name
            // as its bytes.
            "CREATE TRIGGER refuse_boom BEFORE UPDATE OF writes ON checkpoints
             WHEN instr(NEW.writes, CAST('boom' AS BLOB)) > 0
             BEGIN SELECT RAISE(ABORT, 'boom refused'); END",
        )
        .expect("trigger");

    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..40 {
        let saver = Arc::clone(&saver);
        let target = target.clone();
        tasks.spawn(async move {
            if i % 10 == 5 {
                // All or nothing: the `ok` write before `boom` must be undone too.
                let writes = vec![("ok".into(), value(i)), ("boom".into(), value(i))];
                let err = saver
                    .put_writes(&target, writes, &format!("bad-{i}"), "")
                    .await
                    .expect_err("refused");
                assert!(err.to_string().contains("boom refused"), "{err}");
            } else {
                chain(saver.as_ref(), &format!("good-{i}"), 3).await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("task");
    }
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM checkpoints WHERE thread_id LIKE 'good-%'"
        ),
        36 * 3
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM checkpoints WHERE writes IS NOT NULL"
        ),
        0
    );
    assert_eq!(count(&path, "SELECT COUNT(*) FROM checkpoint_writes"), 0);
}

#[tokio::test]
async fn prune_and_delete_for_runs_reclaim_only_unreferenced_values() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open(&path).expect("open");
    let configs = chain(&saver, "t", 10).await;
    chain(&saver, "other", 4).await;
    saver
        .put_writes(&configs[9], vec![("ch".into(), value(1))], "task", "")
        .await
        .expect("writes");
    saver
        .put_writes(&configs[3], vec![("ch".into(), value(1))], "task", "")
        .await
        .expect("writes");

    // Runs alternate: run-1 owns the odd steps. `fixed` (written at step 0, run-0) stays
    // referenced by the surviving even steps.
    saver
        .delete_for_runs(&["run-1".to_string()])
        .await
        .expect("delete runs");
    let left = saver.list(&ListQuery::thread("t")).await.expect("list");
    assert_eq!(left.len(), 5);
    assert!(left
        .iter()
        .all(|t| t.metadata.run_id.as_deref() == Some("run-0")));
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM checkpoint_blobs WHERE thread_id = 't'"
        ),
        5 + 1
    );
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM checkpoints WHERE thread_id = 't' AND writes IS NOT NULL"
        ),
        0,
        "writes of deleted checkpoints go with them"
    );

    saver
        .prune(&["t".to_string()], PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    let left = saver.list(&ListQuery::thread("t")).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].metadata.step, Some(8));
    assert_eq!(
        count(
            &path,
            "SELECT COUNT(*) FROM checkpoint_blobs WHERE thread_id = 't'"
        ),
        2,
        "the kept checkpoint's `counter` and `fixed`"
    );
    let codec = ValueCodec::default();
    assert_eq!(
        left[0].channel_value::<usize>(&codec, "counter").unwrap(),
        Some(8)
    );
    assert!(left[0]
        .channel_value::<String>(&codec, "fixed")
        .unwrap()
        .is_some());
    assert_eq!(
        saver
            .list(&ListQuery::thread("other"))
            .await
            .expect("other")
            .len(),
        2,
        "delete_for_runs spans threads; prune does not"
    );
}

/// Lists with every kind of metadata filter must agree with the in-memory reference saver.
#[tokio::test]
async fn metadata_filters_and_limits_agree_with_the_reference_saver() {
    let sqlite = SqliteSaver::in_memory().expect("open");
    let model = InMemorySaver::new();
    let extras = [
        json!({"user": "ada", "score": 42, "ratio": 0.5, "flag": true, "tags": ["a", "b"]}),
        json!({"user": "bob", "score": 42, "ratio": 1.5, "flag": false, "nested": {"k": 1}}),
        json!({"user": "ada", "score": -3, "ratio": 0.5, "flag": true, "maybe": null}),
        json!({"user": "ada", "score": 42.0, "flag": true, "tags": ["a", "b"], "odd key.x": 1}),
        json!({"user": "42", "score": "42", "nested": {"k": 1}}),
    ];
    for (i, extra) in extras.iter().enumerate() {
        let mut meta = CheckpointMetadata::new(CheckpointSource::Loop, i as i64);
        for (k, v) in extra.as_object().expect("object") {
            meta = meta.with(k.clone(), v.clone());
        }
        for saver in [&sqlite as &dyn CheckpointSaver, &model] {
            let cp = Checkpoint::new();
            let config = CheckpointConfig::thread(format!("t{}", i % 2));
            saver
                .put(&config, cp, meta.clone(), Default::default())
                .await
                .expect("put");
        }
    }
    let filters = [
        json!({"user": "ada"}),
        json!({"score": 42}),
        json!({"score": 42.0}),
        json!({"score": "42"}),
        json!({"score": -3}),
        json!({"ratio": 0.5}),
        json!({"flag": true}),
        json!({"flag": false}),
        json!({"maybe": null}),
        json!({"tags": ["a", "b"]}),
        json!({"nested": {"k": 1}}),
        json!({"odd key.x": 1}),
        json!({"missing": 1}),
        json!({"user": "ada", "flag": true, "step": 3}),
        json!({"source": "loop"}),
    ];
    for filter in filters {
        for limit in [None, Some(1), Some(2)] {
            for thread in [None, Some("t0")] {
                let mut query = ListQuery::all();
                query.thread_id = thread.map(str::to_owned);
                query.limit = limit;
                for (k, v) in filter.as_object().expect("object") {
                    query = query.filter(k.clone(), v.clone());
                }
                // Only this test's checkpoints: steps and metadata come from both savers.
                let ids = |tuples: Vec<cairn_checkpoint::CheckpointTuple>| -> Vec<Option<i64>> {
                    tuples.into_iter().map(|t| t.metadata.step).collect()
                };
                let got = ids(sqlite.list(&query).await.expect("sqlite list"));
                let want = ids(model.list(&query).await.expect("model list"));
                assert_eq!(
                    got, want,
                    "filter {filter}, limit {limit:?}, thread {thread:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn in_memory_savers_are_private_to_each_instance() {
    let a = SqliteSaver::in_memory().expect("a");
    let b = SqliteSaver::in_memory().expect("b");
    chain(&a, "t", 2).await;
    assert_eq!(a.list(&ListQuery::thread("t")).await.expect("a").len(), 2);
    assert!(b.list(&ListQuery::thread("t")).await.expect("b").is_empty());
    assert!(a.storage_bytes().await.expect("size") > 0);
    assert_eq!(a.path(), None);
}

#[tokio::test]
async fn storage_figures_and_wal_checkpoint() {
    let (_dir, path) = temp_db();
    let saver = SqliteSaver::open_with(
        &path,
        SqliteOptions::default().synchronous(Synchronous::Full),
    )
    .expect("open");
    chain(&saver, "t", 50).await;
    let wal = {
        let mut p = path.clone().into_os_string();
        p.push("-wal");
        PathBuf::from(p)
    };
    let total = saver.storage_bytes().await.expect("size");
    assert!(std::fs::metadata(&wal).expect("wal").len() > 0);
    assert!(total >= std::fs::metadata(&path).expect("db").len());
    saver.checkpoint_wal().await.expect("checkpoint");
    assert_eq!(std::fs::metadata(&wal).expect("wal").len(), 0);
    assert_eq!(
        saver.storage_bytes().await.expect("size"),
        std::fs::metadata(&path).expect("db").len()
    );
    let ids: BTreeSet<_> = saver
        .list(&ListQuery::thread("t"))
        .await
        .expect("list")
        .into_iter()
        .map(|t| t.config.checkpoint_id)
        .collect();
    assert_eq!(ids.len(), 50);
}

/// Savers opening and closing one file all the time (as short-lived processes do) while
/// another saver writes: SQLite can report "database is locked" to a connection switching
/// to WAL mode without calling the busy handler.
#[test]
fn savers_opening_one_file_while_it_is_written_all_succeed() {
    let (_dir, path) = temp_db();
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let writer = SqliteSaver::open(&path).expect("open");
    let writing = runtime.spawn(async move {
        let mut tasks = tokio::task::JoinSet::new();
        for t in 0..16 {
            let writer = writer.clone();
            tasks.spawn(async move { chain(&writer, &format!("w{t}"), 30).await });
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("writer task");
        }
    });
    let barrier = Arc::new(std::sync::Barrier::new(8));
    let openers: Vec<_> = (0..8)
        .map(|_| {
            let (path, barrier) = (path.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || -> cairn_checkpoint::Result<()> {
                barrier.wait();
                for _ in 0..25 {
                    drop(SqliteSaver::open(&path)?);
                }
                Ok(())
            })
        })
        .collect();
    for opener in openers {
        opener.join().expect("thread").expect("open");
    }
    runtime.block_on(writing).expect("writes");
    assert_eq!(
        count(&path, "SELECT COUNT(*) FROM cairn_migrations"),
        cairn_sqlite::SCHEMA_VERSION,
        "the migrations ran exactly once"
    );
}

/// Switching a new file to WAL: SQLite answers "database is locked" at once, without the
/// busy handler, to all but one of the connections racing to do it; they must retry.
#[test]
fn savers_racing_to_create_one_new_file_all_open() {
    for _ in 0..60 {
        let (_dir, path) = temp_db();
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let openers: Vec<_> = (0..3)
            .map(|_| {
                let (path, barrier) = (path.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    barrier.wait();
                    SqliteSaver::open(&path).map(drop)
                })
            })
            .collect();
        for opener in openers {
            opener.join().expect("thread").expect("open");
        }
    }
}

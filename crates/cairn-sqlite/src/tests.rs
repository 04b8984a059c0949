//! Unit tests of the queries themselves: they must search indexes, never scan tables.

use rusqlite::Connection;

use crate::read::{
    ANY_WRITE_ROW_SQL, EXACT_SQL, LATEST_SQL, ONE_BLOB_SQL, ONE_CHECKPOINT_WRITES_SQL,
};
use crate::schema::migrate;

/// Stores an empty checkpoint with `metadata` as a child of `config`.
async fn put_empty(
    saver: &crate::SqliteSaver,
    config: &cairn_checkpoint::CheckpointConfig,
    metadata: cairn_checkpoint::CheckpointMetadata,
) -> cairn_checkpoint::Result<cairn_checkpoint::CheckpointConfig> {
    use cairn_checkpoint::CheckpointSaver;
    let checkpoint = cairn_checkpoint::Checkpoint::new();
    saver
        .put(config, checkpoint, metadata, Default::default())
        .await
}

fn migrated() -> Connection {
    let mut conn = Connection::open_in_memory().expect("open");
    migrate(&mut conn).expect("migrate");
    conn
}

/// The `detail` column of `EXPLAIN QUERY PLAN sql`.
fn plan(conn: &Connection, sql: &str, params: &[&dyn rusqlite::ToSql]) -> Vec<String> {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .expect("prepare");
    stmt.query_map(params, |r| r.get::<_, String>(3))
        .expect("query")
        .collect::<rusqlite::Result<_>>()
        .expect("rows")
}

fn fill(conn: &Connection) {
    // Enough rows, then ANALYZE, so the planner's choice reflects a real, large thread.
    let tx = conn.unchecked_transaction().expect("tx");
    for i in 0..2000 {
        tx.execute(
            "INSERT INTO checkpoints VALUES ('t', '', ?1, NULL, x'00', '{}', NULL, NULL)",
            [format!("{i:08}")],
        )
        .expect("insert");
        tx.execute(
            "INSERT INTO checkpoint_blobs VALUES ('t', '', 'c', ?1, 'msgpack', x'00', NULL)",
            [format!("{i:08}")],
        )
        .expect("insert");
        tx.execute(
            "INSERT INTO checkpoint_writes VALUES ('t', '', ?1, 'task', 0, '', 'c', 'msgpack', x'00')",
            [format!("{i:08}")],
        )
        .expect("insert");
    }
    tx.commit().expect("commit");
    conn.execute_batch("ANALYZE").expect("analyze");
}

/// `plan` searches `table` (or its alias) through an index or its primary key, scans nothing but the JSON key
/// list, and needs no sort.
fn assert_searches(plan: &[String], table: &str) {
    let joined = plan.join(" | ");
    assert!(
        plan.iter()
            .any(|d| d.starts_with(&format!("SEARCH {table} USING"))),
        "expected an index or primary-key search of {table}: {joined}"
    );
    assert!(
        plan.iter()
            .all(|d| !d.starts_with("SCAN") || d.starts_with("SCAN k VIRTUAL TABLE")),
        "the query scans a table: {joined}"
    );
    assert!(
        !joined.contains("TEMP B-TREE"),
        "the query sorts in a temporary b-tree: {joined}"
    );
}

#[test]
fn latest_checkpoint_query_is_an_index_seek_not_a_scan() {
    let conn = migrated();
    fill(&conn);
    let p = plan(&conn, LATEST_SQL, &[&"t", &""]);
    assert_searches(&p, "checkpoints");
    let p = plan(&conn, EXACT_SQL, &[&"t", &"", &"00000007"]);
    assert_searches(&p, "checkpoints");
}

#[test]
fn value_and_write_lookups_search_their_primary_keys() {
    let conn = migrated();
    fill(&conn);
    let p = plan(&conn, ONE_BLOB_SQL, &[&"t", &"", &"c", &"00000001"]);
    assert_searches(&p, "checkpoint_blobs");
    let p = plan(&conn, ONE_CHECKPOINT_WRITES_SQL, &[&"t", &"", &"00000001"]);
    assert_searches(&p, "checkpoint_writes");
    let p = plan(&conn, ANY_WRITE_ROW_SQL, &[&"t", &""]);
    assert_searches(&p, "checkpoint_writes");
}

#[test]
fn migrating_twice_applies_nothing_the_second_time() {
    let mut conn = Connection::open_in_memory().expect("open");
    assert_eq!(
        migrate(&mut conn).expect("first"),
        vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    );
    assert_eq!(migrate(&mut conn).expect("second"), Vec::<i64>::new());
    let v: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .expect("user_version");
    assert_eq!(v, crate::SCHEMA_VERSION);
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_error() {
    let mut conn = migrated();
    conn.execute(
        "INSERT INTO cairn_migrations VALUES (99, 'future', 'now')",
        [],
    )
    .expect("insert");
    let err = migrate(&mut conn).expect_err("newer schema");
    assert!(err.to_string().contains("newer Cairn"), "{err}");
}

#[test]
fn listing_one_namespace_walks_the_primary_key_without_sorting() {
    let conn = migrated();
    fill(&conn);
    let query = cairn_checkpoint::ListQuery::thread("t")
        .ns("")
        .before("00000100")
        .filter("source", "loop")
        .limit(10);
    let (sql, params, exact) = crate::read::list_sql(&query);
    assert!(exact, "a string filter is applied in SQL, with the limit");
    let p = plan(
        &conn,
        &sql,
        &params
            .iter()
            .map(|v| v as &dyn rusqlite::ToSql)
            .collect::<Vec<_>>(),
    );
    assert_searches(&p, "checkpoints");
}

#[test]
fn listing_a_whole_thread_streams_newest_first() {
    let conn = migrated();
    fill(&conn);
    let query = cairn_checkpoint::ListQuery::thread("t").limit(10);
    let (sql, params, _) = crate::read::list_sql(&query);
    let p = plan(
        &conn,
        &sql,
        &params
            .iter()
            .map(|v| v as &dyn rusqlite::ToSql)
            .collect::<Vec<_>>(),
    );
    let joined = p.join(" | ");
    assert!(
        joined.contains("SEARCH checkpoints USING PRIMARY KEY (thread_id=? AND checkpoint_ns=?)"),
        "the root namespace along the primary key: {joined}"
    );
    assert!(
        joined.contains("SEARCH checkpoints USING INDEX checkpoints_thread_recent (thread_id=?)"),
        "the other namespaces along the partial index: {joined}"
    );
    assert!(joined.contains("MERGE (UNION ALL)"), "{joined}");
    assert!(
        !joined.contains("TEMP B-TREE"),
        "sorts the whole thread: {joined}"
    );
}

#[test]
fn finding_the_checkpoints_of_runs_searches_the_runs_table() {
    let conn = migrated();
    fill(&conn);
    conn.execute_batch(
        "UPDATE checkpoints SET run_id = 'run-' || (CAST(checkpoint_id AS INTEGER) / 3);
         INSERT INTO checkpoint_runs SELECT DISTINCT run_id, thread_id, checkpoint_ns
         FROM checkpoints;
         ANALYZE",
    )
    .expect("run ids");
    let p = plan(
        &conn,
        crate::ops::RUNS_AFFECTED_SQL,
        &[&r#"["run-1","run-7"]"#],
    );
    let joined = p.join(" | ");
    assert!(
        joined.contains("SEARCH checkpoint_runs USING PRIMARY KEY (run_id=?)"),
        "{joined}"
    );
    assert!(
        p.iter()
            .filter(|d| d.starts_with("SCAN"))
            .all(|d| d.contains("VIRTUAL TABLE")),
        "{joined}"
    );
}

#[test]
fn pruning_forgets_runs_with_one_search_per_namespace() {
    let conn = migrated();
    fill(&conn);
    let p = plan(
        &conn,
        crate::ops::FORGET_RUNS_BUT_KEPT_SQL,
        &[&"t", &"", &"00000007"],
    );
    let joined = p.join(" | ");
    assert!(
        joined.contains("SEARCH checkpoints USING PRIMARY KEY (thread_id=? AND checkpoint_ns=?)"),
        "{joined}"
    );
    assert!(!joined.contains("SCAN"), "{joined}");
    let p = plan(&conn, crate::ops::FORGET_THREAD_RUNS_SQL, &[&"t"]);
    let joined = p.join(" | ");
    assert!(
        joined.contains("SEARCH checkpoints USING PRIMARY KEY (thread_id=?)"),
        "{joined}"
    );
    assert!(!joined.contains("SCAN"), "{joined}");
}

mod writer_failures {
    use std::sync::Arc;

    use cairn_checkpoint::{Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver};
    use tokio::sync::mpsc;

    use crate::{Inner, SqliteSaver};

    #[tokio::test]
    async fn a_stopped_writer_is_a_clear_error_not_a_panic() {
        let (writer, receiver) = mpsc::channel(1);
        drop(receiver);
        let saver = SqliteSaver {
            inner: Arc::new(Inner {
                writer,
                inline: None,
                // What the writer thread leaves when it stops: no connection.
                writer_conn: Arc::new(std::sync::Mutex::new(None)),
                checkpoints: None,
                busy_timeout: std::time::Duration::from_secs(1),
                writer_thread: None,
                writer_stopped: std::sync::Mutex::new(std::sync::mpsc::channel().1),
                readers: None,
                path: None,
                counters: Default::default(),
                concurrency: Default::default(),
            }),
        };
        let err = super::put_empty(
            &saver,
            &CheckpointConfig::thread("t"),
            CheckpointMetadata::default(),
        )
        .await
        .expect_err("no writer");
        assert!(
            err.to_string().contains("writer thread has stopped"),
            "{err}"
        );
        let err = saver
            .get_tuple(&CheckpointConfig::thread("t"))
            .await
            .expect_err("no writer");
        assert!(
            err.to_string().contains("writer thread has stopped"),
            "{err}"
        );
    }

    /// `get_tuple_known` reads on the write connection when it is idle and on a read
    /// connection while something holds it: both give the same checkpoint.
    #[tokio::test]
    // Holding the write connection across the read is the point: it stands for a commit.
    #[allow(clippy::await_holding_lock)]
    async fn get_tuple_reads_on_a_read_connection_while_the_writer_is_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let saver = SqliteSaver::open(dir.path().join("held.db")).expect("open");
        let stored = super::put_empty(
            &saver,
            &CheckpointConfig::thread("t"),
            CheckpointMetadata::default(),
        )
        .await
        .expect("put");
        let id = stored.checkpoint_id.clone().expect("an id");
        let known = || cairn_checkpoint::KnownValues {
            checkpoint_id: &id,
            channels: &[],
        };
        let on_writer = saver
            .get_tuple_known(&CheckpointConfig::thread("t"), known())
            .await
            .expect("get")
            .expect("stored");
        let held = saver.inner.writer_conn.lock().expect("lock");
        assert!(held.is_some(), "the writer's connection is there to hold");
        let on_reader = saver
            .get_tuple_known(&CheckpointConfig::thread("t"), known())
            .await
            .expect("get")
            .expect("stored");
        drop(held);
        assert_eq!(on_writer, on_reader);
        assert_eq!(on_reader.config, stored);

        // A request that panicked holding the connection poisons its lock; the next read
        // on it clears that instead of leaving the shortcut off for good.
        let conn = Arc::clone(&saver.inner.writer_conn);
        let panicked = std::thread::spawn(move || {
            let _held = conn.lock();
            panic!("a request panicking on the write connection");
        })
        .join();
        assert!(panicked.is_err());
        assert!(saver.inner.writer_conn.is_poisoned());
        let after = saver
            .get_tuple_known(&CheckpointConfig::thread("t"), known())
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(after, on_writer);
        assert!(!saver.inner.writer_conn.is_poisoned());
    }

    /// A read on the write connection that fails half-way (a damaged header) ends its read
    /// transaction: the writes after it commit instead of finding a transaction open.
    #[tokio::test]
    async fn a_failed_read_on_the_write_connection_leaves_no_transaction_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let saver = SqliteSaver::open(dir.path().join("damaged.db")).expect("open");
        let config = CheckpointConfig::thread("t");
        let stored = super::put_empty(&saver, &config, CheckpointMetadata::default())
            .await
            .expect("put");
        let id = stored.checkpoint_id.clone().expect("an id");
        {
            let held = saver.inner.writer_conn.lock().expect("lock");
            let conn = held.as_ref().expect("the write connection");
            conn.execute("UPDATE checkpoints SET header = x'c1'", [])
                .expect("damage the header");
        }
        let known = cairn_checkpoint::KnownValues {
            checkpoint_id: &id,
            channels: &[],
        };
        let err = saver
            .get_tuple_known(&config, known)
            .await
            .expect_err("a damaged header is an error");
        assert!(err.to_string().contains("header"), "{err}");
        {
            let held = saver.inner.writer_conn.lock().expect("lock");
            let conn = held.as_ref().expect("the write connection");
            assert!(conn.is_autocommit(), "the read transaction was left open");
        }
        let next = super::put_empty(&saver, &stored, CheckpointMetadata::default())
            .await
            .expect("a write after the failed read commits");
        let latest = saver
            .get_tuple(&config)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(latest.config, next);
    }

    /// `checkpoint_wal` reports a checkpoint that a reader keeps from completing instead of
    /// returning as if the WAL were copied, and completes once the reader is done.
    #[tokio::test]
    async fn a_wal_checkpoint_a_reader_blocks_is_an_error_not_a_silent_no_op() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("blocked.db");
        let options =
            crate::SqliteOptions::default().busy_timeout(std::time::Duration::from_millis(100));
        let saver = SqliteSaver::open_with(&path, options).expect("open");
        let config = CheckpointConfig::thread("t");
        let first = super::put_empty(&saver, &config, CheckpointMetadata::default())
            .await
            .expect("put");
        // Another connection reads in a transaction: its snapshot holds the WAL.
        let reader = rusqlite::Connection::open(&path).expect("open a reader");
        reader.execute_batch("BEGIN").expect("begin");
        let _: i64 = reader
            .query_row("SELECT COUNT(*) FROM checkpoints", [], |r| r.get(0))
            .expect("read");
        super::put_empty(&saver, &first, CheckpointMetadata::default())
            .await
            .expect("put");
        let err = saver
            .checkpoint_wal()
            .await
            .expect_err("a reader keeps the WAL in use");
        assert!(err.to_string().contains("still in use"), "{err}");
        assert!(err.to_string().contains("busy_timeout"), "{err}");

        reader.execute_batch("COMMIT").expect("end the read");
        saver.checkpoint_wal().await.expect("checkpoint");
        let wal = std::fs::metadata(dir.path().join("blocked.db-wal")).expect("wal");
        assert_eq!(wal.len(), 0, "TRUNCATE empties the WAL");
    }

    /// Past 1 000 WAL pages a commit asks the checkpointer thread for a checkpoint, which
    /// runs while commits go on (the WAL starting over: see the next test).
    #[tokio::test]
    async fn the_checkpointer_thread_keeps_the_wal_short() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("wal.db");
        let saver = SqliteSaver::open(&path).expect("open");
        let codec = cairn_checkpoint::ValueCodec::default();
        let mut parent = CheckpointConfig::thread("t");
        let put = |parent: CheckpointConfig, size: usize| {
            let saver = saver.clone();
            let value = codec.encode(&"x".repeat(size)).expect("value");
            async move {
                let mut cp = Checkpoint::new();
                let version = saver.get_next_version(None);
                cp.channel_values.insert("big".into(), value);
                cp.channel_versions.insert("big".into(), version.clone());
                saver
                    .put(
                        &parent,
                        cp,
                        CheckpointMetadata::default(),
                        [("big".to_owned(), version)].into(),
                    )
                    .await
                    .expect("put")
            }
        };
        // About 1 100 pages of 4 KiB, in commits of about 25.
        for _ in 0..44 {
            parent = put(parent, 100_000).await;
        }
        let checkpoints = saver.inner.checkpoints.clone().expect("a file database");
        // Nothing writes now, so the last checkpoint copied the whole WAL.
        checkpoints.wait_idle();
        assert!(saver.writer_stats().wal_checkpoints >= 1);
        // The database holds everything: the latest checkpoint reads back whole.
        let last = put(parent, 10).await;
        let read = saver.get_tuple(&last).await.expect("get").expect("stored");
        assert_eq!(read.config, last);
    }

    /// Under commits that never pause, background passes never copy the whole WAL; the
    /// commit after one finishes the checkpoint (or, past three times the threshold, waits
    /// for the pass first), so the WAL still starts over instead of growing with everything
    /// written.
    #[tokio::test]
    async fn the_wal_stays_short_under_commits_that_never_pause() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("steady.db");
        let saver = SqliteSaver::open(&path).expect("open");
        let value = cairn_checkpoint::ValueCodec::default()
            .encode(&"x".repeat(100_000))
            .expect("value");
        let mut parent = CheckpointConfig::thread("t");
        let mut largest_wal = 0;
        // About 6 000 pages (24 MB) in commits of about 25 pages.
        for _ in 0..240 {
            let mut cp = Checkpoint::new();
            let version = saver.get_next_version(None);
            cp.channel_values.insert("big".into(), value.clone());
            cp.channel_versions.insert("big".into(), version.clone());
            parent = saver
                .put(
                    &parent,
                    cp,
                    CheckpointMetadata::default(),
                    [("big".to_owned(), version)].into(),
                )
                .await
                .expect("put");
            let wal = std::fs::metadata(dir.path().join("steady.db-wal")).map_or(0, |m| m.len());
            largest_wal = largest_wal.max(wal);
        }
        let passes = saver.writer_stats().wal_checkpoints;
        assert!(passes >= 1);
        // One pass per ~1 000 pages written, not one per commit: a pass asked for while
        // another runs would collide with the finish and keep the WAL from starting over.
        assert!(passes <= 12, "{passes} background passes for ~6 000 pages");
        // Past 3 000 pages (12 MB) commits wait for the background pass, whatever the
        // timing; a few more commits may land while the writer thread picks that up.
        assert!(
            largest_wal < 16 << 20,
            "the WAL grew to {largest_wal} bytes for 24 MB written"
        );
    }

    #[tokio::test]
    async fn a_panicking_request_fails_alone_and_the_writer_keeps_working() {
        let saver = SqliteSaver::in_memory().expect("open");
        let err = saver
            .write(|_| panic!("a bug in a write request"))
            .await
            .expect_err("panicked");
        assert!(err.to_string().contains("panicked"), "{err}");
        let err = saver
            .on_writer(|_| -> cairn_checkpoint::Result<()> { panic!("a bug in a read") })
            .await
            .expect_err("panicked");
        assert!(err.to_string().contains("stopped"), "{err}");
        super::put_empty(
            &saver,
            &CheckpointConfig::thread("t"),
            CheckpointMetadata::default(),
        )
        .await
        .expect("the writer still works");
        assert!(saver
            .get_tuple(&CheckpointConfig::thread("t"))
            .await
            .expect("read")
            .is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_queued_together_commit_in_one_transaction() {
    use cairn_checkpoint::{Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver};

    let saver = crate::SqliteSaver::in_memory().expect("open");
    // Hold the writer thread until 20 puts are queued behind it.
    let gate = WriterGate::hold(&saver).await;
    let before = saver.writer_stats();
    let mut puts = tokio::task::JoinSet::new();
    for i in 0..20 {
        let saver = saver.clone();
        puts.spawn(async move {
            saver
                .put(
                    &CheckpointConfig::thread(format!("t{i}")),
                    Checkpoint::new(),
                    CheckpointMetadata::default(),
                    Default::default(),
                )
                .await
        });
    }
    gate.release_when_queued(&saver, 20).await;
    while let Some(done) = puts.join_next().await {
        done.expect("join").expect("put");
    }
    let after = saver.writer_stats();
    assert_eq!(after.requests - before.requests, 20);
    assert_eq!(
        after.batches - before.batches,
        1,
        "one transaction for all 20"
    );
}

/// Holds the writer thread busy until released, so that requests queue up behind it and
/// are committed as one batch.
struct WriterGate {
    release: std::sync::mpsc::Sender<()>,
    task: tokio::task::JoinHandle<cairn_checkpoint::Result<()>>,
}

impl WriterGate {
    async fn hold(saver: &crate::SqliteSaver) -> WriterGate {
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let task = {
            let saver = saver.clone();
            tokio::spawn(async move {
                saver
                    .on_writer(move |_| {
                        let _ = started_tx.send(());
                        let _ = release_rx.recv();
                        Ok(())
                    })
                    .await
            })
        };
        started_rx.await.expect("writer busy");
        WriterGate { release, task }
    }

    /// Lets the writer go once `n` requests wait in its queue.
    async fn release_when_queued(self, saver: &crate::SqliteSaver, n: usize) {
        let writer = &saver.inner.writer;
        while writer.max_capacity() - writer.capacity() < n {
            tokio::task::yield_now().await;
        }
        self.release.send(()).expect("release");
        self.task.await.expect("join").expect("gate");
    }
}

/// A saver with a `scratch (k TEXT PRIMARY KEY, v BLOB)` table for write requests of tests.
async fn scratch_saver() -> crate::SqliteSaver {
    let saver = crate::SqliteSaver::in_memory().expect("open");
    saver
        .write(|conn| {
            conn.execute_batch("CREATE TABLE scratch (k TEXT PRIMARY KEY, v BLOB)")
                .map_err(crate::sql_error("creating the scratch table"))
        })
        .await
        .expect("scratch table");
    saver
}

/// Inserts key `k` (and `bytes` zero bytes) into the scratch table.
fn insert_scratch(
    conn: &rusqlite::Connection,
    k: &str,
    bytes: i64,
) -> cairn_checkpoint::Result<()> {
    conn.execute(
        "INSERT INTO scratch (k, v) VALUES (?1, zeroblob(?2))",
        rusqlite::params![k, bytes],
    )
    .map(drop)
    .map_err(crate::sql_error("inserting"))
}

/// The scratch table's keys, in order.
async fn scratch_keys(saver: &crate::SqliteSaver) -> Vec<String> {
    saver
        .on_writer(|conn| {
            let mut stmt = conn
                .prepare("SELECT k FROM scratch ORDER BY k")
                .map_err(crate::sql_error("listing"))?;
            let keys = stmt
                .query_map([], |r| r.get(0))
                .and_then(|rows| rows.collect())
                .map_err(crate::sql_error("listing"));
            keys
        })
        .await
        .expect("keys")
}

/// Queues `ops` behind a held writer so that they commit as one batch; their results in
/// order.
async fn run_as_one_batch(
    saver: &crate::SqliteSaver,
    ops: Vec<crate::writer::WriteOp>,
) -> Vec<cairn_checkpoint::Result<()>> {
    let gate = WriterGate::hold(saver).await;
    let n = ops.len();
    let mut requests = tokio::task::JoinSet::new();
    for (i, op) in ops.into_iter().enumerate() {
        let saver = saver.clone();
        requests.spawn(async move { (i, saver.write_queued(op).await) });
    }
    gate.release_when_queued(saver, n).await;
    let mut results: Vec<_> = requests.join_all().await;
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// A batch is first run without savepoints; when a request fails (an error or a panic) the
/// batch is rolled back and run again with one savepoint per request: the failing requests
/// are undone alone, including what they wrote before failing, the rest commit once, and
/// nothing is stored twice (the scratch table's key would refuse a second insert).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_request_in_a_batch_is_undone_alone() {
    let saver = scratch_saver().await;
    let before = saver.writer_stats();
    let ops: Vec<crate::writer::WriteOp> = (0..6)
        .map(|i| -> crate::writer::WriteOp {
            match i {
                2 => Box::new(|conn| {
                    insert_scratch(conn, "refused", 1)?;
                    Err(cairn_checkpoint::Error::InvalidArgument("refused".into()))
                }),
                4 => Box::new(|conn| {
                    insert_scratch(conn, "panicked", 1)?;
                    panic!("a bug in a write request")
                }),
                _ => Box::new(move |conn| insert_scratch(conn, &format!("k{i}"), 1)),
            }
        })
        .collect();
    let results = run_as_one_batch(&saver, ops).await;
    for (i, result) in results.into_iter().enumerate() {
        match i {
            2 => assert!(result.expect_err("refused").to_string().contains("refused")),
            4 => assert!(result
                .expect_err("panicked")
                .to_string()
                .contains("panicked")),
            _ => result.expect("stored"),
        }
    }
    assert_eq!(scratch_keys(&saver).await, ["k0", "k1", "k3", "k5"]);
    let after = saver.writer_stats();
    assert_eq!(after.requests - before.requests, 6);
    assert_eq!(
        after.batches - before.batches,
        1,
        "one commit for the batch"
    );
}

/// A request whose failure makes SQLite roll back the whole transaction (here the database
/// is full) gets its own error, and the rest of its batch is stored without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ends_the_transaction_fails_alone_with_its_own_error() {
    let saver = scratch_saver().await;
    saver
        .on_writer(|conn| {
            let pages: i64 = conn
                .query_row("PRAGMA page_count", [], |r| r.get(0))
                .map_err(crate::sql_error("page count"))?;
            conn.pragma_update(None, "max_page_count", pages + 20)
                .map_err(crate::sql_error("max page count"))
        })
        .await
        .expect("limit the database");
    let ops: Vec<crate::writer::WriteOp> = vec![
        Box::new(|conn| insert_scratch(conn, "k0", 100)),
        Box::new(|conn| insert_scratch(conn, "huge", 1 << 20)),
        Box::new(|conn| insert_scratch(conn, "k2", 100)),
    ];
    let results = run_as_one_batch(&saver, ops).await;
    let err = results[1].as_ref().expect_err("too large for the database");
    assert!(err.to_string().contains("full"), "{err}");
    assert!(results[0].is_ok() && results[2].is_ok(), "{results:?}");
    assert_eq!(scratch_keys(&saver).await, ["k0", "k2"]);
}

mod shutdown {
    use cairn_checkpoint::{Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver};

    use crate::SqliteSaver;

    #[test]
    fn dropping_the_last_handle_closes_the_writer_and_removes_the_wal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cairn.db");
        let wal = dir.path().join("cairn.db-wal");
        let shm = dir.path().join("cairn.db-shm");
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let saver = SqliteSaver::open(&path).expect("open");
        let clone = saver.clone();
        rt.block_on(async {
            clone
                .put(
                    &CheckpointConfig::thread("t"),
                    Checkpoint::new(),
                    CheckpointMetadata::default(),
                    Default::default(),
                )
                .await
                .expect("put");
        });
        assert!(wal.exists(), "WAL mode keeps a -wal file while open");
        drop(saver);
        assert!(wal.exists(), "a clone still holds the store open");
        drop(clone);
        assert!(!wal.exists(), "the -wal file is removed on close");
        assert!(!shm.exists(), "the -shm file is removed on close");
        // The data made it into the database file.
        let reopened = SqliteSaver::open(&path).expect("reopen");
        let got = rt
            .block_on(reopened.get_tuple(&CheckpointConfig::thread("t")))
            .expect("get");
        assert!(got.is_some());
    }
}

mod inline_writes {
    use cairn_checkpoint::{Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver};

    use crate::{SqliteSaver, WriteConcurrency, SOLO_STREAK};

    /// Writes commit inline only once [`SOLO_STREAK`] writes in a row overlapped no other;
    /// one overlap starts the count again.
    #[test]
    fn writes_commit_inline_after_a_streak_of_writes_one_at_a_time() {
        let writes = WriteConcurrency::default();
        for _ in 0..SOLO_STREAK {
            assert!(!writes.enter().1, "not before the streak");
        }
        for _ in 0..100 {
            assert!(writes.enter().1, "writes one at a time commit inline");
        }
        let (held, inline) = writes.enter();
        assert!(inline);
        let (overlapping, inline) = writes.enter();
        assert!(!inline, "a write overlapping another queues");
        drop((held, overlapping));
        for _ in 0..SOLO_STREAK {
            assert!(
                !writes.enter().1,
                "the streak starts again after an overlap"
            );
        }
        assert!(writes.enter().1);
        assert_eq!(
            writes.in_flight.load(std::sync::atomic::Ordering::Acquire),
            0,
            "every guard dropped"
        );
    }

    /// A write commits on the calling thread when writes come one at a time; when another
    /// connection holds the write lock it must not fail (nor block the caller's thread in the busy handler) but
    /// wait on the writer thread and commit once the lock is released.
    #[tokio::test]
    async fn a_write_behind_another_connections_lock_waits_and_commits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("cairn.db");
        let saver = SqliteSaver::open(&path).expect("open");
        let put = |thread: &'static str| {
            let saver = saver.clone();
            async move {
                saver
                    .put(
                        &CheckpointConfig::thread(thread),
                        Checkpoint::new(),
                        CheckpointMetadata::default(),
                        Default::default(),
                    )
                    .await
            }
        };
        // Enough writes one at a time that the next one tries to commit inline.
        for _ in 0..=crate::SOLO_STREAK {
            put("before").await.expect("uncontended put");
        }
        assert!(
            saver.inner.concurrency.enter().1,
            "the next write may commit inline"
        );

        let other = rusqlite::Connection::open(&path).expect("second connection");
        other
            .execute_batch("BEGIN IMMEDIATE")
            .expect("take the write lock");
        let mut pending = Box::pin(put("behind"));
        // The lock is held, so the put cannot have finished; this also polls it once, so it
        // has tried to commit inline and been queued for the writer thread.
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), &mut pending)
                .await
                .is_err(),
            "a put cannot commit while another connection holds the write lock"
        );
        other
            .execute_batch("COMMIT")
            .expect("release the write lock");
        pending
            .await
            .expect("the queued put commits after the lock is released");
        let got = saver
            .get_tuple(&CheckpointConfig::thread("behind"))
            .await
            .expect("get");
        assert!(got.is_some());
    }
}

mod append_values {
    use rusqlite::Connection;

    use super::{assert_searches, migrated, plan};
    use crate::ops::RECLAIM_SQL;
    use crate::read::CHAIN_SQL;

    /// 50 threads of 100 checkpoints, each referring to one version of channel `c`, stored
    /// as an append value extending the previous version; then ANALYZE, so the planner sees
    /// a store with many threads.
    fn fill_chains(conn: &Connection) {
        let tx = conn.unchecked_transaction().expect("tx");
        for t in 0..50 {
            let thread = format!("t{t}");
            for i in 0..100 {
                let version = format!("{i:08}");
                let base = (i > 0).then(|| format!("{:08}", i - 1));
                tx.execute(
                    "INSERT INTO checkpoints VALUES (?1, '', ?2, NULL, x'00', '{}', NULL, NULL)",
                    rusqlite::params![thread, version],
                )
                .expect("insert");
                tx.execute(
                    "INSERT INTO checkpoint_blobs VALUES (?1, '', 'c', ?2, 'append', x'00', ?3)",
                    rusqlite::params![thread, version, base],
                )
                .expect("insert");
            }
        }
        tx.commit().expect("commit");
        conn.execute_batch("ANALYZE").expect("analyze");
    }

    /// The chain links of a channel are one range of the primary key: the three key columns
    /// by equality and the version by its upper bound, also when the bound is null (every
    /// version).
    #[test]
    fn chain_links_are_one_range_of_the_primary_key() {
        let conn = migrated();
        fill_chains(&conn);
        for keys in [
            r#"[["t1","","c","00000050"],["t2","","c","00000007"]]"#,
            r#"[["t1","","c",null]]"#,
        ] {
            let p = plan(&conn, CHAIN_SQL, &[&keys]);
            assert_searches(&p, "b");
            let joined = p.join(" | ");
            assert!(
                joined.contains("(thread_id=? AND checkpoint_ns=? AND channel=? AND version<?)"),
                "expected a range of versions in one channel: {joined}"
            );
        }
    }

    /// Reclaiming deletes within the namespace's range of the primary key and follows each
    /// chain link with a search of it: nothing is scanned but the JSON list of the values the
    /// checkpoints refer to and the recursive query's own queue.
    #[test]
    fn reclaiming_searches_the_primary_key() {
        let conn = migrated();
        fill_chains(&conn);
        let named = r#"[["c","00000050"],["c","00000099"]]"#;
        let p = plan(&conn, RECLAIM_SQL, &[&"t1", &"", &named]);
        let joined = p.join(" | ");
        for expected in [
            "SEARCH checkpoint_blobs USING PRIMARY KEY (thread_id=? AND checkpoint_ns=?)",
            "SEARCH b USING PRIMARY KEY \
             (thread_id=? AND checkpoint_ns=? AND channel=? AND version=?)",
        ] {
            assert!(
                p.iter().any(|d| d == expected),
                "expected {expected:?}: {joined}"
            );
        }
        assert!(
            p.iter()
                .filter(|d| d.starts_with("SCAN"))
                .all(|d| d == "SCAN live" || d.starts_with("SCAN k VIRTUAL TABLE")),
            "the query scans a table: {joined}"
        );
    }

    /// A database written before the base column existed gets it filled in for the append
    /// values it already holds; whole values and malformed headers keep NULL.
    #[test]
    fn migrating_fills_in_the_base_of_stored_append_values() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(crate::schema::first_migration_sql())
            .expect("schema 1");
        conn.execute_batch(
            "CREATE TABLE cairn_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                            applied_at TEXT NOT NULL);
             INSERT INTO cairn_migrations VALUES (1, 'schema 1', 'then');",
        )
        .expect("migration table");
        let codec = cairn_checkpoint::ValueCodec::default();
        let base = cairn_checkpoint::ChannelVersion::first_after(None);
        let append = codec
            .encode_append(&base, ["x"].iter())
            .expect("append value");
        let whole = codec.encode(&vec!["x"]).expect("whole value");
        let rows: [(&str, &str, Vec<u8>); 4] = [
            ("append", "a", append.data.to_vec()),
            ("msgpack", "b", whole.data.to_vec()),
            ("append", "c", b"cairn-append/2\n1\nmsgpack\n0\n".to_vec()),
            ("append", "d", b"cairn-append/1\n".to_vec()),
        ];
        for (tag, version, data) in &rows {
            conn.execute(
                "INSERT INTO checkpoint_blobs VALUES ('t', '', 'm', ?1, ?2, ?3)",
                rusqlite::params![version, tag, data],
            )
            .expect("insert");
        }
        assert_eq!(
            crate::schema::migrate(&mut conn).expect("migrate"),
            vec![2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
        );
        // Schema 5 stores the base (Cairn's own form) as 16 bytes, the other versions as text.
        let bases: Vec<(String, Option<String>)> = conn
            .prepare(
                "SELECT version, cairn_version_text(base_version) FROM checkpoint_blobs
                 WHERE base_version IS NULL OR length(base_version) = 16 ORDER BY version",
            )
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert_eq!(
            bases,
            [
                ("a".into(), Some(base.to_storage_string())),
                ("b".into(), None),
                ("c".into(), None),
                ("d".into(), None),
            ]
        );
    }
}

mod upgrade {
    use std::collections::BTreeMap;

    use cairn_checkpoint::{
        ChannelVersion, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver,
        CheckpointSource, CheckpointTuple, ListQuery, PruneStrategy, ValueCodec,
    };
    use rusqlite::Connection;

    use crate::SqliteSaver;

    /// Two namespaces, append chains, whole values, integer versions, run ids and pending
    /// writes (a special channel's too).
    async fn write_history(saver: &SqliteSaver) {
        let codec = ValueCodec::default();
        for (ns, run) in [("", "run-a"), ("sub", "run-b")] {
            let mut parent = CheckpointConfig::thread("t");
            parent.checkpoint_ns = ns.into();
            let mut cp = Checkpoint::new();
            for step in 0..6i64 {
                let mut next = cp.successor();
                let base = next.channel_versions.get("messages").cloned();
                let v = saver.get_next_version(base.as_ref());
                let value = match &base {
                    Some(base) if step % 4 != 0 => codec
                        .encode_append(base, [&format!("m{step}")])
                        .expect("append"),
                    _ => codec
                        .encode(&(0..=step).map(|i| format!("m{i}")).collect::<Vec<_>>())
                        .expect("whole"),
                };
                next.channel_values.insert("messages".into(), value);
                next.channel_versions.insert("messages".into(), v.clone());
                let count = ChannelVersion::Int(step + 1);
                next.channel_values
                    .insert("count".into(), codec.encode(&step).expect("count"));
                next.channel_versions.insert("count".into(), count.clone());
                next.versions_seen
                    .insert("node".into(), [("count".to_owned(), count.clone())].into());
                next.updated_channels = Some(vec!["messages".into(), "count".into()]);
                let run = if step < 3 {
                    format!("{run}-1")
                } else {
                    format!("{run}-2")
                };
                let meta = CheckpointMetadata::new(CheckpointSource::Loop, step)
                    .with_run_id(run)
                    .with("user", "ada")
                    .with("tags", serde_json::json!(["x"]));
                if parent.checkpoint_id.is_some() {
                    saver
                        .put_writes(
                            &parent,
                            vec![
                                ("count".into(), codec.encode(&step).expect("w")),
                                ("__error__".into(), codec.encode("boom").expect("w")),
                            ],
                            "task",
                            "path",
                        )
                        .await
                        .expect("put_writes");
                }
                parent = saver
                    .put(
                        &parent,
                        next.clone(),
                        meta,
                        [("messages".into(), v), ("count".into(), count)].into(),
                    )
                    .await
                    .expect("put");
                next.channel_values.clear();
                cp = next;
            }
        }
    }

    async fn everything(saver: &SqliteSaver) -> Vec<CheckpointTuple> {
        saver.list(&ListQuery::default()).await.expect("list")
    }

    /// `checkpoint_runs` names exactly the runs, threads and namespaces of the stored
    /// checkpoints: nothing missing (delete_for_runs would miss them), nothing left behind.
    fn assert_runs_match_checkpoints(conn: &Connection, when: &str) {
        let difference = |sql: &str| -> Vec<(String, String, String)> {
            conn.prepare(sql)
                .expect("prepare")
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("query")
                .collect::<rusqlite::Result<_>>()
                .expect("rows")
        };
        let of_checkpoints = "SELECT DISTINCT run_id, thread_id, checkpoint_ns FROM checkpoints
                              WHERE run_id IS NOT NULL";
        let of_table = "SELECT run_id, thread_id, checkpoint_ns FROM checkpoint_runs";
        assert_eq!(
            difference(&format!("{of_checkpoints} EXCEPT {of_table}")),
            [],
            "runs missing from checkpoint_runs {when}"
        );
        assert_eq!(
            difference(&format!("{of_table} EXCEPT {of_checkpoints}")),
            [],
            "runs left in checkpoint_runs {when}"
        );
    }

    /// A file saver holding [`write_history`], and a connection of its own to the file.
    async fn with_history() -> (tempfile::TempDir, SqliteSaver, Connection) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("history.db");
        let saver = SqliteSaver::open(&path).expect("open");
        write_history(&saver).await;
        let conn = Connection::open(&path).expect("open");
        crate::stored_metadata::register_functions(&conn).expect("functions");
        (dir, saver, conn)
    }

    /// The run ids of the checkpoints `query` lists.
    async fn run_ids(saver: &SqliteSaver, query: &ListQuery) -> Vec<String> {
        let listed = saver.list(query).await.expect("list");
        listed
            .into_iter()
            .map(|t| t.metadata.run_id.unwrap_or_default())
            .collect()
    }

    /// The stored metadata leaves the run id to its column; reads put it back, filters on it
    /// use the column, and rows holding it in the JSON too (before schema 6) read the same.
    #[tokio::test]
    async fn the_run_id_is_stored_once_and_read_back_into_the_metadata() {
        let (_dir, saver, conn) = with_history().await;
        let in_json: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM checkpoints \
                 WHERE cairn_metadata_json(metadata) LIKE '%run_id%'",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(in_json, 0, "the run id is stored in its column only");
        let stored = everything(&saver).await;
        assert_eq!(stored.len(), 12);
        assert!(stored.iter().all(|t| t
            .metadata
            .run_id
            .as_deref()
            .is_some_and(|r| r.starts_with("run-"))));
        let run = |run: serde_json::Value| ListQuery::default().filter("run_id", run);
        assert_eq!(
            run_ids(&saver, &run("run-a-2".into()).filter("user", "ada")).await,
            ["run-a-2"; 3]
        );
        // A filter SQL cannot test (an array) is applied after decoding, with the run id.
        let tags = |tags: serde_json::Value| run("run-b-1".into()).filter("tags", tags);
        assert_eq!(
            run_ids(&saver, &tags(serde_json::json!(["x"]))).await,
            ["run-b-1"; 3]
        );
        assert!(run_ids(&saver, &tags(serde_json::json!(["y"])))
            .await
            .is_empty());
        assert!(saver.list(&run(5.into())).await.expect("list").is_empty());

        // A `run_id` among the caller's own keys is the run id; another one is refused.
        let keyed = CheckpointMetadata::default().with("run_id", "custom");
        let stored_keyed = super::put_empty(&saver, &CheckpointConfig::thread("keyed"), keyed)
            .await
            .expect("put");
        let listed = saver.list(&run("custom".into())).await.expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].config, stored_keyed);
        assert_eq!(listed[0].metadata.run_id.as_deref(), Some("custom"));
        for clash in [
            CheckpointMetadata::default()
                .with_run_id("real")
                .with("run_id", "custom"),
            CheckpointMetadata::default().with("run_id", 5),
        ] {
            let err = super::put_empty(&saver, &CheckpointConfig::thread("keyed"), clash)
                .await
                .expect_err("a second run id");
            assert!(err.to_string().contains("reserved"), "{err}");
        }
        saver.delete_thread("keyed").await.expect("delete");

        conn.execute(
            "UPDATE checkpoints SET metadata = \
             json_set(cairn_metadata_json(metadata), '$.run_id', run_id)",
            [],
        )
        .expect("old-style metadata");
        assert_eq!(everything(&saver).await, stored);
        let listed = saver.list(&run("run-a-2".into())).await.expect("list");
        assert_eq!(listed.len(), 3);
        // Filters in SQL read the JSON text of rows stored before schema 12 as well.
        assert_eq!(
            run_ids(&saver, &run("run-a-2".into()).filter("user", "ada")).await,
            ["run-a-2"; 3]
        );
    }

    /// Metadata is a blob of a few bytes since schema 12; a damaged one is reported as
    /// corrupt by reads and by filtered lists (the SQL filter lets the row through), never
    /// skipped or read wrong.
    #[tokio::test]
    async fn compact_metadata_is_a_few_bytes_and_damage_is_reported() {
        let (_dir, saver, conn) = with_history().await;
        let (kind, longest): (String, i64) = conn
            .query_row(
                "SELECT typeof(metadata), MAX(length(metadata)) FROM checkpoints",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("sizes");
        assert_eq!(kind, "blob");
        let expected = crate::stored_metadata::encode(
            &everything(&saver)
                .await
                .iter()
                .map(|t| t.metadata.clone())
                .max_by_key(|m| crate::stored_metadata::encode(m).map(|b| b.len()).ok())
                .expect("some metadata"),
        )
        .expect("encode");
        assert_eq!(longest, expected.len() as i64);

        let damaged: String = conn
            .query_row(
                "UPDATE checkpoints SET metadata = x'40' WHERE checkpoint_ns = '' \
                 AND checkpoint_id = (SELECT MAX(checkpoint_id) FROM checkpoints \
                                      WHERE checkpoint_ns = '') RETURNING thread_id",
                [],
                |r| r.get(0),
            )
            .expect("damage");
        let err = saver
            .get_tuple(&CheckpointConfig::thread(damaged.clone()))
            .await
            .expect_err("damaged metadata");
        assert!(err.to_string().contains("newer Cairn"), "{err}");
        let filtered = ListQuery::thread(damaged).filter("user", "nobody");
        let err = saver.list(&filtered).await.expect_err("reported");
        assert!(err.to_string().contains("flags 0x40"), "{err}");
    }

    /// Storing, copying, pruning, deleting runs and deleting threads keep `checkpoint_runs`
    /// in step with the checkpoints.
    #[tokio::test]
    async fn the_runs_table_follows_every_change() {
        let (_dir, saver, conn) = with_history().await;
        let runs: i64 = conn
            .query_row("SELECT COUNT(*) FROM checkpoint_runs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(runs, 4, "two runs in each of two namespaces");
        assert_runs_match_checkpoints(&conn, "after storing");
        saver.copy_thread("t", "t2").await.expect("copy");
        assert_runs_match_checkpoints(&conn, "after copy_thread");
        saver
            .delete_for_runs(&["run-a-1".into(), "run-b-2".into()])
            .await
            .expect("delete runs");
        assert_runs_match_checkpoints(&conn, "after delete_for_runs");
        let left = everything(&saver).await;
        assert_eq!(
            left.len(),
            12,
            "three of six per namespace, in both threads"
        );
        assert!(left.iter().all(|t| {
            let run = t.metadata.run_id.as_deref();
            run == Some("run-a-2") || run == Some("run-b-1")
        }));
        saver
            .prune(&["t".into()], PruneStrategy::KeepLatest)
            .await
            .expect("prune");
        assert_runs_match_checkpoints(&conn, "after prune");
        saver.delete_thread("t2").await.expect("delete");
        assert_runs_match_checkpoints(&conn, "after delete_thread");
        assert_eq!(everything(&saver).await.len(), 2);
    }

    /// A checkpoint row: thread, ns, id, parent, header, metadata, run id.
    type OldRow = (
        String,
        String,
        String,
        Option<String>,
        Vec<u8>,
        String,
        Option<String>,
    );

    /// Copies the database at `from` into a new schema-2 database at `to`, the way Cairn
    /// before schema 3 stored it: tables with rowids, headers as named MessagePack maps with
    /// the id, and `blob_refs`.
    fn write_schema_2_copy(from: &std::path::Path, to: &std::path::Path) {
        let mut old = Connection::open(to).expect("open");
        // Versions were text before schema 5.
        crate::version_key::register_functions(&old).expect("functions");
        crate::id_key::register_functions(&old).expect("functions");
        crate::stored_metadata::register_functions(&old).expect("functions");
        crate::packed_writes::register_functions(&old).expect("functions");
        let tx = old.transaction().expect("tx");
        tx.execute_batch(
            "CREATE TABLE cairn_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,
                                            applied_at TEXT NOT NULL)",
        )
        .expect("migrations table");
        for (version, name, sql) in crate::schema::migrations_up_to(2) {
            tx.execute_batch(sql).expect("old schema");
            tx.execute(
                "INSERT INTO cairn_migrations VALUES (?1, ?2, 'then')",
                rusqlite::params![version, name],
            )
            .expect("record");
        }
        tx.execute_batch("PRAGMA user_version = 2")
            .expect("user_version");
        tx.execute("ATTACH DATABASE ?1 AS new", [from.to_str().expect("path")])
            .expect("attach");
        tx.execute_batch(
            "INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type_tag,
                                           data, base_version)
             SELECT thread_id, checkpoint_ns, channel, cairn_version_text(version), type_tag,
                    data, cairn_version_text(base_version)
             FROM new.checkpoint_blobs;
             INSERT INTO checkpoint_writes
             SELECT thread_id, checkpoint_ns, cairn_id_text(checkpoint_id),
                    cairn_id_text(task_id), idx, task_path, channel, type_tag, data
             FROM new.checkpoint_writes;
             INSERT INTO checkpoint_writes
             SELECT c.thread_id, c.checkpoint_ns, cairn_id_text(c.checkpoint_id),
                    w.value ->> 'task_id', w.value ->> 'idx', w.value ->> 'task_path',
                    w.value ->> 'channel', w.value ->> 'type_tag',
                    unhex(w.value ->> 'data_hex')
             FROM new.checkpoints AS c, json_each(cairn_pending_writes_json(c.writes)) AS w
             WHERE c.writes IS NOT NULL;",
        )
        .expect("copy values and writes");
        let rows: Vec<OldRow> = tx
            .prepare(
                "SELECT thread_id, checkpoint_ns, cairn_id_text(checkpoint_id),
                        cairn_id_text(parent_checkpoint_id), header,
                        cairn_metadata_json(metadata), cairn_id_text(run_id)
                 FROM new.checkpoints",
            )
            .expect("prepare")
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .expect("query")
            .collect::<rusqlite::Result<_>>()
            .expect("rows");
        assert!(!rows.is_empty());
        for (thread, ns, id, parent, header, metadata, run_id) in rows {
            let checkpoint = crate::header::decode(&header, &id).expect("header");
            let named = rmp_serde::to_vec_named(&checkpoint).expect("named header");
            let refs: BTreeMap<&String, String> = checkpoint
                .channel_versions
                .iter()
                .map(|(c, v)| (c, v.to_storage_string()))
                .collect();
            tx.execute(
                "INSERT INTO checkpoints VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                rusqlite::params![
                    thread,
                    ns,
                    id,
                    parent,
                    named,
                    metadata,
                    run_id,
                    serde_json::to_string(&refs).expect("refs")
                ],
            )
            .expect("insert checkpoint");
        }
        tx.commit().expect("commit");
        old.execute("DETACH DATABASE new", []).expect("detach");
    }

    /// A schema-2 database upgrades in place on open: every checkpoint, value, append chain
    /// and pending write reads back as before, and pruning and deleting runs still keep
    /// exactly what the remaining checkpoints need.
    #[tokio::test]
    async fn a_schema_2_database_upgrades_in_place_with_its_data_intact() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (new_path, old_path) = (dir.path().join("new.db"), dir.path().join("old.db"));
        let saver = SqliteSaver::open(&new_path).expect("open");
        write_history(&saver).await;
        let expected = everything(&saver).await;
        assert_eq!(expected.len(), 12);
        drop(saver);
        write_schema_2_copy(&new_path, &old_path);

        let upgraded = SqliteSaver::open(&old_path).expect("open schema 2");
        assert_eq!(
            upgraded.schema_version().await.expect("version"),
            crate::SCHEMA_VERSION
        );
        assert_eq!(everything(&upgraded).await, expected);
        let latest = upgraded
            .get_tuple(&CheckpointConfig::thread("t"))
            .await
            .expect("get")
            .expect("latest");
        let root_latest = expected
            .iter()
            .find(|t| t.config.checkpoint_ns.is_empty())
            .expect("a root checkpoint");
        assert_eq!(&latest, root_latest);
        let conn = Connection::open(&old_path).expect("open");
        let (rowid_tables, autoindexes): (i64, i64) = conn
            .query_row(
                "SELECT SUM(name LIKE 'checkpoint%' AND type = 'table'
                            AND sql NOT LIKE '%WITHOUT ROWID%'),
                        SUM(name LIKE 'sqlite_autoindex_checkpoint%')
                 FROM sqlite_schema",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("schema");
        assert_eq!((rowid_tables, autoindexes), (0, 0));
        // Schema 9: the UUID ids became their 16 bytes (and read back as the same text above).
        let text_ids: i64 = conn
            .query_row(
                "SELECT count(*) FROM checkpoints
                 WHERE typeof(checkpoint_id) <> 'blob' OR length(checkpoint_id) <> 16
                    OR (parent_checkpoint_id IS NOT NULL
                        AND typeof(parent_checkpoint_id) <> 'blob')",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(text_ids, 0, "every checkpoint and parent id is 16 bytes");
        assert_runs_match_checkpoints(&conn, "right after the upgrade");

        // Deleting a run reclaims only values no remaining checkpoint (or chain) needs.
        upgraded
            .delete_for_runs(&["run-a-2".into()])
            .await
            .expect("delete run");
        let kept: Vec<_> = expected
            .iter()
            .filter(|t| t.metadata.run_id.as_deref() != Some("run-a-2"))
            .cloned()
            .collect();
        assert_eq!(everything(&upgraded).await, kept);
        upgraded
            .prune(&["t".into()], PruneStrategy::KeepLatest)
            .await
            .expect("prune");
        let left = everything(&upgraded).await;
        assert_eq!(left.len(), 2, "the latest of each namespace");
        for tuple in left {
            let before = kept
                .iter()
                .find(|t| t.config == tuple.config)
                .expect("a kept checkpoint");
            assert_eq!(tuple.checkpoint, before.checkpoint);
        }
        assert_runs_match_checkpoints(&conn, "after the upgrade, delete_for_runs and prune");
        let values: i64 = conn
            .query_row("SELECT COUNT(*) FROM checkpoint_blobs", [], |r| r.get(0))
            .expect("count");
        assert_eq!(
            values, 4,
            "two channels of each namespace's latest checkpoint"
        );
    }
}

/// What the stored rows look like: values that need no row get none, and what is stored
/// reads back as given.
mod compact_rows {
    use cairn_checkpoint::*;

    /// How many value rows `saver` holds for `channel`.
    async fn value_rows(saver: &crate::SqliteSaver, channel: &'static str) -> i64 {
        saver
            .on_writer(move |conn| {
                conn.query_row(
                    "SELECT count(*) FROM checkpoint_blobs WHERE channel = ?1",
                    [channel],
                    |r| r.get(0),
                )
                .map_err(crate::sql_error("counting value rows"))
            })
            .await
            .expect("count")
    }

    /// `(rows of checkpoint_writes, checkpoint rows holding writes)` of `saver`.
    async fn where_writes_are(saver: &crate::SqliteSaver) -> (i64, i64) {
        saver
            .on_writer(|conn| {
                conn.query_row(
                    "SELECT (SELECT count(*) FROM checkpoint_writes),
                            (SELECT count(*) FROM checkpoints WHERE writes IS NOT NULL)",
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(crate::sql_error("counting writes"))
            })
            .await
            .expect("count")
    }

    fn byte(b: u8) -> TypedValue {
        TypedValue::new("bytes", vec![b])
    }

    /// `(task, channel, first byte of the value)` of `tuple`'s pending writes.
    fn writes_of(tuple: &CheckpointTuple) -> Vec<(String, String, u8)> {
        tuple
            .pending_writes
            .iter()
            .map(|w| (w.task_id.clone(), w.channel.clone(), w.value.data[0]))
            .collect()
    }

    /// Writes that come before their checkpoint is stored go to `checkpoint_writes`, later
    /// ones into the checkpoint's row; reads merge both under the rules of pending writes (a
    /// regular write is kept once, a special channel's write is replaced), and a batch puts
    /// each step's writes straight into the row of the checkpoint they belong to.
    #[tokio::test]
    async fn writes_go_into_their_checkpoints_row_and_merge_with_earlier_rows() {
        let saver = crate::SqliteSaver::in_memory().expect("open");
        let id = uuid6_like(1);
        let at = CheckpointConfig::thread("t").with_checkpoint_id(id.clone());
        saver
            .put_writes(
                &at,
                vec![("a".into(), byte(1)), (ERROR.into(), byte(1))],
                "task",
                "p",
            )
            .await
            .expect("early writes");
        assert_eq!(where_writes_are(&saver).await, (2, 0));
        let mut checkpoint = Checkpoint::new();
        checkpoint.id = id;
        saver
            .put(
                &CheckpointConfig::thread("t"),
                checkpoint,
                CheckpointMetadata::new(CheckpointSource::Loop, 0),
                ChannelVersions::new(),
            )
            .await
            .expect("put");
        saver
            .put_writes(
                &at,
                vec![
                    ("a".into(), byte(2)),
                    (ERROR.into(), byte(2)),
                    ("b".into(), byte(2)),
                ],
                "task",
                "p",
            )
            .await
            .expect("later writes");
        assert_eq!(where_writes_are(&saver).await, (2, 1));
        let tuple = saver.get_tuple(&at).await.expect("get").expect("stored");
        let mut got = writes_of(&tuple);
        got.sort();
        assert_eq!(
            got,
            [
                ("task".into(), "__error__".into(), 2),
                ("task".into(), "a".into(), 1),
                ("task".into(), "b".into(), 2),
            ]
        );

        // A batch: the second request's writes belong to the first request's checkpoint.
        let first = Checkpoint::new();
        let first_config = at.clone().with_checkpoint_id(first.id.clone());
        let second = Checkpoint::new();
        let request = |config: &CheckpointConfig, checkpoint: Checkpoint, writes| PutRequest {
            config: config.clone(),
            writes,
            checkpoint,
            metadata: CheckpointMetadata::new(CheckpointSource::Loop, 1),
            new_versions: ChannelVersions::new(),
        };
        let step_writes = vec![TaskWrites {
            task_id: "next".into(),
            task_path: "p".into(),
            writes: vec![("c".into(), byte(3))],
        }];
        saver
            .put_batch(vec![
                request(&at, first, Vec::new()),
                request(&first_config, second, step_writes),
            ])
            .await
            .expect("batch");
        assert_eq!(where_writes_are(&saver).await, (2, 2));
        let tuple = saver
            .get_tuple(&first_config)
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(writes_of(&tuple), [("next".into(), "c".into(), 3)]);

        // Writes that come in a batch before the request storing their checkpoint, and after
        // it: the first regular write stays, the last special one wins.
        let mut y = Checkpoint::new();
        y.id = uuid6_like(3);
        let y_config = at.clone().with_checkpoint_id(y.id.clone());
        let task_writes = |a: u8| {
            vec![TaskWrites {
                task_id: "task".into(),
                task_path: "p".into(),
                writes: vec![("a".into(), byte(a)), (ERROR.into(), byte(a))],
            }]
        };
        saver
            .put_batch(vec![
                request(&y_config, Checkpoint::new(), task_writes(1)),
                request(&at, y, Vec::new()),
                request(&y_config, Checkpoint::new(), task_writes(2)),
            ])
            .await
            .expect("batch");
        let tuple = saver.get_tuple(&y_config).await.expect("get").expect("y");
        let mut got = writes_of(&tuple);
        got.sort();
        assert_eq!(
            got,
            [
                ("task".into(), "__error__".into(), 2),
                ("task".into(), "a".into(), 1)
            ]
        );
    }

    /// Copying a thread over one that holds the same checkpoint merges their writes, the
    /// source's winning, as copying rows of `checkpoint_writes` did.
    #[tokio::test]
    async fn copying_over_a_thread_merges_the_writes_in_its_rows() {
        let saver = crate::SqliteSaver::in_memory().expect("open");
        let mut checkpoint = Checkpoint::new();
        checkpoint.id = uuid6_like(2);
        let stored = CheckpointConfig::thread("src").with_checkpoint_id(checkpoint.id.clone());
        // A write stored before its checkpoint: a row of `checkpoint_writes`, moved into the
        // checkpoint's row when the thread is copied.
        saver
            .put_writes(&stored, vec![("a".into(), byte(1))], "task", "p")
            .await
            .expect("writes");
        saver
            .put(
                &CheckpointConfig::thread("src"),
                checkpoint,
                CheckpointMetadata::new(CheckpointSource::Loop, 0),
                ChannelVersions::new(),
            )
            .await
            .expect("put");
        assert_eq!(where_writes_are(&saver).await, (1, 0));
        saver.copy_thread("src", "dst").await.expect("copy");
        let copy = CheckpointConfig {
            thread_id: "dst".into(),
            ..stored.clone()
        };
        saver
            .put_writes(
                &copy,
                vec![("a".into(), byte(9)), ("b".into(), byte(9))],
                "task",
                "p",
            )
            .await
            .expect("writes on the copy");
        saver
            .put_writes(&stored, vec![(ERROR.into(), byte(5))], "task", "p")
            .await
            .expect("a special write on the source");
        saver.copy_thread("src", "dst").await.expect("copy again");
        assert_eq!(where_writes_are(&saver).await, (0, 2));
        let tuple = saver.get_tuple(&copy).await.expect("get").expect("stored");
        let mut got = writes_of(&tuple);
        got.sort();
        assert_eq!(
            got,
            [
                ("task".into(), "__error__".into(), 5),
                ("task".into(), "a".into(), 1),
                ("task".into(), "b".into(), 9)
            ]
        );
    }

    /// A checkpoint id in the canonical UUID form, counting up with `n`.
    fn uuid6_like(n: u8) -> String {
        format!("1f1ea437-d1a5-6e7b-8000-0000000000{n:02x}")
    }

    #[tokio::test]
    async fn a_channel_updated_to_no_value_stores_no_row_and_reads_as_no_value() {
        let saver = crate::SqliteSaver::in_memory().expect("open");
        let config = CheckpointConfig::thread("t");
        let mut first = Checkpoint::new();
        first.channel_values.insert(
            "start".into(),
            ValueCodec::default().encode(&1u8).expect("encode"),
        );
        first
            .channel_versions
            .insert("start".into(), ChannelVersion::Int(1));
        let versions: ChannelVersions = first.channel_versions.clone();
        let stored = saver
            .put(
                &config,
                first.clone(),
                CheckpointMetadata::default(),
                versions,
            )
            .await
            .expect("put");
        assert_eq!(value_rows(&saver, "start").await, 1);

        // The next checkpoint consumes `start`: a new version, no value (given as an empty
        // marker, or not given at all for `other`).
        let mut next = first.successor();
        next.channel_values.clear();
        next.channel_values
            .insert("start".into(), TypedValue::empty());
        next.channel_versions
            .insert("start".into(), ChannelVersion::Int(2));
        next.channel_versions
            .insert("other".into(), ChannelVersion::Int(1));
        let new_versions: ChannelVersions = next.channel_versions.clone();
        let latest = saver
            .put(&stored, next, CheckpointMetadata::default(), new_versions)
            .await
            .expect("put");
        assert_eq!(value_rows(&saver, "start").await, 1, "no row for version 2");
        assert_eq!(value_rows(&saver, "other").await, 0);

        let tuple = saver.get_tuple(&latest).await.expect("get").expect("found");
        assert_eq!(
            tuple.checkpoint.channel_versions.get("start"),
            Some(&ChannelVersion::Int(2))
        );
        assert!(tuple.checkpoint.channel_values.is_empty());
        let older = saver.get_tuple(&stored).await.expect("get").expect("found");
        assert_eq!(older.checkpoint.channel_values, first.channel_values);
    }

    /// Schema 9: ids in the canonical UUID form are stored as their 16 bytes, any other id
    /// as its text; both read back as given.
    #[tokio::test]
    async fn uuid_ids_are_stored_as_16_bytes_and_other_ids_as_text() {
        let saver = crate::SqliteSaver::in_memory().expect("open");
        let codec = ValueCodec::default();
        let root = saver
            .put(
                &CheckpointConfig::thread("t"),
                Checkpoint::new(),
                CheckpointMetadata::new(CheckpointSource::Input, -1)
                    .with_run_id("0195f3a2-7c4e-7d11-8a3b-5f2e9c1d4b6a"),
                ChannelVersions::new(),
            )
            .await
            .expect("put");
        let mut custom = Checkpoint::new();
        custom.id = "my-checkpoint".into();
        let child = saver
            .put(
                &root,
                custom,
                CheckpointMetadata::new(CheckpointSource::Loop, 0).with_run_id("run-2"),
                ChannelVersions::new(),
            )
            .await
            .expect("put");
        let value = codec.encode(&1u8).expect("encode");
        for (config, task) in [
            (&root, "44910bc1-e7a2-5d97-ab29-ec6c93a0c2a1"),
            (&child, "task-b"),
        ] {
            saver
                .put_writes(config, vec![("c".into(), value.clone())], task, "")
                .await
                .expect("put_writes");
        }
        let kinds: Vec<(String, String, String, String)> = saver
            .on_writer(|conn| {
                conn.prepare(
                    // The writes are in their checkpoint's row: the byte after the task
                    // count says how the task id is stored (00: 16 bytes, 01: text).
                    "SELECT typeof(c.checkpoint_id), typeof(c.parent_checkpoint_id),
                            typeof(c.run_id), hex(substr(c.writes, 2, 1))
                     FROM checkpoints c WHERE c.writes IS NOT NULL
                     ORDER BY c.checkpoint_id",
                )
                .and_then(|mut s| {
                    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
                        .collect()
                })
                .map_err(crate::sql_error("reading the stored kinds"))
            })
            .await
            .expect("kinds");
        let kind = |a: &str, b: &str, c: &str, d: &str| {
            (a.to_owned(), b.to_owned(), c.to_owned(), d.to_owned())
        };
        assert_eq!(
            kinds,
            [
                // Text sorts before blobs in SQLite: the custom id comes first.
                kind("text", "blob", "text", "01"),
                kind("blob", "null", "blob", "00"),
            ]
        );
        let tuple = saver.get_tuple(&child).await.expect("get").expect("stored");
        assert_eq!(tuple.config.checkpoint_id.as_deref(), Some("my-checkpoint"));
        assert_eq!(tuple.parent_config, Some(root.clone()));
        assert_eq!(tuple.metadata.run_id.as_deref(), Some("run-2"));
        assert_eq!(tuple.pending_writes[0].task_id, "task-b");
        let root_tuple = saver.get_tuple(&root).await.expect("get").expect("stored");
        assert_eq!(
            root_tuple.metadata.run_id.as_deref(),
            Some("0195f3a2-7c4e-7d11-8a3b-5f2e9c1d4b6a")
        );
        assert_eq!(
            root_tuple.pending_writes[0].task_id,
            "44910bc1-e7a2-5d97-ab29-ec6c93a0c2a1"
        );
        let by_run = saver
            .list(&ListQuery::thread("t").filter(
                "run_id",
                serde_json::json!("0195f3a2-7c4e-7d11-8a3b-5f2e9c1d4b6a"),
            ))
            .await
            .expect("list");
        assert_eq!(by_run.len(), 1);
        assert_eq!(by_run[0].config, root);
    }

    /// An empty `parents` map (a graph without subgraphs) is left out of the stored JSON and
    /// read back as empty; a non-empty one is stored.
    #[tokio::test]
    async fn empty_parents_are_left_out_of_the_stored_metadata() {
        let saver = crate::SqliteSaver::in_memory().expect("open");
        let plain = CheckpointMetadata::new(CheckpointSource::Loop, 1);
        let mut nested = CheckpointMetadata::new(CheckpointSource::Loop, 2);
        nested.parents.insert("".into(), "parent-checkpoint".into());
        let mut stored = Vec::new();
        for (thread, metadata) in [("plain", &plain), ("nested", &nested)] {
            let config = saver
                .put(
                    &CheckpointConfig::thread(thread),
                    Checkpoint::new(),
                    metadata.clone(),
                    ChannelVersions::new(),
                )
                .await
                .expect("put");
            let tuple = saver
                .get_tuple(&config)
                .await
                .expect("get")
                .expect("stored");
            assert_eq!(&tuple.metadata, metadata);
            let json: String = saver
                .on_writer(move |conn| {
                    conn.query_row(
                        "SELECT cairn_metadata_json(metadata) FROM checkpoints \
                         WHERE thread_id = ?1",
                        [thread],
                        |r| r.get(0),
                    )
                    .map_err(crate::sql_error("reading the metadata"))
                })
                .await
                .expect("metadata");
            stored.push(json);
        }
        assert_eq!(stored[0], r#"{"source":"loop","step":1}"#);
        assert!(
            stored[1].contains(r#""parents":{"":"parent-checkpoint"}"#),
            "{}",
            stored[1]
        );
    }
}

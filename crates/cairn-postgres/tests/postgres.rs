//! PostgreSQL-specific behaviour against a real server: concurrency, large values, reopening,
//! migrations, lost connections, statement modes, corrupt rows, reclaiming values.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_checkpoint::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointSource, Error, ListQuery, PruneStrategy, TypedValue, ValueCodec,
};
use cairn_postgres::{PostgresOptions, PostgresSaver, SCHEMA_VERSION};

fn codec() -> ValueCodec {
    ValueCodec::default()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4())
}

/// Puts a checkpoint whose channel `count` holds `n` (a new version each time) as a child of
/// `parent`.
async fn put_count(
    saver: &dyn CheckpointSaver,
    parent: &CheckpointConfig,
    previous: Option<&Checkpoint>,
    n: i64,
) -> (CheckpointConfig, Checkpoint) {
    let mut cp = previous.map_or_else(Checkpoint::new, Checkpoint::successor);
    let version = saver.get_next_version(cp.channel_versions.get("count"));
    cp.channel_values.clear();
    cp.channel_values
        .insert("count".into(), codec().encode(&n).expect("encode"));
    cp.channel_versions.insert("count".into(), version.clone());
    let config = saver
        .put(
            parent,
            cp.clone(),
            CheckpointMetadata::new(CheckpointSource::Loop, n),
            [("count".to_string(), version)].into(),
        )
        .await
        .expect("put");
    (config, cp)
}

/// `url` with `application_name` set, so a test can find its own server connections.
fn with_application_name(url: &str, name: &str) -> String {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}application_name={name}")
    } else {
        format!("{url} application_name={name}")
    }
}

async fn count_rows(url: &str, schema: &str, table: &str, thread_id: &str) -> i64 {
    support::admin_client(url)
        .await
        .query_one(
            &format!("SELECT count(*) FROM \"{schema}\".{table} WHERE thread_id = $1"),
            &[&thread_id],
        )
        .await
        .expect("count")
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eight_savers_migrate_one_fresh_schema_at_once() {
    let Some(url) = support::url() else { return };
    let schema = support::fresh_schema_name();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let options = support::options(&url, &schema).max_size(1);
            tokio::spawn(async move { options.connect().await })
        })
        .collect();
    let mut savers = Vec::new();
    for t in tasks {
        savers.push(
            t.await
                .expect("join")
                .expect("every concurrent connect succeeds"),
        );
    }
    let admin = support::admin_client(&url).await;
    let rows = admin
        .query(
            &format!("SELECT version FROM \"{schema}\".cairn_migrations ORDER BY version"),
            &[],
        )
        .await
        .expect("read migrations");
    let versions: Vec<i32> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    // Every saver works on the shared tables.
    let thread = unique("migrated");
    put_count(&savers[0], &CheckpointConfig::thread(&thread), None, 1).await;
    for s in &savers {
        assert!(s
            .get_tuple(&CheckpointConfig::thread(&thread))
            .await
            .expect("get")
            .is_some());
    }
    // A later start finds nothing to do.
    support::options(&url, &schema)
        .connect()
        .await
        .expect("reconnect");
    support::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_tasks_write_sixty_four_threads_at_once() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let saver: Arc<dyn CheckpointSaver> = Arc::new(saver);
    let prefix = unique("fanout");
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let saver = saver.clone();
            let thread = format!("{prefix}-{i}");
            tokio::spawn(async move {
                let mut parent = CheckpointConfig::thread(&thread);
                let mut previous = None;
                for n in 0..3 {
                    let (config, cp) =
                        put_count(saver.as_ref(), &parent, previous.as_ref(), n).await;
                    saver
                        .put_writes(
                            &config,
                            vec![(
                                "count".into(),
                                codec().encode(&(i * 100 + n)).expect("encode"),
                            )],
                            "task",
                            "",
                        )
                        .await
                        .expect("put_writes");
                    parent = config;
                    previous = Some(cp);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("task");
    }
    for i in 0..64i64 {
        let thread = format!("{prefix}-{i}");
        let history = saver.list(&ListQuery::thread(&thread)).await.expect("list");
        assert_eq!(history.len(), 3, "thread {thread}");
        let latest = &history[0];
        assert_eq!(
            latest
                .channel_value::<i64>(&codec(), "count")
                .expect("decode"),
            Some(2)
        );
        assert_eq!(latest.parent_config, history[1].config.clone().into());
        assert_eq!(latest.pending_writes.len(), 1);
        let written: i64 = codec()
            .decode(&latest.pending_writes[0].value)
            .expect("decode");
        assert_eq!(written, i * 100 + 2);
    }
    let all = saver
        .list(&ListQuery::all().filter("step", 2))
        .await
        .expect("list all");
    assert_eq!(
        all.iter()
            .filter(|t| t.config.thread_id.starts_with(&prefix))
            .count(),
        64
    );
    drop(saver);
    support::drop_schema(&support::url().expect("url"), &schema).await;
}

/// A saver on a fresh schema with one commit slot, so that concurrent writes queue and are
/// stored in groups; and the schema's name, to drop it at the end.
async fn one_commit_slot(url: &str) -> (PostgresSaver, String) {
    let schema = support::fresh_schema_name();
    let saver = PostgresOptions::new(url.to_owned())
        .schema(schema.clone())
        .commit_slots(1)
        .connect()
        .await
        .expect("connect");
    (saver, schema)
}

/// With one commit slot, 32 threads writing at once queue behind each other's commits and are
/// stored in groups: every checkpoint lands, and a checkpoint the server cannot take (a NUL
/// in its metadata) fails its own caller only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_commits_and_a_bad_one_fails_alone() {
    let Some(url) = support::url() else {
        return;
    };
    let (saver, schema) = one_commit_slot(&url).await;
    let pg = saver.clone();
    let saver: Arc<dyn CheckpointSaver> = Arc::new(saver);
    let prefix = unique("group");
    let tasks: Vec<_> = (0..32)
        .map(|i| {
            let saver = saver.clone();
            let thread = format!("{prefix}-{i}");
            tokio::spawn(async move {
                let mut metadata = CheckpointMetadata::new(CheckpointSource::Loop, i);
                if i == 7 {
                    metadata = metadata.with("note", "a NUL \u{0} here");
                }
                let mut cp = Checkpoint::new();
                let version = saver.get_next_version(None);
                cp.channel_values
                    .insert("count".into(), codec().encode(&i).expect("encode"));
                cp.channel_versions.insert("count".into(), version.clone());
                let stored = saver
                    .put(
                        &CheckpointConfig::thread(&thread),
                        cp,
                        metadata,
                        [("count".to_string(), version)].into(),
                    )
                    .await;
                (i, thread, stored)
            })
        })
        .collect();
    for task in tasks {
        let (i, thread, stored) = task.await.expect("task");
        if i == 7 {
            let err = stored.expect_err("a NUL in the metadata");
            assert!(
                matches!(err, Error::InvalidArgument(ref m) if m.contains("NUL")),
                "{err}"
            );
            assert!(saver
                .get_tuple(&CheckpointConfig::thread(&thread))
                .await
                .expect("get")
                .is_none());
            continue;
        }
        stored.expect("put");
        let latest = saver
            .get_tuple(&CheckpointConfig::thread(&thread))
            .await
            .expect("get")
            .expect("stored");
        assert_eq!(
            latest
                .channel_value::<i64>(&codec(), "count")
                .expect("decode"),
            Some(i)
        );
    }
    let stats = pg.commit_stats();
    assert_eq!(stats.writes, 31, "{stats:?}");
    assert!(
        stats.commits >= 1 && stats.commits <= stats.writes,
        "{stats:?}"
    );
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

/// A group whose transaction the server refuses because of one request's data is stored
/// again caller by caller, whatever the SQL state: here a thread id too long for the primary
/// key's index (SQL state 54000, "program limit exceeded"). The first write holds the only
/// commit slot, blocked by a lock another connection holds, so the next four queue and are
/// stored as one group when it ends; only the culprit fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_refused_for_one_request_fails_only_that_caller() {
    let Some(url) = support::url() else {
        return;
    };
    let (saver, schema) = one_commit_slot(&url).await;
    let connect = || async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect a client of the test's own");
        tokio::spawn(connection);
        client
    };
    let (locker, watcher) = (connect().await, connect().await);
    locker
        .batch_execute(&format!(
            "BEGIN; LOCK TABLE \"{schema}\".checkpoints IN ACCESS EXCLUSIVE MODE"
        ))
        .await
        .expect("lock");
    let put = |thread: String| {
        let saver = saver.clone();
        async move {
            let stored = saver
                .put(
                    &CheckpointConfig::thread(&thread),
                    Checkpoint::new(),
                    CheckpointMetadata::new(CheckpointSource::Loop, 0),
                    ChannelVersions::new(),
                )
                .await;
            (thread, stored)
        }
    };
    let prefix = unique("refused");
    let first = tokio::spawn(put(format!("{prefix}-first")));
    // The first write's statement waits for the lock (a condition, polled).
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .expect("pg_stat_activity")
            .get(0);
        if waiting > 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    // 3,000 characters that do not compress: above the 2,704 bytes an index entry may take.
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    let too_long: String = (0..3_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            char::from(b'!' + (x % 90) as u8)
        })
        .collect();
    let threads = [
        format!("{prefix}-a"),
        format!("{prefix}-b{too_long}"),
        format!("{prefix}-c"),
        format!("{prefix}-d"),
    ];
    let mut queued: Vec<_> = threads.iter().cloned().map(|t| Box::pin(put(t))).collect();
    for write in &mut queued {
        // The slot is taken: each write joins the queue on its first poll.
        assert!(futures::poll!(write.as_mut()).is_pending());
    }
    locker.batch_execute("COMMIT").await.expect("unlock");
    let (_, stored) = first.await.expect("first write");
    stored.expect("the first write");
    for (thread, stored) in futures::future::join_all(queued).await {
        if thread.len() > 1_000 {
            let err = stored.expect_err("a thread id too long for the index");
            assert!(err.to_string().contains("54000"), "{err}");
        } else {
            stored.expect("a write queued with the refused one");
            assert!(saver
                .get_tuple(&CheckpointConfig::thread(&thread))
                .await
                .expect("get")
                .is_some());
        }
    }
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

/// Reading one checkpoint brings its pending writes in the same statement: the latest and a
/// named checkpoint, with and without the values the caller holds, read the writes of every
/// task in stored order, and a checkpoint without writes reads none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_checkpoint_reads_its_writes_in_order_with_or_without_held_values() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let thread = unique("writes");
    let root = CheckpointConfig::thread(&thread);
    let (first, first_cp) = put_count(&saver, &root, None, 1).await;
    for task in ["task-b", "task-a", "task-c"] {
        let writes = (0..3)
            .map(|i| {
                (
                    format!("ch{i}"),
                    codec().encode(&format!("{task} {i}")).expect("encode"),
                )
            })
            .collect();
        saver
            .put_writes(&first, writes, task, &format!("~path {task}"))
            .await
            .expect("put_writes");
    }
    let full = saver.get_tuple(&first).await.expect("get").expect("stored");
    let order: Vec<(String, String)> = full
        .pending_writes
        .iter()
        .map(|w| (w.task_id.clone(), w.channel.clone()))
        .collect();
    let expected: Vec<(String, String)> = ["task-a", "task-b", "task-c"]
        .iter()
        .flat_map(|t| (0..3).map(move |i| (t.to_string(), format!("ch{i}"))))
        .collect();
    assert_eq!(order, expected);
    assert_eq!(full.pending_writes[4].task_path, "~path task-b");
    let id = first_cp.id.clone();
    let known = cairn_checkpoint::KnownValues {
        checkpoint_id: &id,
        channels: &["count"],
    };
    let held = saver
        .get_tuple_known(&root, known)
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(held.pending_writes, full.pending_writes);
    assert!(
        held.checkpoint.channel_values.is_empty(),
        "the held value was left out"
    );
    let latest = saver.get_tuple(&root).await.expect("get").expect("stored");
    assert_eq!(latest, full);

    // A newer checkpoint without writes reads none.
    let (second, _) = put_count(&saver, &first, Some(&first_cp), 2).await;
    let newest = saver.get_tuple(&root).await.expect("get").expect("stored");
    assert_eq!(newest.config, second);
    assert!(newest.pending_writes.is_empty());
    drop(saver);
    support::drop_schema(&support::url().expect("url"), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_megabyte_value_round_trips() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    // Pseudo-random bytes: PostgreSQL cannot compress them away.
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..10 * 1024 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();
    let value = TypedValue::new("bytes", data);
    let thread = unique("big");
    let mut cp = Checkpoint::new();
    let version = saver.get_next_version(None);
    cp.channel_values.insert("big".into(), value.clone());
    cp.channel_versions.insert("big".into(), version.clone());
    let config = saver
        .put(
            &CheckpointConfig::thread(&thread),
            cp,
            CheckpointMetadata::new(CheckpointSource::Input, -1),
            [("big".to_string(), version)].into(),
        )
        .await
        .expect("put 10 MB");
    saver
        .put_writes(&config, vec![("big".into(), value.clone())], "t", "")
        .await
        .expect("put_writes 10 MB");
    let tuple = saver
        .get_tuple(&CheckpointConfig::thread(&thread))
        .await
        .expect("get")
        .expect("stored");
    assert!(
        tuple.checkpoint.channel_values["big"] == value,
        "channel value differs"
    );
    assert!(
        tuple.pending_writes[0].value == value,
        "pending write differs"
    );
    drop(saver);
    support::drop_schema(&support::url().expect("url"), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_survives_dropping_and_reopening_the_saver() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    let thread = unique("reopen");
    let mut cp = Checkpoint::new();
    cp.channel_values
        .insert("n".into(), codec().encode(&41).expect("encode"));
    cp.channel_values
        .insert("s".into(), codec().encode("text").expect("encode"));
    cp.channel_versions
        .insert("n".into(), ChannelVersion::Int(7));
    let str_version = ChannelVersion::first_after(None);
    cp.channel_versions.insert("s".into(), str_version.clone());
    cp.versions_seen.insert(
        "node".into(),
        [("n".to_string(), ChannelVersion::Int(6))].into(),
    );
    let new_versions = cp.channel_versions.clone();
    let config = saver
        .put(
            &CheckpointConfig::thread(&thread).with_ns("sub:1"),
            cp.clone(),
            CheckpointMetadata::new(CheckpointSource::Update, 4)
                .with_run_id("r")
                .with("user", serde_json::json!({"name": "ada", "tags": [1, 2]})),
            new_versions,
        )
        .await
        .expect("put");
    saver
        .put_writes(
            &config,
            vec![
                ("a".into(), codec().encode(&1).expect("encode")),
                (
                    cairn_checkpoint::INTERRUPT.into(),
                    codec().encode("stop").expect("encode"),
                ),
            ],
            "task-1",
            "~p",
        )
        .await
        .expect("put_writes");
    drop(saver);

    let reopened = support::options(&url, &schema)
        .connect()
        .await
        .expect("reopen");
    let tuple = reopened
        .get_tuple(&CheckpointConfig::thread(&thread).with_ns("sub:1"))
        .await
        .expect("get")
        .expect("stored");
    assert_eq!(tuple.config, config);
    assert_eq!(
        tuple.checkpoint.channel_versions["n"],
        ChannelVersion::Int(7),
        "Int stays Int"
    );
    assert_eq!(tuple.checkpoint.channel_versions["s"], str_version);
    assert_eq!(tuple.checkpoint.versions_seen, cp.versions_seen);
    assert_eq!(tuple.checkpoint.ts, cp.ts);
    assert_eq!(
        tuple.channel_value::<i32>(&codec(), "n").expect("decode"),
        Some(41)
    );
    assert_eq!(tuple.metadata.run_id.as_deref(), Some("r"));
    assert_eq!(
        tuple.metadata.extra["user"]["tags"],
        serde_json::json!([1, 2])
    );
    let channels: Vec<&str> = tuple
        .pending_writes
        .iter()
        .map(|w| w.channel.as_str())
        .collect();
    assert_eq!(
        channels,
        [cairn_checkpoint::INTERRUPT, "a"],
        "specials sort first"
    );
    assert_eq!(tuple.pending_writes[0].task_path, "~p");
    drop(reopened);
    support::drop_schema(&url, &schema).await;
}

/// Terminates the saver's server connections while a worker keeps calling it: at most the
/// call in flight fails, with a clear backend error, and every call after it succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_connections_are_replaced_and_the_next_call_works() {
    let Some(url) = support::url() else { return };
    let schema = support::fresh_schema_name();
    let app = format!("cairn_reconnect_{}", uuid::Uuid::new_v4().simple());
    let saver = support::options(&with_application_name(&url, &app), &schema)
        .max_size(4)
        .connect()
        .await
        .expect("connect");
    let saver: Arc<dyn CheckpointSaver> = Arc::new(saver);
    let thread = unique("reconnect");
    // Open several pooled connections, so idle dead ones must be noticed too, not only the
    // one in use.
    let warm: Vec<_> = (0..4)
        .map(|_| {
            let saver = saver.clone();
            tokio::spawn(async move { saver.list(&ListQuery::all().limit(1)).await })
        })
        .collect();
    for w in warm {
        w.await.expect("join").expect("warm-up list");
    }
    let terminated = Arc::new(AtomicBool::new(false));
    let (progress_tx, mut progress_rx) = tokio::sync::mpsc::unbounded_channel::<()>();

    let worker = {
        let saver = saver.clone();
        let terminated = terminated.clone();
        let thread = thread.clone();
        tokio::spawn(async move {
            let mut failures: Vec<Error> = Vec::new();
            let mut stored = Vec::new();
            let mut calls_after_termination = 0;
            let mut n = 0i64;
            while calls_after_termination < 20 {
                let seen_termination = terminated.load(Ordering::SeqCst);
                n += 1;
                let mut cp = Checkpoint::new();
                let version = ChannelVersion::Int(n);
                cp.channel_values
                    .insert("n".into(), codec().encode(&n).expect("encode"));
                cp.channel_versions.insert("n".into(), version.clone());
                let put = saver
                    .put(
                        &CheckpointConfig::thread(&thread),
                        cp,
                        CheckpointMetadata::new(CheckpointSource::Loop, n),
                        [("n".to_string(), version)].into(),
                    )
                    .await;
                let outcome = match put {
                    Ok(config) => saver.get_tuple(&config).await.map(|t| (config, t)),
                    Err(e) => Err(e),
                };
                match outcome {
                    Ok((config, tuple)) => {
                        assert!(tuple.is_some(), "a stored checkpoint reads back");
                        stored.push(config);
                    }
                    Err(e) => {
                        assert!(
                            failures.is_empty(),
                            "a second call failed after a first failure: {e}"
                        );
                        failures.push(e);
                    }
                }
                if seen_termination {
                    calls_after_termination += 1;
                }
                let _ = progress_tx.send(());
            }
            (failures, stored)
        })
    };

    // Let the worker make a few calls, then kill every server connection of this saver and
    // wait (pg_terminate_backend's timeout argument) until they are gone.
    for _ in 0..5 {
        progress_rx.recv().await.expect("worker progress");
    }
    let admin = support::admin_client(&url).await;
    let killed: i64 = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 10000)) \
             FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("terminate")
        .get(0);
    assert!(killed >= 1, "the saver had server connections to terminate");
    terminated.store(true, Ordering::SeqCst);

    let (failures, stored) = worker.await.expect("worker");
    eprintln!(
        "reconnect: terminated {killed} connections; {} failed call(s): {failures:?}",
        failures.len()
    );
    assert!(failures.len() <= 1, "{failures:?}");
    for e in &failures {
        match e {
            Error::Backend {
                backend, message, ..
            } => {
                assert_eq!(*backend, "postgres");
                assert!(message.contains("connection"), "{message}");
            }
            other => panic!("a lost connection is a backend error, not {other:?}"),
        }
    }
    let history = saver.list(&ListQuery::thread(&thread)).await.expect("list");
    for config in &stored {
        assert!(
            history.iter().any(|t| &t.config == config),
            "{config:?} survives"
        );
    }
    // New server connections were opened for the calls after the termination.
    let now: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&app],
        )
        .await
        .expect("count")
        .get(0);
    assert!(now >= 1);
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_is_a_clear_backend_error() {
    // Needs no server: port 1 on localhost refuses connections.
    let err = PostgresOptions::new("postgres://postgres@127.0.0.1:1/none")
        .connect_timeout(std::time::Duration::from_secs(5))
        .connect()
        .await
        .expect_err("nothing listens on port 1");
    match err {
        Error::Backend {
            backend, message, ..
        } => {
            assert_eq!(backend, "postgres");
            assert!(message.contains("could not connect"), "{message}");
        }
        other => panic!("expected a backend error, got {other:?}"),
    }
    let err = PostgresOptions::new("postgres://[::1")
        .connect()
        .await
        .expect_err("bad url");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = PostgresOptions::new("postgres://postgres@127.0.0.1:1/none")
        .schema("bad\"name")
        .connect()
        .await
        .expect_err("bad schema");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
}

/// Runs every kind of call through a one-connection saver, then counts the named prepared
/// statements on that connection.
async fn prepared_statements_after_a_workload(prepared: bool) -> Option<i64> {
    let url = support::url()?;
    let schema = support::fresh_schema_name();
    let saver = support::options(&url, &schema)
        .max_size(1)
        .prepared_statements(prepared)
        .connect()
        .await
        .expect("connect");
    let thread = unique("stmt");
    let (c1, cp1) = put_count(&saver, &CheckpointConfig::thread(&thread), None, 1).await;
    let (c2, _) = put_count(&saver, &c1, Some(&cp1), 2).await;
    saver
        .put_writes(
            &c2,
            vec![("x".into(), codec().encode(&1).expect("e"))],
            "t",
            "",
        )
        .await
        .expect("put_writes");
    saver.get_tuple(&c1).await.expect("get");
    saver
        .get_tuple(&CheckpointConfig::thread(&thread))
        .await
        .expect("get");
    // Append values: read cold (values, then chains) and warm (both in one statement).
    let chat = unique("stmt-chat");
    let v1 = saver.get_next_version(None);
    let v2 = saver.get_next_version(Some(&v1));
    let mut parent = CheckpointConfig::thread(&chat);
    for (version, value) in [
        (&v1, codec().encode(&["a"]).expect("e")),
        (&v2, codec().encode_append(&v1, ["b"].iter()).expect("e")),
    ] {
        let mut cp = Checkpoint::new();
        cp.channel_values.insert("messages".into(), value);
        cp.channel_versions
            .insert("messages".into(), version.clone());
        parent = saver
            .put(
                &parent,
                cp,
                CheckpointMetadata::new(CheckpointSource::Loop, 0),
                [("messages".to_string(), version.clone())].into(),
            )
            .await
            .expect("put");
    }
    for _ in 0..2 {
        let t = saver
            .get_tuple(&parent)
            .await
            .expect("get")
            .expect("stored");
        let messages: Option<Vec<String>> = t.channel_value(&codec(), "messages").expect("decode");
        assert_eq!(messages, Some(vec!["a".to_owned(), "b".to_owned()]));
    }
    saver
        .prune(std::slice::from_ref(&chat), PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    saver
        .list(
            &ListQuery::thread(&thread)
                .filter("step", 1)
                .before(c2.checkpoint_id.clone().expect("id"))
                .limit(5),
        )
        .await
        .expect("list");
    let copy = unique("stmt-copy");
    saver.copy_thread(&thread, &copy).await.expect("copy");
    saver
        .prune(std::slice::from_ref(&copy), PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    saver
        .delete_for_runs(&["none".into()])
        .await
        .expect("delete_for_runs");
    saver.delete_thread(&copy).await.expect("delete");
    let client = saver
        .pool()
        .get()
        .await
        .expect("the saver's one connection");
    let rows = client
        .simple_query("SELECT count(*) FROM pg_prepared_statements")
        .await
        .expect("count");
    let count = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(|s| s.parse().expect("int")),
            _ => None,
        })
        .expect("a row");
    drop(client);
    drop(saver);
    support::drop_schema(&url, &schema).await;
    Some(count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_prepared_statements_no_named_statement_is_created() {
    let Some(count) = prepared_statements_after_a_workload(false).await else {
        return;
    };
    assert_eq!(
        count, 0,
        "PgBouncer transaction mode needs zero named statements"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_prepared_statements_statements_are_cached() {
    let Some(count) = prepared_statements_after_a_workload(true).await else {
        return;
    };
    assert!(count >= 5, "only {count} statements prepared");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_rows_are_reported_with_their_location() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    let admin = support::admin_client(&url).await;
    let thread = unique("corrupt");
    let (c1, cp1) = put_count(
        &saver,
        &CheckpointConfig::thread(&thread).with_ns("ns"),
        None,
        1,
    )
    .await;
    let (c2, _) = put_count(&saver, &c1, Some(&cp1), 2).await;
    let id2 = c2.checkpoint_id.clone().expect("id");

    for (column, bad) in [
        ("header", r#"{"v": "four"}"#),
        ("header", r#"{"v": 4, "id": "other", "ts": "x"}"#),
        ("metadata", r#"[1, 2]"#),
        ("metadata", r#"{"step": "not a number"}"#),
    ] {
        let original = admin
            .query_one(
                &format!(
                    "SELECT {column}::text FROM \"{schema}\".checkpoints WHERE checkpoint_id = $1"
                ),
                &[&id2],
            )
            .await
            .expect("read")
            .get::<_, String>(0);
        admin
            .execute(
                &format!("UPDATE \"{schema}\".checkpoints SET {column} = $1::text::jsonb WHERE checkpoint_id = $2"),
                &[&bad, &id2],
            )
            .await
            .expect("damage");
        for result in [
            saver.get_tuple(&c2).await.map(|_| ()),
            saver
                .get_tuple(&CheckpointConfig::thread(&thread).with_ns("ns"))
                .await
                .map(|_| ()),
            saver.list(&ListQuery::thread(&thread)).await.map(|_| ()),
        ] {
            match result {
                Err(Error::Corrupt { location, reason }) => {
                    assert_eq!(location.thread_id, thread);
                    assert_eq!(location.checkpoint_ns, "ns");
                    assert_eq!(
                        location.checkpoint_id.as_deref(),
                        Some(id2.as_str()),
                        "{reason}"
                    );
                }
                other => panic!("{column} = {bad}: expected Corrupt, got {other:?}"),
            }
        }
        // The rest of the thread stays readable.
        let first = saver
            .get_tuple(&c1)
            .await
            .expect("the older checkpoint reads")
            .expect("stored");
        assert_eq!(
            first
                .channel_value::<i64>(&codec(), "count")
                .expect("decode"),
            Some(1)
        );
        // And the damaged one can still be deleted.
        admin
            .execute(
                &format!("UPDATE \"{schema}\".checkpoints SET {column} = $1::text::jsonb WHERE checkpoint_id = $2"),
                &[&original, &id2],
            )
            .await
            .expect("repair");
        assert!(saver.get_tuple(&c2).await.expect("repaired").is_some());
    }
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prune_and_delete_for_runs_reclaim_unreferenced_values() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    let thread = unique("reclaim");
    let mut parent = CheckpointConfig::thread(&thread);
    let mut previous: Option<Checkpoint> = None;
    // Five checkpoints; `count` changes every time, `fixed` is written once and shared.
    for n in 0..5i64 {
        let mut cp = previous
            .as_ref()
            .map_or_else(Checkpoint::new, Checkpoint::successor);
        cp.channel_values.clear();
        let mut new_versions = cairn_checkpoint::ChannelVersions::new();
        let v = saver.get_next_version(cp.channel_versions.get("count"));
        cp.channel_values
            .insert("count".into(), codec().encode(&n).expect("e"));
        cp.channel_versions.insert("count".into(), v.clone());
        new_versions.insert("count".into(), v);
        if n == 0 {
            let f = saver.get_next_version(None);
            cp.channel_values
                .insert("fixed".into(), codec().encode("shared").expect("e"));
            cp.channel_versions.insert("fixed".into(), f.clone());
            new_versions.insert("fixed".into(), f);
        }
        let meta = CheckpointMetadata::new(CheckpointSource::Loop, n)
            .with_run_id(format!("{thread}-run-{}", n % 2));
        let config = saver
            .put(&parent, cp.clone(), meta, new_versions)
            .await
            .expect("put");
        saver
            .put_writes(
                &config,
                vec![("w".into(), codec().encode(&n).expect("e"))],
                "t",
                "",
            )
            .await
            .expect("put_writes");
        parent = config;
        previous = Some(cp);
    }
    assert_eq!(
        count_rows(&url, &schema, "checkpoint_blobs", &thread).await,
        6
    );

    // Deleting run 1 (steps 1 and 3) drops their checkpoints, writes and `count` values.
    saver
        .delete_for_runs(&[format!("{thread}-run-1")])
        .await
        .expect("delete_for_runs");
    let steps: Vec<_> = saver
        .list(&ListQuery::thread(&thread))
        .await
        .expect("list")
        .iter()
        .map(|t| t.metadata.step)
        .collect();
    assert_eq!(steps, [Some(4), Some(2), Some(0)]);
    assert_eq!(
        count_rows(&url, &schema, "checkpoint_writes", &thread).await,
        3
    );
    assert_eq!(
        count_rows(&url, &schema, "checkpoint_blobs", &thread).await,
        4
    );

    saver
        .prune(std::slice::from_ref(&thread), PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    let left = saver.list(&ListQuery::thread(&thread)).await.expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(
        left[0].channel_value::<i64>(&codec(), "count").expect("d"),
        Some(4)
    );
    assert_eq!(
        left[0]
            .channel_value::<String>(&codec(), "fixed")
            .expect("d")
            .as_deref(),
        Some("shared"),
        "a value written long ago but still referenced is kept"
    );
    assert_eq!(left[0].pending_writes.len(), 1);
    assert_eq!(
        count_rows(&url, &schema, "checkpoint_writes", &thread).await,
        1
    );
    assert_eq!(
        count_rows(&url, &schema, "checkpoint_blobs", &thread).await,
        2
    );
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metadata_filters_compare_arrays_and_objects_exactly() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let thread = unique("filter");
    let mut cp = Checkpoint::new();
    cp.channel_versions.clear();
    saver
        .put(
            &CheckpointConfig::thread(&thread),
            cp,
            CheckpointMetadata::new(CheckpointSource::Input, -1)
                .with("tags", serde_json::json!(["a", "b"]))
                .with("owner", serde_json::json!({"id": 1, "team": "x"})),
            Default::default(),
        )
        .await
        .expect("put");
    let hits = |q: ListQuery| {
        let saver = &saver;
        async move { saver.list(&q).await.expect("list").len() }
    };
    let q = || ListQuery::thread(&thread);
    assert_eq!(
        hits(q().filter("tags", serde_json::json!(["a", "b"]))).await,
        1
    );
    assert_eq!(
        hits(q().filter("tags", serde_json::json!(["a"]))).await,
        0,
        "containment is not equality"
    );
    assert_eq!(
        hits(q().filter("owner", serde_json::json!({"id": 1}))).await,
        0
    );
    assert_eq!(
        hits(q().filter("owner", serde_json::json!({"id": 1, "team": "x"}))).await,
        1
    );
    assert_eq!(
        hits(q().filter("source", "input").filter("step", -1)).await,
        1
    );
    drop(saver);
    support::drop_schema(&support::url().expect("url"), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_postgres_cannot_store_is_an_invalid_argument() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let err = saver
        .put(
            &CheckpointConfig::thread("nul\0thread"),
            Checkpoint::new(),
            CheckpointMetadata::default(),
            Default::default(),
        )
        .await
        .expect_err("NUL in a thread id");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    let err = saver
        .put(
            &CheckpointConfig::thread("ok"),
            Checkpoint::new(),
            CheckpointMetadata::default().with("k", "a\0b"),
            Default::default(),
        )
        .await
        .expect_err("NUL in metadata");
    assert!(matches!(err, Error::InvalidArgument(_)), "{err:?}");
    drop(saver);
    support::drop_schema(&support::url().expect("url"), &schema).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_migrations_a_fresh_schema_is_refused_clearly() {
    let Some(url) = support::url() else { return };
    let schema = support::fresh_schema_name();
    let err = support::options(&url, &schema)
        .run_migrations(false)
        .connect()
        .await
        .expect_err("no tables yet");
    assert!(
        matches!(
            err,
            Error::Backend {
                backend: "postgres",
                ..
            }
        ),
        "{err:?}"
    );
    // After migrating, the same options connect.
    support::options(&url, &schema)
        .connect()
        .await
        .expect("migrate");
    let saver: PostgresSaver = support::options(&url, &schema)
        .run_migrations(false)
        .connect()
        .await
        .expect("schema is current");
    assert_eq!(saver.schema(), Some(schema.as_str()));
    drop(saver);
    support::drop_schema(&url, &schema).await;
}

/// Copies, prunes and deletes racing on the same threads: the server may pick deadlock
/// victims among these multi-row statements; the saver re-sends those, so every call
/// succeeds, and the data ends up consistent (each remaining checkpoint reads whole).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_copies_prunes_and_deletes_all_succeed() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let saver: Arc<dyn CheckpointSaver> = Arc::new(saver);
    let source = unique("race-src");
    let mut parent = CheckpointConfig::thread(&source);
    let mut previous = None;
    for n in 0..20 {
        let (config, cp) = put_count(saver.as_ref(), &parent, previous.as_ref(), n).await;
        saver
            .put_writes(
                &config,
                vec![("w".into(), codec().encode(&n).expect("e"))],
                "t",
                "",
            )
            .await
            .expect("put_writes");
        parent = config;
        previous = Some(cp);
    }
    let targets: Vec<String> = (0..3).map(|i| format!("{source}-copy-{i}")).collect();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let saver = saver.clone();
            let source = source.clone();
            let target = targets[i % targets.len()].clone();
            let all = targets.clone();
            tokio::spawn(async move {
                match i % 4 {
                    0 | 1 => saver.copy_thread(&source, &target).await,
                    2 => saver.prune(&all, PruneStrategy::KeepLatest).await,
                    _ => saver.delete_for_runs(&["no-such-run".into()]).await,
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("join").expect("every racing call succeeds");
    }
    for target in &targets {
        for tuple in saver.list(&ListQuery::thread(target)).await.expect("list") {
            let n = tuple.metadata.step.expect("step");
            assert_eq!(
                tuple.channel_value::<i64>(&codec(), "count").expect("d"),
                Some(n),
                "a kept checkpoint keeps its value"
            );
        }
    }
    drop(saver);
    support::drop_schema(&support::url().expect("url"), &schema).await;
}

/// A batch whose second statement the server refuses stores nothing, not even the first
/// checkpoint, and every pooled connection stays usable: the pipelined `BEGIN` … `COMMIT`
/// always ends on the server (as a rollback here), so no connection goes back to the pool
/// inside an aborted transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_the_server_refuses_midway_stores_nothing() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    support::admin_client(&url)
        .await
        .batch_execute(&format!(
            r#"CREATE FUNCTION "{schema}".refuse() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN
                 IF NEW.checkpoint_id LIKE '%-refused' THEN
                   RAISE EXCEPTION 'checkpoint refused by the test';
                 END IF;
                 RETURN NEW;
               END $$;
               CREATE TRIGGER refuse BEFORE INSERT ON "{schema}".checkpoints
                 FOR EACH ROW EXECUTE FUNCTION "{schema}".refuse();"#
        ))
        .await
        .expect("install the trigger");
    let thread = CheckpointConfig::thread("refused-batch");
    let request = |parent: &CheckpointConfig, id: String, step: i64| {
        let mut cp = Checkpoint::new();
        cp.id = id;
        cp.channel_values
            .insert("count".into(), codec().encode(&step).expect("encode"));
        cp.channel_versions
            .insert("count".into(), ChannelVersion::Int(step + 2));
        cairn_checkpoint::PutRequest {
            config: parent.clone(),
            writes: Vec::new(),
            new_versions: cp.channel_versions.clone(),
            checkpoint: cp,
            metadata: CheckpointMetadata::new(CheckpointSource::Loop, step),
        }
    };
    let ids: Vec<String> = (0..3)
        .map(|_| cairn_checkpoint::new_checkpoint_id())
        .collect();
    let at = |id: &str| thread.clone().with_checkpoint_id(id);
    let refused = format!("{}-refused", ids[1]);
    // One thread and namespace (one statement), and a batch that also writes another
    // namespace (one transaction of pipelined statements).
    let one_thread = vec![
        request(&thread, ids[0].clone(), 0),
        request(&at(&ids[0]), refused.clone(), 1),
        request(&at(&refused), ids[2].clone(), 2),
    ];
    let mut mixed = one_thread.clone();
    let other_ns = CheckpointConfig {
        checkpoint_ns: "sub".into(),
        ..thread.clone()
    };
    mixed.insert(
        0,
        request(&other_ns, cairn_checkpoint::new_checkpoint_id(), 0),
    );
    // With prepared statements and without (PgBouncer mode); more batches than pooled
    // connections: a connection left in an aborted transaction would make a later one fail
    // with "current transaction is aborted".
    let unprepared = support::options(&url, &schema)
        .prepared_statements(false)
        .connect()
        .await
        .expect("connect without prepared statements");
    for round in 0..24 {
        let saver = [&saver, &unprepared][round % 2];
        let batch = [&one_thread, &mixed][round / 2 % 2];
        let err = saver
            .put_batch(batch.clone())
            .await
            .expect_err("the trigger refuses the second checkpoint");
        assert!(
            err.to_string().contains("checkpoint refused by the test"),
            "the error names the server's reason: {err}"
        );
        assert!(
            saver
                .list(&ListQuery::thread("refused-batch"))
                .await
                .expect("list")
                .is_empty(),
            "nothing of the batch is stored"
        );
    }
    let good = vec![
        request(&thread, ids[0].clone(), 0),
        request(&at(&ids[0]), ids[1].clone(), 1),
        request(&at(&ids[1]), ids[2].clone(), 2),
    ];
    for saver in [&saver, &unprepared].into_iter().cycle().take(24) {
        saver.put_batch(good.clone()).await.expect("a good batch");
    }
    let stored = saver
        .list(&ListQuery::thread("refused-batch"))
        .await
        .expect("list");
    assert_eq!(
        stored
            .iter()
            .map(|t| t.checkpoint.id.clone())
            .collect::<Vec<_>>(),
        [ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    drop((saver, unprepared));
    support::drop_schema(&url, &schema).await;
}

/// A channel updated to no value (a consumed trigger, as an empty marker, or named without
/// a value) stores no row, and reads back as no value at its new version.
#[tokio::test]
async fn a_channel_updated_to_no_value_stores_no_row() {
    let Some((saver, schema)) = support::fresh_saver().await else {
        return;
    };
    let url = support::url().expect("url");
    let thread = unique("no-value");
    let (first, cp) = put_count(&saver, &CheckpointConfig::thread(&thread), None, 1).await;
    assert_eq!(
        count_rows(&url, &schema, "checkpoint_blobs", &thread).await,
        1
    );
    let mut next = cp.successor();
    next.channel_values.clear();
    let consumed = saver.get_next_version(next.channel_versions.get("count"));
    next.channel_values
        .insert("count".into(), TypedValue::empty());
    next.channel_versions
        .insert("count".into(), consumed.clone());
    let named = saver.get_next_version(None);
    next.channel_versions.insert("other".into(), named.clone());
    let stored = saver
        .put(
            &first,
            next,
            CheckpointMetadata::new(CheckpointSource::Loop, 2),
            [
                ("count".to_string(), consumed.clone()),
                ("other".to_string(), named),
            ]
            .into(),
        )
        .await
        .expect("put");
    assert_eq!(
        count_rows(&url, &schema, "checkpoint_blobs", &thread).await,
        1,
        "no rows for the versions without a value"
    );
    let tuple = saver
        .get_tuple(&stored)
        .await
        .expect("get")
        .expect("stored");
    assert!(tuple.checkpoint.channel_values.is_empty());
    assert_eq!(
        tuple.checkpoint.channel_versions.get("count"),
        Some(&consumed)
    );
    let older = saver.get_tuple(&first).await.expect("get").expect("stored");
    let count: Option<i64> = older.channel_value(&codec(), "count").expect("decode");
    assert_eq!(count, Some(1));
}

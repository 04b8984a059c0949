//! Runs the real `cairn` binary against SQLite files seeded with `SqliteSaver`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_checkpoint::*;
use cairn_sqlite::SqliteSaver;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_cairn");

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// Ids of the seeded checkpoints.
#[derive(Debug, Clone)]
struct Seeded {
    cp0: String,
    cp1: String,
    cp2: String,
    sub: String,
    other: String,
}

/// Thread `<p>chat`: three root checkpoints (steps -1, 0, 1) with msgpack, JSON and bytes
/// values, pending writes on the last one, and one checkpoint in namespace `inner:abc`.
/// Thread `<p>other`: one checkpoint.
async fn seed_into(saver: &dyn CheckpointSaver, prefix: &str) -> Seeded {
    let mp = ValueCodec::default();
    let js = ValueCodec::new(Format::Json);
    let chat = CheckpointConfig::thread(format!("{prefix}chat"));

    let mut cp = Checkpoint::new();
    let v1 = saver.get_next_version(None);
    for (name, value) in [
        ("messages", mp.encode(&["hi"]).unwrap()),
        ("topic", mp.encode("rust").unwrap()),
        ("blob", TypedValue::new(TAG_BYTES, vec![1u8, 2, 3])),
        ("doc", js.encode(&json!({"title": "a", "n": 1})).unwrap()),
    ] {
        cp.channel_values.insert(name.into(), value);
        cp.channel_versions.insert(name.into(), v1.clone());
    }
    let new_versions: ChannelVersions = cp.channel_versions.clone();
    let c0 = saver
        .put(
            &chat,
            cp.clone(),
            CheckpointMetadata::new(CheckpointSource::Input, -1).with("user", "ada"),
            new_versions,
        )
        .await
        .unwrap();

    let mut next = cp.successor();
    let v2 = saver.get_next_version(Some(&v1));
    next.channel_values
        .insert("messages".into(), mp.encode(&["hi", "hello"]).unwrap());
    next.channel_values.insert(
        "doc".into(),
        js.encode(&json!({"title": "b", "n": 1, "extra": true}))
            .unwrap(),
    );
    next.channel_versions.insert("messages".into(), v2.clone());
    next.channel_versions.insert("doc".into(), v2.clone());
    next.updated_channels = Some(vec!["doc".into(), "messages".into()]);
    let c1 = saver
        .put(
            &c0,
            next.clone(),
            CheckpointMetadata::new(CheckpointSource::Loop, 0).with_run_id("run-1"),
            [("messages".into(), v2.clone()), ("doc".into(), v2.clone())].into(),
        )
        .await
        .unwrap();

    let mut last = next.successor();
    let v3 = saver.get_next_version(Some(&v2));
    last.channel_values
        .insert("topic".into(), mp.encode("go").unwrap());
    last.channel_values
        .insert("count".into(), mp.encode(&3u32).unwrap());
    last.channel_versions.insert("topic".into(), v3.clone());
    last.channel_versions.insert("count".into(), v3.clone());
    last.updated_channels = Some(vec!["count".into(), "topic".into()]);
    let c2 = saver
        .put(
            &c1,
            last,
            CheckpointMetadata::new(CheckpointSource::Loop, 1).with_run_id("run-1"),
            [("topic".into(), v3.clone()), ("count".into(), v3)].into(),
        )
        .await
        .unwrap();
    saver
        .put_writes(
            &c2,
            vec![
                ("messages".into(), mp.encode(&["more"]).unwrap()),
                ("topic".into(), mp.encode("zig").unwrap()),
            ],
            "task-1",
            "~__pregel_pull, writer",
        )
        .await
        .unwrap();

    let mut inner = Checkpoint::new();
    let vi = saver.get_next_version(None);
    inner
        .channel_values
        .insert("scratch".into(), mp.encode(&[1, 2]).unwrap());
    inner.channel_versions.insert("scratch".into(), vi.clone());
    let sub = saver
        .put(
            &chat.clone().with_ns("inner:abc"),
            inner,
            CheckpointMetadata::new(CheckpointSource::Loop, 0),
            [("scratch".into(), vi)].into(),
        )
        .await
        .unwrap();

    let mut o = Checkpoint::new();
    let vo = saver.get_next_version(None);
    o.channel_values.insert("x".into(), mp.encode(&1).unwrap());
    o.channel_versions.insert("x".into(), vo.clone());
    let other = saver
        .put(
            &CheckpointConfig::thread(format!("{prefix}other")),
            o,
            CheckpointMetadata::new(CheckpointSource::Input, -1),
            [("x".into(), vo)].into(),
        )
        .await
        .unwrap();

    let id = |c: CheckpointConfig| c.checkpoint_id.unwrap();
    Seeded {
        cp0: id(c0),
        cp1: id(c1),
        cp2: id(c2),
        sub: id(sub),
        other: id(other),
    }
}

fn seed(path: &Path) -> Seeded {
    runtime().block_on(async {
        let saver = SqliteSaver::open(path).unwrap();
        seed_into(&saver, "").await
    })
}

fn setup() -> (tempfile::TempDir, PathBuf, Seeded) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let ids = seed(&db);
    (dir, db, ids)
}

fn cairn(db: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--db")
        .arg(db)
        .args(args)
        .env_remove("CAIRN_DB")
        .output()
        .expect("run cairn")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs a command that must succeed and returns its text output.
fn ok(db: &Path, args: &[&str]) -> String {
    let o = cairn(db, args);
    assert!(
        o.status.success(),
        "cairn {args:?} failed: {}\n{}",
        stderr(&o),
        stdout(&o)
    );
    stdout(&o)
}

/// Runs a command with `--json` that must succeed and parses its output.
fn json_ok(db: &Path, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let text = ok(db, &all);
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("bad JSON from {args:?}: {e}\n{text}"))
}

/// Runs a command that must fail; returns (exit code, stderr).
fn fails(db: &Path, args: &[&str]) -> (i32, String) {
    let o = cairn(db, args);
    assert!(
        !o.status.success(),
        "cairn {args:?} should fail: {}",
        stdout(&o)
    );
    let err = stderr(&o);
    assert!(!err.contains("panicked"), "no panics: {err}");
    assert!(!err.contains("RUST_BACKTRACE"), "no backtraces: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    (o.status.code().unwrap_or(-1), err)
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn threads_lists_each_thread_with_its_latest_checkpoint() {
    let (_dir, db, ids) = setup();
    let v = json_ok(&db, &["threads"]);
    assert_eq!(v["total_threads"], 2);
    assert_eq!(v["total_checkpoints"], 5);
    let threads = v["threads"].as_array().unwrap();
    let chat = threads.iter().find(|t| t["thread_id"] == "chat").unwrap();
    assert_eq!(chat["checkpoints"], 4);
    assert_eq!(strs(&chat["namespaces"]), ["", "inner:abc"]);
    // The root namespace's latest, even though the subgraph checkpoint is newer.
    assert_eq!(chat["latest"]["checkpoint_id"], ids.cp2.as_str());
    assert_eq!(chat["latest"]["step"], 1);
    assert_eq!(chat["latest"]["source"], "loop");
    // Most recently active first: `other` was written last.
    assert_eq!(threads[0]["thread_id"], "other");
    assert_eq!(threads[0]["latest"]["checkpoint_id"], ids.other.as_str());

    let limited = json_ok(&db, &["threads", "--limit", "1"]);
    assert_eq!(limited["threads"].as_array().unwrap().len(), 1);
    assert_eq!(limited["total_threads"], 2);

    let text = ok(&db, &["threads"]);
    assert!(text.contains("THREAD"), "{text}");
    let chat_line = text.lines().find(|l| l.starts_with("chat")).unwrap();
    assert!(chat_line.contains(&ids.cp2), "{chat_line}");
    assert!(chat_line.contains("loop"), "{chat_line}");
    assert!(text.contains("(2 threads, 5 checkpoints)"), "{text}");
}

#[test]
fn threads_pages_through_large_databases() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("many.db");
    runtime().block_on(async {
        let saver = SqliteSaver::open(&db).unwrap();
        // 3 threads x 110 checkpoints: more than one page of 100, and shared ids across
        // threads (copy_thread keeps ids) straddling page boundaries.
        let mut config = CheckpointConfig::thread("a");
        for step in 0..110 {
            config = saver
                .put(
                    &config,
                    Checkpoint::new(),
                    CheckpointMetadata::new(CheckpointSource::Loop, step),
                    Default::default(),
                )
                .await
                .unwrap();
        }
        saver.copy_thread("a", "b").await.unwrap();
        saver.copy_thread("a", "c").await.unwrap();
    });
    let v = json_ok(&db, &["threads"]);
    assert_eq!(v["total_checkpoints"], 330);
    for t in v["threads"].as_array().unwrap() {
        assert_eq!(t["checkpoints"], 110, "{t}");
        assert_eq!(t["latest"]["step"], 109);
    }
    let h = json_ok(&db, &["history", "b"]);
    let steps: Vec<i64> = h["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, (0..110).rev().collect::<Vec<_>>());
}

#[test]
fn history_is_a_newest_first_timeline() {
    let (_dir, db, ids) = setup();
    let v = json_ok(&db, &["history", "chat"]);
    assert_eq!(v["thread_id"], "chat");
    assert_eq!(v["checkpoint_ns"], "");
    assert_eq!(v["more"], false);
    let cps = v["checkpoints"].as_array().unwrap();
    let got: Vec<&str> = cps
        .iter()
        .map(|c| c["checkpoint_id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [&ids.cp2, &ids.cp1, &ids.cp0]);
    assert_eq!(cps[0]["step"], 1);
    assert_eq!(cps[0]["source"], "loop");
    assert_eq!(cps[0]["parent_checkpoint_id"], ids.cp1.as_str());
    assert_eq!(cps[0]["pending_writes"], 2);
    assert_eq!(strs(&cps[0]["changed"]), ["count", "topic"]);
    assert_eq!(strs(&cps[1]["changed"]), ["doc", "messages"]);
    assert_eq!(strs(&cps[1]["updated_channels"]), ["doc", "messages"]);
    assert_eq!(cps[1]["run_id"], "run-1");
    assert_eq!(cps[2]["source"], "input");
    assert_eq!(cps[2]["parent_checkpoint_id"], Value::Null);
    assert_eq!(cps[2]["updated_channels"], Value::Null);
    assert_eq!(
        strs(&cps[2]["changed"]),
        ["blob", "doc", "messages", "topic"]
    );

    // Paging: --limit says there is more; --before continues, parents still resolved.
    let first = json_ok(&db, &["history", "chat", "--limit", "1"]);
    assert_eq!(first["checkpoints"].as_array().unwrap().len(), 1);
    assert_eq!(first["more"], true);
    assert_eq!(
        strs(&first["checkpoints"][0]["changed"]),
        ["count", "topic"]
    );
    let rest = json_ok(&db, &["history", "chat", "--before", &ids.cp2]);
    let rest_ids: Vec<&str> = rest["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["checkpoint_id"].as_str().unwrap())
        .collect();
    assert_eq!(rest_ids, [&ids.cp1, &ids.cp0]);
    // --before takes an id prefix too, like every other checkpoint argument.
    let unique = (4..ids.cp2.len())
        .map(|n| &ids.cp2[..n])
        .find(|p| !ids.cp1.starts_with(p) && !ids.cp0.starts_with(p))
        .expect("a prefix only cp2 has");
    let by_prefix = json_ok(&db, &["history", "chat", "--before", unique]);
    assert_eq!(by_prefix["checkpoints"], rest["checkpoints"], "{unique}");

    let ns = json_ok(&db, &["history", "chat", "--ns", "inner:abc"]);
    assert_eq!(ns["checkpoints"][0]["checkpoint_id"], ids.sub.as_str());

    let text = ok(&db, &["history", "chat"]);
    assert!(text.contains("3 checkpoints, newest first"), "{text}");
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains(&ids.cp0) || l.contains(&ids.cp1) || l.contains(&ids.cp2))
        .collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[0].contains(&ids.cp2) && lines[0].contains("count, topic"),
        "{text}"
    );
    assert!(
        lines[2].contains(&ids.cp0) && lines[2].contains("input"),
        "{text}"
    );
    let paged = ok(&db, &["history", "chat", "--limit", "2"]);
    assert!(paged.contains(&format!("--before {}", ids.cp1)), "{paged}");
}

#[test]
fn show_decodes_values_metadata_and_pending_writes() {
    let (_dir, db, ids) = setup();
    let v = json_ok(&db, &["show", "chat"]);
    assert_eq!(v["checkpoint_id"], ids.cp2.as_str());
    assert_eq!(v["parent_checkpoint_id"], ids.cp1.as_str());
    assert_eq!(v["metadata"]["step"], 1);
    assert_eq!(v["metadata"]["run_id"], "run-1");
    let ch = &v["channels"];
    assert_eq!(ch["messages"]["value"], json!(["hi", "hello"]));
    assert_eq!(ch["messages"]["type"], "msgpack");
    assert_eq!(ch["topic"]["value"], "go");
    assert_eq!(ch["count"]["value"], 3);
    assert_eq!(ch["doc"]["type"], "json");
    assert_eq!(ch["doc"]["value"]["extra"], true);
    assert_eq!(ch["blob"]["value"], json!({"$bytes": 3, "base64": "AQID"}));
    assert_eq!(ch["blob"]["bytes"], 3);
    assert!(ch["count"]["version"].as_str().unwrap().starts_with("0000"));
    let writes = v["pending_writes"].as_array().unwrap();
    assert_eq!(writes.len(), 2);
    assert_eq!(writes[0]["task_id"], "task-1");
    assert_eq!(writes[0]["task_path"], "~__pregel_pull, writer");
    assert_eq!(writes[0]["channel"], "messages");
    assert_eq!(writes[0]["value"], json!(["more"]));
    assert_eq!(writes[1]["value"], "zig");

    // An older checkpoint, by id prefix; metadata caller keys come through.
    let prefix = &ids.cp0[..ids.cp0.len() - 2];
    let old = json_ok(&db, &["show", "chat", "--checkpoint", prefix]);
    assert_eq!(old["checkpoint_id"], ids.cp0.as_str());
    assert_eq!(old["metadata"]["user"], "ada");
    assert_eq!(old["channels"]["topic"]["value"], "rust");
    assert!(old["channels"].get("count").is_none());

    let text = ok(&db, &["show", "chat"]);
    assert!(
        text.contains(&format!("Checkpoint {} of thread \"chat\"", ids.cp2)),
        "{text}"
    );
    assert!(text.contains("step     1 (loop)"), "{text}");
    assert!(text.contains("\"hello\""), "{text}");
    assert!(text.contains("Pending writes (2):"), "{text}");
    assert!(
        text.contains("task task-1 (~__pregel_pull, writer): topic = \"zig\""),
        "{text}"
    );
}

#[test]
fn diff_reports_added_removed_appended_and_changed_keys() {
    let (_dir, db, ids) = setup();
    let v = json_ok(&db, &["diff", "chat", &ids.cp0, &ids.cp2]);
    assert_eq!(v["from"]["checkpoint_id"], ids.cp0.as_str());
    assert_eq!(v["to"]["step"], 1);
    let changes = v["changes"].as_array().unwrap();
    let by = |name: &str| {
        changes
            .iter()
            .find(|c| c["channel"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by("count")["change"], "added");
    assert_eq!(by("count")["after"], 3);
    assert_eq!(by("messages")["kind"], "appended");
    assert_eq!(by("messages")["appended"], json!(["hello"]));
    assert_eq!(by("doc")["kind"], "object");
    assert_eq!(by("doc")["keys"]["added"], json!({"extra": true}));
    assert_eq!(
        by("doc")["keys"]["changed"]["title"],
        json!({"before": "a", "after": "b"})
    );
    assert_eq!(by("topic")["kind"], "replaced");
    assert_eq!(by("topic")["before"], "rust");
    assert_eq!(by("topic")["after"], "go");
    assert_eq!(strs(&v["unchanged"]), ["blob"]);

    // The other way round: count is removed.
    let back = json_ok(&db, &["diff", "chat", &ids.cp2, &ids.cp0]);
    let removed: Vec<&Value> = back["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["change"] == "removed")
        .collect();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0]["channel"], "count");

    let text = ok(&db, &["diff", "chat", &ids.cp0, &ids.cp2]);
    assert!(text.contains("+ count"), "{text}");
    assert!(
        text.contains("~ messages  (v1 → v2) appended 1 item:"),
        "{text}"
    );
    assert!(text.contains("    + \"hello\""), "{text}");
    assert!(text.contains("~ title: \"a\" → \"b\""), "{text}");
    assert!(text.contains("\"rust\" → \"go\""), "{text}");
    assert!(text.contains("1 channel unchanged: blob"), "{text}");
}

#[test]
fn fork_copies_a_checkpoint_into_a_new_thread() {
    let (_dir, db, ids) = setup();
    let v = json_ok(&db, &["fork", "chat", &ids.cp1, "--to", "chat-b"]);
    assert_eq!(v["source"]["checkpoint_id"], ids.cp1.as_str());
    assert_eq!(v["fork"]["thread_id"], "chat-b");
    assert_eq!(v["fork"]["source"], "fork");
    assert_eq!(v["fork"]["step"], 0);
    assert_eq!(v["channels"], 4);
    let new_id = v["fork"]["checkpoint_id"].as_str().unwrap().to_owned();
    assert_ne!(new_id, ids.cp1);

    runtime().block_on(async {
        let saver = SqliteSaver::open(&db).unwrap();
        let src = saver
            .get_tuple(&CheckpointConfig::thread("chat").with_checkpoint_id(&ids.cp1))
            .await
            .unwrap()
            .unwrap();
        let forked = saver
            .get_tuple(&CheckpointConfig::thread("chat-b"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(forked.checkpoint.id, new_id);
        assert_eq!(forked.parent_config, None);
        assert_eq!(
            forked.checkpoint.channel_values,
            src.checkpoint.channel_values
        );
        assert_eq!(
            forked.checkpoint.channel_versions,
            src.checkpoint.channel_versions
        );
        assert_eq!(
            forked.checkpoint.versions_seen,
            src.checkpoint.versions_seen
        );
        assert_eq!(forked.metadata.source, Some(CheckpointSource::Fork));
        assert_eq!(forked.metadata.step, Some(0));
        assert_eq!(
            forked.metadata.extra["forked_from"]["checkpoint_id"],
            ids.cp1.as_str()
        );
        let all = saver.list(&ListQuery::thread("chat-b")).await.unwrap();
        assert_eq!(all.len(), 1);
        // The source thread is untouched.
        let source = saver.list(&ListQuery::thread("chat").ns("")).await.unwrap();
        assert_eq!(source.len(), 3);
        assert_eq!(source[0].checkpoint.id, ids.cp2);
    });

    let (code, err) = fails(&db, &["fork", "chat", &ids.cp1, "--to", "chat-b"]);
    assert_eq!(code, 2);
    assert!(err.contains("already exists"), "{err}");
    let text = ok(&db, &["fork", "chat", &ids.cp2, "--to", "chat-c"]);
    assert!(text.contains("into thread \"chat-c\""), "{text}");
    assert!(text.contains("cairn show chat-c"), "{text}");
}

#[test]
fn prune_keeps_latest_or_deletes_with_confirmation() {
    let (_dir, db, ids) = setup();
    let v = json_ok(&db, &["prune", "chat", "--keep-latest"]);
    assert_eq!(v["strategy"], "keep-latest");
    assert_eq!(v["threads"][0]["thread_id"], "chat");
    assert_eq!(v["threads"][0]["checkpoints_before"], 4);
    // The latest of the root namespace and of inner:abc.
    assert_eq!(v["threads"][0]["checkpoints_after"], 2);
    let h = json_ok(&db, &["history", "chat"]);
    assert_eq!(h["checkpoints"].as_array().unwrap().len(), 1);
    assert_eq!(h["checkpoints"][0]["checkpoint_id"], ids.cp2.as_str());

    let (code, err) = fails(&db, &["prune", "other", "--delete"]);
    assert_eq!(code, 2);
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(
        json_ok(&db, &["threads"])["total_threads"],
        2,
        "nothing deleted"
    );

    let (code, err) = fails(&db, &["prune", "other", "nope", "--delete", "--yes"]);
    assert_eq!(code, 1);
    assert!(err.contains("thread \"nope\" not found"), "{err}");
    assert_eq!(
        json_ok(&db, &["threads"])["total_threads"],
        2,
        "nothing deleted"
    );

    let text = ok(&db, &["prune", "other", "--delete", "--yes"]);
    assert!(
        text.contains("Deleted thread \"other\" (1 checkpoint)."),
        "{text}"
    );
    let t = json_ok(&db, &["threads"]);
    assert_eq!(t["total_threads"], 1);
    assert_eq!(t["threads"][0]["thread_id"], "chat");

    let o = cairn(&db, &["prune", "chat"]);
    assert_eq!(o.status.code(), Some(2), "a strategy is required");
    assert!(stderr(&o).contains("--keep-latest"), "{}", stderr(&o));
}

/// Every checkpoint of `thread` in `saver`, oldest first, fully loaded.
async fn dump(saver: &dyn CheckpointSaver, thread: &str) -> Vec<CheckpointTuple> {
    let mut all = saver.list(&ListQuery::thread(thread)).await.unwrap();
    all.reverse();
    all
}

#[test]
fn migrate_copies_threads_exactly_and_is_resumable() {
    let (dir, db, ids) = setup();
    let target = dir.path().join("target.db");
    let o = Command::new(BIN)
        .args(["--json", "migrate", "--from"])
        .arg(&db)
        .arg("--to")
        .arg(&target)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["totals"]["threads"], 2);
    assert_eq!(v["totals"]["checkpoints"], 5);
    assert_eq!(v["totals"]["copied"], 5);
    assert_eq!(v["totals"]["skipped"], 0);
    assert_eq!(v["totals"]["pending_writes"], 2);
    assert_eq!(v["threads"][0]["thread_id"], "chat");
    assert_eq!(v["threads"][0]["checkpoints"], 4);
    assert!(
        stderr(&o).contains("migrated 5/5 checkpoints of 2 threads"),
        "{}",
        stderr(&o)
    );

    runtime().block_on(async {
        let a = SqliteSaver::open(&db).unwrap();
        let b = SqliteSaver::open(&target).unwrap();
        for thread in ["chat", "other"] {
            let (x, y) = (dump(&a, thread).await, dump(&b, thread).await);
            assert_eq!(x.len(), y.len());
            for (x, y) in x.iter().zip(&y) {
                assert_eq!(x, y, "checkpoint {} copied exactly", x.checkpoint.id);
            }
        }
    });

    // Running it again copies nothing.
    let text = ok(
        &db,
        &[
            "migrate",
            "--from",
            db.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
        ],
    );
    assert!(
        text.contains("0 checkpoints copied, 5 already present"),
        "{text}"
    );

    // Only the threads asked for.
    let third = dir.path().join("third.db");
    let v = json_ok(
        &db,
        &[
            "migrate",
            "--from",
            db.to_str().unwrap(),
            "--to",
            third.to_str().unwrap(),
            "--thread",
            "other",
        ],
    );
    assert_eq!(v["totals"]["threads"], 1);
    assert_eq!(v["threads"][0]["thread_id"], "other");
    let t = json_ok(&third, &["threads"]);
    assert_eq!(t["total_threads"], 1);
    assert_eq!(
        t["threads"][0]["latest"]["checkpoint_id"],
        ids.other.as_str()
    );

    let (code, err) = fails(
        &db,
        &[
            "migrate",
            "--from",
            db.to_str().unwrap(),
            "--to",
            third.to_str().unwrap(),
            "--thread",
            "ghost",
        ],
    );
    assert_eq!(code, 1);
    assert!(err.contains("thread \"ghost\" not found"), "{err}");
    let (code, err) = fails(
        &db,
        &[
            "migrate",
            "--from",
            db.to_str().unwrap(),
            "--to",
            db.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2);
    assert!(err.contains("same database"), "{err}");
    // The same file spelled another way, and targets that vanish, are refused too.
    let dotted = dir.path().join(".").join(db.file_name().unwrap());
    for (to, says) in [
        (dotted.to_str().unwrap(), "same database"),
        ("memory:", "in-memory"),
        (":memory:", "in-memory"),
    ] {
        let (code, err) = fails(
            &db,
            &["migrate", "--from", db.to_str().unwrap(), "--to", to],
        );
        assert_eq!(code, 2, "{to}");
        assert!(err.contains(says), "{to}: {err}");
    }
}

/// Migrates seeded threads from SQLite to the server at `url` and back to a new SQLite
/// file, checking each copy is exact; cleans up the server's threads afterwards.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn migrate_through_server(url: &str) {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cairn.db");
    let back = dir.path().join("back.db");
    let prefix = format!("cli-{}-", new_checkpoint_id());
    let rt = runtime();
    rt.block_on(async {
        let saver = SqliteSaver::open(&db).unwrap();
        seed_into(&saver, &prefix).await;
    });
    let chat = format!("{prefix}chat");
    let other = format!("{prefix}other");
    let to_server = json_ok(
        &db,
        &[
            "migrate",
            "--from",
            db.to_str().unwrap(),
            "--to",
            url,
            "--thread",
            &chat,
            "--thread",
            &other,
        ],
    );
    assert_eq!(to_server["totals"]["copied"], 5);
    assert_eq!(to_server["totals"]["pending_writes"], 2);
    let from_server = json_ok(
        &db,
        &[
            "migrate",
            "--from",
            url,
            "--to",
            back.to_str().unwrap(),
            "--thread",
            &chat,
            "--thread",
            &other,
        ],
    );
    assert_eq!(from_server["totals"]["copied"], 5);
    // The CLI reads the server too.
    let h = json_ok(Path::new(url), &["history", &chat]);
    assert_eq!(h["checkpoints"].as_array().unwrap().len(), 3);
    rt.block_on(async {
        let a = SqliteSaver::open(&db).unwrap();
        let b = SqliteSaver::open(&back).unwrap();
        let server = cairn_cli::backend::open(url, cairn_cli::backend::Mode::Existing)
            .await
            .unwrap();
        for thread in [&chat, &other] {
            let original = dump(&a, thread).await;
            assert_eq!(original, dump(server.saver.as_ref(), thread).await, "{url}");
            assert_eq!(original, dump(&b, thread).await, "round trip through {url}");
            server.saver.delete_thread(thread).await.unwrap();
        }
    });
}

/// The server URL in `var`, or `None` to skip; with `CAIRN_REQUIRE_SERVERS=1` a missing URL
/// fails the test instead, as the backends' own server tests do.
#[cfg(any(feature = "postgres", feature = "redis"))]
fn server_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) => Some(url),
        Err(_) if std::env::var("CAIRN_REQUIRE_SERVERS").as_deref() == Ok("1") => {
            panic!("{var} is not set and CAIRN_REQUIRE_SERVERS=1: this test needs the server")
        }
        Err(_) => {
            eprintln!("{var} not set; skipping");
            None
        }
    }
}

#[cfg(feature = "postgres")]
#[test]
fn migrate_sqlite_to_postgres_and_back() {
    if let Some(url) = server_url("CAIRN_TEST_POSTGRES_URL") {
        migrate_through_server(&url);
    }
}

#[cfg(feature = "redis")]
#[test]
fn migrate_sqlite_to_redis_and_back() {
    if let Some(url) = server_url("CAIRN_TEST_REDIS_URL") {
        migrate_through_server(&url);
    }
}

#[test]
fn unknown_things_are_clear_errors() {
    let (_dir, db, ids) = setup();
    for args in [
        vec!["history", "nope"],
        vec!["show", "nope"],
        vec!["diff", "nope", "a", "b"],
        vec!["fork", "nope", "abcd", "--to", "x"],
        vec!["prune", "nope", "--keep-latest"],
    ] {
        let (code, err) = fails(&db, &args);
        assert_eq!(code, 1, "{args:?}");
        assert!(
            err.starts_with("error: thread \"nope\" not found"),
            "{args:?}: {err}"
        );
        assert!(err.contains("cairn threads"), "{err}");
    }
    let (code, err) = fails(&db, &["show", "chat", "--checkpoint", "ffffffff-0000"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("checkpoint \"ffffffff-0000\" not found in thread \"chat\""),
        "{err}"
    );
    assert!(err.contains("cairn history chat"), "{err}");
    let (_, err) = fails(&db, &["diff", "chat", &ids.cp0, "zzzz"]);
    assert!(err.contains("checkpoint \"zzzz\" not found"), "{err}");
    let (code, err) = fails(&db, &["show", "chat", "--checkpoint", "1f"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("at least 4 characters"), "{err}");
    let (_, err) = fails(&db, &["history", "chat", "--ns", "nowhere"]);
    assert!(
        err.contains("no checkpoints in namespace \"nowhere\""),
        "{err}"
    );
    assert!(err.contains("\"inner:abc\""), "{err}");

    // --json errors are one JSON line with a kind.
    let o = cairn(&db, &["--json", "show", "nope"]);
    assert_eq!(o.status.code(), Some(1));
    let e: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(e["kind"], "not_found");
    assert!(e["error"].as_str().unwrap().contains("nope"));
    assert!(o.stdout.is_empty());

    // Databases.
    let (code, err) = fails(Path::new("mysql://u:secret@host/db"), &["threads"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("unsupported database URL scheme \"mysql\""),
        "{err}"
    );
    assert!(!err.contains("secret"), "{err}");
    let (code, err) = fails(Path::new("/no/such/dir/x.db"), &["threads"]);
    assert_eq!(code, 1);
    assert!(err.contains("does not exist"), "{err}");
    #[cfg(not(feature = "redis"))]
    {
        let (_, err) = fails(Path::new("redis://127.0.0.1:1/"), &["threads"]);
        assert!(err.contains("`redis` feature"), "{err}");
    }
    #[cfg(not(feature = "postgres"))]
    {
        let (_, err) = fails(Path::new("postgres://127.0.0.1:1/x"), &["threads"]);
        assert!(err.contains("`postgres` feature"), "{err}");
    }
    // An empty in-memory store has no threads, and says so.
    let text = ok(Path::new("memory:"), &["threads"]);
    assert!(text.contains("No threads"), "{text}");
}

#[test]
fn corrupt_data_is_reported_without_panicking() {
    let (_dir, db, ids) = setup();
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        // A damaged channel value: shown inline, the rest of the checkpoint still displays.
        conn.execute(
            "UPDATE checkpoint_blobs SET data = x'c1c1c1' WHERE thread_id = 'chat' AND channel = 'topic'",
            [],
        )
        .unwrap();
    }
    let v = json_ok(&db, &["show", "chat"]);
    assert!(
        v["channels"]["topic"]["error"]
            .as_str()
            .unwrap()
            .contains("msgpack"),
        "{v}"
    );
    assert_eq!(v["channels"]["count"]["value"], 3);
    let text = ok(&db, &["show", "chat"]);
    assert!(text.contains("<undecodable msgpack"), "{text}");
    {
        let conn = rusqlite::Connection::open(&db).unwrap();
        // A damaged checkpoint header: the saver reports where.
        conn.execute(
            "UPDATE checkpoints SET header = x'00ff' WHERE checkpoint_id = unhex(replace(?1, '-', ''))",
            [&ids.cp2],
        )
        .unwrap();
    }
    let (code, err) = fails(&db, &["show", "chat"]);
    assert_eq!(code, 1);
    assert!(err.contains("corrupt"), "{err}");
    assert!(err.contains(&ids.cp2), "{err}");
    let o = cairn(&db, &["--json", "history", "chat"]);
    let e: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(e["kind"], "corrupt");
}

#[test]
fn db_comes_from_the_environment_too() {
    let (_dir, db, _) = setup();
    let o = Command::new(BIN)
        .args(["--json", "threads"])
        .env("CAIRN_DB", format!("sqlite:{}", db.display()))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["total_threads"], 2);
}

/// Steps of a `history --json` document, newest first.
fn steps(history: &Value) -> Vec<i64> {
    history["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step"].as_i64().unwrap())
        .collect()
}

#[test]
fn demo_crashes_resumes_and_starts_new_editions() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");

    let o = cairn(&db, &["demo", "--delay-ms", "0", "--crash-after", "3"]);
    assert!(!o.status.success(), "the process must die");
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "killed with SIGKILL");
    }
    let err = stderr(&o);
    assert!(err.contains("simulated crash after 3 super-steps"), "{err}");
    assert!(
        err.contains(&format!("run `cairn --db {} demo` to resume", db.display())),
        "says how to resume this very run: {err}"
    );
    assert!(err.contains("step  2  ✓ research_risks"), "{err}");
    // In durability async the run may have gone on past step 2 (its nodes take no time
    // here) before the process died: what it did after the last stored checkpoint is lost
    // and runs again on resume. Stored: input at -1, then START (0), plan (1), research (2).
    assert_eq!(steps(&json_ok(&db, &["history", "demo"])), [2, 1, 0, -1]);

    let o = cairn(&db, &["--json", "demo", "--delay-ms", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("resuming thread demo from step 3"),
        "{}",
        stderr(&o)
    );
    assert!(
        !stderr(&o).contains("▸ plan"),
        "done steps are not run again"
    );
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["mode"], "resumed");
    assert_eq!(v["resumed_from_step"], 3);
    assert_eq!(v["steps_run"], 3);
    assert_eq!(v["edition"], 1);
    assert_eq!(v["thread_id"], "demo");
    assert_eq!(v["published"].as_array().unwrap().len(), 1);
    assert_eq!(v["article"], v["published"][0]);
    assert_eq!(steps(&v["history"]), [5, 4, 3, 2, 1, 0, -1]);

    // Every node ran exactly once: one log line each, no duplicates.
    let shown = json_ok(&db, &["show", "demo"]);
    let log = strs(&shown["channels"]["log"]["value"]);
    assert_eq!(log.len(), 7, "{log:?}");
    for node in [
        "plan",
        "research_history",
        "research_practice",
        "research_risks",
        "summarize",
        "review",
        "publish",
    ] {
        assert_eq!(
            log.iter()
                .filter(|l| l.starts_with(&format!("{node}:")))
                .count(),
            1,
            "{node}: {log:?}"
        );
    }
    assert_eq!(shown["metadata"]["job"], "cairn-demo");
    assert!(shown["channels"]["draft"]["value"]
        .as_str()
        .unwrap()
        .starts_with("# Durable execution (edition 1)"));

    // A finished thread: the next run is the next edition, on the same thread.
    let text = ok(&db, &["demo", "--delay-ms", "0"]);
    assert!(text.contains("Edition 2: Durable execution"), "{text}");
    assert!(text.contains("a new run on the finished thread"), "{text}");
    assert!(text.contains("history demo"), "{text}");
    assert!(text.contains("show demo"), "{text}");
    let h = json_ok(&db, &["history", "demo"]);
    assert_eq!(h["checkpoints"].as_array().unwrap().len(), 14);
    assert_eq!(h["checkpoints"][0]["step"], 12);

    // --fresh starts over.
    let v = json_ok(&db, &["demo", "--delay-ms", "0", "--fresh"]);
    assert_eq!(v["mode"], "new");
    assert_eq!(v["edition"], 1);
    assert_eq!(v["published"].as_array().unwrap().len(), 1);
    assert_eq!(steps(&v["history"]), [5, 4, 3, 2, 1, 0, -1]);
}

/// The demo runs only on threads it wrote: on an application's thread it would put its own
/// state over the application's (and `--fresh` would delete it).
#[test]
fn demo_leaves_threads_it_did_not_write_alone() {
    let (_dir, db, _) = setup();
    let before = json_ok(&db, &["history", "chat"]);
    for args in [
        vec!["demo", "--delay-ms", "0", "--thread", "chat"],
        vec!["demo", "--delay-ms", "0", "--thread", "chat", "--fresh"],
    ] {
        let (code, err) = fails(&db, &args);
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(
            err.contains("thread \"chat\"") && err.contains("not written by `cairn demo`"),
            "{err}"
        );
        assert!(err.contains("--thread"), "says what to do: {err}");
    }
    assert_eq!(
        json_ok(&db, &["history", "chat"]),
        before,
        "thread untouched"
    );
}

#[test]
fn a_forked_demo_thread_continues_from_the_fork() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let original = json_ok(&db, &["demo", "--delay-ms", "0", "--thread", "d"]);
    let research_done = original["history"]["checkpoints"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["step"] == 2)
        .unwrap()["checkpoint_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let f = json_ok(&db, &["fork", "d", &research_done, "--to", "d2"]);
    assert_eq!(f["fork"]["step"], 2);

    let o = cairn(
        &db,
        &["--json", "demo", "--delay-ms", "0", "--thread", "d2"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("resuming thread d2 from step 3"), "{err}");
    assert!(!err.contains("▸ research"), "research is not redone: {err}");
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["mode"], "resumed");
    assert_eq!(v["steps_run"], 3);
    // Same inputs, same deterministic article.
    assert_eq!(v["published"], original["published"]);
    assert_eq!(steps(&v["history"]), [5, 4, 3, 2]);
    assert_eq!(v["history"]["checkpoints"][3]["source"], "fork");
    // The source thread is untouched.
    assert_eq!(
        steps(&json_ok(&db, &["history", "d"])),
        [5, 4, 3, 2, 1, 0, -1]
    );

    let (code, err) = fails(&db, &["demo", "--crash-after", "0"]);
    assert_eq!(code, 2);
    assert!(err.contains("--crash-after"), "{err}");
}

/// With `--json`, arguments clap refuses are one JSON object on stderr too (kind `usage`,
/// exit code 2), like every other error.
#[test]
fn argument_errors_are_json_with_json() {
    let (_dir, db, _) = setup();
    for args in [
        vec!["--json", "show"],
        vec!["--json", "prune", "x", "--keep-latest", "--delete"],
        vec!["--json", "history", "chat", "--limit", "many"],
    ] {
        let o = cairn(&db, &args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = stderr(&o);
        let v: Value = serde_json::from_str(err.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {err}"));
        assert_eq!(v["kind"], "usage");
        assert!(!v["error"].as_str().unwrap_or_default().is_empty(), "{v}");
    }
    let o = cairn(&db, &["show"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("Usage:"), "clap's text without --json");
}

/// A closed stderr (its reader gone) does not stop the demo half-way: the progress lines
/// are dropped and the run completes.
#[test]
fn demo_runs_to_the_end_with_stderr_closed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("demo.db");
    let mut child = Command::new(BIN)
        .arg("--db")
        .arg(&db)
        .args(["demo", "--delay-ms", "20"])
        .env_remove("CAIRN_DB")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    drop(child.stderr.take());
    let out = child.wait_with_output().expect("wait");
    assert!(out.status.success(), "{:?}", out.status);
    assert_eq!(
        steps(&json_ok(&db, &["history", "demo"])),
        [5, 4, 3, 2, 1, 0, -1]
    );
}

/// A migration stopped between storing a checkpoint and its pending writes (separate calls)
/// is completed by running it again: the writes the target lacks are copied.
#[test]
fn migrate_again_copies_writes_a_stopped_migration_left_out() {
    let (dir, db, _) = setup();
    let target = dir.path().join("target.db");
    runtime().block_on(async {
        let a = SqliteSaver::open(&db).unwrap();
        let b = SqliteSaver::open(&target).unwrap();
        // The checkpoints of "chat" without their writes, as a stopped migration leaves them.
        let history = dump(&a, "chat").await;
        assert!(history.iter().any(|t| !t.pending_writes.is_empty()));
        for t in history {
            let parent = t.parent_config.clone().unwrap_or(CheckpointConfig {
                checkpoint_id: None,
                ..t.config.clone()
            });
            let versions = t.checkpoint.channel_versions.clone();
            b.put(&parent, t.checkpoint, t.metadata, versions)
                .await
                .unwrap();
        }
    });
    let v = json_ok(
        &db,
        &[
            "migrate",
            "--from",
            db.to_str().unwrap(),
            "--to",
            target.to_str().unwrap(),
            "--thread",
            "chat",
        ],
    );
    assert_eq!(v["totals"]["copied"], 0, "{v}");
    runtime().block_on(async {
        let a = SqliteSaver::open(&db).unwrap();
        let b = SqliteSaver::open(&target).unwrap();
        let (x, y) = (dump(&a, "chat").await, dump(&b, "chat").await);
        assert_eq!(x.len(), y.len());
        for (x, y) in x.iter().zip(&y) {
            assert_eq!(x.pending_writes, y.pending_writes, "{}", x.checkpoint.id);
        }
    });
}

/// Inspecting commands refuse a file that is not a Cairn database (empty, not SQLite, or
/// another program's SQLite database) and leave it exactly as it was: no tables created, no
/// switch to WAL.
#[test]
fn inspecting_leaves_files_that_are_not_cairn_databases_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let text = dir.path().join("notes.db");
    std::fs::write(&text, b"just some notes\n").unwrap();
    let other = dir.path().join("other.db");
    {
        let conn = rusqlite::Connection::open(&other).unwrap();
        conn.execute_batch("CREATE TABLE checkpoints (thread_id TEXT, checkpoint BLOB);")
            .unwrap();
    }
    for (file, says) in [
        (&empty, "is empty"),
        (&text, "not a SQLite database"),
        (&other, "not a Cairn one"),
    ] {
        let before = std::fs::read(file).unwrap();
        for args in [vec!["threads"], vec!["history", "t"], vec!["show", "t"]] {
            let (code, err) = fails(file, &args);
            assert_eq!(code, 1, "{args:?}");
            assert!(err.contains(says), "{}: {err}", file.display());
        }
        assert_eq!(std::fs::read(file).unwrap(), before, "{}", file.display());
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names.len(), 3, "no -wal or -shm files: {names:?}");
}

//! Cairn's own cases, beyond LangGraph's suite: concurrency, large values, unicode names,
//! exact round-trips, paging, write semantics and value reclamation.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use super::support::*;
use super::SaverHandle;
use crate::{
    ChannelVersion, Checkpoint, CheckpointMetadata, CheckpointSaver, CheckpointSource, Error,
    ListQuery, PruneStrategy, TypedValue, ERROR, INTERRUPT, TAG_BYTES, TAG_JSON,
};

/// How many threads the concurrency cases write at once.
const CONCURRENT_THREADS: usize = 64;
/// Checkpoints per thread in the concurrency cases.
const STEPS: usize = 3;

/// Writes `STEPS` checkpoints (each with two pending writes) to a fresh thread; returns the
/// thread id and the ids, oldest first.
async fn write_thread(saver: &dyn CheckpointSaver, n: usize) -> (String, Vec<String>) {
    let tid = unique(&format!("conformance-concurrent-{n}"));
    let mut config = cfg(&tid);
    let mut stored = Vec::with_capacity(STEPS);
    for step in 0..STEPS {
        let counter = (n * 100 + step) as i64;
        let version = step as i64 + 1;
        let mut cp = checkpoint(
            &[("counter", value(&counter)), ("owner", value(&tid))],
            &[("counter", version), ("owner", 1)],
        );
        cp.versions_seen
            .insert("node".into(), versions(&[("counter", version)]));
        let mut new_versions = versions(&[("counter", version)]);
        if step == 0 {
            new_versions.insert("owner".into(), ChannelVersion::Int(1));
        }
        config = put(saver, &config, cp, md(Loop, step as i64), new_versions).await;
        let writes = vec![("out", value(&counter)), ("who", value(&tid))];
        put_writes(saver, &config, writes, &format!("task-{step}"), "").await;
        stored.push(id_of(&config));
    }
    (tid, stored)
}

/// Checks everything [`write_thread`] wrote reads back, by listing and by id.
async fn verify_thread(saver: &dyn CheckpointSaver, n: usize, tid: &str, stored: &[String]) {
    let listed = list(saver, &query(tid)).await;
    let mut expected: Vec<String> = stored.to_vec();
    expected.reverse();
    assert_eq!(
        ids(&listed),
        expected,
        "thread {tid} lists other checkpoints"
    );
    for t in &listed {
        let step = t.metadata.step.unwrap_or(-1);
        let counter = n as i64 * 100 + step;
        assert_eq!(
            t.checkpoint.channel_values,
            values(&[("counter", value(&counter)), ("owner", value(tid))]),
            "values of thread {tid} step {step}"
        );
        let task = format!("task-{step}");
        assert_eq!(
            writes_json(&t.pending_writes),
            [
                (task.clone(), "out".to_owned(), json!(counter)),
                (task, "who".to_owned(), json!(tid)),
            ],
            "writes of thread {tid} step {step}"
        );
    }
    let latest = get_some(saver, &cfg(tid)).await;
    assert_eq!(Some(&latest.checkpoint.id), stored.last());
}

/// 64 threads written at once through one saver (puts and writes interleaved in one task),
/// then every checkpoint, value and write reads back.
pub async fn concurrent_threads_interleaved(saver: &dyn CheckpointSaver) {
    let written =
        futures::future::join_all((0..CONCURRENT_THREADS).map(|n| write_thread(saver, n))).await;
    let checks = written
        .iter()
        .enumerate()
        .map(|(n, (tid, stored))| verify_thread(saver, n, tid, stored));
    futures::future::join_all(checks).await;
}

/// 64 tokio tasks, released together, each writing its own thread through the shared saver;
/// then every checkpoint, value and write reads back.
pub async fn concurrent_tasks_write_64_threads(saver: SaverHandle) {
    let barrier = Arc::new(tokio::sync::Barrier::new(CONCURRENT_THREADS));
    let handles: Vec<_> = (0..CONCURRENT_THREADS)
        .map(|n| {
            let (saver, barrier) = (saver.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let (tid, stored) = write_thread(saver.as_ref(), n).await;
                (n, tid, stored)
            })
        })
        .collect();
    let mut written = Vec::with_capacity(CONCURRENT_THREADS);
    for handle in handles {
        match handle.await {
            Ok(w) => written.push(w),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a writer task did not finish: {e}"),
        }
    }
    let readers: Vec<_> = written
        .into_iter()
        .map(|(n, tid, stored)| {
            let saver = saver.clone();
            tokio::spawn(async move { verify_thread(saver.as_ref(), n, &tid, &stored).await })
        })
        .collect();
    for handle in readers {
        if let Err(e) = handle.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
            panic!("a reader task did not finish: {e}");
        }
    }
}

/// A 10 MB channel value (and a 10 MB pending write) round-trips byte for byte.
pub async fn large_value_roundtrip(saver: &dyn CheckpointSaver) {
    let mut seed: u32 = 0x2545_f491;
    let text: String = (0..10 * 1024 * 1024)
        .map(|_| {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            char::from(b'!' + (seed >> 24) as u8 % 94)
        })
        .collect();
    let big = value(&text);
    assert!(big.len() >= 10 * 1024 * 1024);
    let tid = thread_id();
    let cp = checkpoint(
        &[("big", big.clone()), ("small", value("s"))],
        &[("big", 1), ("small", 1)],
    );
    let stored = put(
        saver,
        &cfg(&tid),
        cp,
        md(Loop, 0),
        versions(&[("big", 1), ("small", 1)]),
    )
    .await;
    put_writes(saver, &stored, vec![("big_write", big.clone())], "task", "").await;
    let t = get_some(saver, &stored).await;
    assert!(
        t.checkpoint.channel_values.get("big") == Some(&big),
        "the 10 MB value changed"
    );
    assert_eq!(t.checkpoint.channel_values.get("small"), Some(&value("s")));
    assert_eq!(t.pending_writes.len(), 1);
    assert!(t.pending_writes[0].value == big, "the 10 MB write changed");
    let listed = list(saver, &query(&tid)).await;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].checkpoint.channel_values.get("big") == Some(&big));
}

/// Unicode thread ids, namespaces, channel names, task ids and metadata keys and values
/// round-trip and can be looked up, filtered on, copied and deleted.
pub async fn unicode_names_roundtrip(saver: &dyn CheckpointSaver) {
    let tid = unique("スレッド-🧵-Ünïcødé");
    let ns = "子グラフ:ノード✓|深い:🌲";
    let channel = "メッセージ📨";
    let (key, val) = ("clé✓🔑", "värde 🌍 中文 ✓");
    let marker = unique("märker-🏷");
    let mut meta = md(Loop, 0)
        .with(key, val)
        .with("marker", marker.as_str())
        .with_run_id(unique("ラン"));
    meta.parents.insert("親:👪".into(), "id-✓".into());
    let cp = checkpoint(&[(channel, value("こんにちは 👋"))], &[(channel, 1)]);
    let stored = put(
        saver,
        &cfg_ns(&tid, ns),
        cp,
        meta.clone(),
        versions(&[(channel, 1)]),
    )
    .await;
    put_writes(
        saver,
        &stored,
        vec![(channel, value("ñ"))],
        "タスク-✓",
        "パス:🛤",
    )
    .await;

    let t = get_some(saver, &cfg_ns(&tid, ns)).await;
    assert_eq!(t.config, stored);
    assert_eq!(t.metadata, meta, "unicode metadata changed");
    assert_eq!(
        t.checkpoint.channel_values,
        values(&[(channel, value("こんにちは 👋"))])
    );
    assert_eq!(t.pending_writes.len(), 1);
    assert_eq!(t.pending_writes[0].task_id, "タスク-✓");
    assert_eq!(t.pending_writes[0].task_path, "パス:🛤");
    assert_eq!(t.pending_writes[0].channel, channel);

    let by_key = list(saver, &ListQuery::thread(&tid).filter(key, val)).await;
    assert_eq!(
        ids(&by_key),
        [id_of(&stored)],
        "filter on a unicode key and value"
    );
    let by_marker = list(saver, &ListQuery::all().filter("marker", marker.as_str())).await;
    assert_eq!(ids(&by_marker), [id_of(&stored)]);

    let copy = unique("コピー-📋");
    copy_thread(saver, &tid, &copy).await;
    let copied = get_some(saver, &cfg_ns(&copy, ns)).await;
    assert_eq!(copied.checkpoint, t.checkpoint);
    delete_thread(saver, &tid).await;
    assert!(get(saver, &cfg_ns(&tid, ns)).await.is_none());
    assert!(get(saver, &cfg_ns(&copy, ns)).await.is_some());
}

/// Channel versions come back with their type: an `Int` stays an `Int` (even past 2^53), a
/// `Str` stays a `Str` (even one that looks like a number), in `channel_versions`,
/// `versions_seen` and as the key values are stored under. The saver's own
/// `get_next_version` output round-trips too.
pub async fn versions_roundtrip_unchanged(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let own_first = saver.get_next_version(None);
    let own_second = saver.get_next_version(Some(&own_first));
    assert!(own_second > own_first, "get_next_version must increase");
    let vers: BTreeMap<String, ChannelVersion> = [
        ("int", ChannelVersion::Int(3)),
        ("big_int", ChannelVersion::Int(9_007_199_254_740_993)),
        (
            "padded",
            ChannelVersion::from("00000000000000000000000000000002.0.5"),
        ),
        ("numeric_str", ChannelVersion::from("7")),
        ("own", own_second.clone()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let mut cp = Checkpoint::new();
    for channel in vers.keys() {
        cp.channel_values
            .insert(channel.clone(), value(&format!("value of {channel}")));
    }
    cp.channel_versions = vers.clone();
    cp.versions_seen.insert("node".into(), vers.clone());
    cp.versions_seen.insert(
        "other".into(),
        [("int".to_owned(), ChannelVersion::from("3"))].into(),
    );
    let expected_seen = cp.versions_seen.clone();
    let stored = put(saver, &cfg(&tid), cp, md(Loop, 0), vers.clone()).await;
    let t = get_some(saver, &stored).await;
    assert_eq!(
        t.checkpoint.channel_versions, vers,
        "channel_versions changed type or value"
    );
    assert_eq!(
        t.checkpoint.versions_seen, expected_seen,
        "versions_seen changed type or value"
    );
    for channel in vers.keys() {
        assert_eq!(
            t.checkpoint.channel_values.get(channel),
            Some(&value(&format!("value of {channel}"))),
            "the value stored at version {:?} of {channel:?} is not found",
            vers[channel]
        );
    }
}

/// An unknown checkpoint id gives `None` whichever way it is unknown: a random id, a real id
/// in another namespace, a real id in another thread.
pub async fn get_tuple_unknown_checkpoint_id_returns_none(saver: &dyn CheckpointSaver) {
    let (tid, other) = (thread_id(), thread_id());
    let stored = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    put_empty(saver, &cfg(&other), md(Loop, 0)).await;
    put_empty(saver, &cfg_ns(&tid, "child:1"), md(Loop, 0)).await;
    let id = id_of(&stored);
    for (config, what) in [
        (
            cfg(&tid).with_checkpoint_id(uuid::Uuid::new_v4().to_string()),
            "a random id",
        ),
        (
            cfg(&tid).with_checkpoint_id(new_id_before(&id)),
            "an older unused id",
        ),
        (
            cfg_ns(&tid, "child:1").with_checkpoint_id(&id),
            "an id of another namespace",
        ),
        (
            cfg(&other).with_checkpoint_id(&id),
            "an id of another thread",
        ),
    ] {
        assert!(
            get(saver, &config).await.is_none(),
            "get_tuple of {what} must be None"
        );
    }
}

/// A well-formed checkpoint id sorting just before `id` (never stored by any case).
#[track_caller]
fn new_id_before(id: &str) -> String {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => uuid::Uuid::from_u128(u.as_u128().wrapping_sub(1))
            .hyphenated()
            .to_string(),
        Err(e) => panic!("put returned a checkpoint id that is not a UUID ({id:?}): {e}"),
    }
}

/// Paging through a long thread with `limit` and `before` yields every checkpoint exactly
/// once, newest first; with a filter, every matching checkpoint exactly once.
pub async fn list_paging_covers_every_checkpoint_once(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let n = 23;
    let chain = put_chain(saver, &tid, "", n, |i| {
        md(Loop, i as i64).with("odd", i % 2 == 1)
    })
    .await;
    let mut expected = config_ids(&chain);
    expected.reverse();
    for (filter, want) in [
        (None, expected.clone()),
        (
            Some(true),
            expected
                .iter()
                .enumerate()
                .filter(|(i, _)| (n - 1 - i) % 2 == 1)
                .map(|(_, id)| id.clone())
                .collect(),
        ),
    ] {
        let mut seen = Vec::new();
        let mut before: Option<String> = None;
        loop {
            let mut q = query(&tid).limit(4);
            if let Some(odd) = filter {
                q = q.filter("odd", odd);
            }
            if let Some(b) = &before {
                q = q.before(b);
            }
            let page = ids(&list(saver, &q).await);
            assert!(page.len() <= 4, "a page holds at most `limit` checkpoints");
            let Some(last) = page.last().cloned() else {
                break;
            };
            seen.extend(page);
            before = Some(last);
            assert!(seen.len() <= n, "paging does not end: {seen:?}");
        }
        assert_eq!(seen, want, "paging with filter {filter:?}");
    }
}

/// Listing every thread by a metadata marker finds exactly the marked checkpoints of several
/// threads and namespaces, newest first; `limit` applies across threads.
pub async fn list_all_threads_by_metadata(saver: &dyn CheckpointSaver) {
    let marker = unique("marker");
    let (t1, t2) = (thread_id(), thread_id());
    let mut marked = Vec::new();
    for (tid, ns) in [(&t1, ""), (&t2, ""), (&t1, "child:1"), (&t2, "")] {
        let meta = md(Loop, 0).with("marker", marker.as_str());
        marked.push(id_of(&put_empty(saver, &cfg_ns(tid, ns), meta).await));
        put_empty(saver, &cfg_ns(tid, ns), md(Loop, 0)).await;
    }
    marked.reverse();
    let everywhere = list(saver, &ListQuery::all().filter("marker", marker.as_str())).await;
    assert_eq!(
        ids(&everywhere),
        marked,
        "all marked checkpoints, newest first"
    );
    let limited = list(
        saver,
        &ListQuery::all().filter("marker", marker.as_str()).limit(3),
    )
    .await;
    assert_eq!(ids(&limited), marked[..3]);
    let root_only = list(
        saver,
        &ListQuery::all().ns("").filter("marker", marker.as_str()),
    )
    .await;
    assert_eq!(root_only.len(), 3, "namespace filter without a thread");
    assert!(root_only.iter().all(|t| t.config.checkpoint_ns.is_empty()));
}

/// A query without a namespace lists every namespace of the thread, newest first.
pub async fn list_without_namespace_covers_all_namespaces(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let mut put_ids = Vec::new();
    for ns in ["", "child:1", "", "child:2"] {
        put_ids.push(id_of(
            &put_empty(saver, &cfg_ns(&tid, ns), md(Loop, 0)).await,
        ));
    }
    put_ids.reverse();
    let listed = list(saver, &ListQuery::thread(&tid)).await;
    assert_eq!(ids(&listed), put_ids);
    let namespaces: Vec<&str> = listed
        .iter()
        .map(|t| t.config.checkpoint_ns.as_str())
        .collect();
    assert_eq!(namespaces, ["child:2", "", "child:1", ""]);
}

/// A query naming a checkpoint id lists only that checkpoint.
pub async fn list_by_checkpoint_id(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let chain = put_chain(saver, &tid, "", 3, |i| md(Loop, i as i64)).await;
    let listed = list(saver, &ListQuery::from_config(&chain[1])).await;
    assert_eq!(ids(&listed), [id_of(&chain[1])]);
    assert_eq!(listed[0].parent_config.as_ref(), Some(&chain[0]));
}

/// `limit: 0` lists nothing.
pub async fn list_limit_zero_returns_nothing(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    put_chain(saver, &tid, "", 2, |i| md(Loop, i as i64)).await;
    assert!(list(saver, &query(&tid).limit(0)).await.is_empty());
}

/// Regular writes are insert-if-absent per `(task, index)`; special-channel writes replace
/// the stored one. Mirrors LangGraph's behaviour for a task that writes twice.
pub async fn put_writes_regular_first_wins_special_last_wins(saver: &dyn CheckpointSaver) {
    let stored = put_empty(saver, &cfg(&thread_id()), md(Loop, 0)).await;
    let first = vec![
        ("x", value(&1)),
        (ERROR, value("e")),
        ("y", value(&2)),
        (INTERRUPT, value("i1")),
    ];
    put_writes(saver, &stored, first, "task", "").await;
    let second = vec![
        ("x", value(&10)),
        (ERROR, value("e2")),
        (INTERRUPT, value("i2")),
        ("z", value(&3)),
    ];
    put_writes(saver, &stored, second, "task", "").await;
    let t = get_some(saver, &stored).await;
    let w = |c: &str, v: serde_json::Value| ("task".to_owned(), c.to_owned(), v);
    assert_eq!(
        writes_json(&t.pending_writes),
        [
            w(INTERRUPT, json!("i2")),
            w(ERROR, json!("e2")),
            w("x", json!(1)),
            w("y", json!(2)),
            w("z", json!(3)),
        ],
        "x keeps its first value, specials their last, z lands at index 3"
    );
}

/// Pending writes are ordered by task path, then task id, then index (special channels first).
pub async fn pending_writes_ordered_by_path_task_index(saver: &dyn CheckpointSaver) {
    let stored = put_empty(saver, &cfg(&thread_id()), md(Loop, 0)).await;
    put_writes(saver, &stored, vec![("x", value("a"))], "task0", "~a").await;
    put_writes(saver, &stored, vec![("q", value("b"))], "task9", "").await;
    let task1 = vec![
        ("x", value("c")),
        (ERROR, value("d")),
        ("y", value("e")),
        (INTERRUPT, value("f")),
        ("z", value("g")),
    ];
    put_writes(saver, &stored, task1, "task1", "").await;
    let t = get_some(saver, &stored).await;
    let order: Vec<(String, String)> = t
        .pending_writes
        .iter()
        .map(|w| (w.task_id.clone(), w.channel.clone()))
        .collect();
    let expected: Vec<(String, String)> = [
        ("task1", INTERRUPT),
        ("task1", ERROR),
        ("task1", "x"),
        ("task1", "y"),
        ("task1", "z"),
        ("task9", "q"),
        ("task0", "x"),
    ]
    .iter()
    .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
    .collect();
    assert_eq!(order, expected);
    let listed = list(saver, &ListQuery::from_config(&stored)).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(
        listed[0].pending_writes, t.pending_writes,
        "list orders writes the same way"
    );
}

/// Writes must name their checkpoint: a config without `checkpoint_id` is an error
/// (`InvalidArgument`), even for no writes at all (as LangGraph's savers fail on the missing
/// id before looking at the writes).
pub async fn put_writes_without_checkpoint_id_is_an_error(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    let result = saver
        .put_writes(&cfg(&tid), vec![("ch".to_owned(), value("v"))], "task", "")
        .await;
    assert!(
        matches!(result, Err(Error::InvalidArgument(_))),
        "put_writes without a checkpoint_id must fail with InvalidArgument: {result:?}"
    );
    let result = saver.put_writes(&cfg(&tid), Vec::new(), "task", "").await;
    assert!(
        matches!(result, Err(Error::InvalidArgument(_))),
        "put_writes of no writes without a checkpoint_id must fail with InvalidArgument: \
         {result:?}"
    );
    assert!(get_some(saver, &cfg(&tid)).await.pending_writes.is_empty());
}

/// Every field of a checkpoint comes back exactly as put: `v`, `ts`, values, versions,
/// `versions_seen`, `updated_channels` (set and unset).
pub async fn checkpoint_roundtrips_exactly(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let mut cp = checkpoint(
        &[("a", value("x")), ("b", value(&[1, 2]))],
        &[("a", 1), ("b", 2)],
    );
    cp.versions_seen.insert("n1".into(), versions(&[("a", 1)]));
    cp.versions_seen.insert("__input__".into(), BTreeMap::new());
    cp.updated_channels = Some(vec!["a".into(), "b".into()]);
    let stored = put(
        saver,
        &cfg(&tid),
        cp.clone(),
        md(Loop, 0),
        versions(&[("a", 1), ("b", 2)]),
    )
    .await;
    assert_eq!(get_some(saver, &stored).await.checkpoint, cp);
    let mut next = cp.successor();
    next.updated_channels = None;
    next.v = 2;
    let stored = put(saver, &stored, next.clone(), md(Loop, 1), versions(&[])).await;
    assert_eq!(get_some(saver, &stored).await.checkpoint, next);
}

/// Metadata comes back exactly: source, step, parents, run id and nested caller values,
/// floats bit for bit.
pub async fn metadata_roundtrips_exactly(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let mut meta = CheckpointMetadata::new(CheckpointSource::Update, 7)
        .with_run_id(unique("run"))
        .with("nested", json!({"a": [1, 2, {"b": null}], "c": "d"}))
        .with("flag", true)
        .with("ratio", 0.5)
        // Floats a shortest-digits parser needs to read back bit for bit.
        .with(
            "floats",
            json!([
                1.577_777_777_777_000_1,
                0.1 + 0.2,
                2.225_073_858_507_201e-308
            ]),
        )
        .with("nothing", json!(null))
        .with("big", 9_007_199_254_740_993_i64)
        .with("negative", -3);
    meta.parents
        .insert(String::new(), crate::new_checkpoint_id());
    meta.parents
        .insert("child:1".into(), crate::new_checkpoint_id());
    let stored = put_empty(saver, &cfg(&tid), meta.clone()).await;
    assert_eq!(get_some(saver, &stored).await.metadata, meta);
    let fork = put_empty(
        saver,
        &stored,
        CheckpointMetadata::new(CheckpointSource::Fork, 8),
    )
    .await;
    let t = get_some(saver, &fork).await;
    assert_eq!(t.metadata.source, Some(CheckpointSource::Fork));
    assert_eq!(
        list(saver, &query(&tid).filter("flag", true)).await.len(),
        1
    );
}

/// Metadata nested deeper than JSON parsers read back (130 levels) is either refused by its
/// `put` or read back whole: never stored so that its checkpoint cannot be read.
pub async fn deeply_nested_metadata_is_refused_or_read_back(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let mut deep = json!("bottom");
    for _ in 0..130 {
        deep = json!([deep]);
    }
    let meta = CheckpointMetadata::new(CheckpointSource::Loop, 1).with("deep", deep);
    let stored = saver
        .put(
            &cfg(&tid),
            checkpoint(&[], &[]),
            meta.clone(),
            versions(&[]),
        )
        .await;
    match stored {
        Err(crate::Error::Encode { message, .. }) => {
            assert!(
                message.contains("\"deep\""),
                "the error names the key: {message}"
            );
            assert!(
                get(saver, &cfg(&tid)).await.is_none(),
                "a refused put stores nothing"
            );
        }
        Err(e) => panic!("refused with an unexpected error: {e}"),
        Ok(stored) => {
            assert_eq!(get_some(saver, &stored).await.metadata, meta);
            assert_eq!(list(saver, &query(&tid)).await.len(), 1);
        }
    }
}

/// A caller key named like a metadata field (`source`, `step`, `parents`, or a `run_id` other
/// than the run id) is refused by `put` and `put_batch` with `InvalidArgument`, storing
/// nothing: stored as one JSON object it would collide with the field and make the checkpoint
/// unreadable or misfiled. A caller key `run_id` holding the run id (LangGraph's form) reads
/// back as the run id, and `delete_for_runs` and the `run_id` filter find it.
pub async fn metadata_keys_named_like_fields_are_refused(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let base = md(Loop, 1);
    let refused = [
        base.clone().with("source", "slack"),
        base.clone().with("step", 7),
        base.clone().with("parents", json!({"": "x"})),
        base.clone()
            .with_run_id(unique("run"))
            .with("run_id", "other"),
        base.clone().with("run_id", 7),
    ];
    for meta in refused {
        let result = saver
            .put(
                &cfg(&tid),
                checkpoint(&[], &[]),
                meta.clone(),
                versions(&[]),
            )
            .await;
        assert!(
            matches!(result, Err(Error::InvalidArgument(_))),
            "{meta:?}: expected InvalidArgument, got {result:?}"
        );
        let result = saver
            .put_batch(vec![crate::PutRequest {
                config: cfg(&tid),
                writes: Vec::new(),
                checkpoint: checkpoint(&[], &[]),
                metadata: meta.clone(),
                new_versions: versions(&[]),
            }])
            .await;
        assert!(
            matches!(result, Err(Error::InvalidArgument(_))),
            "put_batch of {meta:?}: expected InvalidArgument, got {result:?}"
        );
    }
    assert!(get(saver, &cfg(&tid)).await.is_none(), "nothing stored");

    let run = unique("run");
    let stored = saver
        .put(
            &cfg(&tid),
            checkpoint(&[], &[]),
            base.clone().with("run_id", run.as_str()),
            versions(&[]),
        )
        .await
        .expect("a run_id key holding a string is LangGraph's form of the run id");
    let read = get_some(saver, &stored).await.metadata;
    assert_eq!(
        read,
        base.clone().with_run_id(run.as_str()),
        "read back as the run id"
    );
    assert_eq!(
        list(saver, &query(&tid).filter("run_id", run.as_str()))
            .await
            .len(),
        1
    );
    saver
        .delete_for_runs(&[run])
        .await
        .expect("delete_for_runs");
    assert!(
        get(saver, &cfg(&tid)).await.is_none(),
        "deleted with its run"
    );
}

/// The namespaces of one thread keep their own values: the same channel at the same version
/// in two namespaces holds each its own value, and a checkpoint naming a version its own
/// namespace never stored reads no value for it (the other namespace's is not taken).
pub async fn namespaces_keep_their_own_values(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let root = cfg(&tid);
    let child = cfg(&tid).with_ns("child:1");
    let other = cfg(&tid).with_ns("other:2");
    let in_root = put(
        saver,
        &root,
        checkpoint(&[("x", value("root"))], &[("x", 1)]),
        md(Loop, 0),
        versions(&[("x", 1)]),
    )
    .await;
    let in_child = put(
        saver,
        &child,
        checkpoint(&[("x", value("child"))], &[("x", 1)]),
        md(Loop, 0),
        versions(&[("x", 1)]),
    )
    .await;
    let named_only = put(
        saver,
        &other,
        checkpoint(&[], &[("x", 1)]),
        md(Loop, 0),
        versions(&[]),
    )
    .await;
    for (config, want) in [(&in_root, "root"), (&in_child, "child")] {
        let t = get_some(saver, config).await;
        assert_eq!(
            t.checkpoint.channel_values.get("x"),
            Some(&value(want)),
            "namespace {:?} reads its own value",
            config.checkpoint_ns
        );
    }
    let t = get_some(saver, &named_only).await;
    assert!(
        !t.checkpoint.channel_values.contains_key("x"),
        "no value stored in this namespace: {:?}",
        t.checkpoint.channel_values
    );
}

/// `get_next_version_in_run` (what the runtime asks for each new version) gives a version
/// above the current one, and two runs (two suffixes) going on from the same version get
/// different versions, so two branches of a thread never store values under one key.
pub async fn next_versions_in_a_run_move_forward(saver: &dyn CheckpointSaver) {
    let (run_a, run_b) = (
        ChannelVersion::new_run_suffix(),
        ChannelVersion::new_run_suffix(),
    );
    assert_ne!(run_a, run_b);
    let first = saver.get_next_version_in_run(None, run_a);
    let mut current = first.clone();
    for _ in 0..3 {
        let next = saver.get_next_version_in_run(Some(&current), run_a);
        assert!(next > current, "{next:?} after {current:?}");
        current = next;
    }
    let a = saver.get_next_version_in_run(Some(&first), run_a);
    let b = saver.get_next_version_in_run(Some(&first), run_b);
    assert!(a > first && b > first, "{a:?} {b:?} after {first:?}");
    assert_ne!(a, b, "two runs from one version get different versions");
    let int = saver.get_next_version_in_run(Some(&ChannelVersion::Int(7)), run_a);
    assert!(int > ChannelVersion::Int(7), "{int:?} after Int(7)");
}

/// Values the codec did not make (raw bytes, a caller's own tag, zero-length data) are stored
/// as given, in channels and in writes.
pub async fn raw_values_roundtrip(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let raw = TypedValue::new(TAG_BYTES, vec![0u8, 159, 146, 150, 255, 0]);
    let custom = TypedValue::new("x-cairn-custom", b"\x00custom\xff".to_vec());
    let empty_bytes = TypedValue::new(TAG_BYTES, Vec::new());
    let json_text = TypedValue::new(TAG_JSON, br#"{"a":1}"#.to_vec());
    let vals = [
        ("raw", raw.clone()),
        ("custom", custom.clone()),
        ("empty_bytes", empty_bytes.clone()),
        ("json", json_text),
    ];
    let vers = [("raw", 1), ("custom", 1), ("empty_bytes", 1), ("json", 1)];
    let stored = put(
        saver,
        &cfg(&tid),
        checkpoint(&vals, &vers),
        md(Loop, 0),
        versions(&vers),
    )
    .await;
    let writes = vec![
        ("raw", raw),
        ("custom", custom),
        ("empty_bytes", empty_bytes),
    ];
    let expected_writes: Vec<TypedValue> = writes.iter().map(|(_, v)| v.clone()).collect();
    put_writes(saver, &stored, writes, "task", "").await;
    let t = get_some(saver, &stored).await;
    assert_eq!(t.checkpoint.channel_values, values(&vals));
    let got: Vec<TypedValue> = t.pending_writes.iter().map(|w| w.value.clone()).collect();
    assert_eq!(got, expected_writes);
}

/// A channel named in `new_versions` without a value is stored empty and read back absent;
/// a later version of it is found.
pub async fn put_channel_without_value_is_absent(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let cp1 = checkpoint(&[("a", value("x"))], &[("a", 1), ("b", 1)]);
    let s1 = put(
        saver,
        &cfg(&tid),
        cp1,
        md(Loop, 0),
        versions(&[("a", 1), ("b", 1)]),
    )
    .await;
    let t1 = get_some(saver, &s1).await;
    assert_eq!(t1.checkpoint.channel_values, values(&[("a", value("x"))]));
    assert_eq!(
        t1.checkpoint.channel_versions,
        versions(&[("a", 1), ("b", 1)])
    );
    let cp2 = checkpoint(&[("b", value("y"))], &[("a", 1), ("b", 2)]);
    let s2 = put(saver, &s1, cp2, md(Loop, 1), versions(&[("b", 2)])).await;
    let t2 = get_some(saver, &s2).await;
    assert_eq!(
        t2.checkpoint.channel_values,
        values(&[("a", value("x")), ("b", value("y"))])
    );
}

/// After `delete_thread`, no value of the thread can be read back, even by a new checkpoint
/// pointing at the old versions.
pub async fn delete_thread_removes_values(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let cp = checkpoint(&[("a", value("secret"))], &[("a", 1)]);
    put(saver, &cfg(&tid), cp, md(Loop, 0), versions(&[("a", 1)])).await;
    delete_thread(saver, &tid).await;
    let pointer = checkpoint(&[], &[("a", 1)]);
    let stored = put(saver, &cfg(&tid), pointer, md(Loop, 0), versions(&[])).await;
    let t = get_some(saver, &stored).await;
    assert!(
        t.checkpoint.channel_values.is_empty(),
        "a value of the deleted thread is still readable: {:?}",
        t.checkpoint.channel_values.keys()
    );
}

/// Deleting a run keeps the values surviving checkpoints still refer to.
pub async fn delete_for_runs_keeps_values_of_survivors(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let (run1, run2) = (unique("run"), unique("run"));
    let cp1 = checkpoint(&[("a", value("v1"))], &[("a", 1)]);
    let s1 = put(
        saver,
        &cfg(&tid),
        cp1,
        md(Loop, 0).with_run_id(&run1),
        versions(&[("a", 1)]),
    )
    .await;
    let cp2 = checkpoint(&[("b", value("v2"))], &[("a", 1), ("b", 1)]);
    let s2 = put(
        saver,
        &s1,
        cp2,
        md(Loop, 1).with_run_id(&run2),
        versions(&[("b", 1)]),
    )
    .await;
    delete_for_runs(saver, std::slice::from_ref(&run1)).await;
    assert!(get(saver, &s1).await.is_none());
    let t = get_some(saver, &s2).await;
    assert_eq!(
        t.checkpoint.channel_values,
        values(&[("a", value("v1")), ("b", value("v2"))]),
        "a value written by the deleted run is still referenced by the survivor"
    );
}

/// Pruning keeps the values the kept checkpoint refers to, even ones older checkpoints wrote.
pub async fn prune_keep_latest_keeps_values(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let cp0 = checkpoint(
        &[("a", value("old")), ("b", value("kept"))],
        &[("a", 1), ("b", 1)],
    );
    let s0 = put(
        saver,
        &cfg(&tid),
        cp0,
        md(Loop, 0),
        versions(&[("a", 1), ("b", 1)]),
    )
    .await;
    let cp1 = checkpoint(&[("a", value("new"))], &[("a", 2), ("b", 1)]);
    let s1 = put(saver, &s0, cp1, md(Loop, 1), versions(&[("a", 2)])).await;
    let cp2 = checkpoint(&[], &[("a", 2), ("b", 1)]);
    let s2 = put(saver, &s1, cp2, md(Loop, 2), versions(&[])).await;
    prune(saver, std::slice::from_ref(&tid), PruneStrategy::KeepLatest).await;
    assert_eq!(ids(&list(saver, &query(&tid)).await), [id_of(&s2)]);
    let t = get_some(saver, &cfg(&tid)).await;
    assert_eq!(
        t.checkpoint.channel_values,
        values(&[("a", value("new")), ("b", value("kept"))])
    );
}

/// Once every checkpoint of a namespace is gone (its runs deleted), pruning the thread
/// leaves none of its values: a checkpoint stored later that names one reads no value.
pub async fn prune_after_every_run_is_deleted_keeps_no_values(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let run = unique("run");
    for ns in ["", "sub"] {
        let cp = checkpoint(&[("a", value("secret"))], &[("a", 1)]);
        let md = md(Loop, 0).with_run_id(&run);
        put(saver, &cfg_ns(&tid, ns), cp, md, versions(&[("a", 1)])).await;
    }
    delete_for_runs(saver, std::slice::from_ref(&run)).await;
    prune(saver, std::slice::from_ref(&tid), PruneStrategy::KeepLatest).await;
    for ns in ["", "sub"] {
        let pointer = checkpoint(&[], &[("a", 1)]);
        let stored = put(
            saver,
            &cfg_ns(&tid, ns),
            pointer,
            md(Loop, 1),
            versions(&[]),
        )
        .await;
        let t = get_some(saver, &stored).await;
        assert!(
            t.checkpoint.channel_values.is_empty(),
            "namespace {ns:?}: a value of the deleted runs is still readable after pruning"
        );
    }
}

/// A copy is independent: deleting the source leaves the copy whole (values and writes).
pub async fn copy_thread_is_independent_of_source(saver: &dyn CheckpointSaver) {
    let (src, dst) = (thread_id(), thread_id());
    let cp = checkpoint(&[("a", value("v"))], &[("a", 1)]);
    let stored = put(saver, &cfg(&src), cp, md(Loop, 0), versions(&[("a", 1)])).await;
    put_writes(saver, &stored, vec![("w", value("x"))], "task", "").await;
    copy_thread(saver, &src, &dst).await;
    let before = get_some(saver, &cfg(&dst)).await;
    delete_thread(saver, &src).await;
    let after = get_some(saver, &cfg(&dst)).await;
    assert_eq!(after, before);
    assert_eq!(
        after.checkpoint.channel_values,
        values(&[("a", value("v"))])
    );
    assert_eq!(after.pending_writes.len(), 1);
}

/// `put_writes_and_put` stores the task's writes on `config`'s checkpoint (with the index
/// rules of `put_writes`: regular first wins, special last wins, positions as indexes) and the
/// checkpoint as its child; calling it again changes nothing.
pub async fn put_writes_and_put_saves_both(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let parent = put_empty(saver, &cfg(&tid), md(Loop, 0)).await;
    put_writes(
        saver,
        &parent,
        vec![("x", value(&1)), (ERROR, value("e1"))],
        "task",
        "",
    )
    .await;
    let child = checkpoint(&[("a", value("va"))], &[("a", 2)]);
    let child_id = child.id.clone();
    let writes: Vec<(String, TypedValue)> = vec![
        ("x".to_owned(), value(&10)),
        (ERROR.to_owned(), value("e2")),
        ("y".to_owned(), value(&2)),
    ];
    for attempt in 0..2 {
        let result = saver
            .put_writes_and_put(
                &parent,
                writes.clone(),
                "task",
                "",
                child.clone(),
                md(Loop, 1),
                versions(&[("a", 2)]),
            )
            .await;
        let stored = ok(result, &format!("put_writes_and_put (call {attempt})"));
        assert_eq!(stored.thread_id, tid);
        assert_eq!(stored.checkpoint_ns, "");
        assert_eq!(stored.checkpoint_id.as_deref(), Some(child_id.as_str()));

        let p = get_some(saver, &parent).await;
        let w = |c: &str, v: serde_json::Value| ("task".to_owned(), c.to_owned(), v);
        assert_eq!(
            writes_json(&p.pending_writes),
            [w(ERROR, json!("e2")), w("x", json!(1)), w("y", json!(2))],
            "call {attempt}: x keeps its first value, the error its last, y lands at index 2"
        );

        let c = get_some(saver, &stored).await;
        assert_eq!(c.checkpoint.id, child_id);
        let parent_config = c
            .parent_config
            .expect("the child checkpoint must have a parent_config");
        assert_eq!(parent_config.checkpoint_id, parent.checkpoint_id);
        assert_eq!(c.metadata.step, Some(1));
        assert_eq!(c.checkpoint.channel_values.len(), 1);
        assert_eq!(json(&c.checkpoint.channel_values["a"]), json!("va"));
        assert!(
            c.pending_writes.is_empty(),
            "the writes belong to the parent, not the child"
        );
        let latest = get_some(saver, &cfg(&tid)).await;
        assert_eq!(latest.checkpoint.id, child_id, "the child is the latest");
    }
    assert_eq!(list(saver, &query(&tid)).await.len(), 2);

    // No writes: only the checkpoint is stored.
    let grandchild = checkpoint(&[], &[("a", 2)]);
    let result = saver
        .put_writes_and_put(
            &cfg(&tid).with_checkpoint_id(&child_id),
            Vec::new(),
            "task2",
            "",
            grandchild.clone(),
            md(Loop, 2),
            versions(&[]),
        )
        .await;
    let stored = ok(result, "put_writes_and_put without writes");
    let g = get_some(saver, &stored).await;
    assert_eq!(g.checkpoint.id, grandchild.id);
    assert_eq!(json(&g.checkpoint.channel_values["a"]), json!("va"));
    let c = get_some(saver, &cfg(&tid).with_checkpoint_id(&child_id)).await;
    assert!(c.pending_writes.is_empty());
}

/// `get_tuple_known` returns what `get_tuple` returns, except that it may leave out the
/// values of the known channels when the checkpoint found is the known one.
pub async fn get_tuple_known_leaves_out_only_known_values(saver: &dyn CheckpointSaver) {
    let tid = thread_id();
    let first = put(
        saver,
        &cfg(&tid),
        checkpoint(
            &[("a", value(&1)), ("b", value(&"x"))],
            &[("a", 1), ("b", 1)],
        ),
        md(Input, -1),
        versions(&[("a", 1), ("b", 1)]),
    )
    .await;
    let second = put(
        saver,
        &first,
        checkpoint(&[("a", value(&2))], &[("a", 2), ("b", 1)]),
        md(Loop, 0),
        versions(&[("a", 2)]),
    )
    .await;
    put_writes(saver, &second, vec![("a", value(&3))], "task-1", "").await;
    let full = get_some(saver, &cfg(&tid)).await;
    let known_id = id_of(&second);
    for (known_checkpoint, expect_skip) in [(known_id.as_str(), true), ("other", false)] {
        let known = crate::KnownValues {
            checkpoint_id: known_checkpoint,
            channels: &["a"],
        };
        let result = saver.get_tuple_known(&cfg(&tid), known).await;
        let Some(t) = ok(result, "get_tuple_known") else {
            panic!("get_tuple_known found nothing where get_tuple found {known_id}");
        };
        assert_eq!(t.config, full.config);
        assert_eq!(t.parent_config, full.parent_config);
        assert_eq!(t.metadata, full.metadata);
        assert_eq!(
            t.checkpoint.channel_versions,
            full.checkpoint.channel_versions
        );
        assert_eq!(t.checkpoint.versions_seen, full.checkpoint.versions_seen);
        assert_eq!(
            writes_json(&t.pending_writes),
            writes_json(&full.pending_writes)
        );
        assert_eq!(
            t.checkpoint.channel_values.get("b"),
            full.checkpoint.channel_values.get("b"),
            "values of channels the caller does not hold are read"
        );
        if !expect_skip {
            assert_eq!(
                t.checkpoint.channel_values, full.checkpoint.channel_values,
                "another checkpoint than the known one is read whole"
            );
        } else if let Some(a) = t.checkpoint.channel_values.get("a") {
            assert_eq!(
                json(a),
                serde_json::json!(2),
                "a known value, if read, is right"
            );
        }
    }
    // By id, an older checkpoint is read whole.
    let older = saver
        .get_tuple_known(
            &first,
            crate::KnownValues {
                checkpoint_id: &known_id,
                channels: &["a"],
            },
        )
        .await;
    let older = ok(older, "get_tuple_known by id").expect("stored");
    assert_eq!(
        json(&older.checkpoint.channel_values["a"]),
        serde_json::json!(1)
    );
}

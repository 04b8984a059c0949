//! Behaviour of the graph runtime: validation, reducers, errors and recovery, thread
//! exclusivity, streaming, history paging and storage economy.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use cairn_checkpoint::{
    Checkpoint, CheckpointConfig, CheckpointSaver, CheckpointSource, CheckpointTuple,
    InMemorySaver, KnownValues,
};
use cairn_graph::{
    current_task, Durability, GraphError, HistoryQuery, NodeError, RunConfig, State, StateGraph,
    StreamEvent, StreamMode, END, START,
};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use support::{Observed, Observer};

mod support;

fn max_reducer(current: &mut i64, new: i64) {
    *current = (*current).max(new);
}

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Doc {
    #[reducer(append)]
    items: Vec<String>,
    #[reducer(merge)]
    tags: BTreeMap<String, i64>,
    #[reducer(add)]
    total: i64,
    #[reducer(with = max_reducer)]
    high: i64,
    title: String,
}

fn memory() -> Arc<dyn CheckpointSaver> {
    Arc::new(InMemorySaver::new())
}

#[tokio::test]
async fn reducers_combine_parallel_writes_in_task_path_order() {
    let mut g = StateGraph::<Doc>::new();
    for (name, n) in [("b", 2i64), ("a", 1), ("c", 3)] {
        g.add_sync_node(name, move |_| {
            Ok(DocUpdate::default()
                .items(vec![name.to_string()])
                .tags(BTreeMap::from([
                    (name.to_string(), n),
                    ("shared".to_string(), n),
                ]))
                .total(n)
                .high(10 * n))
        });
        g.add_edge(START, name).add_edge(name, END);
    }
    let app = g.compile(memory()).expect("compile");
    let input = DocUpdate::default().title("t").total(100).high(5);
    let out = app
        .invoke(Some(input), RunConfig::thread("r"))
        .await
        .expect("run");
    assert_eq!(
        out.items,
        ["a", "b", "c"],
        "sorted by task path, not by node order"
    );
    assert_eq!(out.tags["shared"], 3, "merge: the last task by path wins");
    assert_eq!(out.tags.len(), 4);
    assert_eq!(out.total, 106);
    assert_eq!(out.high, 30);
    assert_eq!(out.title, "t");
}

#[tokio::test]
async fn two_writes_to_a_replace_field_in_one_step_is_an_error() {
    let mut g = StateGraph::<Doc>::new();
    for name in ["a", "b"] {
        g.add_sync_node(name, move |_| Ok(DocUpdate::default().title(name)));
        g.add_edge(START, name).add_edge(name, END);
    }
    let app = g.compile_without_saver().expect("compile");
    let err = app
        .invoke(Some(DocUpdate::default()), RunConfig::default())
        .await
        .expect_err("conflict");
    match err {
        GraphError::ConflictingWrites {
            field,
            count,
            nodes,
        } => {
            assert_eq!(field, "title");
            assert_eq!(count, 2);
            assert_eq!(nodes, "a, b");
        }
        other => panic!("unexpected {other}"),
    }
}

#[test]
fn compile_reports_unknown_nodes_missing_entry_and_dead_ends() {
    let ok = |_: &Doc| Ok(DocUpdate::default());
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", ok)
        .add_edge(START, "a")
        .add_edge("a", "nope");
    let err = g.compile_without_saver().err().expect("unknown");
    assert!(
        matches!(&err, GraphError::UnknownNode { node, .. } if node == "nope"),
        "{err}"
    );
    assert!(err.to_string().contains("known nodes: a"), "{err}");

    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", ok).add_edge("a", END);
    assert!(matches!(
        g.compile_without_saver(),
        Err(GraphError::NoEntryPoint)
    ));

    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", ok)
        .add_sync_node("b", ok)
        .add_edge(START, "a")
        .add_edge("a", "b")
        .add_edge("a", END);
    let err = g.compile_without_saver().err().expect("dead end");
    assert!(
        matches!(&err, GraphError::CannotReachEnd { node } if node == "b"),
        "{err}"
    );

    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", ok).add_sync_node("a", ok);
    assert!(
        matches!(g.compile_without_saver(), Err(GraphError::InvalidGraph(m)) if m.contains("twice"))
    );

    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("title", ok);
    assert!(
        matches!(g.compile_without_saver(), Err(GraphError::InvalidGraph(m)) if m.contains("state field"))
    );

    // A waiting edge listing a source twice would never fire.
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", ok)
        .add_sync_node("b", ok)
        .add_edge(START, "a")
        .add_edge(["a", "a"], "b")
        .add_edge("b", END);
    assert!(
        matches!(g.compile_without_saver(), Err(GraphError::InvalidGraph(m)) if m.contains("\"a\" twice"))
    );

    // A field named like the runtime's own channels.
    #[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
    #[allow(non_snake_case)]
    struct Clash {
        __start__: u32,
    }
    #[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
    struct Tasks {
        __pregel_tasks: u32,
    }
    let mut g = StateGraph::<Tasks>::new();
    g.add_sync_node("a", |_: &Tasks| Ok(TasksUpdate::default()))
        .add_edge(START, "a")
        .add_edge("a", END);
    assert!(
        matches!(g.compile_without_saver(), Err(GraphError::InvalidGraph(m)) if m.contains("__pregel_tasks"))
    );
    let mut g = StateGraph::<Clash>::new();
    g.add_sync_node("a", |_: &Clash| Ok(ClashUpdate::default()))
        .add_edge(START, "a")
        .add_edge("a", END);
    assert!(
        matches!(g.compile_without_saver(), Err(GraphError::InvalidGraph(m)) if m.contains("__start__"))
    );

    // A path map that names an unknown node is caught at compile time.
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", ok)
        .add_edge(START, "a")
        .add_conditional_edges_with_map("a", |_: &Doc| "x", [("x", "ghost")]);
    assert!(
        matches!(g.compile_without_saver(), Err(GraphError::UnknownNode { node, .. }) if node == "ghost")
    );
}

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Counter {
    n: i64,
}

#[tokio::test]
async fn recursion_limit_stops_an_endless_loop() {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |_: &Counter| "inc");
    let app = g.compile_without_saver().expect("compile");
    let err = app
        .invoke(
            Some(CounterUpdate::default()),
            RunConfig::default().with_recursion_limit(10),
        )
        .await
        .expect_err("limit");
    assert!(
        matches!(err, GraphError::RecursionLimit { limit: 10 }),
        "{err}"
    );
}

#[tokio::test]
async fn loop_without_saver_runs_many_steps() {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |s: &Counter| if s.n < 10_000 { "inc" } else { END });
    let app = g.compile_without_saver().expect("compile");
    let out = app
        .invoke(
            Some(CounterUpdate::default()),
            RunConfig::default().with_recursion_limit(20_000),
        )
        .await
        .expect("run");
    assert_eq!(out.n, 10_000);
    assert!(matches!(
        app.get_state(RunConfig::thread("x")).await,
        Err(GraphError::NoCheckpointer { .. })
    ));
}

#[derive(Debug)]
struct Flaky;
impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("flaky failure")
    }
}
impl std::error::Error for Flaky {}

#[tokio::test]
async fn resume_skips_tasks_that_already_wrote() {
    let a_runs = Arc::new(AtomicUsize::new(0));
    let b_runs = Arc::new(AtomicUsize::new(0));
    let fail_b = Arc::new(AtomicBool::new(true));
    let mut g = StateGraph::<Doc>::new();
    let ar = Arc::clone(&a_runs);
    g.add_sync_node("a", move |_| {
        ar.fetch_add(1, Ordering::SeqCst);
        Ok(DocUpdate::default().items(vec!["a".to_string()]))
    });
    let (br, fb) = (Arc::clone(&b_runs), Arc::clone(&fail_b));
    g.add_sync_node("b", move |_| {
        br.fetch_add(1, Ordering::SeqCst);
        if fb.load(Ordering::SeqCst) {
            return Err(NodeError::from(Box::new(Flaky)));
        }
        Ok(DocUpdate::default().items(vec!["b".to_string()]))
    });
    g.add_edge(START, "a")
        .add_edge(START, "b")
        .add_edge("a", END)
        .add_edge("b", END);
    let app = g.compile(memory()).expect("compile");
    let config = RunConfig::thread("flaky");

    let err = app
        .invoke(Some(DocUpdate::default()), config.clone())
        .await
        .expect_err("b fails");
    assert!(
        matches!(&err, GraphError::Node { node, step: 1, .. } if node == "b"),
        "{err}"
    );
    let snap = app
        .get_state(config.clone())
        .await
        .expect("state")
        .expect("saved");
    assert_eq!(
        snap.metadata.step,
        Some(0),
        "no checkpoint for the failed step"
    );
    assert_eq!(snap.next, ["b"], "a finished: only b is left");
    let b_task = snap.tasks.iter().find(|t| t.name == "b").expect("b task");
    assert_eq!(b_task.error.as_deref(), Some("flaky failure"));
    assert!(snap.tasks.iter().any(|t| t.name == "a" && t.completed));

    fail_b.store(false, Ordering::SeqCst);
    let out = app.invoke(None, config.clone()).await.expect("resume");
    assert_eq!(out.items, ["a", "b"]);
    assert_eq!(
        a_runs.load(Ordering::SeqCst),
        1,
        "a's saved writes were reused"
    );
    assert_eq!(b_runs.load(Ordering::SeqCst), 2);
    let snap = app.get_state(config).await.expect("state").expect("saved");
    assert_eq!(snap.metadata.step, Some(1));
    assert!(snap.next.is_empty());
}

#[tokio::test]
async fn a_second_run_on_a_busy_thread_is_refused() {
    let started = Arc::new(tokio::sync::Notify::new());
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let mut g = StateGraph::<Counter>::new();
    let (s, r) = (Arc::clone(&started), Arc::clone(&release));
    g.add_node("wait", move |_| {
        let (s, r) = (Arc::clone(&s), Arc::clone(&r));
        async move {
            s.notify_one();
            let _permit = r.acquire().await.map_err(NodeError::from)?;
            Ok(CounterUpdate::default().n(1))
        }
    })
    .add_edge(START, "wait")
    .add_edge("wait", END);
    let app = g.compile(memory()).expect("compile");
    let first = {
        let app = app.clone();
        tokio::spawn(async move {
            app.invoke(Some(CounterUpdate::default()), RunConfig::thread("busy"))
                .await
        })
    };
    started.notified().await;
    let err = app
        .invoke(Some(CounterUpdate::default()), RunConfig::thread("busy"))
        .await
        .expect_err("busy");
    assert!(
        matches!(&err, GraphError::ThreadBusy { thread_id } if thread_id == "busy"),
        "{err}"
    );
    // update_state too: it would build on a head the run is about to supersede.
    let err = app
        .update_state(
            RunConfig::thread("busy"),
            CounterUpdate::default().n(9),
            None,
        )
        .await
        .expect_err("busy");
    assert!(matches!(&err, GraphError::ThreadBusy { .. }), "{err}");
    // Another thread is not affected.
    release.add_permits(1);
    let other = app
        .invoke(Some(CounterUpdate::default()), RunConfig::thread("other"))
        .await;
    assert_eq!(other.expect("other thread").n, 1);
    assert_eq!(first.await.expect("join").expect("first run").n, 1);
    // The thread is free again once the run ended.
    release.add_permits(1);
    app.invoke(Some(CounterUpdate::default()), RunConfig::thread("busy"))
        .await
        .expect("free again");
}

#[tokio::test]
async fn stream_emits_updates_and_values_per_step() {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |s: &Counter| if s.n < 3 { "inc" } else { END });
    let app = g.compile(memory()).expect("compile");
    let events: Vec<StreamEvent<Counter>> = app
        .stream(
            Some(CounterUpdate::default()),
            RunConfig::thread("s"),
            &[StreamMode::Updates, StreamMode::Values],
        )
        .try_collect()
        .await
        .expect("stream");
    let values: Vec<i64> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Values { state, .. } => Some(state.n),
            _ => None,
        })
        .collect();
    assert_eq!(values, [0, 1, 2, 3]);
    let updates: Vec<(i64, &str, Option<i64>)> = events
        .iter()
        .filter_map(|e| match e {
            StreamEvent::Updates { step, node, update } => Some((*step, node.as_str(), update.n)),
            _ => None,
        })
        .collect();
    assert_eq!(
        updates,
        [
            (1, "inc", Some(1)),
            (2, "inc", Some(2)),
            (3, "inc", Some(3))
        ]
    );

    // Errors arrive as the stream's last item.
    let mut failing = StateGraph::<Counter>::new();
    failing
        .add_sync_node("boom", |_| Err("boom".into()))
        .add_edge(START, "boom")
        .add_edge("boom", END);
    let app = failing.compile_without_saver().expect("compile");
    let mut stream = Box::pin(app.stream(
        Some(CounterUpdate::default()),
        RunConfig::default(),
        &[StreamMode::Values],
    ));
    let mut last = None;
    while let Some(item) = stream.next().await {
        last = Some(item);
    }
    assert!(matches!(last, Some(Err(GraphError::Node { .. }))));
}

#[tokio::test]
async fn history_pages_newest_first_with_limit_and_before() {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |s: &Counter| if s.n < 70 { "inc" } else { END });
    let app = g.compile(memory()).expect("compile");
    let config = RunConfig::thread("h").with_recursion_limit(100);
    app.invoke(Some(CounterUpdate::default()), config.clone())
        .await
        .expect("run");
    let all: Vec<_> = app
        .get_state_history(config.clone(), HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    assert_eq!(all.len(), 72, "input, the START step and 70 inc steps");
    let steps: Vec<i64> = all.iter().map(|s| s.metadata.step.unwrap_or(-99)).collect();
    assert_eq!(steps, (-1..=70).rev().collect::<Vec<_>>());
    let page: Vec<_> = app
        .get_state_history(
            config.clone(),
            HistoryQuery::default()
                .limit(5)
                .before(all[10].config.checkpoint_id.clone().expect("id")),
        )
        .try_collect()
        .await
        .expect("page");
    assert_eq!(
        page.iter().map(|s| s.metadata.step).collect::<Vec<_>>(),
        all[11..16]
            .iter()
            .map(|s| s.metadata.step)
            .collect::<Vec<_>>()
    );
    let inputs: Vec<_> = app
        .get_state_history(config, HistoryQuery::default().filter("source", "input"))
        .try_collect()
        .await
        .expect("filtered");
    assert_eq!(inputs.len(), 1);
    assert_eq!(inputs[0].metadata.source, Some(CheckpointSource::Input));
    assert_eq!(inputs[0].next, ["__start__"]);
}

#[tokio::test]
async fn metadata_carries_run_id_and_caller_keys_and_steps_continue() {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_edge("inc", END);
    let app = g.compile(memory()).expect("compile");
    let config = RunConfig::thread("m").with_metadata("user", "ada");
    app.invoke(Some(CounterUpdate::default()), config.clone())
        .await
        .expect("run 1");
    let out = app
        .invoke(Some(CounterUpdate::default().n(10)), config.clone())
        .await
        .expect("run 2");
    assert_eq!(out.n, 11, "the new input replaced n, then inc ran");
    let history: Vec<_> = app
        .get_state_history(config, HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    let steps: Vec<_> = history
        .iter()
        .map(|s| s.metadata.step.unwrap_or(-99))
        .collect();
    assert_eq!(steps, [4, 3, 2, 1, 0, -1]);
    let run_ids: std::collections::BTreeSet<_> = history
        .iter()
        .map(|s| s.metadata.run_id.clone().expect("run id"))
        .collect();
    assert_eq!(run_ids.len(), 2, "one run id per invoke");
    assert!(history
        .iter()
        .all(|s| s.metadata.extra.get("user") == Some(&"ada".into())));
}

/// Records which channels each `put` stores, the tasks whose writes are put and the
/// channels each `get_tuple_known` is told the caller holds.
#[derive(Default)]
struct Recording {
    stored: Mutex<Vec<Vec<String>>>,
    tasks: Mutex<Vec<String>>,
    /// The channels each `get_tuple_known` was told the caller holds.
    known: Mutex<Vec<Vec<String>>>,
}

impl Observer for Recording {
    fn putting(&self, checkpoint: &Checkpoint) {
        let mut values: Vec<String> = checkpoint.channel_values.keys().cloned().collect();
        values.sort();
        self.stored.lock().expect("lock").push(values);
    }
    fn putting_writes(&self, task_id: &str) {
        self.tasks.lock().expect("lock").push(task_id.to_owned());
    }
    fn reading_known(&self, known: &KnownValues<'_>) {
        let mut channels: Vec<String> = known.channels.iter().map(|c| c.to_string()).collect();
        channels.sort();
        self.known.lock().expect("lock").push(channels);
    }
}

/// An in-memory saver whose calls are recorded.
fn recording() -> Arc<Observed<Recording>> {
    Arc::new(Observed::new(
        Arc::new(InMemorySaver::new()),
        Recording::default(),
    ))
}

/// Copies thread `warm` to `cold` (a thread no graph holds in memory) and returns the
/// latest checkpoint of `warm`.
async fn copy_warm_to_cold(saver: &Observed<Recording>) -> CheckpointTuple {
    saver.inner.copy_thread("warm", "cold").await.expect("copy");
    saver
        .inner
        .get_tuple(&CheckpointConfig::thread("warm"))
        .await
        .expect("get")
        .expect("head")
}

/// A thread's history as values, next nodes and steps, read by `app`.
async fn history_of(
    app: &cairn_graph::CompiledGraph<Doc>,
    thread: &str,
) -> Vec<(Doc, Vec<String>, Option<i64>)> {
    let snaps: Vec<_> = app
        .get_state_history(RunConfig::thread(thread), HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    snaps
        .into_iter()
        .map(|s| (s.values, s.next, s.metadata.step))
        .collect()
}

/// A run that starts from the checkpoint the graph's last run on the thread ended with reads
/// no value back: the head read leaves out every channel of that checkpoint (the state's
/// fields, the input, the branch triggers), and the run goes on exactly as a run of a graph
/// that read them all.
#[tokio::test]
async fn a_warm_thread_reads_no_value_back_and_runs_as_a_cold_one() {
    let saver = recording();
    let graph = || {
        let mut g = StateGraph::<Doc>::new();
        g.add_sync_node("one", |s: &Doc| {
            Ok(DocUpdate::default()
                .items(vec![format!("one saw {}", s.items.len())])
                .total(1))
        })
        .add_sync_node("two", |s: &Doc| Ok(DocUpdate::default().high(s.total)))
        .add_edge(START, "one")
        .add_conditional_edges("one", |s: &Doc| if s.total % 2 == 1 { "two" } else { END })
        .add_edge("two", END);
        g
    };
    let app = graph().compile(saver.clone()).expect("compile");
    let input = |t: &str| Some(DocUpdate::default().title(t).items(vec![t.to_owned()]));
    app.invoke(input("first"), RunConfig::thread("warm"))
        .await
        .expect("run 1");
    let head = copy_warm_to_cold(&saver).await;
    let mut head_channels: Vec<String> = head.checkpoint.channel_versions.keys().cloned().collect();
    head_channels.sort();
    assert!(head_channels.len() > 1, "{head_channels:?}");

    saver.observer.known.lock().expect("lock").clear();
    let warm = app
        .invoke(input("second"), RunConfig::thread("warm"))
        .await
        .expect("run 2");
    let known = saver.observer.known.lock().expect("lock").clone();
    let first_read = known.first().expect("a head read that names held values");
    for channel in &head_channels {
        assert!(
            first_read.contains(channel),
            "{channel} was read back: {first_read:?}"
        );
    }

    // A graph with nothing in memory reads everything and must end the same way.
    let cold_app = graph().compile(saver.clone()).expect("compile");
    let cold = cold_app
        .invoke(input("second"), RunConfig::thread("cold"))
        .await
        .expect("cold run");
    assert_eq!(warm, cold);
    let fresh = || graph().compile(saver.clone()).expect("compile");
    assert_eq!(
        history_of(&fresh(), "warm").await,
        history_of(&fresh(), "cold").await
    );
    // Third run on the warm thread, from a warm cache again.
    let third = app
        .invoke(input("third"), RunConfig::thread("warm"))
        .await
        .expect("run 3");
    assert_eq!(third.items.len(), warm.items.len() + 2);
}

/// The same with a fan-out of sends, a join of two branches and every durability mode: the
/// warm run reads no value back and ends as the cold one, checkpoint for checkpoint.
#[tokio::test]
async fn warm_and_cold_runs_agree_with_sends_joins_and_every_durability() {
    for durability in [Durability::Async, Durability::Sync, Durability::Exit] {
        let saver = recording();
        let graph = || {
            let mut g = StateGraph::<Doc>::new();
            g.add_sync_node("fan", |s: &Doc| {
                Ok(DocUpdate::default()
                    .items(vec![format!("fan {}", s.title)])
                    .total(1))
            })
            .add_sync_node("a", |s: &Doc| Ok(DocUpdate::default().high(s.total)))
            .add_sync_node("b", |_: &Doc| Ok(DocUpdate::default().total(10)))
            .add_sync_node("join", |s: &Doc| {
                Ok(DocUpdate::default().items(vec![format!("joined at {}", s.total)]))
            })
            .add_conditional_edges(START, |s: &Doc| {
                ["x", "y"].map(|t| {
                    cairn_graph::SendTo::new(
                        "fan",
                        Doc {
                            title: format!("{t}{}", s.items.len()),
                            ..Doc::default()
                        },
                    )
                })
            })
            .add_edge("fan", "a")
            .add_edge("fan", "b")
            .add_edge(["a", "b"], "join")
            .add_edge("join", END);
            g
        };
        let thread = |t: &str| RunConfig::thread(t).with_durability(durability);
        let input = |t: &str| Some(DocUpdate::default().items(vec![t.to_owned()]));
        let app = graph().compile(saver.clone()).expect("compile");
        app.invoke(input("first"), thread("warm"))
            .await
            .expect("run 1");
        let head = copy_warm_to_cold(&saver).await;
        // Sends, the join and both branches leave channels of their own in the head.
        for channel in ["__pregel_tasks", "join:a+b:join", "branch:to:b"] {
            assert!(
                head.checkpoint.channel_versions.contains_key(channel),
                "{channel}"
            );
        }
        saver.observer.known.lock().expect("lock").clear();
        let warm = app
            .invoke(input("second"), thread("warm"))
            .await
            .expect("run 2");
        let known = saver.observer.known.lock().expect("lock").clone();
        let first_read = known.first().expect("a head read naming held values");
        for channel in head.checkpoint.channel_versions.keys() {
            assert!(
                first_read.contains(channel),
                "{durability:?}: {channel} was read back: {first_read:?}"
            );
        }
        let cold_app = graph().compile(saver.clone()).expect("compile");
        let cold = cold_app
            .invoke(input("second"), thread("cold"))
            .await
            .expect("cold run");
        assert_eq!(warm, cold, "{durability:?}");
        let fresh = || graph().compile(saver.clone()).expect("compile");
        assert_eq!(
            history_of(&fresh(), "warm").await,
            history_of(&fresh(), "cold").await,
            "{durability:?}"
        );
    }
}

/// A command whose update runs no step leaves the state in memory ahead of the thread's
/// latest checkpoint; that state is not kept for the next run, which reads the same state as
/// a graph with nothing in memory.
#[tokio::test]
async fn a_state_ahead_of_its_checkpoint_is_not_reused() {
    let saver = recording();
    let graph = || {
        let mut g = StateGraph::<Doc>::new();
        g.add_sync_node("one", |_: &Doc| Ok(DocUpdate::default().total(1)))
            .add_edge(START, "one")
            .add_edge("one", END);
        g
    };
    let app = graph().compile(saver.clone()).expect("compile");
    let thread = || RunConfig::thread("ahead");
    app.invoke(Some(DocUpdate::default().title("t")), thread())
        .await
        .expect("run");
    app.invoke_command(
        cairn_graph::Command::update(DocUpdate::default().title("edited")),
        thread(),
    )
    .await
    .expect("command");
    let warm = app.get_state(thread()).await.expect("get").expect("state");
    let cold = graph()
        .compile(saver.clone())
        .expect("compile")
        .get_state(thread())
        .await
        .expect("get")
        .expect("state");
    assert_eq!(warm.values, cold.values);
    assert_eq!(warm.config, cold.config);
}

#[tokio::test]
async fn checkpoints_store_only_changed_channels_and_task_ids_are_deterministic() {
    let saver = recording();
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("one", |_| {
        let task = current_task().expect("task context");
        assert_eq!(task.name, "one");
        assert_eq!(task.thread_id, "economy");
        Ok(DocUpdate::default().items(vec![task.id]))
    })
    .add_sync_node("two", |_| Ok(DocUpdate::default().total(2)))
    .add_edge(START, "one")
    .add_edge("one", "two")
    .add_edge("two", END);
    let app = g.compile(saver.clone()).expect("compile");
    let out = app
        .invoke(
            Some(DocUpdate::default().title("big title")),
            RunConfig::thread("economy"),
        )
        .await
        .expect("run");
    let stored = saver.observer.stored.lock().expect("lock").clone();
    assert_eq!(stored[0], ["__start__"], "input checkpoint");
    assert_eq!(stored[1], ["branch:to:one", "title"], "START step");
    assert_eq!(
        stored[2],
        ["branch:to:two", "items"],
        "step of one: title not stored again"
    );
    assert_eq!(stored[3], ["total"]);
    // The id a node sees is the id its writes were saved under, and is reproducible.
    let tasks = saver.observer.tasks.lock().expect("lock").clone();
    assert_eq!(out.items.len(), 1);
    assert!(tasks.contains(&out.items[0]));
    let history: Vec<_> = app
        .get_state_history(RunConfig::thread("economy"), HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    let before_one = &history[2];
    assert_eq!(before_one.next, ["one"]);
    assert_eq!(
        cairn_graph::task_id(
            before_one.config.checkpoint_id.as_deref().expect("id"),
            "",
            1,
            "one",
            "~__pregel_pull, one"
        ),
        out.items[0]
    );
    assert_eq!(before_one.tasks[0].id, out.items[0]);
}

#[tokio::test]
async fn update_state_forks_and_copy_thread_branches_off() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", |_| {
        Ok(DocUpdate::default().items(vec!["a".to_string()]))
    })
    .add_sync_node("b", |s| {
        Ok(DocUpdate::default().items(vec![format!("b saw {}", s.title)]))
    })
    .add_edge(START, "a")
    .add_edge("a", "b")
    .add_edge("b", END);
    let app = g.compile(memory()).expect("compile");
    let config = RunConfig::thread("f");
    app.invoke(Some(DocUpdate::default().title("x")), config.clone())
        .await
        .expect("run");
    let history: Vec<_> = app
        .get_state_history(config.clone(), HistoryQuery::default())
        .try_collect()
        .await
        .expect("history");
    let after_a = history
        .iter()
        .find(|s| s.next == ["b"])
        .expect("checkpoint before b");
    let fork = app
        .update_state(
            after_a.config.clone(),
            DocUpdate::default().title("y"),
            Some("a"),
        )
        .await
        .expect("update");
    let forked = app
        .get_state(fork.clone())
        .await
        .expect("state")
        .expect("fork");
    assert_eq!(forked.next, ["b"]);
    assert_eq!(forked.metadata.source, Some(CheckpointSource::Update));
    let out = app.invoke(None, fork).await.expect("continue the fork");
    assert_eq!(out.items, ["a", "b saw y"]);
    // The original branch is intact.
    let old_final = &history[0];
    assert_eq!(old_final.values.items, ["a", "b saw x"]);
    let reread = app
        .get_state(old_final.config.clone())
        .await
        .expect("state")
        .expect("old");
    assert_eq!(reread.values.items, ["a", "b saw x"]);

    app.copy_thread("f", "f-copy").await.expect("copy");
    let copy = app
        .get_state(RunConfig::thread("f-copy"))
        .await
        .expect("state")
        .expect("copy");
    assert_eq!(copy.values.items, ["a", "b saw y"]);
    let out = app
        .invoke(
            Some(DocUpdate::default().title("z")),
            RunConfig::thread("f-copy"),
        )
        .await
        .expect("continue the copy");
    assert_eq!(out.items, ["a", "b saw y", "a", "b saw z"]);
    let original = app
        .get_state(RunConfig::thread("f"))
        .await
        .expect("state")
        .expect("f");
    assert_eq!(original.values.items, ["a", "b saw y"]);
}

#[tokio::test]
async fn sends_give_each_task_its_own_input() {
    #[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
    struct Jobs {
        subject: String,
        #[reducer(append)]
        done: Vec<String>,
    }
    let mut g = StateGraph::<Jobs>::new();
    g.add_sync_node("write", |s| {
        Ok(JobsUpdate::default().done(vec![format!("about {}", s.subject)]))
    })
    .add_conditional_edges(START, |_: &Jobs| {
        ["cats", "dogs", "owls"].map(|s| {
            cairn_graph::SendTo::new(
                "write",
                Jobs {
                    subject: s.into(),
                    ..Jobs::default()
                },
            )
        })
    })
    .add_edge("write", END);
    let app = g.compile(memory()).expect("compile");
    let out = app
        .invoke(Some(JobsUpdate::default()), RunConfig::thread("sends"))
        .await
        .expect("run");
    assert_eq!(out.done, ["about cats", "about dogs", "about owls"]);
    assert_eq!(out.subject, "");
}

#[tokio::test]
async fn resuming_a_thread_without_checkpoints_or_input_is_an_error() {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_edge("inc", END);
    let app = g.compile(memory()).expect("compile");
    assert!(matches!(
        app.invoke(None, RunConfig::thread("empty")).await,
        Err(GraphError::InvalidArgument(_))
    ));
    assert!(matches!(
        app.invoke(None, RunConfig::thread("empty").with_checkpoint_id("nope"))
            .await,
        Err(GraphError::CheckpointNotFound { .. })
    ));
    assert!(matches!(
        app.invoke(Some(CounterUpdate::default()), RunConfig::default())
            .await,
        Err(GraphError::InvalidArgument(_))
    ));
    assert!(app
        .get_state(RunConfig::thread("empty"))
        .await
        .expect("ok")
        .is_none());
}

/// The versions one run makes share one random suffix (a compact header names it once);
/// another run on the same thread draws its own, so branches never share a version.
#[tokio::test]
async fn the_versions_of_a_run_share_a_suffix_and_runs_differ() {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |s: &Counter| if s.n % 5 == 0 { END } else { "inc" });
    let saver = Arc::new(InMemorySaver::new());
    let app = g.compile(saver.clone()).expect("compile");
    for _ in 0..2 {
        app.invoke(Some(CounterUpdate::default()), RunConfig::thread("v"))
            .await
            .expect("run");
    }
    let stored = saver
        .list(&cairn_checkpoint::ListQuery::thread("v"))
        .await
        .expect("list");
    // Per run: the suffixes of the versions its checkpoints updated.
    let mut suffixes: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for tuple in &stored {
        let run = tuple.metadata.run_id.clone().expect("run id");
        for channel in tuple.checkpoint.updated_channels.iter().flatten() {
            let version = tuple.checkpoint.channel_versions[channel].to_storage_string();
            let (_, suffix) = version.split_once('.').expect("Cairn's form");
            suffixes
                .entry(run.clone())
                .or_default()
                .insert(suffix.to_owned());
        }
    }
    assert_eq!(suffixes.len(), 2, "two runs: {suffixes:?}");
    for (run, set) in &suffixes {
        assert_eq!(set.len(), 1, "run {run}: {set:?}");
    }
    let all: std::collections::BTreeSet<_> = suffixes.values().flatten().collect();
    assert_eq!(all.len(), 2, "each run its own suffix");
}

/// Run metadata keys named like the checkpoint metadata's own fields are refused before the
/// run writes anything, by `invoke` and `update_state` alike; other keys reach every
/// checkpoint.
#[tokio::test]
async fn run_metadata_named_like_a_metadata_field_is_refused() {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_edge("inc", END);
    let saver = memory();
    let app = g.compile(saver.clone()).expect("compile");
    for key in ["source", "step", "parents", "run_id"] {
        let config = RunConfig::thread("t").with_metadata(key, "mine");
        let err = app
            .invoke(Some(CounterUpdate::default()), config.clone())
            .await
            .expect_err(key);
        assert!(
            matches!(&err, GraphError::InvalidArgument(m) if m.contains(key) && m.contains("rename")),
            "{key}: {err}"
        );
        let err = app
            .update_state(config, CounterUpdate::default().n(5), None)
            .await
            .expect_err(key);
        assert!(
            matches!(err, GraphError::InvalidArgument(_)),
            "{key}: {err}"
        );
    }
    assert!(
        saver
            .get_tuple(&CheckpointConfig::thread("t"))
            .await
            .expect("read")
            .is_none(),
        "nothing written"
    );
    app.invoke(
        Some(CounterUpdate::default()),
        RunConfig::thread("t").with_metadata("channel", "slack"),
    )
    .await
    .expect("other keys are fine");
    let head = saver
        .get_tuple(&CheckpointConfig::thread("t"))
        .await
        .expect("read")
        .expect("stored");
    assert_eq!(head.metadata.extra["channel"], "slack");
    assert_eq!(head.metadata.source, Some(CheckpointSource::Loop));
}

/// A config naming a checkpoint gives the history up to it (that checkpoint, then the ones
/// before it), on every saver: SQLite compares ids in their stored form, so the bound must be
/// a real id. A filter still applies; an id the thread does not hold gives nothing.
#[tokio::test]
async fn history_from_a_named_checkpoint_starts_there() {
    let dir = tempfile::tempdir().expect("dir");
    let sqlite: Arc<dyn CheckpointSaver> =
        Arc::new(cairn_sqlite::SqliteSaver::open(dir.path().join("h.db")).expect("open"));
    for saver in [memory(), sqlite] {
        let mut g = StateGraph::<Counter>::new();
        g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
            .add_edge(START, "inc")
            .add_conditional_edges("inc", |s: &Counter| if s.n < 40 { "inc" } else { END });
        let app = g.compile(saver).expect("compile");
        let config = RunConfig::thread("from").with_recursion_limit(100);
        app.invoke(Some(CounterUpdate::default()), config.clone())
            .await
            .expect("run");
        let all: Vec<_> = app
            .get_state_history(config.clone(), HistoryQuery::default())
            .try_collect()
            .await
            .expect("history");
        let steps = |h: &[cairn_graph::StateSnapshot<Counter>]| -> Vec<Option<i64>> {
            h.iter().map(|s| s.metadata.step).collect()
        };
        let from: Vec<_> = app
            .get_state_history(
                RunConfig::from(all[5].config.clone()),
                HistoryQuery::default(),
            )
            .try_collect()
            .await
            .expect("from a checkpoint");
        assert_eq!(steps(&from), steps(&all[5..]));
        assert_eq!(from[0].values, all[5].values);
        let page: Vec<_> = app
            .get_state_history(
                RunConfig::from(all[5].config.clone()),
                HistoryQuery::default().limit(3),
            )
            .try_collect()
            .await
            .expect("a page from a checkpoint");
        assert_eq!(steps(&page), steps(&all[5..8]));
        let inputs: Vec<_> = app
            .get_state_history(
                RunConfig::from(all[5].config.clone()),
                HistoryQuery::default().filter("source", "input"),
            )
            .try_collect()
            .await
            .expect("filtered");
        assert_eq!(steps(&inputs), [Some(-1)]);
        let mut unknown = all[5].config.clone();
        unknown.checkpoint_id = Some("ffffffff-ffff-6fff-8fff-ffffffffffff".into());
        let none: Vec<_> = app
            .get_state_history(RunConfig::from(unknown), HistoryQuery::default())
            .try_collect()
            .await
            .expect("unknown id");
        assert!(none.is_empty());
    }
}

/// A stored channel version whose counter no version can follow (damaged data) is reported
/// as corrupt when a run loads it, instead of overflowing.
#[tokio::test]
async fn a_version_counter_at_the_end_of_the_integers_is_reported_not_overflowed() {
    assert_eq!(
        cairn_checkpoint::ChannelVersion::Int(i64::MAX)
            .next()
            .counter(),
        i64::MAX,
        "next saturates"
    );
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("inc", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "inc")
        .add_edge("inc", END);
    let saver = memory();
    let app = g.compile(saver.clone()).expect("compile");
    let mut cp = Checkpoint::new();
    let version = cairn_checkpoint::ChannelVersion::Int(i64::MAX);
    cp.channel_values.insert(
        "n".into(),
        cairn_checkpoint::ValueCodec::default()
            .encode(&1u64)
            .expect("encode"),
    );
    cp.channel_versions.insert("n".into(), version.clone());
    saver
        .put(
            &CheckpointConfig::thread("worn"),
            cp,
            cairn_checkpoint::CheckpointMetadata::new(CheckpointSource::Loop, 3),
            [("n".to_owned(), version)].into(),
        )
        .await
        .expect("put");
    let err = app
        .invoke(Some(CounterUpdate::default()), RunConfig::thread("worn"))
        .await
        .expect_err("refused");
    assert!(
        matches!(
            &err,
            GraphError::Checkpoint(cairn_checkpoint::Error::Corrupt { .. })
        ),
        "{err}"
    );
    assert!(err.to_string().contains("no version can follow"), "{err}");

    // A step at the end of the integers likewise.
    saver
        .put(
            &CheckpointConfig::thread("late"),
            Checkpoint::new(),
            cairn_checkpoint::CheckpointMetadata::new(CheckpointSource::Loop, i64::MAX),
            Default::default(),
        )
        .await
        .expect("put");
    let err = app
        .invoke(None, RunConfig::thread("late"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("out of range"), "{err}");
    let err = app
        .get_state(RunConfig::thread("late"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("out of range"), "{err}");
}

/// A router after a node a `SendTo` started sees the graph's state with that task's writes
/// applied (as in LangGraph), not the packet's argument the node was given.
#[tokio::test]
async fn routers_after_a_sent_task_see_the_graph_state() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut g = StateGraph::<Doc>::new();
    let record = Arc::clone(&seen);
    g.add_sync_node("work", |s: &Doc| {
        Ok(DocUpdate::default().items(vec![format!("done {}", s.title)]))
    })
    .add_sync_node("after", |_: &Doc| Ok(DocUpdate::default().total(1)))
    .add_conditional_edges(START, |_: &Doc| {
        ["x", "y"].map(|t| {
            cairn_graph::SendTo::new(
                "work",
                Doc {
                    title: t.to_owned(),
                    ..Doc::default()
                },
            )
        })
    })
    .add_conditional_edges("work", move |s: &Doc| {
        record
            .lock()
            .expect("lock")
            .push((s.items.len(), s.title.clone()));
        "after"
    })
    .add_edge("after", END);
    let app = g.compile(memory()).expect("compile");
    let out = app
        .invoke(
            Some(
                DocUpdate::default()
                    .items(vec!["input".into()])
                    .title("graph"),
            ),
            RunConfig::thread("sent"),
        )
        .await
        .expect("run");
    assert_eq!(out.items.len(), 3);
    let seen = seen.lock().expect("lock").clone();
    // Each router: the input item plus its own task's item, and the graph's title.
    assert_eq!(seen, [(2, "graph".to_owned()), (2, "graph".to_owned())]);
}

fn picky_reducer(current: &mut i64, new: i64) {
    assert!(new >= 0, "negative values are not allowed here");
    *current += new;
}

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Picky {
    #[reducer(with = picky_reducer)]
    score: i64,
}

/// A reducer that panics stops the run with an error naming the node, instead of unwinding
/// through `invoke`; the thread stays readable.
#[tokio::test]
async fn a_panicking_reducer_is_an_error_of_the_run() {
    let mut g = StateGraph::<Picky>::new();
    g.add_sync_node("bad", |_| Ok(PickyUpdate::default().score(-1)))
        .add_edge(START, "bad")
        .add_edge("bad", END);
    let app = g.compile(memory()).expect("compile");
    let err = app
        .invoke(
            Some(PickyUpdate::default().score(2)),
            RunConfig::thread("picky"),
        )
        .await
        .expect_err("the reducer panics");
    assert!(
        matches!(&err, GraphError::ReducerPanicked { node, message }
            if node == "bad" && message.contains("negative values")),
        "{err}"
    );
    let snap = app
        .get_state(RunConfig::thread("picky"))
        .await
        .expect("readable")
        .expect("saved");
    assert_eq!(snap.values.score, 2, "the input was applied and saved");
}

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Noted {
    note: Option<String>,
    n: i64,
    extra: serde_json::Value,
}

/// An update that clears an `Option` field (`Some(None)`) stays one when stored and read
/// back (the input checkpoint stores the run's input as an update): it is not taken for "not
/// written", in either format.
#[tokio::test]
async fn an_update_clearing_an_option_field_survives_storage() {
    let clear = NotedUpdate::default().note(None::<String>);
    for codec in [
        cairn_checkpoint::ValueCodec::default(),
        cairn_checkpoint::ValueCodec::new(cairn_checkpoint::Format::Json),
    ] {
        let stored = codec.encode(&clear).expect("encode");
        let back: NotedUpdate = codec.decode(&stored).expect("decode");
        assert_eq!(back.note, Some(None), "{codec:?}");
        assert_eq!(back.n, None, "{codec:?}: an absent field stays unwritten");
        let null = NotedUpdate::default().extra(serde_json::Value::Null);
        let back: NotedUpdate = codec
            .decode(&codec.encode(&null).expect("encode"))
            .expect("decode");
        assert_eq!(back.extra, Some(serde_json::Value::Null), "{codec:?}");
    }
    // An update built from JSON: `null` for a field that is not an Option is "not written".
    let from_json: NotedUpdate =
        serde_json::from_str(r#"{"n": null, "note": "hi"}"#).expect("null is not written");
    assert_eq!(from_json.n, None);
    assert_eq!(from_json.note, Some(Some("hi".to_owned())));
    let mut g = StateGraph::<Noted>::new();
    g.add_sync_node("count", |s: &Noted| Ok(NotedUpdate::default().n(s.n + 1)))
        .add_edge(START, "count")
        .add_edge("count", END);
    let saver = memory();
    let app = g.compile(saver.clone()).expect("compile");
    let thread = || RunConfig::thread("noted");
    app.invoke(
        Some(NotedUpdate::default().note(Some("keep?".to_owned()))),
        thread(),
    )
    .await
    .expect("run");
    let out = app
        .invoke(Some(clear.clone()), thread())
        .await
        .expect("run");
    assert_eq!(out.note, None);
    // Replaying the input checkpoint of the second run applies the stored input again.
    let history: Vec<_> = app
        .get_state_history(thread(), HistoryQuery::default().filter("source", "input"))
        .try_collect()
        .await
        .expect("history");
    let replayed = app
        .invoke(None, RunConfig::from(history[0].config.clone()))
        .await
        .expect("replay");
    assert_eq!(
        replayed.note, None,
        "the stored input still clears the note"
    );
}

//! Human-in-the-loop and run control: dynamic interrupts (also across a process restart on
//! SQLite), resume maps, commands from callers and nodes, breakpoints, retries, durability
//! modes, per-node checkpoint policy and debug/custom streaming.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_checkpoint::{CheckpointSaver, InMemorySaver, ListQuery, INTERRUPT, RESUME};
use cairn_graph::{
    emit, interrupt, interrupt_as, Command, DebugEvent, Durability, GraphError, NodeOptions,
    RetryPolicy, RunConfig, RunOutcome, State, StateGraph, StreamEvent, StreamMode, END, START,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Doc {
    #[reducer(append)]
    log: Vec<String>,
    text: String,
    #[reducer(add)]
    n: i64,
}

fn counter() -> Arc<Mutex<HashMap<String, usize>>> {
    Arc::new(Mutex::new(HashMap::new()))
}

fn bump(c: &Mutex<HashMap<String, usize>>, k: &str) -> usize {
    let mut m = c.lock().unwrap();
    let e = m.entry(k.to_string()).or_default();
    *e += 1;
    *e
}

fn count(c: &Mutex<HashMap<String, usize>>, k: &str) -> usize {
    c.lock().unwrap().get(k).copied().unwrap_or(0)
}

/// draft → review (interrupt) → publish.
fn approval_graph(runs: Arc<Mutex<HashMap<String, usize>>>) -> StateGraph<Doc> {
    let mut g = StateGraph::<Doc>::new();
    let r1 = runs.clone();
    let r2 = runs.clone();
    g.add_sync_node("draft", move |_| {
        bump(&r1, "draft");
        Ok(DocUpdate::default()
            .text("draft v1".to_string())
            .log(vec!["draft".into()]))
    })
    .add_sync_node("review", move |s: &Doc| {
        bump(&r2, "review");
        let verdict: String = interrupt_as(serde_json::json!({"text": s.text}))?;
        Ok(DocUpdate::default().log(vec![format!("review:{verdict}")]))
    })
    .add_sync_node("publish", move |_| {
        bump(&runs, "publish");
        Ok(DocUpdate::default().log(vec!["publish".into()]))
    })
    .add_edge(START, "draft")
    .add_edge("draft", "review")
    .add_edge("review", "publish")
    .add_edge("publish", END);
    g
}

#[tokio::test]
async fn interrupt_survives_a_restart_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("hitl.sqlite");
    let runs = counter();
    let first_id;
    {
        let saver = Arc::new(cairn_sqlite::SqliteSaver::open(&db).unwrap());
        let app = approval_graph(runs.clone()).compile(saver).unwrap();
        let out = app
            .invoke_outcome(Some(DocUpdate::default()), RunConfig::thread("t"))
            .await
            .unwrap();
        let RunOutcome::Interrupted { state, interrupts } = out else {
            panic!("should stop at review");
        };
        assert_eq!(state.log, ["draft"]);
        assert_eq!(interrupts.len(), 1);
        assert_eq!(interrupts[0].value["text"], "draft v1");
        first_id = interrupts[0].id.clone();
        let snap = app
            .get_state(RunConfig::thread("t"))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snap.next, ["review"]);
        assert_eq!(snap.tasks[0].interrupts, interrupts);
        assert_eq!(snap.interrupts, interrupts);
        // Continuing without an answer re-runs the node, which asks again (same id).
        let again = app
            .invoke_outcome(None, RunConfig::thread("t"))
            .await
            .unwrap();
        assert_eq!(again.interrupts()[0].id, first_id);
    }
    // A new "process": a new saver and a new graph over the same file.
    let saver = Arc::new(cairn_sqlite::SqliteSaver::open(&db).unwrap());
    let app = approval_graph(runs.clone()).compile(saver.clone()).unwrap();
    let snap = app
        .get_state(RunConfig::thread("t"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.interrupts[0].id, first_id);
    let out = app
        .invoke_command(Command::resume("approved"), RunConfig::thread("t"))
        .await
        .unwrap();
    let RunOutcome::Finished(state) = out else {
        panic!("should finish")
    };
    assert_eq!(state.log, ["draft", "review:approved", "publish"]);
    assert_eq!(count(&runs, "draft"), 1);
    assert_eq!(count(&runs, "review"), 3);
    assert_eq!(count(&runs, "publish"), 1);
    // The resume value is saved with the step the review ran in.
    let all = saver
        .list(&ListQuery::from_config(
            &RunConfig::thread("t").checkpoint_config(),
        ))
        .await
        .unwrap();
    let review_cp = all
        .iter()
        .find(|t| t.pending_writes.iter().any(|w| w.channel == INTERRUPT))
        .expect("checkpoint holding the interrupt");
    assert!(review_cp
        .pending_writes
        .iter()
        .any(|w| w.channel == RESUME && w.task_id == cairn_graph::NULL_TASK_ID));
    let snap = app
        .get_state(RunConfig::thread("t"))
        .await
        .unwrap()
        .unwrap();
    assert!(snap.next.is_empty() && snap.interrupts.is_empty());
}

#[tokio::test]
async fn parallel_interrupts_are_resumed_by_id() {
    let mut g = StateGraph::<Doc>::new();
    for name in ["x", "y"] {
        g.add_sync_node(name, move |_| {
            let v: String = interrupt_as(format!("{name}?"))?;
            Ok(DocUpdate::default().log(vec![format!("{name}={v}")]))
        })
        .add_edge(START, name)
        .add_edge(name, END);
    }
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("p");
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    let ints = out.interrupts().to_vec();
    assert_eq!(ints.len(), 2);
    assert_ne!(ints[0].id, ints[1].id);
    // One value for two interrupts is ambiguous.
    let err = app
        .invoke_command(Command::resume("v"), cfg())
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::InvalidArgument(_)), "{err}");
    // Answer only y: x asks again, y's answer is kept.
    let y = ints.iter().find(|i| i.value == "y?").unwrap();
    let out = app
        .invoke_command(Command::resume_map([(y.id.clone(), "2")]), cfg())
        .await
        .unwrap();
    assert_eq!(out.interrupts().len(), 1);
    assert_eq!(out.interrupts()[0].value, "x?");
    let x = out.interrupts()[0].clone();
    let out = app
        .invoke_command(Command::resume_map([(x.id, "1")]), cfg())
        .await
        .unwrap();
    assert_eq!(out.state().log, ["x=1", "y=2"]);
    assert!(!out.is_interrupted());
}

#[tokio::test]
async fn interrupt_outside_a_node_is_an_error() {
    assert!(interrupt("nope").is_err());
}

#[tokio::test]
async fn caller_command_updates_and_goes_to() {
    let runs = counter();
    let app = approval_graph(runs.clone())
        .compile(Arc::new(InMemorySaver::new()))
        .unwrap();
    let cfg = || RunConfig::thread("c");
    app.invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    // Write the text and schedule publish: it runs in the same step as the pending review,
    // which asks again (with the new text).
    let out = app
        .invoke_command(
            Command::update(DocUpdate::default().text("edited".to_string())).goto("publish"),
            cfg(),
        )
        .await
        .unwrap();
    assert_eq!(out.state().text, "edited");
    assert_eq!(out.interrupts()[0].value["text"], "edited");
    assert_eq!(count(&runs, "publish"), 1);
    assert_eq!(
        out.state().log,
        ["draft"],
        "the interrupted step is not applied"
    );
    let out = app
        .invoke_command(Command::resume("ok"), cfg())
        .await
        .unwrap();
    // publish's saved writes from the goto are reused, then it runs again after review.
    assert_eq!(count(&runs, "publish"), 2);
    assert_eq!(
        out.state().log,
        ["draft", "publish", "review:ok", "publish"]
    );
}

#[tokio::test]
async fn interrupt_after_and_per_run_breakpoints() {
    let runs = counter();
    let mut g = approval_graph(runs.clone());
    g.interrupt_after(["draft"]);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), RunConfig::thread("a"))
        .await
        .unwrap();
    assert!(out.is_interrupted() && out.interrupts().is_empty());
    assert_eq!(out.state().log, ["draft"]);
    let snap = app
        .get_state(RunConfig::thread("a"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.next, ["review"]);
    // Continue; review interrupts dynamically.
    let out = app
        .invoke_outcome(None, RunConfig::thread("a"))
        .await
        .unwrap();
    assert_eq!(out.interrupts().len(), 1);

    // Per run: stop before publish, overriding the compiled interrupt_after.
    let cfg = || {
        RunConfig::thread("b")
            .with_interrupt_before(["publish"])
            .with_interrupt_after(Vec::<String>::new())
    };
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    assert_eq!(out.interrupts().len(), 1, "review interrupts first");
    let out = app
        .invoke_command(Command::resume("ok"), cfg())
        .await
        .unwrap();
    assert!(out.is_interrupted() && out.interrupts().is_empty());
    let snap = app
        .get_state(RunConfig::thread("b"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.next, ["publish"]);
    let out = app.invoke_outcome(None, cfg()).await.unwrap();
    assert!(!out.is_interrupted());
    assert_eq!(out.state().log.last().map(String::as_str), Some("publish"));
    // Unknown names are refused.
    let err = app
        .invoke_outcome(None, RunConfig::thread("b").with_interrupt_before(["nope"]))
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::UnknownNode { .. }));
}

#[tokio::test]
async fn retry_policy_retries_matching_errors_only() {
    let runs = counter();
    let r = runs.clone();
    let mut g = StateGraph::<Doc>::new();
    g.add_node_with(
        "flaky",
        NodeOptions::default().retry(
            RetryPolicy::new(4)
                .backoff(Duration::from_millis(1), 2.0, Duration::from_millis(5))
                .retry_if(|e| e.to_string().contains("transient")),
        ),
        move |s: Arc<Doc>| {
            let r = r.clone();
            async move {
                let n = bump(&r, "flaky");
                if s.text == "fatal" {
                    return Err("fatal error".into());
                }
                if n < 3 {
                    return Err("transient error".into());
                }
                Ok(DocUpdate::default().log(vec![format!("ok after {n}")]))
            }
        },
    )
    .add_edge(START, "flaky")
    .add_edge("flaky", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let out = app
        .invoke(Some(DocUpdate::default()), RunConfig::thread("r"))
        .await
        .unwrap();
    assert_eq!(out.log, ["ok after 3"]);
    runs.lock().unwrap().clear();
    let err = app
        .invoke(
            Some(DocUpdate::default().text("fatal".to_string())),
            RunConfig::thread("r2"),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::Node { .. }));
    assert_eq!(
        count(&runs, "flaky"),
        1,
        "a non-matching error is not retried"
    );
    assert_eq!(RetryPolicy::new(3).delay(20), Duration::from_secs(128));
}

#[tokio::test]
async fn failed_parallel_step_reruns_only_the_failed_task() {
    let runs = counter();
    let fail = Arc::new(AtomicUsize::new(1));
    let mut g = StateGraph::<Doc>::new();
    for name in ["ok1", "ok2", "bad"] {
        let r = runs.clone();
        let fail = fail.clone();
        g.add_node(name, move |_s: Arc<Doc>| {
            let r = r.clone();
            let fail = fail.clone();
            async move {
                bump(&r, name);
                if name == "bad" && fail.load(Ordering::SeqCst) == 1 {
                    return Err("bad failed".into());
                }
                Ok(DocUpdate::default().n(1))
            }
        })
        .add_edge(START, name)
        .add_edge(name, END);
    }
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    assert!(app
        .invoke(Some(DocUpdate::default()), RunConfig::thread("f"))
        .await
        .is_err());
    let snap = app
        .get_state(RunConfig::thread("f"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.next, ["bad"]);
    fail.store(0, Ordering::SeqCst);
    let out = app.invoke(None, RunConfig::thread("f")).await.unwrap();
    assert_eq!(out.n, 3);
    assert_eq!(count(&runs, "ok1"), 1);
    assert_eq!(count(&runs, "ok2"), 1);
    assert_eq!(count(&runs, "bad"), 2);
}

fn chain(len: usize, fail_at: Option<Arc<AtomicUsize>>) -> StateGraph<Doc> {
    let mut g = StateGraph::<Doc>::new();
    for i in 0..len {
        let name = format!("n{i}");
        let fail = fail_at.clone();
        g.add_sync_node(name.clone(), move |_| {
            if let Some(f) = &fail {
                if f.load(Ordering::SeqCst) == i {
                    return Err("planned failure".into());
                }
            }
            Ok(DocUpdate::default().n(1))
        });
        g.add_edge(
            if i == 0 {
                START.to_string()
            } else {
                format!("n{}", i - 1)
            },
            name,
        );
    }
    g.add_edge(format!("n{}", len - 1), END);
    g
}

async fn checkpoint_count(saver: &InMemorySaver, thread: &str) -> usize {
    saver
        .list(&ListQuery::from_config(
            &RunConfig::thread(thread).checkpoint_config(),
        ))
        .await
        .unwrap()
        .len()
}

#[tokio::test]
async fn durability_modes_write_the_expected_checkpoints() {
    let saver = Arc::new(InMemorySaver::new());
    let app = chain(5, None).compile(saver.clone()).unwrap();
    for (mode, thread, expected) in [
        (Durability::Sync, "sync", 7),
        (Durability::Async, "async", 7),
        (Durability::Exit, "exit", 1),
    ] {
        let out = app
            .invoke(
                Some(DocUpdate::default()),
                RunConfig::thread(thread).with_durability(mode),
            )
            .await
            .unwrap();
        assert_eq!(out.n, 5);
        assert_eq!(checkpoint_count(&saver, thread).await, expected, "{mode:?}");
        let snap = app
            .get_state(RunConfig::thread(thread))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(snap.values.n, 5, "{mode:?}");
        assert!(snap.next.is_empty());
        assert_eq!(snap.metadata.step, Some(5));
    }
    // The compiled default.
    let mut g = chain(5, None);
    g.durability(Durability::Exit);
    let app = g.compile(saver.clone()).unwrap();
    app.invoke(
        Some(DocUpdate::default()),
        RunConfig::thread("default-exit"),
    )
    .await
    .unwrap();
    assert_eq!(checkpoint_count(&saver, "default-exit").await, 1);
}

#[tokio::test]
async fn exit_durability_saves_a_failed_run_resumably() {
    let saver = Arc::new(InMemorySaver::new());
    let fail = Arc::new(AtomicUsize::new(3));
    let app = chain(5, Some(fail.clone())).compile(saver.clone()).unwrap();
    let cfg = || RunConfig::thread("e").with_durability(Durability::Exit);
    assert!(app.invoke(Some(DocUpdate::default()), cfg()).await.is_err());
    assert_eq!(checkpoint_count(&saver, "e").await, 1);
    let snap = app
        .get_state(RunConfig::thread("e"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.values.n, 3);
    assert_eq!(snap.next, ["n3"]);
    assert!(snap.tasks[0].error.is_some());
    fail.store(usize::MAX, Ordering::SeqCst);
    let out = app.invoke(None, cfg()).await.unwrap();
    assert_eq!(out.n, 5);
    assert_eq!(checkpoint_count(&saver, "e").await, 2);
}

#[tokio::test]
async fn exit_durability_saves_interrupts() {
    let runs = counter();
    let saver = Arc::new(InMemorySaver::new());
    let app = approval_graph(runs.clone()).compile(saver.clone()).unwrap();
    let cfg = || RunConfig::thread("ei").with_durability(Durability::Exit);
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    assert_eq!(out.interrupts().len(), 1);
    assert_eq!(checkpoint_count(&saver, "ei").await, 1);
    let out = app
        .invoke_command(Command::resume("fine"), cfg())
        .await
        .unwrap();
    assert_eq!(out.state().log, ["draft", "review:fine", "publish"]);
    assert_eq!(count(&runs, "draft"), 1);
}

#[tokio::test]
async fn nodes_without_checkpoints_skip_their_steps_checkpoint_but_resume_correctly() {
    let saver = Arc::new(InMemorySaver::new());
    let runs = counter();
    let fail = Arc::new(AtomicUsize::new(1));
    let mut g = StateGraph::<Doc>::new();
    let r1 = runs.clone();
    let r2 = runs.clone();
    let f = fail.clone();
    g.add_sync_node_with(
        "cheap",
        NodeOptions::default().checkpoint(false),
        move |_| {
            bump(&r1, "cheap");
            Ok(DocUpdate::default().n(1))
        },
    )
    .add_sync_node("last", move |_| {
        bump(&r2, "last");
        if f.load(Ordering::SeqCst) == 1 {
            return Err("last failed".into());
        }
        Ok(DocUpdate::default().n(10))
    })
    .add_edge(START, "cheap")
    .add_edge("cheap", "last")
    .add_edge("last", END);
    let app = g.compile(saver.clone()).unwrap();
    assert!(app
        .invoke(Some(DocUpdate::default()), RunConfig::thread("k"))
        .await
        .is_err());
    // input + START step; the cheap step wrote none.
    assert_eq!(checkpoint_count(&saver, "k").await, 2);
    // The snapshot follows the cheap step's writes to the failed task still to run.
    let snap = app
        .get_state(RunConfig::thread("k"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.next, ["last"]);
    assert_eq!(snap.values.n, 1, "the cheap step's output");
    assert_eq!(snap.tasks[0].error.as_deref(), Some("last failed"));
    fail.store(0, Ordering::SeqCst);
    let out = app.invoke(None, RunConfig::thread("k")).await.unwrap();
    assert_eq!(out.n, 11);
    assert_eq!(
        count(&runs, "cheap"),
        1,
        "the cheap step's saved writes are reused"
    );
    assert_eq!(count(&runs, "last"), 2);
    assert_eq!(checkpoint_count(&saver, "k").await, 3);

    // A run that ends on a no-checkpoint step still saves its final state.
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node_with("cheap", NodeOptions::default().checkpoint(false), |_| {
        Ok(DocUpdate::default().n(1))
    })
    .add_edge(START, "cheap")
    .add_edge("cheap", END);
    let app = g.compile(saver.clone()).unwrap();
    app.invoke(Some(DocUpdate::default()), RunConfig::thread("k2"))
        .await
        .unwrap();
    let snap = app
        .get_state(RunConfig::thread("k2"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(snap.values.n, 1);
    assert!(snap.next.is_empty());
}

#[tokio::test]
async fn debug_and_custom_stream_events() {
    let mut g = StateGraph::<Doc>::new();
    g.add_node("work", |_s: Arc<Doc>| async {
        for i in 0..3 {
            emit(serde_json::json!({ "progress": i })).await;
        }
        Ok(DocUpdate::default().n(1))
    })
    .add_edge(START, "work")
    .add_edge("work", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let events: Vec<StreamEvent<Doc>> = app
        .stream(
            Some(DocUpdate::default()),
            RunConfig::thread("s"),
            &[StreamMode::Debug, StreamMode::Custom],
        )
        .try_collect()
        .await
        .unwrap();
    let kinds: Vec<String> = events
        .iter()
        .map(|e| match e {
            StreamEvent::Debug(DebugEvent::TaskStart { node, .. }) => format!("start:{node}"),
            StreamEvent::Debug(DebugEvent::TaskEnd { node, .. }) => format!("end:{node}"),
            StreamEvent::Debug(DebugEvent::Checkpoint { step, .. }) => format!("cp:{step}"),
            StreamEvent::Custom { value, node, .. } => format!("{node}:{}", value["progress"]),
            other => format!("{other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "cp:-1",
            "start:__start__",
            "end:__start__",
            "cp:0",
            "start:work",
            "work:0",
            "work:1",
            "work:2",
            "end:work",
            "cp:1"
        ]
    );
    // Interrupts end the stream with an Interrupted event.
    let runs = counter();
    let app = approval_graph(runs)
        .compile(Arc::new(InMemorySaver::new()))
        .unwrap();
    let events: Vec<StreamEvent<Doc>> = app
        .stream(
            Some(DocUpdate::default()),
            RunConfig::thread("s2"),
            &[StreamMode::Updates],
        )
        .try_collect()
        .await
        .unwrap();
    assert!(
        matches!(events.last(), Some(StreamEvent::Interrupted { interrupts }) if interrupts.len() == 1)
    );
    let events: Vec<StreamEvent<Doc>> = app
        .stream_command(
            Command::resume("yes"),
            RunConfig::thread("s2"),
            &[StreamMode::Updates],
        )
        .try_collect()
        .await
        .unwrap();
    assert!(matches!(events.last(), Some(StreamEvent::Updates { node, .. }) if node == "publish"));
}

#[tokio::test]
async fn command_goto_validation() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node_with("a", NodeOptions::default().destinations(["zzz"]), |_| {
        Ok(Command::<Doc>::go(END))
    })
    .add_edge(START, "a");
    assert!(matches!(
        g.compile(Arc::new(InMemorySaver::new())),
        Err(GraphError::UnknownNode { .. })
    ));
    // Without declared destinations a node with no edges cannot reach END.
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node_with("a", NodeOptions::default(), |_| Ok(Command::<Doc>::go(END)))
        .add_edge(START, "a");
    assert!(matches!(
        g.compile(Arc::new(InMemorySaver::new())),
        Err(GraphError::CannotReachEnd { .. })
    ));
    // A goto to an unknown node at run time fails the node's task.
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node_with("a", NodeOptions::default().destinations([END]), |_| {
        Ok(Command::<Doc>::go("ghost"))
    })
    .add_edge(START, "a");
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let err = app
        .invoke(Some(DocUpdate::default()), RunConfig::thread("g"))
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::UnknownNode { .. }), "{err}");
}

/// A resume addressed at the thread's latest checkpoint (the config `get_state` returns) is a
/// resume, not time travel, as in LangGraph: the answers already given and the writes of
/// tasks that finished are kept, and no fork checkpoint is written.
#[tokio::test]
async fn a_resume_addressed_at_the_latest_checkpoint_keeps_what_was_answered() {
    let runs = counter();
    let mut g = StateGraph::<Doc>::new();
    let r = runs.clone();
    g.add_sync_node("ask", move |_| {
        bump(&r, "ask");
        let first: String = interrupt_as("q1")?;
        let second: String = interrupt_as("q2")?;
        Ok(DocUpdate::default().log(vec![format!("{first}+{second}")]))
    })
    .add_edge(START, "ask")
    .add_edge("ask", END);
    let r = runs.clone();
    g.add_sync_node("side", move |_| {
        bump(&r, "side");
        Ok(DocUpdate::default().n(1))
    })
    .add_edge(START, "side")
    .add_edge("side", END);
    let saver = Arc::new(InMemorySaver::new());
    let app = g.compile(saver.clone()).unwrap();
    let thread = || RunConfig::thread("head");
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), thread())
        .await
        .unwrap();
    assert_eq!(out.interrupts()[0].value, "q1");
    let out = app
        .invoke_command(Command::resume("a"), thread())
        .await
        .unwrap();
    assert_eq!(out.interrupts()[0].value, "q2");
    let before = saver.list(&ListQuery::thread("head")).await.unwrap().len();
    let head = app.get_state(thread()).await.unwrap().unwrap();
    let out = app
        .invoke_command(Command::resume("b"), RunConfig::from(head.config))
        .await
        .unwrap();
    assert!(!out.is_interrupted(), "{:?}", out.interrupts());
    assert_eq!(out.state().log, ["a+b"]);
    assert_eq!(out.state().n, 1);
    assert_eq!(
        count(&runs, "side"),
        1,
        "the finished sibling did not run again"
    );
    let history = saver.list(&ListQuery::thread("head")).await.unwrap();
    assert!(
        history
            .iter()
            .all(|t| t.metadata.source != Some(cairn_checkpoint::CheckpointSource::Fork)),
        "no fork checkpoint"
    );
    assert_eq!(history.len(), before + 1, "one checkpoint: the step's");
}

/// A resume value given while nothing is pending is stored and ignored: it does not answer an
/// interrupt raised later in the run (a human approval is not skipped).
#[tokio::test]
async fn a_resume_with_nothing_pending_answers_no_later_interrupt() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", |_| Ok(DocUpdate::default().log(vec!["a".into()])))
        .add_sync_node("b", |_| {
            let ok: String = interrupt_as("confirm?")?;
            Ok(DocUpdate::default().log(vec![format!("b:{ok}")]))
        })
        .add_edge(START, "a")
        .add_edge("a", "b")
        .add_edge("b", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("nothing-pending").with_interrupt_before(["a"]);
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    assert!(out.is_interrupted());
    let out = app
        .invoke_command(Command::resume("yes"), RunConfig::thread("nothing-pending"))
        .await
        .unwrap();
    assert!(out.is_interrupted(), "b must ask: {:?}", out.state().log);
    assert_eq!(out.interrupts()[0].value, "confirm?");
    let out = app
        .invoke_command(
            Command::resume("sure"),
            RunConfig::thread("nothing-pending"),
        )
        .await
        .unwrap();
    assert_eq!(out.state().log, ["a", "b:sure"]);
}

/// Durability exit saves the run when it stops on the recursion limit, as when a node fails
/// (LangGraph saves on any exit): the caller can raise the limit and go on.
#[tokio::test]
async fn exit_durability_saves_a_run_stopped_by_the_recursion_limit() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("inc", |_| Ok(DocUpdate::default().n(1)))
        .add_edge(START, "inc")
        .add_conditional_edges("inc", |s: &Doc| if s.n >= 5 { END } else { "inc" });
    let saver = Arc::new(InMemorySaver::new());
    let app = g.compile(saver.clone()).unwrap();
    let cfg = |limit| {
        RunConfig::thread("limit")
            .with_durability(Durability::Exit)
            .with_recursion_limit(limit)
    };
    let err = app
        .invoke(Some(DocUpdate::default()), cfg(3))
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::RecursionLimit { .. }), "{err}");
    let snap = app
        .get_state(RunConfig::thread("limit"))
        .await
        .unwrap()
        .expect("the stopped run was saved");
    assert_eq!(snap.values.n, 3);
    assert_eq!(snap.next, ["inc"]);
    let out = app.invoke(None, cfg(10)).await.unwrap();
    assert_eq!(out.n, 5);
}

/// Two commands with updates against the same checkpoint (a node that asks twice) both
/// apply: writes of no task accumulate, as in LangGraph, instead of the second update being
/// taken for the first's and dropped.
#[tokio::test]
async fn updates_of_two_commands_on_one_checkpoint_both_apply() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("ask", |_| {
        let first: String = interrupt_as("q1")?;
        let second: String = interrupt_as("q2")?;
        Ok(DocUpdate::default().log(vec![format!("{first}+{second}")]))
    })
    .add_edge(START, "ask")
    .add_edge("ask", END);
    let saver = Arc::new(InMemorySaver::new());
    let app = g.compile(saver.clone()).unwrap();
    let cfg = || RunConfig::thread("twice");
    app.invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    let out = app
        .invoke_command(
            Command::resume("1").with_update(DocUpdate::default().log(vec!["x".into()])),
            cfg(),
        )
        .await
        .unwrap();
    assert_eq!(out.interrupts()[0].value, "q2");
    let out = app
        .invoke_command(
            Command::resume("2").with_update(DocUpdate::default().log(vec!["y".into()])),
            cfg(),
        )
        .await
        .unwrap();
    assert!(!out.is_interrupted());
    assert_eq!(out.state().log, ["x", "y", "1+2"]);
    let snap = app.get_state(cfg()).await.unwrap().unwrap();
    assert_eq!(snap.values.log, ["x", "y", "1+2"]);
}

/// A caller's update on a finished thread is stored on its head; the next new input builds
/// on it instead of dropping it (LangGraph applies such writes before the input).
#[tokio::test]
async fn an_update_command_on_a_finished_thread_is_kept_by_the_next_input() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("count", |_| Ok(DocUpdate::default().n(1)))
        .add_edge(START, "count")
        .add_edge("count", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("kept");
    app.invoke(Some(DocUpdate::default()), cfg()).await.unwrap();
    app.invoke_command(
        Command::update(DocUpdate::default().log(vec!["noted".into()])),
        cfg(),
    )
    .await
    .unwrap();
    let out = app
        .invoke(Some(DocUpdate::default().log(vec!["next".into()])), cfg())
        .await
        .unwrap();
    assert_eq!(out.log, ["noted", "next"]);
    assert_eq!(out.n, 2);
}

/// The latest snapshot's values hold the output of the step's tasks that already finished
/// (left out of `next`), and a caller's update waiting on the head, as LangGraph's live
/// `get_state` does; an older snapshot shows its values as of the start of its step.
#[tokio::test]
async fn the_latest_snapshot_holds_what_finished_tasks_and_updates_wrote() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("a", |_| Ok(DocUpdate::default().log(vec!["a".into()]).n(1)))
        .add_sync_node("b", |_| {
            let v: String = interrupt_as("b?")?;
            Ok(DocUpdate::default().log(vec![format!("b:{v}")]))
        })
        .add_edge(START, "a")
        .add_edge(START, "b")
        .add_edge("a", END)
        .add_edge("b", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("live");
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    assert!(out.is_interrupted());
    let snap = app.get_state(cfg()).await.unwrap().unwrap();
    assert_eq!(snap.next, ["b"]);
    assert_eq!(snap.values.log, ["a"], "a's output");
    assert_eq!(snap.values.n, 1);
    // Addressed by id, the same checkpoint is a record of its step: values as it started.
    let record = app
        .get_state(RunConfig::from(snap.config.clone()))
        .await
        .unwrap()
        .unwrap();
    assert!(record.values.log.is_empty());
    let out = app
        .invoke_command(Command::resume("ok"), cfg())
        .await
        .unwrap();
    assert_eq!(out.state().log, ["a", "b:ok"]);
}

/// A caller's command that sends two packets runs both (its writes apply together, as one
/// task's would).
#[tokio::test]
async fn a_command_sending_two_packets_runs_both() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("ask", |_| {
        let _: String = interrupt_as("go?")?;
        Ok(DocUpdate::default())
    })
    .add_sync_node("w", |s: &Doc| {
        Ok(DocUpdate::default().log(vec![format!("w:{}", s.text)]))
    })
    .add_edge(START, "ask")
    .add_edge("ask", END)
    .add_edge("w", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("two-sends");
    app.invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    let packet = |text: &str| {
        cairn_graph::SendTo::new(
            "w",
            Doc {
                text: text.into(),
                ..Doc::default()
            },
        )
    };
    let out = app
        .invoke_command(
            Command::resume("yes").goto(packet("a")).goto(packet("b")),
            cfg(),
        )
        .await
        .unwrap();
    let mut log = out.state().log.clone();
    log.sort();
    assert_eq!(log, ["w:a", "w:b"]);
}

/// A resume answers the interrupt of a task that runs after steps that wrote no checkpoint
/// (their writes and the interrupt are on the same checkpoint): it is not used up by the
/// replayed steps.
#[tokio::test]
async fn a_resume_reaches_an_interrupt_after_steps_without_checkpoints() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node_with("cheap", NodeOptions::default().checkpoint(false), |_| {
        Ok(DocUpdate::default().n(1))
    })
    .add_sync_node("ask", |_| {
        let v: String = interrupt_as("ok?")?;
        Ok(DocUpdate::default().log(vec![format!("ask:{v}")]))
    })
    .add_edge(START, "cheap")
    .add_edge("cheap", "ask")
    .add_edge("ask", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("cheap-ask");
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    assert_eq!(out.interrupts()[0].value, "ok?");
    let out = app
        .invoke_command(Command::resume("fine"), cfg())
        .await
        .unwrap();
    assert!(!out.is_interrupted(), "{:?}", out.interrupts());
    assert_eq!(out.state().log, ["ask:fine"]);
    assert_eq!(out.state().n, 1);
}

/// Three commands with updates against one checkpoint (a node asking three times): each
/// update is stored once, so the live state shows each once and the run applies each once.
#[tokio::test]
async fn updates_of_three_commands_on_one_checkpoint_apply_once_each() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("ask", |_| {
        let a: String = interrupt_as("1?")?;
        let b: String = interrupt_as("2?")?;
        let c: String = interrupt_as("3?")?;
        Ok(DocUpdate::default().log(vec![format!("{a}{b}{c}")]))
    })
    .add_edge(START, "ask")
    .add_edge("ask", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("thrice");
    app.invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    for (answer, item) in [("a", "x"), ("b", "y")] {
        app.invoke_command(
            Command::resume(answer).with_update(DocUpdate::default().log(vec![item.into()])),
            cfg(),
        )
        .await
        .unwrap();
    }
    let live = app.get_state(cfg()).await.unwrap().unwrap();
    assert_eq!(live.values.log, ["x", "y"]);
    let out = app
        .invoke_command(
            Command::resume("c").with_update(DocUpdate::default().log(vec!["z".into()])),
            cfg(),
        )
        .await
        .unwrap();
    assert_eq!(out.state().log, ["x", "y", "z", "abc"]);
}

/// The live snapshot applies the finished tasks' writes in the order the run applies them
/// (by task path), so its values are what the resumed run continues from.
#[tokio::test]
async fn the_live_snapshot_applies_finished_writes_in_the_runs_order() {
    let mut g = StateGraph::<Doc>::new();
    // Added writer before critic; the run applies them by path (critic's first).
    g.add_sync_node("writer", |_| Ok(DocUpdate::default().log(vec!["w".into()])))
        .add_sync_node("critic", |_| Ok(DocUpdate::default().log(vec!["c".into()])))
        .add_sync_node("human", |_| {
            let v: String = interrupt_as("?")?;
            Ok(DocUpdate::default().log(vec![v]))
        });
    for node in ["writer", "critic", "human"] {
        g.add_edge(START, node).add_edge(node, END);
    }
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("order");
    app.invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    let live = app.get_state(cfg()).await.unwrap().unwrap();
    let out = app
        .invoke_command(Command::resume("h"), cfg())
        .await
        .unwrap();
    // The run applies all three by path (critic, human, writer); the snapshot showed the two
    // that had finished, in the same relative order.
    assert_eq!(out.state().log, ["c", "h", "w"]);
    assert_eq!(live.values.log, ["c", "w"]);
}

/// A resume given while nothing asks is used up by the first step where a node runs, even
/// one that writes no checkpoint: a later node's question is still asked.
#[tokio::test]
async fn a_resume_is_used_up_by_a_fresh_step_without_a_checkpoint() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node_with("a", NodeOptions::default().checkpoint(false), |_| {
        Ok(DocUpdate::default().log(vec!["a".into()]))
    })
    .add_sync_node("b", |_| {
        let ok: String = interrupt_as("confirm?")?;
        Ok(DocUpdate::default().log(vec![format!("b:{ok}")]))
    })
    .add_edge(START, "a")
    .add_edge("a", "b")
    .add_edge("b", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let out = app
        .invoke_outcome(
            Some(DocUpdate::default()),
            RunConfig::thread("fresh").with_interrupt_before(["a"]),
        )
        .await
        .unwrap();
    assert!(out.is_interrupted());
    let out = app
        .invoke_command(Command::resume("yes"), RunConfig::thread("fresh"))
        .await
        .unwrap();
    assert!(out.is_interrupted(), "b must ask: {:?}", out.state().log);
    assert_eq!(out.interrupts()[0].value, "confirm?");
}

/// An answer a checkpoint-less node took is not given again to the next node asking when
/// the thread is continued later: that one asks.
#[tokio::test]
async fn a_stored_answer_is_not_given_to_a_later_question() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node_with("ask1", NodeOptions::default().checkpoint(false), |_| {
        let v: String = interrupt_as("first?")?;
        Ok(DocUpdate::default().log(vec![format!("1:{v}")]))
    })
    .add_sync_node("ask2", |_| {
        let v: String = interrupt_as("second?")?;
        Ok(DocUpdate::default().log(vec![format!("2:{v}")]))
    })
    .add_edge(START, "ask1")
    .add_edge("ask1", "ask2")
    .add_edge("ask2", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("stored");
    app.invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    let out = app
        .invoke_command(Command::resume("x"), cfg())
        .await
        .unwrap();
    assert_eq!(out.interrupts()[0].value, "second?");
    let out = app.invoke_outcome(None, cfg()).await.unwrap();
    assert!(out.is_interrupted(), "{:?}", out.state().log);
    assert_eq!(out.interrupts()[0].value, "second?");
    let out = app
        .invoke_command(Command::resume("y"), cfg())
        .await
        .unwrap();
    assert_eq!(out.state().log, ["1:x", "2:y"]);
}

/// The live snapshot walking steps without checkpoints does not prepare a step's packets
/// again: after sent workers that wrote no checkpoint, only the node still to run is next.
#[tokio::test]
async fn the_live_snapshot_walk_does_not_resend_packets() {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("plan", |_| Ok(DocUpdate::default()))
        .add_sync_node_with("worker", NodeOptions::default().checkpoint(false), |s| {
            Ok(DocUpdate::default().log(vec![format!("w:{}", s.text)]))
        })
        .add_sync_node("review", |_| {
            let _: String = interrupt_as("ok?")?;
            Ok(DocUpdate::default())
        })
        .add_edge(START, "plan")
        .add_conditional_edges("plan", |_: &Doc| {
            ["a", "b"].map(|t| {
                cairn_graph::SendTo::new(
                    "worker",
                    Doc {
                        text: t.into(),
                        ..Doc::default()
                    },
                )
            })
        })
        .add_edge("worker", "review")
        .add_edge("review", END);
    let app = g.compile(Arc::new(InMemorySaver::new())).unwrap();
    let cfg = || RunConfig::thread("walk");
    let out = app
        .invoke_outcome(Some(DocUpdate::default()), cfg())
        .await
        .unwrap();
    assert!(out.is_interrupted());
    let snap = app.get_state(cfg()).await.unwrap().unwrap();
    assert_eq!(snap.next, ["review"]);
    let mut log = snap.values.log.clone();
    log.sort();
    assert_eq!(log, ["w:a", "w:b"]);
}

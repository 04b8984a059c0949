//! Subgraphs: compiled graphs used as nodes. Their checkpoints land in their own namespace
//! with `parents` metadata, interrupts inside them stop and resume the parent run, a failed
//! subgraph run resumes without re-running its finished tasks, and they nest.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_checkpoint::{CheckpointSaver, InMemorySaver, ListQuery};
use cairn_graph::{
    interrupt, Command, CompiledGraph, HistoryQuery, RunConfig, State, StateGraph, StateSnapshot,
    END, START,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Doc {
    #[reducer(append)]
    log: Vec<String>,
    answer: String,
}

async fn history_in<S: State>(graph: &CompiledGraph<S>, ns: &str) -> Vec<StateSnapshot<S>> {
    let config = RunConfig {
        checkpoint_ns: ns.to_owned(),
        ..RunConfig::thread("t")
    };
    graph
        .get_state_history(config, HistoryQuery::default())
        .try_collect()
        .await
        .expect("history")
}

/// Namespaces with checkpoints on thread `t`.
async fn namespaces(saver: &Arc<InMemorySaver>) -> Vec<String> {
    let mut all: Vec<String> = saver
        .list(&ListQuery::default())
        .await
        .expect("list")
        .into_iter()
        .filter(|t| t.config.thread_id == "t")
        .map(|t| t.config.checkpoint_ns)
        .collect();
    all.sort();
    all.dedup();
    all
}

fn asking_child() -> StateGraph<Doc> {
    let mut g = StateGraph::<Doc>::new();
    g.add_sync_node("inner_a", |_| {
        Ok(DocUpdate::default().log(vec!["inner_a".into()]))
    })
    .add_sync_node("inner_ask", |_| {
        let answer = interrupt("deep?")?;
        Ok(DocUpdate::default()
            .log(vec!["inner_ask".into()])
            .answer(answer.as_str().unwrap_or_default().to_owned()))
    })
    .add_edge(START, "inner_a")
    .add_edge("inner_a", "inner_ask")
    .add_edge("inner_ask", END);
    g
}

/// A different state type, mapped in and out.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Draft {
    text: String,
    #[reducer(append)]
    edits: Vec<String>,
}

#[tokio::test]
async fn mapped_subgraph_writes_in_its_namespace_with_parents() {
    let mut child = StateGraph::<Draft>::new();
    child
        .add_sync_node("edit", |d: &Draft| {
            Ok(DraftUpdate::default().edits(vec![format!("edited {}", d.text)]))
        })
        .add_sync_node("polish", |_| {
            Ok(DraftUpdate::default().edits(vec!["polished".into()]))
        })
        .add_edge(START, "edit")
        .add_edge("edit", "polish")
        .add_edge("polish", END);
    let mut parent = StateGraph::<Doc>::new();
    parent
        .add_sync_node("start", |_| {
            Ok(DocUpdate::default().answer("draft".to_owned()))
        })
        .add_subgraph_mapped(
            "write",
            child.compile_without_saver().expect("child"),
            |d: &Doc| Ok(DraftUpdate::default().text(d.answer.clone())),
            |_: &Doc, out: Draft| Ok(DocUpdate::default().log(out.edits)),
        )
        .add_edge(START, "start")
        .add_edge("start", "write")
        .add_edge("write", END);
    let saver = Arc::new(InMemorySaver::new());
    let app = parent.compile(saver.clone()).expect("compile");
    let out = app
        .invoke(Some(DocUpdate::default()), RunConfig::thread("t"))
        .await
        .expect("run");
    assert_eq!(out.log, ["edited draft", "polished"]);
    assert_eq!(out.answer, "draft");

    let root = history_in(&app, "").await;
    // Steps -1..=2 of the parent; `write` ran in step 2, from the step-1 checkpoint.
    assert_eq!(root.len(), 4);
    let from = root
        .iter()
        .find(|s| s.metadata.step == Some(1))
        .expect("step 1");
    let task = &from.tasks[0];
    assert_eq!(task.name, "write");
    let ns = format!("write:{}", task.id);
    assert_eq!(task.checkpoint_ns.as_deref(), Some(ns.as_str()));
    assert_eq!(namespaces(&saver).await, ["".to_owned(), ns.clone()]);

    let child_app = child.compile(saver.clone()).expect("child");
    let sub = history_in(&child_app, &ns).await;
    let steps: Vec<Option<i64>> = sub.iter().map(|s| s.metadata.step).collect();
    assert_eq!(steps, [Some(2), Some(1), Some(0), Some(-1)]);
    let root_id = from.config.checkpoint_id.clone().expect("id");
    for s in &sub {
        assert_eq!(s.config.checkpoint_ns, ns);
        assert_eq!(
            s.metadata.parents.iter().collect::<Vec<_>>(),
            [(&String::new(), &root_id)]
        );
    }
    assert_eq!(sub[0].values.text, "draft");
    assert_eq!(sub[0].values.edits, ["edited draft", "polished"]);
    // The parent's checkpoints have no parents.
    assert!(root.iter().all(|s| s.metadata.parents.is_empty()));
}

#[tokio::test]
async fn failed_subgraph_resumes_without_rerunning_finished_child_tasks() {
    static FIRST: AtomicUsize = AtomicUsize::new(0);
    static LEFT: AtomicUsize = AtomicUsize::new(0);
    static RIGHT: AtomicUsize = AtomicUsize::new(0);
    static FAIL: AtomicBool = AtomicBool::new(true);
    let mut child = StateGraph::<Doc>::new();
    child
        .add_sync_node("first", |_| {
            FIRST.fetch_add(1, Ordering::SeqCst);
            Ok(DocUpdate::default().log(vec!["first".into()]))
        })
        .add_sync_node("left", |_| {
            LEFT.fetch_add(1, Ordering::SeqCst);
            Ok(DocUpdate::default().log(vec!["left".into()]))
        })
        .add_sync_node("right", |_| {
            RIGHT.fetch_add(1, Ordering::SeqCst);
            if FAIL.load(Ordering::SeqCst) {
                return Err("right failed".into());
            }
            Ok(DocUpdate::default().log(vec!["right".into()]))
        })
        .add_edge(START, "first")
        .add_edge("first", "left")
        .add_edge("first", "right")
        .add_edge("left", END)
        .add_edge("right", END);
    let mut parent = StateGraph::<Doc>::new();
    parent
        .add_subgraph("sub", child.compile_without_saver().expect("child"))
        .add_sync_node("after", |_| {
            Ok(DocUpdate::default().log(vec!["after".into()]))
        })
        .add_edge(START, "sub")
        .add_edge("sub", "after")
        .add_edge("after", END);
    let saver = Arc::new(InMemorySaver::new());
    let app = parent.compile(saver.clone()).expect("compile");
    let err = app
        .invoke(Some(DocUpdate::default()), RunConfig::thread("t"))
        .await
        .expect_err("the child fails");
    assert!(err.to_string().contains("right failed"), "{err}");
    assert_eq!(FIRST.load(Ordering::SeqCst), 1);
    assert_eq!(LEFT.load(Ordering::SeqCst), 1);
    assert_eq!(RIGHT.load(Ordering::SeqCst), 1);
    // The child saved its progress in its namespace: `left`'s writes are pending on the
    // child's step-0 checkpoint.
    let state = app
        .get_state_with_subgraphs(RunConfig::thread("t"))
        .await
        .expect("get_state")
        .expect("state");
    assert_eq!(state.state.next, ["sub"]);
    let ns = state.state.tasks[0].checkpoint_ns.clone().expect("ns");
    let sub = &state.subgraphs[&ns];
    assert_eq!(sub.next, ["right"]);
    assert!(sub.tasks.iter().any(|t| t.name == "left" && t.completed));
    assert!(sub
        .tasks
        .iter()
        .any(|t| t.name == "right" && t.error.as_deref() == Some("right failed")));

    FAIL.store(false, Ordering::SeqCst);
    let out = app
        .invoke(None, RunConfig::thread("t"))
        .await
        .expect("resume");
    // `first` and `left` did not run again; only `right` did.
    assert_eq!(FIRST.load(Ordering::SeqCst), 1);
    assert_eq!(LEFT.load(Ordering::SeqCst), 1);
    assert_eq!(RIGHT.load(Ordering::SeqCst), 2);
    // The subgraph's whole state is appended to the parent's (shared-state subgraph).
    assert_eq!(out.log, ["first", "left", "right", "after"]);
    assert_eq!(namespaces(&saver).await, ["".to_owned(), ns]);
}

#[tokio::test]
async fn nested_subgraphs_interrupt_and_resume() {
    static INNER_A: AtomicUsize = AtomicUsize::new(0);
    let mut inner = asking_child();
    inner.add_sync_node("count", |_| {
        INNER_A.fetch_add(1, Ordering::SeqCst);
        Ok(DocUpdate::default())
    });
    inner.add_edge(START, "count").add_edge("count", END);
    let inner = inner.compile_without_saver().expect("inner");
    let mut mid = StateGraph::<Doc>::new();
    mid.add_sync_node("mid_a", |_| {
        Ok(DocUpdate::default().log(vec!["mid_a".into()]))
    })
    .add_subgraph("inner", inner.clone())
    .add_edge(START, "mid_a")
    .add_edge("mid_a", "inner")
    .add_edge("inner", END);
    let mid = mid.compile_without_saver().expect("mid");
    let mut outer = StateGraph::<Doc>::new();
    outer
        .add_subgraph("mid", mid.clone())
        .add_edge(START, "mid")
        .add_edge("mid", END);
    let saver = Arc::new(InMemorySaver::new());
    let app = outer.compile(saver.clone()).expect("compile");

    let first = app
        .invoke_outcome(Some(DocUpdate::default()), RunConfig::thread("t"))
        .await
        .expect("run");
    assert!(first.is_interrupted());
    assert_eq!(first.interrupts().len(), 1);
    assert_eq!(first.interrupts()[0].value, "deep?");
    assert_eq!(INNER_A.load(Ordering::SeqCst), 1);

    let state = app
        .get_state_with_subgraphs(RunConfig::thread("t"))
        .await
        .expect("get_state")
        .expect("state");
    let mid_ns = state.state.tasks[0].checkpoint_ns.clone().expect("mid ns");
    assert!(mid_ns.starts_with("mid:"));
    assert_eq!(state.subgraphs.len(), 2, "{:?}", state.subgraphs.keys());
    let mid_state = &state.subgraphs[&mid_ns];
    assert_eq!(mid_state.next, ["inner"]);
    let inner_ns = mid_state.tasks[0].checkpoint_ns.clone().expect("inner ns");
    assert!(
        inner_ns.starts_with(&format!("{mid_ns}|inner:")),
        "{inner_ns}"
    );
    let inner_state = &state.subgraphs[&inner_ns];
    assert_eq!(inner_state.next, ["inner_ask"]);
    assert_eq!(inner_state.interrupts, first.interrupts());
    assert_eq!(mid_state.interrupts, first.interrupts());

    // Parents: the inner graph's checkpoints name the root and the mid checkpoints they
    // hang off.
    let root_id = state.state.config.checkpoint_id.clone().expect("root id");
    let mid_id = mid_state.config.checkpoint_id.clone().expect("mid id");
    let mid_app = {
        let mut g = StateGraph::<Doc>::new();
        g.add_sync_node("mid_a", |_| Ok(DocUpdate::default()))
            .add_sync_node("inner", |_| Ok(DocUpdate::default()))
            .add_edge(START, "mid_a")
            .add_edge("mid_a", "inner")
            .add_edge("inner", END);
        g.compile(saver.clone()).expect("reader")
    };
    for s in history_in(&mid_app, &mid_ns).await {
        assert_eq!(
            s.metadata.parents.into_iter().collect::<Vec<_>>(),
            [(String::new(), root_id.clone())]
        );
    }
    let inner_reader = {
        let mut g = asking_child();
        g.add_sync_node("count", |_| Ok(DocUpdate::default()));
        g.add_edge(START, "count").add_edge("count", END);
        g.compile(saver.clone()).expect("reader")
    };
    let inner_history = history_in(&inner_reader, &inner_ns).await;
    assert!(!inner_history.is_empty());
    for s in &inner_history {
        assert_eq!(
            s.metadata.parents.clone().into_iter().collect::<Vec<_>>(),
            [
                (String::new(), root_id.clone()),
                (mid_ns.clone(), mid_id.clone())
            ]
        );
    }

    let done = app
        .invoke_command(Command::resume("yes"), RunConfig::thread("t"))
        .await
        .expect("resume");
    assert!(!done.is_interrupted());
    assert_eq!(done.state().answer, "yes");
    // inner's state [mid_a, inner_a, inner_ask] appended to mid's [mid_a], then mid's whole
    // state appended to the root's empty log.
    assert_eq!(done.state().log, ["mid_a", "mid_a", "inner_a", "inner_ask"]);
    // Finished inner tasks did not run again on resume.
    assert_eq!(INNER_A.load(Ordering::SeqCst), 1);
    assert_eq!(
        namespaces(&saver).await,
        ["".to_owned(), mid_ns.clone(), inner_ns.clone()]
    );
    let after = app
        .get_state_with_subgraphs(RunConfig::thread("t"))
        .await
        .expect("get_state")
        .expect("state");
    assert!(after.state.next.is_empty());
    assert!(after.subgraphs.is_empty());
}

#[tokio::test]
async fn resume_map_answers_an_interrupt_inside_a_subgraph() {
    let mut parent = StateGraph::<Doc>::new();
    parent
        .add_subgraph(
            "sub",
            asking_child().compile_without_saver().expect("child"),
        )
        .add_edge(START, "sub")
        .add_edge("sub", END);
    let app = parent
        .compile(Arc::new(InMemorySaver::new()))
        .expect("compile");
    let first = app
        .invoke_outcome(Some(DocUpdate::default()), RunConfig::thread("t"))
        .await
        .expect("run");
    let id = first.interrupts()[0].id.clone();
    // An unknown id answers nothing: the run stops at the same interrupt again.
    let again = app
        .invoke_command(
            Command::resume_map([("0123".to_owned(), "no")]),
            RunConfig::thread("t"),
        )
        .await
        .expect("resume");
    assert_eq!(again.interrupts(), first.interrupts());
    let done = app
        .invoke_command(
            Command::resume_map([(id, "mapped")]),
            RunConfig::thread("t"),
        )
        .await
        .expect("resume");
    assert!(!done.is_interrupted());
    assert_eq!(done.state().answer, "mapped");
    assert_eq!(done.state().log, ["inner_a", "inner_ask"]);
}

/// A subgraph whose two parallel nodes both ask holds two interrupts in one parent task: one
/// resume value for both is ambiguous and refused, as for two interrupting tasks of the
/// parent; answered by id, the run goes on.
#[tokio::test]
async fn one_value_for_two_interrupts_inside_a_subgraph_is_refused() {
    let mut child = StateGraph::<Doc>::new();
    for name in ["x", "y"] {
        child
            .add_sync_node(name, move |_| {
                let v = interrupt(format!("{name}?"))?;
                Ok(DocUpdate::default().log(vec![format!("{name}={}", v.as_str().unwrap_or(""))]))
            })
            .add_edge(START, name)
            .add_edge(name, END);
    }
    let mut parent = StateGraph::<Doc>::new();
    parent
        .add_subgraph("sub", child.compile_without_saver().expect("child"))
        .add_edge(START, "sub")
        .add_edge("sub", END);
    let app = parent
        .compile(Arc::new(InMemorySaver::new()))
        .expect("compile");
    let first = app
        .invoke_outcome(Some(DocUpdate::default()), RunConfig::thread("two"))
        .await
        .expect("run");
    assert_eq!(first.interrupts().len(), 2);
    let err = app
        .invoke_command(Command::resume("v"), RunConfig::thread("two"))
        .await
        .expect_err("ambiguous");
    assert!(
        matches!(err, cairn_graph::GraphError::InvalidArgument(_)),
        "{err}"
    );
    let answers: Vec<(String, String)> = first
        .interrupts()
        .iter()
        .map(|i| (i.id.clone(), format!("{}!", i.value.as_str().unwrap_or(""))))
        .collect();
    let done = app
        .invoke_command(Command::resume_map(answers), RunConfig::thread("two"))
        .await
        .expect("resume");
    assert!(!done.is_interrupted(), "{:?}", done.interrupts());
    let mut log = done.state().log.clone();
    log.sort();
    assert_eq!(log, ["x=x?!", "y=y?!"]);
}

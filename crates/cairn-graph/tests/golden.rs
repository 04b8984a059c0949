//! Rebuilds the LangGraph golden scenarios (tests/golden/*.json, recorded from LangGraph
//! 1.2.24) with Cairn and checks that the checkpoint histories match: step, source, next,
//! values and parent links of every checkpoint, and each call's result.

use std::sync::Arc;

use cairn_checkpoint::InMemorySaver;
use cairn_graph::{
    interrupt, Command, CompiledGraph, HistoryQuery, NodeOptions, RunConfig, SendTo, State,
    StateGraph, StateSnapshot, END, START,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::Value;

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../../tests/golden/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).expect("fixture is JSON")
}

async fn history<S: State>(app: &CompiledGraph<S>) -> Vec<StateSnapshot<S>> {
    app.get_state_history(RunConfig::thread("t1"), HistoryQuery::default())
        .try_collect()
        .await
        .expect("history")
}

/// LangGraph leaves never-written last-value fields out of `values`; Cairn's typed state
/// always has them (at their default). Compare the fields LangGraph shows, and check the
/// others are at their default.
fn assert_values<S: State>(ours: &S, expected: &Value, context: &str) {
    let ours = serde_json::to_value(ours).expect("state to JSON");
    let defaults = serde_json::to_value(S::default()).expect("default to JSON");
    let (Value::Object(ours), Value::Object(expected)) = (ours, expected) else {
        panic!("{context}: values are not objects");
    };
    for (field, value) in &ours {
        match expected.get(field) {
            Some(e) => assert_eq!(value, e, "{context}: field {field}"),
            None => assert_eq!(
                Some(value),
                defaults.get(field),
                "{context}: field {field} should be unset"
            ),
        }
    }
}

/// Interrupt payloads (ids are not comparable: LangGraph hashes with xxh3) per task and in
/// the snapshot, and task errors (presence only: LangGraph stores Python reprs).
fn assert_interrupts<S>(got: &StateSnapshot<S>, want: &Value, context: &str) {
    let values = |v: &Value| -> Vec<Value> {
        v.as_array()
            .map(|a| a.iter().map(|i| i["value"].clone()).collect())
            .unwrap_or_default()
    };
    let ours: Vec<Value> = got.interrupts.iter().map(|i| i.value.clone()).collect();
    assert_eq!(ours, values(&want["interrupts"]), "{context}: interrupts");
    let tasks = want["tasks"].as_array().expect("tasks");
    assert_eq!(got.tasks.len(), tasks.len(), "{context}: tasks");
    for (t, w) in got.tasks.iter().zip(tasks) {
        assert_eq!(
            t.name,
            w["name"].as_str().expect("name"),
            "{context}: task name"
        );
        let ours: Vec<Value> = t.interrupts.iter().map(|i| i.value.clone()).collect();
        assert_eq!(
            ours,
            values(&w["interrupts"]),
            "{context}: task {} interrupts",
            t.name
        );
        assert_eq!(
            t.error.is_some(),
            !w["error"].is_null(),
            "{context}: task {} error",
            t.name
        );
    }
    // Ids are stable and distinct per interrupt.
    let mut ids: Vec<&str> = got.interrupts.iter().map(|i| i.id.as_str()).collect();
    ids.dedup();
    assert_eq!(ids.len(), got.interrupts.len(), "{context}: interrupt ids");
}

/// The checkpoint id that the final history's `index` names, found in the current history
/// (histories only grow, so the position counted from the oldest entry is stable).
fn checkpoint_at<S>(current: &[StateSnapshot<S>], final_len: usize, index: u64) -> String {
    let from_oldest = final_len - 1 - index as usize;
    let entry = &current[current.len() - 1 - from_oldest];
    entry.config.checkpoint_id.clone().expect("id")
}

async fn run_scenario<S>(name: &str, graph: &StateGraph<S>) -> CompiledGraph<S>
where
    S: State,
{
    let fx = fixture(name);
    let final_history = fx["history"]["t1"].as_array().expect("history");
    let final_len = final_history.len();
    let app = graph
        .compile(Arc::new(InMemorySaver::new()))
        .expect("compile");
    for (i, call) in fx["calls"].as_array().expect("calls").iter().enumerate() {
        let context = format!("{name}: call {i}");
        let current = history(&app).await;
        let mut config = RunConfig::thread("t1");
        if let Some(from) = call.get("from_checkpoint").filter(|v| !v.is_null()) {
            let index = from["index"].as_u64().expect("index");
            config = config.with_checkpoint_id(checkpoint_at(&current, final_len, index));
        }
        match call["op"].as_str() {
            Some("invoke") => {
                let input = &call["input"];
                let result = if input["type"] == "Command" {
                    app.invoke_command(Command::resume(input["resume"].clone()), config)
                        .await
                } else if input.is_null() {
                    app.invoke_outcome(None, config).await
                } else {
                    let input: S::Update = serde_json::from_value(input.clone()).expect("input");
                    app.invoke_outcome(Some(input), config).await
                };
                match (result, call.get("raised")) {
                    (Err(e), Some(raised)) => {
                        let message = raised["message"].as_str().expect("message");
                        assert!(e.to_string().contains(message), "{context}: {e}");
                    }
                    (Err(e), None) => panic!("{context}: {e}"),
                    (Ok(_), Some(_)) => panic!("{context}: should have failed"),
                    (Ok(out), None) => {
                        assert_values(out.state(), &call["result"], &context);
                        let want: Vec<&Value> = call["result"]["__interrupt__"]
                            .as_array()
                            .map(|a| a.iter().map(|i| &i["value"]).collect())
                            .unwrap_or_default();
                        let got: Vec<&Value> = out.interrupts().iter().map(|i| &i.value).collect();
                        assert_eq!(got, want, "{context}: interrupts");
                    }
                }
                if let Some(after) = call.get("state_after") {
                    let snapshot = app
                        .get_state(RunConfig::thread("t1"))
                        .await
                        .expect("get_state")
                        .expect("state");
                    let next: Vec<String> =
                        serde_json::from_value(after["next"].clone()).expect("next");
                    assert_eq!(snapshot.next, next, "{context}: state_after.next");
                    assert_interrupts(&snapshot, after, &format!("{context}: state_after"));
                }
            }
            Some("update_state") => {
                let values: S::Update =
                    serde_json::from_value(call["values"].clone()).expect("values");
                let as_node = call["as_node"].as_str();
                app.update_state(config, values, as_node)
                    .await
                    .expect(&context);
            }
            other => panic!("{context}: unexpected op {other:?}"),
        }
    }
    let ours = history(&app).await;
    assert_eq!(ours.len(), final_len, "{name}: number of checkpoints");
    let index_of = |id: &str| {
        ours.iter()
            .position(|s| s.config.checkpoint_id.as_deref() == Some(id))
    };
    for (i, (got, want)) in ours.iter().zip(final_history).enumerate() {
        let context = format!("{name}: history[{i}]");
        assert_eq!(got.metadata.step, want["step"].as_i64(), "{context}: step");
        assert_eq!(
            got.metadata.source.map(|s| s.as_str()),
            want["source"].as_str(),
            "{context}: source"
        );
        let next: Vec<String> = serde_json::from_value(want["next"].clone()).expect("next");
        assert_eq!(got.next, next, "{context}: next");
        assert_values(&got.values, &want["values"], &context);
        assert_interrupts(got, want, &context);
        let parent = got
            .parent_config
            .as_ref()
            .and_then(|p| p.checkpoint_id.as_deref())
            .and_then(index_of);
        assert_eq!(
            parent.map(|p| p as u64),
            want["parent_index"].as_u64(),
            "{context}: parent"
        );
        assert!(want["parents"].as_object().is_some_and(|p| p.is_empty()));
        assert!(got.metadata.parents.is_empty(), "{context}: parents");
        // Deliberate difference: Cairn records a run id on every checkpoint a run writes.
        let from_a_run = want["source"] != "update";
        assert_eq!(
            got.metadata.run_id.is_some(),
            from_a_run,
            "{context}: run id"
        );
    }
    app
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Steps {
    #[reducer(append)]
    steps: Vec<String>,
    value: String,
}

fn abc_graph(interrupt_before_b: bool) -> StateGraph<Steps> {
    let mut g = StateGraph::<Steps>::new();
    for name in ["a", "b", "c"] {
        g.add_sync_node(name, move |_| {
            Ok(StepsUpdate::default().steps(vec![name.to_string()]))
        });
    }
    g.add_edge(START, "a")
        .add_edge("a", "b")
        .add_edge("b", "c")
        .add_edge("c", END);
    if interrupt_before_b {
        g.interrupt_before(["b"]);
    }
    g
}

#[tokio::test]
async fn linear_chain() {
    run_scenario("linear_chain", &abc_graph(false)).await;
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Count {
    count: i64,
}

#[tokio::test]
async fn conditional_loop() {
    let mut g = StateGraph::<Count>::new();
    g.add_sync_node("inc", |s| Ok(CountUpdate::default().count(s.count + 1)))
        .add_edge(START, "inc")
        .add_conditional_edges_with_map(
            "inc",
            |s: &Count| if s.count >= 3 { END } else { "inc" },
            [("inc", "inc"), (END, END)],
        );
    run_scenario("conditional_loop", &g).await;
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Items {
    #[reducer(append)]
    items: Vec<String>,
}

#[tokio::test]
async fn parallel_fanout_append() {
    let mut g = StateGraph::<Items>::new();
    g.add_sync_node("plan", |_| {
        Ok(ItemsUpdate::default().items(vec!["plan".to_string()]))
    });
    // r3 finishes first and r1 last: the result must still be in task-path order.
    for (name, delay) in [("r1", 30u64), ("r2", 15), ("r3", 0)] {
        g.add_node(name, move |_| async move {
            tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
            Ok(ItemsUpdate::default().items(vec![format!("from-{name}")]))
        });
        g.add_edge("plan", name).add_edge(name, END);
    }
    g.add_edge(START, "plan");
    run_scenario("parallel_fanout_append", &g).await;
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Work {
    #[reducer(append)]
    items: Vec<String>,
    x: i64,
}

#[tokio::test]
async fn send_fanout() {
    let mut g = StateGraph::<Work>::new();
    g.add_sync_node("router", |_| {
        Ok(WorkUpdate::default().items(vec!["router".to_string()]))
    })
    .add_sync_node("worker", |s| {
        Ok(WorkUpdate::default().items(vec![format!("w{}", s.x)]))
    })
    .add_edge(START, "router")
    .add_conditional_edges("router", |_: &Work| {
        (0..3)
            .map(|x| {
                SendTo::new(
                    "worker",
                    Work {
                        x,
                        ..Work::default()
                    },
                )
            })
            .collect::<Vec<_>>()
    })
    .add_edge("worker", END);
    run_scenario("send_fanout", &g).await;
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Joined {
    #[reducer(append)]
    items: Vec<String>,
    summary: String,
}

#[tokio::test]
async fn fan_in_join() {
    let mut g = StateGraph::<Joined>::new();
    g.add_sync_node("a", |_| {
        Ok(JoinedUpdate::default().items(vec!["a".to_string()]))
    })
    .add_sync_node("b", |_| {
        Ok(JoinedUpdate::default().items(vec!["b".to_string()]))
    })
    .add_sync_node("join", |s| {
        Ok(JoinedUpdate::default().summary(s.items.join("+")))
    })
    .add_edge(START, "a")
    .add_edge(START, "b")
    .add_edge(["a", "b"], "join")
    .add_edge("join", END);
    run_scenario("fan_in_join", &g).await;
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Chat {
    #[reducer(append)]
    messages: Vec<String>,
}

#[tokio::test]
async fn reinvoke_new_input() {
    let mut g = StateGraph::<Chat>::new();
    g.add_sync_node("reply", |s| {
        let last = s.messages.last().cloned().unwrap_or_default();
        Ok(ChatUpdate::default().messages(vec![format!("echo:{last}")]))
    })
    .add_edge(START, "reply")
    .add_edge("reply", END);
    run_scenario("reinvoke_new_input", &g).await;
}

#[tokio::test]
async fn update_state_then_resume() {
    run_scenario("update_state_then_resume", &abc_graph(true)).await;
}

#[tokio::test]
async fn replay() {
    run_scenario("replay", &abc_graph(false)).await;
}

#[tokio::test]
async fn fork() {
    run_scenario("fork", &abc_graph(false)).await;
}

#[tokio::test]
async fn interrupt_before() {
    run_scenario("interrupt_before", &abc_graph(true)).await;
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Answer {
    answer: String,
}

#[tokio::test]
async fn interrupt_resume() {
    let mut g = StateGraph::<Answer>::new();
    g.add_sync_node("ask", |_| {
        let answer = interrupt("approve?")?;
        Ok(AnswerUpdate::default().answer(answer.as_str().unwrap_or_default().to_string()))
    })
    .add_edge(START, "ask")
    .add_edge("ask", END);
    run_scenario("interrupt_resume", &g).await;
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct TwoAnswers {
    first: String,
    second: String,
}

#[tokio::test]
async fn two_interrupts_one_node() {
    static EXECUTIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let mut g = StateGraph::<TwoAnswers>::new();
    g.add_sync_node("ask", |_| {
        EXECUTIONS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let first: String = cairn_graph::interrupt_as("first?")?;
        let second: String = cairn_graph::interrupt_as("second?")?;
        Ok(TwoAnswersUpdate::default().first(first).second(second))
    })
    .add_edge(START, "ask")
    .add_edge("ask", END);
    run_scenario("two_interrupts_one_node", &g).await;
    let fx = fixture("two_interrupts_one_node");
    assert_eq!(
        EXECUTIONS.load(std::sync::atomic::Ordering::SeqCst) as u64,
        fx["observations"]["ask_executions"]
            .as_u64()
            .expect("count")
    );
}

#[tokio::test]
async fn command_goto() {
    let mut g = StateGraph::<Steps>::new();
    g.add_sync_node_with("a", NodeOptions::default().destinations(["b", "c"]), |_| {
        Ok(Command::update(StepsUpdate::default().steps(vec!["a".to_string()])).goto("c"))
    });
    for name in ["b", "c"] {
        g.add_sync_node(name, move |_| {
            Ok(StepsUpdate::default().steps(vec![name.to_string()]))
        });
    }
    g.add_edge(START, "a").add_edge("b", "c").add_edge("c", END);
    run_scenario("command_goto", &g).await;
}

#[tokio::test]
async fn node_error_then_resume() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static A: AtomicUsize = AtomicUsize::new(0);
    static B: AtomicUsize = AtomicUsize::new(0);
    let mut g = StateGraph::<Items>::new();
    g.add_sync_node("a", |_| {
        A.fetch_add(1, Ordering::SeqCst);
        Ok(ItemsUpdate::default().items(vec!["a".to_string()]))
    })
    .add_sync_node("b", |_| {
        if B.fetch_add(1, Ordering::SeqCst) == 0 {
            return Err("b failed on first attempt".into());
        }
        Ok(ItemsUpdate::default().items(vec!["b".to_string()]))
    })
    .add_edge(START, "a")
    .add_edge(START, "b")
    .add_edge("a", END)
    .add_edge("b", END);
    run_scenario("node_error_then_resume", &g).await;
    let fx = fixture("node_error_then_resume");
    let want = &fx["observations"]["executions_after_resume"];
    assert_eq!(
        A.load(Ordering::SeqCst) as u64,
        want["a"].as_u64().expect("a")
    );
    assert_eq!(
        B.load(Ordering::SeqCst) as u64,
        want["b"].as_u64().expect("b")
    );
}

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct SubState {
    answer: String,
    #[reducer(append)]
    steps: Vec<String>,
}

fn sub_child() -> StateGraph<SubState> {
    let mut sub = StateGraph::<SubState>::new();
    sub.add_sync_node("sub_a", |_| {
        Ok(SubStateUpdate::default().steps(vec!["sub_a".into()]))
    })
    .add_sync_node("sub_ask", |_| {
        let answer = interrupt("sub approve?")?;
        Ok(SubStateUpdate::default()
            .steps(vec!["sub_ask".into()])
            .answer(answer.as_str().unwrap_or_default().to_string()))
    })
    .add_edge(START, "sub_a")
    .add_edge("sub_a", "sub_ask")
    .add_edge("sub_ask", END);
    sub
}

fn sub_parent() -> StateGraph<SubState> {
    let mut g = StateGraph::<SubState>::new();
    g.add_sync_node("pre", |_| {
        Ok(SubStateUpdate::default().steps(vec!["pre".into()]))
    })
    .add_subgraph(
        "sub",
        sub_child().compile_without_saver().expect("child compiles"),
    )
    .add_sync_node("post", |_| {
        Ok(SubStateUpdate::default().steps(vec!["post".into()]))
    })
    .add_edge(START, "pre")
    .add_edge("pre", "sub")
    .add_edge("sub", "post")
    .add_edge("post", END);
    g
}

/// Scenario 13: an interrupt inside a shared-state subgraph, resumed from the parent. The
/// parent history is checked by `run_scenario`; the subgraph's own history (namespace
/// `sub:<task id>`) is checked here, including its `parents` metadata.
#[tokio::test]
async fn subgraph_interrupt() {
    let fx = fixture("subgraph_interrupt");
    let app = run_scenario("subgraph_interrupt", &sub_parent()).await;
    let root = history(&app).await;
    // The subgraph task of the interrupted step names its namespace.
    let sub_task = root[2]
        .tasks
        .iter()
        .find(|t| t.name == "sub")
        .expect("sub task");
    let ns = sub_task.checkpoint_ns.clone().expect("subgraph namespace");
    assert_eq!(ns, format!("sub:{}", sub_task.id));
    let saver = Arc::clone(app.saver().expect("saver"));
    let child = sub_child().compile(saver).expect("child compiles");
    let mut config = RunConfig::thread("t1");
    config.checkpoint_ns = ns.clone();
    let ours: Vec<StateSnapshot<SubState>> = child
        .get_state_history(config, HistoryQuery::default())
        .try_collect()
        .await
        .expect("subgraph history");
    let want = fx["subgraph_histories"]["t1"]["sub:task-1"]
        .as_array()
        .expect("subgraph history");
    assert_eq!(ours.len(), want.len(), "subgraph: number of checkpoints");
    let index_of = |id: &str| {
        ours.iter()
            .position(|s| s.config.checkpoint_id.as_deref() == Some(id))
    };
    for (i, (got, want)) in ours.iter().zip(want).enumerate() {
        let context = format!("subgraph history[{i}]");
        assert_eq!(got.config.checkpoint_ns, ns, "{context}: namespace");
        assert_eq!(got.metadata.step, want["step"].as_i64(), "{context}: step");
        assert_eq!(
            got.metadata.source.map(|s| s.as_str()),
            want["source"].as_str(),
            "{context}: source"
        );
        let next: Vec<String> = serde_json::from_value(want["next"].clone()).expect("next");
        assert_eq!(got.next, next, "{context}: next");
        assert_values(&got.values, &want["values"], &context);
        assert_interrupts(got, want, &context);
        let parent = got
            .parent_config
            .as_ref()
            .and_then(|p| p.checkpoint_id.as_deref())
            .and_then(index_of);
        assert_eq!(
            parent.map(|p| p as u64),
            want["parent_index"].as_u64(),
            "{context}: parent"
        );
        // "checkpoint:t1:root:2": the root checkpoint the subgraph task ran from.
        assert_eq!(want["parents"][""], "checkpoint:t1:root:2");
        let parents: Vec<(&str, &str)> = got
            .metadata
            .parents
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let root_id = root[2].config.checkpoint_id.as_deref().expect("id");
        assert_eq!(parents, [("", root_id)], "{context}: parents");
    }
}

/// The subgraph's state while the run waits in it (the fixture's observation), through
/// `get_state_with_subgraphs`.
#[tokio::test]
async fn subgraph_state_while_interrupted() {
    let fx = fixture("subgraph_interrupt");
    let want = &fx["observations"]["subgraph_state_while_interrupted"][0];
    let app = sub_parent()
        .compile(Arc::new(InMemorySaver::new()))
        .expect("compile");
    let input: SubStateUpdate =
        serde_json::from_value(fx["calls"][0]["input"].clone()).expect("input");
    let out = app
        .invoke_outcome(Some(input), RunConfig::thread("t1"))
        .await
        .expect("run");
    assert!(out.is_interrupted());
    let both = app
        .get_state_with_subgraphs(RunConfig::thread("t1"))
        .await
        .expect("get_state")
        .expect("state");
    let ns = both.state.tasks[0]
        .checkpoint_ns
        .clone()
        .expect("namespace");
    assert_eq!(both.subgraphs.len(), 1);
    let sub = &both.subgraphs[&ns];
    assert_eq!(sub.config.checkpoint_ns, ns);
    assert_eq!(sub.values, want["values"]);
    assert_eq!(sub.metadata.step, want["step"].as_i64());
    assert_eq!(
        sub.metadata.source.map(|s| s.as_str()),
        want["source"].as_str()
    );
    let next: Vec<String> = serde_json::from_value(want["next"].clone()).expect("next");
    assert_eq!(sub.next, next);
    assert_eq!(sub.tasks.len(), 1);
    assert_eq!(sub.tasks[0].name, "sub_ask");
    assert_eq!(sub.interrupts.len(), 1);
    assert_eq!(sub.interrupts[0].value, "sub approve?");
    // The parent sees the same interrupt, with the same id.
    assert_eq!(both.state.interrupts, sub.interrupts);
    // Plain get_state has no subgraph states but names the namespace.
    let plain = app
        .get_state(RunConfig::thread("t1"))
        .await
        .expect("get_state")
        .expect("state");
    assert_eq!(plain.tasks[0].checkpoint_ns.as_deref(), Some(ns.as_str()));
}

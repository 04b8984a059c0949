//! Time travel with checkpoints: run a `plan → draft → review` graph, list its history,
//! replay it from an old checkpoint, fork it by editing an old checkpoint with
//! `update_state`, and fork it into a new thread with `copy_thread`. Runs on an in-memory
//! SQLite store:
//!
//! ```text
//! cargo run -p cairn-graph --example time_travel
//! ```

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_graph::{
    CompiledGraph, HistoryQuery, RunConfig, State, StateGraph, StateSnapshot, END, START,
};
use cairn_sqlite::SqliteSaver;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};

type AnyError = Box<dyn std::error::Error>;

#[derive(Clone, Debug, Default, Serialize, Deserialize, State)]
struct Essay {
    topic: String,
    tone: String,
    outline: String,
    text: String,
    verdict: String,
    /// Which node ran, in order (appended to, so a branch shows its own path).
    #[reducer(append)]
    log: Vec<String>,
}

fn build(saver: SqliteSaver) -> Result<CompiledGraph<Essay>, AnyError> {
    // Counts `draft` runs, to show that a replay re-executes the nodes after its checkpoint.
    let drafts = Arc::new(AtomicUsize::new(0));
    let mut graph = StateGraph::<Essay>::new();
    graph
        .add_sync_node("plan", |s: &Essay| {
            Ok(EssayUpdate::default()
                .outline(format!("intro, two points on {}, conclusion", s.topic))
                .tone("formal")
                .log(vec!["plan".to_owned()]))
        })
        .add_sync_node("draft", move |s: &Essay| {
            let n = drafts.fetch_add(1, Ordering::SeqCst) + 1;
            Ok(EssayUpdate::default()
                .text(format!("draft #{n}: a {} essay on {}", s.tone, s.topic))
                .log(vec!["draft".to_owned()]))
        })
        .add_sync_node("review", |s: &Essay| {
            let verdict = if s.tone == "formal" {
                "approved"
            } else {
                "approved, fun"
            };
            Ok(EssayUpdate::default()
                .verdict(verdict)
                .log(vec!["review".to_owned()]))
        })
        .add_edge(START, "plan")
        .add_edge("plan", "draft")
        .add_edge("draft", "review")
        .add_edge("review", END);
    Ok(graph.compile(Arc::new(saver))?)
}

/// The last 8 characters of a checkpoint id (the first ones are a timestamp, alike for
/// checkpoints written close together).
fn short(id: &str) -> &str {
    id.char_indices().rev().nth(7).map_or(id, |(i, _)| &id[i..])
}

fn id_of(s: &StateSnapshot<Essay>) -> &str {
    s.config.checkpoint_id.as_deref().unwrap_or_default()
}

/// The parent checkpoint's id, `""` for the first checkpoint of a thread.
fn parent_of(s: &StateSnapshot<Essay>) -> &str {
    let parent = s
        .parent_config
        .as_ref()
        .and_then(|p| p.checkpoint_id.as_deref());
    parent.unwrap_or_default()
}

async fn history(
    app: &CompiledGraph<Essay>,
    thread: &str,
) -> Result<Vec<StateSnapshot<Essay>>, AnyError> {
    let snapshots = app.get_state_history(RunConfig::thread(thread), HistoryQuery::default());
    Ok(snapshots.try_collect().await?)
}

/// Prints a thread's checkpoints, newest first.
async fn print_history(app: &CompiledGraph<Essay>, thread: &str) -> Result<(), AnyError> {
    println!(
        "{:>4}  {:<6}  {:<9}  {:<8}  {:<8}  text",
        "step", "source", "next", "id", "parent"
    );
    for s in history(app, thread).await? {
        let source = s.metadata.source.map_or("-", |src| src.as_str());
        println!(
            "{:>4}  {:<6}  {:<9}  {:<8}  {:<8}  {}",
            s.metadata.step.unwrap_or_default(),
            source,
            s.next.join(","),
            short(id_of(&s)),
            short(parent_of(&s)),
            s.values.text,
        );
    }
    Ok(())
}

/// Prints a thread's checkpoints as a tree, following parent links from the oldest: a
/// chain of checkpoints stays in one column, and each later branch is indented under `\_`.
async fn print_tree(app: &CompiledGraph<Essay>, thread: &str) -> Result<(), AnyError> {
    let mut snapshots = history(app, thread).await?;
    snapshots.reverse();
    let mut children: BTreeMap<&str, Vec<&StateSnapshot<Essay>>> = BTreeMap::new();
    for s in &snapshots {
        children.entry(parent_of(s)).or_default().push(s);
    }
    let roots = children.get("").into_iter().flatten();
    let mut stack: Vec<(&StateSnapshot<Essay>, usize, bool)> =
        roots.map(|s| (*s, 0, false)).collect();
    while let Some((s, depth, branch)) = stack.pop() {
        let source = s.metadata.source.map_or("-", |src| src.as_str());
        let step = s.metadata.step.unwrap_or_default();
        let next = if s.next.is_empty() {
            "(done)".to_owned()
        } else {
            format!("next {}", s.next.join(","))
        };
        let indent = match (depth, branch) {
            (0, _) => String::new(),
            (d, true) => format!("{}\\_ ", "   ".repeat(d - 1)),
            (d, false) => "   ".repeat(d),
        };
        let id = short(id_of(s));
        let from = if branch {
            format!("  <- branches off {}", short(parent_of(s)))
        } else {
            String::new()
        };
        println!(
            "{indent}{id} step {step:>2} {source:<6} {next:<14} {}{from}",
            s.values.text
        );
        let kids = children
            .get(id_of(s))
            .map(Vec::as_slice)
            .unwrap_or_default();
        for (i, kid) in kids.iter().enumerate().rev() {
            stack.push((*kid, depth + usize::from(i > 0), i > 0));
        }
    }
    Ok(())
}

async fn run() -> Result<(), AnyError> {
    let app = build(SqliteSaver::in_memory()?)?;
    let thread = RunConfig::thread("essay");

    println!("== 1. Run plan -> draft -> review on thread \"essay\" ==");
    let input = EssayUpdate::default().topic("rivers");
    let out = app.invoke(Some(input), thread.clone()).await?;
    println!(
        "text: {}\nverdict: {}\nlog: {:?}\n",
        out.text, out.verdict, out.log
    );

    println!("== 2. History (newest first) ==");
    print_history(&app, "essay").await?;
    let snapshots = history(&app, "essay").await?;
    let Some(before_draft) = snapshots.iter().find(|s| s.next == ["draft"]) else {
        return Err("no checkpoint before draft".into());
    };
    let old_id = before_draft
        .config
        .checkpoint_id
        .clone()
        .unwrap_or_default();

    println!(
        "\n== 3. Replay from checkpoint {} (before draft) ==",
        short(&old_id)
    );
    let replayed = app
        .invoke(None, thread.clone().with_checkpoint_id(&old_id))
        .await?;
    println!("text: {}\nlog: {:?}", replayed.text, replayed.log);
    println!("draft and review ran again; a `fork` checkpoint starts the new branch:");
    print_history(&app, "essay").await?;

    println!(
        "\n== 4. Fork: update_state on checkpoint {} with tone = \"playful\", then resume ==",
        short(&old_id)
    );
    let edit = EssayUpdate::default().tone("playful");
    let fork = app
        .update_state(before_draft.config.clone(), edit, Some("plan"))
        .await?;
    let forked = app.invoke(None, fork).await?;
    println!("text: {}\nverdict: {}", forked.text, forked.verdict);
    println!("every branch of thread \"essay\" (\\_ marks where a branch leaves its parent):");
    print_tree(&app, "essay").await?;
    let first_end = thread.clone().with_checkpoint_id(id_of(&snapshots[0]));
    if let Some(original) = app.get_state(first_end).await? {
        println!(
            "the first run's final checkpoint is intact: {}",
            original.values.text
        );
    }

    println!("\n== 5. Fork into a new thread with copy_thread ==");
    app.copy_thread("essay", "essay-copy").await?;
    let copy = RunConfig::thread("essay-copy");
    let rerun = app
        .invoke(Some(EssayUpdate::default().topic("mountains")), copy)
        .await?;
    println!(
        "essay-copy after a new run on \"mountains\": {} ({})",
        rerun.text, rerun.verdict
    );
    let head = app
        .get_state(thread)
        .await?
        .map(|s| s.values.text)
        .unwrap_or_default();
    println!("essay is unchanged:                          {head}");
    let (a, b) = (
        history(&app, "essay").await?.len(),
        history(&app, "essay-copy").await?.len(),
    );
    println!("checkpoints: essay {a}, essay-copy {b} (the copy's {a} plus its new run)");
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        None => {}
        Some("-h" | "--help") => {
            println!("usage: time_travel   (no arguments)");
            return ExitCode::SUCCESS;
        }
        Some(arg) => {
            eprintln!("unexpected argument {arg:?}\nusage: time_travel   (no arguments)");
            return ExitCode::from(2);
        }
    }
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

//! `cairn demo`: a durable workflow you can kill and resume.
//!
//! The workflow writes a short article about `--topic`:
//!
//! ```text
//!                ┌─ research_history ─┐
//! START → plan ──┼─ research_practice ┼─→ summarize → review → publish → END
//!                └─ research_risks ───┘
//! ```
//!
//! Every node calls a deterministic fake model (its text is built from its inputs) after a
//! simulated latency (`--delay-ms`, 150 ms by default), so the same inputs always give the
//! same article. The three research nodes run in parallel in one super-step; `summarize`
//! waits for all three. Each super-step is saved as a checkpoint in `--db`
//! (`./cairn-demo.db` by default) on thread `--thread` (`demo`).
//!
//! * **Crash.** `--crash-after N` kills the process with SIGKILL (abort on non-Unix) right
//!   after the N-th super-step of this invocation was checkpointed.
//! * **Resume.** When the thread's latest checkpoint still has tasks to run, `cairn demo`
//!   prints `resuming thread demo from step K` and continues from there; tasks of step K
//!   whose writes were already saved are not run again.
//! * **Finished thread.** When the thread's last run finished, `cairn demo` starts a new
//!   run *on the same thread*: the next edition of the article (`edition` + 1, `published`
//!   keeps every edition), so the history shows both runs. `--fresh` deletes the thread
//!   first and starts from edition 1.
//!
//! Progress (one line per node start and finish, one per checkpoint) goes to stderr; the
//! article, the thread's history and the commands to inspect it go to stdout.
//!
//! JSON shape (`--json`):
//! ```json
//! {"thread_id": "demo", "db": "./cairn-demo.db",
//!  "mode": "new" | "resumed" | "next_edition",
//!  "resumed_from_step": 3, "steps_run": 6, "edition": 1,
//!  "article": "Edition 1: …", "published": ["Edition 1: …"],
//!  "history": {"…": "the `cairn history --json` document of the thread"}}
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use cairn_checkpoint::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointSource, CheckpointTuple, ListQuery, PruneStrategy, TypedValue,
};
use cairn_graph::{
    current_task, CompiledGraph, GraphError, RunConfig, State, StateGraph, END, START,
};
use serde::{Deserialize, Serialize};

use super::history::{self, HistoryReport};
use super::{write_json, Ctx};
use crate::backend::{open, Mode};
use crate::cli::DemoArgs;
use crate::error::{CliError, Result};

/// The demo workflow's state: one channel per field.
#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
pub struct Article {
    /// What the article is about.
    pub topic: String,
    /// Which edition this run writes (1 for the first run of a thread).
    pub edition: u32,
    /// Section titles, written by `plan`.
    pub outline: Vec<String>,
    /// Section title → research notes, one entry per research node.
    #[reducer(merge)]
    pub research: BTreeMap<String, String>,
    /// The article text, written by `summarize`.
    pub draft: String,
    /// The reviewer's verdict.
    pub verdict: String,
    /// Every published edition's headline.
    #[reducer(append)]
    pub published: Vec<String>,
    /// One line per node run.
    #[reducer(append)]
    pub log: Vec<String>,
}

/// The research nodes, with the outline section each covers.
pub const RESEARCH: [(&str, usize); 3] = [
    ("research_history", 0),
    ("research_practice", 1),
    ("research_risks", 2),
];

/// A deterministic stand-in for a language model: picks phrases by a hash of the prompt.
pub fn fake_model(prompt: &str, choices: &[&str]) -> String {
    // FNV-1a: stable across runs and platforms.
    let hash = prompt.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let n = choices.len().max(1) as u64;
    let first = choices.get((hash % n) as usize).copied().unwrap_or("");
    let second = choices
        .get(((hash / n + 1) % n) as usize)
        .copied()
        .unwrap_or("");
    if first == second {
        first.to_owned()
    } else {
        format!("{first}; {second}")
    }
}

/// Adds a node that calls the fake model: announces itself, waits the simulated latency,
/// computes its update with `work`, and announces what it wrote.
fn add_model_node<F>(g: &mut StateGraph<Article>, name: &str, delay: Duration, work: F)
where
    F: Fn(&Article) -> ArticleUpdate + Send + Sync + 'static,
{
    let work = Arc::new(work);
    g.add_node(name, move |s: Arc<Article>| {
        let work = Arc::clone(&work);
        async move {
            let task = current_task();
            if let Some(task) = &task {
                note!("step {:>2}  ▸ {}", task.step, task.name);
            }
            tokio::time::sleep(delay).await;
            let update = work(&s);
            if let Some(task) = &task {
                note!(
                    "step {:>2}  ✓ {:<18} {}",
                    task.step,
                    task.name,
                    describe(&update)
                );
            }
            Ok(update)
        }
    });
}

fn section_title(outline: &[String], index: usize) -> String {
    outline
        .get(index)
        .cloned()
        .unwrap_or_else(|| format!("section {}", index + 1))
}

fn plan(s: &Article) -> ArticleUpdate {
    let topic = s.topic.as_str();
    let outline = vec![
        format!("Where {topic} came from"),
        format!("{} in practice", capitalize(topic)),
        format!("What can go wrong with {topic}"),
    ];
    ArticleUpdate::default()
        .log(vec![format!(
            "plan: {} sections for edition {}",
            outline.len(),
            s.edition
        )])
        .outline(outline)
}

fn research(s: &Article, node: &str, index: usize) -> ArticleUpdate {
    let title = section_title(&s.outline, index);
    let facts: &[&str] = match index {
        0 => &[
            "it grew out of database transaction logs",
            "workflow engines made it mainstream",
            "early systems replayed every step from the start",
            "checkpointing borrowed ideas from scientific computing",
        ],
        1 => &[
            "each step's result is saved before the next step starts",
            "a crashed run resumes from its last checkpoint",
            "parallel branches are joined deterministically",
            "histories can be inspected, diffed and forked",
        ],
        _ => &[
            "side effects may run twice unless they are idempotent",
            "state grows if every step stores everything",
            "non-deterministic steps make replays diverge",
            "old checkpoints need pruning",
        ],
    };
    let notes = format!(
        "{title}: {}.",
        fake_model(&format!("{}|{title}|{}", s.topic, s.edition), facts)
    );
    ArticleUpdate::default()
        .log(vec![format!(
            "{node}: {} words",
            notes.split_whitespace().count()
        )])
        .research(BTreeMap::from([(title, notes)]))
}

fn summarize(s: &Article) -> ArticleUpdate {
    let mut draft = format!("# {} (edition {})\n", capitalize(&s.topic), s.edition);
    for (i, title) in s.outline.iter().enumerate() {
        let notes = s.research.get(title).map_or("(no notes)", String::as_str);
        draft.push_str(&format!("\n{}. {notes}", i + 1));
    }
    let words = draft.split_whitespace().count();
    ArticleUpdate::default()
        .log(vec![format!("summarize: draft of {words} words")])
        .draft(draft)
}

fn review(s: &Article) -> ArticleUpdate {
    let words = s.draft.split_whitespace().count();
    let sections = s.draft.lines().filter(|l| l.contains(". ")).count();
    let tone = fake_model(
        &s.draft,
        &["clear structure", "concrete examples", "honest about risks"],
    );
    let verdict = format!("approved: {words} words, {sections} sections ({tone})");
    ArticleUpdate::default()
        .log(vec![format!("review: {verdict}")])
        .verdict(verdict)
}

fn publish(s: &Article) -> ArticleUpdate {
    let headline = format!(
        "Edition {}: {} — {} words",
        s.edition,
        capitalize(&s.topic),
        s.draft.split_whitespace().count()
    );
    ArticleUpdate::default()
        .log(vec![format!("publish: {headline}")])
        .published(vec![headline])
}

/// Builds the workflow graph with `delay` of simulated model latency per node.
pub fn build_graph(delay: Duration) -> StateGraph<Article> {
    let mut g = StateGraph::<Article>::new();
    add_model_node(&mut g, "plan", delay, plan);
    for (node, index) in RESEARCH {
        add_model_node(&mut g, node, delay, move |s| research(s, node, index));
    }
    add_model_node(&mut g, "summarize", delay, summarize);
    add_model_node(&mut g, "review", delay, review);
    add_model_node(&mut g, "publish", delay, publish);
    g.add_edge(START, "plan");
    for (node, _) in RESEARCH {
        g.add_edge("plan", node);
    }
    g.add_edge([RESEARCH[0].0, RESEARCH[1].0, RESEARCH[2].0], "summarize");
    g.add_edge("summarize", "review")
        .add_edge("review", "publish")
        .add_edge("publish", END);
    g
}

fn capitalize(text: &str) -> String {
    let mut chars = text.chars();
    match chars.next() {
        Some(c) => c.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// What one node's update says, in a few words.
fn describe(update: &ArticleUpdate) -> String {
    update
        .log
        .as_ref()
        .and_then(|l| l.first())
        .and_then(|line| line.split_once(": ").map(|(_, rest)| rest.to_owned()))
        .unwrap_or_default()
}

/// Wraps the demo's saver to report each checkpoint as it is saved, and to crash on demand
/// right after the N-th super-step's checkpoint is durable.
struct Narrator {
    inner: Arc<dyn CheckpointSaver>,
    crash_after: Option<u64>,
    /// The command that resumes the run, for the crash message.
    rerun: String,
    loops: AtomicU64,
    last_source: Mutex<Option<CheckpointSource>>,
}

impl Narrator {
    fn new(inner: Arc<dyn CheckpointSaver>, crash_after: Option<u64>, rerun: String) -> Self {
        Narrator {
            inner,
            crash_after,
            rerun,
            loops: AtomicU64::new(0),
            last_source: Mutex::new(None),
        }
    }

    /// Super-steps checkpointed through this saver.
    fn super_steps(&self) -> u64 {
        self.loops.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl CheckpointSaver for Narrator {
    async fn get_tuple(
        &self,
        config: &CheckpointConfig,
    ) -> cairn_checkpoint::Result<Option<CheckpointTuple>> {
        self.inner.get_tuple(config).await
    }

    async fn list(&self, query: &ListQuery) -> cairn_checkpoint::Result<Vec<CheckpointTuple>> {
        self.inner.list(query).await
    }

    async fn put(
        &self,
        config: &CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> cairn_checkpoint::Result<CheckpointConfig> {
        let (step, source) = (metadata.step.unwrap_or(-1), metadata.source);
        let stored = self
            .inner
            .put(config, checkpoint, metadata, new_versions)
            .await?;
        let id = stored.checkpoint_id.as_deref().unwrap_or("?");
        let previous = {
            let mut last = self
                .last_source
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::replace(&mut *last, source)
        };
        match source {
            Some(CheckpointSource::Loop) => {
                if previous == Some(CheckpointSource::Input) {
                    note!("step {step:>2}  ✓ start              input routed to plan");
                }
                note!("step {step:>2}  ⤷ checkpoint {id} saved");
                let n = self.loops.fetch_add(1, Ordering::SeqCst) + 1;
                if self.crash_after == Some(n) {
                    crash(n, &self.rerun);
                }
            }
            Some(other) => note!("step {step:>2}  ⤷ {} checkpoint {id} saved", other.as_str()),
            None => note!("step {step:>2}  ⤷ checkpoint {id} saved"),
        }
        Ok(stored)
    }

    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> cairn_checkpoint::Result<()> {
        self.inner
            .put_writes(config, writes, task_id, task_path)
            .await
    }

    async fn delete_thread(&self, thread_id: &str) -> cairn_checkpoint::Result<()> {
        self.inner.delete_thread(thread_id).await
    }

    async fn copy_thread(&self, source: &str, target: &str) -> cairn_checkpoint::Result<()> {
        self.inner.copy_thread(source, target).await
    }

    async fn prune(
        &self,
        thread_ids: &[String],
        strategy: PruneStrategy,
    ) -> cairn_checkpoint::Result<()> {
        self.inner.prune(thread_ids, strategy).await
    }

    async fn delete_for_runs(&self, run_ids: &[String]) -> cairn_checkpoint::Result<()> {
        self.inner.delete_for_runs(run_ids).await
    }

    fn get_next_version(&self, current: Option<&ChannelVersion>) -> ChannelVersion {
        self.inner.get_next_version(current)
    }

    fn get_next_version_in_run(
        &self,
        current: Option<&ChannelVersion>,
        run_suffix: u64,
    ) -> ChannelVersion {
        self.inner.get_next_version_in_run(current, run_suffix)
    }
}

/// What `cairn demo` did.
#[derive(Debug, Clone, Serialize)]
pub struct DemoReport {
    /// The thread.
    pub thread_id: String,
    /// The database (passwords hidden).
    pub db: String,
    /// `new`, `resumed` or `next_edition`.
    pub mode: &'static str,
    /// The step the run resumed at (`mode: resumed`).
    pub resumed_from_step: Option<i64>,
    /// Super-steps run by this invocation.
    pub steps_run: u64,
    /// The edition the run wrote.
    pub edition: u32,
    /// The headline published by this run.
    pub article: Option<String>,
    /// Every headline published on the thread.
    pub published: Vec<String>,
    /// The thread's history (newest first).
    pub history: HistoryReport,
}

fn graph_error(e: GraphError) -> CliError {
    match e {
        GraphError::Checkpoint(e) => CliError::Saver(e),
        other => CliError::Demo(other.to_string()),
    }
}

/// Kills this process as a crash would: no destructors, no flushing.
fn crash(steps: u64, rerun: &str) -> ! {
    note!(
        "💥 simulated crash after {steps} super-step{} (the process kills itself); run `{rerun}` to resume",
        if steps == 1 { "" } else { "s" }
    );
    #[cfg(unix)]
    // SAFETY: kill(2) with our own pid and SIGKILL has no memory-safety preconditions.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
    }
    std::process::abort()
}

/// The metadata key and value every checkpoint the demo writes carries (forks keep it).
const JOB_KEY: &str = "job";
const JOB: &str = "cairn-demo";

/// Refuses a thread whose latest checkpoint the demo did not write: running the demo on it
/// would put the demo's state over an application's (and `--fresh` would delete it).
async fn refuse_other_threads(saver: &dyn CheckpointSaver, thread: &str, db: &str) -> Result<()> {
    let Some(latest) = saver.get_tuple(&CheckpointConfig::thread(thread)).await? else {
        return Ok(());
    };
    if latest.metadata.extra.get(JOB_KEY).and_then(|v| v.as_str()) == Some(JOB) {
        return Ok(());
    }
    Err(CliError::Usage(format!(
        "thread {thread:?} in {db} was not written by `cairn demo` (its latest checkpoint, \
         {}, has no metadata {JOB_KEY}={JOB:?}); the demo leaves it alone, --fresh too. Pick \
         another thread with --thread (the demo's own is \"demo\")",
        latest.checkpoint.id
    )))
}

/// ` --db <db>` when the database is not the demo's default, for commands shown to people.
fn db_option(ctx: &Ctx) -> String {
    if ctx.db == "./cairn-demo.db" {
        String::new()
    } else {
        format!(" --db {}", shell_word(&ctx.db))
    }
}

/// The command that runs the demo again on the same database and thread.
fn rerun_command(ctx: &Ctx, thread: &str) -> String {
    let thread = if thread == "demo" {
        String::new()
    } else {
        format!(" --thread {}", shell_word(thread))
    };
    format!("cairn{} demo{thread}", db_option(ctx))
}

/// Runs `cairn demo`.
pub async fn run(ctx: &Ctx, args: &DemoArgs, out: &mut dyn Write) -> Result<()> {
    if args.crash_after == Some(0) {
        return Err(CliError::Usage(
            "--crash-after needs at least 1 super-step".into(),
        ));
    }
    let store = open(&ctx.db, Mode::Create).await?;
    let narrator = Arc::new(Narrator::new(
        store.saver.clone(),
        args.crash_after,
        rerun_command(ctx, &args.thread),
    ));
    let app: CompiledGraph<Article> = build_graph(Duration::from_millis(args.delay_ms))
        .compile(narrator.clone())
        .map_err(graph_error)?;
    let thread = args.thread.as_str();
    refuse_other_threads(store.saver.as_ref(), thread, &store.name).await?;
    if args.fresh {
        store.saver.delete_thread(thread).await?;
        note!("deleted thread {thread:?} (--fresh)");
    }
    let snapshot = app
        .get_state(RunConfig::thread(thread))
        .await
        .map_err(graph_error)?;
    let (mode, input, edition, resumed_from) = match &snapshot {
        None => {
            note!(
                "cairn demo: new run on thread {thread:?} in {}: an article about {:?}",
                store.name,
                args.topic
            );
            let input = ArticleUpdate::default()
                .topic(args.topic.clone())
                .edition(1u32);
            ("new", Some(input), 1, None)
        }
        Some(s) if !s.tasks.is_empty() => {
            let from = s.metadata.step.unwrap_or(-1) + 1;
            println_resume(thread, from, s);
            ("resumed", None, s.values.edition, Some(from))
        }
        Some(s) => {
            let edition = s.values.edition + 1;
            note!(
                "thread {thread:?} finished its last run (edition {}); starting edition {edition} on the same thread (--fresh starts over)",
                s.values.edition
            );
            let input = ArticleUpdate::default()
                .topic(args.topic.clone())
                .edition(edition);
            ("next_edition", Some(input), edition, None)
        }
    };
    let config = RunConfig::thread(thread)
        .with_metadata(JOB_KEY, JOB)
        .with_metadata("edition", edition);
    let state = app.invoke(input, config).await.map_err(graph_error)?;
    let steps_run = narrator.super_steps();
    let history = history::collect(store.saver.as_ref(), thread, "", None, None).await?;
    let article = (state.edition == edition)
        .then(|| state.published.last().cloned())
        .flatten();
    let report = DemoReport {
        thread_id: thread.to_owned(),
        db: store.name.clone(),
        mode,
        resumed_from_step: resumed_from,
        steps_run,
        edition,
        article,
        published: state.published.clone(),
        history,
    };
    if ctx.json {
        return write_json(out, &report);
    }
    print_human(&report, &state, ctx, out)
}

fn println_resume(thread: &str, from: i64, s: &cairn_graph::StateSnapshot<Article>) {
    note!("resuming thread {thread} from step {from}");
    let done: Vec<&str> = s
        .tasks
        .iter()
        .filter(|t| t.completed)
        .map(|t| t.name.as_str())
        .collect();
    let todo: Vec<&str> = s
        .tasks
        .iter()
        .filter(|t| !t.completed)
        .map(|t| t.name.as_str())
        .collect();
    if !todo.is_empty() {
        note!("  to run: {}", todo.join(", "));
    }
    if !done.is_empty() {
        note!(
            "  already done before the crash (saved writes, not run again): {}",
            done.join(", ")
        );
    }
}

fn print_human(r: &DemoReport, state: &Article, ctx: &Ctx, out: &mut dyn Write) -> Result<()> {
    let how = match (r.mode, r.resumed_from_step) {
        ("resumed", Some(step)) => format!("resumed at step {step}"),
        ("next_edition", _) => "a new run on the finished thread".to_owned(),
        _ => "a new thread".to_owned(),
    };
    writeln!(
        out,
        "Run finished on thread {:?} ({how}; {} super-step{} in this process).",
        r.thread_id,
        r.steps_run,
        if r.steps_run == 1 { "" } else { "s" }
    )?;
    writeln!(out)?;
    for line in state.draft.lines() {
        writeln!(out, "    {line}")?;
    }
    writeln!(out)?;
    writeln!(out, "Review: {}", state.verdict)?;
    writeln!(out, "Published so far on this thread:")?;
    for p in &r.published {
        writeln!(out, "  • {p}")?;
    }
    writeln!(out)?;
    history::print_human(&r.history, out)?;
    let db = db_option(ctx);
    let t = shell_word(&r.thread_id);
    writeln!(out)?;
    writeln!(out, "Inspect it:")?;
    writeln!(out, "  cairn{db} history {t}")?;
    writeln!(out, "  cairn{db} show {t}")?;
    let ids: Vec<&str> = r
        .history
        .checkpoints
        .iter()
        .map(|c| c.checkpoint_id.as_str())
        .collect();
    if ids.len() >= 2 {
        writeln!(
            out,
            "  cairn{db} diff {t} {} {}",
            ids[ids.len().min(4) - 1],
            ids[0]
        )?;
    }
    if let Some(research_done) = r
        .history
        .checkpoints
        .iter()
        .find(|c| c.changed.iter().any(|ch| ch == "research"))
    {
        writeln!(
            out,
            "  cairn{db} fork {t} {} --to {}-branch",
            research_done.checkpoint_id, r.thread_id
        )?;
    }
    writeln!(out, "Run `cairn{db} demo --crash-after 3` to kill a run midway, then `cairn{db} demo` to resume it.")?;
    Ok(())
}

/// `word` quoted for a POSIX shell when it needs it.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@=+,".contains(c))
    {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_checkpoint::InMemorySaver;

    #[test]
    fn fake_model_is_deterministic_and_input_dependent() {
        let choices = ["a", "b", "c", "d"];
        assert_eq!(fake_model("x", &choices), fake_model("x", &choices));
        let outputs: std::collections::BTreeSet<String> = (0..20)
            .map(|i| fake_model(&format!("prompt {i}"), &choices))
            .collect();
        assert!(outputs.len() > 1);
    }

    #[tokio::test]
    async fn the_workflow_writes_an_article() {
        let app = build_graph(Duration::ZERO)
            .compile(Arc::new(InMemorySaver::new()))
            .unwrap();
        let input = ArticleUpdate::default().topic("testing").edition(1u32);
        let out = app
            .invoke(Some(input), RunConfig::thread("t"))
            .await
            .unwrap();
        assert_eq!(out.outline.len(), 3);
        assert_eq!(out.research.len(), 3);
        assert!(out.draft.starts_with("# Testing (edition 1)"));
        assert!(out.verdict.starts_with("approved"));
        assert_eq!(out.published.len(), 1);
        // plan, three research nodes, summarize, review, publish: one log line each.
        assert_eq!(out.log.len(), 7);
        assert_eq!(shell_word("a b"), "'a b'");
        assert_eq!(shell_word("./x.db"), "./x.db");
    }
}

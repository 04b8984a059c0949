//! `cairn threads`: every thread with its latest checkpoint.
//!
//! JSON shape:
//! ```json
//! {"threads": [{"thread_id": "demo", "checkpoints": 9, "namespaces": [""],
//!               "latest": {"thread_id": "demo", "checkpoint_ns": "", "checkpoint_id": "1f0…",
//!                          "ts": "2026-…Z", "step": 5, "source": "loop"}}],
//!  "total_threads": 1, "total_checkpoints": 9}
//! ```
//! `latest` is the newest checkpoint of the root namespace (of any namespace when the thread
//! has none in the root). Threads are ordered most recently active first; `--limit N`
//! keeps the first N (`total_threads` still counts all).
//!
//! The listing comes from [`CheckpointSaver::list_threads`](cairn_checkpoint::CheckpointSaver::list_threads),
//! read [`THREAD_PAGE`] threads at a time: counts and latest checkpoints only, no channel
//! values.

use std::collections::BTreeSet;
use std::io::Write;

use cairn_checkpoint::LatestCheckpoint;
use serde::Serialize;

use super::{write_json, CheckpointRef, Ctx};
use crate::backend::{open, Mode};
use crate::cli::ThreadsArgs;
use crate::error::Result;
use crate::progress::Progress;
use crate::render;

/// How many threads one `list_threads` call returns at most.
pub const THREAD_PAGE: usize = 500;

/// One thread in the listing.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadSummary {
    /// The thread.
    pub thread_id: String,
    /// Number of checkpoints, all namespaces together.
    pub checkpoints: u64,
    /// Its namespaces (`""`: root graph).
    pub namespaces: BTreeSet<String>,
    /// Its latest checkpoint.
    pub latest: CheckpointRef,
}

/// The whole listing.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadsReport {
    /// The threads, most recently active first.
    pub threads: Vec<ThreadSummary>,
    /// Number of threads in the database.
    pub total_threads: usize,
    /// Number of checkpoints in the database.
    pub total_checkpoints: u64,
}

fn latest_ref(latest: LatestCheckpoint) -> CheckpointRef {
    CheckpointRef {
        thread_id: latest.config.thread_id,
        checkpoint_ns: latest.config.checkpoint_ns,
        checkpoint_id: latest.config.checkpoint_id.unwrap_or_default(),
        ts: latest.ts,
        step: latest.metadata.step,
        source: latest.metadata.source.map(|s| s.as_str()),
    }
}

/// Runs `cairn threads`.
pub async fn run(ctx: &Ctx, args: &ThreadsArgs, out: &mut dyn Write) -> Result<()> {
    let store = open(&ctx.db, Mode::Existing).await?;
    let mut list: Vec<ThreadSummary> = Vec::new();
    let mut total = 0u64;
    let mut progress = Progress::terminal_only();
    let mut after: Option<String> = None;
    loop {
        let page = store
            .saver
            .list_threads(after.as_deref(), THREAD_PAGE)
            .await?;
        let full = page.len() == THREAD_PAGE;
        after = page.last().map(|t| t.thread_id.clone());
        for t in page {
            total += t.checkpoints;
            list.push(ThreadSummary {
                thread_id: t.thread_id,
                checkpoints: t.checkpoints,
                namespaces: t.namespaces.into_iter().collect(),
                latest: latest_ref(t.latest),
            });
        }
        progress.update(|| format!("read {} threads ({total} checkpoints)", list.len()));
        if !full || after.is_none() {
            break;
        }
    }
    progress.clear();
    let total_threads = list.len();
    list.sort_by(|a, b| {
        b.latest
            .checkpoint_id
            .cmp(&a.latest.checkpoint_id)
            .then_with(|| a.thread_id.cmp(&b.thread_id))
    });
    if let Some(limit) = args.limit {
        list.truncate(limit);
    }
    let report = ThreadsReport {
        threads: list,
        total_threads,
        total_checkpoints: total,
    };
    if ctx.json {
        return write_json(out, &report);
    }
    print_human(&report, &store.name, out)
}

fn print_human(report: &ThreadsReport, db: &str, out: &mut dyn Write) -> Result<()> {
    if report.threads.is_empty() {
        writeln!(out, "No threads in {db}.")?;
        return Ok(());
    }
    let width = report
        .threads
        .iter()
        .map(|t| t.thread_id.chars().count())
        .max()
        .unwrap_or(6)
        .max(6);
    writeln!(
        out,
        "{:<width$}  {:>6}  {:>5}  {:<6}  {:<23}  {:<8}  LATEST CHECKPOINT",
        "THREAD", "CKPTS", "STEP", "SOURCE", "UPDATED (UTC)", "AGE"
    )?;
    for t in &report.threads {
        let mut id = t.latest.checkpoint_id.clone();
        if !t.latest.checkpoint_ns.is_empty() {
            id.push_str(&format!(" (ns {:?})", t.latest.checkpoint_ns));
        }
        writeln!(
            out,
            "{:<width$}  {:>6}  {:>5}  {:<6}  {:<23}  {:<8}  {}",
            t.thread_id,
            t.checkpoints,
            render::step(t.latest.step),
            t.latest.source.unwrap_or("?"),
            render::time(&t.latest.ts),
            render::ago(&t.latest.ts),
            id
        )?;
    }
    let shown = report.threads.len();
    if shown < report.total_threads {
        writeln!(
            out,
            "({shown} of {} shown; {} in all)",
            render::count(report.total_threads as u64, "thread"),
            render::count(report.total_checkpoints, "checkpoint")
        )?;
    } else {
        writeln!(
            out,
            "({}, {})",
            render::count(report.total_threads as u64, "thread"),
            render::count(report.total_checkpoints, "checkpoint")
        )?;
    }
    Ok(())
}

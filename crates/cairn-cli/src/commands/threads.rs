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

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use cairn_checkpoint::ListQuery;
use serde::Serialize;

use super::{write_json, CheckpointRef, Ctx};
use crate::backend::{open, Mode};
use crate::cli::ThreadsArgs;
use crate::error::Result;
use crate::paging::Pager;
use crate::progress::Progress;
use crate::render;

/// One thread in the listing.
#[derive(Debug, Clone, Serialize)]
pub struct ThreadSummary {
    /// The thread.
    pub thread_id: String,
    /// Number of checkpoints, all namespaces together.
    pub checkpoints: usize,
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
    pub total_checkpoints: usize,
}

/// Runs `cairn threads`.
pub async fn run(ctx: &Ctx, args: &ThreadsArgs, out: &mut dyn Write) -> Result<()> {
    let store = open(&ctx.db, Mode::Existing).await?;
    let mut threads: BTreeMap<String, ThreadSummary> = BTreeMap::new();
    let mut total = 0usize;
    let mut progress = Progress::terminal_only();
    let mut pager = Pager::new(store.saver.as_ref(), ListQuery::all());
    while let Some(page) = pager.next_page().await? {
        for t in page {
            total += 1;
            let entry = threads
                .entry(t.config.thread_id.clone())
                .or_insert_with(|| ThreadSummary {
                    thread_id: t.config.thread_id.clone(),
                    checkpoints: 0,
                    namespaces: BTreeSet::new(),
                    latest: CheckpointRef::of(&t),
                });
            entry.checkpoints += 1;
            entry.namespaces.insert(t.config.checkpoint_ns.clone());
            // Newest first: the first root checkpoint seen is the root's latest.
            if !entry.latest.checkpoint_ns.is_empty() && t.config.checkpoint_ns.is_empty() {
                entry.latest = CheckpointRef::of(&t);
            }
        }
        progress.update(|| format!("scanned {total} checkpoints of {} threads", threads.len()));
    }
    progress.clear();
    let total_threads = threads.len();
    let mut list: Vec<ThreadSummary> = threads.into_values().collect();
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
            "({shown} of {} threads shown; {} checkpoints in all)",
            report.total_threads, report.total_checkpoints
        )?;
    } else {
        writeln!(
            out,
            "({} threads, {} checkpoints)",
            report.total_threads, report.total_checkpoints
        )?;
    }
    Ok(())
}

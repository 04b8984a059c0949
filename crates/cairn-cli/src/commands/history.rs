//! `cairn history <thread>`: a thread's checkpoints as a timeline, newest first.
//!
//! JSON shape:
//! ```json
//! {"thread_id": "demo", "checkpoint_ns": "",
//!  "checkpoints": [{"checkpoint_id": "1f0…", "ts": "2026-…Z", "step": 3, "source": "loop",
//!                   "parent_checkpoint_id": "1f0…", "run_id": "…",
//!                   "changed": ["summary", "branch:to:review"],
//!                   "updated_channels": ["summary"], "pending_writes": 0}],
//!  "more": false}
//! ```
//! `changed` lists the channels whose version differs from the parent's (all channels of
//! a checkpoint without parent); `updated_channels` is what the writer recorded (`null` when
//! it recorded nothing). `more` is true when older checkpoints exist beyond `--limit`: page
//! on with `--before <last checkpoint_id>`.

use std::collections::HashMap;
use std::io::Write;

use cairn_checkpoint::{ChannelVersions, CheckpointConfig, CheckpointTuple, ListQuery};
use serde::Serialize;

use super::{write_json, Ctx};
use crate::backend::{open, Mode};
use crate::cli::HistoryArgs;
use crate::error::Result;
use crate::paging::{find_checkpoint, ns_suffix, Pager};
use crate::progress::Progress;
use crate::render;

/// One checkpoint of the timeline.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryEntry {
    /// The checkpoint id.
    pub checkpoint_id: String,
    /// Creation time (RFC 3339).
    pub ts: String,
    /// Super-step.
    pub step: Option<i64>,
    /// Why it was written.
    pub source: Option<&'static str>,
    /// The parent checkpoint's id.
    pub parent_checkpoint_id: Option<String>,
    /// The run that wrote it.
    pub run_id: Option<String>,
    /// Channels whose version differs from the parent's.
    pub changed: Vec<String>,
    /// Channels the writer recorded as updated.
    pub updated_channels: Option<Vec<String>>,
    /// Number of pending writes saved against it.
    pub pending_writes: usize,
    #[serde(skip)]
    versions: ChannelVersions,
}

/// The timeline.
#[derive(Debug, Clone, Serialize)]
pub struct HistoryReport {
    /// The thread.
    pub thread_id: String,
    /// The namespace.
    pub checkpoint_ns: String,
    /// Checkpoints, newest first.
    pub checkpoints: Vec<HistoryEntry>,
    /// Whether older checkpoints exist beyond `--limit`.
    pub more: bool,
}

/// Channels whose version in `versions` differs from (or is missing in) `parent`, then
/// channels `parent` had that `versions` lacks.
pub fn changed_channels(
    versions: &ChannelVersions,
    parent: Option<&ChannelVersions>,
) -> Vec<String> {
    let Some(parent) = parent else {
        return versions.keys().cloned().collect();
    };
    let mut changed: Vec<String> = versions
        .iter()
        .filter(|(k, v)| parent.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(
        parent
            .keys()
            .filter(|k| !versions.contains_key(*k))
            .cloned(),
    );
    changed
}

/// Reads the timeline (used by `history` and at the end of `demo`).
pub async fn collect(
    saver: &dyn cairn_checkpoint::CheckpointSaver,
    thread_id: &str,
    ns: &str,
    limit: Option<usize>,
    before: Option<&str>,
) -> Result<HistoryReport> {
    let mut query = ListQuery::thread(thread_id).ns(ns);
    query.before = before.map(str::to_owned);
    let mut pager = Pager::new(saver, query);
    let mut entries: Vec<HistoryEntry> = Vec::new();
    let mut more = false;
    let mut progress = Progress::terminal_only();
    'pages: while let Some(page) = pager.next_page().await? {
        for t in page {
            if limit.is_some_and(|l| entries.len() >= l) {
                more = true;
                break 'pages;
            }
            entries.push(entry(&t));
        }
        progress.update(|| format!("read {} checkpoints", entries.len()));
    }
    progress.clear();
    // Parents are usually the next entry; look the others up.
    let index: HashMap<String, usize> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| (e.checkpoint_id.clone(), i))
        .collect();
    let mut parent_versions: Vec<Option<ChannelVersions>> = Vec::with_capacity(entries.len());
    for e in &entries {
        let Some(parent) = &e.parent_checkpoint_id else {
            parent_versions.push(None);
            continue;
        };
        if let Some(&i) = index.get(parent) {
            parent_versions.push(Some(entries[i].versions.clone()));
            continue;
        }
        let config = CheckpointConfig::thread(thread_id)
            .with_ns(ns)
            .with_checkpoint_id(parent.clone());
        parent_versions.push(
            saver
                .get_tuple(&config)
                .await?
                .map(|p| p.checkpoint.channel_versions),
        );
    }
    for (e, parent) in entries.iter_mut().zip(parent_versions) {
        e.changed = changed_channels(&e.versions, parent.as_ref());
    }
    Ok(HistoryReport {
        thread_id: thread_id.to_owned(),
        checkpoint_ns: ns.to_owned(),
        checkpoints: entries,
        more,
    })
}

fn entry(t: &CheckpointTuple) -> HistoryEntry {
    HistoryEntry {
        checkpoint_id: t.checkpoint.id.clone(),
        ts: t.checkpoint.ts.clone(),
        step: t.metadata.step,
        source: t.metadata.source.map(|s| s.as_str()),
        parent_checkpoint_id: t
            .parent_config
            .as_ref()
            .and_then(|p| p.checkpoint_id.clone()),
        run_id: t.metadata.run_id.clone(),
        changed: Vec::new(),
        updated_channels: t.checkpoint.updated_channels.clone(),
        pending_writes: t.pending_writes.len(),
        versions: t.checkpoint.channel_versions.clone(),
    }
}

/// Runs `cairn history`.
pub async fn run(ctx: &Ctx, args: &HistoryArgs, out: &mut dyn Write) -> Result<()> {
    let store = open(&ctx.db, Mode::Existing).await?;
    let saver = store.saver.as_ref();
    // Errors for an unknown thread / namespace / --before id; a --before prefix becomes the
    // full id it names (the saver compares whole ids).
    let found = find_checkpoint(
        saver,
        &store.name,
        &args.thread,
        &args.ns,
        args.before.as_deref(),
    )
    .await?;
    let before = args.before.as_ref().map(|_| found.checkpoint.id.as_str());
    let report = collect(saver, &args.thread, &args.ns, args.limit, before).await?;
    if ctx.json {
        return write_json(out, &report);
    }
    print_human(&report, out)
}

/// Prints the timeline for people.
pub fn print_human(report: &HistoryReport, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "History of thread {:?}{} — {} checkpoint{}, newest first",
        report.thread_id,
        ns_suffix(&report.checkpoint_ns),
        report.checkpoints.len(),
        if report.checkpoints.len() == 1 {
            ""
        } else {
            "s"
        }
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  {:>4}  {:<6}  {:<23}  {:<36}  {:>6}  CHANGED",
        "STEP", "SOURCE", "TIME (UTC)", "CHECKPOINT", "WRITES"
    )?;
    let last = report.checkpoints.len().saturating_sub(1);
    for (i, e) in report.checkpoints.iter().enumerate() {
        let marker = if i == 0 {
            "●"
        } else if i == last && !report.more {
            "○"
        } else {
            "│"
        };
        writeln!(
            out,
            "{marker} {:>4}  {:<6}  {:<23}  {:<36}  {:>6}  {}",
            render::step(e.step),
            e.source.unwrap_or("?"),
            render::time(&e.ts),
            e.checkpoint_id,
            e.pending_writes,
            render::truncate(&summarize_changed(&e.changed), 60)
        )?;
    }
    if report.more {
        if let Some(last) = report.checkpoints.last() {
            writeln!(
                out,
                "┆ older checkpoints: cairn history {} --before {}",
                report.thread_id, last.checkpoint_id
            )?;
        }
    }
    Ok(())
}

/// The state's own channels, then how many bookkeeping channels (`branch:*`, `join:*`,
/// `__*`) changed: `draft, log (+2 internal)`.
fn summarize_changed(changed: &[String]) -> String {
    let internal = |c: &&String| render::is_internal(c);
    let own: Vec<&str> = changed
        .iter()
        .filter(|c| !internal(c))
        .map(String::as_str)
        .collect();
    let hidden = changed.iter().filter(internal).count();
    match (own.is_empty(), hidden) {
        (true, 0) => "—".to_owned(),
        (true, n) => format!("({n} internal)"),
        (false, 0) => own.join(", "),
        (false, n) => format!("{} (+{n} internal)", own.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_checkpoint::ChannelVersion;

    #[test]
    fn changed_channels_compares_with_parent() {
        let v = |pairs: &[(&str, i64)]| -> ChannelVersions {
            pairs
                .iter()
                .map(|(k, n)| (k.to_string(), ChannelVersion::Int(*n)))
                .collect()
        };
        let parent = v(&[("a", 1), ("b", 1), ("gone", 1)]);
        let now = v(&[("a", 1), ("b", 2), ("new", 1)]);
        assert_eq!(changed_channels(&now, Some(&parent)), ["b", "new", "gone"]);
        assert_eq!(changed_channels(&now, None), ["a", "b", "new"]);
        assert_eq!(
            summarize_changed(&["branch:to:x".into(), "plan".into()]),
            "plan (+1 internal)"
        );
    }
}

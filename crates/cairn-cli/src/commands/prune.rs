//! `cairn prune <thread>... (--keep-latest | --delete --yes)`.
//!
//! `--keep-latest` keeps the latest checkpoint of each namespace (with its pending writes);
//! `--delete` removes the threads entirely and refuses to run without `--yes`. Every thread
//! must exist; nothing is changed if one does not.
//!
//! JSON shape:
//! ```json
//! {"strategy": "keep-latest",
//!  "threads": [{"thread_id": "demo", "checkpoints_before": 9, "checkpoints_after": 1}]}
//! ```

use std::io::Write;

use cairn_checkpoint::{CheckpointSaver, ListQuery, PruneStrategy};
use serde::Serialize;

use super::{write_json, Ctx};
use crate::backend::{open, Mode};
use crate::cli::PruneArgs;
use crate::error::{CliError, Result};
use crate::paging::{require_thread, Pager};

/// What happened to one thread.
#[derive(Debug, Clone, Serialize)]
pub struct PrunedThread {
    /// The thread.
    pub thread_id: String,
    /// Checkpoints before pruning (all namespaces).
    pub checkpoints_before: usize,
    /// Checkpoints after pruning.
    pub checkpoints_after: usize,
}

/// What `prune` did.
#[derive(Debug, Clone, Serialize)]
pub struct PruneReport {
    /// `keep-latest` or `delete`.
    pub strategy: &'static str,
    /// Each thread.
    pub threads: Vec<PrunedThread>,
}

/// Counts a thread's checkpoints, page by page.
pub async fn count_checkpoints(saver: &dyn CheckpointSaver, thread_id: &str) -> Result<usize> {
    let mut pager = Pager::new(saver, ListQuery::thread(thread_id));
    let mut n = 0;
    while let Some(page) = pager.next_page().await? {
        n += page.len();
    }
    Ok(n)
}

/// Runs `cairn prune`.
pub async fn run(ctx: &Ctx, args: &PruneArgs, out: &mut dyn Write) -> Result<()> {
    let (strategy, name) = if args.delete {
        if !args.yes {
            return Err(CliError::Usage(format!(
                "refusing to delete {} thread{} without --yes (this cannot be undone); \
                 run again with --delete --yes, or use --keep-latest to keep the latest checkpoint",
                args.threads.len(),
                if args.threads.len() == 1 { "" } else { "s" }
            )));
        }
        (PruneStrategy::Delete, "delete")
    } else {
        (PruneStrategy::KeepLatest, "keep-latest")
    };
    let store = open(&ctx.db, Mode::Existing).await?;
    let saver = store.saver.as_ref();
    let mut threads: Vec<String> = Vec::new();
    for t in &args.threads {
        if !threads.contains(t) {
            require_thread(saver, &store.name, t).await?;
            threads.push(t.clone());
        }
    }
    let mut before = Vec::with_capacity(threads.len());
    for t in &threads {
        before.push(count_checkpoints(saver, t).await?);
    }
    saver.prune(&threads, strategy).await?;
    let mut report = PruneReport {
        strategy: name,
        threads: Vec::new(),
    };
    for (t, before) in threads.iter().zip(before) {
        report.threads.push(PrunedThread {
            thread_id: t.clone(),
            checkpoints_before: before,
            checkpoints_after: count_checkpoints(saver, t).await?,
        });
    }
    if ctx.json {
        return write_json(out, &report);
    }
    for t in &report.threads {
        let removed = t.checkpoints_before.saturating_sub(t.checkpoints_after);
        match strategy {
            PruneStrategy::Delete => writeln!(
                out,
                "Deleted thread {:?} ({} checkpoint{}).",
                t.thread_id,
                t.checkpoints_before,
                plural(t.checkpoints_before)
            )?,
            PruneStrategy::KeepLatest => writeln!(
                out,
                "Pruned thread {:?}: removed {removed} checkpoint{}, kept {}.",
                t.thread_id,
                plural(removed),
                t.checkpoints_after
            )?,
        }
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

//! `cairn fork <thread> <checkpoint> --to <new-thread>`: branch a new thread off a checkpoint.
//!
//! The new thread gets one checkpoint: a copy of the given one with a new id and time, no
//! parent, metadata `source: "fork"` (step, `parents` and caller keys kept; `run_id`
//! dropped; `forked_from: {"thread_id", "checkpoint_ns", "checkpoint_id"}` added) and every
//! channel written, with its version, so the new thread stands on its own. Its
//! `versions_seen` are kept, so a graph invoked on the new thread without input continues
//! with the steps that were next at the copied checkpoint. Pending writes are not copied
//! (they belong to the source checkpoint's tasks); the source thread is not touched.
//!
//! JSON shape:
//! ```json
//! {"source": {"thread_id": "demo", "checkpoint_ns": "", "checkpoint_id": "…", "ts": "…", "step": 2, "source": "loop"},
//!  "fork":   {"thread_id": "demo-b", "checkpoint_ns": "", "checkpoint_id": "…", "ts": "…", "step": 2, "source": "fork"},
//!  "channels": 7}
//! ```

use std::io::Write;

use cairn_checkpoint::{
    CheckpointConfig, CheckpointSaver, CheckpointSource, CheckpointTuple, ListQuery,
};
use serde::Serialize;
use serde_json::json;

use super::{write_json, CheckpointRef, Ctx};
use crate::backend::{open, Mode};
use crate::cli::ForkArgs;
use crate::error::{CliError, Result};
use crate::paging::find_checkpoint;
use crate::render;

/// What `fork` did.
#[derive(Debug, Clone, Serialize)]
pub struct ForkReport {
    /// The copied checkpoint.
    pub source: CheckpointRef,
    /// The new thread's checkpoint.
    pub fork: CheckpointRef,
    /// Number of channels copied.
    pub channels: usize,
}

/// Copies `source` as the first checkpoint of `target_thread` (same namespace).
pub async fn fork_checkpoint(
    saver: &dyn CheckpointSaver,
    source: &CheckpointTuple,
    target_thread: &str,
) -> Result<ForkReport> {
    let mut checkpoint = source.checkpoint.successor();
    checkpoint.updated_channels = None;
    let mut metadata = source.metadata.clone();
    metadata.source = Some(CheckpointSource::Fork);
    metadata.run_id = None;
    metadata.extra.insert(
        "forked_from".into(),
        json!({
            "thread_id": source.config.thread_id,
            "checkpoint_ns": source.config.checkpoint_ns,
            "checkpoint_id": source.checkpoint.id,
        }),
    );
    let new_versions = checkpoint.channel_versions.clone();
    let channels = new_versions.len();
    let config =
        CheckpointConfig::thread(target_thread).with_ns(source.config.checkpoint_ns.clone());
    let stored = saver
        .put(&config, checkpoint, metadata, new_versions)
        .await?;
    let forked = saver.get_tuple(&stored).await?.ok_or_else(|| {
        CliError::Saver(cairn_checkpoint::Error::InvalidArgument(format!(
            "the forked checkpoint {:?} could not be read back",
            stored.checkpoint_id
        )))
    })?;
    Ok(ForkReport {
        source: CheckpointRef::of(source),
        fork: CheckpointRef::of(&forked),
        channels,
    })
}

/// Runs `cairn fork`.
pub async fn run(ctx: &Ctx, args: &ForkArgs, out: &mut dyn Write) -> Result<()> {
    if args.to == args.thread {
        return Err(CliError::Usage(
            "--to must name a new thread, not the source thread".into(),
        ));
    }
    if args.to.is_empty() {
        return Err(CliError::Usage("--to needs a thread name".into()));
    }
    let store = open(&ctx.db, Mode::Existing).await?;
    let saver = store.saver.as_ref();
    let source = find_checkpoint(
        saver,
        &store.name,
        &args.thread,
        &args.ns,
        Some(&args.checkpoint),
    )
    .await?;
    if !saver
        .list(&ListQuery::thread(&args.to).limit(1))
        .await?
        .is_empty()
    {
        return Err(CliError::Usage(format!(
            "thread {:?} already exists; fork into a new thread name (or delete it first with `cairn prune {} --delete --yes`)",
            args.to, args.to
        )));
    }
    let report = fork_checkpoint(saver, &source, &args.to).await?;
    if ctx.json {
        return write_json(out, &report);
    }
    writeln!(
        out,
        "Forked thread {:?} at checkpoint {} (step {}) into thread {:?}.",
        report.source.thread_id,
        report.source.checkpoint_id,
        render::step(report.source.step),
        report.fork.thread_id
    )?;
    writeln!(
        out,
        "New checkpoint {} with {} channel{}; the source thread is unchanged.",
        report.fork.checkpoint_id,
        report.channels,
        if report.channels == 1 { "" } else { "s" }
    )?;
    writeln!(out, "Inspect it with: cairn show {}", report.fork.thread_id)?;
    Ok(())
}

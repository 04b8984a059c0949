//! One module per subcommand. Each writes its result to `out`: text for people, or one JSON
//! document when `--json` is given.

pub mod demo;
pub mod diff;
pub mod fork;
pub mod history;
pub mod migrate;
pub mod prune;
pub mod show;
pub mod threads;

use std::io::Write;

use cairn_checkpoint::CheckpointTuple;
use serde::Serialize;

use crate::error::Result;

/// What every command needs besides its own arguments.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// The `--db` value.
    pub db: String,
    /// Whether `--json` was given.
    pub json: bool,
}

/// Writes `value` as pretty-printed JSON followed by a newline.
pub fn write_json(out: &mut dyn Write, value: &impl Serialize) -> Result<()> {
    serde_json::to_writer_pretty(&mut *out, value).map_err(std::io::Error::from)?;
    writeln!(out)?;
    Ok(())
}

/// A checkpoint's identity and headline facts, as several commands print them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointRef {
    /// The thread.
    pub thread_id: String,
    /// The namespace (`""`: root graph).
    pub checkpoint_ns: String,
    /// The checkpoint id.
    pub checkpoint_id: String,
    /// Creation time (RFC 3339).
    pub ts: String,
    /// Super-step (`null` if the metadata has none).
    pub step: Option<i64>,
    /// Why it was written (`input`, `loop`, `update`, `fork`; `null` if unknown).
    pub source: Option<&'static str>,
}

impl CheckpointRef {
    /// The headline facts of `t`.
    pub fn of(t: &CheckpointTuple) -> Self {
        CheckpointRef {
            thread_id: t.config.thread_id.clone(),
            checkpoint_ns: t.config.checkpoint_ns.clone(),
            checkpoint_id: t.checkpoint.id.clone(),
            ts: t.checkpoint.ts.clone(),
            step: t.metadata.step,
            source: t.metadata.source.map(|s| s.as_str()),
        }
    }
}

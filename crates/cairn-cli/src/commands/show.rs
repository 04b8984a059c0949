//! `cairn show <thread>`: one checkpoint in full, values decoded.
//!
//! JSON shape:
//! ```json
//! {"thread_id": "demo", "checkpoint_ns": "", "checkpoint_id": "1f0…", "ts": "2026-…Z",
//!  "parent_checkpoint_id": "1f0…",
//!  "metadata": {"source": "loop", "step": 3, "parents": {}, "run_id": "…", "...": "caller keys"},
//!  "channels": {"summary": {"version": "0000…3.ab12", "type": "msgpack", "bytes": 120,
//!                           "value": "…decoded…"}},
//!  "versions_seen": {"review": {"summary": "0000…3.ab12"}},
//!  "updated_channels": ["summary"],
//!  "pending_writes": [{"task_id": "…", "task_path": "…", "channel": "review",
//!                      "type": "msgpack", "bytes": 12, "value": "…"}]}
//! ```
//! Every channel of `channel_versions` appears in `channels`; one without a stored value
//! has `"type": "empty"` and `"value": null`. Values that cannot be decoded carry `"error"`
//! instead of `"value"`; byte strings show as `{"$bytes": len, "base64": "..."}`.

use std::collections::BTreeMap;
use std::io::Write;

use cairn_checkpoint::{ChannelVersion, ChannelVersions, CheckpointTuple, TypedValue};
use serde::Serialize;
use serde_json::Value;

use super::{write_json, Ctx};
use crate::backend::{open, Mode};
use crate::cli::ShowArgs;
use crate::error::Result;
use crate::paging::{find_checkpoint, ns_suffix};
use crate::render::{self, Decoded};

/// One channel of the checkpoint.
#[derive(Debug, Clone, Serialize)]
pub struct ShownChannel {
    /// Its version.
    pub version: ChannelVersion,
    /// Its decoded value.
    #[serde(flatten)]
    pub decoded: Decoded,
}

/// One pending write.
#[derive(Debug, Clone, Serialize)]
pub struct ShownWrite {
    /// The task that made it.
    pub task_id: String,
    /// The task's path.
    pub task_path: String,
    /// The channel written.
    pub channel: String,
    /// The decoded value.
    #[serde(flatten)]
    pub decoded: Decoded,
}

/// The checkpoint, for display.
#[derive(Debug, Clone, Serialize)]
pub struct ShowReport {
    /// The thread.
    pub thread_id: String,
    /// The namespace.
    pub checkpoint_ns: String,
    /// The checkpoint id.
    pub checkpoint_id: String,
    /// Creation time.
    pub ts: String,
    /// The parent checkpoint's id.
    pub parent_checkpoint_id: Option<String>,
    /// The metadata, as stored.
    pub metadata: serde_json::Map<String, Value>,
    /// Every channel with its version and value.
    pub channels: BTreeMap<String, ShownChannel>,
    /// Node → channel → version last seen.
    pub versions_seen: BTreeMap<String, ChannelVersions>,
    /// Channels updated by the step that wrote the checkpoint.
    pub updated_channels: Option<Vec<String>>,
    /// Pending writes.
    pub pending_writes: Vec<ShownWrite>,
}

impl ShowReport {
    /// Builds the display form of `t`.
    pub fn of(t: &CheckpointTuple) -> Self {
        let channels = t
            .checkpoint
            .channel_versions
            .iter()
            .map(|(name, version)| {
                let decoded = match t.checkpoint.channel_values.get(name) {
                    Some(v) => render::decode(v),
                    None => render::decode(&TypedValue::empty()),
                };
                (
                    name.clone(),
                    ShownChannel {
                        version: version.clone(),
                        decoded,
                    },
                )
            })
            .collect();
        ShowReport {
            thread_id: t.config.thread_id.clone(),
            checkpoint_ns: t.config.checkpoint_ns.clone(),
            checkpoint_id: t.checkpoint.id.clone(),
            ts: t.checkpoint.ts.clone(),
            parent_checkpoint_id: t
                .parent_config
                .as_ref()
                .and_then(|p| p.checkpoint_id.clone()),
            metadata: t.metadata.to_json(),
            channels,
            versions_seen: t.checkpoint.versions_seen.clone(),
            updated_channels: t.checkpoint.updated_channels.clone(),
            pending_writes: t
                .pending_writes
                .iter()
                .map(|w| ShownWrite {
                    task_id: w.task_id.clone(),
                    task_path: w.task_path.clone(),
                    channel: w.channel.clone(),
                    decoded: render::decode(&w.value),
                })
                .collect(),
        }
    }
}

/// Runs `cairn show`.
pub async fn run(ctx: &Ctx, args: &ShowArgs, out: &mut dyn Write) -> Result<()> {
    let store = open(&ctx.db, Mode::Existing).await?;
    let t = find_checkpoint(
        store.saver.as_ref(),
        &store.name,
        &args.thread,
        &args.ns,
        args.checkpoint.as_deref(),
    )
    .await?;
    let report = ShowReport::of(&t);
    if ctx.json {
        return write_json(out, &report);
    }
    print_human(&report, out)
}

fn print_human(r: &ShowReport, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "Checkpoint {} of thread {:?}{}",
        r.checkpoint_id,
        r.thread_id,
        ns_suffix(&r.checkpoint_ns)
    )?;
    let step = r.metadata.get("step").and_then(Value::as_i64);
    let source = r
        .metadata
        .get("source")
        .and_then(Value::as_str)
        .unwrap_or("?");
    writeln!(out, "  time     {} UTC", render::time(&r.ts))?;
    writeln!(out, "  step     {} ({source})", render::step(step))?;
    writeln!(
        out,
        "  parent   {}",
        r.parent_checkpoint_id
            .as_deref()
            .unwrap_or("— (first checkpoint)")
    )?;
    if let Some(run) = r.metadata.get("run_id").and_then(Value::as_str) {
        writeln!(out, "  run      {run}")?;
    }
    let extra: serde_json::Map<String, Value> = r
        .metadata
        .iter()
        .filter(|(k, v)| {
            let shown_above = matches!(k.as_str(), "step" | "source" | "run_id");
            let no_parents = k.as_str() == "parents" && v.as_object().is_some_and(|o| o.is_empty());
            !shown_above && !no_parents
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    for (k, v) in &extra {
        writeln!(out, "  {k:<8} {}", render::compact(v, 100))?;
    }
    if let Some(updated) = &r.updated_channels {
        writeln!(out, "  updated  {}", updated.join(", "))?;
    }

    writeln!(out)?;
    let (internal, own): (Vec<_>, Vec<_>) = r
        .channels
        .iter()
        .partition(|(name, _)| render::is_internal(name));
    writeln!(out, "Channels ({}):", own.len())?;
    for (name, ch) in &own {
        writeln!(
            out,
            "  {name}  [{}, {}, {}]",
            render::version(&ch.version),
            ch.decoded.type_tag,
            render::size(ch.decoded.bytes)
        )?;
        write_value(&ch.decoded, out)?;
    }
    if !internal.is_empty() {
        writeln!(out)?;
        writeln!(out, "Graph bookkeeping channels ({}):", internal.len())?;
        for (name, ch) in &internal {
            let value = match (&ch.decoded.value, &ch.decoded.error) {
                _ if ch.decoded.type_tag == cairn_checkpoint::TAG_EMPTY => "(empty)".to_owned(),
                (Some(v), _) => render::compact(v, 60),
                (None, Some(e)) => format!("<{e}>"),
                (None, None) => "<no value>".to_owned(),
            };
            writeln!(out, "  {name}  [{}] {value}", render::version(&ch.version))?;
        }
    }
    if !r.versions_seen.is_empty() {
        writeln!(out)?;
        writeln!(out, "Versions seen by node:")?;
        for (node, seen) in &r.versions_seen {
            let list: Vec<String> = seen
                .iter()
                .map(|(c, v)| format!("{c}@{}", render::version(v)))
                .collect();
            let list = if list.is_empty() {
                "—".to_owned()
            } else {
                list.join(", ")
            };
            writeln!(out, "  {node}: {list}")?;
        }
    }
    writeln!(out)?;
    if r.pending_writes.is_empty() {
        writeln!(out, "Pending writes: none")?;
    } else {
        writeln!(out, "Pending writes ({}):", r.pending_writes.len())?;
        for w in &r.pending_writes {
            let value = match (&w.decoded.value, &w.decoded.error) {
                (Some(v), _) => render::compact(v, 100),
                (None, Some(e)) => format!("<{e}>"),
                (None, None) => "<no value>".to_owned(),
            };
            let path = if w.task_path.is_empty() {
                String::new()
            } else {
                format!(" ({})", w.task_path)
            };
            writeln!(out, "  task {}{path}: {} = {value}", w.task_id, w.channel)?;
        }
    }
    Ok(())
}

fn write_value(d: &Decoded, out: &mut dyn Write) -> Result<()> {
    match (&d.value, &d.error) {
        (Some(Value::String(text)), _) if text.contains('\n') => {
            // Multi-line text reads better as text than as an escaped JSON string.
            for line in text.lines() {
                writeln!(out, "    │ {line}")?;
            }
        }
        (Some(v), _) => {
            let text = serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string());
            for line in text.lines() {
                writeln!(out, "    {line}")?;
            }
        }
        (None, Some(e)) => writeln!(out, "    <{e}>")?,
        (None, None) => writeln!(out, "    <no value>")?,
    }
    Ok(())
}

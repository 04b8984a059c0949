//! `cairn diff <thread> <a> <b>`: channel-level differences between two checkpoints.
//!
//! JSON shape:
//! ```json
//! {"thread_id": "demo", "checkpoint_ns": "",
//!  "from": {"thread_id": "demo", "checkpoint_ns": "", "checkpoint_id": "…", "ts": "…", "step": 1, "source": "loop"},
//!  "to":   {"…": "same fields"},
//!  "changes": [
//!    {"channel": "plan", "change": "added", "to_version": "…", "after": ["…"]},
//!    {"channel": "branch:to:plan", "change": "removed", "from_version": "…", "before": null},
//!    {"channel": "notes", "change": "changed", "kind": "appended", "from_version": "…",
//!     "to_version": "…", "appended": ["new item"]},
//!    {"channel": "doc", "change": "changed", "kind": "object", "from_version": "…", "to_version": "…",
//!     "keys": {"added": {"k": 1}, "removed": {"old": 2}, "changed": {"title": {"before": "a", "after": "b"}}}},
//!    {"channel": "count", "change": "changed", "kind": "replaced", "from_version": "…",
//!     "to_version": "…", "before": 1, "after": 2},
//!    {"channel": "same", "change": "changed", "kind": "rewritten", "from_version": "…", "to_version": "…"}],
//!  "unchanged": ["topic"]}
//! ```
//! `kind` is `appended` when both values are arrays and the old one is a prefix of the new
//! one, `object` when both are objects, `rewritten` when the version changed but the value
//! did not, and `replaced` otherwise. Channels with the same version are unchanged.

use std::collections::BTreeSet;
use std::io::Write;

use cairn_checkpoint::{ChannelVersion, CheckpointTuple};
use serde::Serialize;
use serde_json::{Map, Value};

use super::{write_json, CheckpointRef, Ctx};
use crate::backend::{open, Mode};
use crate::cli::DiffArgs;
use crate::error::Result;
use crate::paging::{find_checkpoint, ns_suffix};
use crate::render;

/// Key-level differences of two objects.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct KeyChanges {
    /// Keys only in the newer object, with their values.
    pub added: Map<String, Value>,
    /// Keys only in the older object, with their values.
    pub removed: Map<String, Value>,
    /// Keys in both with different values: `{"before": …, "after": …}`.
    pub changed: Map<String, Value>,
}

/// One channel that differs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChannelChange {
    /// The channel.
    pub channel: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    /// For `changed`: `appended`, `object`, `replaced` or `rewritten`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Version in the older checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_version: Option<ChannelVersion>,
    /// Version in the newer checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_version: Option<ChannelVersion>,
    /// Old value (`removed`, `replaced`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// New value (`added`, `replaced`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
    /// Items appended to an array (`appended`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub appended: Option<Vec<Value>>,
    /// Key changes of an object (`object`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keys: Option<KeyChanges>,
}

/// The whole diff.
#[derive(Debug, Clone, Serialize)]
pub struct DiffReport {
    /// The thread.
    pub thread_id: String,
    /// The namespace.
    pub checkpoint_ns: String,
    /// The older checkpoint.
    pub from: CheckpointRef,
    /// The newer checkpoint.
    pub to: CheckpointRef,
    /// Channels that differ, by channel name.
    pub changes: Vec<ChannelChange>,
    /// Channels with the same version in both.
    pub unchanged: Vec<String>,
}

fn value_of(t: &CheckpointTuple, channel: &str) -> Value {
    t.checkpoint
        .channel_values
        .get(channel)
        .map(|v| {
            let d = render::decode(v);
            match (d.value, d.error) {
                (Some(v), _) => v,
                (None, Some(e)) => Value::String(format!("<{e}>")),
                (None, None) => Value::Null,
            }
        })
        .unwrap_or(Value::Null)
}

/// Compares two checkpoints channel by channel.
pub fn diff(a: &CheckpointTuple, b: &CheckpointTuple) -> DiffReport {
    let va = &a.checkpoint.channel_versions;
    let vb = &b.checkpoint.channel_versions;
    let names: BTreeSet<&String> = va.keys().chain(vb.keys()).collect();
    let mut changes = Vec::new();
    let mut unchanged = Vec::new();
    for name in names {
        let base = ChannelChange {
            channel: name.clone(),
            change: "changed",
            kind: None,
            from_version: va.get(name).cloned(),
            to_version: vb.get(name).cloned(),
            before: None,
            after: None,
            appended: None,
            keys: None,
        };
        match (va.get(name), vb.get(name)) {
            (None, Some(_)) => changes.push(ChannelChange {
                change: "added",
                after: Some(value_of(b, name)),
                ..base
            }),
            (Some(_), None) => changes.push(ChannelChange {
                change: "removed",
                before: Some(value_of(a, name)),
                ..base
            }),
            (Some(x), Some(y)) if x == y => unchanged.push(name.clone()),
            _ => changes.push(compare(base, value_of(a, name), value_of(b, name))),
        }
    }
    DiffReport {
        thread_id: b.config.thread_id.clone(),
        checkpoint_ns: b.config.checkpoint_ns.clone(),
        from: CheckpointRef::of(a),
        to: CheckpointRef::of(b),
        changes,
        unchanged,
    }
}

fn compare(base: ChannelChange, before: Value, after: Value) -> ChannelChange {
    if before == after {
        return ChannelChange {
            kind: Some("rewritten"),
            ..base
        };
    }
    match (before, after) {
        (Value::Array(old), Value::Array(new))
            if old.len() <= new.len() && new[..old.len()] == old[..] =>
        {
            ChannelChange {
                kind: Some("appended"),
                appended: Some(new[old.len()..].to_vec()),
                ..base
            }
        }
        (Value::Object(old), Value::Object(new)) => {
            let mut keys = KeyChanges::default();
            for (k, v) in &new {
                match old.get(k) {
                    None => {
                        keys.added.insert(k.clone(), v.clone());
                    }
                    Some(o) if o != v => {
                        let mut pair = Map::new();
                        pair.insert("before".into(), o.clone());
                        pair.insert("after".into(), v.clone());
                        keys.changed.insert(k.clone(), Value::Object(pair));
                    }
                    Some(_) => {}
                }
            }
            for (k, v) in &old {
                if !new.contains_key(k) {
                    keys.removed.insert(k.clone(), v.clone());
                }
            }
            ChannelChange {
                kind: Some("object"),
                keys: Some(keys),
                ..base
            }
        }
        (before, after) => ChannelChange {
            kind: Some("replaced"),
            before: Some(before),
            after: Some(after),
            ..base
        },
    }
}

/// Runs `cairn diff`.
pub async fn run(ctx: &Ctx, args: &DiffArgs, out: &mut dyn Write) -> Result<()> {
    let store = open(&ctx.db, Mode::Existing).await?;
    let saver = store.saver.as_ref();
    let a = find_checkpoint(
        saver,
        &store.name,
        &args.thread,
        &args.ns,
        Some(&args.checkpoint_a),
    )
    .await?;
    let b = find_checkpoint(
        saver,
        &store.name,
        &args.thread,
        &args.ns,
        Some(&args.checkpoint_b),
    )
    .await?;
    let report = diff(&a, &b);
    if ctx.json {
        return write_json(out, &report);
    }
    print_human(&report, out)
}

const WIDTH: usize = 100;

fn print_human(r: &DiffReport, out: &mut dyn Write) -> Result<()> {
    writeln!(
        out,
        "Diff of thread {:?}{}",
        r.thread_id,
        ns_suffix(&r.checkpoint_ns)
    )?;
    for (label, c) in [("from", &r.from), ("to", &r.to)] {
        writeln!(
            out,
            "  {label:<4} {}  step {} ({})  {}",
            c.checkpoint_id,
            render::step(c.step),
            c.source.unwrap_or("?"),
            render::time(&c.ts)
        )?;
    }
    writeln!(out)?;
    if r.changes.is_empty() {
        writeln!(out, "No channel differs.")?;
    }
    // The state's own channels first, graph bookkeeping after.
    let mut ordered: Vec<&ChannelChange> = r.changes.iter().collect();
    ordered.sort_by_key(|c| render::is_internal(&c.channel));
    for c in ordered {
        let versions = format!(
            "{} → {}",
            c.from_version.as_ref().map_or("—".into(), render::version),
            c.to_version.as_ref().map_or("—".into(), render::version)
        );
        match (c.change, c.kind) {
            ("added", _) => writeln!(
                out,
                "+ {}  ({versions}) {}",
                c.channel,
                render::compact(c.after.as_ref().unwrap_or(&Value::Null), WIDTH)
            )?,
            ("removed", _) => writeln!(
                out,
                "- {}  ({versions}) was {}",
                c.channel,
                render::compact(c.before.as_ref().unwrap_or(&Value::Null), WIDTH)
            )?,
            (_, Some("appended")) => {
                let items = c.appended.as_deref().unwrap_or(&[]);
                writeln!(
                    out,
                    "~ {}  ({versions}) appended {} item{}:",
                    c.channel,
                    items.len(),
                    if items.len() == 1 { "" } else { "s" }
                )?;
                for item in items {
                    writeln!(out, "    + {}", render::compact(item, WIDTH))?;
                }
            }
            (_, Some("object")) => {
                writeln!(out, "~ {}  ({versions}) keys:", c.channel)?;
                if let Some(keys) = &c.keys {
                    for (k, v) in &keys.added {
                        writeln!(out, "    + {k}: {}", render::compact(v, WIDTH))?;
                    }
                    for (k, v) in &keys.removed {
                        writeln!(out, "    - {k}: {}", render::compact(v, WIDTH))?;
                    }
                    for (k, v) in &keys.changed {
                        writeln!(
                            out,
                            "    ~ {k}: {} → {}",
                            render::compact(&v["before"], WIDTH / 2),
                            render::compact(&v["after"], WIDTH / 2)
                        )?;
                    }
                }
            }
            (_, Some("rewritten")) => writeln!(
                out,
                "~ {}  ({versions}) rewritten with the same value",
                c.channel
            )?,
            _ => writeln!(
                out,
                "~ {}  ({versions}) {} → {}",
                c.channel,
                render::compact(c.before.as_ref().unwrap_or(&Value::Null), WIDTH / 2),
                render::compact(c.after.as_ref().unwrap_or(&Value::Null), WIDTH / 2)
            )?,
        }
    }
    if !r.unchanged.is_empty() {
        writeln!(
            out,
            "  ({} channel{} unchanged: {})",
            r.unchanged.len(),
            if r.unchanged.len() == 1 { "" } else { "s" },
            render::truncate(&r.unchanged.join(", "), WIDTH)
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> ChannelChange {
        ChannelChange {
            channel: "c".into(),
            change: "changed",
            kind: None,
            from_version: None,
            to_version: None,
            before: None,
            after: None,
            appended: None,
            keys: None,
        }
    }

    #[test]
    fn classifies_value_changes() {
        let c = compare(base(), json!(["a"]), json!(["a", "b", "c"]));
        assert_eq!(c.kind, Some("appended"));
        assert_eq!(c.appended, Some(vec![json!("b"), json!("c")]));

        let c = compare(base(), json!(["a"]), json!(["b"]));
        assert_eq!(c.kind, Some("replaced"));

        let c = compare(base(), json!({"a": 1, "b": 2}), json!({"b": 3, "c": 4}));
        let keys = c.keys.unwrap();
        assert_eq!(keys.added, json!({"c": 4}).as_object().unwrap().clone());
        assert_eq!(keys.removed, json!({"a": 1}).as_object().unwrap().clone());
        assert_eq!(keys.changed["b"], json!({"before": 2, "after": 3}));

        assert_eq!(compare(base(), json!(1), json!(1)).kind, Some("rewritten"));
    }
}

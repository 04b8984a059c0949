//! `cairn migrate --from URL --to URL [--thread T]...`: copy threads between databases.
//!
//! Every checkpoint of every namespace of each thread is copied oldest first (so parents
//! are stored before their children) with its id, time, metadata, parent, versions seen and
//! pending writes; versions are preserved exactly. A checkpoint whose parent was just copied
//! stores only the channels whose version changed, and a list that grew as an append value
//! holding the new items (`append_diff`), so a long conversation stays linear in size in the
//! target too; other checkpoints store every channel whole. Checkpoints already present in the
//! target (same thread, namespace and id) are skipped, but for pending writes the target
//! lacks (a migration stopped between a checkpoint and its writes), so an interrupted
//! migration can simply be run again. Pending writes are re-saved per task in their stored order (a
//! task's writes that were saved in several calls get consecutive indexes).
//!
//! A progress line goes to stderr (`migrated 120/600 checkpoints of 3 threads`).
//!
//! JSON shape (the summary):
//! ```json
//! {"from": "./cairn-demo.db", "to": "postgres://ada:***@db/cairn",
//!  "threads": [{"thread_id": "demo", "checkpoints": 9, "copied": 9, "skipped": 0, "pending_writes": 3}],
//!  "totals": {"threads": 1, "checkpoints": 9, "copied": 9, "skipped": 0, "pending_writes": 3},
//!  "elapsed_ms": 42}
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::time::Instant;

use cairn_checkpoint::{
    append_diff, ChannelVersion, CheckpointConfig, CheckpointSaver, ListQuery, TypedValue,
};
use serde::Serialize;

use super::{write_json, Ctx};
use crate::backend::{open, Location, Mode};
use crate::cli::MigrateArgs;
use crate::error::{CliError, Result};
use crate::paging::{require_thread, Pager};
use crate::progress::Progress;
use crate::render;

/// What was copied of one thread.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigratedThread {
    /// The thread.
    pub thread_id: String,
    /// Checkpoints in the source.
    pub checkpoints: usize,
    /// Checkpoints copied.
    pub copied: usize,
    /// Checkpoints already in the target.
    pub skipped: usize,
    /// Pending writes copied.
    pub pending_writes: usize,
}

/// Sums over all threads.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    /// Threads migrated.
    pub threads: usize,
    /// Checkpoints in the source.
    pub checkpoints: usize,
    /// Checkpoints copied.
    pub copied: usize,
    /// Checkpoints already in the target.
    pub skipped: usize,
    /// Pending writes copied.
    pub pending_writes: usize,
}

/// The migration summary.
#[derive(Debug, Clone, Serialize)]
pub struct MigrateReport {
    /// Source database (passwords hidden).
    pub from: String,
    /// Target database (passwords hidden).
    pub to: String,
    /// Per thread.
    pub threads: Vec<MigratedThread>,
    /// Sums.
    pub totals: Totals,
    /// Wall-clock time.
    pub elapsed_ms: u128,
}

/// `(namespace, checkpoint id)` of every checkpoint to copy, per thread.
type Plan = BTreeMap<String, Vec<(String, String)>>;

async fn plan(source: &dyn CheckpointSaver, db: &str, threads: &[String]) -> Result<Plan> {
    let mut plan: Plan = BTreeMap::new();
    let mut progress = Progress::terminal_only();
    let mut seen = 0usize;
    let queries: Vec<ListQuery> = if threads.is_empty() {
        vec![ListQuery::all()]
    } else {
        for t in threads {
            require_thread(source, db, t).await?;
            plan.entry(t.clone()).or_default();
        }
        threads.iter().map(ListQuery::thread).collect()
    };
    for query in queries {
        let mut pager = Pager::new(source, query);
        while let Some(page) = pager.next_page().await? {
            seen += page.len();
            for t in page {
                plan.entry(t.config.thread_id)
                    .or_default()
                    .push((t.config.checkpoint_ns, t.checkpoint.id));
            }
            progress.update(|| format!("listing: {seen} checkpoints"));
        }
    }
    progress.clear();
    for keys in plan.values_mut() {
        // Oldest first, so each parent is stored before its children.
        keys.sort_by(|a, b| a.1.cmp(&b.1).then_with(|| a.0.cmp(&b.0)));
        keys.dedup();
    }
    Ok(plan)
}

/// How many recently copied checkpoints keep their whole values for their children.
const RECENT: usize = 16;

/// Whole channel values (with versions) of the checkpoints copied last, by namespace and id.
/// A child whose parent is here stores only the channels that changed, and lists as what they
/// add to the parent's ([`append_diff`]), so a migrated conversation stays linear in size.
#[derive(Default)]
struct RecentValues(VecDeque<((String, String), ChannelValues)>);

type ChannelValues = BTreeMap<String, (ChannelVersion, TypedValue)>;

impl RecentValues {
    fn get(&self, ns: &str, id: &str) -> Option<&ChannelValues> {
        self.0
            .iter()
            .find(|((n, i), _)| n == ns && i == id)
            .map(|(_, v)| v)
    }

    fn remember(&mut self, ns: &str, id: &str, values: ChannelValues) {
        if self.0.len() == RECENT {
            self.0.pop_front();
        }
        self.0.push_back(((ns.to_owned(), id.to_owned()), values));
    }
}

/// Copies one checkpoint with its pending writes; `Ok(None)` if the target already has it
/// (then only writes it lacks are copied: a migration stopped between storing a checkpoint
/// and its writes, which are separate calls, left them out).
async fn copy_one(
    source: &dyn CheckpointSaver,
    target: &dyn CheckpointSaver,
    config: &CheckpointConfig,
    recent: &mut RecentValues,
) -> Result<Option<usize>> {
    let present = target.get_tuple(config).await?;
    let Some(t) = source.get_tuple(config).await? else {
        // Deleted from the source while migrating: nothing to copy.
        return Ok(None);
    };
    if let Some(present) = present {
        if present.pending_writes.len() < t.pending_writes.len() {
            // Saving writes again is idempotent: a write the target has stays as it is.
            put_pending_writes(target, &present.config, t.pending_writes).await?;
        }
        return Ok(None);
    }
    let parent_id = t
        .parent_config
        .as_ref()
        .and_then(|p| p.checkpoint_id.clone());
    let parent = CheckpointConfig {
        checkpoint_id: parent_id.clone(),
        ..config.clone()
    };
    let mut checkpoint = t.checkpoint;
    let whole: ChannelValues = checkpoint
        .channel_values
        .iter()
        .filter_map(|(c, value)| {
            let version = checkpoint.channel_versions.get(c)?;
            Some((c.clone(), (version.clone(), value.clone())))
        })
        .collect();
    let ns = config.checkpoint_ns.as_str();
    let mut new_versions = checkpoint.channel_versions.clone();
    if let Some(parent_values) = parent_id.as_deref().and_then(|id| recent.get(ns, id)) {
        for (channel, (version, value)) in &whole {
            let Some((parent_version, parent_value)) = parent_values.get(channel) else {
                continue;
            };
            if parent_version == version {
                // Stored with the parent already.
                new_versions.remove(channel);
                checkpoint.channel_values.remove(channel);
            } else if let Some(delta) = append_diff(parent_version, parent_value, value) {
                checkpoint.channel_values.insert(channel.clone(), delta);
            }
        }
    }
    let stored = target
        .put(&parent, checkpoint, t.metadata, new_versions)
        .await?;
    if let Some(id) = &stored.checkpoint_id {
        recent.remember(ns, id, whole);
    }
    let n = t.pending_writes.len();
    put_pending_writes(target, &stored, t.pending_writes).await?;
    Ok(Some(n))
}

/// Saves `writes` (a checkpoint's pending writes, in their stored order) against `stored`:
/// consecutive writes of one task go in one call, keeping their order.
async fn put_pending_writes(
    target: &dyn CheckpointSaver,
    stored: &CheckpointConfig,
    writes: Vec<cairn_checkpoint::PendingWrite>,
) -> Result<()> {
    let mut group: Vec<(String, TypedValue)> = Vec::new();
    let mut current: Option<(String, String)> = None;
    for w in writes {
        let key = (w.task_id.clone(), w.task_path.clone());
        if current.as_ref().is_some_and(|c| *c != key) {
            if let Some((task, path)) = current.take() {
                target
                    .put_writes(stored, std::mem::take(&mut group), &task, &path)
                    .await?;
            }
        }
        current = Some(key);
        group.push((w.channel, w.value));
    }
    if let Some((task, path)) = current {
        target.put_writes(stored, group, &task, &path).await?;
    }
    Ok(())
}

/// Whether two SQLite locations are one file under two spellings (`f.db`, `./f.db`, an
/// absolute path, a link).
fn same_file(a: &Location, b: &Location) -> bool {
    match (a, b) {
        (Location::SqliteFile(a), Location::SqliteFile(b)) => {
            match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
                (Ok(a), Ok(b)) => a == b,
                // A target that does not exist yet is another file.
                _ => false,
            }
        }
        _ => false,
    }
}

/// Runs `cairn migrate`.
pub async fn run(ctx: &Ctx, args: &MigrateArgs, out: &mut dyn Write) -> Result<()> {
    let from_loc = Location::parse(&args.from)?;
    let to_loc = Location::parse(&args.to)?;
    if from_loc == to_loc || same_file(&from_loc, &to_loc) {
        return Err(CliError::Usage(
            "--from and --to name the same database; migrate into another one".into(),
        ));
    }
    if matches!(to_loc, Location::Memory | Location::SqliteMemory) {
        return Err(CliError::Usage(
            "--to is an in-memory database, gone when the command ends; give a file or a \
             server URL"
                .into(),
        ));
    }
    if matches!(from_loc, Location::Memory | Location::SqliteMemory) {
        return Err(CliError::Usage(
            "--from is an in-memory database, which is always empty; give a file or a server URL"
                .into(),
        ));
    }
    let started = Instant::now();
    let source = open(&args.from, Mode::Existing).await?;
    let target = open(&args.to, Mode::Create).await?;
    let plan = plan(source.saver.as_ref(), &source.name, &args.threads).await?;
    let total: usize = plan.values().map(Vec::len).sum();
    let thread_count = plan.len();
    let mut progress = Progress::new(true);
    let mut report = MigrateReport {
        from: source.name.clone(),
        to: target.name.clone(),
        threads: Vec::new(),
        totals: Totals {
            threads: thread_count,
            checkpoints: total,
            ..Totals::default()
        },
        elapsed_ms: 0,
    };
    let mut done = 0usize;
    for (thread_id, keys) in plan {
        let mut recent = RecentValues::default();
        let mut stats = MigratedThread {
            thread_id: thread_id.clone(),
            checkpoints: keys.len(),
            ..MigratedThread::default()
        };
        for (ns, id) in keys {
            let config = CheckpointConfig::thread(thread_id.clone())
                .with_ns(ns)
                .with_checkpoint_id(id);
            let copied = copy_one(
                source.saver.as_ref(),
                target.saver.as_ref(),
                &config,
                &mut recent,
            )
            .await?;
            match copied {
                Some(writes) => {
                    stats.copied += 1;
                    stats.pending_writes += writes;
                }
                None => stats.skipped += 1,
            }
            done += 1;
            progress.update(|| {
                format!(
                    "migrated {done}/{total} checkpoints of {}",
                    render::count(thread_count as u64, "thread")
                )
            });
        }
        report.totals.copied += stats.copied;
        report.totals.skipped += stats.skipped;
        report.totals.pending_writes += stats.pending_writes;
        report.threads.push(stats);
    }
    progress.finish(&format!(
        "migrated {done}/{total} checkpoints of {}",
        render::count(thread_count as u64, "thread")
    ));
    report.elapsed_ms = started.elapsed().as_millis();
    if ctx.json {
        return write_json(out, &report);
    }
    let t = &report.totals;
    writeln!(
        out,
        "Migrated {} thread{} from {} to {}: {} checkpoint{} copied, {} already present, {} pending write{} ({} ms).",
        t.threads,
        plural(t.threads),
        report.from,
        report.to,
        t.copied,
        plural(t.copied),
        t.skipped,
        t.pending_writes,
        plural(t.pending_writes),
        report.elapsed_ms
    )?;
    for th in &report.threads {
        writeln!(
            out,
            "  {:<24} {:>6} checkpoints  {:>6} copied  {:>6} skipped  {:>6} writes",
            th.thread_id, th.checkpoints, th.copied, th.skipped, th.pending_writes
        )?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_checkpoint::{Checkpoint, CheckpointMetadata, CheckpointSource, InMemorySaver};

    /// A thread whose `messages` list grows by one item per checkpoint, stored whole at every
    /// version (as a saver without append values would hold it).
    async fn growing_thread(saver: &InMemorySaver, n: usize) -> Vec<CheckpointConfig> {
        let codec = cairn_checkpoint::ValueCodec::default();
        let mut config = CheckpointConfig::thread("t");
        let mut version = None;
        let mut items: Vec<String> = Vec::new();
        let mut stored = Vec::new();
        for i in 0..n {
            items.push(format!("message {i} {}", "x".repeat(100)));
            let v = saver.get_next_version(version.as_ref());
            let mut cp = Checkpoint::new();
            cp.channel_values
                .insert("messages".into(), codec.encode(&items).expect("encode"));
            cp.channel_versions.insert("messages".into(), v.clone());
            let meta = CheckpointMetadata::new(CheckpointSource::Loop, i as i64);
            config = saver
                .put(
                    &config,
                    cp,
                    meta,
                    [("messages".to_string(), v.clone())].into(),
                )
                .await
                .expect("put");
            version = Some(v);
            stored.push(config.clone());
        }
        stored
    }

    #[tokio::test]
    async fn migrated_lists_are_stored_as_appends_and_read_back_whole() {
        let (source, target) = (InMemorySaver::new(), InMemorySaver::new());
        let configs = growing_thread(&source, 60).await;
        let mut recent = RecentValues::default();
        for config in &configs {
            let copied = copy_one(&source, &target, config, &mut recent)
                .await
                .expect("copy");
            assert!(copied.is_some());
        }
        for config in &configs {
            let (a, b) = (
                source
                    .get_tuple(config)
                    .await
                    .expect("read")
                    .expect("source"),
                target
                    .get_tuple(config)
                    .await
                    .expect("read")
                    .expect("target"),
            );
            assert_eq!(a, b, "the migrated checkpoint reads back identical");
        }
        let (whole, linear) = (source.stats().value_bytes, target.stats().value_bytes);
        let last = target
            .get_tuple(&CheckpointConfig::thread("t"))
            .await
            .expect("read")
            .expect("latest");
        let list_bytes = last.checkpoint.channel_values["messages"].len();
        assert!(
            linear < 2 * list_bytes && whole > 20 * list_bytes,
            "source {whole} bytes, target {linear} bytes, final list {list_bytes} bytes"
        );
    }
}

//! Model-based checking: random operations applied both to the saver under test and to a fresh
//! [`InMemorySaver`] (the reference model), with every read compared after every operation.
//!
//! The operations are drawn from a seeded PRNG, so a failure names the seed, the operation's
//! index and the operation itself, and replays the same way.

use std::collections::BTreeMap;

use serde_json::json;

use super::support::*;
use crate::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointSource, CheckpointTuple, InMemorySaver, ListQuery, PruneStrategy,
    Result, TypedValue, ERROR, INTERRUPT, RESUME, SCHEDULED,
};

/// The seeds [`random_operations_match_the_model`] runs.
const SEEDS: [u64; 3] = [0x5eed_0001, 0xc0ff_ee42, 0x0dd_ba11];
/// Operations per seed.
const OPS_PER_SEED: usize = 100;
/// Thread ids per seed.
const THREADS: usize = 4;
/// Namespaces written.
const NAMESPACES: [&str; 2] = ["", "inner:task-1"];
/// Channels of the checkpoints.
const CHANNELS: [&str; 3] = ["a", "b", "c"];
/// Channels of pending writes: regular and special.
const WRITE_CHANNELS: [&str; 7] = ["a", "b", "c", ERROR, SCHEDULED, INTERRUPT, RESUME];
/// Task ids of pending writes, with their task paths.
const TASKS: [(&str, &str); 3] = [("task-1", "~0"), ("task-2", "~1"), ("task-3", "")];
/// Run ids per seed.
const RUNS: usize = 4;

/// splitmix64: a tiny deterministic PRNG.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// True with probability `percent` / 100.
    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// One operation, applied to both savers.
#[derive(Debug, Clone)]
enum Op {
    Put {
        config: CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    },
    PutWrites {
        config: CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: String,
        task_path: String,
    },
    PutWritesAndPut {
        config: CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: String,
        task_path: String,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    },
    DeleteThread(String),
    CopyThread {
        from: String,
        to: String,
    },
    Prune {
        thread_ids: Vec<String>,
        strategy: PruneStrategy,
    },
    DeleteForRuns(Vec<String>),
}

impl Op {
    async fn apply(&self, saver: &dyn CheckpointSaver) -> Result<Option<CheckpointConfig>> {
        match self.clone() {
            Op::Put {
                config,
                checkpoint,
                metadata,
                new_versions,
            } => saver
                .put(&config, checkpoint, metadata, new_versions)
                .await
                .map(Some),
            Op::PutWrites {
                config,
                writes,
                task_id,
                task_path,
            } => saver
                .put_writes(&config, writes, &task_id, &task_path)
                .await
                .map(|()| None),
            Op::PutWritesAndPut {
                config,
                writes,
                task_id,
                task_path,
                checkpoint,
                metadata,
                new_versions,
            } => saver
                .put_writes_and_put(
                    &config,
                    writes,
                    &task_id,
                    &task_path,
                    checkpoint,
                    metadata,
                    new_versions,
                )
                .await
                .map(Some),
            Op::DeleteThread(t) => saver.delete_thread(&t).await.map(|()| None),
            Op::CopyThread { from, to } => saver.copy_thread(&from, &to).await.map(|()| None),
            Op::Prune {
                thread_ids,
                strategy,
            } => saver.prune(&thread_ids, strategy).await.map(|()| None),
            Op::DeleteForRuns(runs) => saver.delete_for_runs(&runs).await.map(|()| None),
        }
    }
}

/// One seed's run: the PRNG, the names it uses and the model.
struct Run<'a> {
    seed: u64,
    rng: Rng,
    saver: &'a dyn CheckpointSaver,
    model: InMemorySaver,
    threads: Vec<String>,
    runs: Vec<String>,
    /// Every `(thread, ns, id)` ever stored (deleted ones included).
    known: Vec<(String, String, String)>,
    /// The last channel version handed out (every version is new).
    version: i64,
}

impl Run<'_> {
    /// The model's checkpoints of one thread and namespace, newest first.
    async fn model_ids(&self, thread: &str, ns: &str) -> Vec<String> {
        let listed = list(&self.model, &ListQuery::thread(thread).ns(ns)).await;
        ids(&listed)
    }

    async fn thread_is_empty(&self, thread: &str) -> bool {
        list(&self.model, &ListQuery::thread(thread).limit(1))
            .await
            .is_empty()
    }

    fn next_version(&mut self) -> ChannelVersion {
        self.version += 1;
        if self.rng.chance(50) {
            ChannelVersion::Int(self.version)
        } else {
            let suffix = self.rng.next();
            ChannelVersion::Str(format!("{:032}.{suffix:016x}", self.version))
        }
    }

    fn small_value(&mut self) -> TypedValue {
        match self.rng.below(3) {
            0 => value(&self.rng.below(10)),
            1 => value(&format!("v{}", self.rng.below(10))),
            _ => value(&json!({ "n": self.rng.below(5), "tags": ["x", "y"] })),
        }
    }

    fn metadata(&mut self) -> CheckpointMetadata {
        let source = *self.rng.pick(&[
            CheckpointSource::Input,
            CheckpointSource::Loop,
            CheckpointSource::Update,
            CheckpointSource::Fork,
        ]);
        let mut meta = CheckpointMetadata::new(source, self.rng.below(4) as i64 - 1);
        if self.rng.chance(80) {
            let run = self.rng.pick(&self.runs).clone();
            meta = meta.with_run_id(run);
        }
        if self.rng.chance(50) {
            meta = meta.with("k", json!(*self.rng.pick(&["x", "y"])));
        }
        if self.rng.chance(20) {
            meta.parents.insert("".into(), "parent-id".into());
        }
        meta
    }

    /// A random config of this run: thread and namespace, no checkpoint id.
    fn place(&mut self) -> CheckpointConfig {
        let thread = self.rng.pick(&self.threads).clone();
        let ns = *self.rng.pick(&NAMESPACES);
        cfg_ns(&thread, ns)
    }

    /// A random existing checkpoint (latest or earlier) of a random place, if any.
    async fn existing(&mut self) -> Option<CheckpointConfig> {
        for _ in 0..4 {
            let place = self.place();
            let ids = self.model_ids(&place.thread_id, &place.checkpoint_ns).await;
            if ids.is_empty() {
                continue;
            }
            let id = if self.rng.chance(60) {
                ids[0].clone()
            } else {
                self.rng.pick(&ids).clone()
            };
            return Some(place.with_checkpoint_id(id));
        }
        None
    }

    /// A new checkpoint child of `parent` (or a root), with the versions it writes.
    async fn child(
        &mut self,
        parent: &CheckpointConfig,
    ) -> (Checkpoint, CheckpointMetadata, ChannelVersions) {
        let mut cp = if parent.checkpoint_id.is_some() {
            get_some(&self.model, parent).await.checkpoint.successor()
        } else {
            Checkpoint::new()
        };
        if self.rng.chance(50) {
            // Values of unchanged channels are not written again: drop or keep them.
            cp.channel_values.clear();
        }
        let mut new_versions = ChannelVersions::new();
        for channel in CHANNELS {
            if cp.channel_versions.contains_key(channel) && self.rng.chance(5) {
                cp.channel_versions.remove(channel);
                cp.channel_values.remove(channel);
                continue;
            }
            if !self.rng.chance(50) {
                continue;
            }
            let version = self.next_version();
            cp.channel_versions
                .insert(channel.to_owned(), version.clone());
            new_versions.insert(channel.to_owned(), version);
            match self.rng.below(10) {
                0 => {
                    cp.channel_values.remove(channel);
                }
                1 => {
                    cp.channel_values
                        .insert(channel.to_owned(), TypedValue::empty());
                }
                _ => {
                    let v = self.small_value();
                    cp.channel_values.insert(channel.to_owned(), v);
                }
            }
        }
        if self.rng.chance(50) {
            cp.versions_seen
                .insert("node".into(), cp.channel_versions.clone());
        }
        cp.updated_channels = self
            .rng
            .chance(50)
            .then(|| new_versions.keys().cloned().collect());
        let meta = self.metadata();
        (cp, meta, new_versions)
    }

    /// A few writes of one task.
    fn writes(&mut self) -> (Vec<(String, TypedValue)>, String, String) {
        let (task, path) = *self.rng.pick(&TASKS);
        let n = 1 + self.rng.below(3);
        let mut writes = Vec::new();
        let mut specials = Vec::new();
        while writes.len() < n {
            let channel = *self.rng.pick(&WRITE_CHANNELS);
            if crate::special_write_index(channel).is_some() {
                // One write per special channel per call.
                if specials.contains(&channel) {
                    continue;
                }
                specials.push(channel);
            }
            let v = self.small_value();
            writes.push((channel.to_owned(), v));
        }
        (writes, task.to_owned(), path.to_owned())
    }

    /// The next operation, drawn from the model's current state.
    async fn op(&mut self) -> Op {
        loop {
            match self.rng.below(100) {
                0..=39 => {
                    let mut parent = self.place();
                    if self.rng.chance(85) {
                        if let Some(existing) = self.existing().await {
                            parent = existing;
                        }
                    }
                    let (checkpoint, metadata, new_versions) = self.child(&parent).await;
                    return Op::Put {
                        config: parent,
                        checkpoint,
                        metadata,
                        new_versions,
                    };
                }
                40..=64 => {
                    let Some(config) = self.existing().await else {
                        continue;
                    };
                    let (writes, task_id, task_path) = self.writes();
                    return Op::PutWrites {
                        config,
                        writes,
                        task_id,
                        task_path,
                    };
                }
                65..=79 => {
                    let Some(config) = self.existing().await else {
                        continue;
                    };
                    let (writes, task_id, task_path) = self.writes();
                    let (checkpoint, metadata, new_versions) = self.child(&config).await;
                    return Op::PutWritesAndPut {
                        config,
                        writes,
                        task_id,
                        task_path,
                        checkpoint,
                        metadata,
                        new_versions,
                    };
                }
                80..=81 => return Op::DeleteThread(self.rng.pick(&self.threads).clone()),
                82..=88 => {
                    let from = self.rng.pick(&self.threads).clone();
                    let mut empty = Vec::new();
                    for t in &self.threads {
                        if *t != from && self.thread_is_empty(t).await {
                            empty.push(t.clone());
                        }
                    }
                    if empty.is_empty() {
                        continue;
                    }
                    let to = self.rng.pick(&empty).clone();
                    return Op::CopyThread { from, to };
                }
                89..=94 => {
                    let n = 1 + self.rng.below(2);
                    let thread_ids = (0..n)
                        .map(|_| self.rng.pick(&self.threads).clone())
                        .collect();
                    let strategy = if self.rng.chance(85) {
                        PruneStrategy::KeepLatest
                    } else {
                        PruneStrategy::Delete
                    };
                    return Op::Prune {
                        thread_ids,
                        strategy,
                    };
                }
                _ => {
                    let n = usize::from(!self.rng.chance(10));
                    let runs = (0..n).map(|_| self.rng.pick(&self.runs).clone()).collect();
                    return Op::DeleteForRuns(runs);
                }
            }
        }
    }

    /// A random metadata filter (often empty).
    fn filter(&mut self) -> BTreeMap<String, serde_json::Value> {
        let mut filter = BTreeMap::new();
        if self.rng.chance(15) {
            filter.insert("run_id".into(), json!(self.rng.pick(&self.runs)));
        }
        if self.rng.chance(10) {
            filter.insert("step".into(), json!(self.rng.below(4) as i64 - 1));
        }
        if self.rng.chance(10) {
            filter.insert("source".into(), json!(*self.rng.pick(&["input", "loop"])));
        }
        if self.rng.chance(10) {
            filter.insert("k".into(), json!(*self.rng.pick(&["x", "y"])));
        }
        filter
    }

    /// Compares the reads of both savers after operation `index`.
    async fn compare(&mut self, index: usize, op: &Op) {
        let ctx = format!("operation {index}: {op:?}");
        // The latest checkpoint of a random place.
        let place = self.place();
        let expected = get(&self.model, &place).await;
        let actual = get(self.saver, &place).await;
        self.check(&ctx, &format!("get_tuple({place:?})"), &expected, &actual);

        // A known checkpoint, maybe deleted, maybe looked up in another thread.
        if !self.known.is_empty() {
            let (mut thread, ns, id) = self.rng.pick(&self.known).clone();
            if self.rng.chance(20) {
                thread = self.rng.pick(&self.threads).clone();
            }
            let config = cfg_ns(&thread, &ns).with_checkpoint_id(id);
            let expected = get(&self.model, &config).await;
            let actual = get(self.saver, &config).await;
            self.check(&ctx, &format!("get_tuple({config:?})"), &expected, &actual);
        }

        // One thread's listing with a random namespace, filter, bound and limit.
        let mut query = ListQuery::thread(self.rng.pick(&self.threads).clone());
        if self.rng.chance(20) {
            // Across threads, by one of this run's own run ids.
            query.thread_id = None;
            query
                .filter
                .insert("run_id".into(), json!(self.rng.pick(&self.runs)));
        }
        if self.rng.chance(50) {
            query.checkpoint_ns = Some((*self.rng.pick(&NAMESPACES)).to_owned());
        }
        query.filter.extend(self.filter());
        if !self.known.is_empty() && self.rng.chance(25) {
            query.before = Some(self.rng.pick(&self.known).2.clone());
        }
        if self.rng.chance(30) {
            query.limit = Some(self.rng.below(4));
        }
        let expected = list(&self.model, &query).await;
        let actual = list(self.saver, &query).await;
        self.check(&ctx, &format!("list({query:?})"), &expected, &actual);
    }

    #[track_caller]
    fn check<T: PartialEq + std::fmt::Debug>(
        &self,
        context: &str,
        read: &str,
        expected: &T,
        actual: &T,
    ) {
        if expected != actual {
            panic!(
                "the saver disagrees with the in-memory model (seed {:#x}, {context})\nread: {read}\nmodel: {expected:#?}\nsaver: {actual:#?}",
                self.seed
            );
        }
    }
}

/// The checkpoint ids and thread ids of a listing, for short failure messages.
fn summary(tuples: &[CheckpointTuple]) -> Vec<(String, String, String)> {
    tuples
        .iter()
        .map(|t| {
            (
                t.config.thread_id.clone(),
                t.config.checkpoint_ns.clone(),
                t.checkpoint.id.clone(),
            )
        })
        .collect()
}

/// Random operations over a few threads, two namespaces and three channels (puts chained to
/// the latest or an earlier checkpoint, pending writes with repeated keys, put_writes_and_put,
/// deletions, copies, prunes, deletions by run) give the same reads as on the in-memory
/// model: `get_tuple` (latest and by id) and `list` (with random filter, bound and limit)
/// after every operation, compared field by field.
pub async fn random_operations_match_the_model(saver: &dyn CheckpointSaver) {
    for seed in SEEDS {
        let mut run = Run {
            seed,
            rng: Rng(seed),
            saver,
            model: InMemorySaver::new(),
            threads: (0..THREADS).map(|_| thread_id()).collect(),
            runs: (0..RUNS).map(|_| unique("conformance-model-run")).collect(),
            known: Vec::new(),
            version: 0,
        };
        for index in 0..OPS_PER_SEED {
            let op = run.op().await;
            let expected = ok(
                op.apply(&run.model).await,
                &format!("model: operation {index}"),
            );
            let actual = match op.apply(saver).await {
                Ok(v) => v,
                Err(e) => panic!(
                    "the saver failed where the model succeeded (seed {seed:#x}, operation \
                     {index}: {op:?}): {e}"
                ),
            };
            run.check(
                &format!("operation {index}: {op:?}"),
                "the operation's result",
                &expected,
                &actual,
            );
            if let Some(stored) = &actual {
                run.known.push((
                    stored.thread_id.clone(),
                    stored.checkpoint_ns.clone(),
                    id_of(stored),
                ));
            }
            run.compare(index, &op).await;
        }
        // Every thread in full at the end, as a final check.
        for thread in run.threads.clone() {
            let expected = list(&run.model, &ListQuery::thread(&thread)).await;
            let actual = list(saver, &ListQuery::thread(&thread)).await;
            assert_eq!(
                summary(&expected),
                summary(&actual),
                "seed {seed:#x}: final listing of {thread}"
            );
            run.check("after the last operation", "final list", &expected, &actual);
        }
    }
}

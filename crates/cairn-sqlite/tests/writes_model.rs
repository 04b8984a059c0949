//! Pending writes under random sequences of calls: SQLite (writes in checkpoint rows since
//! schema 13, rows of `checkpoint_writes` for checkpoints not stored yet, batches filing
//! writes into the rows they store) must keep exactly what the reference in-memory saver
//! keeps — per task and index the first regular write, the last special one — whatever the
//! order of writes, checkpoints and batches, and after copying one thread over another that
//! holds writes and checkpoints of its own (writes for checkpoints only one side stores
//! included).

use cairn_checkpoint::{
    ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver,
    CheckpointSource, InMemorySaver, PutRequest, TaskWrites, TypedValue, ERROR, INTERRUPT, RESUME,
};
use cairn_sqlite::SqliteSaver;

/// A small deterministic generator (xorshift64*), so a failing case can be replayed by seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize % n
    }
}

const CHECKPOINTS: usize = 4;
const TASKS: [&str; 3] = ["1f1ea437-d1a5-6e7b-8000-00000000aaaa", "task-b", "task-c"];
const CHANNELS: [&str; 5] = ["a", "b", ERROR, INTERRUPT, RESUME];

fn checkpoint_id(k: usize) -> String {
    format!("1f1ea437-d1a5-6e7b-8000-0000000000{k:02x}")
}

fn at(thread: &str, k: usize) -> CheckpointConfig {
    CheckpointConfig::thread(thread).with_checkpoint_id(checkpoint_id(k))
}

/// `(config, checkpoint)` storing checkpoint `k` in `thread` (its parent is `k - 1`).
fn checkpoint_k(thread: &str, k: usize) -> (CheckpointConfig, Checkpoint) {
    let mut checkpoint = Checkpoint::new();
    checkpoint.id = checkpoint_id(k);
    let parent = match k {
        0 => CheckpointConfig::thread(thread),
        _ => at(thread, k - 1),
    };
    (parent, checkpoint)
}

/// Stores checkpoint `k` of `thread` on its own in every saver.
async fn put_k(savers: &[&dyn CheckpointSaver], thread: &str, k: usize) {
    let (parent, checkpoint) = checkpoint_k(thread, k);
    for saver in savers {
        saver
            .put(
                &parent,
                checkpoint.clone(),
                CheckpointMetadata::new(CheckpointSource::Loop, k as i64),
                ChannelVersions::new(),
            )
            .await
            .expect("put");
    }
}

/// The two threads: the source of the copy, and its target, which has data of its own.
const THREADS: [&str; 2] = ["t", "u"];

/// One task's writes: one to three channels, each with a value naming the call.
fn writes(rng: &mut Rng, call: usize) -> Vec<(String, TypedValue)> {
    (0..1 + rng.below(3))
        .map(|i| {
            let channel = CHANNELS[rng.below(CHANNELS.len())];
            let value = TypedValue::new("bytes", format!("{call}.{i}").into_bytes());
            (channel.to_owned(), value)
        })
        .collect()
}

/// What a saver holds as pending writes of checkpoint `k` of `thread`, in a canonical order.
async fn kept(
    saver: &dyn CheckpointSaver,
    thread: &str,
    k: usize,
) -> Vec<(String, String, String)> {
    let Some(tuple) = saver.get_tuple(&at(thread, k)).await.expect("get") else {
        return Vec::new();
    };
    let mut writes: Vec<(String, String, String)> = tuple
        .pending_writes
        .into_iter()
        .map(|w| {
            let value = String::from_utf8(w.value.data.to_vec()).expect("utf-8");
            (w.task_id, w.channel, value)
        })
        .collect();
    writes.sort();
    writes
}

async fn run_case(seed: u64) {
    let mut rng = Rng(seed | 1);
    let sqlite = SqliteSaver::in_memory().expect("open");
    let model = InMemorySaver::new();
    let savers: [&dyn CheckpointSaver; 2] = [&sqlite, &model];
    let mut stored = [[false; CHECKPOINTS]; 2];
    for call in 0..60 {
        let side = rng.below(THREADS.len());
        let thread = THREADS[side];
        // The first calls only write, so that writes for checkpoints not stored yet (rows of
        // `checkpoint_writes`) meet later writes into the checkpoints' own rows.
        let op = if call < 12 { 0 } else { rng.below(4) };
        match op {
            // Writes on their own, for a checkpoint stored or not (yet).
            0 | 1 => {
                let k = rng.below(CHECKPOINTS);
                let task = TASKS[rng.below(TASKS.len())];
                let w = writes(&mut rng, call);
                for saver in savers {
                    saver
                        .put_writes(&at(thread, k), w.clone(), task, "p")
                        .await
                        .expect("put_writes");
                }
            }
            // A checkpoint on its own (again, if it is stored already).
            2 => {
                let k = rng.below(CHECKPOINTS);
                put_k(&savers, thread, k).await;
                stored[side][k] = true;
            }
            // A batch of up to three requests, each a checkpoint with writes for its parent.
            _ => {
                let first = rng.below(CHECKPOINTS);
                let requests: Vec<PutRequest> = (first..CHECKPOINTS.min(first + 1 + rng.below(3)))
                    .map(|k| {
                        let (parent, checkpoint) = checkpoint_k(thread, k);
                        let task_writes = if k > 0 && rng.below(3) > 0 {
                            vec![TaskWrites {
                                task_id: TASKS[rng.below(TASKS.len())].to_owned(),
                                task_path: "p".into(),
                                writes: writes(&mut rng, call),
                            }]
                        } else {
                            Vec::new()
                        };
                        stored[side][k] = true;
                        PutRequest {
                            config: parent,
                            writes: task_writes,
                            checkpoint,
                            metadata: CheckpointMetadata::new(CheckpointSource::Loop, k as i64),
                            new_versions: ChannelVersions::new(),
                        }
                    })
                    .collect();
                for saver in savers {
                    saver.put_batch(requests.clone()).await.expect("put_batch");
                }
            }
        }
    }
    let compare = |when: &'static str| {
        let (sqlite, model) = (&sqlite, &model);
        async move {
            for thread in THREADS {
                for k in 0..CHECKPOINTS {
                    assert_eq!(
                        kept(sqlite, thread, k).await,
                        kept(model, thread, k).await,
                        "seed {seed}, thread {thread}, checkpoint {k}, {when}"
                    );
                }
            }
        }
    };
    // Before copying (reads merge rows of `checkpoint_writes` with the checkpoint rows'), and
    // after copying "t" over "u" (rows move into checkpoint rows, the source's writes win).
    compare("before copying").await;
    for saver in savers {
        saver.copy_thread("t", "u").await.expect("copy");
    }
    let source_stored = stored[0];
    for (target, source) in stored[1].iter_mut().zip(source_stored) {
        *target |= source;
    }
    compare("after copying").await;
    // Then every checkpoint stored, so that writes for checkpoints neither side stored are
    // read too.
    for (side, thread) in THREADS.into_iter().enumerate() {
        for k in (0..CHECKPOINTS).filter(|k| !stored[side][*k]) {
            put_k(&savers, thread, k).await;
        }
    }
    compare("with every checkpoint stored").await;
}

#[tokio::test]
async fn random_sequences_keep_what_the_reference_saver_keeps() {
    for seed in 1..=200u64 {
        run_case(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15)).await;
    }
}

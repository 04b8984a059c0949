//! A micro-benchmark of the SQLite saver's write path, without the graph runtime.
//!
//! ```text
//! cargo run --release -p cairn-sqlite --example sqlite_put_bench [steps]
//! ```
//!
//! * W2-like loop: `put_writes` + `put` per step on one thread, one channel changed.
//! * W1-like chat: per turn `get_tuple` of the latest, then two super-steps of `put_writes`
//!   + `put`, storing a growing list of 200-character messages per version.
//! * 64 concurrent tasks under `synchronous=FULL`: checkpoints/s and commits per checkpoint
//!   (each commit is one WAL fsync).

use std::time::Instant;

use cairn_checkpoint::*;
use cairn_sqlite::{SqliteOptions, SqliteSaver, Synchronous};

fn cfg(thread: &str, id: Option<String>) -> CheckpointConfig {
    let mut c = CheckpointConfig::thread(thread);
    c.checkpoint_id = id;
    c
}

async fn w2(saver: &SqliteSaver, thread: &str, steps: usize) -> Result<()> {
    let codec = ValueCodec::default();
    let mut cp = Checkpoint::new();
    let mut parent: Option<String> = None;
    for i in 0..steps {
        if let Some(p) = &parent {
            saver
                .put_writes(
                    &cfg(thread, Some(p.clone())),
                    vec![("count".into(), codec.encode(&(i as i64))?)],
                    "task-1",
                    "~__pregel_pull, step",
                )
                .await?;
        }
        let v = saver.get_next_version(cp.channel_versions.get("count"));
        let mut next = cp.successor();
        next.channel_values
            .insert("count".into(), codec.encode(&(i as i64))?);
        next.channel_versions.insert("count".into(), v.clone());
        let meta = CheckpointMetadata::new(CheckpointSource::Loop, i as i64);
        let stored = saver
            .put(
                &cfg(thread, parent.clone()),
                next.clone(),
                meta,
                [("count".into(), v)].into(),
            )
            .await?;
        next.channel_values.clear();
        cp = next;
        parent = stored.checkpoint_id;
    }
    Ok(())
}

async fn w1(saver: &SqliteSaver, thread: &str, turns: usize) -> Result<()> {
    let codec = ValueCodec::default();
    let text: String = "x".repeat(200);
    let mut messages: Vec<String> = Vec::new();
    let mut step = -1i64;
    for _ in 0..turns {
        let latest = saver.get_tuple(&CheckpointConfig::thread(thread)).await?;
        let (mut cp, mut parent) = match latest {
            Some(t) => (t.checkpoint, t.config.checkpoint_id),
            None => (Checkpoint::new(), None),
        };
        for _ in 0..2 {
            messages.push(text.clone());
            let value = codec.encode(&messages)?;
            if let Some(p) = &parent {
                saver
                    .put_writes(
                        &cfg(thread, Some(p.clone())),
                        vec![(
                            "messages".into(),
                            codec.encode(std::slice::from_ref(&text))?,
                        )],
                        "task-1",
                        "~__pregel_pull, reply",
                    )
                    .await?;
            }
            let v = saver.get_next_version(cp.channel_versions.get("messages"));
            let mut next = cp.successor();
            next.channel_values.clear();
            next.channel_values.insert("messages".into(), value);
            next.channel_versions.insert("messages".into(), v.clone());
            step += 1;
            let stored = saver
                .put(
                    &cfg(thread, parent.clone()),
                    next.clone(),
                    CheckpointMetadata::new(CheckpointSource::Loop, step),
                    [("messages".into(), v)].into(),
                )
                .await?;
            next.channel_values.clear();
            cp = next;
            parent = stored.checkpoint_id;
        }
    }
    Ok(())
}

fn open(dir: &std::path::Path, name: &str, sync: Synchronous) -> Result<SqliteSaver> {
    SqliteSaver::open_with(dir.join(name), SqliteOptions::default().synchronous(sync))
}

#[tokio::main]
async fn main() -> Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5000);
    let dir = tempfile::tempdir_in(std::env::var("BENCH_DIR").unwrap_or_else(|_| ".".into()))
        .map_err(|e| Error::backend("sqlite", "tempdir", e))?;

    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only == name;
    for sync in [Synchronous::Normal, Synchronous::Full] {
        if !run(if sync == Synchronous::Full {
            "w2full"
        } else {
            "w2"
        }) {
            continue;
        }
        let saver = open(dir.path(), &format!("w2-{sync:?}.db"), sync)?;
        let n = if sync == Synchronous::Full {
            steps / 5
        } else {
            steps
        };
        let t0 = Instant::now();
        w2(&saver, "w2", n).await?;
        let s = t0.elapsed().as_secs_f64();
        let st = saver.writer_stats();
        println!(
            "W2 {sync:?}: {:.0} steps/s ({n} steps, {} commits)",
            n as f64 / s,
            st.batches
        );
    }

    if run("w1") {
        let saver = open(dir.path(), "w1.db", Synchronous::Normal)?;
        let turns = 200 * (steps / 5000).max(1);
        let t0 = Instant::now();
        w1(&saver, "w1", turns).await?;
        let s = t0.elapsed().as_secs_f64();
        println!("W1 Normal: {:.0} turns/s ({turns} turns)", turns as f64 / s);
    }
    if !run("w64") {
        return Ok(());
    }

    let saver = open(dir.path(), "w64.db", Synchronous::Full)?;
    let per = (steps / 64).max(10);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..64 {
        let saver = saver.clone();
        tasks.push(tokio::spawn(async move {
            w2(&saver, &format!("t{t}"), per).await
        }));
    }
    for t in tasks {
        t.await.map_err(|e| Error::backend("sqlite", "join", e))??;
    }
    let s = t0.elapsed().as_secs_f64();
    let st = saver.writer_stats();
    let cps = 64 * per;
    println!(
        "64 tasks Full: {:.0} checkpoints/s, {:.0} requests/s, {:.3} commits (fsyncs) per checkpoint",
        cps as f64 / s,
        st.requests as f64 / s,
        st.batches as f64 / cps as f64
    );
    Ok(())
}

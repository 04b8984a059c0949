//! A micro-benchmark of the PostgreSQL saver's write path, without the graph runtime.
//!
//! ```text
//! BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/bench \
//!     cargo run --release -p cairn-postgres --example pg_put_bench [steps]
//! ```
//!
//! `BENCH_VERIFY=1` checks connections before reuse. Add
//! `?options=-c%20synchronous_commit%3Doff` to the URL to take the WAL flush out and see
//! the round trips alone. Each run uses a fresh schema (`cairn_bench_<pid>`), dropped at the end.
//!
//! * W2-like loop: `put_writes` + `put` per step on one thread, one channel changed.
//! * W1-like chat: per turn `get_tuple` of the latest, then two super-steps of `put_writes`
//!   + `put`, storing a growing list of 200-character messages per version.
//! * 64 concurrent tasks: checkpoints/s.

use std::time::Instant;

use cairn_checkpoint::*;
use cairn_postgres::{PostgresOptions, PostgresSaver};

fn cfg(thread: &str, id: Option<String>) -> CheckpointConfig {
    let mut c = CheckpointConfig::thread(thread);
    c.checkpoint_id = id;
    c
}

async fn w2(saver: &PostgresSaver, thread: &str, steps: usize) -> Result<()> {
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

async fn w1(saver: &PostgresSaver, thread: &str, turns: usize) -> Result<()> {
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

async fn drop_schema(saver: &PostgresSaver, schema: &str) {
    if let Ok(client) = saver.pool().get().await {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(2000);
    let url = std::env::var("BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let run = |name: &str| only.is_empty() || only == name;
    let schema = format!("cairn_bench_{}", std::process::id());
    let saver = PostgresOptions::new(url)
        .schema(schema.clone())
        .max_size(64)
        .verify_connections(std::env::var_os("BENCH_VERIFY").is_some())
        .connect()
        .await?;

    if run("w2") {
        let t0 = Instant::now();
        w2(&saver, "w2", steps).await?;
        let s = t0.elapsed().as_secs_f64();
        println!("W2: {:.0} steps/s ({steps} steps)", steps as f64 / s);
    }
    if run("w1") {
        let turns = 200 * (steps / 2000).max(1);
        let t0 = Instant::now();
        w1(&saver, "w1", turns).await?;
        let s = t0.elapsed().as_secs_f64();
        println!("W1: {:.0} turns/s ({turns} turns)", turns as f64 / s);
    }
    if run("w64") {
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
            t.await
                .map_err(|e| Error::backend("postgres", "join", e))??;
        }
        let s = t0.elapsed().as_secs_f64();
        println!("64 tasks: {:.0} checkpoints/s", (64 * per) as f64 / s);
    }
    drop_schema(&saver, &schema).await;
    Ok(())
}

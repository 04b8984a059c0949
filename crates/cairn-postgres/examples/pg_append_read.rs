//! Reading a long chat back from PostgreSQL: a `messages` list stored whole at every step
//! (LangGraph's way) against the same list stored as append values.
//!
//! ```text
//! BENCH_PG_URL=postgres://postgres@127.0.0.1:5432/bench \
//!     cargo run --release -p cairn-postgres --example pg_append_read [steps]
//! ```
//!
//! Each thread gets `steps` checkpoints (default 600), one 200-character message each. The
//! run prints the bytes stored per thread, then the mean time of `get_tuple` (latest and a
//! checkpoint in the middle) and of listing the whole history. Each run uses a fresh schema
//! (`cairn_bench_<pid>`), dropped at the end.

use std::time::Instant;

use cairn_checkpoint::*;
use cairn_postgres::{PostgresOptions, PostgresSaver};

/// Stores `steps` checkpoints on `thread`; `append`: as append values after the first.
async fn build(
    saver: &PostgresSaver,
    thread: &str,
    steps: usize,
    append: bool,
) -> Result<Vec<CheckpointConfig>> {
    let codec = ValueCodec::default();
    let mut messages: Vec<String> = Vec::new();
    let mut parent = CheckpointConfig::thread(thread);
    let mut version: Option<ChannelVersion> = None;
    let mut configs = Vec::with_capacity(steps);
    for step in 0..steps {
        let message = format!("{step:>5} {}", "x".repeat(194));
        messages.push(message.clone());
        let next = saver.get_next_version(version.as_ref());
        let value = match (&version, append) {
            (Some(base), true) => codec.encode_append(base, [&message])?,
            _ => codec.encode(&messages)?,
        };
        let mut cp = Checkpoint::new();
        cp.channel_values.insert("messages".into(), value);
        cp.channel_versions.insert("messages".into(), next.clone());
        parent = saver
            .put(
                &parent,
                cp,
                CheckpointMetadata::new(CheckpointSource::Loop, step as i64),
                [("messages".to_string(), next.clone())].into(),
            )
            .await?;
        configs.push(parent.clone());
        version = Some(next);
    }
    Ok(configs)
}

/// Mean milliseconds of `rounds` calls of `op`.
async fn time<F, Fut>(rounds: usize, op: F) -> Result<f64>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<usize>>,
{
    let t0 = Instant::now();
    for _ in 0..rounds {
        std::hint::black_box(op().await?);
    }
    Ok(t0.elapsed().as_secs_f64() * 1000.0 / rounds as f64)
}

async fn stored_bytes(saver: &PostgresSaver, schema: &str, thread: &str) -> Result<i64> {
    let client = saver
        .pool()
        .get()
        .await
        .map_err(|e| Error::backend("postgres", "pool", e))?;
    let row = client
        .query_one(
            &format!(
                "SELECT coalesce(SUM(octet_length(blob)), 0)::int8 \
                 FROM \"{schema}\".checkpoint_blobs WHERE thread_id = $1"
            ),
            &[&thread],
        )
        .await
        .map_err(|e| Error::backend("postgres", "sum", e))?;
    Ok(row.get(0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let url = std::env::var("BENCH_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let schema = format!("cairn_bench_{}", std::process::id());
    let saver = PostgresOptions::new(url)
        .schema(schema.clone())
        .connect()
        .await?;
    for (thread, append) in [("whole", false), ("append", true)] {
        let configs = build(&saver, thread, steps, append).await?;
        let bytes = stored_bytes(&saver, &schema, thread).await?;
        let latest = CheckpointConfig::thread(thread);
        let middle = &configs[steps / 2];
        let get = |config: CheckpointConfig| {
            let saver = &saver;
            async move {
                let t = saver.get_tuple(&config).await?;
                Ok(t.map_or(0, |t| t.checkpoint.channel_values.len()))
            }
        };
        let latest_ms = time(50, || get(latest.clone())).await?;
        let middle_ms = time(50, || get(middle.clone())).await?;
        let list_ms = time(5, || async {
            Ok(saver.list(&ListQuery::thread(thread)).await?.len())
        })
        .await?;
        println!(
            "{thread:>6}: {:>9} bytes stored; get_tuple latest {latest_ms:.2} ms, \
             middle {middle_ms:.2} ms; list of {steps} {list_ms:.1} ms",
            bytes
        );
    }
    if std::env::var_os("BENCH_KEEP").is_some() {
        println!("kept schema {schema}");
        return Ok(());
    }
    if let Ok(client) = saver.pool().get().await {
        let _ = client
            .batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
            .await;
    }
    Ok(())
}

//! Reading a long chat stored as append values versus whole values, on Redis.
//!
//! ```text
//! cargo run --release -p cairn-redis --example redis_append_read [steps] [redis url]
//! ```
//!
//! Builds one thread of `steps` checkpoints (default 800), each adding one 200-character
//! message to `messages`, once as append values and once as whole lists (under a key prefix
//! of its own, deleted at the end), then reports the memory the thread's keys use, the time
//! of `get_tuple` of the latest checkpoint (median of 200 reads), of `get_tuple_known` when
//! the caller holds `messages`, and of listing the whole history.

use std::time::{Duration, Instant};

use cairn_checkpoint::*;
use cairn_redis::{RedisOptions, RedisSaver};

const CHANNEL: &str = "messages";

/// Stores the chat on `thread`; `append` picks append values over whole lists.
async fn build(saver: &RedisSaver, thread: &str, steps: usize, append: bool) -> Result<()> {
    let codec = ValueCodec::default();
    let mut parent = CheckpointConfig::thread(thread);
    let mut version: Option<ChannelVersion> = None;
    let mut items: Vec<String> = Vec::new();
    for step in 0..steps {
        let message = format!("{step:>4} {}", "m".repeat(195));
        let next = ChannelVersion::first_after(version.as_ref());
        items.push(message);
        let value = match (&version, append) {
            (Some(base), true) => codec.encode_append(base, items.last())?,
            _ => codec.encode(&items)?,
        };
        let mut cp = Checkpoint::new();
        cp.channel_values.insert(CHANNEL.into(), value);
        cp.channel_versions.insert(CHANNEL.into(), next.clone());
        parent = saver
            .put(
                &parent,
                cp,
                CheckpointMetadata::new(CheckpointSource::Loop, step as i64),
                [(CHANNEL.to_owned(), next.clone())].into(),
            )
            .await?;
        version = Some(next);
    }
    Ok(())
}

/// The memory Redis reports for every key of `thread`.
async fn memory(url: &str, saver: &RedisSaver, thread: &str) -> Result<u64> {
    let fail = |e| Error::backend("redis", "measuring memory", e);
    let mut conn = redis::Client::open(url)
        .map_err(fail)?
        .get_multiplexed_async_connection()
        .await
        .map_err(fail)?;
    let keys: Vec<String> = redis::cmd("SMEMBERS")
        .arg(saver.key_layout().thread_keys_key(thread))
        .query_async(&mut conn)
        .await
        .map_err(fail)?;
    let mut pipe = redis::pipe();
    for key in &keys {
        pipe.cmd("MEMORY")
            .arg("USAGE")
            .arg(key)
            .arg("SAMPLES")
            .arg(0);
    }
    let sizes: Vec<Option<u64>> = pipe.query_async(&mut conn).await.map_err(fail)?;
    Ok(sizes.into_iter().flatten().sum())
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn measure(saver: &RedisSaver, thread: &str, steps: usize) -> Result<()> {
    let codec = ValueCodec::default();
    let latest = CheckpointConfig::thread(thread);
    let mut reads = Vec::new();
    for _ in 0..200 {
        let start = Instant::now();
        let tuple = saver.get_tuple(&latest).await?;
        reads.push(start.elapsed());
        let items: Vec<String> = tuple
            .and_then(|t| t.channel_value(&codec, CHANNEL).transpose())
            .transpose()?
            .unwrap_or_default();
        assert_eq!(items.len(), steps);
    }
    let Some(id) = saver
        .get_tuple(&latest)
        .await?
        .and_then(|t| t.config.checkpoint_id)
    else {
        return Err(Error::InvalidArgument("the chat was not stored".into()));
    };
    let mut known_reads = Vec::new();
    for _ in 0..200 {
        let known = KnownValues {
            checkpoint_id: &id,
            channels: &[CHANNEL],
        };
        let start = Instant::now();
        saver.get_tuple_known(&latest, known).await?;
        known_reads.push(start.elapsed());
    }
    let start = Instant::now();
    let history = saver.list(&ListQuery::thread(thread)).await?;
    let list_time = start.elapsed();
    assert_eq!(history.len(), steps);
    println!(
        "  get_tuple(latest): median {:?}; get_tuple_known(latest, messages): median {:?}; \
         list of {steps}: {:?}",
        median(reads),
        median(known_reads),
        list_time
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let steps: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(800);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379/".to_owned());
    let prefix = format!("cairn-append-read-{}", std::process::id());
    let saver =
        RedisSaver::connect_with(&url, RedisOptions::default().with_key_prefix(prefix)).await?;
    for append in [true, false] {
        let thread = if append { "append" } else { "whole" };
        let start = Instant::now();
        build(&saver, thread, steps, append).await?;
        println!(
            "{thread} values: {steps} puts in {:?}, {} KiB in Redis",
            start.elapsed(),
            memory(&url, &saver, thread).await? / 1024
        );
        measure(&saver, thread, steps).await?;
        saver.delete_thread(thread).await?;
    }
    Ok(())
}

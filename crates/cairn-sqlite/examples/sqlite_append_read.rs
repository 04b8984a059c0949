//! Reading a long chat stored as append values versus whole values, on a SQLite file.
//!
//! ```text
//! cargo run --release -p cairn-sqlite --example sqlite_append_read [steps]
//! ```
//!
//! Builds one thread of `steps` checkpoints (default 800), each adding one 200-character
//! message to `messages`, once as append values and once as whole lists, then reports the
//! size of the database, the time of `get_tuple` of the latest checkpoint (median of 200
//! reads), of `get_tuple_known` when the caller holds `messages`, and of listing the whole
//! history.

use std::time::{Duration, Instant};

use cairn_checkpoint::*;
use cairn_sqlite::SqliteSaver;

const CHANNEL: &str = "messages";

/// Stores the chat on `thread`; `append` picks append values over whole lists.
async fn build(saver: &SqliteSaver, thread: &str, steps: usize, append: bool) -> Result<()> {
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

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

async fn measure(saver: &SqliteSaver, thread: &str, steps: usize) -> Result<()> {
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
    let steps: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(800);
    let dir = std::env::temp_dir().join(format!("cairn-append-read-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::backend("io", "creating a directory", e))?;
    for append in [true, false] {
        let path = dir.join(if append { "append.db" } else { "whole.db" });
        let saver = SqliteSaver::open(&path)?;
        let start = Instant::now();
        build(&saver, "chat", steps, append).await?;
        saver.checkpoint_wal().await?;
        println!(
            "{} values: {steps} puts in {:?}, database {} KiB",
            if append { "append" } else { "whole" },
            start.elapsed(),
            saver.storage_bytes().await? / 1024
        );
        measure(&saver, "chat", steps).await?;
    }
    if std::env::var_os("KEEP").is_some() {
        println!("{}", dir.display());
        return Ok(());
    }
    std::fs::remove_dir_all(&dir).map_err(|e| Error::backend("io", "cleaning up", e))?;
    Ok(())
}

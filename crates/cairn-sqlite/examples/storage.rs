//! What a W1-like chat costs on disk, per table and index, and in WAL pages per commit.
//!
//! ```text
//! cargo run --release -p cairn-sqlite --example storage [turns]
//! ```
//!
//! Stores a chat of `turns` turns (default 384) shaped like the graph runtime's W1: per turn
//! an input checkpoint (`__start__` set), a START step (pending write, then a checkpoint
//! appending the user message to `messages` and setting `branch:to:reply`) and a `reply` step
//! (pending write, then a checkpoint appending the reply), with `versions_seen`, run ids and
//! append values. Then it reports, after a WAL checkpoint, the bytes of each table and index
//! (`dbstat`) and per checkpoint, and how many WAL pages each commit of 10 more turns wrote.

use cairn_checkpoint::*;
use cairn_sqlite::SqliteSaver;

const MESSAGES: &str = "messages";
const START: &str = "__start__";
const BRANCH: &str = "branch:to:reply";

fn message(i: usize, role: &str) -> serde_json::Value {
    serde_json::json!({"role": role, "content": format!("{i:>5} {}", "m".repeat(120)), "id": i})
}

/// One turn: three checkpoints, two pending writes; returns the commits it made.
struct Chat {
    thread: String,
    parent: Option<String>,
    cp: Checkpoint,
    step: i64,
    turn: usize,
}

impl Chat {
    fn new(thread: &str) -> Self {
        Chat {
            thread: thread.into(),
            parent: None,
            cp: Checkpoint::new(),
            step: -1,
            turn: 0,
        }
    }

    fn config(&self) -> CheckpointConfig {
        let mut c = CheckpointConfig::thread(&self.thread);
        c.checkpoint_id = self.parent.clone();
        c
    }

    async fn put(
        &mut self,
        saver: &SqliteSaver,
        run_id: &str,
        source: CheckpointSource,
        changed: Vec<(&str, TypedValue)>,
        writes: Option<(&str, Vec<(String, TypedValue)>)>,
    ) -> Result<()> {
        let mut next = self.cp.successor();
        next.channel_values.clear();
        let mut new_versions = ChannelVersions::new();
        for (channel, value) in changed {
            let v = saver.get_next_version(next.channel_versions.get(channel));
            next.channel_values.insert(channel.into(), value);
            next.channel_versions.insert(channel.into(), v.clone());
            new_versions.insert(channel.into(), v);
        }
        next.updated_channels = Some(new_versions.keys().cloned().collect());
        let meta = CheckpointMetadata::new(source, self.step).with_run_id(run_id);
        let stored = match writes {
            Some((task, writes)) => {
                saver
                    .put_writes_and_put(
                        &self.config(),
                        writes,
                        task,
                        "~__pregel_pull, node",
                        next.clone(),
                        meta,
                        new_versions,
                    )
                    .await?
            }
            None => {
                saver
                    .put(&self.config(), next.clone(), meta, new_versions)
                    .await?
            }
        };
        next.channel_values.clear();
        self.cp = next;
        self.parent = stored.checkpoint_id;
        self.step += 1;
        Ok(())
    }

    async fn turn(&mut self, saver: &SqliteSaver) -> Result<()> {
        let codec = ValueCodec::default();
        let run_id = new_checkpoint_id();
        let user = message(2 * self.turn, "user");
        let reply = message(2 * self.turn + 1, "assistant");
        self.step = -1;
        let input = codec.encode(&serde_json::json!({ MESSAGES: [user.clone()] }))?;
        self.put(
            saver,
            &run_id,
            CheckpointSource::Input,
            vec![(START, input)],
            None,
        )
        .await?;
        // START: consumes __start__, appends the user message, triggers reply.
        let seen = self.cp.channel_versions.get(START).cloned();
        self.cp
            .versions_seen
            .entry(START.into())
            .or_default()
            .extend(seen.map(|v| (START.to_owned(), v)));
        let messages = match self.cp.channel_versions.get(MESSAGES) {
            Some(base) => codec.encode_append(base, [&user])?,
            None => codec.encode(&[&user])?,
        };
        let write = vec![(MESSAGES.to_owned(), codec.encode(&[&user])?)];
        let trigger = codec.encode(&serde_json::Value::Null)?;
        self.put(
            saver,
            &run_id,
            CheckpointSource::Loop,
            vec![(MESSAGES, messages), (BRANCH, trigger)],
            Some(("task-start", write)),
        )
        .await?;
        // reply: appends the assistant message.
        let seen = self.cp.channel_versions.get(BRANCH).cloned();
        self.cp
            .versions_seen
            .entry("reply".into())
            .or_default()
            .extend(seen.map(|v| (BRANCH.to_owned(), v)));
        let base = self.cp.channel_versions.get(MESSAGES).cloned();
        let messages = match &base {
            Some(base) => codec.encode_append(base, [&reply])?,
            None => codec.encode(&[&reply])?,
        };
        let write = vec![(MESSAGES.to_owned(), codec.encode(&[&reply])?)];
        self.put(
            saver,
            &run_id,
            CheckpointSource::Loop,
            vec![(MESSAGES, messages)],
            Some(("task-reply", write)),
        )
        .await?;
        self.turn += 1;
        Ok(())
    }
}

fn sql_err(e: rusqlite::Error) -> Error {
    Error::backend("sqlite", "measuring", e)
}

#[tokio::main]
async fn main() -> Result<()> {
    let turns: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(384);
    let dir = tempfile::tempdir().map_err(|e| Error::backend("io", "tempdir", e))?;
    let path = dir.path().join("w1.db");
    let saver = SqliteSaver::open(&path)?;
    let mut chat = Chat::new("w1");
    for _ in 0..turns {
        chat.turn(&saver).await?;
    }
    saver.checkpoint_wal().await?;
    let checkpoints = 3 * turns;
    // CAIRN_STORAGE_KEEP=path keeps a copy of the database for inspection.
    if let Some(keep) = std::env::var_os("CAIRN_STORAGE_KEEP") {
        std::fs::copy(&path, keep).map_err(|e| Error::backend("io", "keeping a copy", e))?;
    }

    let conn = rusqlite::Connection::open(&path).map_err(sql_err)?;
    let mut stmt = conn
        .prepare(
            "SELECT name, SUM(pgsize), SUM(payload), SUM(pagetype = 'internal'), \
                    SUM(pagetype = 'overflow'), MAX(length(path) - length(replace(path, '/', ''))) \
             FROM dbstat GROUP BY name ORDER BY SUM(pgsize) DESC",
        )
        .map_err(sql_err)?;
    let rows = stmt
        .query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?,
                (
                    r.get::<_, i64>(3)?,
                    r.get::<_, i64>(4)?,
                    r.get::<_, i64>(5)?,
                ),
            ))
        })
        .map_err(sql_err)?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(sql_err)?;
    let total: i64 = rows.iter().map(|r| r.1).sum();
    println!(
        "schema {}: {turns} turns, {checkpoints} checkpoints",
        saver.schema_version().await?
    );
    for (name, bytes, payload, (interior, overflow, depth)) in &rows {
        println!(
            "  {name:30} {bytes:>9} B  (payload {payload:>9} B; {interior} interior, \
             {overflow} overflow pages; depth {depth})"
        );
    }
    println!(
        "  total {total} B = {:.0} B per checkpoint",
        total as f64 / checkpoints as f64
    );
    drop(stmt);
    drop(conn);

    // WAL pages per commit: 10 more turns after emptying the WAL.
    let wal = dir.path().join("w1.db-wal");
    let before = saver.writer_stats();
    let frames_before = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    for _ in 0..10 {
        chat.turn(&saver).await?;
    }
    let after = saver.writer_stats();
    let wal_bytes = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    let frames = (wal_bytes.saturating_sub(32)) / (4096 + 24);
    let commits = after.batches - before.batches;
    println!(
        "  WAL: {frames} pages for {commits} commits = {:.2} pages per commit (WAL was {frames_before} B)",
        frames as f64 / commits as f64
    );
    wal_pages_by_btree(&path, &wal, commits)
}

/// Which b-trees the frames in the WAL belong to (per commit), from the page numbers in the
/// frame headers and `dbstat`.
fn wal_pages_by_btree(db: &std::path::Path, wal: &std::path::Path, commits: u64) -> Result<()> {
    let bytes = std::fs::read(wal).map_err(|e| Error::backend("io", "reading the WAL", e))?;
    let conn = rusqlite::Connection::open(db).map_err(sql_err)?;
    let owner: std::collections::HashMap<u32, String> = conn
        .prepare("SELECT pageno, name FROM dbstat")
        .and_then(|mut s| {
            s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()
        })
        .map_err(sql_err)?;
    let mut counts: std::collections::BTreeMap<String, u64> = Default::default();
    for frame in bytes.get(32..).unwrap_or_default().chunks_exact(4096 + 24) {
        let page = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]);
        let name = owner.get(&page).cloned().unwrap_or_else(|| "(free)".into());
        *counts.entry(name).or_default() += 1;
    }
    for (name, n) in counts {
        println!(
            "    {name:38} {:.2} pages per commit",
            n as f64 / commits as f64
        );
    }
    Ok(())
}

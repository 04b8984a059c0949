//! The storage backends a cell runs on: one fresh instance per warm-up and per timed run, and
//! how each reports the bytes it occupies (measured after the clock stops).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_checkpoint::{CheckpointSaver, InMemorySaver, ListQuery};
use cairn_graph::RunConfig;
use cairn_postgres::tokio_postgres;
use cairn_postgres::{PostgresOptions, PostgresSaver};
use cairn_redis::{RedisOptions, RedisSaver};
use cairn_sqlite::{SqliteOptions, SqliteSaver, Synchronous, WriterStats};
use serde_json::{json, Map, Value};

use crate::BoxError;

/// Which checkpointer a cell uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaverKind {
    /// The graph is compiled without a checkpointer.
    None,
    /// `cairn_checkpoint::InMemorySaver`.
    Memory,
    /// `cairn_sqlite::SqliteSaver` on a file in a fresh temp dir.
    Sqlite,
    /// `cairn_postgres::PostgresSaver` in a fresh schema.
    Postgres,
    /// `cairn_redis::RedisSaver` under a fresh key prefix.
    Redis,
}

impl SaverKind {
    /// Parses a saver name as used in the JSON (`none`, `memory`, ...).
    pub fn parse(name: &str) -> Result<Self, BoxError> {
        Ok(match name.trim().to_ascii_lowercase().as_str() {
            "none" => SaverKind::None,
            "memory" => SaverKind::Memory,
            "sqlite" => SaverKind::Sqlite,
            "postgres" => SaverKind::Postgres,
            "redis" => SaverKind::Redis,
            other => {
                return Err(format!(
                    "unknown saver {other:?} (none, memory, sqlite, postgres, redis)"
                )
                .into())
            }
        })
    }

    /// The name used in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            SaverKind::None => "none",
            SaverKind::Memory => "memory",
            SaverKind::Sqlite => "sqlite",
            SaverKind::Postgres => "postgres",
            SaverKind::Redis => "redis",
        }
    }
}

/// Durability mode of a cell: the runtime's [`cairn_graph::Durability`] plus the saver's sync
/// policy (see [`durability_meta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Runtime `Async` (Cairn's and LangGraph's default) with the saver's default sync policy.
    Default,
    /// Runtime `Sync` with the saver's power-loss-safe sync policy.
    Sync,
    /// Runtime `Exit` (one checkpoint per invoke, at its end) with the saver's default sync
    /// policy. Cairn only: the peer's W1 check wants three checkpoints per turn.
    Exit,
}

impl Durability {
    /// Parses `default`, `sync` or `exit`.
    pub fn parse(name: &str) -> Result<Self, BoxError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "default" => Ok(Durability::Default),
            "sync" => Ok(Durability::Sync),
            "exit" => Ok(Durability::Exit),
            other => Err(format!("unknown durability {other:?} (default, sync, exit)").into()),
        }
    }

    /// The name used in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Default => "default",
            Durability::Sync => "sync",
            Durability::Exit => "exit",
        }
    }

    /// The runtime mode every invoke of the cell runs with.
    pub fn runtime(self) -> cairn_graph::Durability {
        match self {
            Durability::Default => cairn_graph::Durability::Async,
            Durability::Sync => cairn_graph::Durability::Sync,
            Durability::Exit => cairn_graph::Durability::Exit,
        }
    }

    /// Whether the saver runs its power-loss-safe sync policy (SQLite synchronous=FULL,
    /// PostgreSQL synchronous_commit=on) rather than its default.
    pub fn strong_saver_sync(self) -> bool {
        self == Durability::Sync
    }
}

/// Connection settings shared by every backend of a run.
#[derive(Debug, Clone)]
pub struct Env {
    /// PostgreSQL URL (database created if missing).
    pub pg_url: String,
    /// Redis URL.
    pub redis_url: String,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

fn unique_name(kind: &str) -> String {
    format!(
        "cairnbench_{kind}_{}_{}",
        std::process::id(),
        NEXT_ID.fetch_add(1, Ordering::Relaxed)
    )
}

enum Inner {
    None,
    Memory(Arc<InMemorySaver>),
    Sqlite {
        saver: Arc<SqliteSaver>,
        dir: tempfile::TempDir,
        /// Writer counters right after open (schema setup excluded from the figures).
        stats_at_open: WriterStats,
    },
    Postgres {
        saver: Arc<PostgresSaver>,
        schema: String,
    },
    Redis {
        prefix: String,
        conn: redis::aio::MultiplexedConnection,
    },
}

/// One fresh storage instance.
pub struct Backend {
    /// The checkpointer to compile graphs with (`None` for [`SaverKind::None`]).
    pub saver: Option<Arc<dyn CheckpointSaver>>,
    /// The cell's durability mode.
    pub durability: Durability,
    inner: Inner,
}

/// The tables of a Cairn PostgreSQL schema whose sizes make up the storage figure.
const PG_TABLES: [&str; 3] = ["checkpoints", "checkpoint_blobs", "checkpoint_writes"];

impl Backend {
    /// Opens fresh, empty storage of `kind` in mode `durability`.
    pub async fn open(
        kind: SaverKind,
        durability: Durability,
        env: &Env,
    ) -> Result<Self, BoxError> {
        let (saver, inner): (Option<Arc<dyn CheckpointSaver>>, Inner) = match kind {
            SaverKind::None => (None, Inner::None),
            SaverKind::Memory => {
                let saver = Arc::new(InMemorySaver::new());
                (Some(saver.clone()), Inner::Memory(saver))
            }
            SaverKind::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("cairnbench-sqlite-")
                    .tempdir()?;
                let options = if durability.strong_saver_sync() {
                    SqliteOptions::default().synchronous(Synchronous::Full)
                } else {
                    SqliteOptions::default()
                };
                let saver = Arc::new(SqliteSaver::open_with(
                    dir.path().join("checkpoints.sqlite"),
                    options,
                )?);
                let stats_at_open = saver.writer_stats();
                (
                    Some(saver.clone()),
                    Inner::Sqlite {
                        saver,
                        dir,
                        stats_at_open,
                    },
                )
            }
            SaverKind::Postgres => {
                let schema = unique_name("pg");
                let url = if durability.strong_saver_sync() {
                    with_pg_option(&env.pg_url, "synchronous_commit%3Don")
                } else {
                    env.pg_url.clone()
                };
                let saver = Arc::new(
                    PostgresOptions::new(url)
                        .schema(schema.clone())
                        .connect()
                        .await?,
                );
                (Some(saver.clone()), Inner::Postgres { saver, schema })
            }
            SaverKind::Redis => {
                let prefix = unique_name("redis");
                let saver = Arc::new(
                    RedisSaver::connect_with(
                        &env.redis_url,
                        RedisOptions::default().with_key_prefix(prefix.clone()),
                    )
                    .await?,
                );
                let conn = redis::Client::open(env.redis_url.as_str())?
                    .get_multiplexed_async_connection()
                    .await?;
                (Some(saver), Inner::Redis { prefix, conn })
            }
        };
        Ok(Backend {
            saver,
            durability,
            inner,
        })
    }

    /// The run configuration of one invoke on `thread`: the cell's runtime durability.
    pub fn config(&self, thread: impl Into<String>) -> RunConfig {
        RunConfig::thread(thread).with_durability(self.durability.runtime())
    }

    /// Transactions the SQLite writer committed since open (`None` for other savers).
    pub fn sqlite_writer_stats(&self) -> Option<WriterStats> {
        match &self.inner {
            Inner::Sqlite {
                saver,
                stats_at_open,
                ..
            } => {
                let now = saver.writer_stats();
                let mut since_open = now;
                since_open.batches = now.batches.saturating_sub(stats_at_open.batches);
                since_open.requests = now.requests.saturating_sub(stats_at_open.requests);
                since_open.wal_checkpoints = now
                    .wal_checkpoints
                    .saturating_sub(stats_at_open.wal_checkpoints);
                Some(since_open)
            }
            _ => None,
        }
    }

    /// Transactions the PostgreSQL saver committed to store checkpoints, and the writes in
    /// them (`None` for other savers; each cell's saver is new).
    pub fn postgres_commit_stats(&self) -> Option<cairn_postgres::CommitStats> {
        match &self.inner {
            Inner::Postgres { saver, .. } => Some(saver.commit_stats()),
            _ => None,
        }
    }

    /// Checkpoints stored, over every thread and namespace (untimed; a full `list`).
    pub async fn count_checkpoints(&self) -> Result<Option<usize>, BoxError> {
        match &self.saver {
            Some(s) => Ok(Some(s.list(&ListQuery::all()).await?.len())),
            None => Ok(None),
        }
    }

    /// Copies the SQLite database file to `to` (a no-op for other savers). Call it after
    /// [`storage`](Self::storage), which checkpoints the WAL into the file.
    pub fn copy_sqlite_file(&self, to: &std::path::Path) -> Result<(), BoxError> {
        if let Inner::Sqlite { dir, .. } = &self.inner {
            std::fs::copy(dir.path().join("checkpoints.sqlite"), to)
                .map_err(|e| format!("copying the SQLite file to {}: {e}", to.display()))?;
        }
        Ok(())
    }

    /// What the storage holds now (untimed). `bytes` is the headline figure.
    pub async fn storage(&mut self) -> Result<Option<Map<String, Value>>, BoxError> {
        let mut out = Map::new();
        let writer = self.sqlite_writer_stats();
        match &mut self.inner {
            Inner::None => return Ok(None),
            Inner::Memory(saver) => memory_storage(saver.as_ref(), &mut out).await?,
            Inner::Sqlite { saver, dir, .. } => {
                let path = dir.path().join("checkpoints.sqlite");
                let size = |suffix: &str| {
                    let mut p = path.clone().into_os_string();
                    p.push(suffix);
                    std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0)
                };
                let (db, wal) = (size(""), size("-wal"));
                let bytes = saver.storage_bytes().await?;
                out.insert("bytes".into(), json!(bytes));
                out.insert("bytes_kind".into(), json!("sqlite file + WAL file"));
                out.insert("db_file_bytes".into(), json!(db));
                out.insert("wal_file_bytes".into(), json!(wal));
                if let Some(stats) = writer {
                    out.insert("writer_batches".into(), json!(stats.batches));
                    out.insert("writer_requests".into(), json!(stats.requests));
                }
                saver.checkpoint_wal().await?;
                out.insert(
                    "bytes_after_wal_checkpoint".into(),
                    json!(saver.storage_bytes().await?),
                );
            }
            Inner::Postgres { saver, schema } => {
                let client = saver.pool().get().await?;
                let mut total: i64 = 0;
                for t in PG_TABLES {
                    let table = format!("\"{schema}\".{t}");
                    let size: i64 = client
                        .query_one(
                            "SELECT pg_total_relation_size($1::text::regclass)",
                            &[&table],
                        )
                        .await?
                        .get(0);
                    let rows: i64 = client
                        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
                        .await?
                        .get(0);
                    out.insert(format!("{t}_bytes"), json!(size));
                    out.insert(format!("rows_{t}"), json!(rows));
                    total += size;
                }
                out.insert("bytes".into(), json!(total));
                out.insert(
                    "bytes_kind".into(),
                    json!(format!(
                        "sum of pg_total_relation_size over {}",
                        PG_TABLES.join(",")
                    )),
                );
            }
            Inner::Redis { prefix, conn } => {
                let keys = redis_keys(conn, prefix).await?;
                let mut total: u64 = 0;
                for key in &keys {
                    let usage: Option<u64> = redis::cmd("MEMORY")
                        .arg("USAGE")
                        .arg(key)
                        .arg("SAMPLES")
                        .arg(0)
                        .query_async(conn)
                        .await?;
                    total += usage.unwrap_or(0);
                }
                out.insert("bytes".into(), json!(total));
                out.insert(
                    "bytes_kind".into(),
                    json!("sum of MEMORY USAGE (SAMPLES 0) over the prefix's keys"),
                );
                out.insert("keys".into(), json!(keys.len()));
            }
        }
        Ok(Some(out))
    }

    /// Drops the storage: the temp dir, the schema, the keys.
    pub async fn close(self) -> Result<(), BoxError> {
        match self.inner {
            Inner::None | Inner::Memory(_) => {}
            Inner::Sqlite { saver, dir, .. } => {
                drop(self.saver);
                drop(saver);
                dir.close()?;
            }
            Inner::Postgres { saver, schema } => {
                let client = saver.pool().get().await?;
                client
                    .batch_execute(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
                    .await?;
            }
            Inner::Redis { prefix, mut conn } => {
                let keys = redis_keys(&mut conn, &prefix).await?;
                for chunk in keys.chunks(500) {
                    let _: () = redis::cmd("DEL").arg(chunk).query_async(&mut conn).await?;
                }
            }
        }
        Ok(())
    }
}

/// Adds `-c <setting>` (already URL-encoded) to the `options` of a PostgreSQL URL.
fn with_pg_option(url: &str, setting: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}options=-c%20{setting}")
}

async fn redis_keys(
    conn: &mut redis::aio::MultiplexedConnection,
    prefix: &str,
) -> Result<Vec<String>, BoxError> {
    let mut keys = BTreeSet::new();
    for pattern in [format!("{prefix}:*"), format!("{{{prefix}:*")] {
        let mut cursor: u64 = 0;
        loop {
            let (next, batch): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(conn)
                .await?;
            keys.extend(batch);
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(keys.into_iter().collect())
}

/// The saver's own count of stored values and writes (append values at their stored size),
/// plus the JSON size of each checkpoint header (without values) and metadata from a full
/// `list`, as the peer's in-memory figure counts its checkpoints.
async fn memory_storage(
    saver: &InMemorySaver,
    out: &mut Map<String, Value>,
) -> Result<(), BoxError> {
    let all = saver.list(&ListQuery::all()).await?;
    let mut ck = 0usize;
    for t in &all {
        let mut header = t.checkpoint.clone();
        header.channel_values.clear();
        ck += serde_json::to_vec(&header)?.len() + serde_json::to_vec(&t.metadata)?.len();
    }
    let stats = saver.stats();
    out.insert(
        "bytes".into(),
        json!(ck + stats.value_bytes + stats.write_bytes),
    );
    out.insert(
        "bytes_kind".into(),
        json!("estimated payload: stored channel values + writes + JSON of checkpoint headers and metadata"),
    );
    out.insert("checkpoint_bytes".into(), json!(ck));
    out.insert("blob_bytes".into(), json!(stats.value_bytes));
    out.insert("write_bytes".into(), json!(stats.write_bytes));
    out.insert("rows_checkpoints".into(), json!(stats.checkpoints));
    out.insert("rows_blobs".into(), json!(stats.values));
    out.insert("rows_writes".into(), json!(stats.writes));
    Ok(())
}

/// Creates the database named in `url` when it does not exist (connecting to `postgres`).
pub async fn ensure_pg_database(url: &str) -> Result<(), BoxError> {
    let config: tokio_postgres::Config = url.parse()?;
    let Some(db) = config.get_dbname().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = config.clone();
    admin.dbname("postgres");
    let (client, conn) = admin.connect(tokio_postgres::NoTls).await?;
    let task = tokio::spawn(conn);
    let exists = client
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await?
        .is_some();
    if !exists {
        let quoted = db.replace('"', "\"\"");
        client
            .batch_execute(&format!("CREATE DATABASE \"{quoted}\""))
            .await?;
    }
    drop(client);
    let _ = task.await;
    Ok(())
}

/// Server facts for the meta block (untimed; errors become strings).
pub async fn pg_facts(url: &str) -> Value {
    let result: Result<Value, BoxError> = async {
        let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls).await?;
        let task = tokio::spawn(conn);
        let mut facts = Map::new();
        for k in [
            "server_version",
            "synchronous_commit",
            "fsync",
            "shared_buffers",
            "wal_sync_method",
        ] {
            let v: String = client.query_one(&format!("SHOW {k}"), &[]).await?.get(0);
            facts.insert(k.into(), json!(v));
        }
        drop(client);
        let _ = task.await;
        Ok(Value::Object(facts))
    }
    .await;
    result.unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

/// Redis persistence settings for the meta block.
pub async fn redis_facts(url: &str) -> Value {
    let result: Result<Value, BoxError> = async {
        let mut conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        let mut facts = Map::new();
        for k in ["appendonly", "appendfsync", "save"] {
            let pair: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(k)
                .query_async(&mut conn)
                .await?;
            facts.insert(k.into(), json!(pair.get(1).cloned().unwrap_or_default()));
        }
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query_async(&mut conn)
            .await?;
        if let Some(v) = info.lines().find_map(|l| l.strip_prefix("redis_version:")) {
            facts.insert("redis_version".into(), json!(v.trim()));
        }
        Ok(Value::Object(facts))
    }
    .await;
    result.unwrap_or_else(|e| json!({ "error": e.to_string() }))
}

/// What each durability mode means: the runtime mode and each saver's sync policy (for the
/// JSON meta).
pub fn durability_meta(pg: &Value, redis: &Value) -> Value {
    let pg_default = format!(
        "server default synchronous_commit={}",
        pg.get("synchronous_commit")
            .and_then(Value::as_str)
            .unwrap_or("?")
    );
    let redis_default = format!(
        "server persistence as configured: appendonly={}, appendfsync={}",
        redis
            .get("appendonly")
            .and_then(Value::as_str)
            .unwrap_or("?"),
        redis
            .get("appendfsync")
            .and_then(Value::as_str)
            .unwrap_or("?")
    );
    json!({
        "modes": {
            "default": "runtime Durability::Async (Cairn's default, as LangGraph's default durability=\"async\"): every step's checkpoint is written, the put of step N overlapping step N+1, all puts complete before invoke returns; the saver's default sync policy",
            "sync": "runtime Durability::Sync (each step's put awaited before the next step starts, as LangGraph's durability=\"sync\"); the saver's power-loss-safe sync policy",
            "exit": "runtime Durability::Exit (one checkpoint per invoke, written when it ends, as LangGraph's durability=\"exit\"); the saver's default sync policy. Cairn only: the peer's W1 check requires three checkpoints per turn, so exit cells have no LangGraph counterpart"
        },
        "runtime_setting": "RunConfig::with_durability on every invoke of the cell (graphs compiled with the default)",
        "none": {"default": "no checkpointer (durability has no effect)"},
        "memory": {
            "default": "runtime Async; in process memory, nothing to sync",
            "sync": "runtime Sync; in process memory, nothing to sync",
            "exit": "runtime Exit; in process memory, nothing to sync"
        },
        "sqlite": {
            "default": "runtime Async; WAL, synchronous=NORMAL (SqliteSaver's default: the WAL is fsynced only at WAL checkpoints, so a commit survives a process crash, not a power loss); one writer thread, group commit",
            "sync": "runtime Sync; WAL, synchronous=FULL (every commit fsyncs the WAL: power-loss safe, like LangGraph's SqliteSaver, which always runs WAL with FULL); one writer thread, group commit (concurrent writers share one commit and so one fsync)",
            "exit": "runtime Exit; WAL, synchronous=NORMAL (as in default)"
        },
        "postgres": {
            "default": format!("runtime Async; {pg_default}"),
            "sync": "runtime Sync; synchronous_commit=on set on every connection (-c option in the URL): a commit returns after its WAL is flushed to disk",
            "exit": format!("runtime Exit; {pg_default}")
        },
        "redis": {
            "default": format!("runtime Async; {redis_default}"),
            "sync": "not run: the sync policy is a server setting (appendfsync), not a client one",
            "exit": format!("runtime Exit; {redis_default}")
        },
        "sqlite_writer_figures": {
            "writer_batches": "transactions the SQLite writer thread committed during the timed run (schema setup excluded; untimed reads after the run do not write)",
            "writer_requests": "write requests (put, put_writes, ...) committed in them; requests / batches is the group-commit factor",
            "checkpoints_written": "checkpoints stored after the timed run, counted with a full list over every thread (the run's storage is fresh)",
            "commits_per_checkpoint": "SQLite cells: writer_batches / checkpoints_written; PostgreSQL cells: transactions the saver committed to store checkpoints (PostgresSaver::commit_stats, group commit included) / checkpoints_written, where each commit waits for at most one WAL flush and the server may flush several at once",
            "fsyncs_per_checkpoint": "sync cells only (synchronous=FULL in WAL mode, where each commit fsyncs the WAL once): writer_batches / checkpoints_written = WAL fsyncs at commit per checkpoint. It counts commits of put_writes-only batches too, and leaves out the extra syncs of SQLite's automatic WAL checkpoints (WAL + database file, about every 1000 WAL pages)"
        },
        "checkpoints_per_s": "W4-concurrent cells with a saver: checkpoints_written / total_s (wall clock of the 64-thread run)",
        "langgraph_peer": "the peer's default cells omit the durability argument (LangGraph's default, async) and its sync cells pass durability=\"sync\"; its SqliteSaver runs WAL with the sqlite3 default synchronous=FULL in both modes; its PostgresSaver uses the server default synchronous_commit in both"
    })
}

//! The storage backends a cell runs on: one fresh instance per warm-up and per timed run, and
//! how each reports the bytes it occupies (measured after the clock stops).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use cairn_checkpoint::{CheckpointSaver, InMemorySaver, ListQuery};
use cairn_postgres::tokio_postgres;
use cairn_postgres::{PostgresOptions, PostgresSaver};
use cairn_redis::{RedisOptions, RedisSaver};
use cairn_sqlite::{SqliteOptions, SqliteSaver, Synchronous};
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

/// Durability mode of a cell: the saver's sync policy (see [`durability_meta`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// The saver's defaults.
    Default,
    /// The saver's strongest sync setting.
    Sync,
}

impl Durability {
    /// Parses `default` or `sync`.
    pub fn parse(name: &str) -> Result<Self, BoxError> {
        match name.trim().to_ascii_lowercase().as_str() {
            "default" => Ok(Durability::Default),
            "sync" => Ok(Durability::Sync),
            other => Err(format!("unknown durability {other:?} (default, sync)").into()),
        }
    }

    /// The name used in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Durability::Default => "default",
            Durability::Sync => "sync",
        }
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
        Ok(match kind {
            SaverKind::None => Backend {
                saver: None,
                inner: Inner::None,
            },
            SaverKind::Memory => {
                let saver = Arc::new(InMemorySaver::new());
                Backend {
                    saver: Some(saver.clone()),
                    inner: Inner::Memory(saver),
                }
            }
            SaverKind::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("cairnbench-sqlite-")
                    .tempdir()?;
                let options = match durability {
                    Durability::Default => SqliteOptions::default(),
                    Durability::Sync => SqliteOptions::default().synchronous(Synchronous::Full),
                };
                let saver = Arc::new(SqliteSaver::open_with(
                    dir.path().join("checkpoints.sqlite"),
                    options,
                )?);
                Backend {
                    saver: Some(saver.clone()),
                    inner: Inner::Sqlite { saver, dir },
                }
            }
            SaverKind::Postgres => {
                let schema = unique_name("pg");
                let url = match durability {
                    Durability::Default => env.pg_url.clone(),
                    Durability::Sync => with_pg_option(&env.pg_url, "synchronous_commit%3Don"),
                };
                let saver = Arc::new(
                    PostgresOptions::new(url)
                        .schema(schema.clone())
                        .connect()
                        .await?,
                );
                Backend {
                    saver: Some(saver.clone()),
                    inner: Inner::Postgres { saver, schema },
                }
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
                Backend {
                    saver: Some(saver),
                    inner: Inner::Redis { prefix, conn },
                }
            }
        })
    }

    /// What the storage holds now (untimed). `bytes` is the headline figure.
    pub async fn storage(&mut self) -> Result<Option<Map<String, Value>>, BoxError> {
        let mut out = Map::new();
        match &mut self.inner {
            Inner::None => return Ok(None),
            Inner::Memory(saver) => memory_storage(saver.as_ref(), &mut out).await?,
            Inner::Sqlite { saver, dir } => {
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
                let stats = saver.writer_stats();
                out.insert("writer_batches".into(), json!(stats.batches));
                out.insert("writer_requests".into(), json!(stats.requests));
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
            Inner::Sqlite { saver, dir } => {
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

/// InMemorySaver keeps no byte count, so the figure is rebuilt from a full `list`: every
/// distinct `(thread, ns, channel, version)` value once (as the saver stores them), every
/// pending write, plus the JSON size of each checkpoint header (without values) and metadata.
async fn memory_storage(
    saver: &InMemorySaver,
    out: &mut Map<String, Value>,
) -> Result<(), BoxError> {
    let all = saver.list(&ListQuery::all()).await?;
    let mut blobs: BTreeMap<(String, String, String, String), usize> = BTreeMap::new();
    let (mut ck, mut wr, mut n_wr) = (0usize, 0usize, 0usize);
    for t in &all {
        for (channel, value) in &t.checkpoint.channel_values {
            let version = t
                .checkpoint
                .channel_versions
                .get(channel)
                .map(|v| v.to_storage_string())
                .unwrap_or_default();
            blobs.insert(
                (
                    t.config.thread_id.clone(),
                    t.config.checkpoint_ns.clone(),
                    channel.clone(),
                    version,
                ),
                value.len(),
            );
        }
        let mut header = t.checkpoint.clone();
        header.channel_values.clear();
        ck += serde_json::to_vec(&header)?.len() + serde_json::to_vec(&t.metadata)?.len();
        wr += t
            .pending_writes
            .iter()
            .map(|w| w.value.len())
            .sum::<usize>();
        n_wr += t.pending_writes.len();
    }
    let bl: usize = blobs.values().sum();
    out.insert("bytes".into(), json!(ck + bl + wr));
    out.insert(
        "bytes_kind".into(),
        json!("estimated payload: distinct channel values + writes + JSON of checkpoint headers and metadata"),
    );
    out.insert("checkpoint_bytes".into(), json!(ck));
    out.insert("blob_bytes".into(), json!(bl));
    out.insert("write_bytes".into(), json!(wr));
    out.insert("rows_checkpoints".into(), json!(all.len()));
    out.insert("rows_blobs".into(), json!(blobs.len()));
    out.insert("rows_writes".into(), json!(n_wr));
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

/// Which sync policy each durability mode means for each saver (for the JSON meta).
pub fn durability_meta(pg: &Value, redis: &Value) -> Value {
    json!({
        "runtime": "cairn-graph awaits every put and put_writes before it starts the next super-step, in every mode (LangGraph's durability=\"sync\" behaviour); the modes differ only in the saver's sync policy. Cairn has no durability argument yet.",
        "none": {"default": "no checkpointer"},
        "memory": {"default": "in process memory, nothing to sync", "sync": "same as default"},
        "sqlite": {
            "default": "WAL, synchronous=NORMAL (Cairn's default: fsync only at WAL checkpoints; a commit survives a process crash, not a power loss); one writer thread, group commit",
            "sync": "WAL, synchronous=FULL (fsync of the WAL on every commit; concurrent writers share one commit)"
        },
        "postgres": {
            "default": format!("server default synchronous_commit={}", pg.get("synchronous_commit").and_then(Value::as_str).unwrap_or("?")),
            "sync": "synchronous_commit=on set on every connection (-c option in the URL)"
        },
        "redis": {
            "default": format!("server persistence as configured: appendonly={}, appendfsync={}", redis.get("appendonly").and_then(Value::as_str).unwrap_or("?"), redis.get("appendfsync").and_then(Value::as_str).unwrap_or("?")),
            "sync": "not run: durability is a server setting (appendfsync), not a client one"
        },
        "langgraph_peer": "SqliteSaver uses Python sqlite3's synchronous=FULL in both modes; LangGraph's default durability (async) overlaps the checkpoint write with the next step, sync waits for it"
    })
}

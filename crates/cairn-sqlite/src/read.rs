//! Reading: the read connection pool and the queries that assemble checkpoint tuples.
//!
//! A read fetches the checkpoint rows in one query, then every distinct channel value they
//! name once, by one primary-key search each (a prepared statement in process: cheaper than
//! the row of a join over a JSON array of keys, which `json_each` parses again per column),
//! and their pending writes: those in their rows, plus the rows of `checkpoint_writes` of
//! the namespaces that have any (one search per namespace tells), all inside one read
//! transaction so they see the same snapshot. When some of the values are append values,
//! one more query ([`CHAIN_SQL`]) fetches the links of all their chains, one range of the
//! primary key per channel, and [`AppendChains`] joins them into whole values.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use rusqlite::types::{Value, ValueRef};
use rusqlite::Connection;
use tokio::sync::Semaphore;

use cairn_checkpoint::{
    append_heads, has_append_values, AppendChains, Checkpoint, CheckpointConfig,
    CheckpointMetadata, CheckpointTuple, DataLocation, Error, LatestCheckpoint, ListQuery,
    PendingWrite, Result, ThreadSummary, TypedValue,
};

use crate::id_key::{self, IdKey, StoredId};
use crate::txn::Transaction;
use crate::version_key::VersionKey;
use crate::write_refs::{MapRef, WriteRef, TAG_MAP_REF, TAG_WRITE_REF};
use crate::{open_connection, sql_error, ConnectionRole, SqliteOptions};

/// A small pool of read-only connections to a file database (WAL lets them read while the
/// writer writes). Reads run on tokio's blocking pool.
pub(crate) struct ReadPool {
    path: PathBuf,
    options: SqliteOptions,
    idle: Mutex<Vec<Connection>>,
    permits: Arc<Semaphore>,
}

impl ReadPool {
    pub(crate) fn new(path: PathBuf, options: SqliteOptions) -> Result<Self> {
        let n = options.read_connection_count();
        let mut idle = Vec::with_capacity(n);
        for _ in 0..n {
            idle.push(open_connection(&path, &options, ConnectionRole::Reader)?);
        }
        Ok(ReadPool {
            path,
            options,
            idle: Mutex::new(idle),
            permits: Arc::new(Semaphore::new(n)),
        })
    }

    /// Runs `f` on a pooled connection on the blocking thread pool.
    pub(crate) async fn run<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| Error::backend("sqlite", "waiting for a read connection", e))?;
        let pool = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut conn = pool.take()?;
            let result = f(&mut conn);
            pool.give_back(conn);
            result
        })
        .await
        .map_err(|e| Error::backend("sqlite", "running a read on the blocking pool", e))?
    }

    /// Runs a small read (one checkpoint) right here when a connection is free, saving the
    /// hop to the blocking pool; otherwise like [`ReadPool::run`]. Only for reads that cannot
    /// take long: it blocks the calling (async) thread while it runs.
    pub(crate) async fn run_small<T, F>(self: &Arc<Self>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T> + Send + 'static,
    {
        if let Ok(permit) = self.permits.clone().try_acquire_owned() {
            let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            if let Some(mut conn) = popped {
                let result = f(&mut conn);
                self.give_back(conn);
                drop(permit);
                return result;
            }
        }
        self.run(f).await
    }

    fn take(&self) -> Result<Connection> {
        let popped = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        match popped {
            Some(conn) => Ok(conn),
            // A connection is lost only when a read panicked; replace it.
            None => open_connection(&self.path, &self.options, ConnectionRole::Reader),
        }
    }

    fn give_back(&self, conn: Connection) {
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(conn);
    }
}

/// Values a caller already holds (an owned [`cairn_checkpoint::KnownValues`]): read neither
/// them nor the append chains behind them.
#[derive(Debug, Clone, Default)]
pub(crate) struct Known {
    pub checkpoint_id: String,
    pub channels: Vec<String>,
}

impl Known {
    fn skips(&self, row: &Row, channel: &str) -> bool {
        row.checkpoint_id == self.checkpoint_id && self.channels.iter().any(|c| c == channel)
    }
}

/// A checkpoint row as stored, before decoding.
struct Row {
    thread_id: String,
    checkpoint_ns: String,
    checkpoint_id: String,
    parent_id: Option<String>,
    header: Vec<u8>,
    metadata: StoredMetadataColumn,
    /// The `run_id` column: since schema 6 the stored metadata leaves the run id out.
    run_id: Option<String>,
    /// The pending writes stored in the row (schema 13, `packed_writes.rs`).
    writes: Option<Vec<u8>>,
}

/// The `metadata` column: JSON text up to schema 11, a compact blob since
/// (`stored_metadata.rs`).
enum StoredMetadataColumn {
    Json(String),
    Compact(Vec<u8>),
}

/// The columns of `checkpoints` that [`map_row`] reads, in its order (a macro, so the
/// queries below can be built with `concat!`).
macro_rules! row_columns {
    () => {
        "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, metadata, run_id, \
         writes"
    };
}

const ROW_COLUMNS: &str = row_columns!();

/// The query `get_tuple` runs for the latest checkpoint of a thread and namespace: a search
/// of the primary key, newest first, one row.
pub(crate) const LATEST_SQL: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM checkpoints WHERE thread_id = ?1 AND checkpoint_ns = ?2 \
     ORDER BY checkpoint_id DESC LIMIT 1"
);

/// The query `get_tuple` runs for one named checkpoint.
pub(crate) const EXACT_SQL: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM checkpoints WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id = ?3"
);

/// The links append chains may pass through, for a JSON array of `[thread, ns, channel,
/// bound]` keys: every stored version of the channel up to `bound` (the hex of a compact
/// stored version, see [`crate::version_key::chain_bound`]), a range of the primary key. A
/// null bound reads every version: `coalesce` turns it into 17 `0xff` bytes, above every
/// stored version (SQLite orders every text value before every blob, and compact versions
/// are 16 bytes).
/// Each row names its key by position in the array (`k.key`), which is cheaper to read back
/// than the three names.
pub(crate) const CHAIN_SQL: &str = "SELECT k.key, cairn_version_text(b.version), b.type_tag, \
     b.data, cairn_version_text(b.base_version) FROM json_each(?1) AS k CROSS JOIN checkpoint_blobs AS b \
     WHERE b.thread_id = k.value ->> 0 AND b.checkpoint_ns = k.value ->> 1 \
       AND b.channel = k.value ->> 2 \
       AND b.version <= coalesce(unhex(k.value ->> 3), x'ffffffffffffffffffffffffffffffffff')";

fn map_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    Ok(Row {
        thread_id: r.get(0)?,
        checkpoint_ns: r.get(1)?,
        checkpoint_id: r.get::<_, StoredId>(2)?.0,
        parent_id: r.get::<_, Option<StoredId>>(3)?.map(|id| id.0),
        header: r.get(4)?,
        metadata: match r.get_ref(5)? {
            ValueRef::Blob(b) => StoredMetadataColumn::Compact(b.to_vec()),
            _ => StoredMetadataColumn::Json(r.get(5)?),
        },
        run_id: r.get::<_, Option<StoredId>>(6)?.map(|id| id.0),
        writes: r.get(7)?,
    })
}

/// The tuple `config` names (its latest checkpoint when it has no id).
pub(crate) fn get_tuple(
    conn: &mut Connection,
    config: &CheckpointConfig,
    known: Option<&Known>,
) -> Result<Option<CheckpointTuple>> {
    let tx = Transaction::read(conn)?;
    let rows = {
        let key = config.checkpoint_id.as_deref().map(IdKey::of);
        let (sql, params): (&str, Vec<&dyn rusqlite::ToSql>) = match &key {
            Some(id) => (
                EXACT_SQL,
                vec![&config.thread_id, &config.checkpoint_ns, id],
            ),
            None => (LATEST_SQL, vec![&config.thread_id, &config.checkpoint_ns]),
        };
        let mut stmt = tx
            .prepare_cached(sql)
            .map_err(sql_error("preparing the checkpoint query"))?;
        let rows = stmt
            .query_map(params.as_slice(), map_row)
            .map_err(sql_error("reading a checkpoint"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql_error("reading a checkpoint"))?;
        rows
    };
    let mut tuples = assemble(&tx, rows, known)?;
    tx.end_read()?;
    Ok(tuples.pop())
}

/// One `WHERE` condition on metadata key `key` equal to `value`, if SQL can test it
/// exactly. Rows whose metadata is not valid JSON pass, so decoding reports them as corrupt
/// instead of the filter silently hiding them.
fn metadata_condition(
    key: &str,
    value: &serde_json::Value,
    params: &mut Vec<Value>,
) -> Option<String> {
    if key == "run_id" {
        // The run id lives in its own column (a string); the JSON may not hold it.
        return Some(match value {
            serde_json::Value::String(run_id) => {
                params.push(id_key::to_value(run_id));
                "run_id = ?".into()
            }
            _ => "0".into(),
        });
    }
    if key.contains('"') || key.contains('\\') {
        return None;
    }
    // The JSON types SQLite must see, and the scalar to compare with (if any). Numbers
    // compare by value whether stored as integers or reals (`1` matches `1.0`), as
    // CheckpointMetadata::matches and the other backends compare them.
    let (json_types, scalar) = match value {
        serde_json::Value::Null => ("'null'", None),
        serde_json::Value::Bool(true) => ("'true'", None),
        serde_json::Value::Bool(false) => ("'false'", None),
        serde_json::Value::String(s) => ("'text'", Some(Value::Text(s.clone()))),
        serde_json::Value::Number(n) => match (n.as_i64(), n.is_f64()) {
            (Some(i), _) => ("'integer', 'real'", Some(Value::Integer(i))),
            (None, true) => ("'integer', 'real'", Some(Value::Real(n.as_f64()?))),
            // A u64 past i64::MAX: SQLite would read it as a real.
            (None, false) => return None,
        },
        serde_json::Value::Array(_) | serde_json::Value::Object(_) => return None,
    };
    let path = format!("$.\"{key}\"");
    params.push(Value::Text(path.clone()));
    // Either stored form as JSON text (`stored_metadata.rs`).
    const JSON: &str = "cairn_metadata_json(metadata)";
    let mut test = format!("json_type({JSON}, ?) IN ({json_types})");
    if let Some(scalar) = scalar {
        test.push_str(&format!(" AND json_extract({JSON}, ?) = ?"));
        params.push(Value::Text(path));
        params.push(scalar);
    }
    Some(format!(
        "CASE WHEN json_valid({JSON}) THEN {test} ELSE 1 END"
    ))
}

/// The SQL of `list` for `query`, its parameters, and whether SQL applied the whole
/// metadata filter (and so the limit too).
///
/// A whole thread (a thread id, no namespace) is listed as the merge of two ordered
/// searches: its root namespace along the primary key, its other namespaces along the
/// partial index `checkpoints_thread_recent` (which holds only those, so a thread without
/// subgraphs costs it nothing per checkpoint). SQLite merges the two without sorting.
pub(crate) fn list_sql(query: &ListQuery) -> (String, Vec<Value>, bool) {
    let mut conditions: Vec<String> = Vec::new();
    let mut params: Vec<Value> = Vec::new();
    if let Some(thread) = &query.thread_id {
        conditions.push("thread_id = ?".into());
        params.push(Value::Text(thread.clone()));
    }
    if let Some(ns) = &query.checkpoint_ns {
        conditions.push("checkpoint_ns = ?".into());
        params.push(Value::Text(ns.clone()));
    }
    if let Some(id) = &query.checkpoint_id {
        conditions.push("checkpoint_id = ?".into());
        params.push(id_key::to_value(id));
    }
    if let Some(before) = &query.before {
        conditions.push("checkpoint_id < ?".into());
        params.push(id_key::to_value(before));
    }
    // Filters SQL cannot test exactly are applied after decoding; the limit then too.
    let mut exact_in_sql = true;
    for (key, value) in &query.filter {
        match metadata_condition(key, value, &mut params) {
            Some(cond) => conditions.push(cond),
            None => exact_in_sql = false,
        }
    }
    let limit = match (query.limit, exact_in_sql) {
        (Some(limit), true) => Some(Value::Integer(i64::try_from(limit).unwrap_or(i64::MAX))),
        _ => None,
    };
    let order = " ORDER BY checkpoint_id DESC, thread_id DESC, checkpoint_ns DESC";
    let select = |extra: &str| {
        let mut sql = format!("SELECT {ROW_COLUMNS} FROM checkpoints");
        let all: Vec<&str> = conditions
            .iter()
            .map(String::as_str)
            .chain((!extra.is_empty()).then_some(extra))
            .collect();
        if !all.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&all.join(" AND "));
        }
        sql
    };
    let whole_thread = query.thread_id.is_some() && query.checkpoint_ns.is_none();
    let mut sql = if whole_thread {
        // SQLite runs each arm as an ordered search and merges them (no sort), stopping at
        // the limit.
        params.extend(params.clone());
        format!(
            "{} UNION ALL {}{order}",
            select("checkpoint_ns = ''"),
            select("checkpoint_ns <> ''")
        )
    } else {
        let mut sql = select("");
        sql.push_str(order);
        sql
    };
    if let Some(limit) = limit {
        sql.push_str(" LIMIT ?");
        params.push(limit);
    }
    (sql, params, exact_in_sql)
}

/// Checkpoints matching `query`, newest first.
pub(crate) fn list(conn: &mut Connection, query: &ListQuery) -> Result<Vec<CheckpointTuple>> {
    if query.limit == Some(0) {
        return Ok(Vec::new());
    }
    let (sql, params, exact_in_sql) = list_sql(query);
    let tx = Transaction::read(conn)?;
    let rows = {
        let mut stmt = tx
            .prepare_cached(&sql)
            .map_err(sql_error("preparing the list query"))?;
        let rows = stmt
            .query_map(rusqlite::params_from_iter(params), map_row)
            .map_err(sql_error("listing checkpoints"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql_error("listing checkpoints"))?;
        rows
    };
    if exact_in_sql {
        let tuples = assemble(&tx, rows, None)?;
        tx.end_read()?;
        return Ok(tuples);
    }
    // Decode metadata first, keep the matching rows up to the limit, then load their values.
    let limit = query.limit.unwrap_or(usize::MAX);
    let mut kept = Vec::new();
    for row in rows {
        if kept.len() >= limit {
            break;
        }
        let metadata = decode_metadata(&row)?;
        if metadata.matches(&query.filter) {
            kept.push(row);
        }
    }
    let tuples = assemble(&tx, kept, None)?;
    tx.end_read()?;
    Ok(tuples)
}

fn location(row: &Row) -> DataLocation {
    DataLocation {
        thread_id: row.thread_id.clone(),
        checkpoint_ns: row.checkpoint_ns.clone(),
        checkpoint_id: Some(row.checkpoint_id.clone()),
        channel: None,
    }
}

fn decode_metadata(row: &Row) -> Result<CheckpointMetadata> {
    let mut metadata = match &row.metadata {
        StoredMetadataColumn::Compact(blob) => crate::stored_metadata::decode(blob)
            .map_err(|reason| Error::corrupt(location(row), reason))?,
        StoredMetadataColumn::Json(json) => serde_json::from_str::<CheckpointMetadata>(json)
            .map_err(|e| {
                Error::corrupt(
                    location(row),
                    format!("cannot decode the checkpoint metadata (JSON): {e}"),
                )
            })?,
    };
    // The column is the run id (rows written before schema 6 hold it in the JSON as well).
    if row.run_id.is_some() {
        metadata.run_id.clone_from(&row.run_id);
    }
    Ok(metadata)
}

fn decode_header(row: &Row) -> Result<Checkpoint> {
    crate::header::decode(&row.header, &row.checkpoint_id)
        .map_err(|message| Error::corrupt(location(row), message))
}

type BlobKey = (String, String, String, String);
pub(crate) type CheckpointKey = (String, String, String);
/// A checkpoint row with its header and metadata decoded.
type Decoded = (Row, Checkpoint, CheckpointMetadata);

/// Decodes `rows` and loads their channel values (but the `known` ones) and pending writes
/// (two queries), then the links of their append chains (one more query, only when some
/// value read is an append value).
fn assemble(
    conn: &Connection,
    rows: Vec<Row>,
    known: Option<&Known>,
) -> Result<Vec<CheckpointTuple>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let decoded = decode_rows(rows)?;
    let blobs = load_values(conn, &decoded, known)?;
    let mut writes = load_writes(conn, &decoded)?;
    resolve_write_refs(conn, &mut writes, &blobs)?;
    let mut tuples = build_tuples(decoded, &blobs, writes);
    resolve_append_values(conn, &mut tuples)?;
    Ok(tuples)
}

/// Rebuilds the pending writes stored as references ([`crate::write_refs`]) from the values
/// they refer to: taken from `blobs` when this read loaded them (a page of history holds the
/// checkpoint after each one), else looked up once each.
fn resolve_write_refs(
    conn: &Connection,
    writes: &mut HashMap<CheckpointKey, Vec<(i64, PendingWrite)>>,
    blobs: &HashMap<BlobKey, TypedValue>,
) -> Result<()> {
    let mut fetched: HashMap<BlobKey, TypedValue> = HashMap::new();
    for ((thread, ns, checkpoint_id), list) in writes.iter_mut() {
        for (_, write) in list.iter_mut() {
            if write.value.type_tag != TAG_WRITE_REF {
                continue;
            }
            let corrupt = |reason: String| {
                Error::corrupt(
                    DataLocation {
                        thread_id: thread.clone(),
                        checkpoint_ns: ns.clone(),
                        checkpoint_id: Some(checkpoint_id.clone()),
                        channel: Some(write.channel.clone()),
                    },
                    format!(
                        "pending write of task {} stored as a reference: {reason}",
                        write.task_id
                    ),
                )
            };
            let reference = WriteRef::decode(&write.value.data).map_err(corrupt)?;
            let place = (thread.as_str(), ns.as_str(), write.channel.as_str());
            let resolved = referenced_items(conn, blobs, &mut fetched, place, &reference)?;
            write.value = resolved.map_err(corrupt)?;
        }
    }
    Ok(())
}

/// The items `reference` names in the value of `(thread, ns, channel)` it refers to: taken
/// from `loaded` when this read has that value, else looked up once (and kept in
/// `fetched`). The outer error is a failed query; the inner one says what is wrong with the
/// stored data.
fn referenced_items(
    conn: &Connection,
    loaded: &HashMap<BlobKey, TypedValue>,
    fetched: &mut HashMap<BlobKey, TypedValue>,
    (thread, ns, channel): (&str, &str, &str),
    reference: &WriteRef,
) -> Result<std::result::Result<TypedValue, String>> {
    let version = match reference.version_string() {
        Ok(version) => version,
        Err(reason) => return Ok(Err(reason)),
    };
    let key = (
        thread.to_owned(),
        ns.to_owned(),
        channel.to_owned(),
        version,
    );
    let value = match loaded.get(&key).or_else(|| fetched.get(&key)) {
        Some(value) => value.clone(),
        None => match value_by_key(conn, thread, ns, channel, &reference.version)? {
            Some(value) => {
                fetched.insert(key, value.clone());
                value
            }
            None => {
                return Ok(Err(format!(
                    "the value it refers to (channel {channel:?} version {}) is not stored",
                    key.3
                )))
            }
        },
    };
    Ok(reference.resolve(&value))
}

fn decode_rows(rows: Vec<Row>) -> Result<Vec<Decoded>> {
    let mut decoded = Vec::with_capacity(rows.len());
    for row in rows {
        let checkpoint = decode_header(&row)?;
        let metadata = decode_metadata(&row)?;
        decoded.push((row, checkpoint, metadata));
    }
    Ok(decoded)
}

/// Text column `i` of `r`, borrowed.
fn text<'r>(r: &'r rusqlite::Row<'_>, i: usize, what: &str) -> Result<&'r str> {
    r.get_ref(i)
        .and_then(|v| v.as_str().map_err(rusqlite::Error::from))
        .map_err(sql_error(what.to_owned()))
}

/// The stored values the checkpoints of `decoded` refer to, each fetched once, but those
/// `known` names.
fn load_values(
    conn: &Connection,
    decoded: &[Decoded],
    known: Option<&Known>,
) -> Result<HashMap<BlobKey, TypedValue>> {
    let mut blobs = load_stored_values(conn, decoded, known)?;
    resolve_map_refs(conn, &mut blobs)?;
    Ok(blobs)
}

/// Rebuilds the values stored as maps with references ([`crate::write_refs::MapRef`]: an
/// input whose list entries are items of a later checkpoint's append value) from the values
/// they refer to: taken from `blobs` when loaded, else looked up.
fn resolve_map_refs(conn: &Connection, blobs: &mut HashMap<BlobKey, TypedValue>) -> Result<()> {
    let keys: Vec<BlobKey> = blobs
        .iter()
        .filter(|(_, value)| value.type_tag == TAG_MAP_REF)
        .map(|(key, _)| key.clone())
        .collect();
    let mut fetched = HashMap::new();
    for key in keys {
        let (thread, ns, channel, version) = &key;
        let corrupt = |reason: String| {
            Error::corrupt(
                DataLocation {
                    thread_id: thread.clone(),
                    checkpoint_ns: ns.clone(),
                    checkpoint_id: None,
                    channel: Some(channel.clone()),
                },
                format!("value version {version}, stored with references: {reason}"),
            )
        };
        let stored = MapRef::decode(&blobs[&key].data).map_err(corrupt)?;
        // A failed query is reported as itself, not as corrupt data.
        let mut failed = None;
        let resolved = stored.resolve(|target, reference| {
            let place = (thread.as_str(), ns.as_str(), target);
            referenced_items(conn, blobs, &mut fetched, place, reference).unwrap_or_else(|e| {
                let reason = e.to_string();
                failed = Some(e);
                Err(reason)
            })
        });
        if let Some(e) = failed {
            return Err(e);
        }
        let resolved = resolved.map_err(corrupt)?;
        blobs.insert(key, resolved);
    }
    Ok(())
}

/// The stored values the checkpoints of `decoded` refer to, each fetched once, but those
/// `known` names; values stored with references not yet rebuilt.
fn load_stored_values(
    conn: &Connection,
    decoded: &[Decoded],
    known: Option<&Known>,
) -> Result<HashMap<BlobKey, TypedValue>> {
    let mut wanted: HashSet<(&str, &str, &str, String)> = HashSet::new();
    for (row, checkpoint, _) in decoded {
        for (channel, version) in &checkpoint.channel_versions {
            if known.is_some_and(|k| k.skips(row, channel)) {
                continue;
            }
            wanted.insert((
                &row.thread_id,
                &row.checkpoint_ns,
                channel,
                version.to_storage_string(),
            ));
        }
    }
    // One primary-key search per distinct value. In process a prepared statement's search
    // costs less than the row of a join over a JSON array of keys (`json_each`, which parses
    // each key's text again per column it reads): listing W1's 600 checkpoints read their
    // 800 values in a third fewer instructions so.
    let mut blobs = HashMap::with_capacity(wanted.len());
    for (thread, ns, channel, version) in wanted {
        let key = VersionKey::from_storage_string(&version);
        if let Some(value) = value_by_key(conn, thread, ns, channel, &key)? {
            blobs.insert(
                (
                    thread.to_owned(),
                    ns.to_owned(),
                    channel.to_owned(),
                    version,
                ),
                value,
            );
        }
    }
    Ok(blobs)
}

/// One stored value by its exact key.
fn value_by_key(
    conn: &Connection,
    thread: &str,
    ns: &str,
    channel: &str,
    version: &VersionKey,
) -> Result<Option<TypedValue>> {
    let what = "reading a channel value";
    let mut stmt = conn
        .prepare_cached(ONE_BLOB_SQL)
        .map_err(sql_error("preparing the channel value query"))?;
    let mut rows = stmt
        .query(rusqlite::params![thread, ns, channel, version])
        .map_err(sql_error(what))?;
    match rows.next().map_err(sql_error(what))? {
        Some(r) => stored_value(r, [0, 1, 2], what, || (thread, ns, channel)).map(Some),
        None => Ok(None),
    }
}

/// The value of a `checkpoint_blobs` row whose type tag, data and base version (as text)
/// are columns `columns` of `r` (see [`crate::stored_value`]); `at` names the thread,
/// namespace and channel for the error when the row is corrupt.
fn stored_value<'a>(
    r: &rusqlite::Row<'_>,
    [tag, data, base]: [usize; 3],
    what: &str,
    at: impl FnOnce() -> (&'a str, &'a str, &'a str),
) -> Result<TypedValue> {
    let e = || sql_error(what.to_owned());
    let base: Option<&str> = r
        .get_ref(base)
        .and_then(|v| v.as_str_or_null().map_err(rusqlite::Error::from))
        .map_err(e())?;
    let corrupt = |reason: String| {
        let (thread, ns, channel) = at();
        Error::corrupt(
            DataLocation {
                thread_id: thread.to_owned(),
                checkpoint_ns: ns.to_owned(),
                checkpoint_id: None,
                channel: Some(channel.to_owned()),
            },
            reason,
        )
    };
    let tag = match crate::stored_text::decode(r.get_ref(tag).map_err(e())?) {
        Ok(tag) => tag,
        Err(reason) => return Err(corrupt(reason)),
    };
    crate::stored_value::from_row(&tag, r.get::<_, Vec<u8>>(data).map_err(e())?, base)
        .map_err(corrupt)
}

/// One stored value by its key, the version in its stored form.
pub(crate) const ONE_BLOB_SQL: &str = "SELECT type_tag, data, cairn_version_text(base_version) \
     FROM checkpoint_blobs \
     WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND channel = ?3 AND version = ?4";

/// The pending writes of one checkpoint, by its key: thread, namespace, checkpoint id, task
/// id, index, task path, channel, type tag and data.
pub(crate) const ONE_CHECKPOINT_WRITES_SQL: &str = "SELECT thread_id, checkpoint_ns, \
     checkpoint_id, task_id, idx, task_path, channel, type_tag, data FROM checkpoint_writes \
     WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id = ?3";

/// The pending writes of the checkpoints of `decoded`: those stored in their rows (schema
/// 13) merged after the rows of `checkpoint_writes` (older files, and writes that came
/// before their checkpoint).
fn load_writes(
    conn: &Connection,
    decoded: &[Decoded],
) -> Result<HashMap<CheckpointKey, Vec<(i64, PendingWrite)>>> {
    let mut writes = load_write_rows(conn, decoded)?;
    for (row, _, _) in decoded {
        let Some(blob) = &row.writes else {
            continue;
        };
        let in_row = crate::packed_writes::decode(blob)
            .map_err(|reason| Error::corrupt(location(row), reason))?;
        let key = (
            row.thread_id.clone(),
            row.checkpoint_ns.clone(),
            row.checkpoint_id.clone(),
        );
        let entry = writes.entry(key).or_default();
        *entry = crate::packed_writes::merge(std::mem::take(entry), in_row, false);
    }
    Ok(writes)
}

/// The rows of `checkpoint_writes` for the checkpoints of `decoded`.
fn load_write_rows(
    conn: &Connection,
    decoded: &[Decoded],
) -> Result<HashMap<CheckpointKey, Vec<(i64, PendingWrite)>>> {
    let mut writes: HashMap<CheckpointKey, Vec<(i64, PendingWrite)>> = HashMap::new();
    if let [(row, _, _)] = decoded {
        // One checkpoint (get_tuple): one range of the primary key, no JSON keys.
        let key = rusqlite::params![
            row.thread_id,
            row.checkpoint_ns,
            IdKey::of(&row.checkpoint_id)
        ];
        collect_writes(conn, ONE_CHECKPOINT_WRITES_SQL, key, &mut writes)?;
        return Ok(writes);
    }
    // Since schema 13 the table holds only writes for checkpoints not stored (and those of
    // older files), so most namespaces have none: one search per namespace tells, and only
    // the checkpoints of namespaces with rows are looked up, one primary-key range each.
    let mut has_rows: HashMap<(&str, &str), bool> = HashMap::new();
    for (row, _, _) in decoded {
        let place = (row.thread_id.as_str(), row.checkpoint_ns.as_str());
        let has = match has_rows.get(&place) {
            Some(has) => *has,
            None => {
                let has = conn
                    .prepare_cached(ANY_WRITE_ROW_SQL)
                    .and_then(|mut s| s.exists(rusqlite::params![place.0, place.1]))
                    .map_err(sql_error("reading pending writes"))?;
                has_rows.insert(place, has);
                has
            }
        };
        if has {
            let key = rusqlite::params![
                row.thread_id,
                row.checkpoint_ns,
                IdKey::of(&row.checkpoint_id)
            ];
            collect_writes(conn, ONE_CHECKPOINT_WRITES_SQL, key, &mut writes)?;
        }
    }
    Ok(writes)
}

/// Whether a namespace has any row in `checkpoint_writes` (see [`load_write_rows`]).
pub(crate) const ANY_WRITE_ROW_SQL: &str =
    "SELECT 1 FROM checkpoint_writes WHERE thread_id = ?1 AND checkpoint_ns = ?2 LIMIT 1";

/// Runs `sql` (selecting the columns of [`ONE_CHECKPOINT_WRITES_SQL`]) and files each write
/// under its
/// checkpoint, with its index.
pub(crate) fn collect_writes(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    writes: &mut HashMap<CheckpointKey, Vec<(i64, PendingWrite)>>,
) -> Result<()> {
    let e = || sql_error("reading pending writes");
    let mut stmt = conn
        .prepare_cached(sql)
        .map_err(sql_error("preparing the pending write query"))?;
    let mut q = stmt.query(params).map_err(e())?;
    while let Some(r) = q.next().map_err(e())? {
        let key: CheckpointKey = (
            r.get(0).map_err(e())?,
            r.get(1).map_err(e())?,
            r.get::<_, StoredId>(2).map_err(e())?.0,
        );
        // A damaged tag or task path is corrupt data of this checkpoint, not an SQL failure.
        let stored_text = |i: usize| -> Result<String> {
            crate::stored_text::decode(r.get_ref(i).map_err(e())?)
                .map(std::borrow::Cow::into_owned)
                .map_err(|reason| {
                    Error::corrupt(
                        DataLocation {
                            thread_id: key.0.clone(),
                            checkpoint_ns: key.1.clone(),
                            checkpoint_id: Some(key.2.clone()),
                            channel: None,
                        },
                        format!("a pending write: {reason}"),
                    )
                })
        };
        let write = PendingWrite {
            task_id: r.get::<_, StoredId>(3).map_err(e())?.0,
            task_path: stored_text(5)?,
            channel: r.get(6).map_err(e())?,
            value: TypedValue::new(
                stored_text(7)?,
                Bytes::from(r.get::<_, Vec<u8>>(8).map_err(e())?),
            ),
        };
        let idx: i64 = r.get(4).map_err(e())?;
        writes.entry(key).or_default().push((idx, write));
    }
    Ok(())
}

/// The tuples of `decoded` with their stored values (append values as stored) and writes.
fn build_tuples(
    decoded: Vec<Decoded>,
    blobs: &HashMap<BlobKey, TypedValue>,
    mut writes: HashMap<CheckpointKey, Vec<(i64, PendingWrite)>>,
) -> Vec<CheckpointTuple> {
    let mut tuples = Vec::with_capacity(decoded.len());
    for (row, mut checkpoint, metadata) in decoded {
        let mut values = std::collections::BTreeMap::new();
        for (channel, version) in &checkpoint.channel_versions {
            let key = (
                row.thread_id.clone(),
                row.checkpoint_ns.clone(),
                channel.clone(),
                version.to_storage_string(),
            );
            if let Some(value) = blobs.get(&key) {
                if !value.is_empty_marker() {
                    values.insert(channel.clone(), value.clone());
                }
            }
        }
        checkpoint.channel_values = values;
        let mut pending = writes
            .remove(&(
                row.thread_id.clone(),
                row.checkpoint_ns.clone(),
                row.checkpoint_id.clone(),
            ))
            .unwrap_or_default();
        pending.sort_by(|(ia, a), (ib, b)| {
            (&a.task_path, &a.task_id, ia).cmp(&(&b.task_path, &b.task_id, ib))
        });
        let config = CheckpointConfig {
            thread_id: row.thread_id,
            checkpoint_ns: row.checkpoint_ns,
            checkpoint_id: Some(row.checkpoint_id),
        };
        let parent_config = row.parent_id.map(|id| CheckpointConfig {
            checkpoint_id: Some(id),
            ..config.clone()
        });
        tuples.push(CheckpointTuple {
            config,
            checkpoint,
            metadata,
            parent_config,
            pending_writes: pending.into_iter().map(|(_, w)| w).collect(),
        });
    }
    tuples
}

/// A key of [`CHAIN_SQL`]: `[thread, ns, channel, bound]`.
type ChainKey = (String, String, String, Option<String>);

/// The keys of [`CHAIN_SQL`] for the append values of `tuples`: per channel the largest
/// [`chain_bound`](crate::version_key::chain_bound) of its heads, or null (every version) when a head's version has no
/// bound.
fn chain_keys(tuples: &[CheckpointTuple]) -> Vec<ChainKey> {
    let mut bounds: HashMap<(&str, &str, &str), Option<String>> = HashMap::new();
    for t in tuples.iter().filter(|t| has_append_values(&t.checkpoint)) {
        for (channel, version) in append_heads(&t.checkpoint) {
            let key = (
                t.config.thread_id.as_str(),
                t.config.checkpoint_ns.as_str(),
                channel,
            );
            let bound = crate::version_key::chain_bound(version);
            bounds
                .entry(key)
                .and_modify(|b| *b = b.take().zip(bound.clone()).map(|(x, y)| x.max(y)))
                .or_insert(bound);
        }
    }
    bounds
        .into_iter()
        .map(|((t, n, c), b)| (t.to_owned(), n.to_owned(), c.to_owned(), b))
        .collect()
}

/// Replaces the append values of `tuples` by their whole values. The links of every chain
/// come from one range read of the primary key ([`CHAIN_SQL`]); each thread and namespace
/// gets one [`AppendChains`], and tuples are resolved oldest first so a history walks each
/// link once (the whole value of the previous checkpoint is remembered).
fn resolve_append_values(conn: &Connection, tuples: &mut [CheckpointTuple]) -> Result<()> {
    let keys = chain_keys(tuples);
    if keys.is_empty() {
        return Ok(());
    }
    // One AppendChains per (thread, ns); rows of key i go to `chains[slot_of_key[i]]`.
    let mut slots: HashMap<(&str, &str), usize> = HashMap::new();
    let mut chains: Vec<AppendChains> = Vec::new();
    let slot_of_key: Vec<usize> = keys
        .iter()
        .map(|(thread, ns, _, _)| {
            *slots.entry((thread, ns)).or_insert_with(|| {
                chains.push(AppendChains::default());
                chains.len() - 1
            })
        })
        .collect();
    let what = "reading the links of append chains";
    let e = || sql_error(what);
    let mut stmt = conn
        .prepare_cached(CHAIN_SQL)
        .map_err(sql_error("preparing the append chain query"))?;
    let mut q = stmt.query([encode_keys(&keys)?]).map_err(e())?;
    while let Some(r) = q.next().map_err(e())? {
        let at: i64 = r.get(0).map_err(e())?;
        let found = usize::try_from(at)
            .ok()
            .and_then(|i| Some((keys.get(i)?, chains.get_mut(*slot_of_key.get(i)?)?)));
        let Some(((thread, ns, channel, _), chains)) = found else {
            return Err(Error::Backend {
                backend: "sqlite",
                message: format!(
                    "{what}: the query returned key number {at} of {}",
                    keys.len()
                ),
                source: None,
            });
        };
        let value = stored_value(r, [2, 3, 4], what, || {
            (thread.as_str(), ns.as_str(), channel.as_str())
        })?;
        chains.insert(channel, text(r, 1, what)?, value);
    }
    // `list` returns newest first (by checkpoint id), so oldest first is back to front.
    for tuple in tuples.iter_mut().rev() {
        if !has_append_values(&tuple.checkpoint) {
            continue;
        }
        let slot = slots.get(&(
            tuple.config.thread_id.as_str(),
            tuple.config.checkpoint_ns.as_str(),
        ));
        match slot.and_then(|&i| chains.get_mut(i)) {
            Some(chains) => chains.resolve_tuple(tuple)?,
            // Every tuple with append values has a key; resolving with nothing stored still
            // names what is missing.
            None => AppendChains::default().resolve_tuple(tuple)?,
        }
    }
    Ok(())
}

/// The append values checkpoint `checkpoint_id` of `(thread_id, ns)` refers to, as
/// `(channel, version, whole value)`: what `prune` rewrites before deleting the older
/// checkpoints their chains pass through. Empty when the checkpoint has none (or is gone).
pub(crate) fn whole_append_values(
    conn: &Connection,
    thread_id: &str,
    ns: &str,
    checkpoint_id: &str,
) -> Result<Vec<(String, String, TypedValue)>> {
    let rows = conn
        .prepare_cached(EXACT_SQL)
        .and_then(|mut stmt| {
            stmt.query_map(
                rusqlite::params![thread_id, ns, IdKey::of(checkpoint_id)],
                map_row,
            )?
            .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error(format!(
            "reading checkpoint {checkpoint_id} of thread {thread_id:?}"
        )))?;
    let decoded = decode_rows(rows)?;
    let blobs = load_values(conn, &decoded, None)?;
    let mut tuples = build_tuples(decoded, &blobs, HashMap::new());
    let heads: Vec<(String, String)> = tuples
        .iter()
        .flat_map(|t| append_heads(&t.checkpoint))
        .map(|(c, v)| (c.to_owned(), v.to_storage_string()))
        .collect();
    if heads.is_empty() {
        return Ok(Vec::new());
    }
    resolve_append_values(conn, &mut tuples)?;
    let Some(tuple) = tuples.pop() else {
        return Ok(Vec::new());
    };
    Ok(heads
        .into_iter()
        .filter_map(|(channel, version)| {
            let whole = tuple.checkpoint.channel_values.get(&channel)?.clone();
            Some((channel, version, whole))
        })
        .collect())
}

fn encode_keys<T: serde::Serialize>(keys: &T) -> Result<String> {
    serde_json::to_string(keys).map_err(|e| Error::Encode {
        format: "json",
        message: format!("encoding lookup keys: {e}"),
    })
}

/// Per-namespace counts and newest ids of the threads after `after`, at most `limit`
/// threads (one index scan).
const THREAD_NS_SQL: &str = "WITH t AS (SELECT DISTINCT thread_id FROM checkpoints \
     WHERE thread_id > ?1 ORDER BY thread_id LIMIT ?2) \
     SELECT c.thread_id, c.checkpoint_ns, COUNT(*), MAX(c.checkpoint_id) \
     FROM t CROSS JOIN checkpoints AS c ON c.thread_id = t.thread_id \
     GROUP BY c.thread_id, c.checkpoint_ns";

/// The same from the first thread.
const THREAD_NS_ALL_SQL: &str = "WITH t AS (SELECT DISTINCT thread_id FROM checkpoints \
     ORDER BY thread_id LIMIT ?2) \
     SELECT c.thread_id, c.checkpoint_ns, COUNT(*), MAX(c.checkpoint_id) \
     FROM t CROSS JOIN checkpoints AS c ON c.thread_id = t.thread_id \
     GROUP BY c.thread_id, c.checkpoint_ns";

/// Checkpoint rows for a JSON array of `[thread, ns, checkpoint_id]` keys.
/// (`json_each`'s own columns share no name with them.)
const ROWS_BY_KEY_SQL: &str = concat!(
    "SELECT ",
    row_columns!(),
    " FROM json_each(?1) AS k CROSS JOIN checkpoints AS c \
     WHERE c.thread_id = k.value ->> 0 AND c.checkpoint_ns = k.value ->> 1 \
       AND c.checkpoint_id = cairn_id_key(k.value ->> 2)"
);

/// A thread's checkpoint count, namespaces and `(ns, id)` of its latest checkpoint.
type ThreadGroups = (u64, Vec<String>, (String, String));

/// `CheckpointSaver::list_threads`: one grouped query for counts, namespaces and newest ids,
/// one for the latest rows' headers and metadata (no values), in one read transaction.
pub(crate) fn list_threads(
    conn: &mut Connection,
    after: Option<&str>,
    limit: usize,
) -> Result<Vec<ThreadSummary>> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    let tx = Transaction::read(conn)?;
    let limit_sql = i64::try_from(limit).unwrap_or(i64::MAX);
    let groups: Vec<(String, String, i64, String)> = {
        let sql = if after.is_some() {
            THREAD_NS_SQL
        } else {
            THREAD_NS_ALL_SQL
        };
        let mut stmt = tx
            .prepare_cached(sql)
            .map_err(sql_error("preparing the thread listing"))?;
        let rows = stmt
            .query_map(rusqlite::params![after.unwrap_or(""), limit_sql], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get::<_, StoredId>(3)?.0))
            })
            .map_err(sql_error("listing threads"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql_error("listing threads"))?;
        rows
    };
    let mut threads: std::collections::BTreeMap<String, ThreadGroups> =
        std::collections::BTreeMap::new();
    for (thread, ns, count, max_id) in groups {
        let entry = threads
            .entry(thread)
            .or_insert_with(|| (0, Vec::new(), (ns.clone(), max_id.clone())));
        entry.0 += u64::try_from(count).unwrap_or(0);
        let (cur_ns, cur_id) = &entry.2;
        let rank = |ns: &str, id: &str| (ns.is_empty(), id.to_owned(), ns.to_owned());
        if rank(&ns, &max_id) > rank(cur_ns, cur_id) {
            entry.2 = (ns.clone(), max_id);
        }
        entry.1.push(ns);
    }
    let keys: Vec<(&str, &str, &str)> = threads
        .iter()
        .map(|(t, (_, _, (ns, id)))| (t.as_str(), ns.as_str(), id.as_str()))
        .collect();
    let rows = {
        let mut stmt = tx
            .prepare_cached(ROWS_BY_KEY_SQL)
            .map_err(sql_error("preparing the latest-checkpoint query"))?;
        let rows = stmt
            .query_map([encode_keys(&keys)?], map_row)
            .map_err(sql_error("reading the threads' latest checkpoints"))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(sql_error("reading the threads' latest checkpoints"))?;
        rows
    };
    let mut latest: HashMap<String, LatestCheckpoint> = HashMap::with_capacity(rows.len());
    for row in rows {
        let header = decode_header(&row)?;
        let metadata = decode_metadata(&row)?;
        latest.insert(
            row.thread_id.clone(),
            LatestCheckpoint {
                config: CheckpointConfig {
                    thread_id: row.thread_id,
                    checkpoint_ns: row.checkpoint_ns,
                    checkpoint_id: Some(row.checkpoint_id),
                },
                metadata,
                ts: header.ts,
            },
        );
    }
    let mut out = Vec::with_capacity(threads.len());
    for (thread_id, (checkpoints, mut namespaces, (ns, id))) in threads {
        // The row was seen by the grouped query in the same snapshot.
        let Some(latest) = latest.remove(&thread_id) else {
            return Err(Error::corrupt(
                DataLocation {
                    thread_id,
                    checkpoint_ns: ns,
                    checkpoint_id: Some(id),
                    channel: None,
                },
                "the thread's latest checkpoint row vanished within one read transaction",
            ));
        };
        namespaces.sort();
        out.push(ThreadSummary {
            thread_id,
            checkpoints,
            namespaces,
            latest,
        });
    }
    tx.end_read()?;
    Ok(out)
}

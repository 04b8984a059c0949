//! The changes the writer thread applies, each undone alone if it fails (see `writer.rs`).

use std::collections::HashSet;

use rusqlite::{params, Connection};

use cairn_checkpoint::{write_index, DataLocation, Error, PendingWrite, Result, TypedValue};

use crate::id_key::{self, IdKey, StoredId};
use crate::packed_writes::{self, IndexedWrite};
use crate::sql_error;
use crate::stored_text::StoreText;
use crate::version_key::VersionKey;
use crate::write_refs::{MapRef, WriteRef};

/// A checkpoint ready to store: everything encoded by the caller, off the writer thread.
pub(crate) struct PutRow {
    pub thread_id: String,
    pub checkpoint_ns: String,
    pub checkpoint_id: String,
    pub parent_id: Option<String>,
    pub header: Vec<u8>,
    /// The stored form (`stored_metadata.rs`).
    pub metadata: Vec<u8>,
    pub run_id: Option<String>,
    /// The values of the channels in `new_versions`.
    pub blobs: Vec<BlobRow>,
    /// Pending writes for this checkpoint that came in the same batch (the next step's), in
    /// their stored form (`packed_writes.rs`); merged with any stored ones.
    pub writes: Option<Vec<u8>>,
}

/// One channel value to store.
pub(crate) struct BlobRow {
    pub channel: String,
    /// The version's storage string, for messages.
    pub version: String,
    /// The version as stored.
    pub key: VersionKey,
    /// For an append value, the version it extends (see [`cairn_checkpoint::append_base`]),
    /// as stored.
    pub base_key: Option<VersionKey>,
    pub value: TypedValue,
}

pub(crate) fn put(conn: &Connection, row: &PutRow) -> Result<()> {
    store(conn, &[], std::slice::from_ref(row))
}

/// Pending writes of one task against one checkpoint.
#[derive(Clone)]
pub(crate) struct WritesRow {
    pub thread_id: String,
    pub checkpoint_ns: String,
    pub checkpoint_id: String,
    pub task_id: String,
    pub task_path: String,
    pub writes: Vec<(String, TypedValue)>,
}

impl WritesRow {
    /// The writes with their indexes, as `checkpoints.writes` holds them.
    fn into_indexed(self) -> Vec<IndexedWrite> {
        let (task_id, task_path) = (self.task_id, self.task_path);
        self.writes
            .into_iter()
            .enumerate()
            .map(|(position, (channel, value))| {
                (
                    write_index(&channel, position),
                    PendingWrite {
                        task_id: task_id.clone(),
                        channel,
                        value,
                        task_path: task_path.clone(),
                    },
                )
            })
            .collect()
    }

    fn same_checkpoint(&self, row: &PutRow) -> bool {
        self.checkpoint_id == row.checkpoint_id
            && self.thread_id == row.thread_id
            && self.checkpoint_ns == row.checkpoint_ns
    }
}

/// Writes for a checkpoint that their request does not store, with their stored form for
/// `checkpoints.writes` encoded off the writer thread (which may run a request twice): they
/// go into that checkpoint's row if it is stored, else into `checkpoint_writes`.
pub(crate) struct LooseWrites {
    row: WritesRow,
    packed: Vec<u8>,
}

impl From<WritesRow> for LooseWrites {
    fn from(row: WritesRow) -> Self {
        let packed = packed_writes::encode(&row.clone().into_indexed());
        LooseWrites { row, packed }
    }
}

/// Files a batch's writes, in request order: those for a checkpoint the batch stores go into
/// that checkpoint's row (`attached`, by position in `rows`; the last row when the batch
/// stores it twice, whose upsert merges the two), the others stay rows of their own
/// (returned), stored by [`store`] into their checkpoint's row if it is stored, else into
/// `checkpoint_writes`. Merging in request order keeps the rules of pending writes: the
/// first regular write of a task and index stays, the last special one wins.
pub(crate) fn attach_writes(writes: Vec<WritesRow>, rows: &mut [PutRow]) -> Vec<LooseWrites> {
    let mut attached: Vec<Vec<IndexedWrite>> = vec![Vec::new(); rows.len()];
    let mut loose = Vec::new();
    for w in writes {
        match rows.iter().rposition(|row| w.same_checkpoint(row)) {
            Some(i) => {
                let stored = std::mem::take(&mut attached[i]);
                attached[i] = packed_writes::merge(stored, w.into_indexed(), false);
            }
            None => loose.push(LooseWrites::from(w)),
        }
    }
    for (row, list) in rows.iter_mut().zip(attached) {
        if !list.is_empty() {
            row.writes = Some(packed_writes::encode(&list));
        }
    }
    loose
}

pub(crate) fn put_writes(conn: &Connection, row: &LooseWrites) -> Result<()> {
    store(conn, std::slice::from_ref(row), &[])
}

/// Stores `checkpoints` (with their channel values and the writes attached to them) and
/// `writes` with a few multi-row statements per table instead of one statement per row: on a
/// batch of 64 W2 checkpoints the statements' fixed costs (binding, stepping and resetting a
/// program) were most of the writer thread's time. Rows go in the order given, so a key given
/// twice ends as one statement per row would leave it: the first regular write is kept, the
/// last special write, value and checkpoint win.
pub(crate) fn store(
    conn: &Connection,
    writes: &[LooseWrites],
    checkpoints: &[PutRow],
) -> Result<()> {
    let blobs: Vec<(&PutRow, &BlobRow)> = checkpoints
        .iter()
        .flat_map(|row| row.blobs.iter().map(move |b| (row, b)))
        .collect();
    insert_rows(
        conn,
        "INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type_tag, \
         data, base_version)",
        7,
        " ON CONFLICT (thread_id, checkpoint_ns, channel, version) \
         DO UPDATE SET type_tag = excluded.type_tag, data = excluded.data, \
                       base_version = excluded.base_version",
        &blobs,
        |stmt, at, (row, b)| {
            bind(stmt, at, &row.thread_id)?;
            bind(stmt, at + 1, &row.checkpoint_ns)?;
            bind(stmt, at + 2, &b.channel)?;
            bind(stmt, at + 3, &b.key)?;
            bind(stmt, at + 4, StoreText(&b.value.type_tag))?;
            bind(stmt, at + 5, b.value.data.as_ref())?;
            bind(stmt, at + 6, &b.base_key)
        },
        || match blobs.as_slice() {
            [(row, b)] => format!(
                "storing channel {:?} version {} of thread {:?}",
                b.channel, b.version, row.thread_id
            ),
            _ => storing_many(blobs.len(), "channel values", checkpoints),
        },
    )?;
    insert_rows(
        conn,
        "INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, \
         parent_checkpoint_id, header, metadata, run_id, writes)",
        8,
        " ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET \
         parent_checkpoint_id = excluded.parent_checkpoint_id, header = excluded.header, \
         metadata = excluded.metadata, run_id = excluded.run_id, \
         writes = cairn_merge_writes(checkpoints.writes, excluded.writes, 0)",
        checkpoints,
        |stmt, at, row| {
            bind(stmt, at, &row.thread_id)?;
            bind(stmt, at + 1, &row.checkpoint_ns)?;
            bind(stmt, at + 2, IdKey::of(&row.checkpoint_id))?;
            bind(stmt, at + 3, id_key::optional(row.parent_id.as_deref()))?;
            bind(stmt, at + 4, &row.header)?;
            bind(stmt, at + 5, &row.metadata)?;
            bind(stmt, at + 6, id_key::optional(row.run_id.as_deref()))?;
            bind(stmt, at + 7, &row.writes)
        },
        || match checkpoints {
            [row] => format!(
                "storing checkpoint {} of thread {:?}",
                row.checkpoint_id, row.thread_id
            ),
            _ => storing_many(checkpoints.len(), "checkpoints", checkpoints),
        },
    )?;
    let runs = runs_of(checkpoints);
    insert_rows(
        conn,
        "INSERT OR IGNORE INTO checkpoint_runs (run_id, thread_id, checkpoint_ns)",
        3,
        "",
        &runs,
        |stmt, at, (run_id, row)| {
            bind(stmt, at, IdKey::of(run_id))?;
            bind(stmt, at + 1, &row.thread_id)?;
            bind(stmt, at + 2, &row.checkpoint_ns)
        },
        || storing_many(runs.len(), "run ids", checkpoints),
    )?;
    store_loose_writes(conn, writes)
}

/// Stores writes into their checkpoint's row (after the batch's checkpoints, so a checkpoint
/// of this batch has its row), or, for a checkpoint not stored, as rows of
/// `checkpoint_writes`.
fn store_loose_writes(conn: &Connection, writes: &[LooseWrites]) -> Result<()> {
    let mut unattached = Vec::new();
    for LooseWrites { row, packed } in writes {
        let changed = conn
            .prepare_cached(
                "UPDATE checkpoints SET writes = cairn_merge_writes(writes, ?4, 0) \
                 WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id = ?3",
            )
            .and_then(|mut stmt| {
                stmt.execute(params![
                    row.thread_id,
                    row.checkpoint_ns,
                    IdKey::of(&row.checkpoint_id),
                    packed
                ])
            })
            .map_err(sql_error(format!(
                "storing the pending writes of task {:?} in checkpoint {} of thread {:?}",
                row.task_id, row.checkpoint_id, row.thread_id
            )))?;
        if changed == 0 {
            unattached.push(row);
        }
    }
    insert_write_rows(conn, &unattached)
}

/// Stores `writes` as rows of `checkpoint_writes`, with a few multi-row statements.
fn insert_write_rows(conn: &Connection, writes: &[&WritesRow]) -> Result<()> {
    // A regular write is kept if already stored (a retried task cannot duplicate it); a
    // special channel's write (negative index) replaces the stored one.
    let mut keep = Vec::new();
    let mut replace = Vec::new();
    for row in writes {
        for (position, (channel, value)) in row.writes.iter().enumerate() {
            let idx = write_index(channel, position);
            let write = (row, idx, channel.as_str(), value);
            if idx >= 0 {
                keep.push(write);
            } else {
                replace.push(write);
            }
        }
    }
    for (rows, verb) in [(&keep, "INSERT OR IGNORE"), (&replace, "INSERT OR REPLACE")] {
        insert_rows(
            conn,
            &format!("{verb} INTO checkpoint_writes {WRITE_COLUMNS}"),
            9,
            "",
            rows,
            |stmt, at, (row, idx, channel, value)| {
                bind(stmt, at, &row.thread_id)?;
                bind(stmt, at + 1, &row.checkpoint_ns)?;
                bind(stmt, at + 2, IdKey::of(&row.checkpoint_id))?;
                bind(stmt, at + 3, IdKey::of(&row.task_id))?;
                bind(stmt, at + 4, idx)?;
                bind(stmt, at + 5, StoreText(&row.task_path))?;
                bind(stmt, at + 6, channel)?;
                bind(stmt, at + 7, StoreText(&value.type_tag))?;
                bind(stmt, at + 8, value.data.as_ref())
            },
            || match writes.first() {
                Some(w) => format!(
                    "storing {} pending writes (task {:?}, checkpoint {} of thread {:?}{})",
                    rows.len(),
                    w.task_id,
                    w.checkpoint_id,
                    w.thread_id,
                    if writes.len() > 1 { ", and others" } else { "" }
                ),
                None => "storing pending writes".into(),
            },
        )?;
    }
    Ok(())
}

/// The distinct `(run id, thread and namespace)` pairs of `checkpoints`: a batch holds many
/// checkpoints of few runs (one run's steps follow each other), so most are repeats.
fn runs_of(checkpoints: &[PutRow]) -> Vec<(&str, &PutRow)> {
    let mut runs: Vec<(&str, &PutRow)> = Vec::new();
    for row in checkpoints {
        let Some(run_id) = row.run_id.as_deref() else {
            continue;
        };
        let seen = runs.iter().rev().any(|(r, other)| {
            *r == run_id
                && other.thread_id == row.thread_id
                && other.checkpoint_ns == row.checkpoint_ns
        });
        if !seen {
            runs.push((run_id, row));
        }
    }
    runs
}

/// What a failed statement was storing: `count` `rows` of the batch `checkpoints`.
fn storing_many(count: usize, rows: &str, checkpoints: &[PutRow]) -> String {
    format!(
        "storing {count} {rows} (thread {:?}{})",
        checkpoints.first().map_or("", |r| r.thread_id.as_str()),
        if checkpoints.len() > 1 {
            " and others"
        } else {
            ""
        }
    )
}

const WRITE_COLUMNS: &str = "(thread_id, checkpoint_ns, checkpoint_id, task_id, idx, task_path, \
    channel, type_tag, data)";

/// Rows per statement: a batch goes in statements of 16 rows, its remainder in statements of
/// 4 and of 1, so at most three statements per table stay in the statement cache.
const CHUNKS: [usize; 3] = [16, 4, 1];

fn bind<T: rusqlite::ToSql>(
    stmt: &mut rusqlite::Statement<'_>,
    index: usize,
    value: T,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(index, value)
}

/// Inserts `rows` with `head VALUES (…), (…) tail` statements of [`CHUNKS`] rows of
/// `columns` parameters; `bind_row` binds one row's parameters from the given 1-based index
/// on. `what` names the rows for an error message (built only on failure).
fn insert_rows<T>(
    conn: &Connection,
    head: &str,
    columns: usize,
    tail: &str,
    rows: &[T],
    bind_row: impl Fn(&mut rusqlite::Statement<'_>, usize, &T) -> rusqlite::Result<()>,
    what: impl Fn() -> String,
) -> Result<()> {
    let mut rest = rows;
    while !rest.is_empty() {
        let size = CHUNKS.into_iter().find(|&k| k <= rest.len()).unwrap_or(1);
        let (chunk, after) = rest.split_at(size.min(rest.len()));
        let mut sql = String::with_capacity(head.len() + tail.len() + size * (4 * columns + 8));
        sql.push_str(head);
        sql.push_str(" VALUES ");
        for i in 0..size {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push('(');
            for c in 0..columns {
                if c > 0 {
                    sql.push(',');
                }
                sql.push('?');
            }
            sql.push(')');
        }
        sql.push_str(tail);
        let mut stmt = conn
            .prepare_cached(&sql)
            .map_err(|e| sql_error(format!("preparing the statement for {}", what()))(e))?;
        let result = chunk
            .iter()
            .enumerate()
            .try_for_each(|(i, row)| bind_row(&mut stmt, i * columns + 1, row))
            .and_then(|()| stmt.raw_execute());
        result.map_err(|e| sql_error(what())(e))?;
        rest = after;
    }
    Ok(())
}

/// The `checkpoint_runs` rows of a thread's checkpoints (`?1`).
pub(crate) const FORGET_THREAD_RUNS_SQL: &str =
    "DELETE FROM checkpoint_runs WHERE (run_id, thread_id, checkpoint_ns) IN (
         SELECT run_id, thread_id, checkpoint_ns FROM checkpoints
         WHERE thread_id = ?1 AND run_id IS NOT NULL)";

/// The `checkpoint_runs` rows of namespace `?2` of thread `?1` but the run of its
/// checkpoint `?3`.
pub(crate) const FORGET_RUNS_BUT_KEPT_SQL: &str =
    "DELETE FROM checkpoint_runs WHERE (run_id, thread_id, checkpoint_ns) IN (
         SELECT run_id, thread_id, checkpoint_ns FROM checkpoints
         WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND run_id IS NOT NULL
           AND run_id IS NOT (SELECT run_id FROM checkpoints
                              WHERE thread_id = ?1 AND checkpoint_ns = ?2
                                AND checkpoint_id = ?3))";

/// Deletes the `checkpoint_runs` rows of the checkpoints of `thread_id` that are about to be
/// deleted: all of them, or with `keep` (a namespace and a checkpoint in it) those of that
/// namespace but the kept checkpoint's run. Runs go before the checkpoints, since the rows
/// are found through them. (Two statements, so each is one search of the primary key: one
/// with an optional namespace searched the whole thread once per namespace.)
fn forget_runs(conn: &Connection, thread_id: &str, keep: Option<(&str, &str)>) -> Result<()> {
    let result = match keep {
        None => conn
            .prepare_cached(FORGET_THREAD_RUNS_SQL)
            .and_then(|mut s| s.execute([thread_id])),
        Some((ns, checkpoint_id)) => conn
            .prepare_cached(FORGET_RUNS_BUT_KEPT_SQL)
            .and_then(|mut s| s.execute(params![thread_id, ns, IdKey::of(checkpoint_id)])),
    };
    result.map_err(sql_error(format!(
        "deleting the run ids of thread {thread_id:?}"
    )))?;
    Ok(())
}

pub(crate) fn delete_thread(conn: &Connection, thread_id: &str) -> Result<()> {
    forget_runs(conn, thread_id, None)?;
    for table in ["checkpoint_writes", "checkpoint_blobs", "checkpoints"] {
        conn.prepare_cached(&format!("DELETE FROM {table} WHERE thread_id = ?1"))
            .and_then(|mut s| s.execute([thread_id]))
            .map_err(sql_error(format!(
                "deleting thread {thread_id:?} from {table}"
            )))?;
    }
    Ok(())
}

/// How rows of `checkpoint_writes` combine with the writes in the checkpoint row they move
/// into (see [`fold_write_rows`]).
#[derive(Clone, Copy)]
enum RowsAre {
    /// Written before the row's writes (a thread's own rows, for a checkpoint it stored
    /// later): regular writes already in the rows are kept, special ones replaced.
    Older,
    /// Overridden by the row's writes, which a copy brought from the source thread.
    Overridden,
    /// Overriding the row's writes: the source thread's rows, copied over the target's row.
    Overriding,
}

/// Files the `checkpoint_writes` rows of thread `rows_of` into the rows of thread `into` that
/// store their checkpoints, merged as `rows` says. Rows moved within a thread are deleted;
/// the rows of another thread (the source of a copy) stay where they are.
fn fold_write_rows(conn: &Connection, rows_of: &str, into: &str, rows: RowsAre) -> Result<()> {
    let mut found = std::collections::HashMap::new();
    crate::read::collect_writes(
        conn,
        "SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.task_path,
                w.channel, w.type_tag, w.data
         FROM checkpoint_writes AS w JOIN checkpoints AS c
           ON c.thread_id = ?2 AND c.checkpoint_ns = w.checkpoint_ns
          AND c.checkpoint_id = w.checkpoint_id
         WHERE w.thread_id = ?1",
        [rows_of, into],
        &mut found,
    )?;
    let merge_sql = match rows {
        RowsAre::Older => "cairn_merge_writes(?4, writes, 0)",
        RowsAre::Overridden => "cairn_merge_writes(?4, writes, 1)",
        RowsAre::Overriding => "cairn_merge_writes(writes, ?4, 1)",
    };
    for ((_, ns, checkpoint_id), writes) in found {
        let what = || {
            format!(
                "moving the pending writes of checkpoint {checkpoint_id} of thread {rows_of:?} \
                 into its row in thread {into:?}"
            )
        };
        conn.prepare_cached(&format!(
            "UPDATE checkpoints SET writes = {merge_sql}
             WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id = ?3"
        ))
        .and_then(|mut s| {
            s.execute(params![
                into,
                ns,
                IdKey::of(&checkpoint_id),
                packed_writes::encode(&writes)
            ])
        })
        .map_err(sql_error(what()))?;
        if rows_of == into {
            conn.prepare_cached(
                "DELETE FROM checkpoint_writes
                 WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id = ?3",
            )
            .and_then(|mut s| s.execute(params![into, ns, IdKey::of(&checkpoint_id)]))
            .map_err(sql_error(what()))?;
        }
    }
    Ok(())
}

pub(crate) fn copy_thread(conn: &Connection, source: &str, target: &str) -> Result<()> {
    if source == target {
        return Ok(());
    }
    // With each thread's writes in its checkpoint rows, merging the rows below lets the
    // source's writes win over the target's, as copying rows of `checkpoint_writes` did.
    fold_write_rows(conn, source, source, RowsAre::Older)?;
    fold_write_rows(conn, target, target, RowsAre::Older)?;
    copy_rows(conn, source, target, "checkpoints", COPY_CHECKPOINTS_SQL)?;
    // What is left in `checkpoint_writes` is for checkpoints a thread does not store. The
    // target's such rows whose checkpoint it now holds, copied, lose to the source's writes;
    // the source's such rows whose checkpoint the target holds win over the target's; the
    // source's other rows are copied as rows (replacing the target's namesakes).
    fold_write_rows(conn, target, target, RowsAre::Overridden)?;
    fold_write_rows(conn, source, target, RowsAre::Overriding)?;
    let copies = [
        (
            "checkpoint_blobs",
            "INSERT OR REPLACE INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version,
                 type_tag, data, base_version)
             SELECT ?2, checkpoint_ns, channel, version, type_tag, data, base_version
             FROM checkpoint_blobs WHERE thread_id = ?1",
        ),
        (
            "checkpoint_writes",
            "INSERT OR REPLACE INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id,
                 task_id, idx, task_path, channel, type_tag, data)
             SELECT ?2, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.idx, w.task_path,
                    w.channel, w.type_tag, w.data
             FROM checkpoint_writes AS w
             WHERE w.thread_id = ?1 AND NOT EXISTS (
                 SELECT 1 FROM checkpoints AS c
                 WHERE c.thread_id = ?2 AND c.checkpoint_ns = w.checkpoint_ns
                   AND c.checkpoint_id = w.checkpoint_id)",
        ),
        (
            "checkpoint_runs",
            "INSERT OR IGNORE INTO checkpoint_runs (run_id, thread_id, checkpoint_ns)
             SELECT DISTINCT run_id, ?2, checkpoint_ns FROM checkpoints
             WHERE thread_id = ?1 AND run_id IS NOT NULL",
        ),
    ];
    for (table, sql) in copies {
        copy_rows(conn, source, target, table, sql)?;
    }
    Ok(())
}

/// A checkpoint the target holds already takes the source's row; their pending writes merge,
/// the source's winning, as the rows of `checkpoint_writes` do.
const COPY_CHECKPOINTS_SQL: &str = "INSERT INTO checkpoints (thread_id, checkpoint_ns,
         checkpoint_id, parent_checkpoint_id, header, metadata, run_id, writes)
     SELECT ?2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, metadata, run_id,
            writes
     FROM checkpoints WHERE thread_id = ?1
     ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
         parent_checkpoint_id = excluded.parent_checkpoint_id,
         header = excluded.header, metadata = excluded.metadata,
         run_id = excluded.run_id,
         writes = cairn_merge_writes(checkpoints.writes, excluded.writes, 1)";

/// Runs one statement of [`copy_thread`] (`?1` the source, `?2` the target).
fn copy_rows(conn: &Connection, source: &str, target: &str, table: &str, sql: &str) -> Result<()> {
    conn.prepare_cached(sql)
        .and_then(|mut s| s.execute([source, target]))
        .map_err(sql_error(format!(
            "copying {table} of thread {source:?} to {target:?}"
        )))?;
    Ok(())
}

/// Deletes channel values of `(thread, ns)` that no remaining checkpoint refers to, directly
/// or as a link of an append chain: the values the checkpoints name (`?3`, a JSON array of
/// `[channel, version]`, see [`referenced_versions`]), then (recursively) the base each
/// append value extends. `UNION` visits each link once, however many checkpoints share it;
/// each step is a search of the primary key.
pub(crate) const RECLAIM_SQL: &str = "WITH RECURSIVE live (channel, version) AS (
         SELECT k.value ->> 0, cairn_version_key(k.value ->> 1) FROM json_each(?3) AS k
         UNION
         SELECT b.channel, b.base_version FROM live CROSS JOIN checkpoint_blobs AS b
         WHERE b.thread_id = ?1 AND b.checkpoint_ns = ?2 AND b.channel = live.channel
           AND b.version = live.version AND b.base_version IS NOT NULL)
     DELETE FROM checkpoint_blobs
     WHERE thread_id = ?1 AND checkpoint_ns = ?2
       AND (channel, version) NOT IN (SELECT channel, version FROM live)";

/// The `[channel, version]` pairs the checkpoints of `(thread, ns)` and their pending writes
/// refer to, as a JSON array for [`RECLAIM_SQL`], read from the checkpoints' headers and the
/// writes stored as references. A header or reference that cannot be decoded is an error:
/// reclaiming without knowing what it refers to could delete values it needs.
fn referenced_versions(conn: &Connection, thread_id: &str, ns: &str) -> Result<String> {
    let what = || {
        sql_error(format!(
            "reading the checkpoints of thread {thread_id:?} to reclaim values"
        ))
    };
    let mut stmt = conn
        .prepare_cached(
            "SELECT checkpoint_id, header, writes FROM checkpoints
             WHERE thread_id = ?1 AND checkpoint_ns = ?2",
        )
        .map_err(what())?;
    let mut rows = stmt.query([thread_id, ns]).map_err(what())?;
    let mut named: HashSet<(String, String)> = HashSet::new();
    // Pending writes stored as references, in rows (`checkpoint_writes`, below) or in their
    // checkpoint's row: checkpoint id, channel, reference.
    let mut references: Vec<(String, String, Vec<u8>)> = Vec::new();
    while let Some(r) = rows.next().map_err(what())? {
        let StoredId(checkpoint_id) = r.get(0).map_err(what())?;
        if let Some(blob) = r
            .get_ref(2)
            .map_err(what())?
            .as_blob_or_null()
            .map_err(|e| {
                what()(rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Blob,
                    Box::new(e),
                ))
            })?
        {
            let in_row = crate::packed_writes::decode(blob).map_err(|reason| {
                Error::corrupt(
                    DataLocation {
                        thread_id: thread_id.to_owned(),
                        checkpoint_ns: ns.to_owned(),
                        checkpoint_id: Some(checkpoint_id.clone()),
                        channel: None,
                    },
                    reason,
                )
            })?;
            references.extend(
                in_row
                    .into_iter()
                    .filter(|(_, w)| w.value.type_tag == crate::write_refs::TAG_WRITE_REF)
                    .map(|(_, w)| (checkpoint_id.clone(), w.channel, w.value.data.to_vec())),
            );
        }
        let header = r.get_ref(1).map_err(what())?.as_blob().map_err(|e| {
            what()(rusqlite::Error::FromSqlConversionFailure(
                1,
                rusqlite::types::Type::Blob,
                Box::new(e),
            ))
        })?;
        let versions = crate::header::channel_versions(header).map_err(|message| {
            Error::corrupt(
                DataLocation {
                    thread_id: thread_id.to_owned(),
                    checkpoint_ns: ns.to_owned(),
                    checkpoint_id: Some(checkpoint_id),
                    channel: None,
                },
                message,
            )
        })?;
        for (channel, version) in versions {
            named.insert((channel, version.to_storage_string()));
        }
    }
    // The values pending writes refer to (see `write_refs.rs`) stay as well.
    let mut stmt = conn.prepare_cached(REFERRING_WRITES_SQL).map_err(what())?;
    let mut rows = stmt.query([thread_id, ns]).map_err(what())?;
    while let Some(r) = rows.next().map_err(what())? {
        let StoredId(checkpoint_id) = r.get(0).map_err(what())?;
        references.push((
            checkpoint_id,
            r.get(1).map_err(what())?,
            r.get(2).map_err(what())?,
        ));
    }
    for (checkpoint_id, channel, data) in references {
        let version = WriteRef::decode(&data)
            .and_then(|reference| reference.version_string())
            .map_err(|reason| {
                Error::corrupt(
                    DataLocation {
                        thread_id: thread_id.to_owned(),
                        checkpoint_ns: ns.to_owned(),
                        checkpoint_id: Some(checkpoint_id),
                        channel: Some(channel.clone()),
                    },
                    format!("a pending write stored as a reference: {reason}"),
                )
            })?;
        named.insert((channel, version));
    }
    // And the values that inputs stored with references refer to, for the inputs a remaining
    // checkpoint names: an input of a deleted checkpoint goes in this same reclaim and must
    // not keep what it referred to.
    let mut live_inputs = Vec::new();
    let mut stmt = conn.prepare_cached(REFERRING_VALUES_SQL).map_err(what())?;
    let mut rows = stmt.query([thread_id, ns]).map_err(what())?;
    while let Some(r) = rows.next().map_err(what())? {
        let channel: String = r.get(0).map_err(what())?;
        let version: String = r.get(1).map_err(what())?;
        if named.contains(&(channel.clone(), version)) {
            live_inputs.push((channel, r.get::<_, Vec<u8>>(2).map_err(what())?));
        }
    }
    for (channel, data) in live_inputs {
        let corrupt = |reason: String| {
            Error::corrupt(
                DataLocation {
                    thread_id: thread_id.to_owned(),
                    checkpoint_ns: ns.to_owned(),
                    checkpoint_id: None,
                    channel: Some(channel.clone()),
                },
                format!("a value stored with references: {reason}"),
            )
        };
        let map = MapRef::decode(&data).map_err(corrupt)?;
        for reference in map.references() {
            let (target, reference) = reference.map_err(corrupt)?;
            let version = reference.version_string().map_err(corrupt)?;
            named.insert((target.to_owned(), version));
        }
    }
    serde_json::to_string(&named).map_err(|e| Error::Encode {
        format: "json",
        message: format!("encoding the values checkpoints refer to: {e}"),
    })
}

/// The pending writes of `(thread, ns)` stored as references: one range of the primary key.
/// (`x'08'`: `ref/append` as schema 11 stores it, see `stored_text.rs`.)
pub(crate) const REFERRING_WRITES_SQL: &str = "SELECT checkpoint_id, channel, data
     FROM checkpoint_writes
     WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND type_tag IN ('ref/append', x'08')";

/// The values of `(thread, ns)` stored as maps with references: one range of the primary
/// key, read whole (reclaiming is rare). (`x'09'`: `ref/map` as schema 11 stores it.)
pub(crate) const REFERRING_VALUES_SQL: &str = "SELECT channel, cairn_version_text(version), data
     FROM checkpoint_blobs
     WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND type_tag IN ('ref/map', x'09')";

fn reclaim_blobs(conn: &Connection, thread_id: &str, ns: &str) -> Result<()> {
    let named = referenced_versions(conn, thread_id, ns)?;
    conn.prepare_cached(RECLAIM_SQL)
        .and_then(|mut s| s.execute([thread_id, ns, named.as_str()]))
        .map_err(sql_error(format!(
            "reclaiming unreferenced channel values of thread {thread_id:?}"
        )))?;
    Ok(())
}

/// Stores the append values checkpoint `checkpoint_id` refers to as whole values, so that
/// none of the older values their chains pass through is needed any more.
fn rewrite_append_values_whole(
    conn: &Connection,
    thread_id: &str,
    ns: &str,
    checkpoint_id: &str,
) -> Result<()> {
    let whole = crate::read::whole_append_values(conn, thread_id, ns, checkpoint_id)?;
    if whole.is_empty() {
        return Ok(());
    }
    let mut update = conn
        .prepare_cached(
            "UPDATE checkpoint_blobs SET type_tag = ?5, data = ?6, base_version = NULL
             WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND channel = ?3
               AND version = cairn_version_key(?4)",
        )
        .map_err(sql_error("preparing the channel value update"))?;
    for (channel, version, value) in whole {
        update
            .execute(params![
                thread_id,
                ns,
                channel,
                version,
                StoreText(&value.type_tag),
                value.data.as_ref()
            ])
            .map_err(sql_error(format!(
                "storing channel {channel:?} version {version} of thread {thread_id:?} whole"
            )))?;
    }
    Ok(())
}

/// Keeps only the latest checkpoint of each namespace of `thread_id`, with its writes and
/// the values it refers to (its append values rewritten whole first).
pub(crate) fn keep_latest(conn: &Connection, thread_id: &str) -> Result<()> {
    let namespaces: Vec<String> = conn
        .prepare_cached("SELECT DISTINCT checkpoint_ns FROM checkpoints WHERE thread_id = ?1")
        .and_then(|mut s| {
            s.query_map([thread_id], |r| r.get(0))?
                .collect::<rusqlite::Result<Vec<String>>>()
        })
        .map_err(sql_error(format!(
            "listing namespaces of thread {thread_id:?}"
        )))?;
    for ns in namespaces {
        let StoredId(latest) = conn
            .prepare_cached(
                "SELECT checkpoint_id FROM checkpoints WHERE thread_id = ?1 AND checkpoint_ns = ?2
                 ORDER BY checkpoint_id DESC LIMIT 1",
            )
            .and_then(|mut s| s.query_row([thread_id, ns.as_str()], |r| r.get(0)))
            .map_err(sql_error(format!(
                "finding the latest checkpoint of thread {thread_id:?}"
            )))?;
        rewrite_append_values_whole(conn, thread_id, &ns, &latest)?;
        forget_runs(conn, thread_id, Some((&ns, &latest)))?;
        for table in ["checkpoint_writes", "checkpoints"] {
            conn.prepare_cached(&format!(
                "DELETE FROM {table} WHERE thread_id = ?1 AND checkpoint_ns = ?2 AND checkpoint_id <> ?3"
            ))
            .and_then(|mut s| s.execute(params![thread_id, ns, IdKey::of(&latest)]))
            .map_err(sql_error(format!("pruning {table} of thread {thread_id:?}")))?;
        }
        reclaim_blobs(conn, thread_id, &ns)?;
    }
    Ok(())
}

/// The threads and namespaces holding checkpoints of a JSON array of run ids: a search of
/// `checkpoint_runs`' primary key per run id.
pub(crate) const RUNS_AFFECTED_SQL: &str =
    "SELECT DISTINCT thread_id, checkpoint_ns FROM checkpoint_runs
     WHERE run_id IN (SELECT cairn_id_key(value) FROM json_each(?1))";

/// Deletes the checkpoints of the runs in the JSON array `run_ids_json` (with their pending
/// writes), then the values no remaining checkpoint needs. Each thread namespace a run
/// touched is searched by its primary key, its rows tested on `run_id`.
pub(crate) fn delete_for_runs(conn: &Connection, run_ids_json: &str) -> Result<()> {
    let affected: Vec<(String, String)> = conn
        .prepare_cached(RUNS_AFFECTED_SQL)
        .and_then(|mut s| {
            s.query_map([run_ids_json], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()
        })
        .map_err(sql_error("finding the checkpoints of the runs"))?;
    for (thread_id, ns) in &affected {
        let what = |rows: &str| format!("deleting the {rows} of the runs in thread {thread_id:?}");
        conn.prepare_cached(
            "DELETE FROM checkpoint_writes
             WHERE thread_id = ?2 AND checkpoint_ns = ?3 AND checkpoint_id IN (
                 SELECT checkpoint_id FROM checkpoints
                 WHERE thread_id = ?2 AND checkpoint_ns = ?3
                   AND run_id IN (SELECT cairn_id_key(value) FROM json_each(?1)))",
        )
        .and_then(|mut s| s.execute([run_ids_json, thread_id, ns]))
        .map_err(sql_error(what("pending writes")))?;
        conn.prepare_cached(
            "DELETE FROM checkpoints WHERE thread_id = ?2 AND checkpoint_ns = ?3
               AND run_id IN (SELECT cairn_id_key(value) FROM json_each(?1))",
        )
        .and_then(|mut s| s.execute([run_ids_json, thread_id, ns]))
        .map_err(sql_error(what("checkpoints")))?;
        reclaim_blobs(conn, thread_id, ns)?;
    }
    conn.prepare_cached(
        "DELETE FROM checkpoint_runs WHERE run_id IN (SELECT cairn_id_key(value) FROM json_each(?1))",
    )
    .and_then(|mut s| s.execute([run_ids_json]))
    .map_err(sql_error("deleting the run ids"))?;
    Ok(())
}

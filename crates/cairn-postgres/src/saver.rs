//! [`PostgresSaver`]: the [`CheckpointSaver`] over a pool of PostgreSQL connections.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use cairn_checkpoint::{
    append_base, chain_fetch_bound, write_index, ChannelVersion, ChannelVersions, Checkpoint,
    CheckpointConfig, CheckpointMetadata, CheckpointSaver, CheckpointTuple, DataLocation, Error,
    KnownValues, LatestCheckpoint, ListQuery, PendingWrite, PruneStrategy, PutRequest, Result,
    TaskWrites, ThreadSummary, TypedValue,
};
use deadpool_postgres::{ClientWrapper, Pool};
use tokio_postgres::types::{Json, ToSql, Type};
use tokio_postgres::Row;

use crate::error::{check_json, check_text, means_connection_lost, pg_error, pool_error};
use crate::options::PostgresOptions;
use crate::schema::{Statements, CHECKPOINT_COLUMNS};
use crate::values::{Fetched, ValueKeys};

/// One statement parameter and its PostgreSQL type (the type is needed up front when no
/// statement is prepared).
type Param<'a> = (&'a (dyn ToSql + Sync), Type);

/// A [`CheckpointSaver`] storing checkpoints in PostgreSQL.
///
/// Cheap to clone: clones share the connection pool. See the [crate docs](crate) for the
/// tables, the statement modes and the connection handling.
#[derive(Clone)]
pub struct PostgresSaver {
    pool: Pool,
    sql: Arc<Statements>,
    prepared: bool,
    schema: Option<String>,
    append_channels: Arc<AppendChannels>,
    /// Concurrent writes share commits (see `group.rs`).
    group: Arc<crate::group::GroupCommit>,
}

impl crate::group::StoreBatch for PostgresSaver {
    async fn store_batch(&self, requests: Vec<PutRequest>) -> Result<()> {
        self.put_batch_ungrouped(requests).await
    }

    /// Errors found before any SQL (arguments, encoding) and any error the server reports
    /// with an SQL state may concern one request (a data exception, a constraint, a key too
    /// long for its index: class 54), so the group stores its callers one by one and only
    /// the culprit fails; errors without a state (a lost connection, the pool, a timeout)
    /// and the server-wide classes (08 connection, 53 resources, 57 operator intervention,
    /// 58 system, XX internal) concern all.
    fn may_concern_one_request(error: &Error) -> bool {
        match error {
            Error::Backend { .. } => driver_error(error)
                .and_then(tokio_postgres::Error::code)
                .is_some_and(|code| {
                    !matches!(code.code().get(..2), Some("08" | "53" | "57" | "58" | "XX"))
                }),
            _ => true,
        }
    }
}

/// Names of channels this saver has read append values of. A read asking for one of them
/// fetches the append chains in the same statement as the values; other reads use the plain
/// values statement (cheaper to plan) and fetch chains in a second one only if append values
/// turn up. A hint only: either way the result is the same.
#[derive(Debug, Default)]
struct AppendChannels(std::sync::RwLock<HashSet<String>>);

/// At most this many names are remembered (an application has a handful of list channels;
/// beyond the cap, reads of other channels just take the second statement).
const APPEND_CHANNELS_CAP: usize = 1024;

impl AppendChannels {
    fn any_of<'a>(&self, mut channels: impl Iterator<Item = &'a str>) -> bool {
        // A panic elsewhere cannot leave the set inconsistent: inserting is its only change.
        let known = self.0.read().unwrap_or_else(|p| p.into_inner());
        !known.is_empty() && channels.any(|c| known.contains(c))
    }

    fn remember<'a>(&self, channels: impl Iterator<Item = &'a str>) {
        let mut known = self.0.write().unwrap_or_else(|p| p.into_inner());
        for channel in channels {
            if known.len() >= APPEND_CHANNELS_CAP {
                break;
            }
            if !known.contains(channel) {
                known.insert(channel.to_owned());
            }
        }
    }
}

impl std::fmt::Debug for PostgresSaver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresSaver")
            .field("schema", &self.schema)
            .field("prepared_statements", &self.prepared)
            .field("pool", &self.pool.status())
            .finish()
    }
}

/// A checkpoint row, decoded, before its values and writes are attached.
struct StoredRow {
    thread_id: String,
    checkpoint_ns: String,
    parent_id: Option<String>,
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
}

/// `(thread, ns, checkpoint id)` of a checkpoint.
type CheckpointKey = (String, String, String);

/// How many connections one call tries when they turn out to be dead.
const RECONNECT_ATTEMPTS: u32 = 3;

/// Whether `e` says the connection was lost (so the call may run again on another one).
fn connection_lost(e: &Error) -> bool {
    driver_error(e).is_some_and(means_connection_lost)
}

/// The driver's error behind a backend error, if there is one.
fn driver_error(e: &Error) -> Option<&tokio_postgres::Error> {
    match e {
        Error::Backend {
            source: Some(source),
            ..
        } => source.downcast_ref::<tokio_postgres::Error>(),
        _ => None,
    }
}

/// A deadlock victim or serialization failure: the statement did nothing and can be re-sent.
fn is_transient_conflict(e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    e.code().is_some_and(|c| {
        *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

fn location(thread_id: &str, ns: &str, checkpoint_id: &str, channel: Option<&str>) -> DataLocation {
    DataLocation {
        thread_id: thread_id.to_owned(),
        checkpoint_ns: ns.to_owned(),
        checkpoint_id: Some(checkpoint_id.to_owned()),
        channel: channel.map(str::to_owned),
    }
}

/// A pending write of a batch: checkpoint id, task id, task path, index, channel, type tag,
/// bytes.
type WriteRow<'a> = (&'a str, &'a str, &'a str, i64, &'a str, &'a str, &'a [u8]);

/// A channel value of a batch, by (channel, version): type tag, bytes, append base.
type ValueRow<'a> = (&'a str, &'a [u8], Option<String>);

impl PostgresSaver {
    /// Stores checkpoints of one thread and namespace, with their tasks' writes, in one
    /// statement ([`Statements::put_many`]): atomic, one round trip, and one statement for
    /// the server to plan and run however many checkpoints the batch holds.
    async fn put_many(&self, requests: Vec<PutRequest>) -> Result<()> {
        let Some(first) = requests.first() else {
            return Ok(());
        };
        let (thread_id, checkpoint_ns) = (
            first.config.thread_id.clone(),
            first.config.checkpoint_ns.clone(),
        );
        let encoded = encode_requests(requests)?;
        // Values, keyed by (channel, version): a version is written once, but one statement
        // must not update the same row twice, so a repeated key keeps its last value.
        let mut values: BTreeMap<(&str, String), ValueRow<'_>> = BTreeMap::new();
        for (r, _, _, vals) in &encoded {
            let b = blob_columns(&r.new_versions, vals)?;
            let rows = b
                .channels
                .into_iter()
                .zip(b.versions)
                .zip(b.tags)
                .zip(b.blobs);
            for ((((channel, version), tag), blob), base) in rows.zip(b.bases) {
                values.insert((channel, version), (tag, blob, base));
            }
        }
        let mut v_channels = Vec::with_capacity(values.len());
        let mut v_versions = Vec::with_capacity(values.len());
        let mut v_tags = Vec::with_capacity(values.len());
        let mut v_blobs = Vec::with_capacity(values.len());
        let mut v_bases = Vec::with_capacity(values.len());
        for ((channel, version), (tag, blob, base)) in values {
            v_channels.push(channel);
            v_versions.push(version);
            v_tags.push(tag);
            v_blobs.push(blob);
            v_bases.push(base);
        }
        // Writes in batch order. One statement must not update a row twice: a special write
        // (negative index) repeated for the same checkpoint and task keeps its last value, as
        // separate statements would leave it; repeated regular writes are `DO NOTHING`, so the
        // first stays.
        let mut writes: Vec<WriteRow<'_>> = Vec::new();
        for (r, ..) in &encoded {
            let parent = r.config.checkpoint_id.as_deref().unwrap_or_default();
            for task in &r.writes {
                let (idxs, channels, tags, blobs) =
                    write_columns(&task.writes, &task.task_id, &task.task_path)?;
                for (((idx, channel), tag), blob) in
                    idxs.into_iter().zip(channels).zip(tags).zip(blobs)
                {
                    writes.push((
                        parent,
                        &task.task_id,
                        &task.task_path,
                        idx,
                        channel,
                        tag,
                        blob,
                    ));
                }
            }
        }
        let writes = keep_last(writes, |w| (w.3 < 0).then_some((w.0, w.1, w.3)));
        let w_checkpoints: Vec<&str> = writes.iter().map(|w| w.0).collect();
        let w_tasks: Vec<&str> = writes.iter().map(|w| w.1).collect();
        let w_paths: Vec<&str> = writes.iter().map(|w| w.2).collect();
        let w_idxs: Vec<i64> = writes.iter().map(|w| w.3).collect();
        let w_channels: Vec<&str> = writes.iter().map(|w| w.4).collect();
        let w_tags: Vec<&str> = writes.iter().map(|w| w.5).collect();
        let w_blobs: Vec<&[u8]> = writes.iter().map(|w| w.6).collect();
        // A checkpoint given twice keeps its last form, as separate statements would.
        let checkpoints = keep_last(encoded.iter().collect(), |(r, ..)| {
            Some(r.checkpoint.id.as_str())
        });
        let ids: Vec<&str> = checkpoints
            .iter()
            .map(|(r, ..)| r.checkpoint.id.as_str())
            .collect();
        let parents: Vec<Option<&str>> = checkpoints
            .iter()
            .map(|(r, ..)| r.config.checkpoint_id.as_deref())
            .collect();
        let headers: Vec<&serde_json::Value> = checkpoints.iter().map(|(_, h, ..)| h).collect();
        let metadata: Vec<&serde_json::Value> = checkpoints.iter().map(|(_, _, m, _)| m).collect();
        let params: &[Param<'_>] = &[
            (&thread_id, Type::TEXT),
            (&checkpoint_ns, Type::TEXT),
            (&v_channels, Type::TEXT_ARRAY),
            (&v_versions, Type::TEXT_ARRAY),
            (&v_tags, Type::TEXT_ARRAY),
            (&v_blobs, Type::BYTEA_ARRAY),
            (&v_bases, Type::TEXT_ARRAY),
            (&w_checkpoints, Type::TEXT_ARRAY),
            (&w_tasks, Type::TEXT_ARRAY),
            (&w_paths, Type::TEXT_ARRAY),
            (&w_idxs, Type::INT8_ARRAY),
            (&w_channels, Type::TEXT_ARRAY),
            (&w_tags, Type::TEXT_ARRAY),
            (&w_blobs, Type::BYTEA_ARRAY),
            (&ids, Type::TEXT_ARRAY),
            (&parents, Type::TEXT_ARRAY),
            (&headers, Type::JSONB_ARRAY),
            (&metadata, Type::JSONB_ARRAY),
        ];
        self.with_client(|client| async move {
            self.query(&client, "put_batch", &self.sql.put_many, params)
                .await
        })
        .await?;
        Ok(())
    }

    /// Stores one checkpoint (with its writes) through the group commit; the config naming
    /// it.
    async fn store_one(&self, request: PutRequest) -> Result<CheckpointConfig> {
        let stored = request.stored_config();
        self.group.store(self, vec![request]).await?;
        Ok(stored)
    }

    pub(crate) async fn put_batch_ungrouped(&self, requests: Vec<PutRequest>) -> Result<()> {
        if requests.is_empty() {
            return Ok(());
        }
        let one_thread = requests.windows(2).all(|pair| {
            pair[0].config.thread_id == pair[1].config.thread_id
                && pair[0].config.checkpoint_ns == pair[1].config.checkpoint_ns
        });
        if requests.len() > 1 && one_thread {
            // A run's batch: one statement.
            return self.put_many(requests).await;
        }
        let encoded = encode_requests(requests)?;
        let blobs = encoded
            .iter()
            .map(|(r, _, _, values)| blob_columns(&r.new_versions, values))
            .collect::<Result<Vec<_>>>()?;
        let writes = encoded
            .iter()
            .map(|(r, ..)| {
                r.writes
                    .iter()
                    .map(|w| write_columns(&w.writes, &w.task_id, &w.task_path))
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        let mut statements: Vec<(&str, &str, Vec<Param<'_>>)> = Vec::new();
        for (((r, header, metadata, _), b), w) in encoded.iter().zip(&blobs).zip(&writes) {
            let c = &r.config;
            let checkpoint: [Param<'_>; 5] = [
                (&c.thread_id, Type::TEXT),
                (&c.checkpoint_ns, Type::TEXT),
                (&r.checkpoint.id, Type::TEXT),
                (&c.checkpoint_id, Type::TEXT),
                (header, Type::JSONB),
            ];
            let values: [Param<'_>; 4] = [
                (&b.channels, Type::TEXT_ARRAY),
                (&b.versions, Type::TEXT_ARRAY),
                (&b.tags, Type::TEXT_ARRAY),
                (&b.blobs, Type::BYTEA_ARRAY),
            ];
            if let ([task], [columns]) = (&r.writes[..], &w[..]) {
                let mut params = Vec::with_capacity(17);
                params.extend(checkpoint);
                params.extend(values);
                params.extend([
                    (metadata as &(dyn ToSql + Sync), Type::JSONB),
                    (&task.task_id, Type::TEXT),
                    (&task.task_path, Type::TEXT),
                ]);
                params.extend(write_params(columns));
                params.push((&b.bases, Type::TEXT_ARRAY));
                statements.push(("put_writes_and_put", &self.sql.put_writes_and_put, params));
                continue;
            }
            for (task, columns) in r.writes.iter().zip(w) {
                if task.writes.is_empty() {
                    continue;
                }
                let mut params: Vec<Param<'_>> = vec![
                    (&c.thread_id, Type::TEXT),
                    (&c.checkpoint_ns, Type::TEXT),
                    (&c.checkpoint_id, Type::TEXT),
                    (&task.task_id, Type::TEXT),
                    (&task.task_path, Type::TEXT),
                ];
                params.extend(write_params(columns));
                statements.push(("put_writes", &self.sql.put_writes, params));
            }
            let mut params = Vec::with_capacity(11);
            params.extend(checkpoint);
            params.extend(values);
            params.extend([
                (metadata as &(dyn ToSql + Sync), Type::JSONB),
                (&b.bases, Type::TEXT_ARRAY),
            ]);
            statements.push(("put", &self.sql.put, params));
        }
        let statements = &statements;
        if let [(context, sql, params)] = &statements[..] {
            // One statement is its own transaction: no BEGIN and COMMIT round trips.
            self.with_client(
                |client| async move { self.query(&client, context, sql, params).await },
            )
            .await?;
            return Ok(());
        }
        self.with_client(|client| async move { self.run_batch(client, statements).await })
            .await
    }

    /// Connects to `url` with the default [`PostgresOptions`] and runs migrations.
    pub async fn connect(url: impl Into<String>) -> Result<PostgresSaver> {
        PostgresOptions::new(url).connect().await
    }

    pub(crate) fn from_parts(
        pool: Pool,
        sql: Arc<Statements>,
        prepared: bool,
        schema: Option<String>,
        commit_slots: usize,
    ) -> Self {
        PostgresSaver {
            pool,
            sql,
            prepared,
            schema,
            append_channels: Arc::default(),
            group: Arc::new(crate::group::GroupCommit::new(commit_slots)),
        }
    }

    /// How many transactions stored how many writes since this saver (or the saver it was
    /// cloned from) connected: with many writers at once the group commit (see
    /// [`PostgresOptions::commit_slots`](crate::PostgresOptions::commit_slots)) stores several
    /// writes per transaction.
    ///
    /// ```no_run
    /// # async fn demo(saver: cairn_postgres::PostgresSaver) {
    /// let stats = saver.commit_stats();
    /// println!("{} writes in {} commits", stats.writes, stats.commits);
    /// # }
    /// ```
    pub fn commit_stats(&self) -> crate::CommitStats {
        self.group.stats()
    }

    /// The connection pool, for running your own queries next to the saver's.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The schema holding the tables (`None`: the connection's search path).
    pub fn schema(&self) -> Option<&str> {
        self.schema.as_deref()
    }

    async fn client(&self) -> Result<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// Runs `op` on a pooled connection; if the connection turns out to be dead (the server
    /// restarted or terminated it while it sat in the pool), runs it again on another one,
    /// up to [`RECONNECT_ATTEMPTS`] times in all. Every saver operation is idempotent
    /// (upserts, insert-if-absent, deletes, reads), so running it again is safe even when
    /// the first attempt reached the server. The dead connection is discarded when it goes
    /// back to the pool.
    async fn with_client<T, F, Fut>(&self, op: F) -> Result<T>
    where
        F: Fn(deadpool_postgres::Object) -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut attempt = 1;
        loop {
            let client = self.client().await?;
            match op(client).await {
                Err(e) if attempt < RECONNECT_ATTEMPTS && connection_lost(&e) => {
                    tracing::warn!(attempt, error = %e, "a pooled connection was lost; retrying on another");
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// Runs one statement: prepared and cached per connection, or unnamed with typed
    /// parameters (PgBouncer transaction mode).
    ///
    /// Every statement of the saver is a single idempotent statement in its own implicit
    /// transaction, so one the server aborted as a deadlock victim or a serialization failure
    /// is simply sent again (up to four times). Copies insert rows in key order, which keeps such
    /// conflicts rare.
    async fn query(
        &self,
        client: &ClientWrapper,
        context: &str,
        sql: &str,
        params: &[Param<'_>],
    ) -> Result<Vec<Row>> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            let result = if self.prepared {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                match client.prepare_typed_cached(sql, &types).await {
                    Ok(statement) => {
                        let values: Vec<&(dyn ToSql + Sync)> =
                            params.iter().map(|(v, _)| *v).collect();
                        client.query(&statement, &values).await
                    }
                    Err(e) => Err(e),
                }
            } else {
                client.query_typed(sql, params).await
            };
            match result {
                Ok(rows) => return Ok(rows),
                Err(e) if attempt < ATTEMPTS && is_transient_conflict(&e) => {
                    tracing::warn!(operation = context, attempt, error = %e, "retrying a statement the server aborted");
                    attempt += 1;
                }
                Err(e) => return Err(pg_error(context, e)),
            }
        }
    }

    /// Runs `statements` in one transaction, sent together; the whole transaction is sent
    /// again when the server aborts it as a deadlock victim or a serialization failure.
    async fn run_batch(
        &self,
        mut client: deadpool_postgres::Object,
        statements: &[(&str, &str, Vec<Param<'_>>)],
    ) -> Result<()> {
        const ATTEMPTS: u32 = 5;
        let mut attempt = 1;
        loop {
            match self.try_batch(&mut client, statements).await {
                Ok(()) => return Ok(()),
                Err((context, e)) if attempt < ATTEMPTS && is_transient_conflict(&e) => {
                    tracing::warn!(operation = context, attempt, error = %e, "retrying a batch the server aborted");
                    attempt += 1;
                }
                Err((context, e)) => return Err(pg_error(context, e)),
            }
        }
    }

    /// One attempt of [`run_batch`](Self::run_batch); the error names the statement that
    /// failed.
    ///
    /// `BEGIN`, the statements and `COMMIT` go out in one write, so the batch costs one round
    /// trip (plus one per statement not yet prepared on this connection, done first). Every
    /// request is sent on the first poll, so the transaction always ends on the server, even
    /// if this future is dropped: after a failed statement the server answers the others with
    /// errors and turns `COMMIT` into a rollback, so nothing of the batch is stored and the
    /// connection goes back to the pool idle.
    async fn try_batch<'s>(
        &self,
        client: &mut deadpool_postgres::Object,
        statements: &'s [(&'s str, &str, Vec<Param<'_>>)],
    ) -> std::result::Result<(), (&'s str, tokio_postgres::Error)> {
        let mut prepared = Vec::with_capacity(statements.len());
        for (context, sql, params) in statements {
            prepared.push(if self.prepared {
                let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
                let statement = client
                    .prepare_typed_cached(sql, &types)
                    .await
                    .map_err(|e| (*context, e))?;
                Some(statement)
            } else {
                None
            });
        }
        let client: &ClientWrapper = client;
        let begin = client.batch_execute("BEGIN");
        let sent = statements.iter().zip(&prepared).map(
            |((context, sql, params), statement)| async move {
                let result = match statement {
                    Some(statement) => {
                        let values: Vec<&(dyn ToSql + Sync)> =
                            params.iter().map(|(v, _)| *v).collect();
                        client.query(statement, &values).await
                    }
                    None => client.query_typed(sql, params).await,
                };
                result.map_err(|e| (*context, e))
            },
        );
        let commit = client.batch_execute("COMMIT");
        let (begun, stored, committed) =
            futures::join!(begin, futures::future::join_all(sent), commit);
        begun.map_err(|e| ("starting a batch transaction", e))?;
        // After the first failure the server refuses the rest with "current transaction is
        // aborted": report the failure that caused it.
        let mut failures = stored.into_iter().filter_map(std::result::Result::err);
        if let Some(first) = failures.next() {
            let aborted = |e: &tokio_postgres::Error| {
                e.code() == Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
            };
            if aborted(&first.1) {
                return Err(failures.find(|f| !aborted(&f.1)).unwrap_or(first));
            }
            return Err(first);
        }
        committed.map_err(|e| ("committing a batch", e))
    }

    fn decode_checkpoint_row(row: &Row) -> Result<StoredRow> {
        let text = |i: usize| -> Result<String> {
            row.try_get::<_, String>(i)
                .map_err(|e| pg_error("reading a checkpoint row", e))
        };
        let thread_id = text(0)?;
        let checkpoint_ns = text(1)?;
        let checkpoint_id = text(2)?;
        let here = || location(&thread_id, &checkpoint_ns, &checkpoint_id, None);
        let parent_id: Option<String> = row
            .try_get(3)
            .map_err(|e| Error::corrupt(here(), format!("unreadable parent id: {e}")))?;
        // Straight from the JSONB text into the types, without a `serde_json::Value` between.
        let Json(checkpoint): Json<Checkpoint> = row
            .try_get(4)
            .map_err(|e| Error::corrupt(here(), format!("invalid checkpoint header: {e}")))?;
        let Json(metadata): Json<CheckpointMetadata> = row
            .try_get(5)
            .map_err(|e| Error::corrupt(here(), format!("invalid metadata: {e}")))?;
        if checkpoint.id != checkpoint_id {
            return Err(Error::corrupt(
                here(),
                format!(
                    "the stored header names checkpoint {:?}, not the row's id",
                    checkpoint.id
                ),
            ));
        }
        Ok(StoredRow {
            thread_id,
            checkpoint_ns,
            parent_id,
            checkpoint,
            metadata,
        })
    }

    /// `get_tuple`, leaving out the values `known` names.
    async fn get_tuple_with(
        &self,
        config: &CheckpointConfig,
        known: Option<KnownValues<'_>>,
    ) -> Result<Option<CheckpointTuple>> {
        self.with_client(|client| async move {
            let rows = match &config.checkpoint_id {
                Some(id) => {
                    self.query(
                        &client,
                        "get_tuple",
                        &self.sql.get_one_with_writes,
                        &[
                            (&config.thread_id, Type::TEXT),
                            (&config.checkpoint_ns, Type::TEXT),
                            (id, Type::TEXT),
                        ],
                    )
                    .await?
                }
                None => {
                    self.query(
                        &client,
                        "get_tuple",
                        &self.sql.get_latest_with_writes,
                        &[
                            (&config.thread_id, Type::TEXT),
                            (&config.checkpoint_ns, Type::TEXT),
                        ],
                    )
                    .await?
                }
            };
            self.load_one(&client, rows, known).await
        })
        .await
    }

    /// The whole values of the append values the latest checkpoints of `thread_ids` refer
    /// to, for `prune` to store in their place: one statement to find them, one to fetch
    /// their chains (none when there are no append values).
    async fn whole_latest_heads(
        &self,
        client: &ClientWrapper,
        thread_ids: &[String],
    ) -> Result<WholeHeads> {
        let rows = self
            .query(
                client,
                "prune: finding append values",
                &self.sql.latest_append_heads,
                &[(&thread_ids, Type::TEXT_ARRAY)],
            )
            .await?;
        let mut heads = Vec::with_capacity(rows.len());
        for row in &rows {
            let get = |i: usize| -> Result<String> {
                row.try_get(i)
                    .map_err(|e| pg_error("prune: reading an append value's key", e))
            };
            heads.push((get(0)?, get(1)?, get(2)?, get(3)?, get(4)?));
        }
        let mut whole = WholeHeads::default();
        if heads.is_empty() {
            return Ok(whole);
        }
        let mut keys = ValueKeys::default();
        for (thread, ns, _, channel, version) in &heads {
            let bounded = chain_fetch_bound(&ChannelVersion::Str(version.clone())).is_some();
            keys.add_text(thread, ns, channel, Cow::Borrowed(version), bounded);
        }
        let fetched = self.fetch_values(client, &keys).await?;
        let found: Vec<Option<TypedValue>> = heads
            .iter()
            .map(|(thread, ns, _, channel, version)| {
                fetched.get(&keys, (thread, ns, channel), version).cloned()
            })
            .collect();
        let mut chains = fetched.into_chains(&keys, &keys.all_groups());
        for ((thread, ns, checkpoint_id, channel, version), head) in heads.into_iter().zip(found) {
            // Deleted since it was found: nothing to rewrite.
            let Some(head) = head else {
                continue;
            };
            let value = chains
                .of(&thread, &ns)
                .resolve(&channel, &version, &head)
                .map_err(|e| {
                    Error::corrupt(
                        location(&thread, &ns, &checkpoint_id, Some(&channel)),
                        e.to_string(),
                    )
                })?;
            whole.threads.push(thread);
            whole.namespaces.push(ns);
            whole.checkpoint_ids.push(checkpoint_id);
            whole.channels.push(channel);
            whole.versions.push(version);
            whole.tags.push(value.type_tag);
            whole.blobs.push(value.data.to_vec());
        }
        Ok(whole)
    }

    /// Stored values by key, plus, for every channel where one of them is an append value,
    /// the stored versions its chains can pass through: one statement when the channels are
    /// known to hold append values ([`Statements::blobs_and_chains`]), else the plain values
    /// statement and, only if append values turn up, one for their chains.
    async fn fetch_values(&self, client: &ClientWrapper, keys: &ValueKeys<'_>) -> Result<Fetched> {
        let mut fetched = Fetched::new(keys);
        if keys.is_empty() {
            return Ok(fetched);
        }
        if self.append_channels.any_of(keys.channel_names()) {
            let bounds = keys.bounds();
            let params: [Param<'_>; 6] = [
                (&keys.threads, Type::TEXT_ARRAY),
                (&keys.namespaces, Type::TEXT_ARRAY),
                (&keys.channels, Type::TEXT_ARRAY),
                (&keys.versions, Type::TEXT_ARRAY),
                (&bounds, Type::TEXT_ARRAY),
                (&keys.groups, Type::INT4_ARRAY),
            ];
            let rows = self
                .query(
                    client,
                    "loading channel values",
                    &self.sql.blobs_and_chains,
                    &params,
                )
                .await?;
            fetched.add_rows(&rows)?;
            return Ok(fetched);
        }
        let params: [Param<'_>; 5] = [
            (&keys.threads, Type::TEXT_ARRAY),
            (&keys.namespaces, Type::TEXT_ARRAY),
            (&keys.channels, Type::TEXT_ARRAY),
            (&keys.versions, Type::TEXT_ARRAY),
            (&keys.groups, Type::INT4_ARRAY),
        ];
        let rows = self
            .query(client, "loading channel values", &self.sql.blobs, &params)
            .await?;
        fetched.add_rows(&rows)?;
        let chained = fetched.append_groups();
        if chained.is_empty() {
            return Ok(fetched);
        }
        let request = keys.chain_request(&chained);
        self.append_channels
            .remember(request.channels.iter().copied());
        let params: [Param<'_>; 5] = [
            (&request.threads, Type::TEXT_ARRAY),
            (&request.namespaces, Type::TEXT_ARRAY),
            (&request.channels, Type::TEXT_ARRAY),
            (&request.bounds, Type::TEXT_ARRAY),
            (&request.groups, Type::INT4_ARRAY),
        ];
        let rows = self
            .query(client, "loading append chains", &self.sql.chains, &params)
            .await?;
        fetched.add_rows(&rows)?;
        Ok(fetched)
    }

    /// Attaches values and pending writes to checkpoint rows: two statements, sent together
    /// on one connection, whatever the number of rows. Append values come back with the
    /// links of their chains and are resolved here. The values of `known` channels of the
    /// `known` checkpoint are neither fetched nor returned (the caller holds them).
    async fn load(
        &self,
        client: &ClientWrapper,
        rows: Vec<Row>,
        known: Option<KnownValues<'_>>,
    ) -> Result<Vec<CheckpointTuple>> {
        let stored = rows
            .iter()
            .map(Self::decode_checkpoint_row)
            .collect::<Result<Vec<_>>>()?;
        self.attach(client, stored, known, None).await
    }

    /// [`load`](Self::load) for the row of [`Statements::get_latest_with_writes`] or
    /// [`Statements::get_one_with_writes`]: one checkpoint, its pending writes in arrays.
    /// When the caller holds every value this makes the read one round trip.
    async fn load_one(
        &self,
        client: &ClientWrapper,
        rows: Vec<Row>,
        known: Option<KnownValues<'_>>,
    ) -> Result<Option<CheckpointTuple>> {
        let Some(row) = rows.first() else {
            return Ok(None);
        };
        let stored = Self::decode_checkpoint_row(row)?;
        let e = |e| pg_error("reading pending writes", e);
        let task_ids: Option<Vec<String>> = row.try_get(6).map_err(e)?;
        let channels: Option<Vec<String>> = row.try_get(7).map_err(e)?;
        let type_tags: Option<Vec<String>> = row.try_get(8).map_err(e)?;
        let blobs: Option<Vec<Vec<u8>>> = row.try_get(9).map_err(e)?;
        let task_paths: Option<Vec<String>> = row.try_get(10).map_err(e)?;
        let n = task_ids.as_ref().map_or(0, Vec::len);
        let (channels, type_tags, blobs, task_paths) = (
            channels.unwrap_or_default(),
            type_tags.unwrap_or_default(),
            blobs.unwrap_or_default(),
            task_paths.unwrap_or_default(),
        );
        if [
            channels.len(),
            type_tags.len(),
            blobs.len(),
            task_paths.len(),
        ] != [n; 4]
        {
            let here = location(
                &stored.thread_id,
                &stored.checkpoint_ns,
                &stored.checkpoint.id,
                None,
            );
            return Err(Error::corrupt(
                here,
                "the pending writes came back as arrays of different lengths",
            ));
        }
        let pending: Vec<PendingWrite> = task_ids
            .unwrap_or_default()
            .into_iter()
            .zip(channels)
            .zip(type_tags.into_iter().zip(blobs))
            .zip(task_paths)
            .map(
                |(((task_id, channel), (tag, blob)), task_path)| PendingWrite {
                    task_id,
                    channel,
                    value: TypedValue::new(tag, blob),
                    task_path,
                },
            )
            .collect();
        let key = (
            stored.thread_id.clone(),
            stored.checkpoint_ns.clone(),
            stored.checkpoint.id.clone(),
        );
        let writes = HashMap::from([(key, pending)]);
        let mut tuples = self
            .attach(client, vec![stored], known, Some(writes))
            .await?;
        Ok(tuples.pop())
    }

    /// Attaches values and pending writes to decoded checkpoint rows; the writes are read
    /// unless `prefetched` holds them already.
    async fn attach(
        &self,
        client: &ClientWrapper,
        stored: Vec<StoredRow>,
        known: Option<KnownValues<'_>>,
        prefetched: Option<HashMap<CheckpointKey, Vec<PendingWrite>>>,
    ) -> Result<Vec<CheckpointTuple>> {
        if stored.is_empty() {
            return Ok(Vec::new());
        }

        // Distinct (thread, ns, channel, version) keys: checkpoints of one thread share most
        // of their values, and each is fetched once.
        let skipped = |checkpoint_id: &str, channel: &str| {
            known.is_some_and(|k| checkpoint_id == k.checkpoint_id && k.channels.contains(&channel))
        };
        let mut keys = ValueKeys::default();
        for s in &stored {
            for (channel, version) in &s.checkpoint.channel_versions {
                if !skipped(&s.checkpoint.id, channel) {
                    keys.add(&s.thread_id, &s.checkpoint_ns, channel, version);
                }
            }
        }
        let wt: Vec<&str> = stored.iter().map(|s| s.thread_id.as_str()).collect();
        let wn: Vec<&str> = stored.iter().map(|s| s.checkpoint_ns.as_str()).collect();
        let wi: Vec<&str> = stored.iter().map(|s| s.checkpoint.id.as_str()).collect();
        let write_params: [Param<'_>; 3] = [
            (&wt, Type::TEXT_ARRAY),
            (&wn, Type::TEXT_ARRAY),
            (&wi, Type::TEXT_ARRAY),
        ];
        let writes_query = async {
            match prefetched {
                Some(_) => Ok(Vec::new()),
                None => {
                    self.query(
                        client,
                        "loading pending writes",
                        &self.sql.writes,
                        &write_params,
                    )
                    .await
                }
            }
        };
        // Polled together, the two statements are pipelined on the connection.
        let (fetched, write_rows) =
            futures::try_join!(self.fetch_values(client, &keys), writes_query)?;

        let mut writes = prefetched.unwrap_or_default();
        for row in &write_rows {
            let get = |i: usize| -> Result<String> {
                row.try_get(i)
                    .map_err(|e| pg_error("reading a pending write", e))
            };
            let key: CheckpointKey = (get(0)?, get(1)?, get(2)?);
            let data: Vec<u8> = row
                .try_get(6)
                .map_err(|e| pg_error("reading a pending write", e))?;
            let write = PendingWrite {
                task_id: get(3)?,
                channel: get(4)?,
                value: TypedValue::new(get(5)?, data),
                task_path: get(7)?,
            };
            writes.entry(key).or_default().push(write);
        }

        // Values are attached while the keys still borrow the rows; the chains of append
        // values take the fetched values over.
        let mut chained = HashSet::new();
        let values: Vec<BTreeMap<String, TypedValue>> = stored
            .iter()
            .map(|s| {
                let versions = s
                    .checkpoint
                    .channel_versions
                    .iter()
                    .filter(|(channel, _)| !skipped(&s.checkpoint.id, channel));
                fetched.values_of(
                    &keys,
                    (&s.thread_id, &s.checkpoint_ns),
                    versions,
                    &mut chained,
                )
            })
            .collect();
        let mut chains = fetched.into_chains(&keys, &chained);
        drop(keys);

        let mut tuples: Vec<CheckpointTuple> = stored
            .into_iter()
            .zip(values)
            .map(|(s, values)| {
                let mut checkpoint = s.checkpoint;
                checkpoint.channel_values = values;
                let pending_writes = writes
                    .remove(&(
                        s.thread_id.clone(),
                        s.checkpoint_ns.clone(),
                        checkpoint.id.clone(),
                    ))
                    .unwrap_or_default();
                let config = CheckpointConfig {
                    thread_id: s.thread_id,
                    checkpoint_ns: s.checkpoint_ns,
                    checkpoint_id: Some(checkpoint.id.clone()),
                };
                let parent_config = s.parent_id.map(|id| CheckpointConfig {
                    checkpoint_id: Some(id),
                    ..config.clone()
                });
                CheckpointTuple {
                    config,
                    checkpoint,
                    metadata: s.metadata,
                    parent_config,
                    pending_writes,
                }
            })
            .collect();
        chains.resolve(&mut tuples)?;
        Ok(tuples)
    }
}

/// Whole values to store in place of append values, as the columns of
/// [`Statements::prune_keep_latest`]: the key, the checkpoint it was resolved for, the value.
#[derive(Default)]
struct WholeHeads {
    threads: Vec<String>,
    namespaces: Vec<String>,
    checkpoint_ids: Vec<String>,
    channels: Vec<String>,
    versions: Vec<String>,
    tags: Vec<String>,
    blobs: Vec<Vec<u8>>,
}

/// The error of a write without a checkpoint to belong to.
fn no_checkpoint_id() -> Error {
    Error::InvalidArgument(
        "put_writes needs a config with a checkpoint_id: writes belong to a checkpoint".into(),
    )
}

/// A request of a batch with its encoded header, metadata and values (see [`encode_put`]).
type EncodedRequest = (
    PutRequest,
    serde_json::Value,
    serde_json::Value,
    BTreeMap<String, TypedValue>,
);

/// Each request of a batch encoded; a request with writes (a task's, even empty) must name
/// the checkpoint they belong to, as `put_writes` must.
fn encode_requests(requests: Vec<PutRequest>) -> Result<Vec<EncodedRequest>> {
    let mut encoded = Vec::with_capacity(requests.len());
    for mut request in requests {
        if !request.writes.is_empty() && request.config.checkpoint_id.is_none() {
            return Err(no_checkpoint_id());
        }
        let (header, metadata, values) =
            encode_put(&request.config, &mut request.checkpoint, &request.metadata)?;
        encoded.push((request, header, metadata, values));
    }
    Ok(encoded)
}

/// The header and metadata of a checkpoint to put, checked; its channel values are taken
/// out of it and returned.
fn encode_put(
    config: &CheckpointConfig,
    checkpoint: &mut Checkpoint,
    metadata: &CheckpointMetadata,
) -> Result<(
    serde_json::Value,
    serde_json::Value,
    std::collections::BTreeMap<String, TypedValue>,
)> {
    check_text("thread id", &config.thread_id)?;
    check_text("checkpoint namespace", &config.checkpoint_ns)?;
    check_text("checkpoint id", &checkpoint.id)?;
    let values = std::mem::take(&mut checkpoint.channel_values);
    let header = serde_json::to_value(&*checkpoint).map_err(|e| Error::Encode {
        format: "json",
        message: format!("checkpoint header: {e}"),
    })?;
    check_json("checkpoint header", &header)?;
    let metadata = serde_json::Value::Object(metadata.normalized()?.to_json());
    check_json("metadata", &metadata)?;
    Ok((header, metadata, values))
}

/// Value columns in the order of the put statements' `unnest`.
struct BlobColumns<'a> {
    channels: Vec<&'a str>,
    versions: Vec<String>,
    tags: Vec<&'a str>,
    blobs: Vec<&'a [u8]>,
    /// The version an append value extends, kept in a column so that deletions can follow
    /// chains in SQL; `None` for whole values.
    bases: Vec<Option<String>>,
}

/// The values of `new_versions` as columns for the put statements. A channel updated to no
/// value (none given, or an empty marker: a consumed trigger) gets no row: a version
/// without a row reads as no value, as the marker did.
fn blob_columns<'a>(
    new_versions: &'a ChannelVersions,
    values: &'a std::collections::BTreeMap<String, TypedValue>,
) -> Result<BlobColumns<'a>> {
    let n = new_versions.len();
    let mut columns = BlobColumns {
        channels: Vec::with_capacity(n),
        versions: Vec::with_capacity(n),
        tags: Vec::with_capacity(n),
        blobs: Vec::with_capacity(n),
        bases: Vec::with_capacity(n),
    };
    for (channel, version) in new_versions {
        check_text("channel name", channel)?;
        let Some(value) = values.get(channel).filter(|v| !v.is_empty_marker()) else {
            continue;
        };
        check_text("type tag", &value.type_tag)?;
        // A malformed append value could never be read back: refuse it now rather than
        // leave the thread unreadable.
        let base = append_base(value).map_err(|e| {
            Error::InvalidArgument(format!(
                "cannot store channel {channel:?} version {version}: {e}"
            ))
        })?;
        if let Some(base) = &base {
            check_text("append base version", base)?;
        }
        columns.channels.push(channel.as_str());
        columns.versions.push(version.to_storage_string());
        columns.tags.push(value.type_tag.as_str());
        columns.blobs.push(&value.data);
        columns.bases.push(base);
    }
    Ok(columns)
}

/// Write columns (index, channel, type tag, bytes) in the order of the write statements'
/// `unnest`.
type WriteColumns<'a> = (Vec<i64>, Vec<&'a str>, Vec<&'a str>, Vec<&'a [u8]>);

/// `rows` in order without the earlier ones of rows whose `key` repeats (rows with no key all
/// stay): what a sequence of upserts leaves, for one statement that may touch a row once.
fn keep_last<T, K: std::hash::Hash + Eq>(rows: Vec<T>, key: impl Fn(&T) -> Option<K>) -> Vec<T> {
    let mut seen = HashSet::new();
    let mut kept: Vec<T> = rows
        .into_iter()
        .rev()
        .filter(|row| key(row).is_none_or(|k| seen.insert(k)))
        .collect();
    kept.reverse();
    kept
}

/// The writes of a task as columns for the write statements, after checking the names. A
/// special channel written twice in one call: the last write wins (one statement cannot
/// update the same row twice).
fn write_columns<'a>(
    writes: &'a [(String, TypedValue)],
    task_id: &str,
    task_path: &str,
) -> Result<WriteColumns<'a>> {
    check_text("task id", task_id)?;
    check_text("task path", task_path)?;
    let mut rows: Vec<(i64, &str, &TypedValue)> = Vec::with_capacity(writes.len());
    for (position, (channel, value)) in writes.iter().enumerate() {
        check_text("channel name", channel)?;
        check_text("type tag", &value.type_tag)?;
        let idx = write_index(channel, position);
        if idx < 0 {
            rows.retain(|(i, _, _)| *i != idx);
        }
        rows.push((idx, channel, value));
    }
    Ok((
        rows.iter().map(|r| r.0).collect(),
        rows.iter().map(|r| r.1).collect(),
        rows.iter().map(|r| r.2.type_tag.as_str()).collect(),
        rows.iter().map(|r| &r.2.data[..]).collect(),
    ))
}

/// Write columns as the last four parameters of the write statements.
fn write_params<'a>(columns: &'a WriteColumns<'_>) -> [Param<'a>; 4] {
    let (idxs, channels, tags, data) = columns;
    [
        (idxs, Type::INT8_ARRAY),
        (channels, Type::TEXT_ARRAY),
        (tags, Type::TEXT_ARRAY),
        (data, Type::BYTEA_ARRAY),
    ]
}

#[async_trait]
impl CheckpointSaver for PostgresSaver {
    fn get_next_version_in_run(
        &self,
        current: Option<&cairn_checkpoint::ChannelVersion>,
        run_suffix: u64,
    ) -> cairn_checkpoint::ChannelVersion {
        cairn_checkpoint::ChannelVersion::next_in_run(current, run_suffix)
    }

    async fn get_tuple(&self, config: &CheckpointConfig) -> Result<Option<CheckpointTuple>> {
        self.get_tuple_with(config, None).await
    }

    /// The known channels' values are not fetched, nor are the append chains behind them: a
    /// runtime holding a thread's state reads the latest checkpoint's bookkeeping without its
    /// growing lists.
    async fn get_tuple_known(
        &self,
        config: &CheckpointConfig,
        known: KnownValues<'_>,
    ) -> Result<Option<CheckpointTuple>> {
        self.get_tuple_with(config, Some(known)).await
    }

    async fn list(&self, query: &ListQuery) -> Result<Vec<CheckpointTuple>> {
        if query.limit == Some(0) {
            return Ok(Vec::new());
        }
        let filter_json = serde_json::Value::Object(
            query
                .filter
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
        let limit = query.limit.map(|l| i64::try_from(l).unwrap_or(i64::MAX));
        let mut sql = format!(
            "SELECT {CHECKPOINT_COLUMNS} FROM {}checkpoints WHERE TRUE",
            self.sql.prefix
        );
        let mut params: Vec<Param<'_>> = Vec::new();
        fn push<'a>(sql: &mut String, params: &mut Vec<Param<'a>>, clause: &str, p: Param<'a>) {
            params.push(p);
            sql.push_str(&clause.replace("$?", &format!("${}", params.len())));
        }
        if let Some(t) = &query.thread_id {
            push(
                &mut sql,
                &mut params,
                " AND thread_id = $?",
                (t, Type::TEXT),
            );
        }
        if let Some(n) = &query.checkpoint_ns {
            push(
                &mut sql,
                &mut params,
                " AND checkpoint_ns = $?",
                (n, Type::TEXT),
            );
        }
        if let Some(id) = &query.checkpoint_id {
            push(
                &mut sql,
                &mut params,
                " AND checkpoint_id = $?",
                (id, Type::TEXT),
            );
        }
        if let Some(before) = &query.before {
            push(
                &mut sql,
                &mut params,
                " AND checkpoint_id < $?",
                (before, Type::TEXT),
            );
        }
        if !query.filter.is_empty() {
            check_json("metadata filter", &filter_json)?;
            // Containment can use the GIN index; it is looser than equality for arrays and
            // objects (a subset matches), so those keys are also compared exactly.
            push(
                &mut sql,
                &mut params,
                " AND metadata @> $?",
                (&filter_json, Type::JSONB),
            );
            for (key, value) in &query.filter {
                if value.is_array() || value.is_object() {
                    push(
                        &mut sql,
                        &mut params,
                        " AND metadata -> $?",
                        (key, Type::TEXT),
                    );
                    push(&mut sql, &mut params, " = $?", (value, Type::JSONB));
                }
            }
        }
        sql.push_str(" ORDER BY checkpoint_id DESC, thread_id DESC, checkpoint_ns DESC");
        if let Some(limit) = &limit {
            push(&mut sql, &mut params, " LIMIT $?", (limit, Type::INT8));
        }
        let (sql, params) = (&sql, &params);
        self.with_client(|client| async move {
            let rows = self.query(&client, "list", sql, params).await?;
            self.load(&client, rows, None).await
        })
        .await
    }

    async fn put(
        &self,
        config: &CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        self.store_one(PutRequest {
            config: config.clone(),
            writes: Vec::new(),
            checkpoint,
            metadata,
            new_versions,
        })
        .await
    }

    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> Result<()> {
        let Some(checkpoint_id) = &config.checkpoint_id else {
            return Err(no_checkpoint_id());
        };
        if writes.is_empty() {
            return Ok(());
        }
        let (idxs, channels, tags, blobs) = write_columns(&writes, task_id, task_path)?;
        let params: &[Param<'_>] = &[
            (&config.thread_id, Type::TEXT),
            (&config.checkpoint_ns, Type::TEXT),
            (checkpoint_id, Type::TEXT),
            (&task_id, Type::TEXT),
            (&task_path, Type::TEXT),
            (&idxs, Type::INT8_ARRAY),
            (&channels, Type::TEXT_ARRAY),
            (&tags, Type::TEXT_ARRAY),
            (&blobs, Type::BYTEA_ARRAY),
        ];
        self.with_client(|client| async move {
            self.query(&client, "put_writes", &self.sql.put_writes, params)
                .await
        })
        .await?;
        Ok(())
    }

    /// One statement (so one transaction and one round trip) stores the writes against the
    /// parent and the child checkpoint; like its parts it is idempotent, so the retry on a
    /// lost connection is safe.
    async fn put_writes_and_put(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        if config.checkpoint_id.is_none() {
            return Err(no_checkpoint_id());
        }
        self.store_one(PutRequest {
            config: config.clone(),
            writes: vec![TaskWrites {
                task_id: task_id.to_owned(),
                task_path: task_path.to_owned(),
                writes,
            }],
            checkpoint,
            metadata,
            new_versions,
        })
        .await
    }

    /// One transaction for the whole batch: its statements are sent together (pipelined on
    /// one connection) and committed once, so the batch costs one WAL flush on the server and
    /// about three round trips, however many checkpoints it holds. A request with one task's
    /// writes is one statement, as in `put_writes_and_put`. Nothing of the batch is stored
    /// after an error; a batch the server aborted as a deadlock victim or a serialization
    /// failure is sent again, like single statements.
    async fn put_batch(&self, requests: Vec<PutRequest>) -> Result<Vec<CheckpointConfig>> {
        let stored: Vec<CheckpointConfig> =
            requests.iter().map(PutRequest::stored_config).collect();
        if !requests.is_empty() {
            self.group.store(self, requests).await?;
        }
        Ok(stored)
    }

    async fn list_threads(&self, after: Option<&str>, limit: usize) -> Result<Vec<ThreadSummary>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .with_client(|client| async move {
                match after {
                    Some(after) => {
                        let params: &[Param<'_>] = &[(&after, Type::TEXT), (&limit, Type::INT8)];
                        self.query(
                            &client,
                            "list_threads",
                            &self.sql.list_threads_after,
                            params,
                        )
                        .await
                    }
                    None => {
                        let params: &[Param<'_>] = &[(&limit, Type::INT8)];
                        self.query(&client, "list_threads", &self.sql.list_threads_all, params)
                            .await
                    }
                }
            })
            .await?;
        rows.iter().map(decode_thread_row).collect()
    }

    async fn delete_thread(&self, thread_id: &str) -> Result<()> {
        let ids = [thread_id];
        let params: &[Param<'_>] = &[(&ids.as_slice(), Type::TEXT_ARRAY)];
        self.with_client(|client| async move {
            self.query(&client, "delete_thread", &self.sql.delete_threads, params)
                .await
        })
        .await?;
        Ok(())
    }

    async fn copy_thread(&self, source_thread_id: &str, target_thread_id: &str) -> Result<()> {
        if source_thread_id == target_thread_id {
            return Ok(());
        }
        check_text("thread id", target_thread_id)?;
        let params: &[Param<'_>] = &[
            (&source_thread_id, Type::TEXT),
            (&target_thread_id, Type::TEXT),
        ];
        self.with_client(|client| async move {
            self.query(&client, "copy_thread", &self.sql.copy_thread, params)
                .await
        })
        .await?;
        Ok(())
    }

    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()> {
        if thread_ids.is_empty() {
            return Ok(());
        }
        match strategy {
            PruneStrategy::KeepLatest => {
                self.with_client(|client| async move {
                    let whole = self.whole_latest_heads(&client, thread_ids).await?;
                    let params: &[Param<'_>] = &[
                        (&thread_ids, Type::TEXT_ARRAY),
                        (&whole.threads, Type::TEXT_ARRAY),
                        (&whole.namespaces, Type::TEXT_ARRAY),
                        (&whole.checkpoint_ids, Type::TEXT_ARRAY),
                        (&whole.channels, Type::TEXT_ARRAY),
                        (&whole.versions, Type::TEXT_ARRAY),
                        (&whole.tags, Type::TEXT_ARRAY),
                        (&whole.blobs, Type::BYTEA_ARRAY),
                    ];
                    self.query(&client, "prune", &self.sql.prune_keep_latest, params)
                        .await
                })
                .await?;
            }
            PruneStrategy::Delete => {
                let params: &[Param<'_>] = &[(&thread_ids, Type::TEXT_ARRAY)];
                self.with_client(|client| async move {
                    self.query(&client, "prune", &self.sql.delete_threads, params)
                        .await
                })
                .await?;
            }
        }
        Ok(())
    }

    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()> {
        if run_ids.is_empty() {
            return Ok(());
        }
        let params: &[Param<'_>] = &[(&run_ids, Type::TEXT_ARRAY)];
        self.with_client(|client| async move {
            self.query(
                &client,
                "delete_for_runs",
                &self.sql.delete_for_runs,
                params,
            )
            .await
        })
        .await?;
        Ok(())
    }
}

/// One row of the `list_threads` statement: thread, count, namespaces, then the latest
/// checkpoint's namespace, id, `ts` and metadata.
fn decode_thread_row(row: &Row) -> Result<ThreadSummary> {
    let read = |e: tokio_postgres::Error| pg_error("reading a thread summary row", e);
    let thread_id: String = row.try_get(0).map_err(read)?;
    let checkpoints: i64 = row.try_get(1).map_err(read)?;
    let namespaces: Vec<String> = row.try_get(2).map_err(read)?;
    let checkpoint_ns: String = row.try_get(3).map_err(read)?;
    let checkpoint_id: String = row.try_get(4).map_err(read)?;
    let here = || location(&thread_id, &checkpoint_ns, &checkpoint_id, None);
    let ts: Option<String> = row
        .try_get(5)
        .map_err(|e| Error::corrupt(here(), format!("unreadable checkpoint ts: {e}")))?;
    let Some(ts) = ts else {
        return Err(Error::corrupt(
            here(),
            "the checkpoint header has no string `ts`",
        ));
    };
    let metadata: serde_json::Value = row
        .try_get(6)
        .map_err(|e| Error::corrupt(here(), format!("unreadable metadata: {e}")))?;
    let metadata: CheckpointMetadata = serde_json::from_value(metadata)
        .map_err(|e| Error::corrupt(here(), format!("invalid metadata: {e}")))?;
    Ok(ThreadSummary {
        checkpoints: u64::try_from(checkpoints).unwrap_or(0),
        namespaces,
        latest: LatestCheckpoint {
            config: CheckpointConfig {
                thread_id: thread_id.clone(),
                checkpoint_ns,
                checkpoint_id: Some(checkpoint_id),
            },
            metadata,
            ts,
        },
        thread_id,
    })
}

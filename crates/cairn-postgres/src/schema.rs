//! The tables, their versioned migrations, and the SQL text of every statement.

use cairn_checkpoint::Error;
use tokio_postgres::SimpleQueryMessage;

use crate::error::{pg_error, BACKEND};

/// First key of the advisory lock migrations hold ("CAIR"); the second is a hash of the
/// schema name, so migrations of different schemas do not wait for each other.
const MIGRATION_LOCK_CLASS: i32 = 0x4341_4952;

/// One schema change, applied once, in order, and recorded in `cairn_migrations`.
struct Migration {
    version: i32,
    description: &'static str,
    /// SQL with `{s}` standing for the schema prefix (`"name".` or nothing).
    sql: &'static str,
}

/// Every migration, oldest first. Never edit a released one: add a new one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "checkpoints, checkpoint_blobs and checkpoint_writes",
        sql: r#"
CREATE TABLE {s}checkpoints (
    thread_id            text COLLATE "C" NOT NULL,
    checkpoint_ns        text COLLATE "C" NOT NULL DEFAULT '',
    checkpoint_id        text COLLATE "C" NOT NULL,
    parent_checkpoint_id text COLLATE "C",
    header               jsonb NOT NULL,
    metadata             jsonb NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE INDEX checkpoints_checkpoint_id_idx ON {s}checkpoints (checkpoint_id DESC);
CREATE INDEX checkpoints_run_id_idx ON {s}checkpoints ((metadata ->> 'run_id'));
CREATE INDEX checkpoints_metadata_idx ON {s}checkpoints USING gin (metadata jsonb_path_ops);
CREATE TABLE {s}checkpoint_blobs (
    thread_id     text COLLATE "C" NOT NULL,
    checkpoint_ns text COLLATE "C" NOT NULL DEFAULT '',
    channel       text COLLATE "C" NOT NULL,
    version       text COLLATE "C" NOT NULL,
    type_tag      text NOT NULL,
    blob          bytea NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
);
CREATE TABLE {s}checkpoint_writes (
    thread_id     text COLLATE "C" NOT NULL,
    checkpoint_ns text COLLATE "C" NOT NULL DEFAULT '',
    checkpoint_id text COLLATE "C" NOT NULL,
    task_id       text COLLATE "C" NOT NULL,
    idx           bigint NOT NULL,
    channel       text NOT NULL,
    type_tag      text NOT NULL,
    blob          bytea NOT NULL,
    task_path     text COLLATE "C" NOT NULL DEFAULT '',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);
"#,
    },
    Migration {
        version: 2,
        description: "checkpoint_blobs.base: the version an append value extends",
        // Adding a nullable column rewrites nothing. The backfill reads the second header
        // line of append values stored before the column existed; `escape` never fails on
        // binary bytes and leaves Cairn's version strings (ASCII) as they are.
        sql: r#"
ALTER TABLE {s}checkpoint_blobs ADD COLUMN base text COLLATE "C";
UPDATE {s}checkpoint_blobs
   SET base = split_part(encode(substring(blob FROM 1 FOR 4096), 'escape'), E'\n', 2)
 WHERE type_tag = 'append'
   AND split_part(encode(substring(blob FROM 1 FOR 4096), 'escape'), E'\n', 1) = 'cairn-append/1';
"#,
    },
];

/// The schema version this build of Cairn reads and writes.
pub const SCHEMA_VERSION: i32 = 2;

/// Checks a schema name: letters, digits, `_`, `$` and `-`, at most 63 bytes. It is always
/// double-quoted in SQL, so case is kept.
pub(crate) fn validate_schema_name(name: &str) -> Result<(), Error> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidArgument(format!(
            "schema name {name:?} must be 1 to 63 ASCII letters, digits, '_', '$' or '-'"
        )))
    }
}

/// Runs every migration the database lacks, under a transaction-scoped advisory lock so that
/// processes starting at once apply each migration exactly once. Uses only the simple query
/// protocol (no prepared statements), so it works through PgBouncer in transaction mode.
pub(crate) async fn migrate(
    client: &mut tokio_postgres::Client,
    schema: Option<&str>,
) -> Result<(), Error> {
    let prefix = prefix(schema);
    let lock_key = match schema {
        // `schema` is validated: it holds no quote.
        Some(name) => format!("hashtext('{name}')"),
        None => "hashtext(coalesce(current_schema(), ''))".to_owned(),
    };
    let tx = client
        .transaction()
        .await
        .map_err(|e| pg_error("migrations: BEGIN", e))?;
    tx.batch_execute(&format!(
        "SELECT pg_advisory_xact_lock({MIGRATION_LOCK_CLASS}, {lock_key})"
    ))
    .await
    .map_err(|e| pg_error("migrations: taking the advisory lock", e))?;
    if let Some(name) = schema {
        // Checked first: CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when
        // the schema exists.
        let rows = tx
            .simple_query(&format!(
                "SELECT 1 FROM pg_namespace WHERE nspname = '{name}'"
            ))
            .await
            .map_err(|e| pg_error("migrations: looking up the schema", e))?;
        if !rows.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))) {
            tx.batch_execute(&format!("CREATE SCHEMA \"{name}\""))
                .await
                .map_err(|e| pg_error(&format!("migrations: creating schema {name:?}"), e))?;
        }
    }
    tx.batch_execute(&format!(
        "CREATE TABLE IF NOT EXISTS {prefix}cairn_migrations (
             version integer PRIMARY KEY,
             description text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())"
    ))
    .await
    .map_err(|e| pg_error("migrations: creating cairn_migrations", e))?;
    let current = current_version(&tx, &prefix).await?;
    if current > SCHEMA_VERSION {
        return Err(Error::Backend {
            backend: BACKEND,
            message: format!(
                "the database schema is at version {current}, newer than this Cairn build \
                 knows ({SCHEMA_VERSION}); upgrade Cairn"
            ),
            source: None,
        });
    }
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tracing::info!(version = m.version, description = m.description, schema = ?schema, "applying migration");
        tx.batch_execute(&m.sql.replace("{s}", &prefix))
            .await
            .map_err(|e| {
                let mut err = pg_error(&format!("migration {} ({})", m.version, m.description), e);
                if let Error::Backend { message, .. } = &mut err {
                    if message.contains("42P07") {
                        message.push_str(
                            "; a table of that name already exists (LangGraph's Postgres saver \
                             uses the same names): give Cairn its own schema with \
                             PostgresOptions::schema",
                        );
                    }
                }
                err
            })?;
        tx.batch_execute(&format!(
            "INSERT INTO {prefix}cairn_migrations (version, description) VALUES ({}, '{}')",
            m.version,
            m.description.replace('\'', "''")
        ))
        .await
        .map_err(|e| pg_error("migrations: recording the version", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| pg_error("migrations: COMMIT", e))
}

/// The highest applied migration, 0 when none (or when the table does not exist yet is an
/// error of the caller's making: call after creating it).
pub(crate) async fn current_version(
    client: &tokio_postgres::Transaction<'_>,
    prefix: &str,
) -> Result<i32, Error> {
    version_query(client.client(), prefix).await
}

/// The highest applied migration; an error naming the fix when the tables are missing.
pub(crate) async fn version_query(
    client: &tokio_postgres::Client,
    prefix: &str,
) -> Result<i32, Error> {
    let rows = client
        .simple_query(&format!(
            "SELECT coalesce(max(version), 0) FROM {prefix}cairn_migrations"
        ))
        .await
        .map_err(|e| pg_error("reading the schema version from cairn_migrations", e))?;
    for message in rows {
        if let SimpleQueryMessage::Row(row) = message {
            let text = row.get(0).unwrap_or("0");
            return text.parse().map_err(|_| Error::Backend {
                backend: BACKEND,
                message: format!("cairn_migrations holds a version that is not a number: {text:?}"),
                source: None,
            });
        }
    }
    Ok(0)
}

/// `"name".` for a schema, nothing for the search path.
pub(crate) fn prefix(schema: Option<&str>) -> String {
    schema.map_or_else(String::new, |s| format!("\"{s}\"."))
}

/// The text of every fixed statement, with the schema filled in once.
#[derive(Debug)]
pub(crate) struct Statements {
    pub prefix: String,
    /// `list_threads` after a thread id (`$1`), at most `$2` threads.
    pub list_threads_after: String,
    /// `list_threads` from the first thread, at most `$1` threads.
    pub list_threads_all: String,
    /// The latest checkpoint of a thread and namespace (`$1`, `$2`), and one named
    /// checkpoint (`$3`), each with its pending writes as arrays in the same row, so that
    /// reading a checkpoint whose values the caller holds takes one round trip.
    pub get_latest_with_writes: String,
    pub get_one_with_writes: String,
    /// Values by key (`$1`..`$4`, group number `$5`); rows are (group, version, type tag,
    /// bytes).
    pub blobs: String,
    /// Values by key (`$1`..`$4`, group number `$6`), with every stored version up to the
    /// largest head (`$5`: the head's chain fetch bound, NULL for no bound) of groups holding
    /// append values; rows as for `blobs`.
    pub blobs_and_chains: String,
    /// The stored versions of groups (`$1`..`$3`, group number `$5`) up to `$4` (NULL: all of
    /// them), for the chains of append values `blobs` returned; rows as for `blobs`.
    pub chains: String,
    pub writes: String,
    pub put: String,
    pub put_writes: String,
    /// `put_writes` against the parent (`$4`, params `$11`..`$16`) and `put` (value bases
    /// `$17`), in one statement.
    pub put_writes_and_put: String,
    /// Many checkpoints of one thread (`$1`) and namespace (`$2`) in one statement: their
    /// values (`$3`..`$7`), their tasks' writes (`$8`..`$14`, each row naming the checkpoint
    /// it belongs to) and the checkpoint rows (`$15`..`$18`).
    pub put_many: String,
    pub delete_threads: String,
    pub copy_thread: String,
    /// The append values the latest checkpoints of threads `$1` refer to.
    pub latest_append_heads: String,
    /// Keeps the latest checkpoint of each namespace of threads `$1`, after rewriting the
    /// values `$2`..`$8` (whole values of its append heads) in place.
    pub prune_keep_latest: String,
    pub delete_for_runs: String,
}

/// Columns of a checkpoint row, in the order [`crate::saver`] reads them.
pub(crate) const CHECKPOINT_COLUMNS: &str =
    "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, metadata";

/// The `channel_versions` object of a header, or `{}` when a damaged header has none.
const CHANNEL_VERSIONS: &str = "CASE WHEN jsonb_typeof(c.header -> 'channel_versions') = 'object' \
     THEN c.header -> 'channel_versions' ELSE '{}'::jsonb END";

impl Statements {
    pub(crate) fn new(schema: Option<&str>) -> Statements {
        let p = prefix(schema);
        let cols = CHECKPOINT_COLUMNS;
        let cv = CHANNEL_VERSIONS;
        // The checkpoint `one` selects (at most one row) and its pending writes in stored
        // order, as arrays (null when there is none) so that the row comes once however many
        // writes there are: columns 6 to 10 are task ids, channels, type tags, values and
        // task paths.
        let with_writes = |one: &str| {
            let agg = |column: &str| {
                format!("array_agg(w.{column} ORDER BY w.task_path, w.task_id, w.idx)")
            };
            format!(
                "SELECT c.*, w.task_ids, w.channels, w.type_tags, w.blobs, w.task_paths \
                 FROM ({one}) AS c LEFT JOIN LATERAL ( \
                   SELECT {} AS task_ids, {} AS channels, {} AS type_tags, {} AS blobs, \
                          {} AS task_paths \
                   FROM {p}checkpoint_writes w \
                   WHERE w.thread_id = c.thread_id AND w.checkpoint_ns = c.checkpoint_ns \
                     AND w.checkpoint_id = c.checkpoint_id) AS w ON true",
                agg("task_id"),
                agg("channel"),
                agg("type_tag"),
                agg("blob"),
                agg("task_path"),
            )
        };
        // The latest checkpoint of each namespace of threads `$1`, with its versions.
        let latest = format!(
            "latest AS ( \
                 SELECT DISTINCT ON (c.thread_id, c.checkpoint_ns) \
                        c.thread_id, c.checkpoint_ns, c.checkpoint_id, {cv} AS versions \
                 FROM {p}checkpoints c WHERE c.thread_id = ANY($1) \
                 ORDER BY c.thread_id, c.checkpoint_ns, c.checkpoint_id DESC)"
        );
        // One step down the append chains of the recursive `kept` set: each kept append
        // value keeps its base.
        let chain_step = format!(
            "SELECT b.thread_id, b.checkpoint_ns, b.channel, b.base \
             FROM kept k JOIN {p}checkpoint_blobs b ON b.thread_id = k.thread_id \
                  AND b.checkpoint_ns = k.checkpoint_ns AND b.channel = k.channel \
                  AND b.version = k.version \
             WHERE b.base IS NOT NULL"
        );
        let threads = |first: &str| {
            format!(
                "WITH t AS ({first}), \
                 g AS (SELECT c.thread_id, c.checkpoint_ns, count(*) AS n, \
                         max(c.checkpoint_id) AS max_id \
                       FROM t JOIN {p}checkpoints c ON c.thread_id = t.thread_id \
                       GROUP BY c.thread_id, c.checkpoint_ns), \
                 s AS (SELECT thread_id, sum(n)::int8 AS n, \
                         array_agg(checkpoint_ns ORDER BY checkpoint_ns) AS nss, \
                         (array_agg(checkpoint_ns ORDER BY (checkpoint_ns = '') DESC, \
                            max_id DESC, checkpoint_ns DESC))[1] AS ns, \
                         (array_agg(max_id ORDER BY (checkpoint_ns = '') DESC, \
                            max_id DESC, checkpoint_ns DESC))[1] AS id \
                       FROM g GROUP BY thread_id) \
                 SELECT s.thread_id, s.n, s.nss, c.checkpoint_ns, c.checkpoint_id, \
                   c.header ->> 'ts', c.metadata \
                 FROM s JOIN {p}checkpoints c ON c.thread_id = s.thread_id \
                   AND c.checkpoint_ns = s.ns AND c.checkpoint_id = s.id \
                 ORDER BY s.thread_id"
            )
        };
        Statements {
            list_threads_after: threads(&format!(
                "SELECT DISTINCT thread_id FROM {p}checkpoints WHERE thread_id > $1 \
                 ORDER BY thread_id LIMIT $2"
            )),
            list_threads_all: threads(&format!(
                "SELECT DISTINCT thread_id FROM {p}checkpoints ORDER BY thread_id LIMIT $1"
            )),
            get_latest_with_writes: with_writes(&format!(
                "SELECT {cols} FROM {p}checkpoints WHERE thread_id = $1 AND checkpoint_ns = $2 \
                 ORDER BY checkpoint_id DESC LIMIT 1"
            )),
            get_one_with_writes: with_writes(&format!(
                "SELECT {cols} FROM {p}checkpoints \
                 WHERE thread_id = $1 AND checkpoint_ns = $2 AND checkpoint_id = $3"
            )),
            // `h`: the values asked for. `a`: groups (thread, ns, channel; numbered by the
            // caller, `$6`) where one of them is an append value, with the range their chains
            // can pass through. Those groups come back as the whole range (which holds their
            // heads), the others as asked, so no row twice; rows name their group by number.
            blobs: format!(
                "SELECT k.g, b.version, b.type_tag, b.blob \
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[]) \
                      AS k(thread_id, checkpoint_ns, channel, version, g) \
                 JOIN {p}checkpoint_blobs b ON b.thread_id = k.thread_id \
                      AND b.checkpoint_ns = k.checkpoint_ns AND b.channel = k.channel \
                      AND b.version = k.version"
            ),
            chains: format!(
                "WITH k AS ( \
                     SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], \
                                          $5::int4[]) \
                          AS k(thread_id, checkpoint_ns, channel, bound, g)) \
                 SELECT k.g, b.version, b.type_tag, b.blob \
                 FROM k JOIN {p}checkpoint_blobs b ON b.thread_id = k.thread_id \
                      AND b.checkpoint_ns = k.checkpoint_ns AND b.channel = k.channel \
                      AND b.version <= k.bound \
                 UNION ALL \
                 SELECT k.g, b.version, b.type_tag, b.blob \
                 FROM k JOIN {p}checkpoint_blobs b ON b.thread_id = k.thread_id \
                      AND b.checkpoint_ns = k.checkpoint_ns AND b.channel = k.channel \
                 WHERE k.bound IS NULL"
            ),
            blobs_and_chains: format!(
                "WITH h AS ( \
                     SELECT k.g, k.thread_id, k.checkpoint_ns, k.channel, k.bound, \
                            b.version, b.type_tag, b.blob \
                     FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], \
                                 $6::int4[]) \
                          AS k(thread_id, checkpoint_ns, channel, version, bound, g) \
                     JOIN {p}checkpoint_blobs b ON b.thread_id = k.thread_id \
                          AND b.checkpoint_ns = k.checkpoint_ns AND b.channel = k.channel \
                          AND b.version = k.version), \
                 a AS ( \
                     SELECT g, thread_id, checkpoint_ns, channel, \
                            CASE WHEN bool_and(bound IS NOT NULL) \
                                 THEN max(bound COLLATE \"C\") END AS bound \
                     FROM h GROUP BY g, thread_id, checkpoint_ns, channel \
                     HAVING bool_or(type_tag = 'append')) \
                 SELECT g, version, type_tag, blob FROM h \
                 WHERE NOT EXISTS (SELECT 1 FROM a WHERE a.g = h.g) \
                 UNION ALL \
                 SELECT a.g, b.version, b.type_tag, b.blob \
                 FROM a JOIN {p}checkpoint_blobs b ON b.thread_id = a.thread_id \
                      AND b.checkpoint_ns = a.checkpoint_ns AND b.channel = a.channel \
                      AND b.version <= a.bound \
                 UNION ALL \
                 SELECT a.g, b.version, b.type_tag, b.blob \
                 FROM a JOIN {p}checkpoint_blobs b ON b.thread_id = a.thread_id \
                      AND b.checkpoint_ns = a.checkpoint_ns AND b.channel = a.channel \
                 WHERE a.bound IS NULL"
            ),
            writes: format!(
                "SELECT w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_id, w.channel, \
                        w.type_tag, w.blob, w.task_path \
                 FROM unnest($1::text[], $2::text[], $3::text[]) \
                      AS k(thread_id, checkpoint_ns, checkpoint_id) \
                 JOIN {p}checkpoint_writes w ON w.thread_id = k.thread_id \
                      AND w.checkpoint_ns = k.checkpoint_ns AND w.checkpoint_id = k.checkpoint_id \
                 ORDER BY w.thread_id, w.checkpoint_ns, w.checkpoint_id, w.task_path, w.task_id, \
                          w.idx"
            ),
            // One statement, so atomic without an explicit transaction (and one round trip).
            put: format!(
                "WITH blobs AS ( \
                     INSERT INTO {p}checkpoint_blobs \
                         (thread_id, checkpoint_ns, channel, version, type_tag, blob, base) \
                     SELECT $1, $2, u.channel, u.version, u.type_tag, u.blob, u.base \
                     FROM unnest($6::text[], $7::text[], $8::text[], $9::bytea[], $11::text[]) \
                          AS u(channel, version, type_tag, blob, base) \
                     ON CONFLICT (thread_id, checkpoint_ns, channel, version) \
                     DO UPDATE SET type_tag = EXCLUDED.type_tag, blob = EXCLUDED.blob, \
                         base = EXCLUDED.base) \
                 INSERT INTO {p}checkpoints \
                     (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, metadata) \
                 VALUES ($1, $2, $3, $4, $5, $10) \
                 ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET \
                     parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, \
                     header = EXCLUDED.header, metadata = EXCLUDED.metadata"
            ),
            put_writes: format!(
                "WITH regular AS ( \
                     INSERT INTO {p}checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, \
                         task_id, task_path, idx, channel, type_tag, blob) \
                     SELECT $1, $2, $3, $4, $5, u.idx, u.channel, u.type_tag, u.blob \
                     FROM unnest($6::int8[], $7::text[], $8::text[], $9::bytea[]) \
                          AS u(idx, channel, type_tag, blob) \
                     WHERE u.idx >= 0 \
                     ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) \
                     DO NOTHING) \
                 INSERT INTO {p}checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, \
                     task_id, task_path, idx, channel, type_tag, blob) \
                 SELECT $1, $2, $3, $4, $5, u.idx, u.channel, u.type_tag, u.blob \
                 FROM unnest($6::int8[], $7::text[], $8::text[], $9::bytea[]) \
                      AS u(idx, channel, type_tag, blob) \
                 WHERE u.idx < 0 \
                 ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) \
                 DO UPDATE SET task_path = EXCLUDED.task_path, channel = EXCLUDED.channel, \
                     type_tag = EXCLUDED.type_tag, blob = EXCLUDED.blob"
            ),
            // Writes of a task against the parent (`$4`) plus the child checkpoint: one
            // statement, so one transaction and one round trip. Regular writes (`idx >= 0`)
            // and special ones never touch the same row, so the two CTEs cannot collide.
            put_writes_and_put: format!(
                "WITH blobs AS ( \
                     INSERT INTO {p}checkpoint_blobs \
                         (thread_id, checkpoint_ns, channel, version, type_tag, blob, base) \
                     SELECT $1, $2, u.channel, u.version, u.type_tag, u.blob, u.base \
                     FROM unnest($6::text[], $7::text[], $8::text[], $9::bytea[], $17::text[]) \
                          AS u(channel, version, type_tag, blob, base) \
                     ON CONFLICT (thread_id, checkpoint_ns, channel, version) \
                     DO UPDATE SET type_tag = EXCLUDED.type_tag, blob = EXCLUDED.blob, \
                         base = EXCLUDED.base), \
                 regular AS ( \
                     INSERT INTO {p}checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, \
                         task_id, task_path, idx, channel, type_tag, blob) \
                     SELECT $1, $2, $4, $11, $12, u.idx, u.channel, u.type_tag, u.blob \
                     FROM unnest($13::int8[], $14::text[], $15::text[], $16::bytea[]) \
                          AS u(idx, channel, type_tag, blob) \
                     WHERE u.idx >= 0 \
                     ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) \
                     DO NOTHING), \
                 special AS ( \
                     INSERT INTO {p}checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, \
                         task_id, task_path, idx, channel, type_tag, blob) \
                     SELECT $1, $2, $4, $11, $12, u.idx, u.channel, u.type_tag, u.blob \
                     FROM unnest($13::int8[], $14::text[], $15::text[], $16::bytea[]) \
                          AS u(idx, channel, type_tag, blob) \
                     WHERE u.idx < 0 \
                     ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) \
                     DO UPDATE SET task_path = EXCLUDED.task_path, channel = EXCLUDED.channel, \
                         type_tag = EXCLUDED.type_tag, blob = EXCLUDED.blob) \
                 INSERT INTO {p}checkpoints \
                     (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, metadata) \
                 VALUES ($1, $2, $3, $4, $5, $10) \
                 ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET \
                     parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, \
                     header = EXCLUDED.header, metadata = EXCLUDED.metadata"
            ),
            // A batch of one run: one statement, however many checkpoints, so the server
            // plans and starts one statement per batch instead of one per checkpoint.
            put_many: format!(
                "WITH blobs AS ( \
                     INSERT INTO {p}checkpoint_blobs \
                         (thread_id, checkpoint_ns, channel, version, type_tag, blob, base) \
                     SELECT $1, $2, u.channel, u.version, u.type_tag, u.blob, u.base \
                     FROM unnest($3::text[], $4::text[], $5::text[], $6::bytea[], $7::text[]) \
                          AS u(channel, version, type_tag, blob, base) \
                     ON CONFLICT (thread_id, checkpoint_ns, channel, version) \
                     DO UPDATE SET type_tag = EXCLUDED.type_tag, blob = EXCLUDED.blob, \
                         base = EXCLUDED.base), \
                 regular AS ( \
                     INSERT INTO {p}checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, \
                         task_id, task_path, idx, channel, type_tag, blob) \
                     SELECT $1, $2, u.checkpoint_id, u.task_id, u.task_path, u.idx, u.channel, \
                         u.type_tag, u.blob \
                     FROM unnest($8::text[], $9::text[], $10::text[], $11::int8[], $12::text[], \
                                 $13::text[], $14::bytea[]) \
                          AS u(checkpoint_id, task_id, task_path, idx, channel, type_tag, blob) \
                     WHERE u.idx >= 0 \
                     ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) \
                     DO NOTHING), \
                 special AS ( \
                     INSERT INTO {p}checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, \
                         task_id, task_path, idx, channel, type_tag, blob) \
                     SELECT $1, $2, u.checkpoint_id, u.task_id, u.task_path, u.idx, u.channel, \
                         u.type_tag, u.blob \
                     FROM unnest($8::text[], $9::text[], $10::text[], $11::int8[], $12::text[], \
                                 $13::text[], $14::bytea[]) \
                          AS u(checkpoint_id, task_id, task_path, idx, channel, type_tag, blob) \
                     WHERE u.idx < 0 \
                     ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) \
                     DO UPDATE SET task_path = EXCLUDED.task_path, channel = EXCLUDED.channel, \
                         type_tag = EXCLUDED.type_tag, blob = EXCLUDED.blob) \
                 INSERT INTO {p}checkpoints \
                     (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, metadata) \
                 SELECT $1, $2, u.checkpoint_id, u.parent, u.header, u.metadata \
                 FROM unnest($15::text[], $16::text[], $17::jsonb[], $18::jsonb[]) \
                      AS u(checkpoint_id, parent, header, metadata) \
                 ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET \
                     parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, \
                     header = EXCLUDED.header, metadata = EXCLUDED.metadata"
            ),
            delete_threads: format!(
                "WITH c AS (DELETE FROM {p}checkpoints WHERE thread_id = ANY($1)), \
                      b AS (DELETE FROM {p}checkpoint_blobs WHERE thread_id = ANY($1)) \
                 DELETE FROM {p}checkpoint_writes WHERE thread_id = ANY($1)"
            ),
            copy_thread: format!(
                "WITH c AS ( \
                     INSERT INTO {p}checkpoints (thread_id, checkpoint_ns, checkpoint_id, \
                         parent_checkpoint_id, header, metadata) \
                     SELECT $2, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, \
                         metadata \
                     FROM {p}checkpoints WHERE thread_id = $1 \
                     ORDER BY checkpoint_ns, checkpoint_id \
                     ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET \
                         parent_checkpoint_id = EXCLUDED.parent_checkpoint_id, \
                         header = EXCLUDED.header, metadata = EXCLUDED.metadata), \
                 b AS ( \
                     INSERT INTO {p}checkpoint_blobs \
                         (thread_id, checkpoint_ns, channel, version, type_tag, blob, base) \
                     SELECT $2, checkpoint_ns, channel, version, type_tag, blob, base \
                     FROM {p}checkpoint_blobs WHERE thread_id = $1 \
                     ORDER BY checkpoint_ns, channel, version \
                     ON CONFLICT (thread_id, checkpoint_ns, channel, version) \
                     DO UPDATE SET type_tag = EXCLUDED.type_tag, blob = EXCLUDED.blob, \
                         base = EXCLUDED.base) \
                 INSERT INTO {p}checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, \
                     task_id, idx, channel, type_tag, blob, task_path) \
                 SELECT $2, checkpoint_ns, checkpoint_id, task_id, idx, channel, type_tag, blob, \
                     task_path \
                 FROM {p}checkpoint_writes WHERE thread_id = $1 \
                 ORDER BY checkpoint_ns, checkpoint_id, task_id, idx \
                 ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) \
                 DO UPDATE SET channel = EXCLUDED.channel, type_tag = EXCLUDED.type_tag, \
                     blob = EXCLUDED.blob, task_path = EXCLUDED.task_path"
            ),
            latest_append_heads: format!(
                "WITH {latest}, \
                 heads AS ( \
                     SELECT l.thread_id, l.checkpoint_ns, l.checkpoint_id, v.key AS channel, \
                            v.value #>> '{{}}' AS version \
                     FROM latest l CROSS JOIN LATERAL jsonb_each(l.versions) v) \
                 SELECT h.thread_id, h.checkpoint_ns, h.checkpoint_id, h.channel, h.version \
                 FROM heads h JOIN {p}checkpoint_blobs b ON b.thread_id = h.thread_id \
                      AND b.checkpoint_ns = h.checkpoint_ns AND b.channel = h.channel \
                      AND b.version = h.version \
                 WHERE b.type_tag = 'append'"
            ),
            // All CTEs see the tables as they were before the statement, so "kept" is computed
            // from `latest`, not by reading the checkpoints table after the delete. A rewrite
            // applies only while its checkpoint is still the latest (a checkpoint put since
            // it was computed keeps the chains instead); a rewritten head ends its chain.
            prune_keep_latest: format!(
                "WITH RECURSIVE {latest}, \
                 rewrite AS ( \
                     SELECT u.thread_id, u.checkpoint_ns, u.channel, u.version, u.type_tag, \
                            u.blob \
                     FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], \
                                 $7::text[], $8::bytea[]) \
                          AS u(thread_id, checkpoint_ns, checkpoint_id, channel, version, \
                               type_tag, blob) \
                     JOIN latest l ON l.thread_id = u.thread_id \
                          AND l.checkpoint_ns = u.checkpoint_ns \
                          AND l.checkpoint_id = u.checkpoint_id), \
                 upd AS ( \
                     UPDATE {p}checkpoint_blobs b \
                     SET type_tag = r.type_tag, blob = r.blob, base = NULL \
                     FROM rewrite r \
                     WHERE b.thread_id = r.thread_id AND b.checkpoint_ns = r.checkpoint_ns \
                       AND b.channel = r.channel AND b.version = r.version), \
                 kept(thread_id, checkpoint_ns, channel, version) AS ( \
                     SELECT l.thread_id, l.checkpoint_ns, v.key COLLATE \"C\", \
                            (v.value #>> '{{}}') COLLATE \"C\" \
                     FROM latest l CROSS JOIN LATERAL jsonb_each(l.versions) v \
                     UNION \
                     {chain_step} \
                       AND NOT EXISTS (SELECT 1 FROM rewrite r \
                           WHERE r.thread_id = k.thread_id AND r.checkpoint_ns = k.checkpoint_ns \
                             AND r.channel = k.channel AND r.version = k.version)), \
                 del_c AS ( \
                     DELETE FROM {p}checkpoints c USING latest l \
                     WHERE c.thread_id = l.thread_id AND c.checkpoint_ns = l.checkpoint_ns \
                       AND c.checkpoint_id <> l.checkpoint_id), \
                 del_w AS ( \
                     DELETE FROM {p}checkpoint_writes w USING latest l \
                     WHERE w.thread_id = l.thread_id AND w.checkpoint_ns = l.checkpoint_ns \
                       AND w.checkpoint_id <> l.checkpoint_id) \
                 DELETE FROM {p}checkpoint_blobs b USING latest l \
                 WHERE b.thread_id = l.thread_id AND b.checkpoint_ns = l.checkpoint_ns \
                   AND NOT EXISTS (SELECT 1 FROM kept k \
                       WHERE k.thread_id = b.thread_id AND k.checkpoint_ns = b.checkpoint_ns \
                         AND k.channel = b.channel AND k.version = b.version)"
            ),
            // "kept": the values the remaining checkpoints of the affected namespaces refer
            // to, and every link of their append chains.
            delete_for_runs: format!(
                "WITH RECURSIVE doomed AS ( \
                     SELECT thread_id, checkpoint_ns, checkpoint_id FROM {p}checkpoints \
                     WHERE metadata ->> 'run_id' = ANY($1)), \
                 del_c AS ( \
                     DELETE FROM {p}checkpoints c USING doomed d \
                     WHERE c.thread_id = d.thread_id AND c.checkpoint_ns = d.checkpoint_ns \
                       AND c.checkpoint_id = d.checkpoint_id), \
                 del_w AS ( \
                     DELETE FROM {p}checkpoint_writes w USING doomed d \
                     WHERE w.thread_id = d.thread_id AND w.checkpoint_ns = d.checkpoint_ns \
                       AND w.checkpoint_id = d.checkpoint_id), \
                 affected AS (SELECT DISTINCT thread_id, checkpoint_ns FROM doomed), \
                 kept(thread_id, checkpoint_ns, channel, version) AS ( \
                     SELECT c.thread_id, c.checkpoint_ns, v.key COLLATE \"C\", \
                            (v.value #>> '{{}}') COLLATE \"C\" \
                     FROM {p}checkpoints c \
                     JOIN affected a ON a.thread_id = c.thread_id \
                                    AND a.checkpoint_ns = c.checkpoint_ns \
                     CROSS JOIN LATERAL jsonb_each({cv}) v \
                     WHERE NOT EXISTS (SELECT 1 FROM doomed d \
                         WHERE d.thread_id = c.thread_id AND d.checkpoint_ns = c.checkpoint_ns \
                           AND d.checkpoint_id = c.checkpoint_id) \
                     UNION \
                     {chain_step}) \
                 DELETE FROM {p}checkpoint_blobs b USING affected a \
                 WHERE b.thread_id = a.thread_id AND b.checkpoint_ns = a.checkpoint_ns \
                   AND NOT EXISTS (SELECT 1 FROM kept k \
                       WHERE k.thread_id = b.thread_id AND k.checkpoint_ns = b.checkpoint_ns \
                         AND k.channel = b.channel AND k.version = b.version)"
            ),
            prefix: p,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked_before_they_reach_sql() {
        for ok in ["cairn", "Cairn_Test", "app-1", "x$y"] {
            assert!(validate_schema_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a\"b", "a'b", "a b", "a;b", &"x".repeat(64), "é"] {
            assert!(
                matches!(validate_schema_name(bad), Err(Error::InvalidArgument(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn statements_name_the_schema_everywhere() {
        let sql = Statements::new(Some("Tenant-1"));
        for statement in [
            &sql.get_latest_with_writes,
            &sql.get_one_with_writes,
            &sql.blobs,
            &sql.blobs_and_chains,
            &sql.chains,
            &sql.writes,
            &sql.put,
            &sql.put_writes,
            &sql.put_writes_and_put,
            &sql.put_many,
            &sql.delete_threads,
            &sql.copy_thread,
            &sql.latest_append_heads,
            &sql.prune_keep_latest,
            &sql.delete_for_runs,
        ] {
            assert!(statement.contains("\"Tenant-1\"."), "{statement}");
            assert!(
                !statement.contains(" checkpoints "),
                "unqualified table in {statement}"
            );
        }
        let unqualified = Statements::new(None);
        assert!(unqualified.put.contains("INTO checkpoints"));
    }

    #[test]
    fn migrations_are_numbered_in_order_up_to_the_schema_version() {
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=SCHEMA_VERSION).collect::<Vec<_>>());
    }
}

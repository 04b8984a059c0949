//! The schema and its migrations.
//!
//! Every migration runs once, in order, inside one `BEGIN IMMEDIATE` transaction together
//! with its row in `cairn_migrations`, so two processes opening a new file at the same time
//! cannot both apply it, and a crash mid-migration leaves the previous schema intact.

use rusqlite::{Connection, OptionalExtension, TransactionBehavior};

use cairn_checkpoint::{Error, Result};

use crate::sql_error;

/// One schema change: its version (1, 2, ...), a name, and its SQL.
struct Migration {
    version: i64,
    name: &'static str,
    sql: &'static str,
}

/// All migrations, oldest first. Never edit a released one: add a new one.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "checkpoints, per-version channel values, pending writes",
        sql: r#"
CREATE TABLE checkpoints (
    thread_id            TEXT NOT NULL,
    checkpoint_ns        TEXT NOT NULL,
    checkpoint_id        TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    -- The checkpoint without channel_values, MessagePack (keeps version types: 1 stays 1).
    header               BLOB NOT NULL,
    -- CheckpointMetadata as a JSON object, so list filters can use json_extract.
    metadata             TEXT NOT NULL,
    -- metadata.run_id, copied out for delete_for_runs.
    run_id               TEXT,
    -- {channel: version storage string}: the values this checkpoint refers to, for
    -- reclaiming unreferenced values in SQL.
    blob_refs            TEXT NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE INDEX checkpoints_run_id ON checkpoints (run_id);
-- Listing a thread across all its namespaces, newest first, without sorting the thread.
CREATE INDEX checkpoints_thread_recent ON checkpoints (thread_id, checkpoint_id);

CREATE TABLE checkpoint_blobs (
    thread_id     TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    channel       TEXT NOT NULL,
    version       TEXT NOT NULL,
    type_tag      TEXT NOT NULL,
    data          BLOB NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
);

CREATE TABLE checkpoint_writes (
    thread_id     TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    task_path     TEXT NOT NULL,
    channel       TEXT NOT NULL,
    type_tag      TEXT NOT NULL,
    data          BLOB NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);
"#,
    },
    Migration {
        version: 2,
        name: "append values: the base version each one extends",
        sql: r#"
-- NULL for a whole value; for an append value, the version of the same channel it extends,
-- so reclaiming values can follow chains in SQL without reading the values themselves.
ALTER TABLE checkpoint_blobs ADD COLUMN base_version TEXT;
-- Append values stored before this column existed: the base is the second line of their
-- header (`cairn-append/1`, base, item tag, count). Malformed ones keep NULL and read as
-- corrupt, as before.
UPDATE checkpoint_blobs
SET base_version = CAST(substr(data, 16, instr(substr(data, 16), x'0a') - 1) AS TEXT)
WHERE type_tag = 'append'
  AND substr(data, 1, 15) = CAST('cairn-append/1' || char(10) AS BLOB)
  AND instr(substr(data, 16), x'0a') > 1;
"#,
    },
    Migration {
        version: 3,
        name: "compact storage: tables without rowid, no blob_refs column",
        sql: r#"
-- Each table becomes its primary key b-tree (WITHOUT ROWID): the separate index SQLite
-- kept for every primary key is gone, and a commit touches fewer pages. The version
-- strings in checkpoint_blobs' keys are stored once instead of twice.
-- blob_refs goes: reclaiming reads the channel versions from the remaining checkpoints'
-- headers instead.
CREATE TABLE checkpoints_v3 (
    thread_id            TEXT NOT NULL,
    checkpoint_ns        TEXT NOT NULL,
    checkpoint_id        TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    header               BLOB NOT NULL,
    metadata             TEXT NOT NULL,
    run_id               TEXT,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
) WITHOUT ROWID;
INSERT INTO checkpoints_v3 (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id,
                            header, metadata, run_id)
SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, metadata, run_id
FROM checkpoints;
DROP TABLE checkpoints;
ALTER TABLE checkpoints_v3 RENAME TO checkpoints;
-- delete_for_runs finds a run's checkpoints here.
CREATE INDEX checkpoints_run_id ON checkpoints (run_id) WHERE run_id IS NOT NULL;
-- Listing a thread across all its namespaces, newest first, without sorting the thread.
CREATE INDEX checkpoints_thread_recent ON checkpoints (thread_id, checkpoint_id);

CREATE TABLE checkpoint_blobs_v3 (
    thread_id     TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    channel       TEXT NOT NULL,
    version       TEXT NOT NULL,
    type_tag      TEXT NOT NULL,
    data          BLOB NOT NULL,
    base_version  TEXT,
    PRIMARY KEY (thread_id, checkpoint_ns, channel, version)
) WITHOUT ROWID;
INSERT INTO checkpoint_blobs_v3 (thread_id, checkpoint_ns, channel, version, type_tag, data,
                                 base_version)
SELECT thread_id, checkpoint_ns, channel, version, type_tag, data, base_version
FROM checkpoint_blobs;
DROP TABLE checkpoint_blobs;
ALTER TABLE checkpoint_blobs_v3 RENAME TO checkpoint_blobs;

CREATE TABLE checkpoint_writes_v3 (
    thread_id     TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    checkpoint_id TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    task_path     TEXT NOT NULL,
    channel       TEXT NOT NULL,
    type_tag      TEXT NOT NULL,
    data          BLOB NOT NULL,
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
) WITHOUT ROWID;
INSERT INTO checkpoint_writes_v3 (thread_id, checkpoint_ns, checkpoint_id, task_id, idx,
                                  task_path, channel, type_tag, data)
SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, type_tag,
       data
FROM checkpoint_writes;
DROP TABLE checkpoint_writes;
ALTER TABLE checkpoint_writes_v3 RENAME TO checkpoint_writes;
"#,
    },
    Migration {
        version: 4,
        name: "checkpoint headers store Cairn's own versions as [counter, suffix] pairs",
        // No table changes: headers written from now on may hold version pairs, which a Cairn
        // that knows only schema 3 could not read, so the version marks the file as newer.
        // Existing headers stay as they are and read as before.
        sql: "",
    },
    Migration {
        version: 5,
        name: "channel versions in Cairn's own form are stored as 16-byte keys",
        // `cairn_version_key` (registered on every connection, see `version_key.rs`) turns
        // Cairn's 49-character versions into 16-byte blobs and leaves any other as it is.
        sql: "UPDATE checkpoint_blobs SET version = cairn_version_key(version),
                                      base_version = cairn_version_key(base_version);",
    },
    Migration {
        version: 6,
        name: "runs table instead of the run_id index; root namespace out of the thread index; \
               headers may hold ts as microseconds, metadata JSON leaves run_id to its column",
        sql: r#"
-- One row per run and thread namespace holding its checkpoints, for delete_for_runs. The
-- index on checkpoints.run_id it replaces took an entry per checkpoint (64 per batch of a
-- long run); this takes one per run. A row may outlive its run's checkpoints when a
-- checkpoint is stored again under another run: delete_for_runs then finds nothing there.
CREATE TABLE checkpoint_runs (
    run_id        TEXT NOT NULL,
    thread_id     TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL,
    PRIMARY KEY (run_id, thread_id, checkpoint_ns)
) WITHOUT ROWID;
INSERT OR IGNORE INTO checkpoint_runs (run_id, thread_id, checkpoint_ns)
SELECT DISTINCT run_id, thread_id, checkpoint_ns FROM checkpoints WHERE run_id IS NOT NULL;
DROP INDEX checkpoints_run_id;
-- The root namespace's checkpoints are already in thread order in the primary key; listing
-- a whole thread merges that with this index of the other namespaces' (subgraphs'), so a
-- thread without subgraphs adds no index entry per checkpoint.
DROP INDEX checkpoints_thread_recent;
CREATE INDEX checkpoints_thread_recent ON checkpoints (thread_id, checkpoint_id)
WHERE checkpoint_ns <> '';
"#,
    },
    Migration {
        version: 7,
        name: "checkpoint headers name channels in versions_seen and updated_channels by \
               position, and current seen versions as nil",
        // No table changes: headers written from now on may hold positions and nils, which a
        // Cairn that knows only schema 6 could not read, so the version marks the file as
        // newer. Existing headers stay as they are and read as before.
        sql: "",
    },
    Migration {
        version: 8,
        name: "append values stored in a compact form (item code, count, items; the base \
               only in base_version); pending writes and input values stored as references to \
               the items a checkpoint appended",
        // No table changes: values and writes stored from now on may be compact append
        // values (see `stored_value.rs`) and references (`write_refs.rs`), which a Cairn that
        // knows only schema 7 could not read, so the version marks the file as newer.
        // Existing rows stay as they are and read as before.
        sql: "",
    },
    Migration {
        version: 9,
        name: "checkpoint, parent, task and run ids that are canonical UUIDs stored as 16 bytes",
        // `cairn_id_key` (registered on every connection, see `id_key.rs`) turns a canonical
        // UUID into its 16 bytes and leaves any other id as it is; the conversion keeps the
        // order of UUIDs, so every key stays unique and in place.
        sql: r#"
UPDATE checkpoints SET checkpoint_id = cairn_id_key(checkpoint_id),
                       parent_checkpoint_id = cairn_id_key(parent_checkpoint_id),
                       run_id = cairn_id_key(run_id);
UPDATE checkpoint_writes SET checkpoint_id = cairn_id_key(checkpoint_id),
                             task_id = cairn_id_key(task_id);
UPDATE checkpoint_runs SET run_id = cairn_id_key(run_id);
"#,
    },
    Migration {
        version: 10,
        name: "checkpoint headers store the runtime's channel and node names as codes, a \
               version suffix the header already holds as a back reference, and the time as \
               microseconds after the checkpoint id's",
        // No table changes: headers written from now on may hold these forms, which a Cairn
        // that knows only schema 9 could not read, so the version marks the file as newer.
        // Existing headers stay as they are and read as before.
        sql: "",
    },
    Migration {
        version: 11,
        name: "type tags and task paths Cairn writes stored as a code byte (and the rest of a \
               task path after a known prefix)",
        // No table changes: rows written from now on may hold these blobs (see
        // `stored_text.rs`), which a Cairn that knows only schema 10 could not read, so the
        // version marks the file as newer. Existing rows stay text and read as before.
        sql: "",
    },
    Migration {
        version: 12,
        name: "checkpoint metadata stored as a compact blob (flags, step, parents, the \
               caller's own keys as JSON)",
        // No table changes: metadata written from now on is a blob (see
        // `stored_metadata.rs`), which a Cairn that knows only schema 11 could not read, so
        // the version marks the file as newer. Existing rows stay JSON text and read as
        // before; `cairn_metadata_json(metadata)` reads either.
        sql: "",
    },
    Migration {
        version: 13,
        name: "pending writes stored in their checkpoint's row",
        // The writes a stored checkpoint collects go into its row as one blob (see
        // `packed_writes.rs`) instead of a `checkpoint_writes` row each; that table keeps the
        // writes of checkpoints not stored (and those written before), and reads take both.
        sql: "ALTER TABLE checkpoints ADD COLUMN writes BLOB;",
    },
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = 13;

/// The SQL of the first migration, for tests of later ones.
#[cfg(test)]
pub(crate) fn first_migration_sql() -> &'static str {
    MIGRATIONS[0].sql
}

/// The SQL of migrations 1 to `version`, in order: the schema an older Cairn wrote, for
/// tests of upgrading it.
#[cfg(test)]
pub(crate) fn migrations_up_to(version: i64) -> Vec<(i64, &'static str, &'static str)> {
    MIGRATIONS
        .iter()
        .filter(|m| m.version <= version)
        .map(|m| (m.version, m.name, m.sql))
        .collect()
}

/// Brings the database up to [`SCHEMA_VERSION`]; a no-op when it already is. Returns the
/// versions it applied.
pub(crate) fn migrate(conn: &mut Connection) -> Result<Vec<i64>> {
    // Migration 5 converts versions with it (a no-op when the connection has it already).
    crate::SqliteSaver::register_sql_functions(conn)?;
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(sql_error("starting the migration transaction"))?;
    tx.execute_batch(
        "CREATE TABLE IF NOT EXISTS cairn_migrations (
             version    INTEGER PRIMARY KEY,
             name       TEXT NOT NULL,
             applied_at TEXT NOT NULL
         )",
    )
    .map_err(sql_error("creating the cairn_migrations table"))?;
    let current: i64 = tx
        .query_row("SELECT MAX(version) FROM cairn_migrations", [], |r| {
            r.get::<_, Option<i64>>(0)
        })
        .optional()
        .map_err(sql_error("reading the schema version"))?
        .flatten()
        .unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(Error::InvalidArgument(format!(
            "this SQLite database has schema version {current}, written by a newer Cairn; \
             this build knows versions up to {SCHEMA_VERSION}: upgrade Cairn to open it"
        )));
    }
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        tx.execute_batch(m.sql).map_err(sql_error(format!(
            "applying migration {} ({})",
            m.version, m.name
        )))?;
        tx.execute(
            "INSERT INTO cairn_migrations (version, name, applied_at) VALUES (?1, ?2, ?3)",
            rusqlite::params![m.version, m.name, cairn_checkpoint::now_rfc3339()],
        )
        .map_err(sql_error("recording a migration"))?;
        tracing::info!(
            version = m.version,
            name = m.name,
            "applied SQLite migration"
        );
        applied.push(m.version);
    }
    if !applied.is_empty() {
        tx.pragma_update(None, "user_version", SCHEMA_VERSION)
            .map_err(sql_error("setting user_version"))?;
    }
    tx.commit()
        .map_err(sql_error("committing the migrations"))?;
    Ok(applied)
}

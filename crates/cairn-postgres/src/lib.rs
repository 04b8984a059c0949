//! # cairn-postgres
//!
//! A [`CheckpointSaver`](cairn_checkpoint::CheckpointSaver) that keeps Cairn's checkpoints in
//! PostgreSQL, for many worker processes sharing one database.
//!
//! ```no_run
//! use cairn_checkpoint::*;
//! use cairn_postgres::PostgresSaver;
//! # async fn demo() -> cairn_checkpoint::Result<()> {
//! // Connects, creates or upgrades the tables, and pools connections.
//! let saver = PostgresSaver::connect("postgres://postgres@127.0.0.1:5432/app").await?;
//! let codec = ValueCodec::default();
//!
//! let mut checkpoint = Checkpoint::new();
//! let version = saver.get_next_version(None);
//! checkpoint.channel_values.insert("messages".into(), codec.encode(&["hi"])?);
//! checkpoint.channel_versions.insert("messages".into(), version.clone());
//! let stored = saver
//!     .put(&CheckpointConfig::thread("chat-42"), checkpoint,
//!          CheckpointMetadata::new(CheckpointSource::Input, -1).with_run_id("run-1"),
//!          [("messages".to_string(), version)].into())
//!     .await?;
//!
//! let latest = saver.get_tuple(&CheckpointConfig::thread("chat-42")).await?.expect("stored");
//! assert_eq!(latest.config, stored);
//! assert_eq!(latest.channel_value::<Vec<String>>(&codec, "messages")?, Some(vec!["hi".into()]));
//! # Ok(()) }
//! ```
//!
//! ## Connecting
//! [`PostgresSaver::connect`] takes a URL, `postgres://user:password@host:5432/database`
//! (parameters after `?`, such as `application_name=worker-1` or `connect_timeout=5`), or a
//! libpq key/value string, `host=127.0.0.1 user=postgres dbname=app` (`host=/run/postgresql`
//! for a Unix socket). [`PostgresOptions`] sets everything else:
//!
//! * **Pool**: [`max_size`](PostgresOptions::max_size) connections (default 16), opened on
//!   demand; [`connect_timeout`](PostgresOptions::connect_timeout) (10 s) bounds opening one,
//!   [`wait_timeout`](PostgresOptions::wait_timeout) (30 s) bounds waiting for a free one.
//! * **Lost connections**: a server restart, failover or `pg_terminate_backend` fails the
//!   connections. A call that finds its connection dead runs again on another one (up to
//!   three in all; every saver operation is idempotent, so this is safe), and only if all
//!   fail does it return [`Error::Backend`](cairn_checkpoint::Error::Backend) (backend
//!   `"postgres"`, message saying the connection was lost). Dead connections are discarded;
//!   [`verify_connections`](PostgresOptions::verify_connections) also checks each one with a
//!   round trip before reuse. The next call works as soon as the server is reachable.
//! * **PgBouncer**: in transaction pooling mode, set
//!   [`prepared_statements(false)`](PostgresOptions::prepared_statements). Statements are
//!   then sent unnamed with their parameter types (`tokio-postgres`'s `query_typed`) and
//!   migrations use the simple query protocol, so no named prepared statement is created.
//!   Advisory locks are transaction-scoped, which transaction pooling allows.
//! * **Group commit**: at most [`commit_slots`](PostgresOptions::commit_slots) writes
//!   (default 4) commit at once; writes that find every slot busy wait, and are stored
//!   together in one transaction when a commit ends, so many threads writing at once share
//!   commits and WAL flushes (see `group.rs`). A lone writer is stored at once.
//! * **TLS**: [`PostgresOptions::connect`] connects without TLS.
//!   [`PostgresOptions::connect_with_tls`] takes any `tokio-postgres` TLS connector
//!   (`postgres-native-tls` or `tokio-postgres-rustls` from crates.io) with `sslmode=require`
//!   in the URL; this crate bundles neither, to keep OpenSSL and rustls out of builds that do
//!   not need them.
//!
//! ## Tables
//! Created by versioned migrations recorded in `cairn_migrations` (current version:
//! [`SCHEMA_VERSION`]; version 2 adds `checkpoint_blobs.base` and fills it in for stored
//! append values, one scan of the table). Migrations run on connect inside a transaction holding
//! `pg_advisory_xact_lock`, so any number of processes can start at once. By default the
//! tables go into the connection's search path; [`PostgresOptions::schema`] puts them into a
//! schema of their own (created if missing) — use one if LangGraph's saver shares the
//! database, since its tables have the same names.
//!
//! | table | key | holds |
//! |---|---|---|
//! | `checkpoints` | thread, ns, checkpoint id | parent id, the checkpoint header as `jsonb` (everything but the values: versions keep their type, `7` stays an integer), metadata as `jsonb` |
//! | `checkpoint_blobs` | thread, ns, channel, version | one channel value: type tag and bytes, and for an append value the version it extends (`base`, NULL otherwise). Stored once per version; a `put` writes only the channels in `new_versions` |
//! | `checkpoint_writes` | thread, ns, checkpoint id, task id, index | pending writes with their task path |
//!
//! Key columns use the `"C"` collation, so ordering is byte order, as in every other Cairn
//! saver. `metadata` has a GIN index (listing filters use `metadata @> $filter`) and an index
//! on `metadata->>'run_id'` for [`delete_for_runs`](cairn_checkpoint::CheckpointSaver::delete_for_runs).
//!
//! ## Round trips
//! `put` and `put_writes` are one statement each (batched `INSERT ... SELECT FROM unnest(...)`
//! in data-modifying CTEs), hence atomic without an explicit transaction. Regular writes are
//! insert-if-absent; special channels (negative index) replace. `get_tuple` and `list` are
//! one query for the checkpoint rows and two more, pipelined, for all their values (append
//! chains included; the first time a saver meets a channel's append values, one more query
//! fetches their chains, below) and all their writes, whatever the number of rows.
//! `delete_thread`, `copy_thread` (`INSERT ... SELECT`) and `delete_for_runs` are one
//! statement each; `prune` keeping the latest checkpoints is one statement too, after one
//! query finding the append values they hold (and, if there are any, one fetching their
//! chains). `prune` and `delete_for_runs` reclaim values no remaining checkpoint refers to.
//! Since every statement is idempotent, one the server aborts as a deadlock victim (copies
//! and prunes racing on one thread) or a serialization failure is re-sent transparently.
//!
//! ## Append values
//! A list channel that grows by a few items per step is stored by the runtime as *append
//! values* ([`AppendValue`](cairn_checkpoint::AppendValue)): the version it extends and the
//! new items. This saver stores them as given in `checkpoint_blobs` and copies the base
//! version into the `base` column at `put` (a malformed append value is refused there, since
//! it could never be read back). A thread of n steps adding one message each then stores
//! each message once instead of n times: linear, not quadratic, in its history.
//!
//! Reads return whole values. The statement loading the values also returns, for every
//! `(thread, namespace, channel)` where a requested value is an append value, every stored
//! version up to the newest requested one: a single range of the primary key
//! ([`chain_fetch_bound`](cairn_checkpoint::chain_fetch_bound); every version of the channel
//! when versions are not in the zero-padded form whose text order is their counter order). So
//! reading a checkpoint with append values costs no extra round trip, however long its
//! chains, in either statement mode. That statement takes longer to plan than a plain key
//! lookup, so a saver uses it only when a requested channel is one it has read append values
//! of before (it remembers their names); otherwise it sends the plain statement and, if
//! append values turn up, fetches their chains with one more. The rows go into one
//! [`AppendChains`](cairn_checkpoint::AppendChains) per thread and namespace and the
//! checkpoints are resolved oldest first, so listing a long history joins each link once. A
//! chain whose base is missing reads as
//! [`Error::Corrupt`](cairn_checkpoint::Error::Corrupt) naming the channel.
//! `get_tuple` reads the checkpoint and its pending writes in one statement, then its values;
//! [`get_tuple_known`](cairn_checkpoint::CheckpointSaver::get_tuple_known) fetches neither
//! the values the caller holds nor the chains behind them (holding them all, one round trip).
//!
//! Deletions keep what chains need: reclaiming after `delete_for_runs` and `prune` follows
//! `base` from the values the remaining checkpoints name, in a recursive query, one
//! primary-key search per link. `prune` with `KeepLatest` first reads the kept checkpoints'
//! append values whole and stores them in place of the append values, in the same statement
//! as the deletion (only while the checkpoint is still the latest), so none of the older
//! links stays. `copy_thread` copies values and bases as stored.
//!
//! Damaged rows (a header that is not a checkpoint, metadata of the wrong shape) are reported
//! as [`Error::Corrupt`](cairn_checkpoint::Error::Corrupt) naming thread, namespace and
//! checkpoint.

#![warn(missing_docs)]

mod error;
mod group;
mod options;
mod saver;
mod schema;
mod values;

pub use group::CommitStats;
pub use options::PostgresOptions;
pub use saver::PostgresSaver;
pub use schema::SCHEMA_VERSION;

/// The `tokio-postgres` and `deadpool-postgres` versions this crate is built on, for TLS
/// connectors and direct use of [`PostgresSaver::pool`].
pub use deadpool_postgres;
pub use tokio_postgres;

//! # cairn-cli
//!
//! The `cairn` command: inspect, diff, fork, prune and migrate the checkpoint threads Cairn
//! graphs write, and run a durable demo workflow. Everything it does is also callable from
//! Rust through [`run`]:
//!
//! ```
//! use cairn_checkpoint::*;
//! use clap::Parser;
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let dir = tempfile::tempdir().unwrap();
//! let db = dir.path().join("cairn.db");
//! {
//!     let saver = cairn_sqlite::SqliteSaver::open(&db)?;
//!     let mut cp = Checkpoint::new();
//!     let v = saver.get_next_version(None);
//!     cp.channel_values.insert("topic".into(), ValueCodec::default().encode("rust")?);
//!     cp.channel_versions.insert("topic".into(), v.clone());
//!     saver.put(&CheckpointConfig::thread("t1"), cp,
//!               CheckpointMetadata::new(CheckpointSource::Input, -1), [("topic".into(), v)].into()).await?;
//! }
//! let cli = cairn_cli::cli::Cli::try_parse_from(
//!     ["cairn", "--db", db.to_str().unwrap(), "--json", "show", "t1"]).unwrap();
//! let mut out = Vec::new();
//! cairn_cli::run(cli, &mut out).await.unwrap();
//! let shown: serde_json::Value = serde_json::from_slice(&out).unwrap();
//! assert_eq!(shown["channels"]["topic"]["value"], "rust");
//! assert_eq!(shown["metadata"]["step"], -1);
//! # Ok::<(), Error>(()) }).unwrap();
//! ```
//!
//! ## Usage
//!
//! ```text
//! cairn [--db URL-OR-PATH] [--json] <command>
//!
//!   demo [--thread demo] [--crash-after N] [--fresh]   run or resume the demo workflow
//!   threads [--limit N]                                threads with their latest checkpoint
//!   history <thread> [--ns NS] [--limit N] [--before ID]   timeline, newest first
//!   show <thread> [--checkpoint ID] [--ns NS]          one checkpoint, values decoded
//!   diff <thread> <checkpoint-a> <checkpoint-b>        channel-level differences
//!   fork <thread> <checkpoint> --to <new-thread>       branch a new thread off a checkpoint
//!   prune <thread>... (--keep-latest | --delete --yes) drop old checkpoints or whole threads
//!   migrate --from URL --to URL [--thread T]...        copy threads between databases
//! ```
//!
//! `--db` (or the `CAIRN_DB` environment variable; default `./cairn-demo.db`) picks the
//! store: a SQLite path or `sqlite:PATH`, `postgres://…` (cargo feature `postgres`),
//! `redis://…` (cargo feature `redis`) or `memory:`. See [`backend`].
//!
//! Checkpoint ids may be abbreviated to a unique prefix of at least 4 characters.
//!
//! ## Output
//!
//! Text for people by default; with `--json`, one JSON document on stdout whose shape is
//! documented in each command's module ([`commands::threads`], [`commands::history`],
//! [`commands::show`], [`commands::diff`], [`commands::fork`], [`commands::prune`],
//! [`commands::migrate`], [`commands::demo`]). Progress of long operations goes to stderr.
//!
//! Errors print one line on stderr — `error: <message>`, or with `--json`
//! `{"error": "<message>", "kind": "<kind>"}` (kinds in [`CliError::kind`]) — and exit
//! with status 1, or 2 for usage errors (including clap's own).

#![warn(missing_docs)]

/// `eprintln!` for messages to people that must not stop a command: a closed stderr (`2>&-`,
/// or a pipe whose reader left) makes `eprintln!` panic, here the line is dropped.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

/// `eprint!` as [`note!`] is `eprintln!`.
macro_rules! note_inline {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut err = std::io::stderr();
        let _ = write!(err, $($arg)*);
        let _ = err.flush();
    }};
}

pub mod backend;
pub mod cli;
pub mod commands;
pub mod error;
pub mod paging;
pub mod progress;
pub mod render;

use std::io::Write;

pub use error::{CliError, Result};

use cli::{Cli, Command};
use commands::Ctx;

/// Runs one parsed command line, writing its output to `out`.
pub async fn run(cli: Cli, out: &mut dyn Write) -> Result<()> {
    let ctx = Ctx {
        db: cli.db,
        json: cli.json,
    };
    match &cli.command {
        Command::Threads(args) => commands::threads::run(&ctx, args, out).await,
        Command::History(args) => commands::history::run(&ctx, args, out).await,
        Command::Show(args) => commands::show::run(&ctx, args, out).await,
        Command::Diff(args) => commands::diff::run(&ctx, args, out).await,
        Command::Fork(args) => commands::fork::run(&ctx, args, out).await,
        Command::Prune(args) => commands::prune::run(&ctx, args, out).await,
        Command::Migrate(args) => commands::migrate::run(&ctx, args, out).await,
        Command::Demo(args) => commands::demo::run(&ctx, args, out).await,
    }
}

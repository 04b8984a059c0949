//! The command line, as clap (derive) parses it.

use clap::{ArgGroup, Args, Parser, Subcommand};

/// Help text shown after the command list of `cairn --help`.
pub const AFTER_HELP: &str = "\
Databases (--db or CAIRN_DB):
  ./file.db | sqlite:PATH        SQLite file (the default is ./cairn-demo.db)
  postgres://user:pw@host/db     PostgreSQL (build with --features postgres)
  redis://host:6379/0            Redis (build with --features redis)
  memory:                        in-memory, empty, gone when the command ends

Examples:
  cairn demo                          run (or resume) the demo job on ./cairn-demo.db
  cairn demo --crash-after 3          ...and kill the process after 3 super-steps
  cairn threads                       list threads with their latest checkpoint
  cairn history demo                  timeline of thread `demo`, newest first
  cairn show demo                     latest checkpoint of `demo`, values decoded
  cairn diff demo <id-a> <id-b>       what changed between two checkpoints
  cairn fork demo <id> --to demo-b    branch a new thread off a checkpoint
  cairn prune old-thread --keep-latest
  cairn migrate --from ./cairn-demo.db --to postgres://localhost/cairn

Every command accepts --json for machine-readable output. Errors print one line on
stderr (a JSON object with --json) and exit with 1, or 2 for usage errors.";

/// Inspect, repair and move Cairn checkpoint threads; run the durable demo job.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Checkpoint database: a SQLite path, sqlite:PATH, postgres://..., redis://... or memory:
    #[arg(
        long,
        global = true,
        env = "CAIRN_DB",
        default_value = "./cairn-demo.db",
        value_name = "URL-OR-PATH"
    )]
    pub db: String,

    /// Print machine-readable JSON on stdout instead of text
    #[arg(long, global = true)]
    pub json: bool,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List threads with their latest checkpoint
    Threads(ThreadsArgs),
    /// Show a thread's checkpoints, newest first
    History(HistoryArgs),
    /// Show one checkpoint: metadata, channel versions, decoded values and pending writes
    Show(ShowArgs),
    /// Show channel-level differences between two checkpoints of a thread
    Diff(DiffArgs),
    /// Start a new thread from a copy of a checkpoint (the source thread is untouched)
    Fork(ForkArgs),
    /// Delete old checkpoints of threads, or whole threads
    Prune(PruneArgs),
    /// Copy threads from one database to another, keeping ids, versions and parents
    Migrate(MigrateArgs),
    /// Run (or resume) the durable demo workflow and show its history
    Demo(DemoArgs),
}

/// `cairn threads`.
#[derive(Debug, Args)]
pub struct ThreadsArgs {
    /// Show at most this many threads (the most recently active ones)
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
}

/// `cairn history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The thread
    pub thread: String,
    /// Checkpoint namespace ("" is the root graph)
    #[arg(long, default_value = "", value_name = "NS")]
    pub ns: String,
    /// Show at most N checkpoints
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Only checkpoints older than this checkpoint id (for paging)
    #[arg(long, value_name = "ID")]
    pub before: Option<String>,
}

/// `cairn show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The thread
    pub thread: String,
    /// The checkpoint id (or a unique prefix); the latest when omitted
    #[arg(long, short = 'c', value_name = "ID")]
    pub checkpoint: Option<String>,
    /// Checkpoint namespace ("" is the root graph)
    #[arg(long, default_value = "", value_name = "NS")]
    pub ns: String,
}

/// `cairn diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The thread
    pub thread: String,
    /// The older checkpoint id (or a unique prefix)
    pub checkpoint_a: String,
    /// The newer checkpoint id (or a unique prefix)
    pub checkpoint_b: String,
    /// Checkpoint namespace ("" is the root graph)
    #[arg(long, default_value = "", value_name = "NS")]
    pub ns: String,
}

/// `cairn fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The source thread
    pub thread: String,
    /// The checkpoint to copy (id or unique prefix)
    pub checkpoint: String,
    /// The new thread (must not exist yet)
    #[arg(long, value_name = "NEW-THREAD")]
    pub to: String,
    /// Checkpoint namespace ("" is the root graph)
    #[arg(long, default_value = "", value_name = "NS")]
    pub ns: String,
}

/// `cairn prune`.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("strategy").required(true).args(["keep_latest", "delete"])))]
pub struct PruneArgs {
    /// The threads
    #[arg(required = true, value_name = "THREAD")]
    pub threads: Vec<String>,
    /// Keep only the latest checkpoint of each namespace
    #[arg(long)]
    pub keep_latest: bool,
    /// Delete the threads entirely (requires --yes)
    #[arg(long)]
    pub delete: bool,
    /// Confirm a deletion
    #[arg(long)]
    pub yes: bool,
}

/// `cairn migrate`.
#[derive(Debug, Args)]
pub struct MigrateArgs {
    /// Source database (URL or SQLite path)
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// Target database (URL or SQLite path; created if needed)
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Copy only this thread (repeatable); all threads when omitted
    #[arg(long = "thread", value_name = "THREAD")]
    pub threads: Vec<String>,
}

/// `cairn demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The thread the demo runs on
    #[arg(long, default_value = "demo")]
    pub thread: String,
    /// Kill the process (SIGKILL-like abort) after N super-steps, to show resuming
    #[arg(long, value_name = "N")]
    pub crash_after: Option<u64>,
    /// Delete the thread first and start over
    #[arg(long)]
    pub fresh: bool,
    /// The topic of the article the workflow writes
    #[arg(long, default_value = "durable execution")]
    pub topic: String,
    /// Simulated model latency per node, in milliseconds
    #[arg(long, default_value_t = 150, value_name = "MS")]
    pub delay_ms: u64,
}

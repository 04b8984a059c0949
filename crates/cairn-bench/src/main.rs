//! Cairn's side of the LangGraph side-by-side benchmark.
//!
//! Runs the workloads of `langgraph_peer.py` (W1 chat, W2 loop, W3 fan-out, W4 threads) on
//! Cairn's savers and writes the peer's JSON shape, so `compare.py PEER.json CAIRN.json`
//! prints ratios:
//!
//! ```text
//! cargo run --release -p cairn-bench -- --json cairn.json [--quick] [--workloads W1,W2]
//!     [--savers none,memory,sqlite,postgres,redis] [--durability default,sync,exit] [--growth]
//! ```
//!
//! Durability modes: `default` runs every invoke with the runtime's `Durability::Async` and
//! the saver's default sync policy (SQLite synchronous=NORMAL); `sync` with
//! `Durability::Sync` and the power-loss-safe policy (SQLite synchronous=FULL, PostgreSQL
//! synchronous_commit=on); `exit` with `Durability::Exit` and the default policy (no
//! LangGraph counterpart in the peer). `run-side-by-side.sh` runs the peer and this binary in
//! one go.
//!
//! Every (workload, saver, durability) cell gets a warm-up on throw-away storage, then one
//! timed run on fresh storage; only graph calls are timed; results are checked and a run that
//! did not do its work is an error cell. See docs/BENCHMARKS.md.

mod backend;
mod text;
mod workloads;

use std::time::Instant;

use clap::Parser;
use serde_json::{json, Map, Value};

use backend::{Backend, Durability, Env, SaverKind};

/// mimalloc serves the many small allocations of decoding states much faster than the system
/// allocator (feature `mimalloc`, on by default; see docs/BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use workloads::{Sizes, FULL, QUICK, WARMUP};

/// Errors of the benchmark binary.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Concurrency of the concurrent W4 cell.
const W4_CONCURRENCY: usize = 64;

#[derive(Parser, Debug)]
#[command(about = "Cairn's side of the LangGraph side-by-side benchmark (see docs/BENCHMARKS.md)")]
struct Args {
    /// Write the JSON results here.
    #[arg(long)]
    json: String,
    /// The peer's QUICK sizes (a fast check).
    #[arg(long)]
    quick: bool,
    /// Comma list of W1, W1delta, W2, W3, W4, W4c (W4 run 64 threads at a time).
    #[arg(long, default_value = "W1,W1delta,W2,W3,W4,W4c")]
    workloads: String,
    /// Comma list of none, memory, sqlite, postgres, redis.
    #[arg(long, default_value = "none,memory,sqlite,postgres,redis")]
    savers: String,
    /// Comma list of durability modes: default (runtime Async, saver's default sync policy),
    /// sync (runtime Sync, SQLite synchronous=FULL, PostgreSQL synchronous_commit=on), exit
    /// (runtime Exit, saver's default sync policy; Cairn only).
    #[arg(long, default_value = "default,sync,exit")]
    durability: String,
    /// Only the W1 storage-growth measurement (samples at --growth-samples turns).
    #[arg(long)]
    growth: bool,
    /// Turns at which --growth samples storage.
    #[arg(long, default_value = "50,100,200,400")]
    growth_samples: String,
    /// With --growth: copy the SQLite file, as it is after the last sample (WAL checkpointed),
    /// to this path, for inspection (`sqlite3 FILE "SELECT ... FROM dbstat"`, or
    /// `crates/cairn-bench/layout_estimate.py`).
    #[arg(long, value_name = "PATH")]
    keep_sqlite: Option<std::path::PathBuf>,
    /// Leave transparent huge pages as the system has them (by default the process turns
    /// them off; see `huge_pages` in the JSON's `meta`).
    #[arg(long)]
    keep_huge_pages: bool,
}

/// Turns transparent huge pages off for this process (Linux; elsewhere a no-op) and says
/// what the process runs with, for the JSON's `meta`.
///
/// mimalloc asks the kernel for 2 MiB pages for its arenas (`MADV_HUGEPAGE`), and the first
/// touch of each such page zeroes all of it: in a cell of a few milliseconds whose state
/// grows, such as W2 in memory (about 6 ms), that ran the cell at about half speed in two
/// runs of three after the peer's run, against full speed in three of three without them.
/// The peer's Python allocator never asks for huge pages, so turning them off compares like
/// with like.
fn set_huge_pages(keep: bool) -> String {
    if keep {
        return "as the system sets them (--keep-huge-pages)".into();
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: PR_SET_THP_DISABLE takes integer arguments only (passed as the
        // `unsigned long`s the variadic prctl reads) and touches no memory of this process;
        // it sets a flag on the process's address space.
        let (on, unused): (libc::c_ulong, libc::c_ulong) = (1, 0);
        let done =
            unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, on, unused, unused, unused) } == 0;
        if done {
            return "transparent huge pages off for this process (prctl PR_SET_THP_DISABLE)".into();
        }
        format!(
            "as the system sets them (turning them off failed: {})",
            std::io::Error::last_os_error()
        )
    }
    #[cfg(not(target_os = "linux"))]
    {
        "as the system sets them (not Linux)".into()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    W1,
    W1Delta,
    W2,
    W3,
    W4,
    W4Concurrent,
}

impl Workload {
    fn parse(s: &str) -> Result<Self, BoxError> {
        Ok(match s.trim().to_ascii_lowercase().as_str() {
            "w1" => Workload::W1,
            "w1delta" => Workload::W1Delta,
            "w2" => Workload::W2,
            "w3" => Workload::W3,
            "w4" => Workload::W4,
            "w4c" | "w4-concurrent" => Workload::W4Concurrent,
            other => {
                return Err(
                    format!("unknown workload {other:?} (W1, W1delta, W2, W3, W4, W4c)").into(),
                )
            }
        })
    }

    fn name(self) -> &'static str {
        match self {
            Workload::W1 => "W1",
            Workload::W1Delta => "W1delta",
            Workload::W2 => "W2",
            Workload::W3 => "W3",
            Workload::W4 => "W4",
            Workload::W4Concurrent => "W4-concurrent",
        }
    }
}

async fn run_workload(
    w: Workload,
    be: &Backend,
    sz: &Sizes,
    tag: &str,
) -> Result<Map<String, Value>, BoxError> {
    match w {
        Workload::W1 | Workload::W1Delta => workloads::w1_chat(be, sz, tag).await,
        Workload::W2 => workloads::w2_loop(be, sz, tag).await,
        Workload::W3 => workloads::w3_fanout(be, sz, tag).await,
        Workload::W4 => workloads::w4_threads(be, sz, tag, 1).await,
        Workload::W4Concurrent => workloads::w4_threads(be, sz, tag, W4_CONCURRENCY).await,
    }
}

fn loadavg() -> Value {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    json!(v)
}

/// One cell: warm-up on throw-away storage, then one timed run on fresh storage.
async fn run_cell(w: Workload, kind: SaverKind, mode: Durability, sz: &Sizes, env: &Env) -> Value {
    let mut rec = Map::new();
    rec.insert("workload".into(), json!(w.name()));
    rec.insert("saver".into(), json!(kind.name()));
    rec.insert("durability".into(), json!(mode.name()));
    if kind != SaverKind::None {
        rec.insert(
            "runtime_durability".into(),
            json!(format!("{:?}", mode.runtime())),
        );
    }
    rec.insert("loadavg_before".into(), loadavg());
    let result: Result<Map<String, Value>, BoxError> = async {
        let be = Backend::open(kind, mode, env).await?;
        let warm = run_workload(w, &be, &WARMUP, "warmup").await;
        be.close().await?;
        warm?;
        let fsync = if mode == Durability::Sync
            && matches!(kind, SaverKind::Sqlite | SaverKind::Postgres)
        {
            Some(fsync_probe()?)
        } else {
            None
        };
        let mut be = Backend::open(kind, mode, env).await?;
        let res = run_workload(w, &be, sz, "run").await;
        let res = res.map(|mut r| {
            if let Some(f) = fsync {
                r.insert("disk_fsync_per_s".into(), json!(f));
            }
            r
        });
        let res = match res {
            Ok(res) => cell_figures(w, kind, mode, &mut be, res).await,
            Err(e) => Err(e),
        };
        be.close().await?;
        res
    }
    .await;
    match result {
        Ok(res) => {
            rec.extend(res);
            rec.insert("ok".into(), json!(true));
        }
        Err(e) => {
            rec.insert("ok".into(), json!(false));
            rec.insert("error".into(), json!(e.to_string()));
        }
    }
    if w == Workload::W1Delta {
        rec.insert(
            "note".into(),
            json!("Cairn has no DeltaChannel: this is plain W1 (a separate run), compared against LangGraph's DeltaChannel variant"),
        );
    }
    rec.insert("loadavg_after".into(), loadavg());
    Value::Object(rec)
}

/// Untimed figures of a cell after its timed run: writer commits and checkpoints written
/// (SQLite cells), checkpoint throughput (W4-concurrent), storage.
async fn cell_figures(
    w: Workload,
    kind: SaverKind,
    mode: Durability,
    be: &mut Backend,
    mut res: Map<String, Value>,
) -> Result<Map<String, Value>, BoxError> {
    let writer = be.sqlite_writer_stats();
    let pg_commits = be.postgres_commit_stats();
    let counted = matches!(kind, SaverKind::Sqlite | SaverKind::Postgres);
    if counted || (w == Workload::W4Concurrent && kind != SaverKind::None) {
        if let Some(n) = be.count_checkpoints().await? {
            res.insert("checkpoints_written".into(), json!(n));
            if w == Workload::W4Concurrent {
                if let Some(total) = res.get("total_s").and_then(Value::as_f64) {
                    res.insert("checkpoints_per_s".into(), json!(n as f64 / total));
                }
            }
            if let Some(stats) = writer.filter(|_| n > 0) {
                let per = stats.batches as f64 / n as f64;
                res.insert("commits_per_checkpoint".into(), json!(per));
                if mode.strong_saver_sync() {
                    res.insert("fsyncs_per_checkpoint".into(), json!(per));
                }
            }
            if let Some(stats) = pg_commits.filter(|_| n > 0) {
                res.insert(
                    "commits_per_checkpoint".into(),
                    json!(stats.commits as f64 / n as f64),
                );
            }
        }
    }
    if let Some(st) = be.storage().await? {
        res.insert("storage_bytes".into(), st["bytes"].clone());
        if let Some(b) = st.get("bytes_after_wal_checkpoint") {
            res.insert("storage_bytes_after_wal_checkpoint".into(), b.clone());
        }
        res.insert("storage".into(), Value::Object(st));
    }
    Ok(res)
}

/// The disk's rate of durable 4 KiB appends (write + fdatasync) in the temp dir, measured
/// for up to 300 appends or 0.5 s, whichever comes first.
fn fsync_probe() -> Result<f64, BoxError> {
    use std::io::Write;
    let mut file = tempfile::tempfile()?;
    let block = [b'x'; 4096];
    let t0 = Instant::now();
    let mut n = 0u32;
    while n < 300 && t0.elapsed().as_secs_f64() < 0.5 {
        file.write_all(&block)?;
        file.sync_data()?;
        n += 1;
    }
    Ok(f64::from(n) / t0.elapsed().as_secs_f64())
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default()
}

fn split(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').map(str::trim).filter(|x| !x.is_empty())
}

fn mask_url(url: &str) -> String {
    // postgres://user:password@host -> postgres://user:***@host
    match (url.find("://"), url.find('@')) {
        (Some(a), Some(at)) if at > a => {
            let cred = &url[a + 3..at];
            match cred.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..a + 3], &cred[..c], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

async fn run(args: Args, huge_pages: String) -> Result<bool, BoxError> {
    let sizes = if args.quick { QUICK } else { FULL };
    let env = Env {
        pg_url: std::env::var("CAIRN_BENCH_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/cairnbench".into()),
        redis_url: std::env::var("CAIRN_BENCH_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379/".into()),
    };
    let savers: Vec<SaverKind> = split(&args.savers)
        .map(SaverKind::parse)
        .collect::<Result<_, _>>()?;
    let modes: Vec<Durability> = split(&args.durability)
        .map(Durability::parse)
        .collect::<Result<_, _>>()?;

    let mut meta = Map::new();
    meta.insert("started_utc".into(), json!(cairn_checkpoint::now_rfc3339()));
    meta.insert(
        "argv".into(),
        json!(std::env::args().skip(1).collect::<Vec<_>>()),
    );
    meta.insert(
        "process_warmup".into(),
        json!("one untimed W1 run in memory before the first timed cell"),
    );
    meta.insert("huge_pages".into(), json!(huge_pages));
    meta.insert(
        "allocator".into(),
        json!(if cfg!(feature = "mimalloc") {
            "mimalloc"
        } else {
            "system"
        }),
    );
    meta.insert(
        "implementation".into(),
        json!(format!(
            "cairn {} (Rust, release build)",
            env!("CARGO_PKG_VERSION")
        )),
    );
    meta.insert(
        "nproc".into(),
        json!(std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)),
    );
    meta.insert("cpu_model".into(), json!(cpu_model()));
    meta.insert("loadavg_start".into(), loadavg());
    meta.insert("disk_fsync_per_s_start".into(), json!(fsync_probe()?));
    meta.insert(
        "disk_fsync_probe".into(),
        json!("4 KiB append + fdatasync in the temp dir, up to 300 times or 0.5 s; sync cells of sqlite/postgres carry disk_fsync_per_s measured right before their timed run"),
    );
    meta.insert("sizes".into(), json!(sizes));
    meta.insert("warmup_sizes".into(), json!(WARMUP));
    meta.insert(
        "percentiles".into(),
        json!("nearest-rank over per-invoke Instant latencies"),
    );
    meta.insert(
        "tokio".into(),
        json!("multi-thread runtime, one worker per core"),
    );
    meta.insert(
        "w4_order".into(),
        json!({
            "W4": "thread-major: all turns of thread 0, then thread 1, ... (as the peer)",
            "W4-concurrent": format!("{W4_CONCURRENCY} threads at a time (each thread's turns in order); turns_per_s = turns / wall clock; cells carry concurrency: {W4_CONCURRENCY}")
        }),
    );
    meta.insert(
        "w1delta".into(),
        json!("Cairn has no DeltaChannel; W1delta cells are plain W1 runs so compare.py sets Cairn's W1 against LangGraph's DeltaChannel variant"),
    );
    meta.insert("history_page_size".into(), json!(workloads::HISTORY_PAGE));

    let uses = |k: SaverKind| savers.contains(&k);
    let (mut pg, mut rd) = (Value::Null, Value::Null);
    if uses(SaverKind::Postgres) {
        backend::ensure_pg_database(&env.pg_url).await?;
        pg = backend::pg_facts(&env.pg_url).await;
        meta.insert("postgres_url".into(), json!(mask_url(&env.pg_url)));
        meta.insert("postgres_settings".into(), pg.clone());
    }
    if uses(SaverKind::Redis) {
        rd = backend::redis_facts(&env.redis_url).await;
        meta.insert("redis_url".into(), json!(mask_url(&env.redis_url)));
        meta.insert("redis_settings".into(), rd.clone());
    }
    meta.insert("durability".into(), backend::durability_meta(&pg, &rd));

    let mut all_ok = true;
    let report = if args.growth {
        let mut samples: Vec<usize> = split(&args.growth_samples)
            .map(str::parse)
            .collect::<Result<_, _>>()?;
        samples.sort_unstable();
        let turns = samples.last().copied().unwrap_or(400);
        let mut out = Map::new();
        for &kind in savers.iter().filter(|k| **k != SaverKind::None) {
            let entry = async {
                let be = Backend::open(kind, Durability::Default, &env).await?;
                let warm = workloads::w1_chat(&be, &WARMUP, "growth-warmup").await;
                be.close().await?;
                warm?;
                let mut be = Backend::open(kind, Durability::Default, &env).await?;
                let rows = workloads::w1_growth(&mut be, turns, &samples).await;
                if let (Some(to), Ok(_)) = (&args.keep_sqlite, &rows) {
                    be.copy_sqlite_file(to)?;
                }
                be.close().await?;
                rows
            }
            .await;
            let v = match entry {
                Ok(rows) => json!({ "samples": rows, "final_check": "ok" }),
                Err(e) => {
                    all_ok = false;
                    json!({ "error": e.to_string() })
                }
            };
            println!(
                "  growth W1 {:8} {}",
                kind.name(),
                if v.get("error").is_some() {
                    "ERROR"
                } else {
                    "ok"
                }
            );
            out.insert(kind.name().into(), v);
        }
        json!({
            "meta": meta,
            "growth": { "turns": turns, "samples_at": samples, "durability": "default", "savers": out }
        })
    } else {
        // One untimed W1 run in memory first: the first cell of a process otherwise pays for
        // the allocator's and the CPU caches' first touch (measured: the first memory cell ran
        // at half the speed of the same cell run second, whichever durability came first).
        let warm = run_cell(
            Workload::W1,
            SaverKind::Memory,
            Durability::Default,
            &sizes,
            &env,
        )
        .await;
        if warm["ok"].as_bool() != Some(true) {
            eprintln!("the process warm-up run failed: {}", warm["error"]);
        }
        let mut results = Vec::new();
        for w in split(&args.workloads)
            .map(Workload::parse)
            .collect::<Result<Vec<_>, _>>()?
        {
            for &kind in &savers {
                let cell_modes: Vec<Durability> = match kind {
                    SaverKind::None => vec![Durability::Default],
                    // Redis's sync policy is a server setting: no sync cells.
                    SaverKind::Redis => modes
                        .iter()
                        .copied()
                        .filter(|m| *m != Durability::Sync)
                        .collect(),
                    _ => modes.clone(),
                };
                for mode in cell_modes {
                    let t = Instant::now();
                    let rec = run_cell(w, kind, mode, &sizes, &env).await;
                    let ok = rec["ok"].as_bool().unwrap_or(false);
                    all_ok &= ok;
                    let metric = ["turns_per_s", "steps_per_s", "invocations_per_s"]
                        .iter()
                        .find_map(|k| {
                            rec.get(*k)
                                .and_then(Value::as_f64)
                                .map(|v| format!("{k}={v:.1}"))
                        })
                        .unwrap_or_default();
                    let extra = ["fsyncs_per_checkpoint", "checkpoints_per_s"]
                        .iter()
                        .filter_map(|k| {
                            rec.get(*k)
                                .and_then(Value::as_f64)
                                .map(|v| format!(" {k}={v:.2}"))
                        })
                        .collect::<String>();
                    let status = if ok {
                        "ok".to_owned()
                    } else {
                        format!("ERROR {}", rec["error"])
                    };
                    println!(
                        "  {:13} {:8} {:8} {status} {metric}{extra} ({:.1}s)",
                        w.name(),
                        kind.name(),
                        mode.name(),
                        t.elapsed().as_secs_f64()
                    );
                    results.push(rec);
                }
            }
        }
        json!({ "meta": meta, "results": results })
    };
    let mut report = report;
    if let Some(m) = report.get_mut("meta").and_then(Value::as_object_mut) {
        m.insert("loadavg_end".into(), loadavg());
        m.insert(
            "finished_utc".into(),
            json!(cairn_checkpoint::now_rfc3339()),
        );
    }
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("JSON written to {}", args.json);
    Ok(all_ok)
}

fn main() -> std::process::ExitCode {
    // First thing, before argument parsing and the runtime allocate (pages touched before it
    // may stay huge); the flag is therefore read from the arguments directly.
    let huge_pages = set_huge_pages(std::env::args_os().any(|a| a == "--keep-huge-pages"));
    let args = Args::parse();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args, huge_pages)) {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::from(1),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> Env {
        Env {
            pg_url: String::new(),
            redis_url: String::new(),
        }
    }

    #[test]
    fn durability_modes_map_to_runtime_modes() {
        let m = |s| Durability::parse(s).expect("parse");
        assert_eq!(m("default").runtime(), cairn_graph::Durability::Async);
        assert_eq!(m("sync").runtime(), cairn_graph::Durability::Sync);
        assert_eq!(m("EXIT").runtime(), cairn_graph::Durability::Exit);
        assert!(m("sync").strong_saver_sync());
        assert!(!m("default").strong_saver_sync() && !m("exit").strong_saver_sync());
        assert!(Durability::parse("async").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_sync_w4_concurrent_cell_reports_fsyncs_and_checkpoint_rate() {
        let rec = run_cell(
            Workload::W4Concurrent,
            SaverKind::Sqlite,
            Durability::Sync,
            &WARMUP,
            &env(),
        )
        .await;
        assert_eq!(rec["ok"], json!(true), "{rec}");
        assert_eq!(rec["runtime_durability"], json!("Sync"));
        let n = 3 * WARMUP.w4_threads * WARMUP.w4_turns;
        assert_eq!(rec["checkpoints_written"], json!(n));
        let batches = rec["storage"]["writer_batches"].as_f64().expect("batches");
        let per = rec["fsyncs_per_checkpoint"].as_f64().expect("fsyncs");
        assert!((per - batches / n as f64).abs() < 1e-9 && per > 0.0);
        let rate = rec["checkpoints_per_s"].as_f64().expect("rate");
        let total = rec["total_s"].as_f64().expect("total");
        assert!((rate * total - n as f64).abs() < 1e-6);
        assert!(rec.get("disk_fsync_per_s").is_some());
    }

    /// Against the test server (`CAIRN_TEST_POSTGRES_URL`; required when
    /// `CAIRN_REQUIRE_SERVERS=1`): a PostgreSQL cell reports the saver's commits per
    /// checkpoint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn postgres_w4_concurrent_cell_counts_commits() {
        let Some(pg_url) = std::env::var("CAIRN_TEST_POSTGRES_URL")
            .ok()
            .filter(|u| !u.is_empty())
        else {
            assert_ne!(
                std::env::var("CAIRN_REQUIRE_SERVERS").as_deref(),
                Ok("1"),
                "CAIRN_REQUIRE_SERVERS=1 but CAIRN_TEST_POSTGRES_URL is not set"
            );
            return;
        };
        let env = Env {
            pg_url,
            redis_url: String::new(),
        };
        let rec = run_cell(
            Workload::W4Concurrent,
            SaverKind::Postgres,
            Durability::Sync,
            &WARMUP,
            &env,
        )
        .await;
        assert_eq!(rec["ok"], json!(true), "{rec}");
        let n = 3 * WARMUP.w4_threads * WARMUP.w4_turns;
        assert_eq!(rec["checkpoints_written"], json!(n));
        let per = rec["commits_per_checkpoint"].as_f64().expect("commits");
        // The input and START checkpoints of a turn share a commit in `sync` mode.
        assert!(per > 0.0 && per <= 2.0 / 3.0 + 1e-9, "{per}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite_default_cell_counts_commits_but_claims_no_fsyncs() {
        let rec = run_cell(
            Workload::W1,
            SaverKind::Sqlite,
            Durability::Default,
            &WARMUP,
            &env(),
        )
        .await;
        assert_eq!(rec["ok"], json!(true), "{rec}");
        assert_eq!(rec["runtime_durability"], json!("Async"));
        assert_eq!(rec["checkpoints_written"], json!(3 * WARMUP.w1_turns));
        assert!(rec["commits_per_checkpoint"].as_f64().expect("commits") > 0.0);
        assert!(rec.get("fsyncs_per_checkpoint").is_none());
        assert!(rec.get("checkpoints_per_s").is_none());
    }
}

//! Crash-kill test: a child process runs a multi-step graph with parallel branches on
//! SQLite and is killed with SIGKILL at random moments; each time it is restarted and
//! resumes. Checks that (a) the final state equals an uninterrupted run's and (b) no task
//! whose writes were saved ever ran again.
//!
//! The child is this same test binary, re-run with `CAIRN_CRASH_WORKER` set so that
//! `crash_worker_entry` plays the worker. Synchronisation is by reading the worker's
//! progress lines, never by sleeping.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use cairn_checkpoint::InMemorySaver;
use cairn_graph::{current_task, CompiledGraph, RunConfig, State, StateGraph, END, START};
use serde::{Deserialize, Serialize};
use support::{Observed, Observer};

mod support;

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Job {
    #[reducer(append)]
    log: Vec<String>,
    #[reducer(add)]
    total: i64,
    round: i64,
}

const ROUNDS: i64 = 4;
const THREAD: &str = "crash-job";

/// Appends one line to `path` and fsyncs it.
fn append_line(path: &Path, line: &str) {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .expect("open side file");
    f.write_all(format!("{line}\n").as_bytes()).expect("append");
    f.sync_data().expect("fsync");
}

fn progress(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "PROGRESS {line}");
    let _ = out.flush();
}

/// plan → (w1, w2, w3 in parallel) → merge (waits for all three) → plan again or END.
fn job_graph(side_file: Option<PathBuf>) -> StateGraph<Job> {
    let side_file = side_file.map(Arc::new);
    let mut g = StateGraph::<Job>::new();
    let record = move |node: &str| {
        let task = current_task().expect("inside a task");
        if let Some(path) = &side_file {
            append_line(path, &format!("exec {} {node} {}", task.id, task.step));
            progress(&format!("exec {node}"));
        }
    };
    let r = record.clone();
    g.add_node("plan", move |s: Arc<Job>| {
        r("plan");
        async move {
            tokio::task::yield_now().await;
            Ok(JobUpdate::default().log(vec![format!("plan@{}", s.round)]))
        }
    });
    for i in 1..=3i64 {
        let r = record.clone();
        let name = format!("w{i}");
        g.add_node(name.clone(), move |s: Arc<Job>| {
            r(&format!("w{i}"));
            async move {
                tokio::task::yield_now().await;
                Ok(JobUpdate::default()
                    .log(vec![format!("w{i}@{}", s.round)])
                    .total(i * (s.round + 1)))
            }
        });
        g.add_edge("plan", name.as_str());
    }
    let r = record.clone();
    g.add_node("merge", move |s: Arc<Job>| {
        r("merge");
        async move {
            Ok(JobUpdate::default()
                .log(vec![format!("merge@{}", s.round)])
                .round(s.round + 1))
        }
    });
    g.add_edge(START, "plan")
        .add_edge(["w1", "w2", "w3"], "merge")
        .add_conditional_edges(
            "merge",
            |s: &Job| if s.round < ROUNDS { "plan" } else { END },
        );
    g
}

/// Notes in the side file each task whose writes were durably saved, and reports progress
/// after each save.
struct SideFile(PathBuf);

impl Observer for SideFile {
    fn put_done(&self, step: Option<i64>) {
        progress(&format!("checkpoint {step:?}"));
    }
    fn writes_done(&self, task_id: &str) {
        append_line(&self.0, &format!("saved {task_id}"));
        progress("saved");
    }
}

fn input() -> JobUpdate {
    JobUpdate::default().log(vec!["start".to_string()])
}

/// The worker: starts or resumes the job on the SQLite file, prints DONE at the end.
async fn worker(db: PathBuf, side_file: PathBuf) {
    let saver = cairn_sqlite::SqliteSaver::open(&db).expect("open sqlite");
    let saver = Arc::new(Observed::new(Arc::new(saver), SideFile(side_file.clone())));
    let app: CompiledGraph<Job> = job_graph(Some(side_file)).compile(saver).expect("compile");
    let config = RunConfig::thread(THREAD).with_recursion_limit(100);
    let input = match app.get_state(config.clone()).await.expect("get_state") {
        None => Some(input()),
        Some(_) => None,
    };
    let state = app.invoke(input, config).await.expect("run");
    let json = serde_json::to_string(&state).expect("json");
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "DONE {json}");
    let _ = out.flush();
}

/// Entry point of the child process; a no-op in a normal test run.
#[test]
fn crash_worker_entry() {
    let (Ok(db), Ok(side)) = (
        std::env::var("CAIRN_CRASH_WORKER_DB"),
        std::env::var("CAIRN_CRASH_WORKER_SIDE"),
    ) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(worker(PathBuf::from(db), PathBuf::from(side)));
}

/// A small deterministic RNG (xorshift64*), so failures can be reproduced from the seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

enum Outcome {
    Killed,
    Done(Job),
}

/// Runs the worker once; kills it after `kill_after` progress lines (if it gets that far).
fn run_worker(db: &Path, side: &Path, kill_after: Option<u64>) -> Outcome {
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Command::new(exe)
        .args([
            "--exact",
            "crash_worker_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CAIRN_CRASH_WORKER_DB", db)
        .env("CAIRN_CRASH_WORKER_SIDE", side)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn worker");
    let stdout = child.stdout.take().expect("stdout");
    let mut seen = 0u64;
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("read line");
        // The test harness prints "test crash_worker_entry ... " without a line break, so
        // the worker's first line (DONE when the job had already finished) follows it.
        if let Some((_, json)) = line.split_once("DONE ") {
            let state: Job = serde_json::from_str(json).expect("final state");
            let status = child.wait().expect("wait");
            assert!(status.success(), "worker exited with {status}");
            return Outcome::Done(state);
        }
        if line.contains("PROGRESS ") {
            seen += 1;
            if kill_after == Some(seen) {
                child.kill().expect("SIGKILL the worker");
                let _ = child.wait();
                return Outcome::Killed;
            }
        }
    }
    let status = child.wait().expect("wait");
    panic!("worker ended without DONE: {status}");
}

/// Checks that no task ran after its writes were saved.
fn assert_no_rerun_after_save(side: &Path) -> (usize, usize) {
    let text = std::fs::read_to_string(side).expect("side file");
    let mut saved = std::collections::HashSet::new();
    let mut execs = 0;
    for line in text.lines() {
        let mut parts = line.split(' ');
        match (parts.next(), parts.next()) {
            (Some("exec"), Some(id)) => {
                execs += 1;
                assert!(
                    !saved.contains(id),
                    "task {id} ran again after its writes were saved: {line}"
                );
            }
            (Some("saved"), Some(id)) => {
                saved.insert(id.to_owned());
            }
            _ => panic!("unexpected side-file line {line:?}"),
        }
    }
    (execs, saved.len())
}

#[test]
fn killed_runs_resume_without_rerunning_saved_tasks() {
    // The uninterrupted run, in memory.
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let expected = rt.block_on(async {
        let app = job_graph(None)
            .compile(Arc::new(InMemorySaver::new()))
            .expect("compile");
        app.invoke(
            Some(input()),
            RunConfig::thread(THREAD).with_recursion_limit(100),
        )
        .await
        .expect("run")
    });
    assert_eq!(expected.round, ROUNDS);
    assert_eq!(expected.total, (1..=ROUNDS).map(|r| 6 * r).sum::<i64>());

    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let dir = tempfile::tempdir().expect("tempdir");
    // Progress lines of an uninterrupted run: per round 5 exec + 5 saved + 3 checkpoints,
    // plus input checkpoint and the first step.
    let total_lines = ROUNDS as u64 * 13 + 4;
    let mut kills = 0;
    let mut reruns = 0;
    for run in 0..20 {
        let db = dir.path().join(format!("run{run}.sqlite"));
        let side = dir.path().join(format!("run{run}.log"));
        let kills_this_run = 1 + rng.below(3);
        let mut result = None;
        for _ in 0..kills_this_run {
            match run_worker(&db, &side, Some(1 + rng.below(total_lines))) {
                Outcome::Killed => kills += 1,
                Outcome::Done(state) => {
                    result = Some(state);
                    break;
                }
            }
        }
        let state = match result {
            Some(state) => state,
            None => match run_worker(&db, &side, None) {
                Outcome::Done(state) => state,
                Outcome::Killed => unreachable!("no kill requested"),
            },
        };
        assert_eq!(state, expected, "run {run}: final state differs");
        let (execs, _saved) = assert_no_rerun_after_save(&side);
        let tasks = 5 * ROUNDS as usize;
        assert!(
            execs >= tasks,
            "run {run}: {execs} executions for {tasks} tasks"
        );
        reruns += execs - tasks;
    }
    assert!(kills >= 20, "only {kills} kills happened");
    eprintln!("{kills} kills; {reruns} executions lost to a kill before their writes were saved");
}

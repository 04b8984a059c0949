//! W1-W4 as `langgraph_peer.py` defines them: same state shapes, reducers, sizes, texts and
//! checks. Only graph calls (`invoke`, `get_state`, `get_state_history`) are timed; inputs are
//! built before the clock starts and every check runs after it stops.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use cairn_checkpoint::ListQuery;
use cairn_graph::{CompiledGraph, HistoryQuery, RunConfig, State, StateGraph, END, START};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::backend::{Backend, Durability};
use crate::text::{text200, Kind};
use crate::BoxError;

/// Workload sizes (the peer's FULL / QUICK / WARMUP).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sizes {
    /// W1 turns on one thread.
    pub w1_turns: usize,
    /// W2 super-steps in one invoke.
    pub w2_steps: usize,
    /// W3 invocations on one thread.
    pub w3_invocations: usize,
    /// W4 threads.
    pub w4_threads: usize,
    /// W4 turns per thread.
    pub w4_turns: usize,
}

/// The peer's FULL sizes.
pub const FULL: Sizes = Sizes {
    w1_turns: 200,
    w2_steps: 1000,
    w3_invocations: 100,
    w4_threads: 1000,
    w4_turns: 3,
};
/// The peer's QUICK sizes.
pub const QUICK: Sizes = Sizes {
    w1_turns: 20,
    w2_steps: 100,
    w3_invocations: 10,
    w4_threads: 20,
    w4_turns: 3,
};
/// The peer's WARMUP sizes.
pub const WARMUP: Sizes = Sizes {
    w1_turns: 5,
    w2_steps: 20,
    w3_invocations: 3,
    w4_threads: 3,
    w4_turns: 3,
};
/// Parallel nodes in W3.
pub const FANOUT: usize = 8;
/// Checkpoints read for the "first page" of history.
pub const HISTORY_PAGE: usize = 10;

/// A chat message: the peer's `{"role": ..., "content": ...}` dict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `user` or `assistant`.
    pub role: String,
    /// 200 characters from [`text200`].
    pub content: String,
}

impl Message {
    fn new(kind: Kind, i: u64) -> Self {
        let role = match kind {
            Kind::User => "user",
            Kind::Assistant => "assistant",
        };
        Message {
            role: role.into(),
            content: text200(kind, i),
        }
    }
}

/// W1 / W4 state: `messages: Annotated[list[dict], operator.add]`.
#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
pub struct Chat {
    /// The conversation.
    #[reducer(append)]
    pub messages: Vec<Message>,
}

/// W2 state: `count: int` (last value).
#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
pub struct Loop {
    /// Incremented by each step.
    pub count: i64,
}

/// W3 state: `items: Annotated[list[int], operator.add]`.
#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
pub struct Fan {
    /// One item per fan-out node per invocation.
    #[reducer(append)]
    pub items: Vec<i64>,
}

fn compile<S: State>(g: &StateGraph<S>, be: &Backend) -> Result<CompiledGraph<S>, BoxError> {
    Ok(match &be.saver {
        Some(s) => g.compile(s.clone())?,
        None => g.compile_without_saver()?,
    })
}

/// The chat graph; `replies[n]` is the pre-generated reply to a state of `n` messages (the
/// peer pre-fills its text cache the same way, so the node costs a lookup).
fn build_chat(be: &Backend, replies: Arc<Vec<String>>) -> Result<CompiledGraph<Chat>, BoxError> {
    let mut g = StateGraph::<Chat>::new();
    g.add_sync_node("reply", move |s: &Chat| {
        let n = s.messages.len();
        let content = replies
            .get(n)
            .cloned()
            .unwrap_or_else(|| text200(Kind::Assistant, n as u64));
        Ok(ChatUpdate::default().messages(vec![Message {
            role: "assistant".into(),
            content,
        }]))
    })
    .add_edge(START, "reply")
    .add_edge("reply", END);
    compile(&g, be)
}

fn replies(max_messages: usize) -> Arc<Vec<String>> {
    Arc::new(
        (0..=max_messages)
            .map(|n| text200(Kind::Assistant, n as u64))
            .collect(),
    )
}

fn check(cond: bool, msg: impl Into<String>) -> Result<(), BoxError> {
    if cond {
        Ok(())
    } else {
        Err(msg.into().into())
    }
}

/// Nearest-rank percentile of an ascending slice.
fn pct(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let k = ((q * sorted.len() as f64).ceil() as usize).max(1);
    sorted[k - 1]
}

fn lat_stats(lat: &[f64], out: &mut Map<String, Value>) {
    let mut s = lat.to_vec();
    s.sort_by(f64::total_cmp);
    out.insert("p50_ms".into(), json!(pct(&s, 0.5) * 1e3));
    out.insert("p99_ms".into(), json!(pct(&s, 0.99) * 1e3));
    out.insert(
        "min_ms".into(),
        json!(s.first().copied().unwrap_or(f64::NAN) * 1e3),
    );
    out.insert(
        "max_ms".into(),
        json!(s.last().copied().unwrap_or(f64::NAN) * 1e3),
    );
    out.insert(
        "mean_ms".into(),
        json!(s.iter().sum::<f64>() / s.len().max(1) as f64 * 1e3),
    );
}

/// Process CPU time (user + system) in seconds, from /proc/self/stat (0 elsewhere).
fn cpu_time() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}

/// The messages plain W1 holds after `turns` turns.
fn w1_expected(turns: usize) -> Vec<Message> {
    let mut out = Vec::with_capacity(2 * turns);
    for i in 0..turns as u64 {
        out.push(Message::new(Kind::User, i));
        out.push(Message::new(Kind::Assistant, 2 * i + 1));
    }
    out
}

/// The message counts of W1's history after `turns` turns: three checkpoints per turn
/// (input, START step, `reply` step), or in exit durability only the one saved when each
/// turn ends.
fn w1_history_lengths(turns: usize, durability: Durability) -> Vec<usize> {
    if durability == Durability::Exit {
        (0..turns).map(|i| 2 * i + 2).collect()
    } else {
        (0..turns)
            .flat_map(|i| [2 * i, 2 * i + 1, 2 * i + 2])
            .collect()
    }
}

/// W1 chat: one thread, `w1_turns` turns of one user message each.
pub async fn w1_chat(be: &Backend, sz: &Sizes, tag: &str) -> Result<Map<String, Value>, BoxError> {
    let turns = sz.w1_turns;
    let graph = build_chat(be, replies(2 * turns))?;
    let cfg = be.config(format!("w1-{tag}"));
    let work: Vec<(ChatUpdate, RunConfig)> = (0..turns as u64)
        .map(|i| {
            (
                ChatUpdate::default().messages(vec![Message::new(Kind::User, i)]),
                cfg.clone(),
            )
        })
        .collect();
    let mut lat = Vec::with_capacity(turns);
    let mut out = Arc::new(Chat::default());
    let cpu0 = cpu_time();
    for (input, c) in work {
        // Each turn's result is dropped before the next turn, as a request handler drops
        // it once answered, so the runtime's cached state is not shared (not copied).
        drop(std::mem::take(&mut out));
        let t0 = Instant::now();
        out = graph.invoke_shared(Some(input), c).await?;
        lat.push(t0.elapsed().as_secs_f64());
    }
    let cpu = cpu_time() - cpu0;
    let total: f64 = lat.iter().sum();
    let mut res = Map::new();
    res.insert("turns".into(), json!(turns));
    res.insert("total_s".into(), json!(total));
    res.insert("turns_per_s".into(), json!(turns as f64 / total));
    res.insert("cpu_s".into(), json!(cpu));
    lat_stats(&lat, &mut res);
    let Some(saver) = be.saver.clone() else {
        check(
            out.messages.len() == 2,
            format!(
                "no-checkpointer turn should see 2 messages, saw {}",
                out.messages.len()
            ),
        )?;
        return Ok(res);
    };
    check(
        out.messages.len() == 2 * turns,
        format!(
            "expected {} messages, saw {}",
            2 * turns,
            out.messages.len()
        ),
    )?;

    let t0 = Instant::now();
    let snap = graph.get_state(cfg.clone()).await?;
    res.insert(
        "get_state_ms".into(),
        json!(t0.elapsed().as_secs_f64() * 1e3),
    );
    let t0 = Instant::now();
    let page: Vec<_> = graph
        .get_state_history(cfg.clone(), HistoryQuery::default().limit(HISTORY_PAGE))
        .try_collect()
        .await?;
    res.insert(
        "get_state_history_page_ms".into(),
        json!(t0.elapsed().as_secs_f64() * 1e3),
    );
    res.insert("history_page_size".into(), json!(HISTORY_PAGE));
    let t0 = Instant::now();
    let hist: Vec<_> = graph
        .get_state_history(cfg.clone(), HistoryQuery::default())
        .try_collect()
        .await?;
    res.insert(
        "get_state_history_ms".into(),
        json!(t0.elapsed().as_secs_f64() * 1e3),
    );
    res.insert("checkpoints".into(), json!(hist.len()));

    // Untimed checks: content equal to the expected conversation everywhere.
    let snap = snap.ok_or("get_state found no checkpoint")?;
    check(
        snap.values.messages.len() == 2 * turns,
        "get_state returned wrong message count",
    )?;
    let expected = w1_expected(turns);
    check(
        out.messages == expected,
        "invoke output: messages differ from plain W1's",
    )?;
    check(
        snap.values.messages == expected,
        "get_state: messages differ from plain W1's",
    )?;
    check(
        page.len() == HISTORY_PAGE.min(hist.len()),
        "history page has the wrong length",
    )?;
    let mut lens = Vec::with_capacity(hist.len());
    for h in &hist {
        let m = &h.values.messages;
        check(
            m[..] == expected[..m.len().min(expected.len())],
            "history: messages differ from plain W1's",
        )?;
        lens.push(m.len());
    }
    lens.sort_unstable();
    let mut want = w1_history_lengths(turns, be.durability);
    want.sort_unstable();
    check(
        lens == want,
        "history message counts differ from plain W1's",
    )?;

    // Untimed: checkpoints carrying a `messages` value, and its distinct versions.
    let listed = saver.list(&ListQuery::thread(format!("w1-{tag}"))).await?;
    let mut versions = std::collections::BTreeSet::new();
    let mut n_ck = 0;
    for t in &listed {
        if t.checkpoint.channel_values.contains_key("messages") {
            n_ck += 1;
            if let Some(v) = t.checkpoint.channel_versions.get("messages") {
                versions.insert(v.to_storage_string());
            }
        }
    }
    res.insert("ckpts_with_messages_value".into(), json!(n_ck));
    res.insert("messages_value_versions".into(), json!(versions.len()));
    Ok(res)
}

/// W2 loop: one invoke, `work` increments `count` and loops back until `w2_steps`.
pub async fn w2_loop(be: &Backend, sz: &Sizes, tag: &str) -> Result<Map<String, Value>, BoxError> {
    let n = sz.w2_steps as i64;
    let mut g = StateGraph::<Loop>::new();
    g.add_sync_node("work", |s: &Loop| {
        Ok(LoopUpdate::default().count(s.count + 1))
    })
    .add_edge(START, "work")
    .add_conditional_edges(
        "work",
        move |s: &Loop| if s.count >= n { END } else { "work" },
    );
    let graph = compile(&g, be)?;
    let cfg = be
        .config(format!("w2-{tag}"))
        .with_recursion_limit(sz.w2_steps + 10);
    let input = LoopUpdate::default().count(0);
    let c = cfg.clone();
    let cpu0 = cpu_time();
    let t0 = Instant::now();
    let out = graph.invoke(Some(input), c).await?;
    let el = t0.elapsed().as_secs_f64();
    let cpu = cpu_time() - cpu0;
    check(
        out.count == n,
        format!("loop ended at {} not {n}", out.count),
    )?;
    let mut res = Map::new();
    res.insert("steps".into(), json!(n));
    res.insert("total_s".into(), json!(el));
    res.insert("steps_per_s".into(), json!(n as f64 / el));
    res.insert("ms_per_step".into(), json!(el * 1e3 / n as f64));
    res.insert("cpu_s".into(), json!(cpu));
    if be.saver.is_some() {
        let hist: Vec<_> = graph
            .get_state_history(cfg, HistoryQuery::default())
            .try_collect()
            .await?;
        res.insert("checkpoints".into(), json!(hist.len()));
    }
    Ok(res)
}

/// W3 fan-out: START fans out to 8 parallel nodes, each appending its index.
pub async fn w3_fanout(
    be: &Backend,
    sz: &Sizes,
    tag: &str,
) -> Result<Map<String, Value>, BoxError> {
    let mut g = StateGraph::<Fan>::new();
    for i in 0..FANOUT {
        let name = format!("n{i}");
        g.add_sync_node(name.clone(), move |_s: &Fan| {
            Ok(FanUpdate::default().items(vec![i as i64]))
        })
        .add_edge(START, name.clone())
        .add_edge(name, END);
    }
    let graph = compile(&g, be)?;
    let n = sz.w3_invocations;
    let cfg = be.config(format!("w3-{tag}"));
    let work: Vec<(FanUpdate, RunConfig)> = (0..n)
        .map(|_| (FanUpdate::default().items(Vec::new()), cfg.clone()))
        .collect();
    let mut lat = Vec::with_capacity(n);
    let mut out = Arc::new(Fan::default());
    let cpu0 = cpu_time();
    for (input, c) in work {
        drop(std::mem::take(&mut out));
        let t0 = Instant::now();
        out = graph.invoke_shared(Some(input), c).await?;
        lat.push(t0.elapsed().as_secs_f64());
    }
    let cpu = cpu_time() - cpu0;
    let expect = FANOUT * if be.saver.is_some() { n } else { 1 };
    check(
        out.items.len() == expect,
        format!("expected {expect} items, saw {}", out.items.len()),
    )?;
    let mut last: Vec<i64> = out.items[out.items.len() - FANOUT..].to_vec();
    last.sort_unstable();
    check(
        last == (0..FANOUT as i64).collect::<Vec<_>>(),
        "fan-out items wrong",
    )?;
    let total: f64 = lat.iter().sum();
    let mut res = Map::new();
    res.insert("invocations".into(), json!(n));
    res.insert("total_s".into(), json!(total));
    res.insert("invocations_per_s".into(), json!(n as f64 / total));
    res.insert("cpu_s".into(), json!(cpu));
    lat_stats(&lat, &mut res);
    if be.saver.is_some() {
        let hist: Vec<_> = graph
            .get_state_history(cfg, HistoryQuery::default())
            .try_collect()
            .await?;
        res.insert("checkpoints".into(), json!(hist.len()));
    }
    Ok(res)
}

/// W4 threads: `w4_threads` threads × `w4_turns` turns of W1's graph. `concurrency` 1 runs
/// them thread-major, one after another, like the peer; more runs that many threads at once
/// (each thread's turns stay in order) and reports wall-clock throughput.
pub async fn w4_threads(
    be: &Backend,
    sz: &Sizes,
    tag: &str,
    concurrency: usize,
) -> Result<Map<String, Value>, BoxError> {
    let graph = build_chat(be, replies(2 * sz.w4_turns))?;
    let (nthreads, nturns) = (sz.w4_threads, sz.w4_turns);
    let work: Vec<Vec<(ChatUpdate, RunConfig)>> = (0..nthreads)
        .map(|t| {
            let cfg = be.config(format!("w4-{tag}-{t:05}"));
            (0..nturns)
                .map(|k| {
                    let m = Message::new(Kind::User, (t * nturns + k) as u64);
                    (ChatUpdate::default().messages(vec![m]), cfg.clone())
                })
                .collect()
        })
        .collect();
    let expect = if be.saver.is_some() { 2 * nturns } else { 2 };
    let mut res = Map::new();
    let cpu0 = cpu_time();
    let (lat, total) = if concurrency <= 1 {
        let mut lat = Vec::with_capacity(nthreads * nturns);
        let mut out = Arc::new(Chat::default());
        for thread in work {
            for (input, c) in thread {
                drop(std::mem::take(&mut out));
                let t0 = Instant::now();
                out = graph.invoke_shared(Some(input), c).await?;
                lat.push(t0.elapsed().as_secs_f64());
            }
        }
        check(
            out.messages.len() == expect,
            format!(
                "last thread has {} messages, expected {expect}",
                out.messages.len()
            ),
        )?;
        let total = lat.iter().sum::<f64>();
        (lat, total)
    } else {
        let queue = Arc::new(std::sync::Mutex::new(
            work.into_iter().map(Some).collect::<Vec<_>>(),
        ));
        let next = Arc::new(AtomicUsize::new(0));
        let t0 = Instant::now();
        let mut handles = Vec::with_capacity(concurrency);
        for _ in 0..concurrency.min(nthreads) {
            let (graph, queue, next) = (graph.clone(), queue.clone(), next.clone());
            handles.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(thread) = queue
                        .lock()
                        .map_err(|_| "queue poisoned")?
                        .get_mut(i)
                        .and_then(Option::take)
                    else {
                        break;
                    };
                    let mut out = Arc::new(Chat::default());
                    for (input, c) in thread {
                        drop(std::mem::take(&mut out));
                        let t = Instant::now();
                        out = graph.invoke_shared(Some(input), c).await?;
                        lat.push(t.elapsed().as_secs_f64());
                    }
                    if out.messages.len() != expect {
                        return Err(format!(
                            "thread {i} has {} messages, expected {expect}",
                            out.messages.len()
                        )
                        .into());
                    }
                }
                Ok::<_, BoxError>(lat)
            }));
        }
        let mut lat = Vec::with_capacity(nthreads * nturns);
        for h in handles {
            lat.extend(h.await??);
        }
        (lat, t0.elapsed().as_secs_f64())
    };
    let cpu = cpu_time() - cpu0;
    check(
        lat.len() == nthreads * nturns,
        format!("ran {} turns, expected {}", lat.len(), nthreads * nturns),
    )?;
    res.insert("threads".into(), json!(nthreads));
    res.insert("turns_per_thread".into(), json!(nturns));
    res.insert("turns".into(), json!(nthreads * nturns));
    res.insert("concurrency".into(), json!(concurrency));
    res.insert("total_s".into(), json!(total));
    res.insert(
        "total_s_kind".into(),
        json!(if concurrency <= 1 {
            "sum of per-invoke latencies"
        } else {
            "wall clock of the whole concurrent run"
        }),
    );
    res.insert(
        "turns_per_s".into(),
        json!((nthreads * nturns) as f64 / total),
    );
    res.insert("cpu_s".into(), json!(cpu));
    lat_stats(&lat, &mut res);
    Ok(res)
}

/// W1 storage growth on one saver: `turns` turns, storage sampled after each of `samples`.
pub async fn w1_growth(
    be: &mut Backend,
    turns: usize,
    samples: &[usize],
) -> Result<Vec<Value>, BoxError> {
    let graph = build_chat(be, replies(2 * turns))?;
    let cfg = be.config("growth");
    let work: Vec<(ChatUpdate, RunConfig)> = (0..turns as u64)
        .map(|i| {
            (
                ChatUpdate::default().messages(vec![Message::new(Kind::User, i)]),
                cfg.clone(),
            )
        })
        .collect();
    let mut rows = Vec::new();
    let mut seg: Vec<f64> = Vec::new();
    for (i, (input, c)) in work.into_iter().enumerate() {
        let t0 = Instant::now();
        graph.invoke(Some(input), c).await?;
        seg.push(t0.elapsed().as_secs_f64());
        let turn = i + 1;
        if samples.contains(&turn) {
            let mut row = Map::new();
            row.insert("turn".into(), json!(turn));
            row.insert("segment_turns".into(), json!(seg.len()));
            row.insert(
                "segment_ms_per_turn".into(),
                json!(seg.iter().sum::<f64>() / seg.len() as f64 * 1e3),
            );
            let mut s = seg.clone();
            s.sort_by(f64::total_cmp);
            row.insert("segment_p50_ms".into(), json!(pct(&s, 0.5) * 1e3));
            if let Some(st) = be.storage().await? {
                row.extend(st);
            }
            rows.push(Value::Object(row));
            seg.clear();
        }
    }
    let snap = graph.get_state(cfg).await?.ok_or("growth: no state")?;
    check(
        snap.values.messages == w1_expected(turns),
        "growth get_state: messages differ from plain W1's",
    )?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Env, SaverKind};

    fn env() -> Env {
        Env {
            pg_url: String::new(),
            redis_url: String::new(),
        }
    }

    async fn open(kind: SaverKind) -> Backend {
        open_in(kind, Durability::Default).await
    }

    async fn open_in(kind: SaverKind, mode: Durability) -> Backend {
        Backend::open(kind, mode, &env())
            .await
            .expect("open backend")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn exit_durability_saves_one_checkpoint_per_invoke() {
        for kind in [SaverKind::Memory, SaverKind::Sqlite] {
            let be = open_in(kind, Durability::Exit).await;
            let w1 = w1_chat(&be, &WARMUP, "t").await.expect("w1");
            assert_eq!(w1["checkpoints"], json!(WARMUP.w1_turns), "{kind:?}");
            let w2 = w2_loop(&be, &WARMUP, "t").await.expect("w2");
            assert_eq!(w2["checkpoints"], json!(1), "{kind:?}");
            let w3 = w3_fanout(&be, &WARMUP, "t").await.expect("w3");
            assert_eq!(w3["checkpoints"], json!(WARMUP.w3_invocations), "{kind:?}");
            let n = WARMUP.w1_turns + 1 + WARMUP.w3_invocations;
            assert_eq!(be.count_checkpoints().await.expect("count"), Some(n));
            if kind == SaverKind::Sqlite {
                // A finished run saves its one checkpoint and no task writes.
                let stats = be.sqlite_writer_stats().expect("sqlite stats");
                assert_eq!(stats.batches, n as u64);
            }
            be.close().await.expect("close");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sync_durability_on_sqlite_writes_every_step() {
        let be = open_in(SaverKind::Sqlite, Durability::Sync).await;
        assert_eq!(be.sqlite_writer_stats().expect("stats").batches, 0);
        let w1 = w1_chat(&be, &WARMUP, "t").await.expect("w1");
        assert_eq!(w1["checkpoints"], json!(3 * WARMUP.w1_turns));
        // Three checkpoints per turn in two writer requests: the input checkpoint goes with
        // the START step's, the reply's with its task's writes.
        let stats = be.sqlite_writer_stats().expect("stats");
        assert_eq!(stats.requests, 2 * WARMUP.w1_turns as u64);
        assert!(stats.batches > 0 && stats.batches <= stats.requests);
        be.close().await.expect("close");
    }

    #[test]
    fn w1_history_lengths_per_mode() {
        assert_eq!(w1_history_lengths(2, Durability::Exit), vec![2, 4]);
        assert_eq!(
            w1_history_lengths(2, Durability::Sync),
            vec![0, 1, 2, 2, 3, 4]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn w1_runs_and_checks_on_memory_and_sqlite() {
        for kind in [SaverKind::Memory, SaverKind::Sqlite] {
            let mut be = open(kind).await;
            let res = w1_chat(&be, &WARMUP, "t").await.expect("w1");
            assert_eq!(res["checkpoints"], json!(3 * WARMUP.w1_turns));
            assert_eq!(res["turns"], json!(WARMUP.w1_turns));
            let st = be.storage().await.expect("storage").expect("some");
            assert!(st["bytes"].as_u64().expect("bytes") > 0);
            be.close().await.expect("close");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_saver_each_turn_sees_two_messages() {
        let be = open(SaverKind::None).await;
        let res = w1_chat(&be, &WARMUP, "t").await.expect("w1");
        assert!(res.get("checkpoints").is_none());
        w4_threads(&be, &WARMUP, "t", 1).await.expect("w4");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn w2_w3_w4_do_their_work_on_memory() {
        let be = open(SaverKind::Memory).await;
        let w2 = w2_loop(&be, &WARMUP, "t").await.expect("w2");
        // input checkpoint, the START step, then one per `work` step (as LangGraph)
        assert_eq!(w2["checkpoints"], json!(WARMUP.w2_steps + 2));
        let w3 = w3_fanout(&be, &WARMUP, "t").await.expect("w3");
        assert_eq!(w3["checkpoints"], json!(3 * WARMUP.w3_invocations));
        let w4 = w4_threads(&be, &WARMUP, "seq", 1).await.expect("w4");
        assert_eq!(w4["turns"], json!(WARMUP.w4_threads * WARMUP.w4_turns));
        let w4c = w4_threads(&be, &WARMUP, "conc", 64)
            .await
            .expect("w4 concurrent");
        assert_eq!(w4c["turns"], json!(WARMUP.w4_threads * WARMUP.w4_turns));
    }

    #[test]
    fn expected_w1_conversation_matches_the_peers_numbering() {
        let e = w1_expected(2);
        assert_eq!(e[0].content, text200(Kind::User, 0));
        assert_eq!(e[1].content, text200(Kind::Assistant, 1));
        assert_eq!(e[3].content, text200(Kind::Assistant, 3));
        assert_eq!(e[3].role, "assistant");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(pct(&v, 0.5), 50.0);
        assert_eq!(pct(&v, 0.99), 99.0);
        assert_eq!(pct(&[3.0], 0.99), 3.0);
    }
}

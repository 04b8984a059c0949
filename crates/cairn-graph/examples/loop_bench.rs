//! Per-step cost of the runtime: `cargo run --release -p cairn-graph --example loop_bench`.
//!
//! - W2 (loop): a 1-field `{n}` graph whose node increments `n` and loops back until 1000;
//!   each invoke is a new thread. Reports super-steps/s without a saver, on the in-memory
//!   saver and on SQLite (a temporary file), default durability.
//! - W1 (chat): a `{messages: append}` graph whose one node replies with a 200-char message;
//!   200 turns per thread (more turns go to further threads), each an invoke with one user
//!   message. Reports turns/s on the in-memory saver and on SQLite.
//!
//! - History: one W1 thread of 200 turns (600 checkpoints), then its whole `get_state_history`
//!   with values read again and again; reports milliseconds per whole history, and per
//!   `list` of the same checkpoints straight from the saver (the part the saver takes).
//!
//! Optional arguments: `[loop invokes] [chat turns] [filter]` (defaults 100, 200, and every
//! case; a filter such as `loop-mem` or `chat-sqlite` runs only the cases whose key contains it).

use std::sync::Arc;
use std::time::Instant;

use cairn_checkpoint::{CheckpointSaver, InMemorySaver};
use cairn_graph::{RunConfig, State, StateGraph, END, START};
use cairn_sqlite::SqliteSaver;

#[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
struct Counter {
    n: u64,
}

fn loop_graph(limit: u64) -> StateGraph<Counter> {
    let mut g = StateGraph::<Counter>::new();
    g.add_sync_node("work", |s| Ok(CounterUpdate::default().n(s.n + 1)))
        .add_edge(START, "work")
        .add_conditional_edges(
            "work",
            move |s: &Counter| if s.n < limit { "work" } else { END },
        );
    g
}

#[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize)]
struct Message {
    role: String,
    content: String,
}

#[derive(Clone, Default, Debug, serde::Serialize, serde::Deserialize, State)]
struct Chat {
    #[reducer(append)]
    messages: Vec<Message>,
}

fn chat_graph() -> StateGraph<Chat> {
    let mut g = StateGraph::<Chat>::new();
    g.add_sync_node("reply", |_s| {
        Ok(ChatUpdate::default().messages(vec![Message {
            role: "assistant".into(),
            content: "x".repeat(200),
        }]))
    })
    .add_edge(START, "reply")
    .add_edge("reply", END);
    g
}

type Saver = Option<Arc<dyn CheckpointSaver>>;

async fn w2(name: &str, saver: Saver, invokes: usize) -> Result<(), Box<dyn std::error::Error>> {
    const LIMIT: u64 = 1000;
    let g = loop_graph(LIMIT);
    let app = match saver {
        Some(s) => g.compile(s)?,
        None => g.compile_without_saver()?,
    };
    let mut steps = 0u64;
    let t = Instant::now();
    for i in 0..invokes {
        let config =
            RunConfig::thread(format!("loop-{i}")).with_recursion_limit(LIMIT as usize + 10);
        let out = app.invoke(Some(CounterUpdate::default()), config).await?;
        steps += out.n;
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "W2 loop {name:<14} {steps:>7} steps in {secs:.3}s = {:>9.0} steps/s",
        steps as f64 / secs
    );
    Ok(())
}

/// Turns per chat thread: W1's length; more turns go to further threads.
const TURNS_PER_THREAD: usize = 200;

async fn w1(
    name: &str,
    saver: Arc<dyn CheckpointSaver>,
    turns: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let app = chat_graph().compile(saver)?;
    let t = Instant::now();
    let mut len = 0;
    for i in 0..turns {
        let config = RunConfig::thread(format!("chat-{}", i / TURNS_PER_THREAD));
        let update = ChatUpdate::default().messages(vec![Message {
            role: "user".into(),
            content: format!("message {i}"),
        }]);
        // The shared state: no copy of the growing list per turn.
        len = app
            .invoke_shared(Some(update), config)
            .await?
            .messages
            .len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "W1 chat {name:<14} {turns:>7} turns in {secs:.3}s = {:>9.0} turns/s ({len} messages in the last thread)",
        turns as f64 / secs
    );
    Ok(())
}

async fn history(
    name: &str,
    saver: Arc<dyn CheckpointSaver>,
    reads: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    use futures::TryStreamExt;
    let list_saver = saver.clone();
    let app = chat_graph().compile(saver)?;
    let config = RunConfig::thread("history");
    for i in 0..TURNS_PER_THREAD {
        let update = ChatUpdate::default().messages(vec![Message {
            role: "user".into(),
            content: format!("{i:>6}{}", "u".repeat(194)),
        }]);
        app.invoke_shared(Some(update), config.clone()).await?;
    }
    let t = Instant::now();
    let mut items = 0;
    for _ in 0..reads {
        let all: Vec<_> = app
            .get_state_history(config.clone(), Default::default())
            .try_collect()
            .await?;
        items += all.iter().map(|s| s.values.messages.len()).sum::<usize>();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / reads as f64;
    println!("History {name:<14} {ms:>8.2} ms per whole history ({items} messages read)");
    let t = Instant::now();
    let mut listed = 0;
    for _ in 0..reads {
        let all = list_saver
            .list(&cairn_checkpoint::ListQuery::thread("history"))
            .await?;
        listed += all.len();
    }
    let ms = t.elapsed().as_secs_f64() * 1e3 / reads as f64;
    println!("List    {name:<14} {ms:>8.2} ms per list ({listed} checkpoints listed)");
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let invokes: usize = args.next().map_or(Ok(100), |s| s.parse())?;
    let turns: usize = args.next().map_or(Ok(200), |s| s.parse())?;
    let filter = args.next().unwrap_or_default();
    let run = |key: &str| key.contains(filter.as_str());
    let dir = tempfile::tempdir()?;

    if run("loop-none") {
        w2("no saver", None, invokes * 10).await?;
    }
    if run("loop-mem") {
        w2(
            "InMemorySaver",
            Some(Arc::new(InMemorySaver::new())),
            invokes,
        )
        .await?;
    }
    if run("loop-sqlite") {
        let sqlite = Arc::new(SqliteSaver::open(dir.path().join("loop.db"))?);
        w2("SqliteSaver", Some(sqlite), (invokes / 10).max(1)).await?;
    }
    if run("chat-mem") {
        w1("InMemorySaver", Arc::new(InMemorySaver::new()), turns).await?;
    }
    if run("chat-sqlite") {
        let sqlite = Arc::new(SqliteSaver::open(dir.path().join("chat.db"))?);
        w1("SqliteSaver", sqlite, turns).await?;
    }
    if run("history-mem") {
        history(
            "InMemorySaver",
            Arc::new(InMemorySaver::new()),
            invokes / 10 + 1,
        )
        .await?;
    }
    if run("history-sqlite") {
        let sqlite = Arc::new(SqliteSaver::open(dir.path().join("history.db"))?);
        history("SqliteSaver", sqlite, invokes / 10 + 1).await?;
    }
    Ok(())
}

//! A chat agent whose memory is a Cairn thread stored in SQLite: each turn is saved as
//! checkpoints, so a later turn on the same thread — even in another process — sees the
//! earlier ones, while another thread starts from nothing.
//!
//! ```text
//! # scripted demo: 3 turns on each of two threads, in a temporary database
//! cargo run -p cairn-graph --example chat_memory
//! # one turn per call, remembered in ./chat-memory.db (thread "default")
//! cargo run -p cairn-graph --example chat_memory -- "Hi, my name is Ada"
//! cargo run -p cairn-graph --example chat_memory -- "What is my name?"
//! cargo run -p cairn-graph --example chat_memory -- --thread other "What is my name?"
//! cargo run -p cairn-graph --example chat_memory -- --db /tmp/chat.db --thread t1 "I like tea"
//! ```

use std::process::ExitCode;
use std::sync::Arc;

use cairn_graph::{RunConfig, State, StateGraph, END, START};
use cairn_sqlite::SqliteSaver;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Message {
    role: String,
    content: String,
}

fn message(role: &str, content: &str) -> Message {
    let (role, content) = (role.to_owned(), content.to_owned());
    Message { role, content }
}

/// The whole conversation; new messages are appended to it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, State)]
struct Chat {
    #[reducer(append)]
    messages: Vec<Message>,
}

fn user_turns(messages: &[Message]) -> usize {
    messages.iter().filter(|m| m.role == "user").count()
}

/// The text after `marker` (matched case-insensitively) up to the end of the sentence.
fn after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let start = text.to_ascii_lowercase().find(marker)? + marker.len();
    let rest = text[start..].trim_start();
    let end = rest.find(['.', ',', '!', '?', ';']).unwrap_or(rest.len());
    Some(rest[..end].trim()).filter(|s| !s.is_empty())
}

/// A deterministic stand-in for a language model that answers from the conversation so far.
fn fake_model(history: &[Message]) -> String {
    let said = |marker: &str| -> Vec<&str> {
        let user = history.iter().filter(|m| m.role == "user");
        user.filter_map(|m| after(&m.content, marker)).collect()
    };
    let Some(text) = history.last().map(|m| m.content.as_str()) else {
        return "Hello! What can I do for you?".to_owned();
    };
    let last = text.to_ascii_lowercase();
    if let Some(name) = after(text, "my name is ") {
        format!("Nice to meet you, {name}!")
    } else if last.contains("my name") {
        match said("my name is ").last() {
            Some(name) => format!("You told me your name is {name}."),
            None => "You haven't told me your name yet.".to_owned(),
        }
    } else if last.contains("what do") && last.contains("like") {
        match said("i like ").as_slice() {
            [] => "You haven't told me what you like.".to_owned(),
            likes => format!("You like {}.", likes.join(" and ")),
        }
    } else if let Some(thing) = after(text, "i like ") {
        format!("Noted: you like {thing}.")
    } else {
        let turn = user_turns(history);
        format!("I hear you (that's your message number {turn} on this thread).")
    }
}

fn build(saver: SqliteSaver) -> Result<cairn_graph::CompiledGraph<Chat>, cairn_graph::GraphError> {
    let mut graph = StateGraph::<Chat>::new();
    graph
        .add_sync_node("reply", |chat: &Chat| {
            let answer = message("assistant", &fake_model(&chat.messages));
            Ok(ChatUpdate::default().messages(vec![answer]))
        })
        .add_edge(START, "reply")
        .add_edge("reply", END);
    graph.compile(Arc::new(saver))
}

/// Sends `text` on `thread` and returns the conversation so far, reply included.
async fn turn(db: &str, thread: &str, text: &str) -> Result<Chat, Box<dyn std::error::Error>> {
    // Opening the store anew each turn shows the memory lives in the file, not the process.
    let app = build(SqliteSaver::open(db)?)?;
    let input = ChatUpdate::default().messages(vec![message("user", text)]);
    Ok(app.invoke(Some(input), RunConfig::thread(thread)).await?)
}

/// Two conversations, interleaved turn by turn, in a temporary database.
async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("chat-memory.db").display().to_string();
    let script = [
        ("ada", "Hi, my name is Ada."),
        ("bob", "Hello there!"),
        ("ada", "I like tea and compilers."),
        ("bob", "What is my name?"),
        ("ada", "What is my name?"),
        ("bob", "What do I like?"),
    ];
    for (thread, line) in script {
        turn(&db, thread, line).await?;
    }
    let app = build(SqliteSaver::open(&db)?)?;
    for thread in ["ada", "bob"] {
        let Some(snapshot) = app.get_state(RunConfig::thread(thread)).await? else {
            continue;
        };
        println!("--- thread {thread:?} ---");
        for m in &snapshot.values.messages {
            println!("{:>9}: {}", m.role, m.content);
        }
        let turns = user_turns(&snapshot.values.messages);
        let step = snapshot.metadata.step.unwrap_or_default();
        println!("({turns} user turns, last checkpoint at step {step})\n");
    }
    Ok(())
}

const USAGE: &str = "usage: chat_memory [--db PATH] [--thread ID] [MESSAGE...]
  without MESSAGE: scripted 3-turn conversation on two threads (temporary database)
  --db PATH    SQLite file (default ./chat-memory.db)
  --thread ID  conversation thread (default \"default\")";

#[tokio::main]
async fn main() -> ExitCode {
    let (mut db, mut thread, mut words) = (None, None, Vec::new());
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--db" => &mut db,
            "--thread" => &mut thread,
            flag if flag.starts_with("--") => {
                eprintln!("unknown option {flag}\n{USAGE}");
                return ExitCode::from(2);
            }
            _ => {
                words.push(arg);
                continue;
            }
        };
        match args.next() {
            Some(value) if !value.is_empty() => *slot = Some(value),
            _ => {
                eprintln!("{arg} needs a value\n{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let result = if words.is_empty() {
        if db.is_some() || thread.is_some() {
            eprintln!("--db and --thread need a MESSAGE\n{USAGE}");
            return ExitCode::from(2);
        }
        demo().await
    } else {
        let db = db.unwrap_or_else(|| "./chat-memory.db".to_owned());
        let thread = thread.unwrap_or_else(|| "default".to_owned());
        turn(&db, &thread, &words.join(" ")).await.map(|chat| {
            let reply = chat.messages.last().map_or("", |m| m.content.as_str());
            let turns = user_turns(&chat.messages);
            println!("{reply}\n(thread {thread:?} in {db}: {turns} user turn(s))");
        })
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

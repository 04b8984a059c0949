//! A human approval flow on SQLite, driven from the command line across process restarts:
//! `draft` writes a text, `review` stops the run with `interrupt()` until a human answers,
//! then the text is published, edited and published, or redrafted and reviewed again.
//!
//! Each command below is a separate process resuming the same thread from the file:
//!
//! ```sh
//! cargo run -p cairn-graph --example human_approval -- start            # draft, then wait for review
//! cargo run -p cairn-graph --example human_approval -- status           # where the thread waits
//! cargo run -p cairn-graph --example human_approval -- reject           # redraft, wait again
//! cargo run -p cairn-graph --example human_approval -- edit "new text"  # publish the edited text
//! cargo run -p cairn-graph --example human_approval -- approve          # or publish as drafted
//! ```
//!
//! Options (before the command): `--db PATH` (default `human_approval.sqlite` in the
//! current directory) and `--thread ID` (default `doc-1`). `start` on a thread that already
//! exists starts a new draft on it.

use std::sync::Arc;

use cairn_graph::{
    interrupt, Command, NodeOptions, RunConfig, RunOutcome, State, StateGraph, END, START,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
struct Article {
    /// The current text.
    text: String,
    /// How many drafts were written.
    #[reducer(add)]
    drafts: u32,
    /// What happened, in order.
    #[reducer(append)]
    log: Vec<String>,
    /// Set once published.
    published: bool,
}

/// The reviewer's decision, as sent with `Command::resume`.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "lowercase")]
enum Decision {
    Approve,
    Edit { text: String },
    Reject,
}

fn graph() -> StateGraph<Article> {
    let mut g = StateGraph::<Article>::new();
    g.add_sync_node("draft", |s: &Article| {
        let n = s.drafts + 1;
        let text = format!("Cairn release notes, draft {n}");
        Ok(ArticleUpdate::default()
            .text(text.clone())
            .drafts(1u32)
            .log(vec![format!("drafted: {text}")]))
    })
    .add_sync_node_with(
        "review",
        NodeOptions::default().destinations(["publish", "draft"]),
        |s: &Article| {
            // Stops the run here until a human answers; runs again from the top on resume.
            let answer = interrupt(json!({
                "question": "approve, edit or reject this draft?",
                "text": s.text,
            }))?;
            let decision: Decision = serde_json::from_value(answer)?;
            Ok(match decision {
                Decision::Approve => {
                    Command::update(ArticleUpdate::default().log(vec!["approved".to_string()]))
                        .goto("publish")
                }
                Decision::Edit { text } => Command::update(
                    ArticleUpdate::default()
                        .log(vec![format!("edited to: {text}")])
                        .text(text),
                )
                .goto("publish"),
                Decision::Reject => {
                    Command::update(ArticleUpdate::default().log(vec!["rejected".to_string()]))
                        .goto("draft")
                }
            })
        },
    )
    .add_sync_node("publish", |s: &Article| {
        Ok(ArticleUpdate::default()
            .published(true)
            .log(vec![format!("published: {}", s.text)]))
    })
    .add_edge(START, "draft")
    .add_edge("draft", "review")
    .add_edge("publish", END);
    g
}

fn usage() -> ! {
    eprintln!(
        "usage: human_approval [--db PATH] [--thread ID] start|status|approve|reject|edit TEXT"
    );
    std::process::exit(2)
}

fn report(outcome: &RunOutcome<Article>) {
    let state = outcome.state();
    for line in &state.log {
        println!("  {line}");
    }
    match outcome {
        RunOutcome::Finished(_) => println!("finished: published = {}", state.published),
        RunOutcome::Interrupted { interrupts, .. } => {
            for i in interrupts {
                println!(
                    "waiting for review of {:?} (interrupt {}): answer with approve | edit \"text\" | reject",
                    i.value["text"].as_str().unwrap_or_default(),
                    i.id
                );
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut db = "human_approval.sqlite".to_string();
    let mut thread = "doc-1".to_string();
    let mut args = std::env::args().skip(1);
    let mut rest = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--db" => db = args.next().unwrap_or_else(|| usage()),
            "--thread" => thread = args.next().unwrap_or_else(|| usage()),
            _ => rest.push(a),
        }
    }
    let saver = Arc::new(cairn_sqlite::SqliteSaver::open(&db)?);
    let app = graph().compile(saver)?;
    let config = || RunConfig::thread(thread.clone());
    let resume = |decision: Decision| -> Result<Command<Article>, serde_json::Error> {
        Ok(Command::resume(serde_json::to_value(decision)?))
    };
    let command = rest.first().map(String::as_str);
    if matches!(command, Some("approve" | "reject" | "edit")) {
        let waiting = app
            .get_state(config())
            .await?
            .is_some_and(|s| !s.interrupts.is_empty());
        if !waiting {
            println!("thread {thread:?} is not waiting for a review: run `start` first");
            return Ok(());
        }
    }
    let outcome = match rest
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["start"] => {
            app.invoke_outcome(Some(ArticleUpdate::default().published(false)), config())
                .await?
        }
        ["status"] => {
            let Some(snapshot) = app.get_state(config()).await? else {
                println!("thread {thread:?} does not exist yet: run `start`");
                return Ok(());
            };
            println!(
                "thread {thread:?} at step {:?}, next: {:?}",
                snapshot.metadata.step, snapshot.next
            );
            for i in &snapshot.interrupts {
                println!("  waiting on interrupt {}: {}", i.id, i.value);
            }
            for line in &snapshot.values.log {
                println!("  {line}");
            }
            return Ok(());
        }
        ["approve"] => {
            app.invoke_command(resume(Decision::Approve)?, config())
                .await?
        }
        ["reject"] => {
            app.invoke_command(resume(Decision::Reject)?, config())
                .await?
        }
        ["edit", text] => {
            let decision = Decision::Edit {
                text: (*text).to_string(),
            };
            app.invoke_command(resume(decision)?, config()).await?
        }
        _ => usage(),
    };
    report(&outcome);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_graph::GraphError;

    #[tokio::test]
    async fn reject_then_edit_publishes_the_edit() -> Result<(), GraphError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("a.sqlite");
        let open = || {
            let saver = Arc::new(cairn_sqlite::SqliteSaver::open(&db).expect("open"));
            graph().compile(saver)
        };
        let cfg = || RunConfig::thread("t");
        let out = open()?
            .invoke_outcome(Some(ArticleUpdate::default()), cfg())
            .await?;
        assert_eq!(out.interrupts().len(), 1);
        let reject = Command::resume(json!({"action": "reject"}));
        let out = open()?.invoke_command(reject, cfg()).await?;
        assert_eq!(out.state().drafts, 2);
        assert_eq!(
            out.interrupts()[0].value["text"],
            "Cairn release notes, draft 2"
        );
        let edit = Command::resume(json!({"action": "edit", "text": "final"}));
        let out = open()?.invoke_command(edit, cfg()).await?;
        let RunOutcome::Finished(state) = out else {
            panic!("should finish")
        };
        assert!(state.published);
        assert_eq!(state.text, "final");
        assert_eq!(
            state.log.last().map(String::as_str),
            Some("published: final")
        );
        Ok(())
    }
}

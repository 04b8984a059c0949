//! `get_state_history` decodes a list field once per run of snapshots: an older checkpoint's
//! list, whose items lead the newer one's, is taken from the newer snapshot's decoded state.
//! These tests count item decodes and check every snapshot against a cold `get_state`,
//! across forks (where an older list is not a prefix of the newer one) and long histories
//! read in several pages, on the in-memory saver and on SQLite.

use std::cell::Cell;
use std::sync::Arc;

use cairn_checkpoint::{CheckpointSaver, CheckpointSource, InMemorySaver};
use cairn_graph::{
    CompiledGraph, HistoryQuery, RunConfig, State, StateGraph, StateSnapshot, END, START,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use support::{history, Observed, Observer};

#[macro_use]
mod support;

thread_local! {
    /// Messages decoded on this thread (tests run on a current-thread runtime, and the
    /// runtime decodes snapshots on the caller's task).
    static DECODED: Cell<usize> = const { Cell::new(0) };
}

fn decoded() -> usize {
    DECODED.with(Cell::get)
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredMsg")]
struct Msg {
    content: String,
}

#[derive(Deserialize)]
struct StoredMsg {
    content: String,
}

impl From<StoredMsg> for Msg {
    fn from(m: StoredMsg) -> Self {
        DECODED.with(|d| d.set(d.get() + 1));
        Msg { content: m.content }
    }
}

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Chat {
    #[reducer(append)]
    messages: Vec<Msg>,
    #[reducer(add)]
    turns: i64,
}

fn say(text: &str) -> ChatUpdate {
    ChatUpdate::default().messages(vec![Msg {
        content: text.into(),
    }])
}

fn app(sqlite: bool) -> (CompiledGraph<Chat>, Option<tempfile::TempDir>) {
    let (saver, dir): (Arc<dyn CheckpointSaver>, _) = if sqlite {
        let dir = tempfile::tempdir().expect("tempdir");
        let saver = cairn_sqlite::SqliteSaver::open(dir.path().join("h.sqlite")).expect("open");
        (Arc::new(saver), Some(dir))
    } else {
        (Arc::new(InMemorySaver::new()), None)
    };
    (app_on(saver), dir)
}

fn app_on(saver: Arc<dyn CheckpointSaver>) -> CompiledGraph<Chat> {
    let mut g = StateGraph::<Chat>::new();
    g.add_sync_node("reply", |s: &Chat| {
        Ok(ChatUpdate::default()
            .messages(vec![Msg {
                content: format!("reply {}", s.messages.len()),
            }])
            .turns(1))
    })
    .add_edge(START, "reply")
    .add_edge("reply", END);
    g.compile(saver).expect("compile")
}

async fn chat(app: &CompiledGraph<Chat>, config: &RunConfig, turns: std::ops::Range<usize>) {
    for i in turns {
        app.invoke_shared(Some(say(&format!("user {i}"))), config.clone())
            .await
            .expect("turn");
    }
}

/// Messages an input checkpoint's pending input holds (one user message each), which
/// `get_state_history` decodes too (the snapshot's next tasks come from it).
fn inputs(snapshots: &[StateSnapshot<Chat>]) -> usize {
    snapshots
        .iter()
        .filter(|s| s.metadata.source == Some(CheckpointSource::Input))
        .count()
}

/// Where `get_state_history` starts its decode runs in a history of `len` checkpoints: runs
/// of 1, 2, 4, … up to 32 snapshots, none crossing a page (32 checkpoints, then 1,024).
fn run_starts(len: usize) -> Vec<usize> {
    let mut starts = Vec::new();
    let (mut at, mut run, mut page_end) = (0, 1, 32.min(len));
    while at < len {
        starts.push(at);
        at = (at + run).min(page_end);
        run = (run * 2).min(32);
        if at == page_end {
            page_end = (page_end + 1024).min(len);
        }
    }
    starts
}

/// Messages decoded when every decode run decodes its newest list.
fn run_heads(snapshots: &[StateSnapshot<Chat>]) -> usize {
    run_starts(snapshots.len())
        .iter()
        .map(|&i| snapshots[i].values.messages.len())
        .sum()
}

/// Every snapshot's values equal what a cold `get_state` of its checkpoint decodes.
async fn check_against_get_state(app: &CompiledGraph<Chat>, snapshots: &[StateSnapshot<Chat>]) {
    for snap in snapshots {
        let cold = app
            .get_state(snap.config.clone())
            .await
            .expect("get_state")
            .expect("the checkpoint exists");
        assert_eq!(
            snap.values, cold.values,
            "at {:?}",
            snap.config.checkpoint_id
        );
    }
}

on_both_savers!(
    a_linear_history_decodes_only_the_newest_list,
    a_corrupt_checkpoint_ends_the_history_after_every_newer_snapshot,
    a_fork_is_decoded_whole_and_its_neighbours_stay_right,
    a_long_history_decodes_one_list_per_run,
);

async fn a_linear_history_decodes_only_the_newest_list(sqlite: bool) {
    let (app, _dir) = app(sqlite);
    let config = RunConfig::thread("t");
    chat(&app, &config, 0..10).await;
    let before = decoded();
    let snapshots = history(&app, "t").await;
    // 30 checkpoints in decode runs of 1, 2, 4, 8 and 15: each run's newest list is
    // decoded (20 + 19 + 18 + 15 + 10 messages), and each turn's input.
    assert_eq!(snapshots.len(), 30);
    assert_eq!(run_starts(30), [0, 1, 3, 7, 15]);
    assert_eq!(inputs(&snapshots), 10);
    assert_eq!(decoded() - before, 20 + 19 + 18 + 15 + 10 + 10);
    let lengths: Vec<usize> = snapshots.iter().map(|s| s.values.messages.len()).collect();
    let want: Vec<usize> = (0..10)
        .rev()
        .flat_map(|t| [2 * t + 2, 2 * t + 1, 2 * t])
        .collect();
    assert_eq!(lengths, want);
    check_against_get_state(&app, &snapshots).await;
}

async fn a_fork_is_decoded_whole_and_its_neighbours_stay_right(sqlite: bool) {
    let (app, _dir) = app(sqlite);
    let config = RunConfig::thread("f");
    chat(&app, &config, 0..2).await;
    // Fork from the end of the first turn with three messages of its own: the fork's oldest
    // list (5 messages) is longer than the original branch's newest (4), which comes right
    // after it in history, and they part at the third message.
    let after_first = history(&app, "f")
        .await
        .into_iter()
        .find(|s| s.values.messages.len() == 2 && s.next.is_empty())
        .expect("the end of the first turn");
    let three = ["fork a", "fork b", "fork c"].map(|c| Msg { content: c.into() });
    let fork = app
        .update_state(
            after_first.config.clone(),
            ChatUpdate::default().messages(three.to_vec()),
            Some("reply"),
        )
        .await
        .expect("fork");
    app.invoke_shared(Some(say("on the fork")), RunConfig::from(fork))
        .await
        .expect("continue the fork");
    let before = decoded();
    let snapshots = history(&app, "f").await;
    let decoded_items = decoded() - before;
    let contents: Vec<Vec<String>> = snapshots
        .iter()
        .map(|s| {
            s.values
                .messages
                .iter()
                .map(|m| m.content.clone())
                .collect()
        })
        .collect();
    let fork_start = ["user 0", "reply 1", "fork a", "fork b", "fork c"];
    assert_eq!(contents[0].len(), 7);
    assert_eq!(contents[0][..5], fork_start);
    assert_eq!(contents[2], fork_start, "the fork's input checkpoint");
    assert_eq!(contents[3], fork_start, "the fork's update checkpoint");
    assert_eq!(contents[4], ["user 0", "reply 1", "user 1", "reply 3"]);
    // Decoded: the newest list of each decode run, the original branch's newest list (4
    // messages, not a prefix of the fork's 5 before it), and the inputs (two turns and the
    // fork's); every other list is shared.
    assert_eq!(inputs(&snapshots), 3);
    let starts = run_starts(snapshots.len());
    let expected: usize = (0..contents.len())
        .filter(|&i| starts.contains(&i) || !contents[i - 1].starts_with(&contents[i]))
        .map(|i| contents[i].len())
        .sum();
    assert!(
        !starts.contains(&4),
        "the original branch's end is not a run start"
    );
    assert_eq!(decoded_items, expected + 3, "items decoded");
    check_against_get_state(&app, &snapshots).await;
}

async fn a_long_history_decodes_one_list_per_run(sqlite: bool) {
    let (app, _dir) = app(sqlite);
    let config = RunConfig::thread("l");
    // 40 turns, 120 checkpoints: a history page of 32, then one of the other 88, decoded in
    // runs of 1, 2, 4, … up to 32 within a page; each run decodes its newest list once.
    chat(&app, &config, 0..40).await;
    let before = decoded();
    let snapshots = history(&app, "l").await;
    assert_eq!(snapshots.len(), 120);
    assert_eq!(
        run_starts(120),
        [0, 1, 3, 7, 15, 31, 32, 64, 96],
        "runs end at the first page's end"
    );
    assert_eq!(
        decoded() - before,
        run_heads(&snapshots) + inputs(&snapshots)
    );
    check_against_get_state(&app, &snapshots).await;
}

/// A checkpoint whose `turns` value cannot be decoded, in the middle of a decode run: the
/// history yields every newer snapshot, then an error naming the checkpoint and channel.
async fn a_corrupt_checkpoint_ends_the_history_after_every_newer_snapshot(sqlite: bool) {
    let (app, _dir) = app(sqlite);
    let config = RunConfig::thread("c");
    chat(&app, &config, 0..20).await;
    let saver = app.saver().expect("a saver").clone();
    let tuples = saver
        .list(&cairn_checkpoint::ListQuery::thread("c"))
        .await
        .expect("list");
    // Overwrite the `turns` value of the 41st newest checkpoint (the second decode run).
    let mut victim = tuples[40].clone();
    let version = victim.checkpoint.channel_versions["turns"].clone();
    victim.checkpoint.channel_values.insert(
        "turns".into(),
        cairn_checkpoint::TypedValue::new(cairn_checkpoint::TAG_MSGPACK, vec![0xc1]),
    );
    let mut parent = victim.config.clone();
    parent.checkpoint_id = victim.parent_config.and_then(|p| p.checkpoint_id);
    saver
        .put(
            &parent,
            victim.checkpoint,
            victim.metadata,
            [("turns".to_string(), version.clone())]
                .into_iter()
                .collect(),
        )
        .await
        .expect("overwrite");
    let first_bad = tuples
        .iter()
        .position(|t| t.checkpoint.channel_versions.get("turns") == Some(&version))
        .expect("a checkpoint with that version");
    assert!((32..=40).contains(&first_bad), "{first_bad}");

    let mut stream = std::pin::pin!(app.get_state_history(config.clone(), HistoryQuery::default()));
    let mut good = 0;
    let err = loop {
        match stream.try_next().await {
            Ok(Some(_)) => good += 1,
            Ok(None) => panic!("the history ended without an error"),
            Err(e) => break e,
        }
    };
    assert_eq!(
        good, first_bad,
        "every snapshot newer than the corrupt one comes first"
    );
    let message = err.to_string();
    assert!(
        message.contains("turns") && message.contains("cannot decode"),
        "{message}"
    );
}

/// Records the limit of every `list` call.
#[derive(Default)]
struct ListLimits(std::sync::Mutex<Vec<Option<usize>>>);

impl Observer for ListLimits {
    fn listing(&self, query: &cairn_checkpoint::ListQuery) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(query.limit);
    }
}

/// A long history is read as a first page of 32, then pages of up to 1,024; a limit caps
/// every page at what is left of it.
#[tokio::test]
async fn history_pages_are_32_then_up_to_1024_within_the_limit() {
    let saver = Arc::new(Observed::new(
        Arc::new(InMemorySaver::new()),
        ListLimits::default(),
    ));
    let mut g = StateGraph::<Chat>::new();
    g.add_sync_node("reply", |_s: &Chat| Ok(ChatUpdate::default().turns(1)))
        .add_edge(START, "reply")
        .add_edge("reply", END);
    let app = g.compile(saver.clone()).expect("compile");
    let config = RunConfig::thread("pages");
    chat(&app, &config, 0..400).await;
    let take = |s: &Observed<ListLimits>| {
        std::mem::take(&mut *s.observer.0.lock().unwrap_or_else(|p| p.into_inner()))
    };
    take(&saver);
    // 1,200 checkpoints: 32, 1,024, then the 144 left (a short page ends the walk).
    assert_eq!(history(&app, "pages").await.len(), 1200);
    assert_eq!(take(&saver), [Some(32), Some(1024), Some(1024)]);
    let limited: Vec<_> = app
        .get_state_history(config.clone(), HistoryQuery::default().limit(50))
        .try_collect()
        .await
        .expect("history");
    assert_eq!(limited.len(), 50);
    assert_eq!(take(&saver), [Some(32), Some(18)]);
}

//! Lists with the append reducer are stored item by item (append values), and everything
//! users do with history keeps working on them: time travel, forks through `update_state`,
//! `prune` keeping the latest checkpoint, `copy_thread`, every durability mode. Each test
//! runs on the in-memory saver and on SQLite.

use std::sync::{Arc, Mutex};

use cairn_checkpoint::{
    Checkpoint, CheckpointConfig, CheckpointSaver, InMemorySaver, PruneStrategy, TypedValue,
    ValueCodec, TAG_APPEND,
};
use cairn_graph::{CompiledGraph, Durability, RunConfig, State, StateGraph, END, START};
use support::{history, Observed, Observer};

#[macro_use]
mod support;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Msg {
    role: String,
    content: String,
}

#[derive(Clone, Default, Debug, PartialEq, Serialize, Deserialize, State)]
struct Chat {
    #[reducer(append)]
    messages: Vec<Msg>,
    #[reducer(add)]
    turns: i64,
}

fn user(text: &str) -> ChatUpdate {
    ChatUpdate::default().messages(vec![Msg {
        role: "user".into(),
        content: text.into(),
    }])
}

/// What a thread's `messages` should hold: for each user text, the text and the reply to it.
fn expected(texts: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, t) in texts.iter().enumerate() {
        out.push(t.to_string());
        out.push(format!("reply to {t} (message {})", 2 * i + 1));
    }
    out
}

fn contents(chat: &Chat) -> Vec<String> {
    chat.messages.iter().map(|m| m.content.clone()).collect()
}

/// Records the stored form of every `messages` value put.
#[derive(Default)]
struct MessagesPut(Mutex<Vec<TypedValue>>);

impl Observer for MessagesPut {
    fn putting(&self, checkpoint: &Checkpoint) {
        if let Some(v) = checkpoint.channel_values.get("messages") {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(v.clone());
        }
    }
}

struct Setup {
    app: CompiledGraph<Chat>,
    saver: Arc<Observed<MessagesPut>>,
    _dir: Option<tempfile::TempDir>,
}

fn setup(sqlite: bool) -> Setup {
    let (inner, dir): (Arc<dyn CheckpointSaver>, _) = if sqlite {
        let dir = tempfile::tempdir().expect("tempdir");
        let saver =
            cairn_sqlite::SqliteSaver::open(dir.path().join("chat.sqlite")).expect("open sqlite");
        (Arc::new(saver), Some(dir))
    } else {
        (Arc::new(InMemorySaver::new()), None)
    };
    let saver = Arc::new(Observed::new(inner, MessagesPut::default()));
    let mut g = StateGraph::<Chat>::new();
    g.add_sync_node("reply", |s: &Chat| {
        let last = s
            .messages
            .last()
            .map(|m| m.content.clone())
            .unwrap_or_default();
        Ok(ChatUpdate::default()
            .messages(vec![Msg {
                role: "assistant".into(),
                content: format!("reply to {last} (message {})", s.messages.len()),
            }])
            .turns(1))
    })
    .add_edge(START, "reply")
    .add_edge("reply", END);
    let app = g.compile(saver.clone()).expect("compile");
    Setup {
        app,
        saver,
        _dir: dir,
    }
}

async fn chat(app: &CompiledGraph<Chat>, config: RunConfig, texts: &[&str]) -> Chat {
    let mut last = Chat::default();
    for t in texts {
        last = app
            .invoke(Some(user(t)), config.clone())
            .await
            .expect("turn");
    }
    last
}

on_both_savers!(
    growing_lists_are_stored_as_appends,
    time_travel_replays_on_a_new_branch,
    update_state_forks_an_append_channel,
    prune_keep_latest_then_continue,
    copy_thread_then_delete_the_source,
    every_durability_mode_reads_back_whole,
);

async fn growing_lists_are_stored_as_appends(sqlite: bool) {
    let s = setup(sqlite);
    // Messages of about 200 characters, like a chat's.
    let texts: Vec<String> = (0..60)
        .map(|i| format!("question {i} {}", "lorem ipsum ".repeat(16)))
        .collect();
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let stored_after = |n: usize| -> usize {
        let stored = s.saver.observer.0.lock().expect("lock");
        stored[..n].iter().map(TypedValue::len).sum()
    };
    let half = chat(&s.app, RunConfig::thread("t"), &texts[..30]).await;
    let half_puts = s.saver.observer.0.lock().expect("lock").len();
    let out = chat(&s.app, RunConfig::thread("t"), &texts[30..]).await;
    assert_eq!(contents(&out), expected(&texts));

    let stored = s.saver.observer.0.lock().expect("lock").clone();
    assert_eq!(
        stored[0].type_tag, "msgpack",
        "the first value is stored whole"
    );
    assert!(
        stored[1..].iter().all(|v| v.type_tag == TAG_APPEND),
        "every later value is an append value"
    );
    let codec = ValueCodec::default();
    let whole = codec.encode(&out.messages).expect("encode").len();
    let half_whole = codec.encode(&half.messages).expect("encode").len();
    let (half_bytes, all_bytes) = (stored_after(half_puts), stored_after(stored.len()));
    assert!(
        all_bytes < 2 * whole && half_bytes < 2 * half_whole,
        "{half_bytes} bytes stored for a list of {half_whole} bytes, {all_bytes} for \
         {whole}: storage must stay within 2x the list's own size"
    );
    assert!(
        all_bytes < 3 * half_bytes,
        "twice the turns must cost about twice the bytes (linear), not four times: \
         {half_bytes} then {all_bytes}"
    );

    // The head read through the state the run left in memory equals the head read back
    // from storage by a graph that has no such state.
    let cached = s
        .app
        .get_state(RunConfig::thread("t"))
        .await
        .expect("state")
        .expect("head");
    let from_storage = s
        .saver
        .get_tuple(&CheckpointConfig::thread("t"))
        .await
        .expect("read")
        .expect("head");
    let stored: Vec<Msg> = ValueCodec::default()
        .decode(&from_storage.checkpoint.channel_values["messages"])
        .expect("decode");
    assert_eq!(cached.values.messages, stored);
    assert_eq!(cached.config, from_storage.config);
    assert!(cached.next.is_empty());

    // Every checkpoint reads back whole.
    let snapshots = history(&s.app, "t").await;
    assert_eq!(snapshots.len(), 3 * texts.len());
    for snap in &snapshots {
        let n = snap.values.messages.len();
        let full = expected(&texts);
        assert_eq!(
            contents(&snap.values),
            full[..n],
            "checkpoint {:?}",
            snap.config
        );
    }
}

async fn time_travel_replays_on_a_new_branch(sqlite: bool) {
    let s = setup(sqlite);
    let config = RunConfig::thread("tt");
    chat(&s.app, config.clone(), &["a", "b", "c", "d"]).await;
    let after_b = history(&s.app, "tt")
        .await
        .into_iter()
        .find(|snap| snap.values.messages.len() == 4 && snap.next.is_empty())
        .expect("the end of turn b");
    let replayed = s
        .app
        .invoke(Some(user("x")), RunConfig::from(after_b.config.clone()))
        .await
        .expect("replay from turn b");
    assert_eq!(contents(&replayed), expected(&["a", "b", "x"]));
    // The head is the new branch; the old branch is intact.
    let head = s.app.get_state(config).await.expect("state").expect("head");
    assert_eq!(contents(&head.values), expected(&["a", "b", "x"]));
    let old: Vec<_> = history(&s.app, "tt")
        .await
        .into_iter()
        .filter(|snap| snap.values.messages.len() == 8)
        .collect();
    assert!(
        !old.is_empty(),
        "the old branch's last checkpoint is still there"
    );
    for snap in old {
        assert_eq!(contents(&snap.values), expected(&["a", "b", "c", "d"]));
    }
}

async fn update_state_forks_an_append_channel(sqlite: bool) {
    let s = setup(sqlite);
    let config = RunConfig::thread("us");
    chat(&s.app, config.clone(), &["a", "b", "c"]).await;
    let after_a = history(&s.app, "us")
        .await
        .into_iter()
        .find(|snap| snap.values.messages.len() == 2 && snap.next.is_empty())
        .expect("the end of turn a");
    let note = ChatUpdate::default().messages(vec![Msg {
        role: "system".into(),
        content: "note".into(),
    }]);
    let fork = s
        .app
        .update_state(after_a.config.clone(), note, Some("reply"))
        .await
        .expect("update an old checkpoint");
    let forked = s
        .app
        .get_state(fork.clone())
        .await
        .expect("state")
        .expect("fork");
    let mut want = expected(&["a"]);
    want.push("note".into());
    assert_eq!(contents(&forked.values), want);
    let out = s
        .app
        .invoke(Some(user("y")), RunConfig::from(fork))
        .await
        .expect("continue the fork");
    want.push("y".into());
    want.push("reply to y (message 4)".into());
    assert_eq!(contents(&out), want);
    let original = history(&s.app, "us")
        .await
        .into_iter()
        .find(|snap| snap.values.messages.len() == 6)
        .expect("the original branch's end");
    assert_eq!(contents(&original.values), expected(&["a", "b", "c"]));
    // Updating the head appends to it.
    let head = s
        .app
        .update_state(config.clone(), user("z"), Some("reply"))
        .await
        .expect("update the head");
    let state = s.app.get_state(head).await.expect("state").expect("head");
    assert_eq!(
        state.values.messages.last().map(|m| m.content.as_str()),
        Some("z")
    );
    assert_eq!(state.values.messages.len(), want.len() + 1);
}

async fn prune_keep_latest_then_continue(sqlite: bool) {
    let s = setup(sqlite);
    let config = RunConfig::thread("p");
    chat(&s.app, config.clone(), &["a", "b", "c"]).await;
    s.saver
        .prune(&["p".to_string()], PruneStrategy::KeepLatest)
        .await
        .expect("prune");
    let kept = history(&s.app, "p").await;
    assert_eq!(kept.len(), 1);
    assert_eq!(contents(&kept[0].values), expected(&["a", "b", "c"]));
    let out = chat(&s.app, config.clone(), &["d"]).await;
    assert_eq!(contents(&out), expected(&["a", "b", "c", "d"]));
    for snap in history(&s.app, "p").await {
        let n = snap.values.messages.len();
        assert_eq!(contents(&snap.values), expected(&["a", "b", "c", "d"])[..n]);
    }
}

async fn copy_thread_then_delete_the_source(sqlite: bool) {
    let s = setup(sqlite);
    chat(&s.app, RunConfig::thread("src"), &["a", "b"]).await;
    s.app.copy_thread("src", "dst").await.expect("copy");
    s.saver.delete_thread("src").await.expect("delete source");
    let out = chat(&s.app, RunConfig::thread("dst"), &["c"]).await;
    assert_eq!(contents(&out), expected(&["a", "b", "c"]));
    for snap in history(&s.app, "dst").await {
        let n = snap.values.messages.len();
        assert_eq!(contents(&snap.values), expected(&["a", "b", "c"])[..n]);
    }
}

async fn every_durability_mode_reads_back_whole(sqlite: bool) {
    let s = setup(sqlite);
    for (i, mode) in [
        Durability::Exit,
        Durability::Async,
        Durability::Sync,
        Durability::Exit,
    ]
    .into_iter()
    .enumerate()
    {
        let text = format!("turn {i}");
        s.app
            .invoke(
                Some(user(&text)),
                RunConfig::thread("d").with_durability(mode),
            )
            .await
            .expect("turn");
    }
    let texts = ["turn 0", "turn 1", "turn 2", "turn 3"];
    let head = s
        .app
        .get_state(RunConfig::thread("d"))
        .await
        .expect("state")
        .expect("head");
    assert_eq!(contents(&head.values), expected(&texts));
    for snap in history(&s.app, "d").await {
        let n = snap.values.messages.len();
        assert_eq!(contents(&snap.values), expected(&texts)[..n]);
    }
}

//! Append values (Cairn's own): a channel stored as the items added since a base version
//! reads back whole, through every read and every deletion.

use crate::conformance::support::*;
use crate::{
    ChannelVersion, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointSaver, Error, Format,
    ListQuery, PruneStrategy, TypedValue, ValueCodec,
};

const CHANNEL: &str = "messages";

/// A thread whose `messages` channel is a chain of append values, built checkpoint by
/// checkpoint as the runtime builds it.
struct Chain {
    codec: ValueCodec,
    thread: String,
    ns: String,
    /// Config of the latest stored checkpoint (the parent of the next one).
    head: CheckpointConfig,
    /// Version of the channel in the latest checkpoint.
    version: Option<ChannelVersion>,
    /// Items of the channel in the latest checkpoint.
    items: Vec<String>,
}

impl Chain {
    fn new(codec: ValueCodec, thread: &str, ns: &str) -> Self {
        Chain {
            codec,
            thread: thread.to_owned(),
            ns: ns.to_owned(),
            head: cfg_ns(thread, ns),
            version: None,
            items: Vec::new(),
        }
    }

    /// Stores a checkpoint adding `new_items` (as a whole list when the channel has no value
    /// yet, as an append value otherwise) plus a `counter` channel holding the step. Returns
    /// the stored config and the whole list it holds.
    async fn push(
        &mut self,
        saver: &dyn CheckpointSaver,
        run_id: Option<&str>,
        new_items: &[&str],
    ) -> (CheckpointConfig, Vec<String>) {
        let step = self.items.len() as i64;
        let version = ChannelVersion::first_after(self.version.as_ref());
        let value = match &self.version {
            None => ok(
                self.codec.encode(&new_items),
                "encoding the first value of a chain",
            ),
            Some(base) => ok(
                self.codec.encode_append(base, new_items.iter()),
                "encoding an append value",
            ),
        };
        let counter = ChannelVersion::first_after(self.version.as_ref());
        let mut cp = Checkpoint::new();
        cp.channel_values.insert(CHANNEL.into(), value);
        cp.channel_values
            .insert("counter".into(), ok(self.codec.encode(&step), "encoding"));
        cp.channel_versions.insert(CHANNEL.into(), version.clone());
        cp.channel_versions.insert("counter".into(), counter);
        let new_versions: ChannelVersions = cp.channel_versions.clone();
        let mut meta = md(Loop, step);
        meta.run_id = run_id.map(str::to_owned);
        self.head = put(saver, &self.head, cp, meta, new_versions).await;
        self.version = Some(version);
        self.items.extend(new_items.iter().map(|s| (*s).to_owned()));
        (self.head.clone(), self.items.clone())
    }

    /// Continues from an earlier checkpoint (a fork), as the runtime does after time travel.
    fn fork_from(&mut self, config: &CheckpointConfig, version: ChannelVersion, items: &[String]) {
        self.head = config.clone();
        self.version = Some(version);
        self.items = items.to_vec();
        assert_eq!(config.thread_id, self.thread);
        assert_eq!(config.checkpoint_ns, self.ns);
    }
}

/// The whole list a checkpoint's `messages` holds, checked to be a plain (not append) value.
#[track_caller]
fn messages_of(codec: &ValueCodec, value: Option<&TypedValue>, what: &str) -> Vec<String> {
    let Some(value) = value else {
        panic!("{what}: the `messages` channel has no value");
    };
    assert_ne!(
        value.type_tag,
        crate::TAG_APPEND,
        "{what}: savers must return append values whole, not as stored"
    );
    ok(codec.decode(value), &format!("{what}: decoding `messages`"))
}

/// Reads `config` back and checks its `messages` equal `expected`.
async fn assert_reads(
    saver: &dyn CheckpointSaver,
    codec: &ValueCodec,
    config: &CheckpointConfig,
    expected: &[String],
) {
    let t = get_some(saver, config).await;
    let got = messages_of(
        codec,
        t.checkpoint.channel_values.get(CHANNEL),
        &format!("get_tuple({config:?})"),
    );
    assert_eq!(
        got, expected,
        "get_tuple({config:?}) returned the wrong list"
    );
}

/// Every checkpoint of a chain reads back whole, by id, as the latest and through `list`,
/// in MessagePack and in JSON, in the root and in a child namespace.
pub async fn append_values_read_back_whole(saver: &dyn CheckpointSaver) {
    for (codec, ns) in [
        (ValueCodec::default(), ""),
        (ValueCodec::new(Format::Json), "child:1"),
    ] {
        let tid = thread_id();
        let mut chain = Chain::new(codec, &tid, ns);
        let mut stored = Vec::new();
        stored.push(chain.push(saver, None, &["a", "b"]).await);
        stored.push(chain.push(saver, None, &["c"]).await);
        stored.push(chain.push(saver, None, &[]).await);
        // Past 15 items the MessagePack list header changes size.
        let many: Vec<String> = (0..20).map(|i| format!("m{i}")).collect();
        let many: Vec<&str> = many.iter().map(String::as_str).collect();
        stored.push(chain.push(saver, None, &many).await);
        stored.push(chain.push(saver, None, &["z"]).await);
        for (config, expected) in &stored {
            assert_reads(saver, &codec, config, expected).await;
        }
        assert_reads(saver, &codec, &cfg_ns(&tid, ns), &stored[4].1).await;
        let listed = list(saver, &ListQuery::thread(&tid).ns(ns)).await;
        assert_eq!(listed.len(), stored.len());
        for (t, (config, expected)) in listed.iter().zip(stored.iter().rev()) {
            assert_eq!(t.config, *config, "list is newest first");
            let got = messages_of(&codec, t.checkpoint.channel_values.get(CHANNEL), "list");
            assert_eq!(
                &got, expected,
                "list returned the wrong list for {config:?}"
            );
        }
        let page = list(
            saver,
            &ListQuery::thread(&tid)
                .ns(ns)
                .before(id_of(&stored[3].0))
                .limit(1),
        )
        .await;
        assert_eq!(page.len(), 1);
        let got = messages_of(
            &codec,
            page[0].checkpoint.channel_values.get(CHANNEL),
            "page",
        );
        assert_eq!(
            got, stored[2].1,
            "a page in the middle of a chain reads whole"
        );
    }
}

/// Two branches extending the same version each read their own items.
pub async fn append_values_branch_independently(saver: &dyn CheckpointSaver) {
    let codec = ValueCodec::default();
    let tid = thread_id();
    let mut chain = Chain::new(codec, &tid, "");
    chain.push(saver, None, &["a"]).await;
    let (fork_point, items) = chain.push(saver, None, &["b"]).await;
    let version = chain.version.clone().expect("a version");
    let (left, left_items) = chain.push(saver, None, &["left"]).await;
    let (left2, left2_items) = chain.push(saver, None, &["left2"]).await;
    chain.fork_from(&fork_point, version, &items);
    let (right, right_items) = chain.push(saver, None, &["right"]).await;
    assert_eq!(right_items, ["a", "b", "right"]);
    assert_reads(saver, &codec, &left, &left_items).await;
    assert_reads(saver, &codec, &left2, &left2_items).await;
    assert_reads(saver, &codec, &right, &right_items).await;
    assert_reads(saver, &codec, &fork_point, &items).await;
    for t in list(saver, &query(&tid)).await {
        let got = messages_of(&codec, t.checkpoint.channel_values.get(CHANNEL), "list");
        let expected = [
            (&left, &left_items),
            (&left2, &left2_items),
            (&right, &right_items),
            (&fork_point, &items),
        ]
        .into_iter()
        .find(|(c, _)| **c == t.config)
        .map(|(_, e)| e.clone());
        if let Some(expected) = expected {
            assert_eq!(got, expected, "list: wrong list for {:?}", t.config);
        }
    }
}

/// A copied thread reads whole, also after its source is deleted.
pub async fn append_values_survive_copy_thread(saver: &dyn CheckpointSaver) {
    let codec = ValueCodec::default();
    let (src, dst) = (thread_id(), thread_id());
    let mut chain = Chain::new(codec, &src, "");
    let (first, first_items) = chain.push(saver, None, &["a"]).await;
    chain.push(saver, None, &["b"]).await;
    let (_, items) = chain.push(saver, None, &["c", "d"]).await;
    copy_thread(saver, &src, &dst).await;
    delete_thread(saver, &src).await;
    assert_reads(saver, &codec, &cfg(&dst), &items).await;
    let first_copy = cfg(&dst).with_checkpoint_id(id_of(&first));
    assert_reads(saver, &codec, &first_copy, &first_items).await;
}

/// After `prune` keeping the latest checkpoint, it still reads whole, and new append values
/// can extend it.
pub async fn prune_keep_latest_keeps_append_values_whole(saver: &dyn CheckpointSaver) {
    let codec = ValueCodec::default();
    let tid = thread_id();
    let mut chain = Chain::new(codec, &tid, "");
    chain.push(saver, None, &["a"]).await;
    chain.push(saver, None, &["b"]).await;
    let (latest, items) = chain.push(saver, None, &["c"]).await;
    prune(saver, std::slice::from_ref(&tid), PruneStrategy::KeepLatest).await;
    assert_eq!(ids(&list(saver, &query(&tid)).await), [id_of(&latest)]);
    assert_reads(saver, &codec, &latest, &items).await;
    let (next, next_items) = chain.push(saver, None, &["d"]).await;
    assert_eq!(next_items, ["a", "b", "c", "d"]);
    assert_reads(saver, &codec, &next, &next_items).await;
    prune(saver, std::slice::from_ref(&tid), PruneStrategy::KeepLatest).await;
    assert_reads(saver, &codec, &cfg(&tid), &next_items).await;
}

/// Deleting the run that wrote the start of a chain keeps what later runs' checkpoints need.
pub async fn delete_for_runs_keeps_append_chains(saver: &dyn CheckpointSaver) {
    let codec = ValueCodec::default();
    let tid = thread_id();
    let (first_run, second_run) = (unique("run"), unique("run"));
    let mut chain = Chain::new(codec, &tid, "");
    chain.push(saver, Some(&first_run), &["a"]).await;
    chain.push(saver, Some(&first_run), &["b"]).await;
    let (kept, kept_items) = chain.push(saver, Some(&second_run), &["c"]).await;
    delete_for_runs(saver, std::slice::from_ref(&first_run)).await;
    assert_eq!(ids(&list(saver, &query(&tid)).await), [id_of(&kept)]);
    assert_reads(saver, &codec, &kept, &kept_items).await;
    let (next, next_items) = chain.push(saver, Some(&second_run), &["d"]).await;
    assert_reads(saver, &codec, &next, &next_items).await;
}

/// An append value whose base is not stored is reported as corrupt data naming the channel,
/// by `get_tuple` and by `list`; other threads are unaffected.
pub async fn append_value_with_missing_base_is_corrupt(saver: &dyn CheckpointSaver) {
    let codec = ValueCodec::default();
    let tid = thread_id();
    let missing = ChannelVersion::first_after(Some(&ChannelVersion::Int(5)));
    let version = ChannelVersion::first_after(Some(&missing));
    let mut cp = Checkpoint::new();
    let value = ok(codec.encode_append(&missing, ["x"].iter()), "encoding");
    cp.channel_values.insert(CHANNEL.into(), value);
    cp.channel_versions.insert(CHANNEL.into(), version.clone());
    let stored = put(
        saver,
        &cfg(&tid),
        cp,
        md(Loop, 0),
        [(CHANNEL.to_owned(), version)].into(),
    )
    .await;
    let check = |result: Result<(), Error>, call: &str| match result {
        Err(Error::Corrupt { location, reason }) => {
            assert_eq!(location.thread_id, tid, "{call}: {reason}");
            assert_eq!(
                location.channel.as_deref(),
                Some(CHANNEL),
                "{call}: {reason}"
            );
            assert!(
                reason.contains(&missing.to_storage_string()),
                "{call}: {reason}"
            );
        }
        Err(other) => panic!("{call}: expected Error::Corrupt, got {other}"),
        Ok(()) => panic!("{call}: a broken append chain was read without an error"),
    };
    check(saver.get_tuple(&stored).await.map(|_| ()), "get_tuple");
    check(saver.list(&query(&tid)).await.map(|_| ()), "list");
    // The thread can still be deleted.
    delete_thread(saver, &tid).await;
    assert!(get(saver, &cfg(&tid)).await.is_none());
}

//! Append values on Redis, against a real server: long chains read back whole in a fixed
//! number of commands (the chain is followed by a script on the server, whole values need
//! none), chain links expire
//! no sooner than the values extending them, and broken or looping chains are reported.
//! Each test uses its own key prefix and deletes its keys at the end.

mod support;

use std::time::Duration;

use cairn_checkpoint::{
    ChannelVersion, Checkpoint, CheckpointConfig, CheckpointMetadata, CheckpointSaver,
    CheckpointSource, Error, KnownValues, ListQuery, TypedValue, ValueCodec,
};
use cairn_redis::{KeyLayout, RedisSaver};
use futures::StreamExt;

const CHANNEL: &str = "messages";

/// A thread whose `messages` channel grows by append values, one checkpoint per step.
struct Chain {
    codec: ValueCodec,
    head: CheckpointConfig,
    version: Option<ChannelVersion>,
    items: Vec<String>,
    /// The storage string of each version written, oldest first.
    versions: Vec<String>,
}

impl Chain {
    fn new(thread: &str) -> Self {
        Chain {
            codec: ValueCodec::default(),
            head: CheckpointConfig::thread(thread),
            version: None,
            items: Vec::new(),
            versions: Vec::new(),
        }
    }

    /// Stores one step adding `new_items`; returns its config.
    async fn push(
        &mut self,
        saver: &dyn CheckpointSaver,
        new_items: &[String],
    ) -> CheckpointConfig {
        let version = saver.get_next_version(self.version.as_ref());
        let value = match &self.version {
            None => self.codec.encode(&new_items).expect("encode"),
            Some(base) => self
                .codec
                .encode_append(base, new_items.iter())
                .expect("encode_append"),
        };
        self.put(saver, version, value).await;
        self.items.extend(new_items.iter().cloned());
        self.head.clone()
    }

    /// Stores `value` as the channel's value at `version`, as a child of the head.
    async fn put(
        &mut self,
        saver: &dyn CheckpointSaver,
        version: ChannelVersion,
        value: TypedValue,
    ) {
        let mut cp = Checkpoint::new();
        cp.channel_values.insert(CHANNEL.into(), value);
        cp.channel_versions.insert(CHANNEL.into(), version.clone());
        let step = self.versions.len() as i64;
        self.head = saver
            .put(
                &self.head,
                cp,
                CheckpointMetadata::new(CheckpointSource::Loop, step),
                [(CHANNEL.to_owned(), version.clone())].into(),
            )
            .await
            .expect("put");
        self.versions.push(version.to_storage_string());
        self.version = Some(version);
    }

    /// Grows the chain by `steps` steps of two items each.
    async fn grow(&mut self, saver: &dyn CheckpointSaver, steps: usize) {
        for _ in 0..steps {
            let n = self.items.len();
            self.push(saver, &[format!("user {n}"), format!("agent {n}")])
                .await;
        }
    }
}

fn messages(codec: &ValueCodec, tuple: &cairn_checkpoint::CheckpointTuple) -> Vec<String> {
    let value = tuple
        .checkpoint
        .channel_values
        .get(CHANNEL)
        .expect("messages has a value");
    codec.decode(value).expect("a whole list")
}

#[tokio::test]
async fn a_400_step_chain_reads_back_whole() {
    let options = support::options("append-long");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut chain = Chain::new("long");
    chain.grow(&saver, 400).await;
    assert_eq!(chain.items.len(), 800);

    let latest = saver
        .get_tuple(&CheckpointConfig::thread("long"))
        .await
        .expect("get")
        .expect("saved");
    assert_eq!(messages(&chain.codec, &latest), chain.items);

    // Every step of the history, through one listing (each link joined once).
    let history = saver.list(&ListQuery::thread("long")).await.expect("list");
    assert_eq!(history.len(), 400);
    for (step, tuple) in history.iter().rev().enumerate() {
        assert_eq!(
            messages(&chain.codec, tuple),
            chain.items[..2 * (step + 1)],
            "step {step}"
        );
    }
    support::delete_prefix(&url, &options.key_prefix).await;
}

/// The commands a `MONITOR` connection saw that name keys under `prefix`, split into those
/// the saver sent and those a script ran on the server, until the `marker` echo.
async fn commands_until(
    stream: &mut (impl futures::Stream<Item = String> + Unpin),
    prefix: &str,
    marker: &str,
) -> (Vec<String>, Vec<String>) {
    let (mut sent, mut scripted) = (Vec::new(), Vec::new());
    while let Some(line) = stream.next().await {
        if line.contains(marker) {
            return (sent, scripted);
        }
        if !line.contains(prefix) {
            continue;
        }
        if line.contains(" lua] ") {
            scripted.push(line);
        } else {
            sent.push(line);
        }
    }
    panic!("the MONITOR stream ended before {marker:?}");
}

#[tokio::test]
async fn reading_the_latest_of_a_long_chain_takes_a_fixed_number_of_commands() {
    let options = support::options("append-commands");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut short = Chain::new("short");
    short.grow(&saver, 3).await;
    let mut long = Chain::new("long");
    long.grow(&saver, 300).await;
    // Whole values only: a list rewritten at every step.
    let mut whole = Chain::new("whole");
    for step in 0..3 {
        let version = saver.get_next_version(whole.version.as_ref());
        whole.items.push(format!("item {step}"));
        let value = whole.codec.encode(&whole.items).expect("encode");
        whole.put(&saver, version, value).await;
    }
    // Warm up (loads the script into the server's cache).
    for thread in ["short", "long", "whole"] {
        saver
            .get_tuple(&CheckpointConfig::thread(thread))
            .await
            .expect("get")
            .expect("saved");
    }

    let client = redis::Client::open(url.as_str()).expect("url");
    let mut stream = client
        .get_async_monitor()
        .await
        .expect("MONITOR")
        .into_on_message::<String>();
    let mut conn = support::raw(&url).await;
    let mut seen = Vec::new();
    for (i, (thread, chain)) in [("short", &short), ("long", &long), ("whole", &whole)]
        .into_iter()
        .enumerate()
    {
        let latest = saver
            .get_tuple(&CheckpointConfig::thread(thread))
            .await
            .expect("get")
            .expect("saved");
        assert_eq!(messages(&chain.codec, &latest), chain.items);
        let marker = format!("{}-done-{i}", options.key_prefix);
        let _: String = redis::cmd("ECHO")
            .arg(&marker)
            .query_async(&mut conn)
            .await
            .expect("ECHO");
        let tag = saver.key_layout().thread_tag(thread);
        seen.push(commands_until(&mut stream, &tag, &marker).await);
    }
    // A caller holding the latest values (a runtime between steps) reads no value at all.
    let latest_id = long.head.checkpoint_id.clone().expect("id");
    let held = saver
        .get_tuple_known(
            &CheckpointConfig::thread("long"),
            KnownValues {
                checkpoint_id: &latest_id,
                channels: &[CHANNEL],
            },
        )
        .await
        .expect("get_tuple_known")
        .expect("saved");
    assert!(held.checkpoint.channel_values.is_empty());
    assert!(held.checkpoint.channel_versions.contains_key(CHANNEL));
    let marker = format!("{}-done-known", options.key_prefix);
    let _: String = redis::cmd("ECHO")
        .arg(&marker)
        .query_async(&mut conn)
        .await
        .expect("ECHO");
    let tag = saver.key_layout().thread_tag("long");
    seen.push(commands_until(&mut stream, &tag, &marker).await);

    let names = |commands: &[String]| -> Vec<String> {
        commands
            .iter()
            .filter_map(|c| c.split('"').nth(1).map(str::to_owned))
            .collect()
    };
    // Latest id; header, metadata and writes; the values; the links of the chain.
    let (long_sent, long_scripted) = &seen[1];
    assert_eq!(
        names(long_sent),
        ["ZREVRANGEBYLEX", "HMGET", "HGETALL", "MGET", "EVALSHA"],
        "commands the saver sent to read the latest of a 300-step chain"
    );
    assert_eq!(names(&seen[0].0), names(long_sent), "a 3-step chain");
    assert_eq!(
        names(&seen[2].0),
        ["ZREVRANGEBYLEX", "HMGET", "HGETALL", "MGET"],
        "whole values need no script"
    );
    assert_eq!(
        names(&seen[3].0),
        ["ZREVRANGEBYLEX", "HMGET", "HGETALL"],
        "get_tuple_known skips the values the caller holds, chains included"
    );
    // The 299 links below the latest value were read on the server, each once.
    let gets = long_scripted
        .iter()
        .filter(|c| c.contains("\"GET\""))
        .count();
    assert_eq!(gets, 299, "links read by the script");
    support::delete_prefix(&url, &options.key_prefix).await;
}

/// The absolute expiry (ms since the epoch) of `key`: `-1` without one, `-2` when missing.
async fn expire_time(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PEXPIRETIME")
        .arg(key)
        .query_async(conn)
        .await
        .expect("PEXPIRETIME (Redis 7)")
}

/// Each value key of `chain`, oldest first, with its expiry; asserts that every one expires
/// and none before the value extending it.
async fn chain_expiries(
    conn: &mut redis::aio::MultiplexedConnection,
    keys: &KeyLayout,
    thread: &str,
    chain: &Chain,
) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for version in &chain.versions {
        let key = keys.blob_key(thread, "", CHANNEL, version);
        let at = expire_time(conn, &key).await;
        assert!(at > 0, "{key} should expire, PEXPIRETIME is {at}");
        out.push((key, at));
    }
    for pair in out.windows(2) {
        assert!(
            pair[0].1 >= pair[1].1,
            "{} expires before {}, which extends it",
            pair[0].0,
            pair[1].0
        );
    }
    out
}

#[tokio::test]
async fn chain_links_expire_no_sooner_than_the_values_extending_them() {
    let ttl = Duration::from_secs(600);
    let options = support::options("append-ttl")
        .with_ttl(ttl)
        .with_refresh_ttl_on_read(true);
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();
    let thread = "expiring-chain";
    let mut chain = Chain::new(thread);
    chain.grow(&saver, 6).await;
    let expiries = chain_expiries(&mut conn, &keys, thread, &chain).await;

    // A further step leaves the older links alone: they already outlive it.
    chain.grow(&saver, 1).await;
    let after = chain_expiries(&mut conn, &keys, thread, &chain).await;
    assert_eq!(
        after[..expiries.len()],
        expiries[..],
        "a step rewrote old expiries"
    );

    // As if most of a TTL had passed: the next step extends the whole chain.
    let value_keys: Vec<String> = after.iter().map(|(k, _)| k.clone()).collect();
    support::expire_in(&mut conn, value_keys.iter(), 5_000).await;
    chain.grow(&saver, 1).await;
    for (key, _) in &after {
        let left = pttl(&mut conn, key).await;
        assert!(
            left > 5_000,
            "{key} was not extended by a step, PTTL {left}"
        );
        assert!(left <= 2 * 600_000, "{key}: PTTL {left} beyond two TTLs");
    }
    chain_expiries(&mut conn, &keys, thread, &chain).await;

    // Reading extends it too.
    let value_keys: Vec<String> = chain
        .versions
        .iter()
        .map(|v| keys.blob_key(thread, "", CHANNEL, v))
        .collect();
    support::expire_in(&mut conn, value_keys.iter(), 5_000).await;
    let latest = saver
        .get_tuple(&CheckpointConfig::thread(thread))
        .await
        .expect("get")
        .expect("saved");
    assert_eq!(messages(&chain.codec, &latest), chain.items);
    for key in &value_keys {
        let left = pttl(&mut conn, key).await;
        assert!(
            left > 5_000,
            "{key} was not extended by a read, PTTL {left}"
        );
    }
    chain_expiries(&mut conn, &keys, thread, &chain).await;

    // A copy's links expire no sooner than the copies extending them either.
    saver
        .copy_thread(thread, "copied-chain")
        .await
        .expect("copy_thread");
    chain_expiries(&mut conn, &keys, "copied-chain", &chain).await;
    let copy = saver
        .get_tuple(&CheckpointConfig::thread("copied-chain"))
        .await
        .expect("get")
        .expect("copied");
    assert_eq!(messages(&chain.codec, &copy), chain.items);
    support::delete_prefix(&url, &options.key_prefix).await;
}

async fn pttl(conn: &mut redis::aio::MultiplexedConnection, key: &str) -> i64 {
    redis::cmd("PTTL")
        .arg(key)
        .query_async(conn)
        .await
        .expect("PTTL")
}

#[tokio::test]
async fn chains_keep_the_longest_ttl() {
    // Longer TTLs are capped to about a thousand years; chain links get twice that.
    let options = support::options("append-long-ttl")
        .with_ttl(Duration::from_secs(5000 * 365 * 24 * 3600))
        .with_refresh_ttl_on_read(true);
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let thread = "long-ttl";
    let mut chain = Chain::new(thread);
    chain.grow(&saver, 4).await;
    let latest = saver
        .get_tuple(&CheckpointConfig::thread(thread))
        .await
        .expect("get")
        .expect("saved");
    assert_eq!(messages(&chain.codec, &latest), chain.items);
    let keys = saver.key_layout().clone();
    let expiries = chain_expiries(&mut conn, &keys, thread, &chain).await;
    let year_ms = 365 * 24 * 3600 * 1000i64;
    for (key, at) in expiries {
        assert!(at > 900 * year_ms, "{key} expires at {at}");
    }
    support::delete_prefix(&url, &options.key_prefix).await;
}

#[tokio::test]
async fn chains_read_after_the_server_forgets_its_scripts() {
    let options = support::options("append-flush");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let mut chain = Chain::new("flushed");
    chain.grow(&saver, 5).await;
    // What a server restart does to the script cache (other savers reload theirs too).
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .expect("SCRIPT FLUSH");
    let latest = saver
        .get_tuple(&CheckpointConfig::thread("flushed"))
        .await
        .expect("get after SCRIPT FLUSH")
        .expect("saved");
    assert_eq!(messages(&chain.codec, &latest), chain.items);
    support::delete_prefix(&url, &options.key_prefix).await;
}

async fn expect_corrupt(saver: &RedisSaver, thread: &str, needle: &str) {
    let config = CheckpointConfig::thread(thread);
    for (call, result) in [
        ("get_tuple", saver.get_tuple(&config).await.map(|_| ())),
        (
            "list",
            saver.list(&ListQuery::thread(thread)).await.map(|_| ()),
        ),
    ] {
        match result {
            Err(Error::Corrupt { location, reason }) => {
                assert_eq!(location.thread_id, thread, "{call}");
                assert_eq!(
                    location.channel.as_deref(),
                    Some(CHANNEL),
                    "{call}: {reason}"
                );
                assert!(reason.contains(needle), "{call}: {reason}");
            }
            other => panic!("{call}: expected Error::Corrupt, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn broken_and_looping_chains_are_reported_not_followed_forever() {
    let options = support::options("append-corrupt");
    let Some(saver) = support::saver(options.clone()).await else {
        return;
    };
    let url = support::url().expect("url");
    let mut conn = support::raw(&url).await;
    let keys = saver.key_layout().clone();

    // A link whose stored bytes are garbage.
    let mut chain = Chain::new("garbage");
    chain.grow(&saver, 3).await;
    let _: () = redis::cmd("SET")
        .arg(keys.blob_key("garbage", "", CHANNEL, &chain.versions[1]))
        .arg("garbage")
        .query_async(&mut conn)
        .await
        .expect("SET");
    expect_corrupt(&saver, "garbage", &chain.versions[1]).await;

    // Two values naming each other as their base.
    let mut chain = Chain::new("loop");
    chain.grow(&saver, 1).await;
    let first = ChannelVersion::Str(chain.versions[0].clone());
    let second = saver.get_next_version(Some(&first));
    let codec = ValueCodec::default();
    let extends_first = codec
        .encode_append(&first, ["x"].iter())
        .expect("encode_append");
    chain.put(&saver, second.clone(), extends_first).await;
    let back = codec
        .encode_append(&second, ["y"].iter())
        .expect("encode_append");
    // Overwrite the root so it extends the second value: a cycle.
    let _: () = redis::cmd("SET")
        .arg(keys.blob_key("loop", "", CHANNEL, &chain.versions[0]))
        .arg(stored_form(&back))
        .query_async(&mut conn)
        .await
        .expect("SET");
    expect_corrupt(&saver, "loop", "not older").await;
    support::delete_prefix(&url, &options.key_prefix).await;
}

/// A value as the saver stores it: `<tag length>:<tag><bytes>`.
fn stored_form(value: &TypedValue) -> Vec<u8> {
    let mut out = format!("{}:{}", value.type_tag.len(), value.type_tag).into_bytes();
    out.extend_from_slice(&value.data);
    out
}

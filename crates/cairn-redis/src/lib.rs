//! # cairn-redis
//!
//! A Redis checkpoint saver for Cairn: [`RedisSaver`] implements
//! [`cairn_checkpoint::CheckpointSaver`] on plain Redis (6.0 or later, tested on 7.0; no modules
//! needed), through a `redis-rs` connection manager that reconnects by itself.
//!
//! ```no_run
//! use std::time::Duration;
//! use cairn_checkpoint::*;
//! use cairn_redis::{RedisOptions, RedisSaver};
//!
//! # async fn demo() -> Result<()> {
//! let saver = RedisSaver::connect_with(
//!     "redis://127.0.0.1:6379/",
//!     RedisOptions::default()
//!         .with_key_prefix("myapp")
//!         .with_ttl(Duration::from_secs(30 * 24 * 3600))
//!         .with_refresh_ttl_on_read(true),
//! )
//! .await?;
//!
//! let codec = ValueCodec::default();
//! let mut checkpoint = Checkpoint::new();
//! let version = saver.get_next_version(None);
//! checkpoint.channel_values.insert("messages".into(), codec.encode(&["hi"])?);
//! checkpoint.channel_versions.insert("messages".into(), version.clone());
//! let saved = saver
//!     .put(&CheckpointConfig::thread("chat-42"), checkpoint,
//!          CheckpointMetadata::new(CheckpointSource::Input, -1),
//!          [("messages".to_string(), version)].into())
//!     .await?;
//!
//! let latest = saver.get_tuple(&CheckpointConfig::thread("chat-42")).await?.expect("saved");
//! assert_eq!(latest.config, saved);
//! let messages: Vec<String> = latest.channel_value(&codec, "messages")?.unwrap_or_default();
//! assert_eq!(messages, ["hi"]);
//! # Ok(()) }
//! ```
//!
//! ## Connection URLs
//! `redis://[[user]:password@]host[:port][/db]` for TCP, and `redis+unix:///path/to/socket`
//! or `unix:///path/to/socket` for a Unix socket. **TLS (`rediss://`) is not enabled**: this
//! crate does not turn on any of redis-rs's TLS features, so a `rediss://` URL is rejected
//! when connecting. Reach a TLS-only server through a local tunnel (e.g. stunnel), or build
//! with a redis-rs TLS feature added to your own dependency on `redis`.
//!
//! The saver targets one Redis server (or a primary with replicas), not Redis Cluster.
//! Its connection runs on the Tokio runtime that opened it: open the saver inside the
//! runtime that will use it.
//!
//! ## Key layout, and why
//! Every key starts with the configured prefix (default `cairn`). User-supplied strings
//! (thread ids, namespaces, run ids) appear in key names only **hex-encoded**, so `:`, `{`,
//! `}` or any Unicode in them cannot collide with the separators or escape a hash tag.
//! Every key of one thread begins with the hash tag `{<prefix>:<hex thread id>}`, so a
//! thread lives in one Cluster slot and all its keys can be written in one transaction.
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{tag}:cps:<hex ns>` | sorted set, all scores 0 | the namespace's checkpoint ids; ids are time-ordered strings, so `ZREVRANGEBYLEX` lists newest first and `before` is a range bound: listing never scans |
//! | `{tag}:cp:<hex ns>:<id>` | hash | `checkpoint` (the header as JSON, without values, so versions keep their type), `metadata` (JSON), `parent`, `run` |
//! | `{tag}:b:<hex ns>:<hex channel>:<version>` | string | one channel value, `<tag length>:<type tag><bytes>`; stored once per version and shared by every checkpoint that refers to it; one key per value so each can expire on its own. An append value is stored the same way (`6:append` then its text header, see below) |
//! | `{tag}:w:<hex ns>:<id>` | hash | a checkpoint's pending writes, field `<task id length>:<task id><index>` (MessagePack) |
//! | `{tag}:ns` | set | the thread's namespaces |
//! | `{tag}:run:<hex run>` | set | the thread's checkpoints written by a run (`<ns length>:<ns><id>`) |
//! | `{tag}:keys` | set | every other key of the thread, so deleting a thread needs no `SCAN` |
//! | `{tag}:runs` | set | the global run keys naming this thread |
//! | `<prefix>:threads` | set | every thread id (listing across threads) |
//! | `<prefix>:run:<hex run>` | set | the threads a run wrote to (`delete_for_runs` without a scan) |
//!
//! [`KeyLayout`] computes these names, to inspect a thread with `redis-cli`.
//!
//! ## Append values
//! An append value ([`cairn_checkpoint::AppendValue`]) is stored as given, in the value key
//! of its version; its header names the version it extends, whose value key differs only in
//! that last component. Reads return whole values. Values are read with a plain `MGET`;
//! when some are append values, one more round trip runs a Lua script per thread and
//! namespace (`EVALSHA`, keys inside the thread's hash tag) that follows their chains of
//! bases on the server and returns every link once. Reading the latest checkpoint of a
//! conversation thousands of steps long therefore takes four round trips (five commands);
//! checkpoints without append values take three, as before, and never run the script
//! (values are slow to pass through Lua: about 2 µs per KB). The links are joined in the
//! client with one [`cairn_checkpoint::AppendChains`] per thread and namespace, oldest
//! checkpoint first, so a listing joins each link once. `get_tuple_known` reads neither the
//! values the caller holds nor their chains (unless it must extend their expiry, see below).
//! No index is kept beside the values: `put` writes nothing more for an append value than
//! for a whole one, and `copy_thread` (which
//! copies every value as stored), expiry and deletion need no extra bookkeeping. A chain
//! whose base is missing reads as [`cairn_checkpoint::Error::Corrupt`] naming the channel
//! and version; so does a chain that loops (the script never visits a key twice).
//!
//! `prune` with [`cairn_checkpoint::PruneStrategy::KeepLatest`] reads the kept checkpoint's
//! append values with their chains, and in the transaction that deletes the older
//! checkpoints rewrites them as whole values (keeping each key's expiry), so no link has to
//! stay. `delete_for_runs` deletes checkpoints and their writes but leaves values in place
//! (other checkpoints may share them, and the links of their chains), so every chain a kept
//! checkpoint needs stays intact; `prune` reclaims what is left over, including every value
//! of a namespace whose checkpoints are all gone.
//!
//! ## Atomicity and round trips
//! `put` and each `put_writes` call are one `MULTI`/`EXEC` transaction; regular writes use
//! `HSETNX` (a retried task cannot duplicate its writes), special channels (`__error__`,
//! `__interrupt__`, ...) use `HSET` (the latest replaces the stored one). `delete_thread` is
//! one Lua script. `get_tuple` takes at most three round trips (latest id; header, metadata
//! and writes; values), plus one for the links of append chains when it meets append
//! values, whatever the length of the history or of a chain; `list` takes one round trip per
//! page of ids (all namespaces at once) and two per batch of rows (three with chains).
//! `copy_thread`, `prune` and `delete_for_runs` read first and then apply their changes in one
//! transaction per thread (`prune` reads the kept append chains in one more round
//! trip); they are not meant to race with writers on the same thread. After a server restart
//! or `SCRIPT FLUSH`, the first read loads the script again and repeats its round trip.
//!
//! Metadata filters of `list` are applied in the client after decoding (plain Redis has no
//! secondary index on JSON): with a filter, the namespace's ids are paged through until
//! `limit` matches are found.
//!
//! ## TTL
//! With [`RedisOptions::ttl`] set, every key a write touches (`put`, `put_writes`,
//! `copy_thread`) gets a native Redis expiry of that length, and so do the thread-level
//! indexes; a `put` also extends the expiry of the older values its checkpoint still refers
//! to. With [`RedisOptions::refresh_ttl_on_read`], reading a checkpoint extends the expiry
//! of every key it was read from, values included (`list_threads`, which reads only the
//! indexes and the latest headers, refreshes nothing). The expiry therefore slides per
//! checkpoint: a checkpoint disappears when it has been neither written nor (with refresh)
//! read for one TTL, a value when no checkpoint referring to it has, and a thread when all
//! its checkpoints have. Index entries left pointing at expired checkpoints are dropped
//! lazily, the first time a listing meets them; the thread's key set (`{tag}:keys`) keeps
//! the names of expired keys until the thread is deleted or expires, and expires after two
//! TTLs, so that it outlives every value it names (values kept alive chain-wise may live that
//! long). `list_threads` drops the expired newest checkpoints it meets, but its checkpoint
//! count may still include older ones that expired and that no read has met yet: under a TTL
//! it is an upper bound. Without a TTL, nothing expires: use `prune` or `delete_thread`.
//!
//! An append value needs every link of its chain, so value keys are kept alive chain-wise:
//! a write or refreshing read makes each value it refers to, and each link below it, live at
//! least one more TTL, and never shortens an expiry (so a link never expires before a value
//! extending it). To keep that cheap, a walk down a chain stops at the first link that
//! already lives long enough, and what has to be extended gets two TTLs, so for the next
//! TTL a step only checks the expiry of the values it refers to. A value therefore lives one
//! TTL after it is written, and after that up to two TTLs after the last checkpoint needing
//! it was written or read. Value expiries are set by a small Lua script (`EVAL` inside
//! `put`'s transaction, `EVALSHA` next to a read's `MGET`), so with a TTL every `put` and
//! refreshing read runs it. With refresh on read, `get_tuple_known` reads the values the
//! caller holds all the same, so that they (and their chains) are extended with the
//! checkpoint: a thread that is only read (polled with `get_state`, say) never keeps a
//! checkpoint whose values expired. Without refresh it leaves them out.
//!
//! ## Errors
//! Redis failures are [`cairn_checkpoint::Error::Backend`] (backend `"redis"`, saying what
//! was being done); unreadable stored data is [`cairn_checkpoint::Error::Corrupt`] naming
//! the thread, namespace, checkpoint and, for a value, the channel.

#![warn(missing_docs)]

mod chains;
mod codec;
mod keys;
mod saver;

pub use keys::KeyLayout;
pub use saver::{RedisOptions, RedisSaver};

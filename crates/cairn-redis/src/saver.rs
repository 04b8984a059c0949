//! [`RedisSaver`]: the `CheckpointSaver` implementation.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use cairn_checkpoint::{
    write_index, AppendChains, ChannelVersions, Checkpoint, CheckpointConfig, CheckpointMetadata,
    CheckpointSaver, CheckpointTuple, DataLocation, Error, KnownValues, LatestCheckpoint,
    ListQuery, PendingWrite, PruneStrategy, Result, ThreadSummary, TypedValue, TAG_APPEND,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{FromRedisValue, Pipeline, Script, Value};
use tracing::{debug, warn};

use crate::chains::{
    parse_links, resolve_appends, ChainScripts, GroupValues, KeyBatch, LinkMode, Place, ValueRef,
};
use crate::codec::{
    decode_header, decode_metadata, encode_header, encode_metadata, encode_value, StoredWrite,
};
use crate::keys::{
    join, split, KeyLayout, FIELD_CHECKPOINT, FIELD_METADATA, FIELD_PARENT, FIELD_RUN,
};

const BACKEND: &str = "redis";

/// How many checkpoint ids `list` reads from one namespace per round trip when it has to
/// page (metadata filters, or no limit).
const LIST_PAGE: usize = 100;

/// The longest expiry set (about a thousand years); longer TTLs are capped to it.
const MAX_TTL_MS: u64 = 1000 * 365 * 24 * 3600 * 1000;

/// Settings of a [`RedisSaver`].
///
/// ```
/// use std::time::Duration;
/// let options = cairn_redis::RedisOptions::default()
///     .with_key_prefix("myapp")
///     .with_ttl(Duration::from_secs(7 * 24 * 3600))
///     .with_refresh_ttl_on_read(true);
/// assert_eq!(options.key_prefix, "myapp");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RedisOptions {
    /// Prefix of every key (default `"cairn"`). Must be non-empty and contain no `{` or `}`.
    /// Savers with different prefixes on one database never see each other's data.
    pub key_prefix: String,
    /// When set, every key written for a thread expires this long after it was last
    /// written (or read, with [`refresh_ttl_on_read`](Self::refresh_ttl_on_read)).
    /// `None` (the default): keys never expire.
    pub ttl: Option<Duration>,
    /// Whether reading a checkpoint extends the expiry of the keys it was read from
    /// (default `false`). Has no effect without [`ttl`](Self::ttl).
    pub refresh_ttl_on_read: bool,
    /// How long to wait for the answer to one command or pipeline (default 30 s; `None`:
    /// forever). Large values take a while to transfer, so keep this generous.
    pub response_timeout: Option<Duration>,
    /// How long to wait for a connection to be established (default 5 s).
    pub connection_timeout: Option<Duration>,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            key_prefix: "cairn".into(),
            ttl: None,
            refresh_ttl_on_read: false,
            response_timeout: Some(Duration::from_secs(30)),
            connection_timeout: Some(Duration::from_secs(5)),
        }
    }
}

impl RedisOptions {
    /// Sets [`key_prefix`](Self::key_prefix).
    pub fn with_key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = prefix.into();
        self
    }

    /// Sets [`ttl`](Self::ttl).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Sets [`refresh_ttl_on_read`](Self::refresh_ttl_on_read).
    pub fn with_refresh_ttl_on_read(mut self, refresh: bool) -> Self {
        self.refresh_ttl_on_read = refresh;
        self
    }

    /// Sets [`response_timeout`](Self::response_timeout).
    pub fn with_response_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.response_timeout = timeout;
        self
    }
}

/// Lua scripts for the few steps that must read and write atomically on the server.
struct Scripts {
    /// Drops a checkpoint id from its namespace index when its hash is gone (expired).
    zrem_if_gone: Script,
    /// Drops a thread from the global index when it has no namespaces left (expired).
    srem_thread_if_gone: Script,
    /// Deletes every key of a thread and its entries in the global indexes.
    delete_thread: Script,
}

impl Scripts {
    fn new() -> Self {
        Scripts {
            zrem_if_gone: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 0 then \
                   return redis.call('ZREM', KEYS[2], ARGV[1]) \
                 end \
                 return 0",
            ),
            srem_thread_if_gone: Script::new(
                "if redis.call('EXISTS', KEYS[1]) == 0 then \
                   return redis.call('SREM', KEYS[2], ARGV[1]) \
                 end \
                 return 0",
            ),
            // KEYS: thread keys set, thread runs set, global threads set. ARGV: thread id.
            delete_thread: Script::new(
                "local keys = redis.call('SMEMBERS', KEYS[1]) \
                 for _, k in ipairs(keys) do redis.call('DEL', k) end \
                 local runs = redis.call('SMEMBERS', KEYS[2]) \
                 for _, r in ipairs(runs) do redis.call('SREM', r, ARGV[1]) end \
                 redis.call('DEL', KEYS[1], KEYS[2]) \
                 redis.call('SREM', KEYS[3], ARGV[1]) \
                 return #keys",
            ),
        }
    }
}

/// A [`CheckpointSaver`] keeping checkpoints in Redis. See the [crate docs](crate) for the key
/// layout, atomicity and TTL semantics.
///
/// Cheap to share: wrap it in an `Arc`; all clones of the underlying connection manager
/// multiplex one connection that reconnects by itself after a failure.
pub struct RedisSaver {
    conn: ConnectionManager,
    keys: KeyLayout,
    options: RedisOptions,
    ttl_ms: Option<u64>,
    scripts: Scripts,
    chain_scripts: ChainScripts,
}

impl fmt::Debug for RedisSaver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSaver")
            .field("keys", &self.keys)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// Maps a Redis error to [`Error::Backend`], saying what was being done.
fn backend(what: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |e| Error::backend(BACKEND, what, e)
}

/// Converts one reply of a pipeline.
fn parse<T: FromRedisValue>(value: Value, what: &'static str) -> Result<T> {
    redis::from_redis_value(value).map_err(|e| Error::backend(BACKEND, what, e))
}

/// The next reply of a pipeline, or a backend error when the server sent fewer.
fn next_reply(replies: &mut impl Iterator<Item = Value>, what: &'static str) -> Result<Value> {
    replies.next().ok_or_else(|| Error::Backend {
        backend: BACKEND,
        message: format!("{what}: the server sent fewer replies than commands"),
        source: None,
    })
}

fn location(thread_id: &str, ns: &str, id: &str) -> DataLocation {
    DataLocation {
        thread_id: thread_id.to_owned(),
        checkpoint_ns: ns.to_owned(),
        checkpoint_id: Some(id.to_owned()),
        channel: None,
    }
}

fn utf8(raw: Vec<u8>, what: &str, loc: impl FnOnce() -> DataLocation) -> Result<String> {
    String::from_utf8(raw).map_err(|_| Error::corrupt(loc(), format!("{what} is not UTF-8")))
}

/// One checkpoint to read: thread, namespace, id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RowRef {
    id: String,
    thread: String,
    ns: String,
}

/// A checkpoint read in the first round trip, before its channel values.
struct PartialRow {
    checkpoint: Checkpoint,
    metadata: CheckpointMetadata,
    parent: Option<String>,
    run: Option<String>,
    writes: Vec<PendingWrite>,
}

/// One namespace's checkpoint ids, read newest first a page at a time.
struct Stream {
    thread: String,
    ns: String,
    buffer: VecDeque<String>,
    /// `ZREVRANGEBYLEX` upper bound of the next page.
    next_max: String,
    exhausted: bool,
}

impl RedisSaver {
    /// Connects to `url` with default [`RedisOptions`].
    pub async fn connect(url: &str) -> Result<Self> {
        RedisSaver::connect_with(url, RedisOptions::default()).await
    }

    /// Connects to `url` with `options`. Fails if the server cannot be reached now; later
    /// connection losses are repaired by reconnecting.
    pub async fn connect_with(url: &str, options: RedisOptions) -> Result<Self> {
        let keys = KeyLayout::new(options.key_prefix.clone())?;
        let ttl_ms = match options.ttl {
            None => None,
            Some(ttl) if ttl.as_millis() == 0 => {
                return Err(Error::InvalidArgument(
                    "Redis TTL must be at least one millisecond (use None for no expiry)".into(),
                ))
            }
            // Redis rejects expiry times past the end of its clock: cap at a millennium.
            Some(ttl) => {
                Some(u64::try_from(ttl.as_millis()).map_or(MAX_TTL_MS, |ms| ms.min(MAX_TTL_MS)))
            }
        };
        // The URL may carry a password: never echo it.
        let client = redis::Client::open(url).map_err(backend(
            "cannot use the Redis URL (expected redis://[user:password@]host[:port][/db] \
             or unix:///path/to/socket)",
        ))?;
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(options.response_timeout)
            .set_connection_timeout(options.connection_timeout);
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(backend("cannot connect to Redis"))?;
        debug!(prefix = keys.prefix(), ?ttl_ms, "connected to Redis");
        Ok(RedisSaver {
            conn,
            keys,
            options,
            ttl_ms,
            scripts: Scripts::new(),
            chain_scripts: ChainScripts::new(),
        })
    }

    /// The key layout, to inspect stored data with `redis-cli`.
    pub fn key_layout(&self) -> &KeyLayout {
        &self.keys
    }

    /// The options this saver was opened with.
    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    fn conn(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// Adds `PEXPIRE` for each key when a TTL is configured.
    fn expire<'a>(&self, pipe: &mut Pipeline, keys: impl IntoIterator<Item = &'a String>) {
        if let Some(ms) = self.ttl_ms {
            for key in keys {
                // The thread's key set names every key `delete_thread` and `prune` remove, so
                // it must outlive each of them: values kept alive chain-wise may live up to
                // two TTLs (see `chains`).
                let ms = if KeyLayout::is_thread_keys_key(key) {
                    ms.saturating_mul(2)
                } else {
                    ms
                };
                pipe.cmd("PEXPIRE").arg(key).arg(ms).ignore();
            }
        }
    }

    /// Reads checkpoints (header, metadata, writes, then values) in two round trips, and a
    /// third when some values are append values (their chains). `None` for a checkpoint that
    /// does not exist (or has expired). The values of `known` are left out.
    async fn fetch_rows(
        &self,
        rows: &[RowRef],
        known: Option<&KnownValues<'_>>,
    ) -> Result<Vec<Option<CheckpointTuple>>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        for r in rows {
            pipe.cmd("HMGET")
                .arg(self.keys.checkpoint_key(&r.thread, &r.ns, &r.id))
                .arg(&[FIELD_CHECKPOINT, FIELD_METADATA, FIELD_PARENT, FIELD_RUN]);
            pipe.cmd("HGETALL")
                .arg(self.keys.writes_key(&r.thread, &r.ns, &r.id));
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(backend("reading checkpoints"))?;
        let mut replies = replies.into_iter();
        let mut partials = Vec::with_capacity(rows.len());
        for r in rows {
            let fields: Vec<Option<Vec<u8>>> = parse(
                next_reply(&mut replies, "reading checkpoints")?,
                "reading a checkpoint hash",
            )?;
            let writes: HashMap<Vec<u8>, Vec<u8>> = parse(
                next_reply(&mut replies, "reading checkpoints")?,
                "reading pending writes",
            )?;
            partials.push(decode_partial(r, fields, writes)?);
        }

        // Second round trip: the values each checkpoint refers to (one MGET per thread and
        // namespace, each value once), and TTL refreshes.
        let refresh_ms = self.ttl_ms.filter(|_| self.options.refresh_ttl_on_read);
        let mut groups: BTreeMap<(&str, &str), KeyBatch<ValueRef>> = BTreeMap::new();
        // Per row: each channel with the index of its value key in the row's group.
        let mut wanted: Vec<Vec<(String, usize)>> = Vec::with_capacity(rows.len());
        let mut refresh: BTreeSet<String> = BTreeSet::new();
        for (r, partial) in rows.iter().zip(&partials) {
            let Some(p) = partial else {
                wanted.push(Vec::new());
                continue;
            };
            if refresh_ms.is_some() {
                refresh.extend(self.row_keys(&r.thread, &r.ns, &r.id, p.run.as_deref()));
            }
            // With refresh on read, values the caller holds are read all the same: reading
            // them is what extends their expiry (and their chains'), and a held value must
            // not expire before the checkpoint that refers to it.
            let skip: &[&str] = match known {
                Some(k) if k.checkpoint_id == r.id && refresh_ms.is_none() => k.channels,
                _ => &[],
            };
            let batch = groups.entry((&r.thread, &r.ns)).or_default();
            let mut own = Vec::with_capacity(p.checkpoint.channel_versions.len());
            for (channel, version) in &p.checkpoint.channel_versions {
                if skip.contains(&channel.as_str()) {
                    continue;
                }
                let version = version.to_storage_string();
                let i = batch.add(
                    self.keys.blob_key(&r.thread, &r.ns, channel, &version),
                    self.keys.blob_channel_prefix(&r.thread, &r.ns, channel),
                    || ValueRef {
                        channel: channel.clone(),
                        version,
                        checkpoint_id: r.id.clone(),
                    },
                );
                own.push((channel.clone(), i));
            }
            wanted.push(own);
        }
        groups.retain(|_, batch| !batch.is_empty());
        let mut values = self.read_values(&groups, refresh_ms, &refresh).await?;

        let mut out = Vec::with_capacity(rows.len());
        for ((r, partial), own) in rows.iter().zip(partials).zip(wanted) {
            let Some(p) = partial else {
                out.push(None);
                continue;
            };
            let mut checkpoint = p.checkpoint;
            if let Some(group) = values.get(&(r.thread.clone(), r.ns.clone())) {
                for (channel, i) in own {
                    if let Some(value) = group.by_key.get(i).cloned().flatten() {
                        if !value.is_empty_marker() {
                            checkpoint.channel_values.insert(channel, value);
                        }
                    }
                }
            }
            let config = CheckpointConfig {
                thread_id: r.thread.clone(),
                checkpoint_ns: r.ns.clone(),
                checkpoint_id: Some(r.id.clone()),
            };
            let parent_config = p.parent.map(|id| CheckpointConfig {
                checkpoint_id: Some(id),
                ..config.clone()
            });
            out.push(Some(CheckpointTuple {
                config,
                checkpoint,
                metadata: p.metadata,
                parent_config,
                pending_writes: p.writes,
            }));
        }
        resolve_appends(&mut out, &mut values)?;
        Ok(out)
    }

    /// The values of `groups` (one `MGET` per thread and namespace), with TTL refreshes of
    /// them (chain-aware) and of the `refresh` keys; then, in one more round trip when some
    /// are append values, the links of their chains.
    async fn read_values(
        &self,
        groups: &BTreeMap<(&str, &str), KeyBatch<ValueRef>>,
        refresh_ms: Option<u64>,
        refresh: &BTreeSet<String>,
    ) -> Result<BTreeMap<(String, String), GroupValues>> {
        let mut pipe = redis::pipe();
        for batch in groups.values() {
            pipe.cmd("MGET")
                .arg(batch.keys.iter().map(|k| &k.key).collect::<Vec<_>>());
            if let Some(ms) = refresh_ms {
                // Extend-only and chain-aware (see `chains`): a plain PEXPIRE could shorten
                // a value that a newer append value still needs.
                self.chain_scripts
                    .queue_touch_cached(&mut pipe, ms, &batch.keys);
            }
        }
        self.expire(&mut pipe, refresh);
        let replies = self
            .query_with_scripts(&pipe, "reading channel values")
            .await?;
        let mut replies = replies.into_iter();
        let mut values: BTreeMap<(String, String), GroupValues> = BTreeMap::new();
        // Third round trip, only when some values are append values: the links of their
        // chains, one script call per thread and namespace.
        let mut pipe = redis::pipe();
        let mut walks = Vec::new();
        for ((thread, ns), batch) in groups {
            let raw: Vec<Option<Vec<u8>>> = parse(
                next_reply(&mut replies, "reading channel values")?,
                "reading channel values",
            )?;
            let place = Place {
                thread_id: thread,
                checkpoint_ns: ns,
            };
            let group = GroupValues::from_values(&place, batch, raw)?;
            let (starts, held) = group.chain_starts(&place, batch)?;
            if !starts.is_empty() {
                self.chain_scripts
                    .queue_links(&mut pipe, LinkMode::Links, &starts.keys, &held);
                walks.push(((*thread, *ns), starts));
            }
            values.insert(((*thread).to_owned(), (*ns).to_owned()), group);
        }
        let replies = self
            .query_with_scripts(&pipe, "reading append chains")
            .await?;
        let mut replies = replies.into_iter();
        for ((thread, ns), starts) in walks {
            let links = parse_links(
                next_reply(&mut replies, "reading append chains")?,
                starts.keys.len(),
            )?;
            let place = Place {
                thread_id: thread,
                checkpoint_ns: ns,
            };
            let links = place.decode_links(&starts, links)?;
            if let Some(group) = values.get_mut(&(thread.to_owned(), ns.to_owned())) {
                group.add_links(&starts, links);
            }
        }
        Ok(values)
    }

    /// Sends `pipe`, which may call the chain scripts. When the server's script cache lacks
    /// them (first use, or after a restart or `SCRIPT FLUSH`), loads them and sends `pipe`
    /// again: reads and expiry extensions can safely run twice.
    async fn query_with_scripts(&self, pipe: &Pipeline, what: &'static str) -> Result<Vec<Value>> {
        if pipe.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        match pipe.query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                self.chain_scripts.load(&mut conn).await?;
                pipe.query_async(&mut conn).await.map_err(backend(what))
            }
            other => other.map_err(backend(what)),
        }
    }

    /// The value keys a checkpoint refers to, in `channel_versions` order.
    fn referenced_blob_keys(&self, thread: &str, ns: &str, checkpoint: &Checkpoint) -> Vec<String> {
        checkpoint
            .channel_versions
            .iter()
            .map(|(c, v)| self.keys.blob_key(thread, ns, c, &v.to_storage_string()))
            .collect()
    }

    /// Every key a read of one checkpoint touches besides its values (for TTL refreshes).
    fn row_keys(&self, thread: &str, ns: &str, id: &str, run: Option<&str>) -> Vec<String> {
        let mut keys = vec![
            self.keys.checkpoint_key(thread, ns, id),
            self.keys.writes_key(thread, ns, id),
            self.keys.checkpoints_key(thread, ns),
            self.keys.namespaces_key(thread),
            self.keys.thread_keys_key(thread),
            self.keys.thread_runs_key(thread),
            self.keys.threads_key(),
        ];
        if let Some(run) = run {
            keys.push(self.keys.run_checkpoints_key(thread, run));
            keys.push(self.keys.run_threads_key(run));
        }
        keys
    }

    /// Removes a checkpoint id from its namespace index if its hash is gone (it expired).
    /// `false` when the hash exists after all.
    async fn forget_if_gone(&self, r: &RowRef) -> Result<bool> {
        let mut conn = self.conn();
        let removed: i64 = self
            .scripts
            .zrem_if_gone
            .key(self.keys.checkpoint_key(&r.thread, &r.ns, &r.id))
            .key(self.keys.checkpoints_key(&r.thread, &r.ns))
            .arg(&r.id)
            .invoke_async(&mut conn)
            .await
            .map_err(backend("removing an expired checkpoint from its index"))?;
        if removed > 0 {
            debug!(thread_id = %r.thread, checkpoint_ns = %r.ns, checkpoint_id = %r.id,
                   "dropped an expired checkpoint from the index");
        }
        Ok(removed > 0 || !self.row_exists(r).await?)
    }

    async fn row_exists(&self, r: &RowRef) -> Result<bool> {
        let mut conn = self.conn();
        redis::cmd("EXISTS")
            .arg(self.keys.checkpoint_key(&r.thread, &r.ns, &r.id))
            .query_async(&mut conn)
            .await
            .map_err(backend("checking whether a checkpoint exists"))
    }

    /// The thread ids recorded in the global index.
    async fn all_threads(&self) -> Result<Vec<String>> {
        let mut conn = self.conn();
        let raw: Vec<Vec<u8>> = redis::cmd("SMEMBERS")
            .arg(self.keys.threads_key())
            .query_async(&mut conn)
            .await
            .map_err(backend("listing threads"))?;
        Ok(raw
            .into_iter()
            .filter_map(|t| match String::from_utf8(t) {
                Ok(t) => Some(t),
                Err(e) => {
                    warn!(thread = ?e.as_bytes(), "ignoring a non-UTF-8 thread id in the index");
                    None
                }
            })
            .collect())
    }

    /// The namespaces of each thread, in one round trip.
    async fn namespaces(&self, threads: &[String]) -> Result<Vec<Vec<String>>> {
        if threads.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn();
        let mut pipe = redis::pipe();
        for t in threads {
            pipe.cmd("SMEMBERS").arg(self.keys.namespaces_key(t));
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(backend("listing namespaces"))?;
        let mut out = Vec::with_capacity(threads.len());
        for (t, reply) in threads.iter().zip(replies) {
            let raw: Vec<Vec<u8>> = parse(reply, "listing namespaces")?;
            let mut list = Vec::with_capacity(raw.len());
            for ns in raw {
                list.push(utf8(ns, "a namespace name", || DataLocation {
                    thread_id: t.clone(),
                    ..DataLocation::default()
                })?);
            }
            list.sort();
            out.push(list);
        }
        Ok(out)
    }

    /// Summaries of `threads` (`None` for a thread with no checkpoint left): three pipelined
    /// round trips (namespaces; count and newest id per namespace; the newest checkpoints'
    /// headers and metadata), plus one more per checkpoint found expired on the way.
    async fn thread_summaries(&self, threads: &[String]) -> Result<Vec<Option<ThreadSummary>>> {
        if threads.is_empty() {
            return Ok(Vec::new());
        }
        let namespaces = self.namespaces(threads).await?;
        let mut out: Vec<Option<ThreadSummary>> = vec![None; threads.len()];
        // Threads still to summarise; an expired newest checkpoint sends its thread round again.
        // Each pass that sends a thread round again has removed an expired entry from its
        // index, so the loop ends.
        let mut pending: Vec<usize> = (0..threads.len()).collect();
        while !pending.is_empty() {
            let mut pipe = redis::pipe();
            for &i in &pending {
                for ns in &namespaces[i] {
                    let key = self.keys.checkpoints_key(&threads[i], ns);
                    pipe.cmd("ZCARD").arg(&key);
                    pipe.cmd("ZREVRANGEBYLEX")
                        .arg(&key)
                        .arg("+")
                        .arg("-")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(1);
                }
            }
            let mut conn = self.conn();
            let replies: Vec<Value> = if pipe.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut conn)
                    .await
                    .map_err(backend("counting checkpoints"))?
            };
            let mut replies = replies.into_iter();
            // (thread index, count, namespaces, latest)
            let mut found: Vec<(usize, u64, Vec<String>, RowRef)> = Vec::new();
            for &i in &pending {
                let mut count = 0u64;
                let mut nss = Vec::new();
                let mut latest: Option<RowRef> = None;
                for ns in &namespaces[i] {
                    let n: u64 = parse(
                        next_reply(&mut replies, "counting checkpoints")?,
                        "counting checkpoints",
                    )?;
                    let ids: Vec<Vec<u8>> = parse(
                        next_reply(&mut replies, "counting checkpoints")?,
                        "reading the newest checkpoint id",
                    )?;
                    let Some(id) = ids.into_iter().next() else {
                        continue;
                    };
                    let id = utf8(id, "a checkpoint id", || DataLocation {
                        thread_id: threads[i].clone(),
                        checkpoint_ns: ns.clone(),
                        ..DataLocation::default()
                    })?;
                    count += n;
                    nss.push(ns.clone());
                    let rank = |r: &RowRef| (r.ns.is_empty(), r.id.clone(), r.ns.clone());
                    let candidate = RowRef {
                        id,
                        thread: threads[i].clone(),
                        ns: ns.clone(),
                    };
                    if latest.as_ref().is_none_or(|l| rank(&candidate) > rank(l)) {
                        latest = Some(candidate);
                    }
                }
                if let Some(latest) = latest {
                    found.push((i, count, nss, latest));
                }
            }
            let mut pipe = redis::pipe();
            for (_, _, _, r) in &found {
                pipe.cmd("HMGET")
                    .arg(self.keys.checkpoint_key(&r.thread, &r.ns, &r.id))
                    .arg(&[FIELD_CHECKPOINT, FIELD_METADATA]);
            }
            let replies: Vec<Value> = if pipe.is_empty() {
                Vec::new()
            } else {
                pipe.query_async(&mut conn)
                    .await
                    .map_err(backend("reading the threads' latest checkpoints"))?
            };
            let mut replies = replies.into_iter();
            let mut again = Vec::new();
            for (i, checkpoints, nss, r) in found {
                let fields: Vec<Option<Vec<u8>>> = parse(
                    next_reply(&mut replies, "reading the threads' latest checkpoints")?,
                    "reading a checkpoint hash",
                )?;
                let loc = || location(&r.thread, &r.ns, &r.id);
                let mut fields = fields.into_iter();
                let (header, metadata) = match (fields.next().flatten(), fields.next().flatten()) {
                    (Some(h), Some(m)) => (h, m),
                    (None, None) => {
                        // The hash expired (TTL) before its index entry: forget it, retry.
                        if self.forget_if_gone(&r).await? {
                            again.push(i);
                            continue;
                        }
                        return Err(Error::corrupt(loc(), "the checkpoint hash has no fields"));
                    }
                    (None, _) => {
                        return Err(Error::corrupt(
                            loc(),
                            "the checkpoint hash has no `checkpoint` field",
                        ))
                    }
                    (_, None) => {
                        return Err(Error::corrupt(
                            loc(),
                            "the checkpoint hash has no `metadata` field",
                        ))
                    }
                };
                let checkpoint = decode_header(&header, &loc())?;
                let metadata = decode_metadata(&metadata, &loc())?;
                out[i] = Some(ThreadSummary {
                    thread_id: r.thread.clone(),
                    checkpoints,
                    namespaces: nss,
                    latest: LatestCheckpoint {
                        config: CheckpointConfig {
                            thread_id: r.thread,
                            checkpoint_ns: r.ns,
                            checkpoint_id: Some(r.id),
                        },
                        metadata,
                        ts: checkpoint.ts,
                    },
                });
            }
            pending = again;
        }
        Ok(out)
    }

    /// Refills the buffers of the streams that ran dry, in one round trip.
    async fn refill(&self, streams: &mut [Stream], page: usize) -> Result<()> {
        let wanted: Vec<usize> = streams
            .iter()
            .enumerate()
            .filter(|(_, s)| s.buffer.is_empty() && !s.exhausted)
            .map(|(i, _)| i)
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for &i in &wanted {
            let s = &streams[i];
            pipe.cmd("ZREVRANGEBYLEX")
                .arg(self.keys.checkpoints_key(&s.thread, &s.ns))
                .arg(&s.next_max)
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(page);
        }
        let mut conn = self.conn();
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(backend("listing checkpoint ids"))?;
        for (i, reply) in wanted.into_iter().zip(replies) {
            let s = &mut streams[i];
            let ids: Vec<Vec<u8>> = parse(reply, "listing checkpoint ids")?;
            if ids.len() < page {
                s.exhausted = true;
            }
            for id in ids {
                let id = utf8(id, "a checkpoint id", || DataLocation {
                    thread_id: s.thread.clone(),
                    checkpoint_ns: s.ns.clone(),
                    ..DataLocation::default()
                })?;
                s.buffer.push_back(id);
            }
            match s.buffer.back() {
                Some(last) => s.next_max = format!("({last}"),
                None => s.exhausted = true,
            }
        }
        Ok(())
    }

    /// Deletes the checkpoints of one namespace named in `doomed` with their writes and
    /// run-index entries (queued on `pipe`).
    fn queue_checkpoint_removal(
        &self,
        pipe: &mut Pipeline,
        thread: &str,
        ns: &str,
        doomed: &[(String, Option<String>)],
    ) {
        if doomed.is_empty() {
            return;
        }
        let keys_key = self.keys.thread_keys_key(thread);
        let cps_key = self.keys.checkpoints_key(thread, ns);
        for (id, run) in doomed {
            let cp_key = self.keys.checkpoint_key(thread, ns, id);
            let w_key = self.keys.writes_key(thread, ns, id);
            pipe.cmd("DEL").arg(&cp_key).arg(&w_key).ignore();
            pipe.cmd("SREM")
                .arg(&keys_key)
                .arg(&cp_key)
                .arg(&w_key)
                .ignore();
            pipe.cmd("ZREM").arg(&cps_key).arg(id).ignore();
            if let Some(run) = run {
                pipe.cmd("SREM")
                    .arg(self.keys.run_checkpoints_key(thread, run))
                    .arg(join(ns, id))
                    .ignore();
            }
        }
    }

    /// Every checkpoint id of each namespace of `thread` (oldest first) and the thread's key
    /// list, in one round trip after the namespace lookup; `None` when the thread has no
    /// namespace.
    async fn thread_outline(
        &self,
        thread: &str,
        what: &'static str,
    ) -> Result<Option<(Vec<(String, Vec<String>)>, Vec<String>)>> {
        let namespaces = self
            .namespaces(std::slice::from_ref(&thread.to_owned()))
            .await?
            .pop()
            .unwrap_or_default();
        if namespaces.is_empty() {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for ns in &namespaces {
            pipe.cmd("ZRANGE")
                .arg(self.keys.checkpoints_key(thread, ns))
                .arg(0)
                .arg(-1);
        }
        pipe.cmd("SMEMBERS").arg(self.keys.thread_keys_key(thread));
        let replies: Vec<Value> = pipe
            .query_async(&mut self.conn())
            .await
            .map_err(backend(what))?;
        let mut replies = replies.into_iter();
        let mut per_ns = Vec::with_capacity(namespaces.len());
        for ns in namespaces {
            let ids: Vec<String> =
                parse(next_reply(&mut replies, what)?, "listing checkpoint ids")?;
            per_ns.push((ns, ids));
        }
        let thread_keys: Vec<String> =
            parse(next_reply(&mut replies, what)?, "listing a thread's keys")?;
        Ok(Some((per_ns, thread_keys)))
    }

    /// Keeps the latest checkpoint of each namespace of `thread`: its append values are
    /// rewritten as whole values and everything else goes, in one transaction.
    async fn prune_keep_latest(&self, thread: &str) -> Result<()> {
        let mut conn = self.conn();
        let Some((per_ns, thread_keys)) = self
            .thread_outline(thread, "reading a thread to prune")
            .await?
        else {
            return Ok(());
        };

        // Round trip 2: the latest header of each namespace, the run of every other one.
        let mut pipe = redis::pipe();
        for (ns, ids) in &per_ns {
            let Some((latest, older)) = ids.split_last() else {
                continue;
            };
            pipe.cmd("HGET")
                .arg(self.keys.checkpoint_key(thread, ns, latest))
                .arg(FIELD_CHECKPOINT);
            for id in older {
                pipe.cmd("HGET")
                    .arg(self.keys.checkpoint_key(thread, ns, id))
                    .arg(FIELD_RUN);
            }
        }
        // Namespaces without checkpoints (`delete_for_runs` leaves their values) have nothing
        // to read; their values go below.
        let replies: Vec<Value> = if pipe.is_empty() {
            Vec::new()
        } else {
            pipe.query_async(&mut conn)
                .await
                .map_err(backend("reading a thread to prune"))?
        };
        let mut replies = replies.into_iter();
        let mut kept: Vec<KeptLatest<'_>> = Vec::with_capacity(per_ns.len());
        for (ns, ids) in &per_ns {
            let Some((latest, older)) = ids.split_last() else {
                continue;
            };
            let header: Option<Vec<u8>> = parse(
                next_reply(&mut replies, "reading a thread to prune")?,
                "reading a checkpoint header",
            )?;
            let Some(header) = header else {
                // The latest checkpoint vanished meanwhile (expired or deleted): leave this
                // namespace alone rather than guess.
                for _ in older {
                    next_reply(&mut replies, "reading a thread to prune")?;
                }
                continue;
            };
            let header = decode_header(&header, &location(thread, ns, latest))?;
            let mut doomed = Vec::with_capacity(older.len());
            for id in older {
                let run: Option<String> = parse(
                    next_reply(&mut replies, "reading a thread to prune")?,
                    "reading a checkpoint's run",
                )?;
                doomed.push((id.clone(), run));
            }
            kept.push(KeptLatest {
                ns,
                latest,
                header,
                doomed,
            });
        }

        // Round trip 3: the kept checkpoints' append values and their chains, to rewrite.
        let rewrites = if kept.is_empty() {
            Vec::new()
        } else {
            self.whole_values_of(thread, &kept).await?
        };

        let mut pipe = redis::pipe();
        pipe.atomic();
        for (key, whole) in &rewrites {
            // Keep the key's expiry: the checkpoint referring to it is not being written.
            pipe.cmd("SET")
                .arg(key)
                .arg(encode_value(whole))
                .arg("KEEPTTL")
                .ignore();
        }
        let keys_key = self.keys.thread_keys_key(thread);
        for k in &kept {
            let ns = k.ns;
            self.queue_checkpoint_removal(&mut pipe, thread, ns, &k.doomed);
            // Writes stored for checkpoints that were never saved.
            let w_prefix = self.keys.writes_key(thread, ns, "");
            let kept_w = self.keys.writes_key(thread, ns, k.latest);
            for key in &thread_keys {
                if key.starts_with(&w_prefix) && *key != kept_w {
                    pipe.cmd("DEL").arg(key).ignore();
                    pipe.cmd("SREM").arg(&keys_key).arg(key).ignore();
                }
            }
            // Values the kept checkpoint does not refer to: with its append values now
            // whole, the links of their chains are among them.
            let referenced: HashSet<String> = self
                .referenced_blob_keys(thread, ns, &k.header)
                .into_iter()
                .collect();
            let blob_prefix = self.keys.blob_prefix(thread, ns);
            let unreferenced: Vec<&String> = thread_keys
                .iter()
                .filter(|k| k.starts_with(&blob_prefix) && !referenced.contains(*k))
                .collect();
            if !unreferenced.is_empty() {
                pipe.cmd("DEL").arg(&unreferenced).ignore();
                pipe.cmd("SREM").arg(&keys_key).arg(&unreferenced).ignore();
            }
        }
        // A namespace whose checkpoints are all gone keeps no values (its writes for
        // checkpoints never stored stay, as in the in-memory saver).
        for (ns, _) in per_ns.iter().filter(|(_, ids)| ids.is_empty()) {
            let blob_prefix = self.keys.blob_prefix(thread, ns);
            let orphaned: Vec<&String> = thread_keys
                .iter()
                .filter(|k| k.starts_with(&blob_prefix))
                .collect();
            if !orphaned.is_empty() {
                pipe.cmd("DEL").arg(&orphaned).ignore();
                pipe.cmd("SREM").arg(&keys_key).arg(&orphaned).ignore();
            }
        }
        if pipe.is_empty() {
            return Ok(());
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(backend("pruning a thread"))?;
        Ok(())
    }

    /// The whole value of each append value the `kept` checkpoints refer to, by value key,
    /// read with their chains in one round trip (whole values are not read).
    async fn whole_values_of(
        &self,
        thread: &str,
        kept: &[KeptLatest<'_>],
    ) -> Result<Vec<(String, TypedValue)>> {
        let mut batches = Vec::with_capacity(kept.len());
        let mut pipe = redis::pipe();
        for k in kept {
            let mut batch: KeyBatch<ValueRef> = KeyBatch::default();
            for (channel, version) in &k.header.channel_versions {
                let version = version.to_storage_string();
                batch.add(
                    self.keys.blob_key(thread, k.ns, channel, &version),
                    self.keys.blob_channel_prefix(thread, k.ns, channel),
                    || ValueRef {
                        channel: channel.clone(),
                        version,
                        checkpoint_id: k.latest.to_owned(),
                    },
                );
            }
            self.chain_scripts
                .queue_links(&mut pipe, LinkMode::Appends, &batch.keys, &[]);
            batches.push(batch);
        }
        let what = "reading the append values of a thread to prune";
        let replies = self.query_with_scripts(&pipe, what).await?;
        let mut replies = replies.into_iter();
        let mut rewrites = Vec::new();
        for (k, batch) in kept.iter().zip(&batches) {
            let links = parse_links(next_reply(&mut replies, what)?, batch.keys.len())?;
            let place = Place {
                thread_id: thread,
                checkpoint_ns: k.ns,
            };
            let links = place.decode_links(batch, links)?;
            // The first value of each walk is the kept checkpoint's own (append) value.
            let mut heads = Vec::new();
            let mut chains = AppendChains::default();
            for (i, version, value) in links {
                let meta = &batch.meta[i];
                if version == meta.version {
                    heads.push((i, value.clone()));
                }
                chains.insert(&meta.channel, &version, value);
            }
            for (i, head) in heads {
                let meta = &batch.meta[i];
                let whole = chains
                    .resolve(&meta.channel, &meta.version, &head)
                    .map_err(|e| {
                        Error::corrupt(
                            DataLocation {
                                channel: Some(meta.channel.clone()),
                                ..location(thread, k.ns, k.latest)
                            },
                            e.to_string(),
                        )
                    })?;
                rewrites.push((batch.keys[i].key.clone(), whole));
            }
        }
        Ok(rewrites)
    }
}

/// The checkpoint `prune` keeps in one namespace, and the ones it deletes there.
struct KeptLatest<'a> {
    ns: &'a str,
    latest: &'a str,
    header: Checkpoint,
    /// `(id, run)` of each older checkpoint.
    doomed: Vec<(String, Option<String>)>,
}

/// Decodes the first-round-trip replies for one checkpoint.
fn decode_partial(
    r: &RowRef,
    fields: Vec<Option<Vec<u8>>>,
    writes: HashMap<Vec<u8>, Vec<u8>>,
) -> Result<Option<PartialRow>> {
    let loc = || location(&r.thread, &r.ns, &r.id);
    let mut fields = fields.into_iter();
    let (header, metadata, parent, run) = (
        fields.next().flatten(),
        fields.next().flatten(),
        fields.next().flatten(),
        fields.next().flatten(),
    );
    let (header, metadata) = match (header, metadata) {
        (None, None) if parent.is_none() && run.is_none() => return Ok(None),
        (Some(h), Some(m)) => (h, m),
        (None, _) => {
            return Err(Error::corrupt(
                loc(),
                "the checkpoint hash has no `checkpoint` field",
            ))
        }
        (_, None) => {
            return Err(Error::corrupt(
                loc(),
                "the checkpoint hash has no `metadata` field",
            ))
        }
    };
    let checkpoint = decode_header(&header, &loc())?;
    if checkpoint.id != r.id {
        return Err(Error::corrupt(
            loc(),
            format!(
                "the stored header names checkpoint {:?} instead",
                checkpoint.id
            ),
        ));
    }
    let metadata = decode_metadata(&metadata, &loc())?;
    let parent = parent
        .map(|p| utf8(p, "the parent checkpoint id", loc))
        .transpose()?;
    let run = run.map(|p| utf8(p, "the run id", loc)).transpose()?;
    let mut decoded: Vec<(i64, PendingWrite)> = Vec::with_capacity(writes.len());
    for raw in writes.into_values() {
        let w = StoredWrite::decode(&raw, loc)?;
        decoded.push((w.idx, w.into_pending()));
    }
    decoded.sort_by(|(ia, a), (ib, b)| {
        (&a.task_path, &a.task_id, ia).cmp(&(&b.task_path, &b.task_id, ib))
    });
    Ok(Some(PartialRow {
        checkpoint,
        metadata,
        parent,
        run,
        writes: decoded.into_iter().map(|(_, w)| w).collect(),
    }))
}

impl RedisSaver {
    /// `get_tuple`, leaving out the values of `known` (see `get_tuple_known`).
    async fn read_tuple(
        &self,
        config: &CheckpointConfig,
        known: Option<&KnownValues<'_>>,
    ) -> Result<Option<CheckpointTuple>> {
        let thread = &config.thread_id;
        let ns = &config.checkpoint_ns;
        if let Some(id) = &config.checkpoint_id {
            let row = RowRef {
                id: id.clone(),
                thread: thread.clone(),
                ns: ns.clone(),
            };
            return Ok(self.fetch_rows(&[row], known).await?.pop().flatten());
        }
        let cps_key = self.keys.checkpoints_key(thread, ns);
        let mut conn = self.conn();
        let mut stuck: Option<String> = None;
        loop {
            let latest: Vec<Vec<u8>> = redis::cmd("ZREVRANGEBYLEX")
                .arg(&cps_key)
                .arg("+")
                .arg("-")
                .arg("LIMIT")
                .arg(0)
                .arg(1)
                .query_async(&mut conn)
                .await
                .map_err(backend("finding the latest checkpoint"))?;
            let Some(id) = latest.into_iter().next() else {
                return Ok(None);
            };
            let id = utf8(id, "a checkpoint id", || DataLocation {
                thread_id: thread.clone(),
                checkpoint_ns: ns.clone(),
                ..DataLocation::default()
            })?;
            let row = RowRef {
                id,
                thread: thread.clone(),
                ns: ns.clone(),
            };
            if let Some(found) = self
                .fetch_rows(std::slice::from_ref(&row), known)
                .await?
                .pop()
            {
                if found.is_some() {
                    return Ok(found);
                }
            }
            // Indexed but gone (its keys expired): drop it from the index and look again.
            // A hash that exists yet holds none of a checkpoint's fields would come up again
            // and again: report it rather than loop.
            if !self.forget_if_gone(&row).await? {
                if stuck.as_ref() == Some(&row.id) {
                    return Err(Error::corrupt(
                        location(thread, ns, &row.id),
                        "the checkpoint hash exists but holds no checkpoint fields",
                    ));
                }
                stuck = Some(row.id.clone());
            }
        }
    }
}

#[async_trait]
impl CheckpointSaver for RedisSaver {
    fn get_next_version_in_run(
        &self,
        current: Option<&cairn_checkpoint::ChannelVersion>,
        run_suffix: u64,
    ) -> cairn_checkpoint::ChannelVersion {
        cairn_checkpoint::ChannelVersion::next_in_run(current, run_suffix)
    }

    async fn get_tuple(&self, config: &CheckpointConfig) -> Result<Option<CheckpointTuple>> {
        self.read_tuple(config, None).await
    }

    /// Skips reading the values the caller holds, and so the append chains behind them: a
    /// runtime that kept the state of its last step reads only the header and writes.
    async fn get_tuple_known(
        &self,
        config: &CheckpointConfig,
        known: KnownValues<'_>,
    ) -> Result<Option<CheckpointTuple>> {
        self.read_tuple(config, Some(&known)).await
    }

    /// Lists newest first. Metadata filters are applied here, after decoding each candidate
    /// (plain Redis has no secondary indexes): with a filter, ids are paged through until
    /// `limit` matches are found, so a selective filter over a long history reads that
    /// history.
    async fn list(&self, query: &ListQuery) -> Result<Vec<CheckpointTuple>> {
        let limit = query.limit.unwrap_or(usize::MAX);
        if limit == 0 {
            return Ok(Vec::new());
        }
        let all_threads = query.thread_id.is_none();
        let threads = match &query.thread_id {
            Some(t) => vec![t.clone()],
            None => self.all_threads().await?,
        };
        let namespaces = match &query.checkpoint_ns {
            Some(ns) => vec![vec![ns.clone()]; threads.len()],
            None => self.namespaces(&threads).await?,
        };
        let mut streams = Vec::new();
        for (thread, nss) in threads.iter().zip(namespaces) {
            if all_threads && query.checkpoint_ns.is_none() && nss.is_empty() {
                // Every key of the thread expired: drop it from the global index.
                let mut conn = self.conn();
                let _: i64 = self
                    .scripts
                    .srem_thread_if_gone
                    .key(self.keys.namespaces_key(thread))
                    .key(self.keys.threads_key())
                    .arg(thread)
                    .invoke_async(&mut conn)
                    .await
                    .map_err(backend("dropping an expired thread from the index"))?;
                continue;
            }
            for ns in nss {
                let mut stream = Stream {
                    thread: thread.clone(),
                    ns,
                    buffer: VecDeque::new(),
                    next_max: match &query.before {
                        Some(b) => format!("({b}"),
                        None => "+".into(),
                    },
                    exhausted: false,
                };
                if let Some(id) = &query.checkpoint_id {
                    if query.before.as_ref().is_none_or(|b| id < b) {
                        stream.buffer.push_back(id.clone());
                    }
                    stream.exhausted = true;
                }
                streams.push(stream);
            }
        }
        let page = if query.filter.is_empty() {
            limit.clamp(1, 1000)
        } else {
            LIST_PAGE
        };
        let mut out = Vec::new();
        loop {
            self.refill(&mut streams, page).await?;
            let want = if query.filter.is_empty() {
                limit - out.len()
            } else {
                page
            };
            // Take candidates in global order until one namespace needs a new page.
            let mut batch = Vec::new();
            while batch.len() < want {
                let best = streams
                    .iter()
                    .enumerate()
                    .filter_map(|(i, s)| s.buffer.front().map(|id| (id, &s.thread, &s.ns, i)))
                    .max();
                let Some((_, _, _, i)) = best else { break };
                let s = &mut streams[i];
                if let Some(id) = s.buffer.pop_front() {
                    batch.push(RowRef {
                        id,
                        thread: s.thread.clone(),
                        ns: s.ns.clone(),
                    });
                }
                if s.buffer.is_empty() && !s.exhausted {
                    break;
                }
            }
            if batch.is_empty() {
                return Ok(out);
            }
            let rows = self.fetch_rows(&batch, None).await?;
            for (r, row) in batch.iter().zip(rows) {
                match row {
                    None => {
                        // Only ids from the index are dropped from it; a requested id that
                        // does not exist is simply not listed.
                        if query.checkpoint_id.is_none() && !self.forget_if_gone(r).await? {
                            warn!(thread_id = %r.thread, checkpoint_ns = %r.ns,
                                  checkpoint_id = %r.id,
                                  "skipping a checkpoint hash that holds no checkpoint fields");
                        }
                    }
                    Some(t) if t.metadata.matches(&query.filter) => {
                        out.push(t);
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                    Some(_) => {}
                }
            }
        }
    }

    async fn put(
        &self,
        config: &CheckpointConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> Result<CheckpointConfig> {
        let thread = &config.thread_id;
        let ns = &config.checkpoint_ns;
        let mut checkpoint = checkpoint;
        let values = std::mem::take(&mut checkpoint.channel_values);
        let id = checkpoint.id.clone();
        let header = encode_header(&checkpoint)?;
        // A caller key `run_id` (LangGraph's form) is the run id: indexed as one below.
        let metadata = metadata.into_normalized()?;
        let meta = encode_metadata(&metadata)?;

        let cp_key = self.keys.checkpoint_key(thread, ns, &id);
        let cps_key = self.keys.checkpoints_key(thread, ns);
        let ns_key = self.keys.namespaces_key(thread);
        let keys_key = self.keys.thread_keys_key(thread);
        let runs_key = self.keys.thread_runs_key(thread);

        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("DEL").arg(&cp_key).ignore();
        {
            let cmd = pipe
                .cmd("HSET")
                .arg(&cp_key)
                .arg(FIELD_CHECKPOINT)
                .arg(header)
                .arg(FIELD_METADATA)
                .arg(meta);
            if let Some(parent) = &config.checkpoint_id {
                cmd.arg(FIELD_PARENT).arg(parent);
            }
            if let Some(run) = &metadata.run_id {
                cmd.arg(FIELD_RUN).arg(run);
            }
            cmd.ignore();
        }
        pipe.cmd("ZADD").arg(&cps_key).arg(0).arg(&id).ignore();
        pipe.cmd("SADD").arg(&ns_key).arg(ns).ignore();
        let mut touched = vec![cp_key.clone(), cps_key.clone(), ns_key.clone()];
        // The values this checkpoint writes and the older ones it still refers to: with a
        // TTL, each (and each link of its append chain) is made to live as long as this
        // checkpoint, by the chain-aware script (`chains`) rather than a plain PEXPIRE.
        let mut value_keys: KeyBatch<()> = KeyBatch::default();
        for (channel, version) in &new_versions {
            // A channel updated to no value (a consumed trigger) gets no key: a version
            // without one reads as no value, as the empty marker did.
            let Some(value) = values.get(channel).filter(|v| !v.is_empty_marker()) else {
                continue;
            };
            let value = encode_value(value);
            let key = self
                .keys
                .blob_key(thread, ns, channel, &version.to_storage_string());
            pipe.cmd("SET").arg(&key).arg(value);
            if self.ttl_ms.is_some() {
                // Never shorten an expiry: a longer one may be what keeps a chain extending
                // this value readable (see `chains`); the script below sets it if missing.
                pipe.arg("KEEPTTL");
            }
            pipe.ignore();
            // A whole value just written has no chain to keep alive (empty prefix).
            let prefix = match values.get(channel) {
                Some(v) if v.type_tag == TAG_APPEND => {
                    self.keys.blob_channel_prefix(thread, ns, channel)
                }
                _ => String::new(),
            };
            value_keys.add(key, prefix, || ());
        }
        for (channel, version) in &checkpoint.channel_versions {
            let key = self
                .keys
                .blob_key(thread, ns, channel, &version.to_storage_string());
            let prefix = self.keys.blob_channel_prefix(thread, ns, channel);
            value_keys.add(key, prefix, || ());
        }
        if let Some(ms) = self.ttl_ms {
            self.chain_scripts
                .queue_touch(&mut pipe, ms, &value_keys.keys);
        }
        if let Some(run) = &metadata.run_id {
            let run_cps = self.keys.run_checkpoints_key(thread, run);
            let run_threads = self.keys.run_threads_key(run);
            pipe.cmd("SADD").arg(&run_cps).arg(join(ns, &id)).ignore();
            pipe.cmd("SADD").arg(&runs_key).arg(&run_threads).ignore();
            pipe.cmd("SADD").arg(&run_threads).arg(thread).ignore();
            touched.push(run_cps);
            self.expire(&mut pipe, [&run_threads, &runs_key]);
        }
        pipe.cmd("SADD")
            .arg(&keys_key)
            .arg(&touched)
            .arg(value_keys.keys.iter().map(|k| &k.key).collect::<Vec<_>>())
            .ignore();
        pipe.cmd("SADD")
            .arg(self.keys.threads_key())
            .arg(thread)
            .ignore();
        touched.push(keys_key);
        touched.push(self.keys.threads_key());
        self.expire(&mut pipe, &touched);
        let mut conn = self.conn();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(backend("saving a checkpoint"))?;
        Ok(CheckpointConfig {
            thread_id: thread.clone(),
            checkpoint_ns: ns.clone(),
            checkpoint_id: Some(id),
        })
    }

    async fn put_writes(
        &self,
        config: &CheckpointConfig,
        writes: Vec<(String, TypedValue)>,
        task_id: &str,
        task_path: &str,
    ) -> Result<()> {
        let Some(checkpoint_id) = &config.checkpoint_id else {
            return Err(Error::InvalidArgument(
                "put_writes needs a config with a checkpoint_id: writes belong to a checkpoint"
                    .into(),
            ));
        };
        if writes.is_empty() {
            return Ok(());
        }
        let thread = &config.thread_id;
        let ns = &config.checkpoint_ns;
        let w_key = self.keys.writes_key(thread, ns, checkpoint_id);
        let ns_key = self.keys.namespaces_key(thread);
        let keys_key = self.keys.thread_keys_key(thread);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for (position, (channel, value)) in writes.into_iter().enumerate() {
            let idx = write_index(&channel, position);
            let field = join(task_id, &idx.to_string());
            let stored = StoredWrite {
                task_id: task_id.to_owned(),
                channel,
                task_path: task_path.to_owned(),
                idx,
                type_tag: value.type_tag,
                data: value.data,
            }
            .encode()?;
            // Regular writes: first one wins (a retried task cannot duplicate them).
            // Special channels: the latest replaces the stored one.
            let command = if idx >= 0 { "HSETNX" } else { "HSET" };
            pipe.cmd(command)
                .arg(&w_key)
                .arg(field)
                .arg(stored)
                .ignore();
        }
        pipe.cmd("SADD").arg(&ns_key).arg(ns).ignore();
        pipe.cmd("SADD")
            .arg(&keys_key)
            .arg(&w_key)
            .arg(&ns_key)
            .ignore();
        pipe.cmd("SADD")
            .arg(self.keys.threads_key())
            .arg(thread)
            .ignore();
        self.expire(
            &mut pipe,
            [&w_key, &ns_key, &keys_key, &self.keys.threads_key()],
        );
        let mut conn = self.conn();
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(backend("saving pending writes"))?;
        Ok(())
    }

    async fn list_threads(&self, after: Option<&str>, limit: usize) -> Result<Vec<ThreadSummary>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut candidates = self.all_threads().await?;
        if let Some(after) = after {
            candidates.retain(|t| t.as_str() > after);
        }
        candidates.sort();
        let mut out = Vec::new();
        // Threads in the index may have no checkpoint left (expired or pruned away), so
        // summarise batches until `limit` threads are found.
        for batch in candidates.chunks(limit.clamp(1, 500)) {
            for summary in self.thread_summaries(batch).await?.into_iter().flatten() {
                out.push(summary);
                if out.len() == limit {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    async fn delete_thread(&self, thread_id: &str) -> Result<()> {
        let mut conn = self.conn();
        let deleted: i64 = self
            .scripts
            .delete_thread
            .key(self.keys.thread_keys_key(thread_id))
            .key(self.keys.thread_runs_key(thread_id))
            .key(self.keys.threads_key())
            .arg(thread_id)
            .invoke_async(&mut conn)
            .await
            .map_err(backend("deleting a thread"))?;
        debug!(thread_id, keys = deleted, "deleted thread");
        Ok(())
    }

    async fn copy_thread(&self, source_thread_id: &str, target_thread_id: &str) -> Result<()> {
        if source_thread_id == target_thread_id {
            return Ok(());
        }
        let src = source_thread_id;
        let dst = target_thread_id;
        let mut conn = self.conn();
        // Round trip 1: the ids of each namespace, and the thread's keys (to find values).
        let Some((per_ns, thread_keys)) = self
            .thread_outline(src, "reading the thread to copy")
            .await?
        else {
            return Ok(());
        };
        let src_tag = self.keys.thread_tag(src);
        let dst_tag = self.keys.thread_tag(dst);
        let blob_keys: Vec<String> = thread_keys
            .iter()
            .filter(|k| {
                k.strip_prefix(src_tag.as_str())
                    .is_some_and(|rest| rest.starts_with(":b:"))
            })
            .cloned()
            .collect();
        // Writes for checkpoints the source does not store (LangGraph allows them) are copied
        // too, as the in-memory saver copies them.
        let stored_writes: HashSet<String> = per_ns
            .iter()
            .flat_map(|(ns, ids)| ids.iter().map(|id| self.keys.writes_key(src, ns, id)))
            .collect();
        let loose_writes: Vec<String> = thread_keys
            .iter()
            .filter(|k| {
                k.strip_prefix(src_tag.as_str())
                    .is_some_and(|rest| rest.starts_with(":w:"))
                    && !stored_writes.contains(k.as_str())
            })
            .cloned()
            .collect();
        // Round trip 2: every checkpoint hash, writes hash and value.
        let mut pipe = redis::pipe();
        for (ns, ids) in &per_ns {
            for id in ids {
                pipe.cmd("HGETALL")
                    .arg(self.keys.checkpoint_key(src, ns, id));
                pipe.cmd("HGETALL").arg(self.keys.writes_key(src, ns, id));
            }
        }
        for key in &loose_writes {
            pipe.cmd("HGETALL").arg(key);
        }
        if !blob_keys.is_empty() {
            pipe.cmd("MGET").arg(&blob_keys);
        }
        let replies: Vec<Value> = if !pipe.is_empty() {
            pipe.query_async(&mut conn)
                .await
                .map_err(backend("reading the thread to copy"))?
        } else {
            Vec::new()
        };
        let mut replies = replies.into_iter();

        // One transaction writes the whole copy.
        let mut pipe = redis::pipe();
        pipe.atomic();
        let ns_key = self.keys.namespaces_key(dst);
        let keys_key = self.keys.thread_keys_key(dst);
        let runs_key = self.keys.thread_runs_key(dst);
        let mut touched: Vec<String> = vec![ns_key.clone()];
        let mut global: BTreeSet<String> = BTreeSet::new();
        let mut copied = 0usize;
        for (ns, ids) in &per_ns {
            let cps_key = self.keys.checkpoints_key(dst, ns);
            pipe.cmd("SADD").arg(&ns_key).arg(ns).ignore();
            touched.push(cps_key.clone());
            for id in ids {
                let fields: HashMap<String, Vec<u8>> = parse(
                    next_reply(&mut replies, "reading the thread to copy")?,
                    "reading a checkpoint hash",
                )?;
                let writes: HashMap<Vec<u8>, Vec<u8>> = parse(
                    next_reply(&mut replies, "reading the thread to copy")?,
                    "reading pending writes",
                )?;
                if fields.is_empty() {
                    continue; // expired or deleted meanwhile
                }
                let cp_key = self.keys.checkpoint_key(dst, ns, id);
                pipe.cmd("DEL").arg(&cp_key).ignore();
                let hset = pipe.cmd("HSET").arg(&cp_key);
                for (field, value) in &fields {
                    hset.arg(field).arg(value);
                }
                hset.ignore();
                pipe.cmd("ZADD").arg(&cps_key).arg(0).arg(id).ignore();
                touched.push(cp_key);
                if !writes.is_empty() {
                    let w_key = self.keys.writes_key(dst, ns, id);
                    let hset = pipe.cmd("HSET").arg(&w_key);
                    for (field, value) in &writes {
                        hset.arg(field).arg(value);
                    }
                    hset.ignore();
                    touched.push(w_key);
                }
                if let Some(run) = fields.get(FIELD_RUN) {
                    let run = utf8(run.clone(), "the run id", || location(src, ns, id))?;
                    let run_cps = self.keys.run_checkpoints_key(dst, &run);
                    pipe.cmd("SADD").arg(&run_cps).arg(join(ns, id)).ignore();
                    touched.push(run_cps);
                    global.insert(self.keys.run_threads_key(&run));
                }
                copied += 1;
            }
        }
        for key in &loose_writes {
            let writes: HashMap<Vec<u8>, Vec<u8>> = parse(
                next_reply(&mut replies, "reading the thread to copy")?,
                "reading pending writes",
            )?;
            // Keys of the source thread all start with its tag (filtered above).
            let (false, Some(rest)) = (writes.is_empty(), key.strip_prefix(src_tag.as_str()))
            else {
                continue; // expired or deleted meanwhile
            };
            // Merged as for a stored checkpoint: the source's writes win, the target's others
            // stay.
            let w_key = format!("{dst_tag}{rest}");
            let hset = pipe.cmd("HSET").arg(&w_key);
            for (field, value) in &writes {
                hset.arg(field).arg(value);
            }
            hset.ignore();
            touched.push(w_key);
        }
        // Value keys whose expiry the touch script sets (listed in the key set only).
        let mut listed: Vec<String> = Vec::new();
        if !blob_keys.is_empty() {
            let values: Vec<Option<Vec<u8>>> = parse(
                next_reply(&mut replies, "reading the thread to copy")?,
                "reading channel values",
            )?;
            let mut copied_values: KeyBatch<()> = KeyBatch::default();
            for (key, value) in blob_keys.iter().zip(values) {
                // Keys of the source thread all start with its tag (filtered above).
                let (Some(value), Some(rest)) = (value, key.strip_prefix(src_tag.as_str())) else {
                    continue; // expired meanwhile
                };
                let target = format!("{dst_tag}{rest}");
                pipe.cmd("SET").arg(&target).arg(value).ignore();
                match (self.ttl_ms, KeyLayout::channel_prefix_of(&target, &dst_tag)) {
                    // Chain-aware expiry, as for `put` (see `chains`): the copies of a
                    // chain's links never expire before the copies extending them.
                    (Some(_), Some(prefix)) => {
                        copied_values.add(target, prefix, || ());
                    }
                    _ => touched.push(target),
                }
            }
            if let Some(ms) = self.ttl_ms {
                self.chain_scripts
                    .queue_touch(&mut pipe, ms, &copied_values.keys);
            }
            listed.extend(copied_values.keys.into_iter().map(|k| k.key));
        }
        for run_threads in &global {
            pipe.cmd("SADD").arg(&runs_key).arg(run_threads).ignore();
            pipe.cmd("SADD").arg(run_threads).arg(dst).ignore();
        }
        pipe.cmd("SADD")
            .arg(&keys_key)
            .arg(&touched)
            .arg(&listed)
            .ignore();
        pipe.cmd("SADD")
            .arg(self.keys.threads_key())
            .arg(dst)
            .ignore();
        touched.push(keys_key);
        touched.push(runs_key);
        touched.push(self.keys.threads_key());
        self.expire(&mut pipe, touched.iter().chain(&global));
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(backend("writing the copied thread"))?;
        debug!(
            source = src,
            target = dst,
            checkpoints = copied,
            "copied thread"
        );
        Ok(())
    }

    async fn prune(&self, thread_ids: &[String], strategy: PruneStrategy) -> Result<()> {
        for thread in thread_ids {
            match strategy {
                PruneStrategy::Delete => self.delete_thread(thread).await?,
                PruneStrategy::KeepLatest => self.prune_keep_latest(thread).await?,
            }
        }
        Ok(())
    }

    /// Finds the checkpoints through the run index (no scan), checks each one's stored run
    /// id, and deletes the matches with their writes. Channel values are left in place: other
    /// checkpoints may share them; `prune` reclaims unreferenced ones.
    async fn delete_for_runs(&self, run_ids: &[String]) -> Result<()> {
        let run_ids: Vec<&String> = run_ids
            .iter()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        if run_ids.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        // Round trip 1: which threads each run wrote to.
        let mut pipe = redis::pipe();
        for run in &run_ids {
            pipe.cmd("SMEMBERS").arg(self.keys.run_threads_key(run));
        }
        let replies: Vec<Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(backend("finding the threads of runs"))?;
        let mut pairs: Vec<(&String, String)> = Vec::new();
        for (run, reply) in run_ids.iter().zip(replies) {
            let threads: Vec<Vec<u8>> = parse(reply, "finding the threads of runs")?;
            for t in threads {
                if let Ok(t) = String::from_utf8(t) {
                    pairs.push((run, t));
                }
            }
        }
        // Round trip 2: which checkpoints of each thread the run wrote.
        let mut candidates: Vec<(&String, String, String, String)> = Vec::new();
        if !pairs.is_empty() {
            let mut pipe = redis::pipe();
            for (run, thread) in &pairs {
                pipe.cmd("SMEMBERS")
                    .arg(self.keys.run_checkpoints_key(thread, run));
            }
            let replies: Vec<Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(backend("finding the checkpoints of runs"))?;
            for ((run, thread), reply) in pairs.iter().zip(replies) {
                let members: Vec<String> = parse(reply, "finding the checkpoints of runs")?;
                for m in members {
                    match split(&m) {
                        Some((ns, id)) => {
                            candidates.push((run, thread.clone(), ns.to_owned(), id.to_owned()))
                        }
                        None => warn!(thread_id = %thread, member = %m,
                                      "ignoring a malformed run index entry"),
                    }
                }
            }
        }
        // Round trip 3: the run each candidate really belongs to now.
        let mut doomed: BTreeMap<(String, String), Vec<(String, Option<String>)>> = BTreeMap::new();
        if !candidates.is_empty() {
            let mut pipe = redis::pipe();
            for (_, thread, ns, id) in &candidates {
                pipe.cmd("HGET")
                    .arg(self.keys.checkpoint_key(thread, ns, id))
                    .arg(FIELD_RUN);
            }
            let replies: Vec<Value> = pipe
                .query_async(&mut conn)
                .await
                .map_err(backend("checking the runs of checkpoints"))?;
            for ((run, thread, ns, id), reply) in candidates.iter().zip(replies) {
                let stored: Option<String> = parse(reply, "checking the runs of checkpoints")?;
                if stored.as_deref() == Some(run.as_str()) {
                    doomed
                        .entry((thread.clone(), ns.clone()))
                        .or_default()
                        .push((id.clone(), Some((*run).clone())));
                }
            }
        }
        // One transaction deletes them and the runs' index entries.
        let mut pipe = redis::pipe();
        pipe.atomic();
        for ((thread, ns), ids) in &doomed {
            self.queue_checkpoint_removal(&mut pipe, thread, ns, ids);
        }
        for (run, thread) in &pairs {
            let run_threads = self.keys.run_threads_key(run);
            pipe.cmd("DEL")
                .arg(self.keys.run_checkpoints_key(thread, run))
                .ignore();
            pipe.cmd("SREM")
                .arg(self.keys.thread_keys_key(thread))
                .arg(self.keys.run_checkpoints_key(thread, run))
                .ignore();
            pipe.cmd("SREM")
                .arg(self.keys.thread_runs_key(thread))
                .arg(&run_threads)
                .ignore();
        }
        for run in &run_ids {
            pipe.cmd("DEL").arg(self.keys.run_threads_key(run)).ignore();
        }
        pipe.query_async::<()>(&mut conn)
            .await
            .map_err(backend("deleting the checkpoints of runs"))?;
        debug!(
            runs = run_ids.len(),
            checkpoints = doomed.values().map(Vec::len).sum::<usize>(),
            "deleted checkpoints of runs"
        );
        Ok(())
    }
}

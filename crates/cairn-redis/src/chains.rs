//! Reading append chains in one round trip; keeping chains alive under a TTL.
//!
//! An append value ([`cairn_checkpoint::AppendValue`]) names its base version in a text
//! header, and the base lives in the value key of the same thread, namespace and channel
//! with that version. Resolving a chain means following those bases down to a whole value.
//! A Redis round trip per link would make reading the latest checkpoint of a long
//! conversation cost thousands of round trips, so the links script ([`LUA_LINKS`]) follows
//! the chains on the server: given the bases of the append values a batch of checkpoints
//! holds, it returns every link below them, each at most once, in one reply.
//!
//! Channel values themselves are read with a plain `MGET`, and the script runs only when
//! some of them are append values, because values passing through Lua are slow: on Redis 7
//! a `GET` inside a script costs about 1.5 µs plus 2 µs per KB, against a few hundredths of
//! a µs per KB for `MGET`. Checkpoints without append values therefore read exactly as fast
//! as before; a checkpoint with append values takes one more round trip, whatever the length
//! of its chains.
//!
//! Why a script rather than an index of versions per channel: the script needs no extra key,
//! so `put` (the hot path) writes exactly what it wrote before, nothing can fall out of step
//! with the values (prune, copy, delete and expiry keep working on the value keys alone), and
//! the reply holds exactly the links of the chains asked for, whereas a version index would
//! also return the other branches of a forked history and the chains a rewritten list left
//! behind. The walk stays inside the thread's hash tag (every link key is built from the
//! start key's channel prefix), so it reads only keys of the Cluster slot named by `KEYS`.
//! The price is server time per link: each link is one `GET` inside the script, about
//! 2.5 µs on Redis 7 (an 800-link chain: about 2 ms of server time, 4 ms for the whole
//! `get_tuple`; see the `redis_append_read` example). A runtime between steps avoids it with
//! `get_tuple_known`, which reads neither the values it holds nor their chains.
//!
//! # Expiry of values and chain links
//! With a TTL, a link must not expire while a checkpoint whose chain passes through it is
//! still alive. Refreshing the whole chain at every `put` would cost one command per link
//! per step. Instead [`LUA_TOUCH`]'s `ensure` keeps one invariant — *a value never expires
//! before a value that extends it* — and makes a key live at least one TTL longer by walking
//! down only until it meets a link that already does (everything below that link does too).
//! (A link stops the walk only when it lives strictly longer than one TTL: a value written in
//! the same millisecond as the walk has exactly one TTL left and is walked past, so the chain
//! gets its two TTLs at once rather than at a later step.) The links it passes get that link's
//! expiry (as an absolute time computed from the clock read before that link's expiry was, so
//! never later than it, even on a server whose clock moves while a script runs); when the walk reaches the chain's root (a whole value, or the
//! value itself when it is whole), the root and the links above it get **two** TTLs (the
//! root last, so never earlier than the links above it). The next walks then stop at once
//! until a TTL has passed, so keeping a value and its chain alive costs one `PTTL` per
//! step most of the time, and a value outlives the last checkpoint needing it by at most
//! one extra TTL. A value just written gets one TTL. Expiry times only ever grow here (an
//! expiry is never shortened, and `put` writes values with `KEEPTTL`), which is what keeps
//! the invariant true.

use std::collections::{BTreeMap, HashMap};

use cairn_checkpoint::{
    has_append_values, AppendChains, AppendValue, CheckpointTuple, DataLocation, Error, Result,
    TypedValue, TAG_APPEND, TAG_MSGPACK,
};
use redis::{Pipeline, Script, Value};

use crate::codec::{decode_value, encode_value};

/// How many leading bytes of a value `ensure` reads to find its base (the header is short;
/// a longer one is read whole).
const PEEK_BYTES: usize = 512;

/// `parse_base`: the base version named by a stored value's header, `false` for a whole
/// value, `nil` for a header cut short. `MAGIC` is filled in by [`lua_prelude`].
const LUA_PARSE: &str = r#"
local function parse_base(v)
  if not v or string.sub(v, 1, #MAGIC) ~= MAGIC then return false end
  local nl = string.find(v, '\n', #MAGIC + 1, true)
  if not nl then return nil end
  return string.sub(v, #MAGIC + 1, nl - 1)
end
"#;

/// Returns the links of chains.
///
/// `KEYS`: first the start keys, then keys the client already holds (the walk stops there:
/// their own chains are asked for separately). `ARGV[1]`: `links` (each start key is a link
/// to return) or `appends` (return a start key and its chain only when it holds an append
/// value); `ARGV[2]`: the number of start keys; `ARGV[2 + i]`: the channel prefix of
/// `KEYS[i]` (the key without its version).
///
/// Returns flat triples `i, version, value`: a value in the chain starting at `KEYS[i]`
/// (same channel) at `version`. A missing link ends its chain; the client reports the
/// break. No key is visited twice, so a chain that loops ends too.
const LUA_LINKS: &str = r#"
local peek = ARGV[1] == 'appends'
local starts = tonumber(ARGV[2])
local out, sent = {}, {}
for j = starts + 1, #KEYS do sent[KEYS[j]] = true end
for i = 1, starts do
  local prefix = ARGV[2 + i]
  local k = KEYS[i]
  if peek and redis.call('GETRANGE', k, 0, #MAGIC - 1) ~= MAGIC then k = nil end
  while k and not sent[k] do
    sent[k] = true
    local v = redis.call('GET', k)
    if not v then break end
    out[#out + 1] = i
    out[#out + 1] = string.sub(k, #prefix + 1)
    out[#out + 1] = v
    local b = parse_base(v)
    if not b then break end
    k = prefix .. b
  end
end
return out
"#;

/// Extends the expiry of values and their chains (see the module docs).
///
/// `KEYS`: value keys. `ARGV[1]`: TTL in ms; `ARGV[1 + i]`: the channel prefix of `KEYS[i]`,
/// or empty for a whole value just written (no chain to follow). `base_of` reads only the
/// start of a value (`PEEK` bytes), and is cached per key. The clock is read before the
/// first expiry a walk compares with, so a time computed from it is never later than that
/// expiry.
const LUA_TOUCH: &str = r#"
local bases = {}
local function base_of(key)
  local b = bases[key]
  if b ~= nil then return b end
  local head = redis.call('GETRANGE', key, 0, PEEK - 1)
  b = parse_base(head)
  if b == nil and #head >= PEEK then b = parse_base(redis.call('GET', key)) end
  if b == nil then b = false end
  bases[key] = b
  return b
end
local now_ms = nil
local function ensure(key, prefix, ttl)
  if prefix == '' then
    local left = redis.call('PTTL', key)
    if left ~= -2 and left < ttl then redis.call('PEXPIRE', key, string.format('%d', ttl)) end
    return
  end
  if not now_ms then
    local clock = redis.call('TIME')
    now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
  end
  local path, on_path, target, until_ms = {}, {}, 2 * ttl, nil
  local k = key
  while true do
    local left = redis.call('PTTL', k)
    if left > ttl then until_ms = now_ms + left break end
    if left == -2 or on_path[k] then break end
    path[#path + 1] = k
    on_path[k] = true
    local b = base_of(k)
    if not b then break end
    k = prefix .. b
  end
  for _, p in ipairs(path) do
    if until_ms then
      redis.call('PEXPIREAT', p, string.format('%d', until_ms))
    else
      redis.call('PEXPIRE', p, string.format('%d', target))
    end
  end
end
local ttl = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do ensure(key, ARGV[1 + i], ttl) end
return #KEYS
"#;

/// What every stored append value starts with: the stored form's tag prefix
/// ([`encode_value`]) and the first header line of [`AppendValue`].
fn append_magic() -> Vec<u8> {
    let probe = AppendValue {
        base: String::new(),
        item_tag: TAG_MSGPACK.to_owned(),
        count: 0,
        items: bytes::Bytes::new(),
    }
    .to_typed();
    let stored = encode_value(&probe);
    let end = stored
        .iter()
        .position(|&b| b == b'\n')
        .map_or(stored.len(), |i| i + 1);
    stored[..end].to_vec()
}

/// `bytes` as a Lua string literal (every byte as a decimal escape, so nothing needs quoting).
fn lua_literal(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 4 + 2);
    out.push('"');
    for b in bytes {
        out.push_str(&format!("\\{b}"));
    }
    out.push('"');
    out
}

/// `source` without indentation and blank lines: `put` sends the touch script whole, and
/// the server hashes it each time. (No script here has a string spanning lines.)
fn compact(source: &str) -> String {
    source
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The constants and `parse_base`, which both scripts start with.
fn lua_prelude() -> String {
    format!(
        "local MAGIC = {}\nlocal PEEK = {PEEK_BYTES}\n{LUA_PARSE}",
        lua_literal(&append_magic())
    )
}

/// The two scripts, built once per saver.
pub(crate) struct ChainScripts {
    links: Script,
    touch: Script,
    /// The touch script's source, sent whole with `EVAL` inside `put`'s transaction: an
    /// `EVALSHA` there could meet an empty script cache (after a server restart) and fail
    /// after the other commands ran.
    touch_source: String,
}

/// Where the links script starts (see [`LUA_LINKS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LinkMode {
    /// Each start key is a link (the base of an append value the client holds).
    Links,
    /// Each start key is a checkpoint's value: only append values and their chains are
    /// returned.
    Appends,
}

/// One value key to read, with the prefix its chain's links share.
#[derive(Debug, Clone)]
pub(crate) struct ValueKey {
    pub key: String,
    /// The key without its version: `KeyLayout::blob_channel_prefix`.
    pub prefix: String,
}

impl ChainScripts {
    pub fn new() -> Self {
        let prelude = lua_prelude();
        let touch_source = compact(&format!("{prelude}{LUA_TOUCH}"));
        ChainScripts {
            links: Script::new(&compact(&format!("{prelude}{LUA_LINKS}"))),
            touch: Script::new(&touch_source),
            touch_source,
        }
    }

    /// Queues one walk of the chains starting at `starts` (all in one thread's hash tag),
    /// stopping at the `known` keys; the reply is parsed by [`parse_links`].
    pub fn queue_links(
        &self,
        pipe: &mut Pipeline,
        mode: LinkMode,
        starts: &[ValueKey],
        known: &[&str],
    ) {
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(self.links.get_hash())
            .arg(starts.len() + known.len());
        for k in starts {
            cmd.arg(&k.key);
        }
        cmd.arg(known);
        cmd.arg(match mode {
            LinkMode::Links => "links",
            LinkMode::Appends => "appends",
        })
        .arg(starts.len());
        for k in starts {
            cmd.arg(&k.prefix);
        }
    }

    /// Queues (reply ignored) an expiry extension of `keys` and their chains to at least
    /// `ttl_ms`, as `EVAL` with the script's source (for transactions).
    pub fn queue_touch(&self, pipe: &mut Pipeline, ttl_ms: u64, keys: &[ValueKey]) {
        if !keys.is_empty() {
            pipe.cmd("EVAL").arg(&self.touch_source);
            touch_args(pipe, ttl_ms, keys);
        }
    }

    /// Like [`queue_touch`](Self::queue_touch), as `EVALSHA` (for reads, which can be sent
    /// again after [`load`](Self::load)).
    pub fn queue_touch_cached(&self, pipe: &mut Pipeline, ttl_ms: u64, keys: &[ValueKey]) {
        if !keys.is_empty() {
            pipe.cmd("EVALSHA").arg(self.touch.get_hash());
            touch_args(pipe, ttl_ms, keys);
        }
    }

    /// Loads both scripts into the server's script cache (after a `NOSCRIPT` reply).
    pub async fn load(&self, conn: &mut redis::aio::ConnectionManager) -> Result<()> {
        for script in [&self.links, &self.touch] {
            script
                .load_async(conn)
                .await
                .map_err(|e| Error::backend("redis", "loading a chain script", e))?;
        }
        Ok(())
    }
}

/// The keys and arguments of the touch script, on the command just started on `pipe`.
fn touch_args(pipe: &mut Pipeline, ttl_ms: u64, keys: &[ValueKey]) {
    pipe.arg(keys.len());
    for k in keys {
        pipe.arg(&k.key);
    }
    pipe.arg(ttl_ms);
    for k in keys {
        pipe.arg(&k.prefix);
    }
    pipe.ignore();
}

fn bad_reply(what: &str) -> Error {
    Error::Backend {
        backend: "redis",
        message: format!("reading append chains: unexpected script reply ({what})"),
        source: None,
    }
}

/// Parses the reply of [`ChainScripts::queue_links`] for `count` start keys:
/// `(start index, version, stored bytes)` of each link.
pub(crate) fn parse_links(reply: Value, count: usize) -> Result<Vec<(usize, String, Vec<u8>)>> {
    let Value::Array(links) = reply else {
        return Err(bad_reply("not an array"));
    };
    if links.len() % 3 != 0 {
        return Err(bad_reply("not triples"));
    }
    let mut out = Vec::with_capacity(links.len() / 3);
    let mut links = links.into_iter();
    while let (Some(i), Some(version), Some(value)) = (links.next(), links.next(), links.next()) {
        let (Value::Int(i), Value::BulkString(version), Value::BulkString(value)) =
            (i, version, value)
        else {
            return Err(bad_reply("a link of an unexpected shape"));
        };
        let i = usize::try_from(i)
            .ok()
            .and_then(|i| i.checked_sub(1))
            .filter(|i| *i < count)
            .ok_or_else(|| bad_reply("a link of a key not asked for"))?;
        let version = String::from_utf8(version).map_err(|_| bad_reply("a non-UTF-8 version"))?;
        out.push((i, version, value));
    }
    Ok(out)
}

/// Keys asked for in one read, each once, with what each is for.
#[derive(Debug)]
pub(crate) struct KeyBatch<T> {
    pub keys: Vec<ValueKey>,
    /// What each key stands for (e.g. its channel and version), in `keys` order.
    pub meta: Vec<T>,
    index: HashMap<String, usize>,
}

impl<T> Default for KeyBatch<T> {
    fn default() -> Self {
        KeyBatch {
            keys: Vec::new(),
            meta: Vec::new(),
            index: HashMap::new(),
        }
    }
}

impl<T> KeyBatch<T> {
    /// The index of `key`, adding it (with `meta`) when new.
    pub fn add(&mut self, key: String, prefix: String, meta: impl FnOnce() -> T) -> usize {
        if let Some(&i) = self.index.get(&key) {
            return i;
        }
        let i = self.keys.len();
        self.index.insert(key.clone(), i);
        self.keys.push(ValueKey { key, prefix });
        self.meta.push(meta());
        i
    }

    /// Whether nothing was added.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What a value key in a read stands for.
#[derive(Debug, Clone)]
pub(crate) struct ValueRef {
    pub channel: String,
    /// [`cairn_checkpoint::ChannelVersion::to_storage_string`].
    pub version: String,
    /// A checkpoint referring to the value (to name it in errors).
    pub checkpoint_id: String,
}

/// Where stored data was read, to name it in errors.
pub(crate) struct Place<'a> {
    pub thread_id: &'a str,
    pub checkpoint_ns: &'a str,
}

impl Place<'_> {
    fn corrupt(&self, meta: &ValueRef, reason: String) -> Error {
        Error::corrupt(
            DataLocation {
                thread_id: self.thread_id.to_owned(),
                checkpoint_ns: self.checkpoint_ns.to_owned(),
                checkpoint_id: Some(meta.checkpoint_id.clone()),
                channel: Some(meta.channel.clone()),
            },
            reason,
        )
    }

    fn decode(&self, meta: &ValueRef, version: &str, raw: Vec<u8>) -> Result<TypedValue> {
        decode_value(raw).ok_or_else(|| {
            self.corrupt(
                meta,
                format!(
                    "unreadable channel value at version {version} \
                     (expected <tag length>:<tag><bytes>)"
                ),
            )
        })
    }

    /// Decodes the reply of the links script for `starts`.
    pub fn decode_links(
        &self,
        starts: &KeyBatch<ValueRef>,
        links: Vec<(usize, String, Vec<u8>)>,
    ) -> Result<Vec<(usize, String, TypedValue)>> {
        links
            .into_iter()
            .map(|(i, version, raw)| {
                let value = self.decode(&starts.meta[i], &version, raw)?;
                Ok((i, version, value))
            })
            .collect()
    }
}

/// The values read for one thread and namespace.
#[derive(Debug, Default)]
pub(crate) struct GroupValues {
    /// The value of each key asked for, in [`KeyBatch`] order (`None`: missing).
    pub by_key: Vec<Option<TypedValue>>,
    /// Every value read, to resolve append values with.
    pub chains: AppendChains,
}

impl GroupValues {
    /// Decodes the `MGET` of `batch`. Unreadable stored bytes are [`Error::Corrupt`] naming
    /// a checkpoint that refers to them and the channel.
    pub fn from_values(
        place: &Place<'_>,
        batch: &KeyBatch<ValueRef>,
        raw: Vec<Option<Vec<u8>>>,
    ) -> Result<Self> {
        let mut by_key = Vec::with_capacity(raw.len());
        for (meta, raw) in batch.meta.iter().zip(raw) {
            let value = match raw {
                Some(raw) => Some(place.decode(meta, &meta.version, raw)?),
                None => None,
            };
            by_key.push(value);
        }
        // Only append values need the chains (most reads have none: skip the copies).
        let mut chains = AppendChains::default();
        if by_key.iter().flatten().any(|v| v.type_tag == TAG_APPEND) {
            for (meta, value) in batch.meta.iter().zip(&by_key) {
                if let Some(value) = value {
                    chains.insert(&meta.channel, &meta.version, value.clone());
                }
            }
        }
        Ok(GroupValues { by_key, chains })
    }

    /// The bases of the append values read, as start keys for the links script (those not
    /// read already), and the keys read (where walks stop). Empty when no value read is an
    /// append value.
    pub fn chain_starts<'a>(
        &self,
        place: &Place<'_>,
        batch: &'a KeyBatch<ValueRef>,
    ) -> Result<(KeyBatch<ValueRef>, Vec<&'a str>)> {
        let mut starts = KeyBatch::default();
        for (i, value) in self.by_key.iter().enumerate() {
            let Some(value) = value else { continue };
            let meta = &batch.meta[i];
            let Some(append) =
                AppendValue::parse(value).map_err(|e| place.corrupt(meta, e.to_string()))?
            else {
                continue;
            };
            let prefix = &batch.keys[i].prefix;
            let key = format!("{prefix}{}", append.base);
            if batch.index.contains_key(&key) {
                continue; // read already; its own chain starts at its own base
            }
            starts.add(key, prefix.clone(), || ValueRef {
                channel: meta.channel.clone(),
                version: append.base.clone(),
                checkpoint_id: meta.checkpoint_id.clone(),
            });
        }
        let known = if starts.is_empty() {
            Vec::new()
        } else {
            batch
                .keys
                .iter()
                .zip(&self.by_key)
                .filter(|(_, v)| v.is_some())
                .map(|(k, _)| k.key.as_str())
                .collect()
        };
        Ok((starts, known))
    }

    /// Records the links read for `starts`.
    pub fn add_links(
        &mut self,
        starts: &KeyBatch<ValueRef>,
        links: Vec<(usize, String, TypedValue)>,
    ) {
        for (i, version, value) in links {
            self.chains.insert(&starts.meta[i].channel, &version, value);
        }
    }
}

/// Replaces the append values of `tuples` by whole values, with one [`AppendChains`] per
/// thread and namespace from `groups`. Tuples are resolved oldest first, so each chain link
/// is joined once however many of the tuples share it.
pub(crate) fn resolve_appends(
    tuples: &mut [Option<CheckpointTuple>],
    groups: &mut BTreeMap<(String, String), GroupValues>,
) -> Result<()> {
    let mut order: Vec<&mut CheckpointTuple> = tuples
        .iter_mut()
        .flatten()
        .filter(|t| has_append_values(&t.checkpoint))
        .collect();
    order.sort_by(|a, b| {
        let key = |t: &CheckpointTuple| {
            (
                t.config.thread_id.clone(),
                t.config.checkpoint_ns.clone(),
                t.checkpoint.id.clone(),
            )
        };
        key(a).cmp(&key(b))
    });
    for tuple in order {
        let group = groups.get_mut(&(
            tuple.config.thread_id.clone(),
            tuple.config.checkpoint_ns.clone(),
        ));
        let mut empty = AppendChains::default();
        let chains = group.map_or(&mut empty, |g| &mut g.chains);
        chains.resolve_tuple(tuple)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_magic_is_the_stored_form_of_an_append_header() {
        assert_eq!(append_magic(), b"6:appendcairn-append/1\n");
        assert_eq!(lua_literal(b"a\n"), "\"\\97\\10\"");
    }

    #[test]
    fn replies_parse_and_bad_ones_are_errors() {
        let reply = Value::Array(vec![
            Value::Int(2),
            Value::BulkString(b"7".to_vec()),
            Value::BulkString(b"x".to_vec()),
        ]);
        let parsed = parse_links(reply, 2).expect("parse");
        assert_eq!(parsed, [(1, "7".to_owned(), b"x".to_vec())]);
        assert!(parse_links(Value::Array(vec![]), 0)
            .expect("empty")
            .is_empty());

        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![
                Value::Int(3),
                Value::BulkString(b"7".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
            Value::Array(vec![
                Value::BulkString(b"1".to_vec()),
                Value::BulkString(b"7".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ] {
            assert!(parse_links(bad, 2).is_err());
        }
    }

    #[test]
    fn batches_keep_each_key_once() {
        let mut batch = KeyBatch::default();
        assert!(batch.is_empty());
        assert_eq!(batch.add("k1".into(), "p".into(), || "a"), 0);
        assert_eq!(batch.add("k2".into(), "p".into(), || "b"), 1);
        assert_eq!(batch.add("k1".into(), "p".into(), || "c"), 0);
        assert_eq!(batch.meta, ["a", "b"]);
    }
}

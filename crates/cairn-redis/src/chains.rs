//! Reading channel values, append chains included, in one round trip; keeping chains alive
//! under a TTL.
//!
//! An append value ([`cairn_checkpoint::AppendValue`]) names its base version in a text
//! header, and the base lives in the value key of the same thread, namespace and channel
//! with that version. Resolving a chain means following those bases down to a whole value.
//! A Redis round trip per link would make reading the latest checkpoint of a long
//! conversation cost thousands of round trips, so [`READ_SCRIPT`] follows the chains on the
//! server: given the value keys a batch of checkpoints refers to, it returns their values
//! and every link below them, each at most once, in one reply.
//!
//! Why a script rather than an index of versions per channel: the script needs no extra key,
//! so `put` (the hot path) writes exactly what it wrote before, nothing can fall out of step
//! with the values (prune, copy, delete and expiry keep working on the value keys alone), and
//! the reply holds exactly the links of the chains asked for, whereas a version index would
//! also return the other branches of a forked history. The walk stays inside the thread's
//! hash tag (every link key is built from the head key's channel prefix), so it reads only
//! keys of the Cluster slot named by `KEYS`.
//!
//! # Expiry of chain links
//! With a TTL, a link must not expire while a checkpoint whose chain passes through it is
//! still alive. Refreshing the whole chain at every `put` would cost one command per link
//! per step. Instead [`LUA_COMMON`]'s `ensure` keeps one invariant — *a value never expires
//! before a value that extends it* — and makes a key live at least one TTL longer by walking
//! down only until it meets a link that already does (everything below that link does too).
//! The links it passes get that link's expiry (as an absolute time computed from the clock
//! read when the script started, so never later than that link's, even on a server whose
//! clock moves while a script runs); when the walk reaches the chain's root, the root and
//! the links above it get **two** TTLs (the root last, so never earlier than the links
//! above it). The next walks then stop after a link or two until a TTL has passed, so
//! keeping a chain alive costs a few commands per step, and a chain link outlives the last
//! checkpoint needing it by at most one extra TTL. Expiry times only ever grow here (an
//! expiry is never shortened, and `put` writes values with `KEEPTTL`), which is what keeps
//! the invariant true.

use std::collections::{BTreeMap, HashMap};

use cairn_checkpoint::{
    has_append_values, AppendChains, AppendValue, CheckpointTuple, DataLocation, Error, Result,
    TypedValue, TAG_MSGPACK,
};
use redis::{Pipeline, Script, Value};

use crate::codec::{decode_value, encode_value};

/// How many leading bytes of a value `ensure` reads to find its base (the header is short;
/// a longer one is read whole).
const PEEK_BYTES: usize = 512;

/// Lua shared by both scripts: `base_of` (the base version of a stored value, cached per
/// key) and `ensure` (the expiry walk described in the module docs). `MAGIC` and `PEEK` are
/// filled in by [`lua_common`].
const LUA_COMMON: &str = r#"
local bases = {}
local function parse_base(v)
  if not v or string.sub(v, 1, #MAGIC) ~= MAGIC then return false end
  local nl = string.find(v, '\n', #MAGIC + 1, true)
  if not nl then return nil end
  return string.sub(v, #MAGIC + 1, nl - 1)
end
local function base_of(key, v)
  local b = bases[key]
  if b ~= nil then return b end
  if v == nil then
    local head = redis.call('GETRANGE', key, 0, PEEK - 1)
    b = parse_base(head)
    if b == nil and #head >= PEEK then b = parse_base(redis.call('GET', key)) end
  else
    b = parse_base(v)
  end
  if b == nil then b = false end
  bases[key] = b
  return b
end
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local function ensure(key, prefix, ttl)
  local path, on_path, target, until_ms = {}, {}, 2 * ttl, nil
  local k = key
  while true do
    local left = redis.call('PTTL', k)
    if left >= ttl then until_ms = now_ms + left break end
    if left == -2 or on_path[k] then break end
    path[#path + 1] = k
    on_path[k] = true
    local b = base_of(k)
    if not b then
      if #path == 1 then target = ttl end
      break
    end
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
"#;

/// Reads values and their chains.
///
/// `KEYS`: value keys. `ARGV[1]`: `values` (return every value) or `chains` (return only
/// append values and their links); `ARGV[2]`: TTL in ms to refresh (`0`: none);
/// `ARGV[2 + i]`: the channel prefix of `KEYS[i]` (the key without its version).
///
/// Returns `{heads, links}`: `heads[i]` is the value of `KEYS[i]`, nil when missing, `0`
/// when not asked for (a whole value in `chains` mode), `1` when it is already in the reply
/// (as a link of an earlier key); `links` is flat triples `i, version, value`: a link below
/// `KEYS[i]` (same channel) at `version`. A missing link ends its chain; the client reports
/// the break.
const LUA_READ: &str = r#"
local all = ARGV[1] == 'values'
local ttl = tonumber(ARGV[2])
local heads, links, sent = {}, {}, {}
for i, key in ipairs(KEYS) do
  local prefix = ARGV[2 + i]
  if sent[key] then
    heads[i] = 1
  else
    sent[key] = true
    local v = redis.call('GET', key)
    local b = base_of(key, v)
    if b or all then heads[i] = v else heads[i] = 0 end
    while b do
      local k = prefix .. b
      if sent[k] then break end
      sent[k] = true
      local lv = redis.call('GET', k)
      if not lv then break end
      links[#links + 1] = i
      links[#links + 1] = b
      links[#links + 1] = lv
      b = base_of(k, lv)
    end
  end
end
if ttl > 0 then
  for i, key in ipairs(KEYS) do ensure(key, ARGV[2 + i], ttl) end
end
return {heads, links}
"#;

/// Extends the expiry of values and their chains (`put` with a TTL).
///
/// `KEYS`: value keys. `ARGV[1]`: TTL in ms; `ARGV[1 + i]`: the channel prefix of `KEYS[i]`.
const LUA_TOUCH: &str = r#"
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

fn lua_common() -> String {
    format!(
        "local MAGIC = {}\nlocal PEEK = {PEEK_BYTES}\n{LUA_COMMON}",
        lua_literal(&append_magic())
    )
}

/// The two scripts, built once per saver.
pub(crate) struct ChainScripts {
    read: Script,
    /// Sent whole with `EVAL` inside `put`'s transaction: an `EVALSHA` there could meet an
    /// empty script cache (after a server restart) and fail after the other commands ran.
    touch_source: String,
}

/// Whether [`ChainScripts::queue_read`] returns every value or only chains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReadMode {
    /// Every value asked for, with the links below the append values.
    Values,
    /// Only append values and their links (to rewrite them as whole values).
    Chains,
}

/// One value key to read, with the prefix its chain's links share.
#[derive(Debug, Clone)]
pub(crate) struct ValueKey {
    pub key: String,
    /// The key without its version: `KeyLayout::blob_key(.., channel, "")`.
    pub prefix: String,
}

impl ChainScripts {
    pub fn new() -> Self {
        let common = lua_common();
        ChainScripts {
            read: Script::new(&format!("{common}{LUA_READ}")),
            touch_source: format!("{common}{LUA_TOUCH}"),
        }
    }

    /// Queues one read of `keys` (all in one thread's hash tag) and their chains; the reply
    /// is parsed by [`parse_read`]. `refresh_ms`: extend the expiry of the values and their
    /// chains to at least this long.
    pub fn queue_read(
        &self,
        pipe: &mut Pipeline,
        mode: ReadMode,
        refresh_ms: Option<u64>,
        keys: &[ValueKey],
    ) {
        let cmd = pipe
            .cmd("EVALSHA")
            .arg(self.read.get_hash())
            .arg(keys.len());
        for k in keys {
            cmd.arg(&k.key);
        }
        cmd.arg(match mode {
            ReadMode::Values => "values",
            ReadMode::Chains => "chains",
        })
        .arg(refresh_ms.unwrap_or(0));
        for k in keys {
            cmd.arg(&k.prefix);
        }
    }

    /// Loads the read script into the server's script cache (after a `NOSCRIPT` reply).
    pub async fn load_read(&self, conn: &mut redis::aio::ConnectionManager) -> Result<()> {
        self.read
            .load_async(conn)
            .await
            .map(|_| ())
            .map_err(|e| Error::backend("redis", "loading the chain-reading script", e))
    }

    /// Queues (ignored reply) an expiry extension of `keys` and their chains to at least
    /// `ttl_ms`.
    pub fn queue_touch(&self, pipe: &mut Pipeline, ttl_ms: u64, keys: &[ValueKey]) {
        if keys.is_empty() {
            return;
        }
        let cmd = pipe.cmd("EVAL").arg(&self.touch_source).arg(keys.len());
        for k in keys {
            cmd.arg(&k.key);
        }
        cmd.arg(ttl_ms);
        for k in keys {
            cmd.arg(&k.prefix);
        }
        cmd.ignore();
    }
}

/// One key's value in a read reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Head {
    /// The stored bytes.
    Value(Vec<u8>),
    /// No such key.
    Missing,
    /// A whole value, not returned in [`ReadMode::Chains`].
    Skipped,
    /// Returned as a link of an earlier key: find it among the links.
    AmongLinks,
}

/// A parsed read reply.
#[derive(Debug, Default)]
pub(crate) struct ReadReply {
    /// One per key asked for, in order.
    pub heads: Vec<Head>,
    /// `(index of the key whose chain it is in, version, stored bytes)`.
    pub links: Vec<(usize, String, Vec<u8>)>,
}

fn bad_reply(what: &str) -> Error {
    Error::Backend {
        backend: "redis",
        message: format!("reading channel values: unexpected script reply ({what})"),
        source: None,
    }
}

/// Parses the reply of [`ChainScripts::queue_read`] for `count` keys.
pub(crate) fn parse_read(reply: Value, count: usize) -> Result<ReadReply> {
    let Value::Array(mut parts) = reply else {
        return Err(bad_reply("not an array"));
    };
    if parts.len() != 2 {
        return Err(bad_reply("not a pair"));
    }
    let links = parts.pop().unwrap_or(Value::Nil);
    let heads = parts.pop().unwrap_or(Value::Nil);
    let (Value::Array(heads), Value::Array(links)) = (heads, links) else {
        return Err(bad_reply("not two arrays"));
    };
    if heads.len() != count || links.len() % 3 != 0 {
        return Err(bad_reply("wrong length"));
    }
    let heads = heads
        .into_iter()
        .map(|h| match h {
            Value::BulkString(b) => Ok(Head::Value(b)),
            Value::Nil => Ok(Head::Missing),
            Value::Int(0) => Ok(Head::Skipped),
            Value::Int(1) => Ok(Head::AmongLinks),
            _ => Err(bad_reply("a value of an unexpected type")),
        })
        .collect::<Result<Vec<_>>>()?;
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
    Ok(ReadReply { heads, links: out })
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

/// The values read for one thread and namespace.
#[derive(Debug, Default)]
pub(crate) struct GroupValues {
    /// The value of each key asked for, in [`KeyBatch`] order (`None`: missing, or a whole
    /// value not asked for).
    pub by_key: Vec<Option<TypedValue>>,
    /// Every value read, to resolve append values with.
    pub chains: AppendChains,
}

impl GroupValues {
    /// Decodes the read of `batch` in `thread_id`/`checkpoint_ns`. Unreadable stored bytes
    /// are [`Error::Corrupt`] naming a checkpoint that refers to them and the channel.
    pub fn decode(
        thread_id: &str,
        checkpoint_ns: &str,
        batch: &KeyBatch<ValueRef>,
        reply: ReadReply,
    ) -> Result<Self> {
        let corrupt = |i: usize, reason: String| {
            let meta = &batch.meta[i];
            Error::corrupt(
                DataLocation {
                    thread_id: thread_id.to_owned(),
                    checkpoint_ns: checkpoint_ns.to_owned(),
                    checkpoint_id: Some(meta.checkpoint_id.clone()),
                    channel: Some(meta.channel.clone()),
                },
                reason,
            )
        };
        const SHAPE: &str = "(expected <tag length>:<tag><bytes>)";
        let mut chains = AppendChains::default();
        let mut links: HashMap<(&str, String), TypedValue> = HashMap::new();
        for (i, version, raw) in reply.links {
            let value = decode_value(raw).ok_or_else(|| {
                corrupt(
                    i,
                    format!("unreadable channel value at version {version} {SHAPE}"),
                )
            })?;
            let channel = batch.meta[i].channel.as_str();
            chains.insert(channel, &version, value.clone());
            links.insert((channel, version), value);
        }
        let mut by_key = Vec::with_capacity(reply.heads.len());
        for (i, head) in reply.heads.into_iter().enumerate() {
            let meta = &batch.meta[i];
            let value = match head {
                Head::Value(raw) => {
                    let value = decode_value(raw).ok_or_else(|| {
                        corrupt(
                            i,
                            format!(
                                "unreadable channel value at version {} {SHAPE}",
                                meta.version
                            ),
                        )
                    })?;
                    chains.insert(&meta.channel, &meta.version, value.clone());
                    Some(value)
                }
                Head::AmongLinks => links
                    .get(&(meta.channel.as_str(), meta.version.clone()))
                    .cloned(),
                Head::Missing | Head::Skipped => None,
            };
            by_key.push(value);
        }
        Ok(GroupValues { by_key, chains })
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
            Value::Array(vec![
                Value::BulkString(b"v".to_vec()),
                Value::Nil,
                Value::Int(0),
                Value::Int(1),
            ]),
            Value::Array(vec![
                Value::Int(1),
                Value::BulkString(b"7".to_vec()),
                Value::BulkString(b"x".to_vec()),
            ]),
        ]);
        let parsed = parse_read(reply, 4).expect("parse");
        assert_eq!(
            parsed.heads,
            [
                Head::Value(b"v".to_vec()),
                Head::Missing,
                Head::Skipped,
                Head::AmongLinks
            ]
        );
        assert_eq!(parsed.links, [(0, "7".to_owned(), b"x".to_vec())]);

        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Array(vec![])]),
            Value::Array(vec![
                Value::Array(vec![Value::Int(5)]),
                Value::Array(vec![]),
            ]),
            Value::Array(vec![
                Value::Array(vec![Value::Nil]),
                Value::Array(vec![
                    Value::Int(2),
                    Value::BulkString(b"7".to_vec()),
                    Value::BulkString(b"x".to_vec()),
                ]),
            ]),
        ] {
            assert!(parse_read(bad, 1).is_err());
        }
    }

    #[test]
    fn batches_keep_each_key_once() {
        let mut batch = KeyBatch::default();
        assert_eq!(batch.add("k1".into(), "p".into(), || "a"), 0);
        assert_eq!(batch.add("k2".into(), "p".into(), || "b"), 1);
        assert_eq!(batch.add("k1".into(), "p".into(), || "c"), 0);
        assert_eq!(batch.meta, ["a", "b"]);
    }
}

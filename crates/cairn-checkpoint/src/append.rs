//! Append values: a list channel stored as the items added since an earlier version.
//!
//! A message list grows by a few items per step. Storing the whole list at every version makes
//! a thread's storage grow with the square of its length (LangGraph's savers do this; its beta
//! `DeltaChannel` only divides the square by a constant). Instead the runtime stores an
//! *append value*: the version it extends (its *base*) and the new items. The base is another
//! version of the same channel in the same thread and namespace, itself either a whole list
//! (the chain's root) or another append value. Each item is then stored exactly once per
//! branch of history, so storage is linear in the number of items.
//!
//! Savers store append values as given and hand back whole values: on every read they walk
//! the chain down to its root (one range read per channel, see [`AppendChains`]) and join the
//! items, so callers never see an append value. Deleting keeps what chains still need
//! ([`AppendChains::live`]); `prune` with `KeepLatest` rewrites the kept head as a whole value
//! first, so nothing older has to stay.
//!
//! # Stored form
//! Tag [`TAG_APPEND`]; the bytes are a text header of four lines: `cairn-append/1`, the base
//! version ([`ChannelVersion::to_storage_string`]), the items' tag ([`TAG_MSGPACK`] or
//! [`TAG_JSON`]) and the item count; then the encoded items back to back (JSON: separated by
//! commas). The header is text so that a server-side script can follow a chain.
//!
//! ```
//! use cairn_checkpoint::{AppendValue, ChannelVersion, ValueCodec, TAG_APPEND};
//! let codec = ValueCodec::default();
//! let base = ChannelVersion::Int(1);
//! let delta = codec.encode_append(&base, ["c", "d"].iter())?;
//! assert_eq!(delta.type_tag, TAG_APPEND);
//! let parsed = AppendValue::parse(&delta)?.expect("an append value");
//! assert_eq!((parsed.base.as_str(), parsed.count), ("1", 2));
//!
//! // The whole value: the base's items, then the appended ones.
//! let root = codec.encode(&vec!["a", "b"])?;
//! let whole = parsed.join_onto(&root)?;
//! assert_eq!(codec.decode::<Vec<String>>(&whole)?, ["a", "b", "c", "d"]);
//! # Ok::<(), cairn_checkpoint::Error>(())
//! ```

use std::collections::{HashMap, HashSet};

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::checkpoint::{Checkpoint, CheckpointTuple};
use crate::error::{Error, Result};
use crate::value::{
    msgpack_array_header, put_msgpack_array_header, Format, TypedValue, ValueCodec, TAG_JSON,
    TAG_MSGPACK,
};
use crate::version::ChannelVersion;

/// Type tag of an append value (see [`AppendValue`]).
pub const TAG_APPEND: &str = "append";

const MAGIC: &str = "cairn-append/1";

/// The parts of an append value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppendValue {
    /// The version this value extends, as [`ChannelVersion::to_storage_string`] writes it.
    pub base: String,
    /// How the items are encoded: [`TAG_MSGPACK`] or [`TAG_JSON`].
    pub item_tag: String,
    /// How many items follow.
    pub count: u64,
    /// The encoded items, back to back (JSON: separated by commas).
    pub items: Bytes,
}

/// `n` in decimal, written at the end of `buf`.
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

fn malformed(reason: impl std::fmt::Display) -> Error {
    Error::Decode {
        type_tag: TAG_APPEND.to_owned(),
        message: format!("malformed append value: {reason}"),
    }
}

impl AppendValue {
    /// The stored form of this value.
    pub fn to_typed(&self) -> TypedValue {
        // Built by hand: savers that store the parts (SQLite) rebuild this form on every read
        // of a chain link, and `format!` was most of that cost.
        let mut digits = [0u8; 20];
        let count = decimal(self.count, &mut digits);
        let header = MAGIC.len() + self.base.len() + self.item_tag.len() + count.len() + 4;
        let mut data = BytesMut::with_capacity(header + self.items.len());
        for part in [
            MAGIC.as_bytes(),
            self.base.as_bytes(),
            self.item_tag.as_bytes(),
            count,
        ] {
            data.put_slice(part);
            data.put_u8(b'\n');
        }
        data.put_slice(&self.items);
        TypedValue::new(TAG_APPEND, data.freeze())
    }

    /// The parts of `value`; `Ok(None)` when it is not an append value.
    pub fn parse(value: &TypedValue) -> Result<Option<AppendValue>> {
        if value.type_tag != TAG_APPEND {
            return Ok(None);
        }
        let h = Header::parse(&value.data)?;
        Ok(Some(AppendValue {
            base: h.base.to_owned(),
            item_tag: h.item_tag.to_owned(),
            count: h.count,
            items: value.data.slice(h.items_at..),
        }))
    }

    /// The whole value: the items of `base` (a whole list in the same encoding) followed by
    /// this value's items.
    pub fn join_onto(&self, base: &TypedValue) -> Result<TypedValue> {
        join(base, std::slice::from_ref(self))
    }
}

/// An append value's header, borrowed from its bytes (reading chains allocates nothing per
/// link but the joined result).
struct Header<'a> {
    base: &'a str,
    item_tag: &'a str,
    count: u64,
    /// Where the items start.
    items_at: usize,
}

impl<'a> Header<'a> {
    fn parse(data: &'a [u8]) -> Result<Self> {
        let mut lines = [""; 4];
        let mut at = 0;
        for line in &mut lines {
            let Some(end) = data[at..].iter().position(|&b| b == b'\n') else {
                return Err(malformed("the header is cut short"));
            };
            *line = std::str::from_utf8(&data[at..at + end])
                .map_err(|_| malformed("the header is not UTF-8"))?;
            at += end + 1;
        }
        let [magic, base, item_tag, count] = lines;
        if magic != MAGIC {
            return Err(malformed(format!("unknown header {magic:?}")));
        }
        if item_tag != TAG_MSGPACK && item_tag != TAG_JSON {
            return Err(malformed(format!("unknown item tag {item_tag:?}")));
        }
        let count: u64 = count
            .parse()
            .map_err(|_| malformed(format!("item count {count:?} is not a number")))?;
        // Every item takes at least one byte, and items need a count: a damaged count
        // would otherwise drop items or make a list header claim more than the bytes hold.
        let items_len = (data.len() - at) as u64;
        if count > items_len || (count == 0) != (items_len == 0) {
            return Err(malformed(format!(
                "item count {count} does not fit the {items_len} bytes of items"
            )));
        }
        Ok(Header {
            base,
            item_tag,
            count,
            items_at: at,
        })
    }
}

/// The base version of `value` when it is an append value. Backends that index values by
/// their base call this when storing.
pub fn append_base(value: &TypedValue) -> Result<Option<String>> {
    if value.type_tag != TAG_APPEND {
        return Ok(None);
    }
    Ok(Some(Header::parse(&value.data)?.base.to_owned()))
}

impl ValueCodec {
    /// Encodes `items` as an append value extending version `base` of the same channel.
    /// Each item is encoded as it would be inside a list, so joining the items onto the
    /// base's list gives exactly the bytes of encoding the whole list.
    pub fn encode_append<'a, T, I>(&self, base: &ChannelVersion, items: I) -> Result<TypedValue>
    where
        T: Serialize + 'a + ?Sized,
        I: IntoIterator<Item = &'a T>,
    {
        let mut data = Vec::new();
        let mut count = 0u64;
        for item in items {
            match self.format() {
                Format::MsgPack => {
                    rmp_serde::encode::write_named(&mut data, item).map_err(|e| Error::Encode {
                        format: "msgpack",
                        message: e.to_string(),
                    })?
                }
                Format::Json => {
                    if count > 0 {
                        data.push(b',');
                    }
                    serde_json::to_writer(&mut data, item).map_err(|e| Error::Encode {
                        format: "json",
                        message: e.to_string(),
                    })?
                }
            }
            count += 1;
        }
        if data.len() > self.max_value_bytes() {
            return Err(Error::ValueTooLarge {
                size: data.len(),
                limit: self.max_value_bytes(),
            });
        }
        Ok(AppendValue {
            base: base.to_storage_string(),
            item_tag: self.format().tag().to_owned(),
            count,
            items: Bytes::from(data),
        }
        .to_typed())
    }
}

/// A whole list split into its element count and its encoded elements.
struct ListParts<'a> {
    count: u64,
    items: &'a [u8],
}

fn list_parts(value: &TypedValue) -> Result<ListParts<'_>> {
    let data = &value.data[..];
    match value.type_tag.as_str() {
        TAG_MSGPACK => {
            let (count, header) = msgpack_array_header(data)
                .ok_or_else(|| malformed("the base value is not a MessagePack list"))?;
            Ok(ListParts {
                count: count as u64,
                items: &data[header..],
            })
        }
        TAG_JSON => {
            let text = data.trim_ascii();
            let inner = text
                .strip_prefix(b"[")
                .and_then(|t| t.strip_suffix(b"]"))
                .ok_or_else(|| malformed("the base value is not a JSON list"))?
                .trim_ascii();
            // A count is only needed for MessagePack's header; JSON lists carry none.
            Ok(ListParts {
                count: u64::from(!inner.is_empty()),
                items: inner,
            })
        }
        other => Err(malformed(format!(
            "the base value is a {other:?} value, not a list"
        ))),
    }
}

/// `append`'s items re-encoded in `tag`'s format (a thread whose codec changed between
/// runs), through `serde_json::Value`.
fn transcode(append: &AppendValue, tag: &str) -> Result<AppendValue> {
    let items: Vec<serde_json::Value> = match append.item_tag.as_str() {
        TAG_JSON => {
            let mut text = Vec::with_capacity(append.items.len() + 2);
            text.push(b'[');
            text.extend_from_slice(&append.items);
            text.push(b']');
            serde_json::from_slice(&text).map_err(malformed)?
        }
        _ => {
            let count = u32::try_from(append.count).map_err(|_| malformed("too many items"))?;
            let mut data = Vec::with_capacity(append.items.len() + 5);
            data.push(0xdd);
            data.extend_from_slice(&count.to_be_bytes());
            data.extend_from_slice(&append.items);
            rmp_serde::from_slice(&data).map_err(malformed)?
        }
    };
    let format = if tag == TAG_JSON {
        Format::Json
    } else {
        Format::MsgPack
    };
    let codec = ValueCodec::new(format).with_max_value_bytes(usize::MAX);
    let value = codec.encode_append(&ChannelVersion::Str(append.base.clone()), items.iter())?;
    AppendValue::parse(&value)?.ok_or_else(|| malformed("transcoding lost the append tag"))
}

/// `root` (a whole list) followed by the items of `appends`, oldest first. Items in another
/// format than the root's are transcoded.
fn join(root: &TypedValue, appends: &[AppendValue]) -> Result<TypedValue> {
    let parts = list_parts(root)?;
    if appends.iter().any(|a| a.item_tag != root.type_tag) {
        let same: Vec<AppendValue> = appends
            .iter()
            .map(|a| {
                if a.item_tag == root.type_tag {
                    Ok(a.clone())
                } else {
                    transcode(a, &root.type_tag)
                }
            })
            .collect::<Result<_>>()?;
        return join(root, &same);
    }
    let extra: usize = appends.iter().map(|a| a.items.len() + 1).sum();
    let mut out = BytesMut::with_capacity(parts.items.len() + extra + 5);
    if root.type_tag == TAG_MSGPACK {
        let total = appends
            .iter()
            .try_fold(parts.count, |sum, a| sum.checked_add(a.count));
        let mut header = Vec::with_capacity(5);
        total
            .and_then(|total| usize::try_from(total).ok())
            .and_then(|total| put_msgpack_array_header(&mut header, total))
            .ok_or_else(|| malformed("more than 2^32 items in one list"))?;
        out.put_slice(&header);
        out.put_slice(parts.items);
        for a in appends {
            out.put_slice(&a.items);
        }
    } else {
        out.put_u8(b'[');
        out.put_slice(parts.items);
        let mut any = parts.count > 0;
        for a in appends.iter().filter(|a| a.count > 0) {
            if any {
                out.put_u8(b',');
            }
            out.put_slice(&a.items);
            any = true;
        }
        out.put_u8(b']');
    }
    Ok(TypedValue::new(root.type_tag.clone(), out.freeze()))
}

/// The append value that turns `base_whole` (the whole list at version `base`) into `whole`,
/// when `whole` is `base_whole` followed by more items in the same encoding; `None`
/// otherwise (store `whole` as it is). Tools that copy whole values between savers use it
/// to keep storage linear.
///
/// ```
/// use cairn_checkpoint::{append_diff, AppendChains, ChannelVersion, ValueCodec};
/// let codec = ValueCodec::default();
/// let (old, new) = (codec.encode(&["a"])?, codec.encode(&["a", "b"])?);
/// let delta = append_diff(&ChannelVersion::Int(1), &old, &new).expect("new extends old");
/// let mut chains = AppendChains::default();
/// chains.insert("m", "1", old.clone());
/// assert_eq!(chains.resolve("m", "2", &delta)?, new);
/// assert!(append_diff(&ChannelVersion::Int(1), &new, &old).is_none());
/// # Ok::<(), cairn_checkpoint::Error>(())
/// ```
pub fn append_diff(
    base: &ChannelVersion,
    base_whole: &TypedValue,
    whole: &TypedValue,
) -> Option<TypedValue> {
    if base_whole.type_tag != whole.type_tag {
        return None;
    }
    let (old, new) = (list_parts(base_whole).ok()?, list_parts(whole).ok()?);
    let rest = new.items.strip_prefix(old.items)?;
    let (items, count) = if whole.type_tag == TAG_JSON {
        let rest = match (old.items.is_empty(), rest) {
            (true, rest) => rest,
            (false, []) => rest,
            (false, [b',', rest @ ..]) => rest,
            _ => return None,
        };
        let mut text = Vec::with_capacity(rest.len() + 2);
        text.push(b'[');
        text.extend_from_slice(rest);
        text.push(b']');
        let parsed: Vec<serde::de::IgnoredAny> = serde_json::from_slice(&text).ok()?;
        (rest, parsed.len() as u64)
    } else {
        (rest, new.count.checked_sub(old.count)?)
    };
    Some(
        AppendValue {
            base: base.to_storage_string(),
            item_tag: whole.type_tag.clone(),
            count,
            items: Bytes::copy_from_slice(items),
        }
        .to_typed(),
    )
}

/// Whether any of `checkpoint`'s values is an append value (a saver must then resolve it).
pub fn has_append_values(checkpoint: &Checkpoint) -> bool {
    checkpoint
        .channel_values
        .values()
        .any(|v| v.type_tag == TAG_APPEND)
}

/// The append values of `checkpoint`: `(channel, version)` of each, for a saver to fetch the
/// stored values their chains need.
pub fn append_heads(checkpoint: &Checkpoint) -> impl Iterator<Item = (&str, &ChannelVersion)> {
    checkpoint
        .channel_values
        .iter()
        .filter(|(_, v)| v.type_tag == TAG_APPEND)
        .filter_map(|(c, _)| checkpoint.channel_versions.get(c).map(|v| (c.as_str(), v)))
}

/// The largest version string a chain starting at `version` can pass through, for savers that
/// fetch a chain's links with one range read (`version <= bound`). `Some` only for versions in
/// Cairn's and LangGraph's zero-padded form (32 digits, a dot, a suffix), whose string order
/// is their counter order and whose bases are in the same form; `None` otherwise (read every
/// stored version of the channel).
pub fn chain_fetch_bound(version: &ChannelVersion) -> Option<&str> {
    match version {
        ChannelVersion::Str(s)
            if s.len() > 33
                && s.as_bytes()[32] == b'.'
                && s.as_bytes()[..32].iter().all(u8::is_ascii_digit) =>
        {
            Some(s)
        }
        _ => None,
    }
}

/// Resolves append values into whole values for one thread and namespace.
///
/// A saver loads the stored values the chains may need — every stored version of the
/// channel up to the head's version is enough: a base always has a smaller counter than the
/// value extending it — with [`insert`](Self::insert), then calls
/// [`resolve_tuple`](Self::resolve_tuple) for each tuple it returns. Whole values are
/// remembered per version, so resolving a whole history walks each chain link once when the
/// tuples come oldest first.
///
/// ```
/// use cairn_checkpoint::{AppendChains, ChannelVersion, ValueCodec};
/// let codec = ValueCodec::default();
/// let mut chains = AppendChains::default();
/// chains.insert("messages", "1", codec.encode(&vec!["a"])?);
/// let head = codec.encode_append(&ChannelVersion::Int(1), ["b"].iter())?;
/// chains.insert("messages", "2", head.clone());
/// let whole = chains.resolve("messages", "2", &head)?;
/// assert_eq!(codec.decode::<Vec<String>>(&whole)?, ["a", "b"]);
/// # Ok::<(), cairn_checkpoint::Error>(())
/// ```
#[derive(Debug, Default)]
pub struct AppendChains {
    channels: HashMap<String, ChannelChain>,
}

/// One channel's recorded values and resolved whole values, by version storage string.
#[derive(Debug, Default)]
struct ChannelChain {
    stored: HashMap<String, TypedValue>,
    whole: HashMap<String, TypedValue>,
}

impl AppendChains {
    fn channel_mut(&mut self, channel: &str) -> &mut ChannelChain {
        if !self.channels.contains_key(channel) {
            self.channels
                .insert(channel.to_owned(), ChannelChain::default());
        }
        self.channels
            .get_mut(channel)
            .unwrap_or_else(|| unreachable!("inserted above"))
    }

    /// Records the stored value of `channel` at `version` (a storage string).
    pub fn insert(&mut self, channel: &str, version: &str, value: TypedValue) {
        self.channel_mut(channel)
            .stored
            .insert(version.to_owned(), value);
    }

    /// Records the stored values of the chain starting at `channel`'s `version`, found with
    /// `lookup` (version storage string → stored value). Stops at a version already recorded,
    /// so gathering many heads of one history reads each link once.
    pub fn gather<'a>(
        &mut self,
        channel: &str,
        version: &str,
        lookup: impl Fn(&str) -> Option<&'a TypedValue>,
    ) {
        let chain = self.channel_mut(channel);
        let mut version = version.to_owned();
        loop {
            if chain.stored.contains_key(&version) || chain.whole.contains_key(&version) {
                return;
            }
            let Some(value) = lookup(&version) else {
                return;
            };
            let base = append_base(value).ok().flatten();
            chain.stored.insert(version, value.clone());
            match base {
                Some(base) => version = base,
                None => return,
            }
        }
    }

    /// The whole value of `channel` at `version`, whose stored value is `head`. `head` is
    /// returned as it is when it is not an append value. Errors name what is missing; callers
    /// add the location ([`resolve_tuple`](Self::resolve_tuple) does).
    pub fn resolve(
        &mut self,
        channel: &str,
        version: &str,
        head: &TypedValue,
    ) -> Result<TypedValue> {
        if head.type_tag != TAG_APPEND {
            return Ok(head.clone());
        }
        let chain = self.channel_mut(channel);
        if let Some(whole) = chain.whole.get(version) {
            return Ok(whole.clone());
        }
        let whole = chain.walk(version, head)?;
        chain.whole.insert(version.to_owned(), whole.clone());
        Ok(whole)
    }

    /// Replaces every append value of `tuple`'s checkpoint by its whole value. A broken chain
    /// is [`Error::Corrupt`] naming the thread, checkpoint and channel.
    pub fn resolve_tuple(&mut self, tuple: &mut CheckpointTuple) -> Result<()> {
        let heads: Vec<(String, String)> = append_heads(&tuple.checkpoint)
            .map(|(c, v)| (c.to_owned(), v.to_storage_string()))
            .collect();
        for (channel, version) in heads {
            let Some(head) = tuple.checkpoint.channel_values.get(&channel) else {
                continue;
            };
            let whole = self
                .resolve(&channel, &version, head)
                .map_err(|e| Error::corrupt(tuple.location(Some(&channel)), e.to_string()))?;
            tuple.checkpoint.channel_values.insert(channel, whole);
        }
        Ok(())
    }

    /// The `(channel, version)` keys of the recorded values that the chains starting at
    /// `heads` pass through (the heads included). A saver deleting checkpoints keeps these.
    pub fn live<'a>(
        &self,
        heads: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> HashSet<(String, String)> {
        let mut live = HashSet::new();
        for (channel, version) in heads {
            let stored = self.channels.get(channel).map(|c| &c.stored);
            mark_chain_live(&mut live, channel, version, |v| {
                stored.and_then(|s| s.get(v))
            });
        }
        live
    }
}

/// Adds to `live` the key `(channel, version)` and the keys of every stored value the chain
/// starting there passes through, found with `lookup` (version storage string → stored
/// value). Stops at a key already in `live`, so marking many heads of one history walks each
/// link once. A saver reclaiming values keeps the marked ones.
pub fn mark_chain_live<'a>(
    live: &mut HashSet<(String, String)>,
    channel: &str,
    version: &str,
    lookup: impl Fn(&str) -> Option<&'a TypedValue>,
) {
    let mut key = (channel.to_owned(), version.to_owned());
    while live.insert(key.clone()) {
        let Some(Ok(Some(base))) = lookup(&key.1).map(append_base) else {
            break;
        };
        key.1 = base;
    }
}

/// One link of a chain being walked: the items an append value adds.
struct Link {
    item_tag_is_json: bool,
    count: u64,
    items: Bytes,
}

impl ChannelChain {
    /// Follows `head` (stored at `version`) down to a whole value or a remembered one and
    /// joins the items on the way.
    fn walk(&self, version: &str, head: &TypedValue) -> Result<TypedValue> {
        let mut links: Vec<Link> = Vec::new();
        let mut current = head;
        let mut current_version = version;
        let root = loop {
            if current.type_tag != TAG_APPEND {
                break current;
            }
            let h = Header::parse(&current.data)?;
            if crate::version::parse_counter(h.base)
                >= crate::version::parse_counter(current_version)
            {
                return Err(malformed(format!(
                    "version {current_version} extends version {}, which is not older",
                    h.base
                )));
            }
            links.push(Link {
                item_tag_is_json: h.item_tag == TAG_JSON,
                count: h.count,
                items: current.data.slice(h.items_at..),
            });
            current_version = h.base;
            if let Some(whole) = self.whole.get(h.base) {
                break whole;
            }
            current = self.stored.get(h.base).ok_or_else(|| {
                malformed(format!(
                    "it extends version {}, which is not stored (deleted by something \
                     other than Cairn's delete, prune or copy?)",
                    h.base
                ))
            })?;
        };
        let appends: Vec<AppendValue> = links
            .into_iter()
            .rev()
            .map(|l| AppendValue {
                // The base is not needed to join.
                base: String::new(),
                item_tag: if l.item_tag_is_json {
                    TAG_JSON
                } else {
                    TAG_MSGPACK
                }
                .to_owned(),
                count: l.count,
                items: l.items,
            })
            .collect();
        join(root, &appends)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn append_of(count: u64, items: Vec<u8>) -> AppendValue {
        AppendValue {
            base: "00000000000000000000000000000009.2087fe69ce9d83b1".into(),
            item_tag: TAG_MSGPACK.into(),
            count,
            items: Bytes::from(items),
        }
    }

    #[test]
    fn the_stored_form_round_trips_and_writes_counts_in_decimal() {
        for count in [0u64, 7, 10, 12_345] {
            // `count` positive fixints, one byte each.
            let value = append_of(count, vec![1; count as usize]);
            let typed = value.to_typed();
            let header = format!("{MAGIC}\n{}\n{}\n{count}\n", value.base, value.item_tag);
            assert!(typed.data.starts_with(header.as_bytes()), "{count}");
            assert_eq!(AppendValue::parse(&typed).expect("parse"), Some(value));
        }
    }

    /// A damaged count is refused when the value is read, never trusted: one the items'
    /// bytes cannot hold (u64::MAX once overflowed the joined list's item count), or none
    /// over items that would then be dropped.
    #[test]
    fn counts_that_do_not_fit_their_items_are_refused() {
        for (count, items) in [
            (u64::MAX, b"\xa1x".to_vec()),
            (3, b"\xa1x".to_vec()),
            (0, b"\xa1x".to_vec()),
            (1, Vec::new()),
        ] {
            let typed = append_of(count, items).to_typed();
            let err = AppendValue::parse(&typed).expect_err("refused");
            assert!(err.to_string().contains("does not fit"), "{count}: {err}");
        }
        // Read as a link of a chain too.
        let codec = ValueCodec::default();
        let mut chains = AppendChains::default();
        chains.insert("m", "1", codec.encode(&vec!["a"]).expect("root"));
        let mut link = append_of(u64::MAX, b"\xa1b".to_vec());
        link.base = "1".into();
        let head = link.to_typed();
        chains.insert("m", "2", head.clone());
        assert!(chains.resolve("m", "2", &head).is_err());
    }

    fn chain(codec: ValueCodec) -> (AppendChains, TypedValue) {
        let mut chains = AppendChains::default();
        chains.insert("m", "1", codec.encode(&vec![0u32; 14]).expect("root"));
        let mut head = TypedValue::empty();
        for v in 2..=4i64 {
            let items: Vec<u32> = (0..v as u32).map(|i| 100 * v as u32 + i).collect();
            head = codec
                .encode_append(&ChannelVersion::Int(v - 1), items.iter())
                .expect("append");
            chains.insert("m", &v.to_string(), head.clone());
        }
        (chains, head)
    }

    #[test]
    fn joined_bytes_equal_encoding_the_whole_list() {
        for codec in [ValueCodec::default(), ValueCodec::new(Format::Json)] {
            let (mut chains, head) = chain(codec);
            let whole = chains.resolve("m", "4", &head).expect("resolve");
            let mut expected = vec![0u32; 14];
            for v in 2..=4u32 {
                expected.extend((0..v).map(|i| 100 * v + i));
            }
            // 14 + 9 items: the MessagePack header grows from fixarray to array16.
            assert_eq!(whole, codec.encode(&expected).expect("encode"), "{codec:?}");
        }
    }

    #[test]
    fn empty_roots_and_empty_appends_join() {
        for codec in [ValueCodec::default(), ValueCodec::new(Format::Json)] {
            let root = codec.encode(&Vec::<String>::new()).expect("root");
            let none = AppendValue::parse(
                &codec
                    .encode_append::<String, _>(&ChannelVersion::Int(1), [])
                    .expect("empty"),
            )
            .expect("parse")
            .expect("append");
            let two = AppendValue::parse(
                &codec
                    .encode_append(&ChannelVersion::Int(2), ["a", "b"].iter())
                    .expect("two"),
            )
            .expect("parse")
            .expect("append");
            let whole = join(&root, &[none, two]).expect("join");
            assert_eq!(
                codec.decode::<Vec<String>>(&whole).expect("decode"),
                ["a", "b"]
            );
        }
    }

    #[test]
    fn broken_chains_and_bad_values_are_errors() {
        let codec = ValueCodec::default();
        let (mut chains, head) = chain(codec);
        chains.channel_mut("m").stored.remove("2");
        let err = chains.resolve("m", "4", &head).expect_err("broken");
        assert!(err.to_string().contains("not stored"), "{err}");

        let cut = TypedValue::new(TAG_APPEND, &b"cairn-append/1\n3\n"[..]);
        assert!(AppendValue::parse(&cut).is_err());
        let cyclic = codec
            .encode_append(&ChannelVersion::Int(9), [1u8].iter())
            .expect("append");
        let err = chains.resolve("m", "5", &cyclic).expect_err("base newer");
        assert!(err.to_string().contains("not older"), "{err}");
    }

    #[test]
    fn items_in_another_format_are_transcoded() {
        for (root_codec, item_codec) in [
            (ValueCodec::default(), ValueCodec::new(Format::Json)),
            (ValueCodec::new(Format::Json), ValueCodec::default()),
        ] {
            let mut chains = AppendChains::default();
            chains.insert("m", "1", root_codec.encode(&vec!["a"]).expect("root"));
            let head = item_codec
                .encode_append(&ChannelVersion::Int(1), ["b", "c"].iter())
                .expect("append");
            let whole = chains.resolve("m", "2", &head).expect("resolve");
            assert_eq!(whole.type_tag, root_codec.format().tag());
            assert_eq!(
                root_codec.decode::<Vec<String>>(&whole).expect("decode"),
                ["a", "b", "c"]
            );
        }
    }

    #[test]
    fn diffs_resolve_back_to_the_whole_list() {
        for codec in [ValueCodec::default(), ValueCodec::new(Format::Json)] {
            let lists: [Vec<&str>; 4] = [vec![], vec!["a,b"], vec!["a,b", "c"], vec!["x"]];
            let values: Vec<TypedValue> = lists
                .iter()
                .map(|l| codec.encode(l).expect("encode"))
                .collect();
            let mut chains = AppendChains::default();
            chains.insert("m", "1", values[0].clone());
            for (i, pair) in values.windows(2).enumerate().take(2) {
                let base = ChannelVersion::Int(i as i64 + 1);
                let delta = append_diff(&base, &pair[0], &pair[1]).expect("extends");
                let version = (i + 2).to_string();
                chains.insert("m", &version, delta.clone());
                assert_eq!(
                    chains.resolve("m", &version, &delta).expect("resolve"),
                    pair[1]
                );
            }
            assert!(
                append_diff(&ChannelVersion::Int(3), &values[2], &values[3]).is_none(),
                "a list that does not extend its base has no diff"
            );
        }
    }

    #[test]
    fn live_follows_chains_to_their_roots() {
        let (chains, _) = chain(ValueCodec::default());
        let live = chains.live([("m", "3")]);
        let mut versions: Vec<&str> = live.iter().map(|(_, v)| v.as_str()).collect();
        versions.sort_unstable();
        assert_eq!(versions, ["1", "2", "3"]);
    }
}

//! Pending writes and input values stored as references to the items a checkpoint appended
//! (schema 8).
//!
//! A node that appends to a message list writes the new messages as a pending write of the
//! checkpoint it ran from, and the next checkpoint stores the same messages again as the
//! list's append value. In a chat every message was stored twice (W1: ~220 bytes per
//! message, 800 messages in 400 turns). When a write and the checkpoint its step produced are
//! stored in the same request (`put_batch`, `put_writes_and_put`: what the runtime does),
//! a write whose items are, byte for byte, a run of whole items of that checkpoint's new
//! append value for the same channel is stored as a reference instead: type tag
//! [`TAG_WRITE_REF`], data
//!
//! * how many items of the value follow the run, then how many the run holds (unsigned
//!   LEB128 each: one byte below 128),
//! * `c` and the 16 bytes of a compact version key, or `t` and a version's text,
//!
//! naming the value by its channel (the write's) and version. Counting from the end keeps the
//! reference right when `prune` rewrites that value whole (the appended items stay last).
//! Reads rebuild the write byte for byte (a write is only stored this way when its rebuilt
//! form equals it), and reclaiming values keeps every value a write refers to.
//!
//! A run's input is a third copy: the input checkpoint stores it as the `__start__` value,
//! a map such as `{"messages": [...]}`, and the next checkpoint appends the same messages.
//! When both are in one batch (the runtime stores a short run, or the input with the first
//! step in `sync` mode, in one `put_batch`), a map value whose entry under a channel's name
//! is a run of whole items of a later checkpoint's new append value for that channel is
//! stored as a [`MapRef`] (type tag [`TAG_MAP_REF`]): its entries in order, each either inline
//! or such a reference. Reads rebuild the map byte for byte, and reclaiming keeps the values
//! it refers to.

use std::collections::HashMap;

use bytes::{BufMut, BytesMut};

use cairn_checkpoint::{
    msgpack_map_entries, put_msgpack_map_header, AppendValue, ListFrames, TypedValue, TAG_MSGPACK,
};

use crate::leb128;
use crate::ops::{PutRow, WritesRow};
use crate::stored_value::TAG_COMPACT_APPEND;
use crate::version_key::VersionKey;

/// Type tag of a pending write stored as a reference.
pub(crate) const TAG_WRITE_REF: &str = "ref/append";

/// Append values with more items than this are not searched for the writes' items: the
/// search compares each write with every item boundary.
const MAX_SEARCHED_ITEMS: usize = 256;

/// A pending write's reference to items of a stored value of its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WriteRef {
    /// How many of the value's items follow the referenced ones.
    pub skip: u64,
    /// How many items the write holds.
    pub count: u64,
    /// The value's version, as stored.
    pub version: VersionKey,
}

impl WriteRef {
    fn encode(&self) -> TypedValue {
        let mut data = BytesMut::with_capacity(20);
        self.put(&mut data);
        TypedValue::new(TAG_WRITE_REF, data.freeze())
    }

    /// Appends this reference: skip, count, then `c` and 16 bytes or `t`, the text's length
    /// and the text.
    fn put(&self, out: &mut BytesMut) {
        leb128::put(out, self.skip);
        leb128::put(out, self.count);
        match &self.version {
            VersionKey::Compact(key) => {
                out.put_u8(b'c');
                out.put_slice(key);
            }
            VersionKey::Text(text) => {
                out.put_u8(b't');
                leb128::put(out, text.len() as u64);
                out.put_slice(text.as_bytes());
            }
        }
    }

    /// The reference at the start of `input`, which it advances past it.
    fn take(input: &mut Reader<'_>) -> Result<WriteRef, String> {
        let skip = input.number()?;
        let count = input.number()?;
        let version = match input.byte()? {
            b'c' => VersionKey::Compact(
                input
                    .bytes(16)?
                    .try_into()
                    .map_err(|_| "a compact version key of another size")?,
            ),
            b't' => {
                let len = input.length()?;
                let text = std::str::from_utf8(input.bytes(len)?)
                    .map_err(|_| "a version that is not UTF-8")?;
                VersionKey::Text(text.to_owned())
            }
            kind => return Err(format!("unknown version kind {kind:#04x}")),
        };
        Ok(WriteRef {
            skip,
            count,
            version,
        })
    }

    /// The reference stored as `data`; errors say what is wrong with it.
    pub(crate) fn decode(data: &[u8]) -> Result<WriteRef, String> {
        let mut input = Reader(data);
        let reference = WriteRef::take(&mut input)?;
        input.end()?;
        Ok(reference)
    }

    /// The version string of the value referred to.
    pub(crate) fn version_string(&self) -> Result<String, String> {
        self.version
            .to_storage_string()
            .ok_or_else(|| "a compact version key out of range".to_owned())
    }

    /// The write, rebuilt from `value` (the value referred to: an append value or a whole
    /// list).
    pub(crate) fn resolve(&self, value: &TypedValue) -> Result<TypedValue, String> {
        let list = as_list(value).ok_or_else(|| {
            format!(
                "the value it refers to is not a MessagePack list or append value (type {:?})",
                value.type_tag
            )
        })?;
        let frames = ListFrames::of(&list)
            .ok_or("the value it refers to does not frame the items its header counts")?;
        let total = frames.count() as u64;
        let first = total
            .checked_sub(self.skip)
            .and_then(|n| n.checked_sub(self.count))
            .ok_or_else(|| {
                format!(
                    "it names {} items before the last {} of a value of {total}",
                    self.count, self.skip
                )
            })?;
        let (first, count) = (usize::try_from(first), usize::try_from(self.count));
        match (first, count) {
            (Ok(first), Ok(count)) => frames
                .sublist(&list, first, count)
                .ok_or_else(|| "its items are out of range".to_owned()),
            _ => Err("its item positions are too large".to_owned()),
        }
    }
}

/// `value` as a MessagePack list: itself when whole, its items when an append value of
/// MessagePack items; `None` otherwise.
fn as_list(value: &TypedValue) -> Option<TypedValue> {
    if value.type_tag == TAG_MSGPACK {
        return Some(value.clone());
    }
    let append = AppendValue::parse(value).ok()??;
    (append.item_tag == TAG_MSGPACK)
        .then(|| append.join_onto(&empty_list()).ok())
        .flatten()
}

/// An empty MessagePack list, to join an append value's items onto.
fn empty_list() -> TypedValue {
    TypedValue::new(TAG_MSGPACK, vec![0x90])
}

/// Replaces each write in `writes` (writes of the checkpoint `row` extends, stored with it)
/// whose items are a run of whole items of `row`'s new append value for the same channel by
/// a reference to them. `row`'s values are in their stored form.
pub(crate) fn link(writes: &mut [WritesRow], row: &PutRow) {
    let Some(parent) = row.parent_id.as_deref() else {
        return;
    };
    if !row
        .blobs
        .iter()
        .any(|b| b.value.type_tag == TAG_COMPACT_APPEND)
    {
        return;
    }
    // The new append values of `row`, as lists with their frames, by channel.
    let mut lists: HashMap<String, Option<(TypedValue, ListFrames, &VersionKey)>> = HashMap::new();
    for w in writes.iter_mut().filter(|w| {
        w.checkpoint_id == parent
            && w.thread_id == row.thread_id
            && w.checkpoint_ns == row.checkpoint_ns
    }) {
        for (channel, value) in &mut w.writes {
            if value.type_tag != TAG_MSGPACK {
                continue;
            }
            let list = lists
                .entry(channel.clone())
                .or_insert_with(|| appended_list(row, channel));
            let Some((list, frames, version)) = list else {
                continue;
            };
            if let Some(reference) = reference_to(list, frames, version, value) {
                *value = reference.encode();
            }
        }
    }
}

/// A reference to the run of `list`'s items (`frames` are its frames, `version` its stored
/// version) that `sub` holds, counted from the end of the list.
fn reference_to(
    list: &TypedValue,
    frames: &ListFrames,
    version: &VersionKey,
    sub: &TypedValue,
) -> Option<WriteRef> {
    let run = frames.find(list, sub)?;
    Some(WriteRef {
        skip: (frames.count() - run.end) as u64,
        count: run.len() as u64,
        version: version.clone(),
    })
}

/// `row`'s new value of `channel` as a list with its frames, when it is a compact append
/// value of at most [`MAX_SEARCHED_ITEMS`] MessagePack items.
fn appended_list<'r>(
    row: &'r PutRow,
    channel: &str,
) -> Option<(TypedValue, ListFrames, &'r VersionKey)> {
    let blob = row.blobs.iter().find(|b| b.channel == channel)?;
    // Only values under Cairn's own versions, which name one value each (a random suffix per
    // run, a counter rising within it): a caller reusing a version (integers, across forks)
    // overwrites its row, and a reference to it would then read another value.
    if blob.value.type_tag != TAG_COMPACT_APPEND || !matches!(blob.key, VersionKey::Compact(_)) {
        return None;
    }
    let append = crate::stored_value::compact_parts(blob.value.data.clone(), &blob.version).ok()?;
    if append.item_tag != TAG_MSGPACK {
        return None;
    }
    let list = append.join_onto(&empty_list()).ok()?;
    let frames = ListFrames::of(&list)?;
    (frames.count() <= MAX_SEARCHED_ITEMS).then_some((list, frames, &blob.key))
}

/// Reads a stored reference: numbers, bytes, the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn cut() -> String {
        "a value stored as a reference is cut short".to_owned()
    }

    fn byte(&mut self) -> Result<u8, String> {
        let (&b, rest) = self.0.split_first().ok_or_else(Self::cut)?;
        self.0 = rest;
        Ok(b)
    }

    fn number(&mut self) -> Result<u64, String> {
        let (n, used) = leb128::read(self.0).ok_or_else(Self::cut)?;
        self.0 = &self.0[used..];
        Ok(n)
    }

    fn length(&mut self) -> Result<usize, String> {
        usize::try_from(self.number()?).map_err(|_| "a length too large".to_owned())
    }

    fn bytes(&mut self, len: usize) -> Result<&'a [u8], String> {
        if self.0.len() < len {
            return Err(Self::cut());
        }
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(taken)
    }

    fn end(&self) -> Result<(), String> {
        match self.0.len() {
            0 => Ok(()),
            n => Err(format!(
                "{n} bytes past the end of a value stored as a reference"
            )),
        }
    }
}

/// Type tag of a MessagePack map stored with some entries as references (an input value).
pub(crate) const TAG_MAP_REF: &str = "ref/map";

/// A map stored with references: its entries in order, each its key's MessagePack bytes
/// and its value, inline or a reference to items of the append value of the channel the
/// key names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MapRef {
    pub entries: Vec<(Vec<u8>, MapEntry)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum MapEntry {
    Inline(Vec<u8>),
    Items(WriteRef),
}

impl MapRef {
    /// Stored form: the entry count; per entry the key's length and bytes, then `v`, the
    /// value's length and bytes, or `r` and a reference.
    fn encode(&self) -> TypedValue {
        let mut out = BytesMut::new();
        leb128::put(&mut out, self.entries.len() as u64);
        for (key, entry) in &self.entries {
            leb128::put(&mut out, key.len() as u64);
            out.put_slice(key);
            match entry {
                MapEntry::Inline(value) => {
                    out.put_u8(b'v');
                    leb128::put(&mut out, value.len() as u64);
                    out.put_slice(value);
                }
                MapEntry::Items(reference) => {
                    out.put_u8(b'r');
                    reference.put(&mut out);
                }
            }
        }
        TypedValue::new(TAG_MAP_REF, out.freeze())
    }

    /// The map stored as `data`; errors say what is wrong with it.
    pub(crate) fn decode(data: &[u8]) -> Result<MapRef, String> {
        let mut input = Reader(data);
        let count = input.length()?;
        let mut entries = Vec::with_capacity(count.min(data.len()));
        for _ in 0..count {
            let key_len = input.length()?;
            let key = input.bytes(key_len)?.to_vec();
            let entry = match input.byte()? {
                b'v' => {
                    let len = input.length()?;
                    MapEntry::Inline(input.bytes(len)?.to_vec())
                }
                b'r' => MapEntry::Items(WriteRef::take(&mut input)?),
                kind => return Err(format!("unknown map entry kind {kind:#04x}")),
            };
            entries.push((key, entry));
        }
        input.end()?;
        Ok(MapRef { entries })
    }

    /// The channels and references of the entries stored as references.
    pub(crate) fn references(&self) -> impl Iterator<Item = Result<(&str, &WriteRef), String>> {
        self.entries.iter().filter_map(|(key, entry)| match entry {
            MapEntry::Inline(_) => None,
            MapEntry::Items(reference) => Some(
                msgpack_str(key)
                    .map(|channel| (channel, reference))
                    .ok_or_else(|| "a reference under a key that is not a string".to_owned()),
            ),
        })
    }

    /// The map, rebuilt; `items` gives the value a reference names (by channel and
    /// reference).
    pub(crate) fn resolve(
        &self,
        mut items: impl FnMut(&str, &WriteRef) -> Result<TypedValue, String>,
    ) -> Result<TypedValue, String> {
        let mut out = Vec::new();
        put_msgpack_map_header(&mut out, self.entries.len())
            .ok_or("a map of more than 2^32 - 1 entries")?;
        for (key, entry) in &self.entries {
            out.extend_from_slice(key);
            match entry {
                MapEntry::Inline(value) => out.extend_from_slice(value),
                MapEntry::Items(reference) => {
                    let channel =
                        msgpack_str(key).ok_or("a reference under a key that is not a string")?;
                    let list = items(channel, reference)?;
                    out.extend_from_slice(&list.data);
                }
            }
        }
        Ok(TypedValue::new(TAG_MSGPACK, out))
    }
}

/// The string a MessagePack string holds, when `bytes` is exactly one.
fn msgpack_str(bytes: &[u8]) -> Option<&str> {
    let (len, head) = match *bytes.first()? {
        b @ 0xa0..=0xbf => (usize::from(b & 0x1f), 1),
        0xd9 => (usize::from(*bytes.get(1)?), 2),
        0xda => (
            usize::from(u16::from_be_bytes(bytes.get(1..3)?.try_into().ok()?)),
            3,
        ),
        0xdb => (
            usize::try_from(u32::from_be_bytes(bytes.get(1..5)?.try_into().ok()?)).ok()?,
            5,
        ),
        _ => return None,
    };
    (bytes.len() == len.checked_add(head)?)
        .then(|| std::str::from_utf8(&bytes[head..]).ok())
        .flatten()
}

/// The channel a run's input is stored in (LangGraph's and Cairn's `START` node).
const INPUT_CHANNEL: &str = "__start__";

/// Replaces, in `rows` (one batch, stored in one transaction), each input value (a
/// MessagePack map in [`INPUT_CHANNEL`], such as `{"messages": [...]}`) with an entry whose
/// list is a run of whole items of a later row's new append value for the channel the
/// entry's key names (same thread and namespace) by the map with that entry stored as a
/// reference. A map whose rebuilt form would differ from it (a longer header than needed)
/// stays as it is.
pub(crate) fn link_values(rows: &mut [PutRow]) {
    let appends = rows.iter().any(|r| {
        r.blobs
            .iter()
            .any(|b| b.value.type_tag == TAG_COMPACT_APPEND)
    });
    if !appends {
        return;
    }
    for k in 0..rows.len() {
        let (head, later) = rows.split_at_mut(k + 1);
        let row = &mut head[k];
        for blob in &mut row.blobs {
            // Only the input channel: finding a map's entries walks the whole value, which
            // for a large state value would cost its size at every put.
            if blob.channel != INPUT_CHANNEL || blob.value.type_tag != TAG_MSGPACK {
                continue;
            }
            let linked = link_map(&blob.value, &row.thread_id, &row.checkpoint_ns, later);
            if let Some(linked) = linked {
                blob.value = linked;
            }
        }
    }
}

/// `value` as a map with references, when some entry is found in `later`'s append values.
fn link_map(value: &TypedValue, thread: &str, ns: &str, later: &[PutRow]) -> Option<TypedValue> {
    let entries = msgpack_map_entries(&value.data)?;
    let mut header = Vec::with_capacity(5);
    put_msgpack_map_header(&mut header, entries.len())?;
    let first = entries
        .first()
        .map_or(value.data.len(), |(key, _)| key.start);
    if value.data.get(..first)? != header.as_slice() {
        return None;
    }
    let mut any = false;
    let mut stored = Vec::with_capacity(entries.len());
    for (key, val) in entries {
        let key_bytes = value.data.get(key)?;
        let sub = TypedValue::new(TAG_MSGPACK, value.data.slice(val));
        let found = msgpack_str(key_bytes).and_then(|channel| {
            // The START step's checkpoint, the next one of the thread, is where an input's
            // lists are appended; looking further would cost each later row's values.
            let next = later
                .iter()
                .find(|r| r.thread_id == thread && r.checkpoint_ns == ns)?;
            let (list, frames, version) = appended_list(next, channel)?;
            reference_to(&list, &frames, version, &sub)
        });
        let entry = match found {
            Some(reference) => {
                any = true;
                MapEntry::Items(reference)
            }
            None => MapEntry::Inline(sub.data.to_vec()),
        };
        stored.push((key_bytes.to_vec(), entry));
    }
    any.then(|| MapRef { entries: stored }.encode())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_checkpoint::{ChannelVersion, ValueCodec};

    #[test]
    fn reclaiming_finds_references_by_their_tag() {
        assert!(crate::ops::REFERRING_WRITES_SQL.contains(&format!("'{TAG_WRITE_REF}'")));
        assert!(crate::ops::REFERRING_VALUES_SQL.contains(&format!("'{TAG_MAP_REF}'")));
    }

    #[test]
    fn references_round_trip() {
        let version = ChannelVersion::first_after(None).next().to_storage_string();
        for reference in [
            WriteRef {
                skip: 0,
                count: 1,
                version: VersionKey::from_storage_string(&version),
            },
            WriteRef {
                skip: 300,
                count: 2,
                version: VersionKey::from_storage_string("7"),
            },
        ] {
            let stored = reference.encode();
            assert_eq!(stored.type_tag, TAG_WRITE_REF);
            assert_eq!(WriteRef::decode(&stored.data), Ok(reference));
        }
        assert!(WriteRef::decode(b"").is_err());
        assert!(WriteRef::decode(&[0, 1]).is_err());
        assert!(WriteRef::decode(&[0, 1, b'c', 1, 2]).is_err());
        assert!(WriteRef::decode(&[0, 1, b'x']).is_err());
    }

    #[test]
    fn a_reference_counts_from_the_end_of_a_whole_value_or_an_append_value() {
        let codec = ValueCodec::default();
        let base = ChannelVersion::Int(1);
        let delta = codec
            .encode_append(&base, ["c", "d", "e"].iter())
            .expect("encode");
        let whole = codec
            .encode(&vec!["a", "b", "c", "d", "e"])
            .expect("encode");
        let reference = WriteRef {
            skip: 1,
            count: 2,
            version: VersionKey::from_storage_string("2"),
        };
        let want = codec.encode(&vec!["c", "d"]).expect("encode");
        assert_eq!(reference.resolve(&delta), Ok(want.clone()));
        assert_eq!(reference.resolve(&whole), Ok(want));
        let too_far = WriteRef {
            skip: 2,
            count: 2,
            ..reference
        };
        assert!(too_far.resolve(&delta).is_err());
        assert!(too_far
            .resolve(&codec.encode(&"text").expect("encode"))
            .is_err());
    }
}

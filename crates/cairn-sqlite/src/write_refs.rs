//! Pending writes stored as references to the items they appended (schema 8).
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

use std::collections::HashMap;

use cairn_checkpoint::{AppendValue, ListFrames, TypedValue, TAG_MSGPACK};

use crate::ops::{PutRow, WritesRow};
use crate::stored_value::{put_leb128, read_leb128, TAG_COMPACT_APPEND};
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
        let mut data = bytes::BytesMut::with_capacity(20);
        put_leb128(&mut data, self.skip);
        put_leb128(&mut data, self.count);
        match &self.version {
            VersionKey::Compact(key) => {
                data.extend_from_slice(b"c");
                data.extend_from_slice(key);
            }
            VersionKey::Text(text) => {
                data.extend_from_slice(b"t");
                data.extend_from_slice(text.as_bytes());
            }
        }
        TypedValue::new(TAG_WRITE_REF, data.freeze())
    }

    /// The reference stored as `data`; errors say what is wrong with it.
    pub(crate) fn decode(data: &[u8]) -> Result<WriteRef, String> {
        let cut = || "a pending write stored as a reference is cut short".to_owned();
        let (skip, a) = read_leb128(data).ok_or_else(cut)?;
        let (count, b) = read_leb128(&data[a..]).ok_or_else(cut)?;
        let key = &data[a + b..];
        let version = match key.split_first() {
            Some((b'c', bytes)) => VersionKey::Compact(
                bytes
                    .try_into()
                    .map_err(|_| format!("a compact version key of {} bytes", bytes.len()))?,
            ),
            Some((b't', text)) => VersionKey::Text(
                std::str::from_utf8(text)
                    .map_err(|_| "a version that is not UTF-8")?
                    .to_owned(),
            ),
            Some((kind, _)) => return Err(format!("unknown version kind {kind:#04x}")),
            None => return Err(cut()),
        };
        Ok(WriteRef {
            skip,
            count,
            version,
        })
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
        .then(|| {
            append
                .join_onto(&TypedValue::new(TAG_MSGPACK, vec![0x90]))
                .ok()
        })
        .flatten()
}

/// Replaces each write in `writes` (writes of the checkpoint `row` extends, stored with it)
/// whose items are a run of whole items of `row`'s new append value for the same channel by
/// a reference to them. `row`'s values are in their stored form.
pub(crate) fn link(writes: &mut [WritesRow], row: &PutRow) {
    let Some(parent) = row.parent_id.as_deref() else {
        return;
    };
    if !row.blobs.iter().any(|b| b.value.type_tag == TAG_COMPACT_APPEND) {
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
            let Some(first) = frames.find(list, value) else {
                continue;
            };
            let Some(count) = ListFrames::of(value).map(|f| f.count()) else {
                continue;
            };
            let reference = WriteRef {
                skip: (frames.count() - first - count) as u64,
                count: count as u64,
                version: (*version).clone(),
            };
            *value = reference.encode();
        }
    }
}

/// `row`'s new value of `channel` as a list with its frames, when it is a compact append
/// value of at most [`MAX_SEARCHED_ITEMS`] MessagePack items.
fn appended_list<'r>(
    row: &'r PutRow,
    channel: &str,
) -> Option<(TypedValue, ListFrames, &'r VersionKey)> {
    let blob = row.blobs.iter().find(|b| b.channel == channel)?;
    if blob.value.type_tag != TAG_COMPACT_APPEND {
        return None;
    }
    let value = crate::stored_value::from_row(
        TAG_COMPACT_APPEND,
        blob.value.data.to_vec(),
        Some(&blob.version),
    )
    .ok()?;
    let list = as_list(&value)?;
    let frames = ListFrames::of(&list)?;
    (frames.count() <= MAX_SEARCHED_ITEMS).then_some((list, frames, &blob.key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_checkpoint::{ChannelVersion, ValueCodec};

    #[test]
    fn reclaiming_finds_references_by_their_tag() {
        assert!(crate::ops::REFERRING_WRITES_SQL.contains(&format!("'{TAG_WRITE_REF}'")));
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

//! Values as stored: a typed envelope (type tag + bytes) and the codec that makes them.
//!
//! Savers never look inside a value: they store the tag and the bytes as given, so a backend
//! costs no re-encoding and cannot be tricked into running code. Decoding only ever builds the
//! concrete Rust type the caller names, through serde; nothing in a stored value chooses a type.

use std::ops::Range;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Type tag of a MessagePack-encoded value (the default).
pub const TAG_MSGPACK: &str = "msgpack";
/// Type tag of a JSON-encoded value.
pub const TAG_JSON: &str = "json";
/// Type tag of raw bytes the caller encoded itself.
pub const TAG_BYTES: &str = "bytes";
/// Type tag of an explicitly empty channel (written, but holding no value). Savers drop such
/// channels from `channel_values` when reading a checkpoint back.
pub const TAG_EMPTY: &str = "empty";

/// A stored value: what encoding it uses and its bytes.
///
/// ```
/// use cairn_checkpoint::{TypedValue, ValueCodec};
/// let codec = ValueCodec::default();
/// let value: TypedValue = codec.encode(&vec!["hi", "there"])?;
/// assert_eq!(value.type_tag, "msgpack");
/// let back: Vec<String> = codec.decode(&value)?;
/// assert_eq!(back, ["hi", "there"]);
/// # Ok::<(), cairn_checkpoint::Error>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TypedValue {
    /// How `data` is encoded: [`TAG_MSGPACK`], [`TAG_JSON`], [`TAG_BYTES`], [`TAG_EMPTY`] or a
    /// tag of the caller's own.
    pub type_tag: String,
    /// The encoded bytes.
    pub data: Bytes,
}

impl TypedValue {
    /// A value with the given tag and bytes.
    pub fn new(type_tag: impl Into<String>, data: impl Into<Bytes>) -> Self {
        TypedValue {
            type_tag: type_tag.into(),
            data: data.into(),
        }
    }

    /// The explicitly empty value.
    pub fn empty() -> Self {
        TypedValue::new(TAG_EMPTY, Bytes::new())
    }

    /// Whether this is the explicitly empty value.
    pub fn is_empty_marker(&self) -> bool {
        self.type_tag == TAG_EMPTY
    }

    /// Size of the encoded bytes.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the encoded bytes are empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// When this value and `later` are MessagePack lists and this one's items are, byte for
    /// byte, the leading items of `later`: how many items this one holds. `None` otherwise
    /// (other formats are not compared, and neither is a value whose bytes do not frame
    /// exactly the items its header counts, such as a corrupt one).
    ///
    /// An older version of an append-stored channel is such a prefix of a newer one, so a
    /// reader that has decoded the newer list can take the older one's items from it instead
    /// of decoding them again (what `get_state_history` does). MessagePack items are
    /// self-delimiting, so equal leading bytes that frame whole items mean equal leading
    /// items.
    ///
    /// ```
    /// use cairn_checkpoint::ValueCodec;
    /// let codec = ValueCodec::default();
    /// let older = codec.encode(&vec!["a", "b"])?;
    /// let newer = codec.encode(&vec!["a", "b", "c"])?;
    /// assert_eq!(older.list_prefix_of(&newer), Some(2));
    /// assert_eq!(newer.list_prefix_of(&older), None);
    /// assert_eq!(codec.encode(&vec!["x"])?.list_prefix_of(&newer), None);
    /// # Ok::<(), cairn_checkpoint::Error>(())
    /// ```
    pub fn list_prefix_of(&self, later: &TypedValue) -> Option<usize> {
        ListFrames::of(later)?
            .leading(later, self)
            .map(|frames| frames.count())
    }
}

/// Where each item of a MessagePack list value ends, found once by following the items'
/// markers and lengths (nothing is decoded or allocated). With it, an older version of the
/// list is recognised as the list's leading items at the cost of comparing its bytes
/// ([`leading`](Self::leading)), and that older version's frames come for free: reading a
/// chat's history checks each older list this way instead of walking its items again.
///
/// ```
/// use cairn_checkpoint::{ListFrames, ValueCodec};
/// let codec = ValueCodec::default();
/// let newer = codec.encode(&vec!["a", "b", "c"])?;
/// let frames = ListFrames::of(&newer).expect("a MessagePack list");
/// assert_eq!(frames.count(), 3);
/// let older = codec.encode(&vec!["a", "b"])?;
/// let older_frames = frames.leading(&newer, &older).expect("its leading items");
/// assert_eq!(older_frames.count(), 2);
/// assert!(frames.leading(&newer, &codec.encode(&vec!["a", "x"])?).is_none());
/// # Ok::<(), cairn_checkpoint::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct ListFrames {
    /// End of each item, counted from the first item's start; shared with the frames of the
    /// list's prefixes.
    ends: std::sync::Arc<[usize]>,
    /// How many of `ends` belong to this list.
    count: usize,
}

impl ListFrames {
    /// The frames of `value`; `None` unless it is a MessagePack list whose bytes hold exactly
    /// the items its header counts (a corrupt or truncated list has none).
    pub fn of(value: &TypedValue) -> Option<ListFrames> {
        if value.type_tag != TAG_MSGPACK {
            return None;
        }
        let (count, head) = msgpack_array_header(&value.data)?;
        let items = value.data.get(head..)?;
        // Every item takes at least one byte: a larger count is a header that overstates.
        if count > items.len() {
            return None;
        }
        let mut ends = Vec::with_capacity(count);
        let mut at = 0;
        for _ in 0..count {
            at = msgpack_value_end(items, at)?;
            ends.push(at);
        }
        (at == items.len()).then(|| ListFrames {
            ends: ends.into(),
            count,
        })
    }

    /// How many items the list holds.
    pub fn count(&self) -> usize {
        self.count
    }

    /// When `older` is a MessagePack list whose items are, byte for byte, the leading items
    /// of `value` (the list these frames were found in) and whose bytes hold exactly the
    /// items its header counts: its frames. `None` otherwise.
    pub fn leading(&self, value: &TypedValue, older: &TypedValue) -> Option<ListFrames> {
        if older.type_tag != TAG_MSGPACK || value.type_tag != TAG_MSGPACK {
            return None;
        }
        let (count, head) = msgpack_array_header(&older.data)?;
        let items = older.data.get(head..)?;
        let (_, value_head) = msgpack_array_header(&value.data)?;
        let value_items = value.data.get(value_head..)?;
        let framed_len = match count {
            0 => 0,
            n => *self.ends.get(..self.count)?.get(n - 1)?,
        };
        (items.len() == framed_len && value_items.starts_with(items)).then(|| ListFrames {
            ends: self.ends.clone(),
            count,
        })
    }

    /// Where `sub`, a MessagePack list of one or more items, occurs in `value` (the list these
    /// frames were found in) as a run of whole items: the positions of those items. `None`
    /// when it does not, when `sub` is empty, and when `sub` is not exactly what
    /// [`sublist`](Self::sublist) would build for that run (a header longer than needed, bytes
    /// that do not frame exactly the items its header counts), so a found `sub` can always be
    /// rebuilt byte for byte from `value`.
    ///
    /// A pending write that appended items to a list holds the same items as the list's new
    /// version, so a saver can store the write as a reference to them.
    ///
    /// ```
    /// use cairn_checkpoint::{ListFrames, ValueCodec};
    /// let codec = ValueCodec::default();
    /// let list = codec.encode(&vec!["a", "b", "c", "d"])?;
    /// let frames = ListFrames::of(&list).expect("a MessagePack list");
    /// let sub = codec.encode(&vec!["b", "c"])?;
    /// assert_eq!(frames.find(&list, &sub), Some(1..3));
    /// assert_eq!(frames.sublist(&list, 1, 2), Some(sub));
    /// assert_eq!(frames.find(&list, &codec.encode(&vec!["c", "b"])?), None);
    /// # Ok::<(), cairn_checkpoint::Error>(())
    /// ```
    pub fn find(&self, value: &TypedValue, sub: &TypedValue) -> Option<Range<usize>> {
        let sub_frames = ListFrames::of(sub)?;
        let n = sub_frames.count;
        let (_, sub_head) = msgpack_array_header(&sub.data)?;
        if n == 0 || sub_head != msgpack_array_header_len(n) || n > self.count {
            return None;
        }
        let sub_items = sub.data.get(sub_head..)?;
        let (_, head) = msgpack_array_header(&value.data)?;
        let items = value.data.get(head..)?;
        let ends = self.ends.get(..self.count)?;
        let first = (0..=self.count - n).find(|&first| {
            let start = if first == 0 { 0 } else { ends[first - 1] };
            // Whole items of `sub` matching from an item boundary end on one: MessagePack
            // values delimit themselves.
            items
                .get(start..start + sub_items.len())
                .is_some_and(|run| run == sub_items)
        })?;
        Some(first..first + n)
    }

    /// Items `first..first + n` of `value` (the list these frames were found in) as a
    /// MessagePack list of their own, with the shortest header for `n`; `None` when the list
    /// has fewer items.
    pub fn sublist(&self, value: &TypedValue, first: usize, n: usize) -> Option<TypedValue> {
        let last = first.checked_add(n)?;
        if last > self.count {
            return None;
        }
        let (_, head) = msgpack_array_header(&value.data)?;
        let items = value.data.get(head..)?;
        let start = match first {
            0 => 0,
            i => *self.ends.get(i - 1)?,
        };
        let end = match last {
            0 => 0,
            i => *self.ends.get(i - 1)?,
        };
        let run = items.get(start..end)?;
        let mut data = Vec::with_capacity(5 + run.len());
        put_msgpack_array_header(&mut data, n)?;
        data.extend_from_slice(run);
        Some(TypedValue::new(TAG_MSGPACK, data))
    }
}

/// The length of the shortest MessagePack array header for `count` items.
fn msgpack_array_header_len(count: usize) -> usize {
    match count {
        0..=15 => 1,
        16..=0xffff => 3,
        _ => 5,
    }
}

/// Writes the shortest MessagePack array header for `count` items; `None` above 2^32 - 1.
///
/// ```
/// let mut header = Vec::new();
/// cairn_checkpoint::put_msgpack_array_header(&mut header, 20).expect("a small array");
/// assert_eq!(header, [0xdc, 0, 20]);
/// ```
pub fn put_msgpack_array_header(out: &mut Vec<u8>, count: usize) -> Option<()> {
    put_msgpack_header(out, count, [0x90, 0xdc, 0xdd])
}

/// Writes the shortest MessagePack map header for `count` entries (what
/// [`msgpack_map_entries`] reads past); `None` above 2^32 - 1.
///
/// ```
/// let mut header = Vec::new();
/// cairn_checkpoint::put_msgpack_map_header(&mut header, 2).expect("a small map");
/// assert_eq!(header, [0x82]);
/// ```
pub fn put_msgpack_map_header(out: &mut Vec<u8>, count: usize) -> Option<()> {
    put_msgpack_header(out, count, [0x80, 0xde, 0xdf])
}

/// The shortest header of an array or map of `count` elements, given its markers: the fix
/// form's base, then the 16-bit and 32-bit forms'.
fn put_msgpack_header(
    out: &mut Vec<u8>,
    count: usize,
    [fix, wide16, wide32]: [u8; 3],
) -> Option<()> {
    match count {
        0..=15 => out.push(fix | count as u8),
        16..=0xffff => {
            out.push(wide16);
            out.extend_from_slice(&(count as u16).to_be_bytes());
        }
        _ => {
            out.push(wide32);
            out.extend_from_slice(&u32::try_from(count).ok()?.to_be_bytes());
        }
    }
    Some(())
}

/// The byte ranges of the keys and values of the MessagePack map `data`, in order; `None`
/// unless `data` is exactly one map (nothing is decoded or allocated but the ranges).
///
/// ```
/// use cairn_checkpoint::{msgpack_map_entries, ValueCodec};
/// let value = ValueCodec::default().encode(&std::collections::BTreeMap::from([("a", 1), ("b", 2)]))?;
/// let entries = msgpack_map_entries(&value.data).expect("a map");
/// assert_eq!(entries.len(), 2);
/// let (key, val) = &entries[1];
/// assert_eq!((&value.data[key.clone()], &value.data[val.clone()]), (&b"\xa1b"[..], &b"\x02"[..]));
/// # Ok::<(), cairn_checkpoint::Error>(())
/// ```
pub fn msgpack_map_entries(data: &[u8]) -> Option<Vec<(Range<usize>, Range<usize>)>> {
    let (count, mut at) = match *data.first()? {
        b @ 0x80..=0x8f => ((b & 0x0f) as usize, 1),
        0xde => (
            u16::from_be_bytes(data.get(1..3)?.try_into().ok()?) as usize,
            3,
        ),
        0xdf => (
            u32::from_be_bytes(data.get(1..5)?.try_into().ok()?) as usize,
            5,
        ),
        _ => return None,
    };
    // Every key and value takes at least one byte.
    if count > data.len() {
        return None;
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let key_end = msgpack_value_end(data, at)?;
        let value_end = msgpack_value_end(data, key_end)?;
        entries.push((at..key_end, key_end..value_end));
        at = value_end;
    }
    (at == data.len()).then_some(entries)
}

/// Where the MessagePack value starting at `data[at]` ends, following markers and lengths
/// only (nothing is decoded or allocated); `None` if `data` ends first or holds a marker
/// MessagePack does not define. Iterative, so nesting depth costs no stack.
fn msgpack_value_end(data: &[u8], mut at: usize) -> Option<usize> {
    // Values still to step over: this one, plus the elements of containers met on the way.
    let mut pending: u64 = 1;
    let be = |at: usize, n: usize| -> Option<u64> {
        let bytes = data.get(at..at.checked_add(n)?)?;
        Some(bytes.iter().fold(0u64, |v, &b| (v << 8) | u64::from(b)))
    };
    while pending > 0 {
        // Every value takes at least one byte: more pending values than bytes left is a
        // header that overstates its contents.
        if pending > (data.len() - at) as u64 {
            return None;
        }
        pending -= 1;
        let marker = *data.get(at)?;
        at += 1;
        // (payload bytes to skip, child values to step over)
        let (skip, children): (u64, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, 2 * u64::from(marker & 0x0f)),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => (u64::from(marker & 0x1f), 0),
            0xc4 | 0xd9 => (be(at, 1)? + 1, 0),
            0xc5 | 0xda => (be(at, 2)? + 2, 0),
            0xc6 | 0xdb => (be(at, 4)? + 4, 0),
            0xc7 => (be(at, 1)? + 2, 0),
            0xc8 => (be(at, 2)? + 3, 0),
            0xc9 => (be(at, 4)? + 5, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, be(at, 2)?),
            0xdd => (4, be(at, 4)?),
            0xde => (2, 2 * be(at, 2)?),
            0xdf => (4, 2 * be(at, 4)?),
            0xc1 => return None,
        };
        at = at.checked_add(usize::try_from(skip).ok()?)?;
        if at > data.len() {
            return None;
        }
        pending = pending.checked_add(children)?;
    }
    Some(at)
}

/// The item count and header length of a MessagePack array, `None` if `data` does not start
/// with one.
pub(crate) fn msgpack_array_header(data: &[u8]) -> Option<(usize, usize)> {
    match *data.first()? {
        b @ 0x90..=0x9f => Some(((b & 0x0f) as usize, 1)),
        0xdc => {
            let n = u16::from_be_bytes(data.get(1..3)?.try_into().ok()?);
            Some((n as usize, 3))
        }
        0xdd => {
            let n = u32::from_be_bytes(data.get(1..5)?.try_into().ok()?);
            Some((n as usize, 5))
        }
        _ => None,
    }
}

/// The wire format a [`ValueCodec`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// MessagePack with field names (compact, and readable by LangGraph's msgpack serde).
    #[default]
    MsgPack,
    /// JSON (larger, readable by eye in the database).
    Json,
}

impl Format {
    /// The type tag values in this format carry.
    pub fn tag(self) -> &'static str {
        match self {
            Format::MsgPack => TAG_MSGPACK,
            Format::Json => TAG_JSON,
        }
    }
}

/// Default size limit for one encoded value: 64 MiB.
pub const DEFAULT_MAX_VALUE_BYTES: usize = 64 * 1024 * 1024;

/// Encodes Rust values into [`TypedValue`]s and back.
///
/// Decoding follows the value's own tag, so a codec writing MessagePack still reads values
/// written as JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValueCodec {
    format: Format,
    max_value_bytes: usize,
}

impl Default for ValueCodec {
    fn default() -> Self {
        ValueCodec {
            format: Format::MsgPack,
            max_value_bytes: DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl ValueCodec {
    /// A codec writing `format`, with the default size limit.
    pub fn new(format: Format) -> Self {
        ValueCodec {
            format,
            ..ValueCodec::default()
        }
    }

    /// The same codec with another size limit for one encoded value: [`encode`] (and an
    /// append value's new items) refuse more; reading applies no limit (see [`decode`]).
    ///
    /// [`encode`]: ValueCodec::encode
    /// [`decode`]: ValueCodec::decode
    pub fn with_max_value_bytes(self, max_value_bytes: usize) -> Self {
        ValueCodec {
            max_value_bytes,
            ..self
        }
    }

    /// The format this codec writes.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The size limit for one encoded value.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    /// Encodes `value`. Fails with [`Error::ValueTooLarge`] past the size limit.
    pub fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<TypedValue> {
        let data = match self.format {
            Format::MsgPack => rmp_serde::to_vec_named(value).map_err(|e| Error::Encode {
                format: "msgpack",
                message: e.to_string(),
            })?,
            Format::Json => serde_json::to_vec(value).map_err(|e| Error::Encode {
                format: "json",
                message: e.to_string(),
            })?,
        };
        self.check_size(data.len())?;
        Ok(TypedValue::new(self.format.tag(), data))
    }

    /// Decodes `value` into `T`, following the value's type tag.
    ///
    /// The size limit applies to what is written, not to what is read: a value already
    /// stored stays readable whatever its size (a list grown past the limit by appended
    /// items, each written within it, or a value written with a higher limit).
    pub fn decode<T: DeserializeOwned>(&self, value: &TypedValue) -> Result<T> {
        let decode_error = |message: String| Error::Decode {
            type_tag: value.type_tag.clone(),
            message,
        };
        match value.type_tag.as_str() {
            TAG_MSGPACK => {
                rmp_serde::from_slice(&value.data).map_err(|e| decode_error(e.to_string()))
            }
            TAG_JSON => {
                serde_json::from_slice(&value.data).map_err(|e| decode_error(e.to_string()))
            }
            other => Err(decode_error(format!(
                "this codec reads \"{TAG_MSGPACK}\" and \"{TAG_JSON}\" values, not {other:?}"
            ))),
        }
    }

    fn check_size(&self, size: usize) -> Result<()> {
        if size > self.max_value_bytes {
            return Err(Error::ValueTooLarge {
                size,
                limit: self.max_value_bytes,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_prefixes_across_every_array_header_size() {
        let codec = ValueCodec::default();
        let list: Vec<u32> = (0..70_000).collect();
        // fixarray, array16 and array32 headers, on both sides.
        for (older, newer) in [
            (0, 3),
            (15, 16),
            (16, 17),
            (3, 65_535),
            (65_535, 65_536),
            (66_000, 70_000),
        ] {
            let a = codec.encode(&list[..older].to_vec()).unwrap();
            let b = codec.encode(&list[..newer].to_vec()).unwrap();
            assert_eq!(a.list_prefix_of(&b), Some(older), "{older} of {newer}");
            assert_eq!(a.list_prefix_of(&a), Some(older));
            assert_eq!(b.list_prefix_of(&a), None, "{newer} of {older}");
        }
    }

    #[test]
    fn item_framing_follows_every_msgpack_type() {
        use serde::Serialize;
        #[derive(Serialize)]
        struct Item {
            text: String,
            bytes: serde_bytes_like::Bytes,
            n: Vec<i64>,
            f: (f32, f64),
            map: std::collections::BTreeMap<String, Option<bool>>,
        }
        mod serde_bytes_like {
            /// Serializes as MessagePack bin, not as an array of integers.
            pub struct Bytes(pub Vec<u8>);
            impl serde::Serialize for Bytes {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_bytes(&self.0)
                }
            }
        }
        let codec = ValueCodec::default();
        let ints = vec![
            0,
            -1,
            -33,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            -129,
            -32_769,
            i64::MIN,
            i64::MAX,
        ];
        let items: Vec<Item> = [0usize, 31, 32, 255, 256, 65_536]
            .iter()
            .map(|&len| Item {
                text: "é".repeat(len / 2 + 1),
                bytes: serde_bytes_like::Bytes(vec![7; len]),
                n: ints.clone(),
                f: (1.5, -2.25),
                map: (0..(len % 20))
                    .map(|i| (i.to_string(), (i % 3 != 0).then_some(i % 2 == 0)))
                    .collect(),
            })
            .collect();
        for n in 0..=items.len() {
            let older = codec
                .encode(&items.iter().take(n).collect::<Vec<_>>())
                .unwrap();
            let newer = codec.encode(&items.iter().collect::<Vec<_>>()).unwrap();
            assert_eq!(older.list_prefix_of(&newer), Some(n), "{n} items");
        }
        // Ext values (fixext and ext 8), as another writer may store them.
        let mut ext = vec![0x92, 0xd4, 0x01, 0x02, 0xc7, 0x03, 0x05, 1, 2, 3];
        let whole = TypedValue::new(TAG_MSGPACK, ext.clone());
        assert_eq!(whole.list_prefix_of(&whole), Some(2));
        ext.truncate(8);
        assert_eq!(
            TypedValue::new(TAG_MSGPACK, ext).list_prefix_of(&whole),
            None
        );
        // A marker MessagePack does not define.
        let bad = TypedValue::new(TAG_MSGPACK, vec![0x91, 0xc1]);
        assert_eq!(bad.list_prefix_of(&bad), None);
    }

    #[test]
    fn values_that_are_not_list_prefixes() {
        let codec = ValueCodec::default();
        let newer = codec.encode(&vec!["a", "b", "c"]).unwrap();
        // A different item, a map, a string, truncated and empty bytes, JSON.
        assert_eq!(
            codec
                .encode(&vec!["a", "x"])
                .unwrap()
                .list_prefix_of(&newer),
            None
        );
        let map = codec
            .encode(&std::collections::BTreeMap::from([("a", 1)]))
            .unwrap();
        assert_eq!(map.list_prefix_of(&newer), None);
        assert_eq!(codec.encode(&"a").unwrap().list_prefix_of(&newer), None);
        let cut = TypedValue::new(TAG_MSGPACK, vec![0xdc, 0x01]);
        assert_eq!(cut.list_prefix_of(&newer), None);
        // A header that counts more items than the bytes hold, and one that counts fewer.
        let items = &newer.data[1..];
        let mut over = vec![0x93];
        over.extend_from_slice(&items[..2]);
        assert_eq!(
            TypedValue::new(TAG_MSGPACK, over).list_prefix_of(&newer),
            None
        );
        let mut under = vec![0x91];
        under.extend_from_slice(&items[..4]);
        assert_eq!(
            TypedValue::new(TAG_MSGPACK, under).list_prefix_of(&newer),
            None
        );
        assert_eq!(newer.list_prefix_of(&cut), None);
        assert_eq!(
            TypedValue::new(TAG_MSGPACK, Vec::new()).list_prefix_of(&newer),
            None
        );
        let json = ValueCodec::new(Format::Json);
        let a = json.encode(&vec!["a"]).unwrap();
        assert_eq!(
            a.list_prefix_of(&json.encode(&vec!["a", "b"]).unwrap()),
            None
        );
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Message {
        role: String,
        content: String,
    }

    #[test]
    fn json_and_msgpack_roundtrip_and_cross_read() {
        let m = Message {
            role: "user".into(),
            content: "héllo ✓".into(),
        };
        let json = ValueCodec::new(Format::Json)
            .encode(&m)
            .expect("encode json");
        assert_eq!(json.type_tag, TAG_JSON);
        let mp = ValueCodec::default().encode(&m).expect("encode msgpack");
        assert!(mp.len() < json.len());
        let codec = ValueCodec::default();
        assert_eq!(codec.decode::<Message>(&json).expect("json"), m);
        assert_eq!(codec.decode::<Message>(&mp).expect("msgpack"), m);
    }

    #[test]
    fn size_limit_is_a_clear_error() {
        let codec = ValueCodec::default().with_max_value_bytes(16);
        let err = codec.encode(&"x".repeat(100)).expect_err("too large");
        assert!(
            matches!(err, Error::ValueTooLarge { limit: 16, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("with_max_value_bytes"));
    }

    /// A list grown by appended items, each written within the limit, reads back whole
    /// though it is past the limit: what was stored stays readable.
    #[test]
    fn a_list_grown_past_the_limit_by_appends_reads_back() {
        let codec = ValueCodec::default().with_max_value_bytes(100);
        let mut chains = crate::append::AppendChains::default();
        let item = "y".repeat(30);
        chains.insert("m", "1", codec.encode(&vec![item.clone()]).expect("root"));
        let mut head = None;
        for v in 2..=10i64 {
            let value = codec
                .encode_append(&crate::ChannelVersion::Int(v - 1), [&item])
                .expect("each append is within the limit");
            chains.insert("m", &v.to_string(), value.clone());
            head = Some(value);
        }
        let whole = chains
            .resolve("m", "10", &head.expect("appended"))
            .expect("resolve");
        assert!(whole.data.len() > 100);
        let list: Vec<String> = codec.decode(&whole).expect("read back past the limit");
        assert_eq!(list, vec![item; 10]);
    }

    #[test]
    fn truncated_and_unknown_values_are_errors_not_panics() {
        let codec = ValueCodec::default();
        let mut v = codec.encode(&vec![1u32; 100]).expect("encode");
        v.data = v.data.slice(..v.data.len() / 2);
        assert!(matches!(
            codec.decode::<Vec<u32>>(&v),
            Err(Error::Decode { .. })
        ));
        let odd = TypedValue::new("pickle", vec![0x80, 0x04]);
        let err = codec.decode::<Vec<u32>>(&odd).expect_err("unknown tag");
        assert!(err.to_string().contains("pickle"));
    }
}

//! Checkpoint headers as compact bytes; the form is described on [`encode_header`].

use std::collections::BTreeMap;
use std::fmt;

use crate::checkpoint::Checkpoint;
use crate::error::{Error, Result};
use crate::version::{ChannelVersion, ChannelVersions};

/// Why a header could not be read: what was wrong with its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderError(String);

impl fmt::Display for HeaderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot decode the checkpoint header (MessagePack): {}",
            self.0
        )
    }
}

impl std::error::Error for HeaderError {}

impl From<String> for HeaderError {
    fn from(reason: String) -> Self {
        HeaderError(reason)
    }
}

/// `ts` in microseconds when [`ts_text`] gives it back exactly.
fn ts_micros(ts: &str) -> Option<u64> {
    if ts.len() != 27 || !ts.ends_with('Z') {
        return None;
    }
    let time = humantime::parse_rfc3339(ts).ok()?;
    let micros = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros();
    let micros = u64::try_from(micros).ok()?;
    (ts_text(micros) == ts).then_some(micros)
}

fn ts_text(micros: u64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
    humantime::format_rfc3339_micros(time).to_string()
}

/// The time in a checkpoint id that is a time-ordered (version 6) UUID, in whole microseconds
/// since the Unix epoch: a header stores its `ts` as the microseconds after it (usually 0).
fn id_micros(id: &str) -> Option<u64> {
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version_num() != 6 {
        return None;
    }
    let (secs, nanos) = uuid.get_timestamp()?.to_unix();
    secs.checked_mul(1_000_000)?
        .checked_add(u64::from(nanos / 1_000))
}

/// A channel as `versions_seen` and `updated_channels` store it (schema 7): its position in
/// the header's `channel_versions` when that names it, else its name.
enum ChannelRef<'a> {
    Position(usize),
    Name(&'a str),
}

impl<'a> ChannelRef<'a> {
    fn of(channel: &'a str, current: &ChannelVersions) -> Self {
        if current.contains_key(channel) {
            ChannelRef::Position(current.keys().take_while(|k| k.as_str() < channel).count())
        } else {
            ChannelRef::Name(channel)
        }
    }
}

/// A channel read from `versions_seen` or `updated_channels`: a position in the header's
/// `channel_versions` (schema 7) or a name.
enum StoredChannel {
    Position(u64),
    Name(String),
}

impl StoredChannel {
    /// The channel's name, looking a position up in `names` (`channel_versions`' keys).
    fn resolve(self, names: &[&String]) -> std::result::Result<String, String> {
        match self {
            StoredChannel::Name(name) => Ok(name),
            StoredChannel::Position(i) => usize::try_from(i)
                .ok()
                .and_then(|i| names.get(i))
                .map(|name| (*name).clone())
                .ok_or_else(|| {
                    format!(
                        "the header names channel number {i}, but its channel_versions hold {}",
                        names.len()
                    )
                }),
        }
    }
}

/// Encodes `checkpoint`'s header: the checkpoint without its channel values and its id, as
/// savers store it next to the values they keep apart (the caller keeps the id).
///
/// The form is a MessagePack array `[v, ts, channel_versions, versions_seen,
/// updated_channels]`, with no field names:
/// - a `ts` in Cairn's own form (RFC 3339, UTC, six fractional digits) is `[µs]`, the
///   microseconds after the time in the checkpoint id when the id is a version-6 UUID and
///   `ts` is not before it (0 for the checkpoints Cairn makes, whose `ts` is the id's time),
///   else microseconds since the Unix epoch; any other `ts` is its text;
/// - the runtime's own names (`__start__`, `__input__`, `__end__`, `__interrupt__`,
///   `__pregel_tasks`) are the codes -1 to -5, a name starting with `branch:to:` or `join:`
///   is `[-17 or -18, rest]`, any other name its text;
/// - a string version in Cairn's own form (`{counter:032}.{suffix:016x}`, 49 characters) is the
///   pair `[counter, suffix]` (about 11 bytes), or `[counter, -1 - i]` when the header wrote
///   the same suffix in full before (the `i`-th such, counting from 0; a run gives all the
///   versions it makes one suffix); any other version as it is (MessagePack keeps `Int(1)`
///   an integer);
/// - `versions_seen` and `updated_channels` name a channel that `channel_versions` holds by its
///   position there (in key order), any other by its name, and a seen version equal to the
///   channel's current one is `nil`.
///
/// A header of a few channels takes 40 to 120 bytes (W1's 89 on average). It is written and
/// read by hand, not through serde: savers encode one per stored checkpoint and decode one per
/// checkpoint read, and the generic path cost about twice the instructions (and an untagged
/// enum per version when reading). The SQLite backend stores this form (since schema 10;
/// schemas 3 to 9 wrote subsets of it,
/// which [`decode_header`] reads too), Redis stores it, and the in-memory saver keeps it as its
/// checkpoints.
///
/// ```
/// use cairn_checkpoint::{decode_header, encode_header, ChannelVersion, Checkpoint};
///
/// let mut checkpoint = Checkpoint::new();
/// checkpoint
///     .channel_versions
///     .insert("messages".into(), ChannelVersion::first_after(None));
/// let bytes = encode_header(&checkpoint)?;
/// assert!(bytes.len() < 40);
/// assert_eq!(decode_header(&bytes, &checkpoint.id)?, checkpoint);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// Without runtime names, repeated suffixes and a `ts` relative to the id, the bytes are what
/// serializing the same fields with `rmp_serde` gives (the form of SQLite schemas 7 to 9).
/// An error only for a name or map
/// longer than MessagePack allows (2^32).
pub fn encode_header(checkpoint: &Checkpoint) -> Result<Vec<u8>> {
    encode(checkpoint).map_err(|TooLong| Error::Encode {
        format: "msgpack",
        message: "a name or map in the checkpoint header is longer than MessagePack allows \
                  (2^32)"
            .into(),
    })
}

fn encode(checkpoint: &Checkpoint) -> std::result::Result<Vec<u8>, TooLong> {
    // Every field named, so a field added to Checkpoint cannot be dropped unnoticed.
    let Checkpoint {
        v,
        id,
        ts,
        channel_values: _,
        channel_versions,
        versions_seen,
        updated_channels,
    } = checkpoint;
    let mut out = Vec::with_capacity(32 + 24 * channel_versions.len() + 16 * versions_seen.len());
    let mut suffixes = Suffixes::default();
    put_array_len(&mut out, 5)?;
    put_uint(&mut out, u64::from(*v));
    match ts_micros(ts) {
        Some(micros) => match id_micros(id).and_then(|at| micros.checked_sub(at)) {
            Some(after_id) if after_id <= u64::from(u32::MAX) => {
                out.push(0x91);
                put_uint(&mut out, after_id);
            }
            _ => put_uint(&mut out, micros),
        },
        None => put_str(&mut out, ts)?,
    }
    put_map_len(&mut out, channel_versions.len())?;
    for (channel, version) in channel_versions {
        put_name(&mut out, channel)?;
        put_version(&mut out, version, &mut suffixes)?;
    }
    put_map_len(&mut out, versions_seen.len())?;
    for (node, versions) in versions_seen {
        put_name(&mut out, node)?;
        put_map_len(&mut out, versions.len())?;
        for (channel, version) in versions {
            put_channel(&mut out, channel, channel_versions)?;
            if channel_versions.get(channel) == Some(version) {
                out.push(NIL);
            } else {
                put_version(&mut out, version, &mut suffixes)?;
            }
        }
    }
    match updated_channels {
        None => out.push(NIL),
        Some(channels) => {
            put_array_len(&mut out, channels.len())?;
            for channel in channels {
                put_channel(&mut out, channel, channel_versions)?;
            }
        }
    }
    Ok(out)
}

/// Names the runtime gives its own channels and nodes, stored as one negative integer each
/// (`-1 - index`) instead of up to 15 bytes: every header of a graph holds several.
const KNOWN_NAMES: [&str; 5] = [
    "__start__",
    "__input__",
    "__end__",
    "__interrupt__",
    "__pregel_tasks",
];

/// Prefixes of the runtime's generated channel names (`branch:to:<node>`,
/// `join:<sources>:<node>`): such a name is stored as `[-17 - index, rest]`.
const KNOWN_PREFIXES: [&str; 2] = ["branch:to:", "join:"];

/// The code of the first known prefix.
const PREFIX_CODE_BASE: i64 = -17;

/// The suffixes of the Cairn versions a header has written (or read) in full, in order: a
/// version whose suffix is already here is stored as `[counter, -1 - position]`, a byte
/// instead of nine. The runtime gives every version a run makes the same suffix, so a header
/// holds few distinct ones (this run's and those of the runs that wrote its older versions).
#[derive(Default)]
struct Suffixes(Vec<u64>);

/// The known name of code `code` (see [`KNOWN_NAMES`]).
fn known_name(code: i64) -> std::result::Result<&'static str, String> {
    usize::try_from(-1 - code)
        .ok()
        .and_then(|i| KNOWN_NAMES.get(i).copied())
        .ok_or_else(|| format!("unknown name code {code}"))
}

/// The known prefix of code `code` (see [`KNOWN_PREFIXES`]).
fn known_prefix(code: i64) -> std::result::Result<&'static str, String> {
    usize::try_from(PREFIX_CODE_BASE - code)
        .ok()
        .and_then(|i| KNOWN_PREFIXES.get(i).copied())
        .ok_or_else(|| format!("unknown name prefix code {code}"))
}

impl Suffixes {
    /// Positions that fit a negative fixint (-1 to -32).
    const REFERABLE: usize = 32;

    fn position(&self, suffix: u64) -> Option<usize> {
        self.0
            .iter()
            .take(Self::REFERABLE)
            .position(|&s| s == suffix)
    }
}

/// A string or collection in a header too long for MessagePack (2^32 bytes or entries).
struct TooLong;

// The few MessagePack forms a header uses, written as `rmp` (and so `rmp_serde`) writes them:
// the shortest form for each length and integer.
const NIL: u8 = 0xc0;

fn put_uint(out: &mut Vec<u8>, n: u64) {
    if n < 0x80 {
        out.push(n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.extend_from_slice(&[0xcc, n as u8]);
    } else if n <= u64::from(u16::MAX) {
        out.push(0xcd);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(0xce);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

fn put_int(out: &mut Vec<u8>, n: i64) {
    match n {
        0.. => put_uint(out, n as u64),
        -32..=-1 => out.push(n as i8 as u8),
        -128..=-33 => out.extend_from_slice(&[0xd0, n as i8 as u8]),
        -32_768..=-129 => {
            out.push(0xd1);
            out.extend_from_slice(&(n as i16).to_be_bytes());
        }
        -2_147_483_648..=-32_769 => {
            out.push(0xd2);
            out.extend_from_slice(&(n as i32).to_be_bytes());
        }
        _ => {
            out.push(0xd3);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) -> std::result::Result<(), TooLong> {
    let len = s.len();
    if len < 32 {
        out.push(0xa0 | len as u8);
    } else if len <= usize::from(u8::MAX) {
        out.extend_from_slice(&[0xd9, len as u8]);
    } else if len <= usize::from(u16::MAX) {
        out.push(0xda);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&u32::try_from(len).map_err(|_| TooLong)?.to_be_bytes());
    }
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_array_len(out: &mut Vec<u8>, len: usize) -> std::result::Result<(), TooLong> {
    crate::value::put_msgpack_array_header(out, len).ok_or(TooLong)
}

fn put_map_len(out: &mut Vec<u8>, len: usize) -> std::result::Result<(), TooLong> {
    crate::value::put_msgpack_map_header(out, len).ok_or(TooLong)
}

/// A version: an integer as it is, a Cairn string version as `[counter, suffix]` (the suffix
/// as a back reference when the header wrote it before), any other string as it is.
fn put_version(
    out: &mut Vec<u8>,
    version: &ChannelVersion,
    suffixes: &mut Suffixes,
) -> std::result::Result<(), TooLong> {
    match version {
        ChannelVersion::Int(n) => put_int(out, *n),
        ChannelVersion::Str(s) => match ChannelVersion::compact_parts_of(s) {
            Some((counter, suffix)) => {
                out.push(0x92);
                put_uint(out, counter);
                match suffixes.position(suffix) {
                    Some(at) => put_int(out, -1 - at as i64),
                    None => {
                        put_uint(out, suffix);
                        suffixes.0.push(suffix);
                    }
                }
            }
            None => put_str(out, s)?,
        },
    }
    Ok(())
}

/// A channel or node name: a known name as its code, a known prefix as `[code, rest]`, any
/// other name as it is.
fn put_name(out: &mut Vec<u8>, name: &str) -> std::result::Result<(), TooLong> {
    if let Some(i) = KNOWN_NAMES.iter().position(|known| *known == name) {
        put_int(out, -1 - i as i64);
        return Ok(());
    }
    for (i, prefix) in KNOWN_PREFIXES.iter().enumerate() {
        if let Some(rest) = name.strip_prefix(prefix) {
            out.push(0x92);
            put_int(out, PREFIX_CODE_BASE - i as i64);
            return put_str(out, rest);
        }
    }
    put_str(out, name)
}

/// A channel as [`ChannelRef`] stores it.
fn put_channel(
    out: &mut Vec<u8>,
    channel: &str,
    current: &ChannelVersions,
) -> std::result::Result<(), TooLong> {
    match ChannelRef::of(channel, current) {
        ChannelRef::Position(i) => put_uint(out, i as u64),
        ChannelRef::Name(name) => put_name(out, name)?,
    }
    Ok(())
}

/// Decodes the header of checkpoint `checkpoint_id` (the form [`encode_header`] describes); its
/// `channel_values` are empty. The error says what was wrong with the bytes, for
/// [`Error::corrupt`]. Reads every form [`encode_header`] wrote and older subsets of it (names
/// instead of positions, `ts` as text, versions as strings).
pub fn decode_header(
    bytes: &[u8],
    checkpoint_id: &str,
) -> std::result::Result<Checkpoint, HeaderError> {
    decode(bytes, checkpoint_id).map_err(HeaderError)
}

fn decode(bytes: &[u8], checkpoint_id: &str) -> std::result::Result<Checkpoint, String> {
    decode_with(bytes, checkpoint_id, true)
}

/// `with_ts`: false when only the versions are wanted, so a `ts` stored relative to the id
/// needs no id.
fn decode_with(
    bytes: &[u8],
    checkpoint_id: &str,
    with_ts: bool,
) -> std::result::Result<Checkpoint, String> {
    let mut r = Reader::new(bytes);
    let (v, ts, channel_versions) = read_head(&mut r, checkpoint_id, with_ts)?;
    let names: Vec<&String> = channel_versions.keys().collect();
    // A position or a nil (a byte or two) stands for a whole name or version: a damaged header
    // could repeat them until it decodes to far more memory than it holds. Real headers stay
    // well inside this bound.
    let mut expansion = Expansion::new(bytes.len());
    let mut versions_seen = BTreeMap::new();
    let nodes = r.map_len("versions_seen")?;
    for _ in 0..nodes {
        let node = r.name("a node name")?;
        let seen = r.map_len("what a node has seen")?;
        let mut versions = ChannelVersions::new();
        for _ in 0..seen {
            let channel = r.channel()?.resolve(&names)?;
            let version = match r.version_or_nil()? {
                Some(version) => version,
                None => channel_versions.get(&channel).cloned().ok_or_else(|| {
                    format!(
                        "node {node:?} saw channel {channel:?} at its current version, \
                         but the header has none"
                    )
                })?,
            };
            expansion.take(channel.len() + version_len(&version))?;
            versions.insert(channel, version);
        }
        versions_seen.insert(node, versions);
    }
    let updated_channels = match r.array_len_or_nil("updated_channels")? {
        None => None,
        Some(n) => {
            let mut channels = Vec::with_capacity(n.min(1024));
            for _ in 0..n {
                let channel = r.channel()?.resolve(&names)?;
                expansion.take(channel.len())?;
                channels.push(channel);
            }
            Some(channels)
        }
    };
    if !r.bytes.is_empty() {
        return Err(format!(
            "{} stray bytes after the checkpoint header",
            r.bytes.len()
        ));
    }
    Ok(Checkpoint {
        v,
        id: checkpoint_id.to_owned(),
        ts,
        channel_values: BTreeMap::new(),
        channel_versions,
        versions_seen,
        updated_channels,
    })
}

/// What a header may still decode to beyond its own bytes: 64 times its size, at least 1 MiB.
struct Expansion(usize);

impl Expansion {
    fn new(header_len: usize) -> Self {
        Expansion(header_len.saturating_mul(64).max(1 << 20))
    }

    fn take(&mut self, bytes: usize) -> std::result::Result<(), String> {
        self.0 = self.0.checked_sub(bytes).ok_or_else(|| {
            "the header's positions and nils stand for more than 64 times its size: \
             it is damaged"
                .to_owned()
        })?;
        Ok(())
    }
}

fn version_len(version: &ChannelVersion) -> usize {
    match version {
        ChannelVersion::Int(_) => 8,
        ChannelVersion::Str(s) => s.len(),
    }
}

/// The first three fields of a compact header: `v`, `ts` and the channel versions.
fn read_head(
    r: &mut Reader<'_>,
    checkpoint_id: &str,
    with_ts: bool,
) -> std::result::Result<(u32, String, ChannelVersions), String> {
    let fields = r.array_len("the header")?;
    if fields != 5 {
        return Err(format!("the header has {fields} fields, not 5"));
    }
    let v = match r.item()? {
        Item::UInt(v) => {
            u32::try_from(v).map_err(|_| format!("format version {v} out of range"))?
        }
        other => {
            return Err(format!(
                "expected the format version, found {}",
                other.kind()
            ))
        }
    };
    let ts = match r.item()? {
        Item::UInt(micros) => ts_from_micros(micros)?,
        Item::Array(1) => {
            let Item::UInt(after_id) = r.item()? else {
                return Err(
                    "a timestamp relative to the checkpoint id that is not an unsigned \
                            integer"
                        .into(),
                );
            };
            if with_ts {
                let at = id_micros(checkpoint_id).ok_or_else(|| {
                    format!(
                        "the timestamp is stored relative to the checkpoint id, but the id \
                         {checkpoint_id:?} is not a time-ordered UUID"
                    )
                })?;
                let micros = at
                    .checked_add(after_id)
                    .ok_or_else(|| format!("timestamp {at} + {after_id} out of range"))?;
                ts_from_micros(micros)?
            } else {
                String::new()
            }
        }
        Item::Str(s) => s.to_owned(),
        other => return Err(format!("expected a timestamp, found {}", other.kind())),
    };
    let n = r.map_len("channel_versions")?;
    let mut versions = ChannelVersions::new();
    for _ in 0..n {
        let channel = r.name("a channel name")?;
        let version = r
            .version_or_nil()?
            .ok_or_else(|| format!("channel {channel:?} has no version"))?;
        versions.insert(channel, version);
    }
    Ok((v, ts, versions))
}

/// `ts` from microseconds since the Unix epoch.
fn ts_from_micros(micros: u64) -> std::result::Result<String, String> {
    // Past year 9999 humantime's formatting would not read back.
    const MAX_MICROS: u64 = 253_402_300_799_999_999;
    if micros > MAX_MICROS {
        return Err(format!("timestamp {micros} out of range"));
    }
    Ok(ts_text(micros))
}

/// One MessagePack item of the kinds a header holds; arrays and maps by their length (their
/// elements follow).
enum Item<'a> {
    Nil,
    UInt(u64),
    NegInt(i64),
    Str(&'a str),
    Array(usize),
    Map(usize),
    Other(u8),
}

impl Item<'_> {
    /// A signed integer: [`Item::UInt`] when it is not negative.
    fn int(n: i64) -> Self {
        match u64::try_from(n) {
            Ok(n) => Item::UInt(n),
            Err(_) => Item::NegInt(n),
        }
    }

    fn kind(&self) -> String {
        match self {
            Item::Nil => "nil".into(),
            Item::UInt(n) => format!("the integer {n}"),
            Item::NegInt(n) => format!("the integer {n}"),
            Item::Str(s) => format!("the string {s:?}"),
            Item::Array(n) => format!("an array of {n}"),
            Item::Map(n) => format!("a map of {n}"),
            Item::Other(marker) => format!("MessagePack marker 0x{marker:02x}"),
        }
    }
}

/// Reads a compact header item by item; every read checks the bytes are there.
struct Reader<'a> {
    bytes: &'a [u8],
    /// The version suffixes read in full so far, for back references (see [`Suffixes`]).
    suffixes: Suffixes,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Reader {
            bytes,
            suffixes: Suffixes::default(),
        }
    }

    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], String> {
        if self.bytes.len() < n {
            return Err("the header ends early".into());
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn be(&mut self, n: usize) -> std::result::Result<u64, String> {
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    /// A length of `n` big-endian bytes.
    fn len(&mut self, n: usize) -> std::result::Result<usize, String> {
        let len = usize::try_from(self.be(n)?).map_err(|_| "a length out of range".to_owned())?;
        Ok(len)
    }

    fn item(&mut self) -> std::result::Result<Item<'a>, String> {
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Item::UInt(u64::from(marker)),
            0x80..=0x8f => Item::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Item::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => self.str(usize::from(marker & 0x1f))?,
            0xc0 => Item::Nil,
            0xcc => Item::UInt(self.be(1)?),
            0xcd => Item::UInt(self.be(2)?),
            0xce => Item::UInt(self.be(4)?),
            0xcf => Item::UInt(self.be(8)?),
            // Signed forms: Cairn writes non-negative integers unsigned, but a signed form
            // holding one is the same number.
            0xd0 => Item::int(i64::from(self.be(1)? as u8 as i8)),
            0xd1 => Item::int(i64::from(self.be(2)? as u16 as i16)),
            0xd2 => Item::int(i64::from(self.be(4)? as u32 as i32)),
            0xd3 => Item::int(self.be(8)? as i64),
            // Strings with an 8-, 16- or 32-bit length, and binary of the same widths where a
            // string belongs (serde read those as strings too).
            0xd9 | 0xc4 => self.sized_str(1)?,
            0xda | 0xc5 => self.sized_str(2)?,
            0xdb | 0xc6 => self.sized_str(4)?,
            0xdc => Item::Array(self.len(2)?),
            0xdd => Item::Array(self.len(4)?),
            0xde => Item::Map(self.len(2)?),
            0xdf => Item::Map(self.len(4)?),
            0xe0..=0xff => Item::NegInt(i64::from(marker as i8)),
            other => Item::Other(other),
        })
    }

    /// A string whose length comes first, in `width` bytes.
    fn sized_str(&mut self, width: usize) -> std::result::Result<Item<'a>, String> {
        let n = self.len(width)?;
        self.str(n)
    }

    fn str(&mut self, n: usize) -> std::result::Result<Item<'a>, String> {
        let bytes = self.take(n)?;
        std::str::from_utf8(bytes)
            .map(Item::Str)
            .map_err(|_| "a string that is not UTF-8".to_owned())
    }

    /// A channel or node name as [`put_name`] writes it (or as it is).
    fn name(&mut self, what: &str) -> std::result::Result<String, String> {
        let item = self.item()?;
        self.name_from(item, what)
    }

    /// The name `item` starts (reading the rest of a prefixed name); `what` names what was
    /// expected, for the error when `item` starts none.
    fn name_from(&mut self, item: Item<'a>, what: &str) -> std::result::Result<String, String> {
        match item {
            Item::Str(s) => Ok(s.to_owned()),
            Item::NegInt(code) => known_name(code).map(str::to_owned),
            Item::Array(2) => match (self.item()?, self.item()?) {
                (Item::NegInt(code), Item::Str(rest)) => {
                    known_prefix(code).map(|p| p.to_owned() + rest)
                }
                _ => Err("a prefixed name that is not [prefix code, string]".into()),
            },
            other => Err(format!("expected {what}, found {}", other.kind())),
        }
    }

    fn map_len(&mut self, what: &str) -> std::result::Result<usize, String> {
        match self.item()? {
            Item::Map(n) => Ok(n),
            other => Err(format!("expected {what} (a map), found {}", other.kind())),
        }
    }

    fn array_len(&mut self, what: &str) -> std::result::Result<usize, String> {
        self.array_len_or_nil(what)?
            .ok_or_else(|| format!("expected {what} (an array), found nil"))
    }

    fn array_len_or_nil(&mut self, what: &str) -> std::result::Result<Option<usize>, String> {
        match self.item()? {
            Item::Nil => Ok(None),
            Item::Array(n) => Ok(Some(n)),
            other => Err(format!(
                "expected {what} (an array), found {}",
                other.kind()
            )),
        }
    }

    /// A channel of `versions_seen` or `updated_channels`: a position or a name.
    fn channel(&mut self) -> std::result::Result<StoredChannel, String> {
        match self.item()? {
            Item::UInt(i) => Ok(StoredChannel::Position(i)),
            item => self.name_from(item, "a channel").map(StoredChannel::Name),
        }
    }

    /// A version (an integer, a string or `[counter, suffix]`), or nil.
    fn version_or_nil(&mut self) -> std::result::Result<Option<ChannelVersion>, String> {
        let version = match self.item()? {
            Item::Nil => return Ok(None),
            Item::UInt(n) => ChannelVersion::Int(
                i64::try_from(n).map_err(|_| format!("integer version {n} out of range"))?,
            ),
            Item::NegInt(n) => ChannelVersion::Int(n),
            Item::Str(s) => ChannelVersion::Str(s.to_owned()),
            Item::Array(2) => {
                let (counter, suffix) = match (self.item()?, self.item()?) {
                    (Item::UInt(counter), Item::UInt(suffix)) => {
                        self.suffixes.0.push(suffix);
                        (counter, suffix)
                    }
                    (Item::UInt(counter), Item::NegInt(back)) => {
                        let suffix = usize::try_from(-1 - back)
                            .ok()
                            .and_then(|at| self.suffixes.0.get(at).copied())
                            .ok_or_else(|| {
                                format!(
                                    "a version refers to suffix {} of the header, which has \
                                     {} before it",
                                    back.unsigned_abs(),
                                    self.suffixes.0.len()
                                )
                            })?;
                        (counter, suffix)
                    }
                    _ => {
                        return Err(
                            "a version pair that is not [counter, suffix or reference]".into()
                        )
                    }
                };
                ChannelVersion::from_compact_parts(counter, suffix)
                    .ok_or_else(|| format!("version counter {counter} out of range"))?
            }
            other => {
                return Err(format!(
                    "expected a channel version (an integer, a string or [counter, suffix]), \
                     found {}",
                    other.kind()
                ))
            }
        };
        Ok(Some(version))
    }
}

/// Only the channel versions of a header (what reclaiming values needs). The whole header is
/// read, so a header damaged anywhere is reported here too.
pub fn decode_header_versions(bytes: &[u8]) -> std::result::Result<ChannelVersions, HeaderError> {
    decode_with(bytes, "", false)
        .map(|checkpoint| checkpoint.channel_versions)
        .map_err(HeaderError)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat() -> Checkpoint {
        let mut cp = Checkpoint::new();
        let v1 = ChannelVersion::first_after(None);
        let v2 = ChannelVersion::first_after(Some(&v1));
        cp.channel_versions.insert("messages".into(), v2.clone());
        cp.channel_versions.insert("__start__".into(), v1.clone());
        cp.channel_versions
            .insert("count".into(), ChannelVersion::Int(-7));
        cp.versions_seen.insert(
            "reply".into(),
            [
                ("messages".to_owned(), v1),
                ("gone".to_owned(), ChannelVersion::Int(3)),
            ]
            .into(),
        );
        cp.versions_seen
            .insert("__start__".into(), [("__start__".to_owned(), v2)].into());
        cp.updated_channels = Some(vec!["messages".into(), "elsewhere".into()]);
        cp
    }

    #[test]
    fn headers_read_back_exactly() {
        let mut odd_ts = chat();
        odd_ts.ts = "yesterday".into();
        for cp in [chat(), odd_ts, Checkpoint::new()] {
            let bytes = encode_header(&cp).expect("encode");
            assert_eq!(decode_header(&bytes, &cp.id).expect("decode"), cp);
            assert_eq!(
                decode_header_versions(&bytes).expect("versions"),
                cp.channel_versions
            );
        }
    }

    #[test]
    fn damaged_headers_are_errors_not_panics() {
        let cp = chat();
        let bytes = encode_header(&cp).expect("encode");
        for cut in 0..bytes.len() {
            let err = decode_header(&bytes[..cut], &cp.id).expect_err("a cut header");
            assert!(err.to_string().contains("checkpoint header"), "{err}");
        }
        let mut longer = bytes.clone();
        longer.extend_from_slice(b"\x01junk");
        let err = decode_header(&longer, &cp.id).expect_err("bytes after the header");
        assert!(err.to_string().contains("5 stray bytes"), "{err}");
        for at in 0..bytes.len() {
            for flip in [0x01, 0x80, 0xff] {
                let mut damaged = bytes.clone();
                damaged[at] ^= flip;
                let _ = decode_header(&damaged, &cp.id);
                let _ = decode_header_versions(&damaged);
            }
        }
    }

    #[test]
    fn integers_in_signed_forms_read_as_the_same_numbers() {
        // [v = 4 as int8, ts "x", {a: 1}, {n: {0 as int8: nil}}, [0 as int64]]
        let bytes = [
            0x95, 0xd0, 0x04, 0xa1, b'x', 0x81, 0xa1, b'a', 0x01, 0x81, 0xa1, b'n', 0x81, 0xd0,
            0x00, 0xc0, 0x91, 0xd3, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let cp = decode_header(&bytes, "id").expect("decode");
        assert_eq!(cp.v, 4);
        assert_eq!(cp.versions_seen["n"]["a"], ChannelVersion::Int(1));
        assert_eq!(cp.updated_channels, Some(vec!["a".to_owned()]));
        // A negative integer where a channel belongs is a known name's code: -1 is
        // `__start__`, -16 is none.
        let known = [
            0x95, 0x04, 0xa1, b'x', 0x81, 0xa1, b'a', 0x01, 0x80, 0x91, 0xff,
        ];
        let cp = decode_header(&known, "id").expect("a known name");
        assert_eq!(cp.updated_channels, Some(vec!["__start__".to_owned()]));
        let unknown = [
            0x95, 0x04, 0xa1, b'x', 0x81, 0xa1, b'a', 0x01, 0x80, 0x91, 0xf0,
        ];
        let err = decode_header(&unknown, "id").expect_err("an unknown code");
        assert!(err.to_string().contains("unknown name code -16"), "{err}");
    }

    /// A header as the runtime writes it for a chat turn's reply step: its own channels and
    /// nodes, one suffix for the channels the step updated.
    fn chat_step() -> Checkpoint {
        let mut cp = Checkpoint::new();
        let input = ChannelVersion::first_after(Some(&ChannelVersion::Int(30)));
        let step = ChannelVersion::first_after(Some(&ChannelVersion::Int(31)));
        let (counter, suffix) = step.compact_parts().expect("Cairn's form");
        let same_step = |counter| ChannelVersion::from_compact_parts(counter, suffix);
        let earlier = ChannelVersion::first_after(Some(&ChannelVersion::Int(28)));
        cp.channel_versions
            .insert("__start__".into(), input.clone());
        cp.channel_versions
            .insert("branch:to:reply".into(), step.clone());
        let messages = same_step(counter + 1).expect("a version");
        cp.channel_versions.insert("messages".into(), messages);
        cp.versions_seen.insert("__input__".into(), BTreeMap::new());
        cp.versions_seen
            .insert("__start__".into(), [("__start__".to_owned(), input)].into());
        cp.versions_seen
            .insert("reply".into(), [("messages".to_owned(), earlier)].into());
        cp.updated_channels = Some(vec!["branch:to:reply".into(), "messages".into()]);
        cp
    }

    #[test]
    fn runtime_names_repeated_suffixes_and_the_time_are_stored_in_a_few_bytes() {
        let cp = chat_step();
        let bytes = encode_header(&cp).expect("encode");
        assert_eq!(decode_header(&bytes, &cp.id).expect("decode"), cp);
        // Names as codes (`__start__`, `__input__`) and `[code, "reply"]`, the step's suffix
        // once, `ts` as 0 after the id: 145 bytes in the form before.
        assert!(bytes.len() <= 80, "{} bytes: {bytes:02x?}", bytes.len());
        assert_eq!(&bytes[2..4], &[0x91, 0x00], "ts 0 µs after the id");
        // The same header under an id that is not a time-ordered UUID keeps `ts` whole.
        let mut plain_id = cp.clone();
        plain_id.id = "my-checkpoint".into();
        let bytes = encode_header(&plain_id).expect("encode");
        assert_eq!(bytes[2], 0xcf, "ts in microseconds");
        assert_eq!(
            decode_header(&bytes, &plain_id.id).expect("decode"),
            plain_id
        );
    }

    /// Checkpoints made on several threads at once step their ids past each other's; each
    /// `ts` still equals the time its id holds, so every header stores it as 0 after the id.
    #[test]
    fn checkpoints_made_at_once_on_many_threads_store_ts_as_zero_after_the_id() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..2_000)
                        .map(|_| Checkpoint::new())
                        .collect::<Vec<Checkpoint>>()
                })
            })
            .collect();
        for thread in threads {
            for cp in thread.join().expect("thread") {
                let bytes = encode_header(&cp).expect("encode");
                assert_eq!(&bytes[2..4], &[0x91, 0x00], "{} at {}", cp.id, cp.ts);
                assert_eq!(decode_header(&bytes, &cp.id).expect("decode"), cp);
            }
        }
    }

    #[test]
    fn a_timestamp_relative_to_the_id_needs_a_time_ordered_id() {
        let cp = chat_step();
        let bytes = encode_header(&cp).expect("encode");
        let err = decode_header(&bytes, "not-a-uuid").expect_err("no time in the id");
        assert!(err.to_string().contains("not a time-ordered UUID"), "{err}");
        // The versions alone need no id.
        assert_eq!(
            decode_header_versions(&bytes).expect("versions"),
            cp.channel_versions
        );
    }

    #[test]
    fn a_suffix_reference_without_its_suffix_is_an_error() {
        // [4, "x", {"a": [1, -1]}, {}, nil]: suffix 1 of a header that wrote none.
        let bytes = [
            0x95, 0x04, 0xa1, b'x', 0x81, 0xa1, b'a', 0x92, 0x01, 0xff, 0x80, 0xc0,
        ];
        let err = decode_header(&bytes, "id").expect_err("a dangling reference");
        assert!(err.to_string().contains("refers to suffix 1"), "{err}");
        // The most negative reference there is (int64): an error, not an overflow.
        let bytes = [
            0x95, 0x04, 0xa1, b'x', 0x81, 0xa1, b'a', 0x92, 0x01, 0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0,
            0x80, 0xc0,
        ];
        let err = decode_header(&bytes, "id").expect_err("a dangling reference");
        assert!(
            err.to_string()
                .contains("refers to suffix 9223372036854775808"),
            "{err}"
        );
        // [4, "x", {[-20, "r"]: 1}, {}, nil]: a prefix code that means nothing.
        let bytes = [
            0x95, 0x04, 0xa1, b'x', 0x81, 0x92, 0xec, 0xa1, b'r', 0x01, 0x80, 0xc0,
        ];
        let err = decode_header(&bytes, "id").expect_err("an unknown prefix");
        assert!(
            err.to_string().contains("unknown name prefix code -20"),
            "{err}"
        );
    }

    #[test]
    fn every_known_name_and_prefix_reads_back() {
        let mut cp = Checkpoint::new();
        for (i, name) in KNOWN_NAMES
            .iter()
            .map(|n| (*n).to_owned())
            .chain(KNOWN_PREFIXES.iter().map(|p| format!("{p}node")))
            .chain(["plain".to_owned(), "branch:to:".to_owned()])
            .enumerate()
        {
            cp.channel_versions
                .insert(name.clone(), ChannelVersion::Int(i as i64));
            cp.versions_seen.insert(name, BTreeMap::new());
        }
        // A channel that only a node has seen is stored by its name (here a code).
        cp.versions_seen.insert(
            "__start__".into(),
            [("join:a+b:c".to_owned(), ChannelVersion::Int(1))].into(),
        );
        let bytes = encode_header(&cp).expect("encode");
        assert_eq!(decode_header(&bytes, &cp.id).expect("decode"), cp);
    }

    #[test]
    fn a_header_that_would_decode_to_far_more_than_its_size_is_an_error() {
        // One channel with a 60,000-character version, then 40,000 nodes that each saw it at
        // its current version (3 bytes each): 2.4 GB decoded from 180 KB.
        let mut bytes = vec![0x95, 0x04, 0xa1, b'x', 0x81, 0xa1, b'a'];
        bytes.push(0xda);
        bytes.extend_from_slice(&60_000u16.to_be_bytes());
        bytes.extend(std::iter::repeat_n(b'v', 60_000));
        bytes.push(0xde);
        bytes.extend_from_slice(&40_000u16.to_be_bytes());
        for i in 0..40_000u32 {
            // A distinct five-digit node name per entry.
            bytes.push(0xa5);
            bytes.extend_from_slice(format!("{i:05}").as_bytes());
            bytes.extend_from_slice(&[0x81, 0x00, 0xc0]);
        }
        bytes.push(0xc0);
        let err = decode_header(&bytes, "id").expect_err("too much");
        assert!(err.to_string().contains("64 times"), "{err}");
    }

    #[test]
    fn names_stored_as_binary_read_as_strings() {
        // [4, ts as bin8 "x", {"a" as bin16: 1}, {"n" as bin32: {}}, nil]
        let bytes = [
            0x95, 0x04, 0xc4, 0x01, b'x', 0x81, 0xc5, 0x00, 0x01, b'a', 0x01, 0x81, 0xc6, 0x00,
            0x00, 0x00, 0x01, b'n', 0x80, 0xc0,
        ];
        let cp = decode_header(&bytes, "id").expect("decode");
        assert_eq!(cp.ts, "x");
        assert_eq!(cp.channel_versions["a"], ChannelVersion::Int(1));
        assert!(cp.versions_seen["n"].is_empty());
        let not_utf8 = [0x95, 0x04, 0xc4, 0x01, 0xff, 0x80, 0x80, 0xc0];
        let err = decode_header(&not_utf8, "id").expect_err("not UTF-8");
        assert!(err.to_string().contains("not UTF-8"), "{err}");
    }
}

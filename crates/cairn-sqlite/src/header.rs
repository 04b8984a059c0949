//! The checkpoint header: a checkpoint without its channel values, as stored in
//! `checkpoints.header`.
//!
//! Written as a MessagePack array `[v, ts, channel_versions, versions_seen,
//! updated_channels]`: no field names, no id (the row's `checkpoint_id` column holds it), no
//! empty `channel_values`. MessagePack keeps version types (`Int(1)` stays `Int(1)`). A
//! string version in Cairn's own format (`{counter:032}.{suffix:016x}`, 49 characters) is
//! stored as the pair `[counter, suffix]` (about 11 bytes; schema 4), any other version as it
//! is; a header holds one per channel and one per channel each node has seen, so this halves
//! it. Since schema 6 a `ts` in Cairn's own form (RFC 3339, UTC, microseconds) is stored as
//! microseconds since the Unix epoch, any other as text. Since schema 7 `versions_seen` and
//! `updated_channels` name a channel that `channel_versions` also holds by its position there
//! (in key order; one byte instead of the name), and a seen version equal to the channel's
//! current one is `nil` (one byte instead of about eleven): what a node has seen is mostly the
//! channels of this very header, often at their current versions. Headers of schema 3 (every
//! version a string) and of schemas 4 to 6 (names everywhere) read as before.
//!
//! Databases written before schema 3 hold the whole checkpoint as a MessagePack map with
//! field names (`rmp_serde::to_vec_named`); those headers are read as they are (their
//! first byte is a map marker, never an array marker), and their `id` must match the row's.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{IgnoredAny, SeqAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use cairn_checkpoint::{ChannelVersion, ChannelVersions, Checkpoint};

/// The stored form of a header, by reference.
type CompactRef<'a> = (
    u32,
    TsRef<'a>,
    VersionsRef<'a>,
    SeenRef<'a>,
    Option<ChannelsRef<'a>>,
);

/// The stored form of a header, owned.
type Compact = (
    u32,
    StoredTs,
    StoredVersions,
    BTreeMap<String, StoredSeen>,
    Option<Vec<StoredChannel>>,
);

/// A checkpoint's `ts` as a header stores it: whole microseconds since the Unix epoch when
/// it is exactly what Cairn writes (RFC 3339 in UTC with six fractional digits, 27
/// characters; 9 bytes instead of 28, schema 6), any other text as it is.
struct TsRef<'a>(&'a str);

impl Serialize for TsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match ts_micros(self.0) {
            Some(micros) => serializer.serialize_u64(micros),
            None => serializer.serialize_str(self.0),
        }
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

/// A `ts` read from a header, in either stored form.
struct StoredTs(String);

impl<'de> Deserialize<'de> for StoredTs {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StoredTs;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a timestamp: microseconds since the Unix epoch or a string")
            }
            fn visit_u64<E: serde::de::Error>(self, micros: u64) -> Result<StoredTs, E> {
                // Past year 9999 humantime's formatting would not read back.
                const MAX_MICROS: u64 = 253_402_300_799_999_999;
                if micros > MAX_MICROS {
                    return Err(E::custom(format!("timestamp {micros} out of range")));
                }
                Ok(StoredTs(ts_text(micros)))
            }
            fn visit_i64<E: serde::de::Error>(self, micros: i64) -> Result<StoredTs, E> {
                u64::try_from(micros)
                    .map_err(|_| E::custom(format!("timestamp {micros} out of range")))
                    .and_then(|m| self.visit_u64(m))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<StoredTs, E> {
                Ok(StoredTs(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<StoredTs, E> {
                Ok(StoredTs(s))
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Channel versions as a header stores them (see the module docs).
struct VersionsRef<'a>(&'a ChannelVersions);

impl Serialize for VersionsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (channel, version) in self.0 {
            map.serialize_entry(channel, &VersionRef(version))?;
        }
        map.end()
    }
}

/// One version as a header stores it: `[counter, suffix]` for Cairn's own string form, any
/// other as it is.
struct VersionRef<'a>(&'a ChannelVersion);

impl Serialize for VersionRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0.compact_parts() {
            Some(pair) => pair.serialize(serializer),
            None => self.0.serialize(serializer),
        }
    }
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

impl Serialize for ChannelRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            ChannelRef::Position(i) => serializer.serialize_u64(*i as u64),
            ChannelRef::Name(name) => serializer.serialize_str(name),
        }
    }
}

/// `versions_seen` as a header stores it: each channel as a [`ChannelRef`], each version
/// equal to the channel's current one as `nil`.
struct SeenRef<'a> {
    seen: &'a BTreeMap<String, ChannelVersions>,
    current: &'a ChannelVersions,
}

impl Serialize for SeenRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        struct NodeSeen<'a> {
            versions: &'a ChannelVersions,
            current: &'a ChannelVersions,
        }
        impl Serialize for NodeSeen<'_> {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                let mut map = serializer.serialize_map(Some(self.versions.len()))?;
                for (channel, version) in self.versions {
                    let key = ChannelRef::of(channel, self.current);
                    if self.current.get(channel) == Some(version) {
                        map.serialize_entry(&key, &())?;
                    } else {
                        map.serialize_entry(&key, &VersionRef(version))?;
                    }
                }
                map.end()
            }
        }
        let mut map = serializer.serialize_map(Some(self.seen.len()))?;
        for (node, versions) in self.seen {
            let node_seen = NodeSeen {
                versions,
                current: self.current,
            };
            map.serialize_entry(node, &node_seen)?;
        }
        map.end()
    }
}

/// `updated_channels` as a header stores it: each channel as a [`ChannelRef`].
struct ChannelsRef<'a> {
    channels: &'a [String],
    current: &'a ChannelVersions,
}

impl Serialize for ChannelsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(
            self.channels
                .iter()
                .map(|c| ChannelRef::of(c, self.current)),
        )
    }
}

/// A channel read from `versions_seen` or `updated_channels`: a position in the header's
/// `channel_versions` (schema 7) or a name.
enum StoredChannel {
    Position(u64),
    Name(String),
}

impl<'de> Deserialize<'de> for StoredChannel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StoredChannel;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a channel: its name or its position in channel_versions")
            }
            fn visit_u64<E: serde::de::Error>(self, i: u64) -> Result<StoredChannel, E> {
                Ok(StoredChannel::Position(i))
            }
            fn visit_i64<E: serde::de::Error>(self, i: i64) -> Result<StoredChannel, E> {
                u64::try_from(i)
                    .map(StoredChannel::Position)
                    .map_err(|_| E::custom(format!("channel position {i} is negative")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<StoredChannel, E> {
                Ok(StoredChannel::Name(s.to_owned()))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<StoredChannel, E> {
                Ok(StoredChannel::Name(s))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl StoredChannel {
    /// The channel's name, looking a position up in `names` (`channel_versions`' keys).
    fn resolve(self, names: &[&String]) -> Result<String, String> {
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

/// What one node has seen, read from a header: channels with a version, or `None` for the
/// channel's current version (schema 7).
struct StoredSeen(Vec<(StoredChannel, Option<StoredVersion>)>);

impl<'de> Deserialize<'de> for StoredSeen {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StoredSeen;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of channels to versions")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<StoredSeen, A::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0).min(64));
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(StoredSeen(entries))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Channel versions read from a header, in either stored form.
struct StoredVersions(ChannelVersions);

impl<'de> Deserialize<'de> for StoredVersions {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let stored: BTreeMap<String, StoredVersion> = BTreeMap::deserialize(deserializer)?;
        Ok(StoredVersions(
            stored.into_iter().map(|(c, v)| (c, v.0)).collect(),
        ))
    }
}

/// One version read from a header: an integer, a string, or `[counter, suffix]`.
struct StoredVersion(ChannelVersion);

impl<'de> Deserialize<'de> for StoredVersion {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StoredVersion;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a channel version: an integer, a string or [counter, suffix]")
            }
            fn visit_i64<E: serde::de::Error>(self, n: i64) -> Result<StoredVersion, E> {
                Ok(StoredVersion(ChannelVersion::Int(n)))
            }
            fn visit_u64<E: serde::de::Error>(self, n: u64) -> Result<StoredVersion, E> {
                i64::try_from(n)
                    .map(|n| StoredVersion(ChannelVersion::Int(n)))
                    .map_err(|_| E::custom(format!("integer version {n} out of range")))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<StoredVersion, E> {
                Ok(StoredVersion(ChannelVersion::Str(s.to_owned())))
            }
            fn visit_string<E: serde::de::Error>(self, s: String) -> Result<StoredVersion, E> {
                Ok(StoredVersion(ChannelVersion::Str(s)))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StoredVersion, A::Error> {
                use serde::de::Error;
                let counter: u64 = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                let suffix: u64 = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(3, &self));
                }
                ChannelVersion::from_compact_parts(counter, suffix)
                    .map(StoredVersion)
                    .ok_or_else(|| {
                        A::Error::custom(format!("version counter {counter} out of range"))
                    })
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// Encodes `checkpoint`'s header. Its `id` and `channel_values` are not stored (the row holds
/// the id; values are stored apart).
pub(crate) fn encode(checkpoint: &Checkpoint) -> Result<Vec<u8>, rmp_serde::encode::Error> {
    // Every field named, so a field added to Checkpoint cannot be dropped unnoticed.
    let Checkpoint {
        v,
        id: _,
        ts,
        channel_values: _,
        channel_versions,
        versions_seen,
        updated_channels,
    } = checkpoint;
    let compact: CompactRef<'_> = (
        *v,
        TsRef(ts),
        VersionsRef(channel_versions),
        SeenRef {
            seen: versions_seen,
            current: channel_versions,
        },
        updated_channels.as_deref().map(|channels| ChannelsRef {
            channels,
            current: channel_versions,
        }),
    );
    rmp_serde::to_vec(&compact)
}

/// Whether `bytes` is a compact header (a MessagePack array) rather than a named map.
fn is_compact(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x90..=0x9f | 0xdc | 0xdd))
}

/// Decodes the header of checkpoint `checkpoint_id`; its `channel_values` are empty. The
/// error says what was wrong, for [`cairn_checkpoint::Error::corrupt`].
pub(crate) fn decode(bytes: &[u8], checkpoint_id: &str) -> Result<Checkpoint, String> {
    let what = |e: rmp_serde::decode::Error| {
        format!("cannot decode the checkpoint header (MessagePack): {e}")
    };
    if !is_compact(bytes) {
        let checkpoint: Checkpoint = rmp_serde::from_slice(bytes).map_err(what)?;
        if checkpoint.id != checkpoint_id {
            return Err(format!(
                "the stored checkpoint header names checkpoint {:?}, not its row's id",
                checkpoint.id
            ));
        }
        return Ok(checkpoint);
    }
    let (v, StoredTs(ts), StoredVersions(channel_versions), seen, updated): Compact =
        rmp_serde::from_slice(bytes).map_err(what)?;
    let names: Vec<&String> = channel_versions.keys().collect();
    let mut versions_seen = BTreeMap::new();
    for (node, StoredSeen(entries)) in seen {
        let mut versions = ChannelVersions::new();
        for (channel, version) in entries {
            let channel = channel.resolve(&names)?;
            let version = match version {
                Some(StoredVersion(version)) => version,
                None => channel_versions.get(&channel).cloned().ok_or_else(|| {
                    format!(
                        "node {node:?} saw channel {channel:?} at its current version, \
                         but the header has none"
                    )
                })?,
            };
            versions.insert(channel, version);
        }
        versions_seen.insert(node, versions);
    }
    let updated_channels = updated
        .map(|channels| {
            channels
                .into_iter()
                .map(|c| c.resolve(&names))
                .collect::<Result<Vec<_>, _>>()
        })
        .transpose()?;
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

/// Only the channel versions of a header (what reclaiming values needs), either form.
pub(crate) fn channel_versions(bytes: &[u8]) -> Result<ChannelVersions, String> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        channel_versions: ChannelVersions,
    }
    let what = |e: rmp_serde::decode::Error| {
        format!("cannot decode the checkpoint header (MessagePack): {e}")
    };
    if is_compact(bytes) {
        let (_, _, StoredVersions(versions), _, _): (
            IgnoredAny,
            IgnoredAny,
            StoredVersions,
            IgnoredAny,
            IgnoredAny,
        ) = rmp_serde::from_slice(bytes).map_err(what)?;
        Ok(versions)
    } else {
        let named: Named = rmp_serde::from_slice(bytes).map_err(what)?;
        Ok(named.channel_versions)
    }
}

#[cfg(test)]
mod tests {
    use cairn_checkpoint::{ChannelVersion, TypedValue};

    use super::*;

    fn sample() -> Checkpoint {
        let mut cp = Checkpoint::new();
        cp.channel_versions
            .insert("a".into(), ChannelVersion::Int(1));
        cp.channel_versions
            .insert("b".into(), ChannelVersion::first_after(None));
        cp.versions_seen.insert(
            "node".into(),
            [("a".to_owned(), ChannelVersion::Int(1))].into(),
        );
        cp.versions_seen
            .insert("__input__".into(), ChannelVersions::new());
        cp.updated_channels = Some(vec!["a".into()]);
        cp
    }

    #[test]
    fn a_compact_header_reads_back_the_checkpoint_without_values() {
        let mut cp = sample();
        let bytes = encode(&cp).expect("encode");
        cp.channel_values
            .insert("a".into(), TypedValue::new("msgpack", vec![1u8]));
        let back = decode(&bytes, &cp.id).expect("decode");
        cp.channel_values.clear();
        assert_eq!(back, cp);
        assert_eq!(
            channel_versions(&bytes).expect("versions"),
            cp.channel_versions
        );
        assert!(bytes.len() < rmp_serde::to_vec_named(&cp).expect("named").len());
    }

    #[test]
    fn cairn_string_versions_are_stored_as_pairs_and_others_as_they_are() {
        let mut cp = sample();
        let odd = [
            ChannelVersion::Str("00000000000000000000000000000002.0.4581837367574718".into()),
            ChannelVersion::Str("7".into()),
            ChannelVersion::Str("00000000000000000000000000000002.0123456789ABCDEF".into()),
            ChannelVersion::Int(-3),
            ChannelVersion::Int(i64::MAX),
        ];
        for (i, v) in odd.iter().enumerate() {
            cp.channel_versions.insert(format!("odd{i}"), v.clone());
        }
        let ours = ChannelVersion::first_after(Some(&ChannelVersion::Int(41)));
        cp.versions_seen
            .insert("n2".into(), [("b".to_owned(), ours.clone())].into());
        let bytes = encode(&cp).expect("encode");
        let back = decode(&bytes, &cp.id).expect("decode");
        assert_eq!(back, cp, "every version reads back exactly");
        assert_eq!(
            channel_versions(&bytes).expect("versions"),
            cp.channel_versions
        );
        let ours_bytes = |v: &ChannelVersion| {
            let mut one = Checkpoint::new();
            one.ts = cp.ts.clone();
            one.channel_versions.insert("c".into(), v.clone());
            encode(&one).expect("encode").len()
        };
        assert!(
            ours_bytes(&ours) + 30 < ours_bytes(&ChannelVersion::Str(ours.to_string() + "0")),
            "a version in Cairn's format takes far fewer bytes than a string"
        );
    }

    #[test]
    fn schema_3_headers_with_string_versions_read_as_before() {
        let cp = sample();
        let schema_3 = rmp_serde::to_vec(&(
            cp.v,
            &cp.ts,
            &cp.channel_versions,
            &cp.versions_seen,
            &cp.updated_channels,
        ))
        .expect("encode");
        assert_eq!(decode(&schema_3, &cp.id).expect("decode"), cp);
        assert_eq!(
            channel_versions(&schema_3).expect("versions"),
            cp.channel_versions
        );
    }

    #[test]
    fn headers_written_before_schema_3_read_as_before() {
        let cp = sample();
        let named = rmp_serde::to_vec_named(&cp).expect("named");
        assert_eq!(decode(&named, &cp.id).expect("decode"), cp);
        assert_eq!(
            channel_versions(&named).expect("versions"),
            cp.channel_versions
        );
        let err = decode(&named, "another id").expect_err("id mismatch");
        assert!(err.contains("not its row's id"), "{err}");
    }

    #[test]
    fn cairn_timestamps_are_stored_as_microseconds_and_others_as_text() {
        let mut cp = sample();
        let ours = encode(&cp).expect("encode");
        assert_eq!(decode(&ours, &cp.id).expect("decode"), cp);
        for other in [
            "2024-07-31T20:14:19.804150+00:00",
            "2024-07-31T20:14:19Z",
            "2024-07-31T20:14:19.8041500Z",
            "not a time",
            "",
        ] {
            cp.ts = other.into();
            let bytes = encode(&cp).expect("encode");
            assert_eq!(decode(&bytes, &cp.id).expect("decode").ts, other);
            assert!(bytes.len() > ours.len() - 27 + other.len());
        }
        cp.ts = "2026-11-26T16:43:10.893413Z".into();
        let bytes = encode(&cp).expect("encode");
        let as_text = rmp_serde::to_vec(&(
            cp.v,
            &cp.ts,
            VersionsRef(&cp.channel_versions),
            SeenRef {
                seen: &cp.versions_seen,
                current: &cp.channel_versions,
            },
            cp.updated_channels.as_deref().map(|channels| ChannelsRef {
                channels,
                current: &cp.channel_versions,
            }),
        ))
        .expect("encode");
        assert_eq!(bytes.len() + 19, as_text.len(), "9 bytes instead of 28");
        assert_eq!(decode(&bytes, &cp.id).expect("decode"), cp);
    }

    /// A W1-shaped header: the reply step's checkpoint of a chat.
    fn chat_header() -> Checkpoint {
        let mut cp = Checkpoint::new();
        let start = ChannelVersion::first_after(None);
        let branch_seen = ChannelVersion::first_after(Some(&start));
        let branch = ChannelVersion::first_after(Some(&branch_seen));
        let messages = ChannelVersion::first_after(Some(&branch));
        cp.channel_versions = [
            ("__start__".to_owned(), start.clone()),
            ("branch:to:reply".to_owned(), branch),
            ("messages".to_owned(), messages),
        ]
        .into();
        cp.versions_seen = [
            ("__input__".to_owned(), ChannelVersions::new()),
            (
                "__start__".to_owned(),
                [("__start__".to_owned(), start)].into(),
            ),
            (
                "reply".to_owned(),
                [("branch:to:reply".to_owned(), branch_seen)].into(),
            ),
            // A channel this header does not hold any more.
            (
                "old".to_owned(),
                [("gone".to_owned(), ChannelVersion::Int(3))].into(),
            ),
        ]
        .into();
        cp.updated_channels = Some(vec!["messages".into(), "gone".into()]);
        cp
    }

    /// The schema 6 form of `cp`'s header: names everywhere, every seen version written out.
    fn schema6_header(cp: &Checkpoint) -> Vec<u8> {
        let seen: BTreeMap<&String, VersionsRef<'_>> = cp
            .versions_seen
            .iter()
            .map(|(node, versions)| (node, VersionsRef(versions)))
            .collect();
        rmp_serde::to_vec(&(
            cp.v,
            TsRef(&cp.ts),
            VersionsRef(&cp.channel_versions),
            seen,
            &cp.updated_channels,
        ))
        .expect("encode")
    }

    #[test]
    fn seen_channels_are_positions_and_current_versions_nil() {
        let cp = chat_header();
        let bytes = encode(&cp).expect("encode");
        assert_eq!(decode(&bytes, &cp.id).expect("decode"), cp);
        let old = schema6_header(&cp);
        // Two names and one version in versions_seen, two names in updated_channels.
        assert!(
            bytes.len() + 40 < old.len(),
            "{} bytes, {} before",
            bytes.len(),
            old.len()
        );
        // Headers written before schema 7 read as before.
        assert_eq!(decode(&old, &cp.id).expect("decode the old form"), cp);
        assert_eq!(
            channel_versions(&bytes).expect("versions"),
            cp.channel_versions
        );
    }

    #[test]
    fn a_position_or_nil_without_its_channel_is_an_error() {
        let (v, ts) = (4u32, 1u64);
        let versions = BTreeMap::from([("c", 7i64)]);
        let bad_position = rmp_serde::to_vec(&(
            v,
            ts,
            &versions,
            BTreeMap::from([("node", BTreeMap::from([(5u64, ())]))]),
            None::<Vec<String>>,
        ))
        .expect("encode");
        let err = decode(&bad_position, "x").expect_err("position 5 of 1");
        assert!(err.contains("channel number 5"), "{err}");
        let nil_for_unknown = rmp_serde::to_vec(&(
            v,
            ts,
            &versions,
            BTreeMap::from([("node", BTreeMap::from([("gone", ())]))]),
            None::<Vec<String>>,
        ))
        .expect("encode");
        let err = decode(&nil_for_unknown, "x").expect_err("nil for a channel not held");
        assert!(err.contains("\"gone\""), "{err}");
        let bad_updated = rmp_serde::to_vec(&(
            v,
            ts,
            &versions,
            BTreeMap::<String, ChannelVersions>::new(),
            Some(vec![1u64]),
        ))
        .expect("encode");
        assert!(decode(&bad_updated, "x").is_err());
    }

    #[test]
    fn corrupt_headers_are_errors_not_panics() {
        // The last one: a version pair whose counter does not fit an i64.
        let huge = rmp_serde::to_vec(&(
            4u32,
            "ts",
            BTreeMap::from([("c", (u64::MAX, 1u64))]),
            BTreeMap::<String, ChannelVersions>::new(),
            None::<Vec<String>>,
        ))
        .expect("encode");
        let far_future = rmp_serde::to_vec(&(
            4u32,
            u64::MAX,
            BTreeMap::<String, ChannelVersions>::new(),
            BTreeMap::<String, ChannelVersions>::new(),
            None::<Vec<String>>,
        ))
        .expect("encode");
        assert!(decode(&far_future, "x").is_err());
        for bytes in [
            &b""[..],
            &[0x95, 0x01][..],
            &[0xc1][..],
            &[0x81, 0xa1][..],
            &huge[..],
        ] {
            assert!(decode(bytes, "x").is_err(), "{bytes:?}");
            assert!(channel_versions(bytes).is_err(), "{bytes:?}");
        }
    }
}

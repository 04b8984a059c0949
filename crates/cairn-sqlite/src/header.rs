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
//! channels of this very header, often at their current versions. Since schema 10 the
//! runtime's own names (`__start__`, `__input__`, `branch:to:` …) are codes, a version suffix
//! the header already wrote is a one-byte back reference (a run gives every version it makes
//! the same suffix), and a `ts` at or after the checkpoint id's time is the
//! microseconds after it (0: a checkpoint's `ts` is the time its id holds). Headers of schema 3 (every
//! version a string), of schemas 4 to 6 (names everywhere) and of 7 to 9 read as before.
//!
//! The compact form is written and read by hand (`encode`, `decode`), not through serde: it
//! is encoded once per stored checkpoint and decoded once per checkpoint read, and the generic
//! path cost about twice the instructions. Up to schema 9 the bytes were the same as serde's;
//! tests keep that serde form to check that those headers still read back.
//!
//! Databases written before schema 3 hold the whole checkpoint as a MessagePack map with
//! field names (`rmp_serde::to_vec_named`); those headers are read as they are (their
//! first byte is a map marker, never an array marker), and their `id` must match the row's.

use serde::Deserialize;

use cairn_checkpoint::{ChannelVersions, Checkpoint};

/// Encodes `checkpoint`'s header in the compact form ([`cairn_checkpoint::encode_header`]).
/// Its `id` and `channel_values` are not stored (the row holds the id; values are stored
/// apart).
pub(crate) fn encode(checkpoint: &Checkpoint) -> cairn_checkpoint::Result<Vec<u8>> {
    cairn_checkpoint::encode_header(checkpoint)
}

/// Whether `bytes` is a compact header (a MessagePack array) rather than a named map.
fn is_compact(bytes: &[u8]) -> bool {
    matches!(bytes.first(), Some(0x90..=0x9f | 0xdc | 0xdd))
}

/// Decodes the header of checkpoint `checkpoint_id`; its `channel_values` are empty. The
/// error says what was wrong, for [`cairn_checkpoint::Error::corrupt`].
///
/// The compact form (every schema since 3) is read by [`cairn_checkpoint::decode_header`];
/// headers written before schema 3 go through serde.
pub(crate) fn decode(bytes: &[u8], checkpoint_id: &str) -> Result<Checkpoint, String> {
    if is_compact(bytes) {
        return cairn_checkpoint::decode_header(bytes, checkpoint_id).map_err(|e| e.to_string());
    }
    let checkpoint: Checkpoint = rmp_serde::from_slice(bytes)
        .map_err(|e| format!("cannot decode the checkpoint header (MessagePack): {e}"))?;
    if checkpoint.id != checkpoint_id {
        return Err(format!(
            "the stored checkpoint header names checkpoint {:?}, not its row's id",
            checkpoint.id
        ));
    }
    Ok(checkpoint)
}

/// Only the channel versions of a header (what reclaiming values needs), either form.
pub(crate) fn channel_versions(bytes: &[u8]) -> Result<ChannelVersions, String> {
    #[derive(Deserialize)]
    struct Named {
        #[serde(default)]
        channel_versions: ChannelVersions,
    }
    if is_compact(bytes) {
        return cairn_checkpoint::decode_header_versions(bytes).map_err(|e| e.to_string());
    }
    let named: Named = rmp_serde::from_slice(bytes)
        .map_err(|e| format!("cannot decode the checkpoint header (MessagePack): {e}"))?;
    Ok(named.channel_versions)
}

/// The form headers had when serde wrote them (schemas 7 to 9): what the hand-written
/// encoder in `cairn_checkpoint` must write byte for byte.
#[cfg(test)]
mod serde_form {
    use std::collections::BTreeMap;

    use serde::ser::SerializeMap;
    use serde::{Serialize, Serializer};

    use cairn_checkpoint::{ChannelVersion, ChannelVersions, Checkpoint};

    /// The stored form of a header, by reference.
    pub(super) type CompactRef<'a> = (
        u32,
        TsRef<'a>,
        VersionsRef<'a>,
        SeenRef<'a>,
        Option<ChannelsRef<'a>>,
    );

    /// A checkpoint's `ts` as a header stores it: whole microseconds since the Unix epoch when
    /// it is exactly what Cairn writes (RFC 3339 in UTC with six fractional digits, 27
    /// characters; 9 bytes instead of 28, schema 6), any other text as it is.
    pub(super) struct TsRef<'a>(pub(super) &'a str);

    impl Serialize for TsRef<'_> {
        fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
            match ts_micros(self.0) {
                Some(micros) => serializer.serialize_u64(micros),
                None => serializer.serialize_str(self.0),
            }
        }
    }

    /// `ts` in microseconds when [`ts_text`] gives it back exactly (the encoder's rule).
    pub(super) fn ts_micros(ts: &str) -> Option<u64> {
        if ts.len() != 27 || !ts.ends_with('Z') {
            return None;
        }
        let time = humantime::parse_rfc3339(ts).ok()?;
        let micros = time.duration_since(std::time::UNIX_EPOCH).ok()?.as_micros();
        let micros = u64::try_from(micros).ok()?;
        (ts_text(micros) == ts).then_some(micros)
    }

    pub(super) fn ts_text(micros: u64) -> String {
        let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(micros);
        humantime::format_rfc3339_micros(time).to_string()
    }

    /// Channel versions as a header stores them (see the module docs).
    pub(super) struct VersionsRef<'a>(pub(super) &'a ChannelVersions);

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
    pub(super) struct VersionRef<'a>(pub(super) &'a ChannelVersion);

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
    pub(super) enum ChannelRef<'a> {
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
    pub(super) struct SeenRef<'a> {
        pub(super) seen: &'a BTreeMap<String, ChannelVersions>,
        pub(super) current: &'a ChannelVersions,
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
    pub(super) struct ChannelsRef<'a> {
        pub(super) channels: &'a [String],
        pub(super) current: &'a ChannelVersions,
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

    /// [`encode`] through serde: the form the hand-written encoder must match.
    pub(super) fn encode_with_serde(
        checkpoint: &Checkpoint,
    ) -> Result<Vec<u8>, rmp_serde::encode::Error> {
        let compact: CompactRef<'_> = (
            checkpoint.v,
            TsRef(&checkpoint.ts),
            VersionsRef(&checkpoint.channel_versions),
            SeenRef {
                seen: &checkpoint.versions_seen,
                current: &checkpoint.channel_versions,
            },
            checkpoint
                .updated_channels
                .as_deref()
                .map(|channels| ChannelsRef {
                    channels,
                    current: &checkpoint.channel_versions,
                }),
        );
        rmp_serde::to_vec(&compact)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::serde_form::*;
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
        // The same 27 characters in a form Cairn does not write (a lower-case `z`): as text.
        let mut text_cp = cp.clone();
        text_cp.ts = "2026-11-26T16:43:10.893413z".into();
        let as_text = encode(&text_cp).expect("encode");
        // A time before the id's: whole microseconds (a time at or after it is stored as the
        // microseconds after it, see `cairn_checkpoint::encode_header`).
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

    /// Headers covering every form the encoder writes: integer versions of every width and
    /// sign, Cairn's own and other string versions, names of every string width, maps past 15
    /// entries, seen channels by position and by name, at the current version and not, and
    /// `updated_channels` absent, empty and naming channels outside `channel_versions`.
    fn varied_headers() -> Vec<Checkpoint> {
        let ints = [
            0,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            4_294_967_295,
            4_294_967_296,
            i64::MAX,
            -1,
            -32,
            -33,
            -128,
            -129,
            -32_768,
            -32_769,
            -2_147_483_648,
            -2_147_483_649,
            i64::MIN,
        ];
        let mut headers = vec![sample(), chat_header(), Checkpoint::new()];
        let mut wide = Checkpoint::new();
        for (i, n) in ints.iter().enumerate() {
            wide.channel_versions
                .insert(format!("int-{i:02}"), ChannelVersion::Int(*n));
        }
        let cairn = ChannelVersion::first_after(Some(&ChannelVersion::Int(41)));
        wide.channel_versions.insert("cairn".into(), cairn.clone());
        wide.channel_versions
            .insert("other".into(), ChannelVersion::Str("2.0.5".into()));
        wide.channel_versions
            .insert("n".repeat(31), ChannelVersion::Str("x".repeat(32)));
        wide.channel_versions
            .insert("m".repeat(300), ChannelVersion::Str("y".repeat(70_000)));
        wide.versions_seen.insert(
            "node".into(),
            [
                ("cairn".to_owned(), cairn.clone()),
                ("other".to_owned(), ChannelVersion::Int(7)),
                ("elsewhere".to_owned(), ChannelVersion::Int(-3)),
                ("int-03".to_owned(), ChannelVersion::Int(128)),
            ]
            .into(),
        );
        wide.versions_seen
            .insert("__input__".into(), ChannelVersions::new());
        wide.versions_seen
            .insert("z".repeat(40), [("n".repeat(31), cairn)].into());
        wide.updated_channels = Some(vec!["cairn".into(), "gone".into(), "int-20".into()]);
        wide.ts = "not a Cairn timestamp".into();
        headers.push(wide.clone());
        wide.updated_channels = Some(Vec::new());
        wide.v = 70_000;
        headers.push(wide);
        headers
    }

    #[test]
    fn headers_read_back_in_the_form_of_schema_10_and_in_the_form_serde_wrote() {
        for cp in varied_headers() {
            let ours = encode(&cp).expect("encode");
            assert_eq!(decode(&ours, &cp.id).expect("decode"), cp);
            // Schemas 7 to 9 stored what serde writes; schema 10 no longer bigger than that.
            let serde_form = encode_with_serde(&cp).expect("encode with serde");
            assert_eq!(decode(&serde_form, &cp.id).expect("decode"), cp, "{cp:?}");
            assert!(ours.len() <= serde_form.len(), "{cp:?}");
        }
    }

    #[test]
    fn a_chat_header_is_a_quarter_smaller_than_serde_wrote_it() {
        let cp = chat_header();
        let (ours, serde_form) = (
            encode(&cp).expect("encode"),
            encode_with_serde(&cp).expect("encode with serde"),
        );
        // Runtime names and the time: 142 bytes become 100. (A runtime header also shares
        // its run's suffix between versions, which this one does not.)
        assert!(
            ours.len() * 4 <= serde_form.len() * 3,
            "{} bytes against {}",
            ours.len(),
            serde_form.len()
        );
    }

    #[test]
    fn damaged_compact_headers_are_errors_or_other_headers_never_panics() {
        for cp in varied_headers() {
            let bytes = encode(&cp).expect("encode");
            if bytes.len() > 4096 {
                continue;
            }
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut], &cp.id).is_err(), "cut at {cut}");
                let _ = channel_versions(&bytes[..cut]);
            }
            for at in 0..bytes.len() {
                for flip in [0x01, 0x80, 0xff] {
                    let mut damaged = bytes.clone();
                    damaged[at] ^= flip;
                    let _ = decode(&damaged, &cp.id);
                    let _ = channel_versions(&damaged);
                }
            }
        }
    }
}

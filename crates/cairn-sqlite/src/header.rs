//! The checkpoint header: a checkpoint without its channel values, as stored in
//! `checkpoints.header`.
//!
//! Written as a MessagePack array `[v, ts, channel_versions, versions_seen,
//! updated_channels]`: no field names, no id (the row's `checkpoint_id` column holds it), no
//! empty `channel_values`. MessagePack keeps version types (`Int(1)` stays `Int(1)`).
//!
//! Databases written before schema 3 hold the whole checkpoint as a MessagePack map with
//! field names (`rmp_serde::to_vec_named`); those headers are read as they are (their
//! first byte is a map marker, never an array marker), and their `id` must match the row's.

use std::collections::BTreeMap;

use serde::de::IgnoredAny;
use serde::Deserialize;

use cairn_checkpoint::{ChannelVersions, Checkpoint};

/// The stored form of a header, by reference.
type CompactRef<'a> = (
    u32,
    &'a str,
    &'a ChannelVersions,
    &'a BTreeMap<String, ChannelVersions>,
    &'a Option<Vec<String>>,
);

/// The stored form of a header, owned.
type Compact = (
    u32,
    String,
    ChannelVersions,
    BTreeMap<String, ChannelVersions>,
    Option<Vec<String>>,
);

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
    let compact: CompactRef<'_> = (*v, ts, channel_versions, versions_seen, updated_channels);
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
    let (v, ts, channel_versions, versions_seen, updated_channels): Compact =
        rmp_serde::from_slice(bytes).map_err(what)?;
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
        let (_, _, versions, _, _): (
            IgnoredAny,
            IgnoredAny,
            ChannelVersions,
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
    fn corrupt_headers_are_errors_not_panics() {
        for bytes in [&b""[..], &[0x95, 0x01][..], &[0xc1][..], &[0x81, 0xa1][..]] {
            assert!(decode(bytes, "x").is_err(), "{bytes:?}");
            assert!(channel_versions(bytes).is_err(), "{bytes:?}");
        }
    }
}

//! How values, writes and headers are laid out as bytes inside Redis.

use bytes::Bytes;
use cairn_checkpoint::{
    Checkpoint, CheckpointMetadata, DataLocation, Error, PendingWrite, Result, TypedValue,
};
use serde::{Deserialize, Serialize};

/// A stored channel value: `<tag length>:<tag><bytes>` (readable with `redis-cli`).
pub(crate) fn encode_value(value: &TypedValue) -> Vec<u8> {
    let head = format!("{}:{}", value.type_tag.len(), value.type_tag);
    let mut out = Vec::with_capacity(head.len() + value.data.len());
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(&value.data);
    out
}

/// Reverses [`encode_value`]; `None` when the bytes are not of that shape.
pub(crate) fn decode_value(raw: Vec<u8>) -> Option<TypedValue> {
    let colon = raw.iter().take(8).position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&raw[..colon]).ok()?.parse().ok()?;
    let tag_end = colon.checked_add(1)?.checked_add(len)?;
    if tag_end > raw.len() {
        return None;
    }
    let tag = std::str::from_utf8(&raw[colon + 1..tag_end])
        .ok()?
        .to_owned();
    let data = Bytes::from(raw).slice(tag_end..);
    Some(TypedValue::new(tag, data))
}

/// A pending write as stored (MessagePack).
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct StoredWrite {
    pub task_id: String,
    pub channel: String,
    pub task_path: String,
    pub idx: i64,
    pub type_tag: String,
    pub data: Bytes,
}

impl StoredWrite {
    pub fn encode(&self) -> Result<Vec<u8>> {
        rmp_serde::to_vec_named(self).map_err(|e| Error::Encode {
            format: "msgpack",
            message: format!("pending write: {e}"),
        })
    }

    pub fn decode(raw: &[u8], location: impl FnOnce() -> DataLocation) -> Result<StoredWrite> {
        rmp_serde::from_slice(raw)
            .map_err(|e| Error::corrupt(location(), format!("unreadable pending write: {e}")))
    }

    pub fn into_pending(self) -> PendingWrite {
        PendingWrite {
            task_id: self.task_id,
            channel: self.channel,
            value: TypedValue::new(self.type_tag, self.data),
            task_path: self.task_path,
        }
    }
}

/// The checkpoint header as stored: the checkpoint without its channel values and id, in the
/// compact form of [`cairn_checkpoint::encode_header`] (a chat checkpoint's header takes about
/// 100 bytes; as JSON, which earlier versions wrote, it took about 600 and was several times
/// slower to read back).
pub(crate) fn encode_header(checkpoint: &Checkpoint) -> Result<Vec<u8>> {
    cairn_checkpoint::encode_header(checkpoint)
}

/// Reads a header in either stored form: JSON (a whole checkpoint, id included; written before
/// the compact form) or compact, whose id is the one `location` names (the checkpoint's key).
pub(crate) fn decode_header(raw: &[u8], location: &DataLocation) -> Result<Checkpoint> {
    if raw.first() == Some(&b'{') {
        return serde_json::from_slice(raw).map_err(|e| {
            Error::corrupt(
                location.clone(),
                format!("unreadable checkpoint header (JSON): {e}"),
            )
        });
    }
    let id = location.checkpoint_id.as_deref().unwrap_or_default();
    cairn_checkpoint::decode_header(raw, id)
        .map_err(|e| Error::corrupt(location.clone(), e.to_string()))
}

pub(crate) fn encode_metadata(metadata: &CheckpointMetadata) -> Result<Vec<u8>> {
    metadata.check()?;
    serde_json::to_vec(metadata).map_err(|e| Error::Encode {
        format: "json",
        message: format!("checkpoint metadata: {e}"),
    })
}

pub(crate) fn decode_metadata(raw: &[u8], location: &DataLocation) -> Result<CheckpointMetadata> {
    serde_json::from_slice(raw).map_err(|e| {
        Error::corrupt(
            location.clone(),
            format!("unreadable checkpoint metadata: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_roundtrip_and_garbage_is_rejected() {
        for value in [
            TypedValue::new("msgpack", vec![1, 2, 3]),
            TypedValue::empty(),
            TypedValue::new("json", b"{\"a\":1}".to_vec()),
            TypedValue::new("", b":::".to_vec()),
        ] {
            assert_eq!(decode_value(encode_value(&value)), Some(value));
        }
        assert_eq!(decode_value(b"garbage".to_vec()), None);
        assert_eq!(decode_value(b"99:abc".to_vec()), None);
        assert_eq!(decode_value(Vec::new()), None);
    }

    #[test]
    fn writes_roundtrip() {
        let w = StoredWrite {
            task_id: "t".into(),
            channel: "c".into(),
            task_path: "p".into(),
            idx: -3,
            type_tag: "bytes".into(),
            data: Bytes::from_static(&[0, 159, 255]),
        };
        let back = StoredWrite::decode(&w.encode().unwrap(), DataLocation::default).unwrap();
        assert_eq!(back.data, w.data);
        assert_eq!(back.idx, -3);
        assert!(StoredWrite::decode(b"\xc1", DataLocation::default).is_err());
    }
}

//! Values as stored: a typed envelope (type tag + bytes) and the codec that makes them.
//!
//! Savers never look inside a value: they store the tag and the bytes as given, so a backend
//! costs no re-encoding and cannot be tricked into running code. Decoding only ever builds the
//! concrete Rust type the caller names, through serde; nothing in a stored value chooses a type.

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

    /// The same codec with another size limit for one encoded value.
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
    pub fn decode<T: DeserializeOwned>(&self, value: &TypedValue) -> Result<T> {
        self.check_size(value.data.len())?;
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

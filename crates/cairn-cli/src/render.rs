//! Turning stored values and timestamps into something people (and `--json`) can read.
//!
//! Stored channel values are [`TypedValue`]s. [`decode`] reads them generically, without
//! knowing the graph's types: MessagePack and JSON become [`serde_json::Value`]s; byte
//! strings become `{"$bytes": <length>, "base64": "..."}` (the base64 text is left out past
//! [`MAX_INLINE_BYTES`]); map keys that are not strings are written as their JSON text.

use std::fmt;
use std::time::{Duration, SystemTime};

use cairn_checkpoint::{ChannelVersion, TypedValue, TAG_BYTES, TAG_EMPTY, TAG_JSON, TAG_MSGPACK};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Serialize;
use serde_json::{Map, Value};

/// Byte strings up to this size are shown as base64; longer ones by length only.
pub const MAX_INLINE_BYTES: usize = 4096;

/// A stored value, decoded for display.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decoded {
    /// The value's type tag (`msgpack`, `json`, `bytes`, `empty` or a caller's own).
    #[serde(rename = "type")]
    pub type_tag: String,
    /// Size of the stored bytes.
    pub bytes: usize,
    /// The value, when it could be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    /// Why it could not be decoded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Decoded {
    /// The value, or `null` when it could not be decoded.
    pub fn value_or_null(&self) -> Value {
        self.value.clone().unwrap_or(Value::Null)
    }
}

/// Decodes a stored value generically.
///
/// ```
/// use cairn_checkpoint::ValueCodec;
/// let stored = ValueCodec::default().encode(&serde_json::json!({"n": 1, "tags": ["a"]})).unwrap();
/// let shown = cairn_cli::render::decode(&stored);
/// assert_eq!(shown.value, Some(serde_json::json!({"n": 1, "tags": ["a"]})));
/// ```
pub fn decode(value: &TypedValue) -> Decoded {
    let (value_json, error) = match value.type_tag.as_str() {
        TAG_MSGPACK => match rmp_serde::from_slice::<AnyValue>(&value.data) {
            Ok(AnyValue(v)) => (Some(v), None),
            Err(e) => (None, Some(format!("undecodable msgpack: {e}"))),
        },
        TAG_JSON => match serde_json::from_slice::<AnyValue>(&value.data) {
            Ok(AnyValue(v)) => (Some(v), None),
            Err(e) => (None, Some(format!("undecodable json: {e}"))),
        },
        TAG_BYTES => (Some(bytes_value(&value.data)), None),
        TAG_EMPTY => (Some(Value::Null), None),
        other => (
            None,
            Some(format!("type {other:?} cannot be decoded for display")),
        ),
    };
    Decoded {
        type_tag: value.type_tag.clone(),
        bytes: value.data.len(),
        value: value_json,
        error,
    }
}

/// How a byte string is shown: `{"$bytes": len, "base64": ...}`.
pub fn bytes_value(data: &[u8]) -> Value {
    let mut map = Map::new();
    map.insert("$bytes".into(), Value::from(data.len()));
    if data.len() <= MAX_INLINE_BYTES {
        map.insert("base64".into(), Value::String(base64(data)));
    }
    Value::Object(map)
}

/// Standard base64 with padding.
///
/// ```
/// assert_eq!(cairn_cli::render::base64(b"hello"), "aGVsbG8=");
/// ```
pub fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Any self-describing value (MessagePack, JSON) read into a [`Value`], accepting what
/// `serde_json::Value` itself rejects: byte strings, non-string map keys, 128-bit integers
/// and non-finite floats.
struct AnyValue(Value);

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(AnyVisitor).map(AnyValue)
    }
}

struct AnyVisitor;

impl<'de> Visitor<'de> for AnyVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Value, E> {
        Ok(i64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::from))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Value, E> {
        Ok(u64::try_from(v).map_or_else(|_| Value::String(v.to_string()), Value::from))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v)
            .map_or_else(|| Value::String(v.to_string()), Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Value, E> {
        Ok(bytes_value(v))
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
    fn visit_newtype_struct<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        d.deserialize_any(AnyVisitor)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(AnyValue(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some((AnyValue(k), AnyValue(v))) = map.next_entry()? {
            let key = match k {
                Value::String(s) => s,
                other => other.to_string(),
            };
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// A value as one line of JSON, cut to about `max` characters with `…`.
///
/// ```
/// let v = serde_json::json!(["a", "b"]);
/// assert_eq!(cairn_cli::render::compact(&v, 80), r#"["a","b"]"#);
/// assert_eq!(cairn_cli::render::compact(&serde_json::json!("x".repeat(50)), 10).chars().count(), 10);
/// ```
pub fn compact(value: &Value, max: usize) -> String {
    truncate(&value.to_string(), max)
}

/// `text` cut to at most `max` characters, ending with `…` when cut.
pub fn truncate(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// A stored RFC 3339 time as `2026-01-02 03:04:05.678` (UTC, milliseconds); other text is
/// returned unchanged.
///
/// ```
/// assert_eq!(cairn_cli::render::time("2026-01-02T03:04:05.678901Z"), "2026-01-02 03:04:05.678");
/// ```
pub fn time(ts: &str) -> String {
    match humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')) {
        Ok(t) => {
            let text = humantime::format_rfc3339_millis(t).to_string();
            text.trim_end_matches('Z').replacen('T', " ", 1)
        }
        Err(_) => ts.to_owned(),
    }
}

/// How long ago `ts` was, roughly (`12s ago`, `3m ago`, `5h ago`, `2d ago`); empty when the
/// time cannot be read.
pub fn ago(ts: &str) -> String {
    let Ok(then) = humantime::parse_rfc3339_weak(ts.trim_end_matches('Z')) else {
        return String::new();
    };
    let elapsed = SystemTime::now()
        .duration_since(then)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match elapsed {
        0..=59 => format!("{elapsed}s ago"),
        60..=3599 => format!("{}m ago", elapsed / 60),
        3600..=86_399 => format!("{}h ago", elapsed / 3600),
        _ => format!("{}d ago", elapsed / 86_400),
    }
}

/// A channel version for people: its counter (`v3`), which is what differs between steps.
pub fn version(v: &ChannelVersion) -> String {
    format!("v{}", v.counter())
}

/// `n` and `word`, plural unless `n` is 1: `count(1, "thread")` is "1 thread".
///
/// ```
/// assert_eq!(cairn_cli::render::count(1u32, "thread"), "1 thread");
/// assert_eq!(cairn_cli::render::count(0u32, "checkpoint"), "0 checkpoints");
/// ```
pub fn count(n: impl Into<u64>, word: &str) -> String {
    let n = n.into();
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// A byte count for people (`812 B`, `4.2 KiB`, `3.0 MiB`).
pub fn size(bytes: usize) -> String {
    const KIB: f64 = 1024.0;
    let b = bytes as f64;
    if b < KIB {
        format!("{bytes} B")
    } else if b < KIB * KIB {
        format!("{:.1} KiB", b / KIB)
    } else {
        format!("{:.1} MiB", b / KIB / KIB)
    }
}

/// Whether `channel` is graph bookkeeping (`__start__`, `branch:to:x`, `join:…`,
/// `__pregel_tasks`) rather than a field of the user's state.
pub fn is_internal(channel: &str) -> bool {
    channel.starts_with("__") || channel.starts_with("branch:") || channel.starts_with("join:")
}

/// A step number for people: `-1`, `0`, … or `?` when unknown.
pub fn step(step: Option<i64>) -> String {
    step.map_or_else(|| "?".to_owned(), |s| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_checkpoint::{Format, ValueCodec};
    use serde_json::json;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        let cases = [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ];
        for (input, want) in cases {
            assert_eq!(base64(input.as_bytes()), want, "{input:?}");
        }
    }

    #[test]
    fn decodes_msgpack_json_bytes_and_odd_values() {
        #[derive(serde::Serialize)]
        struct S {
            name: String,
            #[serde(with = "serde_bytes_like")]
            blob: Vec<u8>,
            by_id: std::collections::BTreeMap<u32, String>,
            nan: f64,
        }
        mod serde_bytes_like {
            pub fn serialize<S: serde::Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(v)
            }
        }
        let s = S {
            name: "ada".into(),
            blob: vec![1, 2, 3],
            by_id: [(7, "seven".to_string())].into(),
            nan: f64::NAN,
        };
        let mp = ValueCodec::default().encode(&s).unwrap();
        let d = decode(&mp);
        assert_eq!(d.error, None);
        assert_eq!(
            d.value.unwrap(),
            json!({"name": "ada", "blob": {"$bytes": 3, "base64": "AQID"},
                   "by_id": {"7": "seven"}, "nan": "NaN"})
        );
        let js = ValueCodec::new(Format::Json)
            .encode(&json!([1, "x"]))
            .unwrap();
        assert_eq!(decode(&js).value.unwrap(), json!([1, "x"]));
        let raw = TypedValue::new(TAG_BYTES, vec![0u8; 5000]);
        assert_eq!(decode(&raw).value.unwrap(), json!({"$bytes": 5000}));
    }

    #[test]
    fn corrupt_and_unknown_values_are_reported_not_panics() {
        let mut mp = ValueCodec::default().encode(&vec!["a"; 50]).unwrap();
        mp.data = mp.data.slice(..10);
        let d = decode(&mp);
        assert!(d.value.is_none());
        assert!(d.error.unwrap().contains("msgpack"));
        let odd = decode(&TypedValue::new("pickle", vec![1, 2]));
        assert!(odd.error.unwrap().contains("pickle"));
        assert_eq!(odd.bytes, 2);
    }

    #[test]
    fn times_and_sizes() {
        assert_eq!(time("not a time"), "not a time");
        assert_eq!(size(10), "10 B");
        assert_eq!(size(2048), "2.0 KiB");
        assert_eq!(truncate("héllo", 3), "hé…");
    }
}

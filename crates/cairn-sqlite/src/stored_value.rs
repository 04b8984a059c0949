//! How a channel value is stored in a `checkpoint_blobs` row (schema 8).
//!
//! An append value ([`cairn_checkpoint::AppendValue`]) carries a text header of about 76
//! bytes: a magic line, its base version (49 characters for Cairn's own versions), its item
//! tag and its item count. A W1 message is about 220 bytes, so the header was a quarter of
//! every appended message's row, and the base was stored twice: in the header and in the
//! row's `base_version` column. Rows written since schema 8 hold an append value in its
//! *compact* form instead, type tag [`TAG_COMPACT_APPEND`]:
//!
//! * one byte for the items' tag (`m` MessagePack, `j` JSON),
//! * the item count as an unsigned LEB128 number (one byte below 128),
//! * the items as the append value holds them.
//!
//! The base is the row's `base_version`. Reads rebuild the append value, so everything above
//! the row (chains, history decoding, other backends during a migration) sees the same
//! value as before. Rows of earlier schemas keep the text form and read as before.

use bytes::{BufMut, Bytes, BytesMut};

use cairn_checkpoint::{AppendValue, TypedValue, TAG_APPEND, TAG_JSON, TAG_MSGPACK};

use crate::leb128;

/// Type tag of an append value stored in its compact form.
pub(crate) const TAG_COMPACT_APPEND: &str = "append/2";

/// The form `value` is stored in, given `append`, its parts when it is an append value (the
/// caller has parsed it already, to check it and take its base): its compact form when its
/// items are MessagePack or JSON, `value` itself otherwise.
pub(crate) fn to_row(value: TypedValue, append: Option<&AppendValue>) -> TypedValue {
    let Some(append) = append else {
        return value;
    };
    let code = match append.item_tag.as_str() {
        TAG_MSGPACK => b'm',
        TAG_JSON => b'j',
        _ => return value,
    };
    let mut data = BytesMut::with_capacity(11 + append.items.len());
    data.put_u8(code);
    leb128::put(&mut data, append.count);
    data.put_slice(&append.items);
    TypedValue::new(TAG_COMPACT_APPEND, data.freeze())
}

/// The value a row holds, from its type tag, data and base version (as a version string):
/// a compact append value becomes the append value it was stored from. Errors say what is
/// wrong with the row.
pub(crate) fn from_row(
    type_tag: &str,
    data: Vec<u8>,
    base: Option<&str>,
) -> Result<TypedValue, String> {
    if type_tag != TAG_COMPACT_APPEND {
        return Ok(TypedValue::new(type_tag, data));
    }
    let base = base.ok_or("a compact append value has no base version in its row")?;
    let typed = compact_parts(Bytes::from(data), base)?.to_typed();
    debug_assert_eq!(typed.type_tag, TAG_APPEND);
    Ok(typed)
}

/// The parts of a compact append value's `data`, with its `base`.
pub(crate) fn compact_parts(data: Bytes, base: &str) -> Result<AppendValue, String> {
    let item_tag = match data.first() {
        Some(b'm') => TAG_MSGPACK,
        Some(b'j') => TAG_JSON,
        Some(other) => return Err(format!("a compact append value has item code {other:#04x}")),
        None => return Err("a compact append value is empty".into()),
    };
    let (count, at) = leb128::read(&data[1..])
        .ok_or("the item count of a compact append value is cut short or too large")?;
    Ok(AppendValue {
        base: base.to_owned(),
        item_tag: item_tag.to_owned(),
        count,
        items: data.slice(1 + at..),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_checkpoint::{ChannelVersion, ValueCodec};

    #[test]
    fn append_values_round_trip_through_their_compact_form() {
        let codec = ValueCodec::default();
        let base = ChannelVersion::first_after(None).next();
        let items: Vec<String> = (0..300).map(|i| format!("item {i}")).collect();
        let value = codec.encode_append(&base, items.iter()).expect("encode");
        let parts = AppendValue::parse(&value).expect("parse");
        let row = to_row(value.clone(), parts.as_ref());
        assert_eq!(row.type_tag, TAG_COMPACT_APPEND);
        let header = value.data.len() - row.data.len();
        assert!(header > 60, "the text header ({header} bytes) is gone");
        let back = from_row(
            &row.type_tag,
            row.data.to_vec(),
            Some(&base.to_storage_string()),
        )
        .expect("read");
        assert_eq!(back, value);
    }

    #[test]
    fn other_values_are_stored_as_given() {
        let value = ValueCodec::default()
            .encode(&vec![1, 2, 3])
            .expect("encode");
        assert_eq!(to_row(value.clone(), None), value);
        let back = from_row(&value.type_tag, value.data.to_vec(), None).expect("read");
        assert_eq!(back, value);
    }

    #[test]
    fn corrupt_compact_rows_are_errors() {
        let base = Some("1");
        assert!(from_row(TAG_COMPACT_APPEND, vec![], base).is_err());
        assert!(from_row(TAG_COMPACT_APPEND, vec![b'x', 1], base).is_err());
        assert!(from_row(TAG_COMPACT_APPEND, vec![b'm', 0x80], base).is_err());
        let mut too_large = vec![b'm'];
        too_large.extend([0xff; 12]);
        assert!(from_row(TAG_COMPACT_APPEND, too_large, base).is_err());
        assert!(from_row(TAG_COMPACT_APPEND, vec![b'm', 1, 0xc0], None).is_err());
        assert!(from_row(TAG_COMPACT_APPEND, vec![b'm', 1, 0xc0], base).is_ok());
    }
}

//! How checkpoint, task and run ids are stored (schema 9).
//!
//! Cairn and LangGraph make every checkpoint, task and run id a UUID, written as 36
//! characters. A W1 checkpoint row held three of them (its id, its parent's, its run's) and
//! each pending write two (its checkpoint's and its task's): ~30% of a row. Schema 9 stores an
//! id in the canonical form (lowercase hex, hyphens at 8, 13, 18 and 23) as its 16 bytes
//! instead, and any other id as its text, as before.
//!
//! The bytes compare in the same order as the canonical text (a hex digit's value orders as
//! its character), so a thread's checkpoints still list newest first. SQLite orders every
//! text value before every blob, so in a thread that mixes UUIDs with other ids the others
//! sort as older than every UUID; ids a runtime makes are all UUIDs.
//!
//! The conversions are also SQL functions, registered on every connection:
//! `cairn_id_key(text)` (the stored form of an id) and `cairn_id_text(stored)` (the id back),
//! for queries that take ids from JSON, and for the migration.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ToSql};

use crate::sql_error;

/// An id in its stored form; binds as a 16-byte blob or as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum IdKey<'a> {
    Compact([u8; 16]),
    Text(&'a str),
}

impl<'a> IdKey<'a> {
    /// The stored form of `id`.
    pub(crate) fn of(id: &'a str) -> IdKey<'a> {
        match compact(id) {
            Some(bytes) => IdKey::Compact(bytes),
            None => IdKey::Text(id),
        }
    }
}

/// The stored form of an optional id (`NULL` for `None`).
pub(crate) fn optional(id: Option<&str>) -> Option<IdKey<'_>> {
    id.map(IdKey::of)
}

impl ToSql for IdKey<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            IdKey::Compact(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
            IdKey::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// An id read back from its stored form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredId(pub String);

impl FromSql for StoredId {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        match value {
            ValueRef::Text(t) => std::str::from_utf8(t)
                .map(|s| StoredId(s.to_owned()))
                .map_err(|e| FromSqlError::Other(Box::new(e))),
            ValueRef::Blob(b) => match <&[u8; 16]>::try_from(b) {
                Ok(bytes) => Ok(StoredId(expand(bytes))),
                Err(_) => Err(FromSqlError::InvalidBlobSize {
                    expected_size: 16,
                    blob_size: b.len(),
                }),
            },
            _ => Err(FromSqlError::InvalidType),
        }
    }
}

/// The stored form of `id` as an owned SQL value, for parameter lists built at run time.
pub(crate) fn to_value(id: &str) -> Value {
    match compact(id) {
        Some(bytes) => Value::Blob(bytes.to_vec()),
        None => Value::Text(id.to_owned()),
    }
}

/// Where each byte's two hex digits start in a canonical UUID string.
const DIGIT_PAIRS: [usize; 16] = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/// The value of each lowercase hex digit, `0xff` for every other byte.
const HEX_VALUES: [u8; 256] = {
    let mut table = [0xff; 256];
    let mut i = 0;
    while i < 16 {
        table[b"0123456789abcdef"[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// The 16 bytes of a canonical UUID string; `None` for any other string. Runs for every id
/// of every stored row: a table lookup per digit, one check at the end.
pub(crate) fn compact(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut out = [0u8; 16];
    let mut invalid = 0u8;
    for (byte, &at) in out.iter_mut().zip(DIGIT_PAIRS.iter()) {
        let (high, low) = (
            HEX_VALUES[usize::from(b[at])],
            HEX_VALUES[usize::from(b[at + 1])],
        );
        invalid |= high | low;
        *byte = (high << 4) | (low & 0x0f);
    }
    // A valid digit is at most 15: any higher bit set means some byte was not one.
    (invalid & 0xf0 == 0).then_some(out)
}

/// The canonical UUID string of 16 bytes.
pub(crate) fn expand(bytes: &[u8; 16]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(36);
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            out.push('-');
        }
        out.push(HEX[usize::from(byte >> 4)] as char);
        out.push(HEX[usize::from(byte & 0x0f)] as char);
    }
    out
}

/// Registers `cairn_id_key` and `cairn_id_text` on `conn`.
pub(crate) fn register_functions(conn: &Connection) -> cairn_checkpoint::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("cairn_id_key", 1, flags, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Text(t) => {
                // Not rewritten lossily: two such ids could become one (and the migration's
                // key update fail half-way); an error names the problem instead.
                let id = std::str::from_utf8(t).map_err(|e| {
                    rusqlite::Error::UserFunctionError(
                        format!("an id that is not UTF-8 text ({e}); fix or delete its row").into(),
                    )
                })?;
                match compact(id) {
                    Some(bytes) => Value::Blob(bytes.to_vec()),
                    None => Value::Text(id.to_owned()),
                }
            }
            other => Value::from(other),
        })
    })
    .map_err(sql_error("registering cairn_id_key"))?;
    conn.create_scalar_function("cairn_id_text", 1, flags, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Blob(b) => match <&[u8; 16]>::try_from(b) {
                Ok(bytes) => Value::Text(expand(bytes)),
                Err(_) => Value::Blob(b.to_vec()),
            },
            other => Value::from(other),
        })
    })
    .map_err(sql_error("registering cairn_id_text"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uuids_become_16_bytes_that_sort_as_their_text() {
        let ids = [
            "00000000-0000-0000-0000-000000000000",
            "1f1e9f70-41af-6e61-8000-4397b31095c5",
            "1f1e9f70-41af-6e7d-8000-19cf8442faa2",
            "1f1e9f70-41b0-60f9-8000-5c634e5bd141",
            "a0000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        ];
        let mut keys = Vec::new();
        for id in ids {
            let IdKey::Compact(bytes) = IdKey::of(id) else {
                panic!("{id} is canonical");
            };
            assert_eq!(expand(&bytes), id);
            keys.push(bytes);
        }
        assert!(keys.windows(2).all(|w| w[0] < w[1]), "text order kept");
    }

    #[test]
    fn other_ids_stay_text() {
        for id in [
            "",
            "1",
            "checkpoint-7",
            "1F1E9F70-41AF-6E61-8000-4397B31095C5",
            "1f1e9f70_41af_6e61_8000_4397b31095c5",
            "1f1e9f7041af6e6180004397b31095c5",
            "1f1e9f70-41af-6e61-8000-4397b31095cg",
            "1f1e9f70-41af-6e61-8000-4397b31095é",
            "1f1e9f70-41af-6e61-8000-4397b31095c:",
        ] {
            assert_eq!(IdKey::of(id), IdKey::Text(id), "{id}");
        }
    }

    #[test]
    fn sql_functions_and_reads_round_trip() {
        let conn = Connection::open_in_memory().expect("open");
        register_functions(&conn).expect("register");
        let id = "1f1e9f70-41af-6e61-8000-4397b31095c5";
        let (kind, back): (String, String) = conn
            .query_row(
                "SELECT typeof(cairn_id_key(?1)), cairn_id_text(cairn_id_key(?1))",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("query");
        assert_eq!((kind.as_str(), back.as_str()), ("blob", id));
        let read: StoredId = conn
            .query_row("SELECT ?1", [IdKey::of(id)], |r| r.get(0))
            .expect("query");
        assert_eq!(read.0, id);
        let other: StoredId = conn
            .query_row("SELECT cairn_id_key('x')", [], |r| r.get(0))
            .expect("query");
        assert_eq!(other.0, "x");
        let bad = conn.query_row("SELECT x'0102'", [], |r| r.get::<_, StoredId>(0));
        assert!(bad.is_err(), "a blob of another size is an error");
        let not_utf8 = conn.query_row("SELECT cairn_id_key(CAST(x'ff00' AS TEXT))", [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        });
        assert!(
            not_utf8.is_err_and(|e| e.to_string().contains("not UTF-8")),
            "an id that is not UTF-8 is an error, not rewritten"
        );
    }
}

//! How type tags and task paths are stored (schema 11).
//!
//! Every value and pending write row carries a type tag, and every pending write its task's
//! path; nearly all are a handful of strings Cairn itself writes (`msgpack`, `append/2`,
//! `ref/append`, `~__pregel_pull, <node>` …). Such a string is stored as a small blob, a code
//! byte (and, for a known prefix, the rest of the string after it): `ref/append` takes one byte
//! instead of ten, `~__pregel_pull, reply` six instead of 21. Any other string is stored as the
//! text it is, as before schema 11; a blob can never be mistaken for it, since SQLite tells the
//! two storage classes apart. Tools reading the file directly can turn a column back into its
//! text with `cairn_stored_text(type_tag)` on a connection Cairn opened.

use std::borrow::Cow;

use rusqlite::functions::FunctionFlags;
use rusqlite::types::{ToSql, ToSqlOutput, ValueRef};
use rusqlite::Connection;

use crate::sql_error;

/// Strings stored as the one-byte blob `[index + 1]`.
const KNOWN: [&str; 9] = [
    "msgpack",
    "json",
    "bytes",
    "empty",
    "null",
    "append",
    "append/2",
    "ref/append",
    "ref/map",
];

/// Prefixes stored as the byte `PREFIX_BASE + index` before the rest of the string.
const KNOWN_PREFIXES: [&str; 2] = ["~__pregel_pull, ", "~__pregel_push, "];

/// The code of the first known prefix (codes below it are whole strings).
const PREFIX_BASE: u8 = 0x40;

/// A type tag or task path as a statement parameter: its stored form.
pub(crate) struct StoreText<'a>(pub(crate) &'a str);

impl ToSql for StoreText<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match encode(self.0) {
            Some(Cow::Borrowed(code)) => ToSqlOutput::Borrowed(ValueRef::Blob(code)),
            Some(Cow::Owned(blob)) => ToSqlOutput::Owned(rusqlite::types::Value::Blob(blob)),
            None => ToSqlOutput::Borrowed(ValueRef::Text(self.0.as_bytes())),
        })
    }
}

/// The one-byte blobs of the known strings, `[index + 1]`: bound as they are, not allocated
/// per row.
const KNOWN_CODES: [u8; KNOWN.len()] = {
    let mut codes = [0; KNOWN.len()];
    let mut i = 0;
    while i < codes.len() {
        codes[i] = i as u8 + 1;
        i += 1;
    }
    codes
};

/// The stored form of `text` when it is or starts with a known string.
pub(crate) fn encode(text: &str) -> Option<Cow<'static, [u8]>> {
    if let Some(i) = KNOWN.iter().position(|known| *known == text) {
        return Some(Cow::Borrowed(&KNOWN_CODES[i..=i]));
    }
    KNOWN_PREFIXES.iter().enumerate().find_map(|(i, prefix)| {
        let rest = text.strip_prefix(prefix)?;
        let mut blob = Vec::with_capacity(1 + rest.len());
        blob.push(PREFIX_BASE + i as u8);
        blob.extend_from_slice(rest.as_bytes());
        Some(Cow::Owned(blob))
    })
}

/// The text a stored column holds: text as it is, a blob decoded. The error says what was
/// wrong with a blob.
pub(crate) fn decode(value: ValueRef<'_>) -> std::result::Result<Cow<'_, str>, String> {
    match value {
        ValueRef::Text(t) => std::str::from_utf8(t)
            .map(Cow::Borrowed)
            .map_err(|_| "a stored type tag or task path is not UTF-8".to_owned()),
        ValueRef::Blob(b) => decode_blob(b).map(Cow::Owned),
        other => Err(format!(
            "a stored type tag or task path is {:?}, not text or a blob",
            other.data_type()
        )),
    }
}

/// The text a coded blob stands for (see [`encode`]); the error says what was wrong.
pub(crate) fn decode_blob(blob: &[u8]) -> std::result::Result<String, String> {
    let (&code, rest) = blob
        .split_first()
        .ok_or("an empty blob where a type tag or task path belongs")?;
    if code >= PREFIX_BASE {
        let prefix = KNOWN_PREFIXES
            .get(usize::from(code - PREFIX_BASE))
            .ok_or_else(|| format!("unknown prefix code {code:#04x} in a stored task path"))?;
        let rest =
            std::str::from_utf8(rest).map_err(|_| "a stored task path is not UTF-8".to_owned())?;
        return Ok(format!("{prefix}{rest}"));
    }
    match (
        usize::from(code).checked_sub(1).and_then(|i| KNOWN.get(i)),
        rest,
    ) {
        (Some(known), []) => Ok((*known).to_owned()),
        _ => Err(format!(
            "unknown stored type tag or task path {blob:02x?} (written by a newer Cairn?)"
        )),
    }
}

/// Registers `cairn_stored_text(column)` on `conn`: the text a type tag or task path column
/// holds, for tools and SQL that read the file directly.
pub(crate) fn register_functions(conn: &Connection) -> cairn_checkpoint::Result<()> {
    conn.create_scalar_function(
        "cairn_stored_text",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            let value = ctx.get_raw(0);
            if value == ValueRef::Null {
                return Ok(None);
            }
            decode(value)
                .map(|text| Some(text.into_owned()))
                .map_err(|reason| rusqlite::Error::UserFunctionError(reason.into()))
        },
    )
    .map_err(sql_error("registering cairn_stored_text"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(text: &str) -> rusqlite::types::Value {
        match StoreText(text).to_sql().expect("to sql") {
            ToSqlOutput::Owned(v) => v,
            ToSqlOutput::Borrowed(v) => v.into(),
            _ => unreachable!("StoreText gives owned or borrowed values"),
        }
    }

    #[test]
    fn known_strings_and_prefixes_are_short_blobs_and_read_back() {
        use rusqlite::types::Value;
        assert_eq!(stored("ref/append"), Value::Blob(vec![0x08]));
        assert_eq!(stored("msgpack"), Value::Blob(vec![1]));
        assert_eq!(
            stored("~__pregel_pull, reply"),
            Value::Blob(b"\x40reply".to_vec())
        );
        for text in [
            "msgpack",
            "append/2",
            "ref/append",
            "~__pregel_pull, reply",
            "~__pregel_push, ~__pregel_pull, fan, 2",
            "~__pregel_pull, ",
            "pickle",
            "",
            "msgpack ",
        ] {
            let value = stored(text);
            let back = decode(ValueRef::from(&value)).expect("decode");
            assert_eq!(back, text);
        }
        assert_eq!(stored("pickle"), Value::Text("pickle".into()));
    }

    #[test]
    fn the_codes_in_sql_text_are_the_known_codes() {
        assert_eq!(encode("ref/append").as_deref(), Some(&[0x08][..]));
        assert!(crate::ops::REFERRING_WRITES_SQL.contains("IN ('ref/append', x'08')"));
        assert_eq!(encode("ref/map").as_deref(), Some(&[0x09][..]));
        assert!(crate::ops::REFERRING_VALUES_SQL.contains("IN ('ref/map', x'09')"));
    }

    #[test]
    fn bad_stored_forms_are_errors() {
        for (blob, says) in [
            (&b""[..], "empty blob"),
            (&b"\x00"[..], "unknown stored"),
            (&b"\x3f"[..], "unknown stored"),
            (&b"\x01x"[..], "unknown stored"),
            (&b"\x42node"[..], "unknown prefix code"),
            (&b"\x40\xff"[..], "not UTF-8"),
        ] {
            let err = decode(ValueRef::Blob(blob)).expect_err("bad blob");
            assert!(err.contains(says), "{blob:?}: {err}");
        }
        let err = decode(ValueRef::Integer(3)).expect_err("an integer");
        assert!(err.contains("not text or a blob"), "{err}");
    }

    #[test]
    fn the_sql_function_reads_both_forms() {
        let conn = Connection::open_in_memory().expect("open");
        register_functions(&conn).expect("register");
        let read =
            |sql: &str| -> Option<String> { conn.query_row(sql, [], |r| r.get(0)).expect("query") };
        assert_eq!(
            read("SELECT cairn_stored_text(x'08')").as_deref(),
            Some("ref/append")
        );
        assert_eq!(
            read("SELECT cairn_stored_text('pickle')").as_deref(),
            Some("pickle")
        );
        assert_eq!(read("SELECT cairn_stored_text(NULL)"), None);
    }
}

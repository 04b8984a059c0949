//! How channel versions are stored in `checkpoint_blobs.version` and `base_version`
//! (schema 5).
//!
//! Cairn's own versions are 49 characters: a counter zero-padded to 32 digits, a dot and 16
//! hex digits. As primary-key text every key comparison walked the ~31 zeros the versions of a
//! channel share (profiled: a fifth of the writer thread's time in W2 went to `memcmp` in
//! b-tree searches) and each version cost 49 bytes in the row, again in `base_version`. Schema
//! 5 stores them as 16-byte blobs instead, the counter then the suffix, both big-endian, so
//! blobs compare in counter order as the strings did. Any other version (integers,
//! LangGraph's `…0001.0.123` form) stays text; SQLite orders every text value before every
//! blob, and the range read of append chains only bounds a chain by a compact head (see
//! [`chain_bound`]).
//!
//! The conversions are also SQL functions, registered on every connection:
//! `cairn_version_key(text)` (the stored form of a version string) and
//! `cairn_version_text(stored)` (the version string back), so queries that take keys from
//! JSON, and the migration, convert in SQL.

use rusqlite::functions::FunctionFlags;
use rusqlite::types::{ToSqlOutput, Value, ValueRef};
use rusqlite::{Connection, ToSql};

use cairn_checkpoint::ChannelVersion;

use crate::sql_error;

/// A version in its stored form; binds as a 16-byte blob or as text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum VersionKey {
    Compact([u8; 16]),
    Text(String),
}

impl VersionKey {
    /// The stored form of a version's storage string
    /// ([`ChannelVersion::to_storage_string`]).
    pub(crate) fn from_storage_string(s: &str) -> VersionKey {
        match compact(s) {
            Some(bytes) => VersionKey::Compact(bytes),
            None => VersionKey::Text(s.to_owned()),
        }
    }
}

impl VersionKey {
    /// The version string this key stores (what [`from_storage_string`] was given).
    ///
    /// [`from_storage_string`]: VersionKey::from_storage_string
    pub(crate) fn to_storage_string(&self) -> Option<String> {
        match self {
            VersionKey::Compact(bytes) => expand(bytes),
            VersionKey::Text(s) => Some(s.clone()),
        }
    }
}

impl ToSql for VersionKey {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            VersionKey::Compact(bytes) => ToSqlOutput::Borrowed(ValueRef::Blob(bytes)),
            VersionKey::Text(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

/// The 16 stored bytes of a version string in Cairn's own form; `None` for any other.
fn compact(s: &str) -> Option<[u8; 16]> {
    let (counter, suffix) = ChannelVersion::compact_parts_of(s)?;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&counter.to_be_bytes());
    out[8..].copy_from_slice(&suffix.to_be_bytes());
    Some(out)
}

/// The version string of a stored 16-byte key; `None` when `bytes` is not one.
fn expand(bytes: &[u8]) -> Option<String> {
    let bytes: &[u8; 16] = bytes.try_into().ok()?;
    let (counter, suffix) = bytes.split_at(8);
    let counter = u64::from_be_bytes(counter.try_into().ok()?);
    let suffix = u64::from_be_bytes(suffix.try_into().ok()?);
    ChannelVersion::from_compact_parts(counter, suffix).map(|v| v.to_storage_string())
}

/// The upper bound for the range read of an append chain whose head has `version`: its
/// stored form when compact (every base of such a chain, compact or text, compares lower),
/// `None` otherwise (read every stored version of the channel).
pub(crate) fn chain_bound(version: &ChannelVersion) -> Option<String> {
    let (counter, suffix) = version.compact_parts()?;
    let mut hex = String::with_capacity(32);
    for part in [counter, suffix] {
        hex.push_str(&format!("{part:016x}"));
    }
    Some(hex)
}

/// Registers `cairn_version_key` and `cairn_version_text` on `conn`.
pub(crate) fn register_functions(conn: &Connection) -> cairn_checkpoint::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("cairn_version_key", 1, flags, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Text(t) => match std::str::from_utf8(t).ok().and_then(compact) {
                Some(bytes) => Value::Blob(bytes.to_vec()),
                None => Value::Text(String::from_utf8_lossy(t).into_owned()),
            },
            other => Value::from(other),
        })
    })
    .map_err(sql_error("registering cairn_version_key"))?;
    conn.create_scalar_function("cairn_version_text", 1, flags, |ctx| {
        Ok(match ctx.get_raw(0) {
            ValueRef::Blob(b) => match expand(b) {
                Some(s) => Value::Text(s),
                None => Value::Blob(b.to_vec()),
            },
            other => Value::from(other),
        })
    })
    .map_err(sql_error("registering cairn_version_text"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cairn_versions_become_16_bytes_that_sort_by_counter() {
        let v = |n: i64| ChannelVersion::Str(format!("{n:032}.{:016x}", 0xfeed_u64 * n as u64));
        let key = |n| VersionKey::from_storage_string(&v(n).to_storage_string());
        let keys: Vec<_> = [1, 2, 9, 10, 255, 256, 1 << 40]
            .into_iter()
            .map(key)
            .collect();
        for pair in keys.windows(2) {
            let (VersionKey::Compact(a), VersionKey::Compact(b)) = (&pair[0], &pair[1]) else {
                panic!("Cairn's versions are compact: {pair:?}");
            };
            assert!(a < b, "{a:?} sorts before {b:?}");
        }
        let VersionKey::Compact(bytes) = key(10) else {
            panic!("compact")
        };
        assert_eq!(expand(&bytes), Some(v(10).to_storage_string()));
        assert_eq!(expand(&bytes[..15]), None);
    }

    #[test]
    fn other_versions_stay_text() {
        for s in ["7", "00000000000000000000000000000002.0.5", "v1", ""] {
            assert_eq!(
                VersionKey::from_storage_string(s),
                VersionKey::Text(s.into())
            );
        }
        assert_eq!(chain_bound(&ChannelVersion::Int(3)), None);
        assert_eq!(
            chain_bound(&ChannelVersion::Str(format!("{:032}.{:016x}", 3, 10))).as_deref(),
            Some("0000000000000003000000000000000a")
        );
    }

    #[test]
    fn sql_functions_round_trip_and_leave_other_values_alone() {
        let conn = Connection::open_in_memory().expect("in-memory database");
        register_functions(&conn).expect("functions");
        let cairn = format!("{:032}.{:016x}", 42, 0xabcdef_u64);
        let (len, back): (i64, String) = conn
            .query_row(
                "SELECT length(cairn_version_key(?1)), cairn_version_text(cairn_version_key(?1))",
                [&cairn],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("query");
        assert_eq!((len, back), (16, cairn));
        let (kind, null): (String, Option<String>) = conn
            .query_row(
                "SELECT typeof(cairn_version_key('5')), cairn_version_key(NULL)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("query");
        assert_eq!((kind.as_str(), null), ("text", None));
    }
}

//! How checkpoint metadata is stored (schema 12).
//!
//! Every checkpoint row holds its metadata. Up to schema 11 that was the JSON text of
//! [`CheckpointMetadata`] without its run id (the `run_id` column holds it), 28 bytes for the
//! runtime's usual `{"source":"loop","step":0}`: about a sixth of a checkpoint row. Since
//! schema 12 it is a blob of a few bytes:
//!
//! * one flags byte: bits 0–2 the source (0 none, 1 `input`, 2 `loop`, 3 `update`, 4 `fork`),
//!   bit 3 a step follows, bit 4 parents follow, bit 5 the caller's own keys follow; bits 6
//!   and 7 are zero (a Cairn that finds them set was written by a newer one);
//! * the step, zigzag LEB128 (−1 and 0 to 63 take one byte);
//! * the parents: their count, then each namespace and checkpoint id as a length (LEB128) and
//!   UTF-8 bytes;
//! * the caller's own keys (but `run_id`): the rest of the blob, a JSON object as text.
//!
//! So the runtime's metadata takes two or three bytes. Rows stored as text (before schema 12)
//! stay text and read as before: SQLite keeps the two storage classes apart, so a blob is
//! never mistaken for JSON. Metadata filters in SQL and tools reading the file directly turn
//! either form into the JSON text with `cairn_metadata_json(metadata)`, a function registered
//! on every connection Cairn opens.

use std::collections::BTreeMap;

use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use cairn_checkpoint::{CheckpointMetadata, CheckpointSource};

use crate::leb128::{self, unzigzag, zigzag};
use crate::sql_error;

/// How errors name the blob.
const WHAT: &str = "the stored checkpoint metadata";

const SOURCE_MASK: u8 = 0b0000_0111;
const HAS_STEP: u8 = 0b0000_1000;
const HAS_PARENTS: u8 = 0b0001_0000;
const HAS_EXTRA: u8 = 0b0010_0000;
const RESERVED: u8 = 0b1100_0000;

/// The stored form of `metadata`, leaving out its run id and any `run_id` among the caller's
/// own keys (the `run_id` column holds the run id; `run_id_of` in the crate root vetted them).
pub(crate) fn encode(metadata: &CheckpointMetadata) -> Result<Vec<u8>, String> {
    let mut flags = match metadata.source {
        None => 0,
        Some(CheckpointSource::Input) => 1,
        Some(CheckpointSource::Loop) => 2,
        Some(CheckpointSource::Update) => 3,
        Some(CheckpointSource::Fork) => 4,
    };
    let mut out = vec![0];
    if let Some(step) = metadata.step {
        flags |= HAS_STEP;
        leb128::put(&mut out, zigzag(step));
    }
    if !metadata.parents.is_empty() {
        flags |= HAS_PARENTS;
        leb128::put(&mut out, metadata.parents.len() as u64);
        for (ns, id) in &metadata.parents {
            leb128::put_bytes(&mut out, ns.as_bytes());
            leb128::put_bytes(&mut out, id.as_bytes());
        }
    }
    let extra: serde_json::Map<String, serde_json::Value> = metadata
        .extra
        .iter()
        .filter(|(key, _)| *key != "run_id")
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect();
    if !extra.is_empty() {
        metadata.check_nesting().map_err(|e| match e {
            cairn_checkpoint::Error::Encode { message, .. } => message,
            other => other.to_string(),
        })?;
        flags |= HAS_EXTRA;
        serde_json::to_writer(&mut out, &extra)
            .map_err(|e| format!("encoding the checkpoint metadata's own keys: {e}"))?;
    }
    out[0] = flags;
    Ok(out)
}

/// Reads a blob [`encode`] wrote; `run_id` stays `None`. The error says what was wrong.
pub(crate) fn decode(blob: &[u8]) -> Result<CheckpointMetadata, String> {
    let (&flags, mut rest) = blob
        .split_first()
        .ok_or("the stored checkpoint metadata is an empty blob")?;
    if flags & RESERVED != 0 {
        return Err(format!(
            "the stored checkpoint metadata starts with flags {flags:#04x} this Cairn does not \
             know (written by a newer Cairn?)"
        ));
    }
    let source = match flags & SOURCE_MASK {
        0 => None,
        1 => Some(CheckpointSource::Input),
        2 => Some(CheckpointSource::Loop),
        3 => Some(CheckpointSource::Update),
        4 => Some(CheckpointSource::Fork),
        code => {
            return Err(format!(
                "unknown checkpoint source code {code} in the stored metadata"
            ))
        }
    };
    let step = if flags & HAS_STEP != 0 {
        Some(unzigzag(leb128::take(&mut rest, WHAT)?))
    } else {
        None
    };
    let mut parents = BTreeMap::new();
    if flags & HAS_PARENTS != 0 {
        let count = leb128::take(&mut rest, WHAT)?;
        for _ in 0..count {
            let ns = leb128::take_str(&mut rest, WHAT)?;
            let id = leb128::take_str(&mut rest, WHAT)?;
            parents.insert(ns, id);
        }
    }
    let extra = if flags & HAS_EXTRA != 0 {
        serde_json::from_slice(rest).map_err(|e| {
            format!("the stored checkpoint metadata's own keys are not a JSON object: {e}")
        })?
    } else if rest.is_empty() {
        serde_json::Map::new()
    } else {
        return Err(format!(
            "{} stray bytes after the stored checkpoint metadata",
            rest.len()
        ));
    };
    Ok(CheckpointMetadata {
        source,
        step,
        parents,
        run_id: None,
        extra,
    })
}

/// Metadata as a JSON object in the shape stored before schema 12 (no run id, no empty
/// parents; keys in sorted order, so not always the same text): what `cairn_metadata_json`
/// returns for a blob, so `json_extract` in SQL filters reads both forms alike.
pub(crate) fn to_json(metadata: &CheckpointMetadata) -> Result<String, String> {
    let mut object = serde_json::Map::new();
    if let Some(source) = metadata.source {
        object.insert("source".into(), source.as_str().into());
    }
    if let Some(step) = metadata.step {
        object.insert("step".into(), step.into());
    }
    if !metadata.parents.is_empty() {
        let parents = serde_json::to_value(&metadata.parents)
            .map_err(|e| format!("encoding the checkpoint metadata's parents: {e}"))?;
        object.insert("parents".into(), parents);
    }
    for (key, value) in &metadata.extra {
        if key != "run_id" {
            object.insert(key.clone(), value.clone());
        }
    }
    serde_json::to_string(&object).map_err(|e| format!("encoding the checkpoint metadata: {e}"))
}

/// Registers `cairn_metadata_json(metadata)` on `conn`: a metadata column as JSON text (text
/// as it is, a blob decoded; NULL for a blob that cannot be decoded, so that a filter lets
/// the row through and reading it reports the damage).
pub(crate) fn register_functions(conn: &Connection) -> cairn_checkpoint::Result<()> {
    conn.create_scalar_function(
        "cairn_metadata_json",
        1,
        FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC,
        |ctx| {
            Ok(match ctx.get_raw(0) {
                ValueRef::Text(t) => std::str::from_utf8(t).ok().map(str::to_owned),
                ValueRef::Blob(b) => decode(b).and_then(|m| to_json(&m)).ok(),
                _ => None,
            })
        },
    )
    .map_err(sql_error("registering cairn_metadata_json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(metadata: &CheckpointMetadata) -> Vec<u8> {
        let blob = encode(metadata).expect("encode");
        assert_eq!(&decode(&blob).expect("decode"), metadata);
        blob
    }

    #[test]
    fn the_runtimes_metadata_takes_two_or_three_bytes() {
        assert_eq!(
            round_trip(&CheckpointMetadata::new(CheckpointSource::Input, -1)),
            [0x09, 0x01]
        );
        assert_eq!(
            round_trip(&CheckpointMetadata::new(CheckpointSource::Loop, 299)).len(),
            3
        );
        assert_eq!(round_trip(&CheckpointMetadata::default()), [0x00]);
    }

    #[test]
    fn every_field_round_trips_and_the_run_id_is_left_to_its_column() {
        let mut full = CheckpointMetadata::new(CheckpointSource::Fork, i64::MIN)
            .with("user", "ada")
            .with("tags", serde_json::json!(["x", {"deep": [1.5, null]}]));
        full.parents.insert(String::new(), "root-id".into());
        full.parents.insert("sub:é".into(), "child-id".into());
        round_trip(&full);
        let mut max = CheckpointMetadata::new(CheckpointSource::Update, i64::MAX);
        max.extra.insert("n".into(), u64::MAX.into());
        round_trip(&max);
        // Floats read back bit for bit (serde_json's default parser can be one ULP off).
        let mut floats = CheckpointMetadata::new(CheckpointSource::Loop, 1);
        for (i, x) in [
            1.577_777_777_777_000_1,
            0.1 + 0.2,
            2.225_073_858_507_201e-308,
            1e300,
        ]
        .into_iter()
        .enumerate()
        {
            floats.extra.insert(format!("f{i}"), x.into());
        }
        round_trip(&floats);

        let with_run = full.clone().with_run_id("run-1").with("run_id", "run-1");
        let blob = encode(&with_run).expect("encode");
        assert_eq!(decode(&blob).expect("decode"), full);
    }

    #[test]
    fn values_nested_too_deep_to_read_back_are_refused() {
        let mut deep = serde_json::json!(1);
        for _ in 0..=cairn_checkpoint::MAX_METADATA_DEPTH {
            deep = serde_json::json!([deep]);
        }
        let err = encode(&CheckpointMetadata::default().with("deep", deep)).expect_err("too deep");
        assert!(err.contains("\"deep\" nests more than"), "{err}");
        let mut ok = serde_json::json!(1);
        for _ in 0..cairn_checkpoint::MAX_METADATA_DEPTH {
            ok = serde_json::json!({ "k": ok });
        }
        round_trip(&CheckpointMetadata::default().with("ok", ok));
    }

    #[test]
    fn the_json_form_is_the_text_stored_before_schema_12() {
        let mut m = CheckpointMetadata::new(CheckpointSource::Loop, 1).with("user", "ada");
        assert_eq!(
            to_json(&m).expect("json"),
            r#"{"source":"loop","step":1,"user":"ada"}"#
        );
        m.parents.insert(String::new(), "p".into());
        let json = to_json(&m).expect("json");
        assert!(json.contains(r#""parents":{"":"p"}"#), "{json}");
        let back: CheckpointMetadata = serde_json::from_str(&json).expect("parse");
        assert_eq!(back, m);
    }

    #[test]
    fn damaged_blobs_are_refused_with_the_reason() {
        let good = encode(&CheckpointMetadata::new(CheckpointSource::Loop, 300)).expect("encode");
        let cases: [(&[u8], &str); 6] = [
            (&[], "empty"),
            (&[0x40], "newer Cairn"),
            (&[0x07], "unknown checkpoint source"),
            (&good[..2], "ends inside a number"),
            (&[0x02, 0x00], "stray bytes"),
            (&[0x22, b'[', b']'], "not a JSON object"),
        ];
        for (blob, reason) in cases {
            let err = decode(blob).expect_err("damaged");
            assert!(err.contains(reason), "{blob:02x?}: {err}");
        }
        let truncated_parent = [0x10, 0x01, 0x05, b'a'];
        assert!(decode(&truncated_parent)
            .expect_err("short")
            .contains("ends inside a string"));
        for past_64_bits in [
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f,
            ][..],
        ] {
            let err = decode(past_64_bits).expect_err("too large");
            assert!(err.contains("larger than 64 bits"), "{err}");
        }
        let max = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        assert_eq!(decode(&max).expect("u64::MAX").step, Some(i64::MIN));
    }

    #[test]
    fn the_sql_function_reads_both_forms_and_passes_damage_on_as_null() {
        let conn = Connection::open_in_memory().expect("open");
        register_functions(&conn).expect("register");
        let blob = encode(&CheckpointMetadata::new(CheckpointSource::Loop, 7)).expect("encode");
        let json = |value: rusqlite::types::Value| -> Option<String> {
            conn.query_row("SELECT cairn_metadata_json(?1)", [value], |r| r.get(0))
                .expect("query")
        };
        assert_eq!(
            json(blob.into()).as_deref(),
            Some(r#"{"source":"loop","step":7}"#)
        );
        assert_eq!(
            json(r#"{"source":"input","step":-1}"#.to_owned().into()).as_deref(),
            Some(r#"{"source":"input","step":-1}"#)
        );
        assert_eq!(json(vec![0x40u8].into()), None);
        assert_eq!(json(rusqlite::types::Value::Null), None);
    }
}

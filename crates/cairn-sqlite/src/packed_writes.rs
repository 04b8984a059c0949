//! Pending writes stored in their checkpoint's row (schema 13).
//!
//! Up to schema 12 every pending write was a row of `checkpoint_writes`, keyed by thread,
//! namespace, checkpoint id, task id and index: about 95 bytes of keys and row structure
//! around a write of a few bytes (the runtime's writes are mostly references to the items a
//! checkpoint appended, or a one-byte trigger). Since schema 13 the writes a checkpoint
//! collects go into its own row, `checkpoints.writes`, as one blob:
//!
//! * the number of tasks (LEB128), then per task: its id (a byte 0 and the 16 bytes of a
//!   canonical UUID, or a byte 1 and the id as a length-prefixed string), its path (a stored
//!   text, below) and the number of its writes;
//! * per write: its index (zigzag LEB128; special channels' writes are negative), its
//!   channel (length-prefixed), its type tag (a stored text) and its data (length-prefixed).
//!
//! A stored text is a byte 0 and the text, or a byte 1 and the code blob `stored_text.rs`
//! gives the strings Cairn writes (`ref/append` is one byte), each length-prefixed.
//!
//! The rules are those of the rows: per task and index a regular write is kept if one is
//! stored already (a retried task cannot duplicate it), a special channel's write replaces
//! it ([`merge`]). Writes for a checkpoint that is not stored (LangGraph allows them) still go
//! to `checkpoint_writes`, as do the writes of files written before schema 13; reads take
//! both. `cairn_merge_writes(old, new, new_wins)` applies the rules in SQL, and
//! `cairn_pending_writes_json(writes)` shows a stored blob as JSON, for tools reading the
//! file through a connection Cairn opened.

use std::collections::hash_map::{Entry, HashMap};

use bytes::Bytes;
use rusqlite::functions::FunctionFlags;
use rusqlite::types::ValueRef;
use rusqlite::Connection;

use cairn_checkpoint::{PendingWrite, TypedValue};

use crate::leb128::{self, unzigzag, zigzag};
use crate::sql_error;

/// How errors name the blob.
const WHAT: &str = "the blob of stored pending writes";

/// A pending write with its index (its position among its task's writes, or the special
/// channel's negative index).
pub(crate) type IndexedWrite = (i64, PendingWrite);

/// Encodes `writes` (any order; grouped by task here).
pub(crate) fn encode(writes: &[IndexedWrite]) -> Vec<u8> {
    let mut sorted: Vec<&IndexedWrite> = writes.iter().collect();
    sorted.sort_by(|(ia, a), (ib, b)| (&a.task_id, ia).cmp(&(&b.task_id, ib)));
    // Consecutive writes of one task (and path) form a group.
    let mut groups: Vec<&[&IndexedWrite]> = Vec::new();
    let mut rest = sorted.as_slice();
    while let Some((first, _)) = rest.split_first() {
        let len = rest
            .iter()
            .take_while(|(_, w)| w.task_id == first.1.task_id && w.task_path == first.1.task_path)
            .count();
        let (group, tail) = rest.split_at(len);
        groups.push(group);
        rest = tail;
    }
    let mut out = Vec::with_capacity(16 + writes.len() * 48);
    leb128::put(&mut out, groups.len() as u64);
    for group in groups {
        let task = &group[0].1;
        match crate::id_key::compact(&task.task_id) {
            Some(bytes) => {
                out.push(0);
                out.extend_from_slice(&bytes);
            }
            None => {
                out.push(1);
                leb128::put_bytes(&mut out, task.task_id.as_bytes());
            }
        }
        put_text(&mut out, &task.task_path);
        leb128::put(&mut out, group.len() as u64);
        for (idx, write) in group {
            leb128::put(&mut out, zigzag(*idx));
            leb128::put_bytes(&mut out, write.channel.as_bytes());
            put_text(&mut out, &write.value.type_tag);
            leb128::put_bytes(&mut out, &write.value.data);
        }
    }
    out
}

/// Reads a blob [`encode`] wrote. The error says what was wrong.
pub(crate) fn decode(blob: &[u8]) -> Result<Vec<IndexedWrite>, String> {
    let mut rest = blob;
    let tasks = leb128::take(&mut rest, WHAT)?;
    let mut writes = Vec::new();
    // Each write gets its own copy of its task's id and path, which the blob holds once: a
    // damaged (or crafted) blob of a long path and a huge count would otherwise ask for far
    // more memory than it has bytes. Real blobs stay far below this bound.
    let copy_limit = blob.len().saturating_mul(256).max(16 << 20);
    let mut copied = 0usize;
    for _ in 0..tasks {
        let task_id = match rest.split_first() {
            Some((0, tail)) => {
                let bytes: &[u8; 16] = tail
                    .get(..16)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| format!("{WHAT} ends inside a task id"))?;
                rest = &tail[16..];
                crate::id_key::expand(bytes)
            }
            Some((1, tail)) => {
                rest = tail;
                leb128::take_str(&mut rest, WHAT)?
            }
            Some((kind, _)) => {
                return Err(format!(
                    "unknown task id form {kind} in {WHAT} (written by a newer Cairn?)"
                ))
            }
            None => return Err(format!("{WHAT} ends before a task")),
        };
        let task_path = take_text(&mut rest)?;
        let count = leb128::take(&mut rest, WHAT)?;
        // A write takes at least 4 bytes (index, channel, type tag and data lengths).
        if count > (rest.len() / 4) as u64 {
            return Err(format!(
                "{WHAT} says a task has {count} writes, but only {} bytes follow",
                rest.len()
            ));
        }
        copied = copied.saturating_add(
            (count as usize).saturating_mul(task_id.len().saturating_add(task_path.len())),
        );
        if copied > copy_limit {
            return Err(format!(
                "{WHAT} would expand to more than {copy_limit} bytes of task ids and paths \
                 ({} bytes stored): it is damaged",
                blob.len()
            ));
        }
        for _ in 0..count {
            let idx = unzigzag(leb128::take(&mut rest, WHAT)?);
            let channel = leb128::take_str(&mut rest, WHAT)?;
            let type_tag = take_text(&mut rest)?;
            let data = Bytes::copy_from_slice(leb128::take_bytes(&mut rest, WHAT)?);
            writes.push((
                idx,
                PendingWrite {
                    task_id: task_id.clone(),
                    channel,
                    value: TypedValue::new(type_tag, data),
                    task_path: task_path.clone(),
                },
            ));
        }
    }
    if !rest.is_empty() {
        return Err(format!("{} stray bytes after {WHAT}", rest.len()));
    }
    Ok(writes)
}

/// `stored` with `new` added under the rules of pending writes: per task and index a
/// regular write already stored is kept, a special channel's write (negative index)
/// replaces it; with `new_wins` every write in `new` replaces its stored namesake (copying a
/// thread over another, as `INSERT OR REPLACE` did with rows).
pub(crate) fn merge(
    mut stored: Vec<IndexedWrite>,
    new: Vec<IndexedWrite>,
    new_wins: bool,
) -> Vec<IndexedWrite> {
    if stored.len().saturating_mul(new.len()) <= 256 {
        for (idx, write) in new {
            match stored
                .iter_mut()
                .find(|(i, w)| *i == idx && w.task_id == write.task_id)
            {
                Some(slot) if new_wins || idx < 0 => *slot = (idx, write),
                Some(_) => {}
                None => stored.push((idx, write)),
            }
        }
        return stored;
    }
    // Positions by (task, index): a linear search per new write would make merging a large
    // fan-out's writes (thousands of tasks) quadratic.
    let mut positions: HashMap<(String, i64), usize> = stored
        .iter()
        .enumerate()
        .map(|(at, (idx, w))| ((w.task_id.clone(), *idx), at))
        .collect();
    for (idx, write) in new {
        match positions.entry((write.task_id.clone(), idx)) {
            Entry::Occupied(at) => {
                if new_wins || idx < 0 {
                    stored[*at.get()] = (idx, write);
                }
            }
            Entry::Vacant(slot) => {
                slot.insert(stored.len());
                stored.push((idx, write));
            }
        }
    }
    stored
}

fn put_text(out: &mut Vec<u8>, text: &str) {
    match crate::stored_text::encode(text) {
        Some(code) => {
            out.push(1);
            leb128::put_bytes(out, &code);
        }
        None => {
            out.push(0);
            leb128::put_bytes(out, text.as_bytes());
        }
    }
}

fn take_text(rest: &mut &[u8]) -> Result<String, String> {
    let (&form, tail) = rest
        .split_first()
        .ok_or_else(|| format!("{WHAT} ends before a type tag or task path"))?;
    *rest = tail;
    match form {
        0 => leb128::take_str(rest, WHAT),
        1 => crate::stored_text::decode_blob(leb128::take_bytes(rest, WHAT)?),
        other => Err(format!(
            "unknown text form {other} in {WHAT} (written by a newer Cairn?)"
        )),
    }
}

/// Decodes an optional blob column for an SQL function; a damaged blob is an SQL error that
/// names the damage.
fn column(value: ValueRef<'_>) -> rusqlite::Result<Vec<IndexedWrite>> {
    match value {
        ValueRef::Null => Ok(Vec::new()),
        ValueRef::Blob(b) => decode(b).map_err(|reason| {
            rusqlite::Error::UserFunctionError(
                format!("the pending writes stored in a checkpoint row are damaged: {reason}")
                    .into(),
            )
        }),
        other => Err(rusqlite::Error::UserFunctionError(
            format!("{WHAT} is {:?}, not a blob", other.data_type()).into(),
        )),
    }
}

/// Registers `cairn_merge_writes(stored, new, new_wins)` (the merged blob, NULL when both are
/// NULL) and `cairn_pending_writes_json(writes)` on `conn`.
pub(crate) fn register_functions(conn: &Connection) -> cairn_checkpoint::Result<()> {
    let flags = FunctionFlags::SQLITE_UTF8 | FunctionFlags::SQLITE_DETERMINISTIC;
    conn.create_scalar_function("cairn_merge_writes", 3, flags, |ctx| {
        let (stored, new) = (ctx.get_raw(0), ctx.get_raw(1));
        if new == ValueRef::Null {
            // Nothing to add: the stored blob stays as it is (not decoded), anything else
            // that is not NULL is refused rather than erased.
            return match stored {
                ValueRef::Blob(b) => Ok(Some(b.to_vec())),
                ValueRef::Null => Ok(None),
                other => column(other).map(|_| None),
            };
        }
        let merged = merge(column(stored)?, column(new)?, ctx.get::<bool>(2)?);
        Ok(Some(encode(&merged)))
    })
    .map_err(sql_error("registering cairn_merge_writes"))?;
    conn.create_scalar_function("cairn_pending_writes_json", 1, flags, |ctx| {
        let writes = column(ctx.get_raw(0))?;
        let json: Vec<serde_json::Value> = writes
            .iter()
            .map(|(idx, w)| {
                serde_json::json!({
                    "task_id": w.task_id,
                    "idx": idx,
                    "task_path": w.task_path,
                    "channel": w.channel,
                    "type_tag": w.value.type_tag,
                    "data_hex": w.value.data.iter().map(|b| format!("{b:02x}")).collect::<String>(),
                })
            })
            .collect();
        Ok(serde_json::Value::Array(json).to_string())
    })
    .map_err(sql_error("registering cairn_pending_writes_json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(task: &str, idx: i64, channel: &str, tag: &str, data: &[u8]) -> IndexedWrite {
        (
            idx,
            PendingWrite {
                task_id: task.into(),
                channel: channel.into(),
                value: TypedValue::new(tag, Bytes::copy_from_slice(data)),
                task_path: "~__pregel_pull, node".into(),
            },
        )
    }

    const UUID: &str = "1f1ea437-d1a5-6e7b-8000-b7cd0a195b10";

    #[test]
    fn writes_round_trip_grouped_by_task_in_task_and_index_order() {
        let writes = vec![
            write("task-b", 0, "messages", "ref/append", b"\x00\x01"),
            write(UUID, 1, "branch:to:reply", "msgpack", b"\xc0"),
            write(UUID, 0, "messages", "ref/append", &[7; 19]),
            write("task-b", -3, "__interrupt__", "a tag of its own", b""),
        ];
        let blob = encode(&writes);
        let mut expected = writes.clone();
        expected.sort_by(|(ia, a), (ib, b)| (&a.task_id, ia).cmp(&(&b.task_id, ib)));
        assert_eq!(decode(&blob).expect("decode"), expected);
        // The runtime's usual step: one task, a reference and a trigger, in about 80 bytes
        // (two rows of `checkpoint_writes` took about 190).
        let step = vec![
            write(UUID, 0, "messages", "ref/append", &[7; 19]),
            write(UUID, 1, "branch:to:reply", "msgpack", b"\xc0"),
        ];
        assert!(encode(&step).len() < 90, "{}", encode(&step).len());
        assert_eq!(decode(&encode(&[])).expect("empty"), vec![]);
    }

    #[test]
    fn merging_keeps_stored_regular_writes_and_replaces_special_ones() {
        let stored = vec![
            write("t", 0, "a", "msgpack", b"old"),
            write("t", -1, "__error__", "msgpack", b"old"),
        ];
        let new = vec![
            write("t", 0, "a", "msgpack", b"new"),
            write("t", -1, "__error__", "msgpack", b"new"),
            write("t", 1, "b", "msgpack", b"new"),
            write("u", 0, "a", "msgpack", b"new"),
        ];
        let merged = merge(stored.clone(), new.clone(), false);
        let data = |m: &[IndexedWrite]| -> Vec<(String, i64, Vec<u8>)> {
            m.iter()
                .map(|(i, w)| (w.task_id.clone(), *i, w.value.data.to_vec()))
                .collect()
        };
        assert_eq!(
            data(&merged),
            [
                ("t".into(), 0, b"old".to_vec()),
                ("t".into(), -1, b"new".to_vec()),
                ("t".into(), 1, b"new".to_vec()),
                ("u".into(), 0, b"new".to_vec()),
            ]
        );
        let copied = merge(stored, new, true);
        assert!(copied.iter().all(|(_, w)| &w.value.data[..] == b"new"));
    }

    /// A large fan-out's writes take the indexed path; the rules are the same as for a few.
    #[test]
    fn merging_many_writes_follows_the_same_rules() {
        let tasks: Vec<String> = (0..2_000).map(|i| format!("task-{i:04}")).collect();
        let stored: Vec<IndexedWrite> = tasks
            .iter()
            .flat_map(|t| {
                [
                    write(t, 0, "items", "msgpack", b"old"),
                    write(t, -1, "__error__", "msgpack", b"old"),
                ]
            })
            .collect();
        // Every stored key again (regular and special), and one new key per task.
        let new: Vec<IndexedWrite> = tasks
            .iter()
            .flat_map(|t| {
                [
                    write(t, 0, "items", "msgpack", b"new"),
                    write(t, -1, "__error__", "msgpack", b"new"),
                    write(t, 1, "items", "msgpack", b"new"),
                ]
            })
            .collect();
        let merged = merge(stored.clone(), new.clone(), false);
        assert_eq!(merged.len(), 3 * tasks.len());
        for (idx, w) in &merged {
            let want: &[u8] = if *idx == 0 { b"old" } else { b"new" };
            assert_eq!(&w.value.data[..], want, "{} {idx}", w.task_id);
        }
        let copied = merge(stored, new, true);
        assert_eq!(copied.len(), 3 * tasks.len());
        assert!(copied.iter().all(|(_, w)| &w.value.data[..] == b"new"));
    }

    #[test]
    fn damaged_blobs_are_refused_with_the_reason() {
        let good = encode(&[write(UUID, 0, "messages", "msgpack", b"\x01")]);
        let cases: [(&[u8], &str); 6] = [
            (&[], "ends inside a number"),
            (&[0x01], "ends before a task"),
            (&[0x01, 0x07], "unknown task id form"),
            (&[0x01, 0x00, 0xaa], "ends inside a task id"),
            (&good[..good.len() - 1], "ends inside a string"),
            (&[0x00, 0x00], "stray bytes"),
        ];
        for (blob, reason) in cases {
            let err = decode(blob).expect_err("damaged");
            assert!(err.contains(reason), "{blob:02x?}: {err}");
        }
        let mut bad_form = good.clone();
        bad_form[18] = 9; // the task path's form byte, after the count, id form and 16 bytes
        assert!(decode(&bad_form)
            .expect_err("form")
            .contains("unknown text form"));
    }

    /// One task with a text id, `path_len` bytes of path and `count` writes of 5 zero bytes
    /// (index 0, empty channel, empty text tag, empty data), each of them well formed.
    fn blob_of_empty_writes(path_len: usize, count: usize, writes_stored: usize) -> Vec<u8> {
        let mut blob = vec![0x01, 0x01, 0x00]; // one task, id form 1, empty id
        blob.push(0); // path as text
        leb128::put_bytes(&mut blob, &vec![b'p'; path_len]);
        leb128::put(&mut blob, count as u64);
        blob.extend(std::iter::repeat_n(0u8, 5 * writes_stored));
        blob
    }

    #[test]
    fn blobs_asking_for_far_more_memory_than_they_hold_are_refused() {
        // Well formed, but 100,000 copies of a 200 kB path would take 20 GB.
        let err = decode(&blob_of_empty_writes(200_000, 100_000, 100_000)).expect_err("huge");
        assert!(err.contains("would expand to more than"), "{err}");
        // A count the remaining bytes cannot hold.
        let err = decode(&blob_of_empty_writes(3, 1_000, 2)).expect_err("count");
        assert!(err.contains("says a task has 1000 writes"), "{err}");
        // The same shape at a sane size decodes: every write gets the path.
        let fine = decode(&blob_of_empty_writes(300, 1_000, 1_000)).expect("sane");
        assert_eq!(fine.len(), 1_000);
        assert!(fine.iter().all(|(_, w)| w.task_path.len() == 300));
    }

    #[test]
    fn the_sql_functions_merge_and_show_stored_writes() {
        let conn = Connection::open_in_memory().expect("open");
        register_functions(&conn).expect("register");
        let stored = encode(&[write("t", 0, "a", "msgpack", b"old")]);
        let new = encode(&[
            write("t", 0, "a", "msgpack", b"new"),
            write("t", 1, "b", "msgpack", b"\x01"),
        ]);
        let merged: Vec<u8> = conn
            .query_row(
                "SELECT cairn_merge_writes(?1, ?2, 0)",
                (&stored, &new),
                |r| r.get(0),
            )
            .expect("merge");
        let json: String = conn
            .query_row("SELECT cairn_pending_writes_json(?1)", [&merged], |r| {
                r.get(0)
            })
            .expect("json");
        let shown: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(shown[0]["data_hex"], "6f6c64");
        assert_eq!(shown[1]["channel"], "b");
        let none: Option<Vec<u8>> = conn
            .query_row("SELECT cairn_merge_writes(NULL, NULL, 0)", [], |r| r.get(0))
            .expect("null");
        assert_eq!(none, None);
        let err = conn
            .query_row("SELECT cairn_merge_writes(x'0107', ?1, 0)", [&new], |r| {
                r.get::<_, Vec<u8>>(0)
            })
            .expect_err("damaged");
        assert!(err.to_string().contains("unknown task id form"), "{err}");
    }
}

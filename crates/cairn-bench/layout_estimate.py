#!/usr/bin/env python3
"""What one row per checkpoint would store: a measured estimate for Cairn's SQLite layout.

Reads a Cairn SQLite file (schema 12; e.g. the W1 growth file that
`cairn-bench --growth --savers sqlite --keep-sqlite FILE` leaves) and writes a copy in which
every checkpoint is one row of one table, keyed (thread, namespace, checkpoint id) like
today's `checkpoints`, whose body holds what the three tables hold today in separate rows:

* the parent id (one byte when it is the previous checkpoint of the thread, else its bytes)
  and the run id (one byte when it is the previous checkpoint's, else its bytes);
* the metadata and the header, byte for byte as stored now;
* the channel values the checkpoint created (channel, type tag, base flag, data as stored);
* its pending writes (task id and path once per task, then index, channel, tag, data; since
  schema 13 the blob the row holds already, as it is).

With `--value-index` it also writes an index (thread, ns, channel, version) -> checkpoint id
for every value, which such a layout would need if values were still found by version.

It prints the SQLite file sizes and each part's bytes, so the cost of per-row structure can
be told apart from what the rows hold. Nothing here is used by Cairn itself.

    python3 layout_estimate.py W1.sqlite OUT.sqlite [--value-index] [--raw-bytes N]
"""
import argparse
import os
import sqlite3


def varint(n: int) -> bytes:
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def with_length(b) -> bytes:
    if b is None:
        b = b""
    if isinstance(b, str):
        b = b.encode()
    return varint(len(b)) + b


def version_counter(v) -> int:
    """The counter of a stored version: Cairn's 16-byte key (counter first) or text."""
    if isinstance(v, bytes):
        return int.from_bytes(v[:8], "big")
    return int(str(v).split(".")[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("out")
    ap.add_argument("--value-index", action="store_true")
    ap.add_argument("--raw-bytes", type=int, default=0,
                    help="raw message bytes, to print the size as a multiple of them")
    args = ap.parse_args()

    src = sqlite3.connect(args.source)
    columns = {r[1] for r in src.execute("PRAGMA table_info(checkpoints)")}
    # Since schema 13 a checkpoint's writes are a blob in its row: taken as they are.
    packed = "writes" if "writes" in columns else "NULL"
    checkpoints = src.execute(
        "SELECT thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, header, "
        f"metadata, run_id, {packed} FROM checkpoints "
        "ORDER BY thread_id, checkpoint_ns, checkpoint_id"
    ).fetchall()
    # Values go to the checkpoint that created them: per thread and namespace, a version's
    # counter is the step count at which it was made, and the runtime bumps one counter per
    # checkpoint, so the k-th checkpoint (in id order) created the versions with counter k + 1.
    # (An approximation for files with forks; every value is stored exactly once either way.)
    by_ns: dict = {}
    for thread, ns, cid, *_rest in checkpoints:
        by_ns.setdefault((thread, ns), []).append(cid)
    created: dict = {}
    for thread, ns, channel, version, tag, data, base in src.execute(
        "SELECT thread_id, checkpoint_ns, channel, version, type_tag, data, base_version "
        "FROM checkpoint_blobs"
    ):
        ids = by_ns.get((thread, ns))
        if not ids:
            continue
        k = min(max(version_counter(version) - 1, 0), len(ids) - 1)
        created.setdefault((thread, ns, ids[k]), []).append((channel, version, tag, data, base))
    writes: dict = {}
    for thread, ns, cid, task, idx, path, channel, tag, data in src.execute(
        "SELECT thread_id, checkpoint_ns, checkpoint_id, task_id, idx, task_path, channel, "
        "type_tag, data FROM checkpoint_writes ORDER BY 1, 2, 3, 4, 5"
    ):
        writes.setdefault((thread, ns, cid), []).append((task, idx, path, channel, tag, data))

    if os.path.exists(args.out):
        os.remove(args.out)
    dst = sqlite3.connect(args.out)
    dst.execute("CREATE TABLE checkpoint_rows (thread_id TEXT, checkpoint_ns TEXT, "
                "checkpoint_id BLOB, body BLOB, PRIMARY KEY (thread_id, checkpoint_ns, "
                "checkpoint_id)) WITHOUT ROWID")
    dst.execute("CREATE TABLE value_index (thread_id TEXT, checkpoint_ns TEXT, channel TEXT, "
                "version BLOB, checkpoint_id BLOB, PRIMARY KEY (thread_id, checkpoint_ns, "
                "channel, version)) WITHOUT ROWID")
    parts = dict.fromkeys(["ids and run", "metadata", "header", "values", "writes"], 0)
    previous = (None, None, None)
    for thread, ns, cid, parent, header, metadata, run, in_row in checkpoints:
        same_ns = previous[0] == (thread, ns)
        ids = b"\x00" if same_ns and parent == previous[1] else with_length(parent)
        ids += b"\x00" if same_ns and run == previous[2] else with_length(run)
        meta = with_length(metadata)
        head = with_length(header)
        values = bytearray(varint(len(created.get((thread, ns, cid), []))))
        for channel, _version, tag, data, base in created.get((thread, ns, cid), []):
            values += with_length(channel) + with_length(tag)
            values += (b"\x01" if base is not None else b"\x00") + with_length(data)
        pending = bytearray(with_length(in_row) if in_row else b"")
        pending += varint(len(writes.get((thread, ns, cid), [])))
        last_task = None
        for task, idx, path, channel, tag, data in writes.get((thread, ns, cid), []):
            pending += b"\x00" if task == last_task else with_length(task) + with_length(path)
            pending += varint(idx & 0xFF) + with_length(channel) + with_length(tag)
            pending += with_length(data)
            last_task = task
        for name, part in zip(parts, [ids, meta, head, values, pending]):
            parts[name] += len(part)
        dst.execute("INSERT INTO checkpoint_rows VALUES (?, ?, ?, ?)",
                    (thread, ns, cid, bytes(ids + meta + head + values + pending)))
        if args.value_index:
            for channel, version, *_ in created.get((thread, ns, cid), []):
                dst.execute("INSERT INTO value_index VALUES (?, ?, ?, ?, ?)",
                            (thread, ns, channel, version, cid))
        previous = ((thread, ns), cid, run)
    dst.commit()
    dst.close()

    size = os.path.getsize(args.out)
    print(f"source file:             {os.path.getsize(args.source):>9,} bytes")
    print(f"one row per checkpoint:  {size:>9,} bytes"
          + (" (with the value index)" if args.value_index else ""))
    if args.raw_bytes:
        print(f"  = {size / args.raw_bytes:.2f}x the raw message bytes ({args.raw_bytes:,})")
    print(f"rows: {len(checkpoints):,}; body bytes by part:")
    for name, n in parts.items():
        print(f"  {name:12s} {n:>9,}")


if __name__ == "__main__":
    main()

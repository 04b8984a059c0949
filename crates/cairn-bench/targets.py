#!/usr/bin/env python3
"""Cairn's performance targets, checked against one peer run and one Cairn run of the same benchmark run.

Usage: targets.py PEER.json CAIRN.json [--fsync-per-s N]
Ratios are Cairn / LangGraph (throughput). Absolute targets use Cairn's figures only.
The ratio targets are set for durability `default`; the same ratio in `sync` is printed as
information ("info"): there each step waits for a durable commit, the disk bounds one thread,
and the sync targets below (a share of the disk's fsync rate, and group commit lifting 64
threads above it) are what judges it.
Modes: default = runtime Async + the saver's default sync policy, sync = runtime Sync + the
power-loss-safe policy (SQLite synchronous=FULL), exit = runtime Exit (Cairn only: no ratio rows).
Sync cells carry disk_fsync_per_s (measured by the bench right before them); else
--fsync-per-s: the disk's rate of 4 KiB O_DSYNC appends measured in the same benchmark run
(dd if=/dev/zero of=F bs=4k count=300 oflag=dsync); needed for the sync targets.
"""
import argparse
import json


def cells(path):
    return {(c["workload"], c["saver"], c["durability"]): c for c in json.load(open(path))["results"]}


def target_rows(p, c, fsync_per_s=None):
    """The targets' rows for peer cells `p` and Cairn cells `c` (see `cells`): tuples of
    (target, saver, durability, LangGraph, Cairn, ratio, goal, verdict) as printed."""
    rows = []

    def ratio_target(name, cwl, pwl, saver, fig, want):
        for mode in ("default", "sync"):
            pc, cc = p.get((pwl, saver, mode)), c.get((cwl, saver, mode))
            if not pc or not cc or not pc.get("ok") or not cc.get("ok"):
                rows.append((name, saver, mode, "-", "-", "-", f">= {want}x" if mode == "default" else "-", "n/a"))
                continue
            r = cc[fig] / pc[fig]
            if mode != "default":
                rows.append((name, saver, mode, f"{pc[fig]:,.1f}", f"{cc[fig]:,.1f}", f"{r:,.1f}x", "-", "info"))
                continue
            rows.append((name, saver, mode, f"{pc[fig]:,.1f}", f"{cc[fig]:,.1f}", f"{r:,.1f}x", f">= {want}x",
                         "met" if r >= want else f"missed ({r / want:.0%} of target)"))

    ratio_target("W2 steps/s", "W2", "W2", "sqlite", "steps_per_s", 50)
    ratio_target("W2 steps/s", "W2", "W2", "memory", "steps_per_s", 100)
    ratio_target("W2 steps/s", "W2", "W2", "postgres", "steps_per_s", 20)
    ratio_target("W1 turns/s", "W1", "W1", "sqlite", "turns_per_s", 50)
    ratio_target("W1 turns/s", "W1", "W1", "postgres", "turns_per_s", 20)
    ratio_target("W4 turns/s, Cairn 64 threads at once vs peer sequential", "W4-concurrent", "W4", "sqlite", "turns_per_s", 50)

    for saver in ("memory", "sqlite", "postgres", "redis"):
        for mode in ("default", "sync", "exit"):
            cc = c.get(("W1", saver, mode))
            if not cc or not cc.get("ok"):
                continue
            page, full, n = cc.get("get_state_history_page_ms"), cc.get("get_state_history_ms"), cc.get("checkpoints")
            if page is not None:
                rows.append((f"history first page ({cc.get('history_page_size')} snapshots)", saver, mode, "-",
                             f"{page:.2f} ms", "-", "<= 5 ms", "met" if page <= 5 else f"missed ({page / 5:.1f}x too slow)"))
            if full is not None:
                rows.append((f"whole history ({n} checkpoints, values decoded)", saver, mode, "-", f"{full:.2f} ms", "-",
                             "<= 50 ms", "met" if full <= 50 else f"missed ({full / 50:.1f}x too slow)"))

    if fsync_per_s or any("disk_fsync_per_s" in x for x in c.values()):
        for saver in ("sqlite", "postgres"):
            one = c.get(("W2", saver, "sync"))
            if one and one.get("ok"):
                f = one.get("disk_fsync_per_s", fsync_per_s)
                v = one["steps_per_s"]
                rows.append(("sync, 1 thread: durable checkpoints/s (W2 steps/s)", saver, "sync", f"fsync {f:,.0f}/s",
                             f"{v:,.0f}/s", f"{v / f:.0%} of fsync", ">= 50%", "met" if v >= 0.5 * f else "missed"))
            many = c.get(("W4-concurrent", saver, "sync"))
            if many and many.get("ok"):
                f = many.get("disk_fsync_per_s", fsync_per_s)
                if "checkpoints_per_s" in many:
                    v, how = many["checkpoints_per_s"], "checkpoints written / wall clock"
                else:  # older Cairn JSON
                    v, how = many["turns_per_s"] * 3, "W4-concurrent turns/s x 3"
                rows.append((f"sync, 64 threads: durable checkpoints/s ({how})", saver, "sync",
                             f"fsync {f:,.0f}/s", f"{v:,.0f}/s", f"{v / f:.1f}x fsync", "> 1x", "met" if v > f else "missed"))
                per = many.get("fsyncs_per_checkpoint")
                if per is not None:
                    rows.append(("sync, 64 threads: WAL fsyncs per checkpoint (writer commits / checkpoints)", saver,
                                 "sync", "-", f"{per:.3f}", "-", "-", "info"))
                elif saver == "postgres" and many.get("commits_per_checkpoint") is not None:
                    per = many["commits_per_checkpoint"]
                    rows.append(("sync, 64 threads: commits per checkpoint (each at most one WAL flush)", saver,
                                 "sync", "-", f"{per:.3f}", "-", "-", "info"))

    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("peer")
    ap.add_argument("cairn")
    ap.add_argument("--fsync-per-s", type=float)
    a = ap.parse_args()
    rows = target_rows(cells(a.peer), cells(a.cairn), a.fsync_per_s)
    print("| target | saver | durability | LangGraph | Cairn | ratio | goal | verdict |")
    print("|---|---|---|---:|---:|---:|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()

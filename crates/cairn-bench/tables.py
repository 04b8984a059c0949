#!/usr/bin/env python3
"""Markdown tables for docs/BENCHMARKS.md from one side-by-side run's results.

    python3 crates/cairn-bench/tables.py [RESULTS_DIR]    # default: crates/cairn-bench/results

Reads peer.json, cairn.json, peer-growth.json and cairn-growth.json and prints the tables the
page quotes: side by side, Cairn only (modes), 64 threads at once, reads, storage growth,
growth against LangGraph's DeltaChannel, and time per turn over the growth runs.
"""

import json
import os
import sys

WORKLOADS = ["W1", "W1delta", "W2", "W3", "W4"]
SAVERS = ["none", "memory", "sqlite", "postgres", "redis"]
MODES = ["default", "sync", "exit"]
FIGURE = {"W1": "turns_per_s", "W1delta": "turns_per_s", "W2": "steps_per_s",
          "W3": "invocations_per_s", "W4": "turns_per_s", "W4-concurrent": "turns_per_s"}


def load(path):
    with open(path) as f:
        return json.load(f)


def cells(doc):
    return {(c["workload"], c["saver"], c["durability"]): c for c in doc["results"] if c.get("ok")}


def num(x, digits=1):
    if x is None:
        return "-"
    return f"{x:,.{digits}f}"


def ratio(a, b, digits=1):
    if not a or not b:
        return "-"
    return f"{a / b:.{digits}f}x"


def side_by_side(peer, cairn):
    print("| workload | saver | durability | LangGraph | Cairn | Cairn/LG | LG storage | Cairn storage "
          "| LG/Cairn | Cairn SQLite after WAL checkpoint |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for w in WORKLOADS:
        for s in SAVERS:
            for m in ["default", "sync"]:
                c = cairn.get((w, s, m))
                if c is None:
                    continue
                p = peer.get((w, s, m))
                fig = FIGURE[w]
                lg = p.get(fig) if p else None
                lg_st = p.get("storage_bytes") if p else None
                ca_st = c.get("storage_bytes")
                st_ratio = f"{lg_st / ca_st:.2f}x" if lg_st and ca_st else "-"
                after = c.get("storage_bytes_after_wal_checkpoint")
                print(f"| {w} | {s} | {m} | {num(lg)} | {num(c.get(fig))} | {ratio(c.get(fig), lg)} "
                      f"| {num(lg_st, 0)} | {num(ca_st, 0)} | {st_ratio} | {num(after, 0) if after else ''} |")


def cairn_only(cairn):
    print("| workload | saver | `exit` | `default` | `sync` |")
    print("|---|---|---:|---:|---:|")
    for w in ["W1", "W2", "W3", "W4"]:
        for s in ["memory", "sqlite", "postgres", "redis"]:
            row = [cairn.get((w, s, m), {}).get(FIGURE[w]) for m in MODES]
            if any(row):
                unit = {"W1": "turns/s", "W2": "steps/s", "W3": "invocations/s", "W4": "turns/s"}[w]
                print(f"| {w} {unit} | {s} | {num(row[2])} | {num(row[0])} | {num(row[1])} |")


def concurrent(peer, cairn):
    print("| W4, 64 threads at once | durability | LangGraph sequential W4 turns/s | Cairn turns/s "
          "| Cairn/LG | Cairn checkpoints/s | commits per checkpoint (SQLite, PostgreSQL) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s in SAVERS:
        for m in MODES:
            c = cairn.get(("W4-concurrent", s, m))
            if c is None:
                continue
            p = peer.get(("W4", s, m))
            lg = p.get("turns_per_s") if p else None
            commits = c.get("commits_per_checkpoint")
            print(f"| {s} | {m} | {num(lg)} | {num(c.get('turns_per_s'))} | {ratio(c.get('turns_per_s'), lg)} "
                  f"| {num(c.get('checkpoints_per_s'), 0)} | {f'{commits:.3f}' if commits is not None else '-'} |")


def reads(peer, cairn):
    print("| saver | durability | LG get_state ms | Cairn get_state ms | LG full history ms "
          "| Cairn full history ms | Cairn first page (10) ms |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for s in SAVERS[1:]:
        for m in MODES:
            c = cairn.get(("W1", s, m))
            if c is None:
                continue
            p = peer.get(("W1", s, m)) or {}
            print(f"| {s} | {m} | {num(p.get('get_state_ms'), 3)} | {num(c.get('get_state_ms'), 3)} "
                  f"| {num(p.get('get_state_history_ms'))} | {num(c.get('get_state_history_ms'))} "
                  f"| {num(c.get('get_state_history_page_ms'), 2)} |")


def growth_samples(doc, variant=None):
    g = doc["growth"]
    savers = g["variants"][variant]["savers"] if variant else g["savers"]
    return {s: {x["turn"]: x for x in v["samples"]} for s, v in savers.items()}


def growth(peer_growth, cairn_growth, variant, label):
    lg = growth_samples(peer_growth, variant)
    ca = growth_samples(cairn_growth)
    print(f"| saver | turn | {label} B | Cairn B | {label}/Cairn | {label} SQLite pages B "
          f"| Cairn SQLite after WAL checkpoint B | {label}/Cairn | Cairn B per turn since previous sample |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for s in ["sqlite", "postgres", "memory"]:
        prev = None
        for turn in sorted(ca.get(s, {})):
            c = ca[s][turn]
            p = lg.get(s, {}).get(turn, {})
            cb, pb = c.get("bytes"), p.get("bytes")
            after = c.get("bytes_after_wal_checkpoint")
            pages = p.get("logical_db_bytes")
            measure = after if after else cb
            per_turn = ""
            if prev is not None:
                per_turn = num((measure - prev[1]) / (turn - prev[0]), 0)
            else:
                per_turn = num(measure / turn, 0)
            prev = (turn, measure)
            sql = s == "sqlite"
            print(f"| {s} | {turn} | {num(pb, 0)} | {num(cb, 0)} | {ratio(pb, cb, 2)} "
                  f"| {num(pages, 0) if sql else ''} | {num(after, 0) if sql else ''} "
                  f"| {ratio(pages, after, 2) if sql else ''} | {per_turn} |")


def time_per_turn(peer_growth, cairn_growth):
    lg = growth_samples(peer_growth, "W1")
    delta = growth_samples(peer_growth, "W1delta")
    ca = growth_samples(cairn_growth)
    print("| saver | turns | LangGraph ms/turn | LG DeltaChannel ms/turn | Cairn ms/turn | LG/Cairn |")
    print("|---|---|---:|---:|---:|---:|")
    for s in ["sqlite", "postgres", "memory", "redis"]:
        prev = 0
        for turn in sorted(ca.get(s, {})):
            c = ca[s][turn]["segment_ms_per_turn"]
            p = lg.get(s, {}).get(turn, {}).get("segment_ms_per_turn")
            d = delta.get(s, {}).get(turn, {}).get("segment_ms_per_turn")
            print(f"| {s} | {prev + 1}–{turn} | {num(p, 2)} | {num(d, 2)} | {num(c, 3)} | {ratio(p, c)} |")
            prev = turn


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    results = sys.argv[1] if len(sys.argv) > 1 else os.path.join(here, "results")
    peer = cells(load(os.path.join(results, "peer.json")))
    cairn = cells(load(os.path.join(results, "cairn.json")))
    peer_growth = load(os.path.join(results, "peer-growth.json"))
    cairn_growth = load(os.path.join(results, "cairn-growth.json"))
    for title, table in [
        ("Side by side", lambda: side_by_side(peer, cairn)),
        ("Cairn only, by durability mode", lambda: cairn_only(cairn)),
        ("64 threads at once", lambda: concurrent(peer, cairn)),
        ("Reads after W1", lambda: reads(peer, cairn)),
        ("Storage growth, W1", lambda: growth(peer_growth, cairn_growth, "W1", "LangGraph")),
        ("Storage growth against DeltaChannel",
         lambda: growth(peer_growth, cairn_growth, "W1delta", "DeltaChannel")),
        ("Time per turn over the growth runs", lambda: time_per_turn(peer_growth, cairn_growth)),
    ]:
        print(f"\n### {title}\n")
        table()


if __name__ == "__main__":
    main()

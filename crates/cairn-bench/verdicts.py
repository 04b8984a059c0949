#!/usr/bin/env python3
"""The performance targets over several side-by-side runs: how often each is met.

Usage: verdicts.py RUN_DIR [RUN_DIR ...]
Each RUN_DIR holds one run of run-side-by-side.sh (peer.json, cairn.json, run-info.txt). Each
run's targets are those targets.py prints for it; this prints one row per target with each run's
figure (the ratio to the peer, else Cairn's own figure; bold where the target is met) and how many
runs met it. One run on a noisy host can flip a verdict near the line; the count says how firm it is.
"""
import os
import sys

from targets import cells, target_rows


def run_label(run_dir):
    """`HH:MM` of the run's start and Cairn's commit, from run-info.txt."""
    info = {}
    with open(os.path.join(run_dir, "run-info.txt")) as f:
        for line in f:
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    started = info.get("started_utc", "?")
    clock = started[11:16] if len(started) >= 16 else started
    return f"{clock} `{info.get('cairn_commit', '?')[:7]}`"


def main():
    dirs = sys.argv[1:]
    if not dirs:
        sys.exit(__doc__)
    runs = []
    for d in dirs:
        rows = target_rows(cells(os.path.join(d, "peer.json")), cells(os.path.join(d, "cairn.json")))
        runs.append((run_label(d), {r[:3]: r for r in rows}))
    keys = []
    for _, rows in runs:
        keys.extend(k for k in rows if k not in keys)
    print("| target | saver | durability | goal | " + " | ".join(label for label, _ in runs) + " | met |")
    print("|---|---|---|---|" + "---:|" * len(runs) + "---:|")
    for key in keys:
        goal, figures, met, judged = "-", [], 0, 0
        for _, rows in runs:
            row = rows.get(key)
            if row is None:
                figures.append("-")
                continue
            goal = row[6]
            figure = row[5] if row[5] != "-" else row[4]
            verdict = row[7]
            if verdict == "met":
                met += 1
                figure = f"**{figure}**"
            if verdict == "met" or verdict.startswith("missed"):
                judged += 1
            figures.append(figure)
        count = f"{met} of {judged}" if judged else "-"
        print("| " + " | ".join([*key, goal, *figures, count]) + " |")


if __name__ == "__main__":
    main()

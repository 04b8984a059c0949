#!/usr/bin/env bash
# Cairn side by side with LangGraph, in one go (see docs/BENCHMARKS.md):
#   1. the Python peer (langgraph_peer.py) on memory, SQLite and PostgreSQL, modes default + sync
#   2. Cairn's bench (built with cargo build --release -p cairn-bench, then run from a copy),
#      modes default + sync + exit
#   3. the W1 storage-growth runs of both
#   4. compare.py (ratios) and targets.py (Cairn's targets)
# Everything lands in the output dir: peer.json, cairn.json, peer-growth.json, cairn-growth.json,
# their logs, compare.txt, compare-growth.txt, targets.txt, fsync-before.txt, fsync-after.txt, run-info.txt.
#
# Usage: [QUICK=1] crates/cairn-bench/run-side-by-side.sh [OUT_DIR]   (default crates/cairn-bench/results)
# Environment (all optional):
#   QUICK=1            small sizes (--quick; growth to 40 turns) for a fast check
#   BENCH_VENV         Python venv of the peer (default /tmp/bench-venv; created and filled if missing)
#   LANGGRAPH_VERSION  langgraph version installed into a new venv (default 1.2.24)
#   PEER_DIR           where langgraph_peer.py and compare.py live (default <repo>/../shared/bench)
#   PEER_PG_DSN        the peer's PostgreSQL database (default postgresql://postgres@127.0.0.1:5432/lgbench;
#                      created if missing)
#   CAIRN_BENCH_PG_URL, CAIRN_BENCH_REDIS_URL   Cairn's servers (the bench's defaults otherwise)
#   CARGO_TARGET_DIR   honoured by cargo as usual
# Exit status: 0 when every step succeeded and every cell was ok, 1 otherwise (the outputs are
# still written; see the step list printed at the end).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
out=${1:-$here/results}
mkdir -p "$out"
out=$(cd "$out" && pwd)

venv=${BENCH_VENV:-/tmp/bench-venv}
lg_version=${LANGGRAPH_VERSION:-1.2.24}
peer_dir=${PEER_DIR:-$root/../shared/bench}
export PEER_PG_DSN=${PEER_PG_DSN:-postgresql://postgres@127.0.0.1:5432/lgbench}

quick=()
growth_peer=(--growth-savers sqlite,postgres,memory)
growth_cairn=(--savers memory,sqlite,postgres,redis)
if [[ "${QUICK:-0}" == 1 ]]; then
    quick=(--quick)
    growth_peer+=(--growth-turns 40 --growth-samples 10,20,40)
    growth_cairn+=(--growth-samples 10,20,40)
fi

failed=()
step() { # step NAME CMD... : runs CMD, remembers a failure, never stops the script
    local name=$1
    shift
    echo "== $name: $*"
    if ! "$@"; then
        echo "!! $name failed"
        failed+=("$name")
    fi
}

cairn_step() { # like step, but skipped (and failed) when the build failed
    if [[ " ${failed[*]} " == *" cairn build "* ]]; then
        echo "!! $1 skipped: the build failed"
        failed+=("$1")
        return
    fi
    step "$@"
}
with_files() { # with_files FILE... -- CMD... : CMD only when every FILE exists
    local missing=()
    while [[ $1 != -- ]]; do
        [[ -f $1 ]] || missing+=("$1")
        shift
    done
    shift
    if ((${#missing[@]})); then
        echo "!! $2 skipped: missing ${missing[*]}"
        failed+=("$2")
        return
    fi
    "$@"
}
logged() { # logged LOG CMD... : CMD's output on the terminal and in LOG
    local log=$1
    shift
    "$@" 2>&1 | tee "$log"
}
to_file() { # to_file FILE CMD... : CMD's output in FILE
    local file=$1
    shift
    "$@" >"$file"
}

for f in langgraph_peer.py compare.py; do
    if [[ ! -f "$peer_dir/$f" ]]; then
        echo "error: $peer_dir/$f not found (set PEER_DIR)" >&2
        exit 2
    fi
done

# --- the peer's venv -------------------------------------------------------------------
py=$venv/bin/python
if ! "$py" -c 'import langgraph, langgraph.checkpoint.sqlite, langgraph.checkpoint.postgres, psycopg, psycopg_pool' 2>/dev/null; then
    echo "== creating the peer venv in $venv (langgraph $lg_version)"
    python3 -m venv "$venv" || exit 2
    "$venv/bin/pip" install --quiet "langgraph==$lg_version" langgraph-checkpoint-sqlite \
        langgraph-checkpoint-postgres "psycopg[binary]" psycopg-pool || exit 2
fi

# --- the peer's database ---------------------------------------------------------------
"$py" - <<'EOF' || exit 2
import os
import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

dsn = os.environ["PEER_PG_DSN"]
db = conninfo_to_dict(dsn).get("dbname") or "postgres"
with psycopg.connect(make_conninfo(dsn, dbname="postgres"), autocommit=True) as conn:
    if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
        print(f"== created database {db}")
EOF

fsync_probe() { # the disk's durable 4 KiB appends per second, as docs/BENCHMARKS.md quotes it
    local f
    f=$(mktemp "${TMPDIR:-/tmp}/cairn-fsync-probe.XXXXXX")
    dd if=/dev/zero of="$f" bs=4k count=300 oflag=dsync 2>&1 | tail -n 1
    rm -f "$f"
}

{
    echo "started_utc: $(date -u +%FT%TZ)"
    if commit=$(git -C "$root" rev-parse HEAD 2>/dev/null); then
        # The run's own outputs (results/ is tracked) do not count as a difference.
        git -C "$root" diff --quiet HEAD -- crates Cargo.lock ':(exclude)crates/cairn-bench/results' \
            || commit+=" (crates/ differ from it in the work tree)"
    else
        commit="unknown: $root is not a git checkout"
    fi
    echo "cairn_commit: $commit"
    echo "quick: ${QUICK:-0}"
    echo "peer_dir: $peer_dir"
    echo "peer_packages: $("$venv/bin/pip" list 2>/dev/null | grep -Ei '^(langgraph|psycopg)' | tr -s ' ' | paste -sd ';')"
    echo "nproc: $(nproc)  loadavg: $(cat /proc/loadavg)"
} >"$out/run-info.txt"
fsync_probe >"$out/fsync-before.txt"

cd "$root" || exit 2

# --- 1. the peer, 2. Cairn (built first so compiling does not sit between the two runs) ---
# The steps run a copy of the binary built here: sources edited while the run goes on change
# nothing it measures, and nothing is compiled between the peer's run and Cairn's.
build_copy() { # the path of the binary as cargo reports it, wherever the target dir is
    local built
    built=$(cargo build --release -p cairn-bench --message-format=json-render-diagnostics |
        python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "cairn-bench":
        print(m["executable"])') &&
        [[ -n $built ]] && cp "$built" "$bench_bin"
}
bench_dir=$(mktemp -d)
trap 'rm -rf "$bench_dir"' EXIT
bench_bin="$bench_dir/cairn-bench"
step "cairn build" build_copy
step "peer" logged "$out/peer.log" "$py" "$peer_dir/langgraph_peer.py" "${quick[@]}" --json "$out/peer.json"
cairn_step "cairn" logged "$out/cairn.log" "$bench_bin" "${quick[@]}" --json "$out/cairn.json"

# --- 3. growth --------------------------------------------------------------------------
step "peer growth" logged "$out/peer-growth.log" "$py" "$peer_dir/langgraph_peer.py" --growth "${growth_peer[@]}" \
    --json "$out/peer-growth.json"
cairn_step "cairn growth" logged "$out/cairn-growth.log" "$bench_bin" --growth "${growth_cairn[@]}" \
    --json "$out/cairn-growth.json"

fsync_probe >"$out/fsync-after.txt"
echo "finished_utc: $(date -u +%FT%TZ)  loadavg: $(cat /proc/loadavg)" >>"$out/run-info.txt"

# --- 4. ratios and targets --------------------------------------------------------------
with_files "$out/peer.json" "$out/cairn.json" -- step "compare" to_file "$out/compare.txt" python3 "$peer_dir/compare.py" "$out/peer.json" "$out/cairn.json"
with_files "$out/peer-growth.json" "$out/cairn-growth.json" -- step "compare growth" to_file "$out/compare-growth.txt" python3 "$peer_dir/compare.py" "$out/peer-growth.json" \
    "$out/cairn-growth.json"
with_files "$out/peer.json" "$out/cairn.json" -- step "targets" to_file "$out/targets.txt" python3 "$here/targets.py" "$out/peer.json" "$out/cairn.json"

echo
echo "== outputs in $out:"
ls -1 "$out"
echo "== fsync probe before: $(cat "$out/fsync-before.txt")"
echo "== fsync probe after:  $(cat "$out/fsync-after.txt")"
if ((${#failed[@]})); then
    echo "!! failed steps: ${failed[*]}"
    exit 1
fi
echo "== all steps ok"

#!/usr/bin/env bash
# `make bench-recover` (long; not in CI): how a shard copy that fell
# behind heals. A one-shard collection of N (default 1,000,000) clustered
# 128-d vectors (engram-bench synthetic) is bulk-loaded into `make
# cluster`'s loopback cluster (3 coordinators, 3 workers) with replication
# 2. Then, twice, its replica is killed with kill -9, WRITES (default
# 1,000) single-row writes go on without it, and it is started again
# (benches/recover/recover.py):
#   delta: the default, cluster.catch_up = "delta": the primary sends the
#          writes after the copy's position, read from its WAL;
#   rows:  every process restarted with cluster.catch_up = "rows", what
#          every catch-up did before write positions: the primary streams
#          the whole shard and the copy rebuilds its segments (what a move
#          did before segment shipping too: a moved copy is a new copy,
#          rebuilt by a full transfer).
# Between the two, with uploads to object storage off, the replica's copy
# is moved to the third worker (POST /v1/cluster/moves), which receives the
# primary's sealed segment files as they are (kind=segments), and `cp -r`
# of the same files on this disk is timed beside it (recover-ref kind=cp);
# then, with uploads on (the default), the replica's data directory is
# deleted and the worker started again: its copy downloads the segments
# from the object storage (`make cluster`'s local segment-store directory)
# its primary uploaded them to (kind=object_store).
# Prints per kind
#   recover kind= rows= bytes= seconds= wal_bytes= wall_s= shard_rows=
# (bytes and seconds: what the primary counted for the catch-up; wal_bytes:
# what the missed writes added to the primary's WAL; wall_s: from starting
# the killed worker to the shard map showing it in sync, process start
# included) and the ratios delta/rows and bytes/wal_bytes. ROWS=0 leaves
# the rows phase out (about 10 of the run's 20 minutes). Work files live
# under target/bench-recover and are deleted at the end (KEEP=1 keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
N="${N:-1000000}"
WRITES="${WRITES:-1000}"
DIM=128
target="${CARGO_TARGET_DIR:-target}"
out="$(realpath -m "$target/bench-recover")"
mkdir -p "$out"
.venv/bin/python -c "import pyarrow" 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check pyarrow==26.0.1
cargo build --release -q --bin engram -p engram-cli
cargo build --release -q -p engram-bench
engram="$target/release/engram"
bench="$target/release/engram-bench"
results="$out/results.txt"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "data: one shard of $N clustered ${DIM}-d rows, replication 2; $WRITES single-row writes missed"
} | tee "$out/machine.txt"
: >"$results"

data="$out/synthetic-$N"
if [ ! -f "$data/parquet/part-0000.parquet" ]; then
  "$bench" synthetic --out "$data" --n "$N" --queries 10 --dim "$DIM"
  .venv/bin/python benches/scale/fbin_to_parquet.py "$data" "$data/parquet"
  rm -f "$data/base.fbin"
fi

export CLUSTER_BIN="$engram" CLUSTER_DIR="$out/cluster"
export ENGRAM_STORAGE__LOCAL_ROOTS="$data/parquet"
cleanup() {
  deploy/local/cluster.sh stop >/dev/null 2>&1 || true
  [ "${KEEP:-0}" = 1 ] || rm -rf "$out/cluster" "$data"
}
trap cleanup EXIT
url=http://127.0.0.1:7700
deploy/local/cluster.sh stop >/dev/null 2>&1 || true
rm -rf "$out/cluster"
# Peer shipping first: nothing uploaded to object storage.
export ENGRAM_STORAGE__UPLOAD_SEALED_SEGMENTS=false
deploy/local/cluster.sh start >/dev/null
curl -sf -X POST "$url/v1/collections" -H 'content-type: application/json' \
  -d "{\"name\":\"recover\",\"dim\":$DIM,\"metric\":\"l2\",\"shards\":1,\"replication\":2}" >/dev/null
"$engram" ingest "$data/parquet" --collection recover --server "$url" --bulk --json >"$out/ingest.json"

phase() { # kind first-id
  .venv/bin/python benches/recover/recover.py --cluster-dir "$out/cluster" \
    --collection recover --kind "$1" --writes "$WRITES" --dim "$DIM" --first-id "$2" \
    --restart "deploy/local/cluster.sh start" | tee -a "$results"
}
phase delta 2000000000
phase segments 0
# The same files copied on this disk, page cache as warm as the move found it.
primary=$(curl -sf "$url/v1/cluster" | python3 -c 'import json, sys
s = json.load(sys.stdin)
print([c for c in s["collections"] if c["name"] == "recover"][0]["shards"][0]["primary"])')
segments="$out/cluster/worker-$primary/collections/recover/shards/0000/segments"
rm -rf "$out/cp-copy"
python3 - "$segments" "$out/cp-copy" <<'PY' | tee -a "$results"
import os, subprocess, sys, time
started = time.monotonic()
subprocess.run(["cp", "-r", sys.argv[1], sys.argv[2]], check=True)
subprocess.run(["sync"], check=True)
seconds = time.monotonic() - started
size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(sys.argv[2]) for f in files)
print(f"recover-ref kind=cp bytes={size} seconds={seconds:.2f}")
PY
rm -rf "$out/cp-copy"
# Uploads on: the primary uploads the shard's segment, then a worker whose
# data directory is gone comes back from object storage.
deploy/local/cluster.sh stop >/dev/null
ENGRAM_STORAGE__UPLOAD_SEALED_SEGMENTS=true deploy/local/cluster.sh start >/dev/null
ENGRAM_STORAGE__UPLOAD_SEALED_SEGMENTS=true WRITES=0 phase object_store 0
# Everything restarted with the old behaviour (a restarted primary compares
# positions with its replica, so the restart itself moves nothing).
deploy/local/cluster.sh stop >/dev/null
ENGRAM_CLUSTER__CATCH_UP=rows deploy/local/cluster.sh start >/dev/null
if [ "${ROWS:-1}" = 1 ]; then
  ENGRAM_CLUSTER__CATCH_UP=rows phase rows 2000100000
fi

python3 - "$results" <<'PY'
import sys
runs = {}
for line in open(sys.argv[1]):
    fields = dict(f.split("=", 1) for f in line.split()[1:])
    runs[fields["kind"]] = {k: float(v) for k, v in fields.items() if k != "kind"}
d, s, c, o = runs["delta"], runs["segments"], runs["cp"], runs["object_store"]
if "rows" not in runs:  # ROWS=0: the phases without the 10-minute rows one
    print("recover-ratio delta_bytes_over_wal=%.2f segments_over_cp_seconds=%.2f segments_bytes_over_files=%.3f"
          % (d["bytes"] / d["wal_bytes"], s["seconds"] / c["seconds"], s["bytes"] / c["bytes"]))
    sys.exit(0)
r = runs["rows"]
print(
    "recover-ratio delta_over_rows_bytes=%.5f delta_over_rows_seconds=%.5f "
    "delta_bytes_over_wal=%.2f segments_over_rows_seconds=%.4f segments_over_cp_seconds=%.2f "
    "segments_bytes_over_files=%.3f object_store_over_rows_seconds=%.4f"
    % (d["bytes"] / r["bytes"], d["seconds"] / r["seconds"], d["bytes"] / d["wal_bytes"],
       s["seconds"] / r["seconds"], s["seconds"] / c["seconds"], s["bytes"] / c["bytes"],
       o["seconds"] / r["seconds"])
)
PY

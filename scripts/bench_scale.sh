#!/usr/bin/env bash
# `make bench-scale` (long; not in CI): Engram at 1M and 10M vectors.
# For each N in SCALES (default "1000000 10000000"): N clustered 128-d
# vectors (engram-bench synthetic, exact top-100 of 1,000 queries) written
# as Parquet, bulk-loaded (`engram ingest --bulk`) into `make cluster`'s
# loopback cluster (3 coordinators, 3 workers, replication 1, the default
# shard count; segments go through the cluster's segment store), then
# queried through coordinator 1, with the workers' default cache budget and
# again after a restart with a budget of 0 (every segment served from SSD).
# Prints per N and budget
#   scale n= recall10= p50_ms= p99_ms= qps= build_rows_per_s= ram_b_per_vec= disk_b_per_vec= cache_budget=
# (RAM: the workers' resident memory after the queries, over N; disk: the
# workers' data directories, over N), the seconds from a restart to the
# first complete answer, and the ratios of the last N to the first per
# budget. Work files live under target/bench-scale and are deleted per N
# (KEEP=1 keeps them).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
SCALES="${SCALES:-1000000 10000000}"
DIM=128
CONCURRENCY="${CONCURRENCY:-4}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-20}"
target="${CARGO_TARGET_DIR:-target}"
out="$(realpath -m "$target/bench-scale")"
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
  echo "data: clustered ${DIM}-d L2, 1000 queries, k=10; latency: 1 client; qps: $CONCURRENCY clients"
} | tee "$out/machine.txt"
: >"$results"

export CLUSTER_BIN="$engram" CLUSTER_DIR="$out/cluster"
trap 'deploy/local/cluster.sh stop >/dev/null 2>&1 || true' EXIT
url=http://127.0.0.1:7700

for n in $SCALES; do
  data="$out/synthetic-$n"
  [ -f "$data/gt.ibin" ] || "$bench" synthetic --out "$data" --n "$n" --queries 1000 --dim "$DIM"
  [ -f "$data/parquet/part-0000.parquet" ] || .venv/bin/python benches/scale/fbin_to_parquet.py "$data" "$data/parquet"
  rm -f "$data/base.fbin" # the Parquet files hold the rows now
  deploy/local/cluster.sh stop >/dev/null 2>&1 || true
  rm -rf "$out/cluster"
  # The coordinators read the input from local disk: its directory is a root.
  ENGRAM_STORAGE__LOCAL_ROOTS="$data/parquet" deploy/local/cluster.sh start >/dev/null
  curl -sf -X POST "$url/v1/collections" -H 'content-type: application/json' \
    -d "{\"name\":\"scale\",\"dim\":$DIM,\"metric\":\"l2\",\"replication\":1}" >/dev/null
  "$engram" ingest "$data/parquet" --collection scale --server "$url" --bulk --json >"$out/ingest-$n.json"
  rate=$(python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['report']['rows_per_s'], 1))" "$out/ingest-$n.json")
  # Measured twice: with the workers' default cache budget (a quarter of
  # the machine's memory each: segments that fit are served from RAM), then
  # restarted with a budget of 0 (every sealed segment served from SSD; the
  # resident memory is what a billion-row node needs per row).
  for cache in default 0; do
    if [ "$cache" = 0 ]; then
      deploy/local/cluster.sh stop >/dev/null
      started=$(date +%s.%N)
      ENGRAM_CACHE__BUDGET_MB=0 ENGRAM_STORAGE__LOCAL_ROOTS="$data/parquet" deploy/local/cluster.sh start >/dev/null
      for _ in $(seq 600); do
        curl -sf -X POST "$url/v1/collections/scale/search" -H 'content-type: application/json' \
          -d "{\"vector\":[$(python3 -c "print(','.join(['0.0'] * $DIM))")],\"k\":1,\"require_complete\":true}" >/dev/null && break
        sleep 0.5
      done
      echo "startup n=$n cache_budget=0 seconds_to_first_complete_answer=$(python3 -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 1))" "$started" "$(date +%s.%N)")" | tee -a "$results"
    fi
    line=$("$bench" query --url "$url" --collection scale --data "$data" --label "scale n=$n" \
      --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN")
    rss_kb=0
    for w in 1 2 3; do
      pid=$(cat "$out/cluster/worker-$w.pid")
      rss_kb=$((rss_kb + $(awk '/VmRSS/{print $2}' "/proc/$pid/status")))
    done
    disk_b=$(du -sb "$out"/cluster/worker-* | awk '{s += $1} END {printf "%.0f", s}')
    python3 - "$line" "$n" "$rate" "$rss_kb" "$disk_b" "$cache" <<'PY' | tee -a "$results"
import re, sys
line, n, rate, rss_kb, disk_b, cache = sys.argv[1:]
f = dict(re.findall(r"(\w+)=([0-9.]+)", line))
n = int(n)
print(f"scale n={n} recall10={float(f['recall_at_10']):.3f} p50_ms={f['p50_ms']} p99_ms={f['p99_ms']} "
      f"qps={f['qps']} build_rows_per_s={rate} ram_b_per_vec={int(rss_kb) * 1024 / n:.1f} "
      f"disk_b_per_vec={int(disk_b) / n:.1f} cache_budget={cache}")
PY
  done
  curl -s "$url/v1/collections/scale" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print("  shards", len(c["shard_stats"]), "segments", [len(s["segments"]) for s in c["shard_stats"]])' | tee -a "$out/machine.txt"
  deploy/local/cluster.sh stop >/dev/null
  [ "${KEEP:-0}" = 1 ] || rm -rf "$out/cluster" "$data"
done

python3 - "$results" <<'PY' | tee -a "$results"
import re, sys
rows = [dict(re.findall(r"(\w+)=([0-9.]+|default)", l)) for l in open(sys.argv[1]) if l.startswith("scale n=")]
keys = ["recall10", "p50_ms", "qps", "build_rows_per_s", "ram_b_per_vec", "disk_b_per_vec"]
for cache in ["default", "0"]:
    same = [r for r in rows if r.get("cache_budget") == cache]
    if len(same) >= 2:
        a, b = same[0], same[-1]
        print(f"scale-ratio n={int(b['n'])}/{int(a['n'])} cache_budget={cache} "
              + " ".join(f"{k}={float(b[k]) / float(a[k]):.3f}" for k in keys))
PY
echo "results in $results"

#!/usr/bin/env bash
# `make bench-index`: Engram's DiskANN segments beside faiss (HNSW, IVF-PQ),
# hnswlib, scann and diskannpy, on the same files, one search thread each.
# Writes target/bench-index/results.jsonl, recall/QPS plots and the summary
# lines (`index=... data=... recall10=... qps=... rss_mb=... disk_mb=... build_s=...`).
#
# Sizes (environment): FMNIST_MEMORY (60000), FMNIST_QUERIES (10000),
# SYNTH_N (1000000), SYNTH_QUERIES (1000), GROWING_MAX_ROWS (200000: the
# growing segment is measured only up to this size; it is sealed long before
# in production), REF_TIMEOUT (seconds per reference phase, 3600),
# DISK_SERVE_TIMEOUT (diskannpy disk search, 600), DATASETS ("fmnist synthetic"),
# RESULTS (output file, target/bench-index/results.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/bench_index_setup.sh
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"

FMNIST_MEMORY="${FMNIST_MEMORY:-60000}"
FMNIST_QUERIES="${FMNIST_QUERIES:-10000}"
SYNTH_N="${SYNTH_N:-1000000}"
SYNTH_QUERIES="${SYNTH_QUERIES:-1000}"
GROWING_MAX_ROWS="${GROWING_MAX_ROWS:-200000}"
REF_TIMEOUT="${REF_TIMEOUT:-3600}"
# diskannpy's disk search is known to hang here (libaio); do not wait long.
DISK_SERVE_TIMEOUT="${DISK_SERVE_TIMEOUT:-600}"

target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-index"
mkdir -p "$out"
cargo build --release -q -p engram-bench
bench="$target/release/engram-bench"

fmnist="$out/fmnist-${FMNIST_MEMORY}-${FMNIST_QUERIES}"
synthetic="$out/synthetic-${SYNTH_N}-${SYNTH_QUERIES}"
DATASETS="${DATASETS:-fmnist synthetic}"
dirs=()
for name in $DATASETS; do
  case "$name" in
    fmnist)
      [ -f "$fmnist/meta.json" ] || "$bench" fmnist --out "$fmnist" --memory "$FMNIST_MEMORY" --queries "$FMNIST_QUERIES"
      dirs+=("$fmnist") ;;
    synthetic)
      [ -f "$synthetic/meta.json" ] || "$bench" synthetic --out "$synthetic" --n "$SYNTH_N" --queries "$SYNTH_QUERIES" --dim 128
      dirs+=("$synthetic") ;;
    *) echo "unknown dataset $name (fmnist, synthetic)" >&2; exit 2 ;;
  esac
done

results="${RESULTS:-$out/results.jsonl}"
: >"$results"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
} | tee "$out/machine.txt"
for data in "${dirs[@]}"; do
  work="$data-work"
  mkdir -p "$work"
  "$bench" run --data "$data" --work "$work" --index sealed --phase build
  # Sealed segments served with node cache budgets of 0, 10% and 100% of the
  # segment (disk, DiskANN node cache, whole file in memory).
  "$bench" run --data "$data" --work "$work" --index sealed --phase serve --cache "${CACHE_BUDGETS:-0,0.1,1}" | tee -a "$results"
  rows=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['n'])" "$data/meta.json")
  if [ "$rows" -le "$GROWING_MAX_ROWS" ]; then
    "$bench" run --data "$data" --work "$work" --index growing | tee -a "$results"
  fi
  .bench-venv/bin/python benches/index_refs/run_all.py --data "$data" --work "$work" --timeout "$REF_TIMEOUT" --disk-serve-timeout "$DISK_SERVE_TIMEOUT" | tee -a "$results"
done
.bench-venv/bin/python benches/index_refs/plot.py "$results" "$out" | tee "$results.summary.txt"

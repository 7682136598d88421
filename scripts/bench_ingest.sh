#!/usr/bin/env bash
# `make bench-ingest`: ingestion throughput of a release server on this
# machine, with its references in the same run:
#   - N_EMBEDDINGS (1,000,000) clustered 128-d embeddings in Parquet files,
#     `engram ingest` from the local disk into a 128-d L2 collection, beside
#     faiss HNSW adding the same vectors;
#   - N_IMAGES (5,000) Fashion-MNIST PNGs in a Parquet file, ingested into a
#     collection with the default embedder, beside a Python onnxruntime loop.
# Embeddings go through the bulk path (sealed segments built from the rows)
# and, for comparison, the streaming path (WAL + in-memory graph); each
# measurement has its own server process.
# Prints `ingest kind=<embeddings|images> rows_per_s=<r> peak_rss_mb=<m>`.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
N_EMBEDDINGS="${N_EMBEDDINGS:-1000000}"
N_IMAGES="${N_IMAGES:-5000}"
PYARROW_VERSION=26.0.1
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-ingest"
data="$out/data-$N_EMBEDDINGS-$N_IMAGES"
listen="${ENGRAM_BENCH_LISTEN:-127.0.0.1:7720}"
mkdir -p "$out"

.venv/bin/python -c "import pyarrow" 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check "pyarrow==$PYARROW_VERSION"
scripts/bench_index_setup.sh >/dev/null
[ -f "$data/vectors.npy" ] || .venv/bin/python benches/ingest_refs/make_parquet.py "$data" "$N_EMBEDDINGS" "$N_IMAGES"
cargo build --release -q --bin engram
engram="$target/release/engram"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
} | tee "$out/machine.txt"

# One fresh server per measurement, so that each peak RSS is its own.
start_server() {
  local dir="$out/server-$1"
  rm -rf "$dir"
  # The server reads local files only under its roots: the input's.
  ENGRAM_STORAGE__LOCAL_ROOTS="$(realpath "$data")" \
    "$engram" serve --config config/embedded.toml --listen "$listen" --data-dir "$dir" >"$out/server-$1.log" 2>&1 &
  server=$!
  trap 'kill -TERM $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://$listen/healthz" >/dev/null && break; sleep 0.2; done
  base_rss=$(peak)
}
stop_server() {
  kill -TERM $server; wait $server || true
  trap - EXIT
}
peak() { awk '/VmHWM/{printf "%.0f", $2/1024}' "/proc/$server/status"; }
report() { python3 -c "import json,sys; r=json.load(open(sys.argv[1]))['report']; print(round(r['rows_per_s'], 1), r['segments'], round(r['seconds'], 1))" "$1"; }

# measure NAME KIND PATH ROWS COLLECTION INPUT [ingest flags]: one job on a
# fresh server; prints its summary line.
measure() {
  local name=$1 kind=$2 path=$3 rows=$4 collection=$5 input=$6 extra=""
  shift 6
  start_server "$name"
  curl -sf -X POST "http://$listen/v1/collections" -H 'content-type: application/json' \
    -d "$collection" >/dev/null
  "$engram" ingest "$input" --collection c --server "http://$listen" "$@" --json >"$out/$name.json"
  read -r rate segments seconds < <(report "$out/$name.json")
  [ "$path" = bulk ] && extra=" segments=$segments"
  echo "ingest kind=$kind rows_per_s=$rate peak_rss_mb=$(peak) path=$path rows=$rows$extra seconds=$seconds idle_rss_mb=$base_rss"
  stop_server
}

# Embeddings, bulk path: spills -> sealed DiskANN segments -> attached.
measure embeddings-bulk embeddings bulk "$N_EMBEDDINGS" '{"name":"c","dim":128,"metric":"l2"}' "$data/embeddings" --bulk
# Embeddings, streaming path: WAL + growing in-memory graph per shard.
measure embeddings-stream embeddings stream "$N_EMBEDDINGS" '{"name":"c","dim":128,"metric":"l2"}' "$data/embeddings"
measure images images stream "$N_IMAGES" '{"name":"c","embedder":"default"}' "$data/images/images.parquet"

.bench-venv/bin/python benches/ingest_refs/faiss_add.py "$data/vectors.npy"
.venv/bin/python benches/ingest_refs/python_images.py "$data/images/images.parquet"

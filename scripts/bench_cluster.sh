#!/usr/bin/env bash
# `make bench-cluster`: query latency and throughput through the public API.
#
# PARTS (default "real embedded cluster"):
#   real      the embedded node with REAL_N (100,000) real 1280-d embeddings
#             (Fashion-MNIST training images and their mirror images,
#             EfficientNet-Lite0; queries: 1,000 test images): a collection
#             created without a shard count beside one with 1 shard, both
#             after a user's compaction (`POST .../compact`);
#   embedded  the embedded node on N (50,000) clustered 128-d vectors with 1
#             shard, the default count and 8 shards, one sealed segment each;
#   cluster   a loopback cluster (deploy/local: 3 coordinators, 3 workers,
#             replication 1) on the same data, through coordinator 1: the
#             default count and 1, 2, 4, 8 shards with one sealed segment
#             each, and 1 shard with 4 and 16 sealed segments before and
#             after merging (`POST .../compact`).
# Prints `<label> p50_ms= p99_ms= qps= recall_at_10=` per setting.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh >/dev/null
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
N="${N:-50000}"
DIM="${DIM:-128}"
REAL_N="${REAL_N:-100000}"
CONCURRENCY="${CONCURRENCY:-4}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
PARTS="${PARTS:-real embedded cluster}"
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-cluster"
data="$out/synthetic-$N-$DIM"
real="$out/fmnist-$REAL_N"
mkdir -p "$out"

cargo build --release -q --bin engram -p engram-cli
cargo build --release -q -p engram-bench
engram="$target/release/engram"
bench="$target/release/engram-bench"
[ -f "$data/gt.ibin" ] || "$bench" synthetic --out "$data" --n "$N" --queries 1000 --dim "$DIM"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "data: $N x $DIM and $REAL_N x 1280 (real), 1000 queries, k=10; latency: 1 client; qps: $CONCURRENCY clients"
} | tee "$out/machine.txt"
results="$out/results.txt"
: >"$results"

query() { # url collection data label
  "$bench" query --url "$1" --collection "$2" --data "$3" --label "$4" \
    --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" | tee -a "$results"
}

# One embedded server at a time, on a fresh data directory.
embedded_start() { # name
  listen=127.0.0.1:7730
  rm -rf "$out/$1"
  "$engram" serve --config config/embedded.toml --listen "$listen" --data-dir "$out/$1" >"$out/$1.log" 2>&1 &
  server=$!
  trap 'kill -TERM $server 2>/dev/null || true' EXIT
  for _ in $(seq 100); do curl -sf "http://$listen/healthz" >/dev/null && break; sleep 0.2; done
}
embedded_stop() {
  kill -TERM "$server"; wait "$server" 2>/dev/null || true
  rm -rf "$out/$1"
}

if [[ " $PARTS " == *" real "* ]]; then
  [ -f "$real/gt.ibin" ] || "$bench" fmnist --out "$real" --memory "$REAL_N" --queries 1000
  embedded_start real
  # As a user would: add, compact, query. No shard count: the default.
  "$bench" load --url "http://$listen" --collection default --data "$real" --sealed-parts 0
  query "http://$listen" default "$real" "api data=fmnist-$REAL_N shards=default"
  "$bench" load --url "http://$listen" --collection one --data "$real" --shards 1 --sealed-parts 0
  query "http://$listen" one "$real" "api data=fmnist-$REAL_N shards=1"
  curl -s "http://$listen/v1/collections/default" | python3 -c '
import json, sys
c = json.load(sys.stdin)
for s in c["shard_stats"]:
    print("  default shard", s["shard"], "growing", s["growing_rows"], "sealed", [(g["rows"], g["served_from"]) for g in s["segments"]])' | tee -a "$out/machine.txt"
  embedded_stop real
fi

if [[ " $PARTS " == *" embedded "* ]]; then
  embedded_start embedded
  for shards in 1 default 8; do
    if [[ $shards == default ]]; then flag=(); else flag=(--shards "$shards"); fi
    "$bench" load --url "http://$listen" --collection "e$shards" --data "$data" "${flag[@]}"
    query "http://$listen" "e$shards" "$data" "embedded shards=$shards segments_per_shard=1"
  done
  embedded_stop embedded
fi

[[ " $PARTS " == *" cluster "* ]] || { echo "results in $results"; exit 0; }
export CLUSTER_BIN="$engram" CLUSTER_DIR="$out/cluster"
deploy/local/cluster.sh stop >/dev/null 2>&1 || true
rm -rf "$out/cluster"
trap 'deploy/local/cluster.sh stop >/dev/null 2>&1 || true' EXIT
deploy/local/cluster.sh start
url=http://127.0.0.1:7700
for shards in default 1 2 4 8; do
  if [[ $shards == default ]]; then flag=(); else flag=(--shards "$shards"); fi
  "$bench" load --url "$url" --collection "c$shards" --data "$data" "${flag[@]}" --replication 1
  query "$url" "c$shards" "$data" "cluster shards=$shards segments_per_shard=1"
done
for segments in 4 16; do
  "$bench" load --url "$url" --collection "s$segments" --data "$data" --shards 1 --replication 1 --sealed-parts "$segments"
  query "$url" "s$segments" "$data" "cluster shards=1 segments_per_shard=$segments merged=no"
  "$bench" compact --url "$url" --collection "s$segments"
  query "$url" "s$segments" "$data" "cluster shards=1 segments_per_shard=$segments merged=yes"
done
curl -s "$url/v1/collections/s16" | python3 -c '
import json, sys
c = json.load(sys.stdin)
print("  s16 after merging:", [(g["rows"], g["served_from"]) for s in c["shard_stats"] for g in s["segments"]])' | tee -a "$out/machine.txt"
echo "results in $results"

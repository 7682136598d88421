#!/usr/bin/env bash
# `make bench-cluster`: query latency and throughput through the public API
# on the same data (N clustered 128-d vectors, 1,000 queries, exact ground
# truth), each collection sealed into one DiskANN segment per shard:
#   - the embedded node with 1 and 8 shards;
#   - a loopback cluster (deploy/local: 3 coordinators, 3 workers) with 1, 2,
#     4 and 8 shards, replication 1, measured through coordinator 1.
# Prints `cluster shards=<n> p50_ms=<a> p99_ms=<b> qps=<q> ...` per setting.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
N="${N:-50000}"
DIM="${DIM:-128}"
CONCURRENCY="${CONCURRENCY:-4}"
SECONDS_PER_RUN="${SECONDS_PER_RUN:-10}"
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-cluster"
data="$out/synthetic-$N-$DIM"
mkdir -p "$out"

cargo build --release -q --bin engram -p engram-cli
cargo build --release -q -p engram-bench
engram="$target/release/engram"
bench="$target/release/engram-bench"
[ -f "$data/gt.ibin" ] || "$bench" synthetic --out "$data" --n "$N" --queries 1000 --dim "$DIM"

{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "data: $N x $DIM, 1000 queries, k=10, one sealed segment per shard; latency: 1 client; qps: $CONCURRENCY clients"
} | tee "$out/machine.txt"
results="$out/results.txt"
[[ " ${PARTS:-embedded cluster} " == *" embedded "* ]] && : >"$results"

# The embedded node (PARTS=cluster skips it).
PARTS="${PARTS:-embedded cluster}"
if [[ " $PARTS " == *" embedded "* ]]; then
listen=127.0.0.1:7730
rm -rf "$out/embedded"
"$engram" serve --config config/embedded.toml --listen "$listen" --data-dir "$out/embedded" >"$out/embedded.log" 2>&1 &
server=$!
trap 'kill -TERM $server 2>/dev/null || true' EXIT
for _ in $(seq 100); do curl -sf "http://$listen/healthz" >/dev/null && break; sleep 0.2; done
for shards in 1 8; do
  "$bench" load --url "http://$listen" --collection "e$shards" --data "$data" --shards "$shards"
  "$bench" query --url "http://$listen" --collection "e$shards" --data "$data" \
    --label "embedded shards=$shards" --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" | tee -a "$results"
done
kill -TERM $server; wait $server 2>/dev/null || true
fi

# The cluster.
[[ " $PARTS " == *" cluster "* ]] || exit 0
export CLUSTER_BIN="$engram" CLUSTER_DIR="$out/cluster"
deploy/local/cluster.sh stop >/dev/null 2>&1 || true
rm -rf "$out/cluster"
trap 'deploy/local/cluster.sh stop >/dev/null 2>&1 || true' EXIT
deploy/local/cluster.sh start
for shards in 1 2 4 8; do
  "$bench" load --url http://127.0.0.1:7700 --collection "c$shards" --data "$data" --shards "$shards" --replication 1
  "$bench" query --url http://127.0.0.1:7700 --collection "c$shards" --data "$data" \
    --label "cluster shards=$shards" --concurrency "$CONCURRENCY" --seconds "$SECONDS_PER_RUN" | tee -a "$results"
done
echo "results in $results"

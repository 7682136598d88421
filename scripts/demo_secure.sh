#!/usr/bin/env bash
# `make demo-secure`: the demo with every guard on. Starts the loopback
# cluster of `make cluster` (3 coordinators, 3 workers) in a fresh
# directory with a generated cluster secret and generated public API keys,
# shows that the API refuses a caller without a key (401) and the
# read-only key on a write (403), runs the demo client with the full key,
# and stops the cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
target_dir="${CARGO_TARGET_DIR:-target}"
export CLUSTER_DIR="$target_dir/demo-secure-cluster"
export CLUSTER_BIN="$target_dir/debug/engram"
rm -rf "$CLUSTER_DIR"
key() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }
ENGRAM_SECURITY__API_KEY=$(key)
ENGRAM_SECURITY__READ_ONLY_API_KEY=$(key)
export ENGRAM_SECURITY__API_KEY ENGRAM_SECURITY__READ_ONLY_API_KEY
unset ENGRAM_SECURITY__CLUSTER_SECRET # cluster.sh generates one
# Six processes and the embedder share this machine's cores: while a
# coordinator embeds a batch on every core, a worker's heartbeat can be
# late by seconds. A longer worker timeout keeps that from failing
# workers over (the default, 2 s, is for machines of their own).
export ENGRAM_CLUSTER__WORKER_TIMEOUT_MS="${ENGRAM_CLUSTER__WORKER_TIMEOUT_MS:-15000}"

stop() { deploy/local/cluster.sh stop >/dev/null || true; }
trap stop EXIT
deploy/local/cluster.sh start
base=http://127.0.0.1:7700

# expect CODE METHOD PATH [curl args]: the request must answer CODE.
expect() {
  local want=$1 method=$2 path=$3
  shift 3
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' -X "$method" "$@" "$base$path")
  if [[ $got != "$want" ]]; then
    echo "demo-secure: $method $path answered $got, expected $want" >&2
    exit 1
  fi
  echo "  $method $path -> $got"
}
echo "guards:"
expect 401 GET /v1/collections
expect 401 GET /v1/collections -H "Authorization: Bearer wrong-key-0123456789"
expect 200 GET /v1/collections -H "Authorization: Bearer $ENGRAM_SECURITY__READ_ONLY_API_KEY"
expect 403 POST /v1/collections -H "api-key: $ENGRAM_SECURITY__READ_ONLY_API_KEY" \
  -H 'content-type: application/json' -d '{"name":"x","dim":2}'
# internal ADDR PATH: without the cluster secret an internal route is 401.
internal() {
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' -X POST --data-binary x "http://$1$2")
  [[ $got == 401 ]] || { echo "demo-secure: $1$2 answered $got without the cluster secret" >&2; exit 1; }
  echo "  POST $1$2 without the cluster secret -> 401"
}
internal 127.0.0.1:7800 /raft/vote
internal 127.0.0.1:7810 /internal/v1/scan

# A smaller memory than `make demo` (5,000 images): the point is every
# guard on, end to end; arguments replace these.
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(--train 5000 --test 500)
ENGRAM_API_KEY=$ENGRAM_SECURITY__API_KEY "$CLUSTER_BIN" demo --server "$base" "${args[@]}"
stop
trap - EXIT
echo "cluster stopped"

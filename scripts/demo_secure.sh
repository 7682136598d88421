#!/usr/bin/env bash
# `make demo-secure`: the demo with every guard on. Starts the loopback
# cluster of `make cluster` (3 coordinators, 3 workers) in a fresh
# directory with a generated cluster secret, generated public API keys and
# TLS on every port (a CA made by deploy/local/make-certs.sh; mutual TLS
# between peers), shows that the API refuses a caller without a key (401)
# and the read-only key on a write (403), that an internal port refuses a
# caller without a client certificate (no handshake) and one with a
# certificate but without the secret (401), runs the demo client over
# HTTPS with the full key, and stops the cluster.
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
export CLUSTER_TLS=1
tls_dir="$CLUSTER_DIR/tls"
# Six processes and the embedder share this machine's cores: while a
# coordinator embeds a batch on every core, a worker's heartbeat can be
# late by seconds. A longer worker timeout keeps that from failing
# workers over (the default, 2 s, is for machines of their own).
export ENGRAM_CLUSTER__WORKER_TIMEOUT_MS="${ENGRAM_CLUSTER__WORKER_TIMEOUT_MS:-15000}"

stop() { deploy/local/cluster.sh stop >/dev/null || true; }
trap stop EXIT
deploy/local/cluster.sh start
base=https://127.0.0.1:7700

# expect CODE METHOD PATH [curl args]: the request must answer CODE.
expect() {
  local want=$1 method=$2 path=$3
  shift 3
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tls_dir/ca.pem" -X "$method" "$@" "$base$path")
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
# internal ADDR PATH: without a client certificate the CA signed there is
# no TLS session; with one but without the cluster secret, 401.
internal() {
  local got
  got=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tls_dir/ca.pem" \
    -X POST --data-binary x "https://$1$2" || true)
  [[ $got == 000 ]] || { echo "demo-secure: $1$2 answered $got without a client certificate" >&2; exit 1; }
  echo "  POST $1$2 without a client certificate -> no TLS session"
  got=$(curl -s -o /dev/null -w '%{http_code}' --cacert "$tls_dir/ca.pem" \
    --cert "$tls_dir/node.pem" --key "$tls_dir/node.key" -X POST --data-binary x "https://$1$2")
  [[ $got == 401 ]] || { echo "demo-secure: $1$2 answered $got without the cluster secret" >&2; exit 1; }
  echo "  POST $1$2 with a client certificate, without the cluster secret -> 401"
}
internal 127.0.0.1:7800 /raft/vote
internal 127.0.0.1:7810 /internal/v1/scan

# A smaller memory than `make demo` (5,000 images): the point is every
# guard on, end to end; arguments replace these.
args=("$@")
[[ ${#args[@]} -gt 0 ]] || args=(--train 5000 --test 500)
ENGRAM_API_KEY=$ENGRAM_SECURITY__API_KEY ENGRAM_CA_CERT="$tls_dir/ca.pem" \
  "$CLUSTER_BIN" demo --server "$base" "${args[@]}"
stop
trap - EXIT
echo "cluster stopped"

#!/usr/bin/env bash
# A cluster on loopback: 3 coordinators (public API on 127.0.0.1:7700-7702,
# Raft on 7800-7802) and 3 workers (internal RPC on 7810-7812), each with its
# own data directory under ${CLUSTER_DIR:-data/cluster}.
#   deploy/local/cluster.sh start | stop | status
# The internal routes always need a cluster secret: one is generated on the
# first start into $CLUSTER_DIR/cluster-secret (mode 600) and reused after,
# unless ENGRAM_SECURITY__CLUSTER_SECRET is set. Public API keys are on when
# ENGRAM_SECURITY__API_KEY (and ENGRAM_SECURITY__READ_ONLY_API_KEY) are set
# in the environment; this script's own checks then send the full key.
# With CLUSTER_TLS=1 every port serves TLS: a private CA and a node
# certificate are made once in $CLUSTER_DIR/tls (deploy/local/make-certs.sh),
# the public APIs answer on https:// (clients pass --ca-cert or
# ENGRAM_CA_CERT=$CLUSTER_DIR/tls/ca.pem) and peers use mutual TLS.
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR="${CLUSTER_DIR:-data/cluster}"
BIN="${CLUSTER_BIN:-target/debug/engram}"
# Coordinators load the image embedder: ONNX Runtime from .venv (make setup).
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh 2>/dev/null || true)}"
COORDINATORS=(1 2 3)
WORKERS=(1 2 3)

start_one() { # name config env...
  local name=$1 config=$2
  shift 2
  mkdir -p "$DIR/$name"
  if [[ -f "$DIR/$name.pid" ]] && kill -0 "$(cat "$DIR/$name.pid")" 2>/dev/null; then
    echo "$name already running (pid $(cat "$DIR/$name.pid"))"
    return
  fi
  env "$@" ENGRAM_SERVER__DATA_DIR="$DIR/$name" \
    ENGRAM_STORAGE__SEGMENTS_URI="${ENGRAM_STORAGE__SEGMENTS_URI:-$(realpath -m "$DIR")/segment-store}" \
    nohup "$BIN" serve --config "$config" >"$DIR/$name.log" 2>&1 &
  echo $! >"$DIR/$name.pid"
  echo "started $name (pid $!, log $DIR/$name.log)"
}

# Sets ENGRAM_SECURITY__CLUSTER_SECRET for every process started here.
cluster_secret() {
  if [[ -z "${ENGRAM_SECURITY__CLUSTER_SECRET:-}" ]]; then
    local file="$DIR/cluster-secret"
    if [[ ! -s "$file" ]]; then
      (umask 077 && python3 -c 'import secrets; print(secrets.token_hex(32))' >"$file")
      echo "generated a cluster secret in $file"
    fi
    ENGRAM_SECURITY__CLUSTER_SECRET=$(cat "$file")
  fi
  export ENGRAM_SECURITY__CLUSTER_SECRET
}

SCHEME=http
CURL_TLS=()
# With CLUSTER_TLS=1, sets ENGRAM_SECURITY__TLS__* for every process.
tls() {
  [[ "${CLUSTER_TLS:-0}" == 1 ]] || return 0
  deploy/local/make-certs.sh "$DIR/tls"
  export ENGRAM_SECURITY__TLS__CERT="$(realpath "$DIR/tls/node.pem")"
  export ENGRAM_SECURITY__TLS__KEY="$(realpath "$DIR/tls/node.key")"
  export ENGRAM_SECURITY__TLS__CA="$(realpath "$DIR/tls/ca.pem")"
}
if [[ "${CLUSTER_TLS:-0}" == 1 ]]; then
  SCHEME=https
  CURL_TLS=(--cacert "$DIR/tls/ca.pem")
fi

# curl with the public API key when one is set (and the CA under TLS).
api() {
  if [[ -n "${ENGRAM_SECURITY__API_KEY:-}" ]]; then
    curl -sf "${CURL_TLS[@]}" -H "Authorization: Bearer $ENGRAM_SECURITY__API_KEY" "$@"
  else
    curl -sf "${CURL_TLS[@]}" "$@"
  fi
}

start() {
  [[ -x "$BIN" ]] || { echo "$BIN is missing: run make build first" >&2; exit 1; }
  mkdir -p "$DIR"
  cluster_secret
  tls
  for i in "${COORDINATORS[@]}"; do
    start_one "coordinator-$i" config/coordinator.toml \
      ENGRAM_CLUSTER__NODE_ID="$i" \
      ENGRAM_SERVER__LISTEN="127.0.0.1:$((7699 + i))" \
      ENGRAM_CLUSTER__INTERNAL_LISTEN="127.0.0.1:$((7799 + i))"
  done
  for i in "${WORKERS[@]}"; do
    start_one "worker-$i" config/worker.toml \
      ENGRAM_CLUSTER__NODE_ID="$i" \
      ENGRAM_CLUSTER__INTERNAL_LISTEN="127.0.0.1:$((7809 + i))"
  done
  # Ready when every coordinator knows a leader and sees every worker.
  for _ in $(seq 1 600); do
    local ok=0
    for i in "${COORDINATORS[@]}"; do
      local status
      status=$(api "$SCHEME://127.0.0.1:$((7699 + i))/v1/cluster" || true)
      if [[ -n "$status" ]] && python3 -c '
import json, sys
s = json.loads(sys.argv[1])
sys.exit(0 if s["leader"] and sum(w["healthy"] for w in s["workers"]) == int(sys.argv[2]) else 1)
' "$status" "${#WORKERS[@]}"; then ok=$((ok + 1)); fi
    done
    if [[ $ok == "${#COORDINATORS[@]}" ]]; then
      echo "cluster ready: coordinators on $SCHEME://127.0.0.1:7700, :7701, :7702"
      if [[ $SCHEME == https ]]; then
        echo "TLS on every port: clients trust $DIR/tls/ca.pem (--ca-cert or ENGRAM_CA_CERT)"
      fi
      if [[ -n "${ENGRAM_SECURITY__API_KEY:-}" ]]; then
        echo "public API keys on: clients send ENGRAM_API_KEY (engramctl --api-key)"
      else
        echo "public API open (no ENGRAM_SECURITY__API_KEY): fine on loopback only"
      fi
      return
    fi
    sleep 0.2
  done
  echo "cluster did not become ready in 120 s; see $DIR/*.log" >&2
  exit 1
}

stop() {
  shopt -s nullglob
  for pidfile in "$DIR"/*.pid; do
    local pid
    pid=$(cat "$pidfile")
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
      echo "stopped $(basename "$pidfile" .pid)"
    fi
    rm -f "$pidfile"
  done
}

status() {
  api "$SCHEME://127.0.0.1:7700/v1/cluster" | python3 -m json.tool
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac

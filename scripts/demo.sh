#!/usr/bin/env bash
# Starts the embedded server, runs the demo client against it, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
target_dir="${CARGO_TARGET_DIR:-target}"
engram="$target_dir/debug/engram"
listen="${ENGRAM_DEMO_LISTEN:-127.0.0.1:7700}"
log="$target_dir/demo-server.log"

"$engram" serve --config config/embedded.toml --listen "$listen" >"$log" 2>&1 &
server=$!
stop() {
  if kill -0 "$server" 2>/dev/null; then
    kill -TERM "$server"
    wait "$server" || true
  fi
}
trap stop EXIT
echo "engram serving on $listen (pid $server, log $log)"
if ! "$engram" demo --server "http://$listen" "$@"; then
  echo "demo failed; last lines of the server log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
stop
trap - EXIT
echo "server stopped"

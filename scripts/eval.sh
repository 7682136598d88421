#!/usr/bin/env bash
# `make eval`: starts the example re-ranker (examples/rerankers/) and a
# server on a fresh data directory with the example configured beside the
# shipped config's built-in head, runs `engram eval` against it (writes
# docs/evaluation.md and target/eval/results.json), then draws the plots
# into docs/img with matplotlib from .venv.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
MATPLOTLIB_VERSION=3.10.8
target_dir="${CARGO_TARGET_DIR:-target}"
engram="$target_dir/debug/engram"
listen="${ENGRAM_EVAL_LISTEN:-127.0.0.1:7710}"
data="$target_dir/eval/data"
log="$target_dir/eval/server.log"
results="$target_dir/eval/results.json"
config="$target_dir/eval/engram.toml"
reranker_port="${ENGRAM_EVAL_RERANKER_PORT:-7721}"
reranker_log="$target_dir/eval/reranker.log"

if ! .venv/bin/python -c "import matplotlib" 2>/dev/null; then
  echo "eval: installing matplotlib==$MATPLOTLIB_VERSION into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "matplotlib==$MATPLOTLIB_VERSION"
fi

rm -rf "$data"
mkdir -p "$data"
cp config/embedded.toml "$config"
cat >>"$config" <<EOF

# Added by scripts/eval.sh for section 6 (re-rankers; `head` is in the
# shipped config).
[rerankers.example]
kind = "http"
url = "http://127.0.0.1:$reranker_port/rerank"
timeout_ms = 1000
max_concurrency = 8
mix = 0.5
EOF
.venv/bin/python examples/rerankers/softmax_reranker.py --port "$reranker_port" >"$reranker_log" 2>&1 &
reranker=$!
"$engram" serve --config "$config" --listen "$listen" --data-dir "$data" >"$log" 2>&1 &
server=$!
stop() {
  for pid in "$server" "$reranker"; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid"
      wait "$pid" || true
    fi
  done
}
trap stop EXIT
echo "engram serving on $listen (pid $server, log $log)"
if ! "$engram" eval --server "http://$listen" --results "$results" "$@"; then
  echo "eval failed; last lines of the server log:" >&2
  tail -n 20 "$log" >&2
  exit 1
fi
stop
trap - EXIT
.venv/bin/python tools/plot_eval.py "$results" docs/img
rm -rf "$data"

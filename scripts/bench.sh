#!/usr/bin/env bash
# Runs Engram's benchmarks and the references they are compared with, in one
# run on this machine, and writes target/bench-results/{embed.jsonl,summary.md}.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
out="${CARGO_TARGET_DIR:-target}/bench-results"
mkdir -p "$out"
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
  echo "rustc: $(rustc --version)"
  echo "onnxruntime (python): $(.venv/bin/python -c 'import onnxruntime; print(onnxruntime.__version__)')"
} | tee "$out/machine.txt"

echo "== embedding throughput: Engram (Rust, ort) vs Python onnxruntime, same ONNX file, batch 32"
: >"$out/embed.jsonl"
cargo bench -q -p engram-ingest --bench embed_throughput 2>/dev/null | grep '^{' | tee -a "$out/embed.jsonl"
.venv/bin/python benches/embed_onnxruntime.py | tee -a "$out/embed.jsonl"

echo "== re-rankers in process: head prediction, fusion, a training epoch (criterion)"
cargo bench -q -p engram-core --bench rerank -- --noplot 2>/dev/null | grep -E "time:|thrpt:|rerank/" | tee "$out/rerank.txt"

echo "== exact search (criterion)"
cargo bench -q -p engram-index --bench flat_search -- --noplot 2>/dev/null | grep -E "time:|thrpt:|flat_" | tee "$out/flat_search.txt"
echo "== exact search reference: numpy (BLAS) on the same sizes"
.venv/bin/python benches/flat_search_numpy.py | tee -a "$out/flat_search.txt"

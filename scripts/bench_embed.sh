#!/usr/bin/env bash
# `make bench-embed`: `engram embed` images/s per process on this machine's
# CPU at batch 32 and 64 (default threads), beside the Python onnxruntime
# loop over the same Parquet file, model, batch and threads, in the same
# run. Uses bench-ingest's image Parquet (N_IMAGES Fashion-MNIST PNGs).
# Prints `embed provider=<cpu|cuda> batch=<b> images_per_s=<r>`.
set -euo pipefail
cd "$(dirname "$0")/.."
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
N_IMAGES="${N_IMAGES:-5000}"
PROVIDER="${PROVIDER:-cpu}"
target="${CARGO_TARGET_DIR:-target}"
out="$target/bench-embed"
data="$target/bench-ingest/data-1000000-$N_IMAGES"
mkdir -p "$out"
.venv/bin/python -c "import pyarrow" 2>/dev/null || .venv/bin/pip install -q --disable-pip-version-check "pyarrow==26.0.1"
[ -f "$data/images/images.parquet" ] || .venv/bin/python benches/ingest_refs/make_parquet.py "$data" 1000000 "$N_IMAGES"
cargo build --release -q --bin engram
{
  echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n1), $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB"
} | tee "$out/machine.txt"
for batch in 32 64; do
  rm -rf "$out/parts-$batch"
  ENGRAM_LOG=warn "$target/release/engram" embed "$data/images/images.parquet" "$out/parts-$batch" \
    --part 0/1 --batch "$batch" --provider "$PROVIDER" 2>&1 >/dev/null | grep '^embed ' | tee -a "$out/results.txt"
  ENGRAM_BATCH=$batch ENGRAM_REF_PREFIX="embed-ref provider=cpu batch=$batch" \
    .venv/bin/python benches/ingest_refs/python_images.py "$data/images/images.parquet" | tee -a "$out/results.txt"
done

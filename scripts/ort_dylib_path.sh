#!/usr/bin/env bash
# Prints the path of the ONNX Runtime shared library inside .venv.
cd "$(dirname "$0")/.."
lib=$(ls -1 "$PWD"/.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.1.* 2>/dev/null | head -n 1)
[ -n "$lib" ] || { echo "no libonnxruntime.so in .venv; run scripts/setup.sh" >&2; exit 1; }
echo "$lib"

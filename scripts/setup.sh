#!/usr/bin/env bash
# Installs what Engram's demo, tests and benchmarks need on a fresh machine,
# skipping whatever is already there:
#   - Fashion-MNIST (Debian package dataset-fashion-mnist),
#   - a project-local venv (.venv) with the onnxruntime wheel, whose
#     libonnxruntime.so the Rust code loads through ORT_DYLIB_PATH,
#   - for the decision page's browser test: Chromium (Debian package
#     chromium) and Playwright (into .venv; it drives that Chromium, it
#     downloads no browser of its own),
#   - for the ingestion tests: moto_server (moto[server], into .venv), the
#     S3-compatible server the tests start on 127.0.0.1,
#   - for the Python client's tests: setuptools and wheel (into .venv), to
#     install clients/python from the working tree.
set -euo pipefail
cd "$(dirname "$0")/.."

ONNXRUNTIME_VERSION="${ONNXRUNTIME_VERSION:-1.32.0}"
PLAYWRIGHT_VERSION="${PLAYWRIGHT_VERSION:-1.65.2}"
MOTO_VERSION="${MOTO_VERSION:-5.2.5}"
DATASET_DIR=/usr/share/datasets/fashion-mnist

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    echo "setup: need root to run: $*" >&2; exit 1; fi
}

missing=()
[ -f "$DATASET_DIR/train-images-idx3-ubyte.gz" ] || missing+=(dataset-fashion-mnist)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! ls .venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so."$ONNXRUNTIME_VERSION" >/dev/null 2>&1 || ! .venv/bin/python -c "import PIL, numpy" 2>/dev/null; then
  echo "setup: creating .venv with onnxruntime==$ONNXRUNTIME_VERSION"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check "onnxruntime==$ONNXRUNTIME_VERSION" "numpy==2.4.6" "pillow==13.0.0"
fi

if ! .venv/bin/python -c "import playwright" 2>/dev/null; then
  echo "setup: installing playwright==$PLAYWRIGHT_VERSION into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "playwright==$PLAYWRIGHT_VERSION"
fi

if [ ! -x .venv/bin/moto_server ]; then
  echo "setup: installing moto[server]==$MOTO_VERSION into .venv"
  .venv/bin/pip install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi

# The Python client's tests install clients/python from the working tree
# (pip install --no-build-isolation): its build backend must be in .venv.
if ! .venv/bin/python -c "import setuptools, wheel" 2>/dev/null; then
  echo "setup: installing setuptools and wheel into .venv (builds clients/python)"
  .venv/bin/pip install -q --disable-pip-version-check "setuptools==80.9.0" "wheel==0.45.1"
fi

echo "setup: ok (ORT_DYLIB_PATH=$(scripts/ort_dylib_path.sh))"

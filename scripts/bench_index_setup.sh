#!/usr/bin/env bash
# Sets up the Python reference side of the ANN index benchmark
# (benches/index_refs/). Idempotent; run from the repo root.
#
#   .bench-venv          faiss-cpu, hnswlib, scann, numpy 2.x, matplotlib
#   .bench-venv-diskann  diskannpy 0.7.0 + numpy 1.25.0 (diskannpy pins
#                        numpy==1.25 and its allocator clashes with scann's,
#                        so it lives in its own venv and process)
#
# hnswlib 0.8.0 ships only an sdist on PyPI: it is compiled here (needs g++).
set -euo pipefail

PY="${PYTHON:-python3}"

FAISS_VER=1.13.2
HNSWLIB_VER=0.8.0
SCANN_VER=1.4.2
NUMPY_VER=2.2.6
MPL_VER=3.10.8
DISKANNPY_VER=0.7.0
NUMPY_DISKANN_VER=1.25.0   # diskannpy 0.7.0 requires numpy==1.25 (== 1.25.0)

if [ ! -f Cargo.toml ] || [ ! -d benches ]; then
    echo "run from the repo root" >&2
    exit 1
fi

ensure_venv() {  # ensure_venv DIR IMPORT_CHECK PKG...
    local dir="$1" check="$2"
    shift 2
    if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
        echo "$dir: ok (packages already import)"
        return 0
    fi
    if [ ! -x "$dir/bin/python" ]; then
        echo "$dir: creating venv"
        "$PY" -m venv "$dir"
    fi
    "$dir/bin/python" -m pip install -q --upgrade pip
    "$dir/bin/python" -m pip install -q "$@"
    "$dir/bin/python" -c "$check"
    echo "$dir: installed"
}

ensure_venv .bench-venv \
    "import faiss, hnswlib, scann, numpy, matplotlib; assert numpy.__version__ == '$NUMPY_VER' and faiss.__version__ == '$FAISS_VER'" \
    "numpy==$NUMPY_VER" "faiss-cpu==$FAISS_VER" "hnswlib==$HNSWLIB_VER" \
    "scann==$SCANN_VER" "matplotlib==$MPL_VER"

ensure_venv .bench-venv-diskann \
    "import diskannpy, numpy; assert numpy.__version__ == '$NUMPY_DISKANN_VER'" \
    "numpy==$NUMPY_DISKANN_VER" "diskannpy==$DISKANNPY_VER"

#!/usr/bin/env bash
# `make test-engines`: runs examples/spark/embed_parts.py on a local Spark
# (local[2]) and examples/ray/embed_parts.py on a local Ray, each with PARTS
# parts (default 4), against a moto_server on 127.0.0.1, and checks that the
# parts they write hold exactly the rows (id, label, embedding within 1e-5, in
# input order) of one `engram embed INPUT OUTPUT --part 0/1` run over the same
# input: 320 Fashion-MNIST PNGs (one not an image) in 2 files of 4 row groups.
# The examples run as documented: `engram` from PATH, S3 from AWS_* variables,
# the container's config (deploy/docker/config/embedded.toml, whose relative
# model path resolves in ENGRAM_DIR, here the repository), the driver in a
# scratch directory. Prints
#   engines spark parts=4 rows=.. equal=true seconds=.. max_abs_diff=..
#   engines ray parts=4 rows=.. equal=true seconds=.. max_abs_diff=..
# and exits 1 on any mismatch or failed run. Not part of `make test`: it
# installs pyspark and ray (about 1 GB) into .venv-engines and needs Java 17+.
# ENGRAM_BIN: the engram binary (default target/debug/engram, which `make
# test-engines` builds). RAY_TASK_CPUS: CPUs each Ray task asks for (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

PYSPARK_VERSION=4.0.5
RAY_VERSION=2.60.0
PYARROW_VERSION=26.0.1
NUMPY_VERSION=2.4.6
PILLOW_VERSION=13.0.0
PARTS="${PARTS:-4}"
RAY_TASK_CPUS="${RAY_TASK_CPUS:-2}"
ENGRAM_BIN="$(realpath -m "${ENGRAM_BIN:-${CARGO_TARGET_DIR:-target}/debug/engram}")"
venv="$root/.venv-engines"
bucket=engines-test
config="$root/deploy/docker/config/embedded.toml"

[ -x "$ENGRAM_BIN" ] || { echo "test-engines: no engram binary at $ENGRAM_BIN (make test-engines builds it)" >&2; exit 1; }
[ -x .venv/bin/moto_server ] || { echo "test-engines: no .venv/bin/moto_server: run scripts/setup.sh" >&2; exit 1; }
java -version >/dev/null 2>&1 || { echo "test-engines: Spark needs Java 17 or later on PATH" >&2; exit 1; }

want="$PYSPARK_VERSION $RAY_VERSION $PYARROW_VERSION $NUMPY_VERSION $PILLOW_VERSION"
have=$("$venv/bin/python" -c "import pyspark, ray, pyarrow, numpy, PIL; print(pyspark.__version__, ray.__version__, pyarrow.__version__, numpy.__version__, PIL.__version__)" 2>/dev/null || true)
if [ "$have" != "$want" ]; then
  echo "test-engines: installing pyspark==$PYSPARK_VERSION ray==$RAY_VERSION pyarrow==$PYARROW_VERSION into .venv-engines"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "pyspark==$PYSPARK_VERSION" "ray==$RAY_VERSION" \
    "pyarrow==$PYARROW_VERSION" "numpy==$NUMPY_VERSION" "pillow==$PILLOW_VERSION"
fi

mkdir -p "${CARGO_TARGET_DIR:-target}"
tmp=$(realpath "$(mktemp -d "${CARGO_TARGET_DIR:-target}/engines-XXXXXX")")
moto_pid=""
engine_pid=""
ray_tmp=""
cleanup() {
  # The engine's whole process group (spark-submit's JVM and Python workers,
  # Ray's GCS, raylet and workers) if it is still there, then moto.
  if [ -n "$engine_pid" ]; then kill -- "-$engine_pid" 2>/dev/null || true; fi
  if [ -n "$moto_pid" ]; then kill "$moto_pid" 2>/dev/null || true; wait "$moto_pid" 2>/dev/null || true; fi
  if [ -n "$ray_tmp" ] && [ "$ray_tmp" != "$tmp" ]; then rm -rf "$ray_tmp"; fi
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# moto_server on a free loopback port, with the bucket.
port=$("$venv/bin/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
endpoint="http://127.0.0.1:$port"
.venv/bin/moto_server -H 127.0.0.1 -p "$port" >"$tmp/moto.log" 2>&1 &
moto_pid=$!
for _ in $(seq 300); do curl -sf -o /dev/null "$endpoint" && break; sleep 0.1; done
curl -sf -o /dev/null -X PUT "$endpoint/$bucket" || { echo "test-engines: moto_server did not answer" >&2; cat "$tmp/moto.log" >&2; exit 1; }

# What the examples' tasks inherit: engram on PATH, S3 (plain HTTP on
# loopback included) through the AWS_* variables alone.
export PATH="$(dirname "$ENGRAM_BIN"):$PATH"
export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort_dylib_path.sh)}"
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
export AWS_ENDPOINT_URL="$endpoint" AWS_EC2_METADATA_DISABLED=true
export AWS_ALLOW_HTTP=true ENGRAM_LOG=warn ENGRAM_DIR="$root"
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

"$venv/bin/python" scripts/test_engines_check.py input "$endpoint" "$bucket" images

# The reference: one process over everything.
since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
start=$EPOCHREALTIME
if ! engram embed "s3://$bucket/images" "s3://$bucket/reference" --part 0/1 --config "$config" \
  >"$tmp/reference.out" 2>"$tmp/reference.log"; then
  echo "test-engines: the reference run failed:" >&2; cat "$tmp/reference.log" >&2; exit 1
fi
sed 's/^/reference: /' "$tmp/reference.out"
echo "reference: $(grep '^embed ' "$tmp/reference.log" || true) seconds=$(since "$start")"

failed=0
# run NAME COMMAND...: the engine in the scratch directory, in its own process
# group; its parts' lines are shown, its log only if it fails.
run() {
  local name=$1; shift
  local start=$EPOCHREALTIME
  (cd "$tmp" && exec setsid "$@") >"$tmp/$name.out" 2>"$tmp/$name.log" &
  engine_pid=$!
  local rc=0
  wait "$engine_pid" || rc=$?
  local seconds
  seconds=$(since "$start")
  kill -- "-$engine_pid" 2>/dev/null || true  # anything of it still there
  engine_pid=""
  if [ "$rc" = 0 ]; then
    grep -E '^[0-9]+ part ' "$tmp/$name.out" | sed "s/^/$name: /" || true
  else
    echo "test-engines: $name exited $rc; the end of its output and log:" >&2
    tail -n 30 "$tmp/$name.out" >&2
    tail -n 30 "$tmp/$name.log" >&2
  fi
  "$venv/bin/python" scripts/test_engines_check.py compare "$endpoint" "$bucket" reference "$name" "$PARTS" "$name" "$seconds" \
    || failed=1
}

run spark env SPARK_LOCAL_IP=127.0.0.1 PYSPARK_PYTHON="$venv/bin/python" PYSPARK_DRIVER_PYTHON="$venv/bin/python" \
  "$venv/bin/spark-submit" --master 'local[2]' --conf spark.ui.enabled=false \
  --conf spark.local.dir="$tmp/spark-local" \
  "$root/examples/spark/embed_parts.py" "s3://$bucket/images" "s3://$bucket/spark" "$PARTS" "$config"

# Ray's sockets live under RAY_TMPDIR (a Unix socket path has at most 107
# bytes); RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 makes a local Ray use 127.0.0.1.
ray_tmp="$tmp"
[ ${#tmp} -le 40 ] || ray_tmp=$(mktemp -d /tmp/engines-ray-XXXXXX)
run ray env RAY_TMPDIR="$ray_tmp" RAY_USAGE_STATS_ENABLED=0 RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 \
  ENGRAM_TASK_CPUS="$RAY_TASK_CPUS" \
  "$venv/bin/python" "$root/examples/ray/embed_parts.py" "s3://$bucket/images" "s3://$bucket/ray" "$PARTS" "$config"

if [ "$failed" != 0 ]; then echo "test-engines: FAILED" >&2; exit 1; fi
echo "test-engines: ok"

#!/usr/bin/env bash
# `make fuzz`: runs each cargo-fuzz target (fuzz/fuzz_targets) for
# FUZZ_SECONDS (default 60) with AddressSanitizer on nightly, starting from
# the committed seeds (fuzz/seeds/<target>/) and the corpus of earlier runs.
# Installs cargo-fuzz when missing. A crash stops the run, leaves the input
# under fuzz/artifacts/<target>/ and exits non-zero. Prints one line per
# target and `fuzz-targets targets=<n> runs=<r> crashes=<c>`.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
FUZZ_SECONDS="${FUZZ_SECONDS:-60}"
TOOLCHAIN="${FUZZ_TOOLCHAIN:-nightly}"
if ! rustup run "$TOOLCHAIN" rustc --version >/dev/null 2>&1; then
  echo "installing the $TOOLCHAIN toolchain (cargo-fuzz needs it)"
  rustup toolchain install "$TOOLCHAIN" --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install --locked cargo-fuzz@0.13.2
fi
targets=(wal_reader segment_manifest raft_log parquet_rows)
total_runs=0
crashes=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  log="$(mktemp)"
  if cargo "+$TOOLCHAIN" fuzz run "$t" "corpus/$t" "seeds/$t" -- \
      -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1; then
    status=ok
  else
    status=crash
    crashes=$((crashes + 1))
    tail -40 "$log"
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  runs=${runs:-0}
  total_runs=$((total_runs + runs))
  echo "fuzz target=$t seconds=$FUZZ_SECONDS runs=$runs status=$status"
  rm -f "$log"
done
echo "fuzz-targets targets=${#targets[@]} runs=$total_runs crashes=$crashes"
[ "$crashes" -eq 0 ]

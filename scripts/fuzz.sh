#!/usr/bin/env bash
# Runs every fuzz target in fuzz/ for FUZZ_SECONDS each (default 600) and
# prints how many inputs each ran. A crash stops the run with the target's
# name; libFuzzer leaves the input in fuzz/artifacts/<target>/.
#
# New inputs go to a scratch corpus (FUZZ_WORK, default target/fuzz-corpus);
# the committed seeds in fuzz/corpus/<target>/ are only read.
#   FUZZ_SECONDS=30 scripts/fuzz.sh            every target, 30 s each
#   FUZZ_TARGETS="qmp_line state_json" scripts/fuzz.sh
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-600}
work=${FUZZ_WORK:-$PWD/target/fuzz-corpus}
targets=${FUZZ_TARGETS:-$(cargo +nightly fuzz list --fuzz-dir fuzz)}

start=$(date +%s)
cargo +nightly fuzz build -O --fuzz-dir fuzz
echo "fuzz: built every target in $(( $(date +%s) - start )) s" >&2

summary=()
for t in $targets; do
  mkdir -p "$work/$t" "fuzz/corpus/$t"
  log=$(mktemp)
  echo "fuzz: $t for $seconds s" >&2
  if ! cargo +nightly fuzz run -O --fuzz-dir fuzz "$t" "$work/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      >"$log" 2>&1; then
    tail -60 "$log" >&2
    echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  summary+=("$(printf '%-20s %12s runs in %s s' "$t" "${runs:-?}" "$seconds")")
  rm -f "$log"
done
printf 'fuzz: %s\n' "${summary[@]}"

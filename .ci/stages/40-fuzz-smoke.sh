#!/usr/bin/env bash
# Fuzz smoke: builds the cargo-fuzz targets in fuzz/ (libFuzzer, no sanitizer) and runs each
# for a short time from its seed corpus. Prints the executions per target; fails on a crash,
# a failed assertion, a timeout or an out-of-memory input (libFuzzer writes the input to
# fuzz/artifacts/<target>/).
#
# MC_FUZZ_SECONDS   seconds per target (default 30)
# MC_FUZZ_TARGETS   space-separated subset of targets (default: all of `cargo fuzz list`)
# MC_CI_RECLAIM_DISK  1: delete target/debug first (set by .ci/run in a throwaway clone)
#
# cargo-fuzz wants a nightly compiler; on a stable toolchain RUSTC_BOOTSTRAP=1 lets it use the
# unstable flags it needs, for the fuzz crate's build only (its own workspace and target dir).
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds="${MC_FUZZ_SECONDS:-30}"

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
if ! rustc --version | grep -q nightly; then
  export RUSTC_BOOTSTRAP=1
fi

# In CI (a throwaway clone, last stage) the test build is no longer needed: free its disk
# before the fuzz build, which cannot share it (different flags).
if [ "${MC_CI_RECLAIM_DISK:-0}" = 1 ]; then
  rm -rf target/debug
fi

# Codegen units trade a little fuzzing speed for a much faster build.
cargo fuzz build --sanitizer none --codegen-units 16

targets="${MC_FUZZ_TARGETS:-$(cargo fuzz list)}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

status=0
summary=()
for t in $targets; do
  mkdir -p "$work/$t"
  seeds="fuzz/corpus/$t"
  [ -d "$seeds" ] || seeds=""
  log="$work/$t.log"
  echo "--- fuzz $t for ${seconds}s"
  # New inputs go to the scratch corpus (first directory); the seeds are only read.
  if cargo fuzz run --sanitizer none --codegen-units 16 "$t" "$work/$t" $seeds -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"$log" 2>&1; then
    result=ok
  else
    result=FAILED
    status=1
    grep -E "panicked|ERROR|SUMMARY|Test unit written|assert" "$log" | head -20 || true
    tail -n 30 "$log"
  fi
  execs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  summary+=("$t: ${execs:-?} executions in ${seconds}s, $result")
  echo "${summary[-1]}"
done

echo "--- fuzz smoke summary"
printf '%s\n' "${summary[@]}"
exit $status

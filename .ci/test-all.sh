#!/usr/bin/env bash
# The whole test suite: installs what is missing, then lint, unit and integration tests
# (real servers on loopback), manifest/alert checks, live Prometheus checks, browser and
# interop tests. Prints one summary line `N passed, N failed` at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
export MC_BOOTSTRAP_TEST_TOOLS=1
# One build, no incremental caches: keeps a cold run's target directory small (CI disks are).
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
.ci/bootstrap.sh || { echo "bootstrap failed"; echo "0 passed, 1 failed"; exit 1; }

passed=0
failed=0
failures=()
stage() {
  local name="$1"; shift
  echo "=== stage: $name"
  local start=$SECONDS
  echo "disk free: $(df -h --output=avail . | tail -1 | tr -d ' ')"
  if "$@"; then
    passed=$((passed + 1)); echo "=== stage ok: $name ($((SECONDS - start)) s)"
  else
    failed=$((failed + 1)); failures+=("$name"); echo "=== stage FAILED: $name ($((SECONDS - start)) s)"
  fi
}

stage "rustfmt" cargo fmt --all -- --check
stage "clippy" cargo clippy --workspace --all-targets --locked -- -D warnings
stage "unit and integration tests" cargo nextest run --workspace --locked --no-fail-fast
for s in .ci/stages/*.sh; do
  [ -x "$s" ] && stage "$(basename "$s" .sh)" "$s"
done

echo
if [ ${#failures[@]} -gt 0 ]; then echo "failed stages: ${failures[*]}"; fi
echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

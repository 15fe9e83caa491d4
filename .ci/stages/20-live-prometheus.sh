#!/usr/bin/env bash
# A real mc on loopback, scraped by promtool and by a real Prometheus server evaluating the
# alert rules; a runbook query must return data.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The workspace test build (same features as the test stage: nothing rebuilt) makes target/debug/mc.
cargo nextest run --workspace --locked --no-run --cargo-quiet
dir=$(mktemp -d)
port_ctl=$((20000 + RANDOM % 20000))
target/debug/mc serve --dev --dev-dir "$dir/dev" --listen 127.0.0.1:0 \
  --control-listen "127.0.0.1:$port_ctl" --shards 2 --io-memory 262144 --log-level warn \
  >"$dir/mc.out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do
  grep -q '^listening ' "$dir/mc.out" && break
  sleep 0.2
done
grep '^listening ' "$dir/mc.out"
tests/deploy/check_live_metrics.sh "http://127.0.0.1:$port_ctl/metrics"
tests/deploy/prometheus_live.sh "127.0.0.1:$port_ctl"

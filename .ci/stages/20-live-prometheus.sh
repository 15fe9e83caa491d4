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
# A connection flood on the control port (500 silent, then 500 dripping connections) while
# Prometheus scrapes: probes answer within 1 s, scrapes and rule evaluation carry on, the
# refusals reach Prometheus, and the log gets summary lines only (docs/security.md).
python3 tests/deploy/control_flood.py --control "127.0.0.1:$port_ctl" --seconds 40 >"$dir/flood.out" 2>&1 &
flood=$!
tests/deploy/check_live_metrics.sh "http://127.0.0.1:$port_ctl/metrics"
PROM_EXTRA_QUERIES='mc_control_refusals_total{reason="peer_limit"} > 0' \
  tests/deploy/prometheus_live.sh "127.0.0.1:$port_ctl"
flood_rc=0
wait "$flood" || flood_rc=$?
cat "$dir/flood.out"
[ "$flood_rc" = 0 ] || { echo "control port flood: probes failed"; exit 1; }
summaries=$(grep -c "control port:" "$dir/mc.out" || true)
echo "control port summary log lines during the flood: $summaries"
[ "$summaries" -ge 1 ] && [ "$summaries" -le 8 ] || { echo "expected 1..8 summary lines"; exit 1; }

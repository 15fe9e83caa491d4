#!/usr/bin/env bash
# Sweeps the per-sender message rate of the `meetings` scenario and prints one row per rate,
# to find the knee (where delivery p99 leaves the floor and delivered/s stops following sent/s).
# `udp_drops` is the kernel's receive-queue drops on the server's port (same host only).
#
#   loadtest/scripts/knee.sh [RATES] [-- extra mc-loadtest flags]
#   RATES defaults to "1 2 3 4 5 6 8 10"; needs jq and a running `mc serve --dev`.
#
# Environment: LOADTEST (binary, default target/release/mc-loadtest), METRICS_URL
# (default http://127.0.0.1:8080/metrics), MEETINGS (200), PARTICIPANTS (5), DURATION (20s),
# WARMUP (5s), RAMP (5s).
set -euo pipefail

rates="${1:-1 2 3 4 5 6 8 10}"
shift || true
[[ "${1:-}" == "--" ]] && shift
bin="${LOADTEST:-target/release/mc-loadtest}"
metrics="${METRICS_URL:-http://127.0.0.1:8080/metrics}"

printf '%6s %10s %12s %9s %9s %9s %9s %10s %8s %12s %10s\n' \
  rate sent/s delivered/s p50_ms p99_ms p99.9_ms max_ms lost errors cpu_s/M udp_drops
for r in $rates; do
  out=$("$bin" --scenario meetings \
    --meetings "${MEETINGS:-200}" --participants "${PARTICIPANTS:-5}" --rate "$r" \
    --ramp "${RAMP:-5s}" --duration "${DURATION:-20s}" --warmup "${WARMUP:-5s}" \
    --metrics-url "$metrics" --leave-at-end --json --quiet "$@" 2>/dev/null)
  jq -r --arg r "$r" '[
      $r,
      (.messages.sent_per_s | floor),
      (.messages.delivered_per_s | floor),
      .latency.delivery.p50_ms, .latency.delivery.p99_ms,
      .latency.delivery.p99_9_ms, .latency.delivery.max_ms,
      .deliveries.lost,
      ([.errors[]] | add // 0),
      (.server.cpu_seconds_per_million_deliveries // "-"),
      (.kernel_udp_drops.server_port // "-")
    ] | @tsv' <<<"$out" |
    awk -F'\t' '{ printf "%6s %10s %12s %9.3f %9.3f %9.3f %9.3f %10s %8s %12s %10s\n",
                   $1, $2, $3, $4, $5, $6, $7, $8, $9,
                   ($10 == "-" ? "-" : sprintf("%.2f", $10)), $11 }'
done

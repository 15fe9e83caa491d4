#!/usr/bin/env bash
# Run a real Prometheus server against a running MC.
#
#   tests/deploy/prometheus_live.sh 127.0.0.1:8080     # the MC's control address
#
# Starts `prometheus` (Debian package) on a free loopback port with a temporary
# config that scrapes HOST:PORT/metrics every 2 s as job "meeting-controller" and
# loads deploy/prometheus/rules.yml. Then, with bounded waits:
#   1. the server becomes ready;
#   2. the target is scraped and healthy (up == 1, no scrape error);
#   3. `sum by(actor_type) (mc_actor_mailbox_depth)` and `mc_meetings_active`
#      return data;
#   4. every rule group has been evaluated and every rule reports health "ok"
#      (no evaluation errors) in /api/v1/rules.
# The server and its temporary directory are removed on exit (trap).
# Environment: PROMETHEUS (binary, default `prometheus`), PROM_WAIT (seconds for
# each wait, default 90; rule groups evaluate every 30 s), PROM_EXTRA_QUERIES
# (more queries that must return data, one per line).
# Exit status: 0 when every check passes, 1 otherwise, 2 on usage errors.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 MC_CONTROL_ADDR   (HOST:PORT of the MC's control listener, e.g. 127.0.0.1:8080)" >&2
    exit 2
fi
target=${1#http://}
target=${target%%/*}
if [[ ! $target =~ ^[^:/[:space:]]+:[0-9]+$ && ! $target =~ ^\[[0-9a-fA-F:]+\]:[0-9]+$ ]]; then
    echo "prometheus_live: expected HOST:PORT, got '$1'" >&2
    exit 2
fi

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
rules=$root/deploy/prometheus/rules.yml
prom=${PROMETHEUS:-prometheus}
wait_s=${PROM_WAIT:-90}
for tool in "$prom" curl python3; do
    command -v "$tool" >/dev/null || { echo "prometheus_live: $tool not found" >&2; exit 2; }
done

tmp=$(mktemp -d)
pid=""
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
api=http://127.0.0.1:$port

cat >"$tmp/prometheus.yml" <<EOF
global:
  scrape_interval: 2s
  scrape_timeout: 2s
  evaluation_interval: 2s
rule_files:
  - $rules
scrape_configs:
  - job_name: meeting-controller
    metrics_path: /metrics
    static_configs:
      - targets: ["$target"]
EOF

"$prom" --config.file="$tmp/prometheus.yml" \
    --storage.tsdb.path="$tmp/data" \
    --web.listen-address="127.0.0.1:$port" \
    --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pid=$!
echo "prometheus_live: prometheus (pid $pid) on $api scraping $target"

passed=0
failed=0
pass() { passed=$((passed + 1)); echo "  ok    $1"; }
fail() { failed=$((failed + 1)); echo "  FAIL  $1${2:+: $2}"; }
finish() {
    if [[ $failed -ne 0 ]]; then
        echo "--- prometheus log (last 40 lines) ---"
        tail -n 40 "$tmp/prometheus.log" || true
    fi
    echo "prometheus_live: $passed passed, $failed failed"
    [[ $failed -eq 0 ]]
    exit $?
}

# wait_for SECONDS CMD...: retry CMD every second until it succeeds or time runs out.
wait_for() {
    local deadline=$((SECONDS + $1))
    shift
    while ((SECONDS < deadline)); do
        if "$@"; then return 0; fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 1
    done
    return 1
}

# query EXPR: prints the number of series in the instant-query result.
query() {
    curl -fsS --max-time 5 "$api/api/v1/query" --data-urlencode "query=$1" |
        python3 -c 'import json,sys; d=json.load(sys.stdin); assert d["status"]=="success"; print(len(d["data"]["result"]))'
}
has_data() { local n; n=$(query "$1" 2>/dev/null) && [[ $n -gt 0 ]]; }

ready() { curl -fsS --max-time 2 "$api/-/ready" >/dev/null 2>&1; }
if wait_for 30 ready; then pass "prometheus ready"; else fail "prometheus ready" "not ready in 30 s"; finish; fi

target_up() {
    curl -fsS --max-time 5 "$api/api/v1/targets?state=active" | python3 -c '
import json, sys
ts = [t for t in json.load(sys.stdin)["data"]["activeTargets"] if t["labels"].get("job") == "meeting-controller"]
sys.exit(0 if ts and all(t["health"] == "up" and not t.get("lastError") for t in ts) else 1)'
}
data_wait=20
if wait_for "$wait_s" target_up; then
    pass "target $target scraped (health up)"
else
    data_wait=1  # no point waiting for data from a target that is down
    err=$(curl -fsS --max-time 5 "$api/api/v1/targets" | python3 -c '
import json, sys
for t in json.load(sys.stdin)["data"]["activeTargets"]:
    print(t["scrapeUrl"], t["health"], t.get("lastError", ""))' 2>/dev/null || true)
    fail "target $target scraped" "$err"
fi

if wait_for "$data_wait" has_data 'up{job="meeting-controller"} == 1'; then pass 'up{job="meeting-controller"} == 1'; else fail "up == 1"; fi
for q in 'sum by(actor_type) (mc_actor_mailbox_depth)' 'mc_meetings_active'; do
    if wait_for "$data_wait" has_data "$q"; then
        pass "query returns data: $q ($(query "$q") series)"
    else
        fail "query returns data: $q" "empty result"
    fi
done

while IFS= read -r q; do
    [[ -n $q ]] || continue
    if wait_for "$data_wait" has_data "$q"; then
        pass "query returns data: $q"
    else
        fail "query returns data: $q" "empty result"
    fi
done <<<"${PROM_EXTRA_QUERIES:-}"

# Rules: every group evaluated at least once, every rule healthy.
rules_state() {
    curl -fsS --max-time 5 "$api/api/v1/rules" | python3 -c '
import json, sys
groups = json.load(sys.stdin)["data"]["groups"]
rules = [r for g in groups for r in g["rules"]]
pending = [g["name"] for g in groups if g.get("lastEvaluation", "").startswith("0001-")]
bad = ["%s: %s %s" % (r["name"], r.get("health"), r.get("lastError", "")) for r in rules if r.get("health") != "ok"]
print("groups=%d rules=%d not_evaluated=%s unhealthy=%s" % (len(groups), len(rules), pending, bad))
sys.exit(0 if groups and rules and not pending and not bad else 1)'
}
rules_ok() { rules_state >"$tmp/rules.state" 2>&1; }
if wait_for "$wait_s" rules_ok; then
    pass "rules loaded and evaluated without errors ($(cat "$tmp/rules.state"))"
else
    fail "rules loaded and evaluated without errors" "$(cat "$tmp/rules.state" 2>/dev/null)"
fi

# The recording rules produce series from the live data.
if wait_for $((data_wait == 1 ? 1 : wait_s)) has_data 'mc:shard_mailbox_depth:sum'; then
    pass "recording rule mc:shard_mailbox_depth:sum has data"
else
    fail "recording rule mc:shard_mailbox_depth:sum has data"
fi

finish

#!/usr/bin/env bash
# Check a running MC's metrics endpoint.
#
#   tests/deploy/check_live_metrics.sh http://127.0.0.1:8080/metrics
#   (a bare HOST:PORT or http://HOST:PORT is completed with /metrics)
#
# 1. scrapes the endpoint (curl, 10 s timeout, a few retries while the MC starts);
# 2. runs `promtool check metrics` on the exposition. Parse errors fail. Lint
#    findings fail too, except "<family>_total no help text" for counters whose
#    family has `# TYPE <family> counter` and HELP: that is OpenMetrics naming
#    (family without _total, samples with it), which promtool's 0.0.4 text parser
#    does not know;
# 3. verifies that every metric in tests/deploy/exported_metrics.txt is present
#    (histograms via <name>_bucket), that its samples carry only the listed labels
#    (plus `le` on buckets), that per-shard metrics carry `shard`, and that the
#    number of distinct shards in mc_meetings_active equals mc_shards.
# Needs: curl, promtool (Debian package `prometheus`), python3.
# Exit status: 0 when every check passes, 1 otherwise, 2 on usage errors.
set -euo pipefail

if [[ $# -ne 1 ]]; then
    echo "usage: $0 METRICS_URL   (e.g. http://127.0.0.1:8080/metrics)" >&2
    exit 2
fi
url=$1
[[ $url == http://* || $url == https://* ]] || url="http://$url"
[[ $url == */metrics ]] || url="${url%/}/metrics"

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
list=$here/exported_metrics.txt
for tool in curl promtool python3; do
    command -v "$tool" >/dev/null || { echo "check_live_metrics: $tool not found" >&2; exit 2; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ok=0
for _ in 1 2 3 4 5; do
    if curl -fsS --max-time 10 -H 'Accept: text/plain;version=0.0.4;q=1,*/*;q=0.1' \
        -o "$tmp/metrics.txt" "$url"; then
        ok=1
        break
    fi
    sleep 2
done
if [[ $ok -ne 1 ]]; then
    echo "check_live_metrics: could not scrape $url" >&2
    exit 1
fi
echo "check_live_metrics: scraped $url ($(wc -l <"$tmp/metrics.txt") lines)"

set +e
promtool check metrics <"$tmp/metrics.txt" >"$tmp/promtool.out" 2>&1
prc=$?
set -e

python3 - "$tmp/metrics.txt" "$tmp/promtool.out" "$prc" "$list" <<'PY'
import re
import sys

metrics_path, promtool_out, prc, list_path = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
text = open(metrics_path).read()
lint = [ln.strip() for ln in open(promtool_out).read().splitlines() if ln.strip()]
passed = failed = 0


def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
    else:
        failed += 1
        print(f"  FAIL  {what}" + (f": {detail}" if detail else ""))


types, helps = {}, set()
samples = {}  # name -> list of label dicts
sample_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)')
label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
for line in text.splitlines():
    if line.startswith("# TYPE "):
        parts = line.split()
        types[parts[2]] = parts[3]
    elif line.startswith("# HELP "):
        helps.add(line.split()[2])
    elif line and not line.startswith("#"):
        m = sample_re.match(line)
        if m:
            samples.setdefault(m.group(1), []).append((dict(label_re.findall(m.group(3) or "")), m.group(4)))

# promtool: 1 = parse error, 3 = lint problems.
if prc == 0:
    check(True, "promtool check metrics")
elif prc == 3:
    real = []
    for ln in lint:
        m = re.match(r"^(\S+)_total no help text$", ln)
        if m and types.get(m.group(1)) == "counter" and m.group(1) in helps:
            continue  # OpenMetrics counter naming, see the header of this script
        real.append(ln)
    check(not real, "promtool check metrics (lint)", "; ".join(real))
else:
    check(False, "promtool check metrics (parse)", "; ".join(lint))

exported = []
for line in open(list_path):
    line = line.split("#", 1)[0].strip()
    if line:
        p = line.split()
        exported.append((p[0], p[1], set(p[2].split(",")) - {"-"} if len(p) > 2 else set()))

for name, kind, labels in exported:
    series = name + "_bucket" if kind == "histogram" else name
    present = series in samples
    family = name[:-len("_total")] if kind == "counter" else name
    hint = ("declared by # TYPE but no series yet" if family in types or name in types
            else "no series and no # TYPE line; labelled series should exist from start-up (value 0)")
    check(present, f"{name} present" + (" (as _bucket)" if kind == "histogram" else ""), "" if present else hint)
    if not present:
        continue
    allowed = labels | ({"le"} if kind == "histogram" else set())
    extra = sorted({k for lbls, _ in samples[series] for k in lbls} - allowed)
    check(not extra, f"{name}: only its listed labels", f"unexpected {extra}")
    if "shard" in labels:
        check(all("shard" in lbls for lbls, _ in samples[series]), f"{name}: every series has shard")
    if kind == "histogram":
        for suffix in ("_sum", "_count"):
            check(name + suffix in samples, f"{name}{suffix} present")
    if kind == "counter":
        check(all(float(v) >= 0 for _, v in samples[series]), f"{name}: non-negative")

if "mc_shards" in samples and "mc_meetings_active" in samples:
    n = int(float(samples["mc_shards"][0][1]))
    seen = {lbls.get("shard") for lbls, _ in samples["mc_meetings_active"]}
    check(n >= 1, "mc_shards >= 1", n)
    check(len(seen) == n, "mc_meetings_active has one series per shard", f"mc_shards={n}, shards seen={sorted(seen)}")
if "mc_actor_mailbox_depth" in samples:
    kinds = {lbls.get("actor_type") for lbls, _ in samples["mc_actor_mailbox_depth"]}
    check(kinds <= {"controller", "meeting", "connection"}, "actor_type values", sorted(kinds))

print(f"check_live_metrics: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY

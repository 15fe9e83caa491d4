#!/usr/bin/env python3
"""Alert coverage: the rules implement every alert the runbook names.

* every alert named in the SRE runbook (the seed runbook, when it is available,
  and docs/runbook.md) exists in deploy/prometheus/rules.yml, plus the sharded-design
  alerts (MCHotShard, MCMessagesDropped);
* every alert has a severity label (critical|warning), summary and description
  annotations, and a runbook_url pointing at an anchor that exists in docs/runbook.md;
* thresholds and `for` durations are the documented ones;
* deploy/prometheus/rules_test.yml has, for every alert, a case where it fires
  (promtool checks that the other series of that case stay silent);
* docs/observability.md and docs/runbook.md mention every alert.
"""
import os
import pathlib
import re
import sys

import yaml

from _common import (DEPLOY, ROOT, RUNBOOK_URL_PREFIX, Results, exit_with,
                     prom_duration_seconds)

SHARDED_ALERTS = {"MCHotShard", "MCMessagesDropped"}
# alert -> (substring the expression must contain, `for` duration)
THRESHOLDS = {
    "MCHighMailboxDepthWarning": ("> 100", "2m"),
    "MCHighMailboxDepthCritical": ("> 500", "1m"),
    "MCMessagesDropped": ("> 0.01", "2m"),
    "MCActorPanic": ("> 0", None),
    "MCHighLatency": ("> 0.5", "5m"),
    "MCGCHeartbeatWarning": ("> 0.10", "5m"),
    "MCGCHeartbeatFailure": ("> 0.50", "2m"),
    "MCHighMemory": ("> 0.85", "10m"),
    "MCHighCPU": ("> 0.80", "5m"),
    "MCCapacityWarning": ("> 0.80", "5m"),
}
EXPR_MUST_USE = {
    "MCDown": ["up{", "absent("],
    "MCPodRestartingFrequently": ["kube_pod_container_status_restarts_total"],
    "MCHighMemory": ["process_resident_memory_bytes", "kube_pod_container_resource_limits"],
    "MCHighCPU": ["process_cpu_seconds_total", "kube_pod_container_resource_limits"],
    "MCCapacityWarning": ["mc_meetings_active", "mc_capacity_max_meetings"],
    "MCHighLatency": ["histogram_quantile(0.95", "mc_message_processing_duration_seconds_bucket"],
    "MCHotShard": ["quantile without (shard) (0.5"],
    "MCActorPanic": ["mc_actor_panics_total"],
    "MCMeetingStale": ["mc_meetings_active", "mc_connections_active"],
}


def seed_runbook():
    env = os.environ.get("MC_SEED_RUNBOOK")
    candidates = [pathlib.Path(env)] if env else []
    candidates += [ROOT.parent / "shared" / "seed" / "mc-incident-response-runbook.md",
                   pathlib.Path("/work/shared/seed/mc-incident-response-runbook.md")]
    for c in candidates:
        if c.is_file():
            return c
    return None


def runbook_alerts(text):
    names = set()
    for line in text.splitlines():
        if line.startswith("**Alert**"):
            names |= set(re.findall(r"`(MC[A-Za-z]+)`", line))
    return names


def github_anchors(markdown):
    anchors = set()
    counts = {}
    in_code = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            in_code = not in_code
            continue
        m = None if in_code else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"`", "", m.group(1)).strip().lower()
        slug = re.sub(r"[^\w\- ]", "", text).replace(" ", "-")
        n = counts.get(slug, 0)
        counts[slug] = n + 1
        anchors.add(slug if n == 0 else f"{slug}-{n}")
    return anchors


def main():
    res = Results("check_rules")
    rules = yaml.safe_load((DEPLOY / "prometheus" / "rules.yml").read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = github_anchors(runbook)

    expected = set(SHARDED_ALERTS) | runbook_alerts(runbook)
    seed = seed_runbook()
    if seed:
        seed_alerts = runbook_alerts(seed.read_text())
        res.check(len(seed_alerts) >= 13, f"found the seed runbook's alerts in {seed}", sorted(seed_alerts))
        expected |= seed_alerts
    else:
        print("  note: seed runbook not found; using docs/runbook.md's alert list only")
    for name in sorted(expected):
        res.check(name in alerts, f"alert {name} is defined")
    res.check(len(alerts) == len([r for g in rules["groups"] for r in g["rules"] if "alert" in r]),
              "alert names are unique")

    obs = (ROOT / "docs" / "observability.md").read_text()
    for name, rule in sorted(alerts.items()):
        sev = (rule.get("labels") or {}).get("severity")
        res.check(sev in ("critical", "warning"), f"{name}: severity critical|warning", sev)
        ann = rule.get("annotations") or {}
        for key in ("summary", "description", "runbook_url"):
            res.check(bool(str(ann.get(key, "")).strip()), f"{name}: annotation {key}")
        url = ann.get("runbook_url", "")
        res.check(url.startswith(RUNBOOK_URL_PREFIX), f"{name}: runbook_url points at docs/runbook.md", url)
        anchor = url[len(RUNBOOK_URL_PREFIX):]
        res.check(anchor in anchors, f"{name}: runbook anchor #{anchor} exists in docs/runbook.md")
        if "for" in rule:
            res.check(prom_duration_seconds(rule["for"]) is not None, f"{name}: for is a duration")
        if name in THRESHOLDS:
            sub, dur = THRESHOLDS[name]
            res.check(sub in rule["expr"], f"{name}: threshold {sub!r}", rule["expr"])
            res.check(rule.get("for") == dur, f"{name}: for {dur}", rule.get("for"))
        for sub in EXPR_MUST_USE.get(name, []):
            res.check(sub in rule["expr"], f"{name}: expression uses {sub}")
        res.check(f"`{name}`" in runbook or name in runbook, f"{name}: named in docs/runbook.md")
        res.check(name in obs, f"{name}: listed in docs/observability.md")
    # Severities follow the runbook.
    for name, sev in (("MCHighMailboxDepthWarning", "warning"), ("MCHighMailboxDepthCritical", "critical"),
                      ("MCActorPanic", "critical"), ("MCDown", "critical"), ("MCHighLatency", "critical"),
                      ("MCGCHeartbeatFailure", "critical"), ("MCGCHeartbeatWarning", "warning"),
                      ("MCMessagesDropped", "critical"), ("MCMeetingStale", "warning"),
                      ("MCHighMemory", "warning"), ("MCHighCPU", "warning"), ("MCCapacityWarning", "warning")):
        if name in alerts:
            res.check(alerts[name]["labels"]["severity"] == sev, f"{name}: severity {sev} as in the runbook")

    # Unit tests: each alert fires in at least one case; each case pins its labels.
    tests = yaml.safe_load((DEPLOY / "prometheus" / "rules_test.yml").read_text())
    res.check(tests.get("rule_files") == ["rules.yml"], "rules_test.yml loads rules.yml")
    fires, silent = {}, {}
    for t in tests.get("tests") or []:
        for a in t.get("alert_rule_test") or []:
            bucket = fires if a.get("exp_alerts") else silent
            bucket[a["alertname"]] = bucket.get(a["alertname"], 0) + 1
            for e in a.get("exp_alerts") or []:
                res.check("exp_annotations" in e, f"rules_test {a['alertname']}@{a['eval_time']}: annotations pinned")
                res.check((e.get("exp_labels") or {}).get("severity") is not None,
                          f"rules_test {a['alertname']}@{a['eval_time']}: severity pinned")
    for name in sorted(alerts):
        res.check(fires.get(name, 0) >= 1, f"rules_test.yml: a case where {name} fires")
        res.check(name in fires or name in silent, f"rules_test.yml: {name} is tested")
    for name in sorted(set(fires) | set(silent)):
        res.check(name in alerts, f"rules_test.yml: {name} is a defined alert")
    exit_with(res)


if __name__ == "__main__":
    main()

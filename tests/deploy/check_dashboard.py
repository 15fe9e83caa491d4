#!/usr/bin/env python3
"""Structure of deploy/grafana/mc-dashboard.json.

The JSON parses; it has a uid, title and schemaVersion; panel ids are unique and
grid positions stay inside the 24-column grid without overlapping; every query
panel has a Prometheus data source and non-empty expressions; the template
variables the queries use exist; and the panels the runbook and the sharded
design need are present (per-shard mailbox depth, p50/p99 latency, meetings,
connections, drops, forwarded datagrams, handoffs; GC heartbeats, panics,
capacity). Metric names are checked by check_metric_names.py.
"""
import json
import re
import sys

from _common import DEPLOY, Results, exit_with

# (title regex, metric the query must use, must be per shard)
REQUIRED_PANELS = [
    (r"mailbox depth per shard", "mc_actor_mailbox_depth", True),
    (r"mailbox depth by actor type", "mc_actor_mailbox_depth", False),
    (r"p50 .*latency per shard", "mc_message_processing_duration_seconds_bucket", True),
    (r"p99 .*latency per shard", "mc_message_processing_duration_seconds_bucket", True),
    (r"meetings per shard", "mc_meetings_active", True),
    (r"connections per shard", "mc_connections_active", True),
    (r"dropped messages per shard", "mc_messages_dropped_total", True),
    (r"forwarded datagrams per shard", "mc_datagrams_forwarded_total", True),
    (r"handoffs per shard", "mc_connection_handoffs_total", True),
    (r"gc heartbeats", "mc_gc_heartbeats_total", False),
    (r"gc heartbeat failure", "mc_gc_heartbeats_total", False),
    (r"gc heartbeat p95", "mc_gc_heartbeat_duration_seconds_bucket", False),
    (r"panics", "mc_actor_panics_total", False),
    (r"capacity", "mc_capacity_max_meetings", False),
]


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels") or [])


def main():
    res = Results("check_dashboard")
    path = DEPLOY / "grafana" / "mc-dashboard.json"
    try:
        dash = json.loads(path.read_text())
    except ValueError as e:
        res.check(False, "dashboard JSON parses", str(e))
        exit_with(res)
    res.check(True, "dashboard JSON parses")
    for key in ("uid", "title", "schemaVersion", "panels", "templating", "time"):
        res.check(key in dash, f"dashboard has {key}")
    res.check(isinstance(dash.get("schemaVersion"), int) and dash["schemaVersion"] >= 36, "schemaVersion >= 36")
    res.check(re.fullmatch(r"[A-Za-z0-9_-]{1,40}", str(dash.get("uid", ""))) is not None, "uid is a valid Grafana uid")

    variables = {v["name"]: v for v in (dash.get("templating") or {}).get("list") or []}
    for name in ("datasource", "job", "instance", "shard"):
        res.check(name in variables, f"template variable ${name}")
    res.check(variables.get("datasource", {}).get("type") == "datasource"
              and variables.get("datasource", {}).get("query") == "prometheus", "$datasource selects Prometheus")

    panels = list(all_panels(dash.get("panels") or []))
    ids = [p.get("id") for p in panels]
    res.check(len(ids) == len(set(ids)) and all(isinstance(i, int) for i in ids), "panel ids unique integers")

    # Grid: inside 24 columns, no overlaps.
    cells = set()
    overlap = []
    for p in panels:
        g = p.get("gridPos") or {}
        ok = all(isinstance(g.get(k), int) for k in ("x", "y", "w", "h")) and g["x"] >= 0 and g["w"] > 0 \
            and g["x"] + g["w"] <= 24 and g["h"] > 0
        res.check(ok, f"panel {p.get('id')} '{p.get('title')}': gridPos inside the grid", g)
        if not ok:
            continue
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    overlap.append(p.get("title"))
                cells.add((x, y))
    res.check(not overlap, "panels do not overlap", sorted(set(overlap)))

    used_vars = set()
    for p in panels:
        if p.get("type") == "row":
            continue
        where = f"panel {p.get('id')} '{p.get('title')}'"
        res.check(bool(p.get("title")), f"{where}: has a title")
        ds = p.get("datasource") or {}
        res.check(ds.get("type") == "prometheus" and ds.get("uid") == "${datasource}", f"{where}: Prometheus $datasource")
        targets = p.get("targets") or []
        res.check(len(targets) > 0, f"{where}: has queries")
        refs = [t.get("refId") for t in targets]
        res.check(len(refs) == len(set(refs)), f"{where}: unique refIds")
        for t in targets:
            expr = t.get("expr", "")
            res.check(bool(expr.strip()), f"{where} {t.get('refId')}: non-empty expr")
            used_vars |= set(re.findall(r"\$(\w+)", expr)) - {"__rate_interval", "__interval", "__range"}
            res.check(expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"),
                      f"{where} {t.get('refId')}: balanced brackets")
    for v in sorted(used_vars):
        res.check(v in variables, f"queries use defined variable ${v}")

    def find(title_re):
        return [p for p in panels if p.get("type") != "row" and re.search(title_re, p.get("title", ""), re.I)]

    for title_re, metric, per_shard in REQUIRED_PANELS:
        found = find(title_re)
        if not res.check(bool(found), f"panel matching /{title_re}/ exists"):
            continue
        exprs = [t.get("expr", "") for p in found for t in p.get("targets") or []]
        res.check(any(metric in e for e in exprs), f"panel /{title_re}/ queries {metric}")
        if per_shard:
            res.check(any(re.search(r"by \([^)]*\bshard\b", e) for e in exprs)
                      and any("{{shard}}" in (t.get("legendFormat") or "") for p in found for t in p["targets"]),
                      f"panel /{title_re}/ is split by shard")
    exit_with(res)


if __name__ == "__main__":
    main()

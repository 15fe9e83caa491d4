#!/usr/bin/env python3
"""Every metric the rules and the dashboard query is one the MC exports.

PromQL comes from deploy/prometheus/rules.yml, deploy/base/prometheusrule.yaml and
every target (and annotation query) of deploy/grafana/mc-dashboard.json. Each
expression is parsed with a real PromQL parser (promql-parser); every selector's
metric name must be
  * an MC metric listed in tests/deploy/exported_metrics.txt (histograms as
    <name>_bucket/_sum/_count),
  * a recording rule defined in the rule file, or
  * a metric of another exporter listed in tests/deploy/external_metrics.txt.
Label matchers and by/without labels on MC metrics must be labels that metric
has (or target labels the scrape adds).

The docs are checked too: every `mc_...` name in docs/runbook.md,
docs/observability.md and docs/deployment.md must be an exported metric, and
observability.md must describe every exported metric.
"""
import json
import re
import sys

import promql_parser
import yaml

from _common import DEPLOY, HERE, ROOT, Results, exit_with

TARGET_LABELS = {"job", "instance", "namespace", "pod", "service", "container", "endpoint"}
HIST_SUFFIXES = ("_bucket", "_sum", "_count")
GRAFANA_VARS = {
    "$__rate_interval": "5m", "$__interval": "1m", "$__range": "1h",
    "${__rate_interval}": "5m", "${__interval}": "1m",
}


def load_exported():
    metrics = {}
    for line in (HERE / "exported_metrics.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        name, kind = parts[0], parts[1]
        labels = set(parts[2].split(",")) if len(parts) > 2 and parts[2] != "-" else set()
        metrics[name] = (kind, labels)
    return metrics


def load_external():
    return {ln.split("#", 1)[0].strip() for ln in (HERE / "external_metrics.txt").read_text().splitlines()
            if ln.split("#", 1)[0].strip()}


def series_names(exported):
    """Name as it appears in a query -> (family, allowed labels)."""
    out = {}
    for name, (kind, labels) in exported.items():
        if kind == "histogram":
            out[name + "_bucket"] = (name, labels | {"le"})
            out[name + "_sum"] = (name, labels)
            out[name + "_count"] = (name, labels)
        else:
            out[name] = (name, labels)
    return out


def walk(node):
    yield node
    for attr in ("lhs", "rhs", "expr", "vector_selector"):
        child = getattr(node, attr, None)
        if child is not None and not isinstance(child, (int, float, str)):
            yield from walk(child)
    for child in getattr(node, "args", None) or []:
        yield from walk(child)
    param = getattr(node, "param", None)
    if param is not None and not isinstance(param, (int, float, str)):
        yield from walk(param)


def selector_name(vs):
    if vs.name:
        return vs.name
    for m in vs.matchers.matchers:
        if m.name == "__name__" and str(m.op).endswith("Equal"):
            return m.value
    return None


def check_expr(res, where, expr, known, external, recorded, used):
    text = expr
    for var, val in GRAFANA_VARS.items():
        text = text.replace(var, val)
    try:
        ast = promql_parser.parse(text)
    except Exception as e:  # the parser raises its own exception types
        res.check(False, f"{where}: PromQL parses", f"{e}: {expr!r}")
        return
    res.check(True, f"{where}: PromQL parses")
    nodes = list(walk(ast))
    introduced = set()
    for n in nodes:
        if type(n).__name__ == "Call" and str(n.func.name) == "label_replace" and len(n.args) > 1:
            introduced.add(str(n.args[1]).strip('"'))
    for n in nodes:
        if type(n).__name__ != "VectorSelector":
            continue
        name = selector_name(n)
        if name is None:
            res.check(False, f"{where}: selector has a metric name", str(n))
            continue
        if name in known:
            family, labels = known[name]
            used.add(family)
            allowed = labels | TARGET_LABELS | {"__name__"}
            bad = [m.name for m in n.matchers.matchers if m.name not in allowed]
            res.check(not bad, f"{where}: {name} matchers use its labels", f"unknown labels {bad}")
        elif name in recorded:
            res.check(True, f"{where}: {name} is a recording rule")
        elif name.startswith("mc_") or name.startswith("mc:"):
            res.check(False, f"{where}: {name} is exported by the MC", "not in exported_metrics.txt")
        else:
            res.check(name in external, f"{where}: {name} is a known external metric", "not in external_metrics.txt")
    # Grouping labels of aggregations over MC metrics only.
    for n in nodes:
        if type(n).__name__ != "AggregateExpr" or n.modifier is None:
            continue
        inner = [selector_name(x) for x in walk(n.expr) if type(x).__name__ == "VectorSelector"]
        if not inner or not all(s in known for s in inner):
            continue
        available = set().union(*(known[s][1] for s in inner)) | TARGET_LABELS | introduced
        bad = [lb for lb in n.modifier.labels if lb not in available]
        res.check(not bad, f"{where}: {n.op} grouping labels exist on {sorted(set(inner))}", f"unknown {bad}")


def rule_exprs(path, spec):
    for g in spec["groups"]:
        for r in g["rules"]:
            yield f"{path} {r.get('alert') or r.get('record')}", r["expr"]


def dashboard_exprs(dash):
    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels") or [])
    for p in panels(dash.get("panels") or []):
        for t in p.get("targets") or []:
            if t.get("expr"):
                yield f"dashboard panel {p.get('id')} '{p.get('title')}' {t.get('refId')}", t["expr"]
    for a in (dash.get("annotations") or {}).get("list") or []:
        if a.get("expr"):
            yield f"dashboard annotation '{a.get('name')}'", a["expr"]
    for v in (dash.get("templating") or {}).get("list") or []:
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        m = re.fullmatch(r"label_values\((.+),\s*\w+\)", q or "")
        if m:
            yield f"dashboard variable {v['name']}", m.group(1)


def main():
    res = Results("check_metric_names")
    exported = load_exported()
    external = load_external()
    known = series_names(exported)
    used = set()

    # The names the control-plane spec and the runbook require must be listed.
    required = {"mc_actor_mailbox_depth", "mc_message_processing_duration_seconds", "mc_meetings_active",
                "mc_connections_active", "mc_messages_dropped_total", "mc_actor_panics_total",
                "mc_gc_heartbeats_total", "mc_gc_heartbeat_duration_seconds", "mc_gc_registered"}
    res.check(required <= set(exported), "exported_metrics.txt lists every spec/runbook metric",
              sorted(required - set(exported)))
    for name, (kind, _) in exported.items():
        res.check(kind in ("counter", "gauge", "histogram"), f"{name}: known type", kind)
        res.check((kind == "counter") == name.endswith("_total"), f"{name}: counters (only) end in _total")

    rules_path = DEPLOY / "prometheus" / "rules.yml"
    rules = yaml.safe_load(rules_path.read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    for where, expr in rule_exprs("rules.yml", rules):
        check_expr(res, where, expr, known, external, recorded, used)
    pr = [d for d in yaml.safe_load_all((DEPLOY / "base" / "prometheusrule.yaml").read_text()) if d][0]
    for where, expr in rule_exprs("prometheusrule.yaml", pr["spec"]):
        check_expr(res, where, expr, known, external, recorded, set())

    dash = json.loads((DEPLOY / "grafana" / "mc-dashboard.json").read_text())
    for where, expr in dashboard_exprs(dash):
        check_expr(res, where, expr, known, external, recorded, used)

    # Docs: only real metric names.
    doc_names = {}
    for doc in ("runbook.md", "observability.md", "deployment.md"):
        path = ROOT / "docs" / doc
        if not res.check(path.exists(), f"docs/{doc} exists"):
            continue
        text = path.read_text()
        for m in re.finditer(r"\b(?:mc|process)_[a-z0-9_]*[a-z0-9]\b", text):
            name = m.group(0)
            if name.startswith("mc_service"):
                continue  # the service's name, not a metric
            doc_names.setdefault(doc, set()).add(name)
        for name in sorted(doc_names.get(doc, ())):
            # A prefix such as `grep mc_gc` is fine when it selects real metrics.
            prefix = any(k.startswith(name + "_") for k in known)
            res.check(name in known or name in exported or prefix, f"docs/{doc}: {name} is an exported metric")
    obs = doc_names.get("observability.md", set())
    for name in exported:
        res.check(name in obs, f"docs/observability.md describes {name}")

    unused = sorted(set(exported) - used)
    print(f"metrics queried by rules/dashboard: {len(used)} of {len(exported)}"
          + (f"; not queried: {', '.join(unused)}" if unused else ""))
    exit_with(res)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Validate every manifest against the Kubernetes OpenAPI schemas.

Inputs: each file of deploy/base (as written) and the rendered output of the base
and of every overlay (`kubectl kustomize`). Built-in kinds are validated with
kubernetes-validate in strict mode (unknown fields are errors) for the oldest
supported Kubernetes (1.30: preStop `sleep` needs it) and the newest schema the
package ships. The Prometheus Operator CRDs (ServiceMonitor, PrometheusRule) have
no schema there and are checked by structure here instead.
"""
import re
import sys

import kubernetes_validate
from kubernetes_validate import utils as kv_utils

from _common import (BASE, Results, base_resource_files, exit_with,
                     kustomization_dirs, kustomize_build, load_yaml_docs,
                     prom_duration_seconds, rel)

MIN_K8S = "1.30.0"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}
NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def schema_versions():
    latest = ".".join((kv_utils.latest_version().split(".") + ["0", "0"])[:3])
    return [MIN_K8S] if latest == MIN_K8S else [MIN_K8S, latest]


def check_keys(res, where, obj, allowed, required=()):
    if not isinstance(obj, dict):
        res.check(False, f"{where} is a mapping", f"got {type(obj).__name__}")
        return False
    unknown = set(obj) - set(allowed)
    missing = [k for k in required if k not in obj]
    ok = res.check(not unknown, f"{where}: only known fields", f"unknown {sorted(unknown)}")
    ok &= res.check(not missing, f"{where}: required fields", f"missing {missing}")
    return ok


def check_metadata(res, where, doc):
    md = doc.get("metadata") or {}
    name = md.get("name", "")
    res.check(bool(NAME_RE.match(name)) and len(name) <= 253, f"{where}: metadata.name is a DNS-1123 name", repr(name))
    for key in ("labels", "annotations"):
        vals = md.get(key) or {}
        res.check(all(isinstance(v, str) for v in vals.values()), f"{where}: metadata.{key} values are strings", repr(vals))


def check_servicemonitor(res, where, doc):
    check_keys(res, where, doc, {"apiVersion", "kind", "metadata", "spec"}, ("apiVersion", "kind", "metadata", "spec"))
    res.check(doc.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion monitoring.coreos.com/v1")
    check_metadata(res, where, doc)
    spec = doc.get("spec") or {}
    check_keys(res, f"{where} spec", spec,
               {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels",
                "sampleLimit", "scrapeProtocols", "attachMetadata"},
               ("selector", "endpoints"))
    sel = spec.get("selector") or {}
    res.check(bool(sel.get("matchLabels") or sel.get("matchExpressions")), f"{where}: non-empty selector")
    eps = spec.get("endpoints") or []
    res.check(isinstance(eps, list) and len(eps) > 0, f"{where}: at least one endpoint")
    for i, ep in enumerate(eps):
        w = f"{where} endpoints[{i}]"
        check_keys(res, w, ep,
                   {"port", "targetPort", "path", "scheme", "interval", "scrapeTimeout", "honorLabels",
                    "honorTimestamps", "relabelings", "metricRelabelings", "params", "tlsConfig",
                    "bearerTokenSecret", "authorization", "followRedirects", "enableHttp2"})
        res.check(isinstance(ep.get("port"), str) and ep.get("port"), f"{w}: named port")
        for key in ("interval", "scrapeTimeout"):
            if key in ep:
                res.check(prom_duration_seconds(ep[key]) is not None, f"{w}: {key} is a duration", ep[key])
        if "interval" in ep and "scrapeTimeout" in ep:
            res.check(prom_duration_seconds(ep["scrapeTimeout"]) <= prom_duration_seconds(ep["interval"]),
                      f"{w}: scrapeTimeout <= interval")
        res.check(ep.get("scheme", "http") in ("http", "https"), f"{w}: scheme")


def check_prometheusrule(res, where, doc):
    check_keys(res, where, doc, {"apiVersion", "kind", "metadata", "spec"}, ("apiVersion", "kind", "metadata", "spec"))
    res.check(doc.get("apiVersion") == "monitoring.coreos.com/v1", f"{where}: apiVersion monitoring.coreos.com/v1")
    check_metadata(res, where, doc)
    spec = doc.get("spec") or {}
    check_keys(res, f"{where} spec", spec, {"groups"}, ("groups",))
    names = set()
    for gi, group in enumerate(spec.get("groups") or []):
        w = f"{where} groups[{gi}]"
        check_keys(res, w, group, {"name", "interval", "rules", "partial_response_strategy", "limit", "query_offset"},
                   ("name", "rules"))
        res.check(group.get("name") not in names, f"{w}: unique group name", group.get("name"))
        names.add(group.get("name"))
        if "interval" in group:
            res.check(prom_duration_seconds(group["interval"]) is not None, f"{w}: interval is a duration")
        for ri, rule in enumerate(group.get("rules") or []):
            rw = f"{w} rules[{ri}] {rule.get('alert') or rule.get('record')}"
            check_keys(res, rw, rule, {"alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations"},
                       ("expr",))
            res.check(("alert" in rule) != ("record" in rule), f"{rw}: exactly one of alert/record")
            res.check(isinstance(rule.get("expr"), str) and rule["expr"].strip() != "", f"{rw}: expr is a string")
            if "for" in rule:
                res.check(prom_duration_seconds(rule["for"]) is not None, f"{rw}: for is a duration", rule["for"])
            for key in ("labels", "annotations"):
                vals = rule.get(key) or {}
                res.check(all(isinstance(v, str) for v in vals.values()), f"{rw}: {key} values are strings")
            if "record" in rule:
                res.check(bool(re.fullmatch(r"[a-zA-Z_:][a-zA-Z0-9_:]*", rule["record"])), f"{rw}: record name")
                res.check("annotations" not in rule, f"{rw}: recording rules carry no annotations")


def validate_doc(res, where, doc):
    kind = doc.get("kind")
    if kind in CRD_KINDS:
        (check_servicemonitor if kind == "ServiceMonitor" else check_prometheusrule)(res, where, doc)
        return
    for version in schema_versions():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
            res.check(True, f"{where}: schema {version}")
        except kubernetes_validate.SchemaNotFoundError as e:
            res.check(False, f"{where}: schema {version}", f"no schema for {kind}: {e}")
        except kubernetes_validate.ValidationError as e:
            path = "/".join(str(p) for p in e.path) if hasattr(e, "path") else ""
            res.check(False, f"{where}: schema {version}", f"{path}: {e.message}")


def main():
    res = Results("validate_manifests")
    print(f"Kubernetes schemas: {', '.join(schema_versions())} (strict)")

    # 1. The base files as written.
    for path in base_resource_files():
        docs = load_yaml_docs(path)
        res.check(len(docs) >= 1, f"{rel(path)}: has a document")
        for i, doc in enumerate(docs):
            validate_doc(res, f"{rel(path)}[{i}] {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}", doc)

    # 2. Every kustomization, rendered.
    for directory in kustomization_dirs():
        try:
            docs = kustomize_build(directory)
        except RuntimeError as e:
            res.check(False, f"render {rel(directory)}", str(e))
            continue
        res.check(len(docs) > 0, f"render {rel(directory)}: produced resources", "")
        seen = set()
        for doc in docs:
            md = doc.get("metadata") or {}
            key = (doc.get("kind"), md.get("namespace"), md.get("name"))
            res.check(key not in seen, f"{rel(directory)}: unique {key}")
            seen.add(key)
            res.check(md.get("namespace") == "dark-tower", f"{rel(directory)} {key[0]}/{key[2]}: namespace dark-tower",
                      md.get("namespace"))
            validate_doc(res, f"{rel(directory)} (rendered) {key[0]}/{key[2]}", doc)

    # 3. Example files outside the kustomizations (applied by hand).
    for path in sorted((BASE.parent / "examples").glob("*.yaml")):
        for i, doc in enumerate(load_yaml_docs(path)):
            validate_doc(res, f"{rel(path)}[{i}] {doc.get('kind')}", doc)

    exit_with(res)


if __name__ == "__main__":
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    main()

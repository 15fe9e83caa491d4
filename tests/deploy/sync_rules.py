#!/usr/bin/env python3
"""Keep deploy/prometheus/rules.yml in sync with deploy/base/prometheusrule.yaml.

The PrometheusRule (Prometheus Operator CRD) is the source of truth; its `spec`
is a plain Prometheus rule file. This script extracts it and writes it to
deploy/prometheus/rules.yml, which promtool checks and unit-tests and which a
plain Prometheus server can load.

  sync_rules.py           rewrite deploy/prometheus/rules.yml
  sync_rules.py --check   exit 1 (with a diff) if rules.yml is not what it would write
"""
import argparse
import difflib
import pathlib
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCE = ROOT / "deploy" / "base" / "prometheusrule.yaml"
TARGET = ROOT / "deploy" / "prometheus" / "rules.yml"

HEADER = """\
---
# GENERATED from deploy/base/prometheusrule.yaml (its `spec`) by
# tests/deploy/sync_rules.py. Do not edit by hand: edit the PrometheusRule and run
#   python3 tests/deploy/sync_rules.py
# Check:  promtool check rules deploy/prometheus/rules.yml
# Tests:  promtool test rules deploy/prometheus/rules_test.yml
"""


class _Dumper(yaml.SafeDumper):
    """Block style, sequences indented under their key, multi-line strings as |."""

    def increase_indent(self, flow=False, indentless=False):
        return super().increase_indent(flow, False)


def _str_representer(dumper, data):
    if "\n" in data:
        return dumper.represent_scalar("tag:yaml.org,2002:str", data, style="|")
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_representer)


def load_spec(path=SOURCE):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    if len(docs) != 1 or docs[0].get("kind") != "PrometheusRule":
        raise SystemExit(f"{path}: expected exactly one PrometheusRule document")
    spec = docs[0].get("spec")
    if not isinstance(spec, dict) or "groups" not in spec:
        raise SystemExit(f"{path}: PrometheusRule has no spec.groups")
    return spec


def render(spec):
    body = yaml.dump(
        spec,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=False,
        allow_unicode=True,
        width=100,
        indent=2,
    )
    return HEADER + body


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="do not write; fail if rules.yml differs")
    args = ap.parse_args(argv)

    spec = load_spec()
    want = render(spec)
    # The generated text must parse back to exactly the spec.
    if yaml.safe_load(want) != spec:
        print("sync_rules: internal error: rendered rules do not round-trip", file=sys.stderr)
        return 2

    if args.check:
        have = TARGET.read_text() if TARGET.exists() else ""
        if have == want:
            print(f"sync_rules: {TARGET.relative_to(ROOT)} is in sync with {SOURCE.relative_to(ROOT)}")
            return 0
        same_data = have and yaml.safe_load(have) == spec
        print(
            f"sync_rules: {TARGET.relative_to(ROOT)} differs from the spec of "
            f"{SOURCE.relative_to(ROOT)}"
            + (" (formatting only)" if same_data else "")
            + "; run: python3 tests/deploy/sync_rules.py",
            file=sys.stderr,
        )
        diff = difflib.unified_diff(
            have.splitlines(keepends=True), want.splitlines(keepends=True),
            fromfile=str(TARGET.relative_to(ROOT)), tofile="expected",
        )
        sys.stderr.writelines(list(diff)[:200])
        return 1

    TARGET.parent.mkdir(parents=True, exist_ok=True)
    TARGET.write_text(want)
    print(f"sync_rules: wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

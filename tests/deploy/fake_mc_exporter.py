#!/usr/bin/env python3
"""A stand-in for the MC's control listener, for self-testing the live scripts.

Serves GET /metrics with every metric of tests/deploy/exported_metrics.txt in the
OpenMetrics text style the MC's metrics library writes (counter families named
without `_total`, samples with it, `# EOF` at the end), plus /health and /ready.
Values change on every scrape. Binds to loopback only.

  fake_mc_exporter.py --port 0 --port-file /tmp/port   # port 0: pick a free one
"""
import argparse
import http.server
import itertools
import pathlib
import random
import sys

HERE = pathlib.Path(__file__).resolve().parent
SHARDS = 2
VALUES = {
    "actor_type": ["controller", "meeting", "connection"],
    "shard": [str(s) for s in range(SHARDS)],
    "reason": ["mailbox_full", "slow_consumer"],
    "kind": ["fast", "comprehensive"],
    "status": ["success", "error", "timeout", "not_found"],
    "result": ["success", "unauthorized"],
    "version": ["0.0.0-synthetic"],
}
BUCKETS = ["0.0001", "0.001", "0.01", "0.1", "1", "+Inf"]


def load_metrics():
    out = []
    for line in (HERE / "exported_metrics.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            parts = line.split()
            labels = parts[2].split(",") if len(parts) > 2 and parts[2] != "-" else []
            out.append((parts[0], parts[1], labels))
    return out


class State:
    def __init__(self):
        self.scrapes = 0
        self.counters = {}

    def counter(self, key, step):
        self.counters[key] = self.counters.get(key, 0) + step
        return self.counters[key]


def render(metrics, state):
    state.scrapes += 1
    lines = []
    for name, kind, labels in metrics:
        family = name[:-len("_total")] if kind == "counter" else name
        lines.append(f"# HELP {family} Synthetic {family}.")
        lines.append(f"# TYPE {family} {kind}")
        combos = list(itertools.product(*(VALUES.get(lb, ["x"]) for lb in labels))) or [()]
        for combo in combos:
            lab = ",".join(f'{k}="{v}"' for k, v in zip(labels, combo))
            if kind == "gauge":
                if name in ("mc_shards",):
                    v = SHARDS
                elif name in ("mc_gc_registered", "mc_build_info"):
                    v = 1
                elif name == "mc_draining":
                    v = 0
                elif name == "mc_capacity_max_meetings":
                    v = 1000
                else:
                    v = random.randint(0, 20)
                lines.append(f"{name}{{{lab}}} {v}" if lab else f"{name} {v}")
            elif kind == "counter":
                v = state.counter((name, combo), random.randint(0, 5))
                lines.append(f"{name}{{{lab}}} {v}" if lab else f"{name} {v}")
            else:
                total = state.counter((name, combo), 10)
                sep = "," if lab else ""
                for i, le in enumerate(BUCKETS):
                    cum = total if le == "+Inf" else total * (i + 1) // len(BUCKETS)
                    lines.append(f'{name}_bucket{{{lab}{sep}le="{le}"}} {cum}')
                lines.append(f"{name}_sum{{{lab}}} {total * 0.002:.6f}" if lab else f"{name}_sum {total * 0.002:.6f}")
                lines.append(f"{name}_count{{{lab}}} {total}" if lab else f"{name}_count {total}")
    lines.append("# EOF")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--port-file", help="write the bound port here once listening")
    args = ap.parse_args()
    metrics = load_metrics()
    state = State()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/metrics":
                body = render(metrics, state).encode()
                ctype = "application/openmetrics-text; version=1.0.0; charset=utf-8"
            elif self.path in ("/health", "/ready"):
                body, ctype = b'{"status":"ok"}\n', "application/json"
            else:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.port_file:
        pathlib.Path(args.port_file).write_text(str(srv.server_address[1]))
    print(f"fake MC exporter on 127.0.0.1:{srv.server_address[1]}", file=sys.stderr, flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

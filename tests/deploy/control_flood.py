#!/usr/bin/env python3
"""Flood a running MC's control port and check that its probes stay answered.

  control_flood.py --control 127.0.0.1:8080 [--seconds 40] [--connections 500]

For the first half of the time, --connections TCP connections that send nothing; for the
second half, as many that drip one byte of a request per second. Both reopen every
connection the server closes, from the same address the probes use. Meanwhile `/health`
and `/ready` are asked every 100 ms on fresh connections and must answer 200 within 1 s.
At the end `/metrics` must count the refusals (mc_control_refusals_total{reason="peer_limit"}
grew by at least connections - 64).

Run by .ci/stages/20-live-prometheus.sh while a real Prometheus scrapes the same MC.
Exit status: 0 when every probe was answered in time and the refusals were counted,
1 otherwise, 2 on usage errors.
"""
import argparse
import errno
import re
import socket
import sys
import threading
import time

PEER_SHARE = 64
REQUEST = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def http_get(host, port, path, timeout):
    """Status code of GET path on a fresh connection, answered within `timeout` seconds."""
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(max(0.001, timeout - (time.monotonic() - start)))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            left = timeout - (time.monotonic() - start)
            if left <= 0:
                raise TimeoutError(f"{path}: no complete answer within {timeout} s")
            s.settimeout(left)
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    m = re.match(rb"HTTP/1\.1 (\d{3})", data)
    if not m:
        raise ValueError(f"{path}: not an HTTP answer ({len(data)} bytes)")
    return int(m.group(1)), data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")


def refusals(host, port):
    status, body = http_get(host, port, "/metrics", 10)
    if status != 200:
        raise ValueError(f"/metrics answered {status}")
    out = {}
    for m in re.finditer(r'^mc_control_refusals_total\{reason="([a-z_]+)"\} (\S+)$', body, re.M):
        out[m.group(1)] = float(m.group(2))
    if not out:
        raise ValueError("no mc_control_refusals_total in /metrics")
    return out


class Flood(threading.Thread):
    def __init__(self, host, port, n, drip, until):
        super().__init__(daemon=True)
        self.host, self.port, self.n, self.drip, self.until = host, port, n, drip, until
        self.opened = 0

    def connect(self):
        try:
            s = socket.create_connection((self.host, self.port), timeout=1)
            s.setblocking(False)
            self.opened += 1
            return [s, 0]
        except OSError:
            return None

    def run(self):
        conns = [None] * self.n
        last_drip = 0.0
        while time.monotonic() < self.until:
            drip = self.drip and time.monotonic() - last_drip >= 1.0
            if drip:
                last_drip = time.monotonic()
            for i, c in enumerate(conns):
                alive = False
                if c is not None:
                    s, sent = c
                    try:
                        alive = s.recv(256) != b""
                    except BlockingIOError:
                        alive = True
                    except OSError:
                        alive = False
                    if alive and drip:
                        try:
                            j = min(sent, len(REQUEST) - 3)
                            s.send(REQUEST[j:j + 1])
                            c[1] += 1
                        except OSError as e:
                            alive = e.errno in (errno.EAGAIN, errno.EWOULDBLOCK)
                    if not alive:
                        s.close()
                if not alive:
                    conns[i] = self.connect()
            time.sleep(0.2)
        for c in conns:
            if c is not None:
                c[0].close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--control", required=True, help="HOST:PORT of the MC's control listener")
    ap.add_argument("--seconds", type=float, default=40)
    ap.add_argument("--connections", type=int, default=500)
    a = ap.parse_args()
    host, _, port = a.control.rpartition(":")
    if not host or not port.isdigit():
        print(f"control_flood: expected HOST:PORT, got {a.control!r}", file=sys.stderr)
        return 2
    port = int(port)
    before = refusals(host, port)
    failures = []
    probes = 0
    for drip in (False, True):
        kind = "dripping" if drip else "silent"
        until = time.monotonic() + a.seconds / 2
        flood = Flood(host, port, a.connections, drip, until)
        flood.start()
        while flood.opened < a.connections and time.monotonic() < until:
            time.sleep(0.05)
        while time.monotonic() < until:
            for path in ("/health", "/ready"):
                try:
                    status, _ = http_get(host, port, path, 1.0)
                    if status != 200:
                        failures.append(f"{kind}: {path} answered {status}")
                    probes += 1
                except (OSError, ValueError) as e:
                    failures.append(f"{kind}: {path}: {e}")
            time.sleep(0.1)
        flood.join()
        print(f"control_flood: {kind}: {flood.opened} connections opened (reopenings included)")
    after = refusals(host, port)
    grown = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    print(f"control_flood: {probes} probes, refusals counted: {grown}")
    if grown.get("peer_limit", 0) < a.connections - PEER_SHARE:
        failures.append(f"peer_limit refusals grew by {grown.get('peer_limit', 0)} only")
    for f in failures[:20]:
        print(f"  FAIL  {f}")
    print(f"control_flood: {'FAILED' if failures else 'ok'} ({len(failures)} failures)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

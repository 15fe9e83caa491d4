#!/usr/bin/env bash
# Real headless Chromium (Debian package) over WebTransport next to a native QUIC participant,
# and an independent WebTransport client (aioquic) against a running mc.
set -euo pipefail
cd "$(dirname "$0")/../.."
if ! command -v chromium >/dev/null || ! command -v node >/dev/null; then
  echo "BROWSER TEST CANNOT RUN: chromium or node is not installed" >&2
  exit 1
fi
# nextest over the workspace, as in the main test stage, so nothing is rebuilt.
cargo nextest run --workspace --locked --run-ignored only -E 'binary(browser_e2e)' --no-capture

# Interop: aioquic's HTTP/3 + WebTransport client, in a virtualenv.
venv=target/interop-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q aioquic
cargo nextest run --workspace --locked --no-run --cargo-quiet  # builds target/debug/mc
dir=$(mktemp -d)
target/debug/mc serve --dev --dev-dir "$dir/dev" --listen 127.0.0.1:0 --control-listen 127.0.0.1:0 \
  --shards 2 --io-memory 262144 --log-level warn >"$dir/mc.out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q '^listening ' "$dir/mc.out" && break; sleep 0.2; done
port=$(sed -n 's/^listening quic=[^:]*:\([0-9]*\) .*/\1/p' "$dir/mc.out")
hash=$(sed -n 's/.*(serverCertificateHashes): //p' "$dir/mc.out")
t1=$(target/debug/mc token --dev-dir "$dir/dev" --meeting interop --role host)
t2=$(target/debug/mc token --dev-dir "$dir/dev" --meeting interop --role participant)
"$venv/bin/python" tests/interop/wt_client.py --host 127.0.0.1 --server-name localhost --port "$port" \
  --meeting interop --hash "$hash" --token "$t1" --token2 "$t2" --timeout 20

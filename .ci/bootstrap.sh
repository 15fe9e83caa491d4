#!/usr/bin/env bash
# Installs what building and testing mc needs, skipping what is already there.
# Debian 12 with a Rust toolchain; needs root (or sudo) for apt-get.
set -euo pipefail

SUDO=""
if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi

need_apt=()
command -v cmake >/dev/null || need_apt+=(cmake)
command -v clang >/dev/null || need_apt+=(clang)
command -v git >/dev/null || need_apt+=(git)
command -v cc >/dev/null || need_apt+=(build-essential)
if [ "${MC_BOOTSTRAP_TEST_TOOLS:-0}" = 1 ]; then
  command -v promtool >/dev/null || need_apt+=(prometheus)
  command -v yamllint >/dev/null || need_apt+=(yamllint)
  command -v chromium >/dev/null || need_apt+=(chromium)
  command -v node >/dev/null || need_apt+=(nodejs npm)
  python3 -c 'import ensurepip' 2>/dev/null || need_apt+=(python3-venv)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
if ! command -v cargo >/dev/null; then
  echo "bootstrap: cargo not found; install Rust (https://rustup.rs) and re-run" >&2
  exit 1
fi
if [ "${MC_BOOTSTRAP_TEST_TOOLS:-0}" = 1 ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "bootstrap: installing cargo-nextest"
  cargo install --locked cargo-nextest >/dev/null
fi
if [ "${MC_BOOTSTRAP_TEST_TOOLS:-0}" = 1 ] && ! cargo deny --version >/dev/null 2>&1; then
  # Built from source here (crates.io), like cargo-nextest: the dependency-policy stage.
  echo "bootstrap: installing cargo-deny"
  cargo install --locked cargo-deny >/dev/null
fi

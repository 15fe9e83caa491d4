#!/usr/bin/env bash
# Dependency policy (deny.toml): licenses, sources (crates.io only) and duplicate crate
# versions, over the whole workspace. The advisories check is left out: its database is a git
# repository on a host CI machines cannot reach (see docs/dependencies.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec cargo deny --locked --workspace check bans licenses sources

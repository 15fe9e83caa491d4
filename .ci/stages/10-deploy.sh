#!/usr/bin/env bash
# Kubernetes manifests, alert rules (promtool check/test), dashboard.
set -euo pipefail
cd "$(dirname "$0")/../.."
exec .ci/deploy-tests.sh

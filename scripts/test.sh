#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, Rust unit/integration/end-to-end tests
# (SQLite and a local DynamoDB-compatible server), the SAM template lint, and the
# mini-program client's Node tests. Installs what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "tools"
# moto (DynamoDB store tests) and cfn-lint (template lint); a private venv where the system
# Python refuses pip installs (PEP 668). Every test finds that Python through WXSHOP_PYTHON.
WXSHOP_PYTHON="$(scripts/python-tools.sh)"
export WXSHOP_PYTHON
echo "python: $WXSHOP_PYTHON"
command -v node >/dev/null 2>&1 || { echo "node is required for the mini-program tests (apt-get install nodejs)"; exit 1; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# Every test target runs even when one fails (--no-fail-fast), and the Node tests run after a
# Rust failure too, so one run names every failure; the script still fails if any did.
step "cargo test (workspace)"
cargo build -p wxlocal
rust_rc=0
cargo test --workspace --no-fail-fast || rust_rc=$?

step "mini-program client (node --test)"
node_rc=0
(cd miniprogram && node --test test/) || node_rc=$?

if [ "$rust_rc" -ne 0 ] || [ "$node_rc" -ne 0 ]; then
    [ "$rust_rc" -eq 0 ] || echo "FAILED: cargo test (exit $rust_rc): the failing tests are listed under 'failures:' above" >&2
    [ "$node_rc" -eq 0 ] || echo "FAILED: node --test in miniprogram/ (exit $node_rc)" >&2
    exit 1
fi

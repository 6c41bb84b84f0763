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

step "cargo test (workspace)"
cargo build -p wxlocal
cargo test --workspace

step "mini-program client (node --test)"
(cd miniprogram && node --test test/)

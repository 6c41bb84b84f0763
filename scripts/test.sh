#!/usr/bin/env bash
# Runs every test of the project: formatting, lints, Rust unit/integration/end-to-end tests
# (SQLite and a local DynamoDB-compatible server), the SAM template lint, and the
# mini-program client's Node tests. Installs what a fresh machine lacks.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "tools"
if ! python3 -c 'import moto, flask' >/dev/null 2>&1; then
  echo "installing moto[server] (local DynamoDB-compatible server for the store tests)"
  python3 -m pip install --quiet 'moto[server]'
fi
if ! command -v cfn-lint >/dev/null 2>&1 && ! python3 -m cfnlint --version >/dev/null 2>&1; then
  echo "installing cfn-lint (SAM template lint)"
  python3 -m pip install --quiet cfn-lint
fi
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

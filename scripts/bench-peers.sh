#!/usr/bin/env bash
# The notification comparison of issue 8 in one command (see docs/PERFORMANCE.md):
# builds wxshop-bench (release), installs the peers in a scratch folder (target/bench-peers/,
# never committed: wechatpy in a venv, tenpay with npm), runs every implementation in its own
# process, one after another, on the same payloads (bench/payloads.json) — PASSES times,
# alternating, so that a slow moment of the machine does not fall on one implementation
# only — then payCallback in-process on SQLite and :memory:, and prints a table with ratios
# (medians over the passes, and the range of the per-pass ratios).
#
#   scripts/bench-peers.sh            # notify + payCallback
#   scripts/bench-peers.sh --full     # also cold start (login, pay-callback) and wxlocal
#   SECS=1 ROUNDS=3 PASSES=3 N=5000   # round length, rounds per pass, passes, payCallback notifications
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SCRATCH=$ROOT/target/bench-peers
SECS=${SECS:-1}
ROUNDS=${ROUNDS:-3}
PASSES=${PASSES:-3}
N=${N:-5000}
FULL=0
[[ "${1:-}" == "--full" ]] && FULL=1
mkdir -p "$SCRATCH"
OUT=$SCRATCH/results-$(date -u +%Y%m%dT%H%M%SZ).jsonl

echo "== build wxshop-bench (release)" >&2
cargo build --release --quiet -p wxshop-bench
BENCH=$ROOT/target/release/wxshop-bench

echo "== peers in $SCRATCH" >&2
PY=${PYTHON:-python3}
if [[ ! -x "$SCRATCH/venv/bin/python" ]]; then
  "$PY" -m venv "$SCRATCH/venv"
fi
if ! "$SCRATCH/venv/bin/python" -c 'import wechatpy, cryptography' 2>/dev/null; then
  "$SCRATCH/venv/bin/pip" install --quiet 'wechatpy==1.8.18' cryptography
fi
if [[ ! -d "$SCRATCH/node/node_modules/tenpay" ]]; then
  mkdir -p "$SCRATCH/node"
  (cd "$SCRATCH/node" && { [[ -f package.json ]] || npm init -y >/dev/null; } \
    && npm install --silent --no-audit --no-fund 'tenpay@2.1.18' >/dev/null)
fi

{
  echo "# machine: $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%FT%TZ)" >&2
  for pass in $(seq 1 "$PASSES"); do
    echo "== pass $pass/$PASSES: wxshop, wechatpy, tenpay" >&2
    "$BENCH" notify --secs "$SECS" --rounds "$ROUNDS"
    "$SCRATCH/venv/bin/python" "$ROOT/bench/peers/wechatpy_bench.py" "$ROOT/bench/payloads.json" "$SECS" "$ROUNDS"
    (cd "$SCRATCH/node" && NODE_PATH="$SCRATCH/node/node_modules" node "$ROOT/bench/peers/tenpay_bench.js" "$ROOT/bench/payloads.json" "$SECS" "$ROUNDS")
  done
  echo "== payCallback (sqlite file WAL, :memory:; one at a time and 256 in flight)" >&2
  for c in 1 256; do
    "$BENCH" paycallback --store sqlite --n "$N" --concurrency "$c"
    "$BENCH" paycallback --store memory --n "$N" --concurrency "$c"
  done
  "$BENCH" paycallback --store sqlite --n "$N" --concurrency 256 --logs
  echo "== the store's floor (the SQL of a payment alone, one thread)" >&2
  "$BENCH" sqlite-floor --n 20000 --group 20000
  if [[ $FULL == 1 ]]; then
    echo "== cold start (release login, pay-callback)" >&2
    cargo build --release --quiet -p login -p pay-callback
    "$BENCH" coldstart --bin "$ROOT/target/release/login"
    "$BENCH" coldstart --bin "$ROOT/target/release/pay-callback"
    echo "== wxlocal purchases" >&2
    "$BENCH" stack --purchases 2000 --concurrency 16
    rm -f "$SCRATCH"/stack.db*
    "$BENCH" stack --purchases 2000 --concurrency 16 --store "sqlite:$SCRATCH/stack.db"
  fi
} | tee "$OUT" >/dev/null
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
"$PY" "$ROOT/bench/peers/table.py" "$OUT"
echo
echo "raw results: ${OUT#"$ROOT"/}"

#!/usr/bin/env bash
# Fills fuzz/corpus/<target>/ (ignored by git) from the committed seeds in fuzz/seeds/<target>/.
#   fuzz/seed.sh            copy the seeds (existing corpus entries are kept)
#   fuzz/seed.sh --regen    first rebuild fuzz/seeds/ from ../shared/vectors/pay_v2.json and
#                           shared/tests/*.rs (fuzz/seed.py; python3, plus the `cryptography`
#                           package for the safe-mode push envelopes)
set -euo pipefail
cd "$(dirname "$0")"
if [[ "${1:-}" == "--regen" ]]; then
    python3 seed.py
fi
for dir in seeds/*/; do
    target=$(basename "$dir")
    mkdir -p "corpus/$target"
    cp -n "$dir"* "corpus/$target/" 2>/dev/null || true
    echo "corpus/$target: $(find "corpus/$target" -type f | wc -l) files"
done

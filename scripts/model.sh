#!/usr/bin/env bash
# Runs the model-based sequences (crates/backfill/tests/it/model.rs) from
# random seeds, five cases of ten steps at a time, until MINUTES (default
# 60) have passed; stops at the first failure, whose message names the seed
# to replay it with. Usage: scripts/model.sh [MINUTES]
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES="${1:-60}"
end=$(( $(date +%s) + MINUTES * 60 ))
rounds=0
while [ "$(date +%s)" -lt "$end" ]; do
  seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
  echo "model: cases from seed $seed" >&2
  BACKFILL_MODEL_SEED=$seed BACKFILL_MODEL_CASES=5 BACKFILL_MODEL_STEPS=10 \
    scripts/test.sh model:: >/tmp/backfill-model.log 2>&1 || {
      grep -E "panicked|seed [0-9]+" /tmp/backfill-model.log | head -5 >&2
      echo "model: a sequence failed (log: /tmp/backfill-model.log)" >&2
      exit 1
    }
  rounds=$((rounds + 1))
done
echo "model: $rounds round(s) of 5 cases passed"

#!/usr/bin/env bash
# Crash torture beyond CI's trials: random SIGKILLs and aborts at every
# commit step, each followed by a resume and a row-by-row comparison with a
# clean run (Parquet target; prints `torture: trials=N kills=K aborts=A
# lost_rows=0 duplicated_rows=0 orphans=0`), and on Delta and PostgreSQL
# targets sequences of crashes, lost states and replans checked against
# DuckDB after every step (model.rs). Usage: scripts/torture.sh [TRIALS]
set -euo pipefail
cd "$(dirname "$0")/.."
export BACKFILL_TORTURE_TRIALS="${1:-100}"
exec scripts/test.sh --test it torture -- --nocapture

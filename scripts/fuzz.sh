#!/usr/bin/env bash
# Fuzzes the job-file parser and the planner (fuzz/fuzz_targets/job_file.rs)
# for SECONDS (default 20). cargo-fuzz needs nightly flags; the stable
# toolchain accepts them with RUSTC_BOOTSTRAP=1, and without a sanitizer,
# which would need a nightly standard library.  Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TO_RUN="${1:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked --quiet
export RUSTC_BOOTSTRAP=1
cargo fuzz run job_file --sanitizer none \
  --target-dir "${BACKFILL_FUZZ_TARGET:-$HOME/.cache/backfill-fuzz-target}" \
  -- -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 2>&1 | tail -n 3

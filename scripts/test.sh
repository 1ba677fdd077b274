#!/usr/bin/env bash
# Runs the whole test suite on a fresh machine: creates the Python virtual
# environment with the oracle (DuckDB, pyarrow, deltalake), moto (the
# S3-compatible server the object-store tests start) and PySpark (the Spark
# Connect server of the Spark engine tests) if needed, installs protoc and
# Java when missing, starts a throwaway
# PostgreSQL on loopback (installing the server if it is missing; stopped on
# exit, even on failure), installs the tansu Kafka broker the Kafka tests
# start, then cargo test; then builds the Python package (python/) into
# its own virtualenv and runs its pytest suite.
# Extra arguments go to `cargo test` (e.g. `scripts/test.sh crash`).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${BACKFILL_VENV:-$HOME/.cache/backfill-venv}"
if ! "$VENV/bin/python" -c "import duckdb, pyarrow, deltalake, moto.server, pyspark" 2>/dev/null; then
  echo "creating the oracle virtualenv in $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/requirements.txt
fi
export BACKFILL_TEST_PYTHON="$VENV/bin/python"
scripts/deps.sh
# The Kafka-protocol broker the Kafka tests start, one per test, on loopback.
BACKFILL_TEST_TANSU="$(scripts/tansu.sh)"
export BACKFILL_TEST_TANSU
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backfill-target}"
# Snapshots are compared, never rewritten, when CI=true. A test binary
# that cargo reuses from a build in another checkout sharing the target
# directory carries that checkout's path; insta finds the snapshots here.
export INSTA_WORKSPACE_ROOT="$PWD"
log="$(mktemp)"
pg_dir=""
cleanup() {
  rm -f "$log"
  if [ -n "$pg_dir" ]; then scripts/pg.sh stop "$pg_dir"; fi
}
trap cleanup EXIT
# PostgreSQL tests fail (never skip) when the server cannot start.
if [ -z "${BACKFILL_TEST_PG_URL:-}" ]; then
  eval "$(scripts/pg.sh start)"
  pg_dir="$BACKFILL_TEST_PG_DIR"
fi
# The engine's crates (the workspace's default members; the Python
# extension module is built below, by maturin).
cargo test --locked --features backfill/spark "$@" 2>&1 | tee "$log"

# The Python package, when no filter was given (or BACKFILL_SKIP_PYTHON=1).
if [ "$#" -eq 0 ] && [ -z "${BACKFILL_SKIP_PYTHON:-}" ]; then
  scripts/python.sh 2>&1 | tee -a "$log"
fi

# The whole suite also fuzzes the job-file parser briefly (skipped when a
# filter was given, or with BACKFILL_SKIP_FUZZ=1).
if [ "$#" -eq 0 ] && [ -z "${BACKFILL_SKIP_FUZZ:-}" ]; then
  scripts/fuzz.sh 20
fi

# One closing line over all test binaries.
# pytest's summary line ("12 passed, 1 failed in 9.1s") counts too.
awk '/^test result:/ { p += $4; f += $6 }
     /^[=]* *[0-9]+ (passed|failed)/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"

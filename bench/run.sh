#!/usr/bin/env bash
# The benchmark: the demo job by backfill (one-shot and weekly chunks) and by
# DuckDB and Polars (PySpark with --with-spark), in one run, outputs checked
# against each other. Writes bench/results/bench-<rows>.{md,json}.
#
#   bench/run.sh [--rows N] [--repeat K] [--with-spark] [--spark-engine]
#     --with-spark: the same job hand-written in PySpark, as a peer
#     --spark-engine: backfill itself with [engine] kind = "spark" against a
#       Spark Connect server (local[2]) the script starts; builds with the
#       `spark` feature
#   bench/run.sh --smoke        # 100k rows, one repetition, debug build (CI)
#   bench/run.sh --scale        # backfill alone at 1M, 10M and 50M rows, with a plot
#   bench/run.sh --state        # checkpointing cost: plan and state store over 87,648 hourly chunks
#   bench/run.sh --postgres [--rows N]   # PostgreSQL replace/merge against COPY (default 1M rows)
#   bench/run.sh --memory [--rows N]     # peak RSS under [run] memory_limit: a change log, 10,000 partitions (default 1M rows)
#   bench/run.sh --kafka [--rows N]      # Kafka replay from a local tansu broker against a Python consumer (default 5M events)
#   bench/run.sh --python [--rows N] [--repeat K]  # the demo job through the Python package against the CLI, K alternating pairs (default 1M rows, 5 pairs)
set -euo pipefail
cd "$(dirname "$0")/.."

ROWS=10000000
REPEAT=3
SMOKE=
SCALE=
STATE=
POSTGRES=
MEMORY=
KAFKA=
PYMODE=
ROWS_SET=
REPEAT_SET=
EXTRA=()
FEATURES=
while [ $# -gt 0 ]; do
  case "$1" in
    --rows) ROWS="$2"; ROWS_SET=1; shift 2 ;;
    --repeat) REPEAT="$2"; REPEAT_SET=1; shift 2 ;;
    --with-spark) EXTRA+=(--with-spark); shift ;;
    --spark-engine) EXTRA+=(--spark-engine); FEATURES=spark; shift ;;
    --smoke) SMOKE=1; ROWS=100000; REPEAT=1; shift ;;
    --scale) SCALE=1; shift ;;
    --state) STATE=1; shift ;;
    --postgres) POSTGRES=1; shift ;;
    --memory) MEMORY=1; shift ;;
    --kafka) KAFKA=1; shift ;;
    # The Python module always has the Spark engine; the CLI is built alike.
    --python) PYMODE=1; FEATURES=spark; shift ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
done

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backfill-target}"
if [ -n "$SMOKE" ]; then
  # CI passes the test suite's features, so the smoke run shares its build.
  cargo build --locked -q -p backfill ${BACKFILL_FEATURES:+--features "$BACKFILL_FEATURES"}
  BIN="$CARGO_TARGET_DIR/debug/backfill"
  RESULTS="${BACKFILL_BENCH_RESULTS:-$(mktemp -d)}"
elif [ -n "${BACKFILL_BIN:-}" ]; then
  BIN="$BACKFILL_BIN"
  RESULTS=bench/results
else
  if [ -n "$FEATURES" ]; then scripts/deps.sh; fi
  cargo build --locked --release -q -p backfill ${FEATURES:+--features "$FEATURES"}
  BIN="$CARGO_TARGET_DIR/release/backfill"
  RESULTS=bench/results
fi

VENV="${BACKFILL_BENCH_VENV:-$HOME/.cache/backfill-bench-venv}"
PKGS=(-r bench/requirements.txt)
if [ ${#EXTRA[@]} -gt 0 ]; then PKGS+=(pyspark==4.3.0); fi
if ! "$VENV/bin/python" -c "import duckdb, polars" 2>/dev/null || { [ ${#EXTRA[@]} -gt 0 ] && ! "$VENV/bin/python" -c "import pyspark" 2>/dev/null; }; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PKGS[@]}"
fi

WORK="${BACKFILL_BENCH_WORK:-$HOME/.cache/backfill-bench}"
if [ -n "$POSTGRES" ]; then
  [ -n "$ROWS_SET" ] || ROWS=1000000
  pg_dir=""
  trap '[ -n "$pg_dir" ] && scripts/pg.sh stop "$pg_dir"' EXIT
  if [ -z "${BACKFILL_TEST_PG_URL:-}" ]; then
    eval "$(scripts/pg.sh start)"
    pg_dir="$BACKFILL_TEST_PG_DIR"
  fi
  "$VENV/bin/python" bench/pg.py --rows "$ROWS" --bin "$BIN" --python "$VENV/bin/python" \
    --work "$WORK" --results "$RESULTS"
  exit 0
fi
if [ -n "$MEMORY" ]; then
  [ -n "$ROWS_SET" ] || ROWS=1000000
  exec "$VENV/bin/python" bench/memory.py --rows "$ROWS" --bin "$BIN" --python "$VENV/bin/python" \
    --work "$WORK" --results "$RESULTS"
fi
if [ -n "$KAFKA" ]; then
  [ -n "$ROWS_SET" ] || ROWS=5000000
  "$VENV/bin/python" -c "import kafka, pyarrow" 2>/dev/null \
    || "$VENV/bin/pip" install --quiet --disable-pip-version-check kafka-python==2.2.15 pyarrow==26.0.1
  exec "$VENV/bin/python" bench/kafka.py --rows "$ROWS" --repeat "$REPEAT" --bin "$BIN" \
    --tansu "$(scripts/tansu.sh)" --python "$VENV/bin/python" --work "$WORK" --results "$RESULTS"
fi
if [ -n "$PYMODE" ]; then
  [ -n "$ROWS_SET" ] || ROWS=1000000
  PAIRS=5
  [ -z "$REPEAT_SET" ] || PAIRS="$REPEAT"
  PROFILE=release
  [ -z "$SMOKE" ] || PROFILE=dev
  PYVENV="${BACKFILL_BENCH_PY_VENV:-$HOME/.cache/backfill-bench-py-venv}"
  [ -x "$PYVENV/bin/python" ] || python3 -m venv "$PYVENV"
  MATURIN_PEP517_ARGS="--profile $PROFILE" "$PYVENV/bin/pip" install --quiet \
    --disable-pip-version-check --force-reinstall --no-deps ./python
  exec "$VENV/bin/python" bench/python.py --rows "$ROWS" --pairs "$PAIRS" --bin "$BIN" \
    --python "$PYVENV/bin/python" --work "$WORK" --results "$RESULTS" --profile "$PROFILE"
fi
if [ -n "$STATE" ]; then
  exec "$VENV/bin/python" bench/state.py --bin "$BIN" --work "$WORK" --results "$RESULTS"
fi
if [ -n "$SCALE" ]; then
  "$VENV/bin/python" -c "import matplotlib" 2>/dev/null || "$VENV/bin/pip" install --quiet matplotlib
  exec "$VENV/bin/python" bench/scale.py --bin "$BIN" --work "$WORK" --results "$RESULTS"
fi
"$VENV/bin/python" bench/bench.py --rows "$ROWS" --repeat "$REPEAT" --bin "$BIN" \
  --work "$WORK" --results "$RESULTS" "${EXTRA[@]+"${EXTRA[@]}"}"

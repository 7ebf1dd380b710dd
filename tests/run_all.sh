#!/usr/bin/env bash
# Builds fa3c from scratch and runs every test: the C suite under ctest, then the Python suite under
# pytest in a private virtual environment. GPU tests report "skipped" where no GPU is present.
#   BUILD_DIR (default build), FA3C_CUDA (default AUTO), JOBS (default: all cores).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
jobs=${JOBS:-$(nproc)}

cmake -S "$root" -B "$build" -DFA3C_CUDA="${FA3C_CUDA:-AUTO}" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j "$jobs"

status=0
(cd "$build" && ctest --output-on-failure -j "$jobs") || status=1

venv=${VENV_DIR:-$build/venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip >/dev/null
"$venv/bin/python" -m pip install --quiet numpy ml_dtypes pytest
FA3C_LIBRARY="$build/libfa3c.so" "$venv/bin/python" -m pip install --quiet "$root/python"
(cd "$root/python" && "$venv/bin/python" -m pytest -q tests) || status=1
exit $status

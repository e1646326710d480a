#!/usr/bin/env bash
# Optional: compile the stream core (src/metrify/domain/stream: core.py, meter_state.py,
# grammar.py) with mypyc, in place, next to the sources. Nothing else changes: the package stays
# plain Python, and wherever no compiler is at hand it runs from the .py files as always.
#
#   scripts/build_native.sh          build (needs a C compiler, Python headers, mypy, setuptools)
#   scripts/build_native.sh --clean  remove the build: back to pure Python
#   scripts/build_native.sh --test   build, then run tests/unit against the compiled modules and
#                                    again against the sources (METRIFY_PURE_PYTHON=1)
#
# The build writes metrify/domain/stream/_native.stamp (SHA-256 of the compiled sources). The
# package imports the compiled modules only while the stamp matches the sources and
# METRIFY_PURE_PYTHON is unset (see metrify/domain/stream/__init__.py): edit a source and the next
# import runs the edited source until you build again. The artefacts (*.so, _native.stamp,
# src/build/) are not meant for git; a wheel built with them in place would carry them.
#
# PYTHON selects the interpreter (default: python3); it must be the one that runs Metrify.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
stream="$root/src/metrify/domain/stream"
python="${PYTHON:-python3}"
if [[ "$python" == */* ]]; then # a path: made absolute (the build runs from src/), not resolved (a venv's link)
  python="$(cd "$(dirname "$python")" && pwd)/$(basename "$python")"
fi

clean() {
  rm -f "$stream"/*.so "$stream/_native.stamp"
  rm -rf "$root/src/build" "$root/build/mypyc.log"
}

build() {
  if ! "$python" -c "import mypyc.build, setuptools" 2>/dev/null; then
    echo "build_native: $python has no mypyc/setuptools (pip install mypy setuptools); nothing built" >&2
    exit 1
  fi
  clean
  mkdir -p "$root/build"
  local stamp
  stamp="$(cd "$root/src" && METRIFY_PURE_PYTHON=1 "$python" -c \
    'from metrify.domain.stream import sources_stamp; print(sources_stamp())')"
  (
    cd "$root/src"
    "$python" - <<'PY'
import sys

from mypyc.build import mypycify
from setuptools import setup

from metrify.domain.stream import NATIVE_MODULES

setup(
    name="metrify-stream-native",
    script_args=["build_ext", "--inplace"],
    ext_modules=mypycify(
        [f"metrify/domain/stream/{name}.py" for name in NATIVE_MODULES],
        group_name="metrify.domain.stream._native",
        opt_level="3",
    ),
)
PY
  ) > "$root/build/mypyc.log" 2>&1 || {
    tail -30 "$root/build/mypyc.log" >&2
    clean
    echo "build_native: the build failed; the sources run as before" >&2
    exit 1
  }
  echo "$stamp" > "$stream/_native.stamp"
  local compiled
  compiled="$(cd "$root/src" && "$python" -c \
    'import metrify.domain.stream as s, metrify.domain.stream.core as c; print(s.COMPILED, c.__file__)')"
  echo "build_native: built; compiled in use: $compiled"
}

case "${1:-}" in
  --clean)
    clean
    echo "build_native: removed; the stream core runs from its sources"
    ;;
  --test)
    build
    cd "$root"
    echo "== tests/unit, compiled stream core"
    PYTHONPATH=src:. "$python" -m pytest tests/unit -q
    echo "== tests/unit, pure-Python stream core"
    METRIFY_PURE_PYTHON=1 PYTHONPATH=src:. "$python" -m pytest tests/unit -q
    ;;
  "")
    build
    ;;
  *)
    sed -n '2,20p' "$0" >&2
    exit 2
    ;;
esac

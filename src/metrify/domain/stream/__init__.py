"""The stream contract (DESIGN §3): the event-time core, its per-meter state, the text grammars.

Plain Python. `scripts/build_native.sh` may compile `core`, `meter_state` and `grammar` with
mypyc, in place, next to their sources, with a stamp of the sources it compiled. The compiled
modules are imported only while that stamp matches the sources and METRIFY_PURE_PYTHON is unset;
otherwise the sources themselves are imported, so an edited source is never shadowed by a stale
build. `COMPILED` says which ones this process runs.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Sequence
from importlib.machinery import ModuleSpec
from pathlib import Path
from types import ModuleType

NATIVE_MODULES = ("core", "meter_state", "grammar")
_HERE = Path(__file__).resolve().parent
_STAMP = _HERE / "_native.stamp"


def sources_stamp() -> str:
    """SHA-256 of the sources that the native build compiles, in order."""
    digest = hashlib.sha256()
    for name in NATIVE_MODULES:
        digest.update((_HERE / f"{name}.py").read_bytes())
    return digest.hexdigest()


class _SourcesFirst:
    """A meta path finder that imports the stream modules from their .py files."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None = None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package == __name__ and name in NATIVE_MODULES:
            return importlib.util.spec_from_file_location(fullname, _HERE / f"{name}.py")
        return None


def _compiled_modules_present() -> bool:
    return any((_HERE / f"core{suffix}").exists() for suffix in importlib.machinery.EXTENSION_SUFFIXES)


def _use_compiled() -> bool:
    if os.environ.get("METRIFY_PURE_PYTHON"):
        return False
    try:
        return _STAMP.read_text().strip() == sources_stamp()
    except OSError:
        return False


COMPILED = False
if _compiled_modules_present():
    COMPILED = _use_compiled()
    if not COMPILED:
        sys.meta_path.insert(0, _SourcesFirst())

"""Metrify: a smart-meter data platform with an exact event-time stream core."""

from __future__ import annotations


def __getattr__(name: str) -> str:
    """`metrify.__version__`, read from the installed package's metadata when first asked for:
    importing importlib.metadata costs some 50 ms, on every command's start-up (each `metrify
    export` among them), and only `--version`, `metrify info` and the API's OpenAPI ask."""
    if name != "__version__":
        raise AttributeError(f"module 'metrify' has no attribute {name!r}")
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("metrify")
    except PackageNotFoundError:  # running from a source tree that was never installed
        found = "0.0.0+source"
    globals()["__version__"] = found
    return found

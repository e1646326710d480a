"""Metrify: a smart-meter data platform with an exact event-time stream core."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("metrify")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

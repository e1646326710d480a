"""The REST API (issue 7): `create_app(settings=None, container=None)` builds it; `metrify api` serves it."""

from metrify.entrypoints.api.app import create_app

__all__ = ["create_app"]

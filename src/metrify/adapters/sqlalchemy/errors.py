"""Which database failures are transient (the server is down or restarting): those become
`TransientStoreError`, which the pipeline answers by retrying the same write with backoff."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.exc as sa_exc

from metrify.application.ports import TransientStoreError

_TRANSIENT_MESSAGES = (
    "connection refused",
    "could not connect",
    "connection failed",
    "server closed the connection",
    "connection reset",
    "connection is closed",
    "connection already closed",
    "the connection is lost",
    "terminating connection",
    "administrator command",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "consuming input failed",
    "ssl connection has been closed",
    "broken pipe",
    "timeout expired",
    "connection timed out",
    "no route to host",
    "network is unreachable",
    "database is locked",
    "too many connections",
    "could not serialize access",
    "deadlock detected",
)


def _psycopg_transient(exc: BaseException) -> bool:
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if isinstance(exc, psycopg.OperationalError):  # connection problems, admin shutdown, ...
        return True
    if isinstance(exc, psycopg.errors.SerializationFailure | psycopg.errors.DeadlockDetected):
        return True
    return False


def is_transient(exc: BaseException) -> bool:
    """True for failures that a retry can cure: a lost or refused connection, a restart."""
    if isinstance(exc, TransientStoreError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if exc.orig is not None and _psycopg_transient(exc.orig):
            return True
    elif isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True
    elif _psycopg_transient(exc):
        return True
    elif not isinstance(exc, sa_exc.SQLAlchemyError | OSError | sqlite3.Error):
        return False
    message = str(exc).lower()
    return any(text in message for text in _TRANSIENT_MESSAGES)


@contextmanager
def transient_errors() -> Iterator[None]:
    """Re-raise transient database failures as TransientStoreError (the cause kept)."""
    try:
        yield
    except TransientStoreError:
        raise
    except Exception as exc:
        if is_transient(exc):
            raise TransientStoreError(str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)) from exc
        raise

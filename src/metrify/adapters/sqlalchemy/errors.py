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


# SQLSTATEs a retry can cure: the connection (class 08), the server's resources (53: too many
# connections, out of memory or disk), an operator, a crash, a start-up or an idle timeout (57P0x), a query
# cancelled by a timeout (57014), a transaction that lost a race (40001, 40P01), a lock not
# granted in time (55P03), a standby read-only until the failover ends (25006). Any other state is
# the statement's own fault (psycopg files some of those, like 54000 "index row size exceeds
# maximum", under OperationalError too): retrying it would retry for ever.
_TRANSIENT_CLASSES = frozenset({"08", "53"})
_TRANSIENT_STATES = frozenset({"57P01", "57P02", "57P03", "57P05", "57014", "40001", "40P01", "55P03", "25006"})


def _psycopg_verdict(exc: BaseException) -> bool | None:
    """For a psycopg error: whether a retry can cure it; None for anything else."""
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return None
    if not isinstance(exc, psycopg.Error):
        return None
    state = exc.sqlstate
    if state is None:  # the client's side: a connection refused, lost or closed
        return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)
    return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES


def is_transient(exc: BaseException) -> bool:
    """True for failures that a retry can cure: a lost or refused connection, a restart."""
    if isinstance(exc, TransientStoreError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        verdict = _psycopg_verdict(exc.orig) if exc.orig is not None else None
        if verdict is not None:
            return verdict
    elif isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True
    elif (verdict := _psycopg_verdict(exc)) is not None:
        return verdict
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

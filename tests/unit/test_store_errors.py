"""Which database failures the pipeline retries: those a retry can cure, and no others (a
permanent one retried would stop a replay or the sink for ever, silently)."""

from __future__ import annotations

import sqlite3

import psycopg
import pytest
import sqlalchemy.exc as sa_exc
from psycopg import errors as pg

from metrify.adapters.sqlalchemy.errors import is_transient, transient_errors
from metrify.application.ports import TransientStoreError


def wrapped(error: Exception) -> sa_exc.DBAPIError:
    return sa_exc.OperationalError("INSERT ...", {}, error)


@pytest.mark.parametrize(
    "error",
    [
        psycopg.OperationalError("connection failed: Connection refused"),  # no SQLSTATE: the client's side
        pg.AdminShutdown("terminating connection due to administrator command"),
        pg.CannotConnectNow("the database system is starting up"),
        pg.TooManyConnections("sorry, too many clients already"),
        pg.SerializationFailure("could not serialize access"),
        pg.DeadlockDetected("deadlock detected"),
        pg.LockNotAvailable("canceling statement due to lock timeout"),
        pg.ReadOnlySqlTransaction("cannot execute INSERT in a read-only transaction"),  # a failover
    ],
)
def test_what_a_retry_can_cure_is_transient(error: Exception) -> None:
    assert is_transient(error) and is_transient(wrapped(error))


@pytest.mark.parametrize(
    "error",
    [
        pg.ProgramLimitExceeded("index row size 4024 exceeds btree version 4 maximum 2704"),  # an OperationalError
        pg.ObjectNotInPrerequisiteState("..."),
        pg.CheckViolation("new row violates check constraint"),
        pg.UndefinedTable('relation "readings" does not exist'),
        pg.UniqueViolation("duplicate key value"),
    ],
)
def test_what_a_retry_cannot_cure_is_not(error: Exception) -> None:
    assert not is_transient(error) and not is_transient(wrapped(error))
    with pytest.raises(type(error)), transient_errors():
        raise error


def test_sqlite_busy_is_transient_and_a_missing_table_is_not() -> None:
    assert is_transient(sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked")))
    assert not is_transient(sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("no such table: x")))
    with pytest.raises(TransientStoreError), transient_errors():
        raise sa_exc.OperationalError("INSERT", {}, sqlite3.OperationalError("database is locked"))

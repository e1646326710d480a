"""Reachability probes for `metrify info` and the readiness check: a reason, never a traceback."""

from __future__ import annotations

import socket

from sqlalchemy import create_engine, text
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError

from metrify.adapters.sqlalchemy.engine import normalise_url

_TIMEOUT = 3.0


def describe_database_error(exc: BaseException) -> str | None:
    """One line for a database error a user can act on; None for anything else (a bug)."""
    if isinstance(exc, DBAPIError):
        message = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        return message or type(exc.orig).__name__
    if isinstance(exc, ArgumentError | NoSuchModuleError):
        return f"bad METRIFY_DATABASE_URL ({exc})"
    if type(exc).__name__ == "CommandError":  # alembic: unknown revision and its kin
        return str(exc)
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return None


def probe_database(url: str) -> str:
    """'yes' when a connection answers `SELECT 1`, else 'unreachable: <reason>'."""
    try:
        parsed = normalise_url(url)  # postgres:// and postgresql:// as everywhere else
        connect_args = {"connect_timeout": int(_TIMEOUT)} if parsed.get_backend_name() == "postgresql" else {}
        engine = create_engine(parsed, connect_args=connect_args)
    except Exception as exc:
        return f"unreachable: {describe_database_error(exc) or exc}"
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return "yes"
    except Exception as exc:
        return f"unreachable: {describe_database_error(exc) or exc}"
    finally:
        engine.dispose()


def _retention_text(partitions: bool = True) -> str:
    """The retention policy from the settings, e.g. `retention readings 90d, rejected 30d, ...`."""
    try:
        from metrify.settings import format_duration, load_settings

        s = load_settings().storage
    except Exception as exc:  # noqa: BLE001 - a bad setting is reported by the command itself
        return f"retention unknown ({exc})"
    keep = {
        "readings": s.retention_readings,
        "rejected": s.retention_rejected,
        "too-late": s.retention_too_late,
        "aggregates": s.retention_aggregates,
    }
    text = ", ".join(f"{name} {format_duration(v) if v > 0 else 'forever'}" for name, v in keep.items())
    if not partitions:
        return f"retention {text} (rows older are deleted)"
    return f"retention {text} (whole partitions dropped); partitions {s.partition_months_ahead} months ahead"


def storage_features(url: str) -> str:
    """The storage features in use: SQLite file, or PostgreSQL with native monthly partitions or
    TimescaleDB hypertables, and the retention policy."""
    if url.startswith("sqlite"):
        return f"SQLite (WAL journal), single writer; no partitions; {_retention_text(partitions=False)}"
    retention = _retention_text()
    try:
        from metrify.adapters.sqlalchemy.partitions import SqlAlchemyStorageMaintenance

        engine = create_engine(normalise_url(url), connect_args={"connect_timeout": int(_TIMEOUT)})
        try:
            with engine.connect() as connection:
                version = connection.execute(text("SHOW server_version")).scalar()
                timescale = connection.execute(
                    text("SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'")
                ).scalar()
            layout = SqlAlchemyStorageMaintenance(engine).features()
        finally:
            engine.dispose()
    except Exception as exc:
        return f"unknown (unreachable: {describe_database_error(exc) or exc})"
    server = f"PostgreSQL {version} with TimescaleDB {timescale}" if timescale else f"PostgreSQL {version}"
    return f"{server}; {layout}; {retention}"


def probe_kafka(bootstrap: str) -> str:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    try:
        addresses = bootstrap_addresses(bootstrap)
    except ValueError as exc:
        return f"unreachable: {exc}"
    failures = []
    for host, port in addresses:  # as a client does: any one broker of the list will do
        try:
            socket.create_connection((host, port), timeout=_TIMEOUT).close()
            break
        except OSError as exc:
            failures.append(f"{host}:{port} {exc.strerror or exc}")
    else:
        return f"unreachable: {'; '.join(failures) or 'no broker address in METRIFY_KAFKA__BOOTSTRAP'}"
    try:
        metadata = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=_TIMEOUT)
    except KafkaException as exc:
        return f"unreachable: {exc.args[0].str() if exc.args else exc}"
    return f"yes ({len(metadata.brokers)} broker(s), {len(metadata.topics)} topic(s))"


def bootstrap_addresses(bootstrap: str) -> list[tuple[str, int]]:
    """The (host, port) of each entry of a Kafka bootstrap list as clients read it: entries split
    on commas, each with an optional `PROTOCOL://`, an IPv6 address in brackets, and port 9092
    when it has none. ValueError for a port that is not one."""
    addresses = []
    for item in bootstrap.split(","):
        entry = item.strip().rpartition("://")[2]
        if not entry:
            continue
        if entry.startswith("["):  # [::1]:9092
            host, _, rest = entry[1:].partition("]")
            port = rest.removeprefix(":")
        elif entry.count(":") == 1:
            host, _, port = entry.partition(":")
        else:  # a host without a port (or an IPv6 address without brackets, and so without one)
            host, port = entry, ""
        if port and not (port.isascii() and port.isdigit() and 0 < int(port) < 65536):
            raise ValueError(f"bad port in the bootstrap entry {item.strip()!r}")
        addresses.append((host or "127.0.0.1", int(port) if port else 9092))
    return addresses


def probe_redis(url: str) -> str:
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=_TIMEOUT, socket_timeout=_TIMEOUT)
        client.ping()
        version = client.info("server").get("redis_version", "?")
        client.close()
        return f"yes (Redis {version})"
    except (redis.RedisError, ValueError, OSError) as exc:
        return f"unreachable: {exc}"

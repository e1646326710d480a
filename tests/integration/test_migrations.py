"""The migrations, on SQLite and PostgreSQL: up to head, down one revision at a time to base
and up again (the stairway), and at head the schema is exactly what the adapter's tables say."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from metrify.adapters.sqlalchemy import migrations
from metrify.adapters.sqlalchemy.engine import create_engine_for
from metrify.adapters.sqlalchemy.tables import metadata

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def empty_url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_postgres_url")


def tables_made_on(url: str) -> set[str]:
    """The adapter's tables the migrations make on this URL's database (some are SQLite's only)."""
    dialect = "sqlite" if url.startswith("sqlite") else "postgresql"
    return {name for name, table in metadata.tables.items() if table.info.get("only_on", dialect) == dialect}


def table_names(url: str) -> set[str]:
    engine = create_engine_for(url)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_the_scripts_form_one_line_with_one_head() -> None:
    revisions = migrations.revisions()
    assert migrations.heads() == [revisions[-1]] == [migrations.HEAD]  # HEAD: a new script moves it
    assert len(revisions) == len(set(revisions)) >= 1


def test_stairway_up_then_down_one_revision_at_a_time_then_up_again(empty_url: str) -> None:
    revisions = migrations.revisions()
    assert migrations.current(empty_url) is None
    migrations.upgrade(empty_url)
    assert migrations.current(empty_url) == revisions[-1]
    assert table_names(empty_url) == tables_made_on(empty_url)
    for index in range(len(revisions) - 1, -1, -1):
        target = revisions[index - 1] if index > 0 else "base"
        migrations.downgrade(empty_url, target)
        assert migrations.current(empty_url) == (None if target == "base" else target)
        migrations.upgrade(empty_url, revisions[index])  # each step is reversible on its own
        migrations.downgrade(empty_url, target)
    assert table_names(empty_url) == set()
    migrations.upgrade(empty_url)
    assert migrations.is_up_to_date(empty_url)


def test_a_migration_that_fails_half_way_leaves_the_schema_as_it_was(empty_url: str) -> None:
    """One transaction holds an upgrade, on SQLite too (whose driver runs DDL in autocommit):
    a failure or a kill in a late revision must not leave the early revisions' tables behind,
    unrecorded, so that the next upgrade trips over them."""
    revisions = migrations.revisions()
    late_table = "users"  # created by a revision after the first
    engine = create_engine_for(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(sa.text(f"CREATE TABLE {late_table} (id INTEGER)"))
    finally:
        engine.dispose()
    with pytest.raises(Exception, match="already exists"):
        migrations.upgrade(empty_url)
    assert migrations.current(empty_url) is None
    assert table_names(empty_url) == {late_table}
    assert len(revisions) > 1


def test_the_migrated_schema_matches_the_adapter_tables(empty_url: str) -> None:
    migrations.upgrade(empty_url)
    engine = create_engine_for(empty_url)
    try:
        with engine.connect() as connection:
            dialect = connection.dialect.name

            def made_here(item: Any, name: str | None, kind: str, reflected: bool, compare_to: Any) -> bool:
                """Alembic's comparison does not read `ddl_if`: an index the tables make on
                another database only (the aggregates' index by window) is not expected here, nor
                a table of another database's only (SQLite's reading_meters)."""
                only = getattr(item, "_ddl_if", None)
                only_on = getattr(item, "info", {}).get("only_on")
                if only_on is not None and not reflected:
                    return bool(only_on == dialect)
                return reflected or only is None or only.dialect in (None, dialect)

            opts = {"compare_type": True, "include_object": made_here}
            context = MigrationContext.configure(connection, opts=opts)
            assert compare_metadata(context, metadata) == []
    finally:
        engine.dispose()


def test_upgrading_creates_a_missing_sqlite_folder(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'not' / 'yet' / 'there.db'}"
    migrations.upgrade(url)
    assert (tmp_path / "not" / "yet" / "there.db").is_file()
    assert migrations.current(url) == migrations.heads()[0]


def test_users_keep_their_sessions_across_the_security_stamp_revision(empty_url: str) -> None:
    """0010 gives each user the stamp their tokens carry already: the fingerprint of their
    password hash, which is what tokens carried as `pwd` before it."""
    migrations.upgrade(empty_url, "0009_revoked_tokens")
    engine = create_engine_for(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO users (user_id, email, password_hash, role, active, created_at, updated_at) "
                    "VALUES ('u1', 'a@example.com', :h, 'ADMIN', true, 1, 1)"
                ),
                {"h": "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA"},
            )
            connection.execute(sa.text("INSERT INTO user_regions (user_id, region) VALUES ('u1', 'north')"))
            connection.execute(sa.text("INSERT INTO user_meters (user_id, meter_id) VALUES ('u1', 'M-1')"))
        migrations.upgrade(empty_url)
        with engine.connect() as connection:  # the users' assignments are all kept
            assert connection.execute(sa.text("SELECT region FROM user_regions")).all() == [("north",)]
            assert connection.execute(sa.text("SELECT meter_id FROM user_meters")).all() == [("M-1",)]
        migrations.downgrade(empty_url, "0009_revoked_tokens")
        with engine.connect() as connection:
            assert connection.execute(sa.text("SELECT region FROM user_regions")).all() == [("north",)]
        migrations.upgrade(empty_url)
        with engine.connect() as connection:
            stamp = connection.execute(sa.text("SELECT security_stamp FROM users WHERE user_id = 'u1'")).scalar_one()
        assert stamp == hashlib.sha256(b"$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA").hexdigest()[:16]
    finally:
        engine.dispose()


def test_sqlite_aggregates_keep_their_rows_keyed_window_first_and_back(tmp_path: Path) -> None:
    """0011 keys SQLite's aggregates by (window_us, window_start, meter_id) without a rowid, rows
    kept; its downgrade keys them meter first again."""
    url = f"sqlite:///{tmp_path / 'metrify.db'}"
    migrations.upgrade(url, "0010_security_stamp")
    rows = [
        ("M-2", 3600, 7200, 2, 0.5, 0.2, 0.3),
        ("M-1", 900, 0, 1, 0.25, 0.25, 0.25),
        ("M-1", 3600, 0, 4, 1.0, 0.1, 0.4),
    ]
    engine = create_engine_for(url)

    def stored() -> list[Any]:
        with engine.connect() as connection:
            return sorted(connection.execute(sa.text("SELECT * FROM aggregates")).all())

    def key() -> str:
        with engine.connect() as connection:
            return str(connection.execute(sa.text("SELECT sql FROM sqlite_master WHERE name = 'aggregates'")).scalar())

    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text("INSERT INTO aggregates VALUES (:a, :b, :c, :d, :e, :f, :g)"),
                [dict(zip("abcdefg", r, strict=True)) for r in rows],
            )
        migrations.upgrade(url)
        assert stored() == sorted(rows)
        assert "PRIMARY KEY (window_us, window_start, meter_id)) WITHOUT ROWID" in key()
        migrations.downgrade(url, "0010_security_stamp")
        assert stored() == sorted(rows)
        assert "PRIMARY KEY (meter_id, window_us, window_start))" in key() and "WITHOUT ROWID" not in key()
    finally:
        engine.dispose()


def test_sqlite_readings_keep_their_rows_found_by_hour_and_back(tmp_path: Path) -> None:
    """0012 gives SQLite's readings a unique index by (hour, meter_id, ts) instead of the key
    (meter_id, ts), rows kept, and lists the meters that have readings; the index keeps the same
    reading apart as the key did; its downgrade keys them meter first again."""
    url = f"sqlite:///{tmp_path / 'metrify.db'}"
    migrations.upgrade(url, "0011_aggregates_by_window")
    hour = 3_600_000_000
    rows = [
        ("M-2", 5 * hour + 7, 5 * hour, 0.5, "ON_TIME", 0, 230.0, None, None, None, None, "north"),
        ("M-1", 5 * hour + 9, 5 * hour, 0.25, "LATE", 1, None, None, None, None, None, None),
        ("M-1", -hour - 3, -hour - 3, 1.0, "ON_TIME", 1, None, None, None, None, None, None),
    ]
    engine = create_engine_for(url)
    insert = "INSERT INTO readings VALUES (:a, :b, :c, :d, :e, :f, :g, :h, :i, :j, :k, :l)"

    def stored() -> list[Any]:
        with engine.connect() as connection:
            return sorted(connection.execute(sa.text("SELECT * FROM readings")).all())

    def schema() -> str:
        with engine.connect() as connection:
            return " ".join(
                connection.execute(sa.text("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL")).scalars()
            )

    try:
        with engine.begin() as connection:
            connection.execute(sa.text(insert), [dict(zip("abcdefghijkl", r, strict=True)) for r in rows])
        migrations.upgrade(url)
        assert stored() == sorted(rows)
        assert "ON readings (ts / 3600000000, meter_id, ts)" in schema() and "pk_readings" not in schema()
        with engine.begin() as connection:
            assert connection.execute(sa.text("SELECT meter_id FROM reading_meters")).scalars().all() == ["M-1", "M-2"]
            again = dict(zip("abcdefghijkl", (*rows[0][:3], 9.9, *rows[0][4:]), strict=True))
            connection.execute(sa.text(insert + " ON CONFLICT DO NOTHING"), again)  # the same reading
        assert stored() == sorted(rows)
        migrations.downgrade(url, "0011_aggregates_by_window")
        assert stored() == sorted(rows)
        assert "PRIMARY KEY (meter_id, ts)" in schema() and "reading_meters" not in schema()
    finally:
        engine.dispose()

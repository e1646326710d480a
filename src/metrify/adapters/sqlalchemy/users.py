"""Users and ingest keys in the database; each call is one transaction."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from metrify.adapters.sqlalchemy import tables as t
from metrify.adapters.sqlalchemy.errors import transient_errors
from metrify.application.errors import AlreadyExists
from metrify.application.users import LastActiveAdmin
from metrify.domain.ingest_keys import IngestKey
from metrify.domain.users import Role, User


def _now_us() -> int:
    return time.time_ns() // 1000


class SqlAlchemyUserRepository:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _load(self, connection: sa.Connection, rows: Iterable[Any]) -> list[User]:
        rows = list(rows)
        if not rows:
            return []
        ids = [row.user_id for row in rows]
        meters: dict[str, set[str]] = {i: set() for i in ids}
        regions: dict[str, set[str]] = {i: set() for i in ids}
        m, r = t.user_meters.c, t.user_regions.c
        for user_id, meter_id in connection.execute(sa.select(m.user_id, m.meter_id).where(m.user_id.in_(ids))):
            meters[user_id].add(meter_id)
        for user_id, region in connection.execute(sa.select(r.user_id, r.region).where(r.user_id.in_(ids))):
            regions[user_id].add(region)
        return [
            User(
                user_id=row.user_id,
                email=row.email,
                role=Role(row.role),
                password_hash=row.password_hash,
                active=bool(row.active),
                meters=frozenset(meters[row.user_id]),
                regions=frozenset(regions[row.user_id]),
                created_at=row.created_at,
                security_stamp=row.security_stamp,
                updated_at=row.updated_at,
            )
            for row in rows
        ]

    def _one(self, where: sa.ColumnElement[bool]) -> User | None:
        with transient_errors(), self.engine.connect() as connection:
            found = self._load(connection, connection.execute(sa.select(t.users).where(where)))
        return found[0] if found else None

    def get(self, user_id: str) -> User | None:
        return self._one(t.users.c.user_id == user_id)

    def by_email(self, email: str) -> User | None:
        return self._one(t.users.c.email == email)

    def _write_assignments(self, connection: sa.Connection, user: User) -> None:
        connection.execute(t.user_meters.delete().where(t.user_meters.c.user_id == user.user_id))
        connection.execute(t.user_regions.delete().where(t.user_regions.c.user_id == user.user_id))
        if user.meters:
            connection.execute(t.user_meters.insert(), [{"user_id": user.user_id, "meter_id": m} for m in user.meters])
        if user.regions:
            connection.execute(t.user_regions.insert(), [{"user_id": user.user_id, "region": r} for r in user.regions])

    def add(self, user: User) -> None:
        try:
            with transient_errors(), self.engine.begin() as connection:
                connection.execute(
                    t.users.insert().values(
                        user_id=user.user_id,
                        email=user.email,
                        password_hash=user.password_hash,
                        role=user.role.value,
                        active=user.active,
                        created_at=user.created_at,
                        updated_at=user.created_at,
                        security_stamp=user.security_stamp,
                    )
                )
                self._write_assignments(connection, user)
        except sa.exc.IntegrityError:
            raise AlreadyExists(f"a user with the email {user.email} exists already") from None

    def save(self, user: User, previous: User, *, keep_an_admin: bool = False) -> bool:
        c = t.users.c
        with transient_errors(), self.engine.begin() as connection:
            if keep_an_admin and connection.dialect.name == "postgresql":
                # Two ADMINs demoting each other at once would each count the other as still
                # active: the active ADMINs' rows are locked first, so the second waits and counts
                # again once the first has committed. (SQLite: the UPDATE below takes the
                # database's one write lock before the count.)
                connection.execute(
                    sa.select(c.user_id).where(c.role == Role.ADMIN.value, c.active.is_(True)).with_for_update()
                )
            stored = connection.execute(
                t.users.update()
                .where(c.user_id == user.user_id, c.updated_at == previous.updated_at)
                .values(
                    email=user.email,
                    password_hash=user.password_hash,
                    role=user.role.value,
                    active=user.active,
                    security_stamp=user.security_stamp,
                    updated_at=max(_now_us(), previous.updated_at + 1),  # a new version, whatever the clock does
                )
            )
            if stored.rowcount != 1:
                return False
            if keep_an_admin and self._active_admins(connection) == 0:
                raise LastActiveAdmin  # rolls the update back
            self._write_assignments(connection, user)
        return True

    def replace_password_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        c = t.users.c
        stmt = (
            t.users.update()
            .where(c.user_id == user_id, c.password_hash == old_hash)
            .values(password_hash=new_hash, updated_at=_now_us())
        )
        with transient_errors(), self.engine.begin() as connection:
            return connection.execute(stmt).rowcount == 1

    def list(self, after_email: str | None, limit: int) -> list[User]:
        stmt = sa.select(t.users).order_by(t.users.c.email).limit(limit)
        if after_email is not None:
            stmt = stmt.where(t.users.c.email > after_email)
        with transient_errors(), self.engine.connect() as connection:
            return self._load(connection, connection.execute(stmt))

    def count_active_admins(self) -> int:
        with transient_errors(), self.engine.connect() as connection:
            return self._active_admins(connection)

    @staticmethod
    def _active_admins(connection: sa.Connection) -> int:
        c = t.users.c
        stmt = sa.select(sa.func.count()).where(c.role == Role.ADMIN.value, c.active.is_(True))
        return int(connection.execute(stmt).scalar_one())


class SqlAlchemyIngestKeyRepository:
    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def _load(self, connection: sa.Connection, stmt: sa.Select[Any]) -> list[IngestKey]:
        rows = list(connection.execute(stmt))
        if not rows:
            return []
        ids = [row.key_id for row in rows]
        regions: dict[str, set[str]] = {i: set() for i in ids}
        r = t.ingest_key_regions.c
        for key_id, region in connection.execute(sa.select(r.key_id, r.region).where(r.key_id.in_(ids))):
            regions[key_id].add(region)
        return [
            IngestKey(
                key_id=row.key_id,
                name=row.name,
                key_hash=row.key_hash,
                prefix=row.prefix,
                regions=frozenset(regions[row.key_id]),
                all_regions=bool(row.all_regions),
                created_by=row.created_by,
                created_at=row.created_at,
                revoked_at=row.revoked_at,
            )
            for row in rows
        ]

    def _one(self, where: sa.ColumnElement[bool]) -> IngestKey | None:
        with transient_errors(), self.engine.connect() as connection:
            found = self._load(connection, sa.select(t.ingest_keys).where(where))
        return found[0] if found else None

    def get(self, key_id: str) -> IngestKey | None:
        return self._one(t.ingest_keys.c.key_id == key_id)

    def by_hash(self, key_hash: str) -> IngestKey | None:
        return self._one(t.ingest_keys.c.key_hash == key_hash)

    def add(self, key: IngestKey) -> None:
        with transient_errors(), self.engine.begin() as connection:
            connection.execute(
                t.ingest_keys.insert().values(
                    key_id=key.key_id,
                    name=key.name,
                    key_hash=key.key_hash,
                    prefix=key.prefix,
                    all_regions=key.all_regions,
                    created_by=key.created_by,
                    created_at=key.created_at,
                    revoked_at=key.revoked_at,
                )
            )
            if key.regions:
                connection.execute(
                    t.ingest_key_regions.insert(), [{"key_id": key.key_id, "region": r} for r in key.regions]
                )

    def save(self, key: IngestKey) -> None:
        """Keys change only by being revoked."""
        with transient_errors(), self.engine.begin() as connection:
            connection.execute(
                t.ingest_keys.update().where(t.ingest_keys.c.key_id == key.key_id).values(revoked_at=key.revoked_at)
            )

    def list(self) -> list[IngestKey]:
        c = t.ingest_keys.c
        with transient_errors(), self.engine.connect() as connection:
            return self._load(connection, sa.select(t.ingest_keys).order_by(c.created_at, c.key_id))


class SqlAlchemyRevocationLog:
    """Token revocations in the revoked_tokens table (Alembic 0009), for an API without Redis."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine

    def append(self, key: str, expires_at_us: int, now_us: int) -> None:
        c = t.revoked_tokens.c
        with transient_errors(), self.engine.begin() as connection:
            insert = postgresql.insert if connection.dialect.name == "postgresql" else sqlite.insert
            stmt = insert(t.revoked_tokens).values(key=key, expires_at=expires_at_us)
            connection.execute(
                stmt.on_conflict_do_update(
                    index_elements=["key"],
                    set_={"expires_at": stmt.excluded.expires_at},
                    where=stmt.excluded.expires_at > c.expires_at,
                )
            )
            connection.execute(t.revoked_tokens.delete().where(c.expires_at <= now_us))

    def live(self, now_us: int) -> list[tuple[str, int]]:
        c = t.revoked_tokens.c
        stmt = sa.select(c.key, c.expires_at).where(c.expires_at > now_us).order_by(c.key)
        with transient_errors(), self.engine.connect() as connection:
            return [(key, expires_at) for key, expires_at in connection.execute(stmt)]

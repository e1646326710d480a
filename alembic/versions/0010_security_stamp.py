"""Each user has a security stamp, which their tokens carry (users.security_stamp).

Tokens carried a fingerprint of the password hash, so that a new password ended every session
issued before it. Two things were wrong with that: a login that upgraded an old hash to the
hasher's current parameters ended the user's other sessions too (the hash changed, the password
had not), and a deactivated user who was reactivated got every session back whose tokens had not
expired (nothing about the user had changed but `active`). The stamp changes when the password or
the user's access does (a new password, a deactivation) and at nothing else; a token is good only
while it carries the stamp the user has now.

Existing users start with the fingerprint their tokens carry already, so no one is signed out by
the upgrade.

Revision ID: 0010_security_stamp
Revises: 0009_revoked_tokens
Create Date: 2026-11-28
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010_security_stamp"
down_revision: str | Sequence[str] | None = "0009_revoked_tokens"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Added NOT NULL with a default, in place: on SQLite a batch rebuild of `users` would drop the
    # table, and with foreign keys on, that deletes every user's assignments (ON DELETE CASCADE).
    op.add_column("users", sa.Column("security_stamp", sa.Text, nullable=False, server_default=""))
    users = sa.table(
        "users",
        sa.column("user_id", sa.Text),
        sa.column("password_hash", sa.Text),
        sa.column("security_stamp", sa.Text),
    )
    connection = op.get_bind()
    for user_id, password_hash in connection.execute(sa.select(users.c.user_id, users.c.password_hash)).all():
        # what auth.password_fingerprint gave before this revision, as the "pwd" claim
        stamp = hashlib.sha256(password_hash.encode()).hexdigest()[:16]
        connection.execute(users.update().where(users.c.user_id == user_id).values(security_stamp=stamp))


def downgrade() -> None:
    op.drop_column("users", "security_stamp")  # SQLite drops a column in place (3.35 and later)

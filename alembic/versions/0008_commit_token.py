"""Each partition header names the unit of work that wrote it last (commit_token).

A connection that drops during COMMIT leaves its writer without an answer: the commit may or
may not have gone through. Processing the batch again when it had would store its rejected and
too-late readings twice and turn its accepted readings into duplicates. The writer stages a token
of its own with every header it saves, and after a failed try reads it back: its own token means
its commit went through. Before this, the writer compared the store with its staged batch, which
only told apart batches that changed meters in every partition they touched.

Revision ID: 0008_commit_token
Revises: 0007_no_window_index
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_commit_token"
down_revision: str | Sequence[str] | None = "0007_no_window_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("stream_partitions", sa.Column("commit_token", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stream_partitions") as batch:
        batch.drop_column("commit_token")

"""A partition's meter states may stand behind its header: stream_partitions.states_*.

The API's stream writer process may save the meter states every N batches instead of with every
batch (METRIFY_API__STATE_SAVE_BATCHES): each batch's outcomes and header are still committed
with it, and the batches in between are kept in the ingest journal. Until the next save the
header says where the outcomes stand and these two columns where the states stand (the input
offset and watermark source they were saved at); NULL when the states are as far as the header.
A writer that loads such a partition runs the journaled batches in between through the core
again (application/journaled.py); any other refuses to load it (StreamStatesBehind).

The downgrade refuses while some partition's states stand behind: the columns say what the
states lack, and without them the states would be taken as current.

Revision ID: 0014_states_behind
Revises: 0013_meter_state_log
Create Date: 2026-11-29
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.util import CommandError

revision: str = "0014_states_behind"
down_revision: str | Sequence[str] | None = "0013_meter_state_log"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("stream_partitions") as table:
        table.add_column(sa.Column("states_max_event_time", sa.BigInteger, nullable=True))
        table.add_column(sa.Column("states_next_offset", sa.BigInteger, nullable=True))


def downgrade() -> None:
    behind = (
        op.get_bind()
        .execute(sa.text("SELECT count(*) FROM stream_partitions WHERE states_next_offset IS NOT NULL"))
        .scalar_one()
    )
    if behind:
        raise CommandError(
            f"{behind} stream partition(s) hold meter states saved behind their outcomes: start the API "
            "(METRIFY_API__STREAM_WRITER=process) once so that its stream writer saves them, then downgrade"
        )
    # the writer's note of where its saved states stand, which the older code neither writes nor reads
    op.get_bind().execute(
        sa.text("DELETE FROM replay_progress WHERE source_key LIKE :pattern"), {"pattern": "api-journal:%:states"}
    )
    with op.batch_alter_table("stream_partitions") as table:
        table.drop_column("states_next_offset")
        table.drop_column("states_max_event_time")

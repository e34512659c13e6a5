"""Toolkit tables: outbox, processed events, consumer offsets, dead letters.

Revision ID: 0001
Revises:
"""

from alembic import op

from shared.db import create_toolkit_tables

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    create_toolkit_tables(op)


def downgrade() -> None:
    for table in ("dead_letters", "consumer_offsets", "processed_events", "outbox"):
        op.execute(f"DROP TABLE IF EXISTS {table}")

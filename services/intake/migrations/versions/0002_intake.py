"""Intake tables: idempotency records of received events, and upstream systems' API keys.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE received_events (
        event_id text PRIMARY KEY,
        event_type text NOT NULL,
        fingerprint text NOT NULL,
        status text NOT NULL DEFAULT 'accepted',
        received_at timestamptz NOT NULL DEFAULT now())""")
    op.execute("CREATE INDEX received_events_age ON received_events (received_at)")
    op.execute("""CREATE TABLE api_keys (
        key_id text PRIMARY KEY,
        system_name text NOT NULL,
        key_hash text NOT NULL,
        regions text[] NOT NULL,
        event_types text[] NOT NULL,
        rate_limit_per_second integer NOT NULL CHECK (rate_limit_per_second > 0),
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz)""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS api_keys")
    op.execute("DROP TABLE IF EXISTS received_events")

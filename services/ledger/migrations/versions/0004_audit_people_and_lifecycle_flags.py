"""Who stands behind an audit correction, and flags on a voucher's lifecycle.

Revision ID: 0004
Revises: 0003

``corrections`` names the people behind each correction: ``auditor_id`` decided it (the auditor, or the
senior auditor who resolved a dispute), and for a dispute's resolution ``dispute_raised_by`` raised the
dispute and ``disputed_auditor_id`` gave the verdict it reverses. Corrections recorded before this
revision name nobody (the events carried the auditor, the table did not keep it).

``lifecycle_flags`` marks a compensation whose voucher lifecycle looked wrong; the one flag so far is
``expired_early``: an expiry reported before the voucher's validity ended (shared/vouchers.py). The
expiry is applied all the same; the flag is what the lineage, the log and the metric show.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE corrections ADD COLUMN auditor_id text, ADD COLUMN dispute_raised_by text, "
               "ADD COLUMN disputed_auditor_id text")
    op.execute("""CREATE TABLE lifecycle_flags (
        compensation_id text NOT NULL,
        flag text NOT NULL CHECK (flag IN ('expired_early')),
        region text NOT NULL,
        reservation_id text,
        event_id text NOT NULL,
        correlation_id text,
        valid_until timestamptz,
        reported_at timestamptz NOT NULL,
        early_by_seconds bigint,
        recorded_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (compensation_id, flag))""")
    op.execute("CREATE INDEX lifecycle_flags_region_time ON lifecycle_flags (region, recorded_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS lifecycle_flags")
    op.execute("ALTER TABLE corrections DROP COLUMN IF EXISTS auditor_id, DROP COLUMN IF EXISTS dispute_raised_by, "
               "DROP COLUMN IF EXISTS disputed_auditor_id")

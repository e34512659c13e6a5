"""insights: spike alerts, one row per (series, local day, kind), the key that makes detection idempotent.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A re-run over the same rollups finds the same alerts (the detector is deterministic and causal): the
    # primary key turns it into a no-op, and only the transaction whose insert returned the row publishes
    # its event, so two replicas never publish one alert twice.
    op.execute("""CREATE TABLE spike_alerts (
        region text NOT NULL,
        dimension text NOT NULL,
        series_key text NOT NULL,
        bucket_start timestamptz NOT NULL,
        kind text NOT NULL,
        alert_id text NOT NULL UNIQUE,
        day date NOT NULL,
        bucket_end timestamptz NOT NULL,
        observed bigint NOT NULL,
        expected float8 NOT NULL,
        lower_edge float8 NOT NULL,
        upper_edge float8 NOT NULL,
        sigma float8 NOT NULL,
        z float8 NOT NULL,
        cusum float8 NOT NULL,
        contributors jsonb NOT NULL DEFAULT '[]'::jsonb,
        event_id text NOT NULL,
        detected_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (region, dimension, series_key, bucket_start, kind))""")
    op.execute("CREATE INDEX spike_alerts_region_day ON spike_alerts (region, day)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS spike_alerts")

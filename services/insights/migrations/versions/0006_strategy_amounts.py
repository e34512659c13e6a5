"""insights: what each strategy gives per scenario, per exact amount and per share of the order value
(issue 15's market comparison; ADR 0021). A base table per rollup (written by the compactor) and its
append-only delta table, as every rollup (ADR 0011).

Revision ID: 0006
Revises: 0005
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

KEYS = {"strategy_amount_daily": "amount_minor bigint NOT NULL", "strategy_share_daily": "share_bp bigint NOT NULL"}


def upgrade() -> None:
    for table, value in KEYS.items():
        column = value.split()[0]
        columns = ("region text NOT NULL, day date NOT NULL, strategy text NOT NULL, strategy_version int NOT NULL, "
                   f"reason text NOT NULL, shadow boolean NOT NULL, {value}, decisions bigint NOT NULL DEFAULT 0")
        op.execute(f"CREATE TABLE {table} ({columns}, "
                   f"PRIMARY KEY (region, day, strategy, strategy_version, reason, shadow, {column}))")
        op.execute(f"CREATE TABLE {table}_delta ({columns})")


def downgrade() -> None:
    for table in KEYS:
        op.execute(f"DROP TABLE {table}_delta")
        op.execute(f"DROP TABLE {table}")

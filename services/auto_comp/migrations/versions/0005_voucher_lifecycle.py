"""What became of an issued voucher (redeemed, expired, revoked), for the decision record.

Revision ID: 0005
Revises: 0004

One row per compensation, written once by the vouchers.lifecycle.v1 consumer (the first close wins, as in
the ledger); ``expired_early_by_seconds`` is set when the voucher was reported expired before its
validity ended (shared/vouchers.py). A table of its own rather than columns of ``compensations``, which
the budget saga rewrites at every step.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE voucher_lifecycle (
            compensation_id text PRIMARY KEY,
            region text NOT NULL,
            state text NOT NULL CHECK (state IN ('redeemed', 'expired', 'revoked')),
            occurred_at timestamptz NOT NULL,
            event_id text NOT NULL,
            valid_until timestamptz,
            expired_early_by_seconds bigint CHECK (expired_early_by_seconds > 0),
            recorded_at timestamptz NOT NULL DEFAULT now()
        )""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS voucher_lifecycle")

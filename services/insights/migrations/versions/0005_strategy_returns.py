"""A strategy's return, measured in insights (moved from auto_comp, issue 15): the treated and holdout
decisions (from decision.recorded) and the buyers' later orders (from buyer.orders.v1).

Revision ID: 0005
Revises: 0004

Both come as events, so insights reads nothing of auto_comp's tables. ``return_exposures`` holds one row
per live ticket decision that is ``issued`` or ``holdout`` (the only ones a return compares); orders are
kept compactly, once per order id, until no return window can reach them.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE return_exposures (
            ticket_id text PRIMARY KEY,
            region text NOT NULL,
            strategy_id text NOT NULL,
            strategy_version int NOT NULL,
            buyer_id text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ('issued', 'holdout')),
            ticket_occurred_at timestamptz NOT NULL,
            issued_minor bigint CHECK (issued_minor > 0),
            currency text NOT NULL,
            event_id text NOT NULL
        )""")
    op.execute("CREATE INDEX return_exposures_strategy ON return_exposures (strategy_id, region, ticket_occurred_at) "
               "INCLUDE (buyer_id, outcome, issued_minor)")
    op.execute("""
        CREATE TABLE buyer_orders (
            order_id text PRIMARY KEY,
            buyer_id text NOT NULL,
            region text NOT NULL,
            amount_minor bigint NOT NULL CHECK (amount_minor > 0),
            currency text NOT NULL,
            occurred_at timestamptz NOT NULL
        )""")
    # The return query: one buyer's orders in one region within a time range (index-only with INCLUDE).
    op.execute("CREATE INDEX buyer_orders_buyer ON buyer_orders (region, buyer_id, occurred_at) "
               "INCLUDE (amount_minor, currency)")
    op.execute("CREATE INDEX buyer_orders_occurred ON buyer_orders (occurred_at)")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS buyer_orders")
    op.execute("DROP TABLE IF EXISTS return_exposures")

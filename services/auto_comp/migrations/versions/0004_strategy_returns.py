"""Buyer orders for measuring a strategy's return (treated against holdout buyers).

Orders are kept compactly and joined to decisions when the return is asked for, not when an order
arrives: buyer.orders.v1 and tickets.v1 are separate topics, so a buyer's later order can be consumed
before the decision it follows. A retention task deletes orders once no reportable window can reach them.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
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
    # The retention task's range delete.
    op.execute("CREATE INDEX buyer_orders_occurred ON buyer_orders (occurred_at)")
    # The return query's decisions: one strategy's treated and holdout decisions of a region by ticket time.
    # Partial, so decisions of other outcomes (most of them) do not pay for it.
    op.execute("CREATE INDEX decisions_strategy_return ON decisions (strategy_id, region, ticket_occurred_at) "
               "INCLUDE (buyer_id, outcome, issued_minor) WHERE outcome IN ('issued', 'holdout')")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS decisions_strategy_return")
    op.execute("DROP TABLE IF EXISTS buyer_orders")

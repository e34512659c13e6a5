"""Shadow decisions carry the buyer, order and ticket time, so a shadow strategy counts its own results;
buyer orders leave auto_comp (a strategy's return is measured by insights).

Revision ID: 0007
Revises: 0006

A shadow strategy's abuse guard and one-per-order rule count the shadow's own earlier ``would_issue``
results (what it would have granted), not the live strategies' compensations: only then do the live
shadow record and the backtest agree on the same tickets (issue 15: 3 would-issue results seen where the
guard allows 2). Existing rows take the ticket's facts from its live decision (one per ticket).

The return (treated vs holdout buyers' later orders) moved to insights (issue 15, ADR 0020), which builds
its own copy from decision.recorded and buyer.orders.v1 (a new consumer group reads both topics from their
earliest retained offsets); auto_comp's ``buyer_orders`` and the index that served the return go.
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE shadow_decisions ADD COLUMN buyer_id text, ADD COLUMN order_id text, "
               "ADD COLUMN scenario text, ADD COLUMN ticket_occurred_at timestamptz")
    op.execute("UPDATE shadow_decisions s SET buyer_id = d.buyer_id, order_id = d.order_id, "
               "ticket_occurred_at = d.ticket_occurred_at FROM decisions d WHERE d.ticket_id = s.ticket_id")
    # Partial indexes: only would-issue results count against a shadow's guard and order rule.
    op.execute("CREATE INDEX shadow_decisions_buyer ON shadow_decisions (region, buyer_id, ticket_occurred_at) "
               "WHERE outcome = 'would_issue'")
    op.execute("CREATE INDEX shadow_decisions_order ON shadow_decisions (order_id) WHERE outcome = 'would_issue'")
    op.execute("DROP INDEX IF EXISTS decisions_strategy_return")
    op.execute("DROP TABLE IF EXISTS buyer_orders")


def downgrade() -> None:
    # The orders themselves are not restored (they live in insights now); the table comes back empty.
    op.execute("""
        CREATE TABLE buyer_orders (
            order_id text PRIMARY KEY,
            buyer_id text NOT NULL,
            region text NOT NULL,
            amount_minor bigint NOT NULL CHECK (amount_minor > 0),
            currency text NOT NULL,
            occurred_at timestamptz NOT NULL
        )""")
    op.execute("CREATE INDEX buyer_orders_buyer ON buyer_orders (region, buyer_id, occurred_at) "
               "INCLUDE (amount_minor, currency)")
    op.execute("CREATE INDEX buyer_orders_occurred ON buyer_orders (occurred_at)")
    op.execute("CREATE INDEX decisions_strategy_return ON decisions (strategy_id, region, ticket_occurred_at) "
               "INCLUDE (buyer_id, outcome, issued_minor) WHERE outcome IN ('issued', 'holdout')")
    op.execute("DROP INDEX shadow_decisions_order")
    op.execute("DROP INDEX shadow_decisions_buyer")
    op.execute("ALTER TABLE shadow_decisions DROP COLUMN ticket_occurred_at, DROP COLUMN scenario, "
               "DROP COLUMN order_id, DROP COLUMN buyer_id")

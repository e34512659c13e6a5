"""Shadow decisions carry the buyer, order and ticket time, so a shadow strategy counts its own results.

Revision ID: 0007
Revises: 0006

A shadow strategy's abuse guard and one-per-order rule count the shadow's own earlier ``would_issue``
results (what it would have granted), not the live strategies' compensations: only then do the live
shadow record and the backtest agree on the same tickets (issue 15: 3 would-issue results seen where the
guard allows 2). Existing rows take the ticket's facts from its live decision (one per ticket).
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


def downgrade() -> None:
    op.execute("DROP INDEX shadow_decisions_order")
    op.execute("DROP INDEX shadow_decisions_buyer")
    op.execute("ALTER TABLE shadow_decisions DROP COLUMN ticket_occurred_at, DROP COLUMN scenario, "
               "DROP COLUMN order_id, DROP COLUMN buyer_id")

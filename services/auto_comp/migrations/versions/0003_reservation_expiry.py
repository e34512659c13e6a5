"""Reservation expiry as a terminal state of the budget saga.

A compensation still pending when its reservation expires (``expires_at``, the instant the ledger
releases an unused reservation) becomes ``expired`` and its decision ``reservation_expired``: the saga
stops re-sending it, and an answer that arrives afterwards can no longer issue anything. An expired
compensation, like a denied one, issued nothing, so it neither uses up the order's scenario nor counts
against the buyer's abuse guard: the partial indexes now name the statuses that do count.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE compensations DROP CONSTRAINT compensations_status_check")
    op.execute("ALTER TABLE compensations ADD CONSTRAINT compensations_status_check "
               "CHECK (status IN ('pending', 'issued', 'denied', 'expired'))")
    op.execute("ALTER TABLE decisions DROP CONSTRAINT decisions_outcome_check")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT decisions_outcome_check CHECK (outcome IN ('issued', "
               "'not_eligible', 'capped_by_abuse_guard', 'holdout', 'budget_denied', 'paced', 'pending_budget', "
               "'reservation_expired'))")
    op.execute("DROP INDEX compensations_order_scenario")
    op.execute("CREATE UNIQUE INDEX compensations_order_scenario ON compensations (order_id, scenario) "
               "WHERE status IN ('pending', 'issued')")
    op.execute("DROP INDEX compensations_buyer")
    op.execute("CREATE INDEX compensations_buyer ON compensations (region, buyer_id, ticket_occurred_at) "
               "WHERE status IN ('pending', 'issued')")
    # The sweeper's scan: pending compensations by expiry.
    op.execute("CREATE INDEX compensations_pending_expiry ON compensations (expires_at) WHERE status = 'pending'")


def downgrade() -> None:
    op.execute("DROP INDEX compensations_pending_expiry")
    op.execute("UPDATE compensations SET status = 'denied', denial_reason = 'reservation_expired' "
               "WHERE status = 'expired'")
    op.execute("UPDATE decisions SET outcome = 'budget_denied' WHERE outcome = 'reservation_expired'")
    op.execute("DROP INDEX compensations_buyer")
    op.execute("CREATE INDEX compensations_buyer ON compensations (region, buyer_id, ticket_occurred_at) "
               "WHERE status <> 'denied'")
    op.execute("DROP INDEX compensations_order_scenario")
    op.execute("CREATE UNIQUE INDEX compensations_order_scenario ON compensations (order_id, scenario) "
               "WHERE status <> 'denied'")
    op.execute("ALTER TABLE decisions DROP CONSTRAINT decisions_outcome_check")
    op.execute("ALTER TABLE decisions ADD CONSTRAINT decisions_outcome_check CHECK (outcome IN ('issued', "
               "'not_eligible', 'capped_by_abuse_guard', 'holdout', 'budget_denied', 'paced', 'pending_budget'))")
    op.execute("ALTER TABLE compensations DROP CONSTRAINT compensations_status_check")
    op.execute("ALTER TABLE compensations ADD CONSTRAINT compensations_status_check "
               "CHECK (status IN ('pending', 'issued', 'denied'))")

"""Per-auditor claim guard: one row per (region, auditor) that a claim locks for its transaction.

Claiming reads "does this auditor already hold an item?" and then leases one. Two claims of the same
auditor at once (two tabs, a double click, the API and the workbench) would both read "no" and both lease
an item; locking this row first makes the second wait and then find the item the first leased.

Revision ID: 0004
Revises: 0003
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""CREATE TABLE auditor_guards (
        region text NOT NULL,
        auditor_id text NOT NULL,
        last_claim_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (region, auditor_id))""")


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS auditor_guards")

"""Budget allowances (ADR 0012): auto_comp spends budget the ledger allotted to it, instead of a reservation
round trip per voucher.

- ``budgets.allotted_minor``: granted to allowances and neither charged against nor released yet. It counts
  in usage at once, and the hard limit becomes allotted + reserved + posted automatic spend <= limit.
- ``allowances``: one row per allowance: granted, charged (count and amount), released on return, and
  what auto_comp reported spent when it returned it. A CHECK keeps every granted unit accounted for.
- ``allowance_grants``: the answer given to each request (allowance id, request seq), so a repeated
  request is answered the same way.
- ``reservations.allowance_id``: the allowance a compensation's hold was opened from.

Existing rows need nothing: no allowance exists yet, and per-voucher reservations keep their meaning (the
ledger still applies them, so requests left from before the upgrade drain; see the ADR's upgrade notes).

Revision ID: 0005
Revises: 0003
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE budgets ADD COLUMN allotted_minor bigint NOT NULL DEFAULT 0 "
               "CONSTRAINT budgets_allotted_not_negative CHECK (allotted_minor >= 0)")
    op.execute("ALTER TABLE budgets DROP CONSTRAINT automatic_within_limit")
    op.execute("ALTER TABLE budgets ADD CONSTRAINT automatic_within_limit CHECK (limit_minor IS NULL "
               "OR allotted_minor + reserved_minor + posted_auto_minor <= limit_minor)")
    op.execute("""
        CREATE TABLE allowances (
            allowance_id text PRIMARY KEY,
            region text NOT NULL,
            period text NOT NULL,
            currency text NOT NULL,
            pacing_percent smallint NOT NULL CHECK (pacing_percent BETWEEN 0 AND 100),
            owner text NOT NULL,
            status text NOT NULL CHECK (status IN ('open', 'returned')),
            granted_minor bigint NOT NULL DEFAULT 0 CHECK (granted_minor >= 0),
            charged_minor bigint NOT NULL DEFAULT 0 CHECK (charged_minor >= 0),
            charged_count int NOT NULL DEFAULT 0 CHECK (charged_count >= 0),
            released_minor bigint NOT NULL DEFAULT 0 CHECK (released_minor >= 0),
            spent_reported_minor bigint,
            count_reported int,
            expires_at timestamptz,
            last_seq int NOT NULL DEFAULT 0,
            return_reason text,
            returned_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            updated_at timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT allowance_accounted CHECK (charged_minor + released_minor <= granted_minor),
            CONSTRAINT allowance_returned CHECK ((status = 'returned') = (spent_reported_minor IS NOT NULL)
                AND (spent_reported_minor IS NULL) = (count_reported IS NULL)),
            CONSTRAINT allowance_within_return CHECK (spent_reported_minor IS NULL OR (
                charged_minor <= spent_reported_minor AND charged_count <= count_reported
                AND released_minor = granted_minor - spent_reported_minor)),
            CONSTRAINT allowance_released_on_return CHECK (status = 'returned' OR released_minor = 0))""")
    op.execute("CREATE INDEX allowances_budget ON allowances (region, period)")
    # Open allowances by expiry: the overdue gauge and the operators' view.
    op.execute("CREATE INDEX allowances_open ON allowances (expires_at) WHERE status = 'open'")
    op.execute("""
        CREATE TABLE allowance_grants (
            allowance_id text NOT NULL REFERENCES allowances (allowance_id),
            request_seq int NOT NULL CHECK (request_seq >= 1),
            request_event_id text NOT NULL,
            outcome text NOT NULL CHECK (outcome IN ('granted', 'denied')),
            granted_minor bigint NOT NULL CHECK (granted_minor >= 0),
            answer jsonb NOT NULL,
            decided_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (allowance_id, request_seq))""")
    op.execute("ALTER TABLE reservations ADD COLUMN allowance_id text")
    op.execute("CREATE INDEX reservations_allowance ON reservations (allowance_id) WHERE allowance_id IS NOT NULL")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS reservations_allowance")
    op.execute("ALTER TABLE reservations DROP COLUMN allowance_id")
    op.execute("DROP TABLE IF EXISTS allowance_grants")
    op.execute("DROP TABLE IF EXISTS allowances")
    op.execute("ALTER TABLE budgets DROP CONSTRAINT automatic_within_limit")
    op.execute("ALTER TABLE budgets ADD CONSTRAINT automatic_within_limit "
               "CHECK (limit_minor IS NULL OR reserved_minor + posted_auto_minor <= limit_minor)")
    op.execute("ALTER TABLE budgets DROP COLUMN allotted_minor")

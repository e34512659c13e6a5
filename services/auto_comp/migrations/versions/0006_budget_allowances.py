"""Budget allowances (ADR 0012): auto_comp decides and issues in one transaction, spending budget the ledger
allotted to it, instead of a reservation round trip per voucher.

- ``allowances``: one row per allowance (region, budget period, partition of tickets.v1, pacing percent):
  granted, spent (amount and count), when spending stops (``close_at``), the request in flight, the
  ledger's last word (``limited_by`` until ``retry_after``), closed with the reason. At most one open
  allowance per key.
- ``compensations``: the allowance it was spent from; its key while it waits (``partition``,
  ``pacing_percent``); ``validity_days`` so a voucher issued after waiting is valid from its issue.
  ``reservation_id`` and ``request`` (the per-voucher saga's) are no longer filled; ``expires_at`` holds a
  voucher's validity end only.
- Upgrade: compensations still pending from the saga wait for an allowance now, in a queue of their own
  (partition -1) that any replica settles; the reservation the ledger may hold for them lapses there
  (voided after its expiry plus grace), so until then their budget is held twice, never overspent.

Revision ID: 0006
Revises: 0004
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
        CREATE TABLE allowances (
            allowance_id text PRIMARY KEY,
            region text NOT NULL,
            period text NOT NULL,
            partition int NOT NULL,
            pacing_percent smallint NOT NULL CHECK (pacing_percent BETWEEN 0 AND 100),
            currency text NOT NULL,
            owner text NOT NULL,
            status text NOT NULL CHECK (status IN ('open', 'closed')),
            granted_minor bigint NOT NULL DEFAULT 0 CHECK (granted_minor >= 0),
            spent_minor bigint NOT NULL DEFAULT 0 CHECK (spent_minor >= 0),
            spent_count int NOT NULL DEFAULT 0 CHECK (spent_count >= 0),
            close_at timestamptz NOT NULL,
            expires_at timestamptz,
            request_seq int NOT NULL DEFAULT 0,
            answered_seq int NOT NULL DEFAULT 0,
            requested_at timestamptz,
            request_attempts int NOT NULL DEFAULT 0,
            request_at_least_minor bigint NOT NULL DEFAULT 0,
            request_wanted_minor bigint NOT NULL DEFAULT 0,
            limited_by text,
            retry_after timestamptz,
            detail text,
            last_grant_minor bigint NOT NULL DEFAULT 0,
            last_granted_at timestamptz,
            spent_at_last_grant_minor bigint NOT NULL DEFAULT 0,
            opened_at timestamptz NOT NULL DEFAULT now(),
            closed_at timestamptz,
            close_reason text,
            CONSTRAINT allowance_within_grant CHECK (spent_minor <= granted_minor),
            CONSTRAINT allowance_closed CHECK ((status = 'closed') = (closed_at IS NOT NULL)))""")
    op.execute("CREATE UNIQUE INDEX allowances_one_open ON allowances (region, period, partition, pacing_percent) "
               "WHERE status = 'open'")
    # The chore's scans: open allowances due to close, and requests left unanswered.
    op.execute("CREATE INDEX allowances_open_close_at ON allowances (close_at) WHERE status = 'open'")
    op.execute("CREATE INDEX allowances_in_flight ON allowances (requested_at) "
               "WHERE status = 'open' AND request_seq > answered_seq")
    op.execute("ALTER TABLE compensations ADD COLUMN allowance_id text, ADD COLUMN partition int, "
               "ADD COLUMN pacing_percent smallint, ADD COLUMN validity_days int")
    for column in ("reservation_id", "request", "expires_at"):
        op.execute(f"ALTER TABLE compensations ALTER COLUMN {column} DROP NOT NULL")
    # New compensations have no reservation: keep the saga's ids unique without an index entry per row.
    op.execute("ALTER TABLE compensations DROP CONSTRAINT compensations_reservation_id_key")
    op.execute("CREATE UNIQUE INDEX compensations_reservation ON compensations (reservation_id) "
               "WHERE reservation_id IS NOT NULL")
    # Waiting tickets of one key, oldest first (first come, first served).
    op.execute("CREATE INDEX compensations_waiting ON compensations (region, partition, pacing_percent, "
               "ticket_occurred_at, ticket_id) WHERE status = 'pending'")
    op.execute("""
        UPDATE compensations SET partition = -1,
            pacing_percent = coalesce(CAST(request->>'pacing_allowance_percent' AS smallint), 100)
        WHERE status = 'pending'""")
    op.execute("DROP INDEX IF EXISTS compensations_pending")
    op.execute("DROP INDEX IF EXISTS compensations_pending_expiry")


def downgrade() -> None:
    # Compensations issued from allowances keep their rows (without a reservation or request document).
    op.execute("CREATE INDEX compensations_pending_expiry ON compensations (expires_at) WHERE status = 'pending'")
    op.execute("CREATE INDEX compensations_pending ON compensations (last_sent_at) WHERE status = 'pending'")
    op.execute("DROP INDEX IF EXISTS compensations_waiting")
    op.execute("DROP INDEX IF EXISTS compensations_reservation")
    op.execute("ALTER TABLE compensations ADD CONSTRAINT compensations_reservation_id_key UNIQUE (reservation_id)")
    op.execute("ALTER TABLE compensations DROP COLUMN allowance_id, DROP COLUMN partition, "
               "DROP COLUMN pacing_percent, DROP COLUMN validity_days")
    op.execute("DROP TABLE IF EXISTS allowances")

"""Audit integrity: inspection-level runs, sign-in throttling by account and client.

Revision ID: 0005
Revises: 0004

``agents.audits_at_level`` counts the audits recorded since the agent entered its current inspection
level, so the switching rules read only the run at that level (ISO 2859-1: reduced inspection needs a run
of passes under *normal* inspection). Existing agents start at 0: how long they have been at their level
is not known, so each keeps its level and needs a fresh run to switch (more audits, never fewer).

``signin_throttle`` replaces the per-account lock on ``workbench_users`` (``failed_sign_ins``,
``locked_until``, dropped here): failures are counted per (account, client), per client and per account,
so a stranger's guesses cannot lock an auditor out of the browser they usually sign in from, and the
answer does not depend on whether the account exists (docs/audit.md, "Sign-in").
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE agents ADD COLUMN audits_at_level int NOT NULL DEFAULT 0 "
               "CHECK (audits_at_level >= 0)")
    op.execute("""CREATE TABLE signin_throttle (
        scope text NOT NULL CHECK (scope IN ('account_client', 'client', 'account')),
        key text NOT NULL,
        window_started_at timestamptz NOT NULL,
        failures int NOT NULL DEFAULT 0 CHECK (failures >= 0),
        locked_until timestamptz,
        PRIMARY KEY (scope, key))""")
    # The purge deletes rows whose window and lock are both over.
    op.execute("CREATE INDEX signin_throttle_window ON signin_throttle (window_started_at)")
    op.execute("ALTER TABLE workbench_users DROP COLUMN failed_sign_ins, DROP COLUMN locked_until")


def downgrade() -> None:
    op.execute("ALTER TABLE workbench_users ADD COLUMN failed_sign_ins int NOT NULL DEFAULT 0, "
               "ADD COLUMN locked_until timestamptz")
    op.execute("DROP TABLE IF EXISTS signin_throttle")
    op.execute("ALTER TABLE agents DROP COLUMN IF EXISTS audits_at_level")

"""insights: the approval stage and corrective actions (issue 14's events), and one index fewer per ticket.

Revision ID: 0007
Revises: 0006

Three record tables, one row per compensation request, flagged manual compensation and corrective action,
each merged order-independently from its events (``domain.rollups``: ``merge_request_step``, ``merge_flag``,
``merge_action``), and three rollups of their contributions by local day (base + append-only delta, like
every rollup: ``approval_daily``, ``flag_daily``, ``action_daily``) that the report reads. The index tickets_region_time was
never read by any query and cost every ticket insert (and every stub ticket's update when its
ticket.opened arrives) an index entry: dropped (ADR 0024).
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

DDL = [
    "DROP INDEX IF EXISTS tickets_region_time",
    """CREATE TABLE approval_requests (
        region text NOT NULL,
        request_id text NOT NULL,
        request_day date NOT NULL,
        requested_at timestamptz NOT NULL,
        reason_code text NOT NULL,
        team text NOT NULL,
        kind text NOT NULL,
        requested_minor bigint NOT NULL,
        first_at timestamptz NOT NULL,
        first_event text NOT NULL,
        queued boolean NOT NULL,
        escalated boolean NOT NULL,
        outcome text NOT NULL CHECK (outcome IN ('', 'approved', 'rejected')),
        automatic boolean NOT NULL,
        decided_by text NOT NULL,
        decided_at timestamptz,
        decision_event text NOT NULL,
        approved_minor bigint NOT NULL,
        PRIMARY KEY (region, request_id))""",
    "CREATE INDEX approval_requests_day ON approval_requests (region, request_day)",
    """CREATE TABLE issue_flags (
        region text NOT NULL,
        compensation_id text NOT NULL,
        flag_day date NOT NULL,
        issued_at timestamptz NOT NULL,
        team text NOT NULL,
        reason_code text NOT NULL,
        issued_minor bigint NOT NULL,
        mismatches text[] NOT NULL,
        PRIMARY KEY (region, compensation_id))""",
    "CREATE INDEX issue_flags_day ON issue_flags (region, flag_day)",
    """CREATE TABLE corrective_actions (
        region text NOT NULL,
        action_id bigint NOT NULL,
        opened_day date NOT NULL,
        opened_at timestamptz NOT NULL,
        kind text NOT NULL,
        source text NOT NULL,
        target_type text NOT NULL,
        status text NOT NULL,
        due_on date NOT NULL,
        updated_at timestamptz NOT NULL,
        state_event text NOT NULL,
        effect_at timestamptz,
        effect_event text NOT NULL,
        after_audits bigint,
        difference float8,
        difference_low float8,
        difference_high float8,
        PRIMARY KEY (region, action_id))""",
    "CREATE INDEX corrective_actions_day ON corrective_actions (region, opened_day)",
]

_BINS = ", ".join(f"approval_{i:02d} bigint NOT NULL DEFAULT 0" for i in range(17))
_ROLLUPS = {
    "approval_daily": ("region text NOT NULL, day date NOT NULL",
                       "requests, queued, escalated, approved_automatically, approved_by_approver, "
                       "rejected_automatically, rejected_by_approver, awaiting, requested_minor, approved_minor, "
                       "approved_requested_minor", _BINS, "region, day"),
    "flag_daily": ("region text NOT NULL, day date NOT NULL, mismatch text NOT NULL", "compensations, issued_minor",
                   "", "region, day, mismatch"),
    "action_daily": ("region text NOT NULL, day date NOT NULL, kind text NOT NULL, status text NOT NULL, "
                     "due_on date NOT NULL", "actions, measured, improved", "", "region, day, kind, status, due_on"),
}
for _name, (_keys, _measures, _extra, _pk) in _ROLLUPS.items():
    _cols = ", ".join(f"{m.strip()} bigint NOT NULL DEFAULT 0" for m in _measures.split(","))
    _all = f"{_keys}, {_cols}" + (f", {_extra}" if _extra else "")
    DDL.append(f"CREATE TABLE {_name} ({_all}, PRIMARY KEY ({_pk}))")
    DDL.append(f"CREATE TABLE {_name}_delta ({_all})")  # consumers only append; the compactor folds it in


def upgrade() -> None:
    for statement in DDL:
        op.execute(statement)


def downgrade() -> None:
    for table in ("action_daily_delta", "action_daily", "flag_daily_delta", "flag_daily", "approval_daily_delta",
                  "approval_daily", "corrective_actions", "issue_flags", "approval_requests"):
        op.execute(f"DROP TABLE IF EXISTS {table}")
    op.execute("CREATE INDEX IF NOT EXISTS tickets_region_time ON tickets (region, occurred_at)")

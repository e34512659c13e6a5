"""insights: the dashboard's own sign-in tables (the workbench's mechanism, shared.web; ADR 0012).

Revision ID: 0003
Revises: 0002

People who sign in to /dashboard (roles, region grants, scrypt password hashes), their sessions (a signed
session cookie points at a row: sign-out, disabling a user or expiry ends it even though the cookie's
signature is still valid; the CSRF token lives on it) and the sign-in throttle counters per (account,
client), client and account. The same layout as audit_sampler's workbench tables, in insights' own schema.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

DDL = [
    """CREATE TABLE dashboard_users (
        username text PRIMARY KEY CHECK (username ~ '^[a-z0-9][a-z0-9_.@-]{1,63}$'),
        password_hash text,
        roles text[] NOT NULL CHECK (cardinality(roles) > 0),
        regions text[] NOT NULL CHECK (cardinality(regions) > 0),
        disabled boolean NOT NULL DEFAULT false,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        last_sign_in_at timestamptz)""",
    """CREATE TABLE dashboard_sessions (
        id text PRIMARY KEY,
        username text NOT NULL REFERENCES dashboard_users (username),
        csrf_token text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        ended_at timestamptz)""",
    "CREATE INDEX dashboard_sessions_user ON dashboard_sessions (username) WHERE ended_at IS NULL",
    # The purge deletes expired sessions by expiry.
    "CREATE INDEX dashboard_sessions_expiry ON dashboard_sessions (expires_at)",
    """CREATE TABLE dashboard_signin_throttle (
        scope text NOT NULL CHECK (scope IN ('account_client', 'client', 'account')),
        key text NOT NULL,
        window_started_at timestamptz NOT NULL,
        failures int NOT NULL DEFAULT 0 CHECK (failures >= 0),
        locked_until timestamptz,
        PRIMARY KEY (scope, key))""",
    "CREATE INDEX dashboard_signin_throttle_window ON dashboard_signin_throttle (window_started_at)",
]


def upgrade() -> None:
    for statement in DDL:
        op.execute(statement)


def downgrade() -> None:
    for table in ("dashboard_signin_throttle", "dashboard_sessions", "dashboard_users"):
        op.execute(f"DROP TABLE IF EXISTS {table}")

"""Workbench: people who sign in (roles, region grants, scrypt password hashes) and their sessions.

Revision ID: 0003
Revises: 0002

A session row is what a signed session cookie points at: signing out, disabling a user or expiry ends it
even though the cookie's signature is still valid. The CSRF synchronizer token lives on the session.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

DDL = [
    """CREATE TABLE workbench_users (
        username text PRIMARY KEY CHECK (username ~ '^[a-z0-9][a-z0-9_.@-]{1,63}$'),
        password_hash text,
        roles text[] NOT NULL CHECK (cardinality(roles) > 0),
        regions text[] NOT NULL CHECK (cardinality(regions) > 0),
        disabled boolean NOT NULL DEFAULT false,
        failed_sign_ins int NOT NULL DEFAULT 0,
        locked_until timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now(),
        last_sign_in_at timestamptz)""",
    """CREATE TABLE workbench_sessions (
        id text PRIMARY KEY,
        username text NOT NULL REFERENCES workbench_users (username),
        csrf_token text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        expires_at timestamptz NOT NULL,
        ended_at timestamptz)""",
    "CREATE INDEX workbench_sessions_user ON workbench_sessions (username) WHERE ended_at IS NULL",
]


def upgrade() -> None:
    for statement in DDL:
        op.execute(statement)


def downgrade() -> None:
    for table in ("workbench_sessions", "workbench_users"):
        op.execute(f"DROP TABLE IF EXISTS {table}")

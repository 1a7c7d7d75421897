"""indexes for the admin dashboard: every tenant's jobs newest first, by status, model, kind; recent finishes
and deliveries

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 00:10:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JOB_INDEXES = {
    "ix_jobs_created": ["created_at", "id"],
    "ix_jobs_status_created": ["status", "created_at", "id"],
    "ix_jobs_model_created": ["model", "created_at", "id"],
    "ix_jobs_kind_created": ["kind", "created_at", "id"],
    "ix_jobs_finished": ["finished_at"],
}


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name, columns in JOB_INDEXES.items():
            batch_op.create_index(name, columns, unique=False)
    with op.batch_alter_table("webhook_messages", schema=None) as batch_op:
        batch_op.create_index("ix_webhook_messages_created", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("webhook_messages", schema=None) as batch_op:
        batch_op.drop_index("ix_webhook_messages_created")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        for name in reversed(JOB_INDEXES):
            batch_op.drop_index(name)

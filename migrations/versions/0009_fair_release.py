"""fair release: a job's queue, priority, lane and release time, so the publisher releases fairly

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 06:20:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RELEASE_INDEX = ["queue", "status", "released_at", "tenant_id", "lane", "priority", "created_at"]
# Jobs queued before this revision: their queue is their latest outbox message's; a running one, or a queued
# one whose message went out, counts as released (a queued one whose message did not waits for release).
# The literal 'gen.' below is shared.contracts.generation_queue's prefix, as of this revision.
LATEST = "(SELECT o.{column} FROM outbox o WHERE o.job_id = jobs.id ORDER BY o.id DESC LIMIT 1)"


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("queue", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("priority", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("lane", sa.String(length=16), server_default="interactive", nullable=False))
        batch_op.add_column(sa.Column("released_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_check_constraint(op.f("ck_jobs_lane"), "lane IN ('interactive', 'batch')")
        batch_op.create_index("ix_jobs_release", RELEASE_INDEX, unique=False)
    op.execute(f"UPDATE jobs SET queue = {LATEST.format(column='queue')}")
    op.execute(
        f"UPDATE jobs SET released_at = {LATEST.format(column='published_at')} "
        "WHERE status IN ('queued', 'running', 'canceling')"
    )
    # Batch lines (0008) had no outbox message until released: their lane, and the queue of their model's.
    op.execute("UPDATE jobs SET lane = 'batch' WHERE batch_id IS NOT NULL")
    op.execute(
        "UPDATE jobs SET queue = 'gen.' || COALESCE((SELECT m.base_model FROM models m WHERE m.name = jobs.model), "
        "jobs.model) WHERE queue IS NULL AND kind != 'fine_tune'"
    )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_release")
        batch_op.drop_constraint(op.f("ck_jobs_lane"), type_="check")
        batch_op.drop_column("released_at")
        batch_op.drop_column("lane")
        batch_op.drop_column("priority")
        batch_op.drop_column("queue")

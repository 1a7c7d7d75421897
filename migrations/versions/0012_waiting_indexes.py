"""release passes independent of the backlog: two partial indexes over the jobs waiting for release, one for
each tenant's oldest waiting job per lane (and the tenants with waiting work), one for its next jobs in
release order (priority first)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 10:40:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# shared.models.WAITING, as of this revision
WAITING = "status = 'queued' AND released_at IS NULL"


def upgrade() -> None:
    where = {"postgresql_where": sa.text(WAITING), "sqlite_where": sa.text(WAITING)}
    op.create_index("ix_jobs_waiting_oldest", "jobs", ["queue", "tenant_id", "lane", "created_at"], **where)
    columns = ["queue", "tenant_id", "lane", sa.text("priority DESC"), "created_at", "batch_line", "id"]
    op.create_index("ix_jobs_waiting_next", "jobs", columns, **where)


def downgrade() -> None:
    op.drop_index("ix_jobs_waiting_next", table_name="jobs")
    op.drop_index("ix_jobs_waiting_oldest", table_name="jobs")

"""batch validation in the background and partial batches: who validates a `validating` batch (a lease),
whether bad lines may be left out (`allow_partial`), and the file of the lines left out

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 10:00:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.add_column(sa.Column("allow_partial", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("invalid_file_id", sa.String(length=40), nullable=True))
        batch_op.add_column(sa.Column("validation_lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("batches", schema=None) as batch_op:
        batch_op.drop_column("validation_lease_until")
        batch_op.drop_column("invalid_file_id")
        batch_op.drop_column("allow_partial")

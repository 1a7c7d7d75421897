"""sealed webhook secrets: secret columns wide enough for `sealed:v1:` values

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 17:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = {"webhook_endpoints": ("secret", "previous_secret"), "tenant_webhook_secrets": ("secret", "previous_secret")}


def _resize(old: int, new: int) -> None:
    for table, columns in COLUMNS.items():
        with op.batch_alter_table(table, schema=None) as batch_op:
            for column in columns:
                batch_op.alter_column(
                    column, existing_type=sa.String(old), type_=sa.String(new), existing_nullable=column != "secret"
                )


def upgrade() -> None:
    _resize(100, 255)


def downgrade() -> None:
    _resize(255, 100)  # sealed values do not fit: unseal first (run without keys: `canvas webhooks seal`)

"""Runs grouped and classified: ``error_type`` (the error's class name) and ``batch_id`` (one Batch page run).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision: str | None = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("error_type", sa.Text, nullable=True))
    op.add_column("runs", sa.Column("batch_id", sa.Text, nullable=True))
    op.create_index("runs_batch_id", "runs", ["batch_id"])


def downgrade() -> None:
    op.drop_index("runs_batch_id", table_name="runs")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("batch_id")
        batch.drop_column("error_type")

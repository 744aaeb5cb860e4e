"""The runs table as the pre-Alembic store created it, with its two indexes.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0001"
down_revision: str | None = None
branch_labels = None
depends_on = None

# SQLite's REAL is 8 bytes; PostgreSQL's REAL is 4, so there a double keeps the same values.
FLOAT: sa.types.TypeEngine[float] = sa.REAL().with_variant(postgresql.DOUBLE_PRECISION(), "postgresql")
# ISO timestamps compare as text; the "C" collation keeps that byte order on PostgreSQL whatever the locale.
ISO_TEXT: sa.types.TypeEngine[str] = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True, autoincrement=True),
        sa.Column("timestamp", ISO_TEXT, nullable=False),
        sa.Column("source", sa.Text, nullable=False),
        sa.Column("img_name", sa.Text),
        sa.Column("img_path_relative", sa.Text),
        sa.Column("input_sha256", sa.Text),
        sa.Column("edits", sa.Text),
        sa.Column("task", sa.Text),
        sa.Column("dataset_name", sa.Text),
        sa.Column("organ", sa.Text),
        sa.Column("model_name", sa.Text),
        sa.Column("model_sha256", sa.Text),
        sa.Column("prediction", sa.Integer),
        sa.Column("label_name", sa.Text),
        sa.Column("probabilities", sa.Text),
        sa.Column("mask_path", sa.Text),
        sa.Column("mask_path_relative", sa.Text),
        sa.Column("mask_area_px", sa.Integer),
        sa.Column("measurements", sa.Text),
        sa.Column("inference_time_sec", FLOAT),
        sa.Column("memory_usage_mb", FLOAT),
        sa.Column("gpu_memory_usage_mb", FLOAT),
        sa.Column("gpu_memory_reserved_mb", FLOAT),
        sa.Column("device", sa.Text),
        sa.Column("error", sa.Text),
        sa.Column("request", sa.Text),
        sa.Column("response", sa.Text),
        sqlite_autoincrement=True,
    )
    op.create_index("runs_timestamp", "runs", ["timestamp"])
    op.create_index("runs_task_dataset", "runs", ["task", "dataset_name"])


def downgrade() -> None:
    op.drop_index("runs_task_dataset", table_name="runs")
    op.drop_index("runs_timestamp", table_name="runs")
    op.drop_table("runs")

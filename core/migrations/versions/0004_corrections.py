"""Corrections: the versions a clinician saved of a run's result (a corrected mask or class); the run's own row and
mask are never changed. ``(run_id, version)`` is unique, so two concurrent saves can never share a version.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision: str | None = "0003"
branch_labels = None
depends_on = None

FLOAT: sa.types.TypeEngine[float] = sa.REAL().with_variant(postgresql.DOUBLE_PRECISION(), "postgresql")
ISO_TEXT: sa.types.TypeEngine[str] = sa.Text().with_variant(sa.Text(collation="C"), "postgresql")


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.Integer, sa.Identity(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer, nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("timestamp", ISO_TEXT, nullable=False),
        sa.Column("author", sa.Text, nullable=False),
        sa.Column("kind", sa.Text, nullable=False),  # "mask" | "class"
        sa.Column("mask_path", sa.Text),  # relative to the workspace: corrections/<run_id>/v<N>.png
        sa.Column("class_index", sa.Integer),
        sa.Column("model_class", sa.Integer),
        sa.Column("reason", sa.Text),
        sa.Column("pixels_added", sa.Integer),
        sa.Column("pixels_removed", sa.Integer),
        sa.Column("dice", FLOAT),
        sa.Column("area_px", sa.Integer),
        sa.Column("area_mm2", FLOAT),
        sa.Column("measurements", sa.Text),
        sa.UniqueConstraint("run_id", "version", name="corrections_run_version"),
        sqlite_autoincrement=True,
    )
    op.create_index("corrections_timestamp", "corrections", ["timestamp"])


def downgrade() -> None:
    op.drop_index("corrections_timestamp", table_name="corrections")
    op.drop_table("corrections")

"""Alembic revision files of the run history (named NNNN_*.py; loaded by Alembic by path, not imported)."""

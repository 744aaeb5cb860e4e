"""Alembic migrations of the run history (``runs`` table); applied by :class:`core.history.HistoryStore`."""

"""Alembic environment of the run history.

:class:`core.history.HistoryStore` runs the migrations itself, inside its own transaction and migration lock, and
hands its connection over in ``config.attributes["connection"]``. For developers, ``alembic`` on the command line
also works with ``sqlalchemy.url`` set (``alembic -x url=sqlite:///workspace/history.sqlite3 upgrade head``, or an
``alembic.ini``), though without the store's lock and its adoption of pre-Alembic files.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool
from sqlalchemy.engine import Connection

from core.history import metadata

config = context.config


def _url() -> str:
    """The database URL from ``-x url=...`` or the config's ``sqlalchemy.url``."""
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("no database URL: pass -x url=... or set sqlalchemy.url")
    return url


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
elif isinstance(config.attributes.get("connection"), Connection):
    _run(config.attributes["connection"])
else:
    with create_engine(_url(), poolclass=pool.NullPool).connect() as own_connection:
        _run(own_connection)

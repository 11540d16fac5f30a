"""The engine layer: how the stages reach a database (see :mod:`recovery.engine.base`).

``open_engine(spec)`` turns what the user passed into an :class:`~recovery.engine.base.Engine`:
a filesystem path → :class:`~recovery.engine.sqlite.SQLiteEngine`; a ``postgresql://…`` or
``postgresql+psycopg://…`` URL → the PostgreSQL engine (``recovery.engine.postgres``), refused
with one clear line while that engine is not built.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from recovery.engine.base import Engine


def open_engine(spec: str | os.PathLike[str] | Engine) -> Engine:
    """The engine for ``spec`` (an engine is returned as it is). Opens no connection: call
    :meth:`~recovery.engine.base.Engine.check` to refuse a bad database."""
    from recovery.engine.base import Engine, is_postgres_url, normalise_spec
    from recovery.errors import RecoveryError

    if isinstance(spec, Engine):
        return spec
    text = os.fspath(spec)
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if is_postgres_url(text):
        text = normalise_spec(text)
        try:
            from recovery.engine.postgres import PostgresEngine
        except ModuleNotFoundError as exc:
            if exc.name != "recovery.engine.postgres":
                raise RecoveryError(
                    f"PostgreSQL support needs {exc.name}, which is not installed",
                    "install recovery with its PostgreSQL extra (psycopg 3)",
                ) from None
            raise RecoveryError(
                "PostgreSQL support is not built yet", "pass a SQLite database file"
            ) from None
        return PostgresEngine(text)
    if "://" in text and text.split("://", 1)[0].replace("+", "").isalnum():
        scheme = text.split("://", 1)[0]
        raise RecoveryError(
            f"{scheme}:// databases are not supported",
            "pass a SQLite file path or a postgresql:// URL",
        )
    from recovery.engine.sqlite import SQLiteEngine

    return SQLiteEngine(text)

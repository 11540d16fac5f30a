"""Alembic environment of the Gestima sample application.

Which database is migrated, first match wins:

1. ``config.attributes["connection"]`` — a SQLAlchemy ``Connection`` handed in by a
   program (the world generator, tests, the recovery toolkit);
2. ``-x db=PATH`` — a SQLite file path, or a full SQLAlchemy URL;
3. ``sqlalchemy.url`` from alembic.ini.

SQLite cannot ALTER most things, so every migration runs in batch mode
(``render_as_batch=True``): the table is rebuilt as ``_alembic_tmp_<name>``, copied,
the original dropped and the copy renamed. Foreign-key enforcement is switched off on
connections this file opens, because dropping ``quotes`` with ``PRAGMA foreign_keys=ON``
would fire ``ON DELETE CASCADE`` on ``quote_items`` and silently empty it.
"""

from __future__ import annotations

import importlib.util
import sys
from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
HERE = Path(__file__).resolve().parent


def _load_models():
    """Import models.py by path, under a name that cannot clash with another ``models``."""
    name = "gestima_sample_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, HERE / "models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


target_metadata = _load_models().Base.metadata


def _url() -> str:
    db = context.get_x_argument(as_dictionary=True).get("db")
    if db:
        return db if "://" in db else f"sqlite:///{Path(db).expanduser().resolve()}"
    return config.get_main_option("sqlalchemy.url")


def _configure(connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=True,
        compare_type=True,
    )


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    passed = config.attributes.get("connection")
    if passed is not None:
        _configure(passed)
        with context.begin_transaction():
            context.run_migrations()
        return

    if config.config_file_name is not None:
        fileConfig(config.config_file_name, disable_existing_loggers=False)
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
        connection.commit()  # end the autobegun transaction so alembic commits its own
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()

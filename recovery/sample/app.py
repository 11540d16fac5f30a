"""The Gestima sample application's Alembic project, driven from Python.

The project ships inside the package as ``recovery/sample/gestima_app`` (package data, so a
wheel or ``pip install .`` can build worlds; ``sample_dbs/app`` in the repository links to it);
``RECOVERY_SAMPLE_APP`` overrides it. Its revisions are the real schema history
the generator builds worlds with, and the history the toolkit's migration-lineage code reads.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.pool import NullPool

from recovery.errors import RecoveryError

OLD_HEAD = "aa001_add_drawing_number_drop_drawings"
"""Alembic head of release v2.0.0 (the backup)."""
NEW_HEAD = "bb006_drop_parts_notes"
"""Alembic head of release v2.0.1 (the failed deploy)."""
REVISIONS = (
    "0001_baseline",
    "0002_users_is_active",
    OLD_HEAD,
    "bb001_parts_file_id",
    "bb002_rename_quote_customer",
    "bb003_quote_discount_pct",
    "bb004_price_cents",
    "bb005_production_records",
    NEW_HEAD,
)
"""The linear revision chain, oldest first."""
STUB_DOWNGRADES = ("bb003_quote_discount_pct",)
"""Revisions whose downgrade() is ``pass``."""


def app_dir() -> Path:
    """The folder holding alembic.ini, env.py, models.py and versions/."""
    env = os.environ.get("RECOVERY_SAMPLE_APP")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parent / "gestima_app")
    for cand in candidates:
        if (cand / "alembic.ini").is_file():
            return cand
    raise RecoveryError(
        f"the Gestima sample app (alembic.ini) was not found in {candidates[0]}",
        hint="reinstall recovery (the app ships as package data), or point RECOVERY_SAMPLE_APP at it",
    )


def alembic_config() -> Config:
    """An alembic Config for the sample app (script_location resolves via %(here)s)."""
    cfg = Config(str(app_dir() / "alembic.ini"))
    return cfg


def sqlite_engine(db_path: Path, *, fast: bool = False) -> sa.Engine:
    """A NullPool engine on a SQLite file; ``fast`` (the generator's bulk build of a file nobody
    else has open) turns off fsync and the rollback journal.

    Without a journal, a batch rebuild does not first copy every page it frees and a later one
    reuses (about a table's size: 1.5 GB at 10M parts); ``journal_mode=MEMORY`` would hold those
    in RAM. A migration that fails half-way then leaves a broken file — the generator's output is
    thrown away and rebuilt in that case anyway.
    """
    engine = sa.create_engine(
        sa.engine.URL.create("sqlite", database=str(Path(db_path).resolve())), poolclass=NullPool
    )
    if fast:

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA synchronous=OFF")
            cur.execute("PRAGMA journal_mode=OFF")
            cur.close()

    return engine


def migrate(db_path: Path, revision: str, *, downgrade: bool = False, fast: bool = False) -> None:
    """Run the real alembic upgrade (or downgrade) of the sample app on ``db_path``.

    Foreign keys stay off (SQLite's default) so batch table rebuilds cannot cascade.
    """
    cfg = alembic_config()
    engine = sqlite_engine(db_path, fast=fast)
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            conn.commit()
            cfg.attributes["connection"] = conn
            if downgrade:
                command.downgrade(cfg, revision)
            else:
                command.upgrade(cfg, revision)
            conn.commit()
    finally:
        engine.dispose()


def load_models() -> ModuleType:
    """Import ``models.py`` of the sample app (v2.0.1 declarative models)."""
    name = "gestima_sample_models"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, app_dir() / "models.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module

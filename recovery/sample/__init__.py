"""The Gestima sample world: a real Alembic app and a deterministic world generator.

    from recovery.sample import generate
    generate(Path("world"), parts=300, seed=42)

See ``sample_dbs/README.md`` for the application, its revision chain and world.json.
"""

from __future__ import annotations

from recovery.sample.app import (
    NEW_HEAD,
    OLD_HEAD,
    REVISIONS,
    STUB_DOWNGRADES,
    alembic_config,
    app_dir,
    load_models,
    migrate,
)
from recovery.sample.generator import (
    BACKUP_NAME,
    DEPLOY_TIME,
    LIVE_NAME,
    UPLOADS_NAME,
    WORLD_JSON,
    WORLD_VERSION,
    generate,
)

__all__ = [
    "BACKUP_NAME",
    "DEPLOY_TIME",
    "LIVE_NAME",
    "NEW_HEAD",
    "OLD_HEAD",
    "REVISIONS",
    "STUB_DOWNGRADES",
    "UPLOADS_NAME",
    "WORLD_JSON",
    "WORLD_VERSION",
    "alembic_config",
    "app_dir",
    "generate",
    "load_models",
    "migrate",
]

"""Tiny Alembic applications written into a test's folder: an ``env.py`` that opens the ini's URL
(as most real ones do) and linear revisions given as (revision, down_revision, upgrade, downgrade)
code bodies."""

from __future__ import annotations

import textwrap
from pathlib import Path

ENV_PY = """
from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
with engine.connect() as conn:
    context.configure(connection=conn, target_metadata=None, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
"""

REVISION = """
import sqlalchemy as sa
from alembic import op

revision = "{rev}"
down_revision = {down!r}
branch_labels = None
depends_on = None


def upgrade():
{upgrade}


def downgrade():
{downgrade}
"""


def write_app(folder: Path, revisions: list[tuple[str, str | None, str, str]]) -> Path:
    """The app's files in ``folder`` (its ``sqlalchemy.url`` is ``sqlite:///app.db``, relative, as
    operators write it); returns its alembic.ini."""
    (folder / "versions").mkdir(parents=True)
    ini = folder / "alembic.ini"
    ini.write_text(
        "[alembic]\nscript_location = %(here)s\nsqlalchemy.url = sqlite:///app.db\n",
        encoding="utf-8",
    )
    (folder / "env.py").write_text(ENV_PY, encoding="utf-8")
    for rev, down, up, dn in revisions:
        (folder / "versions" / f"{rev}.py").write_text(
            REVISION.format(
                rev=rev,
                down=down,
                upgrade=textwrap.indent(up, "    "),
                downgrade=textwrap.indent(dn, "    "),
            ),
            encoding="utf-8",
        )
    return ini

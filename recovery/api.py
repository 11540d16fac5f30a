"""The public, scriptable API: one plain function per pipeline step (the CLI is a thin layer over
these). A rollback can be scripted in Python without click::

    from recovery import api
    snap = api.snapshot("gestima.db", uploads="uploads")
    print(api.diff(snap.backup, "gestima.db").changes.total)
    run = api.rollback("gestima.db", snap.backup, out="run", alembic_ini="app/alembic.ini", uploads="uploads")
    print(run.outcome.to_dict()["totals"])
"""
from __future__ import annotations

from recovery.compare.diff import diff
from recovery.bundle.extract import extract
from recovery.pipeline import reimport, rollback
from recovery.capture.snapshot import snapshot

__all__ = ["snapshot", "diff", "extract", "rollback", "reimport"]

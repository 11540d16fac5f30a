"""The old name of the public API: :mod:`recovery.commands` (one keyword-only function per CLI
command, each returning a result whose ``exit_code`` is what the CLI exits with). Kept so that
``from recovery import api`` goes on working; new code imports :mod:`recovery.commands`::

    from recovery import api  # the same functions as recovery.commands
    snap = api.snapshot(db="gestima.db", uploads="uploads")
    print(api.diff(backup=snap.backup, db="gestima.db").changes.total)
    run = api.rollback(db="gestima.db", backup=snap.backup, out_dir="run", alembic_ini="app/alembic.ini",
                       uploads="uploads")
    print(run.exit_code, run.outcome.to_dict()["totals"])
"""

from __future__ import annotations

from recovery.commands import (
    COMMANDS,
    RollbackOptions,
    ReimportOptions,
    apply_deletes,
    check,
    demo,
    diff,
    error_for,
    extract,
    rehearse,
    reimport,
    relink,
    report,
    rollback,
    sample,
    snapshot,
    undo,
)

__all__ = [
    "COMMANDS",
    "RollbackOptions",
    "ReimportOptions",
    "apply_deletes",
    "check",
    "demo",
    "diff",
    "error_for",
    "extract",
    "rehearse",
    "reimport",
    "relink",
    "report",
    "rollback",
    "sample",
    "snapshot",
    "undo",
]

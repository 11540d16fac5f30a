"""Outcome → result files (report.json, conflicts.csv, lost_values.csv, reimport.sql, report.md,
report.html) and ``recovery report``: the same report from a run folder or a bundle alone.

Modules: ``model`` computes the numbers once (the ``report`` section of report.json), ``tables``
shapes them as pandas frames, ``charts`` draws them with matplotlib, ``html`` / ``markdown`` render,
``runfiles`` writes the run folder and implements :func:`report`. Shape: ``docs/REPORT.md``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["FORMATS", "ReportResult", "report", "write_run_files"]


def __getattr__(name: str) -> Any:
    """The run-file writers load pandas and matplotlib; importing them only when first used keeps
    commands that print to the terminal (``diff``, ``snapshot``) from paying ~0.7 s of imports."""
    if name in __all__:
        from recovery.report import runfiles

        return getattr(runfiles, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

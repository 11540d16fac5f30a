"""Outcome → result files (report.json, conflicts.csv, lost_values.csv, reimport.sql, report.md,
report.html) and ``recovery report``: the same report from a run folder or a bundle alone.

Modules: ``model`` computes the numbers once (the ``report`` section of report.json), ``tables``
shapes them as pandas frames, ``charts`` draws them with matplotlib, ``html`` / ``markdown`` render,
``runfiles`` writes the run folder and implements :func:`report`. Shape: ``docs/REPORT.md``.
"""
from __future__ import annotations

from recovery.report.runfiles import FORMATS, ReportResult, report, write_run_files

__all__ = ["FORMATS", "ReportResult", "report", "write_run_files"]

"""Outcome → result files: report.json, conflicts.csv, lost_values.csv, reimport.sql, report.md."""
from __future__ import annotations

from recovery.report.runfiles import write_run_files

__all__ = ["write_run_files"]

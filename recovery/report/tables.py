"""The report's tables as pandas DataFrames — one definition shared by HTML, Markdown and CSV, so
the three formats cannot disagree about a column or a number."""

from __future__ import annotations

from typing import Any

import pandas as pd

from recovery.model.outcome import item_keys
from recovery.report.lost import cell

CONFLICT_COLUMNS = [
    "kind",
    "table",
    "key",
    "label",
    "column",
    "bundle_value",
    "target_value",
    "base_value",
    "resolution",
    "detail",
]
LOST_COLUMNS = ["table", "key", "label", "column", "value", "reason"]
FILE_COLUMNS = ["path", "record", "size", "status"]
LIST_LIMIT = 1000
"""The HTML and Markdown list at most this many deletes for review and files; the complete lists
are deletes_for_review.csv and files.csv in the run folder (and report.json)."""
TABLE_COLUMNS = {
    "table": "table",
    "created": "created",
    "changed": "changed",
    "carried": "carried back",
    "not_carried": "not carried",
    "not_carried_reason": "why not",
    "conflicts": "conflicts",
    "lost_values": "lost values",
    "deleted": "deleted after deploy",
}
USER_COLUMNS = {
    "user": "user",
    "user_id": "id",
    "created": "created",
    "changed": "changed",
    "carried": "carried back",
    "conflicts": "conflicts",
    "lost_values": "lost values",
}


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    """Rows → DataFrame with exactly ``columns`` (in order), cells made printable, dtype object so
    integers stay integers next to NULLs."""
    return pd.DataFrame(
        [{c: cell(r.get(c)) for c in columns} for r in rows], columns=columns, dtype=object
    )


def plain_words(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` as a page shows it: NULL as an empty cell, a yes/no flag as ``yes``/``no`` (never
    Python's ``True``), and column names in words (``unchanged since backup``)."""
    out = (
        df.astype(object)
        .where(df.notna(), "")
        .map(lambda v: ("yes" if v else "no") if isinstance(v, bool) else v)
    )
    out.columns = [str(c).replace("_", " ") for c in out.columns]
    return out


def _renamed(rows: list[dict[str, Any]], names: dict[str, str]) -> pd.DataFrame:
    return frame(rows, list(names)).rename(columns=names)


def tables_frame(report: dict[str, Any]) -> pd.DataFrame:
    return _renamed(report["tables"], TABLE_COLUMNS)


def users_frame(report: dict[str, Any]) -> pd.DataFrame:
    return _renamed(report["users"], USER_COLUMNS)


LOST_SHOWN = ["table", "key", "label", "user", "column", "value", "reason"]
"""The lost values as the report lists them: ``user`` is who created or changed the record (by
name, from the app's users table)."""


def lost_frame(report: dict[str, Any]) -> pd.DataFrame:
    return frame(
        report["lost"], LOST_SHOWN if any("user" in x for x in report["lost"]) else LOST_COLUMNS
    )


def lost_total(report: dict[str, Any]) -> int:
    """Every lost value, though ``report["lost"]`` lists at most the first 1,000 of them."""
    return max(int(report.get("lost_total") or 0), len(report["lost"]))


def lost_more(report: dict[str, Any]) -> str:
    """The line under a truncated lost-values list ('' when the list is complete)."""
    more = lost_total(report) - len(report["lost"])
    return f"… and {more:,} more in lost_values.csv" if more > 0 else ""


def conflicts_frame(report: dict[str, Any]) -> pd.DataFrame:
    return frame(report["conflicts"], CONFLICT_COLUMNS)


NOT_CARRIED_SHOWN = ["table", "key", "label", "reason", "values"]


def not_carried_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The records not carried back (the first ``LIST_LIMIT``), each with its whole row."""
    return frame(report.get("not_carried") or [], NOT_CARRIED_SHOWN)


def not_carried_more(report: dict[str, Any]) -> str:
    return more_line(report, int(report.get("not_carried_total") or 0), "not_carried.csv")


def deletes_columns(rows: list[dict[str, Any]]) -> list[str]:
    """``table``, ``key``, ``label``, then every other key of the rows, sorted (the keys of an
    outcome's spilled deletes read from their stored text: :func:`recovery.model.outcome.item_keys`)."""
    return ["table", "key", "label"] + sorted(item_keys(rows) - {"table", "key", "label"})


def deletes_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The first ``LIST_LIMIT`` deletes for review (columns from the whole list)."""
    rows = report.get("deletes_for_review") or []
    return frame(rows[:LIST_LIMIT], deletes_columns(rows))


def files_frame(report: dict[str, Any]) -> pd.DataFrame:
    """The first ``LIST_LIMIT`` files."""
    return frame((report["files"].get("list") or [])[:LIST_LIMIT], FILE_COLUMNS)


def more_line(report: dict[str, Any], total: int, csv_name: str) -> str:
    """The line under a list cut at ``LIST_LIMIT`` ('' when it is complete): a run folder has the
    complete list as ``csv_name``; a bundle report (nothing written but the page) points at the
    JSON format."""
    more = total - LIST_LIMIT
    if more <= 0:
        return ""
    where = (
        f"in {csv_name}"
        if report.get("headline", {}).get("mode") != "bundle"
        else "in the JSON report (recovery report BUNDLE_DIR --format json)"
    )
    return f"… and {more:,} more {where}"


def deletes_more(report: dict[str, Any]) -> str:
    return more_line(report, len(report.get("deletes_for_review") or []), "deletes_for_review.csv")


def files_more(report: dict[str, Any]) -> str:
    return more_line(report, len(report["files"].get("list") or []), "files.csv")

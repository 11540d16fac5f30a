"""The relink plan while it is being built: the report's lists, the files to write and the cells
of the files table to change. Each planning step adds to one :class:`Draft`; a cell changed twice
keeps its last value, and a path is written at most once."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recovery.model.values import FILE_LISTS

REPORT_LISTS = FILE_LISTS


@dataclass(frozen=True)
class FileWrite:
    """One file to put in place: ``source`` (in the bundle) copied to ``target`` (under the root)."""

    source: Path
    target: Path
    rel: str
    sha256: str
    mode: int | None = None
    """The source file's permission bits as the bundle recorded them (None: not recorded)."""


@dataclass(frozen=True)
class LinkFix:
    """One cell of the target's files table to change (the row by its key)."""

    key: Any
    column: str
    old: Any
    new: Any
    reason: str


class Draft:
    """One plan in the making (see the module docstring)."""

    def __init__(self) -> None:
        self.report: dict[str, list[dict[str, Any]]] = {k: [] for k in REPORT_LISTS}
        self.writes: list[FileWrite] = []
        self.fix_at: dict[tuple[Any, str], LinkFix] = {}
        self.claimed: set[str] = set()  # paths written by this plan (never written twice)

    def current(self, rec: dict[str, Any], column: str) -> Any:
        """A record's cell as it will be after the plan."""
        fix = self.fix_at.get((rec["_key"], column))
        return fix.new if fix else rec.get(column)

    def fix(self, rec: dict[str, Any], column: str, new: Any, reason: str) -> None:
        """Plan ``rec[column] = new`` (dropped again when ``new`` is the stored value)."""
        old = rec.get(column)
        if self.current(rec, column) == new:
            return
        if old == new:  # back to the stored value: nothing to write
            self.fix_at.pop((rec["_key"], column), None)
            return
        self.fix_at[(rec["_key"], column)] = LinkFix(rec["_key"], column, old, new, reason)

    def write(self, src: Path, dst: Path, rel: str, sha: str, mode: int | None) -> None:
        """Plan the copy of bundle file ``src`` to ``dst`` (``rel`` under the root)."""
        self.claimed.add(rel)
        self.writes.append(FileWrite(src, dst, rel, sha, mode))

    @property
    def fixes(self) -> list[LinkFix]:
        return list(self.fix_at.values())

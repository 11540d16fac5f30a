"""``Outcome``: what a re-import did — rows applied, keys remapped, conflicts and their resolution,
lost values, files, verification. Made by reimport/relink/verify, read by the report renderers.

Conflict kinds (``../DESIGN.md``): ``primary_key``, ``unique``, ``missing_parent``, ``constraint``,
``update_update``, ``update_deleted``. Resolutions: ``applied``, ``remapped``, ``skipped``,
``kept_target``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any

CONFLICT_KINDS = ("primary_key", "unique", "missing_parent", "constraint", "update_update", "update_deleted")
RESOLUTIONS = ("applied", "remapped", "skipped", "kept_target")


class ConflictPolicy(str, Enum):
    """What to do with a bundle row that collides with the target."""

    REMAP = "remap"
    """A primary key taken by a different row gets a fresh key and every bundle reference follows;
    unique clashes, missing parents and update conflicts skip the whole unit and are reported."""
    SKIP = "skip"
    """Every conflicting unit is skipped and reported; nothing is remapped."""
    ABORT = "abort"
    """Any conflict: change nothing, report, exit non-zero."""


class Prefer(str, Enum):
    """Which value wins a cell changed differently after the deploy and in the target since."""

    DB = "db"
    """Keep the target database's value (default) and report both."""
    BUNDLE = "bundle"
    """Take the bundle's value and report both."""


@dataclass(frozen=True)
class Conflict:
    kind: str
    table: str
    key: tuple[Any, ...]
    resolution: str
    column: str | None = None
    bundle_value: Any = None
    target_value: Any = None
    base_value: Any = None
    label: str | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["key"] = list(self.key)
        return d


@dataclass(frozen=True)
class Remap:
    table: str
    old_key: Any
    new_key: Any


@dataclass
class TableOutcome:
    table: str
    bundle_inserted: int = 0
    bundle_updated: int = 0
    bundle_deleted: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: int = 0
    remapped: int = 0
    already_present: int = 0
    rows_before: int = 0
    rows_after: int = 0
    lost: int = 0


@dataclass
class Outcome:
    bundle_id: str
    target: str
    policy: str
    dry_run: bool
    already_applied: bool = False
    tables: dict[str, TableOutcome] = field(default_factory=dict)
    conflicts: list[Conflict] = field(default_factory=list)
    remaps: list[Remap] = field(default_factory=list)
    lost: list[dict[str, Any]] = field(default_factory=list)
    """Lost values: after a re-import a :class:`recovery.lost.LostValues` — the first 1,000 by
    (table, key, column) with the exact ``total``; the complete list stays in the bundle's rows.db
    (``lost_total``, ``iter_lost()``)."""
    deletes_for_review: list[dict[str, Any]] = field(default_factory=list)
    skipped_rows: list[dict[str, Any]] = field(default_factory=list)
    """Bundle rows not carried because their unit was skipped (a conflict elsewhere in the unit);
    the conflicting rows themselves are in ``conflicts``."""
    files: dict[str, Any] | None = None
    verification: dict[str, Any] = field(default_factory=dict)
    aborted: bool = False
    triggers_suspended: list[str] = field(default_factory=list)
    """The target's triggers dropped while the re-import wrote and re-created (byte-identical)
    before its commit: they did not fire for the rows the tool carried."""
    sequences: list[dict[str, Any]] = field(default_factory=list)
    """AUTOINCREMENT counters after the re-import: ``{"table", "backup", "live", "max_id", "seq"}``."""

    @property
    def needs_review(self) -> bool:
        files_bad = bool(self.files and (self.files.get("missing") or self.files.get("unsafe")))
        return bool(self.conflicts or self.lost_total or self.skipped_rows or self.aborted or files_bad)

    @property
    def lost_total(self) -> int:
        """Exact number of lost values (``lost`` may hold only a sample of them)."""
        return max(getattr(self.lost, "total", 0), len(self.lost))

    @property
    def lost_truncated(self) -> bool:
        return self.lost_total > len(self.lost)

    def lost_by_table(self) -> dict[str, int]:
        counts = getattr(self.lost, "counts", None)
        if counts and self.lost_truncated:
            return {t: sum(cols.values()) for t, cols in counts.items()}
        out: dict[str, int] = {}
        for item in self.lost:
            out[item["table"]] = out.get(item["table"], 0) + 1
        return out

    def iter_lost(self) -> Any:
        """Every lost value, streamed from the bundle's rows.db when ``lost`` is only a sample
        (and that file still exists — a dry run's bundle is gone when it ends)."""
        source = getattr(self.lost, "source", None)
        if self.lost_truncated and source:
            from pathlib import Path

            from recovery.lost import stream_file

            if Path(source).is_file():
                return stream_file(source)
        return iter(self.lost)

    @property
    def exit_code(self) -> int:
        return 1 if self.needs_review else 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "bundle_id": self.bundle_id, "target": self.target, "policy": self.policy, "dry_run": self.dry_run,
            "already_applied": self.already_applied, "aborted": self.aborted,
            "tables": {n: asdict(t) for n, t in sorted(self.tables.items())},
            "conflicts": [c.to_dict() for c in self.conflicts],
            "remapped": [asdict(r) for r in self.remaps],
            "lost": list(self.lost), "lost_total": self.lost_total, "lost_truncated": self.lost_truncated,
            "deletes_for_review": self.deletes_for_review, "skipped_rows": self.skipped_rows,
            "files": self.files, "verification": self.verification,
            "triggers_suspended": self.triggers_suspended, "sequences": self.sequences,
            "totals": {
                "inserted": sum(t.inserted for t in self.tables.values()),
                "updated": sum(t.updated for t in self.tables.values()),
                "deleted": sum(t.deleted for t in self.tables.values()),
                "skipped": sum(t.skipped for t in self.tables.values()),
                "remapped": len(self.remaps), "conflicts": len(self.conflicts), "lost": self.lost_total,
            },
        }

"""Typed values the stages hand each other: a table's bundle counts, a lost value and the bounded
list of them, a relink's file result, a verification. Each has ``to_dict``/``from_dict`` whose
keys are exactly the JSON keys of the files people script against (``manifest.json``'s
``counts``, ``outcome.json``, ``report.json``), so the files stay byte-identical."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from recovery.model.kinds import RowKind

#: The count keys of a table in a bundle manifest's ``counts`` (each a non-negative int).
COUNT_KEYS: tuple[str, ...] = (
    RowKind.INSERTED,
    RowKind.UPDATED,
    RowKind.DELETED,
    RowKind.CLOSURE,
    "lost",
)


@dataclass(frozen=True)
class TableCounts:
    """One table's rows in a bundle (``manifest.json`` ``counts.<table>``): by :class:`RowKind`,
    plus the values with no place in the old schema (``lost``) and those listed as filled by the
    upgrade, not verified (``filled_by_upgrade``). ``status``: ``compared``, ``new table`` or
    ``skipped by mapping``."""

    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    closure: int = 0
    lost: int = 0
    filled_by_upgrade: int = 0
    status: str | None = None

    @property
    def carried(self) -> int:
        """Rows written into the target by the re-import (every kind but deletes)."""
        return self.inserted + self.updated + self.closure

    def of(self, kind: RowKind) -> int:
        """The count of rows of ``kind``."""
        return int(getattr(self, kind.value))

    def to_dict(self) -> dict[str, Any]:
        """The manifest form, keys in the order extract writes them: ``closure`` and
        ``filled_by_upgrade`` only when non-zero, ``status`` when known."""
        d: dict[str, Any] = {
            RowKind.INSERTED.value: self.inserted,
            RowKind.UPDATED.value: self.updated,
            RowKind.DELETED.value: self.deleted,
        }
        if self.status is not None:
            d["status"] = self.status
        if self.closure:
            d[RowKind.CLOSURE.value] = self.closure
        d["lost"] = self.lost
        if self.filled_by_upgrade:
            d["filled_by_upgrade"] = self.filled_by_upgrade
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> TableCounts:
        """Read a manifest's counts of one table; ``ValueError`` when a count is not a
        non-negative int or the status not text."""
        vals: dict[str, int] = {}
        for k in (*COUNT_KEYS, "filled_by_upgrade"):
            v = d.get(k, 0)
            if type(v) is not int or v < 0:
                raise ValueError(f"count {k!r} is {v!r}, not a non-negative integer")
            vals[str(k)] = v
        status = d.get("status")
        if status is not None and not isinstance(status, str):
            raise ValueError(f"status {status!r} is not text")
        return TableCounts(status=status, **vals)


@dataclass(frozen=True)
class LostValue:
    """A value a user made that the old schema has no place for (one row of ``_recovery_lost``,
    of ``lost_values.csv``). ``value_size``: the stored size in bytes when ``value`` was cut for
    showing."""

    table: str
    key: Any
    label: Any
    column: str
    value: Any
    reason: str
    value_size: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {
            "table": self.table,
            "key": self.key,
            "label": self.label,
            "column": self.column,
            "value": self.value,
            "reason": self.reason,
        }
        if self.value_size is not None:
            d["value_size"] = self.value_size
        return d

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> LostValue:
        size = d.get("value_size")
        return LostValue(
            str(d["table"]),
            d["key"],
            d.get("label"),
            str(d["column"]),
            d.get("value"),
            str(d.get("reason") or ""),
            size if isinstance(size, int) else None,
        )


class LostValues(list[dict[str, Any]]):
    """A bounded sample of lost values, each in :meth:`LostValue.to_dict`'s form, that knows the
    exact ``total``, the ``counts`` per table and column and the ``source`` rows.db holding all of
    them. It is a list, so code that only reads the sample reads it as before;
    :meth:`values` gives the typed :class:`LostValue` objects."""

    total: int
    counts: dict[str, dict[str, int]]
    source: str | None

    def __init__(
        self,
        sample: Iterable[dict[str, Any]] = (),
        total: int | None = None,
        counts: dict[str, dict[str, int]] | None = None,
        source: str | None = None,
    ) -> None:
        super().__init__(sample)
        self.total = len(self) if total is None else total
        self.counts = counts or {}
        self.source = source

    @property
    def truncated(self) -> bool:
        return self.total > len(self)

    def values(self) -> Iterator[LostValue]:
        """The sample as typed values."""
        return (LostValue.from_dict(d) for d in self)


@dataclass(frozen=True)
class FileResult:
    """What relinking the uploaded files did (``outcome.json``/``report.json`` ``files``): one
    list of entries per outcome (:data:`FILE_LISTS`), plus any further keys the relink reports."""

    lists: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return len(self.lists.get("missing", ()))

    @property
    def unsafe(self) -> int:
        return len(self.lists.get("unsafe", ()))

    def to_dict(self) -> dict[str, Any]:
        return {**self.lists, **self.extra}

    @staticmethod
    def from_dict(d: Mapping[str, Any] | None) -> FileResult:
        """Read a relink result; a count in place of a list (an older summary) reads as that many
        empty entries, so ``missing``/``unsafe`` keep their number."""
        lists: dict[str, list[dict[str, Any]]] = {}
        extra: dict[str, Any] = {}
        for k, v in (d or {}).items():
            if k in FILE_LISTS and isinstance(v, list):
                lists[k] = [x if isinstance(x, dict) else {"value": x} for x in v]
            elif k in FILE_LISTS and isinstance(v, int) and not isinstance(v, bool):
                lists[k] = [{} for _ in range(v)]
            else:
                extra[k] = v
        return FileResult(lists, extra)


FILE_LISTS: tuple[str, ...] = (
    "relinked",
    "restored_from_bundle",
    "missing",
    "orphans",
    "records_without_file",
    "unsafe",
    "kept_both",
    "hash_mismatch",
    "links_fixed",
    "links_unresolved",
    "records_not_imported",
)
"""The lists of a relink result, one per thing that happened to a file or a link."""


@dataclass(frozen=True)
class RowCountCheck:
    """One table's row count after the re-import against what the outcome expects."""

    before: int
    inserted: int
    deleted: int
    expected: int
    actual: int

    @property
    def ok(self) -> bool:
        return self.expected == self.actual

    def to_dict(self) -> dict[str, Any]:
        return {
            "before": self.before,
            "inserted": self.inserted,
            "deleted": self.deleted,
            "expected": self.expected,
            "actual": self.actual,
            "ok": self.ok,
        }


@dataclass(frozen=True)
class Verification:
    """The checks of a database after the re-import (``outcome.json`` ``verification``):
    ``integrity_check`` (``ok`` or the first problems), foreign-key violations, the Alembic
    revision expected and found, and each table's row count."""

    integrity: tuple[str, ...] = ("ok",)
    foreign_key_check: tuple[dict[str, Any], ...] = ()
    revision_expected: str | None = None
    revision_actual: str | None = None
    row_counts: dict[str, RowCountCheck] = field(default_factory=dict)

    @property
    def revision_ok(self) -> bool:
        return self.revision_expected is None or self.revision_actual == self.revision_expected

    @property
    def ok(self) -> bool:
        return (
            self.integrity == ("ok",)
            and not self.foreign_key_check
            and self.revision_ok
            and all(c.ok for c in self.row_counts.values())
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "integrity_check": "ok" if self.integrity == ("ok",) else list(self.integrity[:5]),
            "foreign_key_check": list(self.foreign_key_check),
            "alembic_revision": {
                "expected": self.revision_expected,
                "actual": self.revision_actual,
                "ok": self.revision_ok,
            },
            "row_counts": {n: c.to_dict() for n, c in self.row_counts.items()},
            "ok": self.ok,
        }

    @staticmethod
    def from_dict(d: Mapping[str, Any]) -> Verification:
        integrity = d.get("integrity_check", "ok")
        rev = d.get("alembic_revision") or {}
        rows = {
            str(n): RowCountCheck(
                int(c["before"]),
                int(c["inserted"]),
                int(c["deleted"]),
                int(c["expected"]),
                int(c["actual"]),
            )
            for n, c in (d.get("row_counts") or {}).items()
        }
        return Verification(
            ("ok",) if integrity == "ok" else tuple(str(x) for x in integrity),
            tuple(d.get("foreign_key_check") or ()),
            rev.get("expected"),
            rev.get("actual"),
            rows,
        )

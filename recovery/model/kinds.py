"""The pipeline's vocabulary: what kind of change a bundle row is, what kind of conflict a unit
met, and how it was resolved. Every module names these through the enums below; their values are
the strings that appear in the bundle, report.json, the CSV files and ``outcome.json``, so the
files people script against are unchanged by the enums.

Each enum subclasses ``str``: a member compares equal to, hashes like and serialises as its value.
"""

from __future__ import annotations

from enum import Enum


class RowKind(str, Enum):
    """Why a row is in the bundle (its ``_recovery_kind`` column)."""

    INSERTED = "inserted"
    """The row's key is in the live database and not in the backup: made after the deploy."""
    UPDATED = "updated"
    """The key is in both and at least one compared column differs (:func:`recovery.compare.changes`)."""
    DELETED = "deleted"
    """The key is in the backup and not in the live database: deleted after the deploy."""
    CLOSURE = "closure"
    """Unchanged since the deploy, carried only because a changed row references it (a parent the
    restored database may lack); inserted if missing, never overwritten."""

    def __str__(self) -> str:
        return self.value


#: Kinds whose rows are written as INSERTs by the re-import.
INSERT_KINDS: tuple[RowKind, ...] = (RowKind.INSERTED, RowKind.CLOSURE)
#: Kinds whose rows are carried into the target (every kind but deletes).
CARRIED_KINDS: tuple[RowKind, ...] = (RowKind.INSERTED, RowKind.UPDATED, RowKind.CLOSURE)


class ConflictKind(str, Enum):
    """What a unit of bundle rows collided with in the target (``../DESIGN.md``'s vocabulary)."""

    PRIMARY_KEY = "primary_key"
    """The row's primary key is taken in the target by a different row."""
    UNIQUE = "unique"
    """A UNIQUE constraint or unique index of the target would be broken."""
    MISSING_PARENT = "missing_parent"
    """A foreign key points at a parent that is neither in the target nor carried."""
    CONSTRAINT = "constraint"
    """The target's own DDL refuses the row: CHECK, NOT NULL, STRICT type, generated column."""
    UPDATE_UPDATE = "update_update"
    """The same cell (or row, with ``--conflicts row``) changed after the deploy and in the target
    since, to different values."""
    UPDATE_DELETED = "update_deleted"
    """A row updated after the deploy is gone from the target."""

    def __str__(self) -> str:
        return self.value


class Resolution(str, Enum):
    """What the re-import did with a conflicting unit."""

    APPLIED = "applied"
    """The bundle's value was written (``--prefer bundle``)."""
    REMAPPED = "remapped"
    """Inserted under a fresh key; every bundle reference follows it."""
    SKIPPED = "skipped"
    """Not carried; the whole unit (the row and rows that depend on it) is listed in not_carried.csv."""
    KEPT_TARGET = "kept_target"
    """The target's value was kept (``--prefer db``); the bundle's value is reported."""

    def __str__(self) -> str:
        return self.value


#: The bundle tables' column that holds each row's :class:`RowKind` (``rows.db`` and ``base.db``).
KIND_COLUMN = "_recovery_kind"
#: Kinds of the rows users made or changed after the deploy (closure rows are context, not work).
CHANGED_KINDS: tuple[RowKind, ...] = (RowKind.INSERTED, RowKind.UPDATED)

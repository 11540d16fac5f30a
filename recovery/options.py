"""The options of a re-import and of a rollback, as frozen values passed whole through the layers
(command → pipeline → step) instead of one positional parameter each.

Inputs (files and folders: the DB, the backup, ``--out``, ``--uploads``, ``--mapping``,
``--alembic-ini``) stay parameters of their own; everything that changes *how* a run behaves is
here. Each class adds to the one before, so a :class:`RollbackOptions` is usable wherever the
re-import needs its :class:`MergeOptions`. This module imports nothing of ours but the model.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from recovery.model.outcome import ConflictMode, ConflictPolicy, Prefer


@dataclass(frozen=True)
class MergeOptions:
    """How the re-import's three-way merge treats what it meets in the target."""

    on_conflict: ConflictPolicy = ConflictPolicy.REMAP
    """``--on-conflict``: remap taken keys, skip conflicting units, or abort on any conflict."""
    prefer: Prefer = Prefer.DB
    """``--prefer``: which value wins a cell changed on both sides."""
    conflicts: ConflictMode = ConflictMode.CELL
    """``--conflicts``: compare a row changed on both sides cell by cell or as a whole row."""
    apply_deletes: bool = False
    """``--apply-deletes``: re-delete rows deleted after the deploy (default: list them for review)."""

    def __post_init__(self) -> None:
        # the CLI and JSON hand over strings: keep the enums, refuse anything else (ValueError)
        object.__setattr__(self, "on_conflict", ConflictPolicy(self.on_conflict))
        object.__setattr__(self, "prefer", Prefer(self.prefer))
        object.__setattr__(self, "conflicts", ConflictMode(self.conflicts))


@dataclass(frozen=True)
class ReimportOptions(MergeOptions):
    """``recovery reimport``'s options: the merge's, plus whether anything is written."""

    dry_run: bool = False
    """``--dry-run``: work on scratch copies; every given file stays byte-identical."""
    statement_timeout: float | None = None
    """``--statement-timeout``: the bound in seconds on each SQL statement over the bundle (None:
    ``$RECOVERY_STATEMENT_TIMEOUT``, else 300; :mod:`recovery.engine.timebound`). Applied by
    :mod:`recovery.commands` around the whole command (``engine.timebound.override``)."""


@dataclass(frozen=True)
class RollbackOptions(ReimportOptions):
    """``recovery rollback``'s options: the re-import's, plus how the extract reads the pair and
    which refusals of the preflight the operator overrides."""

    since: str | None = None
    """``--since``: the deploy time (ISO-8601 or epoch); None: the backup's manifest or name."""
    trust_mapping: bool = False
    """``--trust-mapping``: keep a column rule the unchanged rows contradict (default: refused)."""
    force: bool = False
    """``--force``: proceed although other processes hold the DB (only that refusal)."""
    allow_newer_backup: bool = False
    """``--allow-newer-backup``: proceed although the backup file is newer than the live DB."""
    same_installation: bool = False
    """``--same-installation``: skip the row-sample check that refuses another installation's backup."""
    downgrade_to: str | None = None
    """``--downgrade-to``: downgrade in place with the app's Alembic instead of restoring the backup."""
    full_verify: bool = False
    """``--full-verify``: the whole ``integrity_check`` and ``foreign_key_check`` of the rolled-back
    database instead of the checks bounded by what the re-import wrote."""
    terminate_sessions: bool = False
    """``--terminate-sessions`` (PostgreSQL): end the other sessions connected to the database
    (``pg_terminate_backend``) instead of refusing while they are there."""


def with_fields(cls: type[Any], base: Any | None, overrides: dict[str, Any]) -> Any:
    """``base`` (or ``cls()``) with ``overrides`` applied; an unknown name is a ``TypeError``, as
    for a keyword argument the function does not take."""
    import dataclasses

    names = {f.name for f in fields(cls)}
    unknown = sorted(set(overrides) - names)
    if unknown:
        raise TypeError(f"unexpected option(s) for {cls.__name__}: {', '.join(unknown)}")
    start = base if base is not None else cls()
    return dataclasses.replace(start, **overrides) if overrides else start

"""The "Next steps" block printed at the end of a rollback: what the operator does now, with the
paths and commands of this run, so no loose end depends on remembering the README at 3 a.m."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from recovery.capture.manifest import release_tag
from recovery.engine.base import normalise_spec


def _release(backup: Path | None, revision: str | None) -> str:
    """``release v2.0.0 (Alembic revision aa001…)`` from the backup's snapshot manifest, when it has a tag."""
    tag = release_tag(backup)
    parts = [f"release {tag}" if tag else "the previous release"]
    if revision:
        parts.append(f"(Alembic revision {revision})")
    return " ".join(parts)


def next_steps(
    run_dir: Path,
    db: Path | str,
    backup: Path | None,
    revision: str | None,
    *,
    dry_run: bool,
    deletes_for_review: int,
    needs_review: bool,
    kept_as: str | None = None,
) -> list[str]:
    """The lines of the block, numbered, each naming a path or a command of this run."""
    if dry_run:
        return [
            f"1. Nothing was changed. Read {run_dir / 'report.html'} for what a rollback would carry and lose.",
            "2. To roll back for real, run the same command without --dry-run (with the application stopped).",
        ]
    steps = [
        f"Deploy {_release(backup, revision)} now: {normalise_spec(str(db))} is at its schema.",
        f"Report for the product owner: {run_dir / 'report.html'}"
        + (" — it lists what needs review." if needs_review else "."),
        (
            f"The failed release's database is kept in {run_dir / 'safety'}; to put it back: "
            f"recovery undo {run_dir}"
        )
        if kept_as is None
        else (
            f"The failed release's database is kept on the server as {kept_as}; to put it back: "
            f"recovery undo {run_dir}"
        ),
    ]
    if deletes_for_review and kept_as is not None:  # a PostgreSQL run: no apply-deletes yet
        steps.append(
            f"{deletes_for_review} row(s) deleted after the deploy were restored; review "
            f"{run_dir / 'deletes_for_review.csv'}, then delete the reviewed ones by hand "
            "(apply-deletes is not built for PostgreSQL yet)"
        )
    elif deletes_for_review:
        steps.append(
            f"{deletes_for_review} row(s) deleted after the deploy were restored; review "
            f"{run_dir / 'deletes_for_review.csv'}, then: recovery apply-deletes {run_dir} "
            "[--only reviewed.csv]"
        )
    return [f"{i}. {s}" for i, s in enumerate(steps, start=1)]


def steps_for(res: Any, backup: Path | None) -> list[str]:
    """:func:`next_steps` for a :class:`recovery.pipeline.RunResult` (nothing for a run that had
    already finished: its steps were printed then)."""
    o = res.outcome
    if o is None:
        return []
    revision = (
        (o.verification or {}).get("alembic_revision", {}).get("expected")
        if o.verification
        else None
    )
    # PostgreSQL: the failed database is kept renamed on the server, named by the journal
    kept = ((res.steps or {}).get("restore") or {}).get("safety")
    return next_steps(
        res.run_dir,
        o.target if isinstance(kept, str) else Path(o.target),
        backup,
        revision,
        dry_run=bool(o.dry_run),
        deletes_for_review=len(o.deletes_for_review),
        needs_review=res.verdict.verdict != "all recovered",
        kept_as=kept if isinstance(kept, str) else None,
    )  # the run's one verdict, late commits included

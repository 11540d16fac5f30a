"""The files every re-import (and rollback, and dry run) leaves in its run folder.

``report.json`` has a documented, stable shape (see the README): ``bundle``, ``outcome`` (the
``Outcome``: per-table counts, conflicts, remapped keys, lost values, deletes for review, files,
verification) and ``summary`` (the headline numbers). The CSVs are built with pandas.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from recovery.bundle import Bundle
from recovery.outcome import Outcome

CONFLICT_COLUMNS = ["kind", "table", "key", "label", "column", "bundle_value", "target_value", "base_value",
                    "resolution", "detail"]
LOST_COLUMNS = ["table", "key", "label", "column", "value", "reason"]


def _json_cell(v: Any) -> Any:
    if isinstance(v, bytes):
        return "0x" + v.hex()
    if isinstance(v, (list, dict)):
        return json.dumps(v, ensure_ascii=False)
    return v


def frame(rows: list[dict[str, Any]], columns: list[str]) -> pd.DataFrame:
    df = pd.DataFrame([{c: _json_cell(r.get(c)) for c in columns} for r in rows], columns=columns)
    return df


def summary(outcome: Outcome, bundle: Bundle) -> dict[str, Any]:
    counts = bundle.counts
    created = sum(c.get("inserted", 0) for c in counts.values())
    changed = sum(c.get("updated", 0) for c in counts.values())
    deleted = sum(c.get("deleted", 0) for c in counts.values())
    tot = outcome.to_dict()["totals"]
    return {
        "deploy_time": bundle.manifest.get("deploy_time"),
        "records_created_after_deploy": created,
        "records_changed_after_deploy": changed,
        "records_deleted_after_deploy": deleted,
        "rows_inserted": tot["inserted"], "rows_updated": tot["updated"], "rows_deleted": tot["deleted"],
        "rows_skipped": tot["skipped"], "keys_remapped": tot["remapped"],
        "conflicts": tot["conflicts"], "lost_values": tot["lost"],
        "verdict": "review needed" if outcome.needs_review else "all recovered",
        "verified": bool(outcome.verification.get("ok")) if outcome.verification else None,
        "already_applied": outcome.already_applied, "dry_run": outcome.dry_run, "aborted": outcome.aborted,
    }


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_run_files(run_dir: Path, outcome: Outcome, bundle: Bundle, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    head = summary(outcome, bundle)
    report = {"format": "recovery-report/1", "bundle": {"path": str(bundle.path), "id": bundle.bundle_id,
                                                         "counts": bundle.counts},
              "summary": head, "outcome": outcome.to_dict(), **(extra or {})}
    paths = {n: run_dir / n for n in ("report.json", "conflicts.csv", "lost_values.csv", "reimport.sql", "report.md")}
    _atomic_write(paths["report.json"], json.dumps(report, indent=2, ensure_ascii=False, default=str) + "\n")
    _atomic_write(paths["conflicts.csv"], frame([c.to_dict() for c in outcome.conflicts], CONFLICT_COLUMNS).to_csv(index=False))
    _atomic_write(paths["lost_values.csv"], frame(outcome.lost, LOST_COLUMNS).to_csv(index=False))
    shutil.copyfile(bundle.path / "reimport.sql", paths["reimport.sql"])
    _atomic_write(paths["report.md"], markdown(head, outcome))
    return paths


def markdown(head: dict[str, Any], outcome: Outcome) -> str:
    lines = ["# Rollback recovery report", ""]
    lines += [f"- **{k.replace('_', ' ')}**: {v}" for k, v in head.items()]
    per_table = pd.DataFrame([
        {"table": n, "inserted": t.inserted, "updated": t.updated, "deleted": t.deleted, "skipped": t.skipped,
         "remapped": t.remapped, "lost": t.lost}
        for n, t in sorted(outcome.tables.items())
    ])
    if not per_table.empty:
        lines += ["", "## Per table", "", per_table.to_markdown(index=False)]
    if outcome.conflicts:
        lines += ["", "## Conflicts", "", frame([c.to_dict() for c in outcome.conflicts], CONFLICT_COLUMNS).to_markdown(index=False)]
    if outcome.lost:
        lines += ["", "## Values that could not be carried back", "", frame(outcome.lost, LOST_COLUMNS).to_markdown(index=False)]
    return "\n".join(lines) + "\n"

"""``Bundle``: the durable, self-contained unit on disk that everything after extract reads.

Layout (format ``recovery-bundle/1``)::

    BUNDLE_DIR/
      manifest.json     schemas (old, new), schema diff, column mapping and its sources, deploy time,
                        source DB hashes, tool version, per-table counts, files, planning errors,
                        and the sha256 of every other file in the bundle
      manifest.sha256   sha256 of manifest.json (tamper check for the manifest itself)
      rows.db           changed rows in the NEW schema, one table per new table (same names, columns
                        untyped so values keep their storage class) plus "_recovery_kind":
                        inserted | updated | closure; and "_recovery_lost" (table, key, label,
                        column, value) — every value the old schema has no place for
      base.db           backup images in the OLD schema of rows updated ("updated") or deleted
                        ("deleted") after the deploy, for the three-way merge and review
      files/<path>      copies of uploaded files the re-import may need (see files.py)
      reimport.sql      the transpiled plan as reviewable SQL (SQLite)

Nothing downstream reads the failed live database again. Opening a bundle verifies every hash.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from recovery.errors import RecoveryError
from recovery.mapping import ColumnMapping, ColumnRule, TableMapping
from recovery.schema import Schema
from recovery.sqlite_io import sha256_file

FORMAT = "recovery-bundle/1"
LOST_TABLE = "_recovery_lost"


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict[str, Any]
    old: Schema
    new: Schema
    mapping: ColumnMapping

    @property
    def rows_db(self) -> Path:
        return self.path / "rows.db"

    @property
    def base_db(self) -> Path:
        return self.path / "base.db"

    @property
    def files_dir(self) -> Path:
        return self.path / "files"

    @property
    def bundle_id(self) -> str:
        return str(self.manifest["bundle_id"])

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        return self.manifest["counts"]

    def tables_with_rows(self) -> set[str]:
        return {t for t, c in self.counts.items() if c.get("inserted", 0) + c.get("updated", 0) + c.get("closure", 0)}

    def tables_with_deletes(self) -> set[str]:
        """Tables with rows deleted after the deploy (their backup images are in base.db)."""
        return {t for t, c in self.counts.items() if c.get("deleted", 0)}


def mapping_from_dict(data: dict[str, Any]) -> ColumnMapping:
    import sqlglot

    tables = {}
    for name, t in data.items():
        rules = tuple(
            ColumnRule(
                r["column"],
                sqlglot.parse_one(r["expression"], read="sqlite") if r["expression"] is not None else None,
                r["source"], r.get("evidence", ""),
            )
            for r in t["columns"]
        )
        tables[name] = TableMapping(name, rules, bool(t.get("skip")), t.get("new_table"),
                                    t.get("table_rename_evidence", ""))
    return ColumnMapping(tables)


def write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        fh.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _hashes(folder: Path, rels: list[str]) -> dict[str, str]:
    """{relative path: sha256} of files in ``folder``, on four threads (hashlib and file reads
    release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=4, thread_name_prefix="recovery-hash") as pool:
        return dict(zip(rels, pool.map(sha256_file, [folder / rel for rel in rels])))


def seal(folder: Path, manifest: dict[str, Any]) -> None:
    """Hash every bundle file into the manifest, then write manifest.json and manifest.sha256."""
    # exactly what open_bundle verifies (every name: an upload may well be called "x.tmp")
    todo = [rel for rel in sorted(_content_files(folder))
            if rel not in ("manifest.json", "manifest.sha256") and (folder / rel).is_file()]
    manifest["hashes"] = _hashes(folder, todo)
    write_json_atomic(folder / "manifest.json", manifest)
    digest = sha256_file(folder / "manifest.json")
    (folder / "manifest.sha256").write_text(digest + "  manifest.json\n", encoding="utf-8")


def _content_files(folder: Path) -> list[str]:
    """The bundle's own files: top-level files and everything under ``files/``. Other folders
    (run folders that ``recovery reimport`` writes inside the bundle) are not bundle content."""
    out = [p.name for p in folder.iterdir() if p.is_file() or p.is_symlink()]
    files = folder / "files"
    if files.is_dir():
        out += [p.relative_to(folder).as_posix() for p in files.rglob("*") if p.is_file() or p.is_symlink()]
    return out


def open_bundle(path: str | os.PathLike[str], verify: bool = True) -> Bundle:
    """Open a bundle folder, verifying the manifest and the hash of every file in it."""
    folder = Path(path)
    mpath = folder / "manifest.json"
    if not folder.is_dir() or not mpath.is_file():
        raise RecoveryError(f"{folder} is not a recovery bundle (no manifest.json)", "pass the folder `recovery extract` wrote")
    if verify:
        recorded = (folder / "manifest.sha256").read_text(encoding="utf-8").split()[0] if (folder / "manifest.sha256").is_file() else None
        if recorded != sha256_file(mpath):
            raise RecoveryError(f"bundle {folder}: manifest.json was changed after extraction (hash mismatch)",
                                "extract the bundle again from the safety copy")
    try:
        manifest = json.loads(mpath.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecoveryError(f"bundle {folder}: manifest.json is not valid JSON: {exc}") from None
    if manifest.get("format") != FORMAT:
        raise RecoveryError(f"bundle {folder}: unknown format {manifest.get('format')!r}", f"expected {FORMAT}")
    if verify:
        recorded_files = set(manifest.get("hashes", {})) | {"manifest.json", "manifest.sha256"}
        extra = sorted(rel for rel in _content_files(folder) if rel not in recorded_files)
        if extra:
            raise RecoveryError(f"bundle {folder}: {extra[0]} was added after extraction (not in the manifest)",
                                "extract the bundle again from the safety copy")
        recorded = manifest.get("hashes", {})
        missing = next((rel for rel in recorded if not (folder / rel).is_file()), None)
        if missing is not None:
            raise RecoveryError(f"bundle {folder}: {missing} is missing", "extract the bundle again")
        actual = _hashes(folder, list(recorded))
        changed = next((rel for rel, digest in recorded.items() if actual[rel] != digest), None)
        if changed is not None:
            raise RecoveryError(f"bundle {folder}: {changed} was changed after extraction (hash mismatch)",
                                "extract the bundle again from the safety copy")
    return Bundle(
        folder, manifest, Schema.from_dict(manifest["schemas"]["old"]), Schema.from_dict(manifest["schemas"]["new"]),
        mapping_from_dict(manifest["mapping"]),
    )


def bundle_id_for(manifest: dict[str, Any]) -> str:
    """A stable identity: the hash of the sources and the extracted content."""
    h = hashlib.sha256()
    h.update(json.dumps(manifest.get("sources", {}), sort_keys=True).encode())
    h.update(json.dumps(manifest.get("counts", {}), sort_keys=True).encode())
    return h.hexdigest()[:16]

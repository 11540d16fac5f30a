"""Relink's file side: for each target record, is its file at its path with its hash — and if
not, which bundle copy goes where (restored, or written beside a different file: kept both);
files that were on disk without a record come back when they are gone; then the survey of
records without a file and files without a record, as they will be after the plan.

The uploads folder is walked once for the whole plan (:class:`~recovery.files.uploads.UploadsIndex`):
stored paths it lists are checked and hashed from it, any other is resolved on disk (symlinks
included); :func:`~recovery.files.relink.apply_relink` checks each target again, walking it by
descriptor without following a symlink, as it writes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path, PurePosixPath
from typing import Any

from recovery.bundle.store import Bundle
from recovery.files.names import norm, recovered_name
from recovery.files.relink_draft import Draft
from recovery.files.relink_sql import select_sql
from recovery.files.uploads import (
    UNRECORDED_DIR,
    FilesConfig,
    SafeRoot,
    UploadsIndex,
    sha256_bytes_of,
)

Row = dict[str, Any]


class FilePlacer:
    """Plans the file copies of one relink: the bundle's copies, their recorded modes, the walk."""

    def __init__(self, bundle: Bundle, root: Path, cfg: FilesConfig, index: UploadsIndex):
        self.bundle, self.root, self.cfg, self.index = bundle, root, cfg, index
        self.bunder = SafeRoot(bundle.files_dir)
        self.uunder = SafeRoot(bundle.files_dir / UNRECORDED_DIR)
        # the source files' modes as extract recorded them, by stored path
        listed = bundle.manifest.get("files") or {}
        self.modes: dict[Any, int] = {
            e.get("path"): e["mode"]
            for e in [*(listed.get("records") or []), *(listed.get("unrecorded") or [])]
            if isinstance(e, dict) and isinstance(e.get("mode"), int)
        }

    def bundle_copy(self, stored: Any) -> tuple[Path, str] | None:
        """The bundle's copy of a recorded file and its sha256, or None (not in the bundle)."""
        if not isinstance(stored, str):
            return None
        p = self.bunder(stored)
        if p is None or not p.is_file() or PurePosixPath(stored).parts[0] == UNRECORDED_DIR:
            return None
        return p, sha256_bytes_of(p)

    def write(
        self, draft: Draft, src: Path, dst: Path, rel: str, sha: str, source_path: Any
    ) -> None:
        draft.write(src, dst, rel, sha, self.modes.get(source_path))

    def place(self, draft: Draft, b: Row, rec: Row) -> None:
        """Make the record's file present with its recorded hash, or say why it is not."""
        r = draft.report
        stored = draft.current(rec, self.cfg.path)
        recorded = rec.get(self.cfg.sha256) if self.cfg.sha256 else None
        entry = {"record_key": rec["_key"], "path": stored, "recorded_sha256": recorded}
        target = self.index.resolve(stored) if isinstance(stored, str) else None
        if target is None:
            r["unsafe"].append({**entry, "status": "unsafe", "where": "target record"})
            return
        on_disk = self.index.sha256(stored, target) if self.index.is_file(stored, target) else None
        if on_disk is not None and (recorded is None or on_disk == recorded):
            r["relinked"].append({**entry, "sha256": on_disk, "action": "present"})
            return
        copy = self.bundle_copy(b.get(self.cfg.path))  # read (and hashed) only when it is needed
        if copy is None:
            key = "missing" if on_disk is None else "hash_mismatch"
            r[key].append({**entry, "sha256": on_disk, "status": "not in the bundle"})
            return
        src, copy_sha = copy
        if recorded is not None and copy_sha != recorded:
            # The bundle holds what the live app served, which already differed from the record.
            if on_disk is None and norm(stored) not in draft.claimed:
                self.write(draft, src, target, norm(stored), copy_sha, b.get(self.cfg.path))
                r["restored_from_bundle"].append({**entry, "sha256": copy_sha, "kind": "record"})
            r["hash_mismatch"].append(
                {
                    **entry,
                    "sha256": on_disk or copy_sha,
                    "status": "bundle copy differs from the record",
                }
            )
            return
        if (
            on_disk is None
            and not target.exists()
            and not target.is_symlink()
            and norm(stored) not in draft.claimed
        ):
            self.write(draft, src, target, norm(stored), copy_sha, b.get(self.cfg.path))
            r["restored_from_bundle"].append({**entry, "sha256": copy_sha, "kind": "record"})
            r["relinked"].append({**entry, "sha256": copy_sha, "action": "restored"})
            return
        # Something different is at the path: never overwrite it; keep both.
        beside = recovered_name(self.root, stored, copy_sha, self.index.under)
        if beside is None:
            r["missing"].append(
                {**entry, "sha256": on_disk, "status": "no free name beside the file"}
            )
            return
        rel, dst = beside
        if not dst.exists():
            self.write(draft, src, dst, rel, copy_sha, b.get(self.cfg.path))
            r["restored_from_bundle"].append(
                {**entry, "path": rel, "sha256": copy_sha, "kind": "kept_both"}
            )
        draft.fix(rec, self.cfg.path, rel, "kept both: a different file is at the recorded path")
        r["kept_both"].append(
            {
                **entry,
                "existing_sha256": on_disk,
                "recovered_path": rel,
                "sha256": copy_sha,
                "record_path_updated": True,
            }
        )
        r["relinked"].append({**entry, "path": rel, "sha256": copy_sha, "action": "kept_both"})

    def unrecorded(self, draft: Draft) -> None:
        """Files that were on disk without a record after the deploy: back when they are gone."""
        entries = (self.bundle.manifest.get("files") or {}).get("unrecorded") or []
        for e in entries:
            stored = e.get("path")
            target = self.index.resolve(stored) if isinstance(stored, str) else None
            src = self.uunder(stored) if target is not None else None
            if target is None or src is None:
                draft.report["unsafe"].append(
                    {"record_key": None, "path": stored, "status": "unsafe", "where": "unrecorded"}
                )
                continue
            if (
                target.exists()
                or target.is_symlink()
                or not src.is_file()
                or norm(stored) in draft.claimed
            ):
                continue
            sha = sha256_bytes_of(src)
            self.write(draft, src, target, norm(stored), sha, stored)
            draft.report["restored_from_bundle"].append(
                {"record_key": None, "path": stored, "sha256": sha, "kind": "unrecorded"}
            )


def survey(
    draft: Draft,
    conn: sqlite3.Connection,
    index: UploadsIndex,
    cfg: FilesConfig,
    pk: str,
    bundle_keys: set[Any],
) -> None:
    """Records whose file is gone and files no record names, as they will be after the plan."""
    r = draft.report
    on_disk = index.files
    referenced: set[str] = set()
    unsafe_keys = {u.get("record_key") for u in r["unsafe"]}
    for key, stored in conn.execute(select_sql(cfg.table, (pk, cfg.path))):
        fix = draft.fix_at.get((key, cfg.path))
        stored = fix.new if fix else stored
        if not isinstance(stored, str):
            continue
        if stored in on_disk:  # safe, a regular file, and already normalised
            referenced.add(stored)
            continue
        target = index.under(stored)
        if target is None:
            if key not in bundle_keys and key not in unsafe_keys:
                unsafe_keys.add(key)
                r["unsafe"].append(
                    {
                        "record_key": key,
                        "path": stored,
                        "status": "unsafe",
                        "where": "target record",
                    }
                )
            continue
        referenced.add(norm(stored))
        if key not in bundle_keys and not target.is_file() and norm(stored) not in draft.claimed:
            r["records_without_file"].append({"record_key": key, "path": stored})
    sizes = {w.rel: w.source for w in draft.writes if w.rel not in on_disk}
    for rel in sorted((set(on_disk) | set(sizes)) - referenced):
        size = on_disk[rel][1].st_size if rel in on_disk else sizes[rel].stat().st_size
        r["orphans"].append({"path": rel, "size": size})

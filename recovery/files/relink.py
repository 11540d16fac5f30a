"""Relink: after the re-import, every re-imported file record points at its bytes again.

For each file record the bundle carries (``rows.db`` table ``file_records``, kinds inserted /
updated / closure) the row it became in the target is found (same key, or its remapped key, or —
without remap information — the same path and hash). Then:

* the file must be at the record's path under the uploads root with the recorded sha256; when it
  is missing it is restored from ``BUNDLE/files/<path>`` (write tmp + fsync + link, every folder
  opened by descriptor without following a symlink; the folder's owner and group, the source's
  recorded mode);
* a *different* file already at that path is never overwritten: the bundle's copy is written
  beside it (``name.recovered-<sha8>.pdf``), the record is pointed at that copy, and both are
  reported in ``kept_both``;
* entity links follow remapped keys: a record's ``entity_type``/``entity_id`` naming a remapped
  bundle row gets the new key, and for every bundle row with a foreign key into the files table
  (the new schema's ``parts.file_id``) the record it names gets ``entity_type='part'``,
  ``entity_id=<the part's key in the target>`` — the old schema's only way to say it;
* a stored path that is absolute, contains ``..`` or resolves outside the root (symlinks
  included) is never read or written: it is reported in ``unsafe``.

``plan_relink`` only reads (the target through sqlite3, the bundle, the uploads folder);
``apply_relink`` writes the files first (each atomic), then every DB fix in one transaction, so a
run killed in between is finished by running it again. ``dry_run`` returns the plan's report.

The cost is one walk of the uploads folder and one read of each file that needs its hash,
whatever the number of records: the walk (:class:`recovery.files.uploads.UploadsIndex`) answers which
stored paths are files inside the root and is shared with :func:`uploads_state`; bundle rows are
read set-based (the entity rows the records name, the rows with a file foreign key) rather than
whole tables into Python; target records are read a few hundred keys a query.

The plan is built in small steps, each its own module: the files table's columns
(:mod:`~recovery.files.filestable`, from the reflected schema), the statements
(:mod:`~recovery.files.relink_sql`), which target row and record each bundle row became
(:mod:`~recovery.files.relink_match`), the files to put in place and the survey
(:mod:`~recovery.files.relink_files`), the entity links (:mod:`~recovery.files.relink_links`),
all adding to one :class:`~recovery.files.relink_draft.Draft`. :func:`plan_relink` runs them in
order; :func:`apply_relink` only carries out the finished plan.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from recovery.bundle.store import Bundle
from recovery.engine.schema import Schema, reflect
from recovery.engine.timebound import statement_time_limit
from recovery.errors import RecoveryError
from recovery.files.filestable import detect_files_config
from recovery.files.names import norm
from recovery.files.relink_draft import REPORT_LISTS, Draft, FileWrite, LinkFix
from recovery.files.relink_files import FilePlacer, survey
from recovery.files.relink_links import follow_entity, link_file_ids
from recovery.files.relink_match import Matcher
from recovery.files.relink_sql import BUNDLE, select_sql, update_sql
from recovery.files.uploads import FilesConfig, UploadsIndex, sane_mode, write_under

__all__ = [
    "REPORT_LISTS",
    "FileWrite",
    "LinkFix",
    "RelinkPlan",
    "apply_relink",
    "build_plan",
    "detect_files_config",
    "plan_relink",
    "relink",
    "uploads_state",
]


@dataclass
class RelinkPlan:
    root: Path
    cfg: FilesConfig | None
    pk: str = "rowid"
    writes: list[FileWrite] = field(default_factory=list)
    fixes: list[LinkFix] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)
    # The uploads folder as planning saw it (one walk, each file hashed at most once); still the
    # folder's state after an apply that wrote nothing.
    index: UploadsIndex | None = field(default=None, repr=False, compare=False)


def _build(
    bundle: Bundle, m: Matcher, root: Path, walk: UploadsIndex | Future[UploadsIndex]
) -> RelinkPlan:
    """The plan, step by step: each bundle file record matched to its target record (its entity
    link followed, its file placed), then the rows naming files, the files that had no record,
    and the survey of what is left unreferenced. ``walk``: the uploads folder's walk, or its
    future (still walking on another thread while the bundle and the target are read)."""
    c = m.cfg
    draft = Draft()
    r = draft.report
    bkey = m.bkey(c.table)
    from_bundle: dict[Any, dict[str, Any]] = {}  # bundle key -> target record
    records = m.bundle_rows(c.table)
    m.load_entity_rows(records)  # the entity rows follow_entity will look up
    m.load_records(m.record_key(b) for b in records)  # the records record_for will look up
    index = walk.result() if isinstance(walk, Future) else walk
    files = FilePlacer(bundle, root, c, index)
    for b in records:
        stored = b.get(c.path)
        entry = {
            "record_key": b.get(bkey),
            "path": stored,
            "recorded_sha256": b.get(c.sha256) if c.sha256 else None,
        }
        if not index.safe(stored):
            r["unsafe"].append({**entry, "status": "unsafe", "where": "bundle record"})
            continue
        rec = m.record_for(b)
        if rec is None:
            r["records_not_imported"].append({**entry, "status": "not in the target"})
            continue
        from_bundle[b.get(bkey)] = rec
        follow_entity(draft, m, b, rec)
        files.place(draft, b, rec)
    link_file_ids(draft, m, from_bundle)
    for e in (bundle.manifest.get("files") or {}).get("unsafe") or []:
        if not any(u.get("path") == e.get("path") for u in r["unsafe"]):
            r["unsafe"].append({**e, "where": "extract"})
    files.unrecorded(draft)
    fixes = draft.fixes
    r["links_fixed"] = [
        {"record_key": f.key, "column": f.column, "old": f.old, "new": f.new, "reason": f.reason}
        for f in fixes
    ]
    survey(draft, m.conn, index, c, m.pk, {rec["_key"] for rec in from_bundle.values()})
    return RelinkPlan(root, c, m.pk, draft.writes, fixes, r, index)


build_plan = _build
"""The plan from a :class:`~recovery.files.relink_match.Matcher` (the PostgreSQL relink builds it
over its own reader: :mod:`recovery.files.pgrelink`)."""


def plan_relink(
    bundle: Bundle,
    conn: sqlite3.Connection,
    root: Path,
    files: FilesConfig | None = None,
    remaps: Iterable[Any] | None = None,
    earlier: UploadsIndex | None = None,
    hash_all: bool = True,
) -> RelinkPlan:
    """What relink would do, reading only. ``conn`` is the target (bundle ``rows.db`` is attached
    read-only for the duration). ``remaps`` are the re-import's ``Remap(table, old_key, new_key)``.
    ``earlier``: a walk of the uploads made before (``UploadsIndex(root, hash_all=True)``) whose
    hashes of unchanged files are taken instead of reading them again. ``hash_all``: every
    upload is hashed as the walk lists it (the uploads state after the plan needs them all);
    False reads only the files the plan asks about."""
    from recovery.engine.sqlite_io import file_uri

    root_p = Path(root)
    if not root_p.is_dir():
        raise RecoveryError(
            f"uploads folder {root_p} does not exist or is not a folder", "check --uploads"
        )
    schema = reflect(conn)
    cfg = detect_files_config(schema, files or FilesConfig())
    if cfg is None:
        return RelinkPlan(root_p, None, report={k: [] for k in REPORT_LISTS})
    rmap = None if remaps is None else {(r.table, r.old_key): r.new_key for r in remaps}
    # the folder is walked on its own thread while the bundle and the target are read (the walk
    # waits on the filesystem, the reads on SQLite: both release the GIL)
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-relink-walk")
    walk = pool.submit(UploadsIndex, root_p, hash_all, earlier)
    pool.shutdown(wait=False)
    try:
        conn.execute(f"ATTACH DATABASE ? AS {BUNDLE}", (file_uri(bundle.rows_db, mode="ro"),))
        try:
            with statement_time_limit(
                conn
            ):  # the bundle's rows are untrusted: no statement runs unbounded
                return _build(bundle, Matcher(bundle, conn, schema, cfg, rmap), root_p, walk)
        finally:
            conn.execute(f"DETACH DATABASE {BUNDLE}")
    finally:
        wait([walk])  # never left walking after the plan, however it ended


def apply_relink(plan: RelinkPlan, conn: sqlite3.Connection) -> None:
    """Write the planned files (each atomic, never over an existing file, never through a symbolic
    link: :func:`recovery.files.uploads.write_under`; owner and group of their folder, the source's
    recorded mode), then the DB fixes in one transaction."""
    root = plan.index.real if plan.index is not None else os.path.realpath(plan.root)
    prefix = root.rstrip("/") + "/"
    for w in plan.writes:
        target = os.fspath(w.target)  # real as planned: the walk below follows no symlink, so
        if not target.startswith(prefix):  # anything swapped in since the plan stops it
            raise RecoveryError(
                f"uploads path {w.rel} leads outside {root}",
                "check the uploads folder for new symlinks; nothing was overwritten",
            )
        write_under(root, target[len(prefix) :], w.source, w.sha256, sane_mode(w.mode))
    if not plan.fixes or plan.cfg is None:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for f in plan.fixes:
            conn.execute(update_sql(plan.cfg.table, f.column, plan.pk), (f.new, f.key))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def relink(
    bundle: Bundle | str | os.PathLike[str],
    db: str | os.PathLike[str],
    uploads: str | os.PathLike[str],
    files: FilesConfig | None = None,
    *,
    dry_run: bool = False,
    remaps: Iterable[Any] | None = None,
    busy_timeout: float = 10.0,
    earlier: UploadsIndex | None = None,
) -> dict[str, Any]:
    """Relink the bundle's files into ``uploads`` for the records in ``db``; see the module
    docstring. Returns the report: relinked, restored_from_bundle, missing, orphans,
    records_without_file, unsafe, kept_both (plus hash_mismatch, links_fixed, links_unresolved,
    records_not_imported, counts, uploads_state). ``earlier``: see :func:`plan_relink`."""
    from recovery.bundle.store import open_bundle
    from recovery.engine.sqlite_io import check_sqlite_file, open_readonly, open_readwrite

    b = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    target = check_sqlite_file(db, "target database")
    conn = (
        open_readonly(target, "target database")
        if dry_run
        else open_readwrite(target, "target database", busy_timeout)
    )
    try:
        if dry_run:
            conn.execute("PRAGMA query_only = OFF")  # ATTACH needs it; the file stays mode=ro
        # the uploads state (against the backup) compares every file: hash them all in the walk
        plan = plan_relink(
            b, conn, Path(uploads), files, remaps, earlier, _backup_of(b) is not None
        )
        if not dry_run:
            apply_relink(plan, conn)
    finally:
        conn.close()
    report = dict(plan.report)
    report["root"] = str(Path(uploads).resolve())
    report["dry_run"] = dry_run
    report["files_table"] = (
        None
        if plan.cfg is None
        else {
            "table": plan.cfg.table,
            "path": plan.cfg.path,
            "sha256": plan.cfg.sha256 or None,
            "entity_type": plan.cfg.entity_type or None,
            "entity_id": plan.cfg.entity_id or None,
        }
    )
    report["counts"] = {k: len(report[k]) for k in REPORT_LISTS}
    backup = _backup_of(b)
    if backup is not None and plan.cfg is not None:
        # The folder as planning walked it, unless the apply wrote files into it since: then a new
        # walk, reading again only the files that are neither written by the apply nor unchanged.
        index = plan.index if dry_run or not plan.writes else _walk_after(plan)
        try:
            state = uploads_state(
                backup,
                uploads,
                replace(
                    files or FilesConfig(),
                    table=plan.cfg.table,
                    path=plan.cfg.path,
                    sha256=plan.cfg.sha256 or "sha256",
                ),
                index=index,
                schema=b.old,
            )
            report["uploads_state"] = {
                k: state[k] for k in ("source", "added", "changed", "removed", "unchanged")
            }
        except RecoveryError:
            report["uploads_state"] = None
    return report


def _backup_of(b: Bundle) -> str | None:
    """The backup file the bundle names, when it is there (the uploads state's baseline)."""
    backup = (b.manifest.get("sources") or {}).get("backup", {}).get("path")
    return backup if backup and Path(backup).is_file() else None


def _walk_after(plan: RelinkPlan) -> UploadsIndex | None:
    """The uploads folder walked again after the apply wrote ``plan.writes`` (the folders
    unchanged since the plan's walk are not listed again: :class:`UploadsIndex`'s ``earlier``),
    with the hashes already known taken over (:meth:`UploadsIndex.adopt_hashes`); None when it is
    not a folder (:func:`uploads_state` then says so)."""
    if plan.index is None or not Path(plan.root).is_dir():
        return None
    now = UploadsIndex(plan.root, earlier=plan.index)
    now.adopt_hashes(plan.index, {os.fspath(w.target): w.sha256 for w in plan.writes})
    return now


def uploads_state(
    backup: str | os.PathLike[str],
    uploads_root: str | os.PathLike[str],
    files: FilesConfig | None = None,
    *,
    index: UploadsIndex | None = None,
    schema: Schema | None = None,
) -> dict[str, Any]:
    """The uploads folder now against the backup's: files added, changed and removed since.

    The baseline is the uploads manifest recorded by ``recovery snapshot`` beside the backup; a
    backup without one falls back to the backup's own file records (path, hash, size). ``index``
    is a walk of ``uploads_root`` already made (relink passes its plan's), so the folder is walked
    and each file hashed once. ``schema``: the backup's, when the caller has it (a bundle's
    ``old``), so the backup is not reflected again."""
    from recovery.capture.manifest import read_manifest
    from recovery.engine.sqlite_io import readonly

    root = Path(uploads_root)
    if not root.is_dir():
        raise RecoveryError(
            f"uploads folder {root} does not exist or is not a folder", "check --uploads"
        )
    snap = read_manifest(backup)
    now = index if index is not None else UploadsIndex(root)
    baseline: dict[str, dict[str, Any]] = {}
    if snap and snap.get("uploads"):
        source = "manifest"
        baseline = {f["path"]: f for f in snap["uploads"]["files"]}
    else:
        source = "backup-records"
        with readonly(backup, "backup") as conn:
            cfg = detect_files_config(schema or reflect(conn), files or FilesConfig())
            if cfg is None:
                raise RecoveryError(
                    f"backup {backup} has no uploads manifest and no files table",
                    "take backups with `recovery snapshot --uploads`",
                )
            for path, sha, size in conn.execute(
                select_sql(cfg.table, (cfg.path, cfg.sha256 or None, cfg.size or None))
            ):
                if isinstance(path, str) and now.safe(path):
                    baseline[norm(path)] = {"path": norm(path), "sha256": sha, "size": size}
    on_disk = now.files
    added = [
        {"path": p, "size": on_disk[p][1].st_size, "sha256": now.sha256(p)}
        for p in sorted(set(on_disk) - set(baseline))
    ]
    removed = [baseline[p] for p in sorted(set(baseline) - set(on_disk))]
    changed = []
    for p in sorted(set(on_disk) & set(baseline)):
        before, size = baseline[p], on_disk[p][1].st_size
        if before.get("sha256") is None and before.get("size") in (None, size):
            continue  # nothing recorded to compare with
        resized = before.get("size") not in (None, size)
        digest = now.sha256(p)  # hashed once, for the comparison and the report
        if resized or digest != before.get("sha256"):
            changed.append(
                {
                    "path": p,
                    "sha256_before": before.get("sha256"),
                    "sha256": digest,
                    "size_before": before.get("size"),
                    "size": size,
                }
            )
    return {
        "root": str(root.resolve()),
        "backup": str(backup),
        "source": source,
        "added": added,
        "changed": changed,
        "removed": removed,
        "unchanged": len(set(on_disk) & set(baseline)) - len(changed),
    }

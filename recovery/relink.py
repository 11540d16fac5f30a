"""Relink: after the re-import, every re-imported file record points at its bytes again.

For each file record the bundle carries (``rows.db`` table ``file_records``, kinds inserted /
updated / closure) the row it became in the target is found (same key, or its remapped key, or —
without remap information — the same path and hash). Then:

* the file must be at the record's path under the uploads root with the recorded sha256; when it
  is missing it is restored from ``BUNDLE/files/<path>`` (write tmp + fsync + rename);
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
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from recovery.bundle import Bundle
from recovery.errors import RecoveryError
from recovery.files import FilesConfig, _Under, _walk, safe_path, sha256_bytes_of
from recovery.sqlite_io import fsync_dir

BUNDLE_KINDS = ("inserted", "updated", "closure")
UNRECORDED_DIR = "_unrecorded"
PATH_CANDIDATES = ("path", "file_path", "storage_path", "relative_path", "filepath")
HASH_CANDIDATES = ("sha256", "hash", "checksum", "digest", "sha256_hex")
REPORT_LISTS = ("relinked", "restored_from_bundle", "missing", "orphans", "records_without_file", "unsafe",
                "kept_both", "hash_mismatch", "links_fixed", "links_unresolved", "records_not_imported")


def _q(name: str) -> str:
    """A quoted SQLite identifier (names come from the schema or the user's options)."""
    return '"' + name.replace('"', '""') + '"'


def _norm(stored: str) -> str:
    return PurePosixPath(stored).as_posix()


def _columns(conn: sqlite3.Connection, table: str, schema: str = "main") -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA {schema}.table_info({_q(table)})")]


def _tables(conn: sqlite3.Connection, schema: str = "main") -> list[str]:
    return [r[0] for r in conn.execute(
        f"SELECT name FROM {schema}.sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%' ORDER BY name")]


def _pick(columns: list[str], configured: str, default: str, candidates: tuple[str, ...], what: str,
          table: str, required: bool) -> str | None:
    if configured in columns:
        return configured
    if configured != default:  # named by an option: it must exist
        raise RecoveryError(f"the files table {table} has no column {configured!r} ({what})",
                            f"columns are: {', '.join(columns)}")
    found = next((c for c in candidates if c in columns), None)
    if found is None and required:
        raise RecoveryError(f"cannot find the {what} column of the files table {table}",
                            "name it with --path-column / --hash-column")
    return found


def detect_files_config(conn: sqlite3.Connection, cfg: FilesConfig) -> FilesConfig | None:
    """The files table and its columns as they are in ``conn``: the configured names when present,
    else the usual ones. None when the default table is absent and no table looks like one."""
    default = FilesConfig()
    tables = _tables(conn)
    name = cfg.table
    if name not in tables:
        if cfg.table != default.table:
            raise RecoveryError(f"the database has no files table {cfg.table!r}", "name it with --files-table")
        guesses = [t for t in tables if any(c in _columns(conn, t) for c in PATH_CANDIDATES)
                   and any(c in _columns(conn, t) for c in HASH_CANDIDATES)]
        if len(guesses) != 1:
            return None
        name = guesses[0]
    cols = _columns(conn, name)
    path = _pick(cols, cfg.path, default.path, PATH_CANDIDATES, "path", name, True)
    sha = _pick(cols, cfg.sha256, default.sha256, HASH_CANDIDATES, "hash", name, False)
    etype = cfg.entity_type if cfg.entity_type in cols else ""
    eid = cfg.entity_id if cfg.entity_id in cols else ""
    size = cfg.size if cfg.size in cols else ""
    return FilesConfig(name, path or cfg.path, sha or "", size, etype, eid)


def _pk(conn: sqlite3.Connection, table: str, schema: str = "main") -> str:
    pks = sorted((r[5], r[1]) for r in conn.execute(f"PRAGMA {schema}.table_info({_q(table)})") if r[5])
    return pks[0][1] if len(pks) == 1 else "rowid"


def _unique_sets(conn: sqlite3.Connection, table: str) -> list[list[str]]:
    out = []
    for idx in conn.execute(f"PRAGMA main.index_list({_q(table)})").fetchall():
        name, unique, origin = idx[1], idx[2], idx[3]
        if unique and origin != "pk":
            out.append([r[2] for r in conn.execute(f"PRAGMA main.index_info({_q(name)})")])
    return out


@dataclass(frozen=True)
class FileWrite:
    """One file to put in place: ``source`` (in the bundle) copied to ``target`` (under the root)."""

    source: Path
    target: Path
    rel: str
    sha256: str


@dataclass(frozen=True)
class LinkFix:
    """One cell of the target's files table to change (the row by its key)."""

    key: Any
    column: str
    old: Any
    new: Any
    reason: str


@dataclass
class RelinkPlan:
    root: Path
    cfg: FilesConfig | None
    pk: str = "rowid"
    writes: list[FileWrite] = field(default_factory=list)
    fixes: list[LinkFix] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)


def atomic_copy(src: Path, dst: Path, expect_sha256: str | None = None) -> str:
    """Copy ``src`` to ``dst`` via a temporary file in ``dst``'s folder, fsynced and renamed in;
    refuses (leaving nothing) when the bytes copied do not hash to ``expect_sha256``."""
    import hashlib

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.relink-{os.getpid()}.tmp")
    h = hashlib.sha256()
    try:
        with src.open("rb") as fin, tmp.open("xb") as fout:
            while block := fin.read(1 << 20):
                h.update(block)
                fout.write(block)
            fout.flush()
            os.fsync(fout.fileno())
        if expect_sha256 is not None and h.hexdigest() != expect_sha256:
            raise RecoveryError(f"bundle copy {src} changed while it was being restored",
                                "extract the bundle again; nothing was overwritten")
        try:
            os.link(tmp, dst)  # atomic, and fails rather than replace a file that appeared meanwhile
        except FileExistsError:
            raise RecoveryError(f"{dst} appeared while relinking", "run relink again; nothing was overwritten") from None
        except OSError:  # no hard links on this filesystem
            if dst.exists() or dst.is_symlink():
                raise RecoveryError(f"{dst} appeared while relinking",
                                    "run relink again; nothing was overwritten") from None
            os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(dst.parent)
    return h.hexdigest()


def _recovered_name(root: Path, rel: str, sha: str, under: _Under | None = None) -> tuple[str, Path] | None:
    """A free (or already identical) sibling path for the bundle's copy of ``rel``."""
    safe = under or _Under(root)
    pure = PurePosixPath(rel)
    for n in range(1, 100):
        extra = "" if n == 1 else f"-{n}"
        name = f"{pure.stem}.recovered-{sha[:8]}{extra}{pure.suffix}"
        cand_rel = (pure.parent / name).as_posix()
        target = safe(cand_rel)
        if target is None:
            return None
        if not target.exists() or (target.is_file() and sha256_bytes_of(target) == sha):
            return cand_rel, target
    return None


class _Planner:
    def __init__(self, bundle: Bundle, conn: sqlite3.Connection, root: Path, cfg: FilesConfig,
                 remaps: dict[tuple[str, Any], Any] | None):
        self.bundle, self.conn, self.root, self.cfg = bundle, conn, root, cfg
        self.remaps = remaps
        self.pk = _pk(conn, cfg.table)
        self.plan = RelinkPlan(root, cfg, self.pk, report={k: [] for k in REPORT_LISTS})
        self.r: dict[str, list[dict[str, Any]]] = self.plan.report
        self.fix_at: dict[tuple[Any, str], LinkFix] = {}
        self.claimed: set[str] = set()  # paths written by this plan (never written twice)
        # Each root resolved once for the plan (every stored path still is, symlinks included);
        # apply_relink checks each target again with safe_path right before writing it.
        self.under = _Under(root)
        self.bunder = _Under(bundle.files_dir)
        self.uunder = _Under(bundle.files_dir / UNRECORDED_DIR)
        # The schemas do not change while planning: read each PRAGMA once.
        self._meta: dict[tuple[Any, ...], Any] = {}
        # Bundle rows by (table, key column) -> key -> rows, loaded for the keys asked for.
        self._rows_by_key: dict[tuple[str, str], dict[Any, list[dict[str, Any]]]] = {}

    def _cached(self, what: tuple[Any, ...], fn: Any, *args: Any) -> Any:
        if what not in self._meta:
            self._meta[what] = fn(*args)
        return self._meta[what]

    def tables(self, schema: str = "main") -> list[str]:
        return self._cached(("tables", schema), _tables, self.conn, schema)

    def columns(self, table: str, schema: str = "main") -> list[str]:
        return self._cached(("columns", table, schema), _columns, self.conn, table, schema)

    def tpk(self, table: str) -> str:
        return self._cached(("pk", table), _pk, self.conn, table)

    def uniques(self, table: str) -> list[list[str]]:
        return self._cached(("uniques", table), _unique_sets, self.conn, table)

    # ---- reading -----------------------------------------------------------------------------
    def bkey(self, table: str) -> str:
        """The key column of a bundle table (bundle tables are untyped: the new schema says)."""
        t = self.bundle.new.tables.get(table)
        if t is not None and len(t.primary_key) == 1:
            return t.primary_key[0]
        return self.tpk(table) if table in self.tables() else "rowid"

    def bundle_rows(self, table: str) -> list[dict[str, Any]]:
        b = self.conn
        if table not in self.tables("relink_bundle"):
            return []
        cols = self.columns(table, "relink_bundle")
        kinds = ",".join("?" * len(BUNDLE_KINDS))
        cur = b.execute(f"SELECT * FROM relink_bundle.{_q(table)} WHERE _recovery_kind IN ({kinds})", BUNDLE_KINDS)
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def target_record(self, key: Any) -> dict[str, Any] | None:
        cur = self.conn.execute(f"SELECT *, {_q(self.pk)} AS _key FROM main.{_q(self.cfg.table)} "
                                f"WHERE {_q(self.pk)} = ?", (key,))
        row = cur.fetchone()
        return dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None

    def target_by_path(self, path: str, sha: Any) -> list[dict[str, Any]]:
        cond = f"{_q(self.cfg.path)} = ?"
        params: list[Any] = [path]
        if self.cfg.sha256:
            cond += f" AND {_q(self.cfg.sha256)} IS ?"
            params.append(sha)
        cur = self.conn.execute(f"SELECT *, {_q(self.pk)} AS _key FROM main.{_q(self.cfg.table)} WHERE {cond}", params)
        return [dict(zip([d[0] for d in cur.description], row, strict=True)) for row in cur]

    def current(self, rec: dict[str, Any], column: str) -> Any:
        fix = self.fix_at.get((rec["_key"], column))
        return fix.new if fix else rec.get(column)

    def fix(self, rec: dict[str, Any], column: str, new: Any, reason: str) -> None:
        old = rec.get(column)
        if self.current(rec, column) == new:
            return
        if old == new:  # back to the stored value: nothing to write
            self.fix_at.pop((rec["_key"], column), None)
            return
        self.fix_at[(rec["_key"], column)] = LinkFix(rec["_key"], column, old, new, reason)

    # ---- finding rows in the target -------------------------------------------------------------
    def target_key(self, table: str, row: dict[str, Any]) -> Any | None:
        """The key ``row`` (a bundle row of ``table``) has in the target, or None when it is not
        there (skipped by a conflict). Remaps name moved keys; without them a row whose key holds
        a different row is found by its unique columns."""
        if table not in self.tables():
            return None
        key_col = self.tpk(table)
        bkey_col = self.bkey(table)
        k = row.get(bkey_col)
        if k is None:
            return None
        tcols = self.columns(table)
        uniques = [u for u in self.uniques(table) if all(c in row and c in tcols for c in u)
                   and all(row[c] is not None for c in u)]

        def same(candidate: Any) -> bool:
            where = " AND ".join([f"{_q(key_col)} = ?", *(f"{_q(c)} IS ?" for u in uniques for c in u)])
            params = [candidate, *(row[c] for u in uniques for c in u)]
            return self.conn.execute(f"SELECT 1 FROM main.{_q(table)} WHERE {where}", params).fetchone() is not None

        if self.remaps is not None and (table, k) in self.remaps:
            new = self.remaps[(table, k)]
            return new if same(new) else None
        if row.get("_recovery_kind") == "updated":  # only inserted rows are ever remapped
            hit = self.conn.execute(f"SELECT 1 FROM main.{_q(table)} WHERE {_q(key_col)} = ?", (k,)).fetchone()
            return k if hit else None
        if same(k):
            return k
        if self.remaps is None and uniques:
            u = uniques[0]
            hit = self.conn.execute(f"SELECT {_q(key_col)} FROM main.{_q(table)} WHERE "
                                    + " AND ".join(f"{_q(c)} IS ?" for c in u), [row[c] for c in u]).fetchall()
            if len(hit) == 1:
                return hit[0][0]
        return None

    def record_for(self, b: dict[str, Any]) -> dict[str, Any] | None:
        """The target record a bundle file record became."""
        bkey = b.get(self.bkey(self.cfg.table))
        path, sha = b.get(self.cfg.path), b.get(self.cfg.sha256) if self.cfg.sha256 else None
        key = self.remaps.get((self.cfg.table, bkey), bkey) if self.remaps is not None else bkey
        rec = self.target_record(key) if key is not None else None
        if rec is not None and (rec.get(self.cfg.path) == path or _recovered_of(rec.get(self.cfg.path), path)):
            return rec
        if self.remaps is None or rec is None:
            hits = self.target_by_path(path, sha) if isinstance(path, str) else []
            if len(hits) == 1:
                return hits[0]
        return rec if (self.remaps is not None and rec is not None) else None

    # ---- files -------------------------------------------------------------------------------
    def bundle_copy(self, stored: Any) -> tuple[Path, str] | None:
        if not isinstance(stored, str):
            return None
        p = self.bunder(stored)
        if p is None or not p.is_file() or PurePosixPath(stored).parts[0] == UNRECORDED_DIR:
            return None
        return p, sha256_bytes_of(p)

    def place(self, b: dict[str, Any], rec: dict[str, Any]) -> None:
        """Make the record's file present with its recorded hash, or say why it is not."""
        stored = self.current(rec, self.cfg.path)
        recorded = rec.get(self.cfg.sha256) if self.cfg.sha256 else None
        entry = {"record_key": rec["_key"], "path": stored, "recorded_sha256": recorded}
        target = self.under(stored) if isinstance(stored, str) else None
        if target is None:
            self.r["unsafe"].append({**entry, "status": "unsafe", "where": "target record"})
            return
        on_disk = sha256_bytes_of(target) if target.is_file() else None
        if on_disk is not None and (recorded is None or on_disk == recorded):
            self.r["relinked"].append({**entry, "sha256": on_disk, "action": "present"})
            return
        copy = self.bundle_copy(b.get(self.cfg.path))  # read (and hashed) only when it is needed
        if copy is None:
            key = "missing" if on_disk is None else "hash_mismatch"
            self.r[key].append({**entry, "sha256": on_disk, "status": "not in the bundle"})
            return
        src, copy_sha = copy
        if recorded is not None and copy_sha != recorded:
            # The bundle holds what the live app served, which already differed from the record.
            if on_disk is None and _norm(stored) not in self.claimed:
                self.write(src, target, _norm(stored), copy_sha)
                self.r["restored_from_bundle"].append({**entry, "sha256": copy_sha, "kind": "record"})
            self.r["hash_mismatch"].append({**entry, "sha256": on_disk or copy_sha,
                                            "status": "bundle copy differs from the record"})
            return
        if on_disk is None and not target.exists() and not target.is_symlink() and _norm(stored) not in self.claimed:
            self.write(src, target, _norm(stored), copy_sha)
            self.r["restored_from_bundle"].append({**entry, "sha256": copy_sha, "kind": "record"})
            self.r["relinked"].append({**entry, "sha256": copy_sha, "action": "restored"})
            return
        # Something different is at the path: never overwrite it; keep both.
        beside = _recovered_name(self.root, stored, copy_sha, self.under)
        if beside is None:
            self.r["missing"].append({**entry, "sha256": on_disk, "status": "no free name beside the file"})
            return
        rel, dst = beside
        if not dst.exists():
            self.write(src, dst, rel, copy_sha)
            self.r["restored_from_bundle"].append({**entry, "path": rel, "sha256": copy_sha, "kind": "kept_both"})
        self.fix(rec, self.cfg.path, rel, "kept both: a different file is at the recorded path")
        self.r["kept_both"].append({**entry, "existing_sha256": on_disk, "recovered_path": rel,
                                    "sha256": copy_sha, "record_path_updated": True})
        self.r["relinked"].append({**entry, "path": rel, "sha256": copy_sha, "action": "kept_both"})

    def write(self, src: Path, dst: Path, rel: str, sha: str) -> None:
        self.claimed.add(rel)
        self.plan.writes.append(FileWrite(src, dst, rel, sha))

    def unrecorded(self) -> None:
        """Files that were on disk without a record after the deploy: back when they are gone."""
        entries = (self.bundle.manifest.get("files") or {}).get("unrecorded") or []
        for e in entries:
            stored = e.get("path")
            target = self.under(stored) if isinstance(stored, str) else None
            src = self.uunder(stored) if target is not None else None
            if target is None or src is None:
                self.r["unsafe"].append({"record_key": None, "path": stored, "status": "unsafe", "where": "unrecorded"})
                continue
            if target.exists() or target.is_symlink() or not src.is_file() or _norm(stored) in self.claimed:
                continue
            sha = sha256_bytes_of(src)
            self.write(src, target, _norm(stored), sha)
            self.r["restored_from_bundle"].append({"record_key": None, "path": stored, "sha256": sha,
                                                   "kind": "unrecorded"})

    # ---- entity links ------------------------------------------------------------------------
    def entity_table(self, etype: Any) -> str | None:
        if not isinstance(etype, str):
            return None
        names = self.tables()
        return next((t for t in names if etype in (t, t.rstrip("s"))), None)

    def entity_ref(self, b: dict[str, Any]) -> tuple[str, str, Any] | None:
        """(bundle table, its key column, key) of the row a bundle file record's entity link names."""
        c = self.cfg
        if not (c.entity_type and c.entity_id):
            return None
        t = self.entity_table(b.get(c.entity_type))
        eid = b.get(c.entity_id)
        if t is None or eid is None:
            return None
        bkey = self.bkey(t) if t in self.tables("relink_bundle") else None
        if bkey is None:
            return None
        return t, bkey, eid

    def follow_entity(self, b: dict[str, Any], rec: dict[str, Any]) -> None:
        """A record's entity link naming a bundle row that moved follows the row's key."""
        c = self.cfg
        ref = self.entity_ref(b)
        if ref is None:
            return
        t, bkey, eid = ref
        row = next(iter(self._bundle_row(t, bkey, eid)), None)
        if row is None or row.get("_recovery_kind") != "inserted":
            return  # a row the backup already had keeps its key
        new = self.target_key(t, row)
        if new is None:
            self.r["links_unresolved"].append({"record_key": rec["_key"], "entity_type": b.get(c.entity_type),
                                               "entity_id": eid, "reason": f"{t} row {eid} is not in the target"})
            return
        self.fix(rec, c.entity_id, new, f"{t} {eid} was re-imported as {new}")

    def _bundle_row(self, table: str, key_col: str, key: Any) -> list[dict[str, Any]]:
        """The bundle rows of ``table`` whose ``key_col`` is ``key`` (in table order)."""
        loaded = self._rows_by_key.get((table, key_col))
        if loaded is not None and key in loaded:
            return loaded[key]
        self.load_bundle_rows(table, key_col, [key])
        return self._rows_by_key[(table, key_col)].get(key, [])

    def load_bundle_rows(self, table: str, key_col: str, keys: Iterable[Any], chunk: int = 900) -> None:
        """Read the bundle rows of ``table`` whose ``key_col`` equals one of ``keys``, a few hundred
        keys a query: the bundle tables have no index, so one query per key would scan the whole
        table once per file record. The keys are joined with ``=``, as a single lookup would
        compare them, and each key's rows keep the table's order."""
        loaded = self._rows_by_key.setdefault((table, key_col), {})
        todo = [k for k in dict.fromkeys(keys) if k not in loaded]
        if not todo:
            return
        cols = self.columns(table, "relink_bundle")
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            values = ",".join(f"({n},?)" for n in range(len(part)))
            cur = self.conn.execute(
                f"SELECT k.column1, b.* FROM (VALUES {values}) AS k JOIN relink_bundle.{_q(table)} AS b "
                f"ON b.{_q(key_col)} = k.column2 ORDER BY k.column1, b.rowid", part)
            for k in part:
                loaded[k] = []
            for n, *r in cur:
                loaded[part[n]].append(dict(zip(cols, r, strict=True)))

    def file_id_links(self, targets: dict[Any, dict[str, Any]]) -> None:
        """Rows with a new-schema foreign key into the files table (``parts.file_id``): the record
        it names points back at the row — the old schema's way of saying the same thing."""
        c = self.cfg
        if not (c.entity_type and c.entity_id):
            return
        owners: dict[Any, tuple[str, Any]] = {}
        for name, t in self.bundle.new.tables.items():
            for fk in t.foreign_keys:
                if fk.ref_table != c.table or len(fk.columns) != 1 or name == c.table:
                    continue
                for row in self.bundle_rows(name):
                    fid = row.get(fk.columns[0])
                    if fid is None or row.get("_recovery_kind") not in ("inserted", "updated"):
                        continue
                    rec = targets.get(fid)
                    if rec is None:  # a record from before the deploy: same key in the target
                        fkey = self.remaps.get((c.table, fid), fid) if self.remaps is not None else fid
                        rec = self.target_record(fkey)
                    owner = self.target_key(name, row)
                    if rec is None or owner is None:
                        self.r["links_unresolved"].append({
                            "record_key": fid, "entity_type": name.rstrip("s"), "entity_id": row.get(self.bkey(name)),
                            "reason": f"{c.table} row {fid} is not in the target" if rec is None
                            else f"{name} row {row.get(self.bkey(name))} is not in the target"})
                        continue
                    claimed = owners.setdefault(rec["_key"], (name, owner))
                    if claimed != (name, owner):
                        self.r["links_unresolved"].append({
                            "record_key": rec["_key"], "entity_type": name.rstrip("s"), "entity_id": owner,
                            "reason": f"{claimed[0]} row {claimed[1]} names this file too; the record can link one"})
                        continue
                    etype = self.current(rec, c.entity_type)
                    if etype not in (name, name.rstrip("s")):
                        self.fix(rec, c.entity_type, name.rstrip("s"), f"{name}.{fk.columns[0]} names this file")
                    self.fix(rec, c.entity_id, owner, f"{name}.{fk.columns[0]} names this file")

    # ---- the whole plan ------------------------------------------------------------------------
    def run(self) -> RelinkPlan:
        c = self.cfg
        bkey = self.bkey(c.table)
        from_bundle: dict[Any, dict[str, Any]] = {}  # bundle key -> target record
        records = self.bundle_rows(c.table)
        wanted: dict[tuple[str, str], list[Any]] = {}  # the entity rows follow_entity will look up
        for b in records:
            ref = self.entity_ref(b)
            if ref is not None:
                wanted.setdefault(ref[:2], []).append(ref[2])
        for (t, kcol), keys in wanted.items():
            self.load_bundle_rows(t, kcol, keys)
        for b in records:
            stored = b.get(c.path)
            entry = {"record_key": b.get(bkey), "path": stored,
                     "recorded_sha256": b.get(c.sha256) if c.sha256 else None}
            if not isinstance(stored, str) or self.under(stored) is None:
                self.r["unsafe"].append({**entry, "status": "unsafe", "where": "bundle record"})
                continue
            rec = self.record_for(b)
            if rec is None:
                self.r["records_not_imported"].append({**entry, "status": "not in the target"})
                continue
            from_bundle[b.get(bkey)] = rec
            self.follow_entity(b, rec)
            self.place(b, rec)
        self.file_id_links(from_bundle)
        for e in (self.bundle.manifest.get("files") or {}).get("unsafe") or []:
            if not any(u.get("path") == e.get("path") for u in self.r["unsafe"]):
                self.r["unsafe"].append({**e, "where": "extract"})
        self.unrecorded()
        self.plan.fixes = list(self.fix_at.values())
        self.r["links_fixed"] = [{"record_key": f.key, "column": f.column, "old": f.old, "new": f.new,
                                  "reason": f.reason} for f in self.plan.fixes]
        self.survey({rec["_key"] for rec in from_bundle.values()})
        return self.plan

    def survey(self, bundle_keys: set[Any]) -> None:
        """Records whose file is gone and files no record names, as they will be after the plan."""
        c = self.cfg
        referenced: set[str] = set()
        for key, stored in self.conn.execute(f"SELECT {_q(self.pk)}, {_q(c.path)} FROM main.{_q(c.table)}"):
            fix = self.fix_at.get((key, c.path))
            stored = fix.new if fix else stored
            if not isinstance(stored, str):
                continue
            target = self.under(stored)
            if target is None:
                if key not in bundle_keys and not any(u.get("record_key") == key for u in self.r["unsafe"]):
                    self.r["unsafe"].append({"record_key": key, "path": stored, "status": "unsafe",
                                             "where": "target record"})
                continue
            referenced.add(_norm(stored))
            if key not in bundle_keys and not target.is_file() and _norm(stored) not in self.claimed:
                self.r["records_without_file"].append({"record_key": key, "path": stored})
        on_disk = {rel: size for rel, _, size in walk_files(self.root)}
        for w in self.plan.writes:
            on_disk.setdefault(w.rel, w.source.stat().st_size)
        for rel in sorted(set(on_disk) - referenced):
            self.r["orphans"].append({"path": rel, "size": on_disk[rel]})


def walk_files(root: Path) -> Iterable[tuple[str, Path, int]]:
    """(relative path, real path, size) of every regular file under ``root`` that resolves inside
    it — like :func:`recovery.files.iter_uploads` without hashing (a big uploads folder is cheap)."""
    for rel, target, st in _walk(root):
        yield rel, target, st.st_size


def _recovered_of(current: Any, original: Any) -> bool:
    """``current`` is a kept-both sibling of ``original`` written by an earlier relink."""
    if not (isinstance(current, str) and isinstance(original, str)):
        return False
    c, o = PurePosixPath(current), PurePosixPath(original)
    return c.parent == o.parent and c.name.startswith(f"{o.stem}.recovered-") and c.suffix == o.suffix


def plan_relink(bundle: Bundle, conn: sqlite3.Connection, root: Path, files: FilesConfig | None = None,
                remaps: Iterable[Any] | None = None) -> RelinkPlan:
    """What relink would do, reading only. ``conn`` is the target (bundle ``rows.db`` is attached
    read-only for the duration). ``remaps`` are the re-import's ``Remap(table, old_key, new_key)``."""
    from recovery.sqlite_io import _uri

    root_p = Path(root)
    if not root_p.is_dir():
        raise RecoveryError(f"uploads folder {root_p} does not exist or is not a folder", "check --uploads")
    cfg = detect_files_config(conn, files or FilesConfig())
    if cfg is None:
        return RelinkPlan(root_p, None, report={k: [] for k in REPORT_LISTS})
    rmap = None if remaps is None else {(r.table, r.old_key): r.new_key for r in remaps}
    conn.execute("ATTACH DATABASE ? AS relink_bundle", (_uri(bundle.rows_db, mode="ro"),))
    try:
        return _Planner(bundle, conn, root_p, cfg, rmap).run()
    finally:
        conn.execute("DETACH DATABASE relink_bundle")


def apply_relink(plan: RelinkPlan, conn: sqlite3.Connection) -> None:
    """Write the planned files (each atomic, never over an existing file), then the DB fixes in
    one transaction."""
    for w in plan.writes:
        again = safe_path(plan.root, w.rel)  # re-check right before writing
        if again is None or again != w.target:
            raise RecoveryError(f"uploads path {w.rel} changed while relinking (now unsafe)",
                                "check the uploads folder for new symlinks; nothing was overwritten")
        if w.target.exists() or w.target.is_symlink():
            if w.target.is_file() and sha256_bytes_of(w.target) == w.sha256:
                continue
            raise RecoveryError(f"{w.rel} appeared while relinking", "run relink again; nothing was overwritten")
        atomic_copy(w.source, w.target, w.sha256)
    if not plan.fixes or plan.cfg is None:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for f in plan.fixes:
            conn.execute(f"UPDATE main.{_q(plan.cfg.table)} SET {_q(f.column)} = ? WHERE {_q(plan.pk)} = ?",
                         (f.new, f.key))
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def relink(
    bundle: Bundle | str | os.PathLike[str], db: str | os.PathLike[str], uploads: str | os.PathLike[str],
    files: FilesConfig | None = None, *, dry_run: bool = False, remaps: Iterable[Any] | None = None,
    busy_timeout: float = 10.0,
) -> dict[str, Any]:
    """Relink the bundle's files into ``uploads`` for the records in ``db``; see the module
    docstring. Returns the report: relinked, restored_from_bundle, missing, orphans,
    records_without_file, unsafe, kept_both (plus hash_mismatch, links_fixed, links_unresolved,
    records_not_imported, counts, uploads_state)."""
    from recovery.bundle import open_bundle
    from recovery.sqlite_io import check_sqlite_file, open_readonly, open_readwrite

    b = bundle if isinstance(bundle, Bundle) else open_bundle(bundle)
    target = check_sqlite_file(db, "target database")
    conn = open_readonly(target, "target database") if dry_run else open_readwrite(target, "target database",
                                                                                  busy_timeout)
    try:
        if dry_run:
            conn.execute("PRAGMA query_only = OFF")  # ATTACH needs it; the file stays mode=ro
        plan = plan_relink(b, conn, Path(uploads), files, remaps)
        if not dry_run:
            apply_relink(plan, conn)
    finally:
        conn.close()
    report = dict(plan.report)
    report["root"] = str(Path(uploads).resolve())
    report["dry_run"] = dry_run
    report["files_table"] = None if plan.cfg is None else {
        "table": plan.cfg.table, "path": plan.cfg.path, "sha256": plan.cfg.sha256 or None,
        "entity_type": plan.cfg.entity_type or None, "entity_id": plan.cfg.entity_id or None}
    report["counts"] = {k: len(report[k]) for k in REPORT_LISTS}
    backup = (b.manifest.get("sources") or {}).get("backup", {}).get("path")
    if backup and Path(backup).is_file() and plan.cfg is not None:
        try:
            state = uploads_state(backup, uploads, replace(files or FilesConfig(), table=plan.cfg.table,
                                                           path=plan.cfg.path, sha256=plan.cfg.sha256 or "sha256"))
            report["uploads_state"] = {k: state[k] for k in ("source", "added", "changed", "removed", "unchanged")}
        except RecoveryError:
            report["uploads_state"] = None
    return report


def uploads_state(backup: str | os.PathLike[str], uploads_root: str | os.PathLike[str],
                  files: FilesConfig | None = None) -> dict[str, Any]:
    """The uploads folder now against the backup's: files added, changed and removed since.

    The baseline is the uploads manifest recorded by ``recovery snapshot`` beside the backup; a
    backup without one falls back to the backup's own file records (path, hash, size)."""
    from recovery.snapshot import read_manifest
    from recovery.sqlite_io import readonly

    root = Path(uploads_root)
    if not root.is_dir():
        raise RecoveryError(f"uploads folder {root} does not exist or is not a folder", "check --uploads")
    snap = read_manifest(backup)
    under = _Under(root)
    baseline: dict[str, dict[str, Any]] = {}
    if snap and snap.get("uploads"):
        source = "manifest"
        baseline = {f["path"]: f for f in snap["uploads"]["files"]}
    else:
        source = "backup-records"
        with readonly(backup, "backup") as conn:
            cfg = detect_files_config(conn, files or FilesConfig())
            if cfg is None:
                raise RecoveryError(f"backup {backup} has no uploads manifest and no files table",
                                    "take backups with `recovery snapshot --uploads`")
            cols = [cfg.path, cfg.sha256 or None, cfg.size or None]
            sel = ", ".join(_q(x) if x else "NULL" for x in cols)
            for path, sha, size in conn.execute(f"SELECT {sel} FROM main.{_q(cfg.table)}"):
                if isinstance(path, str) and under(path) is not None:
                    baseline[_norm(path)] = {"path": _norm(path), "sha256": sha, "size": size}
    now = {rel: (real, size) for rel, real, size in walk_files(root)}
    added = [{"path": p, "size": now[p][1], "sha256": sha256_bytes_of(now[p][0])}
             for p in sorted(set(now) - set(baseline))]
    removed = [baseline[p] for p in sorted(set(baseline) - set(now))]
    changed = []
    for p in sorted(set(now) & set(baseline)):
        before, (real, size) = baseline[p], now[p]
        if before.get("sha256") is None and before.get("size") in (None, size):
            continue  # nothing recorded to compare with
        resized = before.get("size") not in (None, size)
        digest = sha256_bytes_of(real)  # hashed once, for the comparison and the report
        if resized or digest != before.get("sha256"):
            changed.append({"path": p, "sha256_before": before.get("sha256"), "sha256": digest,
                            "size_before": before.get("size"), "size": size})
    return {"root": str(root.resolve()), "backup": str(backup), "source": source, "added": added,
            "changed": changed, "removed": removed, "unchanged": len(set(now) & set(baseline)) - len(changed)}

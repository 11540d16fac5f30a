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
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any

from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.errors import RecoveryError
from recovery.files.uploads import UNRECORDED_DIR, FilesConfig, UploadsIndex, _Under, sane_mode, sha256_bytes_of, write_under
from recovery.engine.sqlbuild import and_all, col, ident, is_same, sql, table
from recovery.engine.timebound import statement_time_limit
from recovery.model.kinds import CARRIED_KINDS as BUNDLE_KINDS
from recovery.model.kinds import CHANGED_KINDS, RowKind
from recovery.model.kinds import KIND_COLUMN as KIND
from recovery.model.values import FILE_LISTS as REPORT_LISTS

BUNDLE = "relink_bundle"  # the schema name bundle rows.db is ATTACHed under while planning
PATH_CANDIDATES = ("path", "file_path", "storage_path", "relative_path", "filepath")
HASH_CANDIDATES = ("sha256", "hash", "checksum", "digest", "sha256_hex")


def _norm(stored: str) -> str:
    """``PurePosixPath(stored).as_posix()``, without building a path for the usual plain one."""
    if "//" in stored or "/./" in stored or stored.startswith("./") or stored.endswith(("/", "/.")) or stored in ("", "."):
        return PurePosixPath(stored).as_posix()
    return stored


# ---- SQL ------------------------------------------------------------------------------------------
# Every statement is a sqlglot tree with quoted identifiers and bound values, rendered once per
# shape (the planner asks the same few questions once per file record).

def _ph() -> exp.Placeholder:
    return exp.Placeholder()


def _in(column: exp.Expression, n: int) -> exp.In:
    return exp.In(this=column, expressions=[_ph() for _ in range(n)])


def _pragma(function: str, *columns: str) -> exp.Select:
    """``SELECT columns FROM pragma_x(?, ?)`` — the pragma's argument and schema are bound values."""
    return exp.select(*(col(c) for c in columns)).from_(
        exp.Table(this=exp.Anonymous(this=function, expressions=[_ph(), _ph()])))


@lru_cache(maxsize=None)
def _sql_pragma(function: str, columns: tuple[str, ...]) -> str:
    return sql(_pragma(function, *columns))


@lru_cache(maxsize=None)
def _sql_tables(schema: str) -> str:
    return sql(exp.select(col("name")).from_(table("sqlite_master", schema)).where(and_all([
        exp.EQ(this=col("type"), expression=exp.Literal.string("table")),
        exp.Not(this=exp.Like(this=col("name"), expression=exp.Literal.string("sqlite_%")))])).order_by(col("name")))


def _kinds(n: int) -> exp.In:
    return _in(col(KIND), n)


@lru_cache(maxsize=None)
def _sql_bundle_rows(name: str) -> str:
    """A bundle table's rows of the bundle kinds (the kinds bound)."""
    return sql(exp.select(exp.Star()).from_(table(name, BUNDLE)).where(_kinds(len(BUNDLE_KINDS))))


@lru_cache(maxsize=None)
def _sql_fk_rows(name: str, fk_column: str) -> str:
    """A bundle table's inserted/updated rows whose ``fk_column`` names something."""
    return sql(exp.select(exp.Star()).from_(table(name, BUNDLE)).where(and_all([
        _kinds(len(CHANGED_KINDS)), exp.Not(this=exp.Is(this=col(fk_column), expression=exp.Null()))])))


@lru_cache(maxsize=None)
def _sql_entity_rows(name: str, key_col: str, files_table: str, etype: str, eid: str, n_types: int) -> str:
    """The rows of bundle table ``name`` that bundle file records (of the bundle kinds, with one of
    ``n_types`` entity types) name by ``eid``, in table order. ``=`` between two untyped bundle
    columns compares values as a bound key would."""
    names = exp.select(col(eid, "f")).from_(table(files_table, BUNDLE, "f")).where(and_all([
        _in(col(etype, "f"), n_types), _in(col(KIND, "f"), len(BUNDLE_KINDS))]))
    return sql(exp.select(exp.Column(this=exp.Star(), table=ident("b"))).from_(table(name, BUNDLE, "b"))
               .where(exp.In(this=col(key_col, "b"), query=exp.Subquery(this=names))).order_by(col("rowid", "b")))


@lru_cache(maxsize=None)
def _sql_bundle_row(name: str, key_col: str) -> str:
    return sql(exp.select(exp.Star()).from_(table(name, BUNDLE)).where(
        exp.EQ(this=col(key_col), expression=_ph())).order_by(col("rowid")))


@lru_cache(maxsize=None)
def _sql_entity_types(files_table: str, etype: str) -> str:
    return sql(exp.select(col(etype)).distinct().from_(table(files_table, BUNDLE)).where(_kinds(len(BUNDLE_KINDS))))


def _record_select(name: str, pk: str, alias: str | None = None) -> exp.Select:
    """``SELECT *, pk AS _key FROM main.name`` (``alias.*`` with an alias)."""
    star = exp.Column(this=exp.Star(), table=ident(alias)) if alias else exp.Star()
    return exp.select(star, exp.alias_(col(pk, alias), "_key", quoted=True)).from_(table(name, "main", alias))


@lru_cache(maxsize=None)
def _sql_record(name: str, pk: str) -> str:
    return sql(_record_select(name, pk).where(exp.EQ(this=col(pk), expression=_ph())))


@lru_cache(maxsize=64)
def _sql_records(name: str, pk: str, n: int) -> str:
    """The records whose key is one of ``n`` bound keys, each row led by its key's position:
    ``(VALUES (0, ?), …) AS k JOIN main.name ON pk = k.column2`` compares as ``pk = ?`` would."""
    keys = exp.Values(expressions=[exp.Tuple(expressions=[exp.Literal.number(i), _ph()]) for i in range(n)],
                      alias=exp.TableAlias(this=ident("k")))
    q = _record_select(name, pk, "t")
    q.set("expressions", [col("column1", "k"), *q.expressions])
    return sql(q.from_(keys).join(table(name, "main", "t"), on=exp.EQ(this=col(pk, "t"), expression=col("column2", "k"))))


@lru_cache(maxsize=None)
def _sql_record_by_path(name: str, pk: str, path: str, sha: str) -> str:
    conds: list[exp.Expression] = [exp.EQ(this=col(path), expression=_ph())]
    if sha:
        conds.append(is_same(col(sha), _ph()))
    return sql(_record_select(name, pk).where(and_all(conds)))


@lru_cache(maxsize=None)
def _sql_has_row(name: str, key_col: str, same: tuple[str, ...]) -> str:
    """``SELECT 1 FROM main.name WHERE key = ? AND c IS ? …``."""
    conds = [exp.EQ(this=col(key_col), expression=_ph()), *(is_same(col(c), _ph()) for c in same)]
    return sql(exp.select(exp.Literal.number(1)).from_(table(name, "main")).where(and_all(conds)))


@lru_cache(maxsize=None)
def _sql_key_by(name: str, key_col: str, same: tuple[str, ...]) -> str:
    """``SELECT key FROM main.name WHERE c IS ? AND …``."""
    return sql(exp.select(col(key_col)).from_(table(name, "main")).where(and_all(is_same(col(c), _ph()) for c in same)))


@lru_cache(maxsize=None)
def _sql_select(name: str, columns: tuple[str | None, ...]) -> str:
    """``SELECT c1, c2 … FROM main.name`` (NULL for a column not there)."""
    return sql(exp.select(*(col(c) if c else exp.Null() for c in columns)).from_(table(name, "main")))


@lru_cache(maxsize=None)
def _sql_update(name: str, column: str, pk: str) -> str:
    return sql(exp.Update(this=table(name, "main"), expressions=[exp.EQ(this=col(column), expression=_ph())],
                          where=exp.Where(this=exp.EQ(this=col(pk), expression=_ph()))))


def _columns(conn: sqlite3.Connection, name: str, schema: str = "main") -> list[str]:
    return [r[0] for r in conn.execute(_sql_pragma("pragma_table_info", ("name",)), (name, schema))]


def _tables(conn: sqlite3.Connection, schema: str = "main") -> list[str]:
    return [r[0] for r in conn.execute(_sql_tables(schema))]


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


def _pk(conn: sqlite3.Connection, name: str, schema: str = "main") -> str:
    pks = sorted((pk, col_name) for pk, col_name in conn.execute(_sql_pragma("pragma_table_info", ("pk", "name")),
                                                                 (name, schema)) if pk)
    return pks[0][1] if len(pks) == 1 else "rowid"


def _unique_sets(conn: sqlite3.Connection, name: str) -> list[list[str]]:
    out = []
    for index, unique, origin in conn.execute(_sql_pragma("pragma_index_list", ("name", "unique", "origin")),
                                              (name, "main")).fetchall():
        if unique and origin != "pk":
            out.append([r[0] for r in conn.execute(_sql_pragma("pragma_index_info", ("name",)), (index, "main"))])
    return out


@dataclass(frozen=True)
class FileWrite:
    """One file to put in place: ``source`` (in the bundle) copied to ``target`` (under the root)."""

    source: Path
    target: Path
    rel: str
    sha256: str
    mode: int | None = None
    """The source file's permission bits as the bundle recorded them (None: not recorded)."""


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
    # The uploads folder as planning saw it (one walk, each file hashed at most once); still the
    # folder's state after an apply that wrote nothing.
    index: UploadsIndex | None = field(default=None, repr=False, compare=False)


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
        # The uploads folder walked once for the whole plan: stored paths it lists are checked and
        # hashed from it, any other is resolved on disk (symlinks included); apply_relink checks
        # each target again, walking it by descriptor without following a symlink, as it writes.
        self.index = UploadsIndex(root)
        self.under = self.index.under
        self.plan = RelinkPlan(root, cfg, self.pk, report={k: [] for k in REPORT_LISTS}, index=self.index)
        self.r: dict[str, list[dict[str, Any]]] = self.plan.report
        self.fix_at: dict[tuple[Any, str], LinkFix] = {}
        self.claimed: set[str] = set()  # paths written by this plan (never written twice)
        self.bunder = _Under(bundle.files_dir)
        # the source files' modes as extract recorded them, by stored path
        listed = (bundle.manifest.get("files") or {})
        self.modes: dict[Any, int] = {e.get("path"): e["mode"] for e in [*(listed.get("records") or []),
                                                                         *(listed.get("unrecorded") or [])]
                                      if isinstance(e, dict) and isinstance(e.get("mode"), int)}
        self.uunder = _Under(bundle.files_dir / UNRECORDED_DIR)
        # The schemas do not change while planning: read each PRAGMA once.
        self._meta: dict[tuple[Any, ...], Any] = {}
        # Bundle rows by (table, key column) -> key -> rows, loaded for the keys asked for.
        self._rows_by_key: dict[tuple[str, str], dict[Any, list[dict[str, Any]]]] = {}
        # Target file records by the key asked for (None: no such record), loaded in batches.
        self._records: dict[Any, dict[str, Any] | None] = {}

    def _cached(self, what: tuple[Any, ...], fn: Any, *args: Any) -> Any:
        if what not in self._meta:
            self._meta[what] = fn(*args)
        return self._meta[what]

    def tables(self, schema: str = "main") -> frozenset[str]:
        return self._cached(("tables", schema), lambda: frozenset(_tables(self.conn, schema)))

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

    def _dicts(self, table: str, cur: Iterable[tuple[Any, ...]]) -> list[dict[str, Any]]:
        cols = self.columns(table, BUNDLE)
        return [dict(zip(cols, row, strict=True)) for row in cur]

    def bundle_rows(self, table: str) -> list[dict[str, Any]]:
        if table not in self.tables(BUNDLE):
            return []
        return self._dicts(table, self.conn.execute(_sql_bundle_rows(table), BUNDLE_KINDS))

    def target_record(self, key: Any) -> dict[str, Any] | None:
        if key in self._records:
            return self._records[key]
        cur = self.conn.execute(_sql_record(self.cfg.table, self.pk), (key,))
        row = cur.fetchone()
        rec = dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None
        self._records[key] = rec
        return rec

    def load_records(self, keys: Iterable[Any], chunk: int = 500) -> None:
        """Read the target records of many keys, a few hundred keys a query (each an index
        lookup, compared as a single ``pk = ?`` would)."""
        todo = [k for k in dict.fromkeys(k for k in keys if k is not None) if k not in self._records]
        for i in range(0, len(todo), chunk):
            part = todo[i:i + chunk]
            cur = self.conn.execute(_sql_records(self.cfg.table, self.pk, len(part)), part)
            names = [d[0] for d in cur.description][1:]
            for k in part:
                self._records[k] = None
            for n, *r in cur:
                self._records[part[n]] = dict(zip(names, r, strict=True))

    def target_by_path(self, path: str, sha: Any) -> list[dict[str, Any]]:
        params: list[Any] = [path, sha] if self.cfg.sha256 else [path]
        cur = self.conn.execute(_sql_record_by_path(self.cfg.table, self.pk, self.cfg.path, self.cfg.sha256), params)
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
        same_cols = tuple(c for u in uniques for c in u)

        def same(candidate: Any) -> bool:
            params = [candidate, *(row[c] for c in same_cols)]
            return self.conn.execute(_sql_has_row(table, key_col, same_cols), params).fetchone() is not None

        if self.remaps is not None and (table, k) in self.remaps:
            new = self.remaps[(table, k)]
            return new if same(new) else None
        if row.get(KIND) == RowKind.UPDATED:  # only inserted rows are ever remapped
            hit = self.conn.execute(_sql_has_row(table, key_col, ()), (k,)).fetchone()
            return k if hit else None
        if same(k):
            return k
        if self.remaps is None and uniques:
            u = tuple(uniques[0])
            hit = self.conn.execute(_sql_key_by(table, key_col, u), [row[c] for c in u]).fetchall()
            if len(hit) == 1:
                return hit[0][0]
        return None

    def record_key(self, b: dict[str, Any]) -> Any:
        """The key a bundle file record has in the target, as far as the remaps say."""
        bkey = b.get(self.bkey(self.cfg.table))
        return self.remaps.get((self.cfg.table, bkey), bkey) if self.remaps is not None else bkey

    def record_for(self, b: dict[str, Any]) -> dict[str, Any] | None:
        """The target record a bundle file record became."""
        path, sha = b.get(self.cfg.path), b.get(self.cfg.sha256) if self.cfg.sha256 else None
        key = self.record_key(b)
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
        target = self.index.resolve(stored) if isinstance(stored, str) else None
        if target is None:
            self.r["unsafe"].append({**entry, "status": "unsafe", "where": "target record"})
            return
        on_disk = self.index.sha256(stored, target) if self.index.is_file(stored, target) else None
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
                self.write(src, target, _norm(stored), copy_sha, b.get(self.cfg.path))
                self.r["restored_from_bundle"].append({**entry, "sha256": copy_sha, "kind": "record"})
            self.r["hash_mismatch"].append({**entry, "sha256": on_disk or copy_sha,
                                            "status": "bundle copy differs from the record"})
            return
        if on_disk is None and not target.exists() and not target.is_symlink() and _norm(stored) not in self.claimed:
            self.write(src, target, _norm(stored), copy_sha, b.get(self.cfg.path))
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
            self.write(src, dst, rel, copy_sha, b.get(self.cfg.path))
            self.r["restored_from_bundle"].append({**entry, "path": rel, "sha256": copy_sha, "kind": "kept_both"})
        self.fix(rec, self.cfg.path, rel, "kept both: a different file is at the recorded path")
        self.r["kept_both"].append({**entry, "existing_sha256": on_disk, "recovered_path": rel,
                                    "sha256": copy_sha, "record_path_updated": True})
        self.r["relinked"].append({**entry, "path": rel, "sha256": copy_sha, "action": "kept_both"})

    def write(self, src: Path, dst: Path, rel: str, sha: str, source_path: Any = None) -> None:
        self.claimed.add(rel)
        self.plan.writes.append(FileWrite(src, dst, rel, sha, self.modes.get(source_path)))

    def unrecorded(self) -> None:
        """Files that were on disk without a record after the deploy: back when they are gone."""
        entries = (self.bundle.manifest.get("files") or {}).get("unrecorded") or []
        for e in entries:
            stored = e.get("path")
            target = self.index.resolve(stored) if isinstance(stored, str) else None
            src = self.uunder(stored) if target is not None else None
            if target is None or src is None:
                self.r["unsafe"].append({"record_key": None, "path": stored, "status": "unsafe", "where": "unrecorded"})
                continue
            if target.exists() or target.is_symlink() or not src.is_file() or _norm(stored) in self.claimed:
                continue
            sha = sha256_bytes_of(src)
            self.write(src, target, _norm(stored), sha, stored)
            self.r["restored_from_bundle"].append({"record_key": None, "path": stored, "sha256": sha,
                                                   "kind": "unrecorded"})

    # ---- entity links ------------------------------------------------------------------------
    def entity_table(self, etype: Any) -> str | None:
        if not isinstance(etype, str):
            return None
        return self._cached(("entity_table", etype),
                            lambda: next((t for t in sorted(self.tables()) if etype in (t, t.rstrip("s"))), None))

    def entity_ref(self, b: dict[str, Any]) -> tuple[str, str, Any] | None:
        """(bundle table, its key column, key) of the row a bundle file record's entity link names."""
        c = self.cfg
        if not (c.entity_type and c.entity_id):
            return None
        t = self.entity_table(b.get(c.entity_type))
        eid = b.get(c.entity_id)
        if t is None or eid is None:
            return None
        bkey = self.bkey(t) if t in self.tables(BUNDLE) else None
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
        if row is None or row.get(KIND) != RowKind.INSERTED:
            return  # a row the backup already had keeps its key
        new = self.target_key(t, row)
        if new is None:
            self.r["links_unresolved"].append({"record_key": rec["_key"], "entity_type": b.get(c.entity_type),
                                               "entity_id": eid, "reason": f"{t} row {eid} is not in the target"})
            return
        self.fix(rec, c.entity_id, new, f"{t} {eid} was re-imported as {new}")

    def _bundle_row(self, table: str, key_col: str, key: Any) -> list[dict[str, Any]]:
        """The bundle rows of ``table`` whose ``key_col`` is ``key`` (in table order)."""
        loaded = self._rows_by_key.setdefault((table, key_col), {})
        if key not in loaded:
            loaded[key] = self._dicts(table, self.conn.execute(_sql_bundle_row(table, key_col), (key,)))
        return loaded[key]

    def load_entity_rows(self, records: list[dict[str, Any]]) -> None:
        """Read, per entity table, the bundle rows the bundle file records' entity links name — one
        query a table, set-based in SQLite (the bundle tables have no index: a query per key would
        scan the table once per file record) — and note every key asked for, found or not."""
        c = self.cfg
        if not (c.entity_type and c.entity_id) or c.table not in self.tables(BUNDLE):
            return
        by_table: dict[tuple[str, str], list[Any]] = {}
        for (etype,) in self.conn.execute(_sql_entity_types(c.table, c.entity_type), BUNDLE_KINDS):
            t = self.entity_table(etype)
            if t is not None and t in self.tables(BUNDLE):
                by_table.setdefault((t, self.bkey(t)), []).append(etype)
        for (t, kcol), etypes in by_table.items():
            loaded = self._rows_by_key.setdefault((t, kcol), {})
            q = _sql_entity_rows(t, kcol, c.table, c.entity_type, c.entity_id, len(etypes))
            rows = self._dicts(t, self.conn.execute(q, [*etypes, *BUNDLE_KINDS]))
            found: dict[Any, list[dict[str, Any]]] = {}
            for row in rows:
                found.setdefault(row.get(kcol), []).append(row)
            for b in records:
                ref = self.entity_ref(b)
                if ref is not None and ref[:2] == (t, kcol) and ref[2] not in loaded:
                    loaded[ref[2]] = found.get(ref[2], [])

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
                if name not in self.tables(BUNDLE):
                    continue
                fcol = fk.columns[0]
                # Only the rows that name a file (inserted or updated), not the whole table.
                rows = self._dicts(name, self.conn.execute(_sql_fk_rows(name, fcol), CHANGED_KINDS))
                # Records from before the deploy: the same key in the target (or its remap).
                self.load_records(self.remaps.get((c.table, r[fcol]), r[fcol]) if self.remaps is not None else r[fcol]
                                  for r in rows if r[fcol] not in targets)
                for row in rows:
                    fid = row[fcol]
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
                        self.fix(rec, c.entity_type, name.rstrip("s"), f"{name}.{fcol} names this file")
                    self.fix(rec, c.entity_id, owner, f"{name}.{fcol} names this file")

    # ---- the whole plan ------------------------------------------------------------------------
    def run(self) -> RelinkPlan:
        c = self.cfg
        bkey = self.bkey(c.table)
        from_bundle: dict[Any, dict[str, Any]] = {}  # bundle key -> target record
        records = self.bundle_rows(c.table)
        self.load_entity_rows(records)  # the entity rows follow_entity will look up
        self.load_records(self.record_key(b) for b in records)  # the records record_for will look up
        for b in records:
            stored = b.get(c.path)
            entry = {"record_key": b.get(bkey), "path": stored,
                     "recorded_sha256": b.get(c.sha256) if c.sha256 else None}
            if not self.index.safe(stored):
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
        on_disk = self.index.files
        referenced: set[str] = set()
        unsafe_keys = {u.get("record_key") for u in self.r["unsafe"]}
        for key, stored in self.conn.execute(_sql_select(c.table, (self.pk, c.path))):
            fix = self.fix_at.get((key, c.path))
            stored = fix.new if fix else stored
            if not isinstance(stored, str):
                continue
            if stored in on_disk:  # safe, a regular file, and already normalised
                referenced.add(stored)
                continue
            target = self.under(stored)
            if target is None:
                if key not in bundle_keys and key not in unsafe_keys:
                    unsafe_keys.add(key)
                    self.r["unsafe"].append({"record_key": key, "path": stored, "status": "unsafe",
                                             "where": "target record"})
                continue
            referenced.add(_norm(stored))
            if key not in bundle_keys and not target.is_file() and _norm(stored) not in self.claimed:
                self.r["records_without_file"].append({"record_key": key, "path": stored})
        sizes = {w.rel: w.source for w in self.plan.writes if w.rel not in on_disk}
        for rel in sorted((set(on_disk) | set(sizes)) - referenced):
            size = on_disk[rel][1].st_size if rel in on_disk else sizes[rel].stat().st_size
            self.r["orphans"].append({"path": rel, "size": size})


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
    from recovery.engine.sqlite_io import _uri

    root_p = Path(root)
    if not root_p.is_dir():
        raise RecoveryError(f"uploads folder {root_p} does not exist or is not a folder", "check --uploads")
    cfg = detect_files_config(conn, files or FilesConfig())
    if cfg is None:
        return RelinkPlan(root_p, None, report={k: [] for k in REPORT_LISTS})
    rmap = None if remaps is None else {(r.table, r.old_key): r.new_key for r in remaps}
    conn.execute("ATTACH DATABASE ? AS relink_bundle", (_uri(bundle.rows_db, mode="ro"),))
    try:
        with statement_time_limit(conn):  # the bundle's rows are untrusted: no statement runs unbounded
            return _Planner(bundle, conn, root_p, cfg, rmap).run()
    finally:
        conn.execute("DETACH DATABASE relink_bundle")


def apply_relink(plan: RelinkPlan, conn: sqlite3.Connection) -> None:
    """Write the planned files (each atomic, never over an existing file, never through a symbolic
    link: :func:`recovery.files.uploads.write_under`; owner and group of their folder, the source's
    recorded mode), then the DB fixes in one transaction."""
    root = plan.index.real if plan.index is not None else os.path.realpath(plan.root)
    prefix = root.rstrip("/") + "/"
    for w in plan.writes:
        target = os.fspath(w.target)  # real as planned: the walk below follows no symlink, so
        if not target.startswith(prefix):  # anything swapped in since the plan stops it
            raise RecoveryError(f"uploads path {w.rel} leads outside {root}",
                                "check the uploads folder for new symlinks; nothing was overwritten")
        write_under(root, target[len(prefix):], w.source, w.sha256, sane_mode(w.mode))
    if not plan.fixes or plan.cfg is None:
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        for f in plan.fixes:
            conn.execute(_sql_update(plan.cfg.table, f.column, plan.pk), (f.new, f.key))
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
    from recovery.bundle.store import open_bundle
    from recovery.engine.sqlite_io import check_sqlite_file, open_readonly, open_readwrite

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
        # The folder as planning walked it, unless the apply wrote files into it since.
        index = plan.index if dry_run or not plan.writes else None
        try:
            state = uploads_state(backup, uploads, replace(files or FilesConfig(), table=plan.cfg.table,
                                                           path=plan.cfg.path, sha256=plan.cfg.sha256 or "sha256"),
                                  index=index)
            report["uploads_state"] = {k: state[k] for k in ("source", "added", "changed", "removed", "unchanged")}
        except RecoveryError:
            report["uploads_state"] = None
    return report


def uploads_state(backup: str | os.PathLike[str], uploads_root: str | os.PathLike[str],
                  files: FilesConfig | None = None, *, index: UploadsIndex | None = None) -> dict[str, Any]:
    """The uploads folder now against the backup's: files added, changed and removed since.

    The baseline is the uploads manifest recorded by ``recovery snapshot`` beside the backup; a
    backup without one falls back to the backup's own file records (path, hash, size). ``index``
    is a walk of ``uploads_root`` already made (relink passes its plan's), so the folder is walked
    and each file hashed once."""
    from recovery.capture.snapshot import read_manifest
    from recovery.engine.sqlite_io import readonly

    root = Path(uploads_root)
    if not root.is_dir():
        raise RecoveryError(f"uploads folder {root} does not exist or is not a folder", "check --uploads")
    snap = read_manifest(backup)
    now = index if index is not None else UploadsIndex(root)
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
            for path, sha, size in conn.execute(_sql_select(cfg.table, (cfg.path, cfg.sha256 or None, cfg.size or None))):
                if isinstance(path, str) and now.safe(path):
                    baseline[_norm(path)] = {"path": _norm(path), "sha256": sha, "size": size}
    on_disk = now.files
    added = [{"path": p, "size": on_disk[p][1].st_size, "sha256": now.sha256(p)}
             for p in sorted(set(on_disk) - set(baseline))]
    removed = [baseline[p] for p in sorted(set(baseline) - set(on_disk))]
    changed = []
    for p in sorted(set(on_disk) & set(baseline)):
        before, size = baseline[p], on_disk[p][1].st_size
        if before.get("sha256") is None and before.get("size") in (None, size):
            continue  # nothing recorded to compare with
        resized = before.get("size") not in (None, size)
        digest = now.sha256(p)  # hashed once, for the comparison and the report
        if resized or digest != before.get("sha256"):
            changed.append({"path": p, "sha256_before": before.get("sha256"), "sha256": digest,
                            "size_before": before.get("size"), "size": size})
    return {"root": str(root.resolve()), "backup": str(backup), "source": source, "added": added,
            "changed": changed, "removed": removed, "unchanged": len(set(on_disk) & set(baseline)) - len(changed)}

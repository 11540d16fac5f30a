"""Relink's reading side: which row of the target each bundle row became, and which target file
record each bundle file record became. Reads only: the target (``main``, its shape from
:func:`recovery.engine.schema.reflect`) and the bundle's ``rows.db`` ATTACHed as
:data:`~recovery.files.relink_sql.BUNDLE`.

Bundle rows are read set-based (the entity rows the records name, in one query a table) and
target records a few hundred keys a query; each answer is kept for the rest of the plan.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from typing import Any, TypeVar

from recovery.model.kinds import RowKind
from recovery.bundle.store import Bundle
from recovery.engine.schema import Schema
from recovery.files import relink_sql as q
from recovery.files.names import recovered_of
from recovery.files.relink_sql import BUNDLE, BUNDLE_KINDS, KIND
from recovery.files.uploads import FilesConfig

Row = dict[str, Any]
T = TypeVar("T")


def _dicts(cur: sqlite3.Cursor) -> list[Row]:
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row, strict=True)) for row in cur]


def _padded(part: list[T], size: int) -> list[T]:
    """``part`` filled up to ``size`` items with its last one repeated: a batch statement is
    rendered once per size, and a question asked twice gets the same answer twice."""
    return part + [part[-1]] * (size - len(part))


class Matcher:
    """Lookups for one plan. ``remaps``: the re-import's ``(table, old key) -> new key`` (None:
    not known, so rows are also found by their unique columns and records by path and hash)."""

    def __init__(
        self,
        bundle: Bundle,
        conn: sqlite3.Connection,
        schema: Schema,
        cfg: FilesConfig,
        remaps: dict[tuple[str, Any], Any] | None,
    ):
        self.bundle, self.conn, self.schema, self.cfg, self.remaps = (
            bundle,
            conn,
            schema,
            cfg,
            remaps,
        )
        self.pk = self.tpk(cfg.table)
        self.bundle_tables = frozenset(r[0] for r in conn.execute(q.tables_sql(BUNDLE)))
        self._entity_tables: dict[str, str | None] = {}
        # Bundle rows by (table, key column) -> key -> rows, loaded for the keys asked for.
        self._rows_by_key: dict[tuple[str, str], dict[Any, list[Row]]] = {}
        # Target file records by the key asked for (None: no such record), loaded in batches.
        self._records: dict[Any, Row | None] = {}
        # Answers to target_key's row checks asked in advance: (table, key column, columns,
        # (key, values…)) -> whether the target has that row (warm_target_keys).
        self._has: dict[tuple[str, str, tuple[str, ...], tuple[Any, ...]], bool] = {}
        self._unique_sets: dict[str, list[tuple[str, ...]]] = {}
        self._bkeys: dict[str, str] = {}
        self._checks: dict[int, tuple[Row, str, Any]] = {}  # id(row) -> (row, table, check)

    # ---- the target's shape ----------------------------------------------------------------------
    def tpk(self, table: str) -> str:
        """The target table's single key column, else ``rowid``."""
        t = self.schema.tables.get(table)
        return t.primary_key[0] if t is not None and len(t.primary_key) == 1 else "rowid"

    def bkey(self, table: str) -> str:
        """The key column of a bundle table (bundle tables are untyped: the new schema says)."""
        key = self._bkeys.get(table)
        if key is None:
            t = self.bundle.new.tables.get(table)
            if t is not None and len(t.primary_key) == 1:
                key = t.primary_key[0]
            else:
                key = self.tpk(table) if table in self.schema.tables else "rowid"
            self._bkeys[table] = key
        return key

    def entity_table(self, etype: Any) -> str | None:
        """The target table an entity type names (``part`` → ``parts``), or None."""
        if not isinstance(etype, str):
            return None
        if etype not in self._entity_tables:
            self._entity_tables[etype] = next(
                (t for t in sorted(self.schema.tables) if etype in (t, t.rstrip("s"))), None
            )
        return self._entity_tables[etype]

    # ---- bundle rows ----------------------------------------------------------------------------
    def bundle_rows(self, table: str) -> list[Row]:
        """Every row of a bundle table of the bundle kinds (the files table: a few per upload)."""
        if table not in self.bundle_tables:
            return []
        return _dicts(self.conn.execute(q.bundle_rows_sql(table), BUNDLE_KINDS))

    def fk_rows(self, table: str, fk_column: str) -> list[Row]:
        """A bundle table's inserted/updated rows that name a file in ``fk_column`` (the target
        checks :meth:`target_key` will make of them asked in advance)."""
        rows = _dicts(self.conn.execute(q.fk_rows_sql(table, fk_column), BUNDLE_KINDS[:2]))
        self.warm_target_keys([(table, r) for r in rows])
        return rows

    def bundle_row(self, table: str, key_col: str, key: Any) -> list[Row]:
        """The bundle rows of ``table`` whose ``key_col`` is ``key`` (in table order)."""
        loaded = self._rows_by_key.setdefault((table, key_col), {})
        if key not in loaded:
            loaded[key] = _dicts(self.conn.execute(q.bundle_row_sql(table, key_col), (key,)))
        return loaded[key]

    def entity_ref(self, b: Row) -> tuple[str, str, Any] | None:
        """(bundle table, its key column, key) of the row a bundle file record's entity link names."""
        c = self.cfg
        if not (c.entity_type and c.entity_id):
            return None
        t = self.entity_table(b.get(c.entity_type))
        eid = b.get(c.entity_id)
        if t is None or eid is None or t not in self.bundle_tables:
            return None
        return t, self.bkey(t), eid

    def load_entity_rows(self, records: list[Row]) -> None:
        """Read, per entity table, the bundle rows the bundle file records' entity links name — one
        query a table, set-based in SQLite (the bundle tables have no index: a query per key would
        scan the table once per file record) — and note every key asked for, found or not."""
        c = self.cfg
        if not (c.entity_type and c.entity_id) or c.table not in self.bundle_tables:
            return
        by_table: dict[tuple[str, str], list[Any]] = {}
        for (etype,) in self.conn.execute(q.entity_types_sql(c.table, c.entity_type), BUNDLE_KINDS):
            t = self.entity_table(etype)
            if t is not None and t in self.bundle_tables:
                by_table.setdefault((t, self.bkey(t)), []).append(etype)
        for (t, kcol), etypes in by_table.items():
            loaded = self._rows_by_key.setdefault((t, kcol), {})
            sql = q.entity_rows_sql(t, kcol, c.table, c.entity_type, c.entity_id, len(etypes))
            found: dict[Any, list[Row]] = {}
            for row in _dicts(self.conn.execute(sql, [*etypes, *BUNDLE_KINDS])):
                found.setdefault(row.get(kcol), []).append(row)
            for b in records:
                ref = self.entity_ref(b)
                if ref is not None and ref[:2] == (t, kcol) and ref[2] not in loaded:
                    loaded[ref[2]] = found.get(ref[2], [])
        inserted: list[tuple[str, Row]] = []  # the rows follow_entity asks target_key about
        for b in records:
            ref = self.entity_ref(b)
            first: Row | None = next(iter(self.bundle_row(*ref)), None) if ref else None
            if ref is not None and first is not None and first.get(KIND) == RowKind.INSERTED:
                inserted.append((ref[0], first))
        self.warm_target_keys(inserted)

    # ---- target records ---------------------------------------------------------------------------
    def target_record(self, key: Any) -> Row | None:
        """The target file record with this key (None: there is none)."""
        if key in self._records:
            return self._records[key]
        cur = self.conn.execute(q.record_sql(self.cfg.table, self.pk), (key,))
        row = cur.fetchone()
        rec = dict(zip([d[0] for d in cur.description], row, strict=True)) if row else None
        self._records[key] = rec
        return rec

    def load_records(self, keys: Iterable[Any], chunk: int = 200) -> None:
        """Read the target records of many keys, a few hundred keys a query (each an index
        lookup, compared as a single ``pk = ?`` would)."""
        todo = [
            k for k in dict.fromkeys(k for k in keys if k is not None) if k not in self._records
        ]
        for i in range(0, len(todo), chunk):
            part = todo[i : i + chunk]
            asks = _padded(part, chunk) if len(todo) > chunk else part  # one statement shape
            cur = self.conn.execute(q.records_sql(self.cfg.table, self.pk, len(asks)), asks)
            names = [d[0] for d in cur.description][1:]
            for k in part:
                self._records[k] = None
            for n, *r in cur:
                self._records[asks[n]] = dict(zip(names, r, strict=True))

    def target_by_path(self, path: str, sha: Any) -> list[Row]:
        """The target records at ``path`` (with hash ``sha`` when the table records one)."""
        params: list[Any] = [path, sha] if self.cfg.sha256 else [path]
        cur = self.conn.execute(
            q.record_by_path_sql(self.cfg.table, self.pk, self.cfg.path, self.cfg.sha256), params
        )
        return _dicts(cur)

    def record_key(self, b: Row) -> Any:
        """The key a bundle file record has in the target, as far as the remaps say."""
        bkey = b.get(self.bkey(self.cfg.table))
        return self.remaps.get((self.cfg.table, bkey), bkey) if self.remaps is not None else bkey

    def file_key(self, fid: Any) -> Any:
        """The target key of the file record a bundle row's file foreign key names."""
        return self.remaps.get((self.cfg.table, fid), fid) if self.remaps is not None else fid

    def record_for(self, b: Row) -> Row | None:
        """The target record a bundle file record became."""
        path, sha = b.get(self.cfg.path), b.get(self.cfg.sha256) if self.cfg.sha256 else None
        key = self.record_key(b)
        rec = self.target_record(key) if key is not None else None
        if rec is not None and (
            rec.get(self.cfg.path) == path or recovered_of(rec.get(self.cfg.path), path)
        ):
            return rec
        if self.remaps is None or rec is None:
            hits = self.target_by_path(path, sha) if isinstance(path, str) else []
            if len(hits) == 1:
                return hits[0]
        return rec if (self.remaps is not None and rec is not None) else None

    # ---- target rows ----------------------------------------------------------------------------
    def _uniques(self, table: str, row: Row) -> list[tuple[str, ...]]:
        """The target table's unique column sets whose values ``row`` has, none of them NULL."""
        sets = self._unique_sets.get(table)
        if sets is None:
            t = self.schema.tables[table]
            sets = self._unique_sets[table] = [
                tuple(u) for u in t.unique_sets if all(c in t.column_names for c in u)
            ]
        return [u for u in sets if None not in map(row.get, u)]

    def _first_check(self, table: str, row: Row) -> tuple[str, tuple[str, ...], list[Any]] | None:
        """The row check :meth:`target_key` makes first for ``row``: (key column, columns, the
        bound key and values) for :func:`~recovery.files.relink_sql.has_row_sql`; None when it
        asks nothing (no such table, no key). Worked out once per row (:meth:`warm_target_keys`
        and :meth:`target_key` both ask; the row is kept with its answer, so its id stays its)."""
        seen = self._checks.get(id(row))
        if seen is not None and seen[0] is row and seen[1] == table:
            return seen[2]
        check = self._work_out_check(table, row)
        self._checks[id(row)] = (row, table, check)
        return check

    def _work_out_check(
        self, table: str, row: Row
    ) -> tuple[str, tuple[str, ...], list[Any]] | None:
        if table not in self.schema.tables:
            return None
        key_col = self.tpk(table)
        k = row.get(self.bkey(table))
        if k is None:
            return None
        if row.get(KIND) == RowKind.UPDATED and not (
            self.remaps is not None and (table, k) in self.remaps
        ):
            return key_col, (), [k]
        same_cols = tuple(c for u in self._uniques(table, row) for c in u)
        if self.remaps is not None and (table, k) in self.remaps:
            k = self.remaps[(table, k)]
        return key_col, same_cols, [k, *(row[c] for c in same_cols)]

    def _has_row(self, table: str, key_col: str, cols: tuple[str, ...], params: list[Any]) -> bool:
        hit = self._has.get((table, key_col, cols, tuple(params)))
        if hit is not None:
            return hit
        return self.conn.execute(q.has_row_sql(table, key_col, cols), params).fetchone() is not None

    def warm_target_keys(self, rows: list[tuple[str, Row]], chunk: int = 100) -> None:
        """Ask :meth:`target_key`'s first check of every ``(table, row)`` at once, a few hundred
        a statement (:func:`~recovery.files.relink_sql.has_rows_sql`), instead of one statement
        per row when the planner gets to it. Only on a SQLite target (the PostgreSQL matcher
        batches its own questions)."""
        if not isinstance(self.conn, sqlite3.Connection):
            return
        asked: dict[tuple[str, str, tuple[str, ...]], dict[tuple[Any, ...], None]] = {}
        for table, row in rows:
            check = self._first_check(table, row)
            if check is not None:
                key_col, cols, params = check
                asked.setdefault((table, key_col, cols), {})[tuple(params)] = None
        for (table, key_col, cols), wanted in asked.items():
            todo = [p for p in wanted if (table, key_col, cols, p) not in self._has]
            for i in range(0, len(todo), chunk):
                part = todo[i : i + chunk]
                asks = _padded(part, chunk) if len(todo) > chunk else part  # one statement shape
                cur = self.conn.execute(
                    q.has_rows_sql(table, key_col, cols, len(asks)), [v for p in asks for v in p]
                )
                found = {n for (n,) in cur}
                for n, p in enumerate(part):
                    self._has[(table, key_col, cols, p)] = n in found

    def target_key(self, table: str, row: Row) -> Any | None:
        """The key ``row`` (a bundle row of ``table``) has in the target, or None when it is not
        there (skipped by a conflict). Remaps name moved keys; without them a row whose key holds
        a different row is found by its unique columns."""
        check = self._first_check(table, row)
        if check is None:
            return None
        key_col, cols, params = check
        if self._has_row(table, key_col, cols, params):
            return params[0]
        k = row.get(self.bkey(table))
        if self.remaps is not None and (table, k) in self.remaps:
            return None
        if row.get(KIND) == RowKind.UPDATED:  # only inserted rows are ever remapped
            return None
        uniques = self._uniques(table, row)
        if self.remaps is None and uniques:
            u = uniques[0]
            hit = self.conn.execute(q.key_by_sql(table, key_col, u), [row[c] for c in u]).fetchall()
            if len(hit) == 1:
                return hit[0][0]
        return None

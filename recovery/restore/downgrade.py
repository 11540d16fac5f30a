"""``rollback --downgrade-to``: what the app's own downgrade cannot give back, put back from the backup.

The downgrade transpiles the live rows into the old schema with the application's own logic, but it
only has the live database to work from: whatever the upgrade threw away is gone from it, while the
backup still holds it. A restore from the backup would bring those values back, so the downgraded
copy must too. :func:`repair_from_backup` runs on the scratch copy (after the downgrade, before it
is renamed over the live file), with the backup ATTACHed read-only, in one transaction:

* **refill** — an old-schema column the live schema lacks (dropped by the upgrade and re-added
  empty by the downgrade, e.g. bb006's ``parts.notes``) takes the backup's value, matched by
  primary key, in every cell the downgrade left NULL and the backup has a value for. A value the
  downgrade computed (bb004's ``price`` from ``price_cents``) is never overwritten. Rows changed
  after the deploy then go through the in-place merge like restored rows: a renamed column the
  user set to NULL after the deploy is refilled here and set back to NULL by the merge.
* **rows deleted after the deploy** — a backup row whose key the downgraded copy lacks comes back,
  as it does with a restore; the re-import lists it for review and deletes it only on request
  (``--apply-deletes``). Not brought back (and counted): a row whose unique value is now taken by
  another row, and a row whose parent in the backup was not brought back.
* **tables the live schema lacks** — re-created empty by the downgrade: filled with the backup's
  rows. One the downgrade filled itself (e.g. aa001's ``drawings`` from ``drawing_number``) is left
  as computed and named in the result.

Tables without a primary key are not repaired (no row identity to match by); they are named too.
Foreign keys are off and the triggers of the tables written are dropped and re-created around the
repair: it copies data back, it is not an application write. Every statement is a sqlglot tree.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.errors import ExitCode, RecoveryError
from recovery.engine.schema import Schema, Table, reflect
from recovery.engine.sqlbuild import and_all, col, ident, key_join, sql, table
from recovery.engine import open_engine
from recovery.engine.base import Connection, Engine
from recovery.engine.sqlite_io import readonly_uri

BACKUP = "recovery_backup"
"""The schema name the backup is ATTACHed under (read-only) while the scratch copy is repaired."""


@dataclass(frozen=True)
class Step:
    """One statement of the repair, and what its row count means."""

    kind: str  # "refill_candidates"/"missing" (counts), "refill" (cells of ``column``), "restore"/"copy" (rows)
    table: str
    statement: exp.Expression
    column: str | None = None


@dataclass
class Repair:
    """What the repair put back, for the journal's restore entry and the report."""

    refilled: dict[str, dict[str, int]] = field(default_factory=dict)
    """table → column → cells refilled from the backup."""
    not_refilled: dict[str, dict[str, int]] = field(default_factory=dict)
    """table → column → backup values not put back: the parent they name is not in the copy."""
    restored_rows: dict[str, int] = field(default_factory=dict)
    """table → rows deleted after the deploy, brought back from the backup."""
    not_restored: dict[str, int] = field(default_factory=dict)
    """table → backup rows missing from the downgraded copy that could not come back (a unique value
    is taken by another row, or their parent did not come back)."""
    copied_tables: dict[str, int] = field(default_factory=dict)
    """table (the live schema lacked it, the downgrade re-created it empty) → rows copied."""
    computed_tables: list[str] = field(default_factory=list)
    """Tables the live schema lacked that the downgrade filled itself: left as it computed them."""
    unkeyed_tables: list[str] = field(default_factory=list)
    """Tables without a primary key: not repaired."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "refilled": self.refilled,
            "not_refilled": self.not_refilled,
            "restored_rows": self.restored_rows,
            "not_restored": self.not_restored,
            "copied_tables": self.copied_tables,
            "computed_tables": self.computed_tables,
            "unkeyed_tables": self.unkeyed_tables,
            "notes": self.notes(),
        }

    def notes(self) -> list[str]:
        """One line per thing put back or left alone, for people."""
        out = [
            f"{t}.{c}: {n} cell(s) the downgrade left empty refilled from the backup"
            for t, cols in sorted(self.refilled.items())
            for c, n in sorted(cols.items())
            if n
        ]
        out += [
            f"{t}.{c}: {n} backup value(s) left empty: the row they point to did not come back"
            for t, cols in sorted(self.not_refilled.items())
            for c, n in sorted(cols.items())
            if n
        ]
        out += [
            f"{t}: {n} row(s) deleted after the deploy brought back from the backup (listed for review)"
            for t, n in sorted(self.restored_rows.items())
            if n
        ]
        out += [
            f"{t}: {n} backup row(s) missing after the downgrade could not come back (unique value taken, "
            "or parent not back)"
            for t, n in sorted(self.not_restored.items())
            if n
        ]
        out += [
            f"{t}: re-created empty by the downgrade; {n} row(s) copied from the backup"
            for t, n in sorted(self.copied_tables.items())
        ]
        out += [
            f"{t}: re-created and filled by the downgrade; left as it computed it"
            for t in self.computed_tables
        ]
        out += [f"{t}: no primary key; not compared with the backup" for t in self.unkeyed_tables]
        return out


# ---- plan ---------------------------------------------------------------------------------


def lacking_columns(old: Table, live: Table | None, down: Table) -> list[str]:
    """Old-schema columns of ``old`` the live table lacks (the upgrade dropped or renamed them) and
    the downgraded table has again: the cells the downgrade had to invent."""
    have_live = set(live.column_names) if live is not None else set()
    have_down = set(down.column_names)
    return [c for c in old.column_names if c not in have_live and c in have_down]


def plan_refill(old: Table, columns: list[str], backup: Schema, down: Schema) -> list[Step]:
    """``UPDATE main.t SET c = b.c FROM backup.t AS b WHERE <key> AND t.c IS NULL AND b.c IS NOT NULL``,
    one per column so each column's count is its own — and, for a foreign-key column, only where
    the parent it names is in the copy (a parent deleted after the deploy that could not come back
    leaves the cell empty: counted, never dangling). A count of the candidates comes first."""
    steps = []
    for c in columns:
        base = [
            key_join(old.primary_key, "b", old.name),
            exp.Is(this=col(c, old.name), expression=exp.Null()),
            exp.Not(this=exp.Is(this=col(c, "b"), expression=exp.Null())),
        ]
        count = (
            exp.select(exp.func("count", exp.Star()))
            .from_(table(old.name, "main"))
            .join(table(old.name, BACKUP, "b"), on=and_all(base))
        )
        stmt = exp.Update(
            this=table(old.name, "main"),
            expressions=[exp.EQ(this=col(c), expression=col(c, "b"))],
            from_=exp.From(this=table(old.name, BACKUP, "b")),
            where=exp.Where(this=and_all(base + _parents_back(old, backup, down, "b", only=c))),
        )
        steps += [Step("refill_candidates", old.name, count, c), Step("refill", old.name, stmt, c)]
    return steps


def _parents_back(
    old: Table, backup: Schema, down: Schema, alias: str, only: str | None = None
) -> list[exp.Expression]:
    """For backup row ``alias``: each of its foreign keys (those using column ``only``, when given)
    points at a row the repaired copy has — or at one the backup lacked too (no new dangling)."""
    conds = []
    for fk in old.foreign_keys:
        if (
            fk.ref_table not in backup.tables
            or fk.ref_table not in down.tables
            or len(fk.ref_columns) != len(fk.columns)
            or (only is not None and only not in fk.columns)
        ):
            continue
        link = list(zip(fk.ref_columns, fk.columns, strict=True))
        in_backup = exp.Exists(
            this=exp.select("1")
            .from_(table(fk.ref_table, BACKUP, "bp"))
            .where(
                and_all(exp.EQ(this=col(pc, "bp"), expression=col(cc, alias)) for pc, cc in link)
            )
        )
        in_copy = exp.Exists(
            this=exp.select("1")
            .from_(table(fk.ref_table, "main", "mp"))
            .where(
                and_all(exp.EQ(this=col(pc, "mp"), expression=col(cc, alias)) for pc, cc in link)
            )
        )
        conds.append(exp.Not(this=and_all([in_backup, exp.Not(this=in_copy)])))
    return conds


def _absent(old: Table, alias: str) -> exp.Expression:
    """No row of ``main.t`` has the key of backup row ``alias``."""
    return exp.Not(
        this=exp.Exists(
            this=exp.select("1")
            .from_(table(old.name, "main", "m"))
            .where(key_join(old.primary_key, "m", alias))
        )
    )


def plan_restore_rows(old: Table, backup: Schema, down: Schema) -> list[Step]:
    """Backup rows whose key the downgraded copy lacks: count them, then insert those whose unique
    values are free and whose parents (present in the backup) are present in the copy. Run in the
    backup's FK order, so a parent that could not come back keeps its children out too."""
    cols = [c for c in old.column_names if c in set(down.tables[old.name].column_names)]
    missing = (
        exp.select(exp.func("count", exp.Star()))
        .from_(table(old.name, BACKUP, "b"))
        .where(_absent(old, "b"))
    )
    conds = [_absent(old, "b")]
    for uset in old.unique_sets:
        if tuple(uset) == old.primary_key or not set(uset) <= set(cols):
            continue
        conds.append(
            exp.Not(
                this=exp.Exists(
                    this=exp.select("1")
                    .from_(table(old.name, "main", "m"))
                    .where(and_all(exp.EQ(this=col(c, "m"), expression=col(c, "b")) for c in uset))
                )
            )
        )
    conds += _parents_back(old, backup, down, "b")
    insert = exp.Insert(
        this=exp.Schema(this=table(old.name, "main"), expressions=[ident(c) for c in cols]),
        expression=exp.select(*[col(c, "b") for c in cols])
        .from_(table(old.name, BACKUP, "b"))
        .where(and_all(conds)),
    )
    return [Step("missing", old.name, missing), Step("restore", old.name, insert)]


def plan_copy_table(old: Table, backup: Schema, down: Schema) -> list[Step]:
    """Every backup row of a table the downgrade re-created empty whose parents are in the copy
    (counted first: the rest are reported as not restored)."""
    d = down.tables[old.name]
    cols = [c for c in old.column_names if c in set(d.column_names)]
    rows = exp.select(*[col(c, "b") for c in cols]).from_(table(old.name, BACKUP, "b"))
    guard = _parents_back(old, backup, down, "b")
    if guard:
        rows = rows.where(and_all(guard))
    count = exp.select(exp.func("count", exp.Star())).from_(table(old.name, BACKUP, "b"))
    return [
        Step("missing", old.name, count),
        Step(
            "copy",
            old.name,
            exp.Insert(
                this=exp.Schema(this=table(old.name, "main"), expressions=[ident(c) for c in cols]),
                expression=rows,
            ),
        ),
    ]


def plan_repair(
    backup: Schema, live: Schema, down: Schema, empty: set[str]
) -> tuple[list[Step], Repair]:
    """The statements that repair the downgraded copy (pure: nothing runs). ``empty``: tables of the
    downgraded copy that hold no rows. The returned :class:`Repair` already names the tables left
    alone; the counts are filled in by :func:`apply_repair`."""
    steps: list[Step] = []
    result = Repair()
    for name in backup.fk_order():
        old, d = backup.tables[name], down.tables.get(name)
        if d is None:
            continue  # the schema check before the re-import refuses a table the downgrade did not bring back
        if not old.primary_key:
            result.unkeyed_tables.append(name)
            continue
        if name not in live.tables:
            if name in empty:
                steps += plan_copy_table(old, backup, down)
            else:
                result.computed_tables.append(name)
            continue
        steps += plan_refill(old, lacking_columns(old, live.tables[name], d), backup, down)
        steps += plan_restore_rows(old, backup, down)
    return steps, result


# ---- apply --------------------------------------------------------------------------------


def apply_repair(engine: Engine, conn: Connection, steps: list[Step], result: Repair) -> Repair:
    """Run ``steps`` on ``conn`` (``engine``'s, backup ATTACHed) in one transaction, the triggers of
    the tables written suspended around them (:meth:`~recovery.engine.base.Engine.suspend_triggers`:
    dropped and re-created from their stored CREATE statement, as the app wrote it)."""
    written = sorted({s.table for s in steps if s.kind in ("refill", "restore", "copy")})
    with engine.write_transaction(conn, 5.0):  # a private scratch copy: nobody else writes it
        dangling_before = _dangling(conn, written)
        suspended = engine.suspend_triggers(conn, set(written))
        missing: dict[str, int] = {}
        candidates = 0
        for s in steps:
            cur = conn.execute(sql(s.statement))
            if s.kind == "refill_candidates":
                candidates = cur.fetchone()[0]
            elif s.kind == "refill":
                assert s.column is not None
                result.refilled.setdefault(s.table, {})[s.column] = cur.rowcount
                if candidates > cur.rowcount:
                    result.not_refilled.setdefault(s.table, {})[s.column] = (
                        candidates - cur.rowcount
                    )
            elif s.kind == "missing":
                missing[s.table] = cur.fetchone()[0]
            elif s.kind in ("restore", "copy"):
                (result.restored_rows if s.kind == "restore" else result.copied_tables)[s.table] = (
                    cur.rowcount
                )
                if missing.get(s.table, 0) > cur.rowcount:
                    result.not_restored[s.table] = missing[s.table] - cur.rowcount
        engine.restore_triggers(
            conn, suspended
        )  # the app's own stored trigger definitions, unchanged
        worse = {t: n for t, n in _dangling(conn, written).items() if n > dangling_before.get(t, 0)}
        if worse:  # the guards above should make this impossible; never swap in a DB we broke
            raise sqlite3.IntegrityError(
                f"the repair would leave dangling foreign keys in {', '.join(sorted(worse))}"
            )
    return result


def _dangling(conn: Connection, tables: list[str]) -> dict[str, int]:
    """table → rows ``PRAGMA foreign_key_check`` reports for it."""
    out = {}
    for t in tables:
        check = exp.Table(
            this=exp.Anonymous(
                this="pragma_foreign_key_check",
                expressions=[exp.Literal.string(t), exp.Literal.string("main")],
            )
        )
        out[t] = conn.execute(
            sql(exp.select(exp.func("count", exp.Star())).from_(check))
        ).fetchone()[0]
    return out


def _empty_tables(conn: Connection, names: list[str]) -> set[str]:
    out = set()
    for n in names:
        if conn.execute(sql(exp.select("1").from_(table(n, "main")).limit(1))).fetchone() is None:
            out.add(n)
    return out


def repair_from_backup(db: Path, backup: Path, live: Schema) -> Repair:
    """Repair the downgraded scratch copy ``db`` from ``backup`` (see the module docstring). ``live``
    is the schema ``db`` had before the downgrade (the failed live DB's)."""
    with open_engine(backup).readonly("backup") as b:
        old = reflect(b)
    engine = open_engine(db)
    with engine.readonly("downgraded copy") as d:
        down = reflect(d)
        empty = _empty_tables(
            d, [n for n in old.data_tables if n in down.tables and n not in live.tables]
        )
    steps, result = plan_repair(old, live, down, empty)
    if not steps:
        return result
    conn = engine.connect_write("downgraded copy")
    try:
        conn.execute(
            "PRAGMA foreign_keys = OFF"
        )  # no cascade may fire, and parents come first anyway
        conn.execute(
            sql(exp.Attach(this=exp.alias_(exp.Placeholder(), ident(BACKUP)))),
            (readonly_uri(backup),),
        )
        try:
            return apply_repair(engine, conn, steps, result)
        except sqlite3.Error as exc:
            raise RecoveryError(
                f"repairing the downgraded copy from the backup failed: {exc}",
                "the live DB was not touched; restore from the backup instead "
                "(omit --downgrade-to)",
                ExitCode.FAILED,
            ) from None
    finally:
        conn.close()

"""Property-based round trips (hypothesis): random schema → random migration → random user activity
after the deploy → (random writes to the restored DB) → extract → restore → reimport, then:

* every backup row is still there (the restored DB's own writes never delete here);
* every post-deploy change is present in its old-schema projection, or listed as lost with its value,
  or reported as a conflict;
* ``PRAGMA foreign_key_check`` is empty; no conflict is reported twice;
* a second re-import of the same bundle changes nothing.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.bundle.extract import extract
from recovery.pipeline import reimport

MAX_EXAMPLES = 30
TYPES = ("TEXT", "INTEGER", "REAL")
POOL = ("a", "b", "qty", "note", "val")


@dataclass
class Col:
    name: str
    type: str
    default: Any = None  # not None → NOT NULL DEFAULT default

    def ddl(self) -> str:
        d = f" NOT NULL DEFAULT {lit(self.default)}" if self.default is not None else ""
        return f'"{self.name}" {self.type}{d}'


@dataclass
class Tab:
    name: str
    cols: list[Col]
    parent: str | None = None

    def ddl(self) -> str:
        parts = ['"id" INTEGER PRIMARY KEY'] + [c.ddl() for c in self.cols]
        if self.parent:
            parts.append(f'"p_id" INTEGER REFERENCES "{self.parent}"("id")')
        return f'CREATE TABLE "{self.name}" ({", ".join(parts)})'


@dataclass
class Mig:
    added: dict[str, list[Col]] = field(default_factory=dict)  # table → new-only columns
    dropped: dict[str, set[str]] = field(default_factory=dict)  # table → old columns with no source
    renamed: dict[str, dict[str, str]] = field(default_factory=dict)  # table → old → new
    retyped: dict[str, dict[str, str]] = field(
        default_factory=dict
    )  # table → old REAL → new cents INTEGER
    new_tables: list[str] = field(default_factory=list)
    sql: list[str] = field(default_factory=list)
    mapping: dict[str, dict[str, str]] = field(default_factory=dict)


def lit(v: Any) -> str:
    if isinstance(v, str):
        return "'" + v.replace("'", "''") + "'"
    return repr(v)


def value_of(draw: st.DrawFn, type_: str, nullable: bool) -> Any:
    if nullable and draw(st.booleans()):
        return None
    if type_ == "TEXT":
        return draw(st.sampled_from(["", "x", "y", "ünï", "a'b", "long text " * 3]))
    if type_ == "INTEGER":
        return draw(st.integers(-5, 50))
    return draw(st.integers(-40, 400)) / 4


@st.composite
def worlds(draw: st.DrawFn) -> dict[str, Any]:
    tables = []
    for name, parent in (("p", None), ("c", "p"), ("x", None))[: draw(st.integers(2, 3))]:
        names = draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=3, unique=True))
        cols = []
        for n in names:
            t = draw(st.sampled_from(TYPES))
            cols.append(Col(n, t, value_of(draw, t, False) if draw(st.booleans()) else None))
        tables.append(Tab(name, cols, parent))
    seed: dict[str, list[dict[str, Any]]] = {}
    for t in tables:
        rows = []
        for i in range(1, draw(st.integers(0, 5)) + 1):
            r = {"id": i, **{c.name: value_of(draw, c.type, c.default is None) for c in t.cols}}
            if t.parent:
                r["p_id"] = draw(st.sampled_from([None, *[row["id"] for row in seed[t.parent]]]))
            rows.append(r)
        seed[t.name] = rows
    # the migration: at most one step per column; add and drop never in the same table
    mig = Mig()
    for t in tables:
        kind = draw(st.sampled_from(["none", "add", "drop", "rename", "retype"]))
        if kind == "add":
            used = {c.name for c in t.cols}
            n = draw(st.sampled_from([f"new_{k}" for k in ("one", "two")]))
            typ = draw(st.sampled_from(TYPES))
            c = Col(n, typ, value_of(draw, typ, False) if draw(st.booleans()) else None)
            assert n not in used
            mig.added[t.name] = [c]
            mig.sql.append(f'ALTER TABLE "{t.name}" ADD COLUMN {c.ddl()}')
        elif kind == "drop" and len(t.cols) > 1:
            c = draw(st.sampled_from(t.cols))
            mig.dropped[t.name] = {c.name}
            mig.sql.append(f'ALTER TABLE "{t.name}" DROP COLUMN "{c.name}"')
        elif kind == "rename":
            c = draw(st.sampled_from(t.cols))
            mig.renamed[t.name] = {c.name: f"{c.name} renamed"}
            mig.sql.append(f'ALTER TABLE "{t.name}" RENAME COLUMN "{c.name}" TO "{c.name} renamed"')
            mig.mapping.setdefault(t.name, {})[c.name] = f'"{c.name} renamed"'
        elif kind == "retype" and any(c.type == "REAL" for c in t.cols):
            c = next(c for c in t.cols if c.type == "REAL")
            nc = f"{c.name}_cents"
            mig.retyped[t.name] = {c.name: nc}
            mig.sql += [
                f'ALTER TABLE "{t.name}" ADD COLUMN "{nc}" INTEGER',
                f'UPDATE "{t.name}" SET "{nc}" = CAST(round("{c.name}" * 100) AS INTEGER)',
                f'ALTER TABLE "{t.name}" DROP COLUMN "{c.name}"',
            ]
            mig.mapping.setdefault(t.name, {})[c.name] = f'"{nc}" / 100.0'
    if draw(st.booleans()):
        mig.new_tables.append("extra")
        mig.sql.append('CREATE TABLE "extra" ("id" INTEGER PRIMARY KEY, "v" TEXT)')
    return {"tables": tables, "seed": seed, "mig": mig, "draw": draw}


# ---------------------------------------------------------------------------------------------


def new_columns(t: Tab, mig: Mig) -> list[Col]:
    out = []
    for c in t.cols:
        if c.name in mig.dropped.get(t.name, ()):
            continue
        if c.name in mig.renamed.get(t.name, {}):
            out.append(Col(mig.renamed[t.name][c.name], c.type, c.default))
        elif c.name in mig.retyped.get(t.name, {}):
            out.append(Col(mig.retyped[t.name][c.name], "INTEGER", None))
        else:
            out.append(c)
    return out + mig.added.get(t.name, [])


def project(t: Tab, mig: Mig, row: dict[str, Any]) -> dict[str, Any]:
    """A new-schema row's old-schema projection (dropped columns left out: they have no source)."""
    out = {"id": row["id"]}
    if t.parent:
        out["p_id"] = row["p_id"]
    for c in t.cols:
        if c.name in mig.dropped.get(t.name, ()):
            continue
        if c.name in mig.renamed.get(t.name, {}):
            out[c.name] = row[mig.renamed[t.name][c.name]]
        elif c.name in mig.retyped.get(t.name, {}):
            v = row[mig.retyped[t.name][c.name]]
            out[c.name] = None if v is None else v / 100.0
        else:
            out[c.name] = row[c.name]
    return out


def rows(conn: sqlite3.Connection, name: str) -> dict[int, dict[str, Any]]:
    cur = conn.execute(f'SELECT * FROM "{name}"')
    names = [d[0] for d in cur.description]
    return {r[0]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def content(path: Path) -> list[Any]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        out = []
        for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name"):
            out.append((n, sorted(conn.execute(f'SELECT * FROM "{n}"').fetchall(), key=repr)))
        return out
    finally:
        conn.close()


def activity(draw: st.DrawFn, conn: sqlite3.Connection, tables: list[Tab], mig: Mig) -> None:
    """Random inserts/updates/deletes in the migrated (live) DB, keeping foreign keys intact."""
    for _ in range(draw(st.integers(0, 8))):
        t = draw(st.sampled_from(tables))
        cols = new_columns(t, mig)
        existing = rows(conn, t.name)
        op = draw(st.sampled_from(["insert", "insert", "update", "delete"]))
        if op == "insert":
            r: dict[str, Any] = {"id": max(existing, default=0) + 1}
            r.update({c.name: value_of(draw, c.type, c.default is None) for c in cols})
            if t.parent:
                r["p_id"] = draw(st.sampled_from([None, *rows(conn, t.parent)]))
        elif op == "update" and existing and cols:
            key = draw(st.sampled_from(sorted(existing)))
            c = draw(st.sampled_from(cols))
            conn.execute(
                f'UPDATE "{t.name}" SET "{c.name}" = ? WHERE id = ?',
                (value_of(draw, c.type, c.default is None), key),
            )
            continue
        elif op == "delete" and existing:
            key = draw(st.sampled_from(sorted(existing)))
            children = [ct for ct in tables if ct.parent == t.name]
            if any(
                conn.execute(f'SELECT 1 FROM "{ct.name}" WHERE p_id = ?', (key,)).fetchone()
                for ct in children
            ):
                continue
            conn.execute(f'DELETE FROM "{t.name}" WHERE id = ?', (key,))
            continue
        else:
            continue
        conn.execute(
            f'INSERT INTO "{t.name}" ({", ".join(json.dumps(k) for k in r)}) VALUES '
            f"({', '.join('?' * len(r))})",
            tuple(r.values()),
        )
    for i in range(1, draw(st.integers(0, 3)) + 1) if mig.new_tables else ():
        conn.execute(
            'INSERT INTO "extra" VALUES (?, ?)', (i, draw(st.sampled_from(["e", "f", None])))
        )


def restored_writes(draw: st.DrawFn, conn: sqlite3.Connection, tables: list[Tab]) -> None:
    """The old release used after the rollback: inserts take the next ids (they collide with the
    bundle's inserts), edits change backup rows."""
    for _ in range(draw(st.integers(0, 4))):
        t = draw(st.sampled_from(tables))
        existing = rows(conn, t.name)
        if draw(st.booleans()) or not existing:
            r = {
                "id": max(existing, default=0) + 1,
                **{c.name: value_of(draw, c.type, c.default is None) for c in t.cols},
            }
            if t.parent:
                r["p_id"] = draw(st.sampled_from([None, *rows(conn, t.parent)]))
            conn.execute(
                f'INSERT INTO "{t.name}" ({", ".join(json.dumps(k) for k in r)}) VALUES '
                f"({', '.join('?' * len(r))})",
                tuple(r.values()),
            )
        else:
            c = draw(st.sampled_from(t.cols))
            conn.execute(
                f'UPDATE "{t.name}" SET "{c.name}" = ? WHERE id = ?',
                (
                    value_of(draw, c.type, c.default is None),
                    draw(st.sampled_from(sorted(existing))),
                ),
            )


@settings(max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
@given(world=worlds(), data=st.data())
def test_round_trip(world: dict[str, Any], data: st.DataObject) -> None:
    tables: list[Tab] = world["tables"]
    mig: Mig = world["mig"]
    draw = data.draw
    tmp = Path(tempfile.mkdtemp(prefix="roundtrip-"))
    try:
        backup = tmp / "app.db.bak.20261120_140000"
        with sqlite3.connect(backup) as conn:
            for t in tables:
                conn.execute(t.ddl())
                for r in world["seed"][t.name]:
                    conn.execute(
                        f'INSERT INTO "{t.name}" ({", ".join(json.dumps(k) for k in r)}) VALUES '
                        f"({', '.join('?' * len(r))})",
                        tuple(r.values()),
                    )
        conn.close()
        live = tmp / "app.db"
        shutil.copyfile(backup, live)
        with sqlite3.connect(live) as conn:
            for s in mig.sql:
                conn.execute(s)
            activity(draw, conn, tables, mig)
        conn.close()
        mapping = None
        if mig.mapping:
            mapping = tmp / "mapping.toml"
            mapping.write_text(
                "".join(
                    f'[tables."{t}".columns]\n'
                    + "".join(f'"{c}" = {json.dumps(e)}\n' for c, e in cols.items())
                    for t, cols in mig.mapping.items()
                ),
                encoding="utf-8",
            )
        res = extract(backup, live, tmp / "bundle", mapping=mapping)
        assert not res.plan.errors, res.plan.errors
        target = tmp / "target.db"
        shutil.copyfile(backup, target)  # the restore
        with sqlite3.connect(target) as conn:
            restored_writes(draw, conn, tables)
        conn.close()
        before = content(target)
        out = reimport(tmp / "bundle", target, out=tmp / "run1").outcome
        assert out is not None and not out.aborted

        # each conflict once
        keys = [(c.kind, c.table, tuple(c.key), c.column) for c in out.conflicts]
        assert len(keys) == len(set(keys)), keys
        conflicted = {(c.table, tuple(c.key)) for c in out.conflicts}
        cells = {(c.table, tuple(c.key), c.column) for c in out.conflicts}
        remap = {(r.table, r.old_key): r.new_key for r in out.remaps}
        lost = {(x["table"], tuple(x["key"]), x["column"]): x["value"] for x in out.lost}
        # undated non-default values in new columns of rows unchanged in the old projection: listed
        # as filled by the upgrade, not verified (nothing tells them from the upgrade's)
        with sqlite3.connect(f"file:{tmp / 'bundle' / 'rows.db'}?mode=ro", uri=True) as fc:
            filled = {
                (t, tuple(json.loads(k)), c): v
                for t, k, c, v in fc.execute(
                    'SELECT "table", "key", "column", value FROM _recovery_filled'
                )
            }
        fc.close()

        b = sqlite3.connect(f"file:{backup}?mode=ro", uri=True)
        n = sqlite3.connect(f"file:{live}?mode=ro", uri=True)
        g = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
        try:
            assert g.execute("PRAGMA foreign_key_check").fetchall() == []
            for t in tables:
                base, new, got = rows(b, t.name), rows(n, t.name), rows(g, t.name)
                assert set(base) <= set(got), (
                    f"{t.name}: backup rows missing {set(base) - set(got)}"
                )
                for key, row in new.items():
                    proj = project(t, mig, row)
                    if key not in base:  # inserted after the deploy
                        if (t.name, (key,)) in conflicted or (
                            t.parent and (t.parent, (row["p_id"],)) in conflicted
                        ):
                            continue
                        k2 = remap.get((t.name, key), key)
                        assert k2 in got, f"{t.name} {key}: inserted row missing"
                        if t.parent and row["p_id"] is not None:
                            proj["p_id"] = remap.get((t.parent, row["p_id"]), row["p_id"])
                        proj["id"] = k2
                        assert {c: got[k2][c] for c in proj} == proj, f"{t.name} {key}"
                    else:
                        for c, v in proj.items():
                            if v != base[key][c] or type(v) is not type(base[key][c]):
                                if (t.name, (key,), c) in cells or (t.name, (key,)) in conflicted:
                                    continue
                                if t.parent and c == "p_id" and v is not None:
                                    # an update pointing at a new parent follows its remap
                                    v = remap.get((t.parent, v), v)
                                assert got[key][c] == v, (
                                    f"{t.name} {key}.{c}: {got[key][c]!r} != {v!r}"
                                )
                    for c in mig.added.get(t.name, []):
                        if row[c.name] is not None and row[c.name] != c.default:
                            cell = (t.name, (key,), c.name)
                            if (
                                cell in filled
                            ):  # never lost as well, and only in a row the backup has
                                assert (
                                    cell not in lost and key in base and filled[cell] == row[c.name]
                                ), cell
                                continue
                            assert lost.get(cell) == row[c.name], cell
            for name in mig.new_tables:
                for key, row in rows(n, name).items():
                    if row["v"] is not None:
                        assert lost.get((name, (key,), "v")) == row["v"]
        finally:
            for c in (b, n, g):
                c.close()

        after = content(target)
        again = reimport(tmp / "bundle", target, out=tmp / "run2").outcome
        assert again is not None and again.already_applied
        assert content(target) == after
        assert before != after or not any(o.inserted or o.updated for o in out.tables.values())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

"""The bounded copy the upgrade is replayed on, and the rule that says when it answers like a full copy.

:func:`recovery.compare.changes.user_value` asks the replayed copy about a few rows only: backup
rows whose live counterpart holds a non-default value in a column the old schema cannot carry
(:func:`recovery.compare.changes.replay_needs`). :func:`build` writes a copy of the backup with
the full schema (tables, ``sqlite_sequence``, indexes, views, triggers, ``user_version``) where

* *filtered* tables hold only those needed rows, their FK descendants (children, transitively)
  and the FK ancestors (parents, transitively) of every row kept;
* every other table is *complete* (all its rows).

Everything moves set-based (``INSERT … SELECT`` from the ATTACHed backup, sqlglot trees).

The copy is only as good as the migrations are row-local. :func:`judge` reads every statement the
migrations ran on it (the sandbox traces each one, reads included) and accepts the copy only when
no statement can make a needed row's value depend on a row that was left out:

* a filtered table is read only as the target row of its own ``UPDATE``/``DELETE`` (subqueries,
  ``UPDATE … FROM``, joins and top-level ``SELECT``\\ s may read complete tables only) or copied
  row for row (``INSERT INTO t (…) SELECT … FROM f`` with no filter, join, grouping, aggregate,
  window, limit or subquery — Alembic's batch rebuild — the key columns fed by themselves);
* no key column (nor ``rowid``) of a filtered table is updated, and no row is inserted into a
  filtered table any other way (its new key would depend on the rows present);
* no trigger (in the backup's schema or created by a migration) and no view read names a
  filtered table (a trigger is judged again when a copy or a rename makes a table filtered);
  ``PRAGMA foreign_key_check``/``integrity_check`` are not run; ``changes()`` and
  ``total_changes()`` are not called while a table is filtered;
* every statement parses.

Anything else (``UPDATE parts SET n = (SELECT count(*) FROM items WHERE …)`` with ``items``
filtered, a Python loop that reads ``parts`` and aggregates) is refused, and the caller replays
on a full copy instead (:data:`FULL_ENV` forces that).
"""

from __future__ import annotations

import logging
import re
import sqlite3
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import sqlglot
from sqlglot import exp

from recovery.engine.sqlbuild import and_all, col, sql, table
from recovery.engine.sqlite_io import file_uri, readonly_uri

FULL_ENV = "RECOVERY_REPLAY_FULL"
"""Set to ``1``: always replay the upgrade on a full copy of the backup (the fallback)."""

_ROWID_NAMES = ("rowid", "oid", "_rowid_")
_SYSTEM = {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
_HARMLESS_COMMANDS = {"BEGIN", "COMMIT", "END", "ROLLBACK", "SAVEPOINT", "RELEASE", "ANALYZE"}
_TRIGGER = re.compile(r"\s*CREATE\s+(TEMP\w*\s+)?TRIGGER\b", re.I)
_DATA_PRAGMA_FUNCTION = re.compile(
    r"\bpragma_(foreign_key_check|integrity_check|quick_check)\b", re.I
)
_DATA_PRAGMAS = {"foreign_key_check", "integrity_check", "quick_check"}
_ROW_COUNTERS = {"changes", "total_changes"}
"""SQL functions that count the rows earlier statements wrote: on a bounded table, rows left out."""


@dataclass
class TableInfo:
    columns: list[str]
    key: tuple[str, ...]
    rowid: str | None
    """The name that reads the table's rowid (None: WITHOUT ROWID, or every alias shadowed)."""
    parents: list[tuple[tuple[str, ...], str, tuple[str, ...]]] = field(default_factory=list)
    """(own columns, parent table, parent columns) per foreign key."""


@dataclass(frozen=True)
class BoundedCopy:
    path: Path
    filtered: frozenset[str]
    """Tables that hold only some of the backup's rows."""
    keys: dict[str, tuple[str, ...]]
    """Primary-key column names per table (old schema; the live schema's are added by the caller)."""
    views: frozenset[str]
    triggers: tuple[str, ...]
    """The DDL of the backup's triggers (judged like statements the migrations ran)."""
    rows: int
    """Rows copied (all tables)."""


def _info(conn: sqlite3.Connection, name: str) -> TableInfo:
    xinfo = conn.execute(
        "SELECT name, pk, hidden FROM pragma_table_xinfo(?, 'old') ORDER BY cid", (name,)
    ).fetchall()
    columns = [r[0] for r in xinfo if r[2] == 0]
    key = tuple(r[0] for r in sorted((r for r in xinfo if r[1]), key=lambda r: r[1]))
    wr = conn.execute(
        "SELECT wr FROM pragma_table_list WHERE schema = 'old' AND name = ?", (name,)
    ).fetchone()
    lower = {c.lower() for c in columns}
    rowid = None if wr and wr[0] else next((n for n in _ROWID_NAMES if n not in lower), None)
    info = TableInfo(columns, key, rowid)
    fks: dict[int, list[tuple[str, str, str]]] = {}
    for r in conn.execute(
        'SELECT id, "table", "from", "to" FROM pragma_foreign_key_list(?, \'old\') ORDER BY id, seq',
        (name,),
    ):
        fks.setdefault(r[0], []).append((r[1], r[2], r[3]))
    for parts in fks.values():
        pcols = () if any(p[2] is None for p in parts) else tuple(p[2] for p in parts)
        # (no columns: REFERENCES parent, its primary key; resolved by _resolve_parent_keys)
        info.parents.append((tuple(p[1] for p in parts), parts[0][0], pcols))
    return info


def _row(cols: Iterable[str], alias: str) -> exp.Expression:
    cs = [col(c, alias) for c in cols]
    return cs[0] if len(cs) == 1 else exp.Tuple(expressions=cs)


def _copy(
    conn: sqlite3.Connection, name: str, info: TableInfo, where: exp.Expression | None
) -> int:
    """``INSERT OR IGNORE`` the backup rows of ``name`` matching ``where`` (all without), rowids
    kept: a row already copied is skipped, so the closure can repeat until nothing is added."""
    cols = ([info.rowid] if info.rowid else []) + info.columns
    q = exp.select(*[col(c, "o") for c in cols]).from_(table(name, "old", "o"))
    if where is not None:
        q = q.where(where)
    stmt = exp.Insert(
        this=exp.Schema(
            this=table(name, "main"), expressions=[exp.to_identifier(c, quoted=True) for c in cols]
        ),
        expression=q,
        alternative="IGNORE",
    )
    return conn.execute(sql(stmt)).rowcount


def _referenced_by(child: str, own: tuple[str, ...], parent_cols: tuple[str, ...]) -> exp.Select:
    """The non-NULL ``own`` columns of the rows of ``child`` copied so far."""
    return (
        exp.select(*[col(c, "c") for c in own])
        .from_(table(child, "main", "c"))
        .where(and_all(exp.Not(this=exp.Is(this=col(c, "c"), expression=exp.Null())) for c in own))
    )


def _closure(
    conn: sqlite3.Connection,
    infos: dict[str, TableInfo],
    down: set[str],
    filtered: set[str],
) -> None:
    """Children of the rows of ``down`` tables (transitively), then parents of every row kept.
    Each round follows only the foreign keys whose referenced side grew in the round before."""
    grew = set(down)
    while grew:
        now: set[str] = set()
        for child in sorted(down):
            for own, parent, pcols in infos[child].parents:
                if parent in grew and parent in down:
                    cond = exp.In(
                        this=_row(own, "o"), query=_referenced_by(parent, pcols, own).subquery()
                    )
                    if _copy(conn, child, infos[child], cond):
                        now.add(child)
        grew = now
    grew = set(filtered)
    while grew:
        now = set()
        for child in sorted(filtered):
            for own, parent, pcols in infos[child].parents:
                if child in grew and parent in filtered:
                    cond = exp.In(
                        this=_row(pcols, "o"), query=_referenced_by(child, own, pcols).subquery()
                    )
                    if _copy(conn, parent, infos[parent], cond):
                        now.add(parent)
        grew = now


def _resolve_parent_keys(infos: dict[str, TableInfo]) -> None:
    """Name the parent's primary key where a foreign key names none; drop foreign keys to tables
    the backup does not have, or whose columns do not pair up (nothing to follow)."""
    by_lower = {n.lower(): n for n in infos}
    for info in infos.values():
        resolved = []
        for own, named, pcols in info.parents:
            parent = by_lower.get(named.lower())  # (SQLite's names are case-insensitive)
            if parent is None:
                continue
            pcols = pcols or infos[parent].key
            if len(pcols) == len(own):
                resolved.append((own, parent, pcols))
        info.parents = resolved


def build(
    backup: Path, live: Path, dst: Path, needs: dict[str, exp.Expression]
) -> BoundedCopy | None:
    """Write the bounded copy of ``backup`` to ``dst``: ``needs`` maps a backup table to the
    condition (over its row ``o``, the live database attached as ``new``) that selects the rows
    whose replayed values will be asked for. None when the backup has something this copy cannot
    reproduce (a virtual table, a table whose rowid cannot be named): replay on a full copy."""
    conn = sqlite3.connect(str(dst), isolation_level=None)
    try:
        conn.execute("ATTACH DATABASE ? AS old", (readonly_uri(backup),))
        conn.execute("ATTACH DATABASE ? AS new", (readonly_uri(live),))
        enc = conn.execute("PRAGMA old.encoding").fetchone()[0]
        conn.execute(
            sql(
                exp.Pragma(
                    this=exp.EQ(this=exp.var("encoding"), expression=exp.Literal.string(enc))
                )
            )
        )
        for p in ("user_version", "application_id"):
            v = int(conn.execute(f"PRAGMA old.{p}").fetchone()[0])  # fixed names
            conn.execute(f"PRAGMA main.{p} = {v}")  # an integer read from SQLite itself
        conn.execute("PRAGMA main.journal_mode = OFF")  # a scratch file, rebuilt on failure
        conn.execute("PRAGMA main.synchronous = OFF")
        ddl = conn.execute(
            "SELECT type, name, tbl_name, sql FROM old.sqlite_master "
            "WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY rowid"
        ).fetchall()
        if any(t == "table" and re.match(r"\s*CREATE\s+VIRTUAL\b", s, re.I) for t, _, _, s in ddl):
            return None
        tables = [n for t, n, _, _ in ddl if t == "table"]
        for t, _, _, s in ddl:
            if t == "table":
                conn.execute(s)  # the backup's own DDL, verbatim (as the app wrote it)
        infos = {n: _info(conn, n) for n in tables}
        _resolve_parent_keys(infos)
        if any(i.rowid is None and not i.key for i in infos.values()):
            return None
        seeds = {t for t in needs if t in infos}
        down = set(seeds)
        grew = True
        while grew:
            grew = False
            for n, i in infos.items():
                if n not in down and any(p[1] in down for p in i.parents):
                    down.add(n)
                    grew = True
        # with no row to ask about only the schema the migrations leave matters: every table
        # bounded (empty), so a migration whose course depends on any row falls back
        filtered = set(down) if seeds else set(tables)
        grew = True
        while grew:
            grew = False
            for n in list(filtered):
                for _, parent, _ in infos[n].parents:
                    if parent not in filtered:
                        filtered.add(parent)
                        grew = True
        conn.execute("BEGIN")
        for n in tables:
            if n not in filtered:
                _copy(conn, n, infos[n], None)
        for n in sorted(seeds):
            _copy(conn, n, infos[n], needs[n])
        _closure(conn, infos, down, filtered)
        if conn.execute(
            "SELECT 1 FROM old.sqlite_master WHERE name = 'sqlite_sequence'"
        ).fetchone():
            conn.execute("DELETE FROM main.sqlite_sequence")
            conn.execute("INSERT INTO main.sqlite_sequence SELECT * FROM old.sqlite_sequence")
        for kind in ("index", "view", "trigger"):  # triggers last: none fires on the copy's rows
            for t, _, _, s in ddl:
                if t == kind:
                    conn.execute(s)
        conn.execute("COMMIT")
        rows = sum(
            conn.execute(
                sql(exp.select(exp.func("count", exp.Star())).from_(table(n, "main")))
            ).fetchone()[0]
            for n in tables
        )
        conn.execute("DETACH DATABASE old")
        conn.execute("DETACH DATABASE new")
        conn.execute("PRAGMA main.journal_mode = DELETE")
    finally:
        conn.close()
    return BoundedCopy(
        dst,
        frozenset(filtered),
        {n: i.key for n, i in infos.items()},
        frozenset(n for t, n, _, _ in ddl if t == "view"),
        tuple(s for t, _, _, s in ddl if t == "trigger"),
        rows,
    )


def attach_uri(path: Path) -> str:
    """A read-only URI for a copy still being migrated (not ``immutable``: SQLite must see the
    schema the migrations leave when it is first read)."""
    return file_uri(path, mode="ro")


# ---------------------------------------------------------------------------------------------
# the judge


class _State:
    def __init__(self, copy: BoundedCopy, keys: Mapping[str, Iterable[str]]) -> None:
        self.filtered = {n.lower() for n in copy.filtered}
        self.views = {n.lower() for n in copy.views}
        self.triggers: list[str] = []
        """The DDL of every trigger judged so far (re-judged when a table becomes bounded)."""
        self.keys: dict[str, set[str]] = {}
        for src in (copy.keys, keys):
            for n, ks in src.items():
                self.keys.setdefault(n.lower(), set()).update(k.lower() for k in ks)

    def is_filtered(self, name: str) -> bool:
        return name.lower() in self.filtered

    def unreadable(self, name: str) -> bool:
        """Reading ``name`` may see fewer rows than in the full copy."""
        n = name.lower()
        return n in self.filtered or (n in self.views and bool(self.filtered))


def _tables(node: exp.Expression) -> list[exp.Table]:
    return [
        t
        for t in node.find_all(exp.Table)
        if t.name and t.name.lower() not in _SYSTEM and not _names_a_cte(t)
    ]


def _names_a_cte(t: exp.Table) -> bool:
    """``t`` reads a CTE: one of that name is defined by ``t`` or an enclosing query (a CTE's
    scope); the same name elsewhere in the statement, or schema-qualified, is a table."""
    if t.args.get("db"):
        return False
    name = t.name.lower()
    node = t.parent
    while node is not None:
        w = node.args.get("with_") or node.args.get("with")
        if isinstance(w, exp.With) and any(c.alias_or_name.lower() == name for c in w.expressions):
            return True
        node = node.parent
    return False


def _row_for_row(q: exp.Expression) -> exp.Table | None:
    """The one table a plain projection reads, or None when ``q`` is anything more."""
    if not isinstance(q, exp.Select):
        return None
    if any(v for k, v in q.args.items() if k not in ("expressions", "from", "from_")):
        return None  # a WITH, join, filter, grouping, limit, … (whatever sqlglot names them)
    src = q.args.get("from") or q.args.get("from_")
    if src is None or not isinstance(src.this, exp.Table):
        return None
    for e in q.expressions:
        if any(
            isinstance(x, (exp.AggFunc, exp.Window, exp.Subquery, exp.Select)) for x in e.walk()
        ):
            return None
    return src.this


def _insert_columns(stmt: exp.Insert) -> list[str] | None:
    target = stmt.this
    if isinstance(target, exp.Schema):
        return [e.name for e in target.expressions]
    return None


def _judge_insert(stmt: exp.Insert, st: _State) -> str | None:
    target = stmt.this.this if isinstance(stmt.this, exp.Schema) else stmt.this
    tname = target.name
    query = stmt.expression
    if stmt.args.get("alternative") or stmt.args.get("conflict") or stmt.args.get("ignore"):
        # OR IGNORE/REPLACE, ON CONFLICT: which row wins depends on the rows present
        if st.is_filtered(tname) or any(st.unreadable(t.name) for t in _tables(stmt)):
            return f"inserts into {tname} with a conflict clause"
    reads = [t for t in _tables(stmt) if t is not target]  # the query and any WITH before it
    bad = [t for t in reads if st.unreadable(t.name)]
    if not bad:
        if st.is_filtered(tname):
            return f"inserts new rows into the bounded table {tname}"
        return None
    with_ = stmt.args.get("with_") or stmt.args.get("with")
    src = _row_for_row(query) if query is not None and not with_ else None
    if src is None or len(reads) != 1:
        return f"reads the bounded table {bad[0].name} to insert into {tname}"
    cols = _insert_columns(stmt)
    if cols is None:
        return f"copies {src.name} into {tname} without naming the columns"
    fed = dict(zip((c.lower() for c in cols), query.expressions, strict=False))
    for k in st.keys.get(src.name.lower(), set()):
        e = fed.get(k)
        inner = e.this if isinstance(e, exp.Alias) else e
        if not (isinstance(inner, exp.Column) and inner.name.lower() == k):
            return f"copies {src.name} into {tname} without keeping its key column {k}"
    st.filtered.add(tname.lower())
    st.keys.setdefault(tname.lower(), set()).update(st.keys.get(src.name.lower(), set()))
    why = _triggers_again(st)  # one judged while tname was whole fires once per row copied
    return None if why is None else f"copies {src.name} into {tname}, which {why}"


def _judge_update(stmt: exp.Update, st: _State) -> str | None:
    target = stmt.this
    tname = target.name
    others = [t for t in _tables(stmt) if t is not target]
    bad = [t for t in others if st.unreadable(t.name)]
    if bad:
        return f"updates {tname} from the bounded table {bad[0].name}"
    if st.is_filtered(tname):
        keys = st.keys.get(tname.lower(), set()) | set(_ROWID_NAMES)
        for e in stmt.expressions:
            left = e.this if isinstance(e, exp.EQ) else None
            if not isinstance(left, exp.Column) or left.name.lower() in keys:
                return f"updates a key column of the bounded table {tname}"
    return None


def _judge_one(stmt: exp.Expression, text: str, st: _State) -> str | None:
    called = (
        (f.name if isinstance(f, exp.Anonymous) else f.sql_name()).lower()
        for f in stmt.find_all(exp.Func)
    )
    counters = sorted(set(called) & _ROW_COUNTERS)
    if counters and st.filtered:
        # the rows an earlier statement touched in a bounded table, counted in SQL
        return f"reads {counters[0]}() while a table is bounded"
    if isinstance(stmt, exp.Insert):
        return _judge_insert(stmt, st)
    if isinstance(stmt, exp.Update):
        return _judge_update(stmt, st)
    if isinstance(stmt, exp.Delete):
        bad = [t for t in _tables(stmt) if t is not stmt.this and st.unreadable(t.name)]
        return f"deletes by reading the bounded table {bad[0].name}" if bad else None
    if isinstance(stmt, exp.Create):
        kind = (stmt.args.get("kind") or "").upper()
        if kind in ("INDEX", "VIEW"):
            if kind == "VIEW":
                st.views.add(
                    stmt.this.name.lower()
                    if isinstance(stmt.this, exp.Table)
                    else stmt.this.this.name.lower()
                )
            return None
        if kind == "TABLE":
            name = stmt.this.this.name if isinstance(stmt.this, exp.Schema) else stmt.this.name
            if stmt.expression is not None:
                return _judge_insert(
                    exp.Insert(this=exp.to_table(name), expression=stmt.expression), st
                )
            st.filtered.discard(name.lower())
            return None
        if kind == "TRIGGER":
            return _judge_trigger(text, st)
        return f"runs {kind or 'CREATE'} (not judged)"
    if isinstance(stmt, exp.Drop):
        if (stmt.args.get("kind") or "").upper() == "TABLE":
            for t in stmt.args.get("tables") or [stmt.this]:
                st.filtered.discard(t.name.lower())
        return None
    if isinstance(stmt, exp.Alter):
        old = stmt.this.name.lower()
        for action in stmt.args.get("actions") or []:
            if isinstance(action, exp.AlterRename) and old in st.filtered:
                new = action.this.name.lower()
                st.filtered.discard(old)
                st.filtered.add(new)
                st.keys[new] = st.keys.get(old, set())
                why = _triggers_again(st)  # one judged while the new name was whole
                if why is not None:
                    return f"renames {stmt.this.name} to {action.this.name}, which {why}"
        return None
    if isinstance(stmt, exp.Pragma):
        return _judge_pragma(text)
    if isinstance(stmt, (exp.Query, exp.Subquery)):
        bad = [t for t in _tables(stmt) if st.unreadable(t.name)]
        return f"reads the bounded table {bad[0].name}" if bad else None
    if isinstance(stmt, exp.Transaction | exp.Commit | exp.Rollback):
        return None
    if isinstance(stmt, exp.Command):
        head = str(stmt.this).upper()
        if head in _HARMLESS_COMMANDS:
            return None
        if head == "CREATE" and re.match(r"\s*CREATE\s+(TEMP\w*\s+)?TRIGGER\b", text, re.I):
            return _judge_trigger(text, st)
        if head == "PRAGMA":
            return _judge_pragma(text)
        return f"runs {head} (not judged)"
    return f"runs {type(stmt).__name__} (not judged)"


def _judge_pragma(text: str) -> str | None:
    m = re.match(r"\s*PRAGMA\s+(?:\w+\s*\.\s*)?(\w+)", text, re.I)
    name = m.group(1) if m else "?"
    return f"runs PRAGMA {name}" if name.lower() in _DATA_PRAGMAS or m is None else None


def _judge_trigger(text: str, st: _State) -> str | None:
    st.triggers.append(text)
    return _trigger_hit(text, st)


def _triggers_again(st: _State) -> str | None:
    """Every trigger judged so far, judged again once a table has become bounded."""
    return next((why for t in st.triggers if (why := _trigger_hit(t, st)) is not None), None)


def _trigger_hit(text: str, st: _State) -> str | None:
    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text)}
    hit = sorted(words & (st.filtered | (st.views if st.filtered else set())))
    return f"has a trigger that names the bounded table {hit[0]}" if hit else None


def judge(
    statements: Iterable[str], copy: BoundedCopy, keys: Mapping[str, Iterable[str]]
) -> str | None:
    """None when the migrations that ran ``statements`` on ``copy`` left every needed row as a
    full copy would have (the module's rule); else why not, in a few words. ``keys``: more
    primary-key column names per table (the live schema's)."""
    st = _State(copy, keys)
    quiet = logging.getLogger("sqlglot")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # "falling back to parsing as a Command": judged as such
    try:
        return _judge_all([*copy.triggers, *statements], st)
    finally:
        quiet.setLevel(level)


def _judge_all(texts: list[str], st: _State) -> str | None:
    for text in texts:
        if not text or not text.strip():
            continue
        m = _DATA_PRAGMA_FUNCTION.search(text)
        if m:  # SELECT … FROM pragma_foreign_key_check(): rows across tables
            return f"a migration runs PRAGMA {m.group(1)}: {text.strip()[:80]}"
        if _TRIGGER.match(text):
            why = _judge_trigger(text, st)
            if why is not None:
                return f"the copy {why}: {text.strip()[:80]}"
            continue
        try:
            parsed = sqlglot.parse(text, read="sqlite")
        except sqlglot.errors.SqlglotError:
            return f"ran a statement the judge cannot read: {text.strip()[:80]}"
        for stmt in parsed:
            if stmt is None:
                continue
            try:
                why = _judge_one(stmt, text, st)
            except (AttributeError, TypeError, ValueError) as exc:  # a shape the rule never saw
                why = f"ran a statement the judge cannot read ({exc})"
            if why is not None:
                return f"a migration {why}: {text.strip()[:80]}"
    return None

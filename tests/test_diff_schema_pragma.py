"""The schema diff read off the PRAGMAs (:func:`recovery.compare.schemadiff.pragma_ops`, no alembic
import) is alembic's whenever it is used: on random pairs of schemas (tables and columns added,
removed, renamed; types, NOT NULL and defaults changed; rowid, WITHOUT ROWID, composite and no
primary keys) the ``recovery diff --json`` document is the same with and without it, and it steps
aside (alembic decides) whenever a shared column's declaration differs."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from unittest import mock

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import recovery.compare.schemadiff as schemadiff
from recovery.compare.diff import diff
from recovery.errors import RecoveryError

TYPES = ["INTEGER", "TEXT", "VARCHAR(20)", "VARCHAR(40)", "NUMERIC(10, 2)", "DATETIME", "REAL", ""]
DEFAULTS = [None, "0", "'x'", "CURRENT_TIMESTAMP"]
KEYS = ["rowid", "composite", "none", "without_rowid"]

column = st.tuples(st.sampled_from(TYPES), st.booleans(), st.sampled_from(DEFAULTS))
table_shape = st.tuples(
    st.sampled_from(KEYS), st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), column)
)


def _ddl(name: str, key: str, cols: dict[str, tuple[str, bool, str | None]]) -> str:
    parts = ['"id" INTEGER NOT NULL' if key != "rowid" else '"id" INTEGER PRIMARY KEY']
    for c, (typ, notnull, default) in sorted(cols.items()):
        parts.append(
            f'"{c}" {typ}'
            + (" NOT NULL" if notnull else "")
            + (f" DEFAULT {default}" if default else "")
        )
    if key == "composite":
        parts.append('PRIMARY KEY ("id", "k")')
        parts.insert(1, '"k" INTEGER NOT NULL')
    if key == "without_rowid":
        parts.append('PRIMARY KEY ("id")')
    tail = " WITHOUT ROWID" if key == "without_rowid" else ""
    return f'CREATE TABLE "{name}" ({", ".join(parts)}){tail}'


def _write(path: Path, tables: dict[str, tuple[str, dict[str, tuple[str, bool, str | None]]]]):
    conn = sqlite3.connect(path)
    for name, (key, cols) in tables.items():
        conn.execute(_ddl(name, key, cols))
        names = ["id", *(["k"] if key == "composite" else []), *sorted(cols)]
        for i in range(1, 4):
            values = [i, *([i] if key == "composite" else []), *[f"v{i}" for _ in cols]]
            marks = ", ".join("?" * len(names))
            quoted = ", ".join(f'"{n}"' for n in names)
            conn.execute(f'INSERT INTO "{name}" ({quoted}) VALUES ({marks})', values)
    conn.commit()
    conn.close()


def _mutate(draw, tables):
    """The live schema: the backup's with tables and columns dropped, added or re-declared."""
    out = {}
    for name, (key, cols) in tables.items():
        if draw(st.integers(0, 9)) == 0:
            continue  # table removed
        new_cols = {}
        for c, decl in cols.items():
            action = draw(st.sampled_from(["keep", "keep", "keep", "drop", "redeclare", "rename"]))
            if action == "keep":
                new_cols[c] = decl
            elif action == "redeclare":
                new_cols[c] = draw(column)
            elif action == "rename":
                new_cols[c + "_renamed"] = decl
        if draw(st.booleans()):
            new_cols["e"] = draw(column)
        out[name] = (key, new_cols)
    if draw(st.booleans()):
        out["added"] = draw(table_shape)
    return out


def _outcome(tmp: Path) -> object:
    """The ``--json`` document, or the refusal's message (a pair with no table in common)."""
    try:
        return diff(tmp / "old.db", tmp / "new.db").to_dict()
    except RecoveryError as exc:
        return ("refused", str(exc), exc.exit_code)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    old=st.dictionaries(st.sampled_from(["t1", "t2", "t3"]), table_shape, min_size=1),
    data=st.data(),
)
def test_pragma_schema_diff_is_alembics(tmp_path_factory, old, data):
    new = _mutate(data.draw, old)
    tmp = tmp_path_factory.mktemp("pair")
    _write(tmp / "old.db", old)
    _write(tmp / "new.db", new)
    calls: list[object] = []
    real = schemadiff.pragma_ops

    def spy(o, n):  # type: ignore[no-untyped-def]
        calls.append(ops := real(o, n))
        return ops

    with mock.patch.object(schemadiff, "pragma_ops", spy):
        fast = _outcome(tmp)
    with mock.patch.object(schemadiff, "pragma_ops", lambda o, n: None):
        slow = _outcome(tmp)
    assert fast == slow
    if not calls:  # refused before the schema diff (e.g. an empty live file): nothing to compare
        return
    redeclared = any(
        old[t][1][c] != new[t][1][c]
        for t in old.keys() & new.keys()
        for c in old[t][1].keys() & new[t][1].keys()
    )
    assert (calls[0] is None) == redeclared


def test_identical_or_reshaped_schemas_do_not_import_alembic(world: Path) -> None:
    """The sample world (tables and columns added and removed, no column re-declared) is diffed
    without importing alembic: its import is a third of the command's start-up."""
    backup = next(world.glob("gestima.db.bak.*"))
    code = (
        "import sys; from recovery.compare.diff import diff; "
        f"d = diff({str(backup)!r}, {str(world / 'gestima.db')!r}); "
        "print(sum(d.to_dict()['totals'].values()), 'alembic' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    total, imported = out.stdout.split()
    assert int(total) > 0
    assert imported == "False"

"""`recovery diff`: schema and row diff of a backup against the live DB (real SQLite files)."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recovery.cli import main
from recovery.compare.diff import diff
from recovery.errors import RecoveryError


def sha(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def build(
    path: Path, script: str, rows: dict[str, list[tuple]] | None = None, wal: bool = False
) -> Path:
    conn = sqlite3.connect(path)
    if wal:
        conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(script)
    for tname, values in (rows or {}).items():
        if values:
            marks = ",".join("?" * len(values[0]))
            conn.executemany(f'INSERT INTO "{tname}" VALUES ({marks})', values)
    conn.commit()
    conn.close()
    return path


def run(*args: str | Path) -> tuple[int, str, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert "Traceback" not in res.output + res.stderr, res.output + res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise res.exception
    return res.exit_code, res.stdout, res.stderr


def run_json(*args: str | Path) -> tuple[int, dict]:
    code, out, err = run("diff", *args, "--json")
    assert code in (0, 1), err
    return code, json.loads(out)


PARTS = "CREATE TABLE parts (id INTEGER PRIMARY KEY, name TEXT NOT NULL, price REAL, qty INTEGER);"


@pytest.fixture()
def basic(tmp_path: Path) -> tuple[Path, Path]:
    rows = [(i, f"p{i}", i * 1.25, i) for i in range(1, 11)]
    old = build(tmp_path / "app.db.bak", PARTS, {"parts": rows})
    new = build(tmp_path / "app.db", PARTS, {"parts": rows})
    conn = sqlite3.connect(new)
    conn.executemany(
        "INSERT INTO parts VALUES (?, ?, ?, ?)",
        [(11, "n11", 1.0, 1), (12, "n12", 2.0, 2), (13, "n13", None, 3)],
    )
    conn.execute("UPDATE parts SET price = 99.5 WHERE id = 2")
    conn.execute("UPDATE parts SET name = 'renamed', qty = NULL WHERE id = 3")
    conn.execute("UPDATE parts SET price = price WHERE id = 4")  # a no-op write is not an edit
    conn.execute("DELETE FROM parts WHERE id IN (9, 10)")
    conn.commit()
    conn.close()
    return old, new


def test_counts_exact_and_exit_code(basic):
    old, new = basic
    code, data = run_json(old, new)
    assert code == 1
    t = data["tables"]["parts"]
    assert (t["inserted"], t["updated"], t["deleted"]) == (3, 2, 2)
    assert t["key"] == ["id"] and t["keyed_by"] == "primary key"
    assert set(data) >= {"schema", "tables"}
    assert data["totals"] == {"inserted": 3, "updated": 2, "deleted": 2}

    res = diff(old, new, rows=True)
    tc = res.changes.tables["parts"]
    assert sorted(r.key for r in tc.rows if r.kind == "inserted") == [(11,), (12,), (13,)]
    assert sorted(r.key for r in tc.rows if r.kind == "deleted") == [(9,), (10,)]
    upd = {
        r.key: {c.column: (c.old, c.new) for c in r.cells} for r in tc.rows if r.kind == "updated"
    }
    assert upd == {
        (2,): {"price": (2.5, 99.5)},
        (3,): {"name": ("p3", "renamed"), "qty": (3, None)},
    }


def test_identical_exit_0(tmp_path):
    rows = [(1, "a", 1.0, 1)]
    old = build(tmp_path / "a.db", PARTS, {"parts": rows})
    new = build(tmp_path / "b.db", PARTS, {"parts": rows})
    code, _out, _ = run("diff", old, new)
    assert code == 0
    code, data = run_json(old, new)
    assert code == 0 and data["tables"]["parts"]["updated"] == 0


def test_rows_json_and_csv(basic):
    old, new = basic
    _, data = run_json(old, new, "--rows")
    rows = data["tables"]["parts"]["rows"]
    assert len(rows) == 7
    by_key = {(r["kind"], tuple(r["key"])): r for r in rows}
    assert by_key[("updated", (2,))]["changes"] == {"price": {"old": 2.5, "new": 99.5}}
    assert by_key[("updated", (3,))]["changes"] == {
        "name": {"old": "p3", "new": "renamed"},
        "qty": {"old": 3, "new": None},
    }
    code, out, _ = run("diff", old, new, "--csv")
    assert code == 1
    parsed = list(csv.DictReader(io.StringIO(out)))
    assert len(parsed) == 7  # one row per changed row
    upd = next(r for r in parsed if r["kind"] == "updated" and json.loads(r["key"]) == [2])
    assert upd["table"] == "parts" and upd["columns"] == "price"
    assert json.loads(upd["old"]) == {"price": 2.5} and json.loads(upd["new"]) == {"price": 99.5}


def test_default_table_output_and_rows(basic):
    old, new = basic
    code, out, _ = run("diff", old, new, "--rows")
    assert code == 1
    assert "parts" in out and "99.5" in out


def test_composite_primary_key(tmp_path):
    script = "CREATE TABLE lines (order_id INTEGER, line_no INTEGER, qty INTEGER, PRIMARY KEY (order_id, line_no));"
    rows = [(o, n, o * n) for o in (1, 2) for n in (1, 2, 3)]
    old = build(tmp_path / "old.db", script, {"lines": rows})
    new = build(tmp_path / "new.db", script, {"lines": rows})
    conn = sqlite3.connect(new)
    conn.execute("INSERT INTO lines VALUES (1, 4, 7)")  # same order, new line
    conn.execute("INSERT INTO lines VALUES (3, 1, 7)")
    conn.execute("UPDATE lines SET qty = 100 WHERE order_id = 2 AND line_no = 1")
    conn.execute("DELETE FROM lines WHERE order_id = 1 AND line_no = 2")
    conn.commit()
    conn.close()
    _, data = run_json(old, new, "--rows")
    t = data["tables"]["lines"]
    assert t["key"] == ["order_id", "line_no"]
    assert (t["inserted"], t["updated"], t["deleted"]) == (2, 1, 1)
    upd = [r for r in t["rows"] if r["kind"] == "updated"]
    assert upd == [
        {
            "kind": "updated",
            "key": [2, 1],
            "after_deploy": None,
            "changes": {"qty": {"old": 2, "new": 100}},
        }
    ]


def test_table_without_primary_key(tmp_path):
    script = "CREATE TABLE audit (who TEXT, what TEXT, n INTEGER);"
    rows = [("a", "x", 1), ("b", "y", 2), ("c", None, 3)]
    old = build(tmp_path / "old.db", script, {"audit": rows})
    new = build(tmp_path / "new.db", script, {"audit": rows})
    conn = sqlite3.connect(new)
    conn.execute("INSERT INTO audit VALUES ('d', 'z', 4)")
    conn.execute(
        "UPDATE audit SET n = 20 WHERE who = 'b'"
    )  # without a key: a delete plus an insert
    conn.commit()
    conn.close()
    _, data = run_json(old, new)
    t = data["tables"]["audit"]
    assert t["keyed_by"] == "all columns"
    assert t["key"] == ["who", "what", "n"]
    assert (t["inserted"], t["updated"], t["deleted"]) == (2, 0, 1)  # the NULL row matches itself
    _code, out, _ = run("diff", old, new)
    words = " ".join(w for w in out.replace("│", " ").split())  # rich wraps the note cell
    assert "no primary key: keyed by all columns" in words


def test_table_without_primary_key_duplicates(tmp_path):
    script = "CREATE TABLE audit (who TEXT, n INTEGER);"
    old = build(tmp_path / "old.db", script, {"audit": [("a", 1), ("a", 1), ("b", 2)]})
    new = build(tmp_path / "new.db", script, {"audit": [("a", 1), ("b", 2), ("b", 2), ("b", 2)]})
    _, data = run_json(old, new)
    t = data["tables"]["audit"]
    assert (t["inserted"], t["deleted"]) == (2, 1)


RENAME_OLD = "CREATE TABLE quotes (id INTEGER PRIMARY KEY, customer TEXT, total REAL);"
RENAME_NEW = "CREATE TABLE quotes (id INTEGER PRIMARY KEY, customer_name TEXT, total REAL);"


def test_rename_detected_with_share(tmp_path):
    rows = [(i, f"cust{i}", float(i)) for i in range(1, 21)]
    old = build(tmp_path / "old.db", RENAME_OLD, {"quotes": rows})
    new_rows = [*rows[:19], (20, "changed", 20.0), (21, "new", 1.0)]
    new = build(tmp_path / "new.db", RENAME_NEW, {"quotes": new_rows})
    _, data = run_json(old, new, "--rows")
    (ren,) = data["schema"]["renames"]
    assert (ren["table"], ren["old"], ren["new"], ren["source"]) == (
        "quotes",
        "customer",
        "customer_name",
        "rename-detected",
    )
    assert ren["share"] == pytest.approx(19 / 20) and ren["rows_compared"] == 20
    t = data["tables"]["quotes"]
    assert (t["inserted"], t["updated"], t["deleted"]) == (1, 1, 0)
    assert t["rows"][1]["changes"] == {"customer": {"old": "cust20", "new": "changed"}} or any(
        r["changes"] == {"customer": {"old": "cust20", "new": "changed"}} for r in t["rows"]
    )


def test_rename_detected_composite_key(tmp_path):
    o = "CREATE TABLE m (a INTEGER, b TEXT, label TEXT, PRIMARY KEY (a, b));"
    n = "CREATE TABLE m (a INTEGER, b TEXT, title TEXT, PRIMARY KEY (a, b));"
    rows = [(i, s, f"L{i}{s}") for i in range(5) for s in ("x", "y")]
    old = build(tmp_path / "old.db", o, {"m": rows})
    new = build(tmp_path / "new.db", n, {"m": rows})
    _, data = run_json(old, new)
    (ren,) = data["schema"]["renames"]
    assert (ren["old"], ren["new"], ren["share"], ren["rows_compared"]) == (
        "label",
        "title",
        1.0,
        10,
    )
    assert data["tables"]["m"]["updated"] == 0


def test_rename_declared_by_mapping(tmp_path):
    rows = [(i, f"cust{i}", float(i)) for i in range(1, 11)]
    old = build(tmp_path / "old.db", RENAME_OLD, {"quotes": rows})
    # the migration also upper-cased the names: values do not agree, nothing is detected
    new = build(
        tmp_path / "new.db", RENAME_NEW, {"quotes": [(i, c.upper(), t) for i, c, t in rows]}
    )
    _, data = run_json(old, new)
    assert data["schema"]["renames"] == []
    assert "customer" in data["tables"]["quotes"]["uncompared_columns"]
    mapping = tmp_path / "map.toml"
    mapping.write_text('[tables.quotes.columns]\ncustomer = "customer_name"\n')
    # the data contradict the declared rename: refused, unless the operator trusts it
    code, _, err = run("diff", old, new, "--mapping", mapping, "--json")
    assert code == 2 and "quotes.customer" in err and "0 of 10 unchanged rows agree" in err
    _, data = run_json(old, new, "--mapping", mapping, "--trust-mapping")
    (ren,) = data["schema"]["renames"]
    assert (ren["old"], ren["new"], ren["source"]) == ("customer", "customer_name", "user-mapping")
    assert data["tables"]["quotes"]["updated"] == 10  # the values really differ
    mapping.write_text('[tables.quotes.columns]\ncustomer = "lower(customer_name)"\n')
    _, data = run_json(old, new, "--mapping", mapping)
    assert data["tables"]["quotes"]["updated"] == 0


PRICE_OLD = "CREATE TABLE parts (id INTEGER PRIMARY KEY, name TEXT, price REAL);"
PRICE_NEW = "CREATE TABLE parts (id INTEGER PRIMARY KEY, name TEXT, price_cents INTEGER);"


def test_mapping_expression_rewritten_rows_not_updated(tmp_path):
    rows = [(i, f"p{i}", i * 1.25) for i in range(1, 21)]
    old = build(tmp_path / "old.db", PRICE_OLD, {"parts": rows})
    new_rows = [(i, n, round(p * 100)) for i, n, p in rows]
    new_rows[4] = (5, "p5", 999)  # a real edit after the deploy: 9.99
    new = build(tmp_path / "new.db", PRICE_NEW, {"parts": new_rows})
    mapping = tmp_path / "map.toml"
    mapping.write_text('[tables.parts.columns]\nprice = "price_cents / 100.0"\n')
    _, data = run_json(old, new, "--mapping", mapping, "--rows")
    t = data["tables"]["parts"]
    assert t["updated"] == 1
    assert t["rows"] == [
        {
            "kind": "updated",
            "key": [5],
            "after_deploy": None,
            "changes": {"price": {"old": 6.25, "new": 9.99}},
        }
    ]
    rule = next(r for r in data["mapping"]["parts"]["columns"] if r["column"] == "price")
    assert rule["source"] == "user-mapping"


def test_mapping_skip(tmp_path):
    rows = [(i, f"p{i}", 1.0) for i in range(3)]
    old = build(tmp_path / "old.db", PRICE_OLD, {"parts": rows})
    new = build(tmp_path / "new.db", PRICE_OLD, {"parts": rows[:1]})
    mapping = tmp_path / "map.toml"
    mapping.write_text("[tables.parts]\nskip = true\n")
    _, data = run_json(old, new, "--mapping", mapping)
    assert data["tables"]["parts"]["status"].startswith("skipped")
    assert data["tables"]["parts"]["deleted"] == 0


TS = "CREATE TABLE events (id INTEGER PRIMARY KEY, body TEXT, created_at {t}, updated_at {t});"


@pytest.mark.parametrize(
    ("coltype", "before", "after", "since"),
    [
        ("DATETIME", "2026-11-20 13:00:00", "2026-11-20 15:00:00", "2026-11-20 14:00:00"),
        ("DATETIME", "2026-11-20T13:00:00", "2026-11-20T15:00:00.123456", "2026-11-20T14:00:00"),
        ("TEXT", "2026-11-20T13:00:00+00:00", "2026-11-20T15:00:00Z", "2026-11-20T15:30:00+01:00"),
        ("INTEGER", 1795179600, 1795186800, "1795183200"),  # epoch seconds
        ("INTEGER", 1795179600000, 1795186800000, "2026-11-20T14:00:00"),  # epoch millis
    ],
)
def test_since_splits_before_after(tmp_path, coltype, before, after, since):
    script = TS.format(t=coltype)
    rows = [(1, "a", before, before), (2, "b", before, before), (3, "c", before, before)]
    old = build(tmp_path / "old.db", script, {"events": rows})
    new = build(tmp_path / "new.db", script, {"events": rows})
    conn = sqlite3.connect(new)
    conn.execute("INSERT INTO events VALUES (4, 'late', ?, ?)", (after, after))
    conn.execute("INSERT INTO events VALUES (5, 'early', ?, ?)", (before, before))
    conn.execute("UPDATE events SET body = 'x', updated_at = ? WHERE id = 1", (after,))
    conn.execute("UPDATE events SET body = 'y' WHERE id = 2")  # timestamp untouched: before
    conn.commit()
    conn.close()
    _, data = run_json(old, new, "--since", since, "--rows")
    t = data["tables"]["events"]
    assert (t["inserted"], t["updated"]) == (2, 2)
    assert t["after_deploy"] == {"inserted": 1, "updated": 1}
    assert t["timestamp_columns"] == {"created": "created_at", "updated": "updated_at"}
    flags = {(r["kind"], r["key"][0]): r["after_deploy"] for r in t["rows"]}
    assert flags == {
        ("inserted", 4): True,
        ("inserted", 5): False,
        ("updated", 1): True,
        ("updated", 2): False,
    }


def test_since_from_manifest_and_tables_without_timestamps(tmp_path):
    from recovery.capture.snapshot import snapshot
    from datetime import datetime

    script = TS.format(t="DATETIME") + PARTS
    src = build(
        tmp_path / "app.db",
        script,
        {"events": [(1, "a", "2026-11-20 13:00:00", None)], "parts": [(1, "a", 1.0, 1)]},
    )
    snap = snapshot(src, tmp_path / "bk", now=datetime(2026, 11, 20, 14, 0, 0))
    conn = sqlite3.connect(src)
    conn.execute("INSERT INTO events VALUES (2, 'b', '2026-11-20 14:30:00', NULL)")
    conn.execute("INSERT INTO parts VALUES (2, 'b', 2.0, 2)")
    conn.commit()
    conn.close()
    _, data = run_json(snap.backup, src)
    assert data["since"] == "2026-11-20T14:00:00"
    assert data["tables"]["events"]["after_deploy"]["inserted"] == 1
    assert data["tables"]["parts"]["inserted"] == 1  # no timestamps: still diffed completely
    assert "timestamp_columns" not in data["tables"]["parts"]


@pytest.mark.parametrize(
    "since", ["yesterday", "2026-13-45", "", "12:00 tomorrow", "nan", "inf", "1e400"]
)
def test_malformed_since_exit_2(basic, since):
    old, new = basic
    code, out, err = run("diff", old, new, "--since", since)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and err.startswith("error:")
    assert out == ""


def test_table_filter(tmp_path):
    script = PARTS + "CREATE TABLE other (id INTEGER PRIMARY KEY, v TEXT);"
    old = build(tmp_path / "old.db", script, {"parts": [(1, "a", 1.0, 1)], "other": [(1, "x")]})
    new = build(
        tmp_path / "new.db", script, {"parts": [(1, "a", 2.0, 1)], "other": [(1, "x"), (2, "y")]}
    )
    _, data = run_json(old, new, "--table", "other")
    assert list(data["tables"]) == ["other"]
    assert data["tables"]["other"]["inserted"] == 1
    _, data = run_json(old, new, "--table", "other", "--table", "parts")
    assert sorted(data["tables"]) == ["other", "parts"]
    code, _, err = run("diff", old, new, "--table", "nope")
    assert code == 2 and "nope" in err


def test_schema_diff_tables_columns_types(tmp_path):
    old = build(
        tmp_path / "old.db",
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT, y INTEGER NOT NULL DEFAULT 0, gone TEXT);"
        "CREATE TABLE removed (id INTEGER PRIMARY KEY);",
        {"a": [(1, "q", 1, "z")], "removed": [(1,)]},
    )
    new = build(
        tmp_path / "new.db",
        "CREATE TABLE a (id INTEGER PRIMARY KEY, x VARCHAR(20), y INTEGER DEFAULT 5, extra REAL);"
        "CREATE TABLE added (id INTEGER PRIMARY KEY);",
        {"a": [(1, "q", 1, 2.5)], "added": [(1,), (2,)]},
    )
    code, data = run_json(old, new)
    assert code == 1
    s = data["schema"]
    assert s["tables_added"] == ["added"] and s["tables_removed"] == ["removed"]
    assert s["columns_added"] == {"a": ["extra"]} and s["columns_removed"] == {"a": ["gone"]}
    kinds = {(c["column"], c["kind"]) for c in s["columns_changed"]}
    assert {("x", "type"), ("y", "nullable"), ("y", "default")} <= kinds
    assert (
        data["tables"]["added"]["inserted"] == 2
        and data["tables"]["added"]["status"] == "new table"
    )
    assert data["tables"]["removed"]["status"] == "removed table"
    assert data["tables"]["a"]["updated"] == 0


def test_never_writes_live_wal_db_or_backup(tmp_path, basic):
    old, _ = basic
    live = build(
        tmp_path / "live.db",
        PARTS,
        {"parts": [(i, f"p{i}", i * 1.25, i) for i in range(1, 11)]},
        wal=True,
    )
    writer = sqlite3.connect(live)
    writer.execute("PRAGMA wal_autocheckpoint=0")
    writer.execute("INSERT INTO parts VALUES (50, 'in-wal', 1.0, 1)")
    writer.execute("UPDATE parts SET qty = 77 WHERE id = 1")
    writer.commit()
    try:
        files = [old, live, live.with_name("live.db-wal")]
        before = [sha(f) for f in files]
        assert before[2] is not None
        for extra in ([], ["--rows"], ["--csv"], ["--json", "--rows"]):
            code, _, _ = run("diff", old, live, *extra)
            assert code == 1
        _, data = run_json(old, live)
        assert data["tables"]["parts"]["inserted"] == 1  # the commit still in -wal is seen
        assert data["tables"]["parts"]["updated"] == 1
        assert [sha(f) for f in files] == before
        assert not old.with_name(old.name + "-journal").exists()
    finally:
        writer.close()


def test_identifiers_quotes_spaces_unicode_keywords(tmp_path):
    script = (
        'CREATE TABLE "order" ("select" INTEGER PRIMARY KEY, "we""ird col" TEXT, "název" TEXT, "group" INTEGER);'
        'CREATE TABLE "my table" ("key part" INTEGER, "ключ" TEXT, val TEXT, PRIMARY KEY ("key part", "ключ"));'
    )
    rows = {
        "order": [(1, 'a"b', "čaj", 1), (2, "x y", "káva", 2)],
        "my table": [(1, "я", "v"), (2, "ты", "w")],
    }
    old = build(tmp_path / "old db.sqlite", script, rows)
    new = build(tmp_path / "nový.db", script, rows)
    conn = sqlite3.connect(new)
    conn.execute(
        'UPDATE "order" SET "we""ird col" = \'changed\', "název" = NULL WHERE "select" = 1'
    )
    conn.execute("INSERT INTO \"order\" VALUES (3, '; DROP TABLE \"order\"; --', 'x', 3)")
    conn.execute('DELETE FROM "my table" WHERE "ключ" = \'ты\'')
    conn.commit()
    conn.close()
    code, data = run_json(old, new, "--rows", "--table", "order", "--table", "my table")
    t = data["tables"]["order"]
    assert (t["inserted"], t["updated"], t["deleted"]) == (1, 1, 0)
    (upd,) = [r for r in t["rows"] if r["kind"] == "updated"]
    assert upd["changes"] == {
        'we"ird col': {"old": 'a"b', "new": "changed"},
        "název": {"old": "čaj", "new": None},
    }
    assert data["tables"]["my table"]["deleted"] == 1
    assert data["tables"]["my table"]["key"] == ["key part", "ключ"]
    code, out, _ = run("diff", old, new, "--csv")
    assert code == 1 and "název" in out
    code, out, _ = run("diff", old, new, "--rows")
    assert code == 1


def test_rename_with_weird_identifiers(tmp_path):
    old = build(
        tmp_path / "o.db",
        'CREATE TABLE "t t" (id INTEGER PRIMARY KEY, "stará ""x""" TEXT);',
        {"t t": [(1, "a"), (2, "b")]},
    )
    new = build(
        tmp_path / "n.db",
        'CREATE TABLE "t t" (id INTEGER PRIMARY KEY, "nová x" TEXT);',
        {"t t": [(1, "a"), (2, "b")]},
    )
    _, data = run_json(old, new)
    (ren,) = data["schema"]["renames"]
    assert (ren["old"], ren["new"]) == ('stará "x"', "nová x")
    m = tmp_path / "m.toml"
    m.write_text('[tables."t t".columns]\n\'stará "x"\' = \'upper("nová x")\'\n')
    _, data = run_json(old, new, "--mapping", m)
    assert data["tables"]["t t"]["updated"] == 2


# ---- hostile and broken inputs: one line on stderr, exit 2, nothing written -------------------


def _bad_file(tmp_path: Path, kind: str) -> Path:
    p = tmp_path / f"bad-{kind}.db"
    if kind == "missing":
        return p
    if kind == "dir":
        p.mkdir()
    elif kind == "empty":
        p.write_bytes(b"")
    elif kind == "text":
        p.write_text("id,name\n1,hello\n" * 50)
    elif kind == "header-only":
        p.write_bytes(b"SQLite format 3\x00")
    elif kind == "truncated":
        build(p, PARTS, {"parts": [(i, "x" * 200, 1.0, i) for i in range(300)]})
        p.write_bytes(p.read_bytes()[:9000])
    elif kind == "corrupt":
        build(p, PARTS, {"parts": [(i, "x" * 200, 1.0, i) for i in range(300)]})
        data = bytearray(p.read_bytes())
        for off in range(4096, len(data), 97):
            data[off] = 0xA5
        p.write_bytes(bytes(data))
    elif kind == "garbage-page1":
        build(p, PARTS, {"parts": [(1, "x", 1.0, 1)]})
        data = bytearray(p.read_bytes())
        data[100:4096] = b"\xff" * (4096 - 100)
        p.write_bytes(bytes(data))
    return p


BAD = ["missing", "dir", "empty", "text", "header-only", "truncated", "corrupt", "garbage-page1"]


@pytest.mark.parametrize("kind", BAD)
@pytest.mark.parametrize("side", ["backup", "live"])
def test_bad_database_files_exit_2(tmp_path, basic, kind, side):
    old, new = basic
    bad = _bad_file(tmp_path, kind)
    before = {f: sha(f) for f in (old, new) if f.is_file()}
    bad_before = sha(bad) if bad.is_file() else None
    args = (bad, new) if side == "backup" else (old, bad)
    for extra in ([], ["--json"], ["--rows"]):
        code, out, err = run("diff", *args, *extra)
        assert code == 2, (kind, side, out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("error:"), err
    assert {f: sha(f) for f in before} == before
    if bad_before is not None:
        assert sha(bad) == bad_before


def test_no_table_in_common_exit_2(tmp_path):
    old = build(tmp_path / "a.db", "CREATE TABLE a (id INTEGER PRIMARY KEY);")
    new = build(tmp_path / "b.db", "CREATE TABLE b (id INTEGER PRIMARY KEY);")
    code, _, err = run("diff", old, new)
    assert code == 2 and "no table in common" in err


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("[tables.parts.columns\nprice = 'x'", "TOML"),
        ('[tables.parts.columns]\nprice = "nosuch / 100.0"\n', "nosuch"),
        ('[tables.parts.columns]\nnosuch = "price_cents"\n', "nosuch"),
        ('[tables.nosuch.columns]\nprice = "price_cents"\n', "nosuch"),
        ('[tables.parts.columns]\nprice = "price_cents); DROP TABLE parts; --"\n', "price"),
        ('[tables.parts.columns]\nprice = "price_cents; DROP TABLE parts"\n', "price"),
        ('[tables.parts.columns]\nprice = "(SELECT 1)"\n', "price"),
        ('[tables.parts.columns]\nprice = "other.price_cents"\n', "price"),
        ("[tables.parts.columns]\nprice = 5\n", "price"),
        ('[tables.parts.columns]\nprice = ""\n', "price"),
        ('[tables.parts]\nskip = "yes"\n', "skip"),
        ("[tables.parts]\nbogus = 1\n", "parts"),
        ("[other]\nx = 1\n", "tables"),
        ("[tables.parts.columns]\nprice = \"load_extension('x')\"\n", "load_extension"),
        ('[tables.parts.columns]\nprice = "nosuchfunc(price_cents)"\n', "nosuchfunc"),
        ("[tables.parts.columns]\nprice = \"LOAD_EXTENSION('/tmp/x.so', 'init')\"\n", "price"),
        ('[tables.parts.columns]\nprice = "price_cents / 100.0 -- comment"\n', None),
    ],
)
def test_bad_mapping_exit_2(tmp_path, content, needle):
    old = build(tmp_path / "old.db", PRICE_OLD, {"parts": [(1, "a", 1.5)]})
    new = build(tmp_path / "new.db", PRICE_NEW, {"parts": [(1, "a", 150)]})
    before = sha(old), sha(new)
    m = tmp_path / "m.toml"
    m.write_text(content)
    code, out, err = run("diff", old, new, "--mapping", m, "--json")
    if needle is None:  # a trailing comment is harmless
        assert code == 1, err  # the schema differs; the rows do not
        assert json.loads(out)["tables"]["parts"]["updated"] == 0
        return
    assert code == 2, (out, err)
    assert len(err.strip().splitlines()) == 1 and needle.lower() in err.lower()
    assert (sha(old), sha(new)) == before
    conn = sqlite3.connect(new)
    assert conn.execute("SELECT count(*) FROM parts").fetchone()[0] == 1
    conn.close()


def test_missing_mapping_file_and_both_formats_exit_2(basic, tmp_path):
    old, new = basic
    code, _, err = run("diff", old, new, "--mapping", tmp_path / "none.toml")
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run("diff", old, new, "--json", "--csv")
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_library_raises_recovery_error(tmp_path):
    with pytest.raises(RecoveryError):
        diff(tmp_path / "nope.db", tmp_path / "nope2.db")


# ---- property: counts equal the ground truth --------------------------------------------------

ops = st.lists(
    st.tuples(
        st.sampled_from(["insert", "update", "delete"]),
        st.integers(0, 40),
        st.one_of(st.none(), st.integers(-3, 3), st.text(max_size=3)),
        st.sampled_from(["a", "b", "c"]),
    ),
    max_size=40,
)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    initial=st.dictionaries(
        st.integers(0, 30),
        st.tuples(
            st.one_of(st.none(), st.integers(-3, 3)),
            st.one_of(st.none(), st.text(max_size=3)),
            st.floats(allow_nan=False, width=32) | st.none(),
        ),
        max_size=25,
    ),
    changes=ops,
)
def test_property_counts_match_ground_truth(tmp_path_factory, initial, changes):
    d = tmp_path_factory.mktemp("prop")
    script = "CREATE TABLE t (id INTEGER PRIMARY KEY, a INTEGER, b TEXT, c REAL);"
    rows = [(k, *v) for k, v in sorted(initial.items())]
    old = build(d / "old.db", script, {"t": rows})
    state = {k: list(v) for k, v in initial.items()}
    for op, k, value, colname in changes:
        if op == "insert" and k not in state:
            state[k] = [None, None, None]
        elif op == "update" and k in state:
            idx = "abc".index(colname)
            if colname == "c" and isinstance(value, str):
                value = None
            state[k][idx] = value
        elif op == "delete":
            state.pop(k, None)
    new = build(d / "new.db", script, {"t": [(k, *v) for k, v in sorted(state.items())]})
    conn = sqlite3.connect(new)
    stored_new = {r[0]: r[1:] for r in conn.execute("SELECT id, a, b, c FROM t")}
    conn.close()
    conn = sqlite3.connect(old)
    stored_old = {r[0]: r[1:] for r in conn.execute("SELECT id, a, b, c FROM t")}
    conn.close()

    def same(x, y):
        return (x is None and y is None) or (
            x is not None and y is not None and type(x) is type(y) and x == y
        )

    inserted = len(set(stored_new) - set(stored_old))
    deleted = len(set(stored_old) - set(stored_new))
    updated = sum(
        1
        for k in set(stored_old) & set(stored_new)
        if not all(same(x, y) for x, y in zip(stored_old[k], stored_new[k], strict=True))
    )
    res = diff(old, new, rows=True)
    t = res.changes.tables["t"]
    assert (t.inserted, t.updated, t.deleted) == (inserted, updated, deleted)
    assert len(t.rows) == inserted + updated + deleted

"""``recovery apply-deletes``: after review, re-apply the deletes users made after the deploy.

A rollback brings back every row deleted after the deploy (the backup still has it) and lists it
in ``deletes_for_review.csv`` instead of deleting it again. Once a person has reviewed the list,
this module deletes the listed rows (all of them, or the subset in ``--only FILE.csv``) from the
run's database:

* plan: the candidates are the bundle's backup images of rows deleted after the deploy
  (``base.db``, kind ``deleted``), filtered by the reviewed CSV;
* each candidate is judged set-based inside SQLite: already applied by an earlier run (recorded
  in ``_recovery_deletes_applied``), already gone, changed since the backup (an
  ``update_deleted`` conflict: somebody edited the row since, so it is kept), still referenced
  by a row that stays (a ``constraint`` conflict: the delete would break a foreign key), or
  deleted;
* apply: one ``BEGIN IMMEDIATE`` transaction on the database, after a consistent safety copy in
  the run folder, children before parents, with foreign keys OFF (``ON DELETE CASCADE`` never
  fires: only unreferenced rows are deleted) and the application's triggers suspended (dropped
  and re-created byte-identical in the same transaction); the applied keys are recorded in the
  same transaction, so a second run is a no-op; ``foreign_key_check`` of the referencing tables
  must not get worse, or everything rolls back.

It is meant to run while the old release serves users: no file is replaced, and the write lock
is held for one short transaction.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.bundle.store import Bundle, open_bundle
from recovery.runfolder import check_run_folder
from recovery.engine.base import is_postgres_url
from recovery.errors import ExitCode, RecoveryError
from recovery.model.kinds import KIND_COLUMN as KIND
from recovery.model.kinds import ConflictKind, Resolution
from recovery.model.outcome import Conflict, decode_value, encode_value
from recovery.model.spill import LazyMap, SpillList
from recovery.engine.schema import APPLIED_DELETES_TABLE, Schema, Table, reflect
from recovery.engine.sqlbuild import and_all, col, is_same, sql, table
from recovery.engine import open_engine
from recovery.engine.base import Engine
from recovery.engine.sqlite import SQLiteEngine
from recovery.engine.sqlite_io import file_uri
from recovery.engine.timebound import statement_time_limit

RESULT_FILE = "deletes_applied.json"
BASE = "rb"
"""Alias under which the bundle's ``base.db`` (backup images) is attached, read-only."""

# the CSV writers neutralise a cell that a spreadsheet would run as a formula with a leading "'"
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


@dataclass(frozen=True)
class DeleteItem:
    table: str
    key: tuple[Any, ...]


def _encode_item(i: DeleteItem) -> str:
    return json.dumps([i.table, encode_value(i.key)], ensure_ascii=False)


def _decode_item(text: str) -> DeleteItem:
    name, key = json.loads(text)
    return DeleteItem(name, decode_value(key))


def _encode_key(key: tuple[Any, ...]) -> str:
    return json.dumps(encode_value(key), ensure_ascii=False)


def _decode_key(text: str) -> tuple[Any, ...]:
    key = decode_value(json.loads(text))
    assert isinstance(key, tuple)
    return key


def items_list(items: Iterable[DeleteItem] = ()) -> SpillList[DeleteItem]:
    """A list of delete items held in bounded memory (one per post-deploy delete: hundreds of
    thousands at 10M rows), items spilled past the first few thousand."""
    return SpillList(items, encode=_encode_item, decode=_decode_item)


def _conflicts_list() -> SpillList[Conflict]:
    def encode(c: Conflict) -> str:
        return json.dumps({k: encode_value(v) for k, v in c.to_dict().items()}, ensure_ascii=False)

    def decode(text: str) -> Conflict:
        vals = {k: decode_value(v) for k, v in json.loads(text).items()}
        vals["key"] = tuple(vals["key"])
        return Conflict(**vals)

    return SpillList(encode=encode, decode=decode)


@dataclass
class DeletesResult:
    run_dir: Path
    target: Path
    bundle_id: str
    dry_run: bool
    selected: int = 0
    deleted: list[DeleteItem] = field(default_factory=items_list)
    already_applied: list[DeleteItem] = field(default_factory=items_list)
    already_gone: list[DeleteItem] = field(default_factory=items_list)
    conflicts: list[Conflict] = field(default_factory=_conflicts_list)
    triggers_suspended: list[str] = field(default_factory=list)
    safety_copy: Path | None = None

    @property
    def exit_code(self) -> int:
        return ExitCode.REVIEW if self.conflicts else ExitCode.OK

    def to_dict(self) -> dict[str, Any]:
        """The result as ``deletes_applied.json`` holds it; the long lists are computed as a
        writer that iterates (``json.dump``, ``json.dumps(indent=...)``) reads them."""
        items = lambda xs: LazyMap(lambda i: {"table": i.table, "key": json_key(i.key)}, xs)  # noqa: E731
        return {
            "format": "recovery-deletes/1",
            "run_dir": str(self.run_dir),
            "target": str(self.target),
            "bundle_id": self.bundle_id,
            "dry_run": self.dry_run,
            "selected": self.selected,
            "deleted": items(self.deleted),
            "already_applied": items(self.already_applied),
            "already_gone": items(self.already_gone),
            "conflicts": LazyMap(lambda c: dict(c.to_dict(), key=json_key(c.key)), self.conflicts),
            "triggers_suspended": self.triggers_suspended,
            "safety_copy": str(self.safety_copy) if self.safety_copy else None,
            "exit_code": self.exit_code,
        }


def locate_run(run_dir: Path) -> tuple[Path, Path]:
    """The database and the bundle of a run folder (a ``rollback`` or ``reimport --out`` folder)."""
    if not run_dir.is_dir():
        raise RecoveryError(
            f"run folder {run_dir} does not exist",
            "pass the --out folder of a rollback or reimport",
        )
    check_run_folder(run_dir, "apply-deletes")
    journal = run_dir / "journal.json"
    report = run_dir / "report.json"
    try:
        if journal.is_file():
            data = json.loads(journal.read_text(encoding="utf-8"))
            db = data["args"]["db"]
            bundle = run_dir / "bundle"
            if "undo" in data.get("steps", {}):
                raise RecoveryError(
                    f"{run_dir} was undone (recovery undo): {db} is the failed release's database again",
                    "nothing to apply; the deletes belong to the rolled-back database",
                )
        elif report.is_file():
            data = json.loads(report.read_text(encoding="utf-8"))
            db, bundle = data["outcome"]["target"], Path(data["bundle"]["path"])
        else:
            raise RecoveryError(
                f"{run_dir} holds no journal.json or report.json",
                "pass the --out folder of a finished rollback or reimport",
            )
        if not isinstance(db, str) or not db:
            raise TypeError("database path")
    except (ValueError, KeyError, TypeError) as exc:
        raise RecoveryError(
            f"{run_dir}: its journal.json/report.json is not one recovery wrote ({exc})",
            "pass the run folder as the rollback left it",
        ) from None
    if not (run_dir / "deletes_for_review.csv").is_file():
        raise RecoveryError(
            f"{run_dir} has no deletes_for_review.csv: the run has not finished",
            "finish the run first (run the same rollback command again)",
        )
    return Path(db), Path(bundle)


def _candidates(bundle: Bundle) -> dict[str, list[tuple[Any, ...]]]:
    """Keys of the rows deleted after the deploy, per old-schema table (one entry per post-deploy
    delete, the same list the run's deletes_for_review.csv holds; in bounded memory)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    conn = SQLiteEngine(bundle.base_db).connect_readonly(
        "bundle base.db"
    )  # bundle files are SQLite on every engine
    try:
        with statement_time_limit(conn):
            have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            for name in bundle.old.fk_order():
                t = bundle.old.tables[name]
                if (
                    name not in have
                    or not t.key
                    or bundle.counts.get(name, {}).get("deleted", 0) == 0
                ):
                    continue
                q = (
                    exp.select(*[col(k) for k in t.key])
                    .from_(table(name))
                    .where(exp.EQ(this=col(KIND), expression=exp.Literal.string("deleted")))
                )
                out[name] = SpillList(
                    (tuple(r) for r in conn.execute(sql(q))),
                    encode=_encode_key,
                    decode=_decode_key,
                )
    finally:
        conn.close()
    return out


def json_key(key: tuple[Any, ...] | list[Any]) -> list[Any]:
    """A key as a JSON list, its bytes parts tagged as outcome.json tags them (``{"$bytes":
    hex}``): the form of ``deletes_applied.json``, of ``_recovery_deletes_applied.key_json`` and
    of a composite key in deletes_for_review.csv, read back exactly (a text part that spells the
    same hex stays a string)."""
    return [
        {"$bytes": bytes(v).hex()} if isinstance(v, (bytes, bytearray, memoryview)) else v
        for v in key
    ]


def _key_text(key: tuple[Any, ...]) -> str:
    """A key as the ``key`` cell of deletes_for_review.csv shows it: one column unwrapped (as
    the csv module writes the value), more as JSON with bytes parts tagged (:func:`json_key`)."""
    from recovery.report.lost import cell

    v = cell(list(key))
    return "" if v is None else str(v)


def _unneutralise(text: str) -> str:
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def select(candidates: dict[str, list[tuple[Any, ...]]], only: Path | None) -> list[DeleteItem]:
    """Every candidate, or those listed in the reviewed CSV ``only`` (columns ``table`` and
    ``key``, as in deletes_for_review.csv), in the CSV's order. A listed row that is not a
    post-deploy delete of this run is refused: the CSV may have been edited by hand. The
    candidates are looked up in a private temporary SQLite file (bounded memory)."""
    every = items_list(DeleteItem(t, k) for t, keys in candidates.items() for k in keys)
    if only is None:
        return every
    index = sqlite3.connect("", isolation_level=None)  # on disk, deleted when closed
    try:
        index.execute("PRAGMA journal_mode = OFF")
        index.execute("CREATE TABLE cand (t TEXT, k TEXT, item TEXT)")
        index.execute("CREATE INDEX cand_tk ON cand (t, k)")
        index.execute(
            "CREATE TABLE chosen (seq INTEGER PRIMARY KEY, t TEXT, k TEXT, UNIQUE (t, k))"
        )
        index.execute("BEGIN")
        index.executemany(
            "INSERT INTO cand VALUES (?, ?, ?)",
            ((i.table, _key_text(i.key), _encode_item(i)) for i in every),
        )
        _choose(index, only)
        return items_list(
            _decode_item(r[0])
            for r in index.execute(
                "SELECT cand.item FROM chosen JOIN cand USING (t, k) ORDER BY chosen.seq"
            )
        )
    finally:
        index.close()


def _choose(index: sqlite3.Connection, only: Path) -> None:
    """The rows of the reviewed CSV ``only`` into ``chosen`` (once each, first line first), each
    found among ``cand``. A line whose key text names two candidates (one-column keys that
    differ only in type, which SQLite allows in a column without affinity: ``5`` and ``'5'``,
    a blob and the text of its repr) is refused rather than guessed."""
    try:
        with only.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"table", "key"} <= set(reader.fieldnames):
                raise RecoveryError(
                    f"{only} has no 'table' and 'key' columns",
                    "pass a copy of deletes_for_review.csv with the rows to delete",
                )
            for n, row in enumerate(reader, start=2):
                ident = (_unneutralise(row["table"] or ""), _unneutralise(row["key"] or ""))
                found = index.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM cand WHERE t = ? AND k = ? LIMIT 2)", ident
                ).fetchone()[0]
                if found == 0:
                    raise RecoveryError(
                        f"{only} line {n}: {ident[0]} {ident[1]!r} is not a row deleted after the deploy in this run",
                        "list only rows of this run's deletes_for_review.csv",
                    )
                if found > 1:
                    raise RecoveryError(
                        f"{only} line {n}: {ident[0]} {ident[1]!r} names more than one row deleted "
                        "after the deploy (keys that differ only in type); nothing was changed",
                        "run apply-deletes without --only to delete them all, or delete the one "
                        "you mean by hand",
                    )
                index.execute("INSERT OR IGNORE INTO chosen (t, k) VALUES (?, ?)", ident)
    except OSError as exc:
        raise RecoveryError(
            f"cannot read {only}: {exc.strerror or exc}", "check the --only path"
        ) from None
    except (csv.Error, UnicodeDecodeError) as exc:
        raise RecoveryError(
            f"{only} is not a readable CSV file ({exc})", "save it as UTF-8 CSV"
        ) from None


def apply_deletes(
    run_dir: str | Path,
    only: str | Path | None = None,
    dry_run: bool = False,
    busy_timeout: float = 10.0,
) -> DeletesResult:
    """Delete the reviewed rows (see the module docstring). ``dry_run`` works on a scratch copy of
    the database and writes nothing but the result file."""
    run = Path(run_dir)
    db, bundle_dir = locate_run(run)
    if is_postgres_url(str(db)):
        raise RecoveryError(
            f"apply-deletes is not built for PostgreSQL yet ({run} rolled back a PostgreSQL "
            "database); nothing was changed",
            f"the rows are listed in {run / 'deletes_for_review.csv'}: delete the reviewed ones "
            "in one transaction by hand",
        )
    bundle = open_bundle(bundle_dir)
    engine = open_engine(db)
    engine.check("database")
    target = Path(engine.spec)
    items = select(_candidates(bundle), Path(only) if only is not None else None)
    with engine.readonly("database") as r:
        _check_tables(bundle, reflect(r), {i.table for i in items})
    result = DeletesResult(run, target, bundle.bundle_id, dry_run, selected=len(items))
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="recovery-deletes-") as tmp:
            scratch = engine.snapshot(Path(tmp) / target.name, "database")
            _apply(scratch, bundle, items, result, busy_timeout)
    else:
        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        safety_dir = Path(tempfile.mkdtemp(prefix=f"safety-deletes-{stamp}-", dir=run))  # new, 0700
        result.safety_copy = engine.snapshot(safety_dir / target.name, "database")
        _apply(target, bundle, items, result, busy_timeout)
    _write_result(run / RESULT_FILE, result.to_dict())  # users' keys: private like the run
    return result


def _write_result(path: Path, data: dict[str, Any]) -> None:
    """``data`` as :func:`recovery.bundle.store.write_json_atomic` writes it with mode 0600 (the
    same bytes), streamed: ``json.dump`` writes the long lists piece by piece."""
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW
    with open(os.open(tmp, flags, 0o600), "w", encoding="utf-8") as fh:
        os.fchmod(fh.fileno(), 0o600)  # an existing tmp keeps its mode otherwise
        json.dump(data, fh, indent=2, ensure_ascii=False, default=str)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _check_tables(bundle: Bundle, have: Schema, names: set[str]) -> None:
    """The tables to delete from have the columns the backup images have (other tables may have
    come and gone since: the application is running its old release)."""
    for name in sorted(names):
        want = bundle.old.tables[name].column_names
        got = have.tables[name].column_names if name in have.tables else None
        if got is None or set(got) != set(want):
            raise RecoveryError(
                f"{name} in the database no longer has the columns of the backup's release",
                "apply-deletes works on the database the rollback left (same release)",
            )


def _apply(
    db: Path, bundle: Bundle, items: list[DeleteItem], result: DeletesResult, busy_timeout: float
) -> None:
    from recovery.reimport.merge import open_target

    conn = open_target(db, busy_timeout)
    try:
        conn.execute(f"ATTACH DATABASE ? AS {BASE}", (file_uri(bundle.base_db, mode="ro"),))
        schema = reflect(
            conn
        )  # before BEGIN: reflection through SQLAlchemy ends any open transaction
        engine = open_engine(db)
        with engine.write_transaction(conn, busy_timeout), statement_time_limit(conn):
            _apply_in_transaction(
                engine, conn, schema, bundle, items, result
            )  # base.db: untrusted, time-bounded
    finally:
        conn.close()


def _apply_in_transaction(
    engine: Engine,
    conn: sqlite3.Connection,
    schema: Schema,
    bundle: Bundle,
    items: list[DeleteItem],
    result: DeletesResult,
) -> None:
    """Everything inside the open transaction: suspend triggers, judge and delete table by table
    (children first), check the foreign keys, re-create the triggers."""
    _ensure_applied_table(conn)
    suspended = engine.suspend_triggers(conn, {i.table for i in items})
    result.triggers_suspended = [t.name for t in suspended]
    children = _children(schema)
    watched = sorted({c for t in {i.table for i in items} for c, _ in children.get(t, [])})
    before = _fk_violations(conn, watched)
    tables = {i.table for i in items}
    for name in reversed(bundle.old.fk_order()):
        if name in tables:
            mine = (i for i in items if i.table == name)
            _apply_table(
                conn, schema.tables[name], mine, children.get(name, []), bundle.bundle_id, result
            )
    after = _fk_violations(conn, watched)
    if after > before:
        raise RecoveryError(
            f"foreign key check got worse after the deletes ({before} → {after}); rolled back",
            "nothing was changed; report this with the run folder",
            ExitCode.FAILED,
        )
    engine.restore_triggers(conn, suspended)


def _ensure_applied_table(conn: sqlite3.Connection) -> None:
    conn.execute(
        sql(
            exp.Create(
                kind="TABLE",
                exists=True,
                this=exp.Schema(
                    this=table(APPLIED_DELETES_TABLE, "main"),
                    expressions=[
                        exp.ColumnDef(
                            this=exp.to_identifier(c, quoted=True), kind=exp.DataType.build("TEXT")
                        )
                        for c in ("bundle_id", "table_name", "key_json", "applied_at")
                    ],
                ),
            )
        )
    )


def _children(schema: Schema) -> dict[str, list[tuple[str, Any]]]:
    """For each table, the (child table, foreign key) pairs that reference it."""
    out: dict[str, list[tuple[str, Any]]] = {}
    for name, t in schema.tables.items():
        for fk in t.foreign_keys:
            out.setdefault(fk.ref_table, []).append((name, fk))
    return out


def _fk_violations(conn: sqlite3.Connection, tables: list[str]) -> int:
    n = 0
    for name in tables:
        n += len(conn.execute(f"PRAGMA main.foreign_key_check({_quoted(name)})").fetchall())
    return n


def _quoted(name: str) -> str:
    return exp.to_identifier(name, quoted=True).sql(dialect="sqlite")


def _sel_table(alias: str | None = None) -> exp.Table:
    return exp.Table(
        this=exp.to_identifier("_recovery_sel", quoted=True),
        db=exp.to_identifier("temp"),
        alias=exp.TableAlias(this=exp.to_identifier(alias)) if alias else None,
    )


def _apply_table(
    conn: sqlite3.Connection,
    t: Table,
    items: Iterable[DeleteItem],
    children: list[tuple[str, Any]],
    bundle_id: str,
    result: DeletesResult,
) -> None:
    """Judge and delete the selected rows of one table, set-based: the keys go into a TEMP table,
    one UPDATE gives each its verdict, one DELETE removes the rows judged deletable."""
    key = list(t.key)
    conn.execute("DROP TABLE IF EXISTS temp._recovery_sel")
    conn.execute(
        sql(
            exp.Create(
                kind="TABLE",
                this=exp.Schema(
                    this=_sel_table(),
                    expressions=[
                        exp.ColumnDef(this=exp.to_identifier(c, quoted=True))
                        for c in [*(f"k{i}" for i in range(len(key))), "key_json", "verdict"]
                    ],
                ),
            )
        )
    )
    ins = exp.Insert(
        this=_sel_table(),
        expression=exp.Values(
            expressions=[exp.Tuple(expressions=[*[exp.Placeholder()] * (len(key) + 1), exp.Null()])]
        ),
    )
    conn.executemany(sql(ins), [(*i.key, _json(i.key)) for i in items])

    s_key = [col(f"k{i}", "_recovery_sel") for i in range(len(key))]
    match_t = and_all(is_same(col(k, "t"), sk) for k, sk in zip(key, s_key, strict=True))
    match_d = and_all(
        [
            *[is_same(col(k, "d"), sk) for k, sk in zip(key, s_key, strict=True)],
            exp.EQ(this=col(KIND, "d"), expression=exp.Literal.string("deleted")),
        ]
    )
    same = and_all(is_same(col(c, "t"), col(c, "d")) for c in t.column_names)
    applied = exp.Exists(
        this=exp.select("1")
        .from_(table(APPLIED_DELETES_TABLE, "main", "a"))
        .where(
            and_all(
                [
                    exp.EQ(this=col("bundle_id", "a"), expression=exp.Literal.string(bundle_id)),
                    exp.EQ(this=col("table_name", "a"), expression=exp.Literal.string(t.name)),
                    exp.EQ(this=col("key_json", "a"), expression=col("key_json", "_recovery_sel")),
                ]
            )
        )
    )
    present = exp.Exists(this=exp.select("1").from_(table(t.name, "main", "t")).where(match_t))
    unchanged = exp.Exists(
        this=exp.select("1")
        .from_(table(t.name, "main", "t"))
        .join(table(t.name, BASE, "d"), on=same)
        .where(and_all([match_t, match_d]))
    )
    referenced: list[exp.Expression] = []
    for child, fk in children:
        refs = list(zip(fk.columns, fk.ref_columns, strict=True))
        referenced.append(
            exp.Exists(
                this=exp.select("1")
                .from_(table(child, "main", "c"))
                .join(
                    table(t.name, "main", "t"),
                    on=and_all(
                        exp.EQ(this=col(cc, "c"), expression=col(pc, "t")) for cc, pc in refs
                    ),
                )
                .where(match_t)
            )
        )
    verdict = exp.Case(
        ifs=[
            exp.If(this=applied, true=exp.Literal.string("already_applied")),
            exp.If(this=exp.Not(this=present), true=exp.Literal.string("already_gone")),
            exp.If(this=exp.Not(this=unchanged), true=exp.Literal.string("update_deleted")),
            *(
                [exp.If(this=exp.or_(*referenced), true=exp.Literal.string("constraint"))]
                if referenced
                else []
            ),
        ],
        default=exp.Literal.string("delete"),
    )
    conn.execute(
        sql(
            exp.Update(
                this=_sel_table(), expressions=[exp.EQ(this=col("verdict"), expression=verdict)]
            )
        )
    )
    doomed = items_list()
    for *k, v in conn.execute(
        sql(
            exp.select(*[col(f"k{i}") for i in range(len(key))], col("verdict")).from_(_sel_table())
        )
    ):
        item = DeleteItem(t.name, tuple(k))  # the key as bound: the same values, the same types
        if v == "already_applied":
            result.already_applied.append(item)
        elif v == "already_gone":
            result.already_gone.append(item)
        elif v == "update_deleted":
            result.conflicts.append(
                Conflict(
                    ConflictKind.UPDATE_DELETED,
                    t.name,
                    item.key,
                    Resolution.KEPT_TARGET,
                    detail="deleted after the deploy, changed in the database since: kept",
                )
            )
        elif v == "constraint":
            result.conflicts.append(
                Conflict(
                    ConflictKind.CONSTRAINT,
                    t.name,
                    item.key,
                    Resolution.KEPT_TARGET,
                    detail="deleted after the deploy, but rows that stay still reference it",
                )
            )
        else:
            doomed.append(item)
    if doomed:
        chosen = exp.Exists(
            this=exp.select("1")
            .from_(_sel_table("s"))
            .where(
                and_all(
                    [
                        exp.EQ(this=col("verdict", "s"), expression=exp.Literal.string("delete")),
                        *[is_same(col(k, t.name), col(f"k{i}", "s")) for i, k in enumerate(key)],
                    ]
                )
            )
        )
        gone = conn.execute(
            sql(exp.Delete(this=table(t.name, "main"), where=exp.Where(this=chosen)))
        ).rowcount
        if gone != len(doomed):
            raise RecoveryError(
                f"{t.name}: {gone} rows matched {len(doomed)} reviewed deletes; rolled back",
                "nothing was changed; report this with the run folder",
                ExitCode.FAILED,
            )
        now = datetime.now().isoformat(timespec="seconds")
        rec = exp.Insert(
            this=table(APPLIED_DELETES_TABLE, "main"),
            expression=exp.Values(expressions=[exp.Tuple(expressions=[exp.Placeholder()] * 4)]),
        )
        conn.executemany(sql(rec), ((bundle_id, t.name, _json(i.key), now) for i in doomed))
        result.deleted += doomed
    conn.execute("DROP TABLE temp._recovery_sel")


def _json(key: tuple[Any, ...]) -> str:
    return json.dumps(json_key(key), ensure_ascii=False, default=str)

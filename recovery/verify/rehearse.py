"""``recovery rehearse``: the runbook's "Testing Rollback Procedure (Staging)" in one command.

The live database, its backup and the uploads are copied to a scratch folder (SQLite's backup API
for the databases, so a live WAL file is copied consistently and never checkpointed); the whole
:func:`recovery.pipeline.rollback` runs against the copies, writing the same run folder a real
run writes; then the round trip is checked on the rolled-back copy:

* every post-deploy change is there: each inserted/updated bundle row of an old-schema table has
  its key (or its remapped key) in the copy, with the values the re-import plan says it carries;
  rows of tables the old schema lacks are listed as lost;
* every backup row is intact: its key is present, and rows nobody changed after the deploy are
  identical to the backup;
* the schema is the backup's (``alembic_version`` equal) and the pipeline's own verification
  (integrity, foreign keys, row counts) passed.

PASS (exit 0) may still list losses: values the old schema has no place for. The live files are
hashed before and after; they are only ever read.

Losses are never all held in memory: the bundle's rows.db keeps every one in ``_recovery_lost``
(the run folder's ``lost_values.csv`` lists them all). A rehearsal holds the first
:data:`recovery.report.lost.SAMPLE_LIMIT` (1,000) by (table, key, column) — the order of
``lost_values.csv`` — plus exact totals per table and per reason counted by SQLite;
rehearsal.json lists that sample (``losses``, ``losses_total``, ``losses_truncated``), rehearsal.md
shows it, the terminal shows the first :data:`TERMINAL_LIMIT`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.report import lost
from recovery.bundle.store import LOST_TABLE, Bundle, open_bundle, write_json_atomic
from recovery.errors import ExitCode, RecoveryError
from recovery.escape import SHOW_LIMIT, md_text, short_repr, term_markup, term_text
from recovery.bundle.extract import key_json
from recovery.report.lost import count_by, has_lost, iter_lost, open_ro, stream_file
from recovery.engine.schema import alembic_revision
from recovery.model.kinds import Resolution
from recovery.engine.sqlbuild import and_all, col, is_distinct, is_same, or_all, sql, table
from recovery.engine import open_engine
from recovery.engine.sqlite_io import file_uri, check_sqlite_file, sha256_file, sidecars

FORMAT = "recovery-rehearsal/1"
SAMPLE_LIMIT = 20
"""How many offending keys a failed check quotes."""
TERMINAL_LIMIT = 20
"""How many would-be losses the terminal shows (rehearsal.md shows the whole sample)."""
LOST_FILE = "lost_values.csv"
"""The run folder's complete list of lost values (written by the pipeline's report)."""

log = logging.getLogger(__name__)


@dataclass
class Rehearsal:
    passed: bool
    run_dir: Path
    reasons: list[str] = field(default_factory=list)
    """Why the rehearsal failed (empty on PASS)."""
    losses: list[dict[str, Any]] = field(default_factory=list)
    """Values the rollback would lose (table, key, label, column, value, reason): the first
    :data:`recovery.report.lost.SAMPLE_LIMIT` by (table, key, column) — all of them when there are no more.
    The complete list: ``losses_file`` (or :meth:`iter_losses`)."""
    losses_total: int = 0
    """Exact number of values the rollback would lose."""
    losses_by_table: dict[str, int] = field(default_factory=dict)
    losses_by_reason: dict[str, int] = field(default_factory=dict)
    losses_file: Path | None = None
    """The run folder's ``lost_values.csv``: every lost value (when the rollback got that far)."""
    checks: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    outcome: Any = None

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if self.passed else ExitCode.REVIEW

    @property
    def losses_truncated(self) -> bool:
        return self.losses_total > len(self.losses)

    def iter_losses(self) -> Iterator[dict[str, Any]]:
        """Every lost value in the order of ``losses``, exact: streamed from the run's bundle
        (``bundle/rows.db``, ``_recovery_lost``); ``losses`` (values cut for showing) only when
        that is gone."""
        rows_db = self.run_dir / "bundle" / "rows.db"
        if self.losses_total and rows_db.is_file():
            return stream_file(rows_db)
        return iter(self.losses)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "result": "PASS" if self.passed else "FAIL",
            "passed": self.passed,
            "run_dir": str(self.run_dir),
            "reasons": self.reasons,
            "losses": self.losses,
            "losses_total": self.losses_total,
            "losses_truncated": self.losses_truncated,
            "losses_by_table": self.losses_by_table,
            "losses_by_reason": self.losses_by_reason,
            "losses_file": str(self.losses_file) if self.losses_file else None,
            "checks": self.checks,
            "notes": self.notes,
        }


def rehearse(
    db: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    alembic_ini: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    uploads: str | os.PathLike[str] | None = None,
    mapping: str | os.PathLike[str] | None = None,
    since: str | None = None,
    progress: Callable[[str], None] | None = None,
    losses_limit: int | None = None,
    trust_mapping: bool = False,
    same_installation: bool = False,
) -> Rehearsal:
    """Roll back scratch copies of ``db``/``backup``/``uploads`` and check the round trip; the run
    folder ``out`` (default: ``recovery-rehearsal-<stamp>`` beside ``db``) gets the real run's
    report plus ``rehearsal.json`` and ``rehearsal.md``. At most ``losses_limit`` (default
    :data:`recovery.report.lost.SAMPLE_LIMIT`) lost values are held and listed; the totals are exact."""
    from recovery.options import RollbackOptions
    from recovery.pipeline import rollback
    from recovery.migrate.sandbox import protecting

    say = progress or log.info
    db_p = check_sqlite_file(db, "live database")
    backup_p = check_sqlite_file(backup, "backup")
    uploads_p = Path(uploads) if uploads else None
    if uploads_p is not None and not uploads_p.is_dir():
        raise RecoveryError(
            f"--uploads {uploads_p} is not a folder", "pass the application's uploads folder"
        )
    run_dir = (
        Path(out) if out else db_p.parent / f"recovery-rehearsal-{datetime.now():%Y%m%d_%H%M%S}"
    )
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RecoveryError(f"{run_dir} is not empty", "choose a new or empty --out folder")
    live_files = [p for p in (db_p, *sidecars(db_p), backup_p) if p.exists()]
    hashes = {str(p): sha256_file(p) for p in live_files}
    with tempfile.TemporaryDirectory(prefix="recovery-rehearsal-") as tmp:
        scratch = Path(tmp)
        say("copying the live database, the backup and the uploads to a scratch folder")
        db_copy = open_engine(_raw_copy(db_p, scratch / "raw")).snapshot(
            scratch / "live" / db_p.name, "live database"
        )
        backup_copy = open_engine(_raw_copy(backup_p, scratch / "raw")).snapshot(
            scratch / "live" / backup_p.name, "backup"
        )
        manifest = backup_p.with_name(backup_p.name + ".manifest.json")
        if manifest.is_file():  # the deploy time may come from it
            shutil.copyfile(manifest, backup_copy.with_name(manifest.name))
        uploads_copy = None
        if uploads_p is not None:
            uploads_copy = scratch / "live" / "uploads"
            shutil.copytree(uploads_p, uploads_copy, symlinks=True)
        for src, dst in ((db_p, db_copy), (backup_p, backup_copy)):
            _keep_mtime(
                src, dst
            )  # the pipeline's "backup newer than the DB?" check must see the real times
        backup_ref = open_engine(backup_copy).snapshot(
            scratch / "reference" / backup_p.name, "backup"
        )
        try:
            with protecting(
                db_p, backup_p
            ):  # the app's migration code must not reach the real files either
                res = rollback(
                    db_copy,
                    backup_copy,
                    run_dir,
                    uploads=uploads_copy,
                    mapping=mapping,
                    alembic_ini=alembic_ini,
                    confirm=None,
                    progress=lambda m: say(f"rehearsal: {m}"),
                    options=RollbackOptions(
                        since=since,
                        trust_mapping=trust_mapping,
                        same_installation=same_installation,
                    ),
                )
        except RecoveryError as err:  # the real run would stop here too: that is the finding
            result = Rehearsal(False, run_dir, [f"the rollback stops: {err.one_line()}"])
        else:
            say("checking the round trip on the rolled-back copy")
            result = Rehearsal(True, run_dir, outcome=res.outcome)
            bundle = open_bundle(run_dir / "bundle")
            _note_trusted_rules(result, bundle.manifest.get("mapping") or {})
            _load_losses(
                result,
                bundle.rows_db,
                lost.SAMPLE_LIMIT if losses_limit is None else max(0, int(losses_limit)),
            )
            if (run_dir / LOST_FILE).is_file():
                result.losses_file = run_dir / LOST_FILE
            _check_round_trip(result, db_copy, backup_ref, bundle)
            if uploads_copy is not None:
                _check_uploads(result, bundle, uploads_copy)
    changed = [p for p, h in hashes.items() if not Path(p).exists() or sha256_file(p) != h]
    result.checks["live_files_unchanged"] = not changed
    if changed:  # never us: everything above worked on copies; the application may still be writing
        result.notes.append(
            "changed while the rehearsal ran (is the application still running?): "
            + ", ".join(changed)
        )
    result.passed = not result.reasons
    write_json_atomic(run_dir / "rehearsal.json", result.to_dict())
    (run_dir / "rehearsal.md").write_text(markdown(result), encoding="utf-8")
    return result


def _note_trusted_rules(result: Rehearsal, mapping: dict[str, Any]) -> None:
    """A rule the data contradict reaches the rollback only through --trust-mapping, and then
    every post-deploy value it carries is a value the users did not make (in the old projection,
    the rows nobody changed say what the rule must give): the rehearsal fails, with the evidence."""
    for tname, t in sorted(mapping.items()):
        for r in t.get("columns", ()):
            if r.get("verdict") == "disagrees":
                first = r.get("first_disagreement")
                result.reasons.append(
                    f"{tname}.{r['column']} = {r['expression']} ({r['source']}) disagrees with the backup "
                    f"({r.get('rows_agreeing')} of {r.get('rows_checked')} unchanged rows agree"
                    + (f"; first disagreement {json.dumps(first, default=str)}" if first else "")
                    + "): kept by --trust-mapping, the values it carries are not the post-deploy work"
                )


def _check_uploads(result: Rehearsal, bundle: Bundle, uploads: Path) -> None:
    """Every upload the bundle should carry (a post-deploy file record, or a file added after the
    backup that no record names) must be in the rehearsal's relinked uploads folder with the
    content it had: missing when extracted, gone or different after the relink → FAIL."""
    files = bundle.manifest.get("files") or {}
    entries = [*(files.get("records") or []), *(files.get("unrecorded") or [])]
    problems: list[str] = []
    for e in entries:
        path = e.get("path")
        want = e.get("sha256") or e.get("recorded_sha256")
        if e.get("status") == "missing" or not isinstance(path, str):
            problems.append(
                f"{path}: missing from the uploads folder when the changes were extracted"
            )
            continue
        target = uploads / path
        if not target.is_file():
            problems.append(f"{path}: not in the uploads folder after the rollback")
        elif want and sha256_file(target) != want:
            problems.append(
                f"{path}: its content differs after the rollback (sha256 is not {want})"
            )
    result.checks["uploads"] = {"expected": len(entries), "problems": len(problems)}
    if problems:
        shown = "; ".join(problems[:5]) + (
            f"; … and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        result.reasons.append(
            f"{len(problems)} upload(s) the rollback should carry are missing or differ: {shown}"
        )


def _raw_copy(src: Path, folder: Path, attempts: int = 5) -> Path:
    """Byte copies of ``src`` and its ``-wal`` (never ``-shm``) into ``folder``, taken again until
    no write happened meanwhile. Even a ``mode=ro`` SQLite open of a WAL file writes its ``-shm``
    (the wal-index), so the live files are only ever read as bytes; SQLite rebuilds the index of
    the copy from its ``-wal``."""
    folder.mkdir(parents=True, exist_ok=True)
    wal, _ = sidecars(src)
    dst, dst_wal = folder / src.name, folder / (src.name + "-wal")

    def stamp() -> tuple[Any, ...]:
        return tuple(
            (p.stat().st_size, p.stat().st_mtime_ns) if p.exists() else None for p in (src, wal)
        )

    for _ in range(attempts):
        before = stamp()
        shutil.copyfile(src, dst)
        if wal.exists():
            shutil.copyfile(wal, dst_wal)
        else:
            dst_wal.unlink(missing_ok=True)
        if stamp() == before:
            return dst
    raise RecoveryError(
        f"{src} kept changing while it was copied", "stop the application, or rehearse on a copy"
    )


def _keep_mtime(src: Path, dst: Path) -> None:
    """Give the copy the source's last-write time (its ``-wal`` counts: commits live there)."""
    wal, _ = sidecars(src)
    latest = max(src.stat().st_mtime, wal.stat().st_mtime if wal.exists() else 0.0)
    os.utime(dst, (latest, latest))


def _load_losses(result: Rehearsal, rows_db: Path, limit: int) -> None:
    """The first ``limit`` lost values (``lost_values.csv``'s order) and exact totals per table
    and per reason, from the bundle's ``_recovery_lost``; nothing else is read into memory."""
    conn = open_ro(rows_db)
    try:
        if not has_lost(conn):
            return
        result.losses = list(iter_lost(conn, limit=limit, cut=SHOW_LIMIT))
        for name, reason, n in count_by(conn, "table", "reason"):
            result.losses_by_table[name] = result.losses_by_table.get(name, 0) + n
            result.losses_by_reason[reason] = result.losses_by_reason.get(reason, 0) + n
            result.losses_total += n
    finally:
        conn.close()


def _check_round_trip(result: Rehearsal, rolled: Path, backup: Path, bundle: Bundle) -> None:
    outcome = result.outcome
    ver = outcome.verification if outcome else {}
    result.checks["verification_ok"] = bool(ver.get("ok"))
    if not ver.get("ok"):
        result.reasons.append(
            f"the pipeline's verification failed: {json.dumps(ver, default=str)[:400]}"
        )
    if outcome is not None and outcome.aborted:
        result.reasons.append("the re-import aborted on conflicts")
    for c in outcome.conflicts if outcome else []:
        if c.resolution in (Resolution.SKIPPED, Resolution.KEPT_TARGET):
            result.reasons.append(
                f"{c.table} {list(c.key)}: {c.kind} conflict, {c.resolution} — the change is not carried"
            )
    with (
        open_engine(backup).readonly("backup") as b,
        open_engine(rolled).readonly("rolled-back copy") as r,
    ):
        want, got = alembic_revision(b), alembic_revision(r)
    result.checks["alembic_revision"] = {"expected": want, "actual": got, "ok": want == got}
    if want != got:
        result.reasons.append(f"the rolled-back copy is at revision {got}, the backup at {want}")
    conn = sqlite3.connect(file_uri(Path(rolled), mode="ro"), uri=True)
    try:
        conn.execute("ATTACH DATABASE ? AS bk", (file_uri(Path(backup), mode="ro"),))
        conn.execute("ATTACH DATABASE ? AS bundle", (file_uri(Path(bundle.rows_db), mode="ro"),))
        conn.execute("ATTACH DATABASE ? AS base", (file_uri(Path(bundle.base_db), mode="ro"),))
        result.checks["backup_rows"] = _backup_intact(conn, bundle, result)
        result.checks["post_deploy_changes"] = _changes_carried(conn, bundle, result)
    finally:
        conn.close()


def _tables_in(conn: sqlite3.Connection, schema: str) -> set[str]:
    return {
        r[0] for r in conn.execute(f"SELECT name FROM {schema}.sqlite_master WHERE type='table'")
    }


TOUCHED = "rehearse_touched"
"""TEMP copy of one table's keys in the bundle's base.db (rows updated or deleted after the deploy)."""


def _backup_intact(conn: sqlite3.Connection, bundle: Bundle, result: Rehearsal) -> dict[str, Any]:
    """Every backup key present; every backup row nobody changed after the deploy identical.
    Only counts and the first :data:`SAMPLE_LIMIT` offending keys are fetched."""
    counts: dict[str, Any] = {}
    base_tables = _tables_in(conn, "base")

    def count_and_sample(
        source: exp.Table, keys: list[exp.Column], cond: exp.Expression
    ) -> tuple[int, list[list[Any]]]:
        n = conn.execute(
            sql(exp.select("count(*)").from_(source.copy()).where(cond.copy()))
        ).fetchone()[0]
        if not n:
            return 0, []
        q = (
            exp.select(*[k.copy() for k in keys])
            .from_(source.copy())
            .where(cond.copy())
            .limit(SAMPLE_LIMIT)
        )
        return n, [list(r) for r in conn.execute(sql(q))]

    for name in bundle.old.data_tables:
        t = bundle.old.tables[name]
        key = t.key
        backup_rows, keys_o = table(name, "bk", "o"), [col(k, "o") for k in key]
        present = (
            exp.select("1")
            .from_(table(name, "main", "r"))
            .where(and_all(is_same(col(k, "r"), col(k, "o")) for k in key))
        )
        n_missing, missing = count_and_sample(
            backup_rows, keys_o, exp.Not(this=exp.Exists(this=present))
        )
        same = (
            exp.select("1")
            .from_(table(name, "main", "r"))
            .where(and_all(is_same(col(c, "r"), col(c, "o")) for c in t.column_names))
        )
        cond: exp.Expression = exp.Not(this=exp.Exists(this=same))
        touched_t = table(TOUCHED, "temp")
        conn.execute(sql(exp.Drop(tables=[touched_t.copy()], kind="TABLE", exists=True)))
        if name in base_tables:  # rows updated or deleted after the deploy are allowed to differ
            # their keys, copied to an indexed TEMP table: base.db's tables have no index, and
            # probing one per backup row would take (backup rows × touched rows) comparisons. The
            # columns take the backup's affinities (CREATE … AS SELECT … LIMIT 0 declares them), so
            # the values compare as ``base.<t>.k IS bk.<t>.k`` did and the index can serve ``IS``.
            like_backup = exp.select(*[k.copy() for k in keys_o]).from_(backup_rows.copy()).limit(0)
            conn.execute(
                sql(exp.Create(this=touched_t.copy(), kind="TABLE", expression=like_backup))
            )
            conn.execute(
                sql(
                    exp.Insert(
                        this=touched_t.copy(),
                        expression=exp.select(*[col(k) for k in key]).from_(table(name, "base")),
                    )
                )
            )
            conn.execute(
                sql(
                    exp.Create(
                        kind="INDEX",
                        this=exp.Index(
                            this=table(f"{TOUCHED}_key", "temp"),
                            table=table(TOUCHED),
                            params=exp.IndexParameters(columns=[col(k) for k in key]),
                        ),
                    )
                )
            )
            touched = (
                exp.select("1")
                .from_(table(TOUCHED, "temp", "d"))
                .where(and_all(is_same(col(k, "d"), col(k, "o")) for k in key))
            )
            cond = exp.and_(exp.Not(this=exp.Exists(this=touched)), cond)
        n_changed, changed = count_and_sample(backup_rows, keys_o, cond)
        conn.execute(sql(exp.Drop(tables=[touched_t.copy()], kind="TABLE", exists=True)))
        total = conn.execute(sql(exp.select("count(*)").from_(table(name, "bk")))).fetchone()[0]
        counts[name] = {"rows": total, "missing": n_missing, "altered": n_changed}
        if n_missing:
            result.reasons.append(
                f"{name}: {n_missing} backup row(s) missing after the rollback, e.g. keys {missing}"
            )
        if n_changed:
            result.reasons.append(
                f"{name}: {n_changed} backup row(s) nobody changed after the deploy differ from "
                f"the backup, e.g. keys {changed}"
            )
    return counts


def _changes_carried(conn: sqlite3.Connection, bundle: Bundle, result: Rehearsal) -> dict[str, Any]:
    """Each inserted/updated bundle row: present in the old-schema table (values as the plan
    carries them) or, for tables the old schema lacks, listed as lost."""
    from recovery.model.kinds import CHANGED_KINDS
    from recovery.model.kinds import KIND_COLUMN as KIND
    from recovery.transpile.passes import plan as make_plan, qualify_key

    p = make_plan(bundle.old, bundle.new, bundle.mapping, bundle.tables_with_rows())
    conn.execute("CREATE TEMP TABLE rehearse_remap (tbl TEXT, old_key, new_key)")
    conn.executemany(
        "INSERT INTO rehearse_remap VALUES (?, ?, ?)",
        [
            (rm.table, rm.old_key, rm.new_key)
            for rm in (result.outcome.remaps if result.outcome else [])
        ],
    )
    kinds = exp.In(this=col(KIND, "b"), expressions=[exp.Literal.string(k) for k in CHANGED_KINDS])
    counts: dict[str, Any] = {}
    planned = {tp.table for tp in p.tables}
    for tp in p.tables:
        if tp.table not in bundle.tables_with_rows():
            continue
        checked = [c for c in tp.columns if c.expression is not None and c.column not in tp.key]
        # the rows the plan carries, old-schema shaped; a single remapped key is looked up by its new key
        expected = (
            exp.select(
                *[
                    exp.alias_(qualify_key(tp, k), f"k{i}", quoted=True)
                    for i, k in enumerate(tp.key)
                ],
                *[
                    exp.alias_(e.copy(), f"c{i}", quoted=True)
                    for i, e in enumerate(c.expression for c in checked if c.expression is not None)
                ],
            )
            .from_(table(tp.table, "bundle", "b"))
            .where(kinds)
        )
        remap_of = (
            exp.select(col("new_key", "r"))
            .from_(table("rehearse_remap", "temp", "r"))
            .where(
                and_all(
                    [
                        exp.EQ(this=col("tbl", "r"), expression=exp.Literal.string(tp.table)),
                        is_same(col("old_key", "r"), col("k0", "e")),
                    ]
                )
            )
        )
        moved = exp.Subquery(this=remap_of) if len(tp.key) == 1 else exp.Null()
        lookup = [exp.func("coalesce", moved.copy(), col("k0", "e"))] + [
            col(f"k{i}", "e") for i in range(1, len(tp.key))
        ]
        at_key = and_all(is_same(col(k, "t"), v) for k, v in zip(tp.key, lookup, strict=True))
        src = expected.subquery(exp.TableAlias(this=exp.to_identifier("e", quoted=True)))
        keys_e = [col(f"k{i}", "e") for i in range(len(tp.key))]

        def count(cond: exp.Expression, source: exp.Expression = src) -> int:
            return conn.execute(
                sql(exp.select("count(*)").from_(source.copy()).where(cond))
            ).fetchone()[0]

        def sample(
            cond: exp.Expression,
            *extra: exp.Expression,
            keys: list[exp.Column] = keys_e,
            source: exp.Expression = src,
        ) -> list[tuple[Any, ...]]:
            q = exp.select(*keys, *extra).from_(source.copy()).where(cond).limit(SAMPLE_LIMIT)
            return conn.execute(sql(q)).fetchall()

        absent = exp.Not(
            this=exp.Exists(this=exp.select("1").from_(table(tp.table, "main", "t")).where(at_key))
        )
        n_rows = count(exp.true())
        n_missing = count(absent)
        # values compared only for rows that kept their key (a remapped row's key moved on purpose)
        kept = and_all(
            [exp.Is(this=moved.copy(), expression=exp.Null())] if len(tp.key) == 1 else []
        )
        differs = [
            is_distinct(col(c.column, "t"), col(f"c{i}", "e")) for i, c in enumerate(checked)
        ]
        n_diff, diff_rows = 0, []
        if differs:
            joined = exp.Exists(
                this=exp.select("1")
                .from_(table(tp.table, "main", "t"))
                .where(and_all([at_key, or_all(differs)]))
            )
            cond = and_all([kept, joined])
            n_diff = count(cond)
            flags = [
                exp.Exists(
                    this=exp.select("1")
                    .from_(table(tp.table, "main", "t"))
                    .where(and_all([at_key, d]))
                )
                for d in differs
            ]
            diff_rows = [
                {
                    "key": list(r[: len(tp.key)]),
                    "columns": [
                        c.column for c, f in zip(checked, r[len(tp.key) :], strict=True) if f
                    ],
                }
                for r in sample(cond, *flags)
            ]
        counts[tp.table] = {"rows": n_rows, "missing": n_missing, "differing": n_diff}
        if n_missing:
            missing = [list(r) for r in sample(absent)]
            result.reasons.append(
                f"{tp.table}: {n_missing} post-deploy row(s) neither carried nor listed as lost, "
                f"e.g. keys {missing}"
            )
        if n_diff:
            result.reasons.append(
                f"{tp.table}: {n_diff} post-deploy row(s) carried with other values than "
                f"the plan's, e.g. {diff_rows[:5]}"
            )
    listed = has_lost(conn, "bundle")
    for name in sorted(bundle.tables_with_rows() - planned):
        t = bundle.new.tables.get(name)
        if t is None:
            continue
        # an anti-join of the bundle rows against _recovery_lost, in SQLite: a row is listed when
        # a lost value of this table has its key, stored as the json_array(...) text extract's
        # record_lost wrote from this very bundle table. ``NOT IN (SELECT …)`` makes SQLite build
        # the table's lost keys into a transient index once (a correlated NOT EXISTS would scan
        # the unindexed _recovery_lost once per row).
        unlisted: exp.Expression = kinds.copy()
        if listed:
            keys_lost = (
                exp.select(col("key", "l"))
                .from_(table(LOST_TABLE, "bundle", "l"))
                .where(
                    and_all(
                        [
                            exp.EQ(this=col("table", "l"), expression=exp.Literal.string(name)),
                            exp.Not(this=exp.Is(this=col("key", "l"), expression=exp.Null())),
                        ]
                    )
                )
            )
            unlisted = and_all(
                [
                    unlisted,
                    exp.Not(
                        this=exp.In(this=key_json(t.key, "b"), query=exp.Subquery(this=keys_lost))
                    ),
                ]
            )
        rows_b = table(name, "bundle", "b")
        n_rows = conn.execute(
            sql(exp.select("count(*)").from_(rows_b.copy()).where(kinds.copy()))
        ).fetchone()[0]
        n_unlisted = conn.execute(
            sql(exp.select("count(*)").from_(rows_b.copy()).where(unlisted))
        ).fetchone()[0]
        counts[name] = {"rows": n_rows, "lost": n_rows - n_unlisted, "unlisted": n_unlisted}
        if n_unlisted:
            q = (
                exp.select(*[col(k, "b") for k in t.key])
                .from_(rows_b.copy())
                .where(unlisted.copy())
            )
            keys = [list(r) for r in conn.execute(sql(q.limit(SAMPLE_LIMIT)))]
            result.reasons.append(
                f"{name}: {n_unlisted} post-deploy row(s) of a table the old schema lacks are "
                f"not listed as lost, e.g. keys {keys}"
            )
    return counts


def _where_all_are(r: Rehearsal) -> str:
    return (
        str(r.losses_file)
        if r.losses_file
        else str(r.run_dir / "bundle" / "rows.db") + f" (table {LOST_TABLE})"
    )


def _by(counts: dict[str, int]) -> str:
    return " · ".join(
        f"{k} {n:,}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    )


def markdown(r: Rehearsal) -> str:
    """rehearsal.md: the verdict, the reasons, the loss totals and at most the sample of losses."""
    lines = [
        f"# Rollback test: {'PASS' if r.passed else 'FAIL'}",
        "",
        "The whole rollback ran on scratch copies; the live files were only read.",
        "",
    ]
    if r.reasons:
        lines += ["## Why it failed", ""] + [f"- {md_text(x, None)}" for x in r.reasons] + [""]
    lines += [f"## Would-be losses ({r.losses_total:,})", ""]
    if r.losses_total:
        lines += [
            f"- by table: {md_text(_by(r.losses_by_table), None)}",
            f"- by reason: {md_text(_by(r.losses_by_reason), None)}",
            f"- the complete list: {md_text(_where_all_are(r), None)}",
            "",
        ]
        if r.losses_truncated:
            lines += [f"The first {len(r.losses):,} by table, key and column:", ""]
    if r.losses:
        lines += ["| table | key | column | value | reason |", "|---|---|---|---|---|"]
        lines += [
            f"| {md_text(x['table'])} | {md_text(json.dumps(x['key'], default=str, ensure_ascii=False))} | "
            f"{md_text(x['column'])} | {md_text(short_repr(x['value']))} | {md_text(x.get('reason', ''))} |"
            for x in r.losses
        ]
    if r.losses_truncated:
        name = r.losses_file.name if r.losses_file else f"{LOST_TABLE} of bundle/rows.db"
        lines += ["", f"… and {r.losses_total - len(r.losses):,} more in {md_text(name)}"]
    if not r.losses_total:
        lines.append(
            "None: every post-deploy value has a place in the old schema."
            if r.outcome is not None
            else "Not known: the rollback stopped before the re-import."
        )
    if r.notes:
        lines += ["", "## Notes", ""] + [f"- {md_text(n, None)}" for n in r.notes]
    return "\n".join(lines) + "\n"


def render_rehearsal(r: Rehearsal, limit: int = TERMINAL_LIMIT) -> None:
    """The verdict on the terminal: reasons, notes, the loss totals and the first ``limit`` losses
    (the rest: lost_values.csv in the run folder)."""
    from rich.table import Table as RichTable

    from recovery.report.render import console

    out = console()
    for reason in r.reasons:
        out.print(f"[red]✗[/] {term_markup(reason, None)}")
    for n in r.notes:
        out.print(f"[yellow]![/] {term_markup(n, None)}")
    shown = r.losses[:limit]
    if shown:
        more = f", first {len(shown):,} shown" if r.losses_total > len(shown) else ""
        t = RichTable(title=f"would-be losses ({r.losses_total:,}{more})")
        for h in ("table", "key", "column", "value", "reason"):
            t.add_column(h, overflow="fold")
        for x in shown:
            t.add_row(
                term_text(x["table"]),
                term_text(json.dumps(x["key"], default=str, ensure_ascii=False)),
                term_text(x["column"]),
                term_text(short_repr(x["value"])),
                term_text(x.get("reason", "")),
            )
        out.print(t)
    if r.losses_total > len(shown):
        out.print(
            term_text(
                f"… and {r.losses_total - len(shown):,} more would-be losses: {_where_all_are(r)}",
                None,
            ),
            soft_wrap=True,
        )
    if r.losses_total:
        out.print(
            term_text(f"would-be losses by table: {_by(r.losses_by_table)}", None), soft_wrap=True
        )
    out.print(term_text(f"report: {r.run_dir}", None))
    out.print(
        "[bold green]Rollback test: PASS[/]" if r.passed else "[bold red]Rollback test: FAIL[/]"
    )


check_uploads = _check_uploads
load_losses = _load_losses
note_trusted_rules = _note_trusted_rules
"""The rehearsal's engine-neutral steps, shared with :mod:`recovery.verify.pgrehearse`."""

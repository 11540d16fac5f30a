"""``recovery rehearse`` on PostgreSQL: the whole rollback run on a scratch copy of the live
database, then the round trip checked on the rolled-back copy.

The copy: a ``pg_dump`` of the live database (one consistent snapshot; the live database is only
read) restored into a new database ``recovery_rehearsal_<token>`` on the same server, which the
rehearsal's rollback then rolls back exactly as the real run would (staged restore, re-import in one
transaction, swap). The backup is the pg_dump file as it is, or another database's URL dumped once
into the run folder (:func:`recovery.restore.pgbackup.backup_as_dump`). Uploads are copied to a
scratch folder. Every database the rehearsal made (the copy, and the copy's safety database the
swap kept) is dropped at the end, whatever happens.

The round trip on the copy:

* the rollback ran to its end, its verification passed (foreign keys, revision, row counts), it did
  not abort and no conflict left a change behind (skipped, kept_target);
* the copy is at the backup's Alembic revision (read from the backup's manifest, or from the backup
  database);
* every post-deploy change is there: each inserted/updated bundle row of an old-schema table has
  its key (or its remapped key) in the copy — checked on the server, the bundle's keys bound in
  batches, never a table read into Python;
* every upload the bundle carries is in the relinked scratch uploads with its content.

Values the old schema has no place for are listed (``losses``) as on SQLite; they do not fail it.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.bundle.store import Bundle, open_bundle, write_json_atomic
from recovery.engine.base import normalise_spec
from recovery.engine import pgclaims
from recovery.engine.postgres import (
    PostgresEngine,
    connect,
    create_database_sql,
    drop_database_sql,
    find_tool,
    restore_into,
    run,
    server_version,
)
from recovery.errors import RecoveryError
from recovery.model.kinds import Resolution
from recovery.report import lost
from recovery.engine.sqlite_io import file_uri
from recovery.verify.rehearse import (
    LOST_FILE,
    SAMPLE_LIMIT,
    Rehearsal,
    check_uploads,
    load_losses,
    markdown,
    note_trusted_rules,
)

log = logging.getLogger(__name__)

PREFIX = "recovery_rehearsal_"
"""The scratch copy's name: this prefix and a random token."""
BATCH = 1000
"""Bundle keys bound per query of the key check."""


def rehearse_postgres(
    db: str,
    backup: str,
    alembic_ini: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    uploads: str | os.PathLike[str] | None = None,
    mapping: str | os.PathLike[str] | None = None,
    since: str | None = None,
    progress: Callable[[str], None] | None = None,
    trust_mapping: bool = False,
    same_installation: bool = False,
) -> Rehearsal:
    """Roll back a scratch copy of the PostgreSQL database ``db`` to ``backup`` (a pg_dump file or
    a database URL) and check the round trip; ``out`` (default ``recovery-rehearsal-<stamp>``)
    gets the real run's report plus ``rehearsal.json`` and ``rehearsal.md``. The live database,
    the backup and the uploads are only read."""
    from recovery.options import RollbackOptions
    from recovery.restore.pgbackup import backup_as_dump
    from recovery.restore.pgrollback import rollback_postgres

    say = progress or log.info
    live = PostgresEngine(normalise_spec(db))
    live.check("live database")
    uploads_p = Path(uploads) if uploads else None
    if uploads_p is not None and not uploads_p.is_dir():
        raise RecoveryError(
            f"--uploads {uploads_p} is not a folder", "pass the application's uploads folder"
        )
    run_dir = Path(out) if out else Path(f"recovery-rehearsal-{datetime.now():%Y%m%d_%H%M%S}")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RecoveryError(f"{run_dir} is not empty", "choose a new or empty --out folder")
    with tempfile.TemporaryDirectory(prefix="recovery-rehearsal-") as tmp:
        scratch = Path(tmp)
        dump = backup_as_dump(
            live.url.render_as_string(hide_password=False),
            normalise_spec(os.fspath(backup)),
            scratch,
        )
        want_rev = _backup_revision(backup, dump)
        uploads_copy = None
        if uploads_p is not None:
            uploads_copy = scratch / "uploads"
            shutil.copytree(uploads_p, uploads_copy, symlinks=True)
        say("copying the live database into a scratch database (pg_dump, pg_restore)")
        with _scratch_copy(live, scratch) as copy:
            try:
                res = rollback_postgres(
                    copy.url.render_as_string(hide_password=False),
                    dump,
                    run_dir,
                    RollbackOptions(
                        since=since,
                        trust_mapping=trust_mapping,
                        same_installation=same_installation,
                    ),
                    alembic_ini=alembic_ini,
                    uploads=uploads_copy,
                    mapping=mapping,
                    progress=lambda m: say(f"rehearsal: {m}"),
                )
            except RecoveryError as err:  # the real run would stop here too: that is the finding
                result = Rehearsal(False, run_dir, [f"the rollback stops: {err.one_line()}"])
            else:
                say("checking the round trip on the rolled-back copy")
                result = Rehearsal(True, run_dir, outcome=res.outcome)
                bundle = open_bundle(run_dir / "bundle")
                note_trusted_rules(result, bundle.manifest.get("mapping") or {})
                load_losses(result, bundle.rows_db, lost.SAMPLE_LIMIT)
                if (run_dir / LOST_FILE).is_file():
                    result.losses_file = run_dir / LOST_FILE
                _check_round_trip(result, copy, want_rev, bundle)
                if uploads_copy is not None:
                    check_uploads(result, bundle, uploads_copy)
    result.checks["live_files_unchanged"] = True  # the live database was only dumped
    result.passed = not result.reasons
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "rehearsal.json", result.to_dict())
    (run_dir / "rehearsal.md").write_text(markdown(result), encoding="utf-8")
    return result


def _backup_revision(backup: str | os.PathLike[str], dump: str) -> str | None:
    """The backup's Alembic revision: its manifest's, else (a database URL) read from it."""
    from recovery.engine.base import is_postgres_url
    from recovery.restore.pgbackup import dump_revision
    from recovery.verify.pgchecks import alembic_revision

    text = normalise_spec(os.fspath(backup))
    if is_postgres_url(text):
        with PostgresEngine(text).readonly("backup database") as conn:
            return alembic_revision(conn)
    return dump_revision(dump)


@contextmanager
def _scratch_copy(live: PostgresEngine, folder: Path) -> Iterator[PostgresEngine]:
    """A new database restored from a pg_dump of ``live``; it, and every database a rollback of
    it left (``<name>_…``: the safety copy, a staged restore), dropped when the block ends."""
    name = f"{PREFIX}{pgclaims.tag()}"
    with live.readonly("live database") as conn:
        major, _ = server_version(conn)  # type: ignore[arg-type]
    dump = live.snapshot(folder / "live.dump", "live database")
    with (
        connect(live.admin_url(), "server") as admin,
        pgclaims.creating(admin, lambda: connect(live.admin_url(), "server")),
    ):
        run(admin, create_database_sql(name))
        pgclaims.claim(admin, "database", name, f"rehearsal of {live.database}")
    copy = live.with_database(name)
    try:
        pgclaims.kill_point("rehearsal:copy")
        restore_into(dump, copy.url, find_tool("pg_restore", major))
        dump.unlink()
        yield copy
    finally:
        with connect(live.admin_url(), "server") as admin:
            left = run(
                admin,
                exp.select("datname")
                .from_(exp.to_table("pg_catalog.pg_database"))
                .where(
                    exp.or_(
                        exp.EQ(this=exp.column("datname"), expression=exp.Placeholder()),
                        exp.Like(this=exp.column("datname"), expression=exp.Placeholder()),
                    )
                ),
                (name, f"{name}\\_%"),
            ).fetchall()
            for (db,) in left:
                run(admin, drop_database_sql(str(db)))


def _check_round_trip(
    result: Rehearsal, copy: PostgresEngine, want_rev: str | None, bundle: Bundle
) -> None:
    """The checks of the module docstring on the rolled-back ``copy``; each failure a reason."""
    from recovery.verify.pgchecks import alembic_revision

    outcome = result.outcome
    ver = outcome.verification if outcome else {}
    result.checks["verification_ok"] = bool(ver.get("ok"))
    if not ver.get("ok"):
        result.reasons.append(f"the pipeline's verification failed: {str(ver)[:400]}")
    if outcome is not None and outcome.aborted:
        result.reasons.append("the re-import aborted on conflicts")
    for c in outcome.conflicts if outcome else []:
        if c.resolution in (Resolution.SKIPPED, Resolution.KEPT_TARGET):
            result.reasons.append(
                f"{c.table} {list(c.key)}: {c.kind} conflict, {c.resolution} — the change is not carried"
            )
    with copy.readonly("rolled-back copy") as conn:
        got = alembic_revision(conn)
        result.checks["alembic_revision"] = {
            "expected": want_rev,
            "actual": got,
            "ok": want_rev is None or want_rev == got,
        }
        if want_rev is not None and want_rev != got:
            result.reasons.append(
                f"the rolled-back copy is at revision {got}, the backup at {want_rev}"
            )
        result.checks["post_deploy_changes"] = _changes_present(conn, bundle, result)


def _changes_present(conn: Any, bundle: Bundle, result: Rehearsal) -> dict[str, Any]:
    """Each inserted/updated bundle row of an old-schema table: its key (or remapped key) is in
    the copy. Per table: ``{"expected": n, "missing": m}``; a missing key is a reason."""
    from recovery.engine.sqlbuild import sql, table
    from recovery.model.kinds import CHANGED_KINDS
    from recovery.model.kinds import KIND_COLUMN as KIND
    from recovery.transpile.passes import plan as make_plan
    from recovery.transpile.passes import qualify_key

    remaps = {
        (r.table, str(r.old_key)): str(r.new_key)
        for r in (result.outcome.remaps if result.outcome else [])
    }
    p = make_plan(bundle.old, bundle.new, bundle.mapping, bundle.tables_with_rows())
    counts: dict[str, Any] = {}
    with closing(sqlite3.connect(file_uri(Path(bundle.rows_db), mode="ro"), uri=True)) as lite:
        for tp in p.tables:
            if tp.table not in bundle.tables_with_rows() or not tp.key:
                continue
            keys_q = (
                exp.select(*[qualify_key(tp, k) for k in tp.key])
                .from_(table(tp.table, None, "b"))
                .where(
                    exp.In(
                        this=exp.column(KIND, "b", quoted=True),
                        expressions=[exp.Literal.string(k) for k in CHANGED_KINDS],
                    )
                )
            )
            expected = missing = 0
            sample: list[list[str]] = []
            cur = lite.execute(sql(keys_q))
            while rows := cur.fetchmany(BATCH):
                keys = [[_text(v) for v in row] for row in rows]
                if len(tp.key) == 1:
                    keys = [[remaps.get((tp.table, k[0]), k[0])] for k in keys]
                expected += len(keys)
                gone = _missing_keys(conn, tp.table, list(tp.key), keys)
                missing += len(gone)
                sample.extend(gone[: max(0, SAMPLE_LIMIT - len(sample))])
            counts[tp.table] = {"expected": expected, "missing": missing}
            if missing:
                result.reasons.append(
                    f"{missing} post-deploy row(s) of {tp.table} are not in the rolled-back copy "
                    f"(e.g. key {sample[0]})"
                )
    return counts


def _text(value: Any) -> str:
    """A key value as PostgreSQL's text output shows it (bundle keys are integers or text)."""
    if isinstance(value, bytes):
        return "\\x" + value.hex()
    return str(value)


def _missing_keys(conn: Any, name: str, key: list[str], keys: list[list[str]]) -> list[list[str]]:
    """The bound ``keys`` (text) that no row of ``public.name`` has, compared as text."""
    cols = [exp.to_identifier(f"k{i}", quoted=True) for i in range(len(key))]
    source = exp.Unnest(
        expressions=[exp.cast(exp.Placeholder(), "TEXT[]") for _ in key],
        alias=exp.TableAlias(this=exp.to_identifier("k", quoted=True), columns=cols),
    )
    match = exp.and_(
        *[
            exp.EQ(
                this=exp.cast(exp.column(k, "t", quoted=True), "TEXT"),
                expression=exp.column(c.this, "k", quoted=True),
            )
            for k, c in zip(key, cols, strict=True)
        ]
    )
    target = exp.Table(
        this=exp.to_identifier(name, quoted=True),
        db=exp.to_identifier("public", quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier("t", quoted=True)),
    )
    q = (
        exp.select(*[exp.column(c.this, "k", quoted=True) for c in cols])
        .from_(source)
        .where(exp.Not(this=exp.Exists(this=exp.select("1").from_(target).where(match))))
    )
    params = [[k[i] for k in keys] for i in range(len(key))]
    return [list(r) for r in run(conn, q, params).fetchall()]

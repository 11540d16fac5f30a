"""``recovery rollback`` and ``recovery undo`` on PostgreSQL: the same steps, journal, resume, exit
codes and result files as the SQLite rollback (:mod:`recovery.pipeline`).

Steps, each journaled in ``RUN_DIR/journal.json`` (:class:`recovery.pipeline.Journal`):

  probe → safety → extract → restore (staged) → reimport → relink → restore (swap) → verify → report

* ``probe``: the live database and the dump are checked; other sessions on the live database are
  refused, each named, unless ``--force`` (let through, journaled) or ``--terminate-sessions``
  (ended with ``pg_terminate_backend``).
* ``safety``: no copy is written. The failed database itself becomes the safety copy: the swap
  renames it ``<live>_safety_<token>``. Journaled: its name and a fingerprint of its rows (per
  table count and sum of row hashes, :meth:`PostgresEngine.fingerprint`) at this instant.
* ``extract``: :func:`recovery.bundle.pgextract.extract_postgres` into ``RUN_DIR/bundle``, while
  ``pg_restore`` stages the backup as a new database beside the live one
  (:meth:`PostgresEngine.stage_restore`: the live database's owner, locale, privileges, settings
  and extensions).
* ``restore`` ``staged`` → ``reimport`` → ``relink``: the re-import
  (:func:`recovery.reimport.pgmerge.reimport_postgres`, one transaction) and the relink write into
  the STAGED database, so nothing the app can see has changed yet.
* ``restore`` ``swapping`` → ``done``: :meth:`PostgresEngine.swap_in` refuses new connections to the
  live database, refuses (or with ``--terminate-sessions`` ends) the sessions still on it, checks
  that its fingerprint is still the one journaled by ``safety`` (else nothing the extract saw is
  all there is: refused, run again), then renames live → safety name and staged → live name in ONE
  transaction. That commit is the only moment the app sees a change.
* A run killed anywhere is resumed by the same command: before the swap commit, the staged
  database is dropped and staged again (the extract is redone when the live rows changed); after
  it, only verify and report are left. A run that cannot tell says which databases exist.
* ``recovery undo RUN`` renames back in one transaction: live → ``<live>_undone_<token>`` (kept),
  safety → live.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.bundle.store import Bundle, open_bundle
from recovery.engine.base import Connection, Staged, normalise_spec
from recovery.engine.postgres import (
    PostgresEngine,
    connect,
    database_exists,
    ident,
    run,
    user_tables,
)
from recovery.errors import ExitCode, RecoveryError
from recovery.files.uploads import FilesConfig
from recovery.model.kinds import RowKind
from recovery.model.outcome import ConflictMode, Outcome
from recovery.options import MergeOptions, RollbackOptions
from recovery.pipeline import (
    KILL_STEP_ENV,
    Journal,
    RunResult,
    UndoResult,
    check_uploads,
    check_writable,
)

log = logging.getLogger(__name__)

Progress = Callable[[str], None]
MAINTENANCE_DATABASES = ("postgres", "template0", "template1")
"""Databases a rollback never renames: the tool's own administrative connections use ``postgres``."""
OUTCOME_FILE = "outcome.json"


def rollback_postgres(
    db: str,
    backup: str,
    run_dir: Path,
    options: RollbackOptions,
    *,
    alembic_ini: Any = None,
    uploads: Any = None,
    files: FilesConfig | None = None,
    mapping: Any = None,
    confirm: Callable[[dict[str, Any]], bool] | None = None,
    progress: Progress | None = None,
) -> RunResult:
    """Roll the PostgreSQL database ``db`` (a URL) back to ``backup`` (a pg_dump custom-format
    file) without losing the post-deploy work; journaled in ``run_dir`` (see the module
    docstring). ``confirm(plan)`` is asked with the extract's summary before the first change on
    the server that the app could see. Exit codes as the SQLite rollback's."""
    live = PostgresEngine(normalise_spec(str(db)))
    backup_p = Path(backup)
    run_dir = Path(run_dir)
    files = files or FilesConfig()
    say = progress or log.info
    opts = options
    if live.database in MAINTENANCE_DATABASES:
        raise RecoveryError(
            f"refusing to roll back the server's own database {live.database}; nothing was changed",
            "name the application's database in the URL",
        )
    if opts.downgrade_to:
        raise RecoveryError(
            "--downgrade-to is not supported on PostgreSQL; nothing was changed",
            "restore from the backup instead (omit --downgrade-to)",
        )
    args: dict[str, Any] = {
        "db": live.spec,
        "backup": str(backup_p.resolve()),
        "engine": "postgresql",
        "since": opts.since,
        "mapping": str(mapping) if mapping else None,
        "alembic_ini": str(alembic_ini) if alembic_ini else None,
        "uploads": str(uploads) if uploads else None,
        "on_conflict": opts.on_conflict.value,
        "apply_deletes": opts.apply_deletes,
        "downgrade_to": None,
    }
    if opts.trust_mapping:
        args["trust_mapping"] = True
    if opts.conflicts is not ConflictMode.CELL:
        args["conflicts"] = opts.conflicts.value
    if opts.since is not None:
        from recovery.compare.timestamps import parse_since

        parse_since(opts.since)
    if mapping is not None:
        from recovery.transpile.mapping import load_mapping

        load_mapping(mapping)
    check_uploads(uploads)
    check_writable(run_dir, "run folder (--out)")
    if opts.dry_run:
        live.check("live database")
        return _dry_run(live, backup_p, run_dir, uploads, mapping, alembic_ini, opts, files, say)
    with one_run_per_database(live):
        try:
            return _run(live, backup_p, run_dir, args, uploads, mapping, alembic_ini, opts, files,
                        confirm, say)  # fmt: skip
        except BaseException as exc:
            truth = _failure_truth(exc, run_dir, live)
            if truth is None:
                raise
            raise truth from exc


# ---- the run ------------------------------------------------------------------------------------


def _run(
    live: PostgresEngine,
    backup: Path,
    run_dir: Path,
    args: dict[str, Any],
    uploads: Any,
    mapping: Any,
    alembic_ini: Any,
    opts: RollbackOptions,
    files: FilesConfig,
    confirm: Callable[[dict[str, Any]], bool] | None,
    say: Progress,
) -> RunResult:
    journal = Journal(run_dir, args)
    if journal.state("undo") is not None:
        raise RecoveryError(
            f"the run in {run_dir} was undone (`recovery undo`): the live database is the failed "
            "release's database again; nothing was changed",
            "start a new rollback with a new --out folder",
        )
    if journal.done("report"):
        say("this run already finished; nothing to do")
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        code = journal.info("report").get("exit_code")
        return RunResult(
            run_dir,
            None,
            {"report.json": run_dir / "report.json"},
            True,
            True,
            {"summary": report.get("summary")},
            finished_exit_code=int(code) if isinstance(code, int) else ExitCode.REVIEW,
        )
    if journal.resumed:  # first: a kill inside the swap may have left connections refused
        settle_interrupted_swap(live, journal)
    live.check("live database")
    if not journal.done("restore"):
        _before_swap(live, backup, run_dir, uploads, mapping, alembic_ini, opts, files, confirm,
                     say, journal)  # fmt: skip
        if journal.state("restore") == "aborted":
            return _report(live, run_dir, journal, say, swapped=False)
    return _report(live, run_dir, journal, say, swapped=True)


def _before_swap(
    live: PostgresEngine,
    backup: Path,
    run_dir: Path,
    uploads: Any,
    mapping: Any,
    alembic_ini: Any,
    opts: RollbackOptions,
    files: FilesConfig,
    confirm: Callable[[dict[str, Any]], bool] | None,
    say: Progress,
    journal: Journal,
) -> None:
    """Everything up to and including the swap; nothing the app sees changes before its commit,
    so a killed run redoes this part whole (the extract only when the live rows changed)."""
    for step in ("reimport", "relink"):  # written into a staged database that is staged anew
        journal.data["steps"].pop(step, None)
    (run_dir / OUTCOME_FILE).unlink(missing_ok=True)
    say("checking the live database and the backup")
    journal.mark("probe", "start")
    journal.mark("probe", "done", **probe(live, backup, opts))
    prior = journal.info("safety").get("fingerprint") if journal.done("safety") else None
    say("recording the live database's rows (it becomes the safety copy at the swap)")
    journal.mark("safety", "start")
    token = _token(run_dir)
    safety_name = journal.info("safety").get("name") or live.kept_name("safety", token)
    digest = fingerprint_digest(live)
    journal.mark("safety", "done", method="rename", name=safety_name, fingerprint=digest)
    if prior is not None and prior != digest:
        journal.data["steps"].pop("extract", None)  # the live rows changed since: extract again
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-stage")
    staging: Future[Staged] | None = pool.submit(live.stage_restore, backup)
    pool.shutdown(wait=False)
    swapped = False
    try:
        bundle = _extract(live, backup, run_dir, uploads, mapping, alembic_ini, opts, files,
                          journal, say)  # fmt: skip
        if confirm is not None and not confirm(plan_summary(bundle)):
            raise RecoveryError(
                "stopped at your request; nothing was changed", exit_code=ExitCode.REFUSED
            )
        say("restoring the backup into a new database beside the live one")
        journal.mark("restore", "start", method="backup", safety=safety_name)
        assert staging is not None
        staged = staging.result()
        staging = None
        if not opts.same_installation:
            refuse_another_installation(live.with_database(staged.location), live, backup)
        journal.mark(
            "restore", "staged", method="backup", safety=safety_name, staged=staged.location,
            sha256=staged.sha256,
        )  # fmt: skip
        say("re-importing post-deploy changes into it (one transaction)")
        journal.mark("reimport", "start", into=staged.location)
        outcome = _reimport(live, staged, bundle, opts, run_dir, files)
        journal.mark("reimport", "done", already_applied=outcome.already_applied)
        if outcome.aborted:
            live.discard(staged)
            journal.mark("restore", "aborted", method="backup", safety=safety_name)
            return
        if not journal.done("relink"):
            journal.mark("relink", "start")
            outcome.files = _relink(bundle, live.with_database(staged.location), uploads, files,
                                    outcome)  # fmt: skip
            save_outcome(run_dir, outcome)
            journal.mark("relink", "done")
        say("swapping the restored database in (one transaction)")
        journal.mark(
            "restore", "swapping", method="backup", safety=safety_name, staged=staged.location,
            sha256=staged.sha256, allow_connections=live.facts().allow_connections,
        )  # fmt: skip
        live.swap_in(
            staged,
            keep_as=safety_name,
            terminate=opts.terminate_sessions,
            check=lambda conn: _still_as_extracted(live, conn, digest),
        )
        swapped = True
        journal.mark("restore", "done", method="backup", safety=safety_name, sha256=staged.sha256)
    finally:
        if staging is not None:  # refused or failed before the staged database was taken
            try:
                live.discard(staging.result())
            except BaseException:  # noqa: BLE001 - a failed staging left nothing
                pass
        if not swapped and journal.state("restore") in ("staged", "start"):
            live.discard(Staged(live.staging_name(), ""))


def probe(live: PostgresEngine, backup: Path, opts: RollbackOptions) -> dict[str, Any]:
    """The refusals before anything is written: the dump, the sessions on the live database."""
    from recovery.engine.postgres import is_dump_file

    if not backup.is_file() or not is_dump_file(backup):
        raise RecoveryError(
            f"backup {backup} is not a pg_dump custom-format file; nothing was changed",
            "pass the .dump written by recovery snapshot/sample",
        )
    holders = live.holders()
    info: dict[str, Any] = {"forced_past": [], "terminated": []}
    if holders and opts.terminate_sessions:
        info["terminated"] = [h.describe() for h in live.terminate_holders()]
    elif holders and not opts.force:
        raise RecoveryError(
            live.describe_holders(holders)
            + "; their writes after the extract would be lost; nothing was changed",
            "stop the application, or pass --terminate-sessions to end those sessions "
            "(--force alone goes on, but the swap refuses while they are connected)",
        )
    elif holders:
        info["forced_past"] = [h.describe() for h in holders]
    from recovery.verify.pgchecks import alembic_revision

    with live.readonly("live database") as conn:
        info["live_revision"] = alembic_revision(conn)
    return info


def refuse_another_installation(
    restored: PostgresEngine, live: PostgresEngine, backup: Path
) -> None:
    """Refuse (exit 2) a dump of another installation of the same application (same tables and
    revision, other rows), as the SQLite rollback does (:mod:`recovery.capture.pairing`, the same
    sample and thresholds): per table, the first rows by key of the ``restored`` backup whose key
    is also in ``live``; a row agrees when at least half its shared non-key columns hold the same
    text. Bounded: at most ``SAMPLE_ROWS`` rows of ``MAX_TABLES`` tables are read."""
    from recovery.capture.pairing import AGREE_THRESHOLD, MIN_PRESENT

    present = agree = 0
    with restored.readonly("staged database") as old, live.readonly("live database") as new:
        for schema, name, key, shared in _paired_tables(old, new):
            rows = run(old, _sample_sql(schema, name, key, shared, None)).fetchall()
            if not rows:
                continue
            keys = [tuple(r[: len(key)]) for r in rows]
            params = [v for k in keys for v in k]
            got = run(new, _sample_sql(schema, name, key, shared, len(keys)), params).fetchall()
            found = {tuple(r[: len(key)]): r[len(key) :] for r in got}
            for r in rows:
                there = found.get(tuple(r[: len(key)]))
                if there is None:
                    continue
                present += 1
                same = sum(1 for a, b in zip(r[len(key) :], there, strict=True) if a == b)
                agree += int(2 * same >= len(shared))
    if present >= MIN_PRESENT and agree < AGREE_THRESHOLD * present:
        raise RecoveryError(
            f"{backup} looks like a backup of another database: of {present} sampled rows whose "
            f"keys exist in both, only {agree} hold the same content (rows of the backup); "
            "nothing was changed",
            "pass the backup taken from this installation's database (or --same-installation if "
            "it is)",
        )


def _paired_tables(old: Any, new: Any) -> list[tuple[str, str, list[str], list[str]]]:
    """(schema, table, primary key, shared non-key columns) of the tables both sides hold with the
    same primary key, bookkeeping tables left out."""
    from recovery.capture.pairing import BOOKKEEPING, MAX_TABLES

    out = []
    for schema, name in user_tables(old)[: MAX_TABLES * 2]:
        if name in BOOKKEEPING:
            continue
        key, cols = _key_columns(old, schema, name)
        new_key, new_cols = _key_columns(new, schema, name)
        if not key or key != new_key:
            continue
        shared = [c for c in cols if c in new_cols and c not in key]
        if shared:
            out.append((schema, name, key, shared))
    return out[:MAX_TABLES]


def _key_columns(conn: Any, schema: str, name: str) -> tuple[list[str], list[str]]:
    """(primary-key columns in key order, every column) of ``schema.name``; ([], []) when there
    is no such table."""
    rel = f"{ident(schema)}.{ident(name)}"
    cols = run(
        conn,
        "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (rel,),
    ).fetchall()
    key = run(
        conn,
        "SELECT a.attname FROM pg_catalog.pg_index AS i JOIN pg_catalog.pg_attribute AS a "
        "ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) "
        "WHERE i.indrelid = to_regclass(%s) AND i.indisprimary "
        "ORDER BY array_position(i.indkey, a.attnum)",
        (rel,),
    ).fetchall()
    return [r[0] for r in key], [r[0] for r in cols]


def _sample_sql(
    schema: str, name: str, key: list[str], shared: list[str], keyed: int | None
) -> exp.Expression:
    """The key and shared columns as text: the first ``SAMPLE_ROWS`` rows by key (``keyed``
    None), or the rows whose key is one of ``keyed`` bound key tuples."""
    from recovery.capture.pairing import SAMPLE_ROWS

    def text(c: str) -> exp.Expression:
        return exp.cast(exp.column(c, quoted=True), "text")

    q = exp.select(*[text(c) for c in key + shared]).from_(
        exp.Table(
            this=exp.to_identifier(name, quoted=True), db=exp.to_identifier(schema, quoted=True)
        )
    )
    if keyed is None:
        return q.order_by(*[exp.column(k, quoted=True) for k in key]).limit(SAMPLE_ROWS)
    row = exp.Tuple(expressions=[text(k) for k in key])
    params = [exp.Tuple(expressions=[exp.Placeholder() for _ in key]) for _ in range(keyed)]
    return q.where(exp.In(this=row, expressions=params))


def _extract(
    live: PostgresEngine,
    backup: Path,
    run_dir: Path,
    uploads: Any,
    mapping: Any,
    alembic_ini: Any,
    opts: RollbackOptions,
    files: FilesConfig,
    journal: Journal,
    say: Progress,
) -> Bundle:
    bundle_dir = run_dir / "bundle"
    if journal.done("extract") and bundle_dir.is_dir():
        return open_bundle(bundle_dir)
    from recovery.bundle.pgextract import extract_postgres

    say("extracting post-deploy changes")
    journal.mark("extract", "start")
    if bundle_dir.exists():  # a finished bundle from a run killed before journaling it
        import shutil

        shutil.rmtree(bundle_dir)
    res = extract_postgres(
        str(backup),
        live.url.render_as_string(hide_password=False),
        bundle_dir,
        since=opts.since,
        mapping=mapping,
        alembic_ini=alembic_ini,
        uploads=uploads,
        files=files,
        trust_mapping=opts.trust_mapping,
    )
    if res.plan.errors:
        journal.mark("extract", "failed", errors=list(res.plan.errors))
        raise RecoveryError(
            "the re-import plan has errors; the live database was not touched: "
            + "; ".join(res.plan.errors),
            "add a mapping file (see the README) and run again",
        )
    journal.mark("extract", "done", bundle_id=res.bundle.bundle_id)
    return res.bundle


def _reimport(
    live: PostgresEngine,
    staged: Staged,
    bundle: Bundle,
    opts: RollbackOptions,
    run_dir: Path,
    files: FilesConfig,
) -> Outcome:
    from recovery.reimport.pgmerge import reimport_postgres

    merge = MergeOptions(opts.on_conflict, opts.prefer, opts.conflicts, opts.apply_deletes)
    target = live.with_database(staged.location)
    outcome = reimport_postgres(
        target.url.render_as_string(hide_password=False),
        bundle,
        merge,
        dry_run=False,
        run_dir=run_dir,
        files=files,
    )
    outcome.target = live.spec  # the staged database becomes the live one at the swap
    save_outcome(run_dir, outcome)
    return outcome


def _relink(
    bundle: Bundle, target: PostgresEngine, uploads: Any, files: FilesConfig, outcome: Outcome,
    dry_run: bool = False,
) -> dict[str, Any] | None:  # fmt: skip
    """Re-link uploads in ``target`` following the re-import's remaps
    (:mod:`recovery.files.pgrelink`); None without ``--uploads``."""
    if not uploads:
        return None
    from recovery.files.pgrelink import relink_postgres

    return relink_postgres(
        bundle,
        target.url.render_as_string(hide_password=False),
        Path(uploads),
        files,
        dry_run=dry_run,
        remaps=outcome.remaps,
    )


def _still_as_extracted(live: PostgresEngine, conn: Connection, digest: str) -> None:
    """Refuse the swap when the live rows are no longer those the safety step recorded (a
    session wrote after it): what the extract read would not be all there is."""
    kill_point("restore:blocked")
    now = fingerprint_digest(live, conn)
    if now != digest:
        raise RecoveryError(
            f"the live database {live.spec} was written to during the rollback (its rows differ "
            "from those recorded before the extract); nothing was changed",
            "stop the application, then run the same command again (it extracts anew)",
        )


def _report(
    live: PostgresEngine, run_dir: Path, journal: Journal, say: Progress, swapped: bool
) -> RunResult:
    """verify (after a swap) and report: the same run files as on SQLite."""
    from recovery.report import write_run_files
    from recovery.report.runfiles import read_outcome_file

    bundle = open_bundle(run_dir / "bundle")
    outcome = read_outcome_file(run_dir / OUTCOME_FILE)
    if swapped and not journal.done("verify"):
        from recovery.verify.pgchecks import verify_postgres

        journal.mark("verify", "start")
        outcome.verification = verify_postgres(live, outcome, bundle.old.alembic_revision)
        save_outcome(run_dir, outcome)
        journal.mark("verify", "done", ok=outcome.verification.get("ok"))
    late = {
        "checked": swapped,
        "late_commits": 0 if swapped else None,
        "needs_review": False,
        "method": "the live rows' fingerprint, checked with new connections refused, before the swap",
    }
    journal.mark("late_check", "done", **late)
    journal.mark("report", "start")
    paths = write_run_files(
        run_dir, outcome, bundle, {"journal": journal.data["steps"], "late_commits": late}
    )
    result = RunResult(run_dir, outcome, paths, journal.resumed, False, journal.data["steps"], late)
    if not swapped:
        result.note = (
            f"aborted: conflicts found, nothing was re-imported and nothing was changed: the live "
            f"database {live.spec} is still the failed release's. Re-run with --on-conflict skip "
            "or remap, or review conflicts.csv"
        )
    journal.data["live_left"] = {"fingerprint": fingerprint_digest(live)}
    journal.mark("report", "done", exit_code=int(result.exit_code))
    return result


# ---- resume and failure ----------------------------------------------------------------------


def settle_interrupted_swap(live: PostgresEngine, journal: Journal) -> str:
    """After a kill during the swap: which side of its one transaction the server is on.
    ``"swapped"`` (the safety database exists: the commit happened; journaled as done),
    ``"not swapped"`` (connections to the live database allowed again as they were), or
    ``"nothing to settle"``."""
    info = journal.info("restore")
    if info.get("state") not in ("swapping", "staged", "start"):
        return "nothing to settle"
    safety = info.get("safety")
    with connect(live.admin_url(), "server") as admin:
        swapped = isinstance(safety, str) and database_exists(admin, safety)
        live_there = database_exists(admin, live.database)
    if swapped and live_there:
        journal.mark("restore", "done", method="backup", safety=safety, sha256=info.get("sha256"))
        return "swapped"
    if swapped or not live_there:
        raise RecoveryError(
            f"cannot tell the state of the swap: database {live.database} "
            f"{'exists' if live_there else 'does not exist'}, the safety database {safety} "
            f"{'exists' if swapped else 'does not exist'}; nothing was changed by this command",
            "rename the databases by hand (ALTER DATABASE … RENAME TO …), then run again",
        )
    if info.get("state") == "swapping" and info.get("allow_connections", True):
        live.allow_connections(True)  # a kill between the block and the renaming commit
    return "not swapped"


def _failure_truth(exc: BaseException, run_dir: Path, live: PostgresEngine) -> RecoveryError | None:
    """The one true line for a run that failed after its swap committed (exit 3); None before the
    swap (the live database is untouched: the original error says so)."""
    try:
        data = json.loads((run_dir / "journal.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if (data.get("args") or {}).get("db") != live.spec:
        return None
    steps = data.get("steps") or {}
    if steps.get("restore", {}).get("state") != "done" or "undo" in steps:
        return None
    from recovery.errors import describe

    cause = exc.message if isinstance(exc, RecoveryError) else describe(exc)[0]
    return RecoveryError(
        f"the rollback failed after the swap ({cause}): the live database {live.spec} is the "
        f"backup with the post-deploy work re-imported; verification or the report did not finish",
        f"run the same command to finish them, or `recovery undo {run_dir}` to put the failed "
        "release's database back",
        ExitCode.FAILED,
    )


# ---- helpers --------------------------------------------------------------------------------------


@contextmanager
def one_run_per_database(live: PostgresEngine) -> Iterator[None]:
    """A session advisory lock on the server (on its ``postgres`` database, not the live one) for
    the whole run: two rollbacks or undos of one database would swap over each other."""
    key = int.from_bytes(
        hashlib.sha256(f"recovery:{live.database}".encode()).digest()[:8], "big", signed=True
    )
    with connect(live.admin_url(), "server") as admin:
        got = run(admin, "SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]
        if not got:
            raise RecoveryError(
                f"another `recovery rollback` or `undo` is running on {live.spec}",
                "wait for it to finish (or stop it), then run this command again",
            )
        try:
            yield
        finally:
            run(admin, "SELECT pg_advisory_unlock(%s)", (key,))


def fingerprint_digest(live: PostgresEngine, conn: Connection | None = None) -> str:
    """sha256 of :meth:`PostgresEngine.fingerprint` (every table's row count and row-hash sum),
    on ``conn`` when given (a connection opened before new ones were refused)."""
    fp = live.fingerprint(conn)
    return hashlib.sha256(json.dumps(fp, sort_keys=True).encode()).hexdigest()


def kill_point(point: str) -> None:
    """Test-only: SIGKILL this process when ``RECOVERY_TEST_KILL_AT_STEP`` names ``point`` (as the
    journal's own points do): here ``restore:blocked``, with new connections to the live database
    refused and the renaming transaction not begun."""
    if os.environ.get(KILL_STEP_ENV) == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def _token(run_dir: Path) -> str:
    return hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:8]


def plan_summary(bundle: Bundle) -> dict[str, Any]:
    """What the confirmation shows (the SQLite rollback's summary)."""
    typed = bundle.table_counts.values()
    return {
        "deploy_time": bundle.manifest.get("deploy_time"),
        RowKind.INSERTED: sum(v.inserted for v in typed),
        RowKind.UPDATED: sum(v.updated for v in typed),
        RowKind.DELETED: sum(v.deleted for v in typed),
        "lost": sum(v.lost for v in typed),
        "tables": bundle.counts,
        "from_revision": bundle.new.alembic_revision,
        "to_revision": bundle.old.alembic_revision,
    }


def save_outcome(run_dir: Path, outcome: Outcome) -> None:
    """``RUN_DIR/outcome.json`` written atomically, mode 0600 (users' data)."""
    tmp = run_dir / f"{OUTCOME_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(fd, 0o600)
    with open(fd, "w", encoding="utf-8") as fh:
        fh.write(outcome.to_json())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, run_dir / OUTCOME_FILE)


# ---- dry run --------------------------------------------------------------------------------------


def _dry_run(
    live: PostgresEngine,
    backup: Path,
    run_dir: Path,
    uploads: Any,
    mapping: Any,
    alembic_ini: Any,
    opts: RollbackOptions,
    files: FilesConfig,
    say: Progress,
) -> RunResult:
    """The whole run on scratch databases the tool drops: the same report, nothing changed on the
    server (no database left behind, the live one not written)."""
    import tempfile

    from recovery.bundle.pgextract import extract_postgres
    from recovery.engine.postgres import backup_database
    from recovery.report import write_run_files
    from recovery.reimport.pgmerge import reimport_postgres

    for holder in live.holders():
        say(f"dry run: a real rollback would refuse while {holder.describe()}")
    probe(live, backup, RollbackOptions(force=True))
    with tempfile.TemporaryDirectory(prefix="recovery-dry-run-") as tmp:
        say("dry run: extracting")
        res = extract_postgres(
            str(backup),
            live.url.render_as_string(hide_password=False),
            Path(tmp) / "bundle",
            since=opts.since,
            mapping=mapping,
            alembic_ini=alembic_ini,
            uploads=uploads,
            files=files,
            trust_mapping=opts.trust_mapping,
        )
        if res.plan.errors:
            raise RecoveryError(
                "the re-import plan has errors: " + "; ".join(res.plan.errors),
                "add a mapping file (see the README)",
            )
        say("dry run: restoring and re-importing into a scratch database")
        merge = MergeOptions(opts.on_conflict, opts.prefer, opts.conflicts, opts.apply_deletes)
        with backup_database(backup, live) as scratch:
            if not opts.same_installation:
                refuse_another_installation(scratch, live, backup)
            outcome = reimport_postgres(
                scratch.url.render_as_string(hide_password=False),
                res.bundle,
                merge,
                dry_run=True,
                run_dir=run_dir,
                files=files,
            )
            outcome.target = live.spec
            outcome.dry_run = True
            outcome.files = (
                _relink(res.bundle, scratch, uploads, files, outcome, dry_run=True)
                if uploads
                else None
            )
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths = write_run_files(
            run_dir, outcome, res.bundle, {"dry_run_note": "nothing was changed"}
        )
    return RunResult(run_dir, outcome, paths)


# ---- undo -----------------------------------------------------------------------------------------


def undo_postgres(
    run_dir: Path,
    data: dict[str, Any],
    force: bool = False,
    dry_run: bool = False,
    confirm: Callable[[dict[str, Any]], bool] | None = None,
    progress: Progress | None = None,
) -> UndoResult:
    """Put the run's safety database (the failed release's database, renamed by the swap) back
    under the live name, in one renaming transaction; the database it replaces is kept renamed
    ``<live>_undone_<token>``. Refused while other sessions are connected, and when the live
    rows changed since the run left them unless ``force``. A second undo changes nothing; a
    killed undo is finished by running it again."""
    say = progress or log.info
    run = Path(run_dir)
    live = journaled_engine(str(data["args"]["db"]))
    steps = data["steps"]
    restore = steps.get("restore", {})
    safety = restore.get("safety")
    shown: Any = live.spec  # the URL (a Path would fold its "//"); the CLI prints it
    undo_info = steps.get("undo", {})
    if undo_info.get("state") == "done":
        return UndoResult(run, shown, "already_undone", Path(str(safety)))
    with one_run_per_database(live):
        journal = Journal(run, data["args"])
        if undo_info.get("state") == "start":
            kept = str(undo_info.get("kept"))
            with connect(live.admin_url(), "server") as admin:
                if database_exists(admin, kept) and database_exists(admin, live.database):
                    journal.mark(
                        "undo", "done", kept=kept, safety=safety
                    )  # killed after its commit
                    return UndoResult(run, shown, "already_undone", Path(str(safety)), Path(kept))
            if undo_info.get("allow_connections", True):  # killed with connections refused
                live.allow_connections(True)
        if restore.get("state") in ("swapping", "staged", "start"):
            settle_interrupted_swap(live, journal)
            restore = journal.info("restore")
        if restore.get("state") != "done" or not isinstance(safety, str):
            raise RecoveryError(
                f"the run in {run} never swapped the live database {live.spec}; there is nothing "
                "to undo",
                "the live database is still the one the rollback found",
            )
        with connect(live.admin_url(), "server") as admin:
            if not database_exists(admin, safety):
                raise RecoveryError(
                    f"the safety database {safety} is gone; nothing was changed",
                    "restore the failed release's database from your own backup",
                )
        holders = live.holders()
        if holders:
            raise RecoveryError(
                live.describe_holders(holders) + "; nothing was changed",
                "stop the application, then run `recovery undo` again",
            )
        left = (data.get("live_left") or {}).get("fingerprint")
        now = fingerprint_digest(live)
        changed = left is None or left != now
        if changed and not force:
            why = (
                "the run did not record what it left (resume it first with the same command)"
                if left is None
                else "it was written to after the rollback"
            )
            raise RecoveryError(
                f"the live database {live.spec} changed since the run in {run} left it ({why}); "
                "nothing was changed",
                "undoing would take those changes out of the live database: pass --force to undo "
                "anyway (the current database is kept, renamed)",
            )
        if dry_run:
            return UndoResult(run, shown, "dry_run", Path(safety), None, changed)
        if confirm is not None and not confirm(
            {"db": live.spec, "safety": safety, "changed": changed}
        ):
            raise RecoveryError("stopped at your request; nothing was changed")
        kept = live.kept_name("undone", _token(run))
        say(f"putting the safety database {safety} back as {live.database}")
        journal.mark(
            "undo", "start", forced=bool(changed), kept=kept, safety=safety,
            allow_connections=live.facts().allow_connections,
        )  # fmt: skip
        live.swap_in(
            Staged(safety, ""),
            keep_as=kept,
            check=lambda conn: _unchanged_since(live, conn, now),
            drop_on_refusal=False,
        )
        journal.mark("undo", "done", forced=bool(changed), kept=kept, safety=safety)
        return UndoResult(run, shown, "undone", Path(safety), Path(kept), changed)


def postgres_run(run_dir: Path) -> dict[str, Any] | None:
    """The journal of ``run_dir`` when it is a PostgreSQL rollback's (its ``db`` is a URL), else
    None (no journal, unreadable, or SQLite's: :func:`recovery.pipeline.undo` says why)."""
    from recovery.engine.base import is_postgres_url

    try:
        data = json.loads((Path(run_dir) / "journal.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = (
        isinstance(data, dict)
        and data.get("format") == "recovery-journal/1"
        and isinstance(data.get("steps"), dict)
        and isinstance(data.get("args"), dict)
        and isinstance(data["args"].get("db"), str)
        and all(isinstance(v, dict) for v in data["steps"].values())
    )
    return data if ok and is_postgres_url(data["args"]["db"]) else None


def journaled_engine(spec: str) -> PostgresEngine:
    """The database of a journaled URL. The journal never holds the password (it is written
    masked, ``***``): the masked one is dropped so that libpq takes the password from its own
    places, ``PGPASSWORD`` or ``~/.pgpass``, as for any password-less URL."""
    engine = PostgresEngine(spec)
    if engine.url.password == "***":
        u = engine.url  # URL.set() ignores None: build it again without the password
        engine.url = u.create(u.drivername, u.username, None, u.host, u.port, u.database, u.query)
    return engine


def _unchanged_since(live: PostgresEngine, conn: Connection, digest: str) -> None:
    kill_point("undo:blocked")
    if fingerprint_digest(live, conn) != digest:
        raise RecoveryError(
            f"the live database {live.spec} was written to during the undo; nothing was changed",
            "stop the application and run `recovery undo` again",
        )

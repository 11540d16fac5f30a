"""The public API: one keyword-only function per ``recovery`` command, as alembic's
``alembic.command``. The click commands (:mod:`recovery.cli`) only parse options, call the function
of the same name and print its result; a script calls the same functions::

    from recovery import commands

    snap = commands.snapshot(db="gestima.db", uploads="uploads")
    print(commands.diff(backup=snap.backup, db="gestima.db").exit_code)
    run = commands.rollback(db="gestima.db", backup=snap.backup, out="run", alembic_ini="app/alembic.ini",
                            uploads="uploads")
    print(run.exit_code, run.outcome.to_dict()["totals"])

The exit-code contract, the same for the API and the CLI:

* a function that finishes returns a typed result whose ``exit_code`` is exactly what
  ``recovery <verb>`` exits with (0 done, 1 done with something to review, 3 failed — e.g. an
  aborted re-import, a demo that does not verify);
* bad input, a refusal or a failure the tool can explain raises
  :class:`~recovery.errors.RecoveryError`, whose ``exit_code`` (2 refused/nothing changed, 3
  failed) is what the CLI exits with after printing its one line;
* any other exception (``OSError``, ``sqlite3.Error``, a bug) is mapped by :func:`error_for` to
  the ``RecoveryError`` the CLI prints — exit 2 when the command had changed nothing yet, else 3.

Options that change how a run behaves travel as one frozen value
(:class:`~recovery.options.RollbackOptions`, :class:`~recovery.options.ReimportOptions`).
Diagnostics go to the ``recovery.*`` loggers (:mod:`logging`): step messages at INFO, step
starts/ends and decisions at DEBUG; the functions print nothing.
"""

from __future__ import annotations

import logging
import os
import shutil
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recovery.errors import ExitCode, RecoveryError
from recovery.options import ReimportOptions, RollbackOptions

if TYPE_CHECKING:
    from recovery.bundle.extract import ExtractResult
    from recovery.bundle.store import Bundle
    from recovery.capture.snapshot import Snapshot
    from recovery.compare.diff import DiffResult as RowDiff
    from recovery.engine.pgclaims import CleanResult
    from recovery.migrate.check import CheckResult
    from recovery.pipeline import RunResult, UndoResult
    from recovery.reimport.deletes import DeletesResult
    from recovery.report.runfiles import ReportResult
    from recovery.verify.rehearse import Rehearsal

PathArg = str | os.PathLike[str]
log = logging.getLogger(__name__)

__all__ = [
    "COMMANDS",
    "DemoResult",
    "DiffCommandResult",
    "ExtractCommandResult",
    "RelinkResult",
    "ReportCommandResult",
    "SampleResult",
    "SnapshotResult",
    "ReimportOptions",
    "RollbackOptions",
    "apply_deletes",
    "check",
    "clean_stale",
    "demo",
    "diff",
    "error_for",
    "extract",
    "rehearse",
    "reimport",
    "relink",
    "report",
    "rollback",
    "sample",
    "snapshot",
    "undo",
]


# ---------------------------------------------------------------------------------------------
# results of the commands whose library function returns no exit code of its own


@dataclass(frozen=True)
class SampleResult:
    """``recovery sample``: the world folder written."""

    out_dir: Path
    parts: int
    seed: int
    exit_code: int = ExitCode.OK


@dataclass(frozen=True)
class SnapshotResult:
    """``recovery snapshot``: the backup and its manifest."""

    snapshot: Snapshot
    exit_code: int = ExitCode.OK

    @property
    def backup(self) -> Path:
        return self.snapshot.backup

    @property
    def manifest_path(self) -> Path:
        return self.snapshot.manifest_path

    @property
    def manifest(self) -> dict[str, Any]:
        return self.snapshot.manifest


@dataclass(frozen=True)
class DiffCommandResult:
    """``recovery diff``: the comparison (:class:`recovery.compare.diff.DiffResult`); exit 1 when
    anything differs (rows, values at risk, schema), else 0."""

    diff: RowDiff

    @property
    def changes(self) -> Any:
        """The row changes (:class:`recovery.compare.changes.ChangeSet`)."""
        return self.diff.changes

    @property
    def schema(self) -> Any:
        """The schema difference (:class:`recovery.compare.schemadiff.SchemaDiff`)."""
        return self.diff.schema

    @property
    def differs(self) -> bool:
        d = self.diff
        return d.changes.total > 0 or d.changes.at_risk > 0 or not d.schema.is_empty

    @property
    def exit_code(self) -> int:
        return ExitCode.REVIEW if self.differs else ExitCode.OK


@dataclass(frozen=True)
class ExtractCommandResult:
    """``recovery extract``: the bundle and its summary; exit 1 when values cannot be carried
    (lost) or the plan has errors."""

    extract: ExtractResult
    summary: dict[str, Any]

    @property
    def bundle(self) -> Bundle:
        return self.extract.bundle

    @property
    def exit_code(self) -> int:
        return (
            ExitCode.REVIEW
            if self.summary["lost"] or self.summary["planning_errors"]
            else ExitCode.OK
        )


@dataclass(frozen=True)
class RelinkResult:
    """``recovery relink``: its report (:func:`recovery.files.relink.relink`); exit 1 when files
    are missing or unsafe."""

    report: dict[str, Any]
    dry_run: bool

    @property
    def exit_code(self) -> int:
        from recovery.model.outcome import judge
        from recovery.model.values import FileResult

        files = FileResult.from_dict(self.report)
        return judge(
            files_missing=files.missing, files_unsafe=files.unsafe, run_files=False
        ).exit_code


@dataclass(frozen=True)
class ReportCommandResult:
    """``recovery report``: the rendered report (:class:`recovery.report.runfiles.ReportResult`);
    the exit code is its verdict's."""

    report: ReportResult

    @property
    def exit_code(self) -> int:
        from recovery.model.outcome import verdict_exit_code

        return verdict_exit_code(self.report.headline["verdict"])


@dataclass(frozen=True)
class DemoResult:
    """``recovery demo``: the sample world and its rollback. The world is built to lose values
    (new-only columns and tables), so the demo succeeds (0) when the rolled-back database
    verifies, else fails (3)."""

    folder: Path
    run: RunResult

    @property
    def verified(self) -> bool:
        return bool(self.run.outcome and self.run.outcome.verification.get("ok"))

    @property
    def exit_code(self) -> int:
        return ExitCode.OK if self.verified else ExitCode.FAILED


Confirm = Callable[[dict[str, Any]], bool]


def _other_scheme(spec: str) -> None:
    """Refuse (exit 2) a database URL of an engine we do not support (``mysql://…``, also after
    a ``Path`` collapsed its ``//``); an existing file is never taken for a URL."""
    import re

    m = re.match(r"^([A-Za-z][A-Za-z0-9+.\-]*):/", spec)
    if m and not Path(spec).exists():
        from recovery.engine.base import is_postgres_url

        if not is_postgres_url(spec):
            raise RecoveryError(
                f"{m.group(1)}:// databases are not supported; nothing was changed",
                "pass a SQLite file path or a postgresql:// URL",
            )


def _postgres_target(db: PathArg, role: str) -> str | None:
    """``db`` as a checked PostgreSQL URL (the server answers, the database exists, the user may
    connect: else one line, exit 2), or None for a SQLite path."""
    from recovery.engine.base import is_postgres_url, normalise_spec

    spec = normalise_spec(os.fspath(db))
    _other_scheme(spec)
    if not is_postgres_url(spec):
        return None
    from recovery.engine.postgres import PostgresEngine

    engine = PostgresEngine(spec)
    engine.check(role)
    return spec


def _stopped_unless(confirm: Callable[[], bool] | None) -> None:
    """Ask ``confirm`` (when given); a no is a refusal with nothing changed (exit 2)."""
    if confirm is not None and not confirm():
        raise RecoveryError("stopped at your request; nothing was changed")


# ---------------------------------------------------------------------------------------------
# one function per command, in the README's order


def sample(
    *, out_dir: PathArg, parts: int = 300, seed: int = 42, url: str | None = None
) -> SampleResult:
    """Build the sample Gestima world into ``out_dir`` (a failed build leaves nothing behind); with
    ``url`` (``postgresql://…/DBNAME``) the databases are built in that PostgreSQL database
    (:func:`recovery.sample.postgres.generate_postgres`), the backup dump and uploads in ``out_dir``."""
    from recovery import progress
    from recovery.sample import generate
    from recovery.sample.generator import fresh_folder

    out = Path(out_dir)
    log.debug(
        "sample: %s parts, seed %s, into %s%s", parts, seed, out, f" and {url}" if url else ""
    )
    if url is not None:
        from recovery.sample.postgres import generate_postgres

        with progress.step("sample"):
            generate_postgres(out, url, parts=parts, seed=seed)
        return SampleResult(out, parts, seed)
    with fresh_folder(out), progress.step("sample"):
        generate(out, parts=parts, seed=seed)
    return SampleResult(out, parts, seed)


def snapshot(
    *,
    db: PathArg,
    out_dir: PathArg | None = None,
    uploads: PathArg | None = None,
    app_dir: PathArg | None = None,
) -> SnapshotResult:
    """A WAL-safe backup of ``db`` with its manifest (:func:`recovery.capture.snapshot.snapshot`)."""
    from recovery.capture.snapshot import snapshot as take
    from recovery.engine.base import is_postgres_url

    if is_postgres_url(os.fspath(db)):
        from recovery.capture.pgsnapshot import snapshot_postgres

        return SnapshotResult(snapshot_postgres(os.fspath(db), out_dir, uploads, app_dir))
    return SnapshotResult(take(Path(db), out_dir, uploads, app_dir))


def diff(
    *,
    backup: PathArg,
    db: PathArg,
    since: str | None = None,
    tables: Sequence[str] | None = None,
    mapping: PathArg | None = None,
    rows: bool = False,
    alembic_ini: PathArg | None = None,
    trust_mapping: bool = False,
) -> DiffCommandResult:
    """Compare ``backup`` with the live ``db``, both read-only (:func:`recovery.compare.diff.diff`);
    ``rows``: list every changed row."""
    from recovery.compare.diff import diff as compare
    from recovery.engine.base import is_postgres_url

    _other_scheme(os.fspath(db))
    _other_scheme(os.fspath(backup))
    if is_postgres_url(os.fspath(db)):
        from recovery.compare.pgdiff import diff_postgres

        result = DiffCommandResult(
            diff_postgres(
                os.fspath(backup),
                os.fspath(db),
                since,
                list(tables) if tables else None,
                rows,
                trust_mapping,
                mapping=mapping,
                alembic_ini=alembic_ini,
            )
        )
    else:
        from recovery.engine.sqlite_io import unchanged_while_read

        with unchanged_while_read({"backup": backup, "live database": db}):
            result = DiffCommandResult(
                compare(
                    Path(backup),
                    Path(db),
                    since,
                    list(tables) if tables else None,
                    mapping,
                    rows,
                    alembic_ini,
                    trust_mapping,
                )
            )
    log.debug(
        "diff: %s row change(s), %s value(s) at risk, schema %s",
        result.diff.changes.total,
        result.diff.changes.at_risk,
        "unchanged" if result.diff.schema.is_empty else "changed",
    )
    return result


def extract(
    *,
    backup: PathArg,
    db: PathArg,
    out_dir: PathArg,
    since: str | None = None,
    mapping: PathArg | None = None,
    alembic_ini: PathArg | None = None,
    uploads: PathArg | None = None,
    trust_mapping: bool = False,
) -> ExtractCommandResult:
    """Extract the post-deploy changes into a new bundle folder (:func:`recovery.bundle.extract.extract`)."""
    from recovery import progress
    from recovery.bundle.extract import extract as run_extract
    from recovery.engine.base import is_postgres_url

    _other_scheme(os.fspath(db))
    _other_scheme(os.fspath(backup))
    with progress.step("extract"):
        if is_postgres_url(os.fspath(db)):
            from recovery.bundle.pgextract import extract_postgres

            res = extract_postgres(
                os.fspath(backup),
                os.fspath(db),
                out_dir,
                since=since,
                mapping=mapping,
                alembic_ini=alembic_ini,
                uploads=uploads,
                trust_mapping=trust_mapping,
            )
        else:
            res = _extract_unchanged_while_read(
                lambda: run_extract(
                    backup,
                    db,
                    out_dir,
                    since,
                    mapping,
                    alembic_ini,
                    uploads,
                    trust_mapping=trust_mapping,
                ),
                backup,
                db,
            )
    summary = res.summary()
    log.debug(
        "extract: bundle %s, %s table(s), %s lost value(s), %s planning error(s), re-import plan of %s "
        "SQL statement(s) (+%s DELETEs with --apply-deletes)",
        summary["bundle_id"],
        len(summary["counts"]),
        summary["lost"],
        len(summary["planning_errors"]),
        len(res.plan.statements()),
        len(res.plan.statements(apply_deletes=True)) - len(res.plan.statements()),
    )
    return ExtractCommandResult(res, summary)


def _extract_unchanged_while_read(
    run: Callable[[], ExtractResult], backup: PathArg, db: PathArg
) -> ExtractResult:
    """``run()`` (a SQLite extract), its bundle removed again when a source it read with
    ``immutable=1`` was written meanwhile (:func:`recovery.engine.sqlite_io.unchanged_while_read`):
    a bundle from a torn read must never be re-imported."""
    from recovery.engine.sqlite_io import unchanged_while_read

    res: ExtractResult | None = None
    try:
        with unchanged_while_read({"backup": backup, "live database": db}):
            res = run()
    except RecoveryError:
        if res is not None:  # the read was torn after the bundle was made
            shutil.rmtree(res.bundle.path, ignore_errors=True)
        raise
    return res


def reimport(
    *,
    bundle_dir: PathArg,
    db: PathArg,
    out_dir: PathArg | None = None,
    uploads: PathArg | None = None,
    expect_bundle_id: str | None = None,
    options: ReimportOptions | None = None,
    confirm: Callable[[Bundle], bool] | None = None,
) -> RunResult:
    """Re-import a bundle into ``db`` in one transaction (:func:`recovery.pipeline.reimport`).
    The bundle is opened (verified) and its id checked first; ``confirm(bundle)`` is then asked
    before anything is written (a no: exit 2, nothing changed)."""
    from recovery import progress
    from recovery.bundle.store import open_bundle
    from recovery.engine.timebound import override
    from recovery.pipeline import reimport as run_reimport

    opts = options or ReimportOptions()
    log.debug("reimport options: %s", _changed(opts))
    _postgres_target(db, "target database")
    with override(opts.statement_timeout):  # every statement over the bundle, its opening included
        bundle = open_bundle(bundle_dir)
        bundle.check_expected_id(expect_bundle_id)
        _stopped_unless(None if confirm is None else lambda: confirm(bundle))
        with progress.step("reimport"):
            from recovery.engine.base import is_postgres_url

            if is_postgres_url(os.fspath(db)):
                from recovery.reimport.pgmerge import run_reimport_postgres

                res = run_reimport_postgres(bundle, os.fspath(db), out_dir, opts, uploads)
            else:
                res = run_reimport(bundle, db, out_dir, options=opts, uploads=uploads)
    _log_run("reimport", res)
    return res


def rollback(
    *,
    db: PathArg,
    backup: PathArg,
    out_dir: PathArg | None = None,
    uploads: PathArg | None = None,
    mapping: PathArg | None = None,
    alembic_ini: PathArg | None = None,
    options: RollbackOptions | None = None,
    confirm: Confirm | None = None,
) -> RunResult:
    """The whole runbook (:func:`recovery.pipeline.rollback`), journaled and resumable.
    ``confirm(plan)`` is asked with the extract's summary before the first change to the live DB;
    without it the rollback goes ahead (a script has decided)."""
    from recovery.engine.timebound import override
    from recovery.pipeline import rollback as run_rollback

    opts = options or RollbackOptions()
    log.debug("rollback options: %s", _changed(opts))
    from recovery.engine.base import is_postgres_url, normalise_spec

    _other_scheme(normalise_spec(os.fspath(db)))
    _other_scheme(normalise_spec(os.fspath(backup)))
    if is_postgres_url(os.fspath(db)):
        from datetime import datetime

        from recovery.restore.pgbackup import backup_as_dump
        from recovery.restore.pgrollback import rollback_postgres

        stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
        run_dir = Path(out_dir) if out_dir else Path(f"recovery-run-{stamp}")
        with override(opts.statement_timeout):
            res = rollback_postgres(
                normalise_spec(os.fspath(db)),
                backup_as_dump(os.fspath(db), os.fspath(backup), run_dir),
                run_dir,
                opts,
                alembic_ini=alembic_ini,
                uploads=uploads,
                mapping=mapping,
                confirm=confirm,
            )
        _log_run("rollback", res)
        return res
    with override(opts.statement_timeout):
        res = run_rollback(
            db,
            backup,
            out_dir,
            uploads=uploads,
            mapping=mapping,
            alembic_ini=alembic_ini,
            options=opts,
            confirm=confirm,
        )
    _log_run("rollback", res)
    return res


def _changed(options: Any) -> str:
    """The options that differ from their defaults, as ``name=value`` (``defaults``: none)."""
    from dataclasses import fields

    default = type(options)()
    parts = [
        f"{f.name}={getattr(getattr(options, f.name), 'value', getattr(options, f.name))}"
        for f in fields(options)
        if getattr(options, f.name) != getattr(default, f.name)
    ]
    return " ".join(parts) or "defaults"


def _log_run(verb: str, res: RunResult) -> None:
    """The decisions of a re-import at DEBUG: rows written per kind, conflicts by resolution, the exit code."""
    if not log.isEnabledFor(logging.DEBUG):
        return
    o = res.outcome
    if o is not None:
        t = o.tables.values()
        log.debug(
            "%s: %s inserted, %s updated, %s deleted, %s skipped, %s remapped, %s conflict(s)%s%s",
            verb,
            sum(x.inserted for x in t),
            sum(x.updated for x in t),
            sum(x.deleted for x in t),
            sum(x.skipped for x in t),
            sum(x.remapped for x in t),
            len(o.conflicts),
            "; already applied" if o.already_applied else "",
            "; aborted" if o.aborted else "",
        )
    log.debug(
        "%s: verdict %s, exit code %s",
        verb,
        getattr(res.verdict, "verdict", res.verdict),
        res.exit_code,
    )


def undo(
    *, run_dir: PathArg, force: bool = False, dry_run: bool = False, confirm: Confirm | None = None
) -> UndoResult:
    """Put a rollback's safety copy back as the live DB (:func:`recovery.pipeline.undo`)."""
    from recovery.pipeline import undo as run_undo
    from recovery.restore.pgrollback import postgres_run

    data = postgres_run(Path(run_dir))
    if data is not None:
        from recovery.restore.pgrollback import undo_postgres

        return undo_postgres(Path(run_dir), data, force=force, dry_run=dry_run, confirm=confirm)
    return run_undo(run_dir, force=force, dry_run=dry_run, confirm=confirm)


def demo(
    *,
    out_dir: PathArg | None = None,
    parts: int = 300,
    seed: int = 42,
    confirm: Confirm | None = None,
    url: str | None = None,
) -> DemoResult:
    """Build the sample world (in ``out_dir`` or a new temporary folder) and roll it back with
    ``--on-conflict remap --prefer db``; ``confirm(plan)`` sees the plan (its answer is the
    rollback's go-ahead). With ``url`` (``postgresql://…/DBNAME``) the world's databases are built
    in that PostgreSQL database (:func:`sample`'s rules: created if missing, refused if it has
    tables) and rolled back there (:func:`demo_postgres`)."""
    import tempfile

    from recovery import progress
    from recovery.sample import app_dir, generate
    from recovery.sample.generator import fresh_folder

    folder = (
        Path(out_dir) if out_dir is not None else Path(tempfile.mkdtemp(prefix="recovery-demo-"))
    )
    if url is not None:
        return demo_postgres(folder, url, parts, seed, confirm)
    log.info("building the sample world in %s", folder)
    with fresh_folder(folder):  # a failed demo leaves nothing behind that blocks the retry
        with progress.step("sample"):
            generate(folder, parts=parts, seed=seed)
        backup = next(folder.glob("gestima.db.bak.*"))
        from recovery.pipeline import rollback as run_rollback

        res = run_rollback(
            folder / "gestima.db",
            backup,
            out=folder / "run",
            uploads=folder / "uploads",
            alembic_ini=app_dir() / "alembic.ini",
            options=RollbackOptions(),
            confirm=confirm,
        )
    return DemoResult(folder, res)


def demo_postgres(
    folder: Path, url: str, parts: int, seed: int, confirm: Confirm | None
) -> DemoResult:
    """The demo on PostgreSQL: the world built in ``url`` with its dump and uploads in ``folder``
    (a failed build leaves neither), then rolled back with its run folder ``folder/run``. A failed
    rollback keeps the run folder: its journal is what resumes or undoes it."""
    import json

    from recovery import progress
    from recovery.engine.base import is_postgres_url, normalise_spec
    from recovery.restore.pgrollback import rollback_postgres
    from recovery.sample import app_dir
    from recovery.sample.postgres import generate_postgres

    url = normalise_spec(url)
    if not is_postgres_url(url):
        raise RecoveryError(
            f"--url {url} is not a PostgreSQL URL", "pass postgresql://USER@HOST/DBNAME"
        )
    log.info("building the sample world in %s and %s", folder, url)
    with progress.step("sample"):
        generate_postgres(folder, url, parts=parts, seed=seed)
    backup = folder / str(json.loads((folder / "world.json").read_text())["backup"])
    res = rollback_postgres(
        url,
        os.fspath(backup),
        folder / "run",
        RollbackOptions(),
        alembic_ini=app_dir() / "alembic.ini",
        uploads=folder / "uploads",
        confirm=confirm,
    )
    return DemoResult(folder, res)


def apply_deletes(
    *,
    run_dir: PathArg,
    only: PathArg | None = None,
    dry_run: bool = False,
    confirm: Callable[[], bool] | None = None,
) -> DeletesResult:
    """Delete again the reviewed post-deploy deletes of a run (:func:`recovery.reimport.deletes.apply_deletes`);
    ``confirm()`` is asked first unless ``dry_run``."""
    from recovery.reimport.deletes import apply_deletes as run_deletes

    if not dry_run:
        _stopped_unless(confirm)
    return run_deletes(Path(run_dir), None if only is None else Path(only), dry_run)


def relink(
    *,
    bundle_dir: PathArg,
    db: PathArg,
    uploads: PathArg,
    files_table: str | None = None,
    path_column: str | None = None,
    hash_column: str | None = None,
    dry_run: bool = False,
    statement_timeout: float | None = None,
) -> RelinkResult:
    """Put every file a re-imported record names back under ``uploads`` (:func:`recovery.files.relink.relink`)."""
    from recovery.engine.timebound import override
    from recovery.files.relink import relink as run_relink
    from recovery.files.uploads import FilesConfig

    if not Path(uploads).is_dir():
        raise RecoveryError(
            f"uploads folder {uploads} does not exist or is not a folder", "check --uploads"
        )
    default = FilesConfig()
    cfg = FilesConfig(
        files_table or default.table, path_column or default.path, hash_column or default.sha256
    )
    with override(statement_timeout):
        url = _postgres_target(db, "target database")
        if url is not None:
            from recovery.bundle.store import open_bundle
            from recovery.files.pgrelink import relink_postgres

            report = relink_postgres(
                open_bundle(bundle_dir),
                url,
                Path(uploads),
                cfg,
                dry_run=dry_run,
            )
            return RelinkResult(report, dry_run)
        return RelinkResult(
            run_relink(bundle_dir, db, Path(uploads), cfg, dry_run=dry_run), dry_run
        )


def report(
    *, folder: PathArg, fmt: str = "html", out: PathArg | None = None
) -> ReportCommandResult:
    """Render the report of a run or bundle folder (:func:`recovery.report.report`); ``fmt`` is
    html, md, csv or json."""
    from recovery import progress
    from recovery.report import report as render_report

    with progress.step("report"):
        return ReportCommandResult(render_report(folder, fmt, out))


def check(
    *,
    alembic_ini: PathArg,
    from_rev: str | None = None,
    to_rev: str | None = None,
    db: PathArg | None = None,
) -> CheckResult:
    """Judge every revision's downgrade before the deploy (:func:`recovery.migrate.check.check`)."""
    from recovery.engine.base import normalise_spec
    from recovery.migrate.check import check as judge

    if db is not None:
        _other_scheme(normalise_spec(os.fspath(db)))
    return judge(alembic_ini, from_rev, to_rev, db)


def rehearse(
    *,
    db: PathArg,
    backup: PathArg,
    alembic_ini: PathArg | None = None,
    out_dir: PathArg | None = None,
    uploads: PathArg | None = None,
    mapping: PathArg | None = None,
    since: str | None = None,
    trust_mapping: bool = False,
    same_installation: bool = False,
) -> Rehearsal:
    """The whole rollback on scratch copies, then the round-trip check (:func:`recovery.verify.rehearse.rehearse`)."""
    from recovery.engine.base import is_postgres_url, normalise_spec
    from recovery.verify.rehearse import rehearse as run_rehearsal

    _other_scheme(normalise_spec(os.fspath(db)))
    _other_scheme(normalise_spec(os.fspath(backup)))
    if is_postgres_url(os.fspath(db)):
        from recovery.verify.pgrehearse import rehearse_postgres

        return rehearse_postgres(
            normalise_spec(os.fspath(db)),
            normalise_spec(os.fspath(backup)),
            alembic_ini,
            out_dir,
            uploads,
            mapping,
            since,
            trust_mapping=trust_mapping,
            same_installation=same_installation,
        )
    return run_rehearsal(
        db,
        backup,
        alembic_ini,
        out_dir,
        uploads,
        mapping,
        since,
        trust_mapping=trust_mapping,
        same_installation=same_installation,
    )


def clean_stale(*, db: str, dry_run: bool = False) -> CleanResult:
    """Drop the scratch, staged and rehearsal databases and sandbox roles that killed runs left on
    ``db``'s server (:func:`recovery.engine.pgclaims.remove_stale`: only those whose claim names a
    run that is gone); a :class:`~recovery.engine.pgclaims.CleanResult`."""
    from recovery.engine import pgclaims
    from recovery.engine.postgres import PostgresEngine, connect

    spec = _postgres_target(db, "server")
    if spec is None:
        raise RecoveryError(
            f"{db} is not a postgresql:// URL; nothing was changed",
            "clean-stale looks at a PostgreSQL server: pass postgresql://user@host/dbname",
        )
    engine = PostgresEngine(spec)
    with connect(engine.admin_url(), "server") as admin:
        return pgclaims.remove_stale(admin, dry_run=dry_run, wait=True)


COMMANDS: dict[str, Callable[..., Any]] = {
    "sample": sample,
    "snapshot": snapshot,
    "diff": diff,
    "extract": extract,
    "reimport": reimport,
    "rollback": rollback,
    "undo": undo,
    "demo": demo,
    "apply-deletes": apply_deletes,
    "relink": relink,
    "report": report,
    "check": check,
    "rehearse": rehearse,
    "clean-stale": clean_stale,
}
"""Each CLI verb and its function (a test checks every command of the click group is here)."""


# ---------------------------------------------------------------------------------------------
# errors that are not RecoveryError


_UNCHANGED = {  # what an error that escapes a command says about the databases
    "rollback": "the live DB was not changed",
    "reimport": "the database was not changed",
    "undo": "the live DB was not changed",
    "relink": "the database was not changed (files already copied into --uploads are complete and stay)",
}
"""Commands that write a live DB convert every error after their first change into a
RecoveryError saying what the DB now is (exit 3); an error that escapes as OSError/sqlite3.Error
therefore happened before. Every other command writes no database the user gave it, except:"""
_MAYBE_CHANGED = {
    "apply-deletes": "the database was changed if the error came after its one transaction committed "
    "(see RUN_DIR/deletes_applied.json; running it again changes nothing twice)",
}
"""Commands whose raw errors may come after their commit: exit 3, and say so."""


def error_for(exc: BaseException, verb: str) -> RecoveryError:
    """The one-line error (and exit code) the CLI reports for an exception other than
    :class:`RecoveryError` that escaped the function of ``verb``: what happened, what the
    databases now are, what to do. Exit 2 for an ``OSError``/``sqlite3.Error`` of a command that
    had changed nothing yet; exit 3 otherwise (a bug is never exit 1)."""
    from recovery.errors import describe

    if isinstance(exc, RecoveryError):
        return exc
    what, todo = describe(exc)
    io_error = isinstance(exc, (OSError, sqlite3.Error))
    state = _MAYBE_CHANGED.get(verb) or _UNCHANGED.get(verb, "no database was changed")
    hint = todo if io_error else f"{todo} (recovery --traceback …)"
    unchanged = io_error and verb not in _MAYBE_CHANGED
    return RecoveryError(
        f"{what}; {state}", hint, ExitCode.REFUSED if unchanged else ExitCode.FAILED
    )

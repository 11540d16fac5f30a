"""The ``recovery`` command line: one small function per command — parse, call one library
function, render. Errors are :class:`~recovery.errors.RecoveryError`: printed as one line, exit code
from the error. Only a bug shows a traceback.

Exit codes: 0 everything carried / no difference; 1 finished with something to review;
2 refused or bad input, nothing changed; 3 failed (the message says what the live DB now is).
An ``OSError``/``sqlite3.Error`` (or a bug) is one line too; ``--traceback`` or
``RECOVERY_TRACEBACK=1`` shows the trace.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from recovery import __version__
from recovery.errors import ExitCode, RecoveryError
from recovery.escape import term_markup
from recovery.model.outcome import ConflictMode, ConflictPolicy, Prefer
from recovery.report.render import (
    console,
    render_diff,
    render_extract,
    render_outcome,
    render_plan,
    render_snapshot,
    stdout_text,
    write_csv,
)

EXIT_CODES_HELP = (
    "Exit codes: 0 done, nothing to review; 1 done, something to review; "
    "2 refused or bad input, nothing changed; 3 failed: the message says what the live DB now is "
    "and how to resume or undo."
)
TRACEBACK_ENV = "RECOVERY_TRACEBACK"
"""``RECOVERY_TRACEBACK=1``: like ``recovery --traceback``, print the trace of an error."""
_TRACEBACK_META = "recovery.traceback"


def _show_traceback(ctx: click.Context) -> bool:
    import os

    return bool(ctx.meta.get(_TRACEBACK_META)) or os.environ.get(TRACEBACK_ENV, "") not in ("", "0")


class RecoveryGroup(click.Group):
    """Turns RecoveryError into one line on stderr and its exit code; click usage errors exit 2."""

    def _invoke_then_stop_bars(self, ctx: click.Context) -> Any:
        """The command; however it ends, its progress bars are gone before anything else prints."""
        from recovery import logs, progress

        try:
            return super().invoke(ctx)
        finally:
            progress.stop_all()
            logs.reset()

    def invoke(self, ctx: click.Context) -> Any:
        import traceback

        try:
            return self._invoke_then_stop_bars(ctx)
        except RecoveryError as err:
            if _show_traceback(ctx):
                traceback.print_exc()
            click.echo(f"error: {err.one_line()}", err=True)
            ctx.exit(err.exit_code)
        except KeyboardInterrupt:
            if _show_traceback(ctx):
                traceback.print_exc()
            click.echo("error: interrupted; nothing further was changed", err=True)
            ctx.exit(ExitCode.FAILED)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except Exception as exc:  # noqa: BLE001 - the one place every other error becomes one line
            from recovery.commands import error_for

            if _show_traceback(ctx):
                traceback.print_exc()
            failure = error_for(exc, ctx.invoked_subcommand or "")
            click.echo(f"error: {failure.one_line()}", err=True)
            ctx.exit(failure.exit_code)


def output_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The shared ``--json`` / ``--csv`` switches (a rich table is the default)."""

    @click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON.")
    @click.option("--csv", "as_csv", is_flag=True, help="Print CSV, one row per item.")
    @functools.wraps(func)
    def wrapper(*args: Any, as_json: bool, as_csv: bool, **kwargs: Any) -> Any:
        if as_json and as_csv:
            raise RecoveryError("--json and --csv exclude each other", "pick one")
        fmt = "json" if as_json else "csv" if as_csv else "table"
        return func(*args, fmt=fmt, **kwargs)

    return wrapper


def quiet_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--quiet`` on a command: like ``recovery --quiet``, no progress bar, step messages or timing."""

    @click.option(
        "--quiet", "-q", is_flag=True, help="No progress bar, step messages or timing on stderr."
    )
    @functools.wraps(func)
    def wrapper(*args: Any, quiet: bool, **kwargs: Any) -> Any:
        from recovery import progress

        if quiet:
            progress.set_quiet(True)
        return func(*args, **kwargs)

    return wrapper


def emit_json(data: Any) -> None:
    click.echo(
        stdout_text(json.dumps(data, indent=2, ensure_ascii=False, default=str), json_text=True)
    )


@click.group(cls=RecoveryGroup, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, prog_name="recovery")
@click.option(
    "--traceback",
    "show_traceback",
    is_flag=True,
    help=f"On an error, print the Python trace too (or set {TRACEBACK_ENV}=1).",
)
@click.option(
    "--quiet",
    "-q",
    is_flag=True,
    help="No progress bars, step messages or timing on stderr (bars show only on a terminal).",
)
@click.option(
    "--verbose",
    "-v",
    is_flag=True,
    help="Debug messages on stderr: each step's start and end, options, decisions and counts.",
)
@click.pass_context
def main(ctx: click.Context, show_traceback: bool, quiet: bool, verbose: bool = False) -> None:
    """Roll a SQLite application database back to its previous release without losing what
    users did after the deploy: snapshot → diff → extract → restore → re-import → verify → report.

    Example:

    \b
        recovery --traceback rollback gestima.db --backup gestima.db.bak.20261120_140000 --yes
    """
    ctx.meta[_TRACEBACK_META] = show_traceback
    from recovery import logs, progress
    from recovery.gcquiet import freeze_at_exit

    freeze_at_exit()  # one command a process: the exit need not walk what it leaves

    progress.set_quiet(quiet)
    progress.reset()
    logs.configure(verbose)


@main.command("sample", epilog=EXIT_CODES_HELP)
@click.argument("out_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--parts",
    default=300,
    show_default=True,
    type=click.IntRange(10, 10_000_000),
    help="Parts in the backup.",
)
@click.option(
    "--seed", default=42, show_default=True, type=int, help="Random seed (same seed, same world)."
)
@click.option(
    "--url",
    help="Build the world in this PostgreSQL database (postgresql://…/DBNAME; created if "
    "missing, refused if it has tables); OUT_DIR gets the pg_dump backup, uploads/ and world.json.",
)
@quiet_option
def sample_cmd(out_dir: Path, parts: int, seed: int, url: str | None = None) -> None:
    """Build the sample Gestima world (backup at v2.0.0, live DB at v2.0.1 after an hour of users,
    uploads/ and world.json, the ground truth) into OUT_DIR. With --url the live database is that
    PostgreSQL database, with the same rows, ids and values as the SQLite world of the same seed.

    Example:

    \b
        recovery sample /tmp/world --parts 300 --seed 42
        recovery sample /tmp/pgworld --url postgresql://db/gestima --parts 60
    """
    from recovery import commands, progress

    commands.sample(out_dir=out_dir, parts=parts, seed=seed, url=url)
    progress.print_timings()
    console(stderr=True).print(f"sample world written to [bold]{out_dir}[/]")


@main.command("snapshot", epilog=EXIT_CODES_HELP)
@click.argument("db")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Folder for the backup (default: beside DB).",
)
@click.option(
    "--uploads", type=click.Path(path_type=Path), help="Uploads folder to record in the manifest."
)
@click.option(
    "--app-dir",
    type=click.Path(path_type=Path),
    help="The app's git checkout (default: DB's folder).",
)
@output_options
def snapshot_cmd(
    db: str, out_dir: Path | None, uploads: Path | None, app_dir: Path | None, fmt: str
) -> None:
    """Take a WAL-safe backup of DB (SQLite's online backup API, correct while the app writes)
    named DB.bak.YYYYMMDD_HHMMSS, with DB.bak.….manifest.json beside it.

    A PostgreSQL URL is dumped with pg_dump (custom format, the same major version as the
    server) into --out (default: the current folder) as DBNAME.dump.bak.YYYYMMDD_HHMMSS.

    Example:

    \b
        recovery snapshot gestima.db --uploads uploads/ --app-dir /srv/gestima
        recovery snapshot postgresql://app@db.internal/gestima --out /srv/backups
    """
    from recovery import commands

    snap = commands.snapshot(db=db, out_dir=out_dir, uploads=uploads, app_dir=app_dir)
    if fmt == "json":
        emit_json(
            {"backup": str(snap.backup), "manifest": str(snap.manifest_path), **snap.manifest}
        )
    elif fmt == "csv":
        write_csv(sys.stdout, [{"table": t, "rows": n} for t, n in snap.manifest["tables"].items()])
    else:
        render_snapshot(snap.snapshot)
    sys.exit(snap.exit_code)


@main.command("diff", epilog=EXIT_CODES_HELP)
@click.argument("backup")
@click.argument("db")
@click.option(
    "--since", help="Deploy time (ISO-8601 or epoch); default: the backup's manifest or name."
)
@click.option("--table", "tables", multiple=True, help="Only this table (repeatable).")
@click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    help="TOML mapping file (old column = expression).",
)
@click.option(
    "--rows",
    is_flag=True,
    help="List every changed row (keys; changed columns with old/new values).",
)
@click.option(
    "--alembic-ini",
    type=click.Path(path_type=Path),
    help="The app's alembic.ini: read mapping rules from its migrations.",
)
@click.option(
    "--trust-mapping",
    is_flag=True,
    help="Keep a column rule the unchanged rows contradict (default: refuse, exit 2).",
)
@output_options
def diff_cmd(
    backup: str,
    db: str,
    since: str | None,
    tables: tuple[str, ...],
    mapping: Path | None,
    rows: bool,
    fmt: str,
    alembic_ini: Path | None = None,
    trust_mapping: bool = False,
) -> None:
    """Compare BACKUP with the live DB: schema (alembic's comparison plus rename detection) and rows
    per table (inserted / updated / deleted, judged in the backup's schema; rows changed only in
    new-schema columns and their values at risk). Every column rule is checked against the rows
    nobody changed after the deploy; a contradicted rule is refused (exit 2) unless --trust-mapping.
    Both files are opened read-only. Exits 0 when nothing differs, 1 when something does.

    DB may be a PostgreSQL URL; BACKUP is then a pg_dump file (restored into a scratch database
    that is dropped afterwards) or another database's URL, and the comparison runs inside the
    server (postgres_fdw); --mapping and --alembic-ini work as on SQLite (the app's code runs
    in the sandbox on scratch copies only).

    Example:

    \b
        recovery diff gestima.db.bak.20261120_140000 gestima.db --rows --json
        recovery diff gestima.dump.bak.20261120_140000 postgresql://db/gestima
    """
    from recovery import commands

    res = commands.diff(
        backup=backup,
        db=db,
        since=since,
        tables=tables,
        mapping=mapping,
        rows=rows or fmt == "csv",
        alembic_ini=alembic_ini,
        trust_mapping=trust_mapping,
    )
    result = res.diff
    if fmt == "json":
        emit_json(result.to_dict(rows=rows))
    elif fmt == "csv":
        write_csv(
            sys.stdout,
            result.csv_rows(),
            ["table", "kind", "key", "after_deploy", "columns", "old", "new"],
        )
    else:
        render_diff(result, rows)
    sys.exit(res.exit_code)


@main.command("extract", epilog=EXIT_CODES_HELP)
@click.argument("backup")
@click.argument("db")
@click.option(
    "--out", "out_dir", required=True, type=click.Path(path_type=Path), help="New bundle folder."
)
@click.option(
    "--since", help="Deploy time (ISO-8601 or epoch); default: the backup's manifest or name."
)
@click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    help="TOML mapping file (old column = expression).",
)
@click.option(
    "--alembic-ini",
    type=click.Path(path_type=Path),
    help="The app's alembic.ini: read mapping rules from its migrations.",
)
@click.option(
    "--uploads",
    type=click.Path(path_type=Path),
    help="Uploads folder: copy post-deploy files into the bundle.",
)
@click.option(
    "--trust-mapping",
    is_flag=True,
    help="Keep a column rule the unchanged rows contradict (default: refuse, exit 2).",
)
@output_options
@quiet_option
def extract_cmd(
    backup: str,
    db: str,
    out_dir: Path,
    since: str | None,
    mapping: Path | None,
    alembic_ini: Path | None,
    uploads: Path | None,
    fmt: str,
    trust_mapping: bool = False,
) -> None:
    """Extract every row users created, changed or deleted since BACKUP from the live DB into a
    self-contained bundle (rows in the new schema with their backup images, FK closure, file
    copies, manifest with hashes) and transpile it to the old schema (reimport.sql). Both databases
    are opened read-only. Exits 1 when some values cannot be carried (lost) or the plan has errors.

    DB may be a PostgreSQL URL; BACKUP is then a pg_dump file (restored into a scratch database
    that is dropped afterwards) or another database's URL. The rows are selected inside the server
    (postgres_fdw) and each value is carried as PostgreSQL's text output, its type in the manifest.

    Example:

    \b
        recovery extract gestima.db.bak.20261120_140000 gestima.db --out bundle/ \\
            --alembic-ini app/alembic.ini --uploads uploads/
        recovery extract gestima.dump.bak.20261120_140000 postgresql://db/gestima --out bundle/
    """
    from recovery import commands, progress

    res = commands.extract(
        backup=backup,
        db=db,
        out_dir=out_dir,
        since=since,
        mapping=mapping,
        alembic_ini=alembic_ini,
        uploads=uploads,
        trust_mapping=trust_mapping,
    )
    summary = res.summary
    if (
        fmt == "table"
    ):  # --json/--csv are read by scripts: the data alone (bars, on a terminal, still show)
        progress.print_timings()
    if fmt == "json":
        emit_json(summary)
    elif fmt == "csv":
        write_csv(sys.stdout, [{"table": t, **c} for t, c in summary["counts"].items()])
    else:
        render_extract(summary)
        click.echo(f"bundle id: {summary['bundle_id']}")
        click.echo(f"live fingerprint (sha256): {summary['live_fingerprint']}")
    sys.exit(res.exit_code)


def statement_timeout_option(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--statement-timeout SECONDS``: the bound on every SQL statement run over a bundle
    (:mod:`recovery.engine.timebound`), passed to the command as ``statement_timeout``."""
    return click.option(
        "--statement-timeout",
        type=click.FloatRange(min=0, min_open=True),
        metavar="SECONDS",
        help="Interrupt (exit 3, nothing applied) any SQL statement over the bundle running longer "
        "(default: $RECOVERY_STATEMENT_TIMEOUT, else 300).",
    )(func)


def show_bundle_identity(bundle: Any) -> None:
    """The lines that let the operator check a bundle is the one they extracted."""
    ident = bundle.identity()
    bound = (
        ""
        if ident["id_binds_content"]
        else " (written by an older recovery: not bound to its content)"
    )
    click.echo(f"bundle id: {ident['bundle_id']}{bound}")
    click.echo(f"live fingerprint (sha256): {ident['live_sha256']}")
    click.echo(f"source database: {ident['source_db']}")
    click.echo(f"extracted at: {ident['extracted_at']}")


def conflict_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by ``rollback`` and ``reimport``."""
    func = click.option(
        "--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal)."
    )(func)
    func = click.option(
        "--dry-run", is_flag=True, help="Change nothing; write the report of what would happen."
    )(func)
    func = click.option(
        "--apply-deletes",
        is_flag=True,
        help="Re-delete rows deleted after the deploy (default: list them for review).",
    )(func)
    func = click.option(
        "--conflicts",
        type=click.Choice(["cell", "row"]),
        default="cell",
        show_default=True,
        help="cell: edits to different columns of a row merge (JSON cells key by key); "
        "row: any change to the same row on both sides is a conflict, resolved by --prefer.",
    )(func)
    func = click.option(
        "--prefer",
        type=click.Choice(["db", "bundle"]),
        default="db",
        show_default=True,
        help="Which value wins a cell changed both after the deploy and in the DB since.",
    )(func)
    func = click.option(
        "--on-conflict",
        type=click.Choice(["remap", "skip", "abort"]),
        default="remap",
        show_default=True,
        help="remap: fresh keys for taken primary keys; skip: skip conflicting "
        "units; abort: change nothing if anything conflicts.",
    )(func)
    return func


def _confirm_or_refuse(yes: bool, dry_run: bool, question: str) -> None:
    if yes or dry_run:
        return
    if not sys.stdin.isatty():
        raise RecoveryError(
            "refusing to change the database without a terminal", "pass --yes (or --dry-run)"
        )
    if not click.confirm(question, default=False):
        raise RecoveryError("stopped at your request; nothing was changed")


@main.command("reimport", epilog=EXIT_CODES_HELP)
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.argument("db")  # a path, or a postgresql:// URL (a Path would fold its "//")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Run folder (default: new folder in BUNDLE_DIR).",
)
@click.option(
    "--uploads", type=click.Path(path_type=Path), help="Uploads folder to re-link files into."
)
@click.option(
    "--expect-bundle-id",
    metavar="ID",
    help="Refuse (exit 2) unless the bundle's id is ID, the id `recovery extract` printed.",
)
@conflict_options
@statement_timeout_option
@quiet_option
def reimport_cmd(
    bundle_dir: Path,
    db: str,
    out_dir: Path | None,
    uploads: Path | None,
    expect_bundle_id: str | None,
    on_conflict: str,
    prefer: str,
    apply_deletes: bool,
    dry_run: bool,
    yes: bool,
    conflicts: str = "cell",
    statement_timeout: float | None = None,
) -> None:
    """Re-import a bundle into DB (already at the old schema, e.g. restored and used by the old
    release since) in ONE transaction, with a three-way merge: conflicts are detected, named and
    resolved by --on-conflict; a second run of the same bundle changes nothing. Writes report.json,
    conflicts.csv, lost_values.csv, reimport.sql and report.md into the run folder.

    The bundle's id, the live source's fingerprint, its path and the extract time are shown first;
    --expect-bundle-id refuses any other bundle (an edited bundle has another id).

    DB may be a postgresql:// URL: the same merge in one server transaction (a pg_dump safety
    copy goes to RUN/safety first).

    Example:

    \b
        recovery reimport run/bundle gestima.db --yes
        recovery reimport run/bundle postgresql://app@db/gestima --yes
    """
    from recovery import commands, progress
    from recovery.options import ReimportOptions

    def confirm(bundle: Any) -> bool:
        show_bundle_identity(bundle)
        _confirm_or_refuse(yes, dry_run, f"Re-import {bundle_dir} into {db}?")
        return True

    options = ReimportOptions(
        on_conflict=ConflictPolicy(on_conflict),
        prefer=Prefer(prefer),
        conflicts=ConflictMode(conflicts),
        apply_deletes=apply_deletes,
        dry_run=dry_run,
        statement_timeout=statement_timeout,
    )
    res = commands.reimport(
        bundle_dir=bundle_dir,
        db=db,
        out_dir=out_dir,
        uploads=uploads,
        expect_bundle_id=expect_bundle_id,
        options=options,
        confirm=confirm,
    )
    progress.print_timings()
    render_outcome(res)
    sys.exit(res.exit_code)


@main.command("rollback", epilog=EXIT_CODES_HELP)
@click.argument("db", type=click.Path(path_type=Path))
@click.option(
    "--backup", required=True, type=click.Path(path_type=Path), help="The pre-deploy backup."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(path_type=Path),
    help="Run folder (journal, safety copy, bundle, report).",
)
@click.option(
    "--since", help="Deploy time (ISO-8601 or epoch); default: the backup's manifest or name."
)
@click.option("--uploads", type=click.Path(path_type=Path), help="The app's uploads folder.")
@click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    help="TOML mapping file (old column = expression).",
)
@click.option(
    "--alembic-ini",
    type=click.Path(path_type=Path),
    help="The app's alembic.ini (mapping rules from migrations).",
)
@click.option(
    "--downgrade-to",
    help="Downgrade the live DB in place with Alembic instead of restoring the backup.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Proceed although other processes hold the DB (they are named); "
    "their commits after the safety copy are listed in late_commits.json. Overrides nothing else.",
)
@click.option(
    "--terminate-sessions",
    is_flag=True,
    help="PostgreSQL: end the other sessions connected to the database (pg_terminate_backend) "
    "instead of refusing while they are there.",
)
@click.option(
    "--allow-newer-backup",
    is_flag=True,
    help="Proceed although the backup file is newer than the live DB.",
)
@click.option(
    "--same-installation",
    is_flag=True,
    help="The backup is of this installation: skip the row-sample check that refuses another one's.",
)
@click.option(
    "--trust-mapping",
    is_flag=True,
    help="Keep a column rule the unchanged rows contradict (default: refuse, exit 2).",
)
@click.option(
    "--full-verify",
    is_flag=True,
    help="Verify with integrity_check and foreign_key_check over the whole restored DB "
    "(default: the staged backup checked during the extract, or vouched for by its snapshot "
    "manifest, then what the re-import wrote).",
)
@conflict_options
@statement_timeout_option
@quiet_option
def rollback_cmd(
    db: Path,
    backup: Path,
    out_dir: Path | None,
    since: str | None,
    uploads: Path | None,
    mapping: Path | None,
    alembic_ini: Path | None,
    downgrade_to: str | None,
    force: bool,
    allow_newer_backup: bool,
    on_conflict: str,
    prefer: str,
    apply_deletes: bool,
    dry_run: bool,
    yes: bool,
    trust_mapping: bool = False,
    same_installation: bool = False,
    conflicts: str = "cell",
    statement_timeout: float | None = None,
    full_verify: bool = False,
    terminate_sessions: bool = False,
) -> None:
    """Roll DB back to BACKUP's release without losing post-deploy work: refuse while the app holds
    the DB, safety copy, extract the post-deploy changes, restore the backup atomically, re-import
    in one transaction, re-link uploads, verify, report. Every step is journaled in the run folder:
    after a crash run the same command again to resume; a finished run changes nothing.
    --dry-run changes nothing and reports what would be carried and lost.

    Example:

    \b
        recovery rollback gestima.db --backup gestima.db.bak.20261120_140000 \\
            --uploads uploads/ --alembic-ini app/alembic.ini --out run/ --yes
    """
    from recovery import commands
    from recovery.options import RollbackOptions

    if not (yes or dry_run or sys.stdin.isatty()):  # refuse before touching anything
        raise RecoveryError("refusing to roll back without a terminal", "pass --yes (or --dry-run)")

    def confirm(plan: dict[str, Any]) -> bool:
        render_plan(plan)
        if yes:
            return True
        if not sys.stdin.isatty():
            raise RecoveryError(
                "refusing to roll back without a terminal", "pass --yes (or --dry-run)"
            )
        return click.confirm("Restore the backup and re-import these changes?", default=False)

    options = RollbackOptions(
        on_conflict=ConflictPolicy(on_conflict),
        prefer=Prefer(prefer),
        conflicts=ConflictMode(conflicts),
        apply_deletes=apply_deletes,
        dry_run=dry_run,
        statement_timeout=statement_timeout,
        since=since,
        trust_mapping=trust_mapping,
        force=force,
        allow_newer_backup=allow_newer_backup,
        same_installation=same_installation,
        downgrade_to=downgrade_to,
        full_verify=full_verify,
        terminate_sessions=terminate_sessions,
    )
    res = commands.rollback(
        db=db,
        backup=backup,
        out_dir=out_dir,
        uploads=uploads,
        mapping=mapping,
        alembic_ini=alembic_ini,
        options=options,
        confirm=confirm,
    )
    from recovery import progress

    progress.print_timings()
    render_outcome(res)
    _print_next_steps(res, backup)
    sys.exit(res.exit_code)


@main.command("undo", epilog=EXIT_CODES_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--force",
    is_flag=True,
    help="Undo although the live DB changed since the run (its current file is kept in RUN_DIR/undo/ first).",
)
@click.option(
    "--dry-run", is_flag=True, help="Change nothing; say whether the undo would go ahead."
)
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal)."
)
def undo_cmd(run_dir: Path, force: bool, dry_run: bool, yes: bool) -> None:
    """Put the failed release's DB back: the safety copy a `recovery rollback` made in RUN_DIR goes
    back as the live DB (atomic rename; the live file's owner, group and mode kept). Refused while
    another process holds the DB, and when the live DB changed since the run left it unless --force.
    A consistent copy of the current live file is always kept in RUN_DIR/undo/ first. A second undo
    changes nothing. Use it when a rollback failed after its restore, or to return to the new release.
    On PostgreSQL the safety database is renamed back in one transaction and the database it
    replaces is kept, renamed.

    Example:

    \b
        recovery undo run/ --dry-run && recovery undo run/ --yes
    """
    from recovery import commands

    if not (yes or dry_run or sys.stdin.isatty()):
        raise RecoveryError("refusing to undo without a terminal", "pass --yes (or --dry-run)")

    def confirm(plan: dict[str, Any]) -> bool:
        if yes:
            return True
        return click.confirm(
            f"Replace the live DB {plan['db']} with the safety copy {plan['safety']}?",
            default=False,
        )

    res = commands.undo(run_dir=run_dir, force=force, dry_run=dry_run, confirm=confirm)
    c = console()
    if res.state == "already_undone":
        c.print(
            f"this run was already undone; nothing changed. The live DB {res.db} is the safety copy "
            f"{res.safety}" + (f"; the file it replaced is kept in {res.kept}" if res.kept else ""),
            soft_wrap=True,
        )
    elif res.state == "dry_run":
        c.print(
            f"dry run, nothing changed: the undo would replace {res.db} with {res.safety}"
            + (
                " (the live DB changed since the run: --force keeps a copy of it first)"
                if res.changed_since_run
                else ""
            ),
            soft_wrap=True,
        )
    else:
        c.print(
            f"undone: the live DB {res.db} is the failed release's DB again (from {res.safety}); "
            f"the file it replaced is kept in {res.kept}",
            soft_wrap=True,
        )
    sys.exit(res.exit_code)


def _print_next_steps(res: Any, backup: Path) -> None:
    """The "Next steps" block (stderr, plain text: paths may hold markup characters)."""
    from recovery.report.nextsteps import steps_for

    lines = steps_for(res, backup)
    if lines:
        err = console(stderr=True)
        err.print("Next steps:", markup=False, highlight=False)
        for line in lines:
            err.print(f"  {line}", markup=False, highlight=False, soft_wrap=True)


@main.command("demo", epilog=EXIT_CODES_HELP)
@click.argument("out_dir", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--parts", default=300, show_default=True, type=click.IntRange(10, 10_000_000))
@click.option("--seed", default=42, show_default=True, type=int)
@click.option(
    "--url",
    help="Build and roll back the world in this PostgreSQL database (postgresql://…/DBNAME; "
    "created if missing, refused if it has tables); OUT_DIR gets its dump, uploads and run.",
)
@quiet_option
def demo_cmd(out_dir: Path | None, parts: int, seed: int, url: str | None = None) -> None:
    """Build the sample Gestima world (in OUT_DIR or a temporary folder), roll it back with
    `recovery rollback --yes`, print the summary and where the report is. Exits 0 when the
    rolled-back database verifies (the world's lost values are expected and listed).

    Example:

    \b
        recovery demo /tmp/gestima-demo
        recovery demo /tmp/pg-demo --url postgresql://postgres@localhost/gestima_demo
    """
    from recovery import commands, progress

    def shown(plan: Any) -> bool:
        render_plan(plan)
        return True

    res = commands.demo(out_dir=out_dir, parts=parts, seed=seed, confirm=shown, url=url)
    progress.print_timings()
    render_outcome(res.run)
    sys.exit(
        res.exit_code
    )  # 0 when the rolled-back database verifies (the world's losses are expected)


@main.command("apply-deletes", epilog=EXIT_CODES_HELP)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option(
    "--only",
    "only",
    type=click.Path(path_type=Path),
    help="A reviewed copy of deletes_for_review.csv: delete only the rows it lists.",
)
@click.option(
    "--dry-run", is_flag=True, help="Change nothing; say what would be deleted and what is kept."
)
@click.option(
    "--yes", is_flag=True, help="Do not ask for confirmation (required without a terminal)."
)
@output_options
def apply_deletes_cmd(run_dir: Path, only: Path | None, dry_run: bool, yes: bool, fmt: str) -> None:
    """After review, delete again the rows users deleted after the deploy, which the rollback
    brought back and listed in RUN_DIR/deletes_for_review.csv (all of them, or those in --only).
    One transaction on the run's database, after a safety copy in RUN_DIR; a row changed since
    the rollback, or still referenced by a row that stays, is kept and reported as a conflict.
    Runs beside the application; a second run changes nothing. Result: RUN_DIR/deletes_applied.json.

    Example:

    \b
        recovery apply-deletes run/ --only reviewed.csv --dry-run
    """
    from recovery import commands
    from recovery.reimport.deletes import json_key

    _confirm_or_refuse(yes, dry_run, f"Delete the reviewed rows of {run_dir} from its database?")
    res = commands.apply_deletes(run_dir=run_dir, only=only, dry_run=dry_run)
    if fmt == "json":
        emit_json(res.to_dict())
    elif fmt == "csv":
        write_csv(
            sys.stdout,
            (
                {
                    "table": c.table,
                    "key": json.dumps(json_key(c.key), ensure_ascii=False),
                    "outcome": c.kind,
                }
                for c in res.conflicts
            ),
            ["table", "key", "outcome"],
        )
    else:
        err = console(stderr=True)
        verb = "would delete" if dry_run else "deleted"
        err.print(
            f"{verb} {len(res.deleted)} of {res.selected} reviewed rows; already applied "
            f"{len(res.already_applied)}, already gone {len(res.already_gone)}, kept "
            f"{len(res.conflicts)} (conflicts)",
            markup=False,
            highlight=False,
        )
        for c in res.conflicts[:20]:
            err.print(
                f"  kept {c.table} {list(c.key)}: {c.kind} — {c.detail}",
                markup=False,
                highlight=False,
            )
        if res.safety_copy:
            err.print(f"safety copy: {res.safety_copy}", markup=False, highlight=False)
    sys.exit(res.exit_code)


@main.command("relink", epilog=EXIT_CODES_HELP)
@click.argument("bundle_dir", type=click.Path(path_type=Path))
@click.argument("db")  # a path, or a postgresql:// URL
@click.option(
    "--uploads", required=True, type=click.Path(path_type=Path), help="The app's uploads folder."
)
@click.option(
    "--files-table", help="Table recording uploads (default: file_records, else detected)."
)
@click.option("--path-column", help="Its column with the path under --uploads (default: path).")
@click.option("--hash-column", help="Its column with the file's sha256 (default: sha256).")
@click.option(
    "--dry-run", is_flag=True, help="Change nothing; report what would be restored and fixed."
)
@output_options
@statement_timeout_option
def relink_cmd(
    bundle_dir: Path,
    db: str,
    uploads: Path,
    files_table: str | None,
    path_column: str | None,
    hash_column: str | None,
    dry_run: bool,
    fmt: str,
    statement_timeout: float | None = None,
) -> None:
    """Put every file a re-imported record names back at its path under --uploads with its
    recorded sha256 (from the bundle when missing; beside, never over, a different file), and make
    entity links follow remapped keys. Unsafe stored paths (absolute, `..`, symlinks out of the
    folder) are never read or written, only reported. Exits 1 when files are missing or unsafe.
    DB may be a postgresql:// URL (the files table's fixes in one server transaction).

    Example:

    \b
        recovery relink run/bundle gestima.db --uploads uploads/ --dry-run
    """
    from recovery import commands
    from recovery.files.relink import REPORT_LISTS

    res = commands.relink(
        bundle_dir=bundle_dir,
        db=db,
        uploads=uploads,
        files_table=files_table,
        path_column=path_column,
        hash_column=hash_column,
        dry_run=dry_run,
        statement_timeout=statement_timeout,
    )
    result = res.report
    if fmt == "json":
        emit_json(result)
    elif fmt == "csv":
        write_csv(
            sys.stdout,
            [
                {
                    "list": name,
                    "record_key": e.get("record_key"),
                    "path": e.get("path"),
                    "sha256": e.get("sha256"),
                    "detail": e.get("status")
                    or e.get("action")
                    or e.get("reason")
                    or e.get("kind")
                    or e.get("recovered_path"),
                }
                for name in REPORT_LISTS
                for e in result[name]
            ],
            ["list", "record_key", "path", "sha256", "detail"],
        )
    else:
        c = console()
        c.print(f"[bold]relink[/] {'(dry run) ' if dry_run else ''}{result['root']}")
        c.print(
            " · ".join(f"{name.replace('_', ' ')} {n}" for name, n in result["counts"].items() if n)
            or "no files recorded by the bundle"
        )
        for name in ("missing", "unsafe", "kept_both", "hash_mismatch", "links_unresolved"):
            for e in result[name][:20]:
                c.print(
                    f"  [yellow]{name}[/] {term_markup(e.get('record_key'))} {term_markup(e.get('path') or e.get('reason'))}"
                )
    sys.exit(res.exit_code)


@main.command("report", epilog=EXIT_CODES_HELP)
@click.argument("folder", metavar="RUN_DIR|BUNDLE_DIR", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["html", "md", "csv", "json"]),
    default="html",
    show_default=True,
    help="html: one self-contained page; md: Markdown for a terminal or ticket; csv: the lost values; "
    "json: report.json's shape (docs/REPORT.md).",
)
@click.option(
    "--out",
    "out",
    type=click.Path(path_type=Path),
    help="File to write (default: html to RUN_DIR/report.html or BUNDLE_DIR-report.html; others to stdout).",
)
@quiet_option
def report_cmd(folder: Path, fmt: str, out: Path | None) -> None:
    """Regenerate the recovery report of a run folder (from its report.json), or report what a
    bundle holds and what a re-import would lose, before re-importing it. Headline (deploy and
    rollback time, records created/changed, carried back, not carried and why, files, verdict),
    per table, per user, every lost value and conflict. Exits 1 when something needs review.

    Example:

    \b
        recovery report run/ && recovery report run/bundle --format md
    """
    from recovery import commands

    done = commands.report(folder=folder, fmt=fmt, out=out)
    res = done.report
    if res.path is None:
        click.echo(stdout_text(res.text, json_text=fmt == "json"), nl=False)
    else:
        h = res.headline
        console(stderr=True).print(
            f"{h['verdict']}: {h['carried']} of {h['records_total']} records carried, "
            f"{h['lost_values']} lost value(s), {h['conflicts']} conflict(s). "
            f"Report: [bold]{term_markup(res.path, None)}[/]"
        )
    sys.exit(done.exit_code)


@main.command("check", epilog=EXIT_CODES_HELP)
@click.option(
    "--alembic-ini", required=True, type=click.Path(path_type=Path), help="The app's alembic.ini."
)
@click.option(
    "--from",
    "from_rev",
    help="Start after this revision (default: --db's revision, else the newest "
    "snapshot manifest's (*.bak.*.manifest.json in . or the ini's folder), else the base).",
)
@click.option("--to", "to_rev", help="Last revision to judge (default: head).")
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    help="A database or backup whose revision is --from (a SQLite file, a postgresql:// URL or a "
    "pg_dump file with its manifest; a server is only read).",
)
@output_options
def check_cmd(
    alembic_ini: Path, from_rev: str | None, to_rev: str | None, db: Path | None, fmt: str
) -> None:
    """Judge every revision after --from up to --to before you deploy it: run its upgrade and
    downgrade on scratch databases, read the SQL with sqlglot (renames, type changes, data
    migrations, batch rebuilds), find stub or partial downgrades and the data a rollback would
    lose, and give a verdict per revision (safe / loses data on downgrade / needs manual SQL) with a
    suggested reverse for stubs. Only scratch files are written. Exits 0 when the whole range rolls
    back without loss, 1 otherwise. --json prints {format, alembic_ini, from, to, ok, summary,
    revisions: [{revision, verdict, upgrade{changes, lineage, cross_check}, downgrade{kind,
    differences, lineage, error}, losses, suggested_reverse{sql, alembic, mechanical, verified}}]}.

    Example:

    \b
        recovery check --alembic-ini app/alembic.ini --db gestima.db.bak.20261120_140000
    """
    from recovery import commands
    from recovery.migrate.check import render_check

    result = commands.check(alembic_ini=alembic_ini, from_rev=from_rev, to_rev=to_rev, db=db)
    if fmt == "json":
        emit_json(result.to_dict())
    elif fmt == "csv":
        write_csv(
            sys.stdout,
            [
                {
                    "revision": r.revision,
                    "verdict": r.verdict,
                    "downgrade": r.downgrade,
                    "losses": "; ".join(f"{x.table}.{x.column or '*'}" for x in r.losses),
                }
                for r in result.revisions
            ],
            ["revision", "verdict", "downgrade", "losses"],
        )
    else:
        render_check(result)
    sys.exit(result.exit_code)


@main.command("rehearse", epilog=EXIT_CODES_HELP)
@click.argument("db", type=click.Path(path_type=Path))
@click.option(
    "--backup", required=True, type=click.Path(path_type=Path), help="The pre-deploy backup."
)
@click.option(
    "--alembic-ini",
    type=click.Path(path_type=Path),
    help="The app's alembic.ini (mapping rules from migrations).",
)
@click.option(
    "--out", "out_dir", type=click.Path(path_type=Path), help="Run folder (default: beside DB)."
)
@click.option(
    "--uploads",
    type=click.Path(path_type=Path),
    help="The app's uploads folder (copied, never changed).",
)
@click.option(
    "--mapping",
    type=click.Path(path_type=Path),
    help="TOML mapping file (old column = expression).",
)
@click.option(
    "--since", help="Deploy time (ISO-8601 or epoch); default: the backup's manifest or name."
)
@click.option(
    "--trust-mapping",
    is_flag=True,
    help="Keep a column rule the unchanged rows contradict (default: refuse, exit 2).",
)
@click.option(
    "--same-installation",
    is_flag=True,
    help="The backup is of this installation: skip the row-sample check that refuses another one's.",
)
@output_options
@quiet_option
def rehearse_cmd(
    db: Path,
    backup: Path,
    alembic_ini: Path | None,
    out_dir: Path | None,
    uploads: Path | None,
    mapping: Path | None,
    since: str | None,
    fmt: str,
    trust_mapping: bool = False,
    same_installation: bool = False,
) -> None:
    """Test the rollback on staging in one command: copy DB, BACKUP and uploads to a scratch folder,
    run the whole `recovery rollback` on the copies, then check the round trip — every post-deploy
    change present or listed as lost, every backup row intact, the schema at the backup's revision —
    and print `Rollback test: PASS` or `FAIL` with the reasons and the would-be losses. The live
    files are only read; the run folder gets the real run's report plus rehearsal.json/.md.
    Exits 0 on PASS (losses are listed), 1 on FAIL. On PostgreSQL the scratch copy is a new
    database on the same server (pg_dump → pg_restore), dropped afterwards; --backup may also be
    another database's URL.

    Example:

    \b
        recovery rehearse gestima.db --backup gestima.db.bak.20261120_140000 \\
            --alembic-ini app/alembic.ini --uploads uploads/ --out rehearsal/
        recovery rehearse postgresql://app@db/gestima --backup gestima.dump.bak.20261120_140000
    """
    from recovery import commands
    from recovery.verify.rehearse import render_rehearsal

    result = commands.rehearse(
        db=db,
        backup=backup,
        alembic_ini=alembic_ini,
        out_dir=out_dir,
        uploads=uploads,
        mapping=mapping,
        since=since,
        trust_mapping=trust_mapping,
        same_installation=same_installation,
    )
    if fmt == "json":
        emit_json(result.to_dict())
    elif fmt == "csv":
        write_csv(
            sys.stdout, result.iter_losses(), ["table", "key", "label", "column", "value", "reason"]
        )
    else:
        render_rehearsal(result)
    sys.exit(result.exit_code)


@main.command("clean-stale", epilog=EXIT_CODES_HELP)
@click.argument("db")
@click.option("--dry-run", is_flag=True, help="Change nothing; list what would be dropped.")
@output_options
def clean_stale_cmd(db: str, dry_run: bool, fmt: str) -> None:
    """Drop what killed runs left on a PostgreSQL server: the `recovery_scratch_*`,
    `recovery_staged_*` and `recovery_rehearsal_*` databases and `recovery_sandbox_*` roles whose
    claim (a comment naming an advisory lock the making process held) names a run that is gone.
    Objects of a run still alive, and objects without a claim (perhaps the operator's), are listed
    and left alone. Every command that makes such objects does this first, by itself; DB is any
    database URL on the server.

    Example:

    \b
        recovery clean-stale postgresql://app@db/gestima --dry-run
    """
    from recovery import commands
    from recovery.escape import plain

    res = commands.clean_stale(db=db, dry_run=dry_run)
    rows: list[dict[str, Any]] = [
        {"object": x.kind, "name": x.name, "state": "dropped", "claim": x.claim}
        for x in res.dropped
    ]
    rows += [
        {"object": x.kind, "name": x.name, "state": x.state, "claim": x.claim} for x in res.kept
    ]
    rows += [
        {"object": x.kind, "name": x.name, "state": f"failed: {why}", "claim": x.claim}
        for x, why in res.failed
    ]
    if dry_run:
        for r in rows[: len(res.dropped)]:
            r["state"] = "would drop"
    if fmt == "json":
        emit_json({"dry_run": dry_run, "objects": rows})
    elif fmt == "csv":
        write_csv(
            sys.stdout,
            ({**r, "claim": json.dumps(r["claim"], sort_keys=True)} for r in rows),
            ["object", "name", "state", "claim"],
        )
    else:
        out = console()
        for r in rows:
            who = r["claim"]
            tail = (
                f" (pid {who.get('pid')} on {who.get('host')}, {who.get('purpose')})" if who else ""
            )
            out.print(plain(f"{r['state']}: {r['object']} {r['name']}{tail}", None), markup=False)
        if not rows:
            out.print(
                "nothing left behind by recovery on this server", markup=False, highlight=False
            )
    sys.exit(res.exit_code)

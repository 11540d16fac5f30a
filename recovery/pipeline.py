"""``recovery reimport`` and ``recovery rollback``: the runbook as resumable steps.

Rollback steps, each recorded in ``RUN_DIR/journal.json`` (written atomically) before and after it
runs, so a run killed anywhere is resumed by running the same command again:

  probe → safety → extract → restore → reimport → relink → verify → report

* ``safety``: a consistent copy (WAL included; under the write window a kernel copy folded by SQLite,
  else the backup API) of the failed live DB in ``RUN_DIR/safety/``.
* ``extract`` writes ``RUN_DIR/bundle/`` atomically. Once ``restore`` has *started*, extract is never
  run again: the live DB may already be the backup.
* ``restore`` checkpoints the live WAL, removes ``-wal``/``-shm`` and renames a fsynced copy of the
  backup over the live file — the live file is always either the old one or the restored one.
  With the backup (not ``--downgrade-to``) the re-import runs inside it, into the staged copy,
  before the rename (:func:`_reimport_staged_then_swap`): the journal then reads
  ``restore:start``, ``reimport:start``, ``reimport:done``, ``restore:done``, and the live file is
  either the old one or the restored one with the post-deploy work re-imported.
* ``reimport`` is one transaction that also records the bundle id in ``_recovery_applied``, so
  re-running it after a crash either finds it applied or applies it whole.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from collections.abc import Callable, Iterator
from typing import Any

from recovery.bundle.store import Bundle, open_bundle, write_json_atomic
from recovery.errors import ExitCode, RecoveryError
from recovery.files.uploads import FilesConfig
from recovery.restore.livewindow import WriteWindow, check_replaced, close_fds, write_late_commits
from recovery.model.kinds import RowKind
from recovery.model.outcome import (
    OUTCOME_FORMAT,
    ConflictMode,
    ConflictPolicy,
    Outcome,
    as_read_back,
)
from recovery.options import MergeOptions, ReimportOptions, RollbackOptions, with_fields
from recovery.capture.pairing import refuse_second_rollback, refuse_wrong_pairing
from recovery.reimport.merge import (
    attach_bundle,
    check_target_schema,
    merge_and_check,
    open_target,
    record_outcome,
)
from recovery.reimport.script import Script, write_run_scripts
from recovery.transpile.passes import BASE_DB, BUNDLE_DB
from recovery.engine.timebound import lock_wait
from recovery.engine.schema import alembic_revision, reflect
from recovery.engine.sqlite_io import (
    check_sqlite_file,
    consistent_copy,
    fsync_dir,
    index_idle_wal,
    readonly,
    real_path,
    sha256_file,
    sidecars,
    write_lock_held,
)
from recovery.verify.checks import EarlyWritten, StagedProof, verify_file, verify_written
from recovery.engine import open_engine
from recovery.runfolder import check_run_folder
from recovery.restore.swap import fingerprint as db_fingerprint
from recovery.restore.swap import refuse_holders, restore_atomically, stage_restore, swap_in
from recovery.restore.swap import stage_undo as _stage_undo
from recovery.restore.swap import staged_path as _staged_path
from recovery.restore.swap import writer_alive as _writer_alive

STEPS = ("probe", "safety", "extract", "restore", "reimport", "relink", "verify", "report")
KILL_STEP_ENV = "RECOVERY_TEST_KILL_AT_STEP"
"""Test-only fault injection: SIGKILL this process right after journaling ``<step>:start|done``,
right after the re-import's COMMIT (``reimport:committed``) or right after the backup restore's
swap, before it is journaled (``restore:swapped``)."""

Progress = Callable[[str], None]
"""A step message for the operator (``· step`` on stderr). By default each goes to this module's
logger at INFO level, which the CLI prints unless ``--quiet``."""

log = logging.getLogger(__name__)


def _kill_point(point: str) -> None:
    """Test-only: SIGKILL this process when ``RECOVERY_TEST_KILL_AT_STEP`` names ``point``."""
    if os.environ.get(KILL_STEP_ENV) == point:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


@dataclass
class RunResult:
    run_dir: Path
    outcome: Outcome | None
    files: dict[str, Path] = field(default_factory=dict)
    resumed: bool = False
    finished_before: bool = False
    steps: dict[str, Any] = field(default_factory=dict)
    late: dict[str, Any] = field(default_factory=dict)
    """The end-of-run look at the replaced file (:func:`_late_check`)."""
    finished_exit_code: int | None = None
    """For a run that had already finished: the exit code it finished with (from its journal)."""
    note: str | None = None
    """A line the CLI prints about the live DB's state (e.g. after an aborted re-import)."""

    @property
    def exit_code(self) -> int:
        """What the CLI exits with: 3 for an aborted re-import, else 1 when something needs
        review (late commits into the replaced file included), else 0; a finished run run again
        exits as it finished."""
        if self.finished_exit_code is not None:
            return self.finished_exit_code
        if self.outcome is None:
            return ExitCode.OK
        return self.verdict.exit_code

    @property
    def verdict(self) -> Any:
        """The run's one verdict (:meth:`recovery.model.outcome.Outcome.verdict`, late commits included):
        the terminal, the exit code and every report show this one."""
        return self.outcome.verdict(self.late) if self.outcome is not None else None


def _reimport_into(
    target: Path,
    bundle: Bundle,
    merge: MergeOptions,
    files: FilesConfig,
    dry_run: bool,
    busy_timeout: float,
    label: str,
    in_place: bool = False,
    check_after: bool = True,
    run_dir: Path | None = None,
    scripts: list[tuple[Script, bool]] | None = None,
    staged: bool = False,
    fk_clean: bool | Callable[[], bool] = False,
) -> Outcome:
    """Apply ``bundle`` to ``target`` in one transaction; verify before commit. ``in_place``: the
    target was downgraded in place and already holds the post-deploy rows. ``run_dir``: where the
    plan as executed goes (``reimport.sql``, ``deletes.sql``: :func:`_write_reimport_scripts`);
    ``scripts``: instead, receives (script, committed) for the caller to write after the commit.
    ``staged``: ``target`` is the rollback's staged file, which no other process may open (see
    :func:`_private_writes`): written through a rollback journal without fsync, put back in its
    journal mode after the transaction, and fsynced once before this returns. ``fk_clean``:
    ``target`` passed a full ``foreign_key_check`` as it is now (a sound, confirmed
    :class:`StagedProof`): the check of what the re-import wrote skips, on updated rows, the keys
    on columns no UPDATE set (:func:`recovery.reimport.fkcheck.updated_keys`)."""
    policy, prefer, apply_deletes, conflicts = (
        merge.on_conflict,
        merge.prefer,
        merge.apply_deletes,
        merge.conflicts,
    )
    log.debug(
        "re-import into %s: on_conflict=%s prefer=%s conflicts=%s apply_deletes=%s dry_run=%s in_place=%s",
        label,
        policy.value,
        prefer.value,
        conflicts.value,
        apply_deletes,
        dry_run,
        in_place,
    )
    engine = open_engine(target)
    with engine.readonly("target database") as r:
        target_schema = reflect(r)
    conn = open_target(target, busy_timeout)
    wal: bool | None = None  # staged: whether the file was in WAL mode (None: not staged)
    settled = False  # staged: back in its journal mode, to be fsynced after the close
    # staged: the pages the re-import spilled to the file are fsynced on a side thread once its
    # writes are applied (while the FK check and the outcome run), so the fsync after the COMMIT
    # writes only what the COMMIT wrote; durability still rests on that one. Its error is
    # re-raised: Linux reports a write-back error to one fsync only.
    writeback: list[_Background] = []
    try:
        if staged:
            wal = _private_writes(conn)
        attach_bundle(conn, bundle)
        script = Script(conn)
        with engine.write_transaction(conn, busy_timeout):
            # the FK check of what the merge wrote (inserted/updated rows, children of deleted or
            # re-keyed parents); the whole-file check is verify's, after the commit
            outcome, problems = merge_and_check(
                conn,
                bundle,
                merge,
                files,
                label,
                dry_run,
                target_schema,
                in_place,
                script=script,
                fk_clean=fk_clean,
                on_applied=(
                    (lambda: writeback.append(_Background(_fsync_file, target, name="writeback")))
                    if staged
                    else None
                ),
            )
            if outcome.aborted:
                conn.execute("ROLLBACK")
                if scripts is not None:
                    scripts.append((script, False))
                _write_reimport_scripts(run_dir, script, bundle, outcome, committed=False)
                settled = _private_writes_done(conn, wal)
                return outcome
            if problems:
                raise RecoveryError(
                    f"foreign key check failed after re-import ({problems[0]}); rolled back",
                    "nothing was changed; report this with the bundle",
                    ExitCode.FAILED,
                )
            if not outcome.already_applied:  # the outcome is durable exactly when the data is
                record_outcome(script, bundle.bundle_id, outcome.to_json())
                if (
                    not dry_run
                ):  # a kill right after the commit must not lose the script of what ran
                    _write_reimport_scripts(
                        run_dir, script, bundle, outcome, committed=True, pending=True
                    )
        _kill_point("reimport:committed")
        if scripts is not None:
            scripts.append((script, True))
        _write_reimport_scripts(run_dir, script, bundle, outcome, committed=True)
        settled = _private_writes_done(conn, wal)
    finally:
        conn.close()
        try:
            if settled:  # durable before the rename that swaps it in
                _fsync_file(target)
        finally:
            for job in writeback:  # its error is the file's: not lost to the fsync above
                if settled:
                    job.result()
                else:
                    job.discard()
    if check_after:  # rollback verifies in its own journaled step instead
        outcome.verification = verify_file(
            target, outcome, bundle.old.alembic_revision, role="target database"
        )
    return outcome


def _private_writes(conn: sqlite3.Connection) -> bool:
    """Set up ``conn`` on the rollback's staged file for a re-import no other process can see:
    a rollback journal (SAVEPOINT and ROLLBACK need one) instead of WAL, so the COMMIT writes the
    pages once instead of into the WAL and again at the checkpoint, and no fsync at the COMMIT
    (``synchronous=OFF``): a run killed, or a machine that lost power, before the file's one fsync
    (:func:`_private_writes_done`) never swapped it in, and the resumed run stages it again.
    Returns whether the file was in WAL mode (to be put back)."""
    mode = conn.execute("PRAGMA main.journal_mode").fetchone()[0]
    if conn.execute("PRAGMA main.journal_mode = DELETE").fetchone()[0] != "delete":
        raise RecoveryError(
            "the staged restore file could not leave WAL mode (another process has it open?); "
            "nothing was changed",
            "stop whatever opened the hidden .restore-tmp file beside the live DB, then run the same command again",
        )
    conn.execute("PRAGMA main.synchronous = OFF")
    return str(mode).lower() == "wal"


def _private_writes_done(conn: sqlite3.Connection, wal: bool | None) -> bool:
    """After the staged re-import's transaction (committed or rolled back): back to WAL when the
    file was in WAL mode (the live DB's mode, kept by the restore). True when the file is to be
    fsynced once the connection is closed (no ``-wal``/``-shm`` are left then); False when
    ``conn`` is not on a staged file."""
    if wal is None:
        return False
    if wal and conn.execute("PRAGMA main.journal_mode = WAL").fetchone()[0] != "wal":
        raise RecoveryError(
            "the staged restore file could not be put back into WAL mode; nothing was changed",
            "run the same command again",
        )
    return True


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_PENDING_SCRIPTS = ".reimport-pending"
"""Run-folder subfolder with the scripts written just before the COMMIT: moved into place after it,
or by the resumed run that finds the bundle applied (the commit went in, the process did not
survive to move them)."""


def _write_reimport_scripts(
    run_dir: Path | None,
    script: Script,
    bundle: Bundle,
    outcome: Outcome,
    committed: bool,
    pending: bool = False,
) -> None:
    """The run folder's ``reimport.sql`` (the plan as executed) and ``deletes.sql``. A run that
    found the bundle already applied ran nothing: it keeps the script of the run that applied it
    (put in place from :data:`_PENDING_SCRIPTS` when that run was killed right after its commit).
    ``pending``: write them to :data:`_PENDING_SCRIPTS` instead (before the COMMIT)."""
    if run_dir is None:
        return
    import shutil

    held = Path(run_dir) / _PENDING_SCRIPTS
    if (
        outcome.already_applied
        and not (Path(run_dir) / "reimport.sql").exists()
        and (held / "reimport.sql").exists()
    ):
        for name in ("deletes.sql", "reimport.sql"):
            if (held / name).exists():
                os.replace(held / name, Path(run_dir) / name)
    if not pending:
        shutil.rmtree(held, ignore_errors=True)
    if outcome.already_applied and (Path(run_dir) / "reimport.sql").exists():
        return
    what = (
        "already applied: nothing ran"
        if outcome.already_applied
        else "aborted on conflicts (--on-conflict abort): rolled back"
        if outcome.aborted
        else "dry run: what would run (executed on a scratch copy)"
        if outcome.dry_run
        else "committed"
    )
    write_run_scripts(
        held if pending else Path(run_dir),
        script,
        bundle.rows_db,
        bundle.base_db,
        BUNDLE_DB,
        BASE_DB,
        committed,
        f"recovery reimport of bundle {bundle.bundle_id} into {outcome.target}: {what}.",
    )


def reimport(
    bundle_dir: str | os.PathLike[str] | Bundle,
    db: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    options: ReimportOptions | None = None,
    uploads: str | os.PathLike[str] | None = None,
    files: FilesConfig | None = None,
    busy_timeout: float = 10.0,
    expect_bundle_id: str | None = None,
    **option_fields: Any,
) -> RunResult:
    """Re-import a bundle into ``db`` (at the bundle's old schema). ``options``
    (:class:`recovery.options.ReimportOptions`; single fields may be given as keywords instead,
    e.g. ``dry_run=True``): ``dry_run`` works on a scratch copy and leaves every file untouched.
    ``bundle_dir``: a folder, or a bundle already opened (and so verified) by the caller.
    ``expect_bundle_id``: refuse (exit 2) any other bundle. Every place it will write is checked
    before the first write; a failure after the commit says that the data is in (exit 3)."""
    opts: ReimportOptions = with_fields(ReimportOptions, options, option_fields)
    dry_run = opts.dry_run
    check_uploads(uploads)
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else open_bundle(bundle_dir)
    bundle.check_expected_id(expect_bundle_id)
    target = check_sqlite_file(db, "target database")
    with readonly(
        target, "target database"
    ) as r:  # refuse a wrong schema before any copy or write open
        check_target_schema(bundle, reflect(r))
    files = files or FilesConfig()
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    run_dir = Path(out) if out else bundle.path / f"reimport-{stamp}{'-dry-run' if dry_run else ''}"
    check_writable(run_dir, "run folder (--out)")
    if not dry_run:
        check_writable(
            Path(os.path.realpath(target)).parent,
            "database folder (SQLite writes its journal there)",
        )
        check_writable(target, "target database")
    if dry_run:
        with tempfile.TemporaryDirectory(prefix="recovery-dry-run-") as tmp:
            scratch = consistent_copy(target, Path(tmp) / target.name, "target database")
            outcome = _reimport_into(
                scratch, bundle, opts, files, True, busy_timeout, str(target), run_dir=run_dir
            )
            outcome.files = (
                _relink(bundle, scratch, uploads, files, dry_run=True, outcome=outcome)
                if uploads
                else None
            )
    else:
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        consistent_copy(target, run_dir / "safety" / target.name, "target database")
        scripts: list[tuple[Script, bool]] = []
        outcome = _reimport_into(
            target,
            bundle,
            opts,
            files,
            False,
            busy_timeout,
            str(target),
            check_after=False,
            scripts=scripts,
        )
        try:
            for (
                script,
                committed,
            ) in scripts:  # after the commit: a full disk here is reported as such
                _write_reimport_scripts(run_dir, script, bundle, outcome, committed)
            outcome.verification = verify_file(
                target, outcome, bundle.old.alembic_revision, role="target database"
            )
            outcome.files = (
                _relink(bundle, target, uploads, files, dry_run=False, outcome=outcome)
                if uploads
                else None
            )
            from recovery.report import write_run_files

            return RunResult(run_dir, outcome, write_run_files(run_dir, outcome, bundle))
        except BaseException as exc:
            if outcome.already_applied or outcome.aborted:
                raise  # this run changed nothing
            relink = (
                f"; relink the files with `recovery relink {bundle.path} {target} --uploads {uploads}`"
                if uploads
                else ""
            )
            raise RecoveryError(
                f"the re-import was committed to {target}, then a later step failed ({_cause(exc)}): the "
                "post-deploy rows are in the database (its outcome is recorded in its _recovery_applied table); "
                "the run's report was not written",
                f"do not re-import again (it would change nothing); the "
                f"database before the re-import is in {run_dir / 'safety'}{relink}",
                ExitCode.FAILED,
            ) from exc
    from recovery.report import write_run_files

    paths = write_run_files(run_dir, outcome, bundle)
    return RunResult(run_dir, outcome, paths)


def check_uploads(uploads: str | os.PathLike[str] | None) -> None:
    """Refuse an ``--uploads`` that is not an existing folder this process can list and read."""
    if uploads is None:
        return
    p = Path(uploads)
    if not p.is_dir():
        raise RecoveryError(
            f"uploads folder {p} does not exist or is not a folder; nothing was changed",
            "check --uploads",
        )
    if not os.access(p, os.R_OK | os.X_OK):
        raise RecoveryError(
            f"uploads folder {p} is not readable by this user; nothing was changed",
            "check its owner and mode, or run as the application's user",
        )


def check_writable(path: Path, role: str) -> None:
    """Refuse before the first write when ``path`` (or, for a folder still to be made, its nearest
    existing parent) cannot be written: permissions, a read-only mount, an immutable folder
    (``access(2)`` answers for each, also for root)."""
    p = Path(path)
    probe = p
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if probe.exists() and not probe.is_dir() and probe != p:
        raise RecoveryError(
            f"{role} {p}: {probe} is a file, not a folder; nothing was changed",
            "choose another path",
        )
    if (
        (p.exists() and p.is_dir() and not os.access(p, os.W_OK | os.X_OK))
        or (not p.exists() and not os.access(probe, os.W_OK | os.X_OK))
        or (p.is_file() and not os.access(p, os.W_OK))
    ):
        raise RecoveryError(
            f"{role} {p} is not writable{'' if p.exists() else f' ({probe} is not)'}; nothing was changed",
            "check the folder's owner, mode and mount (read-only?), or choose another --out",
        )


def _relink(
    bundle: Bundle,
    db: Path,
    uploads: str | os.PathLike[str] | None,
    files: FilesConfig,
    dry_run: bool,
    outcome: Outcome | None = None,
    earlier: Any = None,
) -> dict[str, Any] | None:
    """Re-link uploads after a re-import, following the keys that re-import remapped.
    ``earlier``: :func:`_walk_uploads`'s walk, whose hashes of unchanged files are taken."""
    from recovery.files.relink import relink

    if not uploads:
        return None
    return relink(
        bundle,
        db,
        Path(uploads),
        files,
        dry_run=dry_run,
        remaps=outcome.remaps if outcome else None,
        earlier=earlier,
    )


def _walk_uploads(uploads: str | os.PathLike[str], earlier: Any = None) -> Any:
    """The uploads folder walked and every file hashed (``UploadsIndex(hash_all=True)``) while the
    re-import runs; the relink walks again and reads only the files this walk cannot vouch for
    (:meth:`recovery.files.uploads.UploadsIndex._known_from`). None when the folder cannot be
    walked: the relink then says what is wrong. ``earlier``: the extract's walk (folders it proves
    unchanged are not listed again, files its copies read are not read again)."""
    from recovery.files.uploads import UploadsIndex

    try:
        return (
            UploadsIndex(uploads, hash_all=True, earlier=earlier)
            if Path(uploads).is_dir()
            else None
        )
    except (OSError, RuntimeError, RecoveryError):
        return None


# ---------------------------------------------------------------------------------------------
# rollback


class Journal:
    """``RUN_DIR/journal.json``: the arguments of the run and the state of every step."""

    def __init__(self, run_dir: Path, args: dict[str, Any]):
        self.path = run_dir / "journal.json"
        self.run_dir = run_dir
        if self.path.is_file():
            self.data = json.loads(self.path.read_text(encoding="utf-8"))
            self.resumed = True
            if self.data.get("args", {}).get("db") != args.get("db") or self.data.get(
                "args", {}
            ).get("backup") != args.get("backup"):
                raise RecoveryError(
                    f"{run_dir} holds a run for another database or backup",
                    "use a new --out folder, or the same DB and --backup as that run",
                )
        else:
            self.data = {"format": "recovery-journal/1", "args": args, "steps": {}}
            self.resumed = False

    def state(self, step: str) -> str | None:
        return self.data["steps"].get(step, {}).get("state")

    def done(self, step: str) -> bool:
        return self.state(step) == "done"

    def mark(self, step: str, state: str, **info: Any) -> None:
        from recovery import progress

        progress.mark(step, state)  # the step's bar and timing (stderr; nothing when quiet)
        entry = self.data["steps"].setdefault(step, {})
        entry.update(state=state, at=datetime.now().isoformat(timespec="seconds"), **info)
        log.debug("journal: %s %s%s", step, state, "".join(f" {k}={v}" for k, v in info.items()))
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_json_atomic(self.path, self.data, 0o600)
        fsync_dir(self.run_dir)
        _kill_point(f"{step}:{state}")

    def info(self, step: str) -> dict[str, Any]:
        return self.data["steps"].get(step, {})


class _Background:
    """Work that needs no result yet, run on a second core while the current step goes on (SQLite
    and hashlib release the GIL). ``result()`` waits and re-raises; ``discard()`` waits and runs
    the clean-up, so nothing started here outlives a refused or failed run."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *args: Any,
        cleanup: Callable[[Any], None] | None = None,
        name: str = "bg",
    ):
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"recovery-{name}")
        self._future = self._pool.submit(fn, *args)
        self._pool.shutdown(wait=False)
        self._cleanup = cleanup

    def result(self) -> Any:
        return self._future.result()

    def discard(self) -> None:
        try:
            value = self._future.result()
        except BaseException:  # noqa: BLE001 - a failed side job has nothing to clean
            return
        if self._cleanup is not None:
            self._cleanup(value)


def _prepare_report(run_dir: Path, bundle: Bundle) -> Any:
    """The report's reads of the bundle alone and its two CSVs streamed from rows.db
    (:func:`recovery.report.runfiles.prepare_run_files`), after importing the renderers (pandas,
    matplotlib: about a second), done on the second core while the re-import works in SQLite; the
    report step then reads only what depends on the outcome."""
    from recovery.gcquiet import freeze_more
    from recovery.report.runfiles import prepare_run_files

    freeze_more()  # the renderers' modules live to the end of the run
    return prepare_run_files(run_dir, bundle)


def _advance_report(
    report_prep: _Background, run_dir: Path, outcome: Outcome, bundle: Bundle, journal: Journal
) -> None:
    """The report's part that the verification and the late-commit check do not change
    (:func:`recovery.report.runfiles.advance_run_files`), done while the verification's reads
    finish on other threads; the report step then writes the same files. Nothing is lost when it
    fails: the report step does the whole report and says what failed."""
    from recovery.report.runfiles import advance_run_files

    try:
        prepared = report_prep.result()
        if prepared is not None:
            advance_run_files(
                prepared, run_dir, outcome, bundle, {"journal": journal.data["steps"]}
            )
    except Exception:  # the report step does it all again
        log.debug("report drafted in the report step", exc_info=True)


@contextmanager
def _side_jobs_ended() -> Iterator[list[_Background]]:
    """Background jobs of the run are waited for and cleaned up however the run ends."""
    jobs: list[_Background] = []
    try:
        yield jobs
    finally:
        for job in jobs:
            job.discard()


def _latest_mtime(p: Path) -> float:
    wal, _ = sidecars(p)
    return max(p.stat().st_mtime, wal.stat().st_mtime if wal.exists() else 0.0)


def preflight(
    db: Path,
    backup: Path,
    alembic_ini: Path | None,
    force: bool,
    downgrade_to: str | None = None,
    allow_newer_backup: bool = False,
    same_installation: bool = False,
) -> dict[str, Any]:
    """Refuse while another process holds the DB (unless ``force``); check the backup is older
    (unless ``allow_newer_backup``), of the same application and installation (the row-sample
    check skipped when the operator says ``same_installation``), and not already
    restored by an earlier run; with ``downgrade_to``, refuse stub downgrades before anything is
    written."""
    check_sqlite_file(db, "live database")
    check_sqlite_file(backup, "backup")
    holders = _refuse_holders(db, force)
    refuse_wrong_pairing(db, backup, same_installation)
    with readonly(backup, "backup") as b, readonly(db, "live database") as n:
        old_rev, new_rev = alembic_revision(b), alembic_revision(n)
        old_tables = {r[0] for r in b.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        new_tables = {r[0] for r in n.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    shared = (old_tables & new_tables) - {"alembic_version"}
    if not shared or len(shared) < 0.5 * len(old_tables - {"alembic_version"}):
        raise RecoveryError(
            f"{backup} does not look like a backup of {db} (few tables in common)",
            "pass the backup of this application",
        )
    if _latest_mtime(backup) > _latest_mtime(db) and not allow_newer_backup:
        raise RecoveryError(
            f"{backup} is newer than {db}",
            "pass the pre-deploy backup; if this file really is it, pass --allow-newer-backup",
        )
    if alembic_ini is not None and old_rev and new_rev and old_rev != new_rev:
        from recovery.migrate.migrations import revisions_between

        try:
            revisions_between(alembic_ini, new_rev, old_rev)
        except RecoveryError:
            raise RecoveryError(
                f"the backup's revision {old_rev} is not an ancestor of the live revision {new_rev}",
                "is the backup newer than the live DB, or from another application?",
            ) from None
    if downgrade_to:
        if old_rev is not None and downgrade_to != old_rev:
            raise RecoveryError(
                f"--downgrade-to {downgrade_to} is not the backup's revision {old_rev}: the re-import "
                "carries rows into the backup's schema",
                f"pass --downgrade-to {old_rev}, or omit it to restore",
            )
        _refuse_stub_downgrades(db, alembic_ini, downgrade_to)
    if not force:
        # last, after every other refusal: the probe is a read-write open, and were it the last
        # connection its close would checkpoint and truncate -wal. A read-only guard keeps it from
        # being last while the app (or anyone) has the file open, so a lock refusal changes no byte.
        with readonly(db, "live database"):
            locked = write_lock_held(db)
        if locked:
            raise RecoveryError(
                f"{db} is locked by another writer (is the application still running?)",
                "stop the application, or pass --force",
            )
    refuse_second_rollback(db, backup, old_rev, new_rev)
    return {
        "backup_revision": old_rev,
        "live_revision": new_rev,
        "forced_past": [h.describe() for h in holders],
    }


def _refuse_holders(db: Path, force: bool) -> list[Any]:
    """Every other process with ``db`` open or locked (:meth:`recovery.engine.base.Engine.holders`):
    refused, each named, unless ``force`` (then returned, for the journal and the late check)."""
    return refuse_holders(
        db,
        "; their writes after the restore would be lost",
        "stop the application (every process that has the DB open), or pass --force",
        force,
    )


def rollback(
    db: str | os.PathLike[str],
    backup: str | os.PathLike[str],
    out: str | os.PathLike[str] | None = None,
    *,
    uploads: str | os.PathLike[str] | None = None,
    mapping: str | os.PathLike[str] | None = None,
    alembic_ini: str | os.PathLike[str] | None = None,
    options: RollbackOptions | None = None,
    files: FilesConfig | None = None,
    confirm: Callable[[dict[str, Any]], bool] | None = None,
    progress: Progress | None = None,
    **option_fields: Any,
) -> RunResult:
    """The whole runbook; see the module docstring. ``options``: a
    :class:`recovery.options.RollbackOptions` (single fields may be given as keywords instead,
    e.g. ``dry_run=True``). ``confirm`` is asked (with the extract summary)
    before the first change to the live DB; returning False stops with nothing changed.
    ``trust_mapping`` keeps column rules the data contradict (default: refused, exit 2).
    ``force`` overrides only the refusal while other processes hold the DB; ``allow_newer_backup``
    only the refusal of a backup newer than the live DB. A ``db`` reached through a symlink is
    resolved once: the real file is read and replaced, the link stays a link."""
    opts: RollbackOptions = with_fields(RollbackOptions, options, option_fields)
    since, on_conflict, apply_deletes, dry_run = (
        opts.since,
        opts.on_conflict,
        opts.apply_deletes,
        opts.dry_run,
    )
    downgrade_to, trust_mapping, same_installation, conflicts = (
        opts.downgrade_to,
        opts.trust_mapping,
        opts.same_installation,
        opts.conflicts,
    )
    full_verify = opts.full_verify
    db_p, backup_p = real_path(Path(db)), Path(backup)
    files = files or FilesConfig()
    say = progress or log.info
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    run_dir = Path(out) if out else db_p.parent / f"recovery-run-{stamp}"
    args = {
        "db": str(db_p.resolve()),
        "backup": str(backup_p.resolve()),
        "since": since,
        "mapping": str(mapping) if mapping else None,
        "alembic_ini": str(alembic_ini) if alembic_ini else None,
        "uploads": str(uploads) if uploads else None,
        "on_conflict": on_conflict.value,
        "apply_deletes": apply_deletes,
        "downgrade_to": downgrade_to,
    }
    if trust_mapping:  # only when set: journals of runs without it keep matching
        args["trust_mapping"] = True
    if same_installation:
        args["same_installation"] = True
    if full_verify:  # only when set: journals of runs without it keep matching
        args["full_verify"] = True
    if conflicts is not ConflictMode.CELL:  # only when set: journals of earlier runs keep matching
        args["conflicts"] = conflicts.value
    if since is not None:  # bad input is refused before a run folder or safety copy is written
        from recovery.compare.timestamps import parse_since

        parse_since(since)
    if mapping is not None:
        from recovery.transpile.mapping import load_mapping

        load_mapping(mapping)
    check_uploads(uploads)
    check_writable(run_dir, "run folder (--out)")
    if not dry_run:
        check_writable(
            Path(os.path.realpath(db_p)).parent,
            "database folder (the restore writes beside the DB)",
        )
    if dry_run:
        return _dry_run(db_p, backup_p, run_dir, uploads, mapping, alembic_ini, opts, files, say)
    from recovery.gcquiet import long_lived_frozen

    with (
        long_lived_frozen(),
        _one_run_per_folder(db_p),
        _windows_closed() as windows,
        _side_jobs_ended() as jobs,
    ):
        try:
            return _run_rollback(
                db_p,
                backup_p,
                run_dir,
                args,
                uploads,
                mapping,
                alembic_ini,
                opts,
                files,
                confirm,
                say,
                windows,
                jobs,
            )
        except BaseException as exc:
            truth = _failure_truth(exc, run_dir, db_p, backup_p)
            if truth is None:
                raise
            raise truth from exc


@contextmanager
def _windows_closed() -> Iterator[list[WriteWindow]]:
    """The run's write window (and the replaced file it keeps open) is let go however the run ends."""
    windows: list[WriteWindow] = []
    try:
        yield windows
    finally:
        for w in windows:
            w.release()
            if w.replaced is not None:
                w.replaced.close()


@contextmanager
def _one_run_per_folder(db: Path) -> Iterator[None]:
    """An exclusive ``flock`` on the live DB's folder for the whole run: two rollbacks of one DB
    would restore over each other. The folder, not the file, because the restore replaces the
    file (a new inode); ``flock`` is not SQLite's ``fcntl`` byte-range locking, so the app's
    own locks are untouched, and no file is created."""
    import fcntl

    fd = os.open(db.parent if str(db.parent) else ".", os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RecoveryError(
                f"another `recovery rollback` is running on a database in {db.parent}",
                "wait for it to finish (or stop it), then run this command again",
            ) from None
        yield
    finally:
        os.close(fd)  # releases the lock


def _run_rollback(
    db_p: Path,
    backup_p: Path,
    run_dir: Path,
    args: dict[str, Any],
    uploads: Any,
    mapping: Any,
    alembic_ini: Any,
    opts: RollbackOptions,
    files: FilesConfig,
    confirm: Callable[[dict[str, Any]], bool] | None,
    say: Progress,
    windows: list[WriteWindow] | None = None,
    jobs: list[_Background] | None = None,
) -> RunResult:
    since, on_conflict, force, downgrade_to = (
        opts.since,
        opts.on_conflict,
        opts.force,
        opts.downgrade_to,
    )
    allow_newer_backup = opts.allow_newer_backup
    journal = Journal(run_dir, args)
    if journal.state("undo") is not None:
        raise RecoveryError(
            f"the run in {run_dir} was undone (`recovery undo`): the live DB is the failed "
            "release's DB again; nothing was changed",
            "start a new rollback with a new --out folder",
        )
    if journal.done("report"):
        say("this run already finished; nothing to do")
        report = json.loads((run_dir / "report.json").read_text(encoding="utf-8"))
        return RunResult(
            run_dir,
            None,
            {"report.json": run_dir / "report.json"},
            True,
            True,
            {"summary": report.get("summary")},
            finished_exit_code=_finished_exit_code(journal, report),
        )
    if journal.resumed:
        _clean_leftovers(run_dir, db_p)
        _settle_staged_restore(journal, db_p)
    restore_started = journal.state("restore") is not None
    proof = (
        StagedProof()
    )  # what was proven of the restored file before the swap (this process only)
    bundle: Bundle | None = None
    walked: dict[str, Any] = {}  # the extract's uploads walk, for the one beside the re-import
    staged: _Background | None = (
        None  # the restored file, written beside the live one during the extract
    )
    window: WriteWindow | None = (
        None  # our write lock on the live DB, from the safety copy to the swap
    )
    lineage_job: _Background | None = None  # the migrations' rules, derived beside the safety copy
    reimported: Outcome | None = None  # the re-import's outcome when this process made it
    live_index: sqlite3.Connection | None = None  # keeps the live DB's -shm built for the probe
    prestarted = bool(
        alembic_ini and not downgrade_to and not restore_started and not journal.done("extract")
    )
    if prestarted:
        from recovery.migrate.sandbox import prestart

        # the lineage's sandbox child starts now, beside the probe: its interpreter, SQLAlchemy
        # and Alembic load while the probe and the write window run (no application code runs
        # in it before the lineage, under the lock, hands it its first job)
        prestart(alembic_ini)
    try:
        if not restore_started:
            # the file this attempt found (a resume from before the restore may find another):
            # tells a failed restore's result
            journal.data["live_before"] = _file_identity(db_p)
            say("checking the live database and the backup")
            journal.mark("probe", "start")
            # the probe then reads the live file in place, not a copy of it
            live_index = index_idle_wal(db_p)
            journal.mark(
                "probe",
                "done",
                **preflight(
                    db_p,
                    backup_p,
                    Path(alembic_ini) if alembic_ini else None,
                    force,
                    downgrade_to,
                    allow_newer_backup,
                    bool(args.get("same_installation")),
                ),
            )
            window, late_holders = _open_window(db_p, force)
            if live_index is not None:
                live_index.close()
            if late_holders:  # opened the DB since the preflight; let through by --force
                journal.data["steps"]["probe"].setdefault("forced_past", []).extend(late_holders)
            if windows is not None:
                windows.append(window)
            if not downgrade_to:  # staged and checked while the safety copy and the extract read
                staged = _Background(
                    stage_restore  # the final verification checks everything anyway
                    if args.get("full_verify")
                    else proof.staging(stage_restore, backup=backup_p),
                    backup_p,
                    db_p,
                    cleanup=lambda r: _drop_staged(proof, r[0]),
                )
            # under the lock, always: a resumed run's earlier copy may predate commits made since
            prior = journal.info("safety").get("sha256") if journal.done("safety") else None
            if alembic_ini and not journal.done("extract"):
                lineage_job = _Background(_derive_lineage, alembic_ini, backup_p, db_p)
            say("safety copy of the live database")
            journal.mark("safety", "start")
            safety_step = _SafetyStep(window, run_dir / "safety" / db_p.name, journal)
            if journal.done("extract"):  # a resumed run: the copy tells whether to extract again
                if prior is not None and sha256_file(safety_step.done()) != prior:
                    journal.data["steps"].pop(
                        "extract", None
                    )  # the live DB changed since: extract again
            if not journal.done("extract"):
                say("extracting post-deploy changes")
                journal.mark("extract", "start")
                from recovery.migrate.sandbox import protecting

                with protecting(
                    db_p, backup_p
                ):  # the app's migration code must not reach the real files
                    bundle = _extract_step(
                        run_dir,
                        backup_p,
                        db_p,
                        since,
                        mapping,
                        alembic_ini,
                        uploads,
                        files,
                        journal,
                        trust=bool(args.get("trust_mapping")),
                        derived_lineage=lineage_job.result if lineage_job is not None else None,
                        walked=walked,
                        safety=safety_step,
                    )
            safety_step.done()
            bundle = bundle or open_bundle(run_dir / "bundle")
            if confirm is not None and not confirm(_plan_summary(bundle)):
                raise RecoveryError(
                    "stopped at your request; nothing was changed", exit_code=ExitCode.REFUSED
                )
        bundle = bundle or open_bundle(run_dir / "bundle")
        # beside the re-import: it reads only the bundle, and writes only its own .tmp files
        report_prep = _Background(_prepare_report, run_dir, bundle, cleanup=lambda p: p.close())
        if jobs is not None:  # closed by the caller however the run ends
            jobs.append(report_prep)
        uploads_seen = (  # hashes for the relink, beside the re-import
            _Background(_walk_uploads, uploads, walked.pop("uploads", None))
            if uploads and not journal.done("reimport")
            else None
        )
        if uploads_seen is not None and jobs is not None:
            jobs.append(uploads_seen)
        if not journal.done("restore"):
            if downgrade_to:
                say(
                    f"downgrading the live database to {downgrade_to} with the application's Alembic"
                )
                journal.mark("restore", "start", method="downgrade")
                repaired: dict[
                    str, Any
                ] = {}  # what the backup gave back that the downgrade could not
                digest = restore_atomically(
                    run_dir / "safety" / db_p.name,
                    db_p,
                    lambda copy: repaired.update(
                        _downgrade_in_place(copy, alembic_ini, downgrade_to, backup_p)
                    ),
                    window,
                )
                journal.mark("restore", "done", method="downgrade", sha256=digest, repair=repaired)
                for line in repaired.get("notes", []):
                    say(line)
            else:
                say("restoring the backup beside the live database")
                journal.mark("restore", "start", method="backup")
                ready, staged = staged, None
                try:
                    tmp, digest = (
                        ready.result() if ready is not None else stage_restore(backup_p, db_p)
                    )
                    reimported = as_read_back(
                        _reimport_staged_then_swap(
                            tmp,
                            db_p,
                            bundle,
                            run_dir,
                            journal,
                            proof,
                            window,
                            opts,
                            args,
                            files,
                            say,
                        )
                    )
                except BaseException:  # not swapped in (the rename is the last step)
                    proof.abandon()
                    _discard_staged(db_p)
                    raise
                # sha256: the staged backup copy as staged and proven, before the re-import
                journal.mark(
                    "restore",
                    "done",
                    method="backup",
                    sha256=digest,
                    **({"proof": proof.basis} if proof.basis else {}),
                )
    finally:
        if live_index is not None:
            live_index.close()
        if lineage_job is not None or prestarted:  # a sandbox child the replay did not adopt
            if lineage_job is not None:
                lineage_job.discard()
            from recovery.migrate.sandbox import release_spare

            release_spare(alembic_ini if prestarted else None)
        if (
            staged is not None
        ):  # refused, stopped or failed before the restore: remove the staged copy
            staged.discard()
        if window is not None and window.replaced is None:  # no swap: give the lock back
            window.release()
    if not journal.done("reimport"):
        say("re-importing post-deploy changes (one transaction)")
        journal.mark("reimport", "start")
        in_place = journal.info("restore").get("method") == "downgrade"
        merge = MergeOptions(
            on_conflict,
            opts.prefer,
            ConflictMode(args.get("conflicts", ConflictMode.CELL.value)),
            opts.apply_deletes,
        )
        outcome = _reimport_into(
            db_p,
            bundle,
            merge,
            files,
            False,
            lock_wait(),
            str(db_p),
            in_place,
            check_after=False,
            run_dir=run_dir,
        )
        if (
            outcome.already_applied
        ):  # committed by a run killed before it journaled: its own outcome
            outcome = _recorded_outcome(db_p, bundle.bundle_id) or outcome
        _save_outcome(run_dir, outcome)
        journal.mark("reimport", "done", already_applied=outcome.already_applied)
        reimported = as_read_back(outcome)
    # outcome.json is read back only by a resumed run: this process holds what it wrote
    outcome = (
        reimported if reimported is not None else _load_outcome(run_dir, bundle, db_p, on_conflict)
    )
    early: EarlyWritten | None = None
    if not journal.done("verify") and not args.get("full_verify"):
        # the verification's reads, beside the relink
        early = EarlyWritten(db_p, outcome, proof, bundle)
        if jobs is not None:  # closed by the caller however the run ends
            jobs.append(_Background(lambda: early, cleanup=lambda e: e.close()))
    if not journal.done("relink"):
        journal.mark("relink", "start")
        outcome.files = (
            _relink(
                bundle,
                db_p,
                uploads,
                files,
                dry_run=False,
                outcome=outcome,
                earlier=uploads_seen.result() if uploads_seen is not None else None,
            )
            if uploads
            else None
        )
        _save_outcome(run_dir, outcome)
        journal.mark("relink", "done")
    # the live DB as the run leaves it (nothing of ours writes it after the relink: the
    # verification only reads): hashed while the verification, the late check and the report run
    live_left = _Background(db_fingerprint, db_p)
    if jobs is not None:
        jobs.append(live_left)
    if not journal.done("verify"):
        journal.mark("verify", "start")
        if early is not None and early.started:  # the main thread's part while the reads finish
            _advance_report(report_prep, run_dir, outcome, bundle, journal)
        outcome.verification = (
            None
            if args.get("full_verify")
            else (early.result(outcome, bundle.old.alembic_revision) if early else None)
            or verify_written(db_p, outcome, bundle.old.alembic_revision, proof, bundle)
        ) or verify_file(db_p, outcome, bundle.old.alembic_revision, role="live database")
        _save_outcome(run_dir, outcome)
        journal.mark("verify", "done", ok=outcome.verification.get("ok"))
    late = _late_check(journal, window, run_dir, db_p, say, jobs)
    from recovery.report import write_run_files

    journal.mark("report", "start")
    try:
        prepared = report_prep.result()
    except Exception:  # noqa: BLE001 - the report step reads the bundle itself, and says what failed
        prepared = None
    paths = write_run_files(
        run_dir,
        outcome,
        bundle,
        {"journal": journal.data["steps"], "late_commits": late},
        prepared=prepared,
    )
    report_prep.discard()
    result = RunResult(run_dir, outcome, paths, journal.resumed, False, journal.data["steps"], late)
    if outcome.aborted:
        result.note = (
            f"aborted: conflicts found, nothing was re-imported; the live DB {db_p} is now the backup. "
            f"Re-import with `recovery reimport {run_dir / 'bundle'} {db_p} --on-conflict skip`, "
            f"or run `recovery undo {run_dir}` to put the failed release's DB back"
        )
    journal.data["live_left"] = live_left.result()  # what `recovery undo` compares with
    journal.mark("report", "done", exit_code=int(result.exit_code))
    return result


def _reimport_staged_then_swap(
    tmp: Path,
    db: Path,
    bundle: Bundle,
    run_dir: Path,
    journal: Journal,
    proof: StagedProof,
    window: WriteWindow | None,
    opts: RollbackOptions,
    args: dict[str, Any],
    files: FilesConfig,
    say: Progress,
) -> Outcome:
    """The restore step of the backup method: re-import into the staged file ``tmp`` (nobody
    else sees it; :func:`_private_writes`), save the outcome, then swap it in under the write
    window held since the safety copy. The live DB is thus the failed release's DB until one
    rename makes it the backup with the post-deploy work re-imported; an aborted re-import
    (``--on-conflict abort``) swaps the bare backup in, as before.

    Journal: ``restore:start`` → ``reimport:start`` → (COMMIT into ``tmp``, ``outcome.json``,
    ``reimport.sql``) → ``reimport:done`` → swap → ``restore:done`` (by the caller). So
    ``reimport`` is done before ``restore``; :func:`_settle_staged_restore` tells a resumed run
    whether the swap happened. Returns the re-import's outcome (``aborted``: the swapped-in
    file is the bare backup).
    The journal's entries keep their keys: ``restore``'s ``sha256`` is the staged backup copy's
    as staged and proven (before the re-import). A failure before the swap leaves the live DB
    untouched; the caller removes the staged file (:func:`_discard_staged`)."""
    say("re-importing post-deploy changes into the restored copy (one transaction)")
    journal.mark("reimport", "start")
    merge = MergeOptions(
        opts.on_conflict,
        opts.prefer,
        ConflictMode(args.get("conflicts", ConflictMode.CELL.value)),
        opts.apply_deletes,
    )
    # the proof stands for the file as staged; its checks of the backup may still be running:
    # the re-import's FK check takes their verdict if it is in (clean_if_decided: else it reads
    # every key, never waiting), the swap waits for it
    proven = proof.holds(tmp)
    outcome = _reimport_into(
        tmp,
        bundle,
        merge,
        files,
        False,
        lock_wait(),
        str(db),
        check_after=False,
        run_dir=run_dir,
        staged=True,
        fk_clean=proof.clean_if_decided if proven else False,
    )
    if proven:  # our own transaction (FK-checked before its COMMIT) is all that changed it
        proof.rebind(tmp)
    _save_outcome(run_dir, outcome)
    # the rename keeps the staged file's (device, inode): how a resume knows the swap happened
    # (kept beside live_before, out of the steps the report shows)
    journal.data["live_staged"] = _file_identity(tmp)
    journal.mark("reimport", "done", already_applied=outcome.already_applied)
    say("swapping the restored database in")
    proof.confirm(tmp)  # a staged file written to since: verify in full after
    swap_in(tmp, db, window)
    _kill_point("restore:swapped")  # swapped, not yet journaled: _settle_staged_restore
    return outcome


def _drop_staged(proof: StagedProof, staged: Path) -> None:
    """A staged copy the run stopped before restoring: its checks stopped, the file removed."""
    proof.abandon()
    staged.unlink(missing_ok=True)


def _discard_staged(db: Path) -> None:
    """Remove the staged restore file and its ``-journal``/``-wal``/``-shm`` after a failure
    before the swap (our connections to it are closed by then; nobody else opens it)."""
    staged = _staged_path(db)
    for p in (staged, *(staged.with_name(staged.name + s) for s in ("-journal", "-wal", "-shm"))):
        p.unlink(missing_ok=True)


def _settle_staged_restore(journal: Journal, db: Path) -> None:
    """A resumed run whose killed predecessor was in the backup restore (``restore:start``), told
    by the live file's (device, inode): still the one the run found (``live_before``) — nothing of
    the restore or the staged re-import reached it: both entries are dropped and the run goes
    again from the probe (a new safety copy under the lock, the extract again if the live DB
    changed since); the staged file the re-import wrote (journaled at ``reimport:done``; the
    rename keeps it) — the swap happened: the restore is done. Anything else is a file someone
    put there: refused, nothing changed (its content is in no copy of ours)."""
    info = journal.info("restore")
    if info.get("state") in (None, "done") or info.get("method") != "backup":
        return
    before = journal.data.get("live_before")
    staged = journal.data.get("live_staged") if journal.done("reimport") else None
    if before is None and staged is None:  # cannot tell: the restore step stages and swaps again
        return
    if _live_is(db, staged):
        journal.mark("restore", "done", method="backup")
        return
    if _live_is(db, before):
        journal.data["steps"].pop("restore", None)
        journal.data["steps"].pop("reimport", None)
        journal.data.pop("live_staged", None)
        return
    raise RecoveryError(
        f"the live DB {db} is neither the file this run found nor the one it swapped in; "
        "nothing was changed",
        f"something else replaced it: inspect it; the failed release's DB as the run found it "
        f"is in {journal.run_dir / 'safety'}",
    )


def _open_window(db: Path, force: bool) -> tuple[WriteWindow, list[str]]:
    """Take the live DB's write lock (:class:`WriteWindow`), then look for holders once more: one
    that opened the DB since the preflight is refused as well (unless ``force``: then it is
    returned, described, with the window)."""
    window = open_engine(db).write_window()
    try:  # the window's own OFD lock is not a holder
        holders = refuse_holders(
            db,
            "; their writes after the restore would be lost",
            "stop the application (every process that has the DB open), or pass --force",
            force,
            ignore_own_guard=True,
        )
    except BaseException:
        window.release()
        raise
    return window, [h.describe() for h in holders]


def _late_check(
    journal: Journal,
    window: WriteWindow | None,
    run_dir: Path,
    db: Path,
    say: Progress,
    jobs: list[_Background] | None = None,
) -> dict[str, Any]:
    """Look at the replaced file once more: anything committed into it after the safety copy (a
    holder let through by --force, or one that slipped in) is listed in ``late_commits.json`` and
    makes the run need review. Never silent: a run resumed after the restore, whose replaced file
    was closed with the killed process, says it could not look (and needs review when holders
    were let through). ``jobs``: given, the replaced file's descriptors (the last ones: their
    close frees its blocks) are closed there, beside the report, instead of before it."""
    if journal.done("late_check"):
        return journal.info("late_check")
    replaced = window.replaced if window is not None else None
    if replaced is not None:
        try:
            replaced.settle(forced=bool(journal.info("probe").get("forced_past")))
            info = check_replaced(replaced, run_dir / "safety" / db.name, run_dir)
        finally:
            if jobs is None:
                replaced.close()
            else:
                jobs.append(_Background(close_fds, replaced.detach()))
        if info["late_commits"]:
            info["needs_review"] = True
            say(
                f"{info['late_commits']} row change(s) were committed into the replaced database after the safety "
                f"copy and are NOT in the restored one: listed in {run_dir / 'late_commits.json'}"
            )
    else:
        forced = bool(journal.info("probe").get("forced_past"))
        info = {
            "checked": False,
            "late_commits": None,
            "needs_review": forced,
            "reason": "the run was resumed after the restore: the replaced file was closed with the killed process",
        }
        if forced:
            info["file"] = str(
                write_late_commits(
                    run_dir,
                    {"checked": False, "reason": info["reason"], "tables": {}, "total": None},
                )
            )
            say(
                "could not check the replaced database for late commits (resumed run, holders were let through "
                "with --force): review " + str(run_dir / "late_commits.json")
            )
    journal.mark("late_check", "done", **info)
    return info


def _file_identity(p: Path) -> list[int]:
    """(device, inode) of ``p``: a rename over it (the restore) changes it."""
    st = p.stat()
    return [st.st_dev, st.st_ino]


def _live_is(db: Path, recorded: Any) -> bool:
    """The file at ``db`` is the one a journal recorded with :func:`_file_identity` (False when
    nothing was recorded or ``db`` cannot be read)."""
    if recorded is None:
        return False
    try:
        return _file_identity(db) == list(recorded)
    except OSError:
        return False


def _finished_exit_code(journal: Journal, report: dict[str, Any]) -> int:
    """The exit code a finished run finished with: journaled by the report step (a journal written
    before it was recorded: from report.json's verdict)."""
    code = journal.info("report").get("exit_code")
    if isinstance(code, int) and not isinstance(code, bool) and code in tuple(ExitCode):
        return code
    summary = report.get("summary") or {}
    if summary.get("aborted"):
        return ExitCode.FAILED
    from recovery.model.outcome import verdict_exit_code

    return verdict_exit_code(summary.get("verdict"))


def _read_journal(run_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((run_dir / "journal.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("steps"), dict) else None


def _reimported(db: Path, bundle_id: str | None) -> bool | None:
    """Whether ``db`` holds the re-import of ``bundle_id`` (None: cannot tell)."""
    from recovery.reimport.merge import already_applied

    if not bundle_id:
        return None
    try:
        with readonly(db, "live database") as conn:
            return already_applied(conn, bundle_id)
    except (RecoveryError, sqlite3.Error, OSError):
        return None


def _cause(exc: BaseException) -> str:
    """What went wrong, in a few words, without any claim about what was changed (the caller
    says that, knowing better than the step that failed)."""
    import re

    from recovery.errors import describe

    if isinstance(exc, RecoveryError):
        phrase = r"(the live DB was not touched|nothing was changed)"
        text = re.sub(rf"^{phrase}[;,:]?\s*|[;,]?\s*{phrase}", "", exc.message)
        return text.strip() or exc.message
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return describe(exc)[0]


def _failure_truth(
    exc: BaseException, run_dir: Path, db: Path, backup: Path
) -> RecoveryError | None:
    """The one true line for a rollback that failed after it changed the live DB (exit 3), from
    the journal on disk and the live file itself; None when the live DB was not changed (the
    original error then stands: it already says nothing was changed)."""
    journal = _read_journal(run_dir)
    args = (journal or {}).get("args") or {}
    if (
        journal is None
        or args.get("db") != str(db.resolve())
        or args.get("backup") != str(backup.resolve())
    ):
        return None  # not this command's run: the error is about the run folder, not the live DB
    steps = journal["steps"]
    restore = steps.get("restore", {})
    if restore.get("state") is None or "undo" in steps:
        return None
    if restore.get("state") != "done":
        if restore.get("method") == "backup":
            # swapped only if the file at the live path is the staged file the re-import wrote
            # (journaled at reimport:done, kept by the rename); otherwise the live file is the
            # untouched original or someone else's, and the original error stands
            written = steps.get("reimport", {}).get("state") == "done"
            if not (written and _live_is(db, journal.get("live_staged"))):
                return None
        elif _live_is(db, journal.get("live_before")):
            return None  # the swap never happened: the live file is the untouched original
    bundle_id = steps.get("extract", {}).get("bundle_id")
    reimported = _reimported(db, bundle_id)
    downgrade = restore.get("method") == "downgrade"
    now = (
        "the failed release's DB downgraded in place (its copy before the downgrade is in RUN/safety)"
        if downgrade
        else "the backup"
    ).replace("RUN", str(run_dir))
    undo = f"`recovery undo {run_dir}` to put the failed release's DB back"
    cause = _cause(exc)
    if reimported:
        message = (
            f"the rollback failed after the re-import ({cause}): the live DB {db} is {now} with the "
            f"post-deploy work re-imported; relinking files, verification or the report did not finish"
        )
        hint = f"run the same command to finish them, or {undo}"
    else:
        maybe = "" if reimported is False else " (it could not be checked)"
        message = (
            f"the rollback failed after the restore ({cause}): the live DB {db} is now {now}; nothing "
            f"was re-imported{maybe}"
        )
        hint = (
            f"the post-deploy work is in {run_dir / 'bundle'} and {run_dir / 'safety'}; run the same command "
            f"to resume, or {undo}"
        )
    try:  # what `recovery undo` compares the live DB with; best effort (the disk may be full)
        journal["live_left"] = db_fingerprint(db)
        write_json_atomic(run_dir / "journal.json", journal)
    except (OSError, ValueError):
        pass
    return RecoveryError(message, hint, ExitCode.FAILED)


def _clean_leftovers(run_dir: Path, db: Path) -> list[Path]:
    """Remove what a killed earlier run of this journal left half-written: the extract's
    ``.bundle.partial-<pid>`` folder, ``.<name>.tmp-<pid>`` copies in the safety folder and beside
    the live DB, and the staged ``.<db>.restore-tmp``. None of them was ever read (each is renamed
    into place only when complete). A partial folder is kept only while its writer holds its
    ``flock`` (:func:`recovery.bundle.extract.lock_partial`); a temporary file only while its <pid> is a
    live, non-zombie process that started before the file was made. The caller holds the run's
    folder lock, so no other rollback of this DB is writing any of them."""
    import re
    import shutil

    from recovery.bundle.extract import partial_in_use

    removed = []
    candidates = [
        *run_dir.glob(".bundle.partial-*"),
        *(run_dir / "safety").glob(f".{db.name}.tmp-*"),
        *db.parent.glob(f".{_staged_path(db).name}.tmp-*"),
    ]
    for p in candidates:
        m = re.search(r"\.tmp-(\d+)(-journal|-wal|-shm)?$|\.partial-(\d+)$", p.name)
        if m is None:
            continue
        if p.is_dir() and not p.is_symlink():
            if partial_in_use(p):
                continue
            shutil.rmtree(p, ignore_errors=True)
        else:
            try:
                made = p.lstat().st_mtime
            except FileNotFoundError:
                continue
            if _writer_alive(int(m.group(1) or m.group(3)), made):
                continue
            p.unlink(missing_ok=True)
        removed.append(p)
    staged = _staged_path(db)
    for p in (staged, *(staged.with_name(staged.name + s) for s in ("-journal", "-wal", "-shm"))):
        if p.exists():  # written again before any restore; never the live file
            p.unlink()
            removed.append(p)
    return removed


class _SafetyStep:
    """The rollback's safety copy, made on its own thread (:meth:`WriteWindow.start_safety_copy`)
    while the extract reads the live DB under the same write lock, so both see one state; the
    journal marks it done once, before the extract is marked done (a resumed run compares the
    next copy with this one's sha256, the bundle's live fingerprint, to know whether the bundle
    still describes the live DB)."""

    def __init__(self, window: WriteWindow, path: Path, journal: Journal) -> None:
        self.path, self._journal = path, journal
        self._copying = window.start_safety_copy(path)
        self._marked = False

    def done(self) -> Path:
        """Wait for the copy (re-raising its error) and journal it, once."""
        safety, copied_by = self._copying.result()
        if not self._marked:
            log.debug("safety copy made by %s", copied_by)
            self._journal.mark("safety", "done", path=str(safety), size=safety.stat().st_size)
            self._marked = True
        return safety

    def fingerprint(self) -> dict[str, Any]:
        """The bundle's live fingerprint: the safety copy's, once it is made."""
        from recovery.bundle.extract import live_fingerprint

        self._copying.result()
        return live_fingerprint(self.path)


def _extract_step(
    run_dir: Path,
    backup: Path,
    db: Path,
    since: str | None,
    mapping: Any,
    alembic_ini: Any,
    uploads: Any,
    files: FilesConfig,
    journal: Journal,
    trust: bool = False,
    derived_lineage: Callable[[], Any] | None = None,
    walked: dict[str, Any] | None = None,
    safety: _SafetyStep | None = None,
) -> Bundle:
    """Extract into ``RUN_DIR/bundle`` and journal it with the safety copy's sha256 (the bundle's
    live fingerprint). With ``safety`` (the rollback: our write lock is held, so the live file
    is the very state being copied) the live DB is read in place while the copy is made, and the
    safety step is journaled done before the extract; without, the safety copy is read.
    ``walked``: given, its ``"uploads"`` is set to the extract's walk of the uploads (with the
    digests its copies took), which the walk beside the re-import then refreshes."""
    from recovery.bundle.extract import extract

    bundle_dir = run_dir / "bundle"
    if bundle_dir.exists():  # a finished bundle from a run killed before journaling it
        import shutil

        shutil.rmtree(bundle_dir)
    res = extract(
        backup,
        db if safety is not None else run_dir / "safety" / db.name,
        bundle_dir,
        since,
        mapping,
        alembic_ini,
        uploads,
        files,
        trust_mapping=trust,
        derived_lineage=derived_lineage,
        live_print=safety.fingerprint if safety is not None else None,
    )
    if res.plan.errors:
        journal.mark("extract", "failed", errors=list(res.plan.errors))
        raise RecoveryError(
            "the re-import plan has errors; the live DB was not touched: "
            + "; ".join(res.plan.errors),
            "add a mapping file (see the README) and run again",
        )
    if walked is not None:
        walked["uploads"] = res.uploads_walk
    if safety is not None:
        safety.done()
    journal.data["steps"]["safety"]["sha256"] = res.bundle.manifest["sources"]["live"]["sha256"]
    journal.mark("extract", "done", bundle_id=res.bundle.bundle_id)
    return res.bundle


def _derive_lineage(alembic_ini: Any, backup: Path, db: Path) -> Any:
    """The migrations' mapping rules from the app's downgrade in the sandbox (its own child
    process, the live DB and the backup protected), started beside the safety copy for the
    extract: read from the live file under our write lock, its schema is the safety copy's."""
    from recovery.migrate.migrations import derive_lineage

    # its sandbox child is kept for the extract's upgrade replay (one interpreter for both)
    return derive_lineage(alembic_ini, backup, db, keep_child=True)


def _plan_summary(bundle: Bundle) -> dict[str, Any]:
    c = bundle.counts
    typed = bundle.table_counts.values()
    return {
        "deploy_time": bundle.manifest.get("deploy_time"),
        RowKind.INSERTED: sum(v.inserted for v in typed),
        RowKind.UPDATED: sum(v.updated for v in typed),
        RowKind.DELETED: sum(v.deleted for v in typed),
        "lost": sum(v.lost for v in typed),
        "tables": c,
        "from_revision": bundle.new.alembic_revision,
        "to_revision": bundle.old.alembic_revision,
    }


OUTCOME_FILE = "outcome.json"
"""The run's outcome between steps: ``Outcome.to_json()`` (format ``recovery-outcome/1``)."""


def _save_outcome(run_dir: Path, outcome: Outcome) -> None:
    tmp = run_dir / f"{OUTCOME_FILE}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.fchmod(
        fd, 0o600
    )  # users' data, like every file of the run folder (an old tmp keeps its mode otherwise)
    with open(fd, "w", encoding="utf-8") as fh:
        outcome.write_json(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, run_dir / OUTCOME_FILE)


def _load_outcome(run_dir: Path, bundle: Bundle, db: Path, policy: ConflictPolicy) -> Outcome:
    """The re-import's outcome: the run folder's ``outcome.json``, else the copy the re-import
    committed into the live DB with its data (a run killed between that commit and the journal),
    else an empty ``already_applied`` outcome."""
    p = run_dir / OUTCOME_FILE
    if p.is_file():
        from recovery.report.runfiles import (
            read_outcome_file,
        )  # pandas/matplotlib load only when needed

        return read_outcome_file(p)
    recorded = _recorded_outcome(db, bundle.bundle_id)
    if recorded is not None:
        return recorded
    return Outcome(bundle.bundle_id, str(db), policy.value, False, already_applied=True)


def _recorded_outcome(db: Path, bundle_id: str) -> Outcome | None:
    """The outcome the re-import of ``bundle_id`` stored in ``db`` in its own transaction."""
    from recovery.model.outcome import OutcomeFormatError
    from recovery.reimport.merge import recorded_outcome

    with readonly(db, "live database") as conn:
        text = recorded_outcome(conn, bundle_id)
    if text is None:
        return None
    try:
        return Outcome.from_json(text)
    except OutcomeFormatError as exc:
        raise RecoveryError(
            f"the re-import outcome recorded in {db} is not a {OUTCOME_FORMAT} document ({exc})",
            "the database was edited by hand; run `recovery report` on the bundle instead",
        ) from None


def _refuse_stub_downgrades(
    db: Path, alembic_ini: str | os.PathLike[str] | None, target: str
) -> None:
    """Refuse ``--downgrade-to`` when a revision on the way down has a stub downgrade."""
    from recovery.migrate.migrations import revisions_between

    if alembic_ini is None:
        raise RecoveryError(
            "--downgrade-to needs --alembic-ini", "pass the application's alembic.ini"
        )
    with readonly(db, "live database") as conn:
        current = alembic_revision(conn)
    if current is None:
        raise RecoveryError(
            f"{db} has no alembic_version", "use the backup restore instead of --downgrade-to"
        )
    stubs = [
        r.revision for r in revisions_between(alembic_ini, current, target) if r.downgrade_stub
    ]
    if stubs:
        raise RecoveryError(
            f"revision(s) {', '.join(stubs)} have a stub downgrade (pass / NotImplementedError): downgrading "
            f"would leave their schema changes in place",
            "restore from the backup instead (omit --downgrade-to)",
        )


def _downgrade_in_place(
    db: Path, alembic_ini: str | os.PathLike[str] | None, target: str, backup: Path | None = None
) -> dict[str, Any]:
    """Run the app's downgrade to ``target`` on ``db`` (a scratch copy: pysqlite does not make
    Alembic's DDL transactional, so the live file is only ever swapped in whole), then, given the
    ``backup``, put back from it what the downgrade cannot (:mod:`recovery.restore.downgrade`: cells of
    columns the upgrade dropped, rows deleted after the deploy). Returns what was put back (the
    journal's restore entry), empty without a backup.

    The app's code runs in the sandbox (:mod:`recovery.migrate.sandbox`): it can open ``db`` only; the
    backup, the live DB the staged copy ``.NAME.restore-tmp`` stands for and every database the
    ini or the environment names are fingerprinted before and after it."""
    _refuse_stub_downgrades(db, alembic_ini, target)
    from recovery.migrate.sandbox import MigrationFailed, Sandbox, refusal_note

    live = None
    if backup is not None:
        with readonly(db, "live database copy") as conn:
            live = reflect(conn)  # before the downgrade: which columns the live schema lacks
    protect = [p for p in (backup,) if p is not None]
    if db.name.startswith(".") and db.name.endswith(".restore-tmp"):
        protect.append(
            db.with_name(db.name[1 : -len(".restore-tmp")])
        )  # the live DB this copy replaces
    try:
        with Sandbox(Path(str(alembic_ini)), db, protect) as sb:
            sb.migrate("downgrade", target, fast=False)
    except MigrationFailed as exc:
        raise RecoveryError(
            f"the application's downgrade to {target} failed on the staged copy {db.name}, in the sandbox; the "
            f"live database was not replaced: {exc.error}" + refusal_note(exc.error, exc.refused),
            "fix the migration, or restore from the backup instead (omit --downgrade-to)",
            ExitCode.FAILED,
        ) from None
    if backup is None or live is None:
        return {}
    from recovery.restore.downgrade import repair_from_backup

    return repair_from_backup(db, backup, live).to_dict()


def _dry_run(
    db: Path,
    backup: Path,
    run_dir: Path,
    uploads: Any,
    mapping: Any,
    alembic_ini: Any,
    opts: RollbackOptions,
    files: FilesConfig,
    say: Progress,
) -> RunResult:
    """Everything on scratch copies: the same report, every input file byte-identical."""
    since, trust, same_installation = opts.since, opts.trust_mapping, opts.same_installation
    from recovery.bundle.extract import extract

    probe = preflight(
        db,
        backup,
        Path(alembic_ini) if alembic_ini else None,
        force=True,
        allow_newer_backup=True,
        same_installation=same_installation,
    )
    for holder in probe["forced_past"]:
        say(f"dry run: a real rollback would refuse while {holder}")
    with tempfile.TemporaryDirectory(prefix="recovery-dry-run-") as tmp:
        t = Path(tmp)
        say("dry run: copying the live database to a scratch folder")
        live_copy = consistent_copy(db, t / db.name, "live database")
        say("dry run: extracting")
        from recovery.migrate.sandbox import protecting

        with protecting(
            db, backup
        ):  # lineage runs on scratch copies; the real files are fingerprinted too
            res = extract(
                backup,
                live_copy,
                t / "bundle",
                since,
                mapping,
                alembic_ini,
                uploads,
                files,
                trust_mapping=trust,
            )
        if res.plan.errors:
            raise RecoveryError(
                "the re-import plan has errors: " + "; ".join(res.plan.errors),
                "add a mapping file (see the README)",
            )
        say("dry run: restoring and re-importing on the scratch copy")
        restored = consistent_copy(backup, t / "restored.db", "backup")
        outcome = _reimport_into(
            restored, res.bundle, opts, files, True, lock_wait(), str(db), run_dir=run_dir
        )
        outcome.dry_run = True
        outcome.files = (
            _relink(res.bundle, restored, uploads, files, dry_run=True, outcome=outcome)
            if uploads
            else None
        )
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        from recovery.report import write_run_files

        paths = write_run_files(
            run_dir, outcome, res.bundle, {"dry_run_note": "nothing was changed"}
        )
    return RunResult(run_dir, outcome, paths)


# ---------------------------------------------------------------------------------------------
# undo


@dataclass
class UndoResult:
    """What ``recovery undo`` did: ``state`` is ``undone``, ``already_undone`` or ``dry_run``."""

    run_dir: Path
    db: Path
    state: str
    safety: Path
    kept: Path | None = None
    changed_since_run: bool = False
    exit_code: int = ExitCode.OK


def refuse_if_in_use(db: Path, what: str = "undo") -> None:
    """Refuse while another process holds ``db``: every process with it (or its ``-wal``/``-shm``)
    open or locked (:mod:`recovery.engine.holders`, as the rollback's preflight), each named."""
    refuse_holders(
        db,
        "; nothing was changed",
        f"stop the application (every process that has the DB open), then run `recovery {what}` again",
    )


def _same_bytes(now: dict[str, Any], then: dict[str, Any]) -> bool:
    return now.get("sha256") == then.get("sha256") and now.get("wal_sha256") == then.get(
        "wal_sha256"
    )


def _expected_live(journal: dict[str, Any]) -> dict[str, Any] | None:
    """The live DB as the run left it: recorded when the run finished or failed; for a run killed
    after the restore and before its re-import committed, the restored file itself."""
    left = journal.get("live_left")
    if isinstance(left, dict) and isinstance(left.get("sha256"), str):
        return left
    steps = journal["steps"]
    restore = steps.get("restore", {})
    if (
        restore.get("state") == "done"
        and isinstance(restore.get("sha256"), str)
        and steps.get("reimport", {}).get("state") != "done"
    ):
        return {"sha256": restore["sha256"], "wal_sha256": None}
    return None


def _load_run_journal(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "journal.json"
    if not path.is_file():
        raise RecoveryError(
            f"{run_dir} holds no journal.json: not the --out folder of a `recovery rollback`",
            "pass the run folder the rollback wrote (its journal, safety copy and bundle)",
        )
    check_run_folder(run_dir, "undo")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RecoveryError(
            f"{path} cannot be read as JSON ({exc})", "pass an intact run folder"
        ) from None
    ok = (
        isinstance(data, dict)
        and data.get("format") == "recovery-journal/1"
        and isinstance(data.get("steps"), dict)
        and isinstance(data.get("args"), dict)
        and isinstance(data["args"].get("db"), str)
        and all(isinstance(v, dict) for v in data["steps"].values())
    )
    if not ok:
        raise RecoveryError(f"{path} is not a recovery-journal/1 file", "pass an intact run folder")
    return data


def undo(
    run_dir: str | os.PathLike[str],
    force: bool = False,
    dry_run: bool = False,
    confirm: Callable[[dict[str, Any]], bool] | None = None,
    progress: Progress | None = None,
) -> UndoResult:
    """Put the run's safety copy (the failed release's DB as the rollback found it) back as the
    live DB: refused while another process holds the DB, and when the live DB changed since the
    run left it unless ``force``; a consistent copy of the current live file is kept in
    ``RUN_DIR/undo/`` first; the copy goes in by an atomic rename with the live file's owner,
    group and mode. Journaled as the ``undo`` step: a second undo changes nothing."""
    say = progress or log.info
    run = Path(run_dir)
    data = _load_run_journal(run)
    db = Path(data["args"]["db"])
    steps = data["steps"]
    safety = run / "safety" / db.name
    undo_info = steps.get("undo", {})
    if undo_info.get("state") == "done":
        return UndoResult(
            run,
            db,
            "already_undone",
            safety,
            Path(undo_info["kept"]) if undo_info.get("kept") else None,
        )
    check_sqlite_file(db, "live database")
    if (
        undo_info.get("state") in ("start", "staged")
        and isinstance(undo_info.get("sha256"), str)
        and db_fingerprint(db)["sha256"] == undo_info["sha256"]
    ):
        journal = Journal(run, data["args"])  # killed after its swap: finish the journal only
        journal.mark(
            "undo", "done", **{k: v for k, v in undo_info.items() if k not in ("state", "at")}
        )
        return UndoResult(
            run,
            db,
            "already_undone",
            safety,
            Path(undo_info["kept"]) if undo_info.get("kept") else None,
        )
    restore = steps.get("restore", {})
    replaced = restore.get("state") == "done" or (
        restore.get("state") is not None
        and data.get("live_before") is not None
        and _file_identity(db) != list(data["live_before"])
    )
    if not replaced:
        raise RecoveryError(
            f"the run in {run} never replaced the live DB {db}; there is nothing to undo",
            "the live DB is still the one the rollback found",
        )
    if not safety.is_file():
        raise RecoveryError(
            f"the safety copy {safety} is missing; nothing was changed",
            "restore the failed release's DB from your own backup",
        )
    want = steps.get("safety", {}).get("sha256")
    say("checking the safety copy")
    if isinstance(want, str) and sha256_file(safety) != want:
        raise RecoveryError(
            f"the safety copy {safety} changed since the run (sha256 differs); nothing was changed",
            "it cannot be trusted as the failed release's DB",
        )
    check_sqlite_file(safety, "safety copy")
    refuse_if_in_use(db)
    expected = _expected_live(data)
    now = db_fingerprint(db)
    changed = expected is None or not _same_bytes(now, expected)
    if changed and not force:
        why = (
            "the run did not record what it left (resume it first with the same command)"
            if expected is None
            else "it was written to after the rollback"
        )
        raise RecoveryError(
            f"the live DB {db} changed since the run in {run} left it ({why}); nothing was changed",
            "undoing would discard those changes: pass --force to undo anyway "
            f"(a consistent copy of the current file is kept in {run / 'undo'} first)",
        )
    if dry_run:
        return UndoResult(run, db, "dry_run", safety, None, changed)
    if confirm is not None and not confirm(
        {"db": str(db), "safety": str(safety), "changed": changed}
    ):
        raise RecoveryError("stopped at your request; nothing was changed")
    with _one_run_per_folder(db):  # no rollback or other undo of a DB in this folder meanwhile
        return _undo_swap(run, data, db, safety, now, changed, say)


def _undo_swap(
    run: Path,
    data: dict[str, Any],
    db: Path,
    safety: Path,
    now: dict[str, Any],
    changed: bool,
    say: Progress,
) -> UndoResult:
    """The writing half of :func:`undo`, journaled: keep the current file, stage the safety copy,
    check again that nobody holds or wrote the DB, swap."""
    journal = Journal(run, data["args"])
    journal.mark("undo", "start", forced=bool(changed))
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    say("keeping a consistent copy of the current live DB")
    kept = consistent_copy(db, run / "undo" / f"{db.name}.before-undo-{stamp}", "live database")
    os.chmod(kept, 0o600)  # users' data: readable by its owner only
    say("putting the safety copy back")
    staged, digest = _stage_undo(safety, db)
    journal.mark("undo", "staged", forced=bool(changed), kept=str(kept), sha256=digest)
    try:
        refuse_if_in_use(db)
        if db_fingerprint(db) != now:
            raise RecoveryError(
                f"the live DB {db} was written to during the undo; nothing was changed",
                "stop the application and run `recovery undo` again",
            )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    swap_in(staged, db)
    journal.mark("undo", "done", forced=bool(changed), kept=str(kept), sha256=digest)
    return UndoResult(run, db, "undone", safety, kept, changed)

"""The ``recovery`` command run inside the test process, answering as ``subprocess.run(...,
capture_output=True, text=True)`` does (``returncode``, ``stdout``, ``stderr``).

Why: a real process costs about a second and a half before the command starts (the interpreter,
then sqlalchemy, sqlglot, alembic, pandas and matplotlib imported again); in the test process they
are imported once. The command is the same code either way: :func:`recovery.cli.main` turns every
error into one ``error:`` line on stderr and its exit code whether it runs in a process of its own
or here (click's ``CliRunner`` catches the ``SystemExit``), and ``main`` resets its per-run state
(``--quiet``, bars, logging) at every start.

What needs a process of its own stays one (:func:`run`): a SIGKILL or SIGTERM
(``RECOVERY_TEST_KILL_*``, which :func:`invoke` refuses), another process's view of the command, a
timeout, its own environment and exit code run in a child forked from a server that has the package
imported (:mod:`tests.forkrun`: a real process, without the interpreter's start-up). A terminal, or
the interpreter itself (``python -m recovery``, an installed package), is a test's own
``subprocess`` call."""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Mapping
from pathlib import Path

from click.testing import CliRunner


def invoke(
    *args: object,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``recovery ARGS`` in this process; ``env`` is laid over ``os.environ`` for the call (a
    ``None`` value unsets that variable), ``cwd`` is the working folder for the call."""
    from recovery.cli import main

    argv = [str(a) for a in args]
    if _asks_for_a_kill(env):
        raise ValueError("a kill needs a process of its own: use subprocess for this call")
    chdir = contextlib.chdir(cwd) if cwd is not None else contextlib.nullcontext()
    with chdir:
        res = CliRunner().invoke(
            main, argv, env=dict(env or {}), prog_name="recovery", catch_exceptions=False
        )
    return subprocess.CompletedProcess(["recovery", *argv], res.exit_code, res.stdout, res.stderr)


def _asks_for_a_kill(env: Mapping[str, str | None] | None) -> bool:
    return any(k.startswith("RECOVERY_TEST_KILL") for k in env or {})


def run(
    *args: object,
    env: Mapping[str, str | None] | None = None,
    cwd: Path | str | None = None,
    process: bool = False,
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """``recovery ARGS`` in this process (:func:`invoke`), or in a process of its own forked from
    the package's server (:func:`tests.forkrun.forked`) when ``process`` is set or ``env`` asks for
    a kill or a signal (``RECOVERY_TEST_KILL_*``); ``env`` is laid over ``os.environ`` the same way
    either way."""
    if not process and not _asks_for_a_kill(env):
        return invoke(*args, env=env, cwd=cwd)
    from tests.forkrun import forked

    return forked(*args, env=env, cwd=cwd, timeout=timeout)

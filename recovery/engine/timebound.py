"""A wall-clock bound on every SQL statement run over untrusted input (a bundle's rows and plan).

A bundle's expressions pass the mapping validator, but a valid expression can still take forever
(``length(replace(zeroblob(1e9), x'00', 'ab'))`` on every row, a forged ``rows.db`` of a billion
rows) while the re-import holds the target's write lock. :func:`statement_time_limit` starts a
watchdog thread that calls ``interrupt()`` once the running statement has run longer than the
limit; the trace callback marks each statement's start, so the bound is per statement. No
progress handler: it would take the GIL back every few thousand instructions from inside the
statement, and with another Python thread busy each of those waits up to the interpreter's
switch interval (5 ms) — the statement would crawl while other threads run. The
interrupted statement raises inside the caller's transaction, which the caller rolls back; the
context manager turns it into one clear :class:`RecoveryError` (exit 3).

The limit: the ``seconds`` argument, else the CLI's ``--statement-timeout`` (:func:`override`), else
``$RECOVERY_STATEMENT_TIMEOUT``, else 300 s.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from recovery.errors import ExitCode, RecoveryError

ENV = "RECOVERY_STATEMENT_TIMEOUT"
DEFAULT_SECONDS = 300.0
_override: list[float | None] = [None]  # the CLI's --statement-timeout while a command runs


def limit_seconds(seconds: float | None = None) -> float:
    """The bound in force: ``seconds``, else the environment's, else the default."""
    if seconds is None and _override[0] is not None:
        return _override[0]
    if seconds is None:
        raw = os.environ.get(ENV)
        if not raw:
            return DEFAULT_SECONDS
        try:
            seconds = float(raw)
        except ValueError:
            raise RecoveryError(f"{ENV}={raw!r} is not a number of seconds", "e.g. 300") from None
    if not seconds > 0:
        raise RecoveryError(
            f"the statement time limit must be a positive number of seconds, not {seconds!r}"
        )
    return float(seconds)


def _shown(seconds: float) -> str:
    return f"{seconds:g}"


@contextmanager
def statement_time_limit(conn: sqlite3.Connection, seconds: float | None = None) -> Iterator[float]:
    """Within the block, any statement on ``conn`` that runs longer than the limit is interrupted
    and the block raises ``RecoveryError("statement ran longer than N s; nothing was applied")``
    with exit code 3. The caller must roll its transaction back (its ``except`` does). Yields the
    limit in seconds.

    A watchdog thread looks at the statement's start time (set by the trace callback) every
    50 ms and calls ``conn.interrupt()`` once it is over the limit: that stops slow single
    instructions too (a scalar function over megabytes per row), and the statement itself never
    waits for the GIL on its account."""
    limit = limit_seconds(seconds)
    started = [time.monotonic()]
    done = threading.Event()

    def trace(statement: str) -> None:
        if not statement.startswith("--"):  # "-- TRIGGER …" lines are part of the running statement
            started[0] = time.monotonic()

    def over() -> bool:
        return time.monotonic() - started[0] > limit

    def watchdog() -> None:
        while not done.wait(min(0.05, limit / 4)):
            if over():
                conn.interrupt()

    conn.set_trace_callback(trace)
    dog = threading.Thread(target=watchdog, name="recovery-statement-timeout", daemon=True)
    dog.start()
    try:
        yield limit
    except Exception as exc:
        # nothing else interrupts these connections: an "interrupted" error here is the watchdog's
        # (its interrupt() between two statements is a no-op: SQLite clears it as the next starts),
        # also when the code in the block turned it into another exception
        if interrupted(exc):
            raise RecoveryError(
                f"statement ran longer than {_shown(limit)} s; nothing was applied",
                f"the bundle may be forged or the data far larger than expected; raise the limit "
                f"with --statement-timeout or {ENV} if it is genuine",
                ExitCode.FAILED,
            ) from None
        raise
    finally:
        done.set()
        dog.join()
        conn.set_trace_callback(None)


def interrupted(exc: BaseException | None) -> bool:
    """``exc``, or an exception it was raised from or while handling, is SQLite's "interrupted"."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


@contextmanager
def override(seconds: float | None) -> Iterator[None]:
    """Within the block, ``seconds`` (when not None) is the limit wherever none is passed: the
    CLI's ``--statement-timeout`` reaches every statement without threading it through."""
    before = _override[0]
    if seconds is not None:
        _override[0] = limit_seconds(seconds)
    try:
        yield
    finally:
        _override[0] = before


LOCK_WAIT_ENV = "RECOVERY_LOCK_WAIT"
LOCK_WAIT_SECONDS = 10.0


def lock_wait() -> float:
    """How long a rollback waits for another connection's write lock on the live or restored
    database before it says so (``$RECOVERY_LOCK_WAIT`` in seconds when it is a positive number,
    else 10 s)."""
    raw = os.environ.get(LOCK_WAIT_ENV, "")
    try:
        value = float(raw)
    except ValueError:
        return LOCK_WAIT_SECONDS
    return value if 0 < value < float("inf") else LOCK_WAIT_SECONDS

"""The one user-facing error type and the documented exit codes.

The library raises :class:`RecoveryError`; the CLI prints it as one line (plus a hint)
and exits with its code. An ``OSError`` or ``sqlite3.Error`` that reaches the CLI becomes one line
too (:func:`describe`: what happened and what to do), as does any other exception (a bug); the
trace is shown only with ``recovery --traceback`` or ``RECOVERY_TRACEBACK=1``.
"""

from __future__ import annotations

import errno
import sqlite3
from enum import IntEnum


class ExitCode(IntEnum):
    """Exit codes every command shares (documented in the README and ``--help``)."""

    OK = 0
    """Everything was carried / nothing to review."""
    REVIEW = 1
    """Finished, with conflicts, lost values or differences to review."""
    REFUSED = 2
    """Refused or bad input; nothing was changed."""
    FAILED = 3
    """Failed. Its message says what the live DB now is: rolled back and unchanged, or (after the
    restore) the backup, with how to resume or undo."""


class RecoveryError(Exception):
    """A problem the user can act on: what is wrong, what to do, and the exit code."""

    def __init__(self, message: str, hint: str | None = None, exit_code: int = ExitCode.REFUSED):
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.exit_code = int(exit_code)

    def one_line(self) -> str:
        """The message and hint joined into the single line the CLI prints."""
        return f"{self.message} — {self.hint}" if self.hint else self.message


_ERRNO_ADVICE = {
    errno.ENOSPC: (
        "no space left on the device",
        "free disk space (or pass --out on another disk)",
    ),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EROFS: (
        "the file system is read-only",
        "choose a writable folder (--out) or remount it read-write",
    ),
    errno.EACCES: ("permission denied", "check the owner and mode of that path"),
    errno.EPERM: ("operation not permitted", "check the owner, mode and attributes of that path"),
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.ENOTDIR: ("a path component is not a folder", "check the path"),
    errno.EEXIST: (
        "a file already exists there",
        "check the path (a file where a folder was expected?)",
    ),
    errno.EISDIR: ("a folder was found where a file was expected", "check the path"),
    errno.EIO: (
        "an input/output error from the disk",
        "check the disk (dmesg) before anything else",
    ),
    errno.EMFILE: ("too many open files", "raise the open-file limit (ulimit -n)"),
}

_SQLITE_ADVICE = (
    ("database or disk is full", "free disk space"),
    ("locked", "stop the application (or the other writer) and run the command again"),
    ("busy", "stop the application (or the other writer) and run the command again"),
    ("readonly", "check the owner and mode of the database file and its folder"),
    ("unable to open", "check the path, its folder's permissions and free space"),
    ("disk i/o", "check the disk (dmesg) and free space"),
    ("malformed", "the file is damaged: restore it from a backup"),
    ("not a database", "pass the right file"),
)


def describe(exc: BaseException) -> tuple[str, str]:
    """(what happened, what to do) for an ``OSError``, a ``sqlite3.Error`` or any other exception,
    each one short phrase without a trace."""
    if isinstance(exc, OSError):
        what, todo = _ERRNO_ADVICE.get(
            exc.errno or -1, (exc.strerror or type(exc).__name__, "check the path")
        )
        where = exc.filename if exc.filename is not None else None
        return (f"{what}{f' ({where})' if where else ''}", todo)
    if isinstance(exc, sqlite3.Error):
        text = str(exc) or type(exc).__name__
        todo = next(
            (a for k, a in _SQLITE_ADVICE if k in text.lower()),
            "run with --traceback and report it",
        )
        return (f"SQLite: {text}", todo)
    return (f"internal error {type(exc).__name__}: {exc}", "run with --traceback and report it")

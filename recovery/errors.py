"""The one user-facing error type and the documented exit codes.

The library raises :class:`RecoveryError`; the CLI prints it as one line (plus a hint)
and exits with its code. Anything else escaping the CLI is a bug and shows a traceback.
"""
from __future__ import annotations

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
    """Failed and rolled back; nothing was changed."""


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

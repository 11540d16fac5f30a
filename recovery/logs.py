"""Diagnostics on stderr through :mod:`logging`: every module logs to ``logging.getLogger(__name__)``
(under ``recovery``), and the CLI installs one handler on the ``recovery`` logger.

What each level means, and how the CLI prints it (stdout is never touched, so ``--json`` output
stays the JSON alone):

* WARNING and above — something the operator must know although the command goes on (a
  migration that failed on a scratch copy, a sandbox refusal): the message as written, always,
  ``--quiet`` included.
* INFO — the ``· step`` messages of the long commands: ``· <message>``, unless ``--quiet``.
* DEBUG — with ``recovery --verbose``: each step's start and end (with its time), the options and
  decisions a command took, counts of what it did (rows, SQL statements planned and run,
  conflicts): ``debug <logger>: <message>``, unless ``--quiet``.

Used as a library, nothing is printed below WARNING unless the caller configures logging (Python's
own last-resort handler prints warnings).
"""

from __future__ import annotations

import logging
import sys

ROOT = "recovery"


class StderrHandler(logging.Handler):
    """The CLI's handler: the formats above, written to the current ``sys.stderr``."""

    def emit(self, record: logging.LogRecord) -> None:
        from recovery import progress

        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                print(message, file=sys.stderr, flush=True)
            elif progress.is_quiet():
                return
            elif record.levelno >= logging.INFO:
                from recovery.escape import term_text
                from recovery.report.render import console

                console(stderr=True).print(term_text(f"· {message}", None))
            else:
                from recovery.escape import plain

                print(plain(f"debug {record.name}: {message}", None), file=sys.stderr, flush=True)
        except Exception:  # noqa: BLE001 - logging must never break the command
            self.handleError(record)


def configure(verbose: bool = False) -> None:
    """Install the CLI's one handler on the ``recovery`` logger (replacing an earlier one: the CLI
    may run many times in one process, e.g. under tests), at DEBUG with ``verbose`` else INFO.
    The records stop there: a root handler the embedding program set up does not print them twice."""
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if isinstance(h, StderrHandler):
            logger.removeHandler(h)
    logger.addHandler(StderrHandler())
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def reset() -> None:
    """Remove the CLI's handler again (the command is over; a library caller's logging is its own)."""
    logger = logging.getLogger(ROOT)
    for h in list(logger.handlers):
        if isinstance(h, StderrHandler):
            logger.removeHandler(h)
    logger.setLevel(logging.NOTSET)
    logger.propagate = True

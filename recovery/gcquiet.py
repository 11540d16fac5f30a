"""The cyclic garbage collector kept off the objects a long command holds from start to end.

A 1M-part rollback holds ~180,000 tracked objects that live to the end (SQLAlchemy, sqlglot,
pandas and matplotlib modules, schemas, the outcome), and every full collection walks all of
them: 7 full collections in one run (~0.3 s CPU, holding the GIL while every other thread waits),
and the interpreter's own collections at exit (~0.2 s of wall after the work is done, on the
critical path). ``gc.freeze`` moves the objects alive at that moment into the permanent
generation, which collections skip; new objects are collected as before, so cyclic garbage made
during the run is still freed (peak RSS unchanged), and garbage that exists at the freeze waits
for the unfreeze.
"""

from __future__ import annotations

import atexit
import gc
from collections.abc import Iterator
from contextlib import contextmanager

_exit_hook: list[bool] = []
_ours: list[bool] = []  # set while long_lived_frozen froze the process's objects


@contextmanager
def long_lived_frozen() -> Iterator[None]:
    """Collections skip the objects alive on entry (imported modules, the caller's state) until
    exit, where they are handed back (``gc.unfreeze``). Nothing is done when something else of
    the process already froze objects (e.g. a pre-forking server): its freeze is left as it is."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    _ours.append(True)
    try:
        yield
    finally:
        _ours.clear()
        gc.unfreeze()


def freeze_more() -> None:
    """Inside :func:`long_lived_frozen`: also freeze what was made since (e.g. modules imported
    midway, which then live to the end); elsewhere nothing."""
    if _ours:
        gc.freeze()


def freeze_at_exit() -> None:
    """At the interpreter's exit (after every other ``atexit`` hook registered later has run:
    atexit runs last-in first-out, so registered here first, this runs late), freeze every object
    alive: the exit's own collections then walk nothing. For processes that end after one command
    (the ``recovery`` console script, the bench's child). Objects in reference cycles alive at
    exit are then freed by the operating system with the process, not finalized (the run's files
    and connections are closed by the code that opened them, not by the collector)."""
    if not _exit_hook:
        _exit_hook.append(True)
        atexit.register(gc.freeze)

"""Progress bars and step timings for the long steps, on stderr.

A step (:func:`step`, or :func:`mark` from the rollback journal's start/done marks) shows a rich
progress bar — counts, rate, elapsed and remaining time — only while stderr is a terminal and
``--quiet`` is off; its duration is recorded either way and :func:`print_timings` prints them as
one line at the end of a command (unless quiet). Nothing here writes to stdout, so ``--json``
output stays the JSON alone. Code deep in a step reports counts with :func:`set_total` and
:func:`advance`, which do nothing when no step is running (the library used without the CLI).
The overhead is a dictionary lookup per call: counts are reported per table or phase, never per row."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_quiet = [False]
_timings: dict[str, float] = {}
_running: dict[
    str, tuple[float, Any, Any]
] = {}  # step -> (started, rich Progress or None, task id)
_order: list[str] = []  # running steps, innermost last
_inner: dict[str, float] = {}  # running step -> seconds of the steps that ran inside it
_shared: list[
    Any
] = []  # the one rich Progress while any step shows a bar (one live display per console)
log = logging.getLogger(__name__)


def set_quiet(quiet: bool) -> None:
    """``--quiet``: no bar and no timing line from now on in this process."""
    _quiet[0] = quiet


def is_quiet() -> bool:
    return _quiet[0]


def bars_shown() -> bool:
    """A bar is drawn only for a person: stderr is a terminal and ``--quiet`` is off."""
    if _quiet[0]:
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def reset() -> None:
    """Forget the recorded timings (a command starts afresh)."""
    _timings.clear()


def timings() -> dict[str, float]:
    """Seconds per finished step, in the order they finished."""
    return dict(_timings)


def _new_bar(name: str, total: int | None) -> tuple[Any, Any]:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    from recovery.report.render import console

    class RateColumn(ProgressColumn):
        """Units per second of the task (``-`` until there is a rate)."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-/s" if speed is None else f"{speed:,.1f}/s")

    if not _shared:
        bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console(stderr=True),
            transient=True,
            redirect_stdout=False,
        )
        bar.start()
        _shared.append(bar)
    from recovery.escape import term_markup

    return _shared[0], _shared[0].add_task(term_markup(name, 40), total=total)


def start(name: str, total: int | None = None) -> None:
    """Start timing step ``name`` (and its bar when shown). Starting a running step restarts it."""
    finish(name, record=False)
    bar, task = _new_bar(name, total) if bars_shown() else (None, None)
    _running[name] = (time.perf_counter(), bar, task)
    _order.append(name)
    log.debug("step %s: start", name)


def finish(name: str, record: bool = True) -> None:
    """Stop step ``name``: its bar goes, its duration is recorded. A step not running: nothing."""
    entry = _running.pop(name, None)
    if entry is None:
        return
    _order.remove(name)
    started, bar, task = entry
    if bar is not None:
        bar.remove_task(task)
        if not any(b is not None for _s, b, _t in _running.values()):
            bar.stop()
            _shared.clear()
    elapsed = time.perf_counter() - started
    inner = _inner.pop(name, 0.0)
    if record:  # a step's own time: one run inside it (the rollback's re-import inside its
        # restore) counts once, for itself, and the timing line's total stays the wall time
        _timings[name] = _timings.get(name, 0.0) + elapsed - inner
        if _order and _running[_order[-1]][0] <= started:  # nested, not merely overlapping
            _inner[_order[-1]] = _inner.get(_order[-1], 0.0) + elapsed
    log.debug(
        "step %s: %s after %.2f s",
        name,
        "done" if record else "stopped",
        time.perf_counter() - started,
    )


def stop_all() -> None:
    """Stop every bar without recording (a command failed: its error line follows)."""
    for name in list(_order):
        finish(name, record=False)


def mark(name: str, state: str) -> None:
    """The rollback journal's marks: ``start`` starts the step, any other state finishes it."""
    if state == "start":
        start(name)
    else:
        finish(name)


@contextmanager
def step(name: str, total: int | None = None) -> Iterator[None]:
    """Time the block as step ``name`` (a bar while it runs, when shown)."""
    start(name, total)
    try:
        yield
    finally:
        finish(name)


def current() -> str | None:
    """The innermost running step, if any."""
    return _order[-1] if _order else None


def _current() -> tuple[Any, Any] | None:
    if not _order:
        return None
    _started, bar, task = _running[_order[-1]]
    return None if bar is None else (bar, task)


def set_total(total: int) -> None:
    """The innermost running step will count to ``total``."""
    cur = _current()
    if cur is not None:
        cur[0].update(cur[1], total=total)


def advance(n: int = 1, what: str | None = None) -> None:
    """The innermost running step did ``n`` more units (``what``: the unit now being worked on)."""
    cur = _current()
    if cur is not None:
        bar, task = cur
        if what is not None:
            from recovery.escape import term_markup

            bar.update(
                task,
                advance=n,
                description=f"{term_markup(_order[-1], 40)}: {term_markup(what, 28)}",
            )
        else:
            bar.advance(task, n)


def timing_line() -> str | None:
    """``time: extract 1.2 s · reimport 0.4 s · total 1.6 s`` for the finished steps, or None."""
    if not _timings:
        return None
    parts = [f"{name} {seconds:.2f} s" for name, seconds in _timings.items()]
    return "time: " + " · ".join(parts) + f" · total {sum(_timings.values()):.2f} s"


def print_timings() -> None:
    """The timing line on stderr (plain text), unless ``--quiet``; bars still running stop first."""
    for name in list(_order):
        finish(name)
    line = timing_line()
    if line is not None and not _quiet[0]:
        print(line, file=sys.stderr, flush=True)

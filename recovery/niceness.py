"""Side work below the critical path: a thread's niceness (Linux schedules threads, so it is one
thread's alone), raised while the work has slack and given back when someone waits for it.

A run does work that nobody needs yet beside the step on its critical path: the staged proof of a
bare backup (needed at the swap), the report's preparation (needed at the report step). On two
cores that work competes with the step and with each other; a niced thread takes only the CPU the
others leave. Whoever then waits for it makes it the critical path, so :meth:`Niced.hurry` gives
every thread back the niceness it had (where the process may lower a niceness: root; elsewhere the
threads keep theirs, and the waiter's core is free for them anyway)."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager


def priority(tid: int) -> int:
    """Thread ``tid``'s niceness (0 where it cannot be told)."""
    if sys.platform != "linux":
        return 0
    try:
        return os.getpriority(os.PRIO_PROCESS, tid)
    except OSError:
        return 0


def set_priority(tid: int, nice: int) -> None:
    """Thread ``tid`` of this process (and it alone: Linux schedules threads) at niceness
    ``nice``; nothing elsewhere, nor where the process may not (a lower niceness needs root)."""
    if sys.platform != "linux":
        return
    try:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    except OSError:
        pass


class Niced:
    """Threads that run at ``nice`` (a number, or a function asked as each thread begins; never
    below the niceness a thread has: a user's `nice` is kept) until :meth:`hurry`; a thread that
    begins after it is not niced."""

    def __init__(self, nice: int | Callable[[], int]) -> None:
        self._nice = nice if callable(nice) else (lambda: nice)
        self._lock = threading.Lock()
        self._threads: dict[int, int] = {}  # thread running niced -> its niceness before
        self.hurried = False

    @contextmanager
    def thread(self) -> Iterator[None]:
        """The calling thread niced for the block, registered for :meth:`hurry`."""
        me = threading.get_native_id()
        with self._lock:
            self._threads[me] = before = priority(me)
            if not self.hurried:
                set_priority(me, max(before, self._nice()))
        try:
            yield
        finally:
            with self._lock:  # this thread ends: its id may be another's soon, never renice it
                self._threads.pop(me, None)

    def hurry(self) -> None:
        """Someone waits: the threads still niced get back the niceness they had."""
        with self._lock:
            self.hurried = True
            for tid, nice in self._threads.items():
                set_priority(tid, nice)

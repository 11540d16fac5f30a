"""A read-only pair connection in a child process, for statements that should run on another core.

Two threads of one process running SQLite statements at once do not get two cores' worth of work:
on the 1M sample world the two largest counting statements of ``recovery diff`` take 2.2 s side by
side on two threads against 1.2 s + 0.55 s alone (SQLite's process-wide allocator and statistics
mutexes are taken on every row), while two processes scale. :class:`ChildPair` is the second
process: a bare ``python -I`` running only :mod:`sqlite3` (no import of this package), the same
databases ATTACHed under the same names with the same read-only URIs as the parent's pair, and
``PRAGMA query_only``. The parent sends one statement at a time and reads back its first row; a
SQLite error in the child is raised in the parent as :class:`sqlite3.OperationalError` with
SQLite's message, so callers handle it as one from their own connection.

Only plain values (integers, reals, text, NULL) travel, as bound parameters and as whole-row
results: what the counting statements bind and return.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import tempfile
from typing import Any

_CHILD = r"""
import json, signal, sqlite3, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C; EOF on stdin ends this
conn = sqlite3.connect("file::memory:", uri=True)
def answer(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    msg = json.loads(line)
    try:
        if "attach" in msg:
            for alias, uri in msg["attach"]:
                conn.execute("ATTACH DATABASE ? AS \"" + alias.replace('"', '""') + "\"", (uri,))
            conn.execute("PRAGMA query_only = ON")
            answer({"row": None})
        else:
            answer({"row": conn.execute(msg["sql"], msg.get("params", ())).fetchone()})
    except sqlite3.Error as exc:
        answer({"error": str(exc)})
"""


class _Result:
    def __init__(self, row: tuple[Any, ...] | None):
        self._row = row

    def fetchone(self) -> tuple[Any, ...] | None:
        return self._row


class ChildPair:
    """``execute(sql).fetchone()`` in a child process over the same attached databases.

    ``attach`` lists ``(schema name, SQLite URI)`` in ATTACH order, e.g. ``("old", readonly_uri(backup))``.
    Close it (or use it as a context manager) to end the child."""

    def __init__(self, attach: list[tuple[str, str]], wait: bool = True):
        """Start the child and send it the ATTACHes. With ``wait=False`` this returns at once, the
        child starting and attaching while the caller works on (its first :meth:`execute` then
        reads the attach reply first, and raises an attach failure there)."""
        self._stderr = tempfile.TemporaryFile()  # read only to name why the child ended
        self._proc = subprocess.Popen(
            [sys.executable, "-I", "-c", _CHILD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            encoding="utf-8",
        )
        self._unread = 0
        try:
            self._send({"attach": [list(a) for a in attach]})
            if wait:
                self._reply()
        except BaseException:
            self.close()
            raise

    def _send(self, msg: dict[str, Any]) -> None:
        assert self._proc.stdin is not None
        self._unread += 1
        try:
            self._proc.stdin.write(json.dumps(msg) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # the child is gone: reading its reply says so

    def _reply(self) -> Any:
        assert self._proc.stdout is not None
        self._unread -= 1
        try:
            line = self._proc.stdout.readline()
        except (BrokenPipeError, OSError, ValueError):
            line = ""
        if not line:
            self._proc.wait()
            self._stderr.seek(0)
            last = (self._stderr.read().decode("utf-8", "replace").strip().splitlines() or [""])[-1]
            raise sqlite3.OperationalError(
                f"the helper process for a second core ended (exit {self._proc.returncode}) {last}".rstrip()
            )
        reply = json.loads(line)
        if "error" in reply:
            raise sqlite3.OperationalError(reply["error"])
        return reply["row"]

    def ready(self) -> ChildPair:
        """Wait for the attach reply of a child started with ``wait=False``; raises what the
        constructor would have raised (:class:`sqlite3.OperationalError`)."""
        while self._unread:
            self._reply()
        return self

    def _ask(self, msg: dict[str, Any]) -> Any:
        self.ready()
        self._send(msg)
        return self._reply()

    def execute(self, sql: str, params: tuple[Any, ...] | list[Any] = ()) -> _Result:
        """Run ``sql`` with ``params`` bound (plain values: they travel as JSON) in the child."""
        row = self._ask({"sql": sql, "params": list(params)})
        return _Result(None if row is None else tuple(row))

    def kill(self) -> None:
        """End the child now, a running statement with it (any thread may call this): the
        :meth:`execute` waiting for its reply raises :class:`sqlite3.OperationalError`."""
        if self._proc.poll() is None:
            self._proc.kill()

    def close(self) -> None:
        if self._proc.poll() is None:
            try:
                if self._proc.stdin is not None:
                    self._proc.stdin.close()
                self._proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self._proc.kill()
                self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()

    def __enter__(self) -> ChildPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

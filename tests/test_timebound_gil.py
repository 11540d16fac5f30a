"""The statement time bound never makes a bounded statement wait for the GIL.

The rollback re-imports into the staged file on the main thread while the report's preparation
(pandas, CSV writing: pure Python) runs on another: a bound that called back into Python from
inside the statement (a progress handler every few thousand SQLite instructions) made every such
call wait for the other thread to give the GIL up — up to the interpreter's switch interval each
time. The bound is the watchdog thread alone, so a bounded statement runs as fast beside a busy
Python thread as an unbounded one, and it is still interrupted once over the limit.
"""

from __future__ import annotations

import sqlite3
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from recovery.engine.timebound import statement_time_limit
from recovery.errors import RecoveryError

ROWS = 500_000
COUNT = (
    "SELECT count(*) FROM (WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r "
    f"WHERE x < {ROWS}) SELECT x FROM r)"
)
"""About 8.5M SQLite instructions: 425 calls of a progress handler every 20k instructions, each
waiting for the GIL beside a busy thread."""


@pytest.fixture
def busy_python() -> Iterator[None]:
    """Another thread that always wants the GIL, with a 20 ms switch interval: a thread that gave
    the GIL up waits up to 20 ms to get it back."""
    before = sys.getswitchinterval()
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    sys.setswitchinterval(0.02)
    t = threading.Thread(target=spin, daemon=True)
    t.start()
    try:
        yield
    finally:
        stop.set()
        t.join()
        sys.setswitchinterval(before)


def _python_calls_during(conn: sqlite3.Connection, query: str) -> int:
    """How many Python functions this thread entered while ``query`` ran (a callback from inside
    SQLite is one: each had to take the GIL back first)."""
    calls = 0

    def profile(frame: object, event: str, arg: object) -> None:
        nonlocal calls
        if event == "call":
            calls += 1

    sys.setprofile(profile)
    try:
        assert conn.execute(query).fetchone() is not None
    finally:
        sys.setprofile(None)
    return calls


def test_a_bounded_statement_does_not_wait_for_a_busy_python_thread(busy_python: None) -> None:
    """Bounded, a statement calls back into Python (so waits for the GIL) a fixed number of times
    however long it runs: with a progress handler every 20k instructions a statement ten times as
    long made about ten times as many calls (425 for ``COUNT``), each a wait for the busy thread."""
    conn = sqlite3.connect(":memory:")
    longer = COUNT.replace(str(ROWS), str(ROWS * 10))
    with statement_time_limit(conn, 60.0):
        short_calls = _python_calls_during(conn, COUNT)
        long_calls = _python_calls_during(conn, longer)
    assert long_calls == short_calls <= 2, (short_calls, long_calls)
    conn.close()


def test_the_watchdog_alone_still_interrupts_beside_a_busy_python_thread(
    busy_python: None,
) -> None:
    conn = sqlite3.connect(":memory:")
    endless = (
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
    )
    t0 = time.monotonic()
    with pytest.raises(RecoveryError, match=r"statement ran longer than 0\.3 s") as err:
        with statement_time_limit(conn, 0.3):
            conn.execute(endless).fetchone()
    assert err.value.exit_code == 3 and time.monotonic() - t0 < 5
    assert conn.execute("SELECT 2").fetchone() == (2,)
    conn.close()


def test_only_an_interrupted_statement_is_reported_as_over_the_bound() -> None:
    """A statement the watchdog interrupted is "ran longer" (exit 3) even when the block's code
    turned SQLite's error into another one; an error raised after a pause longer than the bound
    between two statements is itself, not a timeout."""
    conn = sqlite3.connect(":memory:")
    endless = (
        "WITH RECURSIVE r(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM r) SELECT count(*) FROM r"
    )
    with pytest.raises(RecoveryError, match="ran longer") as err:
        with statement_time_limit(conn, 0.2):
            try:
                conn.execute(endless).fetchone()
            except sqlite3.OperationalError as exc:
                raise ValueError("wrapped") from exc
    assert err.value.exit_code == 3
    with pytest.raises(KeyError):
        with statement_time_limit(conn, 0.1):
            conn.execute("SELECT 1").fetchall()
            time.sleep(0.3)  # the watchdog's interrupt() finds no statement running
            raise KeyError("not a timeout")
    conn.close()

"""``rollback_child.py`` with the steps after the re-import timed piece by piece.

    python bench/tail_child.py DB BACKUP RUN_DIR ALEMBIC_INI UPLOADS

Same run and output as ``rollback_child.py``, plus ``tail``: wall seconds of the pipeline's
functions between the re-import's return and the end of the run (each call's start and length),
and ``tail_s``: from the re-import's return to the run's end. Wraps by name whatever of
``_save_outcome``, ``_load_outcome``, ``_relink``, ``_late_check``, ``write_run_files``,
``db_fingerprint``, ``verify_written`` the pipeline module has.
"""

from __future__ import annotations

import functools
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import rollback_child

from recovery import pipeline

T0 = rollback_child.T0
calls: list[dict] = []


def timed(name: str, fn):  # type: ignore[no-untyped-def]
    @functools.wraps(fn)
    def wrapper(*a, **k):  # type: ignore[no-untyped-def]
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            calls.append(
                {
                    "fn": name,
                    "at": round(t - T0, 3),
                    "s": round(time.perf_counter() - t, 3),
                }
            )

    return wrapper


for name in (
    "_reimport_into",
    "_save_outcome",
    "_load_outcome",
    "_relink",
    "_late_check",
    "db_fingerprint",
    "verify_written",
    "verify_file",
):
    if hasattr(pipeline, name):
        setattr(pipeline, name, timed(name, getattr(pipeline, name)))
import recovery.report as report_pkg  # noqa: E402

report_pkg.write_run_files = timed("write_run_files", report_pkg.write_run_files)


def main() -> None:
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rollback_child.main()
    detail = json.loads(buf.getvalue())
    end = detail["total_s"]
    back = [c for c in calls if c["fn"] == "_reimport_into"]
    since = back[-1]["at"] + back[-1]["s"] if back else None
    detail["tail"] = [c for c in calls if c["fn"] != "_reimport_into"]
    detail["tail_s"] = round(end - since, 3) if since is not None else None
    print(json.dumps(detail, indent=1))


if __name__ == "__main__":
    main()

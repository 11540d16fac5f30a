"""One ``recovery.pipeline.rollback`` with a timestamp on every journal mark and progress message.

    python bench/rollback_child.py DB BACKUP RUN_DIR ALEMBIC_INI UPLOADS

Same arguments as ``recovery rollback DB --backup BACKUP --out RUN_DIR --alembic-ini … --uploads …
--yes``. The journal records steps at 1 s resolution; here ``Journal.mark`` is wrapped so each
``step:start`` / ``step:done`` gets a ``perf_counter`` stamp (and this process's peak RSS at that
moment). Prints one JSON object: per-step seconds, marks, progress messages, total.
"""

from __future__ import annotations

import json
import resource
import sys
import time

T0 = time.perf_counter()

from recovery import pipeline  # noqa: E402
from recovery.gcquiet import freeze_at_exit  # noqa: E402


def rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main() -> None:
    db, backup, run_dir, ini, uploads = sys.argv[1:6]
    freeze_at_exit()  # as the `recovery` command does (recovery.cli.main)
    marks: list[dict] = []
    messages: list[dict] = []
    orig = pipeline.Journal.mark

    def mark(self, step, state, **info):  # type: ignore[no-untyped-def]
        marks.append(
            {
                "step": step,
                "state": state,
                "t": round(time.perf_counter() - T0, 3),
                "max_rss_mb": rss_mb(),
            }
        )
        return orig(self, step, state, **info)

    pipeline.Journal.mark = mark  # type: ignore[method-assign]
    # how often the extract's connection did not see a list a worker committed (then the extract
    # lists that table itself; seen on the 10M world in round 13, its cause removed in round 14:
    # recovery.compare.changes.read_schema_of)
    from recovery.bundle import prelist

    unseen: list[str] = []
    seen = prelist.Prelists._seen

    def counted(self, conn, i, made):  # type: ignore[no-untyped-def]
        ok = seen(self, conn, i, made)
        if not ok:
            unseen.append(f"{made.db}.{made.name}")
        return ok

    prelist.Prelists._seen = counted  # type: ignore[method-assign]
    t_import = time.perf_counter() - T0
    res = pipeline.rollback(
        db,
        backup,
        run_dir,
        uploads=uploads,
        alembic_ini=ini,
        confirm=lambda _plan: True,
        progress=lambda m: messages.append({"t": round(time.perf_counter() - T0, 3), "message": m}),
    )
    total = time.perf_counter() - T0
    steps: dict[str, float] = {}
    starts: dict[str, float] = {}
    for m in marks:
        if m["state"] == "start":
            starts[m["step"]] = m["t"]
        elif m["state"] == "done" and m["step"] in starts:
            steps[m["step"]] = round(m["t"] - starts[m["step"]], 3)
    spans = {m["step"]: m["t"] for m in marks if m["state"] == "done"}
    if "reimport" in steps and "restore" in steps and spans["reimport"] < spans["restore"]:
        steps["restore"] = round(steps["restore"] - steps["reimport"], 3)  # re-import nested in it
    # time between marks that belongs to no step (opening the bundle, confirm, loading the outcome):
    # the wall the steps' spans cover, each instant once (the safety copy runs beside the extract)
    accounted, reach = 0.0, float("-inf")
    for start, done in sorted(
        (starts[m["step"]], m["t"]) for m in marks if m["state"] == "done" and m["step"] in starts
    ):
        accounted += max(0.0, done - max(start, reach))
        reach = max(reach, done)
    print(
        json.dumps(
            {
                "import_s": round(t_import, 3),
                "total_s": round(total, 3),
                "steps_s": steps,
                "between_steps_s": round(total - t_import - accounted, 3),
                "exit_code": int(res.exit_code),
                "lists_unseen": unseen,
                "marks": marks,
                "progress": messages,
                "max_rss_mb": rss_mb(),
                "summary": _summary(res),
            },
            indent=1,
        )
    )


def _summary(res) -> dict:  # type: ignore[no-untyped-def]
    o = res.outcome
    if o is None:
        return {}
    return {
        "conflicts": len(o.conflicts),
        "lost": len(o.lost or []),
        "remaps": len(o.remaps),
        "tables": {
            n: {"inserted": t.inserted, "updated": t.updated, "skipped": t.skipped}
            for n, t in sorted(o.tables.items())
        },
    }


if __name__ == "__main__":
    main()

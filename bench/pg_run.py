"""PostgreSQL benchmarks for ``recovery`` (issue 19): diff and rollback of the sample world on a
real server, each against its plain-SQL floor measured in the same run (``bench/pg_floor.py``).

    python bench/pg_run.py [--parts 1000000] [--repeat 3] [--out bench/out] [--server URL]
                           [--world DIR]

* Server: ``--server postgresql://postgres@host:port/postgres`` (a superuser), else a throwaway
  cluster started like the tests' (``tests/pgcluster.py``: initdb in a temporary folder, loopback,
  fsync off) and stopped at the end.
* World: ``--world DIR`` reuses a world built by ``recovery sample DIR --url …`` on that server
  (its ``world.json`` names the live database); else ``recovery sample OUT/pgworld-N --url
  SERVER/gestima_pg_N`` builds it (timed). The live database is never rolled back itself: every
  rollback runs on ``CREATE DATABASE … TEMPLATE`` of it.
* diff: ``recovery diff DUMP LIVE --json`` (the tool restores the dump into a scratch database
  itself), ``recovery diff BACKUP_URL LIVE --json`` (the backup already restored), and the floor
  (postgres_fdw from the live database to the restored backup: keyed anti-joins both ways and one
  keyed join per table), interleaved, ``--repeat`` times; medians.
* rollback: per repeat a fresh copy of the live database and the uploads; the floor (pg_restore
  of the dump into a new database + every column of every row of both databases read once) then
  ``recovery rollback COPY --backup DUMP --alembic-ini sample_dbs/app/alembic.ini --uploads …
  --yes`` (the SQLite rollback's arguments); medians.
* Peak RSS: ``ru_maxrss`` from ``os.wait4`` of each child — the larger of the child and its
  waited-for children (pg_restore, pg_dump); the server's own backends are not included.
* Load: ``/proc/loadavg`` before and after each measurement; results appended to
  ``OUT/pg_results.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import make_url

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

from run import machine, timed  # noqa: E402

RECOVERY = [sys.executable, "-m", "recovery"]
ALEMBIC_INI = ROOT / "sample_dbs" / "app" / "alembic.ini"
"""As for the SQLite rollback (``bench/run.py``): the upgrade replayed, the migrations' rules."""


def load() -> str:
    return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()


def url_of(server: str, db: str) -> str:
    return make_url(server).set(database=db).render_as_string(hide_password=False)


def admin(server: str) -> psycopg.Connection[Any]:
    return psycopg.connect(url_of(server, "postgres"), autocommit=True)


def drop_like(server: str, prefix: str) -> None:
    with admin(server) as a:
        for (db,) in a.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s", (prefix + "%",)
        ).fetchall():
            a.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))


def med(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(float(r[key]) for r in runs), 3)


def build_world(server: str, out: Path, parts: int) -> tuple[Path, dict[str, Any] | None]:
    w = out / f"pgworld-{parts}"
    if (w / "world.json").exists():
        return w, None
    shutil.rmtree(w, ignore_errors=True)
    before = load()
    r = timed(
        [
            *RECOVERY,
            "sample",
            str(w),
            "--url",
            url_of(server, f"gestima_pg_{parts}"),
            "--parts",
            str(parts),
            "--seed",
            "42",
            "--quiet",
        ],
        ok_codes=(0,),
    )
    return w, {"wall_s": r["wall_s"], "rss_mb": r["rss_mb"], "load_before": before,
               "load_after": load()}  # fmt: skip


def bench_diff(server: str, w: Path, dump: Path, live: str, backup_url: str, repeat: int) -> dict[str, Any]:  # fmt: skip
    tool_dump, tool_url, floor = [], [], []
    for _ in range(repeat):
        f = timed(
            [sys.executable, str(HERE / "pg_floor.py"), "diff", live, backup_url], ok_codes=(0,)
        )
        floor.append({**json.loads(f["stdout"]), "wall_s": f["wall_s"], "load": load()})
        d = timed([*RECOVERY, "diff", str(dump), live, "--json"])
        tool_dump.append({"wall_s": d["wall_s"], "rss_mb": d["rss_mb"], "load": load()})
        u = timed([*RECOVERY, "diff", backup_url, live, "--json"])
        tool_url.append({"wall_s": u["wall_s"], "rss_mb": u["rss_mb"], "load": load()})
    fl = med(floor, "wall_s")
    return {
        "floor_s": fl,
        "floor_runs": floor,
        "diff_dump_s": med(tool_dump, "wall_s"),
        "diff_dump_rss_mb": max(r["rss_mb"] for r in tool_dump),
        "diff_url_s": med(tool_url, "wall_s"),
        "diff_url_rss_mb": max(r["rss_mb"] for r in tool_url),
        "ratio_url": round(med(tool_url, "wall_s") / fl, 2),
        "runs_dump": tool_dump,
        "runs_url": tool_url,
    }


def bench_rollback(server: str, w: Path, dump: Path, live_db: str, out: Path, repeat: int, pg_restore: str) -> dict[str, Any]:  # fmt: skip
    runs, floors = [], []
    for i in range(repeat):
        name = f"bench_rb_{uuid.uuid4().hex[:8]}"
        with admin(server) as a:
            a.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(live_db)
                )
            )
        copy = url_of(server, name)
        run_dir = out / f"pgrun-{i}"
        up = out / f"pgrun-{i}-uploads"
        shutil.rmtree(run_dir, ignore_errors=True)
        shutil.rmtree(up, ignore_errors=True)
        shutil.copytree(w / "uploads", up)
        try:
            f = timed(
                [sys.executable, str(HERE / "pg_floor.py"), "rollback", server, str(dump), copy],
                ok_codes=(0,),
            )
            floors.append({**json.loads(f["stdout"]), "wall_s": f["wall_s"], "load": load()})
            before = load()
            r = timed([*RECOVERY, "rollback", copy, "--backup", str(dump), "--out", str(run_dir),
                       "--alembic-ini", str(ALEMBIC_INI), "--uploads", str(up), "--yes"])  # fmt: skip
            timings = [ln for ln in r["stderr"].splitlines() if ln.startswith("time:")]
            runs.append({"wall_s": r["wall_s"], "rss_mb": r["rss_mb"], "rc": r["rc"],
                         "cpu_s": round(r["user_s"] + r["sys_s"], 2), "steps": timings[-1:] ,
                         "load_before": before, "load_after": load()})  # fmt: skip
            with open(
                out / "pg_partial.jsonl", "a"
            ) as fp:  # a run cut short keeps what it measured
                fp.write(json.dumps({"rollback": runs[-1], "floor": floors[-1]}) + "\n")
        finally:
            drop_like(server, name)
            shutil.rmtree(up, ignore_errors=True)
    fl = med(floors, "wall_s")
    return {
        "floor_s": fl,
        "floor_runs": floors,
        "rollback_s": med(runs, "wall_s"),
        "rollback_rss_mb": max(r["rss_mb"] for r in runs),
        "ratio": round(med(runs, "wall_s") / fl, 2),
        "runs": runs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument(
        "--server", help="postgresql://superuser@host:port/postgres (default: a throwaway cluster)"
    )
    ap.add_argument(
        "--world", type=Path, help="a world built by `recovery sample --url` on --server"
    )
    ap.add_argument("--only", default="diff,rollback")
    a = ap.parse_args()
    from tests import pgcluster

    a.out.mkdir(parents=True, exist_ok=True)
    cluster = None
    server = a.server
    if server is None:
        cluster = pgcluster.start()
        server = cluster.url
    pg_restore = pgcluster.find_bin("pg_restore") or "pg_restore"
    os.environ["PG_RESTORE"] = pg_restore
    os.environ.setdefault("PATH", "")
    os.environ["PATH"] += os.pathsep + str(Path(pg_restore).parent)
    result: dict[str, Any] = {"when": datetime.now().isoformat(timespec="seconds"),
                              "machine": machine(), "engine": "postgresql", "parts": a.parts}  # fmt: skip
    try:
        with admin(server) as c:
            result["server_version"] = c.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        w = a.world
        if w is None:
            w, built = build_world(server, a.out, a.parts)
            result["build"] = built
        facts = json.loads((w / "world.json").read_text())
        live = url_of(server, str(make_url(facts["live"]).database))
        live_db = str(make_url(live).database)
        dump = w / facts["backup"]
        backup_db = f"{live_db}_bench_backup"
        if "diff" in a.only:  # the backup restored once, for `diff BACKUP_URL` and the floor
            drop_like(server, backup_db)
            with admin(server) as c:
                c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(backup_db)))
            t0 = time.perf_counter()
            subprocess.run([pg_restore, "--no-owner", "--exit-on-error", "-d", url_of(server, backup_db), str(dump)],
                           check=True, capture_output=True)  # fmt: skip
            result["backup_restore_s"] = round(time.perf_counter() - t0, 3)
            backup_url = url_of(server, backup_db)
        if "diff" in a.only:
            result["diff"] = bench_diff(server, w, dump, live, backup_url, a.repeat)
            print(
                json.dumps(
                    {
                        k: v
                        for k, v in result["diff"].items()
                        if not k.startswith(("runs", "floor_runs"))
                    }
                )
            )
        if "rollback" in a.only:
            result["rollback"] = bench_rollback(
                server, w, dump, live_db, a.out, a.repeat, pg_restore
            )
            print(
                json.dumps(
                    {
                        k: v
                        for k, v in result["rollback"].items()
                        if not k.startswith(("runs", "floor_runs"))
                    }
                )
            )
        drop_like(server, backup_db)
    finally:
        result["load_end"] = load()
        with open(a.out / "pg_results.jsonl", "a") as fp:
            fp.write(json.dumps(result) + "\n")
        if cluster is not None:
            cluster.stop()
    print(json.dumps(result, indent=1)[:4000])


if __name__ == "__main__":
    main()

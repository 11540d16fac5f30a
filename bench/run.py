"""Benchmarks for ``recovery`` on a generated Gestima world (see bench/README.md).

    python bench/run.py [--parts 1000000] [--out bench/out] [--repeat 3] [--only gen,diff,extract,rollback]

Every measured command runs as its own child process; wall time is ``perf_counter`` around it and
peak RSS is that child's own ``ru_maxrss`` (``os.wait4``), so one step's peak never hides
another's. The world is cached in ``OUT/world-N`` (reused when its ``world.json`` exists); results
are appended as one JSON object per run to ``OUT/results.jsonl`` and printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ALEMBIC_INI = ROOT / "sample_dbs" / "app" / "alembic.ini"
BACKUP = "gestima.db.bak.20261120_140000"
LIVE = "gestima.db"


def timed(cmd: list[str], ok_codes: tuple[int, ...] = (0, 1)) -> dict:
    """Run ``cmd``: wall seconds, the child's own peak RSS (``os.wait4``), exit code, output."""
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # read both pipes without deadlock, then reap with wait4 to get this child's rusage
    import threading

    bufs: dict[str, bytes] = {}

    def drain(name: str, stream) -> None:  # type: ignore[no-untyped-def]
        bufs[name] = stream.read()

    th = [
        threading.Thread(target=drain, args=(n, s))
        for n, s in (("out", p.stdout), ("err", p.stderr))
    ]
    for t in th:
        t.start()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    for t in th:
        t.join()
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode not in ok_codes:
        raise SystemExit(
            f"{' '.join(cmd[:4])}… exited {p.returncode}\n{bufs['err'].decode()[-3000:]}"
        )
    return {
        "wall_s": round(wall, 3),
        "rss_mb": round(ru.ru_maxrss / 1024, 1),
        "rc": p.returncode,
        "user_s": round(ru.ru_utime, 2),
        "sys_s": round(ru.ru_stime, 2),
        "stdout": bufs["out"].decode(),
        "stderr": bufs["err"].decode(),
    }


def median_of(runs: list[dict], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 3)


def compile_package() -> str:
    """Compile the ``recovery`` package the measured commands import (this checkout, or the one
    ``PYTHONPATH`` names) and the sample app to ``__pycache__`` before anything is timed.

    An installed copy has its bytecode (pip compiles at install; an editable copy caches it on
    first import), but where ``PYTHONDONTWRITEBYTECODE`` is set, as on this workplace's machines,
    every timed process and each of its children would compile the modules it imports again:
    0.1-0.2 s of each command that no user's run pays. Returns where the package was compiled."""
    import compileall
    import importlib.util

    spec = importlib.util.find_spec("recovery")
    folders = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for folder in [*folders, ALEMBIC_INI.parent]:
        compileall.compile_dir(folder, quiet=2)
    return ", ".join(str(f) for f in folders) or "not found"


def machine() -> dict:
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = next(
        (
            ln.split()[1]
            for ln in Path("/proc/meminfo").read_text().splitlines()
            if ln.startswith("MemTotal")
        ),
        "0",
    )
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "platform": platform.platform(),
        "date": datetime.now().isoformat(timespec="seconds"),
        "commit": subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip(),
    }


def warm(*paths: Path) -> None:
    """Read the files once so every timed run starts with the same (warm) page cache."""
    for p in paths:
        if p.is_file():
            with p.open("rb") as fh:
                while fh.read(1 << 24):
                    pass


def world(out: Path, parts: int) -> tuple[Path, dict | None]:
    w = out / f"world-{parts}"
    if (w / "world.json").is_file() and (w / LIVE).is_file():
        return w, None
    code = (
        f"from pathlib import Path; from recovery.sample import generate; "
        f"generate(Path({str(w)!r}), parts={parts}, seed=42, progress=True)"
    )
    r = timed([sys.executable, "-c", code], ok_codes=(0,))
    gen = {
        "wall_s": r["wall_s"],
        "rss_mb": r["rss_mb"],
        "log": r["stderr"].strip().splitlines()[-6:],
    }
    return w, gen


def world_facts(w: Path) -> dict:
    facts: dict = {"files_mb": {}}
    for name in (BACKUP, LIVE, LIVE + "-wal"):
        p = w / name
        if p.exists():
            facts["files_mb"][name] = round(p.stat().st_size / 2**20, 1)
    uri = lambda p: f"file:{p}?mode=ro"  # noqa: E731
    for role, name in (("backup", BACKUP), ("live", LIVE)):
        c = sqlite3.connect(uri(w / name), uri=True)
        tables = [
            r[0]
            for r in c.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")
        ]
        facts[role] = {t: c.execute(f'SELECT count(*) FROM "{t}"').fetchone()[0] for t in tables}
        c.close()
    return facts


def bench_diff(w: Path, repeat: int, naive: bool = True) -> dict:
    b, lv = w / BACKUP, w / LIVE
    warm(b, lv, w / (LIVE + "-wal"))
    floor_runs, naive_runs, diff_runs = [], [], []
    floor_cmd = [sys.executable, str(HERE / "floor.py"), str(b), str(lv)]
    diff_cmd = [sys.executable, "-m", "recovery.cli", "diff", str(b), str(lv), "--json"]
    if shutil.which("recovery"):
        diff_cmd = [shutil.which("recovery"), "diff", str(b), str(lv), "--json"]  # type: ignore[list-item]
    for _ in range(repeat):  # interleaved, so drift hits both alike
        f = timed(floor_cmd)
        f["sql_s"] = json.loads(f["stdout"])["seconds"]
        floor_runs.append(f)
        if naive:
            naive_runs.append(timed([*floor_cmd, "--naive"]))
        diff_runs.append(timed(diff_cmd))
    imp = [
        timed([sys.executable, "-c", "import recovery.cli, recovery.compare.diff"])
        for _ in range(repeat)
    ]
    floor_counts = json.loads(floor_runs[-1]["stdout"])["tables"]
    tool = json.loads(diff_runs[-1]["stdout"])
    tool_counts = {
        t: {k: v[k] for k in ("inserted", "updated", "deleted")} for t, v in tool["tables"].items()
    }
    d, fl = median_of(diff_runs, "wall_s"), median_of(floor_runs, "wall_s")
    return {
        "diff_wall_s": [r["wall_s"] for r in diff_runs],
        "diff_rss_mb": [r["rss_mb"] for r in diff_runs],
        "floor_wall_s": [r["wall_s"] for r in floor_runs],
        "floor_sql_s": [r["sql_s"] for r in floor_runs],
        "floor_rss_mb": [r["rss_mb"] for r in floor_runs],
        "naive_floor_wall_s": [r["wall_s"] for r in naive_runs],
        "diff_cpu_s": [round(r["user_s"] + r["sys_s"], 2) for r in diff_runs],
        "floor_cpu_s": [round(r["user_s"] + r["sys_s"], 2) for r in floor_runs],
        "import_s": [r["wall_s"] for r in imp],
        "median": {
            "diff_s": d,
            "floor_s": fl,
            "ratio": round(d / fl, 2),
            "naive_floor_s": median_of(naive_runs, "wall_s") if naive_runs else None,
            "diff_rss_mb": median_of(diff_runs, "rss_mb"),
            "floor_sql_s": median_of(floor_runs, "sql_s"),
            "import_s": median_of(imp, "wall_s"),
            "diff_cpu_s": round(statistics.median(r["user_s"] + r["sys_s"] for r in diff_runs), 2),
            "floor_cpu_s": round(
                statistics.median(r["user_s"] + r["sys_s"] for r in floor_runs), 2
            ),
        },
        "tool_counts": tool_counts,
        "floor_counts": {
            t: ({k: v[k] for k in ("inserted", "updated", "deleted")} if isinstance(v, dict) else v)
            for t, v in floor_counts.items()
        },
    }


def bench_extract(w: Path, out: Path, repeat: int) -> dict:
    b, lv = w / BACKUP, w / LIVE
    warm(b, lv, w / (LIVE + "-wal"))
    runs = []
    exe = shutil.which("recovery")
    for i in range(repeat):
        dest = out / "extract" / f"bundle-{i}"
        shutil.rmtree(dest, ignore_errors=True)
        dest.parent.mkdir(parents=True, exist_ok=True)
        prog = [exe] if exe else [sys.executable, "-m", "recovery"]
        cmd = [
            *prog,
            "extract",
            str(b),
            str(lv),
            "--out",
            str(dest),
            "--alembic-ini",
            str(ALEMBIC_INI),
            "--uploads",
            str(w / "uploads"),
            "--json",
        ]
        runs.append(timed(cmd))
    manifest = json.loads((out / "extract" / f"bundle-{repeat - 1}" / "manifest.json").read_text())
    counts = manifest["counts"]
    rows = sum(
        c.get("inserted", 0) + c.get("updated", 0) + c.get("deleted", 0) + c.get("closure", 0)
        for c in counts.values()
    )
    for i in range(repeat - 1):  # keep one bundle for inspection
        shutil.rmtree(out / "extract" / f"bundle-{i}", ignore_errors=True)
    return {
        "wall_s": [r["wall_s"] for r in runs],
        "rss_mb": [r["rss_mb"] for r in runs],
        "cpu_s": [round(r["user_s"] + r["sys_s"], 2) for r in runs],
        "median": {"wall_s": median_of(runs, "wall_s"), "rss_mb": median_of(runs, "rss_mb")},
        "changed_rows": rows,
        "lost_cells": sum(c.get("lost", 0) for c in counts.values()),
        "counts": counts,
    }


class Trash:
    """Used world copies, deleted when the whole benchmark run ends rather than between runs.

    On ext4 a file or folder created soon after many inodes were freed pays for skipping each of
    them (``find_inode_bit`` → ``recently_deleted``: 60 s, longer while the inode table's block is
    dirty). Deleting a used 1M world copy (~15,000 inodes) just before the next run's copy and
    rollback (which creates ~6,000: the upload copies and their folders) measured that scan, not
    the tool: the copies' CPU went 0.35 s on a first run to 1.3–1.7 s on runs that followed one
    another. A used copy is renamed aside (no inode freed) and removed at the end; when the disk
    could not hold one more copy beside it, it is removed at once, as before, and the result says
    so (``deleted_between_runs``)."""

    def __init__(self, out: Path) -> None:
        self.folder = out / "trash"
        self.deleted_between_runs = 0

    def discard(self, dest: Path) -> None:
        need = 2 * sum(f.stat().st_size for f in dest.rglob("*") if f.is_file())
        if shutil.disk_usage(dest).free < need:
            shutil.rmtree(dest, ignore_errors=True)
            self.deleted_between_runs += 1
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        os.replace(dest, self.folder / f"{dest.name}-{time.monotonic_ns()}")

    def empty(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


TRASH: Trash | None = None
SETTLE = True  # --no-settle: leave the fresh copy's writes in the page cache (rounds 1-13)


def settle() -> None:
    """Write back every dirty page before a timed destructive run (``sync(2)``), so that the run
    does not pay for the benchmark's own fresh copy of the world (~800 MB at 1M parts, GBs at 10M,
    written seconds before). The rollback makes its bundle durable with one ``syncfs(2)``, which
    waits for every dirty page of the filesystem: at 1M it took 1.48-1.70 s in runs where it met
    the fresh copy still dirty (~900 MB), 0.28-0.46 s otherwise (round 14). An installation's
    backup and live files were not all written seconds before the rollback; a run's own writes
    (the safety copy, the staged backup, the bundle) are still timed."""
    if SETTLE:
        os.sync()


def fresh_copy(w: Path, dest: Path, snap: Path | None = None) -> None:
    """A fresh world for a destructive run. The world's files are closed (nobody has them open), so
    copying the main file together with its -wal is consistent; -shm is rebuilt by SQLite. With
    ``snap`` (:func:`snapshot_of`), the backup is that snapshot's file with its manifest."""
    if TRASH is not None and dest.exists():
        TRASH.discard(dest)  # (an earlier benchmark's last copy: not deleted just before a run)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for name in (BACKUP, LIVE, LIVE + "-wal"):  # in this order: the backup is the older file
        src = snap if snap is not None and name == BACKUP else w
        if (src / name).exists():
            shutil.copyfile(src / name, dest / name)
    if snap is not None:
        shutil.copyfile(snap / (BACKUP + ".manifest.json"), dest / (BACKUP + ".manifest.json"))
    shutil.copytree(w / "uploads", dest / "uploads")
    settle()


def snapshot_of(w: Path, out: Path, parts: int) -> Path:
    """The world's backup as ``recovery snapshot`` would have taken it at the deploy (cached in
    ``OUT/snapshot-N``): the real :func:`recovery.capture.snapshot.snapshot` run on a copy of the
    backup with the deploy time as its clock, without ``--uploads`` (the manifest lists no files,
    so the relink reads the backup's files table, as with a bare backup)."""
    snap = out / f"snapshot-{parts}"
    if (snap / (BACKUP + ".manifest.json")).is_file():
        return snap
    work = out / f"snapshot-{parts}.tmp"
    shutil.rmtree(work, ignore_errors=True)
    (work / "src").mkdir(parents=True)
    shutil.copyfile(w / BACKUP, work / "src" / LIVE)
    code = (
        "import sys; from datetime import datetime; from pathlib import Path; "
        "from recovery.capture.snapshot import snapshot; "
        "snapshot(Path(sys.argv[1]), Path(sys.argv[2]), now=datetime(2026, 11, 20, 14, 0, 0))"
    )
    (work / "out").mkdir()
    subprocess.run(
        [sys.executable, "-c", code, str(work / "src" / LIVE), str(work / "out")], check=True
    )
    shutil.rmtree(snap, ignore_errors=True)
    os.replace(work / "out", snap)
    shutil.rmtree(work, ignore_errors=True)
    return snap


def rollback_floor(dest: Path) -> dict:
    """The copy-and-read floor (``rollback_floor.py``) on the same fresh copy, just before the run."""
    r = timed(
        [
            sys.executable,
            str(HERE / "rollback_floor.py"),
            str(dest / BACKUP),
            str(dest / LIVE),
            str(dest / "floor-scratch"),
        ],
        ok_codes=(0,),
    )
    return {
        **json.loads(r["stdout"]),
        "wall_s": r["wall_s"],
        "cpu_s": round(r["user_s"] + r["sys_s"], 2),
    }


def bench_rollback(w: Path, out: Path, repeat: int, snap: Path | None = None) -> dict:
    runs = []
    floors = []
    for i in range(repeat):
        dest = out / "rollback" / f"world-{i}"
        fresh_copy(w, dest, snap)
        warm(dest / BACKUP, dest / LIVE, dest / (LIVE + "-wal"))
        floors.append(rollback_floor(dest))
        cmd = [
            sys.executable,
            str(HERE / "rollback_child.py"),
            str(dest / LIVE),
            str(dest / BACKUP),
            str(dest / "run"),
            str(ALEMBIC_INI),
            str(dest / "uploads"),
        ]
        r = timed(cmd)
        try:
            detail = json.loads(r["stdout"])
        except ValueError:  # the rollback raised: exit 1 with its traceback on stderr
            raise SystemExit(
                f"rollback_child.py gave no result (exit {r['rc']}):\n{r['stderr'][-3000:]}"
            ) from None
        runs.append({**r, "detail": detail})
        if i < repeat - 1:
            if TRASH is not None:
                TRASH.discard(dest)
            else:
                shutil.rmtree(dest, ignore_errors=True)
    steps = sorted(
        {s for r in runs for s in r["detail"]["steps_s"]},
        key=lambda s: [
            "probe",
            "safety",
            "extract",
            "restore",
            "reimport",
            "relink",
            "verify",
            "report",
        ].index(s),
    )
    fl = median_of(floors, "wall_s")
    return {
        "wall_s": [r["wall_s"] for r in runs],
        "rss_mb": [r["rss_mb"] for r in runs],
        "cpu_s": [round(r["user_s"] + r["sys_s"], 2) for r in runs],
        "floor_wall_s": [f["wall_s"] for f in floors],
        "floor_cpu_s": [f["cpu_s"] for f in floors],
        "median": {
            "wall_s": median_of(runs, "wall_s"),
            "rss_mb": median_of(runs, "rss_mb"),
            "floor_s": fl,
            "ratio": round(median_of(runs, "wall_s") / fl, 2),
            "cpu_s": round(statistics.median(r["user_s"] + r["sys_s"] for r in runs), 2),
            "import_s": round(statistics.median(r["detail"]["import_s"] for r in runs), 3),
            "between_steps_s": round(
                statistics.median(r["detail"]["between_steps_s"] for r in runs), 3
            ),
            "steps_s": {
                s: round(statistics.median(r["detail"]["steps_s"].get(s, 0) for r in runs), 3)
                for s in steps
            },
        },
        "rss_at_marks": runs[-1]["detail"]["marks"],
        "summary": runs[-1]["detail"]["summary"],
        "exit_codes": [r["detail"]["exit_code"] for r in runs],
        # lists a worker committed that the extract's connection did not see (it listed them)
        "lists_unseen": [r["detail"].get("lists_unseen") for r in runs],
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--parts", type=int, default=1_000_000)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--only",
        default="diff,extract,rollback",
        help="comma-separated benchmarks; the world is always built (or reused) first",
    )
    ap.add_argument(
        "--sizes",
        help="comma-separated --parts values (e.g. 100000,1000000,10000000): run the "
        "benchmarks on each, then write the curve (OUT/curve.json) and the plot (bench/curve.png)",
    )
    ap.add_argument(
        "--plot-only", action="store_true", help="redraw bench/curve.png from OUT/curve.json"
    )
    ap.add_argument(
        "--no-naive",
        action="store_true",
        help="skip the naive (unkeyed) diff floor: minutes at 10M parts, and not the floor",
    )
    ap.add_argument(
        "--curve",
        help="comma-separated --parts values: write OUT/curve.json and bench/curve.png from the "
        "latest line of OUT/results.jsonl for each size (sizes benchmarked in separate runs)",
    )
    ap.add_argument(
        "--no-settle",
        action="store_true",
        help="do not write the fresh copy of the world back before a destructive run (the way "
        "rounds 1-13 measured: the rollback's syncfs then also writes the benchmark's copy)",
    )
    args = ap.parse_args()
    global SETTLE
    SETTLE = not args.no_settle
    out = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        plot(json.loads((out / "curve.json").read_text()), HERE / "curve.png")
        return
    if args.curve:
        lines = [json.loads(ln) for ln in (out / "results.jsonl").read_text().splitlines() if ln]
        curve = []
        for n in [int(x) for x in args.curve.split(",")]:
            mine = [r for r in lines if r["parts"] == n]
            rb = next(r for r in reversed(mine) if "rollback" in r)
            diff = next((r for r in reversed(mine) if "diff" in r), None)
            point = curve_point(rb)
            if diff is not None and "diff" not in point:  # benchmarked in another run
                point["diff"] = diff["diff"]["median"]
                point["loadavg"] += [diff["loadavg_before"], diff["loadavg_after"]]
            curve.append(point)
        (out / "curve.json").write_text(json.dumps(curve, indent=1))
        plot(curve, HERE / "curve.png")
        print(json.dumps(curve, indent=1))
        return
    if args.sizes:
        curve = []
        for n in [int(x) for x in args.sizes.split(",")]:
            sub = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--parts",
                str(n),
                "--out",
                str(out),
                "--repeat",
                str(args.repeat),
                "--only",
                args.only,
                *(["--no-naive"] if args.no_naive else []),
                *(["--no-settle"] if args.no_settle else []),
            ]
            subprocess.run(sub, check=True)
            last = json.loads((out / "results.jsonl").read_text().splitlines()[-1])
            curve.append(curve_point(last))
        (out / "curve.json").write_text(json.dumps(curve, indent=1))
        plot(curve, HERE / "curve.png")
        print(json.dumps(curve, indent=1))
        return
    only = set(args.only.split(","))
    bytecode = compile_package()
    global TRASH
    TRASH = Trash(out)
    TRASH.empty()  # (a run stopped before its end left it)
    result: dict = {
        "machine": machine(),
        "parts": args.parts,
        "repeat": args.repeat,
        "loadavg_before": os.getloadavg(),
        "bytecode": bytecode,
        "settled": SETTLE,
    }
    w, gen = world(out, args.parts)
    result["generate"] = gen or "cached"
    result["world"] = world_facts(w)
    print(
        json.dumps(
            {
                "machine": result["machine"],
                "generate": result["generate"],
                "world": result["world"],
            },
            indent=1,
        ),
        flush=True,
    )
    if "diff" in only:
        result["diff"] = bench_diff(w, args.repeat, naive=not args.no_naive)
        print("diff", json.dumps(result["diff"]["median"]), flush=True)
    if "extract" in only:
        result["extract"] = bench_extract(w, out, args.repeat)
        print(
            "extract",
            json.dumps(result["extract"]["median"]),
            "changed rows",
            result["extract"]["changed_rows"],
            flush=True,
        )
    if "rollback" in only:
        result["rollback"] = bench_rollback(w, out, args.repeat)
        print("rollback", json.dumps(result["rollback"]["median"]), flush=True)
    if "rollback_snapshot" in only:
        snap = snapshot_of(w, out, args.parts)
        result["rollback_snapshot"] = bench_rollback(w, out, args.repeat, snap)
        print("rollback_snapshot", json.dumps(result["rollback_snapshot"]["median"]), flush=True)
    result["loadavg_after"] = os.getloadavg()
    result["deleted_between_runs"] = TRASH.deleted_between_runs
    TRASH.empty()
    with (out / "results.jsonl").open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(result) + "\n")
    print(f"appended to {out / 'results.jsonl'}")


def curve_point(result: dict) -> dict:
    """One size of the curve: the medians of one ``results.jsonl`` line, with its load."""
    point = {
        "parts": result["parts"],
        "loadavg": [result["loadavg_before"], result["loadavg_after"]],
        **{k: dict(result[k]["median"]) for k in ("diff", "rollback", "extract") if k in result},
    }
    if "rollback" in result:  # CPU seconds: steadier than wall time on a shared machine
        point["rollback"]["floor_cpu_s"] = statistics.median(result["rollback"]["floor_cpu_s"])
    return point


def plot(curve: list[dict], png: Path) -> None:
    """Seconds per rollback step (and diff, and the two floors) against world size, log-log."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [c["parts"] for c in curve]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=80)
    steps = sorted(
        {s for c in curve for s in c.get("rollback", {}).get("steps_s", {})},
        key=lambda s: [
            "probe",
            "safety",
            "extract",
            "restore",
            "reimport",
            "relink",
            "verify",
            "report",
        ].index(s),
    )
    for s in steps:
        ax.plot(
            sizes,
            [max(c["rollback"]["steps_s"].get(s, 0), 1e-3) for c in curve],
            marker="o",
            lw=1,
            label=s,
        )
    series = [
        ("rollback", "wall_s", "rollback total", "k-"),
        ("rollback", "floor_s", "copy-and-read floor", "k--"),
        ("rollback", "cpu_s", "rollback CPU (user+sys)", "k:"),
        ("rollback", "floor_cpu_s", "floor CPU", "k-."),
        ("diff", "diff_s", "diff", "b-"),
        ("diff", "floor_s", "diff SQL floor", "b--"),
    ]
    for key, field, label, style in series:
        if all(key in c and c[key].get(field) for c in curve):
            ax.plot(sizes, [c[key][field] for c in curve], style, lw=2, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parts in the world (--parts)")
    ax.set_ylabel("seconds (median)")
    loads = [x[0] for c in curve for x in c.get("loadavg", [])]
    load = f" (load {min(loads):.0f}-{max(loads):.0f} on {os.cpu_count()} cores)" if loads else ""
    ax.set_title(f"recovery: time per step against size{load}", fontsize=10)
    ax.legend(fontsize=7, ncol=2)
    ax.grid(True, which="both", lw=0.3)
    fig.tight_layout()
    fig.savefig(png)
    print(f"wrote {png}")


if __name__ == "__main__":
    main()

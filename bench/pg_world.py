"""Put a SQLite sample world already built (e.g. the cached 1M world of ``bench/run.py``) on a
PostgreSQL server, without generating it again: the same rows as the SQLite benchmarks measured.

    python bench/pg_world.py SQLITE_WORLD OUT_DIR postgresql://user@host:port/DBNAME

The world's database files are first copied into a temporary folder (the source folder is only
read: opening a WAL database would touch its ``-shm``), then
:func:`recovery.sample.postgres.load_world_postgres` loads them with ``COPY`` the way
``recovery sample --url`` does. Prints the wall time as JSON.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from recovery.sample.generator import BACKUP_NAME, LIVE_NAME, UPLOADS_NAME, WORLD_JSON
from recovery.sample.postgres import load_world_postgres


def main() -> None:
    src, out, url = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="pg-world-", dir=out.parent) as tmp:
        world = Path(tmp)
        for name in (BACKUP_NAME, LIVE_NAME, f"{LIVE_NAME}-wal", f"{LIVE_NAME}-shm", WORLD_JSON):
            if (src / name).exists():
                shutil.copy2(src / name, world / name)
        (world / UPLOADS_NAME).symlink_to((src / UPLOADS_NAME).resolve())
        copied = time.perf_counter() - t0
        load_world_postgres(world, out, url)
    print(json.dumps({"copy_s": round(copied, 1), "wall_s": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()

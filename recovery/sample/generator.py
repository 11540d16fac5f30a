"""Build a deterministic Gestima world: backup, failed-deploy live DB, uploads, ground truth.

``generate(out_dir)`` writes::

    gestima.db.bak.20261120_140000   v2.0.0 (alembic aa001) backup taken at the deploy
    gestima.db                       v2.0.1 (alembic bb006), WAL mode, an hour of users
    gestima.db-wal                   ... whose last transactions are still only here
                                     (no -shm: the first opener rebuilds it)
    uploads/                         PDFs referenced by file_records.path
    world.json                       what the simulation did (the ground truth)

Same ``seed`` and ``parts`` give row-identical databases and an identical world.json
(the -wal bytes differ: SQLite salts its header randomly).
"""

from __future__ import annotations

import json
from json.encoder import encode_basestring
import random
import resource
import shutil
import sqlite3
import sys
import time
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from collections.abc import Iterator
from typing import Any, TextIO

from recovery.errors import RecoveryError
from recovery.sample.app import NEW_HEAD, OLD_HEAD, migrate
from recovery.sample.backup import fill_backup
from recovery.sample.ledger import SortedPairs
from recovery.sample.simulate import Simulation
from recovery.engine.sqlite_io import file_uri

WORLD_VERSION = 1
DEPLOY_TIME = datetime(2026, 11, 20, 14, 0, 0)
"""When v2.0.1 was deployed and the backup taken; every post-deploy timestamp is later."""
LIVE_NAME = "gestima.db"
BACKUP_NAME = f"{LIVE_NAME}.bak.{DEPLOY_TIME:%Y%m%d_%H%M%S}"
UPLOADS_NAME = "uploads"
WORLD_JSON = "world.json"


def generate(out_dir: Path, parts: int = 300, seed: int = 42, progress: bool = False) -> Path:
    """Generate a world into ``out_dir`` (created if needed; an earlier world there is replaced).

    ``parts`` is the number of pre-deploy parts N; quotes are N/2 with 1-5 items each and
    the post-deploy hour scales with N (about 7% new parts). Returns ``out_dir``.
    """
    if parts < 10:
        raise RecoveryError(f"--parts must be at least 10, got {parts}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    log = _Progress(progress, bar_total=5)
    uploads = out / UPLOADS_NAME
    uploads.mkdir()
    backup, live = out / BACKUP_NAME, out / LIVE_NAME

    migrate(backup, OLD_HEAD, fast=True)
    log(f"schema {OLD_HEAD} created")
    facts = fill_backup(
        backup,
        uploads,
        parts=parts,
        rng=random.Random(f"gestima-backup:{seed}"),
        deploy=DEPLOY_TIME,
    )
    log(f"backup filled: {facts.counts}")

    _copy(backup, live)
    migrate(live, NEW_HEAD, fast=True)
    log(f"live upgraded to {NEW_HEAD}")
    backfilled = _backfilled(live)

    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    sim = Simulation(
        conn,
        uploads,
        random.Random(f"gestima-sim:{seed}"),
        parts=facts.parts,
        quotes=facts.quotes,
        max_item_id=facts.max_item_id,
        deploy=DEPLOY_TIME,
    )
    sim_facts = sim.run()
    tables, updated_columns = sim.ledger.changes()
    _close_keeping_wal(conn, live)
    log(
        f"simulated {sim_facts.actions} post-deploy actions ({sim_facts.wal_actions} left in the WAL)"
    )

    counts_live = dict(facts.counts)
    counts_live["production_records"] = 0
    for table, net in sim.ledger.net_rows().items():
        counts_live[table] += net
    world: dict[str, Any] = {
        "generator": {"seed": seed, "parts": parts, "version": WORLD_VERSION},
        "deploy_time": DEPLOY_TIME.isoformat(),
        "deploy_time_sql": f"{DEPLOY_TIME:%Y-%m-%d %H:%M:%S}",
        "backup": BACKUP_NAME,
        "live": LIVE_NAME,
        "uploads": UPLOADS_NAME,
        "revisions": {"old": OLD_HEAD, "new": NEW_HEAD},
        "counts": {
            "backup": dict(sorted(facts.counts.items())),
            "live": dict(sorted(counts_live.items())),
        },
        "wal": {
            "actions": sim_facts.actions,
            "checkpointed_actions": sim_facts.checkpointed_actions,
            "wal_only_actions": sim_facts.wal_actions,
            "wal_only_since": sim_facts.wal_first_at,
        },
        "backfilled": backfilled,
        "tables": tables,
        "updated_columns": updated_columns,
        # generators: streamed into the file, never held as one list (10M parts: ~3M keys)
        "lost": sim.ledger.lost(),
        "derivable": sim.ledger.derivable(),
        "files": sim.ledger.files(),
    }
    with (out / WORLD_JSON).open("w", encoding="utf-8") as fp:
        write_json(fp, world)
        fp.write("\n")
    sim.ledger.close()
    log(f"world written to {out}")
    return out


def write_json(fp: TextIO, obj: Any, level: int = 0) -> None:
    """``json.dump(obj, fp, sort_keys=True, indent=2, ensure_ascii=False)``, byte for byte,
    except that iterators (and :class:`SortedPairs`, an object's members already in key order)
    are written element by element instead of being materialised."""
    if _plain(obj):
        fp.write(_text(obj, level))
        return
    pad, end = "  " * (level + 1), "  " * level
    if isinstance(obj, dict):
        for i, key in enumerate(sorted(obj)):
            fp.write(("{\n" if i == 0 else ",\n") + pad + _scalar(key) + ": ")
            write_json(fp, obj[key], level + 1)
        fp.write("\n" + end + "}")
    elif isinstance(obj, SortedPairs):
        first = True
        for key, value in obj:
            fp.write(("{\n" if first else ",\n") + pad + _scalar(key) + ": ")
            write_json(fp, value, level + 1)
            first = False
        fp.write("{}" if first else "\n" + end + "}")
    else:  # a list, tuple or iterator with a stream inside, or an iterator
        first = True
        for item in obj:
            fp.write(("[\n" if first else ",\n") + pad)
            write_json(fp, item, level + 1)
            first = False
        fp.write("[]" if first else "\n" + end + "]")


_SCALARS = (str, int, float, bool, type(None))
_encode = json.JSONEncoder(ensure_ascii=False).encode
_LITERALS: dict[Any, str] = {True: "true", False: "false", None: "null"}


def _scalar(obj: Any) -> str:
    """One JSON scalar (or key) as ``json.dumps(..., ensure_ascii=False)`` writes it."""
    kind = type(obj)
    if kind is str:
        return encode_basestring(obj)
    if kind is int:
        return int.__repr__(obj)
    if kind is bool or obj is None:
        return _LITERALS[obj]
    return _encode(obj)


def _plain(obj: Any) -> bool:
    """Whether ``obj`` is JSON without a stream anywhere in it (then it is written in one piece)."""
    kind = type(obj)
    if kind in _SCALARS:
        return True
    if kind is dict:
        return all(map(_plain, obj.values()))
    if kind is list or kind is tuple:
        return all(map(_plain, obj))
    return False


def _text(obj: Any, level: int) -> str:
    """A value without streams as ``json.dumps(obj, sort_keys=True, indent=2,
    ensure_ascii=False)`` nested ``level`` deep writes it (one string, built by join)."""
    kind = type(obj)
    if kind is dict:
        if not obj:
            return "{}"
        pad = "\n" + "  " * (level + 1)
        inner = ("," + pad).join(
            _scalar(key) + ": " + _text(obj[key], level + 1) for key in sorted(obj)
        )
        return "{" + pad + inner + "\n" + "  " * level + "}"
    if kind is list or kind is tuple:
        if not obj:
            return "[]"
        pad = "\n" + "  " * (level + 1)
        inner = ("," + pad).join([_text(v, level + 1) for v in obj])
        return "[" + pad + inner + "\n" + "  " * level + "]"
    return _scalar(obj)


@contextmanager
def fresh_folder(out_dir: Path) -> Iterator[Path]:
    """``out_dir`` as a new or empty folder for a world; if the body fails (or is interrupted),
    everything it created there is removed, so the same command can simply be run again.
    A folder that already holds anything is refused: nothing of the user's is ever removed."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RecoveryError(f"{out} is not empty", "choose a new or empty folder")
    existed = out.exists()
    out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if existed:
            for child in out.iterdir():
                shutil.rmtree(
                    child
                ) if child.is_dir() and not child.is_symlink() else child.unlink()
        else:
            shutil.rmtree(out, ignore_errors=True)
        raise


def _clear(out: Path) -> None:
    for path in sorted(out.glob(f"{LIVE_NAME}*")):
        path.unlink()
    if (out / UPLOADS_NAME).exists():
        shutil.rmtree(out / UPLOADS_NAME)
    (out / WORLD_JSON).unlink(missing_ok=True)


def _copy(src: Path, dst: Path) -> None:
    """A copy of the closed backup (rollback-journal mode, no journal left: the file alone is the
    database, and nobody else has it open), by the kernel's file copy — GBs at 10M parts."""
    shutil.copyfile(src, dst)


def _backfilled(live: Path) -> list[dict[str, Any]]:
    """parts.file_id values written by the bb001 data migration (at the deploy, not by users)."""
    conn = sqlite3.connect(file_uri(Path(live), mode="ro"), uri=True)
    try:
        rows = conn.execute(
            "SELECT id, file_id FROM parts WHERE file_id IS NOT NULL ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    return [
        {
            "table": "parts",
            "key": {"id": pid},
            "column": "file_id",
            "value": fid,
            "via": "file_records.entity_id",
            "by": "bb001_parts_file_id",
        }
        for pid, fid in rows
    ]


def _close_keeping_wal(conn: sqlite3.Connection, live: Path) -> None:
    """Close the writer without folding the WAL into the database file.

    SQLite checkpoints and deletes the WAL when the last connection closes — unless that
    connection is read-only. So a read-only connection is opened first, the writer closed
    (it is not the last), then the reader (it cannot checkpoint). Python 3.11 has no
    ``SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE``; this is the portable equivalent.
    """
    reader = sqlite3.connect(file_uri(Path(live), mode="ro"), uri=True)
    reader.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    conn.close()
    reader.close()
    # the -shm wal-index is transient (rebuilt by the next opener, read-only ones included);
    # leaving it out keeps a committed world free of a file every reader rewrites
    live.with_name(live.name + "-shm").unlink(missing_ok=True)
    wal = live.with_name(live.name + "-wal")
    if not wal.exists() or wal.stat().st_size == 0:
        raise RuntimeError("the post-deploy WAL was checkpointed away")  # a bug, not user error


class _Progress:
    """The phases of :func:`generate`: one unit of the ``sample`` step's bar each
    (:mod:`recovery.progress`), and with ``enabled`` a line with time and peak RSS on stderr."""

    def __init__(self, enabled: bool, bar_total: int):
        from recovery import progress as bar

        self.enabled = enabled
        self.start = time.perf_counter()
        bar.set_total(bar_total)

    def __call__(self, message: str) -> None:
        from recovery import progress as bar

        bar.advance(1, message.split(":")[0])
        if self.enabled:
            use = resource.getrusage(resource.RUSAGE_SELF)
            rss, cpu = use.ru_maxrss // 1024, use.ru_utime + use.ru_stime
            print(
                f"[{time.perf_counter() - self.start:7.1f}s, CPU {cpu:7.1f}s, max RSS {rss:5d} MB]"
                f" {message}",
                file=sys.stderr,
                flush=True,
            )

"""Fill the pre-deploy backup (schema v2.0.0, already created by the real alembic upgrade).

Rows are streamed with plain ``sqlite3`` ``executemany`` in bounded chunks, so a world of a
million parts needs neither an ORM nor the whole data set in memory. Only one array of part
prices (8 bytes a part) and the list of uploaded files (capped) are kept.
"""

from __future__ import annotations

import random
import sqlite3
from array import array
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from recovery.sample import content as c

HISTORY_START = datetime(2025, 11, 20, 7, 0, 0)
"""First pre-deploy activity; the history ends an hour before the deploy."""
CHUNK = 20_000
PART_FILE_RATE = 0.12
PART_FILE_CAP = 4_000
QUOTE_FILE_RATE = 0.06
QUOTE_FILE_CAP = 1_000


@dataclass
class BackupFacts:
    """What the builder wrote: counts per table and the id ranges the simulation needs."""

    counts: dict[str, int] = field(default_factory=dict)
    parts: int = 0
    quotes: int = 0
    max_item_id: int = 0


def user_ids_by_role(*roles: str) -> tuple[int, ...]:
    return tuple(i for i, u in enumerate(c.USERS, start=1) if u[3] in roles)


ENGINEERS = user_ids_by_role("engineer", "admin")
SALES = user_ids_by_role("sales", "admin")
OPERATORS = user_ids_by_role("operator", "planner")
ALL_USERS = tuple(range(1, len(c.USERS) + 1))


def fill_backup(
    db_path: Path, uploads: Path, *, parts: int, rng: random.Random, deploy: datetime
) -> BackupFacts:
    """Write users, materials, parts, quotes, quote_items and file_records (+ their files)."""
    facts = BackupFacts(parts=parts)
    span = int((deploy - HISTORY_START).total_seconds()) - 3600
    conn = sqlite3.connect(db_path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=OFF")
        conn.execute("PRAGMA synchronous=OFF")
        conn.execute("PRAGMA cache_size=-65536")
        conn.execute("BEGIN")
        _users(conn)
        _materials(conn)
        prices = array("d")
        files: list[tuple] = []
        _parts(conn, parts, span, rng, prices, files)
        facts.quotes, items = _quotes(conn, parts, span, rng, prices, files)
        facts.max_item_id = items
        _files(conn, uploads, files)
        conn.execute("COMMIT")
        facts.counts = {
            "users": len(c.USERS),
            "materials": len(c.MATERIALS),
            "parts": parts,
            "quotes": facts.quotes,
            "quote_items": items,
            "file_records": len(files),
        }
        conn.execute("PRAGMA journal_mode=DELETE")
    finally:
        conn.close()
    return facts


def _users(conn: sqlite3.Connection) -> None:
    base = datetime(2025, 6, 2, 8, 0, 0)
    conn.executemany(
        "INSERT INTO users (id, username, full_name, email, role, created_at, is_active)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            (
                i,
                u[0],
                u[1],
                u[2],
                u[3],
                c.ts(base + timedelta(days=7 * i)),
                int(u[0] != "rpospisil"),
            )
            for i, u in enumerate(c.USERS, start=1)
        ),
    )


def _materials(conn: sqlite3.Connection) -> None:
    conn.executemany(
        "INSERT INTO materials (id, code, name, density, price_per_kg) VALUES (?, ?, ?, ?, ?)",
        ((i, *m) for i, m in enumerate(c.MATERIALS, start=1)),
    )


def part_name(rng: random.Random) -> str:
    return f"{rng.choice(c.PART_NOUNS)} {rng.choice(c.PART_SUFFIXES)}".strip()


def _parts(conn, n, span, rng, prices, files) -> None:
    step = max(1, span // n)
    at = c.Clock(HISTORY_START).at
    n_materials = len(c.MATERIALS)
    sql = (
        "INSERT INTO parts (id, part_number, name, material_id, price, notes, created_at,"
        " updated_at, created_by, drawing_number) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    for start in range(1, n + 1, CHUNK):
        rows = []
        for pid in range(start, min(n, start + CHUNK - 1) + 1):
            created_s = (pid - 1) * span // n + rng.randrange(step)
            updated_s = created_s
            if rng.random() < 0.3:
                updated_s = created_s + rng.randrange(max(1, span - created_s))
            cents = rng.randrange(1_500, 450_000)
            prices.append(cents / 100)
            notes = rng.choice(c.NOTES) if rng.random() < 0.35 else None
            drawing = None
            if rng.random() < 0.75:
                drawing = f"V-{10000 + pid}-{rng.choice('ABC')}"
            pn = c.part_number(pid)
            rows.append(
                (
                    pid,
                    pn,
                    part_name(rng),
                    rng.randint(1, n_materials),
                    cents / 100,
                    notes,
                    at(created_s),
                    at(updated_s),
                    rng.choice(ENGINEERS),
                    drawing,
                )
            )
            if len(files) < PART_FILE_CAP and rng.random() < PART_FILE_RATE:  # parts come first
                revisions = 2 if rng.random() < 0.2 else 1
                upload_s = created_s
                for r in range(revisions):
                    upload_s = min(span, upload_s + rng.randrange(60, 86_400))
                    rev = "AB"[r]
                    files.append(
                        (
                            at(upload_s),
                            "part",
                            pid,
                            f"drawing-rev-{rev}.pdf",
                            f"parts/{pn}/drawing-rev-{rev}.pdf",
                            rng.choice(ENGINEERS),
                            (
                                f"{pn} drawing rev. {rev}",
                                (f"Part {pn}", f"Drawing V-{10000 + pid}"),
                            ),
                        )
                    )
        conn.executemany(sql, rows)


def _quotes(conn, n_parts, span, rng, prices, files) -> tuple[int, int]:
    n = max(2, n_parts // 2)
    step = max(1, span // n)
    at = c.Clock(HISTORY_START).at
    item_id = 0
    quote_files = 0
    q_sql = (
        "INSERT INTO quotes (id, quote_number, customer, status, created_at, updated_at,"
        " created_by) VALUES (?, ?, ?, ?, ?, ?, ?)"
    )
    i_sql = (
        "INSERT INTO quote_items (id, quote_id, part_id, qty, unit_price) VALUES (?, ?, ?, ?, ?)"
    )
    for start in range(1, n + 1, CHUNK):
        quotes, items = [], []
        for qid in range(start, min(n, start + CHUNK - 1) + 1):
            created_s = (qid - 1) * span // n + rng.randrange(step)
            created = at(created_s)
            age = 1 - created_s / span
            status = rng.choice(
                ("accepted", "rejected", "expired") if age > 0.2 else c.QUOTE_STATUSES
            )
            updated_s = created_s + rng.randrange(max(1, min(span - created_s, 30 * 86_400)))
            qn = c.quote_number(int(created[:4]), qid)
            quotes.append(
                (
                    qid,
                    qn,
                    rng.choice(c.CUSTOMERS),
                    status,
                    created,
                    at(updated_s),
                    rng.choice(SALES),
                )
            )
            max_part = max(1, min(n_parts, qid * n_parts // n))
            for _ in range(rng.randint(1, 5)):
                item_id += 1
                part = rng.randint(1, max_part)
                unit = round(prices[part - 1] * rng.uniform(0.95, 1.35), 2)
                items.append(
                    (item_id, qid, part, rng.choice((1, 2, 5, 10, 20, 50, 100, 250)), unit)
                )
            if quote_files < QUOTE_FILE_CAP and rng.random() < QUOTE_FILE_RATE:
                quote_files += 1
                files.append(
                    (
                        created,
                        "quote",
                        qid,
                        "poptavka.pdf",
                        f"quotes/{qn}/poptavka.pdf",
                        rng.choice(SALES),
                        (f"Inquiry {qn}", ("Customer inquiry", qn)),
                    )
                )
        conn.executemany(q_sql, quotes)
        conn.executemany(i_sql, items)
    return n, item_id


def _files(conn, uploads: Path, files: list[tuple]) -> None:
    files.sort(key=lambda f: (f[0], f[1], f[2], f[3]))
    rows = []
    for rid, (created, etype, eid, filename, rel, user, (title, lines)) in enumerate(files, 1):
        data = c.pdf_bytes(title, lines)
        target = uploads / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        rows.append(
            (
                rid,
                filename,
                rel,
                c.sha256_hex(data),
                len(data),
                "application/pdf",
                etype,
                eid,
                created,
                user,
            )
        )
    conn.executemany(
        "INSERT INTO file_records (id, filename, path, sha256, size, mime_type, entity_type,"
        " entity_id, created_at, uploaded_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows,
    )

"""The simulation's own record of what it did — the ground truth of a world.

Every write of the post-deploy simulation goes through :class:`Ledger`, which keeps, per
touched row, the image the row had at the deploy (read once, before the first write) and
its image now. The truth in ``world.json`` is computed from these images — never by diffing
the two databases, which is the toolkit's job and would make the test circular.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

from recovery.sample import content as c

Row = dict[str, Any]

# How a v2.0.1 row looks in the v2.0.0 schema. Old-only columns without a source
# (parts.notes, dropped by bb006) are not part of the projection.
_same = lambda col: lambda r: r[col]  # noqa: E731
PROJECTION: dict[str, dict[str, Callable[[Row], Any]]] = {
    "parts": {
        "part_number": _same("part_number"),
        "name": _same("name"),
        "material_id": _same("material_id"),
        "price": lambda r: r["price_cents"] / 100.0,
        "created_at": _same("created_at"),
        "updated_at": _same("updated_at"),
        "created_by": _same("created_by"),
        "drawing_number": _same("drawing_number"),
    },
    "quotes": {
        "quote_number": _same("quote_number"),
        "customer": _same("customer_name"),
        "status": _same("status"),
        "created_at": _same("created_at"),
        "updated_at": _same("updated_at"),
        "created_by": _same("created_by"),
    },
    "quote_items": {k: _same(k) for k in ("quote_id", "part_id", "qty", "unit_price")},
    "file_records": {
        k: _same(k)
        for k in (
            "filename",
            "path",
            "sha256",
            "size",
            "mime_type",
            "entity_type",
            "entity_id",
            "created_at",
            "uploaded_by",
        )
    },
}
NEW_ONLY_COLUMNS: dict[str, dict[str, Any]] = {
    "parts": {"file_id": None},
    "quotes": {"discount_pct": 0.0},
}
"""v2.0.1-only columns of tables v2.0.0 has, with their default."""
NEW_ONLY_TABLES = ("production_records",)


class SortedPairs:
    """A JSON object streamed as ``(key, value)`` pairs that already come in ``sort_keys`` order
    (``generator.write_json`` writes it element by element, never as one dict)."""

    def __init__(self, pairs: Iterator[tuple[str, Any]]):
        self.pairs = pairs

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        return self.pairs


def _pack(image: tuple | None) -> str | None:
    # JSON keeps int/float (repr, NaN included)/str/None exactly as Python held them, so a round
    # trip compares and serialises (world.json) the same as the tuple itself; it is data, never
    # code (no pickle/marshal in the package: tests/test_run_truth.py)
    return None if image is None else json.dumps(list(image))


def _unpack(text: str | None) -> tuple | None:
    return None if text is None else tuple(json.loads(text))


_INSERTED, _UPDATED, _DELETED = "inserted", "updated", "deleted"


class Ledger:
    """Before/now images of every row the simulation touched.

    ``(before, now)`` per ``(table, key)``; ``before`` is None for a row inserted after the
    deploy, ``now`` is None for a deleted one. The images live in a private temporary SQLite
    database (deleted when it is closed), not in Python objects: a 10M-part world touches ~3M
    rows, which as tuples would take over a gigabyte of RAM. Everything the truth needs is then
    read back in key order, streamed.
    """

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.columns: dict[str, tuple[str, ...]] = {}
        # "" = a private on-disk temporary database; one long transaction, no journal: the store
        # is scratch that dies with the process
        self.store = sqlite3.connect("", isolation_level=None)
        for pragma in ("journal_mode=OFF", "synchronous=OFF", "cache_size=-32768"):
            self.store.execute(f"PRAGMA {pragma}")
        self.store.execute(
            "CREATE TABLE images (tbl TEXT NOT NULL, key INTEGER NOT NULL, before TEXT, now TEXT,"
            " PRIMARY KEY (tbl, key)) WITHOUT ROWID"
        )
        self.store.execute(
            "CREATE TABLE verdicts (tbl TEXT NOT NULL, key INTEGER NOT NULL, kind TEXT NOT NULL,"
            " cols TEXT, PRIMARY KEY (tbl, key)) WITHOUT ROWID"
        )
        self.store.execute("BEGIN")
        self._judged = False

    def close(self) -> None:
        """Drop the image store (its temporary file goes with it)."""
        self.store.close()

    def _cols(self, table: str) -> tuple[str, ...]:
        if table not in self.columns:
            self.columns[table] = tuple(
                r[1] for r in self.conn.execute(f'PRAGMA table_info("{table}")')
            )
        return self.columns[table]

    def _read(self, table: str, key: int) -> tuple | None:
        cols = self._cols(table)
        return self.conn.execute(
            f'SELECT {", ".join(cols)} FROM "{table}" WHERE id = ?', (key,)
        ).fetchone()

    def _get(self, table: str, key: int) -> tuple[tuple | None, tuple | None] | None:
        found = self.store.execute(
            "SELECT before, now FROM images WHERE tbl = ? AND key = ?", (table, key)
        ).fetchone()
        return None if found is None else (_unpack(found[0]), _unpack(found[1]))

    def _put(self, table: str, key: int, before: tuple | None, now: tuple | None) -> None:
        self._judged = False
        self.store.execute(
            "INSERT OR REPLACE INTO images (tbl, key, before, now) VALUES (?, ?, ?, ?)",
            (table, key, _pack(before), _pack(now)),
        )

    def _as_dict(self, table: str, image: tuple | None) -> Row | None:
        return None if image is None else dict(zip(self.columns[table], image, strict=True))

    def _images(self, table: str, key: int) -> tuple[tuple | None, tuple]:
        """``(before, now)`` of a live row; records its deploy-time image on first touch."""
        self._cols(table)
        found = self._get(table, key)
        if found is None:
            before = self._read(table, key)
            if before is None:
                raise KeyError(f"{table} {key} does not exist")
            self._put(table, key, before, before)
            found = (before, before)
        if found[1] is None:
            raise KeyError(f"{table} {key} was deleted")
        return found[0], found[1]

    def touch(self, table: str, key: int) -> Row:
        """The row as it is now (a fresh dict); records its deploy-time image on first touch."""
        now = self._images(table, key)[1]
        return dict(zip(self.columns[table], now, strict=True))

    def insert(self, table: str, row: Row) -> int:
        cols = list(row)
        cur = self.conn.execute(
            f'INSERT INTO "{table}" ({", ".join(cols)}) VALUES ({", ".join("?" * len(cols))})',
            [row[k] for k in cols],
        )
        key = cur.lastrowid
        assert key is not None  # an INSERT sets it
        full = self._read(table, key)  # server defaults filled in
        found = self._get(table, key)
        if found is not None and found != (None, None):
            # a pre-deploy row's id reused would read as "updated"; the simulation avoids it
            raise AssertionError(f"{table} {key}: id reused ({found})")
        self._put(table, key, None, full)
        return key

    def update(self, table: str, key: int, changes: Row) -> None:
        before, image = self._images(table, key)
        now = dict(zip(self.columns[table], image, strict=True))
        sets = ", ".join(f"{k} = ?" for k in changes)
        self.conn.execute(f'UPDATE "{table}" SET {sets} WHERE id = ?', [*changes.values(), key])
        now.update(changes)
        self._put(table, key, before, tuple(now[c] for c in self.columns[table]))

    def delete(self, table: str, key: int) -> None:
        before, _ = self._images(table, key)
        self.conn.execute(f'DELETE FROM "{table}" WHERE id = ?', (key,))
        self._put(table, key, before, None)

    # ------------------------------------------------------------------ the truth
    def _pairs(self, table: str) -> Iterator[tuple[int, Row | None, Row | None]]:
        for key, before, now in self.store.execute(
            "SELECT key, before, now FROM images WHERE tbl = ? ORDER BY key", (table,)
        ):
            yield key, self._as_dict(table, _unpack(before)), self._as_dict(table, _unpack(now))

    def _judge(self) -> None:
        """Classify every touched row once (inserted/updated/deleted, and the projected columns
        an update changed) into the ``verdicts`` table the truth is streamed from."""
        if self._judged:
            return
        self.store.execute("DELETE FROM verdicts")
        for table in sorted(self.columns):
            projection = PROJECTION.get(table, {})
            new_only = NEW_ONLY_COLUMNS.get(table, {})
            batch: list[tuple[str, int, str, str | None]] = []
            for key, before, now in self._pairs(table):
                if before is None and now is None:
                    continue
                if before is None:
                    batch.append((table, key, _INSERTED, None))
                elif now is None:
                    batch.append((table, key, _DELETED, None))
                else:
                    changed = sorted(col for col, f in projection.items() if f(before) != f(now))
                    if changed or any(before[col] != now[col] for col in new_only):
                        batch.append((table, key, _UPDATED, json.dumps(changed)))
                if len(batch) >= 10_000:
                    self._verdicts(batch)
            self._verdicts(batch)
        self._judged = True

    def _verdicts(self, batch: list[tuple[str, int, str, str | None]]) -> None:
        self.store.executemany(
            "INSERT INTO verdicts (tbl, key, kind, cols) VALUES (?, ?, ?, ?)", batch
        )
        batch.clear()

    def _keys(self, table: str, kind: str) -> Iterator[list[int]]:
        for (key,) in self.store.execute(
            "SELECT key FROM verdicts WHERE tbl = ? AND kind = ? ORDER BY key", (table, kind)
        ):
            yield [key]

    def _updated_columns(self, table: str) -> Iterator[tuple[str, list[str]]]:
        # world.json's keys are str(key), so they sort as text ("10" < "9")
        for key, cols in self.store.execute(
            "SELECT CAST(key AS TEXT), cols FROM verdicts WHERE tbl = ? AND kind = ?"
            " ORDER BY CAST(key AS TEXT)",
            (table, _UPDATED),
        ):
            yield key, json.loads(cols)

    def _kinds(self) -> dict[str, dict[str, int]]:
        self._judge()
        kinds: dict[str, dict[str, int]] = {}
        for table, kind, n in self.store.execute(
            "SELECT tbl, kind, COUNT(*) FROM verdicts GROUP BY tbl, kind ORDER BY tbl, kind"
        ):
            kinds.setdefault(table, {})[kind] = n
        return kinds

    def net_rows(self) -> dict[str, int]:
        """Rows inserted minus rows deleted, per table with any change."""
        return {t: k.get(_INSERTED, 0) - k.get(_DELETED, 0) for t, k in self._kinds().items()}

    def changes(self) -> tuple[dict[str, Any], dict[str, SortedPairs]]:
        """``tables`` (inserted/updated/deleted keys) and ``updated_columns`` of world.json, as
        streams (lists of keys and per-key columns are read back in order while being written)."""
        kinds = self._kinds()
        tables: dict[str, Any] = {
            table: {
                "key": ["id"],
                "inserted": self._keys(table, _INSERTED),
                "updated": self._keys(table, _UPDATED),
                "deleted": self._keys(table, _DELETED),
            }
            for table in kinds
        }
        updated_columns = {
            table: SortedPairs(self._updated_columns(table))
            for table, k in kinds.items()
            if k.get(_UPDATED)
        }
        return tables, updated_columns

    def lost(self) -> Iterator[dict[str, Any]]:
        """Values written after the deploy that v2.0.0 has no place for, sorted by (table, key, column)."""
        for table in sorted(self.columns):
            if table not in NEW_ONLY_TABLES and table != "quotes":
                continue
            for key, before, now in self._pairs(table):
                if now is None:
                    continue
                if table == "quotes":
                    if now["discount_pct"] != 0 and (
                        before is None or before["discount_pct"] != now["discount_pct"]
                    ):
                        yield _value(table, key, now["quote_number"], "discount_pct", now)
                    continue
                label = c.part_number(now["part_id"]) if "part_id" in now else None
                for col in sorted(now):
                    if col != "id" and now[col] is not None:
                        yield _value(table, key, label, col, now)

    def derivable(self) -> Iterator[dict[str, Any]]:
        """parts.file_id values users set: derivable from file_records.entity_id."""
        for key, before, now in self._pairs("parts"):
            if (
                now is not None
                and now["file_id"] is not None
                and (before is None or before["file_id"] != now["file_id"])
            ):
                yield {
                    "table": "parts",
                    "key": {"id": key},
                    "column": "file_id",
                    "value": now["file_id"],
                    "via": "file_records.entity_id",
                }

    def files(self) -> Iterator[dict[str, Any]]:
        """Every file_records row created after the deploy."""
        for key, before, now in self._pairs("file_records"):
            if before is None and now is not None:
                yield {
                    "record_id": key,
                    "path": now["path"],
                    "sha256": now["sha256"],
                    "size": now["size"],
                    "entity_type": now["entity_type"],
                    "entity_id": now["entity_id"],
                    "uploaded_after_deploy": True,
                }


def _value(table: str, key: int, label: Any, column: str, row: Row) -> dict[str, Any]:
    return {
        "table": table,
        "key": {"id": key},
        "label": label,
        "column": column,
        "value": row[column],
    }

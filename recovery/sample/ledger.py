"""The simulation's own record of what it did — the ground truth of a world.

Every write of the post-deploy simulation goes through :class:`Ledger`, which keeps, per
touched row, the image the row had at the deploy (read once, before the first write) and
its image now. The truth in ``world.json`` is computed from these images — never by diffing
the two databases, which is the toolkit's job and would make the test circular.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
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


@dataclass
class Ledger:
    """Before/now images of every row the simulation touched, kept as compact tuples.

    ``images[table][key] = (before, now)``; ``before`` is None for a row inserted after the
    deploy, ``now`` is None for a deleted one. Memory is a few hundred bytes per touched
    row, so a 1M-part world's ~300k touched rows stay around 100 MB.
    """

    conn: sqlite3.Connection
    images: dict[str, dict[int, tuple[tuple | None, tuple | None]]] = field(default_factory=dict)
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def _cols(self, table: str) -> tuple[str, ...]:
        if table not in self.columns:
            self.columns[table] = tuple(
                r[1] for r in self.conn.execute(f'PRAGMA table_info("{table}")')
            )
            self.images[table] = {}
        return self.columns[table]

    def _read(self, table: str, key: int) -> tuple | None:
        cols = self._cols(table)
        return self.conn.execute(
            f'SELECT {", ".join(cols)} FROM "{table}" WHERE id = ?', (key,)
        ).fetchone()

    def _as_dict(self, table: str, image: tuple | None) -> Row | None:
        return None if image is None else dict(zip(self.columns[table], image, strict=True))

    def touch(self, table: str, key: int) -> Row:
        """The row as it is now (a fresh dict); records its deploy-time image on first touch."""
        self._cols(table)
        rows = self.images[table]
        if key not in rows:
            before = self._read(table, key)
            if before is None:
                raise KeyError(f"{table} {key} does not exist")
            rows[key] = (before, before)
        now = rows[key][1]
        if now is None:
            raise KeyError(f"{table} {key} was deleted")
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
        rows = self.images[table]
        if key in rows and rows[key] != (None, None):
            # a pre-deploy row's id reused would read as "updated"; the simulation avoids it
            raise AssertionError(f"{table} {key}: id reused ({rows[key]})")
        rows[key] = (None, full)
        return key

    def update(self, table: str, key: int, changes: Row) -> None:
        now = self.touch(table, key)
        sets = ", ".join(f"{k} = ?" for k in changes)
        self.conn.execute(f'UPDATE "{table}" SET {sets} WHERE id = ?', [*changes.values(), key])
        now.update(changes)
        rows = self.images[table]
        rows[key] = (rows[key][0], tuple(now[c] for c in self.columns[table]))

    def delete(self, table: str, key: int) -> None:
        self.touch(table, key)
        self.conn.execute(f'DELETE FROM "{table}" WHERE id = ?', (key,))
        rows = self.images[table]
        rows[key] = (rows[key][0], None)

    # ------------------------------------------------------------------ the truth
    def _pairs(self, table: str) -> Iterator[tuple[int, Row | None, Row | None]]:
        for key in sorted(self.images.get(table, {})):
            before, now = self.images[table][key]
            yield key, self._as_dict(table, before), self._as_dict(table, now)

    def changes(self) -> tuple[dict[str, Any], dict[str, dict[str, list[str]]]]:
        """``tables`` (inserted/updated/deleted keys) and ``updated_columns`` of world.json."""
        tables: dict[str, Any] = {}
        updated_columns: dict[str, dict[str, list[str]]] = {}
        for table in sorted(self.images):
            ins, upd, dele = [], [], []
            projection = PROJECTION.get(table, {})
            new_only = NEW_ONLY_COLUMNS.get(table, {})
            for key, before, now in self._pairs(table):
                if before is None and now is None:
                    continue
                if before is None:
                    ins.append([key])
                elif now is None:
                    dele.append([key])
                else:
                    changed = sorted(col for col, f in projection.items() if f(before) != f(now))
                    if changed or any(before[col] != now[col] for col in new_only):
                        upd.append([key])
                        updated_columns.setdefault(table, {})[str(key)] = changed
            if ins or upd or dele:
                tables[table] = {"key": ["id"], "inserted": ins, "updated": upd, "deleted": dele}
        return tables, updated_columns

    def lost(self) -> Iterator[dict[str, Any]]:
        """Values written after the deploy that v2.0.0 has no place for, sorted by (table, key, column)."""
        for table in sorted(self.images):
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

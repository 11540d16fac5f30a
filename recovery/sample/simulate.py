"""One hour of Gestima users after the v2.0.1 deploy, written to the live database.

Each action is what one web request would do, with a timestamp strictly after the deploy.
The first actions are committed and checkpointed into ``gestima.db`` (as SQLite's
autocheckpoint would have done); the last ones — one transaction each — stay in
``gestima.db-wal``, so a tool that copies only the main file misses them.
"""

from __future__ import annotations

import random
from array import array
import sqlite3
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from recovery.sample import content as c
from recovery.sample.backup import ALL_USERS, ENGINEERS, OPERATORS, SALES, part_name
from recovery.sample.ledger import Ledger

UPLOAD_CAP = 3_000
WAL_TAIL_CAP = 2_000


@dataclass
class SimulationFacts:
    actions: int
    checkpointed_actions: int
    wal_actions: int
    wal_first_at: str


class Simulation:
    def __init__(
        self,
        conn: sqlite3.Connection,
        uploads: Path,
        rng: random.Random,
        *,
        parts: int,
        quotes: int,
        max_item_id: int,
        deploy: datetime,
    ):
        self.conn = conn
        self.ledger = Ledger(conn)
        self.uploads = uploads
        self.rng = rng
        self.old_parts = parts
        self.old_quotes = quotes
        self.old_max_item = max_item_id
        self.deploy = deploy
        # arrays: 8 bytes an id (a 10M-part world adds ~700k parts and ~350k quotes)
        self.new_parts = array("q")
        self.new_quotes = array("q")
        self.running: list[int] = []
        self.deleted_quotes: set[int] = set()
        self.uploads_done = 0
        self.now = ""
        self.now_s = 0
        self.clock = c.Clock(deploy)

    # ------------------------------------------------------------------ plan
    def plan(self) -> list[str]:
        n = self.old_parts

        def scaled(frac: float, minimum: int) -> int:
            return max(minimum, round(n * frac))

        kinds = (
            ["new_part"] * scaled(0.07, 4)
            + ["new_quote"] * scaled(0.035, 3)
            + ["edit_old_part"] * scaled(0.03, 3)
            + ["edit_old_quote"] * scaled(0.02, 3)
            + ["add_item_old_quote"] * scaled(0.01, 2)
            + ["edit_old_item"] * scaled(0.005, 2)
            + ["delete_old_item"] * scaled(0.005, 2)
            + ["delete_old_quote"] * scaled(0.002, 1)
            + ["new_rev_old_part"] * scaled(0.005, 2)
            + ["edit_new_part"] * scaled(0.005, 1)
            + ["delete_new_quote"] * scaled(0.001, 1)
            + ["production"] * scaled(0.03, 4)
            + ["finish_production"] * scaled(0.01, 1)
        )
        self.rng.shuffle(kinds)
        return kinds

    def run(self) -> SimulationFacts:
        kinds = self.plan()
        total = len(kinds)
        tail = max(min(total // 4, WAL_TAIL_CAP), min(total, 20))
        head = total - tail
        batch = max(1, head // 40)
        wal_first_at = ""
        self.conn.execute("BEGIN")
        for i, kind in enumerate(kinds):
            # +1 s for the WAL-only tail: its first timestamp is later than any checkpointed one
            self.now_s = 1 + i * 3598 // total + (i >= head)
            self.now = self.clock.at(self.now_s)
            if i == head:
                wal_first_at = self.now
            getattr(self, kind)()
            if i >= head or (i + 1) % batch == 0 or i + 1 == head:
                self.conn.execute("COMMIT")
                if i < head:
                    self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                self.conn.execute("BEGIN")
        self.conn.execute("COMMIT")
        return SimulationFacts(total, head, tail, wal_first_at)

    # ------------------------------------------------------------------ helpers
    def _old_quote(self, *, deletable: bool = False) -> int:
        while True:
            qid = self.rng.randint(1, self.old_quotes)
            if qid in self.deleted_quotes or (deletable and qid == self.old_quotes):
                continue
            return qid

    def _quote_with_items(self) -> tuple[int, list[tuple[int, int]]]:
        while True:
            qid = self._old_quote()
            items = self.conn.execute(
                "SELECT id, qty FROM quote_items WHERE quote_id = ? ORDER BY id", (qid,)
            ).fetchall()
            if items:
                return qid, items

    def _any_part(self) -> int:
        if self.new_parts and self.rng.random() < 0.4:
            return self.rng.choice(self.new_parts)
        return self.rng.randint(1, self.old_parts)

    def _price_cents(self, pid: int) -> int:
        return self.conn.execute("SELECT price_cents FROM parts WHERE id = ?", (pid,)).fetchone()[0]

    def _item(self, qid: int) -> None:
        pid = self._any_part()
        unit = round(self._price_cents(pid) / 100 * self.rng.uniform(0.95, 1.35), 2)
        qty = self.rng.choice((1, 2, 5, 10, 20, 50, 100))
        self.ledger.insert(
            "quote_items", {"quote_id": qid, "part_id": pid, "qty": qty, "unit_price": unit}
        )

    def _upload(self, pid: int, rev: str, user: int) -> int:
        pn = c.part_number(pid)
        rel = f"parts/{pn}/drawing-rev-{rev}.pdf"
        data = c.pdf_bytes(
            f"{pn} drawing rev. {rev}", (f"Part {pn}", f"Drawing V-{10000 + pid}", "v2.0.1")
        )
        target = self.uploads / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.uploads_done += 1
        return self.ledger.insert(
            "file_records",
            {
                "filename": f"drawing-rev-{rev}.pdf",
                "path": rel,
                "sha256": c.sha256_hex(data),
                "size": len(data),
                "mime_type": "application/pdf",
                "entity_type": "part",
                "entity_id": pid,
                "created_at": self.now,
                "uploaded_by": user,
            },
        )

    def _touch_quote(self, qid: int) -> None:
        self.ledger.update("quotes", qid, {"updated_at": self.now})

    # ------------------------------------------------------------------ actions
    def new_part(self) -> None:
        rng = self.rng
        user = rng.choice(ENGINEERS)
        expected = self.old_parts + len(self.new_parts) + 1
        drawing = f"V-{10000 + expected}-A" if rng.random() < 0.6 else None
        pid = self.ledger.insert(
            "parts",
            {
                "part_number": c.part_number(expected),
                "name": part_name(rng),
                "material_id": rng.randint(1, len(c.MATERIALS)),
                "created_at": self.now,
                "updated_at": self.now,
                "created_by": user,
                "drawing_number": drawing,
                "price_cents": rng.randrange(1_500, 450_000),
            },
        )
        assert pid == expected, (pid, expected)
        self.new_parts.append(pid)
        if self.uploads_done < UPLOAD_CAP and rng.random() < 0.5:
            fid = self._upload(pid, "A", user)
            self.ledger.update("parts", pid, {"file_id": fid})

    def edit_new_part(self) -> None:
        if not self.new_parts:
            return self.new_part()
        pid = self.rng.choice(self.new_parts)
        now = self.ledger.touch("parts", pid)
        self.ledger.update(
            "parts",
            pid,
            {
                "name": now["name"] + " (opraveno)",
                "price_cents": now["price_cents"] + 1_000,
                "updated_at": self.now,
            },
        )

    def edit_old_part(self) -> None:
        rng = self.rng
        pid = rng.randint(1, self.old_parts)
        now = self.ledger.touch("parts", pid)
        fields = [f for f in ("name", "price_cents", "drawing_number") if rng.random() < 0.5]
        changes: dict = {"updated_at": self.now}
        for f in fields or ["price_cents"]:
            if f == "name":
                changes["name"] = now["name"] + " – úprava"
            elif f == "price_cents":
                factor = rng.choice((0.9, 1.05, 1.12, 1.2))
                changes["price_cents"] = max(1, round(now["price_cents"] * factor)) + 1
            else:
                old = now["drawing_number"]
                rev = "D" if old is None or not old.endswith("D") else "E"
                changes["drawing_number"] = f"V-{10000 + pid}-{rev}"
        self.ledger.update("parts", pid, changes)

    def new_rev_old_part(self) -> None:
        if self.uploads_done >= UPLOAD_CAP:
            return self.edit_old_part()
        pid = self.rng.randint(1, self.old_parts)
        revs = self.conn.execute(
            "SELECT COUNT(*) FROM file_records WHERE entity_type = 'part' AND entity_id = ?", (pid,)
        ).fetchone()[0]
        rev = chr(ord("A") + revs)
        fid = self._upload(pid, rev, self.rng.choice(ENGINEERS))
        self.ledger.update(
            "parts",
            pid,
            {"file_id": fid, "drawing_number": f"V-{10000 + pid}-{rev}", "updated_at": self.now},
        )

    def new_quote(self) -> None:
        rng = self.rng
        expected = self.conn.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM quotes").fetchone()[0]
        discount = rng.choice(c.DISCOUNTS) if rng.random() < 0.5 else 0.0
        qid = self.ledger.insert(
            "quotes",
            {
                "quote_number": c.quote_number(self.deploy.year, expected),
                "customer_name": rng.choice(c.CUSTOMERS),
                "status": rng.choice(("draft", "sent")),
                "created_at": self.now,
                "updated_at": self.now,
                "created_by": rng.choice(SALES),
                "discount_pct": discount,
            },
        )
        assert qid == expected
        self.new_quotes.append(qid)
        for _ in range(rng.randint(1, 4)):
            self._item(qid)

    def delete_new_quote(self) -> None:
        if not self.new_quotes:
            return self.new_quote()
        qid = self.new_quotes.pop(self.rng.randrange(len(self.new_quotes)))
        self._delete_quote(qid)

    def edit_old_quote(self) -> None:
        rng = self.rng
        qid = self._old_quote()
        now = self.ledger.touch("quotes", qid)
        changes: dict = {"updated_at": self.now}
        fields = [f for f in ("status", "customer_name", "discount_pct") if rng.random() < 0.5]
        for f in fields or ["discount_pct"]:
            if f == "status":
                changes["status"] = rng.choice([s for s in c.QUOTE_STATUSES if s != now["status"]])
            elif f == "customer_name":
                changes["customer_name"] = now["customer_name"] + " (nová adresa)"
            else:
                changes["discount_pct"] = rng.choice(
                    [d for d in c.DISCOUNTS if d != now["discount_pct"]]
                )
        self.ledger.update("quotes", qid, changes)

    def add_item_old_quote(self) -> None:
        qid = self._old_quote()
        self._item(qid)
        self._touch_quote(qid)

    def edit_old_item(self) -> None:
        qid, items = self._quote_with_items()
        iid, qty = self.rng.choice(items)
        self.ledger.update("quote_items", iid, {"qty": qty + self.rng.randint(1, 20)})
        self._touch_quote(qid)

    def delete_old_item(self) -> None:
        while True:
            qid, items = self._quote_with_items()
            candidates = [i for i, _ in items if i != self.old_max_item]
            if candidates:
                break
        self.ledger.delete("quote_items", self.rng.choice(candidates))
        self._touch_quote(qid)

    def delete_old_quote(self) -> None:
        qid = self._old_quote(deletable=True)
        self.deleted_quotes.add(qid)
        self._delete_quote(qid)

    def _delete_quote(self, qid: int) -> None:
        # the app deletes the items itself; ON DELETE CASCADE would do the same
        for (iid,) in self.conn.execute(
            "SELECT id FROM quote_items WHERE quote_id = ? ORDER BY id", (qid,)
        ).fetchall():
            self.ledger.delete("quote_items", iid)
        self.ledger.delete("quotes", qid)

    def production(self) -> None:
        rng = self.rng
        finished = None
        if rng.random() < 0.6:
            finished = self.clock.at(min(self.now_s + rng.randrange(60, 1800), 3599))
        rid = self.ledger.insert(
            "production_records",
            {
                "part_id": self._any_part(),
                "quantity": rng.randint(1, 500),
                "machine": rng.choice(c.MACHINES),
                "started_at": self.now,
                "finished_at": finished,
                "created_by": rng.choice(OPERATORS or ALL_USERS),
            },
        )
        if finished is None:
            self.running.append(rid)

    def finish_production(self) -> None:
        if not self.running:
            return self.production()
        rid = self.running.pop(0)
        self.ledger.update("production_records", rid, {"finished_at": self.now})

"""Relink's link side: the files table's entity links follow the rows they name.

* a record's ``entity_type``/``entity_id`` naming a bundle row that was re-imported under
  another key gets the new key (:func:`follow_entity`);
* every bundle row with a foreign key into the files table (the new schema's ``parts.file_id``)
  makes the record it names point back at the row — ``entity_type='part'``,
  ``entity_id=<the part's key in the target>``, the old schema's only way to say it
  (:func:`link_file_ids`).
"""

from __future__ import annotations

from typing import Any

from recovery.model.kinds import RowKind
from recovery.files.relink_draft import Draft
from recovery.files.relink_match import Matcher
from recovery.files.relink_sql import KIND

Row = dict[str, Any]


def follow_entity(draft: Draft, m: Matcher, b: Row, rec: Row) -> None:
    """A record's entity link naming a bundle row that moved follows the row's key."""
    c = m.cfg
    ref = m.entity_ref(b)
    if ref is None:
        return
    t, bkey, eid = ref
    row = next(iter(m.bundle_row(t, bkey, eid)), None)
    if row is None or row.get(KIND) != RowKind.INSERTED:
        return  # a row the backup already had keeps its key
    new = m.target_key(t, row)
    if new is None:
        draft.report["links_unresolved"].append(
            {
                "record_key": rec["_key"],
                "entity_type": b.get(c.entity_type),
                "entity_id": eid,
                "reason": f"{t} row {eid} is not in the target",
            }
        )
        return
    draft.fix(rec, c.entity_id, new, f"{t} {eid} was re-imported as {new}")


def link_file_ids(draft: Draft, m: Matcher, targets: dict[Any, Row]) -> None:
    """Rows with a new-schema foreign key into the files table (``parts.file_id``): the record
    it names points back at the row. ``targets``: bundle file record key -> its target record."""
    c = m.cfg
    if not (c.entity_type and c.entity_id):
        return
    owners: dict[Any, tuple[str, Any]] = {}
    for name, t in m.bundle.new.tables.items():
        for fk in t.foreign_keys:
            if (
                fk.ref_table != c.table
                or len(fk.columns) != 1
                or name == c.table
                or name not in m.bundle_tables
            ):
                continue
            fcol = fk.columns[0]
            rows = m.fk_rows(name, fcol)  # only the rows that name a file, not the whole table
            # Records from before the deploy: the same key in the target (or its remap).
            m.load_records(m.file_key(r[fcol]) for r in rows if r[fcol] not in targets)
            for row in rows:
                _link_one(draft, m, targets, owners, name, fcol, row)


def _link_one(
    draft: Draft,
    m: Matcher,
    targets: dict[Any, Row],
    owners: dict[Any, tuple[str, Any]],
    name: str,
    fcol: str,
    row: Row,
) -> None:
    """Point the record ``row[fcol]`` names at ``row`` (one record links one row at most)."""
    c = m.cfg
    fid = row[fcol]
    rec = targets.get(fid)
    if rec is None:  # a record from before the deploy: same key in the target
        rec = m.target_record(m.file_key(fid))
    owner = m.target_key(name, row)
    if rec is None or owner is None:
        draft.report["links_unresolved"].append(
            {
                "record_key": fid,
                "entity_type": name.rstrip("s"),
                "entity_id": row.get(m.bkey(name)),
                "reason": f"{c.table} row {fid} is not in the target"
                if rec is None
                else f"{name} row {row.get(m.bkey(name))} is not in the target",
            }
        )
        return
    claimed = owners.setdefault(rec["_key"], (name, owner))
    if claimed != (name, owner):
        draft.report["links_unresolved"].append(
            {
                "record_key": rec["_key"],
                "entity_type": name.rstrip("s"),
                "entity_id": owner,
                "reason": f"{claimed[0]} row {claimed[1]} names this file too; the record can link one",
            }
        )
        return
    etype = draft.current(rec, c.entity_type)
    if etype not in (name, name.rstrip("s")):
        draft.fix(rec, c.entity_type, name.rstrip("s"), f"{name}.{fcol} names this file")
    draft.fix(rec, c.entity_id, owner, f"{name}.{fcol} names this file")

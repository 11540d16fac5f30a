"""Is this backup a restore point of *this* live database? Refuse the pairings that are wrong.

* ``--backup`` naming the live DB itself, by any path (same device and inode).
* A backup of **another installation** of the same application: same tables and revisions, other
  rows. The evidence is a bounded sample of rows that existed at snapshot time: the first
  :data:`SAMPLE_ROWS` rows by key of every table. For each sampled key present on both sides, the
  row *agrees* when at least half of its shared non-key columns hold the same value (half, not
  all: a column the upgrade rewrote, or a user's edit after the deploy, must not make a row
  disagree). Refused when at least :data:`MIN_PRESENT` sampled keys are present on both sides and
  fewer than :data:`AGREE_THRESHOLD` of them agree — "most keys present on both sides with
  different content". On the sample worlds: the same installation agrees on 100% of 199 keys, a
  world of another seed on 14% of 221 (its reference tables, materials and users, are identical).
  With a snapshot manifest that carries an ``identity`` (:func:`row_identity`,
  hashes of the same sample taken at snapshot time) the manifest's hashes are compared instead of
  the backup file's rows.
* A second rollback of a DB that is already at the backup's revision and holds a re-import
  (``_recovery_applied``): the earlier run is named.
"""

from __future__ import annotations

import hashlib
import json
import os
from contextlib import closing
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.engine.base import Connection
from recovery.errors import RecoveryError
from recovery.engine.schema import APPLIED_TABLE
from recovery.engine.sqlbuild import and_all, col, is_same, sql, table
from recovery.engine import open_engine

SAMPLE_ROWS = 200
"""Rows sampled per table (the first by key): bounded work whatever the size of the DB."""
MAX_TABLES = 64
MIN_PRESENT = 20
"""Below this many sampled keys present on both sides there is no evidence either way."""
AGREE_THRESHOLD = 0.5
"""A pairing whose present keys agree less often than this is another installation."""
BOOKKEEPING = {"alembic_version", APPLIED_TABLE}


def refuse_wrong_pairing(db: Path, backup: Path, same_installation: bool = False) -> dict[str, Any]:
    """Refuse (exit 2) a backup that is the live DB itself or of another installation; returns
    the evidence (for the journal). ``same_installation``: the operator vouches for the backup,
    so the row-sample check (a heuristic: users who edited most sampled rows after the deploy look
    like another installation) is skipped; the backup being the live DB itself is still refused."""
    if os.path.samefile(db, backup):
        raise RecoveryError(
            f"--backup {backup} is the live database {db} itself",
            "pass the pre-deploy backup file (recovery snapshot writes one)",
        )
    if same_installation:
        return {"source": "--same-installation: not checked"}
    from recovery.capture.manifest import read_manifest

    manifest = read_manifest(backup)
    identity = (manifest or {}).get("identity")
    if identity and identity.get("method") == IDENTITY_METHOD:
        evidence = compare_identity(db, identity)
        evidence["source"] = "manifest identity"
    else:
        evidence = compare_rows(backup, db)
        evidence["source"] = "rows of the backup"
    present, agree = evidence["present"], evidence["agree"]
    if present >= MIN_PRESENT and agree < AGREE_THRESHOLD * present:
        raise RecoveryError(
            f"{backup} looks like a backup of another database: of {present} sampled rows whose keys "
            f"exist in both, only {agree} hold the same content ({evidence['source']})",
            "pass the backup taken from this installation's database (or --same-installation if it is)",
        )
    return evidence


# ---------------------------------------------------------------------------------------------
# the sample of rows


def _key_columns(conn: Connection, schema: str, name: str) -> tuple[list[str], list[str]]:
    """(primary-key columns in key order, every column)."""
    info = exp.select(col("name"), col("pk")).from_(
        exp.func("pragma_table_info", exp.Placeholder(), exp.Placeholder())
    )
    rows = conn.execute(sql(info), (name, schema)).fetchall()
    key = [n for n, pk in sorted((r for r in rows if r[1]), key=lambda r: r[1])]
    return key, [r[0] for r in rows]


def _tables(conn: Connection, schema: str) -> list[str]:
    q = (
        exp.select(col("name"))
        .from_(table("sqlite_master", schema))
        .where(
            exp.and_(
                exp.EQ(this=col("type"), expression=exp.Literal.string("table")),
                exp.Not(this=exp.Like(this=col("name"), expression=exp.Literal.string("sqlite_%"))),
            )
        )
        .order_by(col("name"))
    )
    return [r[0] for r in conn.execute(sql(q)) if r[0] not in BOOKKEEPING][:MAX_TABLES]


def compare_rows(backup: Path, db: Path) -> dict[str, Any]:
    """Set-based inside SQLite: per table, the first :data:`SAMPLE_ROWS` backup rows by key joined
    to the live rows of the same key; counts of keys present on both sides and of rows agreeing
    on at least half their shared non-key columns."""
    present = agree = 0
    per_table: dict[str, list[int]] = {}
    with closing(open_engine(db).open_pair(open_engine(backup))) as pair:
        live_tables = set(_tables(pair, "new"))
        for name in _tables(pair, "old"):
            if name not in live_tables:
                continue
            key, old_cols = _key_columns(pair, "old", name)
            new_key, new_cols = _key_columns(pair, "new", name)
            if not key or key != new_key:
                continue
            shared = [c for c in old_cols if c in new_cols and c not in key]
            if not shared:
                continue
            sample = (
                exp.select("*")
                .from_(table(name, "old"))
                .order_by(*[col(k) for k in key])
                .limit(SAMPLE_ROWS)
            )
            equal = exp.Add(this=exp.Literal.number(0), expression=exp.Literal.number(0))
            for c in shared:
                equal = exp.Add(
                    this=equal,
                    expression=exp.Cast(
                        this=is_same(col(c, "o"), col(c, "n")), to=exp.DataType.build("INT")
                    ),
                )
            agrees = exp.If(
                this=exp.GTE(
                    this=exp.Mul(this=exp.Literal.number(2), expression=exp.Paren(this=equal)),
                    expression=exp.Literal.number(len(shared)),
                ),
                true=exp.Literal.number(1),
                false=exp.Literal.number(0),
            )
            q = (
                exp.select(
                    exp.func("count", exp.Star()),
                    exp.func("coalesce", exp.func("sum", agrees), exp.Literal.number(0)),
                )
                .from_(
                    exp.Subquery(
                        this=sample, alias=exp.TableAlias(this=exp.to_identifier("o", quoted=True))
                    )
                )
                .join(
                    table(name, "new", "n"),
                    on=and_all(exp.EQ(this=col(k, "o"), expression=col(k, "n")) for k in key),
                )
            )
            p, a = pair.execute(sql(q)).fetchone()
            per_table[name] = [p, a]
            present += p
            agree += a
    return {"present": present, "agree": agree, "tables": per_table}


IDENTITY_METHOD = "row-sample/1"
IDENTITY_ROWS = 100
"""Rows per table in a manifest's identity (a 10-table, 10-column app: about 100 KB of JSON)."""


def _cell_hash(v: Any) -> str:
    """A short, type-tagged hash of one value (1 and 1.0 and '1' differ, as SQLite compares them)."""
    tag = type(v).__name__
    raw = v if isinstance(v, bytes) else repr(v).encode("utf-8")
    return hashlib.sha256(tag.encode() + b"\0" + raw).hexdigest()[:10]


def row_identity(conn: Connection) -> dict[str, Any]:
    """The identity a snapshot manifest records: for every table, the first :data:`IDENTITY_ROWS`
    rows by key as ``[key values, [hash of each non-key column, in "columns" order]]``. Bounded
    (``LIMIT``) whatever the DB's size."""
    out: dict[str, Any] = {"method": IDENTITY_METHOD, "sample": IDENTITY_ROWS, "tables": {}}
    for name in _tables(conn, "main"):
        key, cols = _key_columns(conn, "main", name)
        if not key:
            continue
        others = [c for c in cols if c not in key]
        q = (
            exp.select(*[col(c) for c in key + others])
            .from_(table(name, "main"))
            .order_by(*[col(k) for k in key])
            .limit(IDENTITY_ROWS)
        )
        rows = [
            [list(r[: len(key)]), [_cell_hash(v) for v in r[len(key) :]]]
            for r in conn.execute(sql(q))
        ]
        out["tables"][name] = {
            "key": key,
            "columns": others,
            "rows": [r for r in rows if _json_key(r[0])],
        }
    return out


def _json_key(values: list[Any]) -> bool:
    return all(isinstance(v, (int, str)) for v in values)


def compare_identity(db: Path, identity: dict[str, Any]) -> dict[str, Any]:
    """The same agreement count as :func:`compare_rows`, with the manifest's hashes standing for
    the backup's rows; the live rows are fetched by key, at most :data:`SAMPLE_ROWS` a table."""
    present = agree = 0
    per_table: dict[str, list[int]] = {}
    with open_engine(db).readonly("live database") as conn:
        live = set(_tables(conn, "main"))
        for name, entry in identity.get("tables", {}).items():
            if name not in live or not entry.get("rows"):
                continue
            key, cols = _key_columns(conn, "main", name)
            if key != entry.get("key"):
                continue
            p = a = 0
            # one statement per list of columns (the same for every row of a table), not per row
            by_columns: dict[tuple[str, ...], str] = {}
            for key_values, row_hashes in entry["rows"][:SAMPLE_ROWS]:
                hashes = dict(
                    zip(entry.get("columns", []), row_hashes, strict=False)
                )  # a manifest's shape is evidence, not an error
                shared = [c for c in hashes if c in cols and c not in key]
                if not shared:
                    continue
                stmt = by_columns.get(tuple(shared))
                if stmt is None:
                    stmt = by_columns[tuple(shared)] = sql(
                        exp.select(*[col(c) for c in shared])
                        .from_(table(name, "main"))
                        .where(
                            and_all(exp.EQ(this=col(k), expression=exp.Placeholder()) for k in key)
                        )
                    )
                row = conn.execute(stmt, tuple(key_values)).fetchone()
                if row is None:
                    continue
                p += 1
                same = sum(_cell_hash(v) == hashes[c] for c, v in zip(shared, row, strict=True))
                a += 2 * same >= len(shared)
            per_table[name] = [p, a]
            present += p
            agree += a
    return {"present": present, "agree": agree, "tables": per_table}


# ---------------------------------------------------------------------------------------------
# a second rollback


def refuse_second_rollback(
    db: Path, backup: Path, old_rev: str | None, new_rev: str | None
) -> None:
    """Refuse a rollback of a DB that is already at the backup's revision and holds a re-import
    (``_recovery_applied``): it was rolled back already. Names the earlier run (its bundle id and
    time, and its run folder when one is found beside the DB)."""
    if not old_rev or old_rev != new_rev:
        return
    with open_engine(db).readonly("live database") as conn:
        has = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type='table' AND name=?", (APPLIED_TABLE,)
        ).fetchone()
        if not has:
            return
        q = (
            exp.select(col("bundle_id"), col("applied_at"))
            .from_(table(APPLIED_TABLE, "main"))
            .order_by(col("applied_at"))
        )
        applied = conn.execute(sql(q)).fetchall()
    if not applied:
        return
    bundle_id, at = applied[-1]
    runs = _runs_of(db, {str(b) for b, _ in applied})
    where = f", run folder {runs[0]}" if runs else ""
    raise RecoveryError(
        f"{db} is already at the backup's revision {old_rev} and holds the re-import of bundle {bundle_id} "
        f"(applied {at}{where}): it was rolled back already",
        "nothing to do; see that run's report (recovery report RUN_DIR), or restore its safety copy to start over",
    )


def _runs_of(db: Path, bundle_ids: set[str]) -> list[Path]:
    """Run folders (``journal.json``) beside ``db`` or one level deeper whose bundle is one of
    ``bundle_ids``."""
    found = []
    parent = db.resolve().parent
    for journal in [*parent.glob("*/journal.json"), *parent.glob("*/*/journal.json")][:200]:
        try:
            data = json.loads(journal.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if str(data.get("steps", {}).get("extract", {}).get("bundle_id")) in bundle_ids:
            found.append(journal.parent)
    return found

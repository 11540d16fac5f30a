"""The report's numbers, computed once from a :class:`Bundle` (and an :class:`Outcome` when a
re-import ran) into one JSON-able dict that every renderer (HTML, Markdown, CSV, JSON) reads.

Why one dict: the HTML, the Markdown and ``report.json`` must show *the same* numbers, and a dry
run's bundle lives in a temporary folder — so ``recovery report RUN_DIR`` re-renders from the
``report`` section of ``report.json`` alone, never from the bundle again. Its shape is documented
in ``docs/REPORT.md``.

Row attribution (per table, per user) reads the bundle's ``rows.db``: rows of kind ``inserted``
are *created*, ``updated`` are *changed* (``closure`` rows are context, not work). A created row
belongs to its ``created_by`` / ``uploaded_by`` user; a changed row to ``updated_by`` when the table
has it, else to the record's owner (``created_by`` / ``uploaded_by``).
"""
from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from recovery.bundle import Bundle
from recovery.lost import LOST_TABLE, NATURAL_ORDER, SAMPLE_LIMIT, as_dict, has_lost, iter_rows, open_ro, parse_key
from recovery.outcome import Outcome
from recovery.schema import Table
from recovery.timestamps import find_timestamp_columns

REPORT_VERSION = 1
CREATOR_COLUMNS = ("created_by", "uploaded_by", "author_id", "owner_id", "user_id")
CHANGER_COLUMNS = ("updated_by", "modified_by", "changed_by", "edited_by")
USER_TABLES = ("users", "user", "accounts", "account")
USER_LABEL_COLUMNS = ("full_name", "name", "display_name", "username", "login", "email")
NOT_IN_OLD_SCHEMA = "table not in the old schema"
BIN_CHOICES = (5, 10, 15, 30, 60, 120, 360, 720, 1440)
MAX_BINS = 48


@dataclass(frozen=True, slots=True)
class _Row:
    table: str
    kind: str  # created | changed
    key: tuple[Any, ...]
    user: Any
    when: datetime | None
    lost: int = 0  # lost values of this record


_PerKey = Callable[[sqlite3.Connection, str], dict[tuple[Any, ...], int]]


@dataclass
class _Lost:
    """The lost values as the report needs them: exact counts, and a bounded sample to list."""

    sample: list[dict[str, Any]]  # sorted by table, key (numbers numerically), column; at most SAMPLE_LIMIT
    total: int
    by_table: Counter[str]
    by_reason: Counter[str]
    records: int  # distinct (table, key)
    per_key: _PerKey  # (rows.db connection, table) -> {key: lost values of that record}


@dataclass(frozen=True)
class _NoUserColumn:
    """The 'user' of rows in a table that records no user at all."""

    table: str


def _key(v: Any) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_time(value: Any) -> datetime | None:
    """A stored timestamp (ISO text or Unix epoch s/ms) as naive UTC-ish datetime, or None."""
    if value is None or isinstance(value, bytes):
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = value / 1000.0 if abs(value) > 1e11 else float(value)
        try:
            return datetime.fromtimestamp(seconds, UTC).replace(tzinfo=None)
        except (OverflowError, OSError, ValueError):
            return None
    text = str(value).strip()
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        try:
            return parse_time(float(text))
        except ValueError:
            return None
    return dt.astimezone(UTC).replace(tzinfo=None) if dt.tzinfo else dt


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat(sep="T", timespec="seconds") if dt else None


def _time_column(t: Table, kind: str) -> str | None:
    found = find_timestamp_columns(t)
    col = found.get("created" if kind == "created" else "updated")
    if col:
        return col
    for c in t.columns:  # started_at, uploaded_on, event_time …
        if c.name.endswith(("_at", "_on", "_time")):
            return c.name
    return None


def _user_columns(t: Table, users_table: str | None) -> tuple[str | None, str | None]:
    """(creator column, changer column) of a table; the changer falls back to the creator."""
    names = set(t.column_names)
    fk_user = [fk.columns[0] for fk in t.foreign_keys if users_table and fk.ref_table == users_table and len(fk.columns) == 1]
    creator = next((c for c in CREATOR_COLUMNS if c in names), None)
    if creator is None:
        creator = next((c for c in fk_user if c not in CHANGER_COLUMNS), None)
    changer = next((c for c in CHANGER_COLUMNS if c in names), None) or creator
    return creator, changer


def _read_rows(bundle: Bundle, users_table: str | None,
               per_key: _PerKey | None = None) -> tuple[list[_Row], dict[str, dict[str, Any]]]:
    rows: list[_Row] = []
    attribution: dict[str, dict[str, Any]] = {}
    if not bundle.rows_db.is_file():
        return rows, attribution
    conn = sqlite3.connect(f"file:{bundle.rows_db}?mode=ro", uri=True)
    try:
        present = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        for name in sorted(bundle.new.data_tables):
            t = bundle.new.table(name)
            if t is None or name not in present:
                continue
            creator, changer = _user_columns(t, users_table)
            created_at, updated_at = _time_column(t, "created"), _time_column(t, "changed")
            attribution[name] = {"created_by": creator, "changed_by": changer,
                                 "changed_by_is_owner": changer is not None and changer == creator,
                                 "created_time": created_at, "changed_time": updated_at}
            key_cols = list(t.key)
            cols = key_cols + [c for c in (creator, changer, created_at, updated_at) if c]
            sql = (f"SELECT {', '.join(_q(c) for c in cols)}, _recovery_kind FROM {_q(name)} "
                   f"WHERE _recovery_kind IN ('inserted', 'updated')")
            lost = per_key(conn, name) if per_key else {}  # one table's records with lost values at a time
            for rec in conn.execute(sql):
                d = dict(zip(cols, rec[:-1]))
                kind = "created" if rec[-1] == "inserted" else "changed"
                user_col = creator if kind == "created" else changer
                time_col = created_at if kind == "created" else updated_at
                key = tuple(d[c] for c in key_cols)
                rows.append(_Row(name, kind, key, d.get(user_col) if user_col else _NoUserColumn(name),
                                 parse_time(d.get(time_col)) if time_col else None, lost.get(key, 0)))
    finally:
        conn.close()
    return rows, attribution


def _users_table(bundle: Bundle) -> str | None:
    tables = set(bundle.new.tables) | set(bundle.old.tables)
    named = next((u for u in USER_TABLES if u in tables), None)
    if named:
        return named
    refs = Counter(fk.ref_table for t in bundle.new.tables.values() for fk in t.foreign_keys
                   if fk.columns and fk.columns[0] in CREATOR_COLUMNS + CHANGER_COLUMNS)
    return refs.most_common(1)[0][0] if refs else None


def _user_names(bundle: Bundle, users_table: str | None, ids: set[Any]) -> tuple[dict[Any, str], str]:
    """Names for user ids: the bundle's own users rows first, then the backup (read-only)."""
    if not users_table or not ids:
        return {}, "ids"
    names: dict[Any, str] = {}
    sources = []
    candidates: list[tuple[Path, Table | None, str]] = [(bundle.rows_db, bundle.new.table(users_table), "bundle")]
    backup = ((bundle.manifest.get("sources") or {}).get("backup") or {}).get("path")
    if backup:
        candidates.append((Path(backup), bundle.old.table(users_table), "backup"))
    for path, t, source in candidates:
        missing = ids - set(names)
        if not missing or t is None or not path.is_file():
            continue
        label_cols = [c for c in USER_LABEL_COLUMNS if c in t.column_names]
        pk = t.primary_key[0] if len(t.primary_key) == 1 else None
        if not label_cols or pk is None:
            continue
        try:
            if source == "backup":
                from recovery.sqlite_io import open_readonly

                conn = open_readonly(path, "backup")
            else:
                conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        except Exception:  # noqa: BLE001 - names are a nicety; ids are shown instead
            continue
        try:
            sql = f"SELECT {_q(pk)}, {', '.join(_q(c) for c in label_cols)} FROM {_q(users_table)}"
            for rec in conn.execute(sql):
                if rec[0] in missing and rec[0] not in names:
                    label = next((str(v) for v in rec[1:] if v not in (None, "")), None)
                    if label:
                        names[rec[0]] = label
                        sources.append(source)
        except sqlite3.Error:
            pass
        finally:
            conn.close()
    return names, "+".join(sorted(set(sources))) or "ids"


def _user_label(uid: Any, names: dict[Any, str]) -> str:
    if isinstance(uid, _NoUserColumn):
        return f"(no user column in {uid.table})"
    if uid is None:
        return "(not recorded)"
    return names.get(uid) or f"user #{uid}"


def _activity(rows: list[_Row], deploy: datetime | None) -> dict[str, Any]:
    timed = [r for r in rows if r.when is not None and (deploy is None or r.when >= deploy)]
    untimed = Counter(r.table for r in rows if r.when is None or (deploy is not None and r.when < deploy))
    if not timed:
        return {"bin_minutes": 5, "start": _iso(deploy), "bins": [], "untimed": dict(sorted(untimed.items()))}
    start = deploy or min(r.when for r in timed)  # type: ignore[type-var]
    span = (max(r.when for r in timed) - start).total_seconds() / 60  # type: ignore[operator]
    minutes = next((m for m in BIN_CHOICES if span / m < MAX_BINS), BIN_CHOICES[-1])
    counts: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    for r in timed:
        idx = int((r.when - start).total_seconds() // (minutes * 60))  # type: ignore[operator]
        counts[(idx, r.table)][r.kind] += 1
    bins = [{"start": _iso(start + timedelta(minutes=minutes * i)), "table": t,
             "created": c["created"], "changed": c["changed"]} for (i, t), c in sorted(counts.items())]
    return {"bin_minutes": minutes, "start": _iso(start), "bins": bins, "untimed": dict(sorted(untimed.items()))}


def _files(bundle: Bundle, outcome: Outcome | None) -> dict[str, Any]:
    manifest_files = bundle.manifest.get("files") or {}
    records = manifest_files.get("records") or [] if isinstance(manifest_files, dict) else []
    by_status = Counter(str(r.get("status", "recorded")) for r in records)
    relink = outcome.files if outcome else None
    problems = {}
    if isinstance(relink, dict):
        problems = {k: len(v) for k, v in relink.items() if isinstance(v, list) and k in ("missing", "unsafe")}
    return {"affected": len(records), "by_status": dict(sorted(by_status.items())),
            "problems": problems, "relink": relink,
            "list": [{"path": r.get("path"), "record": r.get("record_key"), "size": r.get("size"),
                      "status": r.get("status")} for r in records]}


def build(bundle: Bundle, outcome: Outcome | None, rollback_time: str | None = None) -> dict[str, Any]:
    """The ``report`` section of report.json: every number the renderers show."""
    deploy_text = bundle.manifest.get("deploy_time")
    deploy = parse_time(deploy_text) if deploy_text else None
    users_table = _users_table(bundle)
    lost_info = _lost(bundle, outcome)
    rows, attribution = _read_rows(bundle, users_table, lost_info.per_key)

    old_tables = set(bundle.old.tables)
    mapped_skip = {n for n, tm in bundle.mapping.tables.items() if getattr(tm, "skip", False)}

    def carried_table(t: str) -> bool:
        if t not in old_tables or t in mapped_skip:
            return False
        if outcome is not None and not outcome.already_applied and outcome.tables and t not in outcome.tables:
            return False
        return True

    conflicts = [c.to_dict() for c in outcome.conflicts] if outcome is not None else []
    skipped_keys = {(c["table"], tuple(c["key"])) for c in conflicts if c["resolution"] == "skipped"}
    conflict_keys = Counter((c["table"], tuple(c["key"])) for c in conflicts)
    aborted = bool(outcome and outcome.aborted)

    # ---- per table
    counts = bundle.counts
    tables = []
    for name in sorted(set(counts) | {r.table for r in rows}):
        c = counts.get(name, {})
        created, changed, deleted = c.get("inserted", 0), c.get("updated", 0), c.get("deleted", 0)
        if not (created or changed or deleted or lost_info.by_table[name]):
            continue
        to = outcome.tables.get(name) if outcome else None
        if aborted:
            carried, reason = 0, "aborted: nothing was changed"
        elif not carried_table(name):
            carried, reason = 0, NOT_IN_OLD_SCHEMA
        else:
            skipped = to.skipped if to else 0
            carried, reason = max(created + changed - skipped, 0), ("conflict: skipped" if skipped else "")
        tables.append({
            "table": name, "status": c.get("status", ""), "created": created, "changed": changed,
            "deleted": deleted, "carried": carried, "not_carried": created + changed - carried,
            "not_carried_reason": reason if created + changed - carried else "",
            "remapped": to.remapped if to else 0,
            "conflicts": sum(n for (t, _), n in conflict_keys.items() if t == name),
            "lost_values": lost_info.by_table[name],
        })

    # ---- per user
    ids = {r.user for r in rows if r.user is not None and not isinstance(r.user, _NoUserColumn)}
    names, name_source = _user_names(bundle, users_table, ids)
    per_user: dict[Any, Counter[str]] = defaultdict(Counter)
    for r in rows:
        u = per_user[r.user]
        u[r.kind] += 1
        ok = not aborted and carried_table(r.table) and (r.table, r.key) not in skipped_keys
        u["carried"] += ok
        u["conflicts"] += conflict_keys.get((r.table, r.key), 0)
        u["lost_values"] += r.lost
    users = sorted(({"user_id": None if isinstance(uid, _NoUserColumn) else uid, "user": _user_label(uid, names), "created": c["created"],
                     "changed": c["changed"], "carried": c["carried"], "conflicts": c["conflicts"],
                     "lost_values": c["lost_values"]} for uid, c in per_user.items()),
                   key=lambda d: (-(d["created"] + d["changed"]), d["user"]))

    # ---- headline
    created = sum(t["created"] for t in tables)
    changed = sum(t["changed"] for t in tables)
    carried = sum(t["carried"] for t in tables)
    reasons: dict[str, dict[str, Any]] = {}
    for t in tables:
        if t["not_carried"]:
            e = reasons.setdefault(t["not_carried_reason"], {"reason": t["not_carried_reason"], "records": 0, "tables": []})
            e["records"] += t["not_carried"]
            e["tables"].append(t["table"])
    files = _files(bundle, outcome)
    mode = "bundle" if outcome is None else "dry-run" if outcome.dry_run else "rollback"
    needs_review = bool(lost_info.total or conflicts or aborted or files["problems"] or carried < created + changed)
    if outcome is not None:
        verification_failed = bool(outcome.verification) and not outcome.verification.get("ok")
        needs_review = needs_review or outcome.needs_review or verification_failed
    headline = {
        "mode": mode,
        "deploy_time": deploy_text,
        "rollback_time": rollback_time if mode != "bundle" else None,
        "from_revision": bundle.new.alembic_revision, "to_revision": bundle.old.alembic_revision,
        "records_created": created, "records_changed": changed,
        "records_deleted": sum(t["deleted"] for t in tables),
        "records_total": created + changed,
        "carried": carried, "not_carried": created + changed - carried,
        "not_carried_reasons": list(reasons.values()),
        "lost_values": lost_info.total, "lost_reasons": dict(sorted(lost_info.by_reason.items())),
        "records_with_lost_values": lost_info.records,
        "conflicts": len(conflicts), "files_affected": files["affected"],
        "deletes_for_review": len(outcome.deletes_for_review) if outcome else sum(t["deleted"] for t in tables),
        "verified": (bool(outcome.verification.get("ok")) if outcome and outcome.verification else None),
        "verdict": "review needed" if needs_review else "all recovered",
    }
    return {
        "version": REPORT_VERSION,
        "generated_at": datetime.now().isoformat(sep="T", timespec="seconds"),
        "bundle_id": bundle.bundle_id,
        "headline": headline,
        "tables": tables,
        "users": users,
        "user_names_from": name_source,
        "users_table": users_table,
        "attribution": attribution,
        "lost": lost_info.sample,
        "lost_total": lost_info.total,
        "lost_truncated": lost_info.total > len(lost_info.sample),
        "conflicts": conflicts,
        "deletes_for_review": [dict(d, key=list(_key(d.get("key")))) for d in outcome.deletes_for_review]
        if outcome else [],
        "activity": _activity(rows, deploy),
        "files": files,
        "verification": outcome.verification if outcome else {},
    }


def _natural(key: list[Any]) -> tuple[tuple[int, Any], ...]:
    """Sort keys numerically where they are numbers (1, 2, 10 — not 1, 10, 2)."""
    return tuple((0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v)) for v in key)


def _natural_item(x: dict[str, Any]) -> tuple[Any, ...]:
    return (str(x["table"]), _natural(x["key"]), str(x["column"]))


def _reason(reason: Any) -> str:
    return str(reason or "no place in the old schema")


def _lost_from_list(items: list[dict[str, Any]]) -> _Lost:
    """A complete (small) list in memory — an outcome whose lost values all fit in the sample."""
    lost = sorted((dict(x, key=list(_key(x.get("key")))) for x in items), key=_natural_item)
    keys = Counter((x["table"], tuple(x["key"])) for x in lost)

    def per_key(_conn: sqlite3.Connection, table: str) -> dict[tuple[Any, ...], int]:
        return {k: n for (t, k), n in keys.items() if t == table}

    return _Lost(lost, len(lost), Counter(x["table"] for x in lost), Counter(_reason(x.get("reason")) for x in lost),
                 len(keys), per_key)


def _lost_per_key(conn: sqlite3.Connection, table: str) -> dict[tuple[Any, ...], int]:
    if not has_lost(conn):
        return {}
    return {tuple(parse_key(k)): n for k, n in conn.execute(
        f'SELECT "key", count(*) FROM {LOST_TABLE} WHERE "table" = ? GROUP BY "key"', (table,))}


def _lost_from_db(path: Path) -> _Lost | None:
    """Counts by SQL and the first SAMPLE_LIMIT values from a rows.db's ``_recovery_lost``, which
    keeps the complete list (never loaded whole)."""
    if not path.is_file():
        return None
    with closing(open_ro(path)) as conn:
        if not has_lost(conn):
            return None
        sample = sorted((as_dict(r) for r in iter_rows(conn, order=NATURAL_ORDER, limit=SAMPLE_LIMIT)), key=_natural_item)
        by_table: Counter[str] = Counter()
        by_reason: Counter[str] = Counter()
        for table, reason, n in conn.execute(f'SELECT "table", "reason", count(*) FROM {LOST_TABLE} GROUP BY 1, 2'):
            by_table[table] += n
            by_reason[_reason(reason)] += n
        records = conn.execute(f'SELECT count(*) FROM (SELECT DISTINCT "table", "key" FROM {LOST_TABLE})').fetchone()[0]
    return _Lost(sample, sum(by_table.values()), by_table, by_reason, records, _lost_per_key)


def _lost(bundle: Bundle, outcome: Outcome | None) -> _Lost:
    """``Outcome.lost`` when it holds every lost value; else the bundle's ``_recovery_lost`` (the
    same list: the re-import loads it from there)."""
    if outcome is not None and not outcome.lost_truncated:
        return _lost_from_list(outcome.lost)
    found = _lost_from_db(bundle.rows_db)
    if found is not None:
        return found
    info = _lost_from_list(outcome.lost if outcome is not None else [])
    if outcome is not None:  # only the sample is left: keep the exact counts
        info.total, info.by_table = outcome.lost_total, Counter(outcome.lost_by_table())
    return info

"""The report's numbers, computed once from a :class:`Bundle` (and an :class:`Outcome` when a
re-import ran) into one JSON-able dict that every renderer (HTML, Markdown, CSV, JSON) reads.

Why one dict: the HTML, the Markdown and ``report.json`` must show *the same* numbers, and a dry
run's bundle lives in a temporary folder — so ``recovery report RUN_DIR`` re-renders from the
``report`` section of ``report.json`` alone, never from the bundle again. Its shape is documented
in ``docs/REPORT.md``.

Row attribution (per table, per user) reads the bundle's ``rows.db``: rows of kind ``inserted``
are *created*, ``updated`` are *changed* (``closure`` rows are context, not work). A created row
belongs to its ``created_by`` / ``uploaded_by`` user; a changed row to ``updated_by`` when the table
has it, else to the record's owner (``created_by`` / ``uploaded_by``). The counting itself is
set-based SQL on one read-only connection to rows.db (:mod:`recovery.report.aggregate`); here
Python only decides the columns and composes the few groups it returns.
"""

from __future__ import annotations

import sqlite3
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlglot import exp

from recovery.bundle.store import Bundle
from recovery.model.kinds import KIND_COLUMN, RowKind
from recovery.model.values import TableCounts
from recovery.escape import SHOW_LIMIT
from recovery.report.lost import (
    NATURAL_ORDER,
    SAMPLE_LIMIT,
    as_dict,
    cut_value,
    has_lost,
    iter_rows,
    open_ro,
)
from recovery.model.outcome import Outcome, judge, keys_are_lists
from recovery.report import aggregate, notcarried
from recovery.report.tables import LIST_LIMIT
from recovery.report.aggregate import KeyCounts, TablePlan, parse_time
from recovery.engine.schema import Table
from recovery.capture.manifest import release_tag
from recovery.engine.sqlbuild import col, sql, table
from recovery.compare.timestamps import find_timestamp_columns
from recovery.engine.sqlite_io import file_uri

REPORT_VERSION = 1
CREATOR_COLUMNS = ("created_by", "uploaded_by", "author_id", "owner_id", "user_id")
CHANGER_COLUMNS = ("updated_by", "modified_by", "changed_by", "edited_by")
USER_TABLES = ("users", "user", "accounts", "account")
USER_LABEL_COLUMNS = ("full_name", "name", "display_name", "username", "login", "email")
NOT_IN_OLD_SCHEMA = "table not in the old schema"
BIN_CHOICES = (5, 10, 15, 30, 60, 120, 360, 720, 1440)
MAX_BINS = 48


@dataclass
class _Lost:
    """The lost values as the report needs them: exact counts, and a bounded sample to list."""

    sample: list[
        dict[str, Any]
    ]  # sorted by table, key (numbers numerically), column; at most SAMPLE_LIMIT
    total: int
    by_table: Counter[str]
    by_reason: Counter[str]
    records: int  # distinct (table, key)
    per_key: dict[tuple[str, tuple[Any, ...]], int] | None = field(default=None)
    """Lost values per record when the list is in memory; None: the rows.db's ``_recovery_lost``."""


@dataclass(frozen=True)
class _NoUserColumn:
    """The 'user' of rows in a table that records no user at all."""

    table: str


def _key(v: Any) -> tuple[Any, ...]:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat(sep="T", timespec="seconds") if dt else None


def _time_column(t: Table, kind: str) -> str | None:
    found = find_timestamp_columns(t)
    col_name = found.get("created" if kind == "created" else "updated")
    if col_name:
        return col_name
    for c in t.columns:  # started_at, uploaded_on, event_time …
        if c.name.endswith(("_at", "_on", "_time")):
            return c.name
    return None


def _user_columns(t: Table, users_table: str | None) -> tuple[str | None, str | None]:
    """(creator column, changer column) of a table; the changer falls back to the creator."""
    names = set(t.column_names)
    fk_user = [
        fk.columns[0]
        for fk in t.foreign_keys
        if users_table and fk.ref_table == users_table and len(fk.columns) == 1
    ]
    creator = next((c for c in CREATOR_COLUMNS if c in names), None)
    if creator is None:
        creator = next((c for c in fk_user if c not in CHANGER_COLUMNS), None)
    changer = next((c for c in CHANGER_COLUMNS if c in names), None) or creator
    return creator, changer


def _plans(
    conn: sqlite3.Connection | None, bundle: Bundle, users_table: str | None
) -> tuple[list[TablePlan], dict[str, dict[str, Any]]]:
    """The bundle tables of rows.db in name order, with the columns that attribute their rows."""
    plans: list[TablePlan] = []
    attribution: dict[str, dict[str, Any]] = {}
    if conn is None:
        return plans, attribution
    q = (
        exp.select(col("name"))
        .from_(table("sqlite_master", "main"))
        .where(exp.EQ(this=col("type"), expression=exp.Literal.string("table")))
    )
    present = {r[0] for r in conn.execute(sql(q))}
    for name in sorted(bundle.new.data_tables):
        t = bundle.new.table(name)
        if t is None or name not in present:
            continue
        creator, changer = _user_columns(t, users_table)
        created_at, updated_at = _time_column(t, "created"), _time_column(t, "changed")
        attribution[name] = {
            "created_by": creator,
            "changed_by": changer,
            "changed_by_is_owner": changer is not None and changer == creator,
            "created_time": created_at,
            "changed_time": updated_at,
        }
        plans.append(TablePlan(name, tuple(t.key), creator, changer, created_at, updated_at))
    return plans, attribution


def _users_table(bundle: Bundle) -> str | None:
    tables = set(bundle.new.tables) | set(bundle.old.tables)
    named = next((u for u in USER_TABLES if u in tables), None)
    if named:
        return named
    refs = Counter(
        fk.ref_table
        for t in bundle.new.tables.values()
        for fk in t.foreign_keys
        if fk.columns and fk.columns[0] in CREATOR_COLUMNS + CHANGER_COLUMNS
    )
    return refs.most_common(1)[0][0] if refs else None


def _user_names(
    bundle: Bundle, users_table: str | None, ids: set[Any]
) -> tuple[dict[Any, str], str]:
    """Names for user ids: the bundle's own users rows first, then the backup (read-only)."""
    if not users_table or not ids:
        return {}, "ids"
    names: dict[Any, str] = {}
    sources = []
    candidates: list[tuple[Path, Table | None, str]] = [
        (bundle.rows_db, bundle.new.table(users_table), "bundle")
    ]
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
                from recovery.engine import open_engine

                conn = open_engine(path).connect_readonly("backup")
            else:  # the bundle's rows.db: a SQLite file whatever the engine
                from recovery.engine.sqlite import SQLiteEngine

                conn = SQLiteEngine(path).connect_readonly("bundle rows.db")
        except Exception:  # noqa: BLE001 - names are a nicety; ids are shown instead
            continue
        try:
            q = exp.select(col(pk), *[col(c) for c in label_cols]).from_(table(users_table))
            for rec in conn.execute(sql(q)):
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


def _name_lost_users(
    conn: sqlite3.Connection | None,
    bundle: Bundle,
    users_table: str | None,
    sample: list[dict[str, Any]],
) -> None:
    """Set ``user`` on each listed lost value: who created the record (or changed it, for a
    changed record), by name — the user columns and names found as for the per-user section."""
    if conn is None or not sample:
        return
    by_table: dict[str, set[tuple[Any, ...]]] = defaultdict(set)
    for x in sample:
        by_table[x["table"]].add(_key(x.get("key")))
    present = notcarried.present_tables(conn)
    who: dict[tuple[str, tuple[Any, ...]], Any] = {}
    for name, keys in sorted(by_table.items()):
        t = bundle.new.table(name)
        if t is None or name not in present or not t.key:
            continue
        creator, changer = _user_columns(t, users_table)
        if creator is None and changer is None:
            continue
        for k, row in notcarried.rows_of(conn, name, list(t.key), sorted(keys, key=repr)).items():
            column = creator if row.get(KIND_COLUMN) == RowKind.INSERTED else changer
            who[(name, k)] = row.get(column) if column else None
    names, _ = _user_names(bundle, users_table, {u for u in who.values() if u is not None})
    for x in sample:
        k = (x["table"], _key(x.get("key")))
        if k in who:
            x["user"] = _user_label(who[k], names)


def _user_label(uid: Any, names: dict[Any, str]) -> str:
    if isinstance(uid, _NoUserColumn):
        return f"(no user column in {uid.table})"
    if uid is None:
        return "(not recorded)"
    return names.get(uid) or f"user #{uid}"


def _activity(counts: aggregate.ActivityCounts, deploy: datetime | None) -> dict[str, Any]:
    """Bins from the 5-minute counts: ``BIN_CHOICES`` widths are multiples of 5 minutes, so a
    wider bin is a union of 5-minute bins (floor(floor(x / 5) / k) = floor(x / 5k))."""
    untimed = dict(sorted(counts.untimed.items()))
    if not counts.bins or counts.start_us is None:
        return {"bin_minutes": 5, "start": _iso(deploy), "bins": [], "untimed": untimed}
    start = deploy or aggregate.from_us(counts.start_us)
    last = max(b for _, _, b, _ in counts.bins)
    # span / m < MAX_BINS  <=>  span < MAX_BINS * m  <=>  last 5-minute bin < MAX_BINS * m / 5
    minutes = next((m for m in BIN_CHOICES if last < MAX_BINS * m // 5), BIN_CHOICES[-1])
    per: dict[tuple[int, str], Counter[str]] = defaultdict(Counter)
    for table_name, kind, b5, n in counts.bins:
        per[(b5 // (minutes // 5), table_name)][kind] += n
    bins = [
        {
            "start": _iso(start + timedelta(minutes=minutes * i)),
            "table": t,
            "created": c["created"],
            "changed": c["changed"],
        }
        for (i, t), c in sorted(per.items())
    ]
    return {"bin_minutes": minutes, "start": _iso(start), "bins": bins, "untimed": untimed}


def _file_records(bundle: Bundle) -> list[dict[str, Any]]:
    manifest_files = bundle.manifest.get("files") or {}
    return manifest_files.get("records") or [] if isinstance(manifest_files, dict) else []


def files_list(bundle: Bundle) -> list[dict[str, Any]]:
    """The section's ``files.list`` (files.csv's rows): the bundle's file records as the extract
    found them, whatever the outcome."""
    return [
        {
            "path": r.get("path"),
            "record": r.get("record_key"),
            "size": r.get("size"),
            "status": r.get("status"),
        }
        for r in _file_records(bundle)
    ]


def _files(bundle: Bundle, outcome: Outcome | None) -> dict[str, Any]:
    records = _file_records(bundle)
    by_status = Counter(str(r.get("status", "recorded")) for r in records)
    relink = outcome.files if outcome else None
    problems = {}
    if isinstance(relink, dict):
        problems = {
            k: len(v)
            for k, v in relink.items()
            if isinstance(v, list) and v and k in ("missing", "unsafe")
        }
    return {
        "affected": len(records),
        "by_status": dict(sorted(by_status.items())),
        "problems": problems,
        "relink": relink,
        "list": files_list(bundle),
    }


def _open_rows(bundle: Bundle) -> sqlite3.Connection | None:
    if not bundle.rows_db.is_file():
        return None
    return open_ro(bundle.rows_db)


@dataclass
class Prepared:
    """What :func:`build` reads from the bundle alone, read before the re-import's outcome exists
    (:func:`prepare`; a rollback does it on a second core while the re-import writes): the lost
    values' counts and sample, the attribution plans, and each table's attribution with no
    record named in Python. ``conn`` is rows.db, read-only, still holding
    ``temp.recovery_report_lost`` for the tables the outcome's conflicts make :func:`build` scan
    again; it may be used from another thread than the one that opened it, one at a time."""

    bundle_id: str
    conn: sqlite3.Connection | None
    lost: _Lost | None
    plans: list[TablePlan]
    attribution: dict[str, dict[str, Any]]
    tables: dict[str, aggregate.TableAttribution]
    activity: dict[str, Any] | None = None
    """The ``activity`` section as :func:`build` makes it (the outcome does not change it)."""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def prepare(bundle: Bundle) -> Prepared:
    """The outcome-independent part of :func:`build` (see :class:`Prepared`); its statements are
    time-bounded like :func:`build`'s. The caller closes the result."""
    from contextlib import nullcontext

    from recovery.engine.timebound import statement_time_limit

    conn = (
        sqlite3.connect(
            file_uri(Path(bundle.rows_db), mode="ro"), uri=True, check_same_thread=False
        )
        if bundle.rows_db.is_file()
        else None
    )
    try:
        with statement_time_limit(conn) if conn is not None else nullcontext():
            lost = _lost_from_db(conn)
            plans, attribution = _plans(conn, bundle, _users_table(bundle))
            tables: dict[str, aggregate.TableAttribution] = {}
            activity = None
            if conn is not None and plans:
                deploy_text = bundle.manifest.get("deploy_time")
                deploy = parse_time(deploy_text) if deploy_text else None
                _, counts = aggregate.attribute(
                    conn,
                    plans,
                    KeyCounts(),
                    {t for t, n in lost.by_table.items() if n} if lost is not None else set(),
                    aggregate.to_us(deploy),
                    collect=tables,
                )
                activity = _activity(counts, deploy)
    except BaseException:
        if conn is not None:
            conn.close()
        raise
    return Prepared(bundle.bundle_id, conn, lost, plans, attribution, tables, activity)


def build(
    bundle: Bundle,
    outcome: Outcome | None,
    rollback_time: str | None = None,
    late: dict[str, Any] | None = None,
    prepared: Prepared | None = None,
) -> dict[str, Any]:
    """The ``report`` section of report.json: every number the renderers show. ``late``: the
    run's late-commit check, which feeds the verdict (:func:`recovery.model.outcome.judge`).
    ``prepared``: :func:`prepare` of this bundle (the caller closes it), so only what depends on
    the outcome is read here; the section is the same without it."""
    return finish(draft(bundle, outcome, rollback_time, prepared), outcome, late)


def draft(
    bundle: Bundle,
    outcome: Outcome | None,
    rollback_time: str | None = None,
    prepared: Prepared | None = None,
) -> dict[str, Any]:
    """:func:`build`'s section but for what the verification and the late-commit check decide
    (the verdict, ``verified``, ``verification``) and the time it is made: :func:`finish` adds
    them. A rollback drafts while the verification's reads finish; ``outcome``'s rows, conflicts,
    deletes and file report must not change after (the verification sets only its own field)."""
    from contextlib import nullcontext

    from recovery.engine.timebound import statement_time_limit

    if prepared is not None and (prepared.bundle_id != bundle.bundle_id or prepared.conn is None):
        prepared = None
    conn = prepared.conn if prepared is not None else _open_rows(bundle)
    try:
        with (
            statement_time_limit(conn) if conn is not None else nullcontext()
        ):  # rows.db is untrusted
            return _build(conn, bundle, outcome, rollback_time, prepared)
    finally:
        if conn is not None and prepared is None:
            conn.close()


def finish(
    section: dict[str, Any], outcome: Outcome | None, late: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A :func:`draft` completed in place (and returned): the verdict (with ``late``, the run's
    late-commit check), ``verified`` and ``verification`` from ``outcome`` as it is now, and
    ``generated_at``."""
    h = section["headline"]
    if outcome is not None:
        verdict = outcome.verdict(late)
    else:  # a bundle before its re-import: what a rollback would leave to review
        verdict = judge(lost=h["lost_values"], not_carried=h["not_carried"], run_files=False)
    h["verified"] = (
        bool(outcome.verification.get("ok")) if outcome and outcome.verification else None
    )
    h["verdict"] = verdict.verdict
    h["verdict_reasons"] = list(verdict.reasons)
    h["exit_code"] = verdict.exit_code
    section["generated_at"] = datetime.now().isoformat(sep="T", timespec="seconds")
    section["verification"] = outcome.verification if outcome else {}
    return section


def _build(
    conn: sqlite3.Connection | None,
    bundle: Bundle,
    outcome: Outcome | None,
    rollback_time: str | None,
    prepared: Prepared | None = None,
) -> dict[str, Any]:
    deploy_text = bundle.manifest.get("deploy_time")
    deploy = parse_time(deploy_text) if deploy_text else None
    users_table = _users_table(bundle)
    lost_info = _lost(conn, outcome, prepared.lost if prepared is not None else None)
    plans, attribution = (
        (prepared.plans, prepared.attribution)
        if prepared is not None
        else _plans(conn, bundle, users_table)
    )

    old_tables = set(bundle.old.tables)
    mapped_skip = {n for n, tm in bundle.mapping.tables.items() if getattr(tm, "skip", False)}

    def carried_table(t: str) -> bool:
        if t not in old_tables or t in mapped_skip:
            return False
        if (
            outcome is not None
            and not outcome.already_applied
            and outcome.tables
            and t not in outcome.tables
        ):
            return False
        return True

    conflicts = (
        [_shown_conflict(c.to_dict()) for c in outcome.conflicts] if outcome is not None else []
    )
    aborted = bool(outcome and outcome.aborted)
    not_carried = outcome.not_carried() if outcome is not None and not aborted else []
    skipped_keys = {(r["table"], tuple(r["key"])) for r in not_carried}
    not_carried_by_table = Counter(t for t, _ in skipped_keys)
    conflict_keys = Counter((c["table"], tuple(c["key"])) for c in conflicts)

    groups: list[aggregate.UserGroup] = []
    activity_counts = aggregate.ActivityCounts(None)
    if conn is not None and plans:
        groups, activity_counts = aggregate.attribute(
            conn,
            plans,
            KeyCounts(dict(conflict_keys), skipped_keys, lost_info.per_key),
            {t for t, n in lost_info.by_table.items() if n},
            aggregate.to_us(deploy),
            cached=prepared.tables if prepared is not None else None,
        )

    # ---- per table
    counts = bundle.table_counts
    tables: list[dict[str, Any]] = []
    for name in sorted(set(counts) | {g.table for g in groups}):
        c = counts.get(name, TableCounts())
        created, changed, deleted = c.inserted, c.updated, c.deleted
        if not (created or changed or deleted or lost_info.by_table[name]):
            continue
        to = outcome.tables.get(name) if outcome else None
        if aborted:
            carried, reason = 0, "aborted: nothing was changed"
        elif not carried_table(name):
            carried, reason = 0, NOT_IN_OLD_SCHEMA
        else:  # only what was applied: every record skipped (its own conflict or its unit's) is not carried
            skipped = not_carried_by_table[name]
            carried, reason = (
                max(created + changed - skipped, 0),
                ("conflict: skipped" if skipped else ""),
            )
        tables.append(
            {
                "table": name,
                "status": c.status or "",
                "created": created,
                "changed": changed,
                "deleted": deleted,
                "carried": carried,
                "not_carried": created + changed - carried,
                "not_carried_reason": reason if created + changed - carried else "",
                "remapped": to.remapped if to else 0,
                "conflicts": sum(n for (t, _), n in conflict_keys.items() if t == name),
                "lost_values": lost_info.by_table[name],
            }
        )

    _name_lost_users(conn, bundle, users_table, lost_info.sample)

    # ---- per user: groups in the order a row-by-row read (tables by name, rows by rowid) meets them
    def user_of(g: aggregate.UserGroup) -> Any:
        return g.user if g.has_user_column else _NoUserColumn(g.table)

    ids = {g.user for g in groups if g.has_user_column and g.user is not None}
    names, name_source = _user_names(bundle, users_table, ids)
    per_user: dict[Any, Counter[str]] = defaultdict(Counter)
    rank = {p.name: i for i, p in enumerate(plans)}
    for g in sorted(groups, key=lambda g: (rank[g.table], g.first)):
        u = per_user[user_of(g)]
        u[g.kind] += g.rows
        ok = not aborted and carried_table(g.table)
        u["carried"] += g.rows - g.skipped if ok else 0
        u["conflicts"] += g.conflicts
        u["lost_values"] += g.lost
    user_rows: list[dict[str, Any]] = [
        {
            "user_id": None if isinstance(uid, _NoUserColumn) else uid,
            "user": _user_label(uid, names),
            "created": c["created"],
            "changed": c["changed"],
            "carried": c["carried"],
            "conflicts": c["conflicts"],
            "lost_values": c["lost_values"],
        }
        for uid, c in per_user.items()
    ]
    users = sorted(user_rows, key=lambda d: (-(d["created"] + d["changed"]), d["user"]))

    # ---- headline
    created = sum(t["created"] for t in tables)
    changed = sum(t["changed"] for t in tables)
    carried = sum(t["carried"] for t in tables)
    reasons: dict[str, dict[str, Any]] = {}
    for t in tables:
        if t["not_carried"]:
            e = reasons.setdefault(
                t["not_carried_reason"],
                {"reason": t["not_carried_reason"], "records": 0, "tables": []},
            )
            e["records"] += t["not_carried"]
            e["tables"].append(t["table"])
    files = _files(bundle, outcome)
    mode = "bundle" if outcome is None else "dry-run" if outcome.dry_run else "rollback"
    headline = {
        "mode": mode,
        "deploy_time": deploy_text,
        "rollback_time": rollback_time if mode != "bundle" else None,
        "from_revision": bundle.new.alembic_revision,
        "to_revision": bundle.old.alembic_revision,
        "to_release": release_tag(
            ((bundle.manifest.get("sources") or {}).get("backup") or {}).get("path")
        ),
        "database": database_shown(
            outcome.target
            if outcome is not None
            else ((bundle.manifest.get("sources") or {}).get("live") or {}).get("path")
        ),
        "records_created": created,
        "records_changed": changed,
        "records_deleted": sum(t["deleted"] for t in tables),
        "records_total": created + changed,
        "carried": carried,
        "not_carried": created + changed - carried,
        "not_carried_reasons": list(reasons.values()),
        "lost_values": lost_info.total,
        "lost_reasons": dict(sorted(lost_info.by_reason.items())),
        "records_with_lost_values": lost_info.records,
        "conflicts": len(conflicts),
        "files_affected": files["affected"],
        "deletes_for_review": len(outcome.deletes_for_review)
        if outcome
        else sum(t["deleted"] for t in tables),
        # set by finish(): what the verification and the late-commit check decide
        "verified": None,
        "verdict": None,
        "verdict_reasons": [],
        "exit_code": None,
    }
    return {
        "version": REPORT_VERSION,
        "generated_at": None,  # set by finish()
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
        "deletes_for_review": _deletes(outcome),
        "not_carried": notcarried.shown(
            notcarried.whole_records(bundle, not_carried[:LIST_LIMIT], conn)
        ),
        "not_carried_total": len(not_carried),
        "activity": _activity(activity_counts, deploy),
        "files": files,
        "verification": {},  # set by finish()
        "triggers_suspended": list(outcome.triggers_suspended) if outcome else [],
        "rules": column_rules(bundle.manifest.get("mapping") or {}),
    }


def database_shown(target: str | None) -> str | None:
    """The database as the report names it: a file's absolute path; for a server URL its scheme,
    host and database — never the user name or password in it."""
    if not target:
        return None
    text = str(target)
    if "://" in text:
        from urllib.parse import urlsplit

        try:
            u = urlsplit(text)
            host = u.hostname or ""
            port = f":{u.port}" if u.port else ""
        except ValueError:
            return text.split("://", 1)[0] + "://…"
        return f"{u.scheme}://{host}{port}{u.path}"
    try:
        return str(Path(text).resolve())
    except (OSError, RuntimeError):
        return text


CONFLICT_SHOWN = ("label", "bundle_value", "target_value", "base_value", "detail")


def _shown_conflict(d: dict[str, Any]) -> dict[str, Any]:
    """A conflict as the report shows it: its values cut to ``SHOW_LIMIT`` (conflicts.csv, written
    from the outcome, keeps them whole)."""
    for k in CONFLICT_SHOWN:
        if k in d:
            d[k] = cut_value(d[k], SHOW_LIMIT)[0]
    return d


def column_rules(mapping: dict[str, Any]) -> list[dict[str, Any]]:
    """Every column rule that is not a plain same-name copy, plus same-name rules the data
    contradict, with its evidence (recovery.compare.evidence)."""
    out = []
    for tname, t in sorted(mapping.items()):
        for r in t.get("columns", ()):
            if r.get("source") == "same-name" and r.get("verdict") != "disagrees":
                continue
            out.append(
                {
                    "table": tname,
                    "column": r["column"],
                    "expression": r.get("expression"),
                    "source": r.get("source"),
                    "verdict": r.get("verdict"),
                    "rows_checked": r.get("rows_checked"),
                    "rows_agreeing": r.get("rows_agreeing"),
                    "first_disagreement": r.get("first_disagreement"),
                    "trusted": bool(r.get("trusted")),
                }
            )
    return out


def _deletes(outcome: Outcome | None) -> list[dict[str, Any]]:
    """The outcome's deletes for review with keys as lists — the very same list when its keys
    already are (report.json then writes it once and repeats the text)."""
    if outcome is None:
        return []
    found = outcome.deletes_for_review
    if keys_are_lists(found):
        return found
    return [dict(d, key=list(_key(d.get("key")))) for d in found]


def _natural(key: list[Any]) -> tuple[tuple[int, Any], ...]:
    """Sort keys numerically where they are numbers (1, 2, 10 — not 1, 10, 2)."""
    return tuple(
        (0, v) if isinstance(v, (int, float)) and not isinstance(v, bool) else (1, str(v))
        for v in key
    )


def _natural_item(x: dict[str, Any]) -> tuple[Any, ...]:
    return (str(x["table"]), _natural(x["key"]), str(x["column"]))


def _reason(reason: Any) -> str:
    return str(reason or "no place in the old schema")


def _lost_from_list(items: list[dict[str, Any]]) -> _Lost:
    """A complete (small) list in memory — an outcome whose lost values all fit in the sample."""
    lost = sorted((dict(x, key=list(_key(x.get("key")))) for x in items), key=_natural_item)
    keys = Counter((x["table"], tuple(x["key"])) for x in lost)
    return _Lost(
        lost,
        len(lost),
        Counter(x["table"] for x in lost),
        Counter(_reason(x.get("reason")) for x in lost),
        len(keys),
        dict(keys),
    )


def _lost_from_db(conn: sqlite3.Connection | None) -> _Lost | None:
    """Counts by SQL and the first SAMPLE_LIMIT values from a rows.db's ``_recovery_lost``, which
    keeps the complete list (never loaded whole)."""
    if conn is None or not has_lost(conn):
        return None
    sample = sorted(
        (
            as_dict(r, SHOW_LIMIT)
            for r in iter_rows(conn, order=NATURAL_ORDER, limit=SAMPLE_LIMIT, cut=SHOW_LIMIT)
        ),
        key=_natural_item,
    )
    by_table: Counter[str] = Counter()
    by_reason: Counter[str] = Counter()
    counts, records = aggregate.lost_counts(conn)
    for table_name, reason, n in counts:
        by_table[table_name] += n
        by_reason[_reason(reason)] += n
    return _Lost(sample, sum(by_table.values()), by_table, by_reason, records)


def _lost(
    conn: sqlite3.Connection | None, outcome: Outcome | None, from_db: _Lost | None = None
) -> _Lost:
    """``Outcome.lost`` when it holds every lost value; else the bundle's ``_recovery_lost`` (the
    same list: the re-import loads it from there) — ``from_db`` when already read from it."""
    if outcome is not None and not outcome.lost_truncated:
        return _lost_from_list(outcome.lost)
    found = from_db if from_db is not None else _lost_from_db(conn)
    if found is not None:
        return found
    info = _lost_from_list(outcome.lost if outcome is not None else [])
    if outcome is not None:  # only the sample is left: keep the exact counts
        info.total, info.by_table = outcome.lost_total, Counter(outcome.lost_by_table())
    return info

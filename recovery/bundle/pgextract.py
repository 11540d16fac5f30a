"""``recovery extract`` on PostgreSQL: the post-deploy changes as a bundle in exactly the SQLite
bundle's format (:mod:`recovery.bundle.store`), selected set-based inside the server.

The backup (a ``pg_dump`` file restored into a scratch database, or another database's URL) and
the live database are reached from a scratch workspace database as the foreign schemas ``old`` and
``new`` (``postgres_fdw``, read-only servers), inside one REPEATABLE READ transaction. The changed
rows are selected by the very sqlglot trees the SQLite extract and diff build
(:mod:`recovery.compare.changes`), rendered for ``postgres``, into typed tables of the workspace's
schemas ``bnew`` (rows in the new schema) and ``bbase`` (backup images); the foreign-key closure
and the lost/filled lists are computed there too. Only then does anything travel: each workspace
table is streamed with ``COPY (SELECT col::text, …) TO STDOUT`` into the bundle's ``rows.db`` /
``base.db`` in batches, so no table is ever held in Python memory.

Every carried value is PostgreSQL's own text output of the value (session ``TimeZone`` UTC,
``DateStyle`` ISO, ``bytea_output`` hex), NULL stays NULL; ``CAST(text AS type)`` with the type
recorded in ``manifest["pg_types"]`` gives back the identical value. User-defined types the
workspace does not have (enums, domains, extension types) are stood in by domains over ``text``
(or over a domain's built-in base type) of the same qualified name, so the foreign tables import
and every value travels as the source's text output.

Neither source database is written: the foreign servers are declared ``updatable 'false'`` and
only the workspace's own schemas receive rows; the workspace and the backup's scratch database are
dropped at the end, whatever happens.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from sqlglot import exp

from recovery import __version__, progress
from recovery.bundle.extract import record_lost as sqlite_record_lost
from recovery.bundle.extract import (
    ExtractResult,
    label_parent,
    lock_partial,
)
from recovery.bundle.store import (
    DIR_MODE,
    FILLED_TABLE,
    FORMAT,
    LOST_COLUMNS,
    LOST_TABLE,
    open_bundle,
    seal,
)
from recovery.capture.manifest import deploy_time_of
from recovery.compare import changes
from recovery.compare.changes import deleted_query, inserted_query, sides
from recovery.compare.diff import Analysis, check_user_expressions
from recovery.compare.evidence import verify
from recovery.compare.pgdiff import reflect_pg, structural_pg
from recovery.compare.schemadiff import compare
from recovery.compare.timestamps import parse_since
from recovery.engine.postgres import (
    PgPair,
    PostgresEngine,
    backup_database,
    command,
    ident,
    is_postgres_url,
    run,
    sha256_file,
)
from recovery.engine.schema import Schema
from recovery.engine.sqlbuild import and_all, col, is_same, rendering_for, sql, table
from recovery.engine.sqlite_io import fsync_dir
from recovery.errors import RecoveryError
from recovery.files.uploads import FilesConfig, UploadsIndex, copy_files_into_bundle
from recovery.model.kinds import KIND_COLUMN as KIND, RowKind
from recovery.engine.pgworkspace import column_types, workspace
from recovery.migrate.pgsandbox import derive_lineage_pg, replay_upgrade_pg
from recovery.model.values import TableCounts
from recovery.transpile.mapping import load_mapping, resolve
from recovery.transpile.passes import plan as make_plan

ENGINE = "postgresql"
LABELS = "blabel"
"""The workspace schema of the label lookups (:func:`copy_labels`)."""
BATCH = 5000
"""Rows per ``executemany`` into the bundle while a COPY streams."""


def extract_workspace(
    backup: PostgresEngine, live: PostgresEngine, replayed: PostgresEngine | None = None
) -> AbstractContextManager[psycopg.Connection[Any]]:
    """The workspace (:func:`recovery.engine.pgworkspace.workspace`) with the writable local
    schemas ``bnew`` (rows in the new schema), ``bbase`` (backup images) and :data:`LABELS`."""
    return workspace(backup, live, replayed, ("bnew", "bbase", LABELS), "extract")


def _create_like(conn: Any, schema: str, name: str, source_schema: str, source: str) -> None:
    """A workspace table ``schema.name`` with ``source_schema.source``'s columns and types (no
    constraints but NOT NULL), plus the row-kind column."""
    run(
        conn,
        command(
            f"CREATE TABLE {ident(schema)}.{ident(name)} "
            f"(LIKE {ident(source_schema)}.{ident(source)})"
        ),
    )
    run(conn, command(f"ALTER TABLE {ident(schema)}.{ident(name)} ADD COLUMN {ident(KIND)} text"))


def _insert_select(conn: Any, schema: str, name: str, columns: list[str], query: exp.Select) -> int:
    stmt = exp.Insert(
        this=exp.Schema(
            this=table(name, schema),
            expressions=[exp.to_identifier(c, quoted=True) for c in [*columns, KIND]],
        ),
        expression=query,
    )
    return int(conn.execute(sql(stmt)).rowcount)


# ---- the rows, set-based in the workspace -------------------------------------------------------


def extract_table(conn: Any, a: Analysis, name: str, counts: dict[str, Any]) -> None:
    """Table ``name``'s inserted and updated rows into ``bnew``, the backup images of its updated
    and deleted rows into ``bbase``: the SQLite extract's statements, rendered for PostgreSQL."""
    old_t, new_t = a.old.table(name), a.new.tables[a.live_name(name)]
    new_cols = list(new_t.column_names)
    _create_like(conn, "bnew", name, "new", a.live_name(name))
    shared = old_t is not None and name in a.mapping.tables and not a.mapping.tables[name].skip
    if not shared:
        q = exp.select(
            *[col(c, "n") for c in new_cols], exp.Literal.string(RowKind.INSERTED)
        ).from_(table(a.live_name(name), "new", "n"))
        counts[name] = {
            RowKind.INSERTED: _insert_select(conn, "bnew", name, new_cols, q),
            RowKind.UPDATED: 0,
            RowKind.DELETED: 0,
            "status": "new table" if old_t is None else "skipped by mapping",
        }
        return
    assert old_t is not None  # shared
    s = sides(old_t, a.mapping.tables[name])
    if isinstance(s, str):
        raise RecoveryError(f"cannot extract {name}: {s}", "map the key column in the mapping file")
    # a plain equality where the key holds no NULL: PostgreSQL hashes or merges it (the NULL-safe
    # comparison it cannot, which makes every join a nested loop over a foreign scan)
    key_eq = is_same if s.null_safe_key else (lambda x, y: exp.EQ(this=x, expression=y))
    old_cols = list(old_t.column_names)
    _create_like(conn, "bbase", name, "old", name)
    n_cols = [col(c, "n") for c in new_cols]
    ins = _insert_select(
        conn,
        "bnew",
        name,
        new_cols,
        inserted_query(s, [*n_cols, exp.Literal.string(RowKind.INSERTED)]),
    )
    cond = changes.changed_condition(
        s, new_t, a.mapping.tables.get(s.name), a.since_jd, a.replay
    )  # (no primary key: never changed, only in/out)
    upd = 0
    if cond is not None:
        upd_q = (
            exp.select(*n_cols, exp.Literal.string(RowKind.UPDATED))
            .from_(table(name, "old", "o"))
            .join(
                table(a.live_name(name), "new", "n"),
                on=and_all(key_eq(o, n) for o, n in zip(s.old_key, s.new_key, strict=True)),
            )
            .where(cond)
        )
        upd = _insert_select(conn, "bnew", name, new_cols, upd_q)
    # statistics before joining the backup to it: unanalysed, the planner may drive a foreign
    # scan of the backup once per bundle row
    run(conn, command(f"ANALYZE {ident('bnew')}.{ident(name)}"))
    base_q = (
        exp.select(*[col(c, "o") for c in old_cols], exp.Literal.string(RowKind.UPDATED))
        .from_(table(name, "old", "o"))
        .join(
            table(name, "bnew", "b"),
            on=and_all(
                [key_eq(o, _rebase(n, "b")) for o, n in zip(s.old_key, s.new_key, strict=True)]
                + [exp.EQ(this=col(KIND, "b"), expression=exp.Literal.string(RowKind.UPDATED))]
            ),
        )
    )
    _insert_select(conn, "bbase", name, old_cols, base_q)
    dele = _insert_select(
        conn,
        "bbase",
        name,
        old_cols,
        deleted_query(s, [*[col(c, "o") for c in old_cols], exp.Literal.string(RowKind.DELETED)]),
    )
    counts[name] = {
        RowKind.INSERTED: ins,
        RowKind.UPDATED: upd,
        RowKind.DELETED: dele,
        "status": "compared",
    }


def _rebase(e: exp.Expression, alias: str) -> exp.Expression:
    out = e.copy()
    for c in out.find_all(exp.Column):
        c.set("table", exp.to_identifier(alias, quoted=True))
    return out


def _exists_key(name: str, alias: str, cols: tuple[str, ...], ref: tuple[str, ...]) -> exp.Exists:
    """``EXISTS`` a row of workspace table ``bnew.name`` whose ``cols`` equal the parent row
    ``p``'s ``ref`` columns: plain equalities, so a NULL never matches (as in the SQLite
    closure's ``IN`` over non-NULL keys), and PostgreSQL plans it as a hashed semi- or anti-join
    whatever the list's size (a ``NOT IN`` list larger than ``work_mem`` is rescanned once per
    parent row)."""
    return exp.Exists(
        this=exp.select(exp.Literal.number(1))
        .from_(table(name, "bnew", alias))
        .where(
            and_all(
                exp.EQ(this=col(c, alias), expression=col(r, "p"))
                for c, r in zip(cols, ref, strict=True)
            )
        )
    )


def close_foreign_keys(conn: Any, a: Analysis, counts: dict[str, Any]) -> None:
    """Bring every parent a bundle row needs that neither the bundle nor the backup has, until
    nothing changes (the SQLite extract's closure, in the workspace). A parent whose key holds a
    NULL is never brought (no child can reference it)."""
    for name in counts:  # every list the semi-joins read, planned on its true size
        run(conn, command(f"ANALYZE {ident('bnew')}.{ident(name)}"))
    for _ in range(len(a.new.tables) + 1):
        added = 0
        grown: set[str] = set()
        for name in a.bundle_tables:
            for fk in a.new.tables[a.live_name(name)].foreign_keys:
                parent = a.new.table(fk.ref_table)
                if parent is None or fk.ref_table not in counts:
                    continue
                conds: list[exp.Expression] = [
                    _exists_key(name, "c", fk.columns, fk.ref_columns),
                    exp.Not(this=_exists_key(fk.ref_table, "pb", fk.ref_columns, fk.ref_columns)),
                ]
                if a.old.table(fk.ref_table) is not None:
                    # (the parent's key is not NULL here: it is in a list of non-NULL keys)
                    match = and_all(
                        exp.EQ(this=col(x, "po"), expression=col(x, "p")) for x in fk.ref_columns
                    )
                    conds.append(
                        exp.Not(
                            this=exp.Exists(
                                this=exp.select(exp.Literal.number(1))
                                .from_(table(fk.ref_table, "old", "po"))
                                .where(match)
                            )
                        )
                    )
                q = (
                    exp.select(
                        *[col(c, "p") for c in parent.column_names],
                        exp.Literal.string(RowKind.CLOSURE),
                    )
                    .from_(table(fk.ref_table, "new", "p"))
                    .where(and_all(conds))
                )
                n = _insert_select(conn, "bnew", fk.ref_table, list(parent.column_names), q)
                if n:
                    grown.add(fk.ref_table)
                    counts[fk.ref_table][RowKind.CLOSURE] = (
                        counts[fk.ref_table].get(RowKind.CLOSURE, 0) + n
                    )
                    added += n
        if not added:
            return
        for name in sorted(grown):  # the next round's semi-joins are planned on true sizes
            run(conn, command(f"ANALYZE {ident('bnew')}.{ident(name)}"))


def key_json(key: tuple[str, ...], alias: str) -> exp.Expression:
    """A row's key as the JSON text the SQLite extract stores (``json_array``: ``[1,"a"]``, no
    spaces), built from each value's ``to_json``."""
    parts: list[exp.Expression] = [exp.Literal.string("[")]
    for i, k in enumerate(key):
        if i:
            parts.append(exp.Literal.string(","))
        parts.append(
            exp.Coalesce(
                this=exp.cast(exp.Anonymous(this="to_json", expressions=[col(k, alias)]), "TEXT"),
                expressions=[exp.Literal.string("null")],
            )
        )
    parts.append(exp.Literal.string("]"))
    return exp.Concat(expressions=parts)


def _as_text(e: exp.Expression) -> exp.Expression:
    return e if isinstance(e, exp.Null) else exp.cast(e, "TEXT")


def _create_list(conn: Any, name: str) -> None:
    cols = ", ".join(f"{ident(c)} text" for c in LOST_COLUMNS)
    run(conn, command(f"CREATE TABLE {ident('bnew')}.{ident(name)} ({cols})"))


def copy_labels(conn: Any, a: Analysis, counts: dict[str, Any]) -> None:
    """For each parent table a listed row takes its label from
    (:func:`recovery.bundle.extract.label_parent`), a local copy of its referenced column and
    label column in :data:`LABELS`, indexed and analysed: the lists' label lookup, one per listed
    value, is then a local index probe instead of a round trip to the live server."""
    done: set[str] = set()
    for name in sorted(counts):
        found = label_parent(a.new.tables[a.live_name(name)], a.new)
        if found is None or found[1].name in done:
            continue
        fk, parent, pcol = found
        done.add(parent.name)
        cols = list(dict.fromkeys([fk.ref_columns[0], pcol]))
        q = exp.select(*[col(c, "p") for c in cols]).from_(table(parent.name, "new", "p"))
        target = f"{ident(LABELS)}.{ident(parent.name)}"
        run(conn, command(f"CREATE TABLE {target} AS {sql(q)}"))
        run(conn, command(f"CREATE INDEX ON {target} ({ident(fk.ref_columns[0])})"))
        run(conn, command(f"ANALYZE {target}"))


def record_lost(conn: Any, a: Analysis, files: FilesConfig, counts: dict[str, Any]) -> None:
    """Every value a user made that the old schema has no place for, then the values filled by
    the upgrade, not verified: the SQLite extract's statements
    (:func:`recovery.bundle.extract.record_lost`), keys by :func:`key_json`, labels (looked up in
    :func:`copy_labels`' copies) and values cast to text, into lists of text columns."""
    copy_labels(conn, a, counts)
    sqlite_record_lost(
        conn,
        a,
        files,
        counts,
        as_text=_as_text,
        key_expr=key_json,
        create_list=_create_list,
        label_schema=LABELS,
    )


# ---- the rows travel: COPY … TO STDOUT into the bundle's SQLite files ---------------------------


def _create_bundle_table(bconn: sqlite3.Connection, name: str, columns: Sequence[str]) -> None:
    """A bundle table as the SQLite extract makes it: the columns with no declared type."""
    ddl = exp.Create(
        this=exp.Schema(
            this=exp.to_table(exp.to_identifier(name, quoted=True).sql("sqlite")),
            expressions=[exp.ColumnDef(this=exp.to_identifier(c, quoted=True)) for c in columns],
        ),
        kind="TABLE",
    )
    bconn.execute(ddl.sql("sqlite"))


def copy_out(
    conn: Any, schema: str, name: str, columns: Sequence[str], bconn: sqlite3.Connection
) -> int:
    """Stream workspace table ``schema.name`` into the same-named table of ``bconn`` with
    ``COPY (SELECT col::text, …) TO STDOUT``, :data:`BATCH` rows at a time: each value as
    PostgreSQL's text output (NULL as NULL)."""
    _create_bundle_table(bconn, name, columns)
    q = exp.select(*[_as_text(col(c)) for c in columns]).from_(table(name, schema))
    insert = exp.insert(
        exp.values([tuple(exp.Placeholder() for _ in columns)]),
        exp.to_table(exp.to_identifier(name, quoted=True).sql("sqlite")),
        columns=[exp.to_identifier(c, quoted=True) for c in columns],
    ).sql("sqlite")
    total = 0
    batch: list[tuple[Any, ...]] = []
    with conn.cursor() as cur, cur.copy(f"COPY ({sql(q)}) TO STDOUT") as cp:
        cp.set_types(["text"] * len(columns))
        for row in cp.rows():
            batch.append(row)
            if len(batch) >= BATCH:
                bconn.executemany(insert, batch)
                total += len(batch)
                batch.clear()
    if batch:
        bconn.executemany(insert, batch)
        total += len(batch)
    return total


def write_bundle_databases(conn: Any, a: Analysis, counts: dict[str, Any], work: Path) -> None:
    """``rows.db`` (every ``bnew`` table and the two lists) and ``base.db`` (every ``bbase``
    table), each written in one SQLite transaction."""
    for fname, schema, tables in (
        (
            "rows.db",
            "bnew",
            [
                *[(n, [*a.new.tables[a.live_name(n)].column_names, KIND]) for n in counts],
                (LOST_TABLE, list(LOST_COLUMNS)),
                (FILLED_TABLE, list(LOST_COLUMNS)),
            ],
        ),
        (
            "base.db",
            "bbase",
            [
                (n, [*t.column_names, KIND])
                for n in counts
                if counts[n].get("status") == "compared" and (t := a.old.table(n)) is not None
            ],
        ),
    ):
        bconn = sqlite3.connect(work / fname, isolation_level=None)
        try:
            bconn.execute("PRAGMA journal_mode = OFF")  # a new file in a private folder
            bconn.execute("BEGIN")
            for name, columns in tables:
                copy_out(conn, schema, name, columns, bconn)
            bconn.execute("COMMIT")
        finally:
            bconn.close()


# ---- the analysis (schemas, mapping, evidence) --------------------------------------------------


def analyse_pg(
    pair: Any,
    backup_label: str,
    live_label: str,
    old: Schema,
    new: Schema,
    ops: list[Any],
    since: str | None,
    mapping: str | os.PathLike[str] | None,
    trust_mapping: bool,
    lineage: dict[str, dict[str, exp.Expression]] | None = None,
) -> Analysis:
    """The :class:`recovery.compare.diff.Analysis` of the pair workspace: schema diff, column
    rules (the mapping file's first, each expression tried once on the live table), every rule
    checked against the data; a rule the unchanged rows contradict refused unless
    ``trust_mapping``."""
    user = load_mapping(mapping)
    since_jd, since_norm = parse_since(since) if since is not None else (None, None)
    sdiff = compare(pair, None, None, old, new, user, since_jd, ops=ops)  # type: ignore[arg-type]
    shared = set(old.data_tables) & set(new.data_tables)
    if not shared and not sdiff.table_renames:
        raise RecoveryError(
            f"{backup_label} and {live_label} have no table in common",
            "is the backup of the same application?",
        )
    cmap = resolve(old, new, user, lineage, sdiff.renames_by_table(), sdiff.table_renames_by_old())
    check_user_expressions(pair, user, new, cmap)
    cmap = verify(pair, old, new, cmap, since_jd, trust_mapping)
    return Analysis(
        Path(backup_label),
        Path(live_label),
        pair,
        old,
        new,
        sdiff,
        cmap,
        user,
        since_jd,
        since_norm,
    )


# ---- the command --------------------------------------------------------------------------------


def live_identity(live: PostgresEngine) -> dict[str, Any]:
    """What identifies the live source at extract time (no content hash: that would read every
    row once more): the server's system identifier (when this user may read it), the database,
    its snapshot; ``sha256`` is the hash of those."""
    with live.readonly("live database") as conn:
        snap, oid = run(
            conn,
            "SELECT CAST(pg_catalog.pg_current_snapshot() AS TEXT), "
            "(SELECT oid FROM pg_catalog.pg_database WHERE datname = current_database())",
        ).fetchone()
        try:
            (sysid,) = run(
                conn, "SELECT system_identifier FROM pg_catalog.pg_control_system()"
            ).fetchone()
        except psycopg.errors.InsufficientPrivilege:
            sysid = None
    ident_ = {
        "system_identifier": None if sysid is None else str(sysid),
        "database_oid": int(oid),
        "snapshot": str(snap),
    }
    digest = hashlib.sha256(json.dumps(ident_, sort_keys=True).encode()).hexdigest()
    return {"path": live.spec, "url": live.spec, **ident_, "sha256": digest}


def extract_postgres(
    backup: str,
    live: str,
    out: str | os.PathLike[str],
    *,
    since: str | None = None,
    mapping: str | os.PathLike[str] | None = None,
    alembic_ini: str | os.PathLike[str] | None = None,
    uploads: str | os.PathLike[str] | None = None,
    files: FilesConfig | None = None,
    trust_mapping: bool = False,
) -> ExtractResult:
    """Extract every change since ``backup`` (a pg_dump custom-format file or a database URL) from
    the live database ``live`` (a postgresql:// URL) into a new bundle folder ``out``, in the
    SQLite bundle's format with ``"engine": "postgresql"`` and ``"pg_types"`` in the manifest.
    A column rule the unchanged rows contradict is refused unless ``trust_mapping``."""
    out_p = Path(out)
    if out_p.exists() and (not out_p.is_dir() or any(out_p.iterdir())):
        raise RecoveryError(
            f"--out {out_p} already exists and is not empty",
            "choose a new folder; nothing was overwritten",
        )
    if alembic_ini is not None and not Path(alembic_ini).is_file():
        raise RecoveryError(
            f"--alembic-ini {alembic_ini} does not exist",
            "point it at the application's alembic.ini",
        )
    files = files or FilesConfig()
    live_db = PostgresEngine(live)
    live_db.check("live database")
    backup_text = os.fspath(backup)
    backup_is_url = is_postgres_url(backup_text)
    if since is None and not backup_is_url:
        since = deploy_time_of(Path(backup_text))
    work = out_p.with_name(f".{out_p.name}.partial-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, mode=DIR_MODE)
    held = lock_partial(work)
    hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recovery-hash")
    backup_sha = None if backup_is_url else hasher.submit(sha256_file, Path(backup_text))
    walk = (
        hasher.submit(UploadsIndex, Path(uploads))
        if uploads is not None and Path(uploads).is_dir()
        else None
    )
    hasher.shutdown(wait=False)
    try:
        with ExitStack() as stack:
            old_db = stack.enter_context(backup_database(backup_text, live_db))
            old_db.check("backup")
            old, new = reflect_pg(old_db), reflect_pg(live_db)
            ops = structural_pg(old_db, live_db)
            types_new, types_old = column_types(live_db), column_types(old_db)
            backup_label = backup_text if not backup_is_url else old_db.spec
            replay = (
                replay_upgrade_pg(
                    alembic_ini, old_db, old.alembic_revision, new.alembic_revision, stack
                )
                if alembic_ini is not None
                else None
            )
            lineage, lineage_report = None, None
            if replay is not None:  # the downgrade runs on a copy of the replayed upgrade
                assert alembic_ini is not None
                lineage, lineage_report = derive_lineage_pg(alembic_ini, old, new, replay.db)
            conn = stack.enter_context(
                extract_workspace(old_db, live_db, replay.db if replay is not None else None)
            )
            with rendering_for("postgres"):
                a = analyse_pg(
                    PgPair(conn),
                    backup_label,
                    live_db.spec,
                    old,
                    new,
                    ops,
                    since,
                    mapping,
                    trust_mapping,
                    lineage,
                )
                a.replay = replay
                counts: dict[str, Any] = {}
                progress.set_total(len(a.bundle_tables) + 3)
                for name in a.bundle_tables:
                    extract_table(conn, a, name, counts)
                    progress.advance(1, name)
                close_foreign_keys(conn, a, counts)
                progress.advance(1, "foreign-key closure")
                record_lost(conn, a, files, counts)
                progress.advance(1, "lost values")
                write_bundle_databases(conn, a, counts, work)
                progress.advance(1, "rows copied")
                known = _backup_paths(conn, a, files)
                run(conn, command("ROLLBACK"))  # the workspace is dropped; nothing to keep
            live_sequences = _live_sequences(live_db)
            identity = live_identity(live_db)
        has_rows = {t for t, c in counts.items() if TableCounts.from_dict(c).carried}
        has_deletes = {t for t, c in counts.items() if TableCounts.from_dict(c).deleted}
        p = make_plan(a.old, a.new, a.mapping, has_rows, has_deletes)
        file_report = (
            copy_files_into_bundle(
                work,
                uploads,
                backup_text,
                files,
                walk.result() if walk else None,
                backup_paths=known,
            )
            if uploads
            else None
        )
        pg_types = {
            n: types_new.get(a.live_name(n), {}) for n in counts if a.live_name(n) in types_new
        }
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "engine": ENGINE,
            "tool_version": __version__,
            "created_at": datetime.now().replace(microsecond=0).isoformat(sep="T"),
            "deploy_time": a.since,
            "sources": {
                "backup": {
                    "path": backup_label,
                    "sha256": backup_sha.result() if backup_sha is not None else None,
                    "alembic_revision": a.old.alembic_revision,
                },
                "live": {
                    **identity,
                    "alembic_revision": a.new.alembic_revision,
                    "sqlite_sequence": live_sequences,
                    "sequences": live_sequences,
                },
            },
            "schemas": {"old": a.old.to_dict(), "new": a.new.to_dict()},
            "schema_diff": a.schema_diff.to_dict(),
            "mapping": a.mapping.to_dict(),
            "lineage": lineage_report,
            "upgrade_replayed": replay is not None,
            "counts": counts,
            "planning_errors": list(p.errors),
            "files": file_report,
            "pg_types": pg_types,
            "pg_types_base": {n: types_old[n] for n in counts if n in types_old},
        }
        (work / "reimport.sql").write_text(p.to_sql("postgres"), encoding="utf-8")
        seal(work, manifest)
        if out_p.exists():
            out_p.rmdir()
        os.replace(work, out_p)
        fsync_dir(out_p.parent)
    except BaseException:
        for f in (backup_sha, walk):
            if f is not None and not f.cancel():
                f.exception()
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        os.close(held)
    return ExtractResult(open_bundle(out_p, verify=False), p, manifest["deploy_time"])


def _live_sequences(live: PostgresEngine) -> dict[str, int]:
    """{table: last value} of the sequences the live tables own (read right after the rows)."""
    with live.readonly("live database") as conn:
        return live.read_sequences(conn)


def _backup_paths(conn: Any, a: Analysis, files: FilesConfig) -> set[str]:
    """The stored paths of the backup's file records: files the backup already knew, which the
    bundle need not carry as unrecorded."""
    t = a.old.table(files.table)
    if t is None or files.path not in t.column_names:
        return set()
    q = exp.select(col(files.path, "f")).from_(table(files.table, "old", "f"))
    with conn.cursor() as cur:
        cur.execute(sql(q))
        return {r[0] for r in cur if isinstance(r[0], str)}
